/* kafka_transport.h: the Kafka transport (librdkafka). Jobs are consumed in a
 * consumer group (eager assignment; schemas/kafka.md says why not
 * cooperative-sticky) from one topic; results go out through an idempotent
 * producer to the job's reply_to, else the kafka_replyTopic header, else the
 * default reply topic, keyed by job id, echoing the kafka_correlationId
 * header. Delivery is at least once: a partition's offset is committed only
 * below jobs whose results (or DLQ copies) the broker acknowledged. schemas/kafka.md is the user-facing
 * description (headers, DLQ, -X routing, quern.* settings). */
#ifndef QN_KAFKA_TRANSPORT_H
#define QN_KAFKA_TRANSPORT_H

#include "core.h"
#include "job.h"
#include "transport.h"

typedef struct qn_kafka_opts {
    const char *brokers;      /* bootstrap list, or "mock": start an embedded
                                 mock cluster on loopback (bootstrap logged) */
    const char *topic;        /* job topic */
    const char *group;        /* consumer group */
    const char *reply_topic;  /* default result topic */
    const char *dlq_topic;    /* dead letters */
    const char *const *x;     /* nx "key=value" strings for librdkafka (-X):
                                 "consumer.K=V" / "producer.K=V" set one side,
                                 "quern.K=V" the transport's own settings,
                                 anything else both sides */
    int nx;
    qn_job_limits limits;     /* decode limits (too_large past them) */
} qn_kafka_opts;

/* Checks the -X settings of opts the way qn_kafka_transport_create applies
 * them (quern.* values, each librdkafka property on the side it goes to)
 * without connecting anywhere, so a worker can refuse a bad one before it
 * loads models and binds sockets. 0 or QN_EINVAL (the reason logged). */
int qn_kafka_opts_check(const qn_kafka_opts *opts);

/* Builds the consumer and producer (and the mock cluster) and subscribes;
 * nothing is consumed before start. The strings in opts are copied; core is
 * borrowed and must outlive the transport. 0, QN_EINVAL (a bad -X setting,
 * logged), QN_ENOMEM or QN_EEXTERNAL (librdkafka refused, logged). */
int qn_kafka_transport_create(const qn_kafka_opts *opts, qn_core *core, qn_transport *out);

#endif
