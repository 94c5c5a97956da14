"""The answers a terminal can get for a service ID, as one-byte codes."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Lookup result for a (business ID, service ID); UNKNOWN means not registered."""

    UNKNOWN = 0
    VALID = 1
    SUSPENDED = 2
    INVALID = 3
    UNLINKED = 4

    @property
    def label(self) -> str:
        return self.name.lower()


_BY_CODE = tuple(Status)


def status_of(code: int) -> Status:
    """The Status for a code byte (a tuple lookup: much cheaper than Status(code))."""
    return _BY_CODE[code]


def statuses(codes: bytes) -> list[Status]:
    """Map resolve_many's code bytes to Status values."""
    return [_BY_CODE[c] for c in codes]


class MyKeyState(IntEnum):
    """State of a MyKey ID; service IDs linked to it answer with the matching Status."""

    VALID = 1
    SUSPENDED = 2
    INVALID = 3

    @property
    def status(self) -> Status:
        return Status(int(self))

    @property
    def label(self) -> str:
        return self.name.lower()
