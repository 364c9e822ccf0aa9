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

/* Starts threads (>= 1) popping from b. b, be and the hooks' ud must
 * outlive the executor. 0, QN_EINVAL or QN_ENOMEM/QN_EEXTERNAL (a thread or
 * context could not be created; everything started is undone). */
int qn_executor_start(qn_batcher *b, qn_backend *be, int threads, const qn_executor_hooks *hooks,
                      qn_executor **out);

/* Waits for every thread to finish (they exit once the batcher is closed and
 * drained: close it first), frees, sets *e NULL. NULL-safe. */
void qn_executor_join(qn_executor **e);

/* Batches and rows run so far (for logs and tests). */
void qn_executor_stats(qn_executor *e, uint64_t *batches, uint64_t *rows);

#endif
