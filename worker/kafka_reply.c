/* kafka_reply.c: the Kafka transport's way out (kafka_internal.h): results
 * produced from the completing threads (executors, or the IO thread for
 * jobs answered at admission), DLQ copies, delivery reports, and what a
 * completing thread hands to the owner thread when a produce fails at once.
 * A job is finished (its offset done) when every delivery it awaits was
 * acknowledged, or finally failed. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kafka_internal.h"
#include "log.h"
#include "metrics.h"
#include "tensor.h"

/* ------------------------------------------------------------- producing */

static bool is_dlq_code(qn_code c)
{
    switch (c) {
    case QN_CODE_BAD_MESSAGE: case QN_CODE_BAD_JOB: case QN_CODE_TOO_LARGE:
    case QN_CODE_UNKNOWN_MODEL: case QN_CODE_UNKNOWN_VERSION: case QN_CODE_SHAPE_MISMATCH:
        return true;
    default:
        return false;
    }
}

static void hdr_add_str(rd_kafka_headers_t *h, const char *name, const char *v)
{
    rd_kafka_header_add(h, name, -1, v, v ? (ssize_t)strlen(v) : 0);
}

static void hdr_add_i64(rd_kafka_headers_t *h, const char *name, int64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRId64, v);
    hdr_add_str(h, name, s);
}

/* Copies value to the DLQ with the original headers plus quern.* ones naming
 * the reason and the source. The record waits for this delivery (the caller
 * counted it). Returns the immediate produce error, 0 if queued. */
static rd_kafka_resp_err_t dlq_produce(kt *t, krec *r, const void *value, size_t len,
                                       const void *key, size_t keylen,
                                       const rd_kafka_headers_t *base, const char *reason,
                                       const char *code, const char *message,
                                       const char *reply_topic)
{
    rd_kafka_headers_t *h = base ? rd_kafka_headers_copy(base) : rd_kafka_headers_new(8);
    hdr_add_str(h, "quern.dlq.reason", reason);
    hdr_add_str(h, "quern.error.code", code);
    hdr_add_str(h, "quern.error.message", message ? message : "");
    hdr_add_str(h, "quern.source.topic", t->topic);
    hdr_add_i64(h, "quern.source.partition", r->part->partition);
    hdr_add_i64(h, "quern.source.offset", r->offset);
    if (reply_topic) hdr_add_str(h, "quern.reply.topic", reply_topic);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        t->producer, RD_KAFKA_V_TOPIC(t->dlq_topic), RD_KAFKA_V_KEY(key, keylen),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(r), RD_KAFKA_V_END);
    if (err) rd_kafka_headers_destroy(h);
    else {
        atomic_fetch_add(&t->n_dlq, 1);
        qn_metrics_kafka_dlq();
    }
    return err;
}

/* One delivery of r will never be acknowledged: mark the job failed (its
 * offset stays uncommitted) once nothing else is awaited. Owner thread. */
static void delivery_lost(kt *t, krec *r, const char *why)
{
    QN_LOGE("kafka", "job at %s[%" PRId32 "]@%" PRId64 ": result reached neither its reply topic "
            "nor the DLQ (%s); its offset stays uncommitted, so it is consumed again after a "
            "restart or rebalance", t->topic, r->part->partition, r->offset, why);
    r->failed = true;
    if (--r->deliveries == 0) kt_finish(t, r);
}

/* A result could not be delivered to its reply topic: copy it to the DLQ.
 * Owner thread. */
static void reply_failed(kt *t, krec *r, const void *value, size_t len, const void *key,
                         size_t keylen, const rd_kafka_headers_t *hdrs, const char *topic,
                         const char *why)
{
    atomic_fetch_add(&t->n_reply_failed, 1);
    QN_LOGE("kafka", "result for %s[%" PRId32 "]@%" PRId64 " could not be delivered to %s: %s; "
            "copying it to %s", t->topic, r->part->partition, r->offset, topic, why, t->dlq_topic);
    rd_kafka_resp_err_t err = dlq_produce(t, r, value, len, key, keylen, hdrs, "delivery_failed",
                                          "delivery_failed", why, topic);
    if (err) delivery_lost(t, r, rd_kafka_err2str(err));
}

static void handoff_push(kt *t, handoff *h)
{
    pthread_mutex_lock(&t->ho_mu);
    h->next = t->ho_head;
    t->ho_head = h;
    pthread_mutex_unlock(&t->ho_mu);
}

static void handoff_free(handoff *h)
{
    free(h->topic);
    free(h->key);
    free(h->value);
    if (h->hdrs) rd_kafka_headers_destroy(h->hdrs);
    free(h);
}

/* Owner thread: produces the retries and DLQ copies completing threads left. */
void kt_process_handoffs(kt *t)
{
    pthread_mutex_lock(&t->ho_mu);
    handoff *h = t->ho_head, *again = NULL;
    t->ho_head = NULL;
    pthread_mutex_unlock(&t->ho_mu);
    while (h) {
        handoff *next = h->next;
        if (!h->value && h->err == 0) {
            /* nothing to send (no way to address a reply): the job is done */
            kt_finish(t, h->r);
        } else if (h->err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_resp_err_t err = rd_kafka_producev(
                t->producer, RD_KAFKA_V_TOPIC(h->topic), RD_KAFKA_V_PARTITION(h->partition),
                RD_KAFKA_V_KEY(h->key, h->keylen), RD_KAFKA_V_VALUE(h->value, h->len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_HEADERS(h->hdrs),
                RD_KAFKA_V_OPAQUE(h->r), RD_KAFKA_V_END);
            if (!err) {
                h->value = NULL; /* librdkafka owns them now */
                h->hdrs = NULL;
            } else if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                h->next = again;
                again = h;
                h = next;
                continue;
            } else {
                reply_failed(t, h->r, h->value, h->len, h->key, h->keylen, h->hdrs, h->topic,
                             rd_kafka_err2str(err));
            }
        } else {
            reply_failed(t, h->r, h->value, h->len, h->key, h->keylen, h->hdrs, h->topic,
                         rd_kafka_err2str(h->err));
        }
        handoff_free(h);
        h = next;
    }
    if (again) {
        pthread_mutex_lock(&t->ho_mu);
        handoff *last = again;
        while (last->next) last = last->next;
        last->next = t->ho_head;
        t->ho_head = again;
        pthread_mutex_unlock(&t->ho_mu);
    }
}

/* Delivery reports: owner thread (rd_kafka_poll / rd_kafka_flush). */
void kt_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    kt *t = opaque;
    krec *r = m->_private;
    if (!r) { /* a progress message: best effort */
        if (m->err) QN_LOGW("kafka", "progress message lost: %s", rd_kafka_err2str(m->err));
        return;
    }
    if (!m->err) {
        if (--r->deliveries == 0) kt_finish(t, r);
        return;
    }
    const char *topic = rd_kafka_topic_name(m->rkt);
    rd_kafka_headers_t *hdrs = NULL;
    rd_kafka_message_headers(m, &hdrs);
    if (strcmp(topic, t->dlq_topic) != 0) {
        reply_failed(t, r, m->payload, m->len, m->key, m->key_len, hdrs, topic,
                     rd_kafka_err2str(m->err));
        return;
    }
    /* A DLQ write failed after librdkafka's own retries: a few more tries. */
    if (++r->dlq_tries >= DLQ_TRIES) {
        delivery_lost(t, r, rd_kafka_err2str(m->err));
        return;
    }
    QN_LOGW("kafka", "DLQ write for %s[%" PRId32 "]@%" PRId64 " failed (%s); retrying", t->topic,
            r->part->partition, r->offset, rd_kafka_err2str(m->err));
    rd_kafka_headers_t *copy = hdrs ? rd_kafka_headers_copy(hdrs) : NULL;
    rd_kafka_resp_err_t err = rd_kafka_producev(
        t->producer, RD_KAFKA_V_TOPIC(t->dlq_topic), RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(copy), RD_KAFKA_V_OPAQUE(r), RD_KAFKA_V_END);
    if (err) {
        if (copy) rd_kafka_headers_destroy(copy);
        delivery_lost(t, r, rd_kafka_err2str(err));
    }
}

/* Everything produced for r was acknowledged (or finally failed). Owner
 * thread. */
void kt_finish(kt *t, krec *r)
{
    QN_ASSERT(tl_owner == t);
    if (r->failed) {
        r->part->stuck++;
        atomic_fetch_add(&t->n_stuck, 1);
    } else {
        int rc = qn_offsets_done(r->part->offs, r->offset);
        QN_ASSERT(rc == 0);
        uint64_t now = qn_now_ns();
        if (r->t_done) {
            uint64_t c = r->t_done - r->t_take, a = now - r->t_done;
            t->s_compute += c;
            t->s_ack += a;
            if (c > t->m_compute) t->m_compute = c;
            if (a > t->m_ack) t->m_ack = a;
            t->s_n++;
        }
        atomic_fetch_add(&t->n_answered, 1);
    }
    kpart_unref(&r->part);
    free(r);
    atomic_fetch_sub(&t->inflight, 1);
}

/* The result's key: the job id as text (decimal for integer ids). */
static const void *id_key(const qn_id *id, char *tmp, size_t tmpsz, size_t *len)
{
    if (!id || id->kind == QN_ID_NIL) return *len = 0, NULL;
    if (id->kind == QN_ID_STR) return *len = id->len, id->s;
    int n = id->kind == QN_ID_INT ? snprintf(tmp, tmpsz, "%" PRId64, id->i)
                                  : snprintf(tmp, tmpsz, "%" PRIu64, id->u);
    *len = (size_t)n;
    return tmp;
}

/* Produces an encoded result: 0, or the immediate error (buffer and headers
 * still the caller's). On success librdkafka owns body and hdrs. */
static rd_kafka_resp_err_t produce_result(kt *t, krec *r, const char *topic, const void *key,
                                          size_t keylen, qn_buf *body, rd_kafka_headers_t *hdrs)
{
    return rd_kafka_producev(t->producer, RD_KAFKA_V_TOPIC(topic),
                             RD_KAFKA_V_PARTITION(r ? r->reply_partition : RD_KAFKA_PARTITION_UA),
                             RD_KAFKA_V_KEY(key, keylen), RD_KAFKA_V_VALUE(body->data, body->len),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_HEADERS(hdrs),
                             RD_KAFKA_V_OPAQUE(r), RD_KAFKA_V_END);
}

static rd_kafka_headers_t *reply_headers(const krec *r)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(2);
    if (r->corr) rd_kafka_header_add(h, HDR_CORR, -1, r->corr, (ssize_t)r->corr_len);
    return h;
}

/* qn_complete_fn: runs on the completing thread (executor, or the IO thread
 * for jobs answered at admission). */
void kt_complete(qn_job *job, const qn_result *res)
{
    kt *t = job->origin.ctx;
    krec *r = job->origin.data;
    const char *topic = job->reply_to ? job->reply_to : r->reply_hdr ? r->reply_hdr : t->reply_topic;
    bool addressable = (res->id && res->id->kind != QN_ID_NIL) || r->corr;
    char tmp[32];
    size_t keylen;
    const void *key = id_key(res->id, tmp, sizeof tmp, &keylen);

    if (res->type != QN_RESULT_FINAL) { /* progress: not tracked, best effort */
        qn_buf body = {0};
        if (!addressable || qn_result_encode(res, &body)) {
            qn_buf_free(&body);
            return;
        }
        rd_kafka_headers_t *h = reply_headers(r);
        krec *none = NULL;
        if (rd_kafka_producev(t->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, keylen),
                              RD_KAFKA_V_VALUE(body.data, body.len),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE), RD_KAFKA_V_HEADERS(h),
                              RD_KAFKA_V_OPAQUE(none), RD_KAFKA_V_END)) {
            rd_kafka_headers_destroy(h);
            qn_buf_free(&body);
        }
        return;
    }

    job->origin.data = NULL;
    r->t_done = qn_now_ns();
    if (res->handed_back) {
        /* Stopped unfinished by shutdown (a train job): no answer, and the
         * offset stays uncommitted, so the next worker of the group runs it. */
        QN_LOGI("kafka", "job at %s[%" PRId32 "]@%" PRId64 " handed back unfinished: left uncommitted for "
                "redelivery", t->topic, r->part->partition, r->offset);
        r->failed = true;
        r->deliveries = 0;
        if (tl_owner == t) {
            kt_finish(t, r);
        } else {
            handoff *h = calloc(1, sizeof *h);
            QN_ASSERT(h);
            h->r = r;
            handoff_push(t, h);
        }
        return;
    }
    bool sync = tl_rec == r; /* answered inside admission: the raw message is at hand */
    bool dlq = sync && res->status == QN_STATUS_ERROR && is_dlq_code(res->code);
    r->deliveries = (addressable ? 1 : 0) + (dlq ? 1 : 0);
    if (r->deliveries == 0) {
        /* Nothing can be addressed and there is nothing to copy: done. */
        if (tl_owner == t) {
            kt_finish(t, r);
        } else {
            handoff *h = calloc(1, sizeof *h);
            QN_ASSERT(h);
            h->r = r;
            handoff_push(t, h);
        }
        return;
    }
    if (dlq) {
        const rd_kafka_message_t *m = tl_msg;
        rd_kafka_headers_t *orig = NULL;
        rd_kafka_message_headers(m, &orig);
        rd_kafka_resp_err_t err = dlq_produce(t, r, m->payload, m->len, m->key, m->key_len, orig,
                                              "invalid_job", qn_code_name(res->code), res->message,
                                              NULL);
        if (err) delivery_lost(t, r, rd_kafka_err2str(err));
    }
    if (!addressable) return;

    qn_buf body = {0};
    if (qn_result_encode(res, &body)) {
        qn_buf_free(&body);
        qn_result fallback = {.type = QN_RESULT_FINAL, .status = QN_STATUS_ERROR, .id = res->id,
                              .code = QN_CODE_INTERNAL, .message = "result could not be encoded"};
        QN_ASSERT(qn_result_encode(&fallback, &body) == 0); /* a few dozen bytes */
    }
    rd_kafka_headers_t *hdrs = reply_headers(r);
    rd_kafka_resp_err_t err = produce_result(t, r, topic, key, keylen, &body, hdrs);
    if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
        /* The producer would never take it: answer with why instead. */
        char msg[256];
        snprintf(msg, sizeof msg, "the result is %zu bytes, past the producer's message.max.bytes "
                 "(raise it with -X message.max.bytes=N)", body.len);
        qn_buf_reset(&body);
        qn_result small = {.type = QN_RESULT_FINAL, .status = QN_STATUS_ERROR, .id = res->id,
                           .model = res->model, .version = res->version,
                           .code = QN_CODE_TOO_LARGE, .message = msg};
        QN_ASSERT(qn_result_encode(&small, &body) == 0);
        err = produce_result(t, r, topic, key, keylen, &body, hdrs);
    }
    if (!err) return;
    /* Hand it to the IO thread: a retry (queue full) or the DLQ. */
    handoff *h = calloc(1, sizeof *h);
    QN_ASSERT(h);
    h->r = r;
    h->err = err;
    h->topic = strdup(topic);
    h->partition = r->reply_partition;
    if (keylen) {
        h->key = malloc(keylen);
        QN_ASSERT(h->key);
        memcpy(h->key, key, keylen);
    }
    h->keylen = keylen;
    h->value = body.data;
    h->len = body.len;
    h->hdrs = hdrs;
    QN_ASSERT(h->topic);
    handoff_push(t, h);
}
