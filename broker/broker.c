/* broker.c: see broker.h. The loop receives one message at a time, lets
 * mdp.c say what it is and table.c decide who gets what, and does the
 * sending. Bodies travel as ZeroMQ messages end to end (moved, or
 * reference-counted copies when a request is dispatched, so a retry can
 * resend it); the broker never looks inside them except to shape an error
 * reply for a quern job.
 *
 * Never: block (the ROUTER has no send HWM and is in mandatory mode, so a
 * send either goes out or fails at once for an unknown peer), crash or stop
 * serving on a malformed message, or let a request vanish without an answer
 * while the broker runs (a worker's requests are requeued or answered with
 * an error when it goes). */
#include "broker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "error.h"
#include "log.h"
#include "mdp.h"
#include "tensor.h"

#define MAX_FRAMES 64   /* more in one message is malformed */
#define RECV_BURST 256  /* messages per poll wake */
#define LOG_PER_SEC 10  /* malformed-message lines per second, the rest counted */

/* A request's own data: the client's routing id and the body frames. */
typedef struct payload {
    unsigned char *cid;
    size_t cidlen;
    int nbody;
    zmq_msg_t body[];
} payload;

struct qn_broker {
    qn_broker_opts o;
    void *sock;
    qn_brk_table *t;
    char endpoint[256];
    zmq_msg_t frames[MAX_FRAMES];
    int64_t next_hb_ms;
    int64_t log_window_ms;
    int log_count;
    long log_suppressed;
    uint64_t n_requests, n_replies, n_errors, n_malformed, n_retried;
};

static int64_t now_ms(void) { return (int64_t)(qn_now_ns() / 1000000u); }

static void payload_free(void *pv)
{
    payload *p = pv;
    if (!p) return;
    for (int i = 0; i < p->nbody; i++) zmq_msg_close(&p->body[i]);
    free(p->cid);
    free(p);
}

static void peer_str(const void *id, size_t len, char *out, size_t outlen)
{
    /* routing ids are binary (libzmq's are 5 bytes, 0x00 first) */
    const unsigned char *b = id;
    size_t w = 0;
    for (size_t i = 0; i < len && i < 16 && w + 3 < outlen; i++) w += (size_t)snprintf(out + w, outlen - w, "%02x", b[i]);
    if (w == 0 && outlen) out[0] = 0;
}

/* Malformed input is logged, but a peer that floods it must not flood the
 * log: at most LOG_PER_SEC lines a second, the rest counted and summed up. */
static void malformed(qn_broker *b, const void *id, size_t idlen, const char *why)
{
    b->n_malformed++;
    int64_t now = now_ms();
    if (now - b->log_window_ms >= 1000) {
        if (b->log_suppressed)
            QN_LOGW("broker", "%ld more malformed messages in the last second (not logged)", b->log_suppressed);
        b->log_window_ms = now;
        b->log_count = 0;
        b->log_suppressed = 0;
    }
    if (b->log_count++ >= LOG_PER_SEC) {
        b->log_suppressed++;
        return;
    }
    char peer[40];
    peer_str(id, idlen, peer, sizeof peer);
    QN_LOGW("broker", "dropped a malformed message from %s: %s", peer[0] ? peer : "?", why);
}

/* ---- sending */

/* Sends the routing id frame; -1 when the peer is unknown (gone). */
static int send_id(qn_broker *b, const void *id, size_t len)
{
    if (zmq_send(b->sock, id, len, ZMQ_SNDMORE) < 0) {
        if (zmq_errno() != EHOSTUNREACH)
            QN_LOGW("broker", "send failed: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static void send_str(qn_broker *b, const void *p, size_t len, int more)
{
    zmq_send(b->sock, p, len, more ? ZMQ_SNDMORE : 0);
}

static int send_worker_cmd(qn_broker *b, const void *id, size_t len, unsigned char cmd)
{
    if (send_id(b, id, len)) return -1;
    send_str(b, "", 0, 1);
    send_str(b, QN_MDPW_HEADER, 6, 1);
    send_str(b, &cmd, 1, 0);
    return 0;
}

/* client id, "", MDPC01, service, then either frames[lo..hi) (moved) or the
 * given strings. */
static void send_client(qn_broker *b, const payload *p, const qn_brk_service *svc, zmq_msg_t *frames,
                        int lo, int hi, const char **strs, int nstrs)
{
    if (send_id(b, p->cid, p->cidlen)) {
        QN_LOGD("broker", "client gone; reply dropped");
        return;
    }
    send_str(b, "", 0, 1);
    send_str(b, QN_MDPC_HEADER, 6, 1);
    int nbody = frames ? hi - lo : nstrs;
    send_str(b, svc->name, svc->namelen, nbody > 0);
    for (int i = 0; i < nbody; i++) {
        int more = i + 1 < nbody ? ZMQ_SNDMORE : 0;
        if (frames) {
            if (zmq_msg_send(&frames[lo + i], b->sock, more) < 0) zmq_msg_close(&frames[lo + i]);
        } else {
            send_str(b, strs[i], strlen(strs[i]), more);
        }
    }
}

/* The broker's own failure answer: a contract result for quern jobs, else
 * a status code frame and a message (schemas/broker.md). */
static void send_error(qn_broker *b, const qn_brk_service *svc, const payload *p, qn_status st, qn_code code,
                       const char *plain_code, const char *message)
{
    b->n_errors++;
    qn_mdp_frame body[MAX_FRAMES];
    int nb = p->nbody < MAX_FRAMES ? p->nbody : MAX_FRAMES;
    for (int i = 0; i < nb; i++)
        body[i] = (qn_mdp_frame){zmq_msg_data((zmq_msg_t *)&p->body[i]), zmq_msg_size((zmq_msg_t *)&p->body[i])};
    qn_buf out = {0};
    int q = qn_mdp_quern_error(body, nb, st, code, message, &out);
    if (q == 1) {
        zmq_msg_t m;
        zmq_msg_init_size(&m, out.len);
        memcpy(zmq_msg_data(&m), out.data, out.len);
        send_client(b, p, svc, &m, 0, 1, NULL, 0);
        zmq_msg_close(&m); /* no-op when sent */
    } else {
        const char *s[2] = {plain_code, message};
        send_client(b, p, svc, NULL, 0, 0, s, 2);
    }
    qn_buf_free(&out);
}

/* REQUEST to w: id, "", MDPW01, 0x02, token, "", body (ref-counted copies). */
static int send_request(qn_broker *b, qn_brk_worker *w, qn_brk_req *r)
{
    payload *p = r->payload;
    if (send_id(b, w->id, w->idlen)) return -1;
    unsigned char cmd = QN_MDPW_REQUEST, tok[QN_MDP_TOKEN_LEN];
    qn_mdp_token_put(r->seq, tok);
    send_str(b, "", 0, 1);
    send_str(b, QN_MDPW_HEADER, 6, 1);
    send_str(b, &cmd, 1, 1);
    send_str(b, tok, sizeof tok, 1);
    send_str(b, "", 0, p->nbody > 0);
    for (int i = 0; i < p->nbody; i++) {
        zmq_msg_t c;
        zmq_msg_init(&c);
        zmq_msg_copy(&c, &p->body[i]);
        if (zmq_msg_send(&c, b->sock, i + 1 < p->nbody ? ZMQ_SNDMORE : 0) < 0) zmq_msg_close(&c);
    }
    if (r->attempts > 1) b->n_retried++;
    return 0;
}

/* ---- bookkeeping with side effects */

static void answer_failed(qn_broker *b, qn_brk_service *svc, qn_brk_req *failed)
{
    while (failed) {
        qn_brk_req *r = failed;
        failed = r->next;
        char msg[160];
        snprintf(msg, sizeof msg, "the request's worker went away %d time(s); retries (%d) exhausted",
                 r->attempts, b->o.retries);
        send_error(b, svc, r->payload, QN_STATUS_ERROR, QN_CODE_INTERNAL, "500", msg);
        payload_free(r->payload);
        qn_brk_req_free(&r);
    }
}

/* Removes w; its requests are requeued or answered. Does not dispatch (the
 * caller does, once it is done walking lists). */
static void worker_lost(qn_broker *b, qn_brk_worker *w, const char *why)
{
    qn_brk_service *svc = w->svc;
    char peer[40];
    peer_str(w->id, w->idlen, peer, sizeof peer);
    int held = w->held;
    qn_brk_req *failed = NULL;
    int requeued = qn_brk_worker_remove(b->t, &w, &failed);
    if (held) QN_LOGW("broker", "worker %s of '%s' %s holding %d request(s): %d requeued", peer, svc->name, why,
                      held, requeued);
    else QN_LOGI("broker", "worker %s of '%s' %s", peer, svc->name, why);
    answer_failed(b, svc, failed);
}

static void dispatch(qn_broker *b, qn_brk_service *svc)
{
    qn_brk_worker *w;
    qn_brk_req *r;
    while ((r = qn_brk_next(b->t, svc, &w)))
        if (send_request(b, w, r) != 0) worker_lost(b, w, "is unreachable");
}

/* ---- handlers */

static void on_mmi(qn_broker *b, const qn_mdp_msg *m, int n)
{
    const char *code;
    char num[24];
    qn_mdp_frame asked = {0}; /* the service the question is about */
    int has_body = m->body < n;
    if (has_body) asked = (qn_mdp_frame){zmq_msg_data(&b->frames[m->body]), zmq_msg_size(&b->frames[m->body])};
    int is_service = m->service.len == 11 && memcmp(m->service.data, "mmi.service", 11) == 0;
    int is_workers = m->service.len == 11 && memcmp(m->service.data, "mmi.workers", 11) == 0;
    if (!is_service && !is_workers) code = "501";
    else if (!has_body) code = "400";
    else {
        qn_brk_service *s = qn_brk_service_find(b->t, asked.data, asked.len);
        if (is_service) code = qn_brk_service_workers(s) > 0 ? "200" : "404";
        else {
            snprintf(num, sizeof num, "%d", qn_brk_service_workers(s));
            code = num;
        }
    }
    if (send_id(b, m->sender.data, m->sender.len)) return;
    send_str(b, "", 0, 1);
    send_str(b, QN_MDPC_HEADER, 6, 1);
    send_str(b, m->service.data, m->service.len, 1);
    send_str(b, code, strlen(code), 0);
}

static void on_request(qn_broker *b, const qn_mdp_msg *m, int n)
{
    if (m->service.len >= 4 && memcmp(m->service.data, "mmi.", 4) == 0) {
        on_mmi(b, m, n);
        return;
    }
    b->n_requests++;
    qn_brk_service *svc;
    int nbody = n - m->body;
    payload *p = calloc(1, sizeof *p + (size_t)nbody * sizeof(zmq_msg_t));
    if (!p || !(p->cid = malloc(m->sender.len ? m->sender.len : 1))) {
        free(p);
        QN_LOGE("broker", "out of memory; request dropped");
        return;
    }
    memcpy(p->cid, m->sender.data, m->sender.len);
    p->cidlen = m->sender.len;
    for (int i = 0; i < nbody; i++) {
        zmq_msg_init(&p->body[i]);
        zmq_msg_move(&p->body[i], &b->frames[m->body + i]);
    }
    p->nbody = nbody;
    if (qn_brk_service_get(b->t, m->service.data, m->service.len, &svc) != 0) {
        QN_LOGE("broker", "out of memory; request dropped");
        payload_free(p);
        return;
    }
    qn_brk_req *r;
    int rc = qn_brk_submit(b->t, svc, p, &r);
    if (rc == QN_EFULL) {
        char msg[160];
        snprintf(msg, sizeof msg, "broker queue for '%s' is full (%lld requests waiting)", svc->name,
                 (long long)svc->queued);
        send_error(b, svc, p, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, "503", msg);
        payload_free(p);
        return;
    }
    if (rc != 0) {
        send_error(b, svc, p, QN_STATUS_ERROR, QN_CODE_INTERNAL, "500", "broker out of memory");
        payload_free(p);
        return;
    }
    dispatch(b, svc);
}

static void on_ready(qn_broker *b, const qn_mdp_msg *m)
{
    qn_brk_worker *w = qn_brk_worker_find(b->t, m->sender.data, m->sender.len);
    if (w) {
        /* RFC 7: a valid but unexpected command ends the conversation. */
        qn_brk_service *svc = w->svc;
        send_worker_cmd(b, m->sender.data, m->sender.len, QN_MDPW_DISCONNECT);
        worker_lost(b, w, "sent READY twice; disconnected");
        dispatch(b, svc);
        return;
    }
    if (m->service.len >= 4 && memcmp(m->service.data, "mmi.", 4) == 0) {
        malformed(b, m->sender.data, m->sender.len, "READY for a reserved mmi.* service");
        send_worker_cmd(b, m->sender.data, m->sender.len, QN_MDPW_DISCONNECT);
        return;
    }
    qn_brk_service *svc;
    if (qn_brk_service_get(b->t, m->service.data, m->service.len, &svc) != 0 ||
        qn_brk_worker_add(b->t, m->sender.data, m->sender.len, svc, m->credit, now_ms(), &w) != 0) {
        QN_LOGE("broker", "out of memory registering a worker");
        send_worker_cmd(b, m->sender.data, m->sender.len, QN_MDPW_DISCONNECT);
        return;
    }
    char peer[40];
    peer_str(w->id, w->idlen, peer, sizeof peer);
    QN_LOGI("broker", "worker %s ready for '%s' (credit %d, %d worker(s))", peer, svc->name, w->credit,
            svc->nworkers);
    dispatch(b, svc);
}

static void on_reply(qn_broker *b, qn_brk_worker *w, const qn_mdp_msg *m, int n)
{
    uint64_t seq;
    if (qn_mdp_token_get(m->address.data, m->address.len, &seq) != 0) {
        malformed(b, m->sender.data, m->sender.len, "REPLY with an address this broker never sent");
        return;
    }
    qn_brk_req *r = qn_brk_reply(b->t, w, seq);
    if (!r) {
        /* retried elsewhere after this worker was given up on, or forged */
        QN_LOGD("broker", "reply for a request the worker does not hold; dropped");
        return;
    }
    b->n_replies++;
    send_client(b, r->payload, w->svc, b->frames, m->body, n, NULL, 0);
    payload_free(r->payload);
    qn_brk_req_free(&r);
    dispatch(b, w->svc);
}

static void handle(qn_broker *b, int n, int overflow)
{
    qn_mdp_frame f[MAX_FRAMES];
    for (int i = 0; i < n; i++) f[i] = (qn_mdp_frame){zmq_msg_data(&b->frames[i]), zmq_msg_size(&b->frames[i])};
    qn_mdp_msg m;
    char why[128];
    if (overflow) {
        malformed(b, f[0].data, f[0].len, "more than 64 frames");
        return;
    }
    if (qn_mdp_parse(f, n, &m, why, sizeof why) != 0) {
        malformed(b, f[0].data, f[0].len, why);
        return;
    }
    if (m.kind == QN_MDP_CLIENT_REQUEST) {
        on_request(b, &m, n);
        return;
    }
    if (m.kind == QN_MDP_WORKER_READY) {
        on_ready(b, &m);
        return;
    }
    qn_brk_worker *w = qn_brk_worker_find(b->t, m.sender.data, m.sender.len);
    if (m.kind == QN_MDP_WORKER_DISCONNECT) {
        if (w) {
            qn_brk_service *svc = w->svc;
            worker_lost(b, w, "disconnected");
            dispatch(b, svc);
        }
        return;
    }
    if (!w) {
        /* RFC 7: HEARTBEAT or REPLY from a worker that is not registered
         * (expired, or the broker restarted): tell it to start over. */
        send_worker_cmd(b, m.sender.data, m.sender.len, QN_MDPW_DISCONNECT);
        return;
    }
    qn_brk_worker_seen(b->t, w, now_ms());
    if (m.kind == QN_MDP_WORKER_REPLY) on_reply(b, w, &m, n);
}

/* Receives one message into b->frames and handles it. -1: none waiting. */
static int receive_one(qn_broker *b)
{
    if (zmq_msg_recv(&b->frames[0], b->sock, ZMQ_DONTWAIT) < 0) return -1;
    int n = 1, overflow = 0;
    while (zmq_msg_more(&b->frames[n - 1 < MAX_FRAMES ? n - 1 : MAX_FRAMES - 1])) {
        if (n < MAX_FRAMES) {
            zmq_msg_recv(&b->frames[n], b->sock, 0);
            n++;
        } else {
            /* drain the rest into the last slot; the message is dropped */
            overflow = 1;
            zmq_msg_recv(&b->frames[MAX_FRAMES - 1], b->sock, 0);
        }
    }
    handle(b, n, overflow);
    /* frames moved or sent are empty now; close is cheap for them */
    for (int i = 0; i < n; i++) {
        zmq_msg_close(&b->frames[i]);
        zmq_msg_init(&b->frames[i]);
    }
    return 0;
}

static void heartbeat(qn_broker *b, int64_t now)
{
    for (qn_brk_worker *w = qn_brk_workers(b->t), *next; w; w = next) {
        next = w->gnext;
        if (w->expiry_ms <= now) worker_lost(b, w, "missed its heartbeats");
        else if (send_worker_cmd(b, w->id, w->idlen, QN_MDPW_HEARTBEAT) != 0) worker_lost(b, w, "is unreachable");
    }
    /* requeued work may now go to the survivors */
    for (qn_brk_service *s = qn_brk_services(b->t); s; s = s->gnext)
        if (s->queued) dispatch(b, s);
    qn_brk_service_gc(b->t);
}

int qn_broker_run(qn_broker *b, int stop_fd)
{
    zmq_pollitem_t items[2] = {{b->sock, 0, ZMQ_POLLIN, 0}, {NULL, stop_fd, ZMQ_POLLIN, 0}};
    int nitems = stop_fd >= 0 ? 2 : 1;
    b->next_hb_ms = now_ms() + b->o.heartbeat_ms;
    int rc = 0;
    for (;;) {
        int64_t wait = b->next_hb_ms - now_ms();
        if (wait < 0) wait = 0;
        if (zmq_poll(items, nitems, (long)wait) < 0) {
            if (zmq_errno() == EINTR) continue;
            QN_LOGE("broker", "poll failed: %s", zmq_strerror(zmq_errno()));
            rc = QN_EEXTERNAL;
            break;
        }
        if (nitems == 2 && (items[1].revents & ZMQ_POLLIN)) break;
        if (items[0].revents & ZMQ_POLLIN)
            for (int i = 0; i < RECV_BURST && receive_one(b) == 0; i++) {}
        int64_t now = now_ms();
        if (now >= b->next_hb_ms) {
            heartbeat(b, now);
            b->next_hb_ms = now + b->o.heartbeat_ms;
        }
    }
    /* Workers learn at once that this broker is gone, instead of after
     * three heartbeats. */
    for (qn_brk_worker *w = qn_brk_workers(b->t); w; w = w->gnext)
        send_worker_cmd(b, w->id, w->idlen, QN_MDPW_DISCONNECT);
    QN_LOGI("broker", "stopping: %llu requests, %llu replies, %llu retried dispatches, %llu error replies, "
            "%llu malformed messages", (unsigned long long)b->n_requests, (unsigned long long)b->n_replies,
            (unsigned long long)b->n_retried, (unsigned long long)b->n_errors, (unsigned long long)b->n_malformed);
    return rc;
}

int qn_broker_create(void *zctx, const qn_broker_opts *o, qn_broker **out)
{
    if (!o->bind || o->heartbeat_ms < 1 || o->retries < 0 || o->queue_limit < 1) return QN_EINVAL;
    qn_broker *b = calloc(1, sizeof *b);
    if (!b) return QN_ENOMEM;
    b->o = *o;
    for (int i = 0; i < MAX_FRAMES; i++) zmq_msg_init(&b->frames[i]);
    qn_brk_opts to = {.policy = o->policy, .retries = o->retries, .queue_limit = o->queue_limit,
                      .liveness_ms = (int64_t)o->heartbeat_ms * QN_BROKER_LIVENESS, .seed = o->seed};
    int rc = qn_brk_table_create(&to, &b->t);
    if (rc) goto fail;
    rc = QN_EEXTERNAL;
    b->sock = zmq_socket(zctx, ZMQ_ROUTER);
    if (!b->sock) goto fail;
    /* No send HWM: what the broker sends is bounded by what it accepted
     * (requests by credit, replies by requests), and a dropped frame would
     * be a lost request. Mandatory routing: a send to a peer that is gone
     * fails at once, so a dead worker is noticed on the next dispatch. */
    int zero = 0, one = 1, linger = 1000;
    zmq_setsockopt(b->sock, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(b->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(b->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(b->sock, o->bind) != 0) {
        QN_LOGE("broker", "cannot bind %s: %s", o->bind, zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t len = sizeof b->endpoint;
    zmq_getsockopt(b->sock, ZMQ_LAST_ENDPOINT, b->endpoint, &len);
    QN_LOGI("broker", "listening on %s (policy %s, heartbeat %d ms, retries %d, queue limit %lld)", b->endpoint,
            qn_policy_name(o->policy), o->heartbeat_ms, o->retries, (long long)o->queue_limit);
    *out = b;
    return 0;
fail:
    qn_broker_destroy(&b);
    return rc;
}

const char *qn_broker_endpoint(const qn_broker *b) { return b->endpoint; }

void qn_broker_destroy(qn_broker **pb)
{
    qn_broker *b = pb ? *pb : NULL;
    if (!b) return;
    qn_brk_table_destroy(&b->t, payload_free);
    for (int i = 0; i < MAX_FRAMES; i++) zmq_msg_close(&b->frames[i]);
    if (b->sock) zmq_close(b->sock);
    free(b);
    *pb = NULL;
}
