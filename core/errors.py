"""Exception types. Every error says what went wrong and what to do about it."""


class MykeyError(Exception):
    """Base of every error mykey raises on purpose."""


class ValidationError(MykeyError, ValueError):
    """Input had the wrong shape; nothing was changed."""


class IndividualNumberError(ValidationError):
    """An id field held a 12-digit Individual Number; mykey never stores one."""


class LogError(MykeyError):
    """Base of event-log errors."""


class LogLockedError(LogError):
    """Another process holds the log's writer lock."""


class CorruptLogError(LogError):
    """A record in the log failed its checks; the position says where."""


class RecordDecodeError(LogError):
    """Bytes did not decode as a log record or event."""


class ConcurrencyError(LogError):
    """An append expected a different last sequence number (someone else wrote)."""


class IndexError_(MykeyError):
    """Base of LMDB index errors (named with a trailing _ to not shadow IndexError)."""


class EnvAlreadyOpenError(IndexError_):
    """The LMDB environment is already open in this process through a binding."""


# --- domain command refusals (the engine appends nothing when it raises these) ---


class CommandRefused(MykeyError):
    """A command was understood but refused by the rules; nothing was appended."""


class NotFoundError(CommandRefused, LookupError):
    """The command names something that does not exist (a MyKey ID, business, terminal, service ID)."""


class AlreadyExistsError(CommandRefused):
    """The command would create something that already exists."""


class IllegalTransitionError(CommandRefused):
    """The MyKey ID's state does not allow this change (see mykey.domain.transitions)."""


class ChallengeError(CommandRefused):
    """The challenge is unknown, expired or already used; ask for a new one."""


class InactiveError(CommandRefused):
    """The business or terminal is deactivated or revoked."""


class StaleCrlError(CommandRefused):
    """A CRL older than one already applied for the same issuer."""
