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
