/* kafka_client.h: the CLI's Kafka request-reply. Produces one message to a
 * topic and reads a reply topic until the caller recognises the answer, with
 * librdkafka. Knows nothing of quern's messages: the caller encodes the
 * request and judges each reply (`quern predict --kafka`).
 *
 * No reply can be missed: before producing, the reply topic's end offsets are
 * taken (one ListOffsets per leader) and every partition is assigned from
 * there, by hand (no group membership, so no rebalance to wait for). The
 * request carries a `kafka_correlationId` header, which quern's worker echoes
 * on its result (schemas/kafka.md), so a reply can be told ours even when it
 * carries no id. */
#ifndef QN_CLI_KAFKA_CLIENT_H
#define QN_CLI_KAFKA_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qn_kafka_call {
    const char *brokers;          /* bootstrap.servers */
    const char *topic;            /* where the request is produced */
    const char *reply_topic;      /* where the reply is awaited: must exist, or the
                                     brokers must auto-create it (a metadata request
                                     from a producer asks them to) */
    const char *key;              /* request key; NULL: none */
    const void *value;            /* request bytes */
    size_t len;
    const char *const *props;     /* -X key=value, nprops of them: "producer.K=V" to the
                                     producer only, "consumer.K=V" to the consumer only,
                                     anything else to both; applied after the defaults */
    int nprops;
    int64_t timeout_ms;           /* for the whole call, connecting included */
    uint64_t produced_ns;         /* out: qn_now_ns() just before the request was produced */
} qn_kafka_call;

/* Judges one message read from the reply topic. corr_match: its
 * kafka_correlationId header is the one this call sent. Returns true when the
 * message is the answer (the call then ends), false to keep reading. */
typedef bool (*qn_kafka_accept_fn)(const void *value, size_t len, bool corr_match, void *arg);

/* Runs one call. Returns 0 once accept returned true; QN_ETIMEDOUT when
 * timeout_ms ran out first; QN_EINVAL for a bad -X property; QN_EEXTERNAL when
 * librdkafka failed (the reply topic is missing and not created, the request
 * could not be delivered); QN_ENOMEM. On failure err holds one sentence
 * saying what went wrong (with the last broker error, if any). Blocks. */
int qn_kafka_call_run(qn_kafka_call *call, qn_kafka_accept_fn accept, void *arg, char *err,
                      size_t errlen);

#endif
