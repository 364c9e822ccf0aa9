/* cache.c: the LMDB result cache (contract in cache.h, on-disk format in
 * schemas/cache.md).
 *
 * Three named databases in one environment:
 *   entries  key (16 bytes) -> 32-byte header + f32 outputs (checksummed)
 *   lfu      key (16 bytes) -> LFU counter, last access minute, accounted cost
 *   meta     "format" -> what this file is; "stats" -> shared counters
 * The LFU bookkeeping lives beside the value, not in it, so that a frequency
 * bump rewrites 16 bytes instead of the whole output, and so that eviction
 * sampling reads one small tree instead of the (possibly overflow-paged)
 * values. Both trees change in the same transaction, so they never disagree.
 *
 * Must never: serve a value whose checksum does not match; take the writer
 * lock on the read path; write one transaction per job; let the map fill in
 * normal use (eviction runs off accounted bytes with headroom, and each
 * transaction's dirty pages are bounded). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cache.h"
#include "error.h"
#include "log.h"
#include "tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cache.c stores little-endian floats as they are in memory; port the payload copy first"
#endif

#define MOD "cache"

/* ---- on-disk layout (schemas/cache.md) */
#define VAL_MAGIC 0x56434e51u /* "QNCV" */
#define VAL_FORMAT 1u
#define VAL_HDR 32u
#define LFU_REC 16u
#define FORMAT_MAGIC "QNCACHE1"
#define FORMAT_VERSION 1u
#define FORMAT_REC 40u
#define STATS_N 16
enum { ST_HITS, ST_MISSES, ST_INSERTS, ST_EVICTIONS, ST_CSUM, ST_WFAIL, ST_BYTES, ST_EVICTING };

/* LMDB node overheads (lmdb's NODESIZE, PAGEHDRSZ and a 2-byte slot index):
 * used to account what an entry really costs in pages. */
#define NODE_HDR 8u
#define PAGE_HDR 16u
#define SLOT 2u
/* Leaf pages of a B-tree under random inserts run about 2/3 full, and under
 * the churn of a full cache (random deletes, merged only below 1/4) about
 * 55%; small entries are charged twice their node size so that accounted
 * bytes stay above pages in both (measured: bench/notes/cache.md). */
#define FILL_NUM 2u
#define FILL_DEN 1u

#define RPOOL_MAX 64
/* Hits one reader session buffers before it takes the pending lock (a burst
 * is rarely longer; a longer one just takes it more than once). */
#define READER_BUMPS 256
#define BUMP_CAP 8192u   /* distinct keys with pending bumps (power of two) */
#define DEL_CAP 256
#define EVICT_POOL 16
/* A flush writes at most this many transactions; what is left is dropped
 * (counted). It bounds the time one flush can take. */
#define MAX_TXN_PER_FLUSH 16
/* Pages every write txn copies whatever it does: the main and meta leaves,
 * the free list, the branch path of both trees (measured, about 6-8). */
#define FIXED_TXN_PAGES 8

typedef struct pput {
    uint8_t key[16];
    uint64_t cost;
    size_t vlen;
    unsigned char v[];
} pput;

typedef struct bump {
    uint64_t k0, k1;
    uint32_t n; /* 0: empty slot */
} bump;

typedef struct pending {
    pput **puts;
    size_t nputs, cap_puts, put_bytes;
    bump *bumps;      /* BUMP_CAP slots */
    size_t nbumps;
    uint8_t dels[DEL_CAP][16];
    size_t ndels;
} pending;

struct qn_cache {
    MDB_env *env;
    MDB_dbi db_entries, db_lfu, db_meta;
    char *dir;
    qn_cache_opts o;
    uint64_t map_bytes, high_bytes, low_bytes, hard_bytes;
    unsigned psize, nodemax;
    size_t ops_cap;          /* most keys one write txn may touch */
    uint64_t max_entry_bytes;

    pthread_mutex_t rpool_mu;
    MDB_txn *rpool[RPOOL_MAX];
    int nrpool;
    qn_cache_reader *readers; /* idle reader sessions, each with its reset txn (under rpool_mu) */
    int nreaders;

    pthread_mutex_t pend_mu;
    pending pend;

    pthread_mutex_t flush_mu; /* one flush at a time in this process */
    pending work;             /* taken from pend by a flush (under flush_mu) */
    uint64_t rng;
    uint64_t persisted[6];    /* counter values already added to meta "stats" */
    int64_t last_persist_ms;
    bool full_logged, pages_logged;

    atomic_int_fast64_t writes_off_until; /* monotonic ms */
    atomic_bool broken;                   /* LMDB reported corruption: cache off */

    _Atomic uint64_t hits, misses, inserts, evictions, csum_fail, wfail, dropped;

    pthread_t tick;
    bool tick_started;
    pthread_mutex_t tick_mu;
    pthread_cond_t tick_cv;
    bool stop;
};

/* ---- little helpers */

static void put_u16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void key_bytes(const uint64_t key[2], uint8_t out[16])
{
    put_u64(out, key[0]);
    put_u64(out + 8, key[1]);
}

static int64_t mono_ms(void) { return (int64_t)(qn_now_ns() / 1000000u); }

static int64_t wall_ms(const qn_cache *c)
{
    return c->o.clock_ms ? c->o.clock_ms(c->o.clock_ctx) : qn_wall_ms();
}

/* Last access is kept in seconds (not Redis's minutes): aging still counts
 * whole minutes, but among equal counters the longer idle goes first. */
static uint32_t now_sec(const qn_cache *c) { return (uint32_t)(wall_ms(c) / 1000); }

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static void cnt_add(_Atomic uint64_t *a, uint64_t n)
{
    atomic_fetch_add_explicit(a, n, memory_order_relaxed);
}
static uint64_t cnt_get(_Atomic uint64_t *a) { return atomic_load_explicit(a, memory_order_relaxed); }

/* LMDB's codes -> QN_E*; the caller logs mdb_strerror where it has context. */
static int from_mdb(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return 0;
    case MDB_NOTFOUND: return QN_ENOTFOUND;
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return QN_EFULL;
    case EIO: return QN_EIO;
    case ENOMEM: return QN_ENOMEM;
    case EACCES:
    case EROFS:
    case EPERM: return QN_EIO;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INCOMPATIBLE: return QN_EFORMAT;
    default: return QN_EEXTERNAL;
    }
}

static bool mdb_is_corrupt(int rc)
{
    return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
           rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE;
}

/* ---- LFU counter (Redis's LFULogIncr / LFUDecrAndReturn) */

uint8_t qn_lfu_incr(uint8_t counter, uint32_t log_factor, double r)
{
    if (counter == 255) return 255;
    double base = (double)counter - QN_LFU_INIT_VAL;
    if (base < 0) base = 0;
    double p = 1.0 / (base * (double)log_factor + 1.0);
    return r < p ? (uint8_t)(counter + 1) : counter;
}

uint8_t qn_lfu_decay(uint8_t counter, uint32_t last_min, uint32_t now_min_, uint32_t decay_min)
{
    if (!decay_min || now_min_ <= last_min) return counter;
    uint32_t periods = (now_min_ - last_min) / decay_min;
    return periods >= counter ? 0 : (uint8_t)(counter - periods);
}

/* ---- key */

int qn_cache_key(const char *model, int64_t version, int64_t rows, int64_t cols, const float *data,
                 uint64_t out[2])
{
    if (!model || !out || rows < 0 || cols < 0 || (rows && cols && !data)) return QN_EINVAL;
    if (cols && (uint64_t)rows > SIZE_MAX / 4 / (uint64_t)cols) return QN_EINVAL;
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    /* Every variable-length field is length-prefixed, so no two different
     * (model, version, shape, data) tuples hash the same byte stream. */
    static const char tag[] = "quern.cache.key.v1";
    XXH3_128bits_update(&st, tag, sizeof tag);
    unsigned char b[8];
    uint32_t mlen = (uint32_t)strlen(model);
    put_u32(b, mlen);
    XXH3_128bits_update(&st, b, 4);
    XXH3_128bits_update(&st, model, mlen);
    put_u64(b, (uint64_t)version);
    XXH3_128bits_update(&st, b, 8);
    static const char dtype[] = "f32"; /* the only dtype a job carries (CONTRACT.md) */
    XXH3_128bits_update(&st, dtype, sizeof dtype);
    put_u64(b, (uint64_t)rows);
    XXH3_128bits_update(&st, b, 8);
    put_u64(b, (uint64_t)cols);
    XXH3_128bits_update(&st, b, 8);
    if (rows && cols) XXH3_128bits_update(&st, data, (size_t)rows * (size_t)cols * 4);
    XXH128_hash_t h = XXH3_128bits_digest(&st);
    out[0] = h.low64;
    out[1] = h.high64;
    return 0;
}

/* The checksum covers the key (a value moved under another key fails), the
 * first 16 header bytes (magic, format, dtype, shape) and the payload. */
static uint64_t value_checksum(const uint8_t key[16], const unsigned char *hdr,
                               const void *payload, size_t plen)
{
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, key, 16);
    XXH3_64bits_update(&st, hdr, 16);
    XXH3_64bits_update(&st, payload, plen);
    return XXH3_64bits_digest(&st);
}

/* What an entry of vlen value bytes costs in the store: its leaf node (or
 * its overflow pages) in entries plus its node in lfu. */
static uint64_t entry_cost(const qn_cache *c, size_t vlen)
{
    uint64_t lfu_node = (NODE_HDR + 16 + LFU_REC + SLOT) * FILL_NUM / FILL_DEN;
    if (NODE_HDR + 16 + vlen > c->nodemax) {
        uint64_t pages = (PAGE_HDR + vlen + c->psize - 1) / c->psize;
        return pages * c->psize + (NODE_HDR + 16 + 8 + SLOT) * FILL_NUM / FILL_DEN + lfu_node;
    }
    return (NODE_HDR + 16 + vlen + SLOT) * FILL_NUM / FILL_DEN + lfu_node;
}

/* ---- options */

void qn_cache_opts_default(qn_cache_opts *o)
{
    memset(o, 0, sizeof *o);
    o->tick_ms = 10;
    o->lfu_log_factor = 10;
    o->lfu_decay_min = 1;
    o->high_pct = 75;
    o->low_pct = 60;
    o->evict_samples = 8;
    o->durable = 0;
    o->sync_ms = 1000;
    o->write_backoff_ms = 30000;
}

/* ---- runtime failure policy */

/* LMDB said a page is corrupt while we ran: stop using the cache in this
 * process (every get misses, nothing is written) and leave a marker so the
 * next open moves the file aside. Other processes find out on their own. */
static void mark_broken(qn_cache *c, int rc, const char *where)
{
    if (atomic_exchange(&c->broken, true)) return;
    QN_LOGE(MOD, "%s: %s in %s: cache disabled in this process; it is moved aside at the next open",
            c->dir, mdb_strerror(rc), where);
    char path[4096];
    snprintf(path, sizeof path, "%s/quern.corrupt", c->dir);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}

/* A failed write transaction: count it, and on a full map or disk stop
 * writing for a while (logged once per episode). */
static int write_failed(qn_cache *c, int rc, const char *where)
{
    cnt_add(&c->wfail, 1);
    int e = from_mdb(rc);
    if (mdb_is_corrupt(rc)) {
        mark_broken(c, rc, where);
    } else {
        /* full map, full disk (ENOSPC, or EIO from a short write), quota:
         * all mean the same to a cache: stop writing, keep serving. A full
         * map is usually pages pinned by a reader that was descheduled
         * mid-read, gone in a moment: pause briefly. A full disk is not. */
        uint32_t pause = c->o.write_backoff_ms;
        if (rc == MDB_MAP_FULL && pause > 1000) pause = 1000;
        atomic_store(&c->writes_off_until, mono_ms() + (int64_t)pause);
        if (!c->full_logged) {
            MDB_envinfo info;
            mdb_env_info(c->env, &info);
            QN_LOGE(MOD, "%s: %s in %s (file at page %zu of %llu): cache writes stop for %u ms; serving goes on",
                    c->dir, mdb_strerror(rc), where, info.me_last_pgno,
                    (unsigned long long)(c->map_bytes / c->psize), pause);
            c->full_logged = true;
        }
        /* a killed process's reader slot pins old pages: clear it */
        int dead = 0;
        mdb_reader_check(c->env, &dead);
    }
    return e == QN_ENOTFOUND ? QN_EEXTERNAL : e;
}

static bool writes_off(qn_cache *c)
{
    int64_t until = atomic_load(&c->writes_off_until);
    return until && mono_ms() < until;
}

/* ---- read transactions: pooled, reset between uses, so a get neither takes
 * LMDB's reader-table mutex nor allocates (MDB_NOTLS lets any thread use
 * any of them). */

static int rtxn_get(qn_cache *c, MDB_txn **out)
{
    MDB_txn *t = NULL;
    pthread_mutex_lock(&c->rpool_mu);
    if (c->nrpool) t = c->rpool[--c->nrpool];
    pthread_mutex_unlock(&c->rpool_mu);
    int rc;
    if (t) {
        rc = mdb_txn_renew(t);
        if (rc == 0) { *out = t; return 0; }
        mdb_txn_abort(t);
    }
    rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t);
    if (rc) {
        QN_LOGW(MOD, "%s: read txn: %s", c->dir, mdb_strerror(rc));
        return rc;
    }
    *out = t;
    return 0;
}

static void rtxn_put(qn_cache *c, MDB_txn *t)
{
    mdb_txn_reset(t);
    pthread_mutex_lock(&c->rpool_mu);
    if (c->nrpool < RPOOL_MAX) { c->rpool[c->nrpool++] = t; t = NULL; }
    pthread_mutex_unlock(&c->rpool_mu);
    if (t) mdb_txn_abort(t);
}

/* ---- pending work */

/* Caller holds pend_mu. */
static void record_bump_locked(qn_cache *c, uint64_t k0, uint64_t k1)
{
    bump *tab = c->pend.bumps;
    uint32_t i = (uint32_t)(k0 ^ (k1 >> 7)) & (BUMP_CAP - 1);
    for (uint32_t probe = 0; probe < 32; probe++, i = (i + 1) & (BUMP_CAP - 1)) {
        if (tab[i].n && tab[i].k0 == k0 && tab[i].k1 == k1) { tab[i].n++; return; }
        if (!tab[i].n) {
            if (c->pend.nbumps >= BUMP_CAP / 2) return; /* full enough: drop; LFU is approximate */
            tab[i].k0 = k0;
            tab[i].k1 = k1;
            tab[i].n = 1;
            c->pend.nbumps++;
            return;
        }
    }
}

static void record_bump(qn_cache *c, const uint64_t key[2])
{
    pthread_mutex_lock(&c->pend_mu);
    record_bump_locked(c, key[0], key[1]);
    pthread_mutex_unlock(&c->pend_mu);
}

static void record_delete(qn_cache *c, const uint8_t key[16])
{
    pthread_mutex_lock(&c->pend_mu);
    if (c->pend.ndels < DEL_CAP) memcpy(c->pend.dels[c->pend.ndels++], key, 16);
    pthread_mutex_unlock(&c->pend_mu);
}

static void pending_free_puts(pending *p, size_t from)
{
    for (size_t i = from; i < p->nputs; i++) free(p->puts[i]);
    p->nputs = 0;
    p->put_bytes = 0;
}

/* ---- get */

/* Finds key in a read txn and checks it. 0 and the value, QN_ENOTFOUND, or
 * QN_EEXTERNAL/QN_EFORMAT (logged). A checksum failure is counted and queued
 * for deletion, and reads as a miss. */
static int lookup(qn_cache *c, MDB_txn *t, const uint64_t key[2], uint8_t kb[16], MDB_val *val)
{
    key_bytes(key, kb);
    MDB_val k = {16, kb};
    int rc = mdb_get(t, c->db_entries, &k, val);
    if (rc == MDB_NOTFOUND) return QN_ENOTFOUND;
    if (rc) {
        if (mdb_is_corrupt(rc)) mark_broken(c, rc, "get");
        else QN_LOGW(MOD, "%s: get: %s", c->dir, mdb_strerror(rc));
        return from_mdb(rc);
    }
    const unsigned char *v = val->mv_data;
    bool ok = val->mv_size >= VAL_HDR && get_u32(v) == VAL_MAGIC && get_u16(v + 4) == VAL_FORMAT &&
              get_u16(v + 6) == QN_DTYPE_F32;
    if (ok) {
        uint64_t n = (uint64_t)get_u32(v + 8) * get_u32(v + 12);
        ok = val->mv_size == VAL_HDR + n * 4 &&
             value_checksum(kb, v, v + VAL_HDR, (size_t)n * 4) == get_u64(v + 16);
    }
    if (!ok) {
        cnt_add(&c->csum_fail, 1);
        QN_LOGW(MOD, "%s: entry %016llx%016llx fails its checksum: dropped", c->dir,
                (unsigned long long)key[1], (unsigned long long)key[0]);
        record_delete(c, kb);
        return QN_ENOTFOUND;
    }
    return 0;
}

/* One lookup in its own read txn, counted as a hit (with an LFU bump) or a
 * miss. With into != NULL the stored shape must be want_rows x want_cols and
 * the floats land in into; otherwise they are copied to a new *alloc and the
 * shape goes to *rows, *cols. */
static int fetch(qn_cache *c, const uint64_t key[2], int64_t want_rows, int64_t want_cols,
                 float *into, float **alloc, int64_t *rows, int64_t *cols)
{
    if (atomic_load_explicit(&c->broken, memory_order_relaxed)) { cnt_add(&c->misses, 1); return QN_ENOTFOUND; }
    MDB_txn *t;
    int rc = rtxn_get(c, &t);
    if (rc) { cnt_add(&c->misses, 1); return from_mdb(rc); }
    uint8_t kb[16];
    MDB_val val;
    rc = lookup(c, t, key, kb, &val);
    if (rc == 0) {
        const unsigned char *v = val.mv_data;
        size_t n = val.mv_size - VAL_HDR;
        int64_t r = get_u32(v + 8), k = get_u32(v + 12);
        if (into) {
            if (r != want_rows || k != want_cols) rc = QN_ESHAPE;
            else memcpy(into, v + VAL_HDR, n);
        } else {
            float *f = malloc(n ? n : 1);
            if (!f) rc = QN_ENOMEM;
            else {
                memcpy(f, v + VAL_HDR, n);
                *alloc = f;
                *rows = r;
                *cols = k;
            }
        }
    }
    rtxn_put(c, t);
    if (rc == 0) {
        cnt_add(&c->hits, 1);
        record_bump(c, key);
    } else {
        cnt_add(&c->misses, 1);
    }
    return rc;
}

int qn_cache_get_into(qn_cache *c, const uint64_t key[2], int64_t rows, int64_t cols, float *out)
{
    if (!c || !key || rows < 0 || cols < 0 || (rows && cols && !out)) return QN_EINVAL;
    float dummy;
    return fetch(c, key, rows, cols, out ? out : &dummy, NULL, NULL, NULL);
}

int qn_cache_get(qn_cache *c, const uint64_t key[2], float **out, int64_t *rows, int64_t *cols)
{
    if (!c || !key || !out || !rows || !cols) return QN_EINVAL;
    *out = NULL;
    return fetch(c, key, 0, 0, NULL, out, rows, cols);
}

/* ---- reader sessions: one read txn and one pending-lock step per burst.
 * Idle sessions are kept with their reset txn, so begin is a pop and an
 * mdb_txn_renew, and end an mdb_txn_reset and a push: no allocation and no
 * trip through LMDB's reader-table mutex in steady state. */

struct qn_cache_reader {
    qn_cache *c;
    MDB_txn *t;              /* reset while idle; NULL when none could be made */
    bool live;               /* t renewed for this session (false: the cache is broken, every get misses) */
    qn_cache_reader *next;   /* in c->readers while idle */
    size_t nb;
    uint64_t bk[READER_BUMPS][2];
};

static void reader_push_bumps(qn_cache_reader *r)
{
    if (!r->nb) return;
    qn_cache *c = r->c;
    pthread_mutex_lock(&c->pend_mu);
    for (size_t i = 0; i < r->nb; i++) record_bump_locked(c, r->bk[i][0], r->bk[i][1]);
    pthread_mutex_unlock(&c->pend_mu);
    r->nb = 0;
}

int qn_cache_reader_begin(qn_cache *c, qn_cache_reader **out)
{
    if (!c || !out) return QN_EINVAL;
    *out = NULL;
    pthread_mutex_lock(&c->rpool_mu);
    qn_cache_reader *r = c->readers;
    if (r) { c->readers = r->next; c->nreaders--; }
    pthread_mutex_unlock(&c->rpool_mu);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return QN_ENOMEM;
        r->c = c;
    }
    r->next = NULL;
    r->nb = 0;
    r->live = false;
    if (atomic_load_explicit(&c->broken, memory_order_relaxed)) {
        /* as get_into: a broken cache reads as all misses; its txn stays
         * reset (a renew could hit the corruption again) */
        *out = r;
        return 0;
    }
    int rc = MDB_BAD_TXN;
    if (r->t) {
        rc = mdb_txn_renew(r->t);
        if (rc) { mdb_txn_abort(r->t); r->t = NULL; }
    }
    if (rc) {
        rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &r->t);
        if (rc) {
            QN_LOGW(MOD, "%s: read txn: %s", c->dir, mdb_strerror(rc));
            r->t = NULL;
            free(r);
            return from_mdb(rc);
        }
    }
    r->live = true;
    *out = r;
    return 0;
}

int qn_cache_reader_get_into(qn_cache_reader *r, const uint64_t key[2], int64_t rows, int64_t cols, float *out)
{
    if (!r || !key || rows < 0 || cols < 0 || (rows && cols && !out)) return QN_EINVAL;
    qn_cache *c = r->c;
    if (!r->live || atomic_load_explicit(&c->broken, memory_order_relaxed)) {
        cnt_add(&c->misses, 1);
        return QN_ENOTFOUND;
    }
    uint8_t kb[16];
    MDB_val val;
    int rc = lookup(c, r->t, key, kb, &val);
    if (rc == 0) {
        const unsigned char *v = val.mv_data;
        if ((int64_t)get_u32(v + 8) != rows || (int64_t)get_u32(v + 12) != cols) rc = QN_ESHAPE;
        else memcpy(out, v + VAL_HDR, val.mv_size - VAL_HDR);
    }
    if (rc == 0) {
        cnt_add(&c->hits, 1);
        if (r->nb == READER_BUMPS) reader_push_bumps(r);
        r->bk[r->nb][0] = key[0];
        r->bk[r->nb][1] = key[1];
        r->nb++;
    } else {
        cnt_add(&c->misses, 1);
    }
    return rc;
}

void qn_cache_reader_end(qn_cache_reader **pr)
{
    if (!pr || !*pr) return;
    qn_cache_reader *r = *pr;
    qn_cache *c = r->c;
    *pr = NULL;
    /* the snapshot goes first: a writer can reuse its pages from here on */
    if (r->live) mdb_txn_reset(r->t);
    r->live = false;
    reader_push_bumps(r);
    pthread_mutex_lock(&c->rpool_mu);
    if (c->nreaders < RPOOL_MAX) {
        r->next = c->readers;
        c->readers = r;
        c->nreaders++;
        r = NULL;
    }
    pthread_mutex_unlock(&c->rpool_mu);
    if (r) {
        if (r->t) mdb_txn_abort(r->t);
        free(r);
    }
}

/* ---- put */

int qn_cache_put(qn_cache *c, const uint64_t key[2], int64_t rows, int64_t cols, const float *data)
{
    if (!c || !key || rows < 0 || cols < 0 || rows > UINT32_MAX || cols > UINT32_MAX ||
        (rows && cols && !data))
        return QN_EINVAL;
    if (atomic_load_explicit(&c->broken, memory_order_relaxed) || writes_off(c)) {
        cnt_add(&c->dropped, 1);
        return QN_EFULL;
    }
    uint64_t plen = (uint64_t)rows * (uint64_t)cols * 4;
    if (VAL_HDR + plen > c->max_entry_bytes) {
        cnt_add(&c->dropped, 1);
        return QN_ETOOLARGE;
    }
    size_t vlen = VAL_HDR + (size_t)plen;
    pput *p = malloc(sizeof *p + vlen);
    if (!p) return QN_ENOMEM;
    key_bytes(key, p->key);
    p->vlen = vlen;
    p->cost = entry_cost(c, vlen);
    unsigned char *v = p->v;
    put_u32(v, VAL_MAGIC);
    put_u16(v + 4, VAL_FORMAT);
    put_u16(v + 6, QN_DTYPE_F32);
    put_u32(v + 8, (uint32_t)rows);
    put_u32(v + 12, (uint32_t)cols);
    if (plen) memcpy(v + VAL_HDR, data, (size_t)plen);
    put_u64(v + 16, value_checksum(p->key, v, v + VAL_HDR, (size_t)plen));
    put_u64(v + 24, (uint64_t)wall_ms(c));

    int rc = 0;
    pthread_mutex_lock(&c->pend_mu);
    pending *pd = &c->pend;
    if (pd->put_bytes + vlen > c->o.max_pending_bytes) {
        rc = QN_EFULL;
    } else if (pd->nputs == pd->cap_puts) {
        size_t ncap = pd->cap_puts ? pd->cap_puts * 2 : 64;
        pput **np = realloc(pd->puts, ncap * sizeof *np);
        if (!np) rc = QN_ENOMEM;
        else { pd->puts = np; pd->cap_puts = ncap; }
    }
    if (rc == 0) {
        pd->puts[pd->nputs++] = p;
        pd->put_bytes += vlen;
        p = NULL;
    }
    pthread_mutex_unlock(&c->pend_mu);
    if (p) {
        free(p);
        cnt_add(&c->dropped, 1);
    }
    return rc;
}

/* ---- eviction */

typedef struct cand {
    uint8_t key[16];
    uint8_t score;   /* decayed counter */
    uint32_t ldt;
    uint32_t cost;
} cand;

/* Lower score first, then the longer idle. */
static bool cand_before(const cand *a, const cand *b)
{
    return a->score != b->score ? a->score < b->score : a->ldt < b->ldt;
}

/* Adds x to the pool (sorted best-first, at most EVICT_POOL, no duplicates). */
static void pool_add(cand *pool, int *n, const cand *x)
{
    for (int i = 0; i < *n; i++)
        if (!memcmp(pool[i].key, x->key, 16)) return;
    int pos = *n;
    while (pos > 0 && cand_before(x, &pool[pos - 1])) pos--;
    if (pos >= EVICT_POOL) return;
    int last = *n < EVICT_POOL ? *n : EVICT_POOL - 1;
    memmove(&pool[pos + 1], &pool[pos], (size_t)(last - pos) * sizeof *pool);
    pool[pos] = *x;
    if (*n < EVICT_POOL) (*n)++;
}

/* Reads evict_samples consecutive lfu records from a random point into the
 * pool. Keys are hashes, so key order is independent of frequency and a run
 * of neighbours is as good a sample as random picks, for one seek. Returns
 * the number sampled, or a negative LMDB code. */
static int sample_into_pool(qn_cache *c, MDB_txn *txn, uint32_t now, cand *pool, int *npool)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, c->db_lfu, &cur);
    if (rc) return -rc;
    uint8_t start[16];
    put_u64(start, rng_next(&c->rng));
    put_u64(start + 8, rng_next(&c->rng));
    MDB_val k = {16, start}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    int n = 0;
    uint8_t first[16];
    while (rc == 0 && n < (int)c->o.evict_samples) {
        if (n == 0) memcpy(first, k.mv_data, 16);
        else if (!memcmp(first, k.mv_data, 16)) break; /* wrapped: fewer keys than samples */
        if (k.mv_size == 16 && v.mv_size == LFU_REC) {
            const unsigned char *r = v.mv_data;
            cand x;
            memcpy(x.key, k.mv_data, 16);
            x.ldt = get_u32(r + 4);
            x.score = qn_lfu_decay(r[0], x.ldt / 60, now / 60, c->o.lfu_decay_min);
            x.cost = get_u32(r + 8);
            pool_add(pool, npool, &x);
        }
        n++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        if (rc == MDB_NOTFOUND) rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND) return -rc;
    return n;
}

/* Evicts the lowest-frequency entries until *acct <= target or max_ops are
 * used. Returns 0 or an LMDB code; *evicted counts what was removed. */
static int evict(qn_cache *c, MDB_txn *txn, uint64_t *acct, uint64_t target, size_t max_ops,
                 uint64_t *evicted)
{
    cand pool[EVICT_POOL];
    int npool = 0;
    uint32_t now = now_sec(c);
    size_t ops = 0;
    while (*acct > target && ops < max_ops) {
        int n = sample_into_pool(c, txn, now, pool, &npool);
        if (n < 0) return -n;
        if (npool == 0) { /* empty store: the accounting drifted; it is 0 now */
            *acct = 0;
            break;
        }
        cand victim = pool[0];
        memmove(&pool[0], &pool[1], (size_t)(--npool) * sizeof *pool);
        MDB_val k = {16, victim.key};
        int rc = mdb_del(txn, c->db_entries, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        rc = mdb_del(txn, c->db_lfu, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        *acct = *acct > victim.cost ? *acct - victim.cost : 0;
        (*evicted)++;
        ops++;
    }
    return 0;
}

/* ---- flush */

static uint64_t tree_pages(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_stat s;
    if (mdb_stat(txn, dbi, &s)) return 0;
    return s.ms_branch_pages + s.ms_leaf_pages + s.ms_overflow_pages;
}

static int read_stats_rec(qn_cache *c, MDB_txn *txn, uint64_t st[STATS_N])
{
    memset(st, 0, STATS_N * sizeof *st);
    MDB_val k = {5, "stats"}, v;
    int rc = mdb_get(txn, c->db_meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    size_t n = v.mv_size / 8 < STATS_N ? v.mv_size / 8 : STATS_N;
    for (size_t i = 0; i < n; i++) st[i] = get_u64((const unsigned char *)v.mv_data + 8 * i);
    return 0;
}

static int write_stats_rec(qn_cache *c, MDB_txn *txn, const uint64_t st[STATS_N])
{
    unsigned char buf[STATS_N * 8];
    for (int i = 0; i < STATS_N; i++) put_u64(buf + 8 * i, st[i]);
    MDB_val k = {5, "stats"}, v = {sizeof buf, buf};
    return mdb_put(txn, c->db_meta, &k, &v, 0);
}

static void lfu_rec(unsigned char r[LFU_REC], uint8_t counter, uint32_t ldt, uint64_t cost)
{
    memset(r, 0, LFU_REC);
    r[0] = counter;
    put_u32(r + 4, ldt);
    put_u32(r + 8, cost > UINT32_MAX ? UINT32_MAX : (uint32_t)cost);
}

/* Applies a bump of n hits to key's lfu record (decay first, as Redis does
 * on access). A key evicted meanwhile is skipped. */
static int apply_bump(qn_cache *c, MDB_txn *txn, const uint8_t kb[16], uint32_t n, uint32_t now)
{
    MDB_val k = {16, (void *)kb}, v;
    int rc = mdb_get(txn, c->db_lfu, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != LFU_REC) return 0;
    const unsigned char *r = v.mv_data;
    uint8_t cnt = qn_lfu_decay(r[0], get_u32(r + 4) / 60, now / 60, c->o.lfu_decay_min);
    /* past ~2000 hits in one flush the counter is saturated at any factor
     * that matters; the loop bound keeps a flush cheap */
    for (uint32_t i = 0; i < n && i < 2048 && cnt < 255; i++)
        cnt = qn_lfu_incr(cnt, c->o.lfu_log_factor, rng_unit(&c->rng));
    /* Most hits on a warm key change nothing LFU can see: the counter grows
     * with probability 1/((c-5)*factor+1) and aging counts minutes. Then
     * skip the write, which would copy a whole leaf page. */
    if (cnt == r[0] && now / 60 == get_u32(r + 4) / 60) return 0;
    unsigned char nr[LFU_REC];
    lfu_rec(nr, cnt, now, get_u32(r + 8));
    MDB_val nv = {LFU_REC, nr};
    return mdb_put(txn, c->db_lfu, &k, &nv, 0);
}

typedef struct flush_pos {
    size_t put, bump, del;
} flush_pos;

/* One write transaction over the next slice of the work. */
static int flush_txn(qn_cache *c, pending *w, flush_pos *pos, uint64_t *n_ins, uint64_t *n_ev)
{
    MDB_txn *txn = NULL;
    uint64_t st[STATS_N];
    uint64_t ins = 0, ev = 0;
    size_t ops = 0;
    uint32_t now = now_sec(c);
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc) return rc;
    if ((rc = read_stats_rec(c, txn, st))) goto fail;
    uint64_t acct = st[ST_BYTES];

    /* deletes of entries that failed their checksum */
    for (; pos->del < w->ndels && ops < c->ops_cap; pos->del++, ops++) {
        MDB_val k = {16, w->dels[pos->del]}, v;
        rc = mdb_get(txn, c->db_lfu, &k, &v);
        if (rc == 0 && v.mv_size == LFU_REC) {
            uint64_t cost = get_u32((const unsigned char *)v.mv_data + 8);
            acct = acct > cost ? acct - cost : 0;
        }
        if ((rc = mdb_del(txn, c->db_lfu, &k, NULL)) && rc != MDB_NOTFOUND) goto fail;
        if ((rc = mdb_del(txn, c->db_entries, &k, NULL)) && rc != MDB_NOTFOUND) goto fail;
    }

    /* the slice of inserts this txn takes: bounded in keys and in bytes, so
     * that its copy-on-write pages stay inside the headroom; half the keys
     * when it must evict too (about one eviction per insert) */
    bool over_pages = (tree_pages(txn, c->db_entries) + tree_pages(txn, c->db_lfu)) * c->psize >
                      c->hard_bytes;
    size_t room = c->ops_cap > ops ? c->ops_cap - ops : 1, p_end;
    uint64_t incoming;
    bool must_evict = false;
    for (int pass = 0; pass < 2; pass++) {
        size_t lim = pass ? (room + 1) / 2 : room;
        p_end = pos->put;
        incoming = 0;
        while (p_end < w->nputs && p_end - pos->put < lim &&
               incoming + w->puts[p_end]->cost <= c->map_bytes / 16) {
            incoming += w->puts[p_end]->cost;
            p_end++;
        }
        if (p_end == pos->put && pos->put < w->nputs) { incoming = w->puts[p_end]->cost; p_end++; }
        must_evict = acct + incoming > c->high_bytes ||
                     (st[ST_EVICTING] && acct + incoming > c->low_bytes) || over_pages;
        if (!must_evict) break;
    }

    /* eviction: from the high watermark down to the low one; the round's
     * state is in the stats record so that every process continues it */
    if (must_evict) {
        uint64_t target = c->low_bytes > incoming ? c->low_bytes - incoming : 0;
        if (over_pages) {
            /* accounting says fine, pages say otherwise: trust the pages */
            if (!c->pages_logged)
                QN_LOGW(MOD, "%s: B-tree pages past %llu bytes: evicting below the accounted watermark",
                        c->dir, (unsigned long long)c->hard_bytes);
            c->pages_logged = true;
            target = acct > acct / 8 ? acct - acct / 8 : 0;
        }
        /* a big insert may need many small evictions: the evictions get the
         * whole room, the inserts half of it (reserve counts 2 pages a key) */
        size_t budget = room;
        if ((rc = evict(c, txn, &acct, target, budget, &ev))) goto fail;
        ops += ev;
        st[ST_EVICTING] = acct > target;
    }

    /* inserts, unless eviction could not make room yet (then the next txn of
     * this flush evicts again first) */
    if (acct + incoming <= c->high_bytes) {
        for (; pos->put < p_end; pos->put++, ops++) {
            pput *p = w->puts[pos->put];
            MDB_val k = {16, p->key}, v;
            rc = mdb_get(txn, c->db_lfu, &k, &v);
            if (rc == 0) { /* another process (or job) got there first: a hit */
                if ((rc = apply_bump(c, txn, p->key, 1, now))) goto fail;
                continue;
            }
            if (rc != MDB_NOTFOUND) goto fail;
            MDB_val val = {p->vlen, p->v};
            if ((rc = mdb_put(txn, c->db_entries, &k, &val, 0))) goto fail;
            unsigned char r[LFU_REC];
            lfu_rec(r, QN_LFU_INIT_VAL, now, p->cost);
            MDB_val lv = {LFU_REC, r};
            if ((rc = mdb_put(txn, c->db_lfu, &k, &lv, 0))) goto fail;
            acct += p->cost;
            ins++;
        }
    }

    /* frequency bumps recorded by hits */
    for (; pos->bump < BUMP_CAP && ops < c->ops_cap; pos->bump++) {
        bump *b = &w->bumps[pos->bump];
        if (!b->n) continue;
        uint8_t kb[16];
        uint64_t kk[2] = {b->k0, b->k1};
        key_bytes(kk, kb);
        if ((rc = apply_bump(c, txn, kb, b->n, now))) goto fail;
        ops++;
    }

    /* counters: this txn's own, plus this process's since the last persist */
    uint64_t cur[6] = {cnt_get(&c->hits), cnt_get(&c->misses), 0, 0, cnt_get(&c->csum_fail),
                       cnt_get(&c->wfail)};
    st[ST_HITS] += cur[0] - c->persisted[0];
    st[ST_MISSES] += cur[1] - c->persisted[1];
    st[ST_CSUM] += cur[4] - c->persisted[4];
    st[ST_WFAIL] += cur[5] - c->persisted[5];
    st[ST_INSERTS] += ins;
    st[ST_EVICTIONS] += ev;
    st[ST_BYTES] = acct;
    if ((rc = write_stats_rec(c, txn, st))) goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc) goto fail;
    c->persisted[0] = cur[0];
    c->persisted[1] = cur[1];
    c->persisted[4] = cur[4];
    c->persisted[5] = cur[5];
    *n_ins += ins;
    *n_ev += ev;
    return 0;
fail:
    if (txn) mdb_txn_abort(txn);
    return rc;
}

static int flush_impl(qn_cache *c, bool force_counters)
{
    pthread_mutex_lock(&c->flush_mu);
    pending *w = &c->work;
    /* take the pending work; gets and puts go on while we write */
    pthread_mutex_lock(&c->pend_mu);
    pending tmp = c->pend;
    c->pend.puts = w->puts;
    c->pend.cap_puts = w->cap_puts;
    c->pend.nputs = c->pend.put_bytes = 0;
    c->pend.bumps = w->bumps;
    c->pend.nbumps = 0;
    c->pend.ndels = 0;
    pthread_mutex_unlock(&c->pend_mu);
    w->puts = tmp.puts;
    w->cap_puts = tmp.cap_puts;
    w->nputs = tmp.nputs;
    w->put_bytes = tmp.put_bytes;
    w->bumps = tmp.bumps;
    w->nbumps = tmp.nbumps;
    w->ndels = tmp.ndels;
    memcpy(w->dels, tmp.dels, tmp.ndels * 16);

    int ret = 0;
    int64_t now = mono_ms();
    bool counters_due = (force_counters || now - c->last_persist_ms >= 1000) &&
                        (cnt_get(&c->hits) != c->persisted[0] || cnt_get(&c->misses) != c->persisted[1] ||
                         cnt_get(&c->wfail) != c->persisted[5]);
    if (atomic_load(&c->broken)) {
        cnt_add(&c->dropped, w->nputs);
        goto done;
    }
    if (writes_off(c)) {
        cnt_add(&c->dropped, w->nputs);
        ret = QN_EFULL;
        goto done;
    }
    if (!w->nputs && !w->nbumps && !w->ndels && !counters_due) goto done;

    flush_pos pos = {0, w->nbumps ? 0 : BUMP_CAP, 0};
    uint64_t ins = 0, ev = 0;
    for (int i = 0; i < MAX_TXN_PER_FLUSH; i++) {
        int rc = flush_txn(c, w, &pos, &ins, &ev);
        if (rc) {
            ret = write_failed(c, rc, "flush");
            cnt_add(&c->dropped, w->nputs - pos.put);
            break;
        }
        if (pos.put >= w->nputs && pos.del >= w->ndels && pos.bump >= BUMP_CAP) break;
    }
    if (ret == 0 && c->full_logged) {
        QN_LOGI(MOD, "%s: cache writes resumed", c->dir);
        c->full_logged = false;
    }
    if (ret == 0 && pos.put < w->nputs) cnt_add(&c->dropped, w->nputs - pos.put);
    cnt_add(&c->inserts, ins);
    cnt_add(&c->evictions, ev);
    c->last_persist_ms = now;
done:
    pending_free_puts(w, 0);
    if (w->nbumps) memset(w->bumps, 0, BUMP_CAP * sizeof *w->bumps);
    w->nbumps = 0;
    w->ndels = 0;
    pthread_mutex_unlock(&c->flush_mu);
    return ret;
}

int qn_cache_flush(qn_cache *c)
{
    if (!c) return QN_EINVAL;
    return flush_impl(c, false);
}

/* ---- tick thread */

static void *tick_main(void *arg)
{
    qn_cache *c = arg;
    qn_thread_name("qn-cache-tick");
    int64_t last_sync = mono_ms(), last_check = last_sync;
    pthread_mutex_lock(&c->tick_mu);
    while (!c->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)c->o.tick_ms * 1000000u;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&c->tick_cv, &c->tick_mu, &ts);
        if (c->stop) break;
        pthread_mutex_unlock(&c->tick_mu);
        qn_cache_flush(c);
        int64_t now = mono_ms();
        if (!c->o.durable && now - last_sync >= (int64_t)c->o.sync_ms) {
            mdb_env_sync(c->env, 1);
            last_sync = now;
        }
        if (now - last_check >= 10000) { /* slots of killed processes pin pages */
            int dead = 0;
            mdb_reader_check(c->env, &dead);
            if (dead) QN_LOGI(MOD, "%s: cleared %d reader slots of dead processes", c->dir, dead);
            last_check = now;
        }
        pthread_mutex_lock(&c->tick_mu);
    }
    pthread_mutex_unlock(&c->tick_mu);
    return NULL;
}

/* ---- open / close */

static int path_in(char *buf, size_t n, const char *dir, const char *name)
{
    int m = snprintf(buf, n, "%s/%s", dir, name);
    return m < 0 || (size_t)m >= n ? QN_EINVAL : 0;
}

/* Moves a bad data file aside (never deletes it: someone may want to look)
 * and drops the lock file, whose reader table belonged to it. */
static int move_aside(const char *dir, const char *why)
{
    char from[4096], to[4200], lock[4096];
    if (path_in(from, sizeof from, dir, "data.mdb") || path_in(lock, sizeof lock, dir, "lock.mdb"))
        return QN_EINVAL;
    snprintf(to, sizeof to, "%s.corrupt-%lld", from, (long long)time(NULL));
    struct stat sb;
    if (stat(to, &sb) == 0) snprintf(to, sizeof to, "%s.corrupt-%lld-%d", from, (long long)time(NULL), (int)getpid());
    if (rename(from, to) && errno != ENOENT) {
        QN_LOGE(MOD, "%s: cannot move the bad cache file aside: %s", dir, strerror(errno));
        return QN_EIO;
    }
    unlink(lock);
    char marker[4096];
    if (path_in(marker, sizeof marker, dir, "quern.corrupt") == 0) unlink(marker);
    QN_LOGE(MOD, "%s: cache file is unusable (%s): moved to %s; starting an empty cache", dir, why, to);
    return 0;
}

static int count_other_reader(const char *msg, void *ctx)
{
    int pid = 0;
    if (sscanf(msg, "%d", &pid) == 1 && pid > 0 && pid != (int)getpid()) (*(int *)ctx)++;
    return 0;
}

/* Result of one attempt to open the environment. */
enum { OPEN_OK = 0, OPEN_CORRUPT = 1 };

static void env_close(qn_cache *c)
{
    if (c->env) mdb_env_close(c->env);
    c->env = NULL;
}

/* Opens the environment at map bytes and checks it is a quern cache of this
 * format. Returns OPEN_OK, OPEN_CORRUPT (why filled; env closed) or a
 * negative QN_E*. *stored_map gets the map size recorded in the file (0 new). */
static int env_open_once(qn_cache *c, uint64_t map, char *why, size_t whyn, uint64_t *stored_map)
{
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&c->env);
    if (rc) { QN_LOGE(MOD, "mdb_env_create: %s", mdb_strerror(rc)); return from_mdb(rc); }
    if ((rc = mdb_env_set_maxdbs(c->env, 4)) || (rc = mdb_env_set_maxreaders(c->env, 1024)) ||
        (rc = mdb_env_set_mapsize(c->env, (size_t)map)))
        goto lmdb_fail;
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (c->o.durable ? 0 : MDB_NOSYNC);
    rc = mdb_env_open(c->env, c->dir, flags, 0644);
    if (rc) goto lmdb_fail;

    /* a truncated file opens fine (its meta pages are intact) but would fault
     * on the first read past its end */
    MDB_envinfo info;
    MDB_stat es;
    mdb_env_info(c->env, &info);
    mdb_env_stat(c->env, &es);
    char path[4096];
    struct stat sb;
    if (path_in(path, sizeof path, c->dir, "data.mdb") == 0 && stat(path, &sb) == 0 &&
        (uint64_t)sb.st_size < (uint64_t)(info.me_last_pgno + 1) * es.ms_psize) {
        snprintf(why, whyn, "truncated: %lld bytes, pages up to %llu", (long long)sb.st_size,
                 (unsigned long long)info.me_last_pgno);
        goto corrupt;
    }
    if (path_in(path, sizeof path, c->dir, "quern.corrupt") == 0 && stat(path, &sb) == 0) {
        snprintf(why, whyn, "marked corrupt by a process that read it");
        goto corrupt;
    }
    c->psize = es.ms_psize;
    int dead = 0;
    mdb_reader_check(c->env, &dead);

    rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc) goto lmdb_fail;
    if ((rc = mdb_dbi_open(txn, "entries", MDB_CREATE, &c->db_entries)) ||
        (rc = mdb_dbi_open(txn, "lfu", MDB_CREATE, &c->db_lfu)) ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &c->db_meta)))
        goto lmdb_fail;
    /* the main database holds our three names and nothing else */
    MDB_dbi main_dbi;
    MDB_stat ms;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) || (rc = mdb_stat(txn, main_dbi, &ms))) goto lmdb_fail;
    if (ms.ms_entries != 3) {
        snprintf(why, whyn, "not a quern cache (%zu records in the main database)", ms.ms_entries);
        goto corrupt;
    }
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, c->db_meta, &k, &v);
    *stored_map = 0;
    if (rc == MDB_NOTFOUND) {
        MDB_stat s;
        if ((rc = mdb_stat(txn, c->db_entries, &s))) goto lmdb_fail;
        if (s.ms_entries) { snprintf(why, whyn, "entries without a format record"); goto corrupt; }
        unsigned char f[FORMAT_REC] = {0};
        memcpy(f, FORMAT_MAGIC, 8);
        put_u32(f + 8, FORMAT_VERSION);
        put_u32(f + 12, c->psize);
        put_u64(f + 16, (uint64_t)qn_wall_ms());
        put_u64(f + 24, map);
        MDB_val fv = {sizeof f, f};
        if ((rc = mdb_put(txn, c->db_meta, &k, &fv, 0))) goto lmdb_fail;
    } else if (rc) {
        goto lmdb_fail;
    } else {
        const unsigned char *f = v.mv_data;
        if (v.mv_size < FORMAT_REC || memcmp(f, FORMAT_MAGIC, 8)) {
            snprintf(why, whyn, "not a quern cache (bad format record)");
            goto corrupt;
        }
        if (get_u32(f + 8) != FORMAT_VERSION) {
            snprintf(why, whyn, "format version %u, this build reads %u", get_u32(f + 8), FORMAT_VERSION);
            goto corrupt;
        }
        *stored_map = get_u64(f + 24);
    }
    if ((rc = mdb_txn_commit(txn))) { txn = NULL; goto lmdb_fail; }
    return OPEN_OK;

lmdb_fail:
    if (txn) mdb_txn_abort(txn);
    txn = NULL;
    if (mdb_is_corrupt(rc)) {
        snprintf(why, whyn, "%s", mdb_strerror(rc));
        env_close(c);
        return OPEN_CORRUPT;
    }
    if (rc == EACCES || rc == EROFS || rc == EPERM)
        QN_LOGE(MOD, "%s: cache directory is not writable: %s", c->dir, mdb_strerror(rc));
    else
        QN_LOGE(MOD, "%s: opening the cache: %s", c->dir, mdb_strerror(rc));
    env_close(c);
    return from_mdb(rc) == QN_EFORMAT ? QN_EEXTERNAL : from_mdb(rc);
corrupt:
    if (txn) mdb_txn_abort(txn);
    env_close(c);
    return OPEN_CORRUPT;
}

/* Records map in the format record (the size every process should use). */
static int store_map(qn_cache *c, uint64_t map)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc) return rc;
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, c->db_meta, &k, &v);
    if (rc == 0 && v.mv_size >= FORMAT_REC) {
        unsigned char f[FORMAT_REC];
        memcpy(f, v.mv_data, FORMAT_REC);
        put_u64(f + 24, map);
        MDB_val fv = {sizeof f, f};
        rc = mdb_put(txn, c->db_meta, &k, &fv, 0);
    }
    if (rc) { mdb_txn_abort(txn); return rc; }
    return mdb_txn_commit(txn);
}

/* Opens under an exclusive flock on quern.lock, so that two processes that
 * both find a corrupt file do not both move files aside. */
static int env_open(qn_cache *c, uint64_t map)
{
    char why[256] = "";
    uint64_t stored = 0;
    int rc = env_open_once(c, map, why, sizeof why, &stored);
    if (rc == OPEN_CORRUPT) {
        if ((rc = move_aside(c->dir, why))) return rc;
        rc = env_open_once(c, map, why, sizeof why, &stored);
        if (rc == OPEN_CORRUPT) {
            QN_LOGE(MOD, "%s: a fresh cache is unusable too (%s)", c->dir, why);
            return QN_EEXTERNAL;
        }
    }
    if (rc) return rc;
    if (stored && stored != map) {
        /* LMDB needs every process to map the same size: a process with a
         * smaller map fails once another grows the file past it. While
         * others have it open, keep theirs; alone, take the new size. */
        int others = 0;
        mdb_reader_list(c->env, count_other_reader, &others);
        if (others) {
            QN_LOGW(MOD, "%s: in use with a %llu MiB map by other processes; using that, not %llu MiB",
                    c->dir, (unsigned long long)(stored >> 20), (unsigned long long)(map >> 20));
            env_close(c);
            rc = env_open_once(c, stored, why, sizeof why, &stored);
            if (rc) return rc == OPEN_CORRUPT ? QN_EEXTERNAL : rc;
            map = stored;
        } else {
            QN_LOGI(MOD, "%s: map size %llu MiB -> %llu MiB", c->dir, (unsigned long long)(stored >> 20),
                    (unsigned long long)(map >> 20));
            if ((rc = store_map(c, map))) {
                QN_LOGE(MOD, "%s: recording the map size: %s", c->dir, mdb_strerror(rc));
                return from_mdb(rc);
            }
        }
    }
    MDB_envinfo info;
    mdb_env_info(c->env, &info);
    c->map_bytes = info.me_mapsize;
    return 0;
}

int qn_cache_open(const char *dir, uint64_t size_mb, const qn_cache_opts *opts, qn_cache **out)
{
    if (!dir || !*dir || !out || size_mb == 0 || size_mb > (1ull << 30)) return QN_EINVAL;
    *out = NULL;
    qn_cache_opts o;
    if (opts) o = *opts;
    else qn_cache_opts_default(&o);
    if (o.lfu_log_factor == 0) o.lfu_log_factor = 1;
    if (o.evict_samples == 0) o.evict_samples = 1;
    if (o.high_pct == 0 || o.high_pct > 95 || o.low_pct >= o.high_pct) return QN_EINVAL;
    if (o.tick_ms && o.sync_ms == 0) o.sync_ms = 1000;

    int rc = QN_ENOMEM, lockfd = -1;
    qn_cache *c = calloc(1, sizeof *c);
    if (!c) return QN_ENOMEM;
    c->o = o;
    pthread_mutex_init(&c->rpool_mu, NULL);
    pthread_mutex_init(&c->pend_mu, NULL);
    pthread_mutex_init(&c->flush_mu, NULL);
    pthread_mutex_init(&c->tick_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->tick_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!(c->dir = strdup(dir))) goto fail;
    c->pend.bumps = calloc(BUMP_CAP, sizeof(bump));
    c->work.bumps = calloc(BUMP_CAP, sizeof(bump));
    if (!c->pend.bumps || !c->work.bumps) goto fail;
    c->rng = o.seed ? o.seed : ((uint64_t)qn_now_ns() ^ ((uint64_t)getpid() << 32));

    if (mkdir(dir, 0755) && errno != EEXIST) {
        QN_LOGE(MOD, "%s: cannot create the cache directory: %s", dir, strerror(errno));
        rc = QN_EIO;
        goto fail;
    }
    char path[4096];
    if ((rc = path_in(path, sizeof path, dir, "quern.lock"))) goto fail;
    lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lockfd < 0) {
        QN_LOGE(MOD, "%s: cache directory is not writable: %s", dir, strerror(errno));
        rc = QN_EIO;
        goto fail;
    }
    if (access(dir, W_OK) != 0) {
        QN_LOGE(MOD, "%s: cache directory is not writable: %s", dir, strerror(errno));
        rc = QN_EIO;
        goto fail;
    }
    while (flock(lockfd, LOCK_EX) && errno == EINTR) {}
    rc = env_open(c, size_mb << 20);
    flock(lockfd, LOCK_UN);
    close(lockfd);
    lockfd = -1;
    if (rc) goto fail;

    c->nodemax = (((c->psize - PAGE_HDR) / 2) & ~1u) - SLOT;
    /* Headroom. Each key a txn touches dirties about one leaf per tree, and
     * the pages a txn frees are reusable only once no reader holds an older
     * snapshot (and never by the next txn). So one flush can need
     * MAX_TXN_PER_FLUSH * (FIXED_TXN_PAGES + 2 * ops_cap) fresh pages while
     * the ones it freed are still pinned: keep room for eight such txns
     * above the high watermark (two in flight, the rest for a reader
     * descheduled mid-read), and ops_cap near 1/64 of the map. Small maps
     * get a lower watermark than asked rather than a full map. */
    uint64_t pages = c->map_bytes / c->psize;
    c->ops_cap = (size_t)(pages / 64);
    if (c->ops_cap < 16) c->ops_cap = 16;
    uint64_t reserve = 8 * (FIXED_TXN_PAGES + 2 * (uint64_t)c->ops_cap);
    if (reserve >= pages * 7 / 10) {
        QN_LOGE(MOD, "%s: %llu MiB is too small for a cache (2 MiB at least)", dir,
                (unsigned long long)(c->map_bytes >> 20));
        rc = QN_EINVAL;
        goto fail;
    }
    c->high_bytes = c->map_bytes / 100 * o.high_pct;
    if (c->high_bytes > (pages - reserve) * c->psize) c->high_bytes = (pages - reserve) * c->psize;
    c->low_bytes = c->high_bytes / o.high_pct * o.low_pct;
    c->hard_bytes = c->high_bytes + (c->map_bytes - c->high_bytes) / 2;
    c->max_entry_bytes = c->map_bytes / 32;
    if (!c->o.max_pending_bytes) {
        uint64_t m = c->map_bytes / 16;
        c->o.max_pending_bytes = (size_t)(m < (64u << 20) ? m : (64u << 20));
    }
    c->last_persist_ms = mono_ms();
    /* one reader slot now, so that this process shows in the reader table
     * (env_open's map-size agreement relies on it) */
    MDB_txn *t;
    if (rtxn_get(c, &t) == 0) rtxn_put(c, t);

    if (o.tick_ms) {
        if (pthread_create(&c->tick, NULL, tick_main, c)) {
            QN_LOGE(MOD, "%s: cannot start the cache tick thread", dir);
            rc = QN_EEXTERNAL;
            goto fail;
        }
        c->tick_started = true;
    }
    QN_LOGI(MOD, "%s: cache open, map %llu MiB, evict at %u%% down to %u%%", dir,
            (unsigned long long)(c->map_bytes >> 20), o.high_pct, o.low_pct);
    *out = c;
    return 0;
fail:
    if (lockfd >= 0) close(lockfd);
    qn_cache_close(&c);
    return rc;
}

void qn_cache_close(qn_cache **pc)
{
    if (!pc || !*pc) return;
    qn_cache *c = *pc;
    if (c->tick_started) {
        pthread_mutex_lock(&c->tick_mu);
        c->stop = true;
        pthread_cond_signal(&c->tick_cv);
        pthread_mutex_unlock(&c->tick_mu);
        pthread_join(c->tick, NULL);
    }
    if (c->env) {
        flush_impl(c, true);
        for (int i = 0; i < c->nrpool; i++) mdb_txn_abort(c->rpool[i]);
        c->nrpool = 0;
    }
    while (c->readers) {
        qn_cache_reader *r = c->readers;
        c->readers = r->next;
        if (r->t) mdb_txn_abort(r->t);
        free(r);
    }
    c->nreaders = 0;
    if (c->env) {
        if (!c->o.durable) mdb_env_sync(c->env, 1);
        env_close(c);
    }
    pending_free_puts(&c->pend, 0);
    free(c->pend.puts);
    free(c->work.puts);
    free(c->pend.bumps);
    free(c->work.bumps);
    pthread_mutex_destroy(&c->rpool_mu);
    pthread_mutex_destroy(&c->pend_mu);
    pthread_mutex_destroy(&c->flush_mu);
    pthread_mutex_destroy(&c->tick_mu);
    pthread_cond_destroy(&c->tick_cv);
    free(c->dir);
    free(c);
    *pc = NULL;
}

/* ---- stats */

static void fill_env_stats(MDB_env *env, MDB_txn *txn, MDB_dbi de, MDB_dbi dl, MDB_dbi dm, const char *dir,
                           qn_cache_stats *st)
{
    MDB_stat s;
    if (mdb_stat(txn, de, &s) == 0) st->entries = s.ms_entries;
    uint64_t pages = tree_pages(txn, de) + tree_pages(txn, dl) + tree_pages(txn, dm);
    MDB_stat es;
    mdb_env_stat(env, &es);
    st->tree_bytes = pages * es.ms_psize;
    MDB_envinfo info;
    mdb_env_info(env, &info);
    st->map_bytes = info.me_mapsize;
    char path[4096];
    struct stat sb;
    if (path_in(path, sizeof path, dir, "data.mdb") == 0 && stat(path, &sb) == 0)
        st->file_bytes = (uint64_t)sb.st_size;
}

static void fill_totals(const uint64_t rec[STATS_N], qn_cache_stats *st)
{
    st->total_hits = rec[ST_HITS];
    st->total_misses = rec[ST_MISSES];
    st->total_inserts = rec[ST_INSERTS];
    st->total_evictions = rec[ST_EVICTIONS];
    st->total_checksum_failures = rec[ST_CSUM];
    st->total_write_failures = rec[ST_WFAIL];
    st->bytes = rec[ST_BYTES];
}

int qn_cache_stats_get(qn_cache *c, qn_cache_stats *st)
{
    if (!c || !st) return QN_EINVAL;
    memset(st, 0, sizeof *st);
    st->hits = cnt_get(&c->hits);
    st->misses = cnt_get(&c->misses);
    st->inserts = cnt_get(&c->inserts);
    st->evictions = cnt_get(&c->evictions);
    st->checksum_failures = cnt_get(&c->csum_fail);
    st->write_failures = cnt_get(&c->wfail);
    st->dropped = cnt_get(&c->dropped);
    st->high_bytes = c->high_bytes;
    st->low_bytes = c->low_bytes;
    MDB_txn *t;
    int rc = rtxn_get(c, &t);
    if (rc) return from_mdb(rc);
    uint64_t rec[STATS_N];
    rc = read_stats_rec(c, t, rec);
    if (rc == 0) {
        fill_totals(rec, st);
        fill_env_stats(c->env, t, c->db_entries, c->db_lfu, c->db_meta, c->dir, st);
    }
    rtxn_put(c, t);
    return from_mdb(rc);
}

int qn_cache_stats_read(const char *dir, qn_cache_stats *st)
{
    if (!dir || !st) return QN_EINVAL;
    memset(st, 0, sizeof *st);
    char path[4096];
    struct stat sb;
    if (path_in(path, sizeof path, dir, "data.mdb") || stat(path, &sb) != 0) return QN_ENOTFOUND;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&env);
    if (rc) return from_mdb(rc);
    mdb_env_set_maxdbs(env, 4);
    rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0644);
    if (rc == EACCES || rc == EROFS) { /* a read-only copy: no reader table */
        mdb_env_close(env);
        env = NULL;
        if ((rc = mdb_env_create(&env))) return from_mdb(rc);
        mdb_env_set_maxdbs(env, 4);
        rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS | MDB_NOLOCK, 0644);
    }
    if (rc) goto fail;
    MDB_dbi de, dl, dm;
    if ((rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))) goto fail;
    if ((rc = mdb_dbi_open(txn, "entries", 0, &de)) || (rc = mdb_dbi_open(txn, "lfu", 0, &dl)) ||
        (rc = mdb_dbi_open(txn, "meta", 0, &dm))) {
        if (rc == MDB_NOTFOUND) rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    MDB_val k = {6, "format"}, v;
    if ((rc = mdb_get(txn, dm, &k, &v))) goto fail;
    if (v.mv_size < FORMAT_REC || memcmp(v.mv_data, FORMAT_MAGIC, 8) ||
        get_u32((const unsigned char *)v.mv_data + 8) != FORMAT_VERSION) {
        rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    uint64_t rec[STATS_N] = {0};
    MDB_val sk = {5, "stats"}, sv;
    rc = mdb_get(txn, dm, &sk, &sv);
    if (rc == 0) {
        size_t n = sv.mv_size / 8 < STATS_N ? sv.mv_size / 8 : STATS_N;
        for (size_t i = 0; i < n; i++) rec[i] = get_u64((const unsigned char *)sv.mv_data + 8 * i);
    } else if (rc != MDB_NOTFOUND) {
        goto fail;
    }
    rc = 0;
    fill_totals(rec, st);
    fill_env_stats(env, txn, de, dl, dm, dir, st);
fail:
    if (txn) mdb_txn_abort(txn);
    mdb_env_close(env);
    if (rc) {
        int e = from_mdb(rc);
        return e == QN_ENOTFOUND ? QN_EFORMAT : e;
    }
    return 0;
}
