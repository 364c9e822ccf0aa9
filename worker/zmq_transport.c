/* zmq_transport.c: ROUTER socket owned by one IO thread. Requests are decoded
 * and admitted on that thread; results are encoded on whichever thread
 * finished the job and travel back over an inproc PUSH/PULL pair, because a
 * ZeroMQ socket must never be used by two threads at once. The IO thread
 * forwards them, frame for frame (zero-copy), to the ROUTER.
 *
 * Clients are ROUTER peers, known by routing id, each with a count of its
 * jobs in flight (the IO thread's table, no locks): past client_inflight a
 * client's jobs are answered rejected. Replies go out with ZMQ_DONTWAIT on a
 * ROUTER_MANDATORY socket with a send high-water mark, so a client that does
 * not read costs at most sndhwm queued replies: past that the send says
 * EAGAIN and the reply is dropped and counted. A send that says EHOSTUNREACH
 * means the client's connection is gone: its jobs still queued in the core
 * are dropped then (qn_core_cancel), so they delay nobody.
 *
 * Where a departure cannot be known: ZMQ_ROUTER_NOTIFY, which would say so at
 * once, is a draft API and Debian's libzmq 4.3.4 is built without drafts
 * (zmq_has("draft") is 0, the option gives EINVAL), and its notification is
 * an empty message indistinguishable from a client's empty request; socket
 * monitor events name a file descriptor, not a routing id. So a departure is
 * seen at the first reply after it (one batch later, at most). Clients behind
 * a proxy share the proxy's connection: their departure is never seen. A
 * client that is alive and does not read is not gone: its replies are dropped
 * at the high-water mark instead. A client that reconnects with the same
 * ZMQ_ROUTING_ID before its reply is treated as the same client.
 *
 * Never: block the IO thread on a client (every ROUTER send is DONTWAIT), or
 * lose count of a job in flight (shutdown waits on that count). */
#include "zmq_transport.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "error.h"
#include "log.h"
#include "tensor.h"

#define RECV_BURST 256 /* messages handled per socket per poll round */
#define LOG_EVERY_NS 1000000000ull

/* One ROUTER peer with jobs in flight. Lives while it has jobs in flight;
 * the table holds it until it is gone or idle. */
typedef struct zpeer {
    struct zpeer *next; /* hash chain */
    uint64_t hash;
    int64_t inflight;   /* jobs taken and not yet answered (or dropped) */
    int gone;           /* its connection was seen closed: unlinked, queued jobs dropped */
    int linked;         /* in the table */
    size_t idlen;
    unsigned char id[]; /* routing id */
} zpeer;

/* What each message on the inproc pipe starts with: F final reply, P
 * progress, X a final whose reply was lost (nothing follows: count it). */
typedef struct marker {
    char kind;
    uint64_t peer;
} marker;

typedef struct zt {
    void *zctx;
    qn_core *core;
    qn_zmq_opts o;
    void *router, *pull, *push;
    pthread_mutex_t push_mu; /* the PUSH socket is shared by completing threads */
    pthread_t tid;
    int started;
    qn_core_local *local; /* direct path state, used by the IO thread only */
    atomic_int intake, quit;
    atomic_int_fast64_t inflight;
    _Atomic uint64_t stop_at_ns; /* stop_intake time + drain timeout; 0: running */
    char endpoint[256];

    /* IO thread only. */
    zpeer **buckets;
    size_t nbuckets, npeers;
    int drain_cancelled;
    zmq_msg_t frames[QN_ZMQ_MAX_ENVELOPE_FRAMES + 1];
    uint64_t n_rejected_client, n_drop_hwm, n_drop_gone, n_drop_other, n_cancel_gone,
        n_cancel_drain, n_envelope;
    uint64_t log_hwm_ns, log_gone_ns, log_env_ns;
} zt;

void qn_zmq_opts_default(qn_zmq_opts *o)
{
    o->client_inflight = QN_ZMQ_DEFAULT_CLIENT_INFLIGHT;
    o->sndhwm = QN_ZMQ_DEFAULT_SNDHWM;
    o->drain_timeout_ms = 30000;
}

/* ---- the peer table ---- */

static uint64_t id_hash(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int table_grow(zt *t)
{
    size_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    zpeer **b = calloc(nb, sizeof *b);
    if (!b) return QN_ENOMEM;
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (zpeer *p = t->buckets[i], *next; p; p = next) {
            next = p->next;
            p->next = b[p->hash & (nb - 1)];
            b[p->hash & (nb - 1)] = p;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
    return 0;
}

/* The live peer with this routing id, created if new. NULL: out of memory. */
static zpeer *peer_get(zt *t, const void *id, size_t len)
{
    uint64_t h = id_hash(id, len);
    if (t->nbuckets) {
        for (zpeer *p = t->buckets[h & (t->nbuckets - 1)]; p; p = p->next)
            if (p->hash == h && p->idlen == len && memcmp(p->id, id, len) == 0) return p;
    }
    if (t->npeers >= t->nbuckets && table_grow(t) != 0 && !t->nbuckets) return NULL;
    zpeer *p = calloc(1, sizeof *p + len);
    if (!p) return NULL;
    p->hash = h;
    p->idlen = len;
    memcpy(p->id, id, len);
    size_t k = h & (t->nbuckets - 1);
    p->next = t->buckets[k];
    t->buckets[k] = p;
    p->linked = 1;
    t->npeers++;
    return p;
}

static void peer_unlink(zt *t, zpeer *p)
{
    if (!p->linked) return;
    zpeer **pp = &t->buckets[p->hash & (t->nbuckets - 1)];
    while (*pp != p) pp = &(*pp)->next;
    *pp = p->next;
    p->linked = 0;
    t->npeers--;
}

/* One job of p ended (answered, or its reply dropped). */
static void peer_done(zt *t, zpeer *p)
{
    atomic_fetch_sub(&t->inflight, 1);
    if (--p->inflight > 0) return;
    peer_unlink(t, p);
    free(p);
}

/* ---- sending ---- */

static void zt_complete(qn_job *job, const qn_result *res);

/* The jobs of one peer (tag) of this transport (complete): other transports'
 * jobs carry tags of their own. */
static int match_peer(const qn_job *job, void *ud)
{
    return job->origin.complete == zt_complete && job->origin.tag == (uint64_t)(uintptr_t)ud;
}

static int match_transport(const qn_job *job, void *ud) { return job->origin.ctx == ud; }

/* A reply to p found its connection closed: drop p's queued work. The
 * caller holds a job of p in flight (the one whose reply failed), so the
 * answers below, which end p's other jobs, never free p. */
static void peer_gone(zt *t, zpeer *p)
{
    p->gone = 1;
    peer_unlink(t, p); /* a reconnect with the same routing id is a new client */
    int64_t n = qn_core_cancel(t->core, match_peer, p, QN_STATUS_REJECTED, QN_CODE_OVERLOADED,
                               "dropped unrun: the client's connection closed");
    if (n > 0) t->n_cancel_gone += (uint64_t)n;
    uint64_t now = qn_now_ns();
    if (n > 0 && now - t->log_gone_ns >= LOG_EVERY_NS) {
        t->log_gone_ns = now;
        QN_LOGI("zmq", "a client went away: dropped %lld of its queued jobs (%llu queued jobs of "
                "departed clients dropped so far)", (long long)n,
                (unsigned long long)t->n_cancel_gone);
    }
}

/* A send to p's routing id failed with err. */
static void send_failed(zt *t, zpeer *p, int err)
{
    uint64_t now = qn_now_ns();
    if (err == EAGAIN) {
        t->n_drop_hwm++;
        if (now - t->log_hwm_ns >= LOG_EVERY_NS) {
            t->log_hwm_ns = now;
            QN_LOGW("zmq", "a client does not read its replies: its send queue (--zmq-sndhwm %d) "
                    "is full, replies dropped (%llu so far)", t->o.sndhwm,
                    (unsigned long long)t->n_drop_hwm);
        }
    } else if (err == EHOSTUNREACH) {
        t->n_drop_gone++;
        if (p && !p->gone) peer_gone(t, p);
    } else {
        t->n_drop_other++;
        if (now - t->log_hwm_ns >= LOG_EVERY_NS) {
            t->log_hwm_ns = now;
            QN_LOGW("zmq", "reply send failed: %s (%llu replies lost so far)", zmq_strerror(err),
                    (unsigned long long)t->n_drop_other);
        }
    }
}

static void free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Sends the envelope frames, then body, to the ROUTER without blocking.
 * body.data passes to ZeroMQ (zero-copy) or is freed. IO thread. */
static void router_send(zt *t, zpeer *p, const unsigned char *env, qn_buf *body)
{
    uint32_t nframes;
    memcpy(&nframes, env, 4);
    const unsigned char *r = env + 4;
    for (uint32_t i = 0; i < nframes; i++) {
        uint32_t len;
        memcpy(&len, r, 4);
        if (zmq_send(t->router, r + 4, len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
            /* Only the routing id frame can fail: the ROUTER decides there. */
            int err = zmq_errno();
            free(body->data);
            body->data = NULL;
            send_failed(t, p, err);
            return;
        }
        r += 4 + len;
    }
    zmq_msg_t m;
    zmq_msg_init_data(&m, body->data, body->len, free_buf, NULL);
    body->data = NULL;
    if (zmq_msg_send(&m, t->router, ZMQ_DONTWAIT) < 0) {
        send_failed(t, p, zmq_errno());
        zmq_msg_close(&m);
    }
}

/* The same, onto the inproc PUSH (completing threads, under push_mu). */
static void push_send(zt *t, const unsigned char *env, qn_buf *body)
{
    uint32_t nframes;
    memcpy(&nframes, env, 4);
    const unsigned char *r = env + 4;
    for (uint32_t i = 0; i < nframes; i++) {
        uint32_t len;
        memcpy(&len, r, 4);
        zmq_send(t->push, r + 4, len, ZMQ_SNDMORE);
        r += 4 + len;
    }
    zmq_msg_t m;
    zmq_msg_init_data(&m, body->data, body->len, free_buf, NULL);
    body->data = NULL;
    if (zmq_msg_send(&m, t->push, 0) < 0) {
        QN_LOGW("zmq", "result handoff failed: %s", zmq_strerror(zmq_errno()));
        zmq_msg_close(&m);
    }
}

/* Runs on the completing thread (IO or executor). */
static void zt_complete(qn_job *job, const qn_result *res)
{
    zt *t = job->origin.ctx;
    zpeer *p = (zpeer *)(uintptr_t)job->origin.tag;
    const unsigned char *env = job->origin.data;
    int final = res->type == QN_RESULT_FINAL;
    int on_io = t->started && pthread_equal(pthread_self(), t->tid);
    qn_buf body = {0};
    if (on_io && p->gone) {
        /* Nobody to send it to (jobs dropped by peer_gone end here). */
        if (final) peer_done(t, p);
        goto out;
    }
    if (qn_result_encode(res, &body) != 0) {
        qn_buf_free(&body);
        qn_result fallback = {.type = res->type, .status = QN_STATUS_ERROR, .id = res->id,
                              .code = QN_CODE_INTERNAL, .message = "result could not be encoded"};
        if (qn_result_encode(&fallback, &body) != 0) {
            QN_LOGE("zmq", "out of memory encoding a result; reply lost");
            qn_buf_free(&body);
            /* Still counted off, or shutdown would wait for it forever. */
            if (!final) goto out;
            if (on_io) {
                peer_done(t, p);
                goto out;
            }
            marker mk = {.kind = 'X', .peer = (uint64_t)(uintptr_t)p};
            pthread_mutex_lock(&t->push_mu);
            zmq_send(t->push, &mk, sizeof mk, 0);
            pthread_mutex_unlock(&t->push_mu);
            goto out;
        }
    }
    if (on_io) {
        /* On the IO thread (errors at admission, the direct path): the
         * ROUTER is ours, send straight to it. */
        router_send(t, p, env, &body);
        if (final) peer_done(t, p);
        goto out;
    }
    marker mk = {.kind = final ? 'F' : 'P', .peer = (uint64_t)(uintptr_t)p};
    pthread_mutex_lock(&t->push_mu);
    zmq_send(t->push, &mk, sizeof mk, ZMQ_SNDMORE);
    push_send(t, env, &body);
    pthread_mutex_unlock(&t->push_mu);
out:
    if (final) {
        free(job->origin.data);
        job->origin.data = NULL;
    }
}

/* Reads and discards the rest of a multipart message on sock. */
static void discard_rest(void *sock)
{
    int more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return;
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
}

/* Forwards one result message from PULL to ROUTER. Returns 0, or -1 when
 * nothing was waiting. */
static int forward_one(zt *t)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, t->pull, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    marker mk = {0};
    QN_ASSERT(zmq_msg_size(&m) == sizeof mk);
    memcpy(&mk, zmq_msg_data(&m), sizeof mk);
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    zpeer *p = (zpeer *)(uintptr_t)mk.peer;
    int final = mk.kind != 'P';
    if (mk.kind == 'X' || !more) goto done;
    if (p->gone) {
        t->n_drop_gone += final;
        discard_rest(t->pull);
        goto done;
    }
    /* The rest of a multipart is already there. The first frame is the
     * routing id: the ROUTER decides there whether the reply can go. */
    for (int first = 1; more; first = 0) {
        zmq_msg_init(&m);
        zmq_msg_recv(&m, t->pull, 0);
        more = zmq_msg_more(&m);
        if (zmq_msg_send(&m, t->router, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
            int err = zmq_errno();
            zmq_msg_close(&m);
            if (more) discard_rest(t->pull);
            if (first || err != EAGAIN) send_failed(t, p, err);
            break;
        }
    }
done:
    if (final) peer_done(t, p);
    return 0;
}

/* Envelope blob in origin.data: uint32 nframes, then per frame uint32 len +
 * bytes. One allocation per request. */
static void *envelope_pack(zmq_msg_t *frames, int n)
{
    size_t sz = 4;
    for (int i = 0; i < n; i++) sz += 4 + zmq_msg_size(&frames[i]);
    unsigned char *p = malloc(sz), *w = p;
    if (!p) return NULL;
    uint32_t u = (uint32_t)n;
    memcpy(w, &u, 4), w += 4;
    for (int i = 0; i < n; i++) {
        u = (uint32_t)zmq_msg_size(&frames[i]);
        memcpy(w, &u, 4), w += 4;
        memcpy(w, zmq_msg_data(&frames[i]), u), w += u;
    }
    return p;
}

/* Answers a request with status/code/message without running it (the id is
 * read from body when it decodes that far). The job is counted in flight
 * already. */
static void refuse(const void *body, size_t len, const qn_origin *o, qn_status status,
                   qn_code code, const char *message)
{
    qn_job *job = NULL;
    qn_decode_error err;
    if (body) qn_job_decode(body, len, NULL, &job, &err);
    if (!job) job = qn_job_new(0, 0);
    if (!job) {
        qn_job stub;
        memset(&stub, 0, sizeof stub);
        stub.origin = *o;
        qn_result res = {.type = QN_RESULT_FINAL, .status = status, .code = code,
                         .message = message};
        o->complete(&stub, &res);
        return;
    }
    job->origin = *o;
    qn_core_reply_error(job, status, code, message);
}

/* Receives one request from the ROUTER and submits it. Returns 0, or -1
 * when nothing was waiting. */
static int receive_one(zt *t)
{
    zmq_msg_t *frames = t->frames;
    const int cap = QN_ZMQ_MAX_ENVELOPE_FRAMES + 1; /* the envelope and a body */
    zmq_msg_init(&frames[0]);
    if (zmq_msg_recv(&frames[0], t->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frames[0]);
        return -1;
    }
    int n = 1, total = 1;
    size_t all_bytes = zmq_msg_size(&frames[0]), last = all_bytes;
    int more = zmq_msg_more(&frames[0]);
    while (more) {
        /* Past cap, frames are counted and dropped: such an envelope is
         * refused, and its body is not needed for that. */
        zmq_msg_t scratch, *f = n < cap ? &frames[n] : &scratch;
        zmq_msg_init(f);
        zmq_msg_recv(f, t->router, 0);
        more = zmq_msg_more(f);
        total++;
        all_bytes += last = zmq_msg_size(f);
        if (f == &scratch) zmq_msg_close(f);
        else n++;
    }
    size_t env_bytes = all_bytes - last; /* all but the body */
    if (n < 2) {
        /* A ROUTER always puts the routing id first; a request without a
         * body frame has nothing to answer. */
        QN_LOGW("zmq", "dropping a malformed multipart request (%d frame%s)", total,
                total == 1 ? "" : "s");
        goto close;
    }
    zpeer *p = peer_get(t, zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]));
    int deep = total > cap || env_bytes > QN_ZMQ_MAX_ENVELOPE_BYTES;
    /* A too deep envelope is answered to its routing id alone: keeping it
     * whole for the reply is what the bound is there to avoid. */
    void *env = p ? envelope_pack(frames, deep ? 1 : n - 1) : NULL;
    if (!env) {
        QN_LOGE("zmq", "out of memory receiving a request; dropped");
        if (p && p->inflight == 0) {
            peer_unlink(t, p);
            free(p);
        }
        goto close;
    }
    atomic_fetch_add(&t->inflight, 1);
    p->inflight++;
    qn_origin o = {.complete = zt_complete, .ctx = t, .data = env, .tag = (uint64_t)(uintptr_t)p};
    const void *body = zmq_msg_data(&frames[n - 1]);
    size_t blen = zmq_msg_size(&frames[n - 1]);
    char msg[256];
    if (deep) {
        t->n_envelope++;
        uint64_t now = qn_now_ns();
        if (now - t->log_env_ns >= LOG_EVERY_NS) {
            t->log_env_ns = now;
            QN_LOGW("zmq", "refusing a request with an envelope of %d frames, %zu bytes (%llu so "
                    "far)", total - 1, env_bytes, (unsigned long long)t->n_envelope);
        }
        snprintf(msg, sizeof msg, "envelope of %d frames, %zu bytes: at most %d frames and %d "
                 "bytes are served", total - 1, env_bytes, QN_ZMQ_MAX_ENVELOPE_FRAMES,
                 QN_ZMQ_MAX_ENVELOPE_BYTES);
        refuse(total > n ? NULL : body, blen, &o, QN_STATUS_ERROR, QN_CODE_BAD_MESSAGE, msg);
    } else if (p->inflight > t->o.client_inflight) {
        t->n_rejected_client++;
        snprintf(msg, sizeof msg, "this client already has %d jobs in flight, the per-client "
                 "bound (--zmq-client-inflight); read replies before sending more",
                 t->o.client_inflight);
        refuse(body, blen, &o, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, msg);
    } else {
        qn_core_submit_bytes_local(t->core, t->local, body, blen, &o);
    }
close:
    for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
    return 0;
}

static void io_main(zt *t)
{
    zmq_pollitem_t items[2] = {{t->pull, 0, ZMQ_POLLIN, 0}, {t->router, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        int intake = atomic_load(&t->intake);
        if (atomic_load(&t->quit)) {
            /* destroy runs after the core stopped: every result is on the
             * pipe by now, and sends never wait. Forward them and go. */
            while (forward_one(t) == 0) {}
            break;
        }
        long wait_ms = 100;
        uint64_t stop_at = atomic_load(&t->stop_at_ns);
        if (!intake && stop_at && !t->drain_cancelled) {
            uint64_t now = qn_now_ns();
            if (now >= stop_at) {
                /* Shutdown ends within the drain timeout: what has not run
                 * by now is answered (where the client still reads) and
                 * dropped. Running batches finish; they are short. */
                int64_t n = qn_core_cancel(t->core, match_transport, t, QN_STATUS_REJECTED,
                                           QN_CODE_OVERLOADED, "worker is shutting down: the job "
                                           "did not run within its drain timeout");
                t->drain_cancelled = 1;
                if (n > 0) {
                    t->n_cancel_drain += (uint64_t)n;
                    QN_LOGW("zmq", "shutdown: %lld queued jobs not run within %d ms: answered "
                            "rejected and dropped", (long long)n, t->o.drain_timeout_ms);
                }
            } else if ((stop_at - now) / 1000000u < (uint64_t)wait_ms) {
                wait_ms = (long)((stop_at - now) / 1000000u) + 1;
            }
        }
        int rc = zmq_poll(items, intake ? 2 : 1, wait_ms);
        if (rc < 0 && zmq_errno() != EINTR) {
            QN_LOGE("zmq", "poll failed: %s", zmq_strerror(zmq_errno()));
            break;
        }
        /* Results first: they free memory and clients wait on them. */
        for (int i = 0; i < RECV_BURST && forward_one(t) == 0; i++) {}
        if (intake && (items[1].revents & ZMQ_POLLIN)) {
            for (int i = 0; i < RECV_BURST && receive_one(t) == 0; i++) {}
            /* Cheap jobs staged during the burst run here, as one batch. */
            qn_core_local_flush(t->core, t->local);
        }
    }
}

static void *io_thread(void *arg)
{
    qn_thread_name("qn-zmq-io");
    io_main(arg);
    return NULL;
}

static int zt_start(void *self)
{
    zt *t = self;
    atomic_store(&t->intake, 1);
    if (pthread_create(&t->tid, NULL, io_thread, t) != 0) return QN_EEXTERNAL;
    t->started = 1;
    return 0;
}

static void zt_stop_intake(void *self)
{
    zt *t = self;
    uint64_t at = qn_now_ns() + (uint64_t)t->o.drain_timeout_ms * 1000000u;
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&t->stop_at_ns, &zero, at ? at : 1);
    atomic_store(&t->intake, 0);
}

static int64_t zt_inflight(void *self) { return atomic_load(&((zt *)self)->inflight); }

static void zt_destroy(void *self)
{
    zt *t = self;
    if (!t) return;
    atomic_store(&t->intake, 0);
    atomic_store(&t->quit, 1);
    if (t->started) pthread_join(t->tid, NULL);
    qn_core_local_destroy(t->core, &t->local);
    if (t->started) {
        int64_t left = atomic_load(&t->inflight);
        if (left) QN_LOGW("zmq", "%lld jobs still counted in flight at close", (long long)left);
        QN_LOGI("zmq", "replies dropped: %llu to clients not reading, %llu to clients gone, %llu "
                "other; jobs dropped unrun: %llu of departed clients, %llu at the drain timeout; "
                "%llu rejected by the per-client bound, %llu envelopes refused",
                (unsigned long long)t->n_drop_hwm, (unsigned long long)t->n_drop_gone,
                (unsigned long long)t->n_drop_other, (unsigned long long)t->n_cancel_gone,
                (unsigned long long)t->n_cancel_drain, (unsigned long long)t->n_rejected_client,
                (unsigned long long)t->n_envelope);
    }
    if (t->router) {
        /* Replies still queued get what is left of the drain time (at most
         * 2 s), so that closing never outlasts it. */
        uint64_t stop_at = atomic_load(&t->stop_at_ns), now = qn_now_ns();
        int linger = stop_at > now ? (int)((stop_at - now) / 1000000u) : 0;
        if (linger > 2000) linger = 2000;
        zmq_setsockopt(t->router, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(t->router);
    }
    if (t->push) zmq_close(t->push);
    if (t->pull) zmq_close(t->pull);
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (zpeer *p = t->buckets[i], *next; p; p = next) {
            next = p->next;
            free(p);
        }
    }
    free(t->buckets);
    pthread_mutex_destroy(&t->push_mu);
    free(t);
}

static const qn_transport_i zt_iface = {
    .name = "zmq",
    .start = zt_start,
    .stop_intake = zt_stop_intake,
    .inflight = zt_inflight,
    .destroy = zt_destroy,
};

int qn_zmq_transport_create(void *zctx, const char *endpoint, const qn_zmq_opts *opts,
                            qn_core *core, qn_transport *out)
{
    qn_zmq_opts o;
    if (opts) o = *opts;
    else qn_zmq_opts_default(&o);
    if (o.client_inflight < 1 || o.sndhwm < 1 || o.drain_timeout_ms < 0) return QN_EINVAL;
    zt *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->zctx = zctx;
    t->core = core;
    t->o = o;
    pthread_mutex_init(&t->push_mu, NULL);
    if (qn_core_local_create(core, &t->local) != 0) {
        QN_LOGE("zmq", "cannot create a backend context for the IO thread");
        goto fail;
    }
    int zero = 0, one = 1, linger = 2000;
    char inproc[64];
    snprintf(inproc, sizeof inproc, "inproc://quern-results-%p", (void *)t);

    t->router = zmq_socket(zctx, ZMQ_ROUTER);
    t->pull = zmq_socket(zctx, ZMQ_PULL);
    t->push = zmq_socket(zctx, ZMQ_PUSH);
    if (!t->router || !t->pull || !t->push) goto zfail;
    /* Per client, at most sndhwm replies wait for it to read; MANDATORY makes
     * a full queue (EAGAIN) and a closed connection (EHOSTUNREACH) visible to
     * the DONTWAIT sends, instead of a silent drop or a stalled thread. */
    if (zmq_setsockopt(t->router, ZMQ_SNDHWM, &t->o.sndhwm, sizeof t->o.sndhwm) != 0 ||
        zmq_setsockopt(t->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0)
        goto zfail;
    zmq_setsockopt(t->router, ZMQ_LINGER, &linger, sizeof linger);
    /* The inproc pipe is bounded by the jobs in flight (the core's queue
     * limit and the per-client bound), and the IO thread drains it first. */
    zmq_setsockopt(t->pull, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(t->push, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(t->pull, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(t->push, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(t->router, endpoint) != 0) {
        QN_LOGE("zmq", "cannot bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t len = sizeof t->endpoint;
    zmq_getsockopt(t->router, ZMQ_LAST_ENDPOINT, t->endpoint, &len);
    if (zmq_bind(t->pull, inproc) != 0 || zmq_connect(t->push, inproc) != 0) goto zfail;
    QN_LOGI("zmq", "listening on %s (per client: %d jobs in flight, %d queued replies)",
            t->endpoint, t->o.client_inflight, t->o.sndhwm);
    out->iface = &zt_iface;
    out->self = t;
    return 0;
zfail:
    QN_LOGE("zmq", "socket setup failed: %s", zmq_strerror(zmq_errno()));
fail:
    zt_destroy(t);
    return QN_EEXTERNAL;
}
