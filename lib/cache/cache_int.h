/* cache_int.h: what the files of the result cache share, and nothing outside
 * lib/cache/ may include (lib/cache.h is the cache's one contract).
 *
 * The cache is split along its concerns, each in its own file:
 *   policy.c     the key, the value format and its checksum, what an entry
 *                costs, the LFU counter math and the sampling RNG
 *   env.c        the LMDB environment: open (with recovery of bad files and
 *                map-size agreement), close, the pooled read transactions,
 *                and the run-time failure policy (writes off, broken)
 *   read.c       lookups: get, get_into and reader sessions
 *   writeback.c  the write-behind queue (inserts, frequency bumps, deletes),
 *                its index for read-your-writes, flush and the tick thread
 *   evict.c      LFU eviction by sampling
 *   stats.c      the shared counters record and the stats calls
 *
 * On-disk layout: three named databases in one environment (schemas/cache.md):
 *   entries  key (16 bytes) -> 32-byte header + f32 outputs (checksummed)
 *   lfu      key (16 bytes) -> LFU counter, last access second, accounted cost
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
#ifndef QN_CACHE_INT_H
#define QN_CACHE_INT_H

#include "cache.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the cache stores little-endian floats as they are in memory; port the payload copy first"
#endif

#define QNC_MOD "cache"

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

/* One queued insert: the value exactly as it will be stored. */
typedef struct pput {
    struct pput *hnext; /* chain in the pending index (under pend_mu) */
    bool indexed;       /* in the pending index (false: a later put of a key already there) */
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
    /* Read-your-writes: every queued insert by key, from put until its
     * flush is over (in pend, or in work while it is written), so that a
     * lookup that misses LMDB still finds what was answered (under pend_mu;
     * pidx_n is also read without it, to skip the lock when it is 0). */
    pput **pidx;
    size_t pidx_cap;            /* buckets, a power of two (0: none yet) */
    _Atomic size_t pidx_n;
    /* Bumped after every committed flush transaction: a lookup whose
     * snapshot is older may miss an entry that has already left the index,
     * and then takes a fresh snapshot (read.c). */
    _Atomic uint64_t commit_gen;

    pthread_mutex_t flush_mu; /* one flush at a time in this process */
    pending work;             /* taken from pend by a flush (under flush_mu) */
    uint64_t rng;
    uint64_t persisted[6];    /* counter values already added to meta "stats" */
    int64_t last_persist_ms;
    bool full_logged, pages_logged;

    atomic_int_fast64_t writes_off_until; /* monotonic ms */
    atomic_bool broken;                   /* LMDB reported corruption: cache off */

    _Atomic uint64_t hits, misses, inserts, evictions, csum_fail, wfail, dropped, pending_hits;

    pthread_t tick;
    bool tick_started;
    pthread_mutex_t tick_mu;
    pthread_cond_t tick_cv;
    bool stop;
};

/* ---- little helpers */

static inline void put_u16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t get_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static inline void key_bytes(const uint64_t key[2], uint8_t out[16])
{
    put_u64(out, key[0]);
    put_u64(out + 8, key[1]);
}

static inline void cnt_add(_Atomic uint64_t *a, uint64_t n)
{
    atomic_fetch_add_explicit(a, n, memory_order_relaxed);
}
static inline uint64_t cnt_get(_Atomic uint64_t *a) { return atomic_load_explicit(a, memory_order_relaxed); }

/* ---- policy.c: keying, value format, cost, LFU, RNG, clocks */

int64_t qnc_mono_ms(void);
/* Wall clock in ms (the injected one in tests). */
int64_t qnc_wall_ms(const qn_cache *c);
/* Last access is kept in seconds (not Redis's minutes): aging still counts
 * whole minutes, but among equal counters the longer idle goes first. */
uint32_t qnc_now_sec(const qn_cache *c);
uint64_t qnc_rng_next(uint64_t *s);
double qnc_rng_unit(uint64_t *s);
/* The checksum stored in a value header (see policy.c for what it covers). */
uint64_t qnc_value_checksum(const uint8_t key[16], const unsigned char *hdr, const void *payload,
                            size_t plen);
/* What an entry of vlen value bytes costs in the store. */
uint64_t qnc_entry_cost(const qn_cache *c, size_t vlen);
/* Fills r with an lfu record. */
void qnc_lfu_rec(unsigned char r[LFU_REC], uint8_t counter, uint32_t ldt, uint64_t cost);

/* ---- env.c: LMDB codes, failure policy, read transactions */

/* LMDB's codes -> QN_E*; the caller logs mdb_strerror where it has context. */
int qnc_from_mdb(int rc);
bool qnc_mdb_is_corrupt(int rc);
/* LMDB said a page is corrupt while we ran: stop using the cache in this
 * process and leave a marker so the next open moves the file aside. */
void qnc_mark_broken(qn_cache *c, int rc, const char *where);
/* A failed write transaction: count it, and on a full map or disk stop
 * writing for a while. Returns the QN_E* for the caller. */
int qnc_write_failed(qn_cache *c, int rc, const char *where);
bool qnc_writes_off(qn_cache *c);
/* A read txn from the pool (renewed) or a new one: 0 or an LMDB code (logged). */
int qnc_rtxn_get(qn_cache *c, MDB_txn **out);
/* Resets t and returns it to the pool. */
void qnc_rtxn_put(qn_cache *c, MDB_txn *t);
/* dir/name into buf: 0 or QN_EINVAL when it does not fit. */
int qnc_path_in(char *buf, size_t n, const char *dir, const char *name);

/* ---- read.c */

/* Frees the idle reader sessions (close). */
void qnc_readers_free(qn_cache *c);

/* ---- writeback.c */

/* Records one frequency bump; caller holds pend_mu. */
void qnc_record_bump_locked(qn_cache *c, uint64_t k0, uint64_t k1);
void qnc_record_bump(qn_cache *c, const uint64_t key[2]);
/* Looks kb up among the queued inserts (read-your-writes). As read.c's
 * fetch: with into, the shape must be want_rows x want_cols and the floats
 * land there; otherwise a new *alloc with its shape. 0 (found, copied),
 * QN_ESHAPE, QN_ENOTFOUND or QN_ENOMEM. Counts nothing. */
int qnc_pending_get(qn_cache *c, const uint8_t kb[16], int64_t want_rows, int64_t want_cols, float *into,
                    float **alloc, int64_t *rows, int64_t *cols);
/* Queues the delete of an entry that failed its checksum. */
void qnc_record_delete(qn_cache *c, const uint8_t key[16]);
/* The flush behind qn_cache_flush; force_counters persists the counters even
 * if the last persist was recent (close). */
int qnc_flush(qn_cache *c, bool force_counters);
int qnc_tick_start(qn_cache *c);
void qnc_tick_stop(qn_cache *c);
/* Allocates the bump tables (open): 0 or QN_ENOMEM. */
int qnc_pending_init(qn_cache *c);
/* Frees the queues (close). */
void qnc_pending_free(qn_cache *c);

/* ---- evict.c */

/* Evicts the lowest-frequency entries until *acct <= target or max_ops are
 * used. Returns 0 or an LMDB code; *evicted counts what was removed. */
int qnc_evict(qn_cache *c, MDB_txn *txn, uint64_t *acct, uint64_t target, size_t max_ops,
              uint64_t *evicted);

/* ---- stats.c */

uint64_t qnc_tree_pages(MDB_txn *txn, MDB_dbi dbi);
/* The shared counters record: 0 (zeros when absent) or an LMDB code. */
int qnc_read_stats_rec(qn_cache *c, MDB_txn *txn, uint64_t st[STATS_N]);
int qnc_write_stats_rec(qn_cache *c, MDB_txn *txn, const uint64_t st[STATS_N]);

#endif
