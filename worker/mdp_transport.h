/* mdp_transport.h: quern-worker as Majordomo (RFC 7, MDP 0.1) workers of a
 * quern-broker: one DEALER per model in the repository, the model's name
 * as service, announcing a credit (schemas/broker.md) so the broker sends
 * it up to that many requests at once and the core can batch them. */
#ifndef QN_MDP_TRANSPORT_H
#define QN_MDP_TRANSPORT_H

#include "core.h"
#include "registry.h"
#include "transport.h"

typedef struct qn_mdp_opts {
    const char *endpoint;  /* the broker's ROUTER */
    int credit;            /* requests held at once per service, >= 1 */
    int heartbeat_ms;      /* must match the broker's --heartbeat-ms */
    int rescan_ms;         /* how often the model list is checked for new services */
} qn_mdp_opts;

/* Borrows zctx, core and reg (they outlive the transport). Connects nothing
 * yet: start() does, and keeps reconnecting with backoff (100 ms doubling
 * to 5 s) while the broker is away. 0, QN_EINVAL, QN_ENOMEM, QN_EEXTERNAL. */
int qn_mdp_transport_create(void *zctx, const qn_mdp_opts *o, qn_core *core, qn_registry *reg,
                            qn_transport *out);

#endif
