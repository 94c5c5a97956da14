"""The verifiable log: a Merkle trail beside the event log, signed checkpoints, proofs and audits.

One module per concept; a module imports only modules listed before it:

- ``merkle``: RFC 9162 hashing, inclusion and consistency proofs (pure).
- ``merkle_store``: the append-only on-disk Merkle tree (DATA/merkle).
- ``checkpoint``: the signed checkpoint note and verifier key formats, C2SP (pure).
- ``checkpoints``: the stored signed checkpoints of a data directory (DATA/checkpoints/).
- ``keys``: the data directory's checkpoint signing key pair (DATA/keys/).
- ``replay``: the index as it stood at a point in time; the live index against a replay.
- ``trail``: ``AuditTrail`` keeps DATA/merkle in step with the log and signs checkpoints;
  reading the trail and a record (leaf ``seq - 1`` is record ``seq`` as stored).
- ``proofs``: inclusion and consistency proof documents: built from a data directory,
  checked offline with only the log's public key.
- ``verify``: ``verify_data_dir``, the full audit behind ``mykey audit verify``.
- ``history``: a person's own history, each event with its inclusion proof.
- ``statuslist_keys``: the platform's status-list signing key and its public JWKS (DATA/keys/).

Logs are opened with ``mykey.log.backend.open_log`` and used through the LogStore
interface, so every tool here works on any log backend; ``verify`` adds the file log's own
byte-level checks (segments, offsets, torn tails) when the log is a file log.
"""
