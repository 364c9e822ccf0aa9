/* mdp_transport.c: one IO thread owns a DEALER per service (model) and the
 * PULL end of an inproc pair; results, encoded on whichever thread finished
 * the job, come back over it, because a ZeroMQ socket must never be used by
 * two threads. Per service: READY with credit, HEARTBEAT each interval,
 * REQUEST bodies into the core, REPLY with the client address the broker
 * sent. A connection that fell silent for 3 intervals, or got DISCONNECT, is
 * replaced by a new socket (a new generation: replies of the old one are
 * dropped, the broker has given those requests to someone else already).
 *
 * Never: answer a request twice, block the IO thread on compute, or stop
 * heartbeating while jobs run (the broker would retry them elsewhere). */
#include "mdp_transport.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "error.h"
#include "log.h"
#include "tensor.h"

#define RECV_BURST 256
#define LIVENESS 3
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define ADDR_MAX 255
static const char MDPW[] = "MDPW01";
enum { CMD_READY = 1, CMD_REQUEST = 2, CMD_REPLY = 3, CMD_HEARTBEAT = 4, CMD_DISCONNECT = 5 };

typedef struct svc_conn {
    char name[QN_MODEL_NAME_MAX + 1];
    void *sock;               /* NULL while waiting to reconnect */
    uint32_t gen;             /* bumped per new socket */
    int64_t last_heard_ms, next_hb_ms, reconnect_at_ms, backoff_ms;
} svc_conn;

/* origin.data of a job: where its reply goes */
typedef struct reply_to {
    uint32_t svc, gen;
    uint32_t addr_len;
    unsigned char addr[];
} reply_to;

typedef struct mt {
    void *zctx;
    qn_core *core;
    qn_registry *reg;
    qn_mdp_opts o;
    char endpoint[256];
    svc_conn *svcs; /* IO thread only */
    int nsvcs, capsvcs;
    void *pull, *push;
    pthread_mutex_t push_mu;
    pthread_t tid;
    int started;
    qn_core_local *local;
    atomic_int intake, quit;
    atomic_int_fast64_t inflight;
    int64_t next_rescan_ms;
    uint64_t dropped_draining;
} mt;

static int64_t now_ms(void) { return (int64_t)(qn_now_ns() / 1000000u); }

static void free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static void send_cmd(void *sock, unsigned char cmd, int more)
{
    zmq_send(sock, "", 0, ZMQ_SNDMORE);
    zmq_send(sock, MDPW, 6, ZMQ_SNDMORE);
    zmq_send(sock, &cmd, 1, more ? ZMQ_SNDMORE : 0);
}

/* REPLY on s: "", MDPW01, 0x03, addr, "", body (body.data passes to ZeroMQ) */
static void send_reply(void *sock, const reply_to *rt, qn_buf *body)
{
    send_cmd(sock, CMD_REPLY, 1);
    zmq_send(sock, rt->addr, rt->addr_len, ZMQ_SNDMORE);
    zmq_send(sock, "", 0, ZMQ_SNDMORE);
    zmq_msg_t m;
    zmq_msg_init_data(&m, body->data, body->len, free_buf, NULL);
    body->data = NULL;
    if (zmq_msg_send(&m, sock, 0) < 0) {
        QN_LOGW("mdp", "reply send failed: %s", zmq_strerror(zmq_errno()));
        zmq_msg_close(&m);
    }
}

/* ---- connections (IO thread) */

static void conn_close(mt *t, svc_conn *s, const char *why)
{
    if (!s->sock) return;
    zmq_close(s->sock);
    s->sock = NULL;
    s->reconnect_at_ms = now_ms() + s->backoff_ms;
    QN_LOGW("mdp", "service '%s': %s; reconnecting in %lld ms", s->name, why, (long long)s->backoff_ms);
    s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
    (void)t;
}

static void conn_open(mt *t, svc_conn *s)
{
    void *sock = zmq_socket(t->zctx, ZMQ_DEALER);
    if (!sock) {
        QN_LOGE("mdp", "socket: %s", zmq_strerror(zmq_errno()));
        s->reconnect_at_ms = now_ms() + s->backoff_ms;
        return;
    }
    int zero = 0, linger = 1000;
    /* replies are bounded by the credit; never drop one at a HWM */
    zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, t->o.endpoint) != 0) {
        QN_LOGE("mdp", "cannot connect to %s: %s", t->o.endpoint, zmq_strerror(zmq_errno()));
        zmq_close(sock);
        s->reconnect_at_ms = now_ms() + BACKOFF_MAX_MS;
        return;
    }
    s->sock = sock;
    s->gen++;
    char credit[32];
    int n = snprintf(credit, sizeof credit, "credit=%d", t->o.credit);
    send_cmd(sock, CMD_READY, 1);
    zmq_send(sock, s->name, strlen(s->name), ZMQ_SNDMORE);
    zmq_send(sock, credit, (size_t)n, 0);
    int64_t now = now_ms();
    s->last_heard_ms = now;
    s->next_hb_ms = now + t->o.heartbeat_ms;
    QN_LOGI("mdp", "service '%s': READY to %s (credit %d)", s->name, t->o.endpoint, t->o.credit);
}

static void add_service(void *ud, const char *name, int64_t latest)
{
    (void)latest;
    mt *t = ud;
    for (int i = 0; i < t->nsvcs; i++)
        if (strcmp(t->svcs[i].name, name) == 0) return;
    if (t->nsvcs == t->capsvcs) {
        int ncap = t->capsvcs ? t->capsvcs * 2 : 8;
        svc_conn *n = realloc(t->svcs, (size_t)ncap * sizeof *n);
        if (!n) {
            QN_LOGE("mdp", "out of memory adding service '%s'", name);
            return;
        }
        t->svcs = n;
        t->capsvcs = ncap;
    }
    svc_conn *s = &t->svcs[t->nsvcs++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->backoff_ms = BACKOFF_MIN_MS;
    s->reconnect_at_ms = 0; /* at once */
}

/* ---- results */

/* Runs on the completing thread. MDP has one reply per request, so only the
 * final result goes back; progress messages (train jobs) are not sent. */
static void mt_complete(qn_job *job, const qn_result *res)
{
    mt *t = job->origin.ctx;
    reply_to *rt = job->origin.data;
    if (res->type != QN_RESULT_FINAL) return;
    qn_buf body = {0};
    if (qn_result_encode(res, &body) != 0) {
        qn_buf_free(&body);
        qn_result fallback = {.type = res->type, .status = QN_STATUS_ERROR, .id = res->id,
                              .code = QN_CODE_INTERNAL, .message = "result could not be encoded"};
        if (qn_result_encode(&fallback, &body) != 0) {
            QN_LOGE("mdp", "out of memory encoding a result; the broker will retry it");
            qn_buf_free(&body);
            goto out;
        }
    }
    if (t->started && pthread_equal(pthread_self(), t->tid)) {
        svc_conn *s = &t->svcs[rt->svc];
        if (s->sock && s->gen == rt->gen) send_reply(s->sock, rt, &body);
        qn_buf_free(&body);
        atomic_fetch_sub(&t->inflight, 1);
        goto out;
    }
    pthread_mutex_lock(&t->push_mu);
    zmq_send(t->push, rt, sizeof *rt + rt->addr_len, ZMQ_SNDMORE);
    zmq_msg_t m;
    zmq_msg_init_data(&m, body.data, body.len, free_buf, NULL);
    if (zmq_msg_send(&m, t->push, 0) < 0) zmq_msg_close(&m);
    pthread_mutex_unlock(&t->push_mu);
out:
    free(job->origin.data);
    job->origin.data = NULL;
}

/* Forwards one result from PULL to its service's DEALER. -1: none waiting. */
static int forward_one(mt *t)
{
    zmq_msg_t head, body;
    zmq_msg_init(&head);
    if (zmq_msg_recv(&head, t->pull, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&head);
        return -1;
    }
    zmq_msg_init(&body);
    zmq_msg_recv(&body, t->pull, 0);
    const reply_to *rt = zmq_msg_data(&head);
    svc_conn *s = (int)rt->svc < t->nsvcs ? &t->svcs[rt->svc] : NULL;
    if (s && s->sock && s->gen == rt->gen) {
        send_cmd(s->sock, CMD_REPLY, 1);
        zmq_send(s->sock, rt->addr, rt->addr_len, ZMQ_SNDMORE);
        zmq_send(s->sock, "", 0, ZMQ_SNDMORE);
        if (zmq_msg_send(&body, s->sock, 0) < 0) zmq_msg_close(&body);
    } else {
        QN_LOGD("mdp", "reply for an earlier connection dropped (the broker retried it)");
        zmq_msg_close(&body);
    }
    zmq_msg_close(&head);
    atomic_fetch_sub(&t->inflight, 1);
    return 0;
}

/* ---- requests */

static void answer_bad_body(svc_conn *s, zmq_msg_t *addr)
{
    qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_ERROR, .code = QN_CODE_BAD_MESSAGE,
                     .message = "a request to a quern worker carries one body frame: a msgpack job"};
    qn_buf body = {0};
    size_t alen = zmq_msg_size(addr);
    reply_to *rt = malloc(sizeof *rt + alen);
    if (rt && qn_result_encode(&res, &body) == 0) {
        rt->addr_len = (uint32_t)alen;
        memcpy(rt->addr, zmq_msg_data(addr), alen);
        send_reply(s->sock, rt, &body);
    } else {
        QN_LOGE("mdp", "out of memory answering a malformed request");
    }
    qn_buf_free(&body);
    free(rt);
}

/* Receives and handles one message on s. -1: none waiting (or s closed). */
static int receive_one(mt *t, int idx)
{
    svc_conn *s = &t->svcs[idx];
    if (!s->sock) return -1;
    zmq_msg_t f[8];
    int n = 0, more = 1;
    zmq_msg_init(&f[0]);
    if (zmq_msg_recv(&f[0], s->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&f[0]);
        return -1;
    }
    n = 1;
    more = zmq_msg_more(&f[0]);
    int overflow = 0;
    while (more) {
        zmq_msg_t *m = &f[n < 8 ? n : 7];
        if (n >= 8) {
            zmq_msg_close(m);
            overflow = 1;
        }
        zmq_msg_init(m);
        zmq_msg_recv(m, s->sock, 0);
        more = zmq_msg_more(m);
        if (n < 8) n++;
    }
    s->last_heard_ms = now_ms();
    s->backoff_ms = BACKOFF_MIN_MS; /* a broker is there */
    const unsigned char *cmd = n >= 3 && zmq_msg_size(&f[2]) == 1 ? zmq_msg_data(&f[2]) : NULL;
    if (overflow || n < 3 || zmq_msg_size(&f[0]) != 0 || zmq_msg_size(&f[1]) != 6 ||
        memcmp(zmq_msg_data(&f[1]), MDPW, 6) != 0 || !cmd) {
        QN_LOGW("mdp", "service '%s': dropped a malformed message from the broker", s->name);
    } else if (*cmd == CMD_DISCONNECT) {
        /* RFC 7: start over on a new socket (after the backoff, so a broker
         * that keeps refusing us is not hammered) */
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
        conn_close(t, s, "broker sent DISCONNECT");
        return -1;
    } else if (*cmd == CMD_REQUEST) {
        if (n < 5 || zmq_msg_size(&f[4]) != 0 || zmq_msg_size(&f[3]) > ADDR_MAX) {
            QN_LOGW("mdp", "service '%s': dropped a REQUEST without client address and delimiter", s->name);
        } else if (n != 6) {
            /* Addressable but not one body frame (a plain MDP client's
             * request): answer it, or it would hold a unit of our credit at
             * the broker for good. */
            answer_bad_body(s, &f[3]);
        } else if (!atomic_load(&t->intake)) {
            /* Draining: not taken. The broker still counts it as ours and
             * gives it to another worker when our DISCONNECT arrives. */
            t->dropped_draining++;
        } else {
            size_t alen = zmq_msg_size(&f[3]);
            reply_to *rt = malloc(sizeof *rt + alen);
            if (!rt) {
                QN_LOGE("mdp", "out of memory receiving a request; the broker will retry it");
            } else {
                rt->svc = (uint32_t)idx;
                rt->gen = s->gen;
                rt->addr_len = (uint32_t)alen;
                memcpy(rt->addr, zmq_msg_data(&f[3]), alen);
                atomic_fetch_add(&t->inflight, 1);
                qn_origin o = {.complete = mt_complete, .ctx = t, .data = rt};
                qn_core_submit_bytes_local(t->core, t->local, zmq_msg_data(&f[5]), zmq_msg_size(&f[5]), &o);
            }
        }
    }
    /* HEARTBEAT: being heard from was the point */
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
    return 0;
}

/* ---- the loop */

static void timers(mt *t, int64_t now)
{
    if (now >= t->next_rescan_ms && atomic_load(&t->intake)) {
        qn_registry_each_name(t->reg, add_service, t);
        t->next_rescan_ms = now + t->o.rescan_ms;
    }
    for (int i = 0; i < t->nsvcs; i++) {
        svc_conn *s = &t->svcs[i];
        if (!s->sock) {
            if (now >= s->reconnect_at_ms && atomic_load(&t->intake)) conn_open(t, s);
            continue;
        }
        if (now - s->last_heard_ms > (int64_t)LIVENESS * t->o.heartbeat_ms) {
            conn_close(t, s, "broker silent for 3 heartbeats");
            continue;
        }
        if (now >= s->next_hb_ms) {
            send_cmd(s->sock, CMD_HEARTBEAT, 0);
            s->next_hb_ms = now + t->o.heartbeat_ms;
        }
    }
}

static void *io_main(void *arg)
{
    mt *t = arg;
    qn_thread_name("qn-mdp-io");
    zmq_pollitem_t *items = NULL;
    int *map = NULL, capitems = 0;
    for (;;) {
        if (atomic_load(&t->quit) && atomic_load(&t->inflight) == 0) break;
        int64_t now = now_ms();
        timers(t, now);
        if (capitems < t->nsvcs + 1) {
            capitems = t->nsvcs + 8;
            zmq_pollitem_t *ni = realloc(items, (size_t)capitems * sizeof *ni);
            int *nm = realloc(map, (size_t)capitems * sizeof *nm);
            if (ni) items = ni;
            if (nm) map = nm;
            if (!ni || !nm) {
                QN_LOGE("mdp", "out of memory in the IO loop");
                break;
            }
        }
        int ni = 0;
        items[ni++] = (zmq_pollitem_t){t->pull, 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < t->nsvcs; i++)
            if (t->svcs[i].sock) {
                map[ni] = i;
                items[ni++] = (zmq_pollitem_t){t->svcs[i].sock, 0, ZMQ_POLLIN, 0};
            }
        /* wake for the next heartbeat at the latest; 100 ms bounds the rest
         * (reconnects, rescans, quit) */
        long wait = 100;
        for (int i = 0; i < t->nsvcs; i++)
            if (t->svcs[i].sock && t->svcs[i].next_hb_ms - now < wait)
                wait = (long)(t->svcs[i].next_hb_ms - now > 0 ? t->svcs[i].next_hb_ms - now : 0);
        int rc = zmq_poll(items, ni, wait);
        if (rc < 0 && zmq_errno() != EINTR) {
            QN_LOGE("mdp", "poll failed: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (rc <= 0) continue;
        for (int i = 0; i < RECV_BURST && forward_one(t) == 0; i++) {}
        for (int k = 1; k < ni; k++) {
            if (!(items[k].revents & ZMQ_POLLIN)) continue;
            for (int i = 0; i < RECV_BURST && receive_one(t, map[k]) == 0; i++) {}
        }
        /* cheap jobs staged during the bursts run here, as one batch */
        qn_core_local_flush(t->core, t->local);
    }
    /* Everything we took is answered: now tell the broker we are going, so
     * it retries elsewhere whatever it sent us since intake stopped. */
    for (int i = 0; i < t->nsvcs; i++)
        if (t->svcs[i].sock) {
            send_cmd(t->svcs[i].sock, CMD_DISCONNECT, 0);
            zmq_close(t->svcs[i].sock);
            t->svcs[i].sock = NULL;
        }
    if (t->dropped_draining)
        QN_LOGI("mdp", "%llu request(s) that arrived while draining were left to the broker to retry",
                (unsigned long long)t->dropped_draining);
    free(items);
    free(map);
    return NULL;
}

static int mt_start(void *self)
{
    mt *t = self;
    atomic_store(&t->intake, 1);
    if (pthread_create(&t->tid, NULL, io_main, t) != 0) return QN_EEXTERNAL;
    t->started = 1;
    return 0;
}

static void mt_stop_intake(void *self) { atomic_store(&((mt *)self)->intake, 0); }
static int64_t mt_inflight(void *self) { return atomic_load(&((mt *)self)->inflight); }

static void mt_destroy(void *self)
{
    mt *t = self;
    if (!t) return;
    atomic_store(&t->intake, 0);
    atomic_store(&t->quit, 1);
    if (t->started) pthread_join(t->tid, NULL);
    qn_core_local_destroy(t->core, &t->local);
    for (int i = 0; i < t->nsvcs; i++)
        if (t->svcs[i].sock) zmq_close(t->svcs[i].sock);
    free(t->svcs);
    if (t->push) zmq_close(t->push);
    if (t->pull) zmq_close(t->pull);
    pthread_mutex_destroy(&t->push_mu);
    free(t);
}

static const qn_transport_i mt_iface = {
    .name = "mdp",
    .start = mt_start,
    .stop_intake = mt_stop_intake,
    .inflight = mt_inflight,
    .destroy = mt_destroy,
};

int qn_mdp_transport_create(void *zctx, const qn_mdp_opts *o, qn_core *core, qn_registry *reg,
                            qn_transport *out)
{
    if (!o->endpoint || o->credit < 1 || o->credit > 65536 || o->heartbeat_ms < 1 || o->rescan_ms < 1)
        return QN_EINVAL;
    mt *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->zctx = zctx;
    t->core = core;
    t->reg = reg;
    t->o = *o;
    snprintf(t->endpoint, sizeof t->endpoint, "%s", o->endpoint);
    t->o.endpoint = t->endpoint;
    pthread_mutex_init(&t->push_mu, NULL);
    if (qn_core_local_create(core, &t->local) != 0) {
        QN_LOGE("mdp", "cannot create a backend context for the IO thread");
        goto fail;
    }
    int zero = 0;
    char inproc[64];
    snprintf(inproc, sizeof inproc, "inproc://quern-mdp-results-%p", (void *)t);
    t->pull = zmq_socket(zctx, ZMQ_PULL);
    t->push = zmq_socket(zctx, ZMQ_PUSH);
    if (!t->pull || !t->push) goto zfail;
    zmq_setsockopt(t->pull, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(t->push, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(t->pull, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(t->push, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(t->pull, inproc) != 0 || zmq_connect(t->push, inproc) != 0) goto zfail;
    QN_LOGI("mdp", "serving through the broker at %s (credit %d, heartbeat %d ms)", t->endpoint, o->credit,
            o->heartbeat_ms);
    out->iface = &mt_iface;
    out->self = t;
    return 0;
zfail:
    QN_LOGE("mdp", "socket setup failed: %s", zmq_strerror(zmq_errno()));
fail:
    mt_destroy(t);
    return QN_EEXTERNAL;
}
