/* kafka_transport.c: quern-worker's Kafka side (librdkafka).
 *
 * Threads. One IO thread owns the consumer and all bookkeeping: it polls
 * messages, decodes and admits them, serves rebalances, serves the
 * producer's delivery reports, and commits. Completing threads (executors,
 * or the IO thread itself for jobs answered at admission) encode the result
 * and produce it directly (rd_kafka_producev is thread-safe); anything they
 * cannot finish on the spot travels to the IO thread through a locked
 * handoff list. So the offset trackers and partition records are only ever
 * touched by the IO thread (or, at destroy, by the thread that joined it).
 *
 * At least once, out of order: each assigned partition has a qn_offsets
 * tracker; a job's offset is "done" only when every message produced for it
 * (the result, and for an invalid job its DLQ copy) was acknowledged by the
 * broker. Commits carry the tracker's commit point, on a timer, on
 * revocation (after a bounded wait for that partition's jobs) and at close.
 * A partition record is per assignment: a job finishing after its
 * partition was revoked updates a detached record nobody commits from.
 *
 * Never: drop a result silently (a failed delivery goes to the DLQ, a failed
 * DLQ write is logged and leaves the offset uncommitted so the job is
 * replayed), commit past an unacknowledged job, or reject a job for overload
 * while the partitions could be paused instead. */
#include "kafka_transport.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "error.h"
#include "log.h"
#include "offsets.h"
#include "tensor.h"

#define BURST 256 /* messages taken per poll round */
#define HDR_CORR "kafka_correlationId"
#define HDR_REPLY_TOPIC "kafka_replyTopic"
#define HDR_REPLY_PART "kafka_replyPartition"
#define DLQ_TRIES 3
#define KNOWN_TOPICS 64 /* reply topics whose producer handles are kept */

typedef struct kpart {
    int32_t partition;
    qn_offsets *offs;
    int64_t committed; /* last commit point sent; -1: none yet */
    int refs;          /* one for the assignment + one per job in flight */
    int stuck;         /* jobs whose result reached neither reply topic nor DLQ */
    bool assigned;
} kpart;

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
    rd_kafka_mock_cluster_t *mock;

    /* quern.* settings (-X quern.KEY=VALUE) */
    int64_t max_inflight;
    int commit_interval_ms, revoke_wait_ms, mock_partitions, mock_brokers, pause_after_ms;

    /* IO thread only */
    kpart **parts; /* current epoch, indexed by partition */
    int nparts;
    rd_kafka_message_t **held; /* fetched, not yet admitted (FIFO) */
    size_t nheld, held_cap;
    struct { char *name; rd_kafka_topic_t *rkt; } known[KNOWN_TOPICS]; /* ring */
    int known_next;
    qn_job *front_job; /* held[0] decoded, when front_valid */
    int front_rc;
    qn_decode_error front_err;
    bool front_valid, paused, closing;
    uint64_t next_commit_ns, blocked_since_ns;

    pthread_t tid;
    bool started;
    atomic_int intake, quit;
    atomic_int_fast64_t inflight;
    pthread_mutex_t ho_mu;
    handoff *ho_head;
    /* counters for the shutdown summary and tests */
    atomic_int_fast64_t n_taken, n_answered, n_dlq, n_reply_failed, n_stuck, n_pauses;
    /* IO thread: where a job's time goes (ns sums, maxima) */
    uint64_t s_compute, s_ack, m_compute, m_ack, s_n;
} kt;

/* Set while the IO thread admits one message: an answer given right then
 * (decode or admission error) can still see the raw message for the DLQ. */
static _Thread_local krec *tl_rec;
static _Thread_local const rd_kafka_message_t *tl_msg;
/* The thread that owns the bookkeeping (IO thread, or destroy's thread). */
static _Thread_local kt *tl_owner;

static void finish(kt *t, krec *r);

/* ---------------------------------------------------------------- logging */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    qn_log_level l = level <= 3 ? QN_LOG_ERROR : level == 4 ? QN_LOG_WARN
                   : level <= 6 ? QN_LOG_INFO : QN_LOG_DEBUG;
    if (qn_log_enabled(l)) qn_log(l, "kafka", "%s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t e = rd_kafka_fatal_error(rk, why, sizeof why);
        QN_LOGE("kafka", "%s: fatal: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(e), why);
    } else {
        QN_LOGW("kafka", "%s: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(err), reason);
    }
}

/* ------------------------------------------------------- partition records */

static kpart *part_new(int32_t partition)
{
    kpart *p = calloc(1, sizeof *p);
    if (!p || qn_offsets_create(&p->offs)) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->committed = -1;
    p->refs = 1;
    p->assigned = true;
    return p;
}

static void part_unref(kpart *p)
{
    if (--p->refs > 0) return;
    QN_ASSERT(!p->assigned);
    qn_offsets_destroy(&p->offs);
    free(p);
}

static kpart *part_get(kt *t, int32_t partition)
{
    return partition >= 0 && partition < t->nparts ? t->parts[partition] : NULL;
}

/* Makes a fresh record the partition's current one (assignment, or a
 * rewind of the source). 0 or QN_ENOMEM. */
static int part_attach(kt *t, int32_t partition)
{
    if (partition < 0) return QN_EINVAL;
    if (partition >= t->nparts) {
        int n = partition + 1 > 2 * t->nparts ? partition + 1 : 2 * t->nparts;
        kpart **np = realloc(t->parts, (size_t)n * sizeof *np);
        if (!np) return QN_ENOMEM;
        memset(np + t->nparts, 0, (size_t)(n - t->nparts) * sizeof *np);
        t->parts = np;
        t->nparts = n;
    }
    kpart *p = part_new(partition);
    if (!p) return QN_ENOMEM;
    kpart *old = t->parts[partition];
    if (old) {
        old->assigned = false;
        part_unref(old);
    }
    t->parts[partition] = p;
    return 0;
}

static void part_detach(kt *t, int32_t partition)
{
    kpart *p = part_get(t, partition);
    if (!p) return;
    t->parts[partition] = NULL;
    p->assigned = false;
    part_unref(p);
}

/* ---------------------------------------------------------------- commits */

static bool in_list(const rd_kafka_topic_partition_list_t *l, int32_t partition)
{
    if (!l) return true;
    for (int i = 0; i < l->cnt; i++)
        if (l->elems[i].partition == partition) return true;
    return false;
}

/* Commits the commit point of every current partition (or of those in
 * only) that moved since the last commit. */
static void commit_parts(kt *t, const rd_kafka_topic_partition_list_t *only, bool sync)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; i < t->nparts; i++) {
        kpart *p = t->parts[i];
        if (!p || !in_list(only, p->partition)) continue;
        int64_t c = qn_offsets_committable(p->offs);
        if (c < 0 || c <= p->committed) continue;
        rd_kafka_topic_partition_list_add(l, t->topic, p->partition)->offset = c;
        p->committed = c;
    }
    if (l->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_commit(t->consumer, l, sync ? 0 : 1);
        if (err) {
            QN_LOGW("kafka", "commit of %d partition(s) failed: %s; will retry", l->cnt,
                    rd_kafka_err2str(err));
            for (int i = 0; i < l->cnt; i++) {
                kpart *p = part_get(t, l->elems[i].partition);
                if (p) p->committed = -1;
            }
        } else {
            QN_LOGD("kafka", "committed %d partition(s)%s", l->cnt, sync ? " (sync)" : "");
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Async commit results (served on the IO thread's consumer poll). */
static void offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    kt *t = opaque;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET) return;
    for (int i = 0; offsets && i < offsets->cnt; i++) {
        rd_kafka_resp_err_t e = err ? err : offsets->elems[i].err;
        if (!e) continue;
        QN_LOGW("kafka", "commit %s[%" PRId32 "]@%" PRId64 " failed: %s; will retry",
                offsets->elems[i].topic, offsets->elems[i].partition, offsets->elems[i].offset,
                rd_kafka_err2str(e));
        kpart *p = part_get(t, offsets->elems[i].partition);
        if (p) p->committed = -1; /* the timer sends it again */
    }
}

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
    else atomic_fetch_add(&t->n_dlq, 1);
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
    if (--r->deliveries == 0) finish(t, r);
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
static void process_handoffs(kt *t)
{
    pthread_mutex_lock(&t->ho_mu);
    handoff *h = t->ho_head, *again = NULL;
    t->ho_head = NULL;
    pthread_mutex_unlock(&t->ho_mu);
    while (h) {
        handoff *next = h->next;
        if (!h->value && h->err == 0) {
            /* nothing to send (no way to address a reply): the job is done */
            finish(t, h->r);
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
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    kt *t = opaque;
    krec *r = m->_private;
    if (!r) { /* a progress message: best effort */
        if (m->err) QN_LOGW("kafka", "progress message lost: %s", rd_kafka_err2str(m->err));
        return;
    }
    if (!m->err) {
        if (--r->deliveries == 0) finish(t, r);
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
static void finish(kt *t, krec *r)
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
    part_unref(r->part);
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
static void kt_complete(qn_job *job, const qn_result *res)
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
    bool sync = tl_rec == r; /* answered inside admission: the raw message is at hand */
    bool dlq = sync && res->status == QN_STATUS_ERROR && is_dlq_code(res->code);
    r->deliveries = (addressable ? 1 : 0) + (dlq ? 1 : 0);
    if (r->deliveries == 0) {
        /* Nothing can be addressed and there is nothing to copy: done. */
        if (tl_owner == t) {
            finish(t, r);
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

/* ---------------------------------------------------------------- intake */

/* A record for a message about to be admitted, with copies of the headers
 * the reply needs. NULL on allocation failure. */
static krec *rec_new(const rd_kafka_message_t *m, kpart *p)
{
    rd_kafka_headers_t *h = NULL;
    const void *corr = NULL, *rt = NULL, *rp = NULL;
    size_t corr_len = 0, rt_len = 0, rp_len = 0;
    if (rd_kafka_message_headers(m, &h) == 0) {
        if (rd_kafka_header_get_last(h, HDR_CORR, &corr, &corr_len)) corr = NULL;
        if (rd_kafka_header_get_last(h, HDR_REPLY_TOPIC, &rt, &rt_len) || !rt || !rt_len) rt = NULL;
        if (rd_kafka_header_get_last(h, HDR_REPLY_PART, &rp, &rp_len)) rp = NULL;
    }
    krec *r = calloc(1, sizeof *r + (corr ? corr_len : 0) + (rt ? rt_len + 1 : 0));
    if (!r) return NULL;
    char *tail = (char *)(r + 1);
    r->part = p;
    r->offset = m->offset;
    r->t_take = qn_now_ns();
    r->reply_partition = RD_KAFKA_PARTITION_UA;
    if (corr) {
        r->corr = tail;
        r->corr_len = corr_len;
        memcpy(tail, corr, corr_len);
        tail += corr_len;
    }
    if (rt) {
        r->reply_hdr = tail;
        memcpy(tail, rt, rt_len);
        tail[rt_len] = 0;
    }
    if (rp && rp_len == 4) { /* Spring writes it as a big-endian int32 */
        const unsigned char *b = rp;
        r->reply_partition = (int32_t)((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 |
                                       (uint32_t)b[2] << 8 | b[3]);
    }
    return r;
}

/* A job names a reply topic this worker may not have produced to yet.
 * Produced to by name only, librdkafka 2.0 first asks for a topic's
 * metadata at its 1 s topic scan, so the first result to a new topic waited
 * ~1 s; a topic handle created here asks at once, while the job computes.
 * The last KNOWN_TOPICS topics keep their handles. IO thread. */
static void know_topic(kt *t, const char *topic)
{
    if (!strcmp(topic, t->reply_topic)) return; /* warmed at start */
    for (int i = 0; i < KNOWN_TOPICS; i++)
        if (t->known[i].name && !strcmp(t->known[i].name, topic)) return;
    int k = t->known_next;
    t->known_next = (k + 1) % KNOWN_TOPICS;
    if (t->known[k].rkt) rd_kafka_topic_destroy(t->known[k].rkt);
    free(t->known[k].name);
    t->known[k].name = strdup(topic);
    t->known[k].rkt = t->known[k].name ? rd_kafka_topic_new(t->producer, topic, NULL) : NULL;
}

static bool has_room(kt *t, int64_t rows)
{
    if (atomic_load(&t->inflight) >= t->max_inflight) return false;
    /* Rows staged in this burst will be queued at its end: count them. */
    int64_t q = qn_core_queued_rows(t->core) + qn_core_local_rows(t->local);
    /* A job larger than the whole queue never fits: the core answers it. */
    return q == 0 || q + rows <= qn_core_queue_limit(t->core);
}

static void set_paused(kt *t, bool pause)
{
    if (t->paused == pause) return;
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(t->consumer, &l) == 0 && l) {
        rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(t->consumer, l)
                                        : rd_kafka_resume_partitions(t->consumer, l);
        if (err) QN_LOGW("kafka", "%s failed: %s", pause ? "pause" : "resume", rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_destroy(l);
    }
    t->paused = pause;
    if (pause) atomic_fetch_add(&t->n_pauses, 1);
    QN_LOGD("kafka", "%s intake (queued rows %" PRId64 ", in flight %" PRId64 ")",
            pause ? "paused" : "resumed", qn_core_queued_rows(t->core),
            (int64_t)atomic_load(&t->inflight));
}

/* Tries to admit m (decoding it once; kept in the front slot between
 * tries). true: admitted (m destroyed); false: no room, m kept. */
static bool try_admit(kt *t, rd_kafka_message_t *m)
{
    if (!t->front_valid) {
        t->front_job = NULL;
        memset(&t->front_err, 0, sizeof t->front_err);
        t->front_rc = qn_job_decode(m->payload, m->len, &t->limits, &t->front_job, &t->front_err);
        t->front_valid = true;
    }
    if (t->front_rc == 0 && !has_room(t, t->front_job->rows)) return false;
    qn_job *job = t->front_job;
    t->front_job = NULL;
    t->front_valid = false;

    kpart *p = part_get(t, m->partition);
    if (p && qn_offsets_take(p->offs, m->offset) == QN_EINVAL) {
        /* The source rewound (offset reset): a new epoch for this partition. */
        QN_LOGW("kafka", "%s[%" PRId32 "] went back to offset %" PRId64 "; tracking anew", t->topic,
                m->partition, m->offset);
        if (part_attach(t, m->partition) == 0) {
            p = part_get(t, m->partition);
            qn_offsets_take(p->offs, m->offset);
        } else {
            p = NULL;
        }
    }
    krec *r = p ? rec_new(m, p) : NULL;
    if (!r) {
        /* Not ours any more, or out of memory: leave it uncommitted for a
         * later consumer. */
        QN_LOGW("kafka", "cannot take %s[%" PRId32 "]@%" PRId64 "; left uncommitted", t->topic,
                m->partition, m->offset);
        qn_job_free(&job);
        rd_kafka_message_destroy(m);
        return true;
    }
    p->refs++;
    if (job && job->reply_to) know_topic(t, job->reply_to);
    else if (r->reply_hdr) know_topic(t, r->reply_hdr);
    atomic_fetch_add(&t->inflight, 1);
    atomic_fetch_add(&t->n_taken, 1);
    if (!job) job = qn_job_new(0, 0);
    QN_ASSERT(job);
    job->origin = (qn_origin){.complete = kt_complete, .ctx = t, .data = r};
    tl_rec = r;
    tl_msg = m;
    if (t->front_rc == 0) {
        /* Staged until the end of this poll burst, so that a burst becomes
         * one batch (or runs here, for cheap models) instead of waking an
         * executor per message. */
        qn_core_submit_local(t->core, t->local, job);
    } else {
        qn_code code = t->front_err.code ? t->front_err.code : QN_CODE_BAD_MESSAGE;
        qn_core_reply_error(job, QN_STATUS_ERROR, code,
                            t->front_err.message[0] ? t->front_err.message : "undecodable message");
    }
    tl_rec = NULL;
    tl_msg = NULL;
    rd_kafka_message_destroy(m);
    return true;
}

static int hold(kt *t, rd_kafka_message_t *m)
{
    if (t->nheld == t->held_cap) {
        size_t n = t->held_cap ? 2 * t->held_cap : BURST;
        rd_kafka_message_t **nh = realloc(t->held, n * sizeof *nh);
        if (!nh) return QN_ENOMEM;
        t->held = nh;
        t->held_cap = n;
    }
    t->held[t->nheld++] = m;
    return 0;
}

/* Drops held messages (of the listed partitions, or all): they were never
 * taken, so their offsets stay uncommitted and they are consumed again. */
static void drop_held(kt *t, const rd_kafka_topic_partition_list_t *only)
{
    size_t w = 0;
    for (size_t i = 0; i < t->nheld; i++) {
        rd_kafka_message_t *m = t->held[i];
        if (in_list(only, m->partition)) {
            if (i == 0 && t->front_valid) {
                qn_job_free(&t->front_job);
                t->front_valid = false;
            }
            rd_kafka_message_destroy(m);
        } else {
            t->held[w++] = m;
        }
    }
    t->nheld = w;
}

/* Admits held messages in order while there is room. */
static void admit_held(kt *t)
{
    size_t i = 0;
    while (i < t->nheld && try_admit(t, t->held[i])) i++;
    if (i == 0) return; /* (held may still be NULL: nothing ever waited) */
    memmove(t->held, t->held + i, (t->nheld - i) * sizeof *t->held);
    t->nheld -= i;
}

/* A message or an event from the consumer. */
static void on_message(kt *t, rd_kafka_message_t *m)
{
    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            QN_LOGW("kafka", "consumer: %s", rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
        return;
    }
    if (!atomic_load(&t->intake) || !part_get(t, m->partition)) {
        rd_kafka_message_destroy(m); /* left uncommitted */
        return;
    }
    if (t->nheld == 0 && try_admit(t, m)) return;
    /* No room: it waits, decoded, at the front (with at most the rest of
     * its burst behind it) until the core drains. */
    if (hold(t, m)) {
        QN_LOGE("kafka", "out of memory holding a message; left uncommitted");
        rd_kafka_message_destroy(m);
    }
}

/* Points the partitions' message queues at jobs_q (or back, when to is
 * NULL). Done before they are assigned, so no message takes the other way. */
static void forward_parts(kt *t, const rd_kafka_topic_partition_list_t *l, rd_kafka_queue_t *to)
{
    for (int i = 0; i < l->cnt; i++) {
        rd_kafka_queue_t *pq = rd_kafka_queue_get_partition(t->consumer, l->elems[i].topic,
                                                            l->elems[i].partition);
        if (!pq) continue;
        rd_kafka_queue_forward(pq, to);
        rd_kafka_queue_destroy(pq);
    }
}

/* ------------------------------------------------------------ rebalances */

/* Waits (serving delivery reports) until the listed partitions have no job
 * awaiting acknowledgement, or wait_ms passed. */
static void wait_partitions(kt *t, const rd_kafka_topic_partition_list_t *l, int wait_ms)
{
    uint64_t end = qn_now_ns() + (uint64_t)wait_ms * 1000000u;
    for (;;) {
        int64_t left = 0;
        for (int i = 0; i < l->cnt; i++) {
            kpart *p = part_get(t, l->elems[i].partition);
            if (p) left += qn_offsets_pending(p->offs) - p->stuck;
        }
        if (left == 0) return;
        if (qn_now_ns() > end) {
            QN_LOGW("kafka", "revocation: %" PRId64 " job(s) of the revoked partitions still in "
                    "flight after %d ms; the next owner will consume them again", left, wait_ms);
            return;
        }
        process_handoffs(t);
        rd_kafka_poll(t->producer, 5);
    }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kt *t = opaque;
    bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t aerr = 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++)
            if (part_attach(t, parts->elems[i].partition))
                QN_LOGE("kafka", "out of memory tracking partition %" PRId32, parts->elems[i].partition);
        forward_parts(t, parts, t->jobs_q);
        if (coop) e = rd_kafka_incremental_assign(rk, parts);
        else aerr = rd_kafka_assign(rk, parts);
        if (t->paused || !atomic_load(&t->intake)) rd_kafka_pause_partitions(rk, parts);
        QN_LOGI("kafka", "assigned %d partition(s) of %s", parts->cnt, t->topic);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        bool lost = rd_kafka_assignment_lost(rk);
        drop_held(t, parts);
        if (!lost) {
            wait_partitions(t, parts, t->closing ? 0 : t->revoke_wait_ms);
            commit_parts(t, parts, true);
        }
        for (int i = 0; i < parts->cnt; i++) part_detach(t, parts->elems[i].partition);
        if (coop) e = rd_kafka_incremental_unassign(rk, parts);
        else aerr = rd_kafka_assign(rk, NULL);
        QN_LOGI("kafka", "%s %d partition(s) of %s", lost ? "lost" : "revoked", parts->cnt, t->topic);
    } else {
        QN_LOGE("kafka", "rebalance error: %s", rd_kafka_err2str(err));
        for (int i = 0; i < t->nparts; i++) part_detach(t, i);
        drop_held(t, NULL);
        aerr = rd_kafka_assign(rk, NULL);
    }
    if (e) {
        QN_LOGE("kafka", "incremental (un)assign failed: %s", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    if (aerr) QN_LOGE("kafka", "assign failed: %s", rd_kafka_err2str(aerr));
}

/* --------------------------------------------------------------- IO loop */

/* Backpressure, in two steps. While the core has no room, intake stops
 * reading messages (one decoded message waits at the front): librdkafka
 * keeps what it prefetched and stops fetching at its queued.max.messages.*
 * bounds, so memory stays bounded and a short stall costs nothing when it
 * ends. A stall longer than quern.pause.after.ms pauses the partitions,
 * which also frees the prefetched messages; resuming refetches them, and
 * librdkafka 2.0 notices a resume only at its fetcher's next wake-up (up
 * to ~1 s: bench/notes/kafka.md), which is why short stalls do not pause. */
static void backpressure(kt *t, bool intake, uint64_t now)
{
    if (intake && t->nheld == 0) {
        t->blocked_since_ns = 0;
        if (t->paused) set_paused(t, false);
        return;
    }
    if (!intake) {
        set_paused(t, true);
        return;
    }
    if (!t->blocked_since_ns) t->blocked_since_ns = now;
    if (now - t->blocked_since_ns >= (uint64_t)t->pause_after_ms * 1000000u) set_paused(t, true);
}

/* Connects the producer and loads the default reply and DLQ topics'
 * metadata while the consumer joins its group, so the first results do not
 * wait for a connection, an idempotent producer id and a metadata round
 * (~1 s with a backlog waiting: bench/notes/kafka.md). Best effort: with
 * the brokers down nothing is lost by going on. */
static void warm_producer(kt *t)
{
    const char *topics[] = {t->reply_topic, t->dlq_topic};
    for (int i = 0; i < 2; i++) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(t->producer, topics[i], NULL);
        if (!rkt) continue;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(t->producer, 0, rkt, &md, 5000);
        if (err) QN_LOGW("kafka", "producer: no metadata for %s yet: %s", topics[i], rd_kafka_err2str(err));
        else rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
    }
}

static void *io_main(void *arg)
{
    kt *t = arg;
    qn_thread_name("qn-kafka-io");
    tl_owner = t;
    warm_producer(t);
    rd_kafka_message_t *burst[BURST];
    while (!atomic_load(&t->quit)) {
        bool intake = atomic_load(&t->intake);
        process_handoffs(t);
        rd_kafka_poll(t->producer, 0);
        if (!intake) drop_held(t, NULL);
        admit_held(t);
        backpressure(t, intake, qn_now_ns());

        /* The group's events, and any message that came before its
         * partition's queue was forwarded. */
        for (int i = 0; i < BURST; i++) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(t->consumer, 0);
            if (!m) break;
            on_message(t, m);
        }
        if (intake && t->nheld == 0) {
            ssize_t n = rd_kafka_consume_batch_queue(t->jobs_q, 5, burst, BURST);
            for (ssize_t i = 0; i < n; i++) on_message(t, burst[i]);
        } else {
            /* Blocked: wait for results to leave. */
            rd_kafka_poll(t->producer, 1);
        }
        qn_core_local_flush(t->core, t->local);
        uint64_t now = qn_now_ns();
        if (now >= t->next_commit_ns) {
            commit_parts(t, NULL, false);
            t->next_commit_ns = now + (uint64_t)t->commit_interval_ms * 1000000u;
        }
    }
    return NULL;
}

/* -------------------------------------------------------------- lifecycle */

static int kt_start(void *self)
{
    kt *t = self;
    atomic_store(&t->intake, 1);
    t->next_commit_ns = qn_now_ns() + (uint64_t)t->commit_interval_ms * 1000000u;
    if (pthread_create(&t->tid, NULL, io_main, t) != 0) return QN_EEXTERNAL;
    t->started = true;
    return 0;
}

static void kt_stop_intake(void *self) { atomic_store(&((kt *)self)->intake, 0); }

static int64_t kt_inflight(void *self) { return atomic_load(&((kt *)self)->inflight); }

static void kt_destroy(void *self)
{
    kt *t = self;
    if (!t) return;
    atomic_store(&t->intake, 0);
    atomic_store(&t->quit, 1);
    if (t->started) pthread_join(t->tid, NULL);
    qn_core_local_destroy(t->core, &t->local);
    tl_owner = t; /* the bookkeeping is this thread's from here on */
    drop_held(t, NULL);
    if (t->producer) {
        process_handoffs(t);
        rd_kafka_flush(t->producer, 10000);
        process_handoffs(t);
        rd_kafka_flush(t->producer, 5000);
        int left = rd_kafka_outq_len(t->producer);
        if (left > 0)
            QN_LOGE("kafka", "%d message(s) still undelivered at shutdown; their jobs stay "
                    "uncommitted", left);
    }
    if (t->consumer) {
        t->closing = true;
        commit_parts(t, NULL, true);
        if (t->jobs_q) { /* its messages were never taken: uncommitted */
            rd_kafka_topic_partition_list_t *l = NULL;
            if (rd_kafka_assignment(t->consumer, &l) == 0 && l) {
                forward_parts(t, l, NULL);
                rd_kafka_topic_partition_list_destroy(l);
            }
            rd_kafka_queue_destroy(t->jobs_q);
            t->jobs_q = NULL;
        }
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(t->consumer); /* revokes: commits again */
        if (err) QN_LOGW("kafka", "consumer close: %s", rd_kafka_err2str(err));
        rd_kafka_destroy(t->consumer);
    }
    for (int i = 0; i < KNOWN_TOPICS; i++) {
        if (t->known[i].rkt) rd_kafka_topic_destroy(t->known[i].rkt);
        free(t->known[i].name);
    }
    if (t->producer) rd_kafka_destroy(t->producer);
    if (t->started)
        QN_LOGI("kafka", "closed: %" PRId64 " jobs taken, %" PRId64 " answered and committed, "
                "%" PRId64 " DLQ copies, %" PRId64 " failed deliveries, %" PRId64 " lost, "
                "%" PRId64 " pauses", (int64_t)t->n_taken, (int64_t)t->n_answered,
                (int64_t)t->n_dlq, (int64_t)t->n_reply_failed, (int64_t)t->n_stuck,
                (int64_t)t->n_pauses);
    if (t->s_n)
        QN_LOGI("kafka", "per job: taken to result produced %.1f ms mean (max %.1f), produced to "
                "acknowledged %.1f ms mean (max %.1f)", t->s_compute / 1e6 / t->s_n,
                t->m_compute / 1e6, t->s_ack / 1e6 / t->s_n, t->m_ack / 1e6);
    for (int i = 0; i < t->nparts; i++) part_detach(t, i);
    free(t->parts);
    free(t->held);
    if (t->mock) rd_kafka_mock_cluster_destroy(t->mock);
    if (t->mock_rk) rd_kafka_destroy(t->mock_rk);
    tl_owner = NULL;
    pthread_mutex_destroy(&t->ho_mu);
    free(t->topic);
    free(t->group);
    free(t->reply_topic);
    free(t->dlq_topic);
    free(t->brokers);
    free(t);
}

static const qn_transport_i kt_iface = {
    .name = "kafka",
    .start = kt_start,
    .stop_intake = kt_stop_intake,
    .inflight = kt_inflight,
    .destroy = kt_destroy,
};

/* ---------------------------------------------------------- configuration */

static int set(rd_kafka_conf_t *c, const char *k, const char *v)
{
    char err[512];
    if (rd_kafka_conf_set(c, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        QN_LOGE("kafka", "-X %s=%s: %s", k, v, err);
        return QN_EINVAL;
    }
    return 0;
}

static int own_setting(kt *t, const char *k, const char *v)
{
    static const struct { const char *name; long lo, hi; } keys[] = {
        {"max.inflight", 1, 1000000}, {"commit.interval.ms", 10, 600000},
        {"revoke.wait.ms", 0, 600000}, {"mock.partitions", 1, 1024}, {"mock.brokers", 1, 16},
        {"pause.after.ms", 0, 600000},
    };
    char *end;
    long n = strtol(v, &end, 10);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(k, keys[i].name)) continue;
        if (!*v || *end || n < keys[i].lo || n > keys[i].hi) {
            QN_LOGE("kafka", "-X quern.%s wants an integer in [%ld, %ld], got '%s'", k, keys[i].lo,
                    keys[i].hi, v);
            return QN_EINVAL;
        }
        if (i == 0) t->max_inflight = n;
        else if (i == 1) t->commit_interval_ms = (int)n;
        else if (i == 2) t->revoke_wait_ms = (int)n;
        else if (i == 3) t->mock_partitions = (int)n;
        else if (i == 4) t->mock_brokers = (int)n;
        else t->pause_after_ms = (int)n;
        return 0;
    }
    QN_LOGE("kafka", "-X quern.%s: unknown setting (max.inflight, commit.interval.ms, "
            "revoke.wait.ms, mock.partitions, mock.brokers, pause.after.ms)", k);
    return QN_EINVAL;
}

/* -X routing: quern.* is ours, consumer.* / producer.* one side, the rest
 * both. which: 0 quern pass, 1 consumer conf, 2 producer conf. */
static int apply_x(kt *t, const qn_kafka_opts *o, int which, rd_kafka_conf_t *c)
{
    for (int i = 0; i < o->nx; i++) {
        const char *kv = o->x[i], *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            QN_LOGE("kafka", "-X wants key=value, got '%s'", kv);
            return QN_EINVAL;
        }
        char key[256];
        size_t kl = (size_t)(eq - kv);
        if (kl >= sizeof key) return QN_EINVAL;
        memcpy(key, kv, kl);
        key[kl] = 0;
        const char *v = eq + 1;
        int rc = 0;
        if (!strncmp(key, "quern.", 6)) {
            if (which == 0) rc = own_setting(t, key + 6, v);
        } else if (!strncmp(key, "consumer.", 9)) {
            if (which == 1) rc = set(c, key + 9, v);
        } else if (!strncmp(key, "producer.", 9)) {
            if (which == 2) rc = set(c, key + 9, v);
        } else if (which) {
            rc = set(c, key, v);
        }
        if (rc) return rc;
    }
    return 0;
}

static rd_kafka_conf_t *base_conf(kt *t, const char *client_id)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    rd_kafka_conf_set_opaque(c, t);
    if (set(c, "bootstrap.servers", t->brokers) || set(c, "client.id", client_id)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    return c;
}

static int start_mock(kt *t)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, log_cb);
    /* The host instance never connects anywhere: only its errors matter. */
    set(c, "log_level", "3");
    t->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!t->mock_rk) {
        rd_kafka_conf_destroy(c);
        QN_LOGE("kafka", "mock cluster host: %s", err);
        return QN_EEXTERNAL;
    }
    t->mock = rd_kafka_mock_cluster_new(t->mock_rk, t->mock_brokers);
    if (!t->mock) {
        QN_LOGE("kafka", "cannot start the mock cluster");
        return QN_EEXTERNAL;
    }
    const char *topics[] = {t->topic, t->reply_topic, t->dlq_topic};
    int rf = t->mock_brokers < 3 ? t->mock_brokers : 3;
    for (int i = 0; i < 3; i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(t->mock, topics[i], t->mock_partitions, rf);
        if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            QN_LOGE("kafka", "mock topic %s: %s", topics[i], rd_kafka_err2str(e));
            return QN_EEXTERNAL;
        }
    }
    free(t->brokers);
    t->brokers = strdup(rd_kafka_mock_cluster_bootstraps(t->mock));
    if (!t->brokers) return QN_ENOMEM;
    QN_LOGI("kafka", "mock cluster: %d broker(s), topics %s %s %s with %d partitions each; "
            "bootstrap.servers=%s", t->mock_brokers, t->topic, t->reply_topic, t->dlq_topic,
            t->mock_partitions, t->brokers);
    return 0;
}

int qn_kafka_transport_create(const qn_kafka_opts *o, qn_core *core, qn_transport *out)
{
    int rc = QN_ENOMEM;
    char err[512];
    rd_kafka_conf_t *cc = NULL, *pc = NULL;
    kt *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    pthread_mutex_init(&t->ho_mu, NULL);
    t->core = core;
    if ((rc = qn_core_local_create(core, &t->local))) goto fail;
    rc = QN_ENOMEM;
    t->limits = o->limits;
    /* Past 8192 no measurable gain through the mock, and a kill -9 replays
     * at most this many: bench/notes/kafka.md. */
    t->max_inflight = 8192;
    t->commit_interval_ms = 1000;
    t->revoke_wait_ms = 5000;
    t->mock_partitions = 16;
    t->mock_brokers = 1;
    t->pause_after_ms = 1000;
    t->topic = strdup(o->topic);
    t->group = strdup(o->group);
    t->reply_topic = strdup(o->reply_topic);
    t->dlq_topic = strdup(o->dlq_topic);
    t->brokers = strdup(o->brokers);
    if (!t->topic || !t->group || !t->reply_topic || !t->dlq_topic || !t->brokers) goto fail;
    if ((rc = apply_x(t, o, 0, NULL))) goto fail;
    if (!strcmp(o->brokers, "mock") && (rc = start_mock(t))) goto fail;

    /* Consumer: defaults first, so -X overrides them. */
    rc = QN_EINVAL;
    if (!(cc = base_conf(t, "quern-worker"))) goto fail;
    if (set(cc, "group.id", t->group) ||
        set(cc, "partition.assignment.strategy", "cooperative-sticky") ||
        set(cc, "enable.auto.commit", "false") || set(cc, "enable.auto.offset.store", "false") ||
        set(cc, "auto.offset.reset", "earliest") ||
        /* The mock answers an empty fetch only when fetch.wait.max.ms runs
         * out (a real broker answers as soon as data arrives), so there the
         * wait is latency: bench/notes/kafka.md. */
        set(cc, "fetch.wait.max.ms", t->mock ? "10" : "100") ||
        apply_x(t, o, 1, cc))
        goto fail;
    rd_kafka_conf_set_rebalance_cb(cc, rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(cc, offset_commit_cb);

    /* Producer: idempotent, so broker-side retries never reorder or duplicate. */
    if (!(pc = base_conf(t, "quern-worker"))) goto fail;
    if (set(pc, "enable.idempotence", "true") || set(pc, "linger.ms", "2") ||
        apply_x(t, o, 2, pc))
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(pc, dr_cb);

    rc = QN_EEXTERNAL;
    t->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (!t->producer) {
        QN_LOGE("kafka", "producer: %s", err);
        goto fail;
    }
    pc = NULL;
    t->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!t->consumer) {
        QN_LOGE("kafka", "consumer: %s", err);
        goto fail;
    }
    cc = NULL;
    rd_kafka_poll_set_consumer(t->consumer);
    if (!(t->jobs_q = rd_kafka_queue_new(t->consumer))) goto fail;
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, t->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(t->consumer, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        QN_LOGE("kafka", "subscribe to %s: %s", t->topic, rd_kafka_err2str(e));
        goto fail;
    }
    QN_LOGI("kafka", "consuming %s in group %s from %s; results to %s (default), DLQ %s; "
            "max in flight %" PRId64 ", commit every %d ms", t->topic, t->group, t->brokers,
            t->reply_topic, t->dlq_topic, t->max_inflight, t->commit_interval_ms);
    out->iface = &kt_iface;
    out->self = t;
    return 0;
fail:
    if (cc) rd_kafka_conf_destroy(cc);
    if (pc) rd_kafka_conf_destroy(pc);
    kt_destroy(t);
    return rc;
}
