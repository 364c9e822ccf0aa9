/* kafka_client.c: one Kafka request-reply for the CLI (kafka_client.h).
 *
 * Order of a call: producer and consumer up; metadata for the reply topic
 * (from the producer, whose metadata requests let the brokers auto-create
 * it); the reply topic's end offsets; assign every partition from there;
 * produce the request; read replies until the caller accepts one. Taking the
 * offsets before producing is what makes a fast reply impossible to miss.
 *
 * librdkafka's own log lines are debug output here (QN_LOG=debug shows
 * them): a person running `quern predict` wants one sentence on failure, so
 * the last broker error is kept and put into that sentence instead. */
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "kafka_client.h"
#include "log.h"
#include "tensor.h"

#define HDR_CORR "kafka_correlationId"

typedef struct call_state {
    char last_error[256];          /* last error_cb report, "" if none */
    int delivered;                 /* 0 pending, 1 acknowledged, -1 failed */
    char delivery_error[256];
} call_state;

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    QN_LOGD("kafka", "%s: %d %s: %s", rd_kafka_name(rk), level, fac, buf);
}

/* Runs inside rd_kafka_poll / rd_kafka_consumer_poll, on the calling thread. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    call_state *st = opaque;
    snprintf(st->last_error, sizeof st->last_error, "%s", reason);
    QN_LOGD("kafka", "%s: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(err), reason);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    call_state *st = opaque;
    if (m->err) {
        st->delivered = -1;
        snprintf(st->delivery_error, sizeof st->delivery_error, "%s", rd_kafka_err2str(m->err));
    } else {
        st->delivered = 1;
    }
}

static int64_t ms_left(uint64_t deadline)
{
    uint64_t now = qn_now_ns();
    return now >= deadline ? 0 : (int64_t)((deadline - now + 999999) / 1000000);
}

static int conf_set(rd_kafka_conf_t *c, const char *k, const char *v, char *err, size_t errlen)
{
    char why[256];
    if (rd_kafka_conf_set(c, k, v, why, sizeof why) == RD_KAFKA_CONF_OK) return 0;
    snprintf(err, errlen, "-X %s=%s: %s", k, v, why);
    return QN_EINVAL;
}

/* Applies the -X properties meant for one side (which: 'p' or 'c'), the same
 * routing as quern-worker's -X (schemas/kafka.md). */
static int apply_props(const qn_kafka_call *call, char which, rd_kafka_conf_t *c, char *err,
                       size_t errlen)
{
    for (int i = 0; i < call->nprops; i++) {
        const char *kv = call->props[i], *eq = strchr(kv, '=');
        char key[256];
        if (!eq || eq == kv || (size_t)(eq - kv) >= sizeof key) {
            snprintf(err, errlen, "-X wants key=value, got '%s'", kv);
            return QN_EINVAL;
        }
        memcpy(key, kv, (size_t)(eq - kv));
        key[eq - kv] = '\0';
        const char *k = key;
        if (!strncmp(key, "producer.", 9)) {
            if (which != 'p') continue;
            k += 9;
        } else if (!strncmp(key, "consumer.", 9)) {
            if (which != 'c') continue;
            k += 9;
        }
        int rc = conf_set(c, k, eq + 1, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

static rd_kafka_conf_t *new_conf(const qn_kafka_call *call, call_state *st, char which, char *err,
                                 size_t errlen)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    char group[96];
    rd_kafka_conf_set_opaque(c, st);
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    if (conf_set(c, "bootstrap.servers", call->brokers, err, errlen) ||
        conf_set(c, "client.id", "quern-predict", err, errlen))
        goto fail;
    if (which == 'p') {
        /* one message: nothing to batch, so no reason to linger */
        if (conf_set(c, "linger.ms", "0", err, errlen)) goto fail;
        rd_kafka_conf_set_dr_msg_cb(c, dr_cb);
    } else {
        /* A group id is what rd_kafka_consumer_poll needs; it is never
         * joined (assign, not subscribe) and nothing is committed. */
        snprintf(group, sizeof group, "quern-predict-%ld-%" PRIu64, (long)getpid(), qn_now_ns());
        if (conf_set(c, "group.id", group, err, errlen) ||
            conf_set(c, "enable.auto.commit", "false", err, errlen) ||
            /* how long an idle fetch waits: a reply arriving meanwhile
             * waits that long on brokers that answer only at the end */
            conf_set(c, "fetch.wait.max.ms", "50", err, errlen))
            goto fail;
    }
    if (apply_props(call, which, c, err, errlen)) goto fail;
    return c;
fail:
    rd_kafka_conf_destroy(c);
    return NULL;
}

static void with_last_error(char *err, size_t errlen, const call_state *st)
{
    size_t n = strlen(err);
    if (st->last_error[0] && n < errlen)
        snprintf(err + n, errlen - n, " (last broker error: %s)", st->last_error);
}

/* Waits for a topic's metadata, the brokers creating it if they
 * auto-create; returns its partition count (> 0) or a negative QN_E*. what
 * and flag name the topic in the error ("reply", "--reply-topic"). */
static int topic_partitions(rd_kafka_t *producer, const char *topic, const char *what,
                            const char *flag, uint64_t deadline, call_state *st, char *err,
                            size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(producer, topic, NULL);
    if (!rkt) {
        snprintf(err, errlen, "topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
        return QN_EEXTERNAL;
    }
    rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR__TIMED_OUT;
    int n = 0;
    for (;;) {
        int64_t left = ms_left(deadline);
        if (left <= 0) break;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(producer, 0, rkt, &md, (int)(left < 2000 ? left : 2000));
        if (!e && md->topic_cnt == 1) {
            e = md->topics[0].err;
            if (!e) n = md->topics[0].partition_cnt;
            /* a topic just created can come back with no partitions yet */
            if (!e && n <= 0) e = RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE;
        }
        if (md) rd_kafka_metadata_destroy(md);
        rd_kafka_poll(producer, 0);
        if (!e) break;
        last = e;
        n = 0;
        left = ms_left(deadline);
        usleep((useconds_t)(left < 100 ? left : 100) * 1000);
    }
    rd_kafka_topic_destroy(rkt);
    if (n > 0) return n;
    if (last == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        snprintf(err, errlen, "the %s topic %s does not exist and the brokers did not create it "
                 "(auto.create.topics.enable off?): create it or name another with %s",
                 what, topic, flag);
    else
        snprintf(err, errlen, "no metadata for the %s topic %s from the brokers: %s", what, topic,
                 rd_kafka_err2str(last));
    with_last_error(err, errlen, st);
    return last == RD_KAFKA_RESP_ERR__TIMED_OUT ? QN_ETIMEDOUT : QN_EEXTERNAL;
}

/* Assigns every partition of the reply topic from its current end. */
static int assign_from_end(rd_kafka_t *consumer, const char *topic, int nparts, uint64_t deadline,
                           call_state *st, char *err, size_t errlen)
{
    int rc = QN_ENOMEM;
    rd_kafka_topic_partition_list_t *tps = rd_kafka_topic_partition_list_new(nparts);
    if (!tps) return QN_ENOMEM;
    for (int p = 0; p < nparts; p++) rd_kafka_topic_partition_list_add(tps, topic, p);
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
    for (;;) {
        int64_t left = ms_left(deadline);
        if (left <= 0) break;
        /* offsets_for_times with the timestamp -1 is ListOffsets "latest":
         * the end offset of every partition in one request per leader */
        for (int i = 0; i < tps->cnt; i++) tps->elems[i].offset = RD_KAFKA_OFFSET_END;
        e = rd_kafka_offsets_for_times(consumer, tps, (int)(left < 2000 ? left : 2000));
        for (int i = 0; !e && i < tps->cnt; i++) {
            e = tps->elems[i].err;
            if (!e && tps->elems[i].offset < 0) e = RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE;
        }
        rd_kafka_poll(consumer, 0);
        if (!e) break;
        left = ms_left(deadline);
        usleep((useconds_t)(left < 100 ? left : 100) * 1000);
    }
    if (e) {
        snprintf(err, errlen, "cannot read the end offsets of the reply topic %s: %s", topic,
                 rd_kafka_err2str(e));
        with_last_error(err, errlen, st);
        rc = e == RD_KAFKA_RESP_ERR__TIMED_OUT ? QN_ETIMEDOUT : QN_EEXTERNAL;
        goto out;
    }
    e = rd_kafka_assign(consumer, tps);
    if (e) {
        snprintf(err, errlen, "cannot assign the reply topic %s: %s", topic, rd_kafka_err2str(e));
        rc = QN_EEXTERNAL;
        goto out;
    }
    rc = 0;
out:
    rd_kafka_topic_partition_list_destroy(tps);
    return rc;
}

static bool header_is(rd_kafka_message_t *m, const char *name, const char *want)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t n;
    if (rd_kafka_message_headers(m, &h) || !h) return false;
    if (rd_kafka_header_get_last(h, name, &v, &n)) return false;
    return n == strlen(want) && !memcmp(v, want, n);
}

int qn_kafka_call_run(qn_kafka_call *call, qn_kafka_accept_fn accept, void *arg, char *err,
                      size_t errlen)
{
    int rc = QN_EINVAL;
    call_state st = {0};
    rd_kafka_conf_t *pc = NULL, *cc = NULL;
    rd_kafka_t *producer = NULL, *consumer = NULL;
    char why[512], corr[96];
    const uint64_t deadline = qn_now_ns() + (uint64_t)call->timeout_ms * 1000000ull;
    err[0] = '\0';
    snprintf(corr, sizeof corr, "quern-predict-%ld-%" PRIu64, (long)getpid(), qn_now_ns());

    if (!(pc = new_conf(call, &st, 'p', err, errlen))) goto out;
    if (!(cc = new_conf(call, &st, 'c', err, errlen))) goto out;
    rc = QN_EEXTERNAL;
    if (!(producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, why, sizeof why))) {
        snprintf(err, errlen, "producer: %s", why);
        goto out;
    }
    pc = NULL;
    if (!(consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, why, sizeof why))) {
        snprintf(err, errlen, "consumer: %s", why);
        goto out;
    }
    cc = NULL;
    rd_kafka_poll_set_consumer(consumer); /* its errors reach error_cb in consumer_poll */

    /* The job topic's metadata up front too: a producer meeting a topic
     * for the first time may wait for its next metadata refresh (up to a
     * second) before sending, and a missing topic is better said now. */
    int nparts = topic_partitions(producer, call->topic, "job", "--topic", deadline, &st, err, errlen);
    if (nparts > 0)
        nparts = topic_partitions(producer, call->reply_topic, "reply", "--reply-topic", deadline,
                                  &st, err, errlen);
    if (nparts < 0) {
        rc = nparts;
        goto out;
    }
    if ((rc = assign_from_end(consumer, call->reply_topic, nparts, deadline, &st, err, errlen)))
        goto out;

    call->produced_ns = qn_now_ns();
    rd_kafka_resp_err_t e = rd_kafka_producev(
        producer, RD_KAFKA_V_TOPIC(call->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE((void *)call->value, call->len),
        RD_KAFKA_V_KEY(call->key, call->key ? strlen(call->key) : 0),
        RD_KAFKA_V_HEADER(HDR_CORR, corr, (ssize_t)strlen(corr)), RD_KAFKA_V_END);
    if (e) {
        snprintf(err, errlen, "cannot produce to %s: %s", call->topic, rd_kafka_err2str(e));
        rc = QN_EEXTERNAL;
        goto out;
    }

    rc = QN_ETIMEDOUT;
    for (;;) {
        rd_kafka_poll(producer, 0); /* delivery report */
        if (st.delivered < 0) {
            snprintf(err, errlen, "the request was not delivered to %s: %s", call->topic,
                     st.delivery_error);
            with_last_error(err, errlen, &st);
            rc = QN_EEXTERNAL;
            break;
        }
        int64_t left = ms_left(deadline);
        if (left <= 0) {
            snprintf(err, errlen, "%s", st.delivered ? "delivered, but no reply came"
                                                     : "the request was not even acknowledged");
            with_last_error(err, errlen, &st);
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, (int)(left < 100 ? left : 100));
        if (!m) continue;
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                snprintf(st.last_error, sizeof st.last_error, "%s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        bool done = accept(m->payload, m->len, header_is(m, HDR_CORR, corr), arg);
        rd_kafka_message_destroy(m);
        if (done) {
            rc = 0;
            break;
        }
    }
out:
    if (pc) rd_kafka_conf_destroy(pc);
    if (cc) rd_kafka_conf_destroy(cc);
    if (consumer) {
        rd_kafka_consumer_close(consumer);
        rd_kafka_destroy(consumer);
    }
    if (producer) {
        /* an unacknowledged request is given up, not waited for */
        rd_kafka_purge(producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_destroy(producer);
    }
    return rc;
}
