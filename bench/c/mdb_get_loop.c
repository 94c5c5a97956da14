/* The plain C baseline of the macro benchmark: an mdb_get loop over the index.
 *
 * Usage: mdb_get_loop ENV_DIR QUERY_FILE ANSWERS_OUT RUNS
 *        mdb_get_loop ENV_DIR QUERY_FILE ANSWERS_OUT -     (served: see below)
 *
 * Opens the mykey index read-only with the system LMDB library, answers every batch
 * of the query file (see bench/macro_dataset.py: b"MKQ1", u32 count, then per batch
 * a 5-byte business ID, u32 n and n x (u8 len, id)) with one read transaction per
 * batch (reset and renewed, as mykey's Reader does) and one mdb_get per key, writing
 * the first byte of each value (0 when absent). The first pass is a warm-up whose
 * answers go to ANSWERS_OUT; then RUNS timed passes. Prints one JSON line:
 * {"runs_ns": [...], "maxrss_kb": N, "rss_anon_kb": N, "rss_file_kb": N, "lmdb": "..."}
 * (memory read while the environment is still open).
 *
 * With RUNS "-" it prints {"ready": N} after the warm-up and then serves lines on stdin, so
 * that a benchmark can interleave its runs with other peers': "K" times batch K once and
 * prints {"ns": wall, "cpu_ns": this thread's CPU time, "keys": n}; "all" times every batch
 * once and prints the same; EOF ends it.
 *
 * Built by `python -m bench` with: cc -O2 -o bench/_build/mdb_get_loop bench/c/mdb_get_loop.c -llmdb
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define PREFIX_LEN 5

typedef struct {
    unsigned char prefix[PREFIX_LEN];
    uint32_t n;
    const unsigned char **ids; /* each points at (u8 len, bytes) */
} batch_t;

static void die(const char *what, int rc) {
    fprintf(stderr, "mdb_get_loop: %s: %s\n", what, rc ? mdb_strerror(rc) : "failed");
    exit(2);
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path, 0);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die("reading the query file", 0);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* A "Key:   123 kB" line of /proc/self/status, or -1. */
static long status_kb(const char *key) {
    char line[256];
    long kb = -1;
    size_t n = strlen(key);
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        while (fgets(line, sizeof line, f))
            if (strncmp(line, key, n) == 0 && line[n] == ':') {
                kb = atol(line + n + 1);
                break;
            }
        fclose(f);
    }
    return kb;
}

/* Peak RSS in kB: VmHWM (ru_maxrss would include the parent's pages on Linux when spawned by fork+exec). */
static long peak_rss_kb(void) {
    long kb = status_kb("VmHWM");
    if (kb < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kb = ru.ru_maxrss;
    }
    return kb;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* CPU time of this thread: what a run cost it, whatever else the machine was doing. */
static int64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Answer every batch; returns the number of keys looked up. */
static size_t run(MDB_txn *txn, MDB_dbi dbi, const batch_t *batches, uint32_t nb, unsigned char *out) {
    unsigned char key[PREFIX_LEN + 256];
    MDB_val k, v;
    size_t o = 0;
    int rc;
    for (uint32_t b = 0; b < nb; b++) {
        rc = mdb_txn_renew(txn);
        if (rc) die("mdb_txn_renew", rc);
        memcpy(key, batches[b].prefix, PREFIX_LEN);
        for (uint32_t i = 0; i < batches[b].n; i++) {
            const unsigned char *id = batches[b].ids[i];
            memcpy(key + PREFIX_LEN, id + 1, id[0]);
            k.mv_size = PREFIX_LEN + id[0];
            k.mv_data = key;
            rc = mdb_get(txn, dbi, &k, &v);
            if (rc == 0)
                out[o++] = v.mv_size ? ((const unsigned char *)v.mv_data)[0] : 0;
            else if (rc == MDB_NOTFOUND)
                out[o++] = 0;
            else
                die("mdb_get", rc);
        }
        mdb_txn_reset(txn);
    }
    return o;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s ENV_DIR QUERY_FILE ANSWERS_OUT RUNS\n", argv[0]);
        return 2;
    }
    int runs = atoi(argv[4]);
    size_t qlen;
    unsigned char *q = read_file(argv[2], &qlen);
    if (qlen < 8 || memcmp(q, "MKQ1", 4) != 0) die("not a query file", 0);
    uint32_t nb = rd32(q + 4);
    batch_t *batches = calloc(nb ? nb : 1, sizeof(batch_t));
    size_t pos = 8, total = 0;
    for (uint32_t b = 0; b < nb; b++) {
        memcpy(batches[b].prefix, q + pos, PREFIX_LEN);
        batches[b].n = rd32(q + pos + PREFIX_LEN);
        pos += PREFIX_LEN + 4;
        batches[b].ids = malloc(sizeof(unsigned char *) * (batches[b].n ? batches[b].n : 1));
        for (uint32_t i = 0; i < batches[b].n; i++) {
            batches[b].ids[i] = q + pos;
            pos += 1 + q[pos];
        }
        total += batches[b].n;
    }
    if (pos != qlen) die("query file has trailing bytes", 0);

    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = mdb_env_create(&env);
    if (rc) die("mdb_env_create", rc);
    mdb_env_set_maxdbs(env, 32);
    mdb_env_set_maxreaders(env, 126);
    rc = mdb_env_open(env, argv[1], MDB_RDONLY | MDB_NOTLS, 0644);
    if (rc) die("mdb_env_open", rc);
    rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc) die("mdb_txn_begin", rc);
    rc = mdb_dbi_open(txn, "svc", 0, &dbi);
    if (rc) die("mdb_dbi_open(svc)", rc);
    rc = mdb_txn_commit(txn); /* makes the handle usable in later transactions */
    if (rc) die("mdb_txn_commit", rc);
    rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc) die("mdb_txn_begin", rc);
    mdb_txn_reset(txn);

    unsigned char *out = malloc(total ? total : 1);
    run(txn, dbi, batches, nb, out); /* warm-up, and the answers to check */
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(out, 1, total, f) != total) die("writing the answers", 0);
    fclose(f);

    if (strcmp(argv[4], "-") == 0) {
        char line[64];
        printf("{\"ready\": %u}\n", nb);
        fflush(stdout);
        while (fgets(line, sizeof line, stdin)) {
            uint32_t first = 0, count = nb;
            size_t keys = 0;
            if (strncmp(line, "all", 3) != 0) {
                first = (uint32_t)strtoul(line, NULL, 10);
                if (first >= nb) die("no such batch", 0);
                count = 1;
            }
            for (uint32_t b = first; b < first + count; b++) keys += batches[b].n;
            int64_t t0 = now_ns(), c0 = cpu_ns();
            run(txn, dbi, batches + first, count, out);
            int64_t t1 = now_ns(), c1 = cpu_ns();
            printf("{\"ns\": %lld, \"cpu_ns\": %lld, \"keys\": %zu}\n", (long long)(t1 - t0),
                   (long long)(c1 - c0), keys);
            fflush(stdout);
        }
        mdb_txn_abort(txn);
        mdb_env_close(env);
        return 0;
    }
    printf("{\"runs_ns\": [");
    for (int r = 0; r < runs; r++) {
        int64_t t0 = now_ns();
        run(txn, dbi, batches, nb, out);
        int64_t t1 = now_ns();
        printf("%s%lld", r ? ", " : "", (long long)(t1 - t0));
    }
    int maj, min, pat;
    mdb_version(&maj, &min, &pat);
    printf("], \"maxrss_kb\": %ld, \"rss_anon_kb\": %ld, \"rss_file_kb\": %ld, \"lmdb\": \"%d.%d.%d\"}\n",
           peak_rss_kb(), status_kb("RssAnon"), status_kb("RssFile"), maj, min, pat);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return 0;
}
