/* pipe_transport.c: pipeline mode (pipe_transport.h). One IO thread owns the
 * PULL (jobs in) and PUSH (results out) sockets. Results are encoded on the
 * thread that finished the job and come back over an inproc PUSH/PULL pair
 * (a ZeroMQ socket never crosses threads); the IO thread moves them to the
 * outgoing PUSH without blocking: a result the PUSH cannot take now (every
 * sink at its HWM, or no sink connected) is held, and while one is held, or
 * while max_inflight jobs are out, no job is read.
 *
 * Never: drop a result (PUSH blocks rather than drops; a held result waits
 * for the sink as long as the worker runs), or block the IO thread. */
#include "pipe_transport.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "error.h"
#include "log.h"

#define BURST 256

typedef struct pt {
    qn_core *core;
    qn_core_local *local;
    void *in, *out, *rpull, *rpush;
    pthread_mutex_t rpush_mu;
    pthread_t tid;
    int started, max_inflight;
    atomic_int intake, quit;
    atomic_int_fast64_t inflight; /* read, result not yet handed to out */
    zmq_msg_t held;
    int have_held;
} pt;

static void free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Any thread. */
static void pt_complete(qn_job *job, const qn_result *res)
{
    if (res->type != QN_RESULT_FINAL) return; /* one message per job */
    pt *t = job->origin.ctx;
    qn_buf body = {0};
    if (qn_result_encode(res, &body) != 0) {
        qn_buf_free(&body);
        qn_result fb = {.type = QN_RESULT_FINAL, .status = QN_STATUS_ERROR, .id = res->id,
                        .code = QN_CODE_INTERNAL, .message = "result could not be encoded"};
        if (qn_result_encode(&fb, &body) != 0) {
            QN_LOGE("pipe", "out of memory encoding a result; reply lost");
            qn_buf_free(&body);
            atomic_fetch_sub(&t->inflight, 1);
            return;
        }
    }
    zmq_msg_t m;
    zmq_msg_init_data(&m, body.data, body.len, free_buf, NULL);
    pthread_mutex_lock(&t->rpush_mu);
    if (zmq_msg_send(&m, t->rpush, 0) < 0) { /* inproc, HWM 0: only fails at shutdown */
        QN_LOGE("pipe", "result handoff failed: %s", zmq_strerror(zmq_errno()));
        zmq_msg_close(&m);
        atomic_fetch_sub(&t->inflight, 1);
    }
    pthread_mutex_unlock(&t->rpush_mu);
}

/* Moves results to the outgoing PUSH until it would block. */
static void flush_results(pt *t)
{
    for (int i = 0; i < BURST; i++) {
        if (!t->have_held) {
            zmq_msg_init(&t->held);
            if (zmq_msg_recv(&t->held, t->rpull, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&t->held);
                return;
            }
            t->have_held = 1;
        }
        if (zmq_msg_send(&t->held, t->out, ZMQ_DONTWAIT) < 0) {
            if (zmq_errno() != EAGAIN) QN_LOGW("pipe", "result send: %s", zmq_strerror(zmq_errno()));
            return; /* held until the sink takes it */
        }
        t->have_held = 0;
        atomic_fetch_sub(&t->inflight, 1);
    }
}

static void read_jobs(pt *t)
{
    for (int i = 0; i < BURST && atomic_load(&t->inflight) < t->max_inflight; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, t->in, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        atomic_fetch_add(&t->inflight, 1);
        qn_origin o = {.complete = pt_complete, .ctx = t};
        qn_core_submit_bytes_local(t->core, t->local, zmq_msg_data(&m), zmq_msg_size(&m), &o);
        zmq_msg_close(&m);
    }
    qn_core_local_flush(t->core, t->local);
}

static void *io_main(void *arg)
{
    pt *t = arg;
    qn_thread_name("qn-pipe-io");
    for (;;) {
        if (atomic_load(&t->quit) && atomic_load(&t->inflight) == 0) break;
        int reading = atomic_load(&t->intake) && !t->have_held &&
                      atomic_load(&t->inflight) < t->max_inflight;
        zmq_pollitem_t items[2] = {{t->have_held ? t->out : t->rpull, 0,
                                    t->have_held ? ZMQ_POLLOUT : ZMQ_POLLIN, 0},
                                   {t->in, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, reading ? 2 : 1, 100);
        if (rc < 0 && zmq_errno() != EINTR) {
            QN_LOGE("pipe", "poll failed: %s", zmq_strerror(zmq_errno()));
            break;
        }
        flush_results(t);
        if (reading && (items[1].revents & ZMQ_POLLIN)) read_jobs(t);
    }
    return NULL;
}

static int pt_start(void *self)
{
    pt *t = self;
    atomic_store(&t->intake, 1);
    if (pthread_create(&t->tid, NULL, io_main, t) != 0) return QN_EEXTERNAL;
    t->started = 1;
    return 0;
}

static void pt_stop_intake(void *self) { atomic_store(&((pt *)self)->intake, 0); }
static int64_t pt_inflight(void *self) { return atomic_load(&((pt *)self)->inflight); }

static void pt_destroy(void *self)
{
    pt *t = self;
    if (!t) return;
    atomic_store(&t->intake, 0);
    if (t->started) {
        if (atomic_load(&t->inflight))
            QN_LOGW("pipe", "closing with %lld results not taken by the sink",
                    (long long)atomic_load(&t->inflight));
        atomic_store(&t->inflight, 0); /* the drain timed out: let the thread end */
        atomic_store(&t->quit, 1);
        pthread_join(t->tid, NULL);
    }
    if (t->have_held) zmq_msg_close(&t->held);
    qn_core_local_destroy(t->core, &t->local);
    void *socks[] = {t->in, t->out, t->rpull, t->rpush};
    for (int i = 0; i < 4; i++)
        if (socks[i]) zmq_close(socks[i]);
    pthread_mutex_destroy(&t->rpush_mu);
    free(t);
}

static const qn_transport_i pt_iface = {
    .name = "pipe",
    .start = pt_start,
    .stop_intake = pt_stop_intake,
    .inflight = pt_inflight,
    .destroy = pt_destroy,
};

static int attach(void *sock, const char *ep, const char *what)
{
    int connect = strncmp(ep, "connect:", 8) == 0;
    const char *e = connect ? ep + 8 : ep;
    if ((connect ? zmq_connect(sock, e) : zmq_bind(sock, e)) != 0) {
        QN_LOGE("pipe", "cannot %s %s %s: %s", connect ? "connect" : "bind", what, e,
                zmq_strerror(zmq_errno()));
        return -1;
    }
    char last[256] = "";
    size_t len = sizeof last;
    if (!connect) zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, last, &len);
    QN_LOGI("pipe", "%s %s %s", what, connect ? "connected to" : "bound at", connect ? e : last);
    return 0;
}

int qn_pipe_transport_create(void *zctx, const char *pull_ep, const char *push_ep, int max_inflight,
                             qn_core *core, qn_transport *out)
{
    pt *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->core = core;
    t->max_inflight = max_inflight > 0 ? max_inflight : 1024;
    pthread_mutex_init(&t->rpush_mu, NULL);
    if (qn_core_local_create(core, &t->local) != 0) goto fail;
    t->in = zmq_socket(zctx, ZMQ_PULL);
    t->out = zmq_socket(zctx, ZMQ_PUSH);
    t->rpull = zmq_socket(zctx, ZMQ_PULL);
    t->rpush = zmq_socket(zctx, ZMQ_PUSH);
    if (!t->in || !t->out || !t->rpull || !t->rpush) goto fail;
    int hwm = 1000, zero = 0, linger = 10000;
    zmq_setsockopt(t->in, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(t->out, ZMQ_SNDHWM, &hwm, sizeof hwm);
    /* Results already sent wait in the socket for a slow sink at close. */
    zmq_setsockopt(t->out, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(t->in, ZMQ_LINGER, &zero, sizeof zero);
    /* Bounded by max_inflight, not by the HWM. */
    zmq_setsockopt(t->rpull, ZMQ_RCVHWM, &zero, sizeof zero);
    zmq_setsockopt(t->rpush, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(t->rpull, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(t->rpush, ZMQ_LINGER, &zero, sizeof zero);
    char inproc[64];
    snprintf(inproc, sizeof inproc, "inproc://quern-pipe-%p", (void *)t);
    if (zmq_bind(t->rpull, inproc) != 0 || zmq_connect(t->rpush, inproc) != 0) goto fail;
    if (attach(t->in, pull_ep, "jobs (PULL)") || attach(t->out, push_ep, "results (PUSH)")) goto fail;
    out->iface = &pt_iface;
    out->self = t;
    return 0;
fail:
    pt_destroy(t);
    return QN_EEXTERNAL;
}
