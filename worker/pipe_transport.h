/* pipe_transport.h: pipeline mode (--zmq-pull / --zmq-push, zguide's
 * PUSH/PULL): jobs arrive on a PULL socket, results leave on a PUSH socket,
 * one result message per job, in completion order. Flow control is by
 * high-water marks and never drops: when the sink does not keep up, results
 * wait on the worker (one held message at a time), the worker stops reading
 * jobs, its PULL socket fills to its HWM and the upstream PUSH blocks. */
#ifndef QN_PIPE_TRANSPORT_H
#define QN_PIPE_TRANSPORT_H

#include "core.h"
#include "transport.h"

/* pull_ep and push_ep: ZeroMQ endpoints, bound, or connected when they
 * start with "connect:". zctx and core are borrowed. max_inflight bounds
 * jobs read and not yet handed to the PUSH socket (0: 1024). 0, or
 * QN_EEXTERNAL with the reason logged. */
int qn_pipe_transport_create(void *zctx, const char *pull_ep, const char *push_ep, int max_inflight,
                             qn_core *core, qn_transport *out);

#endif
