/* zmq_transport.h: the ZeroMQ ROUTER transport. Each request is answered on
 * the same socket with the envelope it came with, so REQ and DEALER clients
 * both work and a DEALER may keep thousands of requests in flight.
 *
 * Memory is bounded whatever a client does: a client (a ROUTER peer, i.e. one
 * routing id) has at most client_inflight jobs in flight, past which its jobs
 * are answered rejected/overloaded; replies wait for a client that does not
 * read them in a send queue of at most sndhwm messages, past which they are
 * dropped (counted, logged at most once a second), so one such client never
 * stalls the worker. A client that went away is noticed when a reply to it
 * finds its connection gone, and its jobs still queued are dropped then. */
#ifndef QN_ZMQ_TRANSPORT_H
#define QN_ZMQ_TRANSPORT_H

#include "core.h"
#include "transport.h"

typedef struct qn_zmq_opts {
    int client_inflight;  /* >= 1: jobs one client may have in flight */
    int sndhwm;           /* >= 1: replies queued to one client that does not read */
    int drain_timeout_ms; /* >= 0: after stop_intake, how long this transport's
                             queued jobs may still run; then they are answered
                             rejected ("shutting down") and dropped */
} qn_zmq_opts;

#define QN_ZMQ_DEFAULT_CLIENT_INFLIGHT 4096
#define QN_ZMQ_DEFAULT_SNDHWM 8192
/* Envelopes deeper or bigger than this (routing id and delimiters included,
 * the body apart) are answered bad_message instead of served. */
#define QN_ZMQ_MAX_ENVELOPE_FRAMES 256
#define QN_ZMQ_MAX_ENVELOPE_BYTES 65536

/* The defaults above, drain timeout 30 s. */
void qn_zmq_opts_default(qn_zmq_opts *o);

/* Binds a ROUTER at endpoint (tcp://host:* picks a free port; the bound
 * endpoint is logged). zctx is borrowed; opts is copied (NULL: defaults).
 * 0, QN_EINVAL (bad opts) or QN_EEXTERNAL with the reason logged (e.g.
 * address in use). */
int qn_zmq_transport_create(void *zctx, const char *endpoint, const qn_zmq_opts *opts,
                            qn_core *core, qn_transport *out);

#endif
