# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin Cython binding to the LMDB C library (liblmdb 0.9), imported as mykey.index._lmdb.

Same interface and byte-identical results as mykey.index._lmdb_pure (py-lmdb). The only
loops here are C loops over buffers: batch puts and batch lookups (resolve_many),
which run without the GIL.
"""
cimport cython
from libc.stdint cimport uint16_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
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
        MDB_LAST
        MDB_NEXT_NODUP
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
        MDB_APPEND
        MDB_REVERSEKEY
        MDB_DUPSORT
        MDB_INTEGERKEY
        MDB_SUCCESS
        MDB_NOTFOUND
        MDB_MAP_RESIZED

    char *mdb_version(int *major, int *minor, int *patch)
    char *mdb_strerror(int err)
    int mdb_env_create(MDB_env **env)
    int mdb_env_open(MDB_env *env, const char *path, unsigned int flags, int mode)
    int mdb_reader_check(MDB_env *env, int *dead)
    void mdb_env_close(MDB_env *env)
    int mdb_env_set_mapsize(MDB_env *env, size_t size)
    int mdb_env_set_maxreaders(MDB_env *env, unsigned int readers)
    int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs)
    int mdb_env_get_maxkeysize(MDB_env *env)
    int mdb_env_info(MDB_env *env, MDB_envinfo *stat)
    int mdb_env_stat(MDB_env *env, MDB_stat *stat)
    MDB_env *mdb_txn_env(MDB_txn *txn)
    int mdb_env_sync(MDB_env *env, int force)
    int mdb_env_copy2(MDB_env *env, const char *path, unsigned int flags) nogil
    int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn)
    int mdb_txn_commit(MDB_txn *txn)
    void mdb_txn_abort(MDB_txn *txn)
    void mdb_txn_reset(MDB_txn *txn)
    int mdb_txn_renew(MDB_txn *txn)
    int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
    int mdb_dbi_flags(MDB_txn *txn, MDB_dbi dbi, unsigned int *flags)
    int mdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat)
    int mdb_drop(MDB_txn *txn, MDB_dbi dbi, int delete_)
    int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags)
    int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
    void mdb_cursor_close(MDB_cursor *cursor)
    int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)
    int mdb_cursor_put(MDB_cursor *cursor, MDB_val *key, MDB_val *data, unsigned int flags)

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

    static inline void mk_count(size_t *counter) { __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED); }

    /* One key of a sorted batch: 8 bytes of the key after the batch's common prefix
       (big-endian, zero padded) and the key's position in the input. */
    typedef struct { uint64_t head; size_t idx; } mk_sort_item;

    /* ---- A read-only walk over LMDB 0.9's B+tree pages for a sorted batch ----------
     *
     * LMDB's own cursor searches every key from the top of its current page (and, for a
     * key on another page, from the root); each step of that search waits for a cache
     * miss. This walk reads the same pages straight from the map, as LMDB does in a
     * read transaction, keeping the path from the root: a key goes to the same leaf
     * (searched from the previous key's slot on), or climbs only as far as the
     * separator it passed. While it works on a leaf, the next leaf pages are
     * prefetched whole. Any page that does not look exactly as expected makes it give
     * up (return 1) and the caller answers the batch with LMDB's cursor instead.
     *
     * The layout (mdb.c, LMDB 0.9, 64-bit): a page starts with pgno (u64), pad (u16),
     * flags (u16), lower (u16), upper (u16), then lower-16 bytes of u16 node offsets.
     * A node is lo (u16), hi (u16), flags (u16), ksize (u16), key, data; a leaf node's
     * data size is lo | hi << 16, a branch node's child page lo | hi << 16 | flags << 32.
     * A database's record (MDB_db, 48 bytes) in the main database holds its flags at
     * byte 4, depth at 6 and root page at 40. */
    #define MKW_HDR 16
    #define MKW_MAXDEPTH 24
    #define MKW_P_BRANCH 0x01
    #define MKW_P_LEAF 0x02
    #define MKW_P_KIND 0x6f  /* branch, leaf, overflow, meta, leaf2, subpage */
    #define MKW_F_BIGDATA 0x01
    #define MKW_NO_ROOT (~(uint64_t)0)

    typedef struct {
        const unsigned char *map;   /* page 0 */
        size_t psize;
        uint64_t npages;            /* pages below this number may be read */
        uint64_t root;              /* MKW_NO_ROOT: the database is empty */
        unsigned depth;
        unsigned prefetch;          /* leaves to prefetch ahead (0: none) */
        unsigned pf_lines;          /* cache lines prefetched per key looked up */
    } mkw_tree;

    static inline unsigned mkw_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
    static inline uint64_t mkw_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

    /* LMDB's default key order (memcmp over the shorter length, then the shorter first),
       eight bytes at a time: keys are short, and a call to memcmp costs more than the compare. */
    static inline int mkw_cmp(const unsigned char *a, size_t la, const unsigned char *b, size_t lb) {
        size_t n = la < lb ? la : lb, i = 0;
        uint64_t x, y;
        for (; i + 8 <= n; i += 8) {
            x = mk_load_be64(a + i);
            y = mk_load_be64(b + i);
            if (x != y) return x < y ? -1 : 1;
        }
        for (; i < n; i++)
            if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
        return (la > lb) - (la < lb);
    }

    /* Node i of page pg (its key is node + 8, ksize bytes), or NULL if it leaves the page. */
    static inline const unsigned char *mkw_node(const mkw_tree *t, const unsigned char *pg, unsigned i,
                                                size_t *ksize) {
        size_t off = mkw_u16(pg + MKW_HDR + 2 * (size_t)i), ks;
        if (off < MKW_HDR || off + 8 > t->psize) return NULL;
        ks = mkw_u16(pg + off + 6);
        if (off + 8 + ks > t->psize) return NULL;
        *ksize = ks;
        return pg + off;
    }

    /* Page pgno, checked to be a branch (leaf = 0) or leaf page; sets its key count. */
    static inline const unsigned char *mkw_page(const mkw_tree *t, uint64_t pgno, int leaf, unsigned *nkeys) {
        const unsigned char *pg;
        unsigned lower, upper;
        if (pgno >= t->npages) return NULL;
        pg = t->map + pgno * t->psize;
        lower = mkw_u16(pg + 12);
        upper = mkw_u16(pg + 14);
        if (mkw_u64(pg) != pgno || (mkw_u16(pg + 10) & MKW_P_KIND) != (leaf ? MKW_P_LEAF : MKW_P_BRANCH)
            || lower < MKW_HDR || lower > upper || upper > t->psize)
            return NULL;
        *nkeys = (lower - MKW_HDR) >> 1;
        return pg;
    }

    /* The child page number of branch node nd. */
    static inline uint64_t mkw_child(const unsigned char *nd) {
        return (uint64_t)mkw_u16(nd) | ((uint64_t)mkw_u16(nd + 2) << 16) | ((uint64_t)mkw_u16(nd + 4) << 32);
    }

    /* Answer items[0..m) (in key order, see _sort_keys; key i is buf[offs[i]:offs[i+1]]) into
       out[idx]: the first byte of the value, 0 if absent or empty (out starts zeroed).
       Returns 0, or 1 if a page is not as expected (out is then to be recomputed). */
    static int mkw_walk(const mkw_tree *t, const mk_sort_item *it, size_t m,
                        const unsigned char *buf, const size_t *offs, unsigned char *out) {
        const unsigned char *pg[MKW_MAXDEPTH], *bk[MKW_MAXDEPTH], *nd, *key;
        unsigned n[MKW_MAXDEPTH], ci[MKW_MAXDEPTH];
        size_t bl[MKW_MAXDEPTH], s, ks, klen, idx, prev = 0, dsize;
        unsigned L, l, l0, lo, hi, mid, f, j;
        int started = 0;
        /* Lines to prefetch per key: enough to stay pf_leaves ahead however densely the keys
           fall, from pf_lines up to a whole page per key (keys far apart: one leaf each). */
        size_t page_lines = t->psize / 64, lines = t->pf_lines, leaves = 0;
        /* The prefetch stream: child pf_ci of the leaves' parent, read from pf_p + pf_o on. */
        const char *pf_p = NULL;
        unsigned pf_ci = 0;
        size_t pf_o = 0;
        uint64_t pf_pg;
        if (t->root == MKW_NO_ROOT || m == 0) return 0;
        if (t->depth < 1 || t->depth > MKW_MAXDEPTH) return 1;
        L = t->depth - 1;
        for (s = 0; s < m; s++) {
            /* The keys are in input order in buf: fetch the ones coming up early. */
            if (s + 16 < m) __builtin_prefetch(&offs[it[s + 16].idx]);
            if (s + 8 < m) __builtin_prefetch(buf + offs[it[s + 8].idx]);
            idx = it[s].idx;
            key = buf + offs[idx];
            klen = offs[idx + 1] - offs[idx];
            if (started && it[s].head == it[s - 1].head && klen == offs[prev + 1] - offs[prev]
                && memcmp(key, buf + offs[prev], klen) == 0) {
                out[idx] = out[prev];  /* a repeated key */
                continue;
            }
            prev = idx;
            if (!started) {
                pg[0] = mkw_page(t, t->root, L == 0, &n[0]);
                if (pg[0] == NULL) return 1;
                ci[0] = 0;
                bk[0] = NULL;
                bl[0] = 0;
                l = 0;
                started = 1;
            } else {
                /* Climb while the key is past the upper bound of the page's range. */
                l = L;
                while (l > 0 && bk[l] != NULL && mkw_cmp(key, klen, bk[l], bl[l]) >= 0) l--;
            }
            /* Descend: in each branch page the last child, from the current one on,
               whose separator is <= key (child 0 has none). */
            for (l0 = l; l < L; l++) {
                lo = ci[l] + 1;
                hi = n[l];
                while (lo < hi) {
                    mid = (lo + hi) >> 1;
                    nd = mkw_node(t, pg[l], mid, &ks);
                    if (nd == NULL) return 1;
                    if (mkw_cmp(key, klen, nd + 8, ks) >= 0) lo = mid + 1; else hi = mid;
                }
                ci[l] = lo - 1;
                if (ci[l] + 1 < n[l]) {
                    nd = mkw_node(t, pg[l], ci[l] + 1, &ks);
                    if (nd == NULL) return 1;
                    bk[l + 1] = nd + 8;
                    bl[l + 1] = ks;
                } else {
                    bk[l + 1] = bk[l];
                    bl[l + 1] = bl[l];
                }
                nd = mkw_node(t, pg[l], ci[l], &ks);
                if (nd == NULL) return 1;
                pg[l + 1] = mkw_page(t, mkw_child(nd), l + 1 == L, &n[l + 1]);
                if (pg[l + 1] == NULL) return 1;
                ci[l + 1] = 0;
                if (l + 1 == L) {
                    leaves++;
                    lines = 2 * page_lines * leaves / (s + 1);
                    if (lines < t->pf_lines) lines = t->pf_lines;
                    if (lines > page_lines) lines = page_lines;
                }
                if (l + 1 == L && t->prefetch && (pf_p == NULL || l0 < l || pf_ci <= ci[l])) {
                    pf_ci = ci[l];  /* (re)start the stream after this leaf */
                    pf_o = t->psize;
                    pf_p = (const char *)pg[l + 1];
                }
            }
            /* Prefetch a few lines of the next leaves for every key, so that their
               loads overlap with the work instead of queueing up at once. */
            for (j = 0; j < lines && pf_p != NULL; j++) {
                if (pf_o >= t->psize) {
                    pf_ci++;
                    pf_p = NULL;
                    if (L == 0 || pf_ci >= n[L - 1] || pf_ci > ci[L - 1] + t->prefetch) break;
                    nd = mkw_node(t, pg[L - 1], pf_ci, &ks);
                    if (nd == NULL) break;
                    pf_pg = mkw_child(nd);
                    if (pf_pg >= t->npages) break;
                    pf_p = (const char *)t->map + pf_pg * t->psize;
                    pf_o = 0;
                }
                __builtin_prefetch(pf_p + pf_o);
                pf_o += 64;
            }
            /* In the leaf: the first key >= key, from the previous key's slot on. */
            lo = ci[L];
            hi = n[L];
            while (lo < hi) {
                mid = (lo + hi) >> 1;
                nd = mkw_node(t, pg[L], mid, &ks);
                if (nd == NULL) return 1;
                if (mkw_cmp(key, klen, nd + 8, ks) > 0) lo = mid + 1; else hi = mid;
            }
            ci[L] = lo;
            if (lo == n[L]) continue;
            nd = mkw_node(t, pg[L], lo, &ks);
            if (nd == NULL) return 1;
            if (mkw_cmp(key, klen, nd + 8, ks) != 0) continue;
            f = mkw_u16(nd + 4);
            dsize = (size_t)mkw_u16(nd) | ((size_t)mkw_u16(nd + 2) << 16);
            if (f & ~MKW_F_BIGDATA) return 1;  /* a sub-database or duplicates: not ours to read */
            if (dsize == 0) continue;
            if (f & MKW_F_BIGDATA) {
                /* The value lives on overflow pages: their number follows the key. */
                if ((size_t)(nd - pg[L]) + 8 + ks + 8 > t->psize) return 1;
                uint64_t ov = mkw_u64(nd + 8 + ks);
                if (ov >= t->npages) return 1;
                out[idx] = t->map[ov * t->psize + MKW_HDR];
            } else {
                if ((size_t)(nd - pg[L]) + 8 + ks >= t->psize) return 1;
                out[idx] = nd[8 + ks];
            }
        }
        return 0;
    }
    """
    ctypedef struct mk_sort_item:
        uint64_t head
        size_t idx
    ctypedef struct mkw_tree:
        const unsigned char *map
        size_t psize
        uint64_t npages
        uint64_t root
        unsigned depth
        unsigned prefetch
        unsigned pf_lines
    uint64_t MKW_NO_ROOT
    uint64_t mk_load_be64(const unsigned char *p) nogil
    void mk_count(size_t *counter) nogil
    int mkw_walk(const mkw_tree *t, const mk_sort_item *it, size_t m, const unsigned char *buf,
                 const size_t *offs, unsigned char *out) nogil

cdef extern from *:
    void __builtin_prefetch(const void *p) nogil

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

_METHODS = ("auto", "get", "sorted", "cursor")
_MAX_READERS = 126  # reader slots of an environment (py-lmdb's default, which the pure twin uses too)
# How long a thread waits for this process's other transactions to finish before it
# gives up adopting a map that another process grew (MDB_MAP_RESIZED).
_RESIZE_WAIT_S = 2.0
# resolve_many(method="auto") sorts batches of at least this many keys (measured: below it,
# one mdb_get per key is as fast as sorting and walking the pages).
_SORT_THRESHOLD = 16
# Largest scratch block a Reader keeps between resolve_many calls (about 600,000 keys).
cdef size_t _SCRATCH_MAX = 32 << 20
# Scratch sets a Reader keeps (one per thread calling resolve_many at the same time).
cdef int _SCRATCH_KEEP = 8
# Items per write transaction when Env.copy(repack=True) writes the copy.
cdef size_t _REPACK_TXN = 1 << 20
# Leaf pages the page walk prefetches ahead of the one it is reading.
cdef unsigned _prefetch_leaves = 2
# Cache lines of those it prefetches per key looked up.
cdef unsigned _prefetch_lines = 8


# How often resolve_many's sorted path walked the pages, and how often it used the cursor instead.
cdef size_t _walks = 0
cdef size_t _walk_fallbacks = 0


def _walk_counts():
    """(page walks, walks given up for LMDB's cursor) since the module was loaded (tests, benchmarks)."""
    return _walks, _walk_fallbacks


def _tune(*, prefetch_leaves=None, prefetch_lines=None):
    """Benchmark knob (not API): how far ahead, and how fast, the page walk prefetches."""
    global _prefetch_leaves, _prefetch_lines
    if prefetch_leaves is not None:
        _prefetch_leaves = prefetch_leaves
    if prefetch_lines is not None:
        _prefetch_lines = prefetch_lines
    return {"prefetch_leaves": _prefetch_leaves, "prefetch_lines": _prefetch_lines}


cdef size_t _page_size(MDB_env *env) noexcept:
    cdef MDB_stat st
    if mdb_env_stat(env, &st):
        return 0
    return st.ms_psize


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
        raise ValueError(f"method must be 'auto', 'get', 'sorted' or 'cursor', got {method!r}")
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
# key order (the page walk, or one LMDB cursor), and each answer placed at the key's
# input position.

cdef enum:
    M_GET = 0       # mdb_get per key, in input order
    M_SORTED = 1    # sort, then walk the pages (LMDB's cursor if the walk gives up)
    M_CURSOR = 2    # sort, then LMDB's cursor (MDB_SET per key)

ctypedef mk_sort_item SortItem  # head: 8 bytes of the key after the common prefix; idx: input position

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
    SortItem *items         # scratch for 2n items (sorted paths), else NULL
    unsigned char *out      # one answer byte per key
    const char *name        # the database's name (the page walk reads its record)
    size_t name_len
    size_t psize


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


cdef int _tree_of(MDB_txn *txn, const Batch *b, mkw_tree *t) noexcept nogil:
    """Where the database's pages are in this read transaction's snapshot: 0, or 1 if
    they cannot be walked (another page size, special key order, ...)."""
    cdef MDB_dbi main
    cdef MDB_val k, v
    cdef const unsigned char *rec
    cdef const unsigned char *page
    cdef MDB_envinfo inf
    cdef uint64_t pgno
    cdef uint16_t flags, depth
    if b.psize < 512 or b.psize & (b.psize - 1) or b.name == NULL:
        return 1
    if mdb_dbi_open(txn, NULL, 0, &main):
        return 1
    k.mv_size = b.name_len
    k.mv_data = <void *>b.name
    if mdb_get(txn, main, &k, &v) or v.mv_size != 48:
        return 1
    rec = <const unsigned char *>v.mv_data
    memcpy(&flags, rec + 4, 2)
    memcpy(&depth, rec + 6, 2)
    if flags & 0x7e:  # reverse or integer keys, duplicates: not LMDB's plain memcmp order
        return 1
    memcpy(&t.root, rec + 40, 8)
    t.depth = depth
    t.psize = b.psize
    # The record lies on a page of the map: that page's number locates page 0.
    page = <const unsigned char *>(<size_t>rec & ~(b.psize - 1))
    memcpy(&pgno, page, 8)
    t.map = page - pgno * b.psize
    if mdb_env_info(mdb_txn_env(txn), &inf):
        return 1
    t.npages = inf.me_last_pgno + 1
    if t.npages > inf.me_mapsize // b.psize:
        t.npages = inf.me_mapsize // b.psize
    t.prefetch = _prefetch_leaves
    t.pf_lines = _prefetch_lines
    return 0


cdef int _lookup_sorted(MDB_txn *txn, MDB_dbi dbi, const Batch *b, bint walk,
                        const char **failed) noexcept nogil:
    """The sorted paths: sort the keys, then walk the pages (walk) or look the keys up in
    key order with one cursor (MDB_SET); a repeated key takes the answer of the one before it."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k, v
    cdef size_t s, m
    cdef int rc = 0
    cdef mkw_tree t
    m = _sort_batch(b)
    if m == 0:
        return 0
    if walk and _tree_of(txn, b, &t) == 0:
        if mkw_walk(&t, b.items, m, b.buf, b.offs, b.out) == 0:
            mk_count(&_walks)
            return 0
        memset(b.out, 0, b.n)  # the walk gave up: start over with LMDB's cursor
    if walk:
        mk_count(&_walk_fallbacks)
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


cdef int _lookup(MDB_txn *txn, MDB_dbi dbi, const Batch *b, int method,
                 const char **failed) noexcept nogil:
    """Answer every key of the batch in b.out; 0, or the LMDB error and the call that failed."""
    memset(b.out, 0, b.n)
    if method == M_GET:
        return _lookup_get(txn, dbi, b, failed)
    return _lookup_sorted(txn, dbi, b, method == M_SORTED, failed)


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


cdef int _put_loop(MDB_txn *txn, MDB_dbi dbi, MDB_val *keys, MDB_val *vals, size_t n) noexcept nogil:
    cdef size_t i
    cdef int rc
    for i in range(n):
        rc = mdb_put(txn, dbi, &keys[i], &vals[i], 0)
        if rc:
            return rc
    return 0


# Sorted writes and reads of a write transaction (put_many(sort=True), get_many).

cdef inline int _vcmp(const MDB_val *a, const MDB_val *b) noexcept nogil:
    """LMDB's default key order."""
    cdef size_t n = a.mv_size if a.mv_size < b.mv_size else b.mv_size
    cdef int r = memcmp(a.mv_data, b.mv_data, n)
    if r:
        return r
    return (a.mv_size > b.mv_size) - (a.mv_size < b.mv_size)


cdef SortItem *_key_order(const MDB_val *keys, size_t n) noexcept nogil:
    """The keys' positions in LMDB's key order, equal keys in input order, as 2n sort items
    (the first n hold them; free() them), or NULL when out of memory."""
    cdef size_t i, total = 0
    cdef unsigned char *buf = NULL
    cdef size_t *offs = NULL
    cdef SortItem *items = NULL
    for i in range(n):
        total += keys[i].mv_size
    buf = <unsigned char *>malloc(total + 8)
    offs = <size_t *>malloc((n + 1) * sizeof(size_t))
    items = <SortItem *>malloc(2 * n * sizeof(SortItem) + 8)
    if buf == NULL or offs == NULL or items == NULL:
        free(buf)
        free(offs)
        free(items)
        return NULL
    total = 0
    for i in range(n):
        offs[i] = total
        memcpy(buf + total, keys[i].mv_data, keys[i].mv_size)
        total += keys[i].mv_size
        items[i].idx = i
    offs[n] = total
    _sort_keys(items, items + n, n, buf, offs)
    free(buf)
    free(offs)
    return items


cdef int _put_sorted(MDB_txn *txn, MDB_dbi dbi, MDB_val *keys, MDB_val *vals, size_t n,
                     const char **failed) noexcept nogil:
    """Write the pairs in key order (of equal keys the last one given), appending
    (MDB_APPEND) every key past the database's last one, so the pages it adds are full."""
    cdef SortItem *order = NULL
    cdef MDB_cursor *cur = NULL
    cdef MDB_val lk, lv, last
    cdef unsigned char lastbuf[512]
    cdef unsigned int dbflags = 0
    cdef size_t s, i, j
    cdef bint appending
    cdef int rc
    rc = mdb_dbi_flags(txn, dbi, &dbflags)
    if rc:
        failed[0] = "mdb_dbi_flags"
        return rc
    if dbflags & (MDB_REVERSEKEY | MDB_DUPSORT | MDB_INTEGERKEY):
        failed[0] = "mdb_put"  # another key order: write them as given
        return _put_loop(txn, dbi, keys, vals, n)
    order = _key_order(keys, n)
    if order == NULL:
        failed[0] = "put_many (sorting)"
        return 12  # ENOMEM
    rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        free(order)
        failed[0] = "mdb_cursor_open"
        return rc
    rc = mdb_cursor_get(cur, &lk, &lv, MDB_LAST)
    appending = rc == MDB_NOTFOUND
    if rc == 0:
        memcpy(lastbuf, lk.mv_data, lk.mv_size)  # the page under lk changes as we write
        last.mv_size = lk.mv_size
        last.mv_data = lastbuf
    elif not appending:
        failed[0] = "mdb_cursor_get"
        mdb_cursor_close(cur)
        free(order)
        return rc
    rc = 0
    for s in range(n):
        # The pairs are in input order in memory: fetch the ones coming up early.
        if s + 32 < n:
            __builtin_prefetch(&keys[order[s + 32].idx])
            __builtin_prefetch(&vals[order[s + 32].idx])
        if s + 16 < n:
            j = order[s + 16].idx
            __builtin_prefetch(keys[j].mv_data)
            __builtin_prefetch(vals[j].mv_data)
        i = order[s].idx
        if s + 1 < n and order[s].head == order[s + 1].head and _vcmp(&keys[i], &keys[order[s + 1].idx]) == 0:
            continue  # a later pair with this key wins
        if not appending and _vcmp(&keys[i], &last) > 0:
            appending = True
        rc = mdb_cursor_put(cur, &keys[i], &vals[i], MDB_APPEND if appending else 0)
        if rc:
            failed[0] = "mdb_cursor_put"
            break
    mdb_cursor_close(cur)
    free(order)
    return rc


cdef int _get_sorted(MDB_txn *txn, MDB_dbi dbi, const Batch *b, MDB_val *vals,
                     const char **failed) noexcept nogil:
    """vals[i] = the value of key i (mv_data NULL if absent), looked up in key order with one cursor."""
    cdef MDB_cursor *cur = NULL
    cdef MDB_val k
    cdef size_t s, m, i
    cdef int rc = 0
    for i in range(b.n):
        vals[i].mv_data = NULL
        vals[i].mv_size = 0
    m = _sort_batch(b)
    if m == 0:
        return 0
    rc = mdb_cursor_open(txn, dbi, &cur)
    if rc:
        failed[0] = "mdb_cursor_open"
        return rc
    for s in range(m):
        i = b.items[s].idx
        if s and _same_key(b, &b.items[s - 1], &b.items[s]):
            vals[i] = vals[b.items[s - 1].idx]
            continue
        _key_at(b, i, &k)
        rc = mdb_cursor_get(cur, &k, &vals[i], MDB_SET)
        if rc == MDB_NOTFOUND:
            vals[i].mv_data = NULL
            rc = 0
        elif rc:
            failed[0] = "mdb_cursor_get"
            break
    mdb_cursor_close(cur)
    return rc


cdef int _repack_db(MDB_txn *src, MDB_env *denv, const char *name, size_t *pending,
                    const char **failed) noexcept nogil:
    """Append every item of the named database of src to the same database of denv, in
    transactions of up to _REPACK_TXN items."""
    cdef MDB_dbi sdbi, ddbi
    cdef MDB_cursor *sc = NULL
    cdef MDB_cursor *dc = NULL
    cdef MDB_txn *dtxn = NULL
    cdef MDB_val k, v
    cdef unsigned int flags = 0
    cdef int rc
    cdef size_t n = 0
    rc = mdb_dbi_open(src, name, 0, &sdbi)
    if rc == 0:
        rc = mdb_dbi_flags(src, sdbi, &flags)
    if rc:
        failed[0] = "mdb_dbi_open (source)"
        return rc
    if flags & MDB_DUPSORT:
        failed[0] = "repack (databases with duplicates are not supported)"
        return 22  # EINVAL
    rc = mdb_cursor_open(src, sdbi, &sc)
    if rc:
        failed[0] = "mdb_cursor_open"
        return rc
    rc = mdb_cursor_get(sc, &k, &v, MDB_FIRST)
    while True:
        if dtxn == NULL:
            rc2 = mdb_txn_begin(denv, NULL, 0, &dtxn)
            if rc2 == 0:
                rc2 = mdb_dbi_open(dtxn, name, MDB_CREATE | flags, &ddbi)
            if rc2 == 0:
                rc2 = mdb_cursor_open(dtxn, ddbi, &dc)
            if rc2:
                failed[0] = "repack (begin)"
                rc = rc2
                break
        if rc == MDB_NOTFOUND:
            rc = 0
            break
        if rc:
            failed[0] = "mdb_cursor_get"
            break
        rc = mdb_cursor_put(dc, &k, &v, MDB_APPEND)
        if rc:
            failed[0] = "mdb_cursor_put (repack)"
            break
        n += 1
        if n % _REPACK_TXN == 0:
            mdb_cursor_close(dc)
            dc = NULL
            rc = mdb_txn_commit(dtxn)
            dtxn = NULL
            if rc:
                failed[0] = "mdb_txn_commit (repack)"
                break
        rc = mdb_cursor_get(sc, &k, &v, MDB_NEXT)
    mdb_cursor_close(sc)
    if dc != NULL:
        mdb_cursor_close(dc)
    if dtxn != NULL:
        if rc == 0:
            rc = mdb_txn_commit(dtxn)
            if rc:
                failed[0] = "mdb_txn_commit (repack)"
        else:
            mdb_txn_abort(dtxn)
    pending[0] += n
    return rc


cdef int _repack(MDB_env *env, const char *path, size_t mapsize, const char **failed) noexcept nogil:
    """Write a new environment at path holding every named database of env, each appended
    in key order (so its pages are full), and sync it."""
    cdef MDB_env *denv = NULL
    cdef MDB_txn *src = NULL
    cdef MDB_cursor *mc = NULL
    cdef MDB_dbi main
    cdef MDB_val k, v
    cdef char name[512]
    cdef unsigned int ndbs = 0
    cdef size_t done = 0
    cdef int rc
    rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &src)
    if rc:
        failed[0] = "mdb_txn_begin"
        return rc
    rc = mdb_dbi_open(src, NULL, 0, &main)
    if rc == 0:
        rc = mdb_cursor_open(src, main, &mc)
    if rc == 0:
        rc = mdb_cursor_get(mc, &k, &v, MDB_FIRST)
        while rc == 0:
            ndbs += 1
            rc = mdb_cursor_get(mc, &k, &v, MDB_NEXT)
        if rc == MDB_NOTFOUND:
            rc = 0
    if rc == 0:
        rc = mdb_env_create(&denv)
    if rc == 0:
        rc = mdb_env_set_mapsize(denv, mapsize)
    if rc == 0:
        rc = mdb_env_set_maxdbs(denv, ndbs + 2)
    if rc == 0:
        rc = mdb_env_open(denv, path, MDB_NOSYNC, 0o644)
    if rc:
        failed[0] = "repack (open the copy)"
    else:
        rc = mdb_cursor_get(mc, &k, &v, MDB_FIRST)
        while rc == 0:
            if k.mv_size >= sizeof(name) or memchr(k.mv_data, 0, k.mv_size) != NULL:
                failed[0] = "repack (a database name)"
                rc = 22  # EINVAL
                break
            memcpy(name, k.mv_data, k.mv_size)
            name[k.mv_size] = 0
            rc = _repack_db(src, denv, name, &done, failed)
            if rc:
                break
            rc = mdb_cursor_get(mc, &k, &v, MDB_NEXT)
        if rc == MDB_NOTFOUND:
            rc = 0
        if rc == 0:
            rc = mdb_env_sync(denv, 1)
            if rc:
                failed[0] = "mdb_env_sync (repack)"
    if mc != NULL:
        mdb_cursor_close(mc)
    mdb_txn_abort(src)
    if denv != NULL:
        mdb_env_close(denv)
    return rc


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
    cdef size_t _psize       # page size
    cdef dict _dbis          # name -> dbi
    cdef dict _names         # dbi -> name
    cdef set _handles        # dbis handed out
    cdef uint64_t _handle_bits  # the same, as bits (for dbis below 64)
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
        self._names = {}
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
        # Free the reader slots of processes that died holding them (a SIGKILLed gateway worker
        # keeps its slot until someone checks; 126 of them and no new reader could open).
        cdef int dead = 0
        mdb_reader_check(env, &dead)
        self._env = env
        self._gen = _fork_gen
        self._maxkey = <size_t>mdb_env_get_maxkeysize(env)
        self._psize = _page_size(env)

    def __dealloc__(self):
        if self._env != NULL:
            if self._gen == _fork_gen:
                mdb_env_close(self._env)
            self._env = NULL
            try:
                release(self._key)
            except BaseException:
                pass

    @cython.final
    cdef int _check(self) except -1:
        if self._env == NULL:
            raise LmdbError(f"environment {self.path!r} is closed; open a new Env")
        if self._gen != _fork_gen:
            raise LmdbError(FORKED_MESSAGE)
        return 0

    cdef MDB_dbi _dbi(self, object db) except? 0:
        cdef unsigned int d
        if type(db) is int and 0 <= db < 64:  # LMDB numbers databases from 2 up: the usual case
            d = db
            if (self._handle_bits >> d) & 1:
                return d
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

    @cython.final
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

    @cython.final
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
            self._names[dbi] = bname
            self._handles.add(dbi)
            if dbi < 64:
                self._handle_bits |= (<uint64_t>1) << dbi
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

    def copy(self, path, *, bint compact=True, bint repack=False):
        """Copy the environment into an existing empty directory (compact: without free pages).

        repack=True writes a new environment there instead: every named database rewritten
        in key order with appends, so that its pages are full (a compact copy keeps pages as
        they are, however empty). The copy is synced to disk; it needs a directory of its own.
        """
        cdef int rc
        cdef bytes bpath = os.fsencode(os.path.abspath(os.fspath(path)))
        cdef const char *cpath = bpath
        cdef unsigned int flags = MDB_CP_COMPACT if compact else 0
        cdef const char *failed = "mdb_env_copy2"
        cdef MDB_envinfo inf
        self._check()
        if repack:
            mdb_env_info(self._env, &inf)
            with self._dbi_lock:  # it opens the databases (open_db must not run meanwhile)
                with self._nogil:
                    with nogil:
                        rc = _repack(self._env, cpath, inf.me_mapsize, &failed)
        else:
            with self._nogil:
                with nogil:
                    rc = mdb_env_copy2(self._env, cpath, flags)
        if rc:
            raise _err(failed.decode() if repack else "mdb_env_copy2", rc)

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

    def put_many(self, db, items, *, bint sort=False):
        """Store every (key, value) pair in order; all pairs are checked before any is written.

        sort=True writes them in key order instead (of pairs with equal keys, the last one
        given wins, as in order), appending those past the database's last key: the pages
        it adds are full. For bulk loads; the stored items are the same either way.
        """
        cdef MDB_val *keys = NULL
        cdef MDB_val *vals = NULL
        cdef Py_ssize_t n, i
        cdef MDB_dbi dbi
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
                self._pair(keys, vals, i, kb, vb, "put_many item")
            self._write(dbi, keys, vals, <size_t>n, sort)
        finally:
            free(keys)
            free(vals)

    def put_keys(self, db, keys, values, *, bint sort=False):
        """put_many(db, zip(keys, values), sort=sort) without the pairs: values is a sequence
        as long as keys, or one bytes object stored under every key. (Lists of bytes cost
        far less to build than lists of pairs.)"""
        cdef MDB_val *ks = NULL
        cdef MDB_val *vs = NULL
        cdef Py_ssize_t n, i
        cdef MDB_dbi dbi
        cdef bint one_value
        self._check_write()
        dbi = self.env._dbi(db)
        key_list = tuple(keys)  # hold every key and value while the GIL is released
        n = len(key_list)
        one_value = isinstance(values, bytes)
        value_list = None if one_value else tuple(values)
        if not one_value and len(value_list) != n:
            raise ValueError(f"put_keys: {n} keys but {len(value_list)} values")
        if n == 0:
            return
        keep = []  # keys given as str, encoded
        ks = <MDB_val *>malloc(n * sizeof(MDB_val))
        vs = <MDB_val *>malloc(n * sizeof(MDB_val))
        try:
            if ks == NULL or vs == NULL:
                raise MemoryError("put_keys: out of memory")
            for i in range(n):
                k = key_list[i]
                kb = _key_arg(k, "key")
                vb = values if one_value else _val_arg(value_list[i])
                if kb is not k:
                    keep.append(kb)
                self._pair(ks, vs, i, kb, vb, "put_keys key")
            self._write(dbi, ks, vs, <size_t>n, sort)
        finally:
            free(ks)
            free(vs)

    cdef int _pair(self, MDB_val *keys, MDB_val *vals, Py_ssize_t i, bytes kb, bytes vb, str what) except -1:
        """Point pair i at kb and vb, once kb is known to be a storable key."""
        keys[i].mv_size = PyBytes_GET_SIZE(kb)
        if keys[i].mv_size == 0 or keys[i].mv_size > self.env._maxkey:
            raise key_size_error(f"{what} {i}", keys[i].mv_size)
        keys[i].mv_data = PyBytes_AS_STRING(kb)
        vals[i].mv_size = PyBytes_GET_SIZE(vb)
        vals[i].mv_data = PyBytes_AS_STRING(vb)
        return 0

    cdef int _write(self, MDB_dbi dbi, MDB_val *keys, MDB_val *vals, size_t n, bint sort) except -1:
        """Write checked pairs without the GIL: in order, or sorted (see put_many)."""
        cdef int rc
        cdef const char *failed = "mdb_put"
        cdef MDB_txn *txn = self._txn
        self._busy = True
        try:
            with self.env._nogil:
                with nogil:
                    if sort and n > 1:
                        rc = _put_sorted(txn, dbi, keys, vals, n, &failed)
                    else:
                        rc = _put_loop(txn, dbi, keys, vals, n)
        finally:
            self._busy = False
        if rc:
            raise _err(failed.decode(), rc)
        return 0

    def get_many(self, db, keys):
        """The value stored under each key (None where there is none), in input order;
        the keys are looked up in key order, which is faster for large batches."""
        cdef Scratch s = Scratch(NULL, 0, NULL, 0)
        cdef Batch b
        cdef MDB_val *vals = NULL
        cdef MDB_txn *txn
        cdef MDB_dbi dbi
        cdef const char *failed = NULL
        cdef size_t i
        cdef int rc = 0
        self._check()
        dbi = self.env._dbi(db)
        if type(keys) is not list and type(keys) is not tuple:
            keys = list(keys)
        try:
            _pack(&s, &b, keys, b"", True)
            if b.n == 0:
                return []
            b.maxkey = self.env._maxkey
            vals = <MDB_val *>malloc(b.n * sizeof(MDB_val))
            if vals == NULL:
                raise MemoryError("get_many: out of memory")
            txn = self._txn
            self._busy = True
            try:
                with self.env._nogil:
                    with nogil:
                        rc = _get_sorted(txn, dbi, &b, vals, &failed)
            finally:
                self._busy = False
            if rc:
                raise _err(failed.decode(), rc)
            return [None if vals[i].mv_data == NULL else
                    PyBytes_FromStringAndSize(<char *>vals[i].mv_data, vals[i].mv_size) for i in range(b.n)]
        finally:
            free(vals)
            free(s.buf)
            free(s.arr)

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
    # Scratch memory of earlier resolve_many calls, kept for the next ones (one set per
    # concurrent call): allocating it afresh costs page faults (glibc returns large
    # freed blocks to the OS).
    cdef Scratch _spool[8]
    cdef int _nspool
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
        cdef int i
        for i in range(self._nspool):
            free(self._spool[i].buf)
            free(self._spool[i].arr)
        self._nspool = 0

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

    @cython.final  # called directly, not through the vtable (the single-lookup path)
    cdef int _check_open(self) except -1:
        if self._closed:
            raise LmdbError("reader is closed; make a new one with env.reader()")
        self.env._check()
        return 0

    @cython.final
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

    @cython.final
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
        """A kept scratch set, or an empty one (the call then allocates)."""
        if self._nspool == 0:
            return Scratch(NULL, 0, NULL, 0)
        self._nspool -= 1
        return self._spool[self._nspool]

    cdef void _keep_scratch(self, Scratch *s) noexcept:
        """Keep a call's scratch for a later call (unless closed, too big, or enough are kept)."""
        if (self._closed or self._nspool >= _SCRATCH_KEEP or s.buf_cap > _SCRATCH_MAX
                or s.arr_cap > _SCRATCH_MAX):
            free(s.buf)
            free(s.arr)
            return
        self._spool[self._nspool] = s[0]
        self._nspool += 1

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

    def resolve_one(self, db, prefix, key):
        """The first byte of the value at prefix+key (an int), 0 if absent or empty: one
        key of resolve_many, without its batch set-up (and with the GIL held)."""
        cdef const char *pp
        cdef Py_ssize_t plen
        self._check_open()
        dbi = self.env._dbi(db)
        _key_ptr(prefix, &pp, &plen)
        return self._code(dbi, pp, <size_t>plen, key, False)

    def bind_one(self, db, prefix):
        """resolve_one with db and prefix bound: a callable key -> int, for many single calls."""
        cdef _One one
        self._check_open()
        one = _One.__new__(_One)
        one.dbi = self.env._dbi(db)
        one.prefix = _key_arg(prefix, "prefix")
        one.reader = self
        return one.code

    @cython.final
    cdef object _code(self, MDB_dbi dbi, const char *pp, size_t plen, object key, bint nonempty):
        """resolve_one's lookup, the reader checked; nonempty: an empty key answers 0 unlooked."""
        cdef unsigned char kbuf[512]
        cdef const char *kp
        cdef Py_ssize_t klen
        cdef MDB_val k, v
        cdef MDB_txn *txn
        cdef int rc
        cdef int answer = 0
        if PyBytes_CheckExact(key):
            kp = PyBytes_AS_STRING(key)
            klen = PyBytes_GET_SIZE(key)
        else:
            _key_ptr(key, &kp, &klen)
        k.mv_size = plen + <size_t>klen
        if (nonempty and klen == 0) or k.mv_size == 0 or k.mv_size > self.env._maxkey or k.mv_size > sizeof(kbuf):
            return 0
        memcpy(kbuf, pp, plen)
        memcpy(kbuf + plen, kp, <size_t>klen)
        k.mv_data = kbuf
        txn = self._take()
        rc = mdb_get(txn, dbi, &k, &v)
        if rc == 0 and v.mv_size:
            answer = (<unsigned char *>v.mv_data)[0]
        self._give(txn)
        if rc and rc != MDB_NOTFOUND:
            raise _err("mdb_get", rc)
        return answer

    def resolve_many(self, db, prefix, keys, *, method="auto", sort_threshold=_SORT_THRESHOLD):
        """One byte per key (input order): first byte of the value at prefix+key, 0 if absent or empty."""
        cdef MDB_dbi dbi
        cdef int m
        cdef Scratch s
        cdef Batch b
        _check_method(method, sort_threshold)
        self._check_open()
        dbi = self.env._dbi(db)
        pb = _key_arg(prefix, "prefix")
        if type(keys) is not list and type(keys) is not tuple:
            keys = list(keys)
        if method == "get" or (method == "auto" and len(keys) < sort_threshold):
            m = M_GET
        elif method == "cursor":
            m = M_CURSOR
        else:
            m = M_SORTED
        out = PyBytes_FromStringAndSize(NULL, len(keys))
        name = self.env._names.get(dbi)
        s = self._take_scratch()
        try:
            _pack(&s, &b, keys, pb, m != M_GET)
            if b.n == 0:
                return b""
            b.maxkey = self.env._maxkey
            b.out = <unsigned char *>PyBytes_AS_STRING(out)
            b.name = PyBytes_AS_STRING(name)
            b.name_len = <size_t>PyBytes_GET_SIZE(name)
            b.psize = self.env._psize
            self._run(dbi, &b, m)
        finally:
            self._keep_scratch(&s)
        return out

    cdef int _run(self, MDB_dbi dbi, const Batch *b, int method) except -1:
        """Look a packed batch up in one read transaction, without the GIL."""
        cdef const char *failed = NULL
        cdef int rc
        cdef MDB_txn *txn = self._take()
        try:
            with self.env._nogil:
                with nogil:
                    rc = _lookup(txn, dbi, b, method, &failed)
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


@cython.final
cdef class _One:
    """Reader.resolve_one with its database and prefix bound (made by Reader.bind_one):
    code(key) is resolve_one(db, prefix, key), except that an empty key answers 0 unlooked."""

    cdef Reader reader
    cdef MDB_dbi dbi
    cdef bytes prefix

    def __init__(self, *args, **kwargs):
        raise TypeError("make these with Reader.bind_one(db, prefix)")

    @cython.binding(False)  # a plain builtin method: the cheapest call there is
    @cython.always_allow_keywords(False)
    def code(self, key):
        """The first byte of the value at prefix+key (an int), 0 if absent, empty, or key is empty."""
        cdef Reader r = self.reader
        r._check_open()
        return r._code(self.dbi, PyBytes_AS_STRING(self.prefix), <size_t>PyBytes_GET_SIZE(self.prefix), key, True)
