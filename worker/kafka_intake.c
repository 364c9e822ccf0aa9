/* kafka_intake.c: the Kafka transport's way in (kafka_internal.h):
 * assignments (partition records: kafka_partition.h), commits, decoding and
 * admitting messages (or holding them while the core is full), and
 * rebalances. Owner thread only. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kafka_internal.h"
#include "log.h"
#include "tensor.h"

_Thread_local krec *tl_rec;
_Thread_local const rd_kafka_message_t *tl_msg;

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
void kt_commit_parts(kt *t, const rd_kafka_topic_partition_list_t *only, bool sync)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (int i = 0; i < t->parts.n; i++) {
        kpart *p = t->parts.v[i];
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
                kpart *p = kpart_get(&t->parts, l->elems[i].partition);
                if (p) p->committed = -1;
            }
        } else {
            QN_LOGD("kafka", "committed %d partition(s)%s", l->cnt, sync ? " (sync)" : "");
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Async commit results (served on the IO thread's consumer poll). */
void kt_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
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
        kpart *p = kpart_get(&t->parts, offsets->elems[i].partition);
        if (p) p->committed = -1; /* the timer sends it again */
    }
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

void kt_set_paused(kt *t, bool pause)
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

    kpart *p = kpart_get(&t->parts, m->partition);
    if (p && qn_offsets_take(p->offs, m->offset) == QN_EINVAL) {
        /* The source rewound (offset reset): a new epoch for this partition. */
        QN_LOGW("kafka", "%s[%" PRId32 "] went back to offset %" PRId64 "; tracking anew", t->topic,
                m->partition, m->offset);
        if (kpart_attach(&t->parts, m->partition) == 0) {
            p = kpart_get(&t->parts, m->partition);
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
    kpart_ref(p);
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
void kt_drop_held(kt *t, const rd_kafka_topic_partition_list_t *only)
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
void kt_admit_held(kt *t)
{
    size_t i = 0;
    while (i < t->nheld && try_admit(t, t->held[i])) i++;
    if (i == 0) return; /* (held may still be NULL: nothing ever waited) */
    memmove(t->held, t->held + i, (t->nheld - i) * sizeof *t->held);
    t->nheld -= i;
}

/* A message or an event from the consumer. */
void kt_on_message(kt *t, rd_kafka_message_t *m)
{
    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            QN_LOGW("kafka", "consumer: %s", rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
        return;
    }
    if (!atomic_load(&t->intake) || !kpart_get(&t->parts, m->partition)) {
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
void kt_forward_parts(kt *t, const rd_kafka_topic_partition_list_t *l, rd_kafka_queue_t *to)
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
            kpart *p = kpart_get(&t->parts, l->elems[i].partition);
            if (p) left += qn_offsets_pending(p->offs) - p->stuck;
        }
        if (left == 0) return;
        if (qn_now_ns() > end) {
            QN_LOGW("kafka", "revocation: %" PRId64 " job(s) of the revoked partitions still in "
                    "flight after %d ms; the next owner will consume them again", left, wait_ms);
            return;
        }
        kt_process_handoffs(t);
        rd_kafka_poll(t->producer, 5);
    }
}

void kt_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kt *t = opaque;
    bool coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t aerr = 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++)
            if (kpart_attach(&t->parts, parts->elems[i].partition))
                QN_LOGE("kafka", "out of memory tracking partition %" PRId32, parts->elems[i].partition);
        kt_forward_parts(t, parts, t->jobs_q);
        if (coop) e = rd_kafka_incremental_assign(rk, parts);
        else aerr = rd_kafka_assign(rk, parts);
        if (t->paused || !atomic_load(&t->intake)) rd_kafka_pause_partitions(rk, parts);
        QN_LOGI("kafka", "assigned %d partition(s) of %s", parts->cnt, t->topic);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        bool lost = rd_kafka_assignment_lost(rk);
        kt_drop_held(t, parts);
        if (!lost) {
            wait_partitions(t, parts, t->closing ? 0 : t->revoke_wait_ms);
            kt_commit_parts(t, parts, true);
        }
        for (int i = 0; i < parts->cnt; i++) kpart_detach(&t->parts, parts->elems[i].partition);
        if (coop) e = rd_kafka_incremental_unassign(rk, parts);
        else aerr = rd_kafka_assign(rk, NULL);
        QN_LOGI("kafka", "%s %d partition(s) of %s", lost ? "lost" : "revoked", parts->cnt, t->topic);
    } else {
        QN_LOGE("kafka", "rebalance error: %s", rd_kafka_err2str(err));
        kpart_table_clear(&t->parts);
        kt_drop_held(t, NULL);
        aerr = rd_kafka_assign(rk, NULL);
    }
    if (e) {
        QN_LOGE("kafka", "incremental (un)assign failed: %s", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    if (aerr) QN_LOGE("kafka", "assign failed: %s", rd_kafka_err2str(aerr));
}
