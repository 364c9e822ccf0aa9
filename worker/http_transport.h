/* http_transport.h: the HTTP server of CONTRACT.md section 7 (libmicrohttpd):
 * /metrics (Prometheus text 0.0.4), /v2/health/{live,ready}, Open Inference
 * Protocol model metadata, readiness and infer (KServe v2 / Triton HTTP JSON,
 * FP32). Infer requests become ordinary jobs for the core (same admission,
 * batcher, cache and executor as the other transports); a request waits for
 * its result suspended in libmicrohttpd, holding no thread. */
#ifndef QN_HTTP_TRANSPORT_H
#define QN_HTTP_TRANSPORT_H

#include <stddef.h>

#include "cache.h"
#include "core.h"
#include "registry.h"
#include "transport.h"

#define QN_HTTP_DEFAULT_MAX_BODY (64u * 1024u * 1024u)

typedef struct qn_http_opts {
    /* "ADDR:PORT", "[V6ADDR]:PORT", "HOST:PORT", ":PORT" or "PORT"; without
     * an address, loopback (127.0.0.1). Port 0 picks a free one (logged). */
    const char *listen;
    size_t max_body;    /* request bodies past this get 413 (0: the default) */
    int threads;        /* libmicrohttpd polling threads (0: 2) */
    qn_core *core;      /* borrowed, as are reg and cache (cache may be NULL) */
    qn_registry *reg;
    qn_cache *cache;
} qn_http_opts;

/* Binds and starts serving health and metrics at once (ready answers 503 and
 * infer 503 until qn_http_transport_set_ready). 0, QN_EINVAL (a listen
 * address that does not parse, logged) or QN_EEXTERNAL (cannot bind,
 * logged). */
int qn_http_transport_create(const qn_http_opts *o, qn_transport *out);

/* Called by the worker once every transport is up (ready may then answer
 * 200, when a model version is loaded too). self is out->self. */
void qn_http_transport_set_ready(void *self);

/* The port bound (after create), for tests and logs. */
int qn_http_transport_port(void *self);

#endif
