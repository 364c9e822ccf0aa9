/* broker.h: quern-broker's loop: one ROUTER socket speaking MDP 0.1 to
 * clients and workers (mdp.h), the bookkeeping in table.h, heartbeats, MMI,
 * and the error replies for requests the broker cannot serve. One thread:
 * everything here runs on the thread that calls qn_broker_run. */
#ifndef QN_BROKER_H
#define QN_BROKER_H

#include <stdint.h>

#include "table.h"

typedef struct qn_broker_opts {
    const char *bind;     /* ROUTER endpoint; tcp://host:* picks a port (logged) */
    qn_policy policy;
    int heartbeat_ms;     /* HEARTBEAT interval; a worker is dead after 3 silent intervals */
    int retries;          /* re-dispatches of a request whose worker died */
    int64_t queue_limit;  /* most queued requests per service */
    uint64_t seed;        /* random policy */
} qn_broker_opts;

#define QN_BROKER_LIVENESS 3
#define QN_BROKER_DEFAULT_HEARTBEAT_MS 2500
#define QN_BROKER_DEFAULT_RETRIES 3
#define QN_BROKER_DEFAULT_QUEUE_LIMIT 10000

typedef struct qn_broker qn_broker;

/* Creates the ROUTER and binds it. zctx borrowed. 0, QN_EINVAL (options),
 * QN_EEXTERNAL (bind failed; logged), QN_ENOMEM. */
int qn_broker_create(void *zctx, const qn_broker_opts *o, qn_broker **out);
/* The endpoint actually bound. */
const char *qn_broker_endpoint(const qn_broker *b);
/* Serves until stop_fd (a pipe's read end, or -1 for never) becomes
 * readable. Then sends DISCONNECT to every worker and returns 0; QN_EEXTERNAL
 * when polling failed. */
int qn_broker_run(qn_broker *b, int stop_fd);
/* Closes the socket and frees everything, *b NULL. NULL-safe. */
void qn_broker_destroy(qn_broker **b);

#endif
