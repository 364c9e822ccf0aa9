/* batcher.h: the dynamic batcher. Jobs wait in one queue per model version
 * (the qn_model a job was admitted against), ordered by priority (0 first)
 * then arrival. An executor pops a batch: the most urgent ready queue's jobs,
 * up to max_batch_rows rows (a single job larger than that goes alone, never
 * split). A queue is ready when it holds max_batch_rows rows, when its head
 * job has waited max_delay_us, or when the batcher is closing. With
 * max_delay_us 0 batching is greedy: a free executor takes whatever is
 * queued, so batches grow with load and a lone job never waits.
 *
 * Bounded: past queue_limit_rows queued rows, push refuses (the transport
 * answers "rejected" or pauses its source). Jobs whose deadline_ms passed
 * while queued come back in the batch's expired list instead of running.
 * Thread-safe; any number of pushers and poppers. */
#ifndef QN_BATCHER_H
#define QN_BATCHER_H

#include <stdint.h>

#include "job.h"
#include "model.h"

typedef struct qn_batcher_opts {
    int64_t max_batch_rows;   /* > 0 */
    int64_t max_delay_us;     /* >= 0 */
    int64_t queue_limit_rows; /* > 0 */
} qn_batcher_opts;

#define QN_BATCHER_DEFAULT_MAX_BATCH 64
#define QN_BATCHER_DEFAULT_MAX_DELAY_US 0
#define QN_BATCHER_DEFAULT_QUEUE_LIMIT 65536

typedef struct qn_batch {
    qn_model *model;        /* borrowed: every job holds its own reference */
    qn_job **jobs;          /* to run, in order */
    int njobs;
    int64_t rows;
    qn_job **expired;       /* deadline passed while queued: answer "expired" */
    int nexpired;
    int cap_jobs, cap_expired;
} qn_batch;

typedef struct qn_batcher qn_batcher;

/* 0, QN_EINVAL (bad options) or QN_ENOMEM. */
int qn_batcher_create(const qn_batcher_opts *opts, qn_batcher **out);
/* Frees the batcher. Must be closed and drained (pop returned QN_ECLOSED);
 * asserts otherwise. Sets *b NULL. NULL-safe. */
void qn_batcher_destroy(qn_batcher **b);

/* Queues job (job->served_by must be set; job->t_arrival_ns is set here).
 * 0: the batcher owns the job until it comes out of pop. QN_EFULL: the queue
 * limit would be passed now (retrying later can succeed); QN_ETOOLARGE: the
 * job has more rows than the whole queue limit, so it can never be queued;
 * QN_ECLOSED: closing. On error the caller keeps the job. */
int qn_batcher_push(qn_batcher *b, qn_job *job);

/* Says whether a queued job is to be removed (qn_batcher_remove_if). Runs
 * under the batcher's lock: look at the job, nothing else. */
typedef int (*qn_job_match_fn)(const qn_job *job, void *ud);

/* Removes every queued job for which match(job, ud) is non-zero (jobs
 * already popped into a batch are not touched) and hands them to the caller:
 * *jobs is set to a malloc'd array of *njobs jobs (NULL when none), which the
 * caller frees after answering each job. Works on a closed batcher too.
 * 0, or QN_ENOMEM (nothing removed). */
int qn_batcher_remove_if(qn_batcher *b, qn_job_match_fn match, void *ud, qn_job ***jobs,
                         int *njobs);

/* Blocks until a batch is ready and fills *batch (reusing its arrays; init
 * it zeroed once, free with qn_batch_free). Returns 0 with at least one job
 * or expired job; QN_ECLOSED once closed and empty. The caller owns the
 * returned jobs. */
int qn_batcher_pop(qn_batcher *b, qn_batch *batch);

/* Non-blocking pop: QN_EAGAIN when no batch is ready now. */
int qn_batcher_try_pop(qn_batcher *b, qn_batch *batch);

/* No more pushes; poppers drain what is queued without waiting for delays,
 * then get QN_ECLOSED. */
void qn_batcher_close(qn_batcher *b);

int64_t qn_batcher_queued_rows(qn_batcher *b);
int64_t qn_batcher_queue_limit(const qn_batcher *b);

void qn_batch_free(qn_batch *batch);

#endif
