/* zmq_transport.h: the ZeroMQ ROUTER transport. Each request is answered on
 * the same socket with the envelope it came with, so REQ and DEALER clients
 * both work and a DEALER may keep thousands of requests in flight. */
#ifndef QN_ZMQ_TRANSPORT_H
#define QN_ZMQ_TRANSPORT_H

#include "core.h"
#include "transport.h"

/* Binds a ROUTER at endpoint (tcp://host:* picks a free port; the bound
 * endpoint is logged). zctx is borrowed. 0, or QN_EEXTERNAL with the reason
 * logged (e.g. address in use). */
int qn_zmq_transport_create(void *zctx, const char *endpoint, qn_core *core, qn_transport *out);

#endif
