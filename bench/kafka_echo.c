/* kafka_echo: the Kafka transport's ceiling on this machine. A librdkafka
 * consumer (same group settings as quern-worker) that answers every message
 * with a result-sized reply keyed like quern's (the message key), without
 * decoding the job or computing anything. Whatever quern-worker does on top
 * (decode, batch, forward pass, per-job offset tracking) can only be slower;
 * bench/kafka_bench.py compares the three.
 *
 *   build/bench/kafka_echo BROKERS [TOPIC [REPLY_TOPIC [GROUP]]]
 *
 * Runs until SIGTERM/SIGINT. Offsets are auto-committed (stored on poll):
 * the cheapest thing that is still a consumer group member. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "job.h"

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static int set(rd_kafka_conf_t *c, const char *k, const char *v)
{
    char err[512];
    if (rd_kafka_conf_set(c, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kafka_echo: %s=%s: %s\n", k, v, err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: kafka_echo BROKERS [TOPIC [REPLY_TOPIC [GROUP]]]\n");
        return 2;
    }
    const char *brokers = argv[1], *topic = argc > 2 ? argv[2] : "quern.jobs",
               *reply = argc > 3 ? argv[3] : "quern.results", *group = argc > 4 ? argv[4] : "quern-echo";
    char err[512];
    rd_kafka_conf_t *cc = rd_kafka_conf_new(), *pc = rd_kafka_conf_new();
    if (set(cc, "bootstrap.servers", brokers) || set(cc, "group.id", group) ||
        set(cc, "auto.offset.reset", "earliest") || set(cc, "fetch.wait.max.ms", "100") ||
        set(pc, "bootstrap.servers", brokers) || set(pc, "enable.idempotence", "true") ||
        set(pc, "linger.ms", "2"))
        return 1;
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!p || !c) {
        fprintf(stderr, "kafka_echo: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(c);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(c, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    fprintf(stderr, "kafka_echo: consuming %s from %s\n", topic, brokers);

    /* A result of the bench model's size (1 x 16 outputs), re-encoded per
     * message only for its id: the same encoder quern uses. */
    float zeros[16] = {0};
    qn_buf body = {0};
    long n = 0;
    while (!stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        rd_kafka_poll(p, 0);
        if (!m) continue;
        if (!m->err) {
            qn_id id = {.kind = QN_ID_STR, .s = m->key ? (char *)m->key : "", .len = (uint32_t)m->key_len};
            qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &id,
                             .model = "echo", .version = 1, .rows = 1, .cols = 16, .outputs = zeros};
            qn_buf_reset(&body);
            qn_result_encode(&res, &body);
            while (rd_kafka_producev(p, RD_KAFKA_V_TOPIC(reply), RD_KAFKA_V_KEY(m->key, m->key_len),
                                     RD_KAFKA_V_VALUE(body.data, body.len),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END) ==
                   RD_KAFKA_RESP_ERR__QUEUE_FULL)
                rd_kafka_poll(p, 10);
            n++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_flush(p, 10000);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    rd_kafka_destroy(p);
    qn_buf_free(&body);
    fprintf(stderr, "kafka_echo: answered %ld\n", n);
    return 0;
}
