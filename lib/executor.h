/* executor.h: the threads that run batches. Each thread owns one backend
 * context, pops a batch from the batcher, gathers its rows into one
 * contiguous input, runs one forward over the whole batch, and hands every
 * job with a view of its output rows to the finish hook. The executor knows
 * nothing of transports or caches: what happens to a result is the hook's. */
#ifndef QN_EXECUTOR_H
#define QN_EXECUTOR_H

#include "backend.h"
#include "batcher.h"
#include "job.h"

typedef struct qn_executor_hooks {
    void *ud;
    /* Every job that comes out of the batcher, with its final result (ok,
     * expired, or error "internal" if the backend failed). Takes ownership
     * of the job. res is valid only during the call. */
    void (*finish)(void *ud, qn_job *job, const qn_result *res);
    /* After each batch's jobs were finished, on the same thread (e.g. one
     * cache write transaction per batch). May be NULL. */
    void (*batch_done)(void *ud);
} qn_executor_hooks;

typedef struct qn_executor qn_executor;

/* Gather/output buffers reused across batches by one thread. Zero-init. */
typedef struct qn_batch_scratch {
    float *x, *y;
    size_t xcap, ycap;
} qn_batch_scratch;
void qn_batch_scratch_free(qn_batch_scratch *s);

/* Runs one batch on the calling thread with backend context ctx: expired
 * jobs are finished as "expired", the jobs' rows are gathered, one forward
 * runs, and each job is finished with a view of its output rows (or
 * "internal" if the backend failed, whose code is returned). Every job in
 * the batch is handed to h->finish exactly once. The executor threads use
 * this; so does the core's direct path on a transport's IO thread. */
int qn_batch_run(qn_backend *be, void *ctx, qn_batch *batch, qn_batch_scratch *s,
                 const qn_executor_hooks *h);

/* Starts threads (>= 1) popping from b. b, be and the hooks' ud must
 * outlive the executor. 0, QN_EINVAL or QN_ENOMEM/QN_EEXTERNAL (a thread or
 * context could not be created; everything started is undone). */
int qn_executor_start(qn_batcher *b, qn_backend *be, int threads, const qn_executor_hooks *hooks,
                      qn_executor **out);

/* Waits for every thread to finish (they exit once the batcher is closed and
 * drained: close it first), frees, sets *e NULL. NULL-safe. */
void qn_executor_join(qn_executor **e);

/* Threads running a batch right now (a hint: it may change at once). */
int qn_executor_busy(qn_executor *e);

/* Batches and rows run so far, and the time threads spent running them
 * (summed over threads), for logs and tests. Any pointer may be NULL. */
void qn_executor_stats(qn_executor *e, uint64_t *batches, uint64_t *rows, uint64_t *busy_ns);

#endif
