/* zmq_transport.c: ROUTER socket owned by one IO thread. Requests are decoded
 * and admitted on that thread; results are encoded on whichever thread
 * finished the job and travel back over an inproc PUSH/PULL pair, because a
 * ZeroMQ socket must never be used by two threads at once. The IO thread
 * forwards them, frame for frame (zero-copy), to the ROUTER.
 *
 * Never: block the IO thread on compute, or drop a result silently (a peer
 * that went away is the only reason a reply is not delivered). */
#include "zmq_transport.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "error.h"
#include "log.h"

#define RECV_BURST 256 /* messages handled per socket per poll round */

typedef struct zt {
    void *zctx;
    qn_core *core;
    void *router, *pull, *push;
    pthread_mutex_t push_mu; /* the PUSH socket is shared by completing threads */
    pthread_t tid;
    int started;
    qn_core_local *local; /* direct path state, used by the IO thread only */
    atomic_int intake, quit;
    atomic_int_fast64_t inflight;
    char endpoint[256];
} zt;

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

static void free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Sends the envelope frames, then body (ownership of body.data passes to
 * ZeroMQ: zero-copy). */
static void send_reply(void *sock, const unsigned char *env, const qn_buf *body)
{
    uint32_t nframes;
    memcpy(&nframes, env, 4);
    const unsigned char *r = env + 4;
    for (uint32_t i = 0; i < nframes; i++) {
        uint32_t len;
        memcpy(&len, r, 4);
        zmq_send(sock, r + 4, len, ZMQ_SNDMORE);
        r += 4 + len;
    }
    zmq_msg_t m;
    zmq_msg_init_data(&m, body->data, body->len, free_buf, NULL);
    if (zmq_msg_send(&m, sock, 0) < 0) {
        QN_LOGW("zmq", "reply send failed: %s", zmq_strerror(zmq_errno()));
        zmq_msg_close(&m);
    }
}

/* Runs on the completing thread (IO or executor). */
static void zt_complete(qn_job *job, const qn_result *res)
{
    zt *t = job->origin.ctx;
    const unsigned char *env = job->origin.data;
    int final = res->type == QN_RESULT_FINAL;
    qn_buf body = {0};
    if (qn_result_encode(res, &body) != 0) {
        qn_buf_free(&body);
        qn_result fallback = {.type = res->type, .status = QN_STATUS_ERROR, .id = res->id,
                              .code = QN_CODE_INTERNAL, .message = "result could not be encoded"};
        if (qn_result_encode(&fallback, &body) != 0) {
            QN_LOGE("zmq", "out of memory encoding a result; reply lost");
            qn_buf_free(&body);
            goto out;
        }
    }
    if (t->started && pthread_equal(pthread_self(), t->tid)) {
        /* On the IO thread (errors at admission, the direct path): the
         * ROUTER is ours, send straight to it. */
        send_reply(t->router, env, &body);
        if (final) atomic_fetch_sub(&t->inflight, 1);
        goto out;
    }
    char marker = final ? 'F' : 'P';
    pthread_mutex_lock(&t->push_mu);
    zmq_send(t->push, &marker, 1, ZMQ_SNDMORE);
    send_reply(t->push, env, &body);
    pthread_mutex_unlock(&t->push_mu);
out:
    if (final) {
        free(job->origin.data);
        job->origin.data = NULL;
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
    int final = zmq_msg_size(&m) == 1 && *(char *)zmq_msg_data(&m) == 'F';
    zmq_msg_close(&m);
    for (;;) {
        zmq_msg_init(&m);
        zmq_msg_recv(&m, t->pull, 0); /* the rest of a multipart is already there */
        int more = zmq_msg_more(&m);
        if (zmq_msg_send(&m, t->router, more ? ZMQ_SNDMORE : 0) < 0) zmq_msg_close(&m);
        if (!more) break;
    }
    if (final) atomic_fetch_sub(&t->inflight, 1);
    return 0;
}

/* Receives one request from the ROUTER and submits it. Returns 0, or -1
 * when nothing was waiting. */
static int receive_one(zt *t)
{
    zmq_msg_t frames[16];
    int n = 0;
    zmq_msg_init(&frames[0]);
    if (zmq_msg_recv(&frames[0], t->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&frames[0]);
        return -1;
    }
    n = 1;
    int more = zmq_msg_more(&frames[0]), overflow = 0;
    while (more) {
        zmq_msg_t *f = &frames[n < 16 ? n : 15];
        if (n >= 16) { zmq_msg_close(f); overflow = 1; }
        zmq_msg_init(f);
        zmq_msg_recv(f, t->router, 0);
        more = zmq_msg_more(f);
        if (n < 16) n++;
    }
    if (n < 2 || overflow) {
        /* No body or a deeper envelope than any client produces: nothing
         * sensible to answer to. */
        QN_LOGW("zmq", "dropping a malformed multipart request (%d frames)", n);
        for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
        return 0;
    }
    void *env = envelope_pack(frames, n - 1);
    if (!env) {
        QN_LOGE("zmq", "out of memory receiving a request; dropped");
    } else {
        atomic_fetch_add(&t->inflight, 1);
        qn_origin o = {.complete = zt_complete, .ctx = t, .data = env};
        qn_core_submit_bytes_local(t->core, t->local, zmq_msg_data(&frames[n - 1]),
                                   zmq_msg_size(&frames[n - 1]), &o);
    }
    for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
    return 0;
}

static void *io_main(void *arg)
{
    zt *t = arg;
    qn_thread_name("qn-zmq-io");
    zmq_pollitem_t items[2] = {{t->pull, 0, ZMQ_POLLIN, 0}, {t->router, 0, ZMQ_POLLIN, 0}};
    for (;;) {
        int intake = atomic_load(&t->intake);
        if (atomic_load(&t->quit) && atomic_load(&t->inflight) == 0) break;
        int rc = zmq_poll(items, intake ? 2 : 1, 100);
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
    return NULL;
}

static int zt_start(void *self)
{
    zt *t = self;
    atomic_store(&t->intake, 1);
    if (pthread_create(&t->tid, NULL, io_main, t) != 0) return QN_EEXTERNAL;
    t->started = 1;
    return 0;
}

static void zt_stop_intake(void *self) { atomic_store(&((zt *)self)->intake, 0); }
static int64_t zt_inflight(void *self) { return atomic_load(&((zt *)self)->inflight); }

static void zt_destroy(void *self)
{
    zt *t = self;
    if (!t) return;
    atomic_store(&t->intake, 0);
    atomic_store(&t->quit, 1);
    if (t->started) pthread_join(t->tid, NULL);
    qn_core_local_destroy(t->core, &t->local);
    if (t->push) zmq_close(t->push);
    if (t->pull) zmq_close(t->pull);
    if (t->router) zmq_close(t->router);
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

int qn_zmq_transport_create(void *zctx, const char *endpoint, qn_core *core, qn_transport *out)
{
    zt *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->zctx = zctx;
    t->core = core;
    pthread_mutex_init(&t->push_mu, NULL);
    if (qn_core_local_create(core, &t->local) != 0) {
        QN_LOGE("zmq", "cannot create a backend context for the IO thread");
        goto fail;
    }
    int zero = 0, linger = 2000;
    char inproc[64];
    snprintf(inproc, sizeof inproc, "inproc://quern-results-%p", (void *)t);

    t->router = zmq_socket(zctx, ZMQ_ROUTER);
    t->pull = zmq_socket(zctx, ZMQ_PULL);
    t->push = zmq_socket(zctx, ZMQ_PUSH);
    if (!t->router || !t->pull || !t->push) goto zfail;
    /* Replies are bounded by the requests we accepted; never drop one at HWM. */
    zmq_setsockopt(t->router, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(t->router, ZMQ_LINGER, &linger, sizeof linger);
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
    QN_LOGI("zmq", "listening on %s", t->endpoint);
    out->iface = &zt_iface;
    out->self = t;
    return 0;
zfail:
    QN_LOGE("zmq", "socket setup failed: %s", zmq_strerror(zmq_errno()));
fail:
    zt_destroy(t);
    return QN_EEXTERNAL;
}
