"""Exception types. Every error says what went wrong and what to do about it."""


class MykeyError(Exception):
    """Base of every error mykey raises on purpose."""


class ValidationError(MykeyError, ValueError):
    """Input had the wrong shape; nothing was changed."""


class IndividualNumberError(ValidationError):
    """An id field held a 12-digit Individual Number; mykey never stores one."""


class LockHeldError(MykeyError):
    """Another process holds a lock this one needs (the message names its pid)."""


class LogError(MykeyError):
    """Base of event-log errors."""


class LogLockedError(LogError, LockHeldError):
    """Another process holds the log's writer lock."""


class CorruptLogError(LogError):
    """A record in the log failed its checks; the position says where."""


class RecordDecodeError(LogError):
    """Bytes did not decode as a log record or event."""


class ConcurrencyError(LogError):
    """An append expected a different last sequence number (someone else wrote)."""


class LogFencedError(ConcurrencyError, LockHeldError):
    """Another writer appended to a shared log: this handle stopped appending, so two writers never interleave."""


class LogUnavailableError(LogError):
    """The log's servers did not answer in time (an append's outcome is then found out on reopen)."""


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


class InvalidMyKeyError(CommandRefused):
    """The MyKey ID is invalid (final): it cannot be linked or renewed."""


class ResumeBlockedError(CommandRefused):
    """Resume refused: the MyKey ID's current certificate (or its issuing CA) is revoked; renew it instead."""


class NotLinkedError(CommandRefused):
    """The service ID is registered but not linked to a MyKey ID."""


class RenewalRefused(CommandRefused):
    """The certificate presented for renewal is not a renewal of the current one (other holder, same or older certificate)."""


class NoTrustAnchorError(CommandRefused):
    """No trust anchor is configured, so no certificate or CRL can be verified."""


class FeedPositionError(CommandRefused):
    """A feed acknowledgement would move the consumer's position backwards."""


class SuspendedMyKeyError(CommandRefused):
    """The MyKey ID of the card presented is suspended: its card authorises nothing until it is valid again."""


class UnknownCardError(NotFoundError):
    """No live MyKey ID holds the certificate presented as its current one (none made, invalidated, or renewed away)."""


class RegistrationNotAllowedError(CommandRefused):
    """The service ID is not registered and may not be registered here (no first-use registration, no right to register)."""


class KeyFileError(MykeyError):
    """A key file in DATA/keys is damaged; restore it from a backup."""


class EngineHaltedError(MykeyError):
    """A command was recorded in the log but the index could not apply it; close and reopen the engine."""


# --- LMDB bindings ---------------------------------------------------------


class LmdbError(IndexError_):
    """An LMDB call failed; the message gives LMDB's reason and what to do."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class DbNotFoundError(LmdbError):
    """A named database does not exist and was not created."""


class MapFullError(LmdbError):
    """The environment's map is full; open it with a larger map_size."""


class MapResizedError(LmdbError):
    """Another process grew the map and this process could not adopt the new size."""


class EnvNotFoundError(LmdbError):
    """The environment directory does not exist and was not to be created."""


# --- index -----------------------------------------------------------------


class IndexLockedError(IndexError_, LockHeldError):
    """Another process is writing the index (an engine, projector or rebuild)."""


class IndexGapError(IndexError_):
    """Events given to apply() do not follow the index's last applied sequence number."""


class ProjectionError(IndexError_):
    """An event cannot be projected: it refers to a record the index lacks (rebuild the index)."""


class NoIndexError(MykeyError):
    """There is no index to resolve against yet."""


class IndexSchemaError(IndexError_, NoIndexError):
    """The index was built with another layout (an older mykey): `mykey rebuild` makes one of this layout.

    Also a NoIndexError: there is no index this mykey can read (until the rebuild).
    """


class IndexAheadError(MykeyError):
    """The index reflects events the log no longer has (the log lost its tail)."""


# --- terminal authentication -----------------------------------------------


class TerminalAuthError(MykeyError):
    """A terminal failed authentication (unknown, revoked, its business deactivated, or a bad signature)."""


class NonceReusedError(MykeyError):
    """The authentication message was already accepted once (a replay)."""


class ReplayProtectionError(TerminalAuthError):
    """Authentication refused: the shared record of accepted nonces cannot be written (fail closed)."""


class TerminalKeyError(MykeyError):
    """A terminal's key file could not be made (it exists already) or read (not an Ed25519 private key)."""


# --- certificates and CRLs -------------------------------------------------


class CertificateError(MykeyError):
    """A certificate (or CRL) could not be parsed or did not verify."""


class UntrustedCertificateError(CertificateError):
    """No valid path from the certificate to a configured trust anchor."""


class CertificateExpiredError(CertificateError):
    """A certificate in the path is outside its validity period at the check time."""


class CertificateNotYetValidError(CertificateExpiredError):
    """A certificate in the path is not valid yet (notBefore is after the check time)."""


class CertificateRevokedError(CertificateError):
    """The user certificate or an intermediate CA certificate has been revoked."""


class KeyUsageError(CertificateError):
    """The user certificate may not be used for digital signatures (authentication)."""


class UnsupportedKeyError(CertificateError):
    """The user certificate's key is not an RSA >= 2048 or ECDSA P-256 key."""


class ChallengeSignatureError(CertificateError):
    """Proof of possession failed: the signature over the challenge does not verify."""


class CrlError(CertificateError):
    """A CRL is malformed, from an untrusted issuer, badly signed, or out of date."""


class CertificateBundleError(UntrustedCertificateError):
    """A presented certificate bundle is too large or carries too many CA certificates."""


class StaleRevocationError(CertificateError):
    """A CA's latest applied CRL is past its nextUpdate (or too old): revocation cannot be checked."""


# --- audit trail -----------------------------------------------------------


class AuditError(MykeyError):
    """Base of audit-trail errors (keys, checkpoints, proofs, the Merkle trail)."""


class SigningKeyError(AuditError):
    """The checkpoint signing key or its verifier key is missing, unreadable or mismatched."""


class NoCheckpointError(AuditError):
    """No signed checkpoint covers what was asked for."""


class AuditMismatchError(AuditError):
    """The Merkle trail and the event log disagree about an event they both hold."""


class SubjectNotFoundError(AuditError):
    """The MyKey ID is not in the index."""


class CheckpointError(MykeyError):
    """A checkpoint, signed note or key was malformed, unsigned, or failed verification."""


class ProofError(MykeyError):
    """A Merkle inclusion or consistency proof did not verify, or could not be built."""


class MerkleStoreError(MykeyError):
    """The on-disk Merkle store could not be opened, read or written."""


class MerkleStoreLockedError(MerkleStoreError, LockHeldError):
    """Another process (or handle) holds the store's writer lock."""


class MerkleStoreCorruptError(MerkleStoreError):
    """The stored hashes contradict the root recorded at the last flush."""


class ReplayError(MykeyError):
    """A replay could not be made (target directory in use, no live index, the index kept moving)."""


# --- command line ------------------------------------------------------------


class InputFileError(MykeyError):
    """A file named on the command line cannot be used: too large, encrypted, or not what it should hold."""


class OutputFileError(MykeyError):
    """An output file would replace a file, follow a symlink, or land inside the data directory."""


# --- data directory permissions (mykey.fs) ------------------------------------------


class InsecurePermissionsError(MykeyError):
    """A data directory may be written by users other than its owner; make it owner-only (chmod 700)."""


# --- terminal gateway (the HTTP server, its single writer, the reference client) ---


class GatewayError(MykeyError):
    """Base of the terminal gateway's errors (server side and reference client)."""


class HttpProblem(GatewayError):
    """An HTTP request is refused: answered as RFC 9457 problem JSON with this status and problem type."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        extra: dict | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind  # the problem type's short name (also the refusal reason in the metrics)
        self.detail = detail
        self.headers = headers  # extra response headers (Retry-After, WWW-Authenticate, Allow)
        self.extra = extra or {}  # extension members of the problem JSON


class WriterUnavailableError(GatewayError):
    """The gateway's writer process cannot be reached, or an operator command holds the log; retry shortly."""


class GatewayProtocolError(GatewayError):
    """A message between gateway processes, or a gateway response, did not have the expected shape."""


class GatewayRefusedError(GatewayError):
    """The gateway answered a client's request with an error (its problem JSON says why)."""

    def __init__(self, status: int, problem: dict) -> None:
        title = problem.get("title") or f"HTTP {status}"
        detail = problem.get("detail") or ""
        super().__init__(f"the gateway refused ({status} {title}): {detail}".rstrip(": "))
        self.status = status
        self.problem = problem


# --- status lists (mykey.domain.statuslist, the list builder, the terminal's offline check) ---


class StatusListError(MykeyError):
    """A status list could not be built, read or trusted."""


class StatusListFormatError(StatusListError):
    """A status list token is not a well-formed status list (wrong typ, claims, encoding, or too large)."""


class StatusListSignatureError(StatusListError):
    """A status list token's signature does not verify under the published key (JWKS): do not use it."""


class StatusListExpiredError(StatusListError):
    """A status list token is past its exp: fetch a fresh one before answering offline."""


class StatusListKeyError(StatusListError):
    """The status-list signing key (DATA/keys/status-list.key) or its JWKS is missing or damaged."""


__all__ = sorted(n for n, v in list(globals().items()) if isinstance(v, type) and issubclass(v, MykeyError))
