/* trainer.h: running train jobs beside inference (CONTRACT.md section 3,
 * "Train job"). One trainer thread takes jobs from a bounded queue, runs
 * each with lib/train.c at a lower scheduling priority than the executors
 * (nice, see bench/README.md "Training beside inference" for why a thread
 * rather than steps interleaved into the executors), sends progress through
 * the job's origin, writes the new version (train_store.c), rescans the
 * registry so it is served at once, and answers through the finish hook.
 * A job delivered twice (same id and data) is answered with the version it
 * made the first time. */
#ifndef QN_TRAINER_H
#define QN_TRAINER_H

#include <stdint.h>

#include "job.h"
#include "registry.h"

typedef struct qn_trainer qn_trainer;

typedef struct qn_trainer_opts {
    int queue_limit;   /* train jobs waiting beside the running one; past it: rejected */
    int nice;          /* added niceness of the trainer thread (0: same as the executors) */
    uint64_t progress_interval_ns; /* mid-epoch progress at most this often (0: 500 ms) */
} qn_trainer_opts;

#define QN_TRAINER_DEFAULT_QUEUE 4
#define QN_TRAINER_DEFAULT_NICE 10

/* Called once per job with its final result; the hook frees the job. */
typedef void (*qn_trainer_finish_fn)(void *ud, qn_job *job, const qn_result *res);

/* reg is borrowed (versions are read from and written to its directory).
 * Starts the thread. 0 or QN_E*. */
int qn_trainer_create(qn_registry *reg, const qn_trainer_opts *o, qn_trainer_finish_fn finish, void *ud,
                      qn_trainer **out);
/* Queues job (ownership passes on 0). QN_EFULL past the bound, QN_ECLOSED
 * after stop: the job stays the caller's to answer. */
int qn_trainer_submit(qn_trainer *t, qn_job *job);
/* Stops: the running job is interrupted (nothing written) and it and the
 * queued ones are finished with a rejected result marked handed_back (Kafka
 * leaves them uncommitted for redelivery); joins the thread. Idempotent. */
void qn_trainer_stop(qn_trainer *t);
void qn_trainer_destroy(qn_trainer **t);
/* Jobs queued or running. */
int qn_trainer_pending(qn_trainer *t);

/* The redelivery key of a train job: its id and a hash of its data. */
void qn_train_job_key(const qn_job *job, char *out, size_t cap);

#endif
