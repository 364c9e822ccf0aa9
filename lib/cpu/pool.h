/* pool.h: the CPU backend's intra-op helper pool. A few helper threads (one
 * per core beyond the caller's) that help ONE caller at a time cut a single
 * small-row forward of a big layer into chunks: the caller and the helpers
 * claim chunks from a shared counter until none is left, then the caller
 * waits for the chunks still running. Claiming (not a fixed half each) means
 * a helper that wakes late only does less: the caller never waits for a
 * wakeup, only for a chunk already started.
 *
 * For latency at low load only (the worker's direct path with idle
 * executors, cpu_backend.c): under load the executors already use every core.
 *
 * Idle cost: after its last chunk a helper spins (pause loop) for spin_us,
 * so back-to-back layers find it awake, then sleeps on a futex: an idle pool
 * burns no CPU. */
#ifndef QN_CPU_POOL_H
#define QN_CPU_POOL_H

#include <stdint.h>

typedef struct qn_cpu_pool qn_cpu_pool;

/* One chunk of work: fn(arg, chunk) for chunk in 0 .. nchunks-1. Each chunk
 * runs exactly once, on the caller or on a helper, concurrently with others:
 * chunks must write disjoint memory. */
typedef void (*qn_cpu_pool_fn)(void *arg, int64_t chunk);

/* Starts helpers threads (>= 1; 0 is QN_EINVAL: callers with one core keep
 * no pool) that spin spin_us microseconds (0..1000000) after each job before
 * sleeping. 0 with *out the pool; QN_EINVAL, QN_ENOMEM, or QN_EIO when a
 * thread cannot start (the ones started are stopped again). */
int qn_cpu_pool_create(int helpers, int spin_us, qn_cpu_pool **out);
/* Stops and joins the helpers (waking sleeping ones), frees the pool, sets
 * *p NULL. NULL-safe. No qn_cpu_pool_run may be in progress. */
void qn_cpu_pool_destroy(qn_cpu_pool **p);
/* The number of helper threads. */
int qn_cpu_pool_helpers(const qn_cpu_pool *p);
/* Since create: jobs run with the helpers (calls of qn_cpu_pool_run that
 * got the pool) and chunks the helpers ran, for tests and the backend's
 * shutdown log. NULL-safe (0). */
void qn_cpu_pool_stats(const qn_cpu_pool *p, int64_t *jobs, int64_t *helped);

/* Runs fn(arg, c) for every c in 0 .. nchunks-1 and returns when all have
 * finished (their writes visible to the caller). The caller takes part. If
 * another thread is using the pool right now, the caller runs every chunk
 * itself (same results, no parallelism): never blocks on another caller.
 * Returns how many chunks helpers ran (0 .. nchunks), for tests and logs;
 * nchunks < 1 is a no-op returning 0. */
int64_t qn_cpu_pool_run(qn_cpu_pool *p, qn_cpu_pool_fn fn, void *arg, int64_t nchunks);

#endif
