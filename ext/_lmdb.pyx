# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin Cython binding to the LMDB C library (liblmdb 0.9), imported as mykey.index._lmdb.

Same interface and byte-identical results as mykey.index._lmdb_pure (py-lmdb). The only
loops here are C loops over buffers: batch puts and batch lookups (resolve_many),
which run without the GIL.
"""
cimport cython
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast_ITEMS

import os
import threading
import time
import weakref

from mykey.index.envguard import (
    FORKED_MESSAGE,
    DbNotFoundError,
    EnvNotFoundError,
    LmdbError,
    MapFullError,
    MapResizedError,
    acquire,
    key_size_error,
    lmdb_error,
    release,
)
from mykey.errors import EnvAlreadyOpenError

__all__ = [
    "NAME", "LMDB_VERSION", "Env", "Txn", "Cursor", "Reader",
    "LmdbError", "DbNotFoundError", "MapFullError", "MapResizedError",
    "EnvNotFoundError", "EnvAlreadyOpenError",
]

cdef extern from "lmdb.h" nogil:
    ctypedef struct MDB_env:
        pass
    ctypedef struct MDB_txn:
        pass
    ctypedef struct MDB_cursor:
        pass
    ctypedef unsigned int MDB_dbi
    ctypedef struct MDB_val:
        size_t mv_size
        void *mv_data
    ctypedef struct MDB_stat:
        unsigned int ms_psize
        unsigned int ms_depth
        size_t ms_branch_pages
        size_t ms_leaf_pages
        size_t ms_overflow_pages
        size_t ms_entries
    ctypedef struct MDB_envinfo:
        void *me_mapaddr
        size_t me_mapsize
        size_t me_last_pgno
        size_t me_last_txnid
        unsigned int me_maxreaders
        unsigned int me_numreaders
    ctypedef enum MDB_cursor_op:
        MDB_FIRST
        MDB_GET_CURRENT
        MDB_NEXT
        MDB_SET
        MDB_SET_RANGE

    enum:
        MDB_NOSYNC
        MDB_NOMETASYNC
        MDB_CP_COMPACT
        MDB_RDONLY
        MDB_NOTLS
        MDB_NORDAHEAD
        MDB_CREATE
        MDB_SUCCESS
        MDB_NOTFOUND
        MDB_MAP_RESIZED

    char *mdb_version(int *major, int *minor, int *patch)
    char *mdb_strerror(int err)
    int mdb_env_create(MDB_env **env)
    int mdb_env_open(MDB_env *env, const char *path, unsigned int flags, int mode)
    void mdb_env_close(MDB_env *env)
    int mdb_env_set_mapsize(MDB_env *env, size_t size)
    int mdb_env_set_maxreaders(MDB_env *env, unsigned int readers)
    int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs)
    int mdb_env_get_maxkeysize(MDB_env *env)
    int mdb_env_info(MDB_env *env, MDB_envinfo *stat)
    int mdb_env_sync(MDB_env *env, int force)
    int mdb_env_copy2(MDB_env *env, const char *path, unsigned int flags) nogil
    int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn)
    int mdb_txn_commit(MDB_txn *txn)
    void mdb_txn_abort(MDB_txn *txn)
    void mdb_txn_reset(MDB_txn *txn)
    int mdb_txn_renew(MDB_txn *txn)
    int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
    int mdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat)
    int mdb_drop(MDB_txn *txn, MDB_dbi dbi, int delete_)
    int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags)
    int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
    void mdb_cursor_close(MDB_cursor *cursor)
    int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* First 8 bytes at p as a big-endian integer: memcmp order of 8-byte strings. */
    static inline uint64_t mk_load_be64(const unsigned char *p) {
        uint64_t v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    """
    uint64_t mk_load_be64(const unsigned char *p) nogil

cdef extern from "Python.h":
    int PyUnicode_IS_ASCII(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL

cdef extern from "pthread.h" nogil:
    ctypedef void (*_atfork_fn)() noexcept nogil
    int pthread_atfork(_atfork_fn prepare, _atfork_fn parent, _atfork_fn child)

# Bumped in the child after every fork(): handles from an older generation belong to
# the parent, and touching them (even to close them) would damage its locks.
cdef unsigned long _fork_gen = 0

cdef void _on_fork_child() noexcept nogil:
    global _fork_gen
    _fork_gen += 1

pthread_atfork(NULL, NULL, _on_fork_child)

NAME = "native"
cdef int _maj = 0, _min = 0, _pat = 0
mdb_version(&_maj, &_min, &_pat)
LMDB_VERSION = (_maj, _min, _pat)

_METHODS = ("auto", "get", "sorted")
_MAX_READERS = 126  # reader slots of an environment (py-lmdb's default, which the pure twin uses too)
# How long a thread waits for this process's other transactions to finish before it
# gives up adopting a map that another process grew (MDB_MAP_RESIZED).
_RESIZE_WAIT_S = 2.0
# Largest scratch block a Reader keeps between resolve_many calls (about 600,000 keys).
cdef size_t _SCRATCH_MAX = 32 << 20


cdef object _err(str what, int rc):
    return lmdb_error(what, rc, mdb_strerror(rc).decode("utf-8", "replace"))


cdef inline bytes _key_arg(object k, str what):
    """bytes as they are; str encoded as ASCII; anything else is a TypeError."""
    if isinstance(k, bytes):
        return <bytes>k
    if isinstance(k, str):
        return (<str>k).encode("ascii")
    raise TypeError(f"{what} must be bytes or an ASCII str, got {type(k).__name__}")


cdef inline bytes _val_arg(object v):
    if isinstance(v, bytes):
        return <bytes>v
    raise TypeError(f"value must be bytes, got {type(v).__name__}")


cdef inline int _check_method(object method, object sort_threshold) except -1:
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"method must be 'auto', 'get' or 'sorted', got {method!r}")
    if not isinstance(sort_threshold, int) or isinstance(sort_threshold, bool) or sort_threshold < 0:
        raise ValueError(f"sort_threshold must be an int >= 0, got {sort_threshold!r}")
    return 0


cdef inline int _key_ptr(object k, const char **p, Py_ssize_t *n) except -1:
    """Point at the bytes of a key without copying: bytes, or an ASCII str's own data."""
    if isinstance(k, bytes):
        p[0] = PyBytes_AS_STRING(k)
        n[0] = PyBytes_GET_SIZE(k)
        return 0
    if isinstance(k, str):
        if not PyUnicode_IS_ASCII(k):
            (<str>k).encode("ascii")  # raises the UnicodeEncodeError the pure binding raises
        p[0] = PyUnicode_AsUTF8AndSize(k, n)
        return 0
    raise TypeError(f"key must be bytes or an ASCII str, got {type(k).__name__}")


# ---------------------------------------------------------------------------
# resolve_many in C: every prefix+key packed into one buffer (key i is
# buf[offs[i]:offs[i+1]]), looked up without the GIL in input order (mdb_get) or in
# key order (one cursor), and each answer placed at the key's input position.

ctypedef struct SortItem:
    uint64_t head   # 8 bytes of the key after the batch's common prefix, big-endian
    size_t idx      # position of the key in the input

ctypedef struct Scratch:
    unsigned char *buf      # the packed keys
    size_t buf_cap
    unsigned char *arr      # 2n sort items (sorted path only), then n+1 offsets
    size_t arr_cap

ctypedef struct Batch:
    const unsigned char *buf
    const size_t *offs
    size_t n
    size_t maxkey           # longer keys cannot be stored: answered 0 without a lookup
    SortItem *items         # scratch for 2n items (sorted path), else NULL
    unsigned char *out      # one answer byte per key


cdef inline int _kcmp(const unsigned char *buf, const size_t *offs, size_t a, size_t b) noexcept nogil:
    """LMDB's default order: memcmp over the shorter length, then shorter first."""
    cdef size_t la = offs[a + 1] - offs[a], lb = offs[b + 1] - offs[b]
    cdef int r = memcmp(buf + offs[a], buf + offs[b], la if la < lb else lb)
    if r:
        return r
    return (la > lb) - (la < lb)


cdef inline int _icmp(const SortItem *x, const SortItem *y,
                      const unsigned char *buf, const size_t *offs) noexcept nogil:
    """Item order: by head, then by the whole key (heads are equal only for near-equal keys)."""
    if x.head != y.head:
        return -1 if x.head < y.head else 1
    return _kcmp(buf, offs, x.idx, y.idx)


cdef void _merge_sort(SortItem *a, SortItem *tmp, size_t n,
                      const unsigned char *buf, const size_t *offs) noexcept nogil:
    """Stable sort of a[0:n] by _icmp: insertion sort when short, else top-down merge sort."""
    cdef size_t i, j, k, h
    cdef SortItem x
    if n <= 16:
        for i in range(1, n):
            x = a[i]
            j = i
            while j > 0 and _icmp(&a[j - 1], &x, buf, offs) > 0:
                a[j] = a[j - 1]
                j -= 1
            a[j] = x
        return
    h = n // 2
    _merge_sort(a, tmp, h, buf, offs)
    _merge_sort(a + h, tmp, n - h, buf, offs)
    if _icmp(&a[h - 1], &a[h], buf, offs) <= 0:
        return
    memcpy(tmp, a, h * sizeof(SortItem))
    i = 0
    j = h
    k = 0
    while i < h and j < n:
        if _icmp(&a[j], &tmp[i], buf, offs) < 0:
            a[k] = a[j]
            j += 1
        else:
            a[k] = tmp[i]
            i += 1
        k += 1
    while i < h:
        a[k] = tmp[i]
        i += 1
        k += 1


cdef int _sort_keys(SortItem *a, SortItem *tmp, size_t m,
                    const unsigned char *buf, const size_t *offs) noexcept nogil:
    """Sort a[0:m] (idx filled in) into LMDB's key order.

    Every key gets a head: the 8 bytes after the prefix all keys share, big-endian, zero
    padded, so head order agrees with key order. An LSD radix sort orders the items by
    the top ~log2(m)+1 bits of the head (one or two 11-bit passes for typical batches);
    the short runs it leaves with equal top bits are finished by comparison (head, then
    whole key), which also orders keys whose heads tie.
    """
    cdef size_t i, j, cp, L, lim, total, c, s, shift
    cdef size_t cnt[2048]
    cdef const unsigned char *k0
    cdef const unsigned char *k
    cdef unsigned char tail[8]
    cdef uint64_t top
    cdef int bits, passes, d, topshift
    cdef SortItem *src
    cdef SortItem *dst
    cdef SortItem *t
    if m < 2:
        return 0
    # Bytes every key shares (at least the prefix): sort on the 8 bytes after them.
    k0 = buf + offs[a[0].idx]
    cp = offs[a[0].idx + 1] - offs[a[0].idx]
    for i in range(1, m):
        k = buf + offs[a[i].idx]
        L = offs[a[i].idx + 1] - offs[a[i].idx]
        lim = cp if cp < L else L
        j = 0
        while j < lim and k[j] == k0[j]:
            j += 1
        cp = j
    for i in range(m):
        k = buf + offs[a[i].idx] + cp
        L = offs[a[i].idx + 1] - offs[a[i].idx] - cp
        if L >= 8:
            a[i].head = mk_load_be64(k)
        else:
            memcpy(tail, k, L)
            for j in range(L, 8):
                tail[j] = 0
            a[i].head = mk_load_be64(tail)
    # Radix on enough top bits that runs of equal top bits are short (about 2^bits >= 2m).
    bits = 2
    while bits < 64 and (<size_t>1 << (bits - 1)) < m:
        bits += 1
    passes = (bits + 10) // 11
    if passes > 5:
        passes = 5
    topshift = 64 - 11 * passes
    src = a
    dst = tmp
    for d in range(passes):
        shift = <size_t>(topshift + 11 * d)
        for j in range(2048):
            cnt[j] = 0
        for i in range(m):
            cnt[(src[i].head >> shift) & 2047] += 1
        if cnt[(src[0].head >> shift) & 2047] == m:
            continue  # every key has the same digit here: the pass would not move anything
        total = 0
        for j in range(2048):
            c = cnt[j]
            cnt[j] = total
            total += c
        for i in range(m):
            s = (src[i].head >> shift) & 2047
            dst[cnt[s]] = src[i]
            cnt[s] += 1
        t = src
        src = dst
        dst = t
    if src != a:
        memcpy(a, src, m * sizeof(SortItem))
    # Finish runs of equal top bits by comparison.
    i = 0
    while i < m:
        top = a[i].head >> topshift
        j = i + 1
        while j < m and (a[j].head >> topshift) == top:
            j += 1
        if j - i > 1:
            _merge_sort(a + i, tmp, j - i, buf, offs)
        i = j
    return 0


# Answers of resolve_many: one byte per key, placed at the key's input position.

cdef inline void _key_at(const Batch *b, size_t i, MDB_val *k) noexcept nogil:
    k.mv_size = b.offs[i + 1] - b.offs[i]
    k.mv_data = <void *>(b.buf + b.offs[i])


cdef inline bint _storable(const Batch *b, size_t i) noexcept nogil:
    """Whether key i can be in LMDB at all (1..maxkey bytes); other keys are answered 0 unlooked."""
    cdef size_t n = b.offs[i + 1] - b.offs[i]
    return n != 0 and n <= b.maxkey


cdef inline int _place(int rc, const MDB_val *v, unsigned char *slot) noexcept nogil:
    """Write one lookup's answer into its slot (already 0): the value's first byte, 0 if empty.

    Returns rc with MDB_NOTFOUND (an answer, not an error) turned into 0.
    """
    if rc == 0:
        if v.mv_size:
            slot[0] = (<unsigned char *>v.mv_data)[0]
        return 0
    return 0 if rc == MDB_NOTFOUND else rc


cdef int _lookup_get(MDB_txn *txn, MDB_dbi dbi, const Batch *b, const char **failed) noexcept nogil:
    """The mdb_get path: one lookup per key, in input order."""
    cdef MDB_val k, v
    cdef size_t i
    cdef int rc
    for i in range(b.n):
        if not _storable(b, i):
            continue
        _key_at(b, i, &k)
        rc = _place(mdb_get(txn, dbi, &k, &v), &v, b.out + i)
        if rc:
            failed[0] = "mdb_get"
            return rc
    return 0


cdef size_t _sort_batch(const Batch *b) noexcept nogil:
    """Put the positions of the storable keys in b.items, in LMDB's key order; returns how many."""
    cdef size_t i, m = 0
    for i in range(b.n):
        if _storable(b, i):
            b.items[m].idx = i
            m += 1
    _sort_keys(b.items, b.items + b.n, m, b.buf, b.offs)
    return m


cdef inline bint _same_key(const Batch *b, const SortItem *x, const SortItem *y) noexcept nogil:
    """Whether two items hold equal keys (their heads first: the cheap test)."""
    cdef size_t n = b.offs[x.idx + 1] - b.offs[x.idx]
    return (x.head == y.head and n == b.offs[y.idx + 1] - b.offs[y.idx]
            and memcmp(b.buf + b.offs[x.idx], b.buf + b.offs[y.idx], n) == 0)


cdef int _lookup_sorted(MDB_txn *txn, MDB_dbi dbi, const Batch *b, const char **failed) noexcept nogil:
    """The sorted-cursor path: sort the keys, then look them up in key order with one
    cursor (MDB_SET); a repeated key takes the answer of the one before it."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k, v
    cdef size_t s, m
    cdef int rc = 0
    m = _sort_batch(b)
    if m == 0:
        return 0
    rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        failed[0] = "mdb_cursor_open"
        return rc
    for s in range(m):
        if s and _same_key(b, &b.items[s - 1], &b.items[s]):
            b.out[b.items[s].idx] = b.out[b.items[s - 1].idx]
            continue
        _key_at(b, b.items[s].idx, &k)
        rc = _place(mdb_cursor_get(cur, &k, &v, MDB_SET), &v, b.out + b.items[s].idx)
        if rc:
            failed[0] = "mdb_cursor_get"
            break
    mdb_cursor_close(cur)
    return rc


cdef int _lookup(MDB_txn *txn, MDB_dbi dbi, const Batch *b, bint use_sorted,
                 const char **failed) noexcept nogil:
    """Answer every key of the batch in b.out; 0, or the LMDB error and the call that failed."""
    memset(b.out, 0, b.n)
    if use_sorted:
        return _lookup_sorted(txn, dbi, b, failed)
    return _lookup_get(txn, dbi, b, failed)


# Argument packing: prefix+key of every key copied into one scratch buffer.

cdef int _reserve(Scratch *s, size_t n, size_t plen, bint use_sorted) except -1:
    """Make s big enough for n keys of up to 16 bytes after the prefix (the key buffer
    grows while packing if they are longer), their offsets and, sorted, 2n sort items."""
    cdef size_t need = n * (plen + 16) + 64
    if s.buf_cap < need:
        free(s.buf)
        s.buf_cap = need
        s.buf = <unsigned char *>malloc(need)
    need = (n + 1) * sizeof(size_t) + (2 * n * sizeof(SortItem) if use_sorted else 0)
    if s.arr_cap < need:
        free(s.arr)
        s.arr_cap = need
        s.arr = <unsigned char *>malloc(need)
    if s.buf == NULL or s.arr == NULL:
        raise MemoryError("resolve_many: out of memory")
    return 0


cdef int _pack(Scratch *s, Batch *b, object keys, object prefix, bint use_sorted) except -1:
    """Check every key and copy prefix+key into s (key i at buf[offs[i]:offs[i+1]]);
    b then describes the packed batch. keys is a list or tuple, prefix bytes."""
    cdef PyObject **items = PySequence_Fast_ITEMS(keys)
    cdef size_t n = <size_t>len(keys)
    cdef const char *pp = PyBytes_AS_STRING(prefix)
    cdef size_t plen = <size_t>PyBytes_GET_SIZE(prefix)
    cdef const char *kp
    cdef Py_ssize_t klen
    cdef size_t i, pos = 0, cap
    cdef size_t *offs
    cdef unsigned char *grown
    _reserve(s, n, plen, use_sorted)
    # The sort items come first (malloc's alignment suits them), the offsets after.
    offs = <size_t *>(s.arr + (2 * n * sizeof(SortItem) if use_sorted else 0))
    for i in range(n):
        _key_ptr(<object>items[i], &kp, &klen)
        if pos + plen + <size_t>klen > s.buf_cap:
            cap = 2 * s.buf_cap + plen + <size_t>klen
            grown = <unsigned char *>realloc(s.buf, cap)
            if grown == NULL:
                raise MemoryError("resolve_many: out of memory")
            s.buf = grown
            s.buf_cap = cap
        offs[i] = pos
        memcpy(s.buf + pos, pp, plen)
        memcpy(s.buf + pos + plen, kp, <size_t>klen)
        pos += plen + <size_t>klen
    offs[n] = pos
    b.buf = s.buf
    b.offs = offs
    b.n = n
    b.items = <SortItem *>s.arr if use_sorted else NULL
    return 0


cdef inline void _stash(unsigned char **slot, size_t *slot_cap, unsigned char *block, size_t cap,
                        bint keep) noexcept:
    """Keep a scratch block in an empty slot for the next call, or free it."""
    if keep and block != NULL and slot[0] == NULL and cap <= _SCRATCH_MAX:
        slot[0] = block
        slot_cap[0] = cap
    else:
        free(block)


cdef int _put_loop(MDB_txn *txn, MDB_dbi dbi, MDB_val *keys, MDB_val *vals, size_t n) noexcept nogil:
    cdef size_t i
    cdef int rc
    for i in range(n):
        rc = mdb_put(txn, dbi, &keys[i], &vals[i], 0)
        if rc:
            return rc
    return 0


# ---------------------------------------------------------------------------
# Bookkeeping of an Env's use, in two counters with one owner each:
#
# _active:   transactions of this process that are open (LMDB can adopt a map grown by
#            another process, or change the map size, only when there are none). Every
#            MDB_txn is counted from just before mdb_txn_begin / mdb_txn_renew until it
#            is committed, aborted or reset, and only Env._begin_raw, _renew_raw,
#            _end_raw and _reset_raw change the count.
# _inflight: calls running without the GIL (Env.close refuses while there are any).
#            Only _NoGilCalls changes it, as the context of every `with nogil` block that
#            uses the environment: the count comes back down however the block ends.


@cython.final
cdef class _NoGilCalls:
    """Counts the calls running without the GIL in their Env's _inflight, while in a with-block."""

    cdef int *_count   # the owning Env's _inflight (the Env outlives every call it makes)

    def __enter__(self):
        self._count[0] += 1

    def __exit__(self, exc_type, exc, tb):
        self._count[0] -= 1
        return False


@cython.no_gc_clear
cdef class Env:
    """An LMDB environment (a directory holding data.mdb and lock.mdb) opened through the C library."""

    cdef MDB_env *_env
    cdef readonly str path
    cdef readonly bint readonly
    cdef object _key
    cdef unsigned long _gen
    cdef size_t _maxkey
    cdef dict _dbis          # name -> dbi
    cdef set _handles        # dbis handed out
    cdef object _children    # WeakSet of live Txn and Reader objects
    cdef object _dbi_lock
    cdef int _active         # open transactions (see above)
    cdef int _inflight       # calls running without the GIL (see above)
    cdef _NoGilCalls _nogil  # `with self._nogil:` around every `with nogil` block
    cdef object _writer_tid  # thread owning the open write transaction, or None
    cdef object __weakref__

    def __cinit__(self):
        self._env = NULL
        self._nogil = _NoGilCalls.__new__(_NoGilCalls)
        self._nogil._count = &self._inflight

    def __init__(self, path, *, bint readonly=False, size_t map_size=64 << 30, unsigned int max_dbs=16,
                 bint nordahead=False, bint create=True, bint sync=True, bint metasync=True):
        cdef MDB_env *env = NULL
        cdef unsigned int flags = MDB_NOTLS
        cdef int rc
        cdef bytes bpath
        cdef const char *cpath
        if self._env != NULL:
            raise LmdbError("Env is already open; make a new Env instead of calling __init__ again")
        path = os.path.abspath(os.fspath(path))
        self.path = path
        self.readonly = readonly
        self._dbis = {}
        self._handles = set()
        self._children = weakref.WeakSet()
        self._dbi_lock = threading.Lock()
        self._key = acquire(path, NAME, create=create and not readonly)
        try:
            rc = mdb_env_create(&env)
            if rc:
                raise _err("mdb_env_create", rc)
            what = "mdb_env_set_mapsize"
            rc = mdb_env_set_mapsize(env, map_size)
            if rc == 0:
                what = "mdb_env_set_maxdbs"
                rc = mdb_env_set_maxdbs(env, max_dbs)
            if rc == 0:
                what = "mdb_env_set_maxreaders"
                rc = mdb_env_set_maxreaders(env, _MAX_READERS)
            if rc:
                mdb_env_close(env)
                raise _err(what, rc)
            if readonly:
                flags |= MDB_RDONLY
            if nordahead:
                flags |= MDB_NORDAHEAD
            if not sync:
                flags |= MDB_NOSYNC
            if not metasync:
                flags |= MDB_NOMETASYNC
            bpath = os.fsencode(path)
            cpath = bpath
            with nogil:
                rc = mdb_env_open(env, cpath, flags, 0o644)
            if rc:
                mdb_env_close(env)
                if rc == 2:  # ENOENT: read-only open of a directory without data.mdb
                    raise EnvNotFoundError(
                        f"mdb_env_open: no LMDB environment in {path!r}; check the path, or "
                        f"open it writable with create=True to make a new environment", rc)
                raise _err(f"mdb_env_open({path!r})", rc)
        except BaseException:
            release(self._key)
            self._key = None
            raise
        self._env = env
        self._gen = _fork_gen
        self._maxkey = <size_t>mdb_env_get_maxkeysize(env)

    def __dealloc__(self):
        if self._env != NULL:
            if self._gen == _fork_gen:
                mdb_env_close(self._env)
            self._env = NULL
            try:
                release(self._key)
            except BaseException:
                pass

    cdef int _check(self) except -1:
        if self._env == NULL:
            raise LmdbError(f"environment {self.path!r} is closed; open a new Env")
        if self._gen != _fork_gen:
            raise LmdbError(FORKED_MESSAGE)
        return 0

    cdef MDB_dbi _dbi(self, object db) except? 0:
        if db not in self._handles:
            raise LmdbError(f"unknown database handle {db!r}; use a handle returned by open_db on this Env")
        return <MDB_dbi>db

    cdef int _adopt_map_size(self) except -1:
        """Another process grew the map: wait until this process has no open
        transaction, then adopt the size (mdb_env_set_mapsize(env, 0))."""
        cdef int rc
        deadline = time.monotonic() + _RESIZE_WAIT_S
        while self._active > 0:
            if time.monotonic() > deadline:
                raise MapResizedError(
                    f"another process grew the map of {self.path!r} and this process still has "
                    f"{self._active} transaction(s) open, so it cannot adopt the new size: commit or "
                    f"abort them (or open with a map_size at least as large as the writer's) and retry",
                    MDB_MAP_RESIZED)
            time.sleep(0.001)
        self._check()
        rc = mdb_env_set_mapsize(self._env, 0)
        if rc:
            raise _err("mdb_env_set_mapsize", rc)
        return 0

    # -- the four owners of _active --------------------------------------------

    cdef int _begin_raw(self, unsigned int flags, MDB_txn **out) except -1:
        """Begin a transaction, counted in _active; adopt a grown map once."""
        cdef int rc
        cdef int attempt
        for attempt in range(2):
            self._check()
            # Counted before the call: a write begin releases the GIL, and a thread
            # adopting a grown map must wait for it.
            self._active += 1
            if flags & MDB_RDONLY:
                rc = mdb_txn_begin(self._env, NULL, flags, out)
            else:
                with self._nogil:
                    with nogil:  # may wait for another process's writer
                        rc = mdb_txn_begin(self._env, NULL, flags, out)
            if rc == 0:
                return 0
            self._active -= 1
            if rc == MDB_MAP_RESIZED and attempt == 0:
                self._adopt_map_size()
                continue
            raise _err("mdb_txn_begin", rc)
        return 0

    cdef int _renew_raw(self, MDB_txn *txn) except -1:
        """Renew a reset read transaction, counted in _active; adopt a grown map once.
        If it cannot be renewed it is aborted."""
        cdef int rc
        cdef int attempt
        for attempt in range(2):
            self._active += 1
            rc = mdb_txn_renew(txn)
            if rc == 0:
                return 0
            self._active -= 1
            if rc == MDB_MAP_RESIZED and attempt == 0:
                try:
                    self._adopt_map_size()
                except BaseException:
                    mdb_txn_abort(txn)
                    raise
                continue
            break
        mdb_txn_abort(txn)
        raise _err("mdb_txn_renew", rc)

    cdef int _end_raw(self, MDB_txn *txn, bint commit) except -1:
        """Commit (commit=True) or abort a transaction; it leaves _active either way."""
        cdef int rc = 0
        if commit:
            try:
                with self._nogil:
                    with nogil:
                        rc = mdb_txn_commit(txn)
            finally:
                self._active -= 1
        else:
            mdb_txn_abort(txn)
            self._active -= 1
        if rc:
            raise _err("mdb_txn_commit", rc)
        return 0

    cdef void _reset_raw(self, MDB_txn *txn) noexcept:
        """Reset a read transaction for a later renew; it leaves _active."""
        mdb_txn_reset(txn)
        self._active -= 1

    # ---------------------------------------------------------------------------

    def open_db(self, name, *, bint create=True):
        """Open (and, in a writable env, create) the named database; return its integer handle."""
        cdef MDB_txn *txn
        cdef MDB_dbi dbi
        cdef int rc
        cdef const char *cname
        self._check()
        if not isinstance(name, bytes) or not name:
            raise TypeError(f"database name must be non-empty bytes, got {name!r}")
        with self._dbi_lock:
            if name in self._dbis:
                return self._dbis[name]
            if not self.readonly and self._writer_tid == threading.get_ident():
                raise LmdbError(
                    f"open_db({name!r}) called while this thread has a write transaction open; "
                    f"open databases before beginning the write transaction")
            bname = <bytes>name
            cname = bname
            # The handle outlives the transaction only if the transaction commits.
            self._begin_raw(MDB_RDONLY, &txn)
            rc = mdb_dbi_open(txn, cname, 0, &dbi)
            self._end_raw(txn, rc == 0)
            if rc == MDB_NOTFOUND and create and not self.readonly:
                self._begin_raw(0, &txn)
                rc = mdb_dbi_open(txn, cname, MDB_CREATE, &dbi)
                self._end_raw(txn, rc == 0)
            if rc == MDB_NOTFOUND:
                raise DbNotFoundError(
                    f"database {name!r} does not exist in {self.path!r}; create it with "
                    f"open_db({name!r}, create=True) in a writable Env (the projector does), "
                    f"or check the name", rc)
            if rc:
                raise _err(f"mdb_dbi_open({name!r})", rc)
            self._dbis[name] = dbi
            self._handles.add(dbi)
            return dbi

    def begin(self, bint write=False):
        """Begin a transaction (read-only unless write=True); use it as a context manager."""
        cdef Txn t
        self._check()
        if write:
            if self.readonly:
                raise LmdbError(f"environment {self.path!r} is open read-only; open it with readonly=False to write")
            if self._writer_tid == threading.get_ident():
                raise LmdbError("this thread already has a write transaction open; commit or abort it "
                                "first (LMDB allows one writer at a time)")
        t = Txn.__new__(Txn)
        t.env = self
        t.write = write
        t._cursors = weakref.WeakSet()
        self._begin_raw(0 if write else MDB_RDONLY, &t._txn)
        if write:
            self._writer_tid = threading.get_ident()
        self._children.add(t)
        return t

    def reader(self):
        """A long-lived lookup helper that reuses reset read transactions between calls."""
        cdef Reader r
        self._check()
        r = Reader.__new__(Reader)
        r.env = self
        self._children.add(r)
        return r

    def stat(self, db):
        """Statistics of one database: entries, depth, psize and page counts."""
        cdef MDB_txn *txn
        cdef MDB_stat st
        cdef MDB_dbi dbi = self._dbi(db)
        cdef int rc
        self._begin_raw(MDB_RDONLY, &txn)
        rc = mdb_stat(txn, dbi, &st)
        self._end_raw(txn, False)
        if rc:
            raise _err("mdb_stat", rc)
        return {"entries": st.ms_entries, "depth": st.ms_depth, "psize": st.ms_psize,
                "branch_pages": st.ms_branch_pages, "leaf_pages": st.ms_leaf_pages,
                "overflow_pages": st.ms_overflow_pages}

    def info(self):
        """Map size, last transaction id and last page number of the environment."""
        cdef MDB_envinfo inf
        cdef int rc
        self._check()
        rc = mdb_env_info(self._env, &inf)
        if rc:
            raise _err("mdb_env_info", rc)
        return {"map_size": inf.me_mapsize, "last_txnid": inf.me_last_txnid, "last_pgno": inf.me_last_pgno}

    def set_map_size(self, size_t n):
        """Change the map size; every transaction of this process must be closed."""
        cdef int rc
        self._check()
        if self._active:
            raise LmdbError(f"set_map_size needs every transaction of this process on {self.path!r} "
                            f"closed, but {self._active} are open; commit or abort them first")
        rc = mdb_env_set_mapsize(self._env, n)
        if rc:
            raise _err("mdb_env_set_mapsize", rc)

    def sync(self, bint force=True):
        """Flush buffers to disk (needed with sync=False); a no-op in a read-only env."""
        cdef int rc
        self._check()
        if self.readonly:
            return
        with self._nogil:
            with nogil:
                rc = mdb_env_sync(self._env, force)
        if rc:
            raise _err("mdb_env_sync", rc)

    def copy(self, path, *, bint compact=True):
        """Copy the environment into an existing empty directory (compact: without free pages)."""
        cdef int rc
        cdef bytes bpath = os.fsencode(os.path.abspath(os.fspath(path)))
        cdef const char *cpath = bpath
        cdef unsigned int flags = MDB_CP_COMPACT if compact else 0
        self._check()
        with self._nogil:
            with nogil:
                rc = mdb_env_copy2(self._env, cpath, flags)
        if rc:
            raise _err("mdb_env_copy2", rc)

    def close(self):
        """Close the environment, aborting its open transactions; idempotent."""
        if self._env == NULL:
            return
        if self._gen != _fork_gen:
            self._env = NULL  # the parent's: never close it here
            return
        if self._inflight:
            raise LmdbError(f"environment {self.path!r} is in use by {self._inflight} call(s) in other "
                            f"threads; close it after they return")
        for child in list(self._children):
            if isinstance(child, Txn):
                (<Txn>child)._end(False)
            else:
                (<Reader>child)._shut()
        self._children = weakref.WeakSet()
        mdb_env_close(self._env)
        self._env = NULL
        release(self._key)
        self._key = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "open" if self._env != NULL else "closed"
        return f"<mykey.index._lmdb.Env {self.path!r} {state}>"


@cython.no_gc_clear
cdef class Txn:
    """A transaction: commits on normal exit from a with-block, aborts on an exception."""

    cdef MDB_txn *_txn
    cdef Env env
    cdef readonly bint write
    cdef bint _busy
    cdef object _cursors     # WeakSet of open Cursors
    cdef object __weakref__

    def __cinit__(self):
        self._txn = NULL

    def __init__(self, *args, **kwargs):
        raise TypeError("make transactions with Env.begin()")

    def __dealloc__(self):
        if self._txn != NULL and self.env is not None and self.env._gen == _fork_gen:
            self.env._end_raw(self._txn, False)  # cursors hold a reference to us, so none are open
            if self.write:
                self.env._writer_tid = None
        self._txn = NULL

    cdef int _check(self) except -1:
        if self._txn == NULL:
            raise LmdbError("transaction has ended (committed or aborted); begin a new one")
        if self.env._gen != _fork_gen:
            raise LmdbError(FORKED_MESSAGE)
        if self._busy:
            raise LmdbError("transaction is busy in put_many on another thread; use one transaction per thread")
        return 0

    cdef int _check_write(self) except -1:
        self._check()
        if not self.write:
            raise LmdbError("transaction is read-only; use env.begin(write=True) to write")
        return 0

    cdef int _end(self, bint commit) except -1:
        """Close our cursors, then commit or abort; the transaction is gone either way."""
        cdef MDB_txn *txn = self._txn
        if txn == NULL:
            return 0
        for c in list(self._cursors):
            (<Cursor>c)._close()
        self._txn = NULL
        try:
            self.env._end_raw(txn, commit and self.write)
        finally:
            if self.write:
                self.env._writer_tid = None
        return 0

    def get(self, db, key):
        """The value stored under key, or None."""
        cdef MDB_val k, v
        cdef int rc
        cdef MDB_dbi dbi
        self._check()
        dbi = self.env._dbi(db)
        kb = _key_arg(key, "key")
        k.mv_size = PyBytes_GET_SIZE(kb)
        if k.mv_size == 0 or k.mv_size > self.env._maxkey:
            return None
        k.mv_data = PyBytes_AS_STRING(kb)
        rc = mdb_get(self._txn, dbi, &k, &v)
        if rc == MDB_NOTFOUND:
            return None
        if rc:
            raise _err("mdb_get", rc)
        return PyBytes_FromStringAndSize(<char *>v.mv_data, v.mv_size)

    def put(self, db, key, value):
        """Store value under key, replacing any old value."""
        cdef MDB_val k, v
        cdef int rc
        cdef MDB_dbi dbi
        self._check_write()
        dbi = self.env._dbi(db)
        kb = _key_arg(key, "key")
        vb = _val_arg(value)
        k.mv_size = PyBytes_GET_SIZE(kb)
        if k.mv_size == 0 or k.mv_size > self.env._maxkey:
            raise key_size_error("put", k.mv_size)
        k.mv_data = PyBytes_AS_STRING(kb)
        v.mv_size = PyBytes_GET_SIZE(vb)
        v.mv_data = PyBytes_AS_STRING(vb)
        rc = mdb_put(self._txn, dbi, &k, &v, 0)
        if rc:
            raise _err("mdb_put", rc)

    def put_many(self, db, items):
        """Store every (key, value) pair in order; all pairs are checked before any is written."""
        cdef MDB_val *keys = NULL
        cdef MDB_val *vals = NULL
        cdef Py_ssize_t n, i
        cdef int rc = 0
        cdef MDB_dbi dbi
        cdef MDB_txn *txn
        self._check_write()
        dbi = self.env._dbi(db)
        snapshot = tuple(items)  # holds every item while the GIL is released
        n = len(snapshot)
        if n == 0:
            return
        keep = []  # objects not owned by an immutable snapshot item
        keys = <MDB_val *>malloc(n * sizeof(MDB_val))
        vals = <MDB_val *>malloc(n * sizeof(MDB_val))
        try:
            if keys == NULL or vals == NULL:
                raise MemoryError("put_many: out of memory")
            for i in range(n):
                item = snapshot[i]
                k, v = item
                kb = _key_arg(k, "key")
                vb = _val_arg(v)
                if type(item) is not tuple or kb is not k:
                    keep.append(kb)
                    keep.append(vb)
                keys[i].mv_size = PyBytes_GET_SIZE(kb)
                if keys[i].mv_size == 0 or keys[i].mv_size > self.env._maxkey:
                    raise key_size_error(f"put_many item {i}", keys[i].mv_size)
                keys[i].mv_data = PyBytes_AS_STRING(kb)
                vals[i].mv_size = PyBytes_GET_SIZE(vb)
                vals[i].mv_data = PyBytes_AS_STRING(vb)
            txn = self._txn
            self._busy = True
            try:
                with self.env._nogil:
                    with nogil:
                        rc = _put_loop(txn, dbi, keys, vals, <size_t>n)
            finally:
                self._busy = False
            if rc:
                raise _err("mdb_put", rc)
        finally:
            free(keys)
            free(vals)

    def delete(self, db, key):
        """Delete key; return True if it was there."""
        cdef MDB_val k
        cdef int rc
        cdef MDB_dbi dbi
        self._check_write()
        dbi = self.env._dbi(db)
        kb = _key_arg(key, "key")
        k.mv_size = PyBytes_GET_SIZE(kb)
        if k.mv_size == 0 or k.mv_size > self.env._maxkey:
            return False
        k.mv_data = PyBytes_AS_STRING(kb)
        rc = mdb_del(self._txn, dbi, &k, NULL)
        if rc == MDB_NOTFOUND:
            return False
        if rc:
            raise _err("mdb_del", rc)
        return True

    def drop(self, db):
        """Delete every item of the database (the database itself stays)."""
        cdef int rc
        cdef MDB_dbi dbi
        self._check_write()
        dbi = self.env._dbi(db)
        rc = mdb_drop(self._txn, dbi, 0)
        if rc:
            raise _err("mdb_drop", rc)

    def cursor(self, db):
        """A cursor over one database, valid until this transaction ends."""
        cdef Cursor c
        cdef int rc
        cdef MDB_dbi dbi
        self._check()
        dbi = self.env._dbi(db)
        c = Cursor.__new__(Cursor)
        c.txn = self
        rc = mdb_cursor_open(self._txn, dbi, &c._cur)
        if rc:
            raise _err("mdb_cursor_open", rc)
        self._cursors.add(c)
        return c

    def commit(self):
        """Make the writes durable and visible; the transaction ends."""
        self._check()
        self._end(True)

    def abort(self):
        """Discard the writes; the transaction ends. Idempotent."""
        if self._txn == NULL:
            return
        if self.env._gen != _fork_gen:
            self._txn = NULL
            return
        if self._busy:
            raise LmdbError("transaction is busy in put_many on another thread; abort it from that thread")
        self._end(False)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._txn == NULL:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@cython.no_gc_clear
cdef class Cursor:
    """A position in one database within a transaction."""

    cdef MDB_cursor *_cur
    cdef Txn txn
    cdef bint _pos
    cdef object __weakref__

    def __cinit__(self):
        self._cur = NULL

    def __init__(self, *args, **kwargs):
        raise TypeError("make cursors with Txn.cursor()")

    def __dealloc__(self):
        # The transaction outlives us (we hold it), and ending it closes us first.
        if self._cur != NULL and self.txn is not None and self.txn.env._gen == _fork_gen:
            mdb_cursor_close(self._cur)
        self._cur = NULL

    cdef int _close(self) except -1:
        if self._cur != NULL:
            mdb_cursor_close(self._cur)
            self._cur = NULL
        self._pos = False
        return 0

    cdef int _check(self) except -1:
        if self._cur == NULL:
            raise LmdbError("cursor is closed (or its transaction ended); open a new one with txn.cursor(db)")
        self.txn._check()
        return 0

    cdef bint _op(self, MDB_val *k, MDB_val *v, MDB_cursor_op op) except -1:
        cdef int rc = mdb_cursor_get(self._cur, k, v, op)
        if rc == MDB_NOTFOUND:
            self._pos = False
            return False
        if rc:
            self._pos = False
            raise _err("mdb_cursor_get", rc)
        self._pos = True
        return True

    def set_range(self, key):
        """Move to the first item whose key is >= key; False if there is none."""
        cdef MDB_val k, v
        self._check()
        kb = _key_arg(key, "key")
        if PyBytes_GET_SIZE(kb) == 0:
            return self._op(&k, &v, MDB_FIRST)
        k.mv_size = PyBytes_GET_SIZE(kb)
        k.mv_data = PyBytes_AS_STRING(kb)
        return self._op(&k, &v, MDB_SET_RANGE)

    def first(self):
        """Move to the first item; False if the database is empty."""
        cdef MDB_val k, v
        self._check()
        return self._op(&k, &v, MDB_FIRST)

    def next(self):
        """Move to the next item; False past the last one."""
        cdef MDB_val k, v
        self._check()
        return self._op(&k, &v, MDB_NEXT)

    cdef int _current(self, MDB_val *k, MDB_val *v) except -1:
        self._check()
        if not self._pos:
            raise LmdbError("cursor is not on an item; call first(), set_range() or next() and "
                            "check that it returned True")
        if not self._op(k, v, MDB_GET_CURRENT):
            raise LmdbError("cursor is not on an item (it was deleted); reposition the cursor")
        return 0

    def key(self):
        """Key of the current item."""
        cdef MDB_val k, v
        self._current(&k, &v)
        return PyBytes_FromStringAndSize(<char *>k.mv_data, k.mv_size)

    def value(self):
        """Value of the current item."""
        cdef MDB_val k, v
        self._current(&k, &v)
        return PyBytes_FromStringAndSize(<char *>v.mv_data, v.mv_size)

    def iter_from(self, key=b"", prefix=None):
        """Yield (key, value) for items >= key (and >= prefix) while their key starts with prefix."""
        cdef MDB_val k, v
        cdef bint ok
        start = _key_arg(key, "key")
        if prefix is not None:
            prefix = _key_arg(prefix, "prefix")
            if prefix > start:
                start = prefix
        self._check()
        if PyBytes_GET_SIZE(start) == 0:
            ok = self._op(&k, &v, MDB_FIRST)
        else:
            k.mv_size = PyBytes_GET_SIZE(start)
            k.mv_data = PyBytes_AS_STRING(start)
            ok = self._op(&k, &v, MDB_SET_RANGE)
        while ok:
            kb = PyBytes_FromStringAndSize(<char *>k.mv_data, k.mv_size)
            if prefix is not None and not kb.startswith(prefix):
                return
            vb = PyBytes_FromStringAndSize(<char *>v.mv_data, v.mv_size)
            yield kb, vb
            self._check()
            ok = self._op(&k, &v, MDB_NEXT)

    def close(self):
        """Release the cursor; idempotent."""
        if self._cur != NULL and self.txn.env._gen != _fork_gen:
            self._cur = NULL
            return
        self._close()
        self.txn._cursors.discard(self)


@cython.no_gc_clear
cdef class Reader:
    """Reuses reset read transactions between calls (mdb_txn_reset / mdb_txn_renew): each
    call sees the latest commit and pins no pages between calls. Safe to share between threads."""

    cdef Env env
    cdef MDB_txn **_pool    # reset transactions ready for mdb_txn_renew
    cdef int _npool
    cdef int _cap
    cdef bint _closed
    # Scratch memory of the last resolve_many, kept for the next call: allocating it
    # afresh costs page faults (glibc returns large freed blocks to the OS).
    cdef Scratch _scratch
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("make readers with Env.reader()")

    def __dealloc__(self):
        if self.env is not None and self.env._gen == _fork_gen and self.env._env != NULL:
            self._free_pool()
        free(self._pool)
        self._pool = NULL
        self._free_scratch()

    cdef void _free_scratch(self) noexcept:
        free(self._scratch.buf)
        free(self._scratch.arr)
        self._scratch = Scratch(NULL, 0, NULL, 0)

    cdef void _free_pool(self) noexcept:
        cdef int i
        for i in range(self._npool):
            mdb_txn_abort(self._pool[i])  # reset transactions: not counted in env._active
        self._npool = 0

    cdef int _shut(self) except -1:
        """Release the pooled transactions and the scratch; the reader refuses further calls."""
        self._closed = True
        if self.env._gen == _fork_gen and self.env._env != NULL:
            self._free_pool()
        self._npool = 0
        self._free_scratch()
        return 0

    cdef int _check_open(self) except -1:
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        self.env._check()
        return 0

    cdef MDB_txn *_take(self) except NULL:
        """A read transaction for one call (a pooled one renewed, or a new one), counted in env._active."""
        cdef MDB_txn *txn = NULL
        self._check_open()
        if self._npool == 0:
            self.env._begin_raw(MDB_RDONLY, &txn)
        else:
            self._npool -= 1
            txn = self._pool[self._npool]
            self.env._renew_raw(txn)
        return txn

    cdef int _give(self, MDB_txn *txn) except -1:
        """Reset the transaction and keep it for the next call (abort it if we are closed)."""
        cdef MDB_txn **grown
        if self.env._env == NULL:
            return 0  # the environment was closed meanwhile, with every transaction in it
        if self._closed:
            return self.env._end_raw(txn, False)
        self.env._reset_raw(txn)
        if self._npool == self._cap:
            grown = <MDB_txn **>realloc(self._pool, (self._cap * 2 + 2) * sizeof(MDB_txn *))
            if grown == NULL:
                mdb_txn_abort(txn)
                return 0
            self._pool = grown
            self._cap = self._cap * 2 + 2
        self._pool[self._npool] = txn
        self._npool += 1
        return 0

    cdef Scratch _take_scratch(self) noexcept:
        """The kept scratch, or none if a concurrent call holds it (the call then allocates)."""
        cdef Scratch s = self._scratch
        self._scratch = Scratch(NULL, 0, NULL, 0)
        return s

    cdef void _keep_scratch(self, Scratch *s) noexcept:
        """Keep a call's scratch for the next call (unless closed, too big, or one was kept already)."""
        _stash(&self._scratch.buf, &self._scratch.buf_cap, s.buf, s.buf_cap, not self._closed)
        _stash(&self._scratch.arr, &self._scratch.arr_cap, s.arr, s.arr_cap, not self._closed)

    def get(self, db, key):
        """The value stored under key in the latest committed snapshot, or None."""
        cdef MDB_val k, v
        cdef MDB_txn *txn
        cdef MDB_dbi dbi
        cdef int rc
        self._check_open()
        dbi = self.env._dbi(db)
        kb = _key_arg(key, "key")
        k.mv_size = PyBytes_GET_SIZE(kb)
        if k.mv_size == 0 or k.mv_size > self.env._maxkey:
            return None
        k.mv_data = PyBytes_AS_STRING(kb)
        txn = self._take()
        try:
            rc = mdb_get(txn, dbi, &k, &v)
            if rc == MDB_NOTFOUND:
                return None
            if rc:
                raise _err("mdb_get", rc)
            return PyBytes_FromStringAndSize(<char *>v.mv_data, v.mv_size)
        finally:
            self._give(txn)

    def resolve_many(self, db, prefix, keys, *, method="auto", sort_threshold=10_000):
        """One byte per key (input order): first byte of the value at prefix+key, 0 if absent or empty."""
        cdef MDB_dbi dbi
        cdef bint use_sorted
        cdef Scratch s
        cdef Batch b
        _check_method(method, sort_threshold)
        self._check_open()
        dbi = self.env._dbi(db)
        pb = _key_arg(prefix, "prefix")
        if type(keys) is not list and type(keys) is not tuple:
            keys = list(keys)
        use_sorted = method == "sorted" or (method == "auto" and len(keys) >= sort_threshold)
        out = PyBytes_FromStringAndSize(NULL, len(keys))
        s = self._take_scratch()
        try:
            _pack(&s, &b, keys, pb, use_sorted)
            if b.n == 0:
                return b""
            b.maxkey = self.env._maxkey
            b.out = <unsigned char *>PyBytes_AS_STRING(out)
            self._run(dbi, &b, use_sorted)
        finally:
            self._keep_scratch(&s)
        return out

    cdef int _run(self, MDB_dbi dbi, const Batch *b, bint use_sorted) except -1:
        """Look a packed batch up in one read transaction, without the GIL."""
        cdef const char *failed = NULL
        cdef int rc
        cdef MDB_txn *txn = self._take()
        try:
            with self.env._nogil:
                with nogil:
                    rc = _lookup(txn, dbi, b, use_sorted, &failed)
        finally:
            self._give(txn)
        if rc:
            raise _err(f"resolve_many ({failed.decode()})", rc)
        return 0

    def close(self):
        """Release the reader's transactions; idempotent."""
        if self._closed:
            return
        self._shut()
        self.env._children.discard(self)
