/* kafka_internal.h: what the Kafka transport's files share (worker/ only,
 * not an interface): the transport's state, its per-job records, and the
 * functions one part calls in another. Calls point one way, top to bottom:
 *
 *   kafka_transport.c  lifecycle, configuration, the IO thread's loop and
 *                      backpressure
 *   kafka_intake.c     assignments, commits, admission, the held messages,
 *                      rebalances
 *   kafka_reply.c      results and DLQ copies out, delivery reports, the
 *                      handoff from completing threads
 *   kafka_partition.c  partition records and their reference counts
 *                      (kafka_partition.h), used by intake and reply
 *
 * Ownership: the offset trackers, partition records and held messages are
 * touched only by the owner thread (tl_owner: the IO thread, or destroy's
 * thread once it joined it). */
#ifndef QN_KAFKA_INTERNAL_H
#define QN_KAFKA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "core.h"
#include "job.h"
#include "kafka_partition.h"
#include "offsets.h"

#define BURST 256 /* messages taken per poll round */
#define HDR_CORR "kafka_correlationId"
#define HDR_REPLY_TOPIC "kafka_replyTopic"
#define HDR_REPLY_PART "kafka_replyPartition"
#define DLQ_TRIES 3
#define KNOWN_TOPICS 64 /* reply topics whose producer handles are kept */

/* Per job (origin.data). The header copies live in the same block. */
typedef struct krec {
    kpart *part;
    int64_t offset;
    int deliveries;    /* produce acknowledgements still awaited */
    int dlq_tries;
    uint64_t t_take, t_done; /* ns: admitted; result produced */
    bool failed;       /* a DLQ write finally failed: do not mark done */
    int32_t reply_partition;
    char *reply_hdr;   /* kafka_replyTopic, NUL-terminated, or NULL */
    void *corr;        /* kafka_correlationId bytes, or NULL */
    size_t corr_len;
} krec;

/* A produce that failed at once on a completing thread, for the IO thread. */
typedef struct handoff {
    struct handoff *next;
    krec *r;
    rd_kafka_resp_err_t err;
    char *topic;
    int32_t partition;
    void *key, *value; /* owned */
    size_t keylen, len;
    rd_kafka_headers_t *hdrs; /* owned */
} handoff;

typedef struct kt {
    qn_core *core;
    qn_core_local *local; /* direct-path staging, used by the IO thread only */
    qn_job_limits limits;
    char *topic, *group, *reply_topic, *dlq_topic, *brokers;
    rd_kafka_t *consumer, *producer, *mock_rk;
    /* Every assigned partition's messages are forwarded here, apart from the
     * consumer queue, which keeps the group's events (rebalances, errors,
     * commit results): so intake can stop reading messages without stopping
     * serving the group. */
    rd_kafka_queue_t *jobs_q;
    rd_kafka_topic_t *jobs_rkt; /* the consumer's handle on the job topic */
    rd_kafka_mock_cluster_t *mock;

    /* quern.* settings (-X quern.KEY=VALUE) */
    int64_t max_inflight;
    int commit_interval_ms, revoke_wait_ms, mock_partitions, mock_brokers, pause_after_ms;

    /* IO thread only */
    kpart_table parts; /* current records, indexed by partition */
    rd_kafka_message_t **held; /* fetched, not yet admitted (FIFO) */
    size_t nheld, held_cap;
    struct { char *name; rd_kafka_topic_t *rkt; } known[KNOWN_TOPICS]; /* ring */
    int known_next;
    qn_job *front_job; /* held[0] decoded, when front_valid */
    int front_rc;
    qn_decode_error front_err;
    bool front_valid, paused, closing;
    uint64_t next_commit_ns, blocked_since_ns, last_kick_ns;
    size_t q_peak; /* most messages seen waiting in jobs_q since the last kick */

    pthread_t tid;
    bool started;
    atomic_int intake, quit;
    atomic_int_fast64_t inflight;
    pthread_mutex_t ho_mu;
    handoff *ho_head;
    /* counters for the shutdown summary and tests */
    atomic_int_fast64_t n_taken, n_answered, n_dlq, n_reply_failed, n_stuck, n_pauses, n_kicks;
    /* IO thread: where a job's time goes (ns sums, maxima) */
    uint64_t s_compute, s_ack, m_compute, m_ack, s_n;
} kt;

/* Set while the IO thread admits one message: an answer given right then
 * (decode or admission error) can still see the raw message for the DLQ. */
extern _Thread_local krec *tl_rec;
extern _Thread_local const rd_kafka_message_t *tl_msg;
/* The thread that owns the bookkeeping (IO thread, or destroy's thread). */
extern _Thread_local kt *tl_owner;

/* kafka_intake.c */
void kt_commit_parts(kt *t, const rd_kafka_topic_partition_list_t *only, bool sync);
void kt_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *offsets, void *opaque);
void kt_set_paused(kt *t, bool pause);
void kt_drop_held(kt *t, const rd_kafka_topic_partition_list_t *only);
void kt_admit_held(kt *t);
void kt_on_message(kt *t, rd_kafka_message_t *m);
void kt_forward_parts(kt *t, const rd_kafka_topic_partition_list_t *l, rd_kafka_queue_t *to);
void kt_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                     rd_kafka_topic_partition_list_t *parts, void *opaque);

/* kafka_reply.c */
void kt_complete(qn_job *job, const qn_result *res); /* qn_complete_fn */
void kt_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);
void kt_process_handoffs(kt *t);
void kt_finish(kt *t, krec *r);

#endif
