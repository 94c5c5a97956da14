# cython: language_level=3
"""C loops for batch framing and RFC 9162 hashing (twin of mykey.log.framing; same bytes, same results).

Thin by design: builds and parses the byte layout described in mykey.log.framing,
which is the one home of the format: every size, the magic, the record limit and
every message come from there, and the field layout is checked against its
struct formats on import. All decisions about what an error means stay in Python.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from mykey.log import framing as _format
from mykey.log.framing import (
    BAD_HEADER,
    BAD_RECORD,
    BODY_TOO_LARGE,
    HEADER_SIZE,
    INCOMPLETE,
    MAGIC,
    MAX_BODY,
    MAX_RECORD,
    NEGATIVE_POS,
    OK,
    RECORD_HEAD_SIZE,
    RECORD_TOO_LARGE,
)

cdef extern from "zlib.h":
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len) nogil

cdef inline uint32_t record_crc(const uint8_t *p, size_t n) noexcept nogil:
    """CRC-32 of a record (zlib's crc32)."""
    return <uint32_t>crc32(0, p, <unsigned int>n)

# The C code below reads and writes the fields at fixed offsets: magic 0, hcrc 4,
# first_seq 8, count 16, body_len 20, flags 24, reserved 28; record len 0, crc 4.
if _format.HEADER.format != "<4sIQIIII" or _format.RECORD_HEAD.format != "<II" or len(MAGIC) != 4:
    raise ImportError(
        "mykey.log.framing changed the batch layout that mykey.log._framing was written for; "
        "update ext/_framing.pyx and rebuild it (make build)"
    )

cdef Py_ssize_t HSIZE = HEADER_SIZE
cdef Py_ssize_t RSIZE = RECORD_HEAD_SIZE
cdef Py_ssize_t MAXREC = MAX_RECORD
cdef Py_ssize_t MAXBODY = MAX_BODY
cdef bytes _MAGIC = MAGIC
cdef const char *MAGIC_P = _MAGIC  # _MAGIC keeps the bytes alive for the module's lifetime


cdef inline void put32(char *p, uint32_t v) noexcept nogil:
    p[0] = <char>(v & 0xff); p[1] = <char>((v >> 8) & 0xff)
    p[2] = <char>((v >> 16) & 0xff); p[3] = <char>((v >> 24) & 0xff)


cdef inline void put64(char *p, uint64_t v) noexcept nogil:
    put32(p, <uint32_t>(v & 0xffffffffu)); put32(p + 4, <uint32_t>(v >> 32))


cdef inline uint32_t get32(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t get64(const uint8_t *p) noexcept nogil:
    return get32(p) | (<uint64_t>get32(p + 4) << 32)


def encode_batch(uint64_t first_seq, list payloads):
    """Frame payloads as one batch whose first record has sequence number first_seq."""
    cdef Py_ssize_t n = len(payloads), i, plen, body_len = 0
    cdef bytes p
    for i in range(n):
        p = <bytes?>payloads[i]
        plen = PyBytes_GET_SIZE(p)
        if plen > MAXREC:
            raise ValueError(RECORD_TOO_LARGE.format(plen, MAX_RECORD))
        body_len += RSIZE + plen
    if body_len > MAXBODY:
        raise ValueError(BODY_TOO_LARGE)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HSIZE + body_len)
    cdef char *o = PyBytes_AS_STRING(out)
    memcpy(o, MAGIC_P, 4)
    put64(o + 8, first_seq)
    put32(o + 16, <uint32_t>n)
    put32(o + 20, <uint32_t>body_len)
    put32(o + 24, 0)
    put32(o + 28, 0)
    put32(o + 4, <uint32_t>crc32(0, <const unsigned char *>(o + 8), HSIZE - 8))
    cdef char *w = o + HSIZE
    cdef const char *src
    for i in range(n):
        p = <bytes>payloads[i]
        plen = PyBytes_GET_SIZE(p)
        src = PyBytes_AS_STRING(p)
        put32(w, <uint32_t>plen)
        put32(w + 4, record_crc(<const uint8_t *>src, <size_t>plen))
        memcpy(w + RSIZE, src, plen)
        w += RSIZE + plen
    return out


cdef inline bint header_ok(const uint8_t *h) noexcept nogil:
    if memcmp(h, MAGIC_P, 4) != 0:
        return False
    if crc32(0, h + 8, HSIZE - 8) != get32(h + 4):
        return False
    return get32(h + 20) >= <uint64_t>get32(h + 16) * RSIZE


def parse_header(const uint8_t[::1] buf, Py_ssize_t pos):
    """Return (first_seq, count, body_len) if a valid header starts at pos, else None."""
    if pos < 0:
        raise ValueError(NEGATIVE_POS)
    if buf.shape[0] - pos < HSIZE or not header_ok(&buf[pos]):
        return None
    return get64(&buf[pos + 8]), get32(&buf[pos + 16]), get32(&buf[pos + 20])


def parse_batches(const uint8_t[::1] buf, Py_ssize_t pos, Py_ssize_t max_records):
    """Parse consecutive batches from pos; same contract as mykey.log.framing.parse_batches."""
    return _parse(buf, pos, max_records, False)


def parse_records(const uint8_t[::1] buf, Py_ssize_t pos, Py_ssize_t max_records):
    """parse_batches, with each batch's payloads a sequence that makes each bytes object when it is read."""
    return _parse(buf, pos, max_records, True)


@cython.auto_pickle(False)
cdef class _Records:
    """A parsed batch's payloads: a read-only sequence of bytes, each copied out of the buffer when read.

    parse_records checked every record's framing and CRC before it made this; it holds the
    buffer, so a payload read later is the one that was checked (the buffer must not change:
    it is the bytes read from a segment file).
    """

    cdef const uint8_t[::1] buf
    cdef const uint8_t *base
    cdef Py_ssize_t *offs  # each payload's offset in buf; its length is the u32 just before its CRC
    cdef Py_ssize_t n

    def __dealloc__(self):
        free(self.offs)

    def __len__(self):
        return self.n

    cdef inline bytes item(self, Py_ssize_t i):
        cdef Py_ssize_t o = self.offs[i]
        return PyBytes_FromStringAndSize(<const char *>(self.base + o), get32(self.base + o - RSIZE))

    def __getitem__(self, i):
        cdef Py_ssize_t j
        if isinstance(i, slice):
            return [self.item(j) for j in range(*i.indices(self.n))]
        j = i
        if j < 0:
            j += self.n
        if not 0 <= j < self.n:
            raise IndexError("record index out of range")
        return self.item(j)

    def __iter__(self):
        return _RecordIter(self)

    def __repr__(self):
        return f"<{self.n} records>"


@cython.auto_pickle(False)
cdef class _RecordIter:
    cdef _Records records
    cdef Py_ssize_t i

    def __cinit__(self, _Records records):
        self.records = records
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.records.n:
            raise StopIteration
        self.i += 1
        return self.records.item(self.i - 1)


cdef tuple _parse(const uint8_t[::1] buf, Py_ssize_t pos, Py_ssize_t max_records, bint lazy):
    cdef Py_ssize_t end = buf.shape[0], rpos, bend, got = 0, i
    cdef uint32_t count, body_len, n, crc
    cdef uint64_t first_seq
    cdef const uint8_t *base = &buf[0] if end > 0 else NULL
    cdef list batches = []
    cdef list payloads = None
    cdef _Records records = None
    if pos < 0:
        raise ValueError(NEGATIVE_POS)
    while pos < end and got < max_records:
        if end - pos < HSIZE:
            return batches, pos, INCOMPLETE, pos, -1
        if not header_ok(base + pos):
            return batches, pos, BAD_HEADER, pos, -1
        first_seq = get64(base + pos + 8)
        count = get32(base + pos + 16)
        body_len = get32(base + pos + 20)
        if end - pos - HSIZE < body_len:
            return batches, pos, INCOMPLETE, pos, -1
        rpos = pos + HSIZE
        bend = rpos + body_len
        if lazy:  # count <= body_len / RSIZE (header_ok), and the body is in buf
            records = _Records.__new__(_Records)
            records.offs = <Py_ssize_t *>malloc((count if count else 1) * sizeof(Py_ssize_t))
            if records.offs == NULL:
                raise MemoryError()
            records.buf = buf
            records.base = base
        else:
            payloads = []
        for i in range(count):
            if bend - rpos < RSIZE:
                return batches, pos, BAD_RECORD, rpos, i
            n = get32(base + rpos)
            crc = get32(base + rpos + 4)
            rpos += RSIZE
            if n > bend - rpos or n > MAXREC:
                return batches, pos, BAD_RECORD, rpos - RSIZE, i
            if record_crc(base + rpos, n) != crc:
                return batches, pos, BAD_RECORD, rpos - RSIZE, i
            if lazy:
                records.offs[i] = rpos
            else:
                payloads.append(PyBytes_FromStringAndSize(<const char *>(base + rpos), n))
            rpos += n
        if rpos != bend:
            return batches, pos, BAD_RECORD, rpos, count
        if lazy:
            records.n = count
            batches.append((pos, first_seq, records))
        else:
            batches.append((pos, first_seq, payloads))
        got += count
        pos = bend
    return batches, pos, OK, pos, -1


# ---------------------------------------------------------------- RFC 9162 hashing
# SHA-256 of Merkle leaves and interior nodes, a batch per call and without the GIL,
# through OpenSSL's SHA256_Init/Update/Final (it uses the CPU's SHA extensions where there
# are any; its one-shot SHA256() goes through a provider fetch in OpenSSL 3, about 570 ns a
# call). The prefixes come from mykey.log.framing, which holds the pure twins of these functions.

cdef extern from *:
    """
    #define OPENSSL_SUPPRESS_DEPRECATED 1
    #include <openssl/sha.h>
    #include <stdint.h>
    #include <string.h>

    /* SHA-256(lead || d[0:n]) into out[0:32]; every byte of d is read before out is written. */
    static void mk_sha256_one(unsigned char lead, const uint8_t *d, size_t n, uint8_t *out) {
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, &lead, 1);
        SHA256_Update(&ctx, d, n);
        SHA256_Final(out, &ctx);
    }

    /* SHA-256(lead || da[0:na]) into oa and SHA-256(lead || db[0:nb]) into ob (32 bytes each);
       every input byte is read before an output is written over it (oa may overlap da, ob db or da). */
    static void mk_sha256_pair(unsigned char lead, const uint8_t *da, size_t na, const uint8_t *db, size_t nb,
                               uint8_t *oa, uint8_t *ob) {
        uint8_t ha[32];
        mk_sha256_one(lead, da, na, ha);
        mk_sha256_one(lead, db, nb, ob);
        memcpy(oa, ha, 32);
    }
    """
    void mk_sha256_one(unsigned char lead, const uint8_t *d, size_t n, uint8_t *out) nogil
    void mk_sha256_pair(unsigned char lead, const uint8_t *da, size_t na, const uint8_t *db, size_t nb,
                        uint8_t *oa, uint8_t *ob) nogil

from mykey.log.framing import HASH_SIZE, LEAF_PREFIX, NODE_PREFIX, NOT_PERFECT

if HASH_SIZE != 32 or len(LEAF_PREFIX) != 1 or len(NODE_PREFIX) != 1:
    raise ImportError(
        "mykey.log.framing changed the Merkle hashing that mykey.log._framing was written for; "
        "update ext/_framing.pyx and rebuild it (make build)"
    )

cdef unsigned char LEAF_BYTE = LEAF_PREFIX[0]
cdef unsigned char NODE_BYTE = NODE_PREFIX[0]


def leaf_hashes(payloads):
    """The RFC 9162 leaf hash SHA-256(0x00 || p) of every p in payloads, concatenated (32 bytes each)."""
    if isinstance(payloads, _Records):
        return _records_leaf_hashes(<_Records>payloads)
    cdef list items = list(payloads)  # holds every payload alive while the GIL is released
    cdef Py_ssize_t n = len(items), i
    cdef const char **ptrs = <const char **>malloc((n if n else 1) * sizeof(char *))
    cdef size_t *lens = <size_t *>malloc((n if n else 1) * sizeof(size_t))
    cdef bytes p, out
    cdef unsigned char *o
    if ptrs == NULL or lens == NULL:
        free(ptrs); free(lens)
        raise MemoryError()
    try:
        for i in range(n):
            if not isinstance(items[i], bytes):
                items[i] = bytes(memoryview(items[i]))  # any other bytes-like object, as the pure twin takes it
            p = <bytes>items[i]
            ptrs[i] = PyBytes_AS_STRING(p)
            lens[i] = <size_t>PyBytes_GET_SIZE(p)
        out = PyBytes_FromStringAndSize(NULL, 32 * n)
        o = <unsigned char *>PyBytes_AS_STRING(out)
        with nogil:
            for i in range(0, n - 1, 2):
                mk_sha256_pair(LEAF_BYTE, <const uint8_t *>ptrs[i], lens[i], <const uint8_t *>ptrs[i + 1], lens[i + 1],
                               o + 32 * i, o + 32 * i + 32)
            if n & 1:
                mk_sha256_one(LEAF_BYTE, <const uint8_t *>ptrs[n - 1], lens[n - 1], o + 32 * (n - 1))
    finally:
        free(ptrs); free(lens)
    return out


cdef void fold_level(unsigned char *h, Py_ssize_t pairs) noexcept nogil:
    """Replace 2*pairs node hashes at h by their pairs' parents, in place (h[0:32*pairs])."""
    cdef Py_ssize_t j
    for j in range(0, pairs - 1, 2):  # parents j, j+1 overwrite children 2j.. only once those were read
        mk_sha256_pair(NODE_BYTE, h + 64 * j, 64, h + 64 * j + 64, 64, h + 32 * j, h + 32 * j + 32)
    if pairs & 1:
        mk_sha256_one(NODE_BYTE, h + 64 * (pairs - 1), 64, h + 32 * (pairs - 1))


def perfect_root(const uint8_t[::1] hashes):
    """Root of the perfect subtree over hashes (32 bytes each, a power of two of them), folded a level at a time."""
    cdef Py_ssize_t size = hashes.shape[0], n = size // 32
    if size % 32 or n == 0 or n & (n - 1):
        raise ValueError(NOT_PERFECT.format(size))
    cdef unsigned char *work = <unsigned char *>malloc(size)
    if work == NULL:
        raise MemoryError()
    try:
        with nogil:
            memcpy(work, &hashes[0], size)
            while n > 1:
                n >>= 1
                fold_level(work, n)
        return PyBytes_FromStringAndSize(<const char *>work, 32)
    finally:
        free(work)


cdef bytes _records_leaf_hashes(_Records records):
    """leaf_hashes of a _Records sequence, straight from its buffer."""
    cdef Py_ssize_t n = records.n, i, o, p
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 32 * n)
    cdef unsigned char *h = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const uint8_t *base = records.base
    cdef Py_ssize_t *offs = records.offs
    with nogil:
        for i in range(0, n - 1, 2):
            o, p = offs[i], offs[i + 1]
            mk_sha256_pair(LEAF_BYTE, base + o, get32(base + o - RSIZE), base + p, get32(base + p - RSIZE),
                           h + 32 * i, h + 32 * i + 32)
        if n & 1:
            o = offs[n - 1]
            mk_sha256_one(LEAF_BYTE, base + o, get32(base + o - RSIZE), h + 32 * (n - 1))
    return out
