/* transport.h: what the worker's main loop needs from a transport (ZeroMQ
 * ROUTER, Kafka, MDP broker). A transport owns its sockets and its IO
 * thread, turns bytes into jobs for the core (qn_core_submit_bytes with an
 * origin of its own) and turns results back into bytes on its own thread.
 * main.c only starts, drains and destroys them, in that order. */
#ifndef QN_TRANSPORT_H
#define QN_TRANSPORT_H

#include <stdint.h>

typedef struct qn_transport_i {
    const char *name;
    /* Starts the IO thread; from here on jobs flow. 0 or QN_E*. */
    int (*start)(void *self);
    /* Stops taking new jobs; results of jobs in flight keep flowing out. */
    void (*stop_intake)(void *self);
    /* Jobs taken and not yet fully answered (for Kafka: not yet acknowledged
     * by the broker). Shutdown waits for this to reach 0. */
    int64_t (*inflight)(void *self);
    /* Joins the IO thread, closes sockets (Kafka: final commit, leave the
     * group), frees self. Called after the core has stopped. */
    void (*destroy)(void *self);
} qn_transport_i;

typedef struct qn_transport {
    const qn_transport_i *iface;
    void *self;
} qn_transport;

#endif
