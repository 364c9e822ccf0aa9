/* core.h: the transport-independent pipeline: admit (validate against the
 * registry), batch, execute, complete. A transport hands in bytes or a job
 * with an origin; exactly one final result comes back through
 * job->origin.complete, whatever happens (ok, error, expired, rejected).
 * The core never knows which transport a job came from. */
#ifndef QN_CORE_H
#define QN_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "batcher.h"
#include "cache.h"
#include "job.h"
#include "registry.h"

typedef struct qn_core_opts {
    qn_batcher_opts batch;
    int threads;          /* executor threads, >= 1 */
    qn_job_limits limits; /* message decode limits */
    /* Direct path: with greedy batching (max_delay_us 0), jobs for models
     * costing at most this many FLOPs per row are run on the submitting
     * transport thread itself, batched per receive burst, instead of being
     * handed to an executor thread: two thread handoffs cost more than such
     * a model's whole forward pass. 0 disables. */
    int64_t direct_max_flops;
    /* ... and jobs of any model, when a receive burst brought at most this
     * many rows, no executor is busy and nothing is queued (a lone job on an
     * idle worker: it runs at once, with no handoff). 0 disables. */
    int64_t direct_idle_rows;
    /* Result cache (borrowed, may be NULL): hits are answered at admission,
     * before the batcher; ok results of jobs with cache != false are put
     * after compute and written once per executor batch (and by the cache's
     * own tick). Errors are never cached. */
    qn_cache *cache;
    /* Train jobs (trainer.h): at most train_queue waiting beside the one
     * running (past it: rejected; 0: train jobs are refused), on a thread
     * at train_nice added niceness. */
    int train_queue;
    int train_nice;
} qn_core_opts;

#define QN_CORE_DEFAULT_DIRECT_MAX_FLOPS 131072
#define QN_CORE_DEFAULT_DIRECT_IDLE_ROWS 1

/* Fills defaults: max batch 64, greedy batching, queue limit 65536 rows,
 * 1 executor thread, 64 MiB messages. */
void qn_core_opts_default(qn_core_opts *o);

typedef struct qn_core qn_core;

/* reg and be are borrowed and must outlive the core. Starts the executor
 * threads. 0 or QN_E*. */
int qn_core_create(const qn_core_opts *opts, qn_registry *reg, qn_backend *be, qn_core **out);

/* Stops accepting (later submits are answered "rejected"), runs what is
 * queued to completion, joins the executors. Idempotent. */
void qn_core_stop(qn_core *c);
/* Stops if needed and frees. Sets *c NULL. NULL-safe. */
void qn_core_destroy(qn_core **c);

/* Decodes one message and submits it; a message that does not decode is
 * answered at once with its error code (and the id when it could be read).
 * origin is copied into the job. Never fails: the answer always comes back
 * through origin->complete. */
void qn_core_submit_bytes(qn_core *c, const void *buf, size_t len, const qn_origin *origin);

/* Per-transport-thread state for the direct path: a backend context and
 * the jobs staged during the current receive burst. Used by one thread. */
typedef struct qn_core_local qn_core_local;
int qn_core_local_create(qn_core *c, qn_core_local **out);
/* Flushes what is staged, then frees. Sets *l NULL. NULL-safe. */
void qn_core_local_destroy(qn_core *c, qn_core_local **l);

/* As qn_core_submit_bytes, but a cheap job may be staged on l; it runs, and
 * is answered on this thread, at the next qn_core_local_flush (call it after
 * every receive burst) or when the staged batch is full. */
void qn_core_submit_bytes_local(qn_core *c, qn_core_local *l, const void *buf, size_t len,
                                const qn_origin *origin);
/* As qn_core_submit, with the same staging as qn_core_submit_bytes_local. */
void qn_core_submit_local(qn_core *c, qn_core_local *l, qn_job *job);

/* Rows staged on l and not yet run or queued. */
int64_t qn_core_local_rows(const qn_core_local *l);

/* Runs and answers every job staged on l. */
void qn_core_local_flush(qn_core *c, qn_core_local *l);

/* Submits a decoded job (ownership passes to the core; job->origin set). */
void qn_core_submit(qn_core *c, qn_job *job);

/* Answers job with a non-ok final result and frees it (and its model
 * reference). For transports that must refuse a job themselves. */
void qn_core_reply_error(qn_job *job, qn_status status, qn_code code, const char *message);

/* Answers and drops every job still waiting in the batcher (not in a running
 * batch, not staged on a qn_core_local) for which match(job, ud) is non-zero
 * (match runs under the batcher's lock: look at the job only, typically at
 * job->origin). Each gets one final result with status, code and message
 * through its origin.complete, on the calling thread, before this returns.
 * For a transport whose client went away (its queued work must not delay
 * anyone else) or that has to stop within a deadline. Works after
 * qn_core_stop began too. Returns how many jobs were dropped, or QN_ENOMEM
 * (none were). */
int64_t qn_core_cancel(qn_core *c, qn_job_match_fn match, void *ud, qn_status status, qn_code code,
                       const char *message);

/* Jobs admitted and not yet answered. */
int64_t qn_core_inflight(qn_core *c);
/* Rows queued for execution, and the limit past which jobs are rejected. */
int64_t qn_core_queued_rows(qn_core *c);
int64_t qn_core_queue_limit(qn_core *c);

#endif
