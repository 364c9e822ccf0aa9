/* ceiling_router.c: the transport's ceiling. A single-threaded ZeroMQ ROUTER
 * that decodes every job with quern's own codec and answers at once with the
 * smallest faithful result (status ok, the job's id and model, a 1 x 1 zero
 * output) on the envelope it came with. No model, no batching, no threads:
 * what `quern bench` measures against it is the most any worker could do
 * through one ROUTER socket with this codec on this machine.
 *
 *   build/bench/ceiling_router ENDPOINT        (runs until SIGINT/SIGTERM)
 *
 * A job that does not decode gets the error result a worker would send. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "error.h"
#include "job.h"

#define MAX_FRAMES 16

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: ceiling_router ENDPOINT   (e.g. tcp://127.0.0.1:5599)\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a blocked receive returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int ret = 1;
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_ROUTER) : NULL;
    if (!sock) {
        fprintf(stderr, "ceiling_router: zmq: %s\n", zmq_strerror(errno));
        goto out;
    }
    int hwm = 100000, linger = 0;
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(sock, argv[1]) != 0) {
        fprintf(stderr, "ceiling_router: cannot bind %s: %s\n", argv[1], zmq_strerror(errno));
        goto out;
    }
    fprintf(stderr, "ceiling_router: listening on %s\n", argv[1]);

    zmq_msg_t frames[MAX_FRAMES];
    for (int i = 0; i < MAX_FRAMES; i++) zmq_msg_init(&frames[i]);
    qn_buf out = {0};
    const float zero = 0.0f;
    unsigned long long served = 0;
    while (!stop) {
        /* a message: envelope frames (identity, maybe an empty delimiter),
         * then the payload as the last frame */
        int n = 0;
        for (;;) {
            if (zmq_msg_recv(&frames[n], sock, 0) < 0) goto recv_failed;
            if (!zmq_msg_more(&frames[n])) break;
            if (n + 1 < MAX_FRAMES) n++;
            /* past MAX_FRAMES envelope frames the middle ones are dropped */
        }
        qn_job *job = NULL;
        qn_decode_error derr;
        int rc = qn_job_decode(zmq_msg_data(&frames[n]), zmq_msg_size(&frames[n]), NULL, &job, &derr);
        qn_result res = {0};
        res.type = QN_RESULT_FINAL;
        res.id = job ? &job->id : NULL;
        if (rc == 0) {
            res.status = QN_STATUS_OK;
            res.model = job->model;
            res.version = job->version;
            res.rows = 1;
            res.cols = 1;
            res.outputs = &zero;
        } else {
            res.status = QN_STATUS_ERROR;
            res.code = derr.code;
            res.message = derr.message;
        }
        qn_buf_reset(&out);
        rc = qn_result_encode(&res, &out);
        qn_job_free(&job);
        if (rc) {
            fprintf(stderr, "ceiling_router: encode: %s\n", qn_strerror(rc));
            goto out_loop;
        }
        for (int i = 0; i < n; i++) { /* the envelope goes back as it came */
            if (zmq_msg_send(&frames[i], sock, ZMQ_SNDMORE) < 0) goto send_failed;
        }
        if (zmq_send(sock, out.data, out.len, 0) < 0) goto send_failed;
        served++;
        continue;
    recv_failed:
        if (errno == EINTR) continue; /* the loop condition sees stop */
        fprintf(stderr, "ceiling_router: receive: %s\n", zmq_strerror(errno));
        goto out_loop;
    send_failed:
        if (errno == EINTR) continue;
        /* a peer that went away is its own problem, not the router's */
        if (errno == EHOSTUNREACH || errno == EAGAIN) continue;
        fprintf(stderr, "ceiling_router: send: %s\n", zmq_strerror(errno));
        goto out_loop;
    }
    fprintf(stderr, "ceiling_router: stopping after %llu results\n", served);
    ret = 0;
out_loop:
    for (int i = 0; i < MAX_FRAMES; i++) zmq_msg_close(&frames[i]);
    qn_buf_free(&out);
out:
    if (sock) zmq_close(sock);
    if (ctx) zmq_ctx_term(ctx);
    return ret;
}
