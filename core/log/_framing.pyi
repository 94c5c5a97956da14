"""Type stub of the Cython batch framing (ext/_framing.pyx), twin of mykey.log.framing."""

from collections.abc import Iterator as _Iterator
from collections.abc import Sequence as _Sequence
from typing import overload as _overload

from typing_extensions import Buffer
from typing_extensions import disjoint_base as _disjoint_base

__test__: dict[str, str]  # Cython adds it to every module

MAGIC: bytes
HEADER_SIZE: int
RECORD_HEAD_SIZE: int
MAX_RECORD: int
MAX_BODY: int
NEGATIVE_POS: str
RECORD_TOO_LARGE: str
BODY_TOO_LARGE: str
OK: int
INCOMPLETE: int
BAD_HEADER: int
BAD_RECORD: int
HASH_SIZE: int
LEAF_PREFIX: bytes
NODE_PREFIX: bytes
NOT_PERFECT: str

def encode_batch(first_seq: int, payloads: list[bytes]) -> bytes: ...
def parse_header(buf: Buffer, pos: int) -> tuple[int, int, int] | None: ...
def parse_batches(
    buf: Buffer, pos: int, max_records: int
) -> tuple[list[tuple[int, int, list[bytes]]], int, int, int, int]: ...
def parse_records(
    buf: Buffer, pos: int, max_records: int
) -> tuple[list[tuple[int, int, _Records]], int, int, int, int]: ...

@_disjoint_base
class _Records:
    """A parsed batch's payloads, each bytes object made when it is read."""

    def __len__(self) -> int: ...
    def __iter__(self) -> _Iterator[bytes]: ...
    @_overload
    def __getitem__(self, i: int, /) -> bytes: ...
    @_overload
    def __getitem__(self, i: slice, /) -> list[bytes]: ...

def leaf_hashes(payloads: _Sequence[bytes] | _Records) -> bytes: ...
def perfect_root(hashes: Buffer) -> bytes: ...
