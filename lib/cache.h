/* cache.h: the result cache, an LMDB store of model outputs keyed by a hash
 * of (model, version, dtype, shape, input bytes), with LFU eviction. This
 * header is its one contract; the code is in lib/cache/ (cache_int.h there
 * says which file holds what).
 *
 * One LMDB environment per directory, shared by every worker process on the
 * host (LMDB coordinates processes through lock.mdb) and surviving restarts
 * and kill -9 (LMDB commits are atomic; a killed writer's lock is recovered).
 * The on-disk format is in schemas/cache.md.
 *
 * Shape of use (the worker's core):
 *   admission:  qn_cache_key(...) then qn_cache_get_into(...): a hit answers
 *               the job at once; any non-zero return means "compute it".
 *               A burst of jobs (the direct path's staged jobs) does the
 *               same inside one reader session (qn_cache_reader_*).
 *   completion: qn_cache_put(...) for each ok result (copies the outputs into
 *               an in-memory pending list; never touches LMDB).
 *   per batch:  qn_cache_flush(c): every pending insert, every frequency bump
 *               recorded by hits, every delete of a corrupt entry and the
 *               counters go to LMDB in one write transaction.
 *   tick:       with opts.tick_ms > 0 a thread of the cache flushes every
 *               tick_ms too, so a hits-only workload still persists bumps.
 * Reads (get) only ever open read-only transactions: they never wait for the
 * writer lock, and a writer never waits for them.
 * Read-your-writes: an entry put is a hit for every get from the moment put
 * returns (served from the queue until its flush has committed it), so the
 * same job sent again right after its answer is a hit; writes stay batched.
 *
 * Every call is thread-safe except open and close, and the reader session
 * calls below, which act on a session owned by one thread. Errors are QN_E* codes;
 * LMDB's own are translated here and logged with mdb_strerror. A cache that
 * fails at run time (disk full, map full) stops writing for a while and keeps
 * serving reads: its callers only ever lose the cache, never the job. */
#ifndef QN_CACHE_H
#define QN_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct qn_cache qn_cache;

typedef struct qn_cache_opts {
    /* Background flush period in ms; 0: no thread (the owner calls flush). */
    uint32_t tick_ms;
    /* Redis-style logarithmic LFU counter: the higher the factor, the more
     * hits a counter needs to grow (10: ~1M hits saturate 255). */
    uint32_t lfu_log_factor;
    /* A counter loses 1 per this many minutes without an access; 0: never. */
    uint32_t lfu_decay_min;
    /* Eviction watermarks, in percent of the map (--cache-size): once the
     * accounted bytes pass high_pct, entries are evicted until they are back
     * under low_pct. What is above high_pct is headroom for LMDB's
     * copy-on-write pages and snapshots still held by readers. */
    uint32_t high_pct, low_pct;
    /* Keys per eviction sample (Redis's maxmemory-samples). */
    uint32_t evict_samples;
    /* 1: fsync on every commit (survives a machine crash); 0: the OS writes
     * back (MDB_NOSYNC: a killed process loses nothing, a machine crash can
     * lose the last seconds), and the tick thread syncs every sync_ms. */
    int durable;
    uint32_t sync_ms;
    /* After a failed write (disk full, I/O error) writes stay off this long;
     * after MDB_MAP_FULL at most 1 s (pages pinned by a slow reader free up). */
    uint32_t write_backoff_ms;
    /* Inserts waiting for a flush are bounded (bytes); past it put returns
     * QN_EFULL. 0: a default from the size (1/16 of the map, <= 64 MiB). */
    size_t max_pending_bytes;
    /* Wall clock in ms (LFU aging survives restarts, so it is wall time);
     * NULL: the real clock. Tests inject a fake one. */
    int64_t (*clock_ms)(void *ctx);
    void *clock_ctx;
    /* Seed for the LFU increment and eviction sampling RNG; 0: time ^ pid. */
    uint64_t seed;
} qn_cache_opts;

/* Fills o with the defaults: tick 10 ms, log factor 10, decay 1 min,
 * watermarks 75/60, 8 samples, not durable, sync 1000 ms, backoff 30 s,
 * pending bound from the size, real clock, random seed. */
void qn_cache_opts_default(qn_cache_opts *o);

/* Opens (creating when needed) the cache in dir (created if missing, one
 * level) with a map of size_mb MiB: data.mdb never grows past that. opts may
 * be NULL for the defaults.
 * A data file that LMDB rejects, that is truncated, or that is not a quern
 * cache of this format version is logged, renamed to
 * data.mdb.corrupt-<unix seconds> and replaced by an empty cache.
 * Returns 0 and *out, or: QN_EINVAL (size_mb under 2, or bad options), QN_EIO (dir
 * missing and not creatable, or not writable: logged with the path and
 * errno), QN_EEXTERNAL (LMDB failed otherwise, logged), QN_ENOMEM. */
int qn_cache_open(const char *dir, uint64_t size_mb, const qn_cache_opts *opts, qn_cache **out);

/* Flushes what is pending (best effort), stops the tick thread, closes the
 * environment, sets *c NULL. NULL-safe. No other call may be in flight. */
void qn_cache_close(qn_cache **c);

/* The cache key: XXH3-128 over a domain tag, the model name (length
 * prefixed), version, dtype (f32), rows, cols and the rows*cols input floats.
 * Integers are hashed little-endian, so keys are the same on every host.
 * Pure function, no cache needed. 0 or QN_EINVAL (NULL model/out, data NULL
 * with rows*cols > 0, negative shape). */
int qn_cache_key(const char *model, int64_t version, int64_t rows, int64_t cols, const float *data,
                 uint64_t out[2]);

/* Looks the key up, in LMDB and among the entries put and not yet flushed.
 * On a hit fills out[0 .. rows*cols) with exactly the floats that were put
 * and returns 0, and records a frequency bump (written at the next flush). Returns QN_ENOTFOUND on a miss; QN_ESHAPE when an entry
 * exists with another shape (counted as a miss); QN_ENOTFOUND too when the
 * entry fails its checksum (counted; it is deleted at the next flush);
 * QN_EEXTERNAL on an LMDB failure (logged). Any non-zero means: compute. */
int qn_cache_get_into(qn_cache *c, const uint64_t key[2], int64_t rows, int64_t cols, float *out);

/* As get_into, but for a caller that does not know the shape: on a hit *out
 * is a new malloc'd array the caller frees, *rows and *cols its shape. */
int qn_cache_get(qn_cache *c, const uint64_t key[2], float **out, int64_t *rows, int64_t *cols);

/* ---- reader sessions: many lookups in one read transaction.
 * For a burst of lookups (the core's staged jobs of one receive burst):
 * begin takes one read transaction, each get is an mdb_get and a checksum
 * with no lock, and end releases the transaction and records the session's
 * frequency bumps under the pending lock once (written at the next flush, as
 * get_into's). Hits, misses and checksum failures count as with get_into.
 *
 * A session pins one LMDB snapshot for as long as it is open (renewed only
 * when a lookup misses it and a flush has committed since: a session sees
 * every entry put before the lookup, flushed or not, as get_into does), and
 * the pages it sees cannot be reused by a writer, so a long-held session
 * grows data.mdb toward the map bound. Hold
 * one for a single burst only, and never across a wait. A session belongs to
 * the thread that began it (not thread-safe); different threads use
 * different sessions at the same time freely. Every session must be ended
 * before qn_cache_close. */
typedef struct qn_cache_reader qn_cache_reader;

/* Begins a session on c. Returns 0 and *out (also when the cache is broken:
 * its gets then all miss), or QN_EINVAL, QN_ENOMEM, QN_EEXTERNAL (no read
 * transaction: logged; the caller falls back to qn_cache_get_into or to
 * computing). The session is the cache's: release it with reader_end. */
int qn_cache_reader_begin(qn_cache *c, qn_cache_reader **out);

/* As qn_cache_get_into, inside the session: same returns (0 on a hit with out
 * filled; QN_ENOTFOUND, QN_ESHAPE, QN_EEXTERNAL, QN_EINVAL; any non-zero
 * means compute), the hit's bump held by the session until end. */
int qn_cache_reader_get_into(qn_cache_reader *r, const uint64_t key[2], int64_t rows, int64_t cols,
                             float *out);

/* Ends the session: releases its snapshot, then records its bumps in one
 * locked step. Sets *r NULL; NULL-safe. */
void qn_cache_reader_end(qn_cache_reader **r);

/* Queues one entry (copies data, rows*cols floats) for the next flush; gets
 * find it from now on (read-your-writes). An entry that already exists at
 * flush time is kept as it is (and counts as a hit for LFU); of two puts of
 * one key waiting at once, the first is served and written. Returns 0, QN_EINVAL, QN_ETOOLARGE (an entry above 1/32
 * of the map), QN_EFULL (pending bound reached, or writes are off after a
 * failure: dropped and counted), QN_ENOMEM. */
int qn_cache_put(qn_cache *c, const uint64_t key[2], int64_t rows, int64_t cols, const float *data);

/* Writes every pending insert, frequency bump and delete, evicting first
 * when the accounted bytes would pass the high watermark, plus the counters,
 * in one write transaction (more only when the pending work is larger than
 * what one transaction may dirty; see schemas/cache.md). Returns 0 (also
 * when there was nothing to do), QN_EFULL (map or disk full: this batch is
 * dropped, writes stop for write_backoff_ms; logged once), QN_EIO or
 * QN_EEXTERNAL (logged; the batch is dropped). Reads keep working either way. */
int qn_cache_flush(qn_cache *c);

typedef struct qn_cache_stats {
    /* Counted by this process since open (zero in qn_cache_stats_read). */
    uint64_t hits, misses, inserts, evictions, checksum_failures, write_failures, dropped;
    /* Of hits, those answered from entries put and not yet flushed. */
    uint64_t pending_hits;
    /* Totals over every process and restart, from the meta record. */
    uint64_t total_hits, total_misses, total_inserts, total_evictions, total_checksum_failures,
        total_write_failures;
    /* From the environment. */
    uint64_t entries;     /* entries stored */
    uint64_t bytes;       /* accounted bytes (what the watermarks compare) */
    uint64_t tree_bytes;  /* pages in the B-trees times the page size */
    uint64_t file_bytes;  /* size of data.mdb */
    uint64_t map_bytes;   /* the bound on data.mdb */
    uint64_t high_bytes, low_bytes; /* watermarks (0 in qn_cache_stats_read) */
} qn_cache_stats;

/* Fills st for an open cache (reads the environment in a read txn). 0 or
 * QN_EEXTERNAL. */
int qn_cache_stats_get(qn_cache *c, qn_cache_stats *st);

/* Fills st from the cache in dir without opening it for writing and without
 * creating anything (for `quern cache stats DIR`). 0, QN_ENOTFOUND (no cache
 * there), QN_EFORMAT (not a quern cache), QN_EEXTERNAL. */
int qn_cache_stats_read(const char *dir, qn_cache_stats *st);

/* ---- LFU counter math, shared with bench/cache_sim.c so that the simulation
 * runs the same policy as the store. */
#define QN_LFU_INIT_VAL 5
/* One logarithmic increment: with probability 1/((c - INIT) * factor + 1). r
 * is a uniform random number in [0, 1). */
uint8_t qn_lfu_incr(uint8_t counter, uint32_t log_factor, double r);
/* The counter after aging: minus one per decay period elapsed since
 * last_min (both in minutes, or whatever unit the caller keeps consistent). */
uint8_t qn_lfu_decay(uint8_t counter, uint32_t last_min, uint32_t now_min, uint32_t decay_min);

#endif
