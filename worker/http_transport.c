/* http_transport.c: the HTTP server (http_transport.h) on libmicrohttpd's own
 * polling threads. No HTTP is parsed here: MHD hands over method, path and
 * body; jansson parses the JSON.
 *
 * An infer request is decoded into a qn_job and submitted like any other
 * job; its connection is suspended (MHD keeps it, no thread waits) until the
 * job's completion, on whatever thread finished it, stores the answer and
 * resumes it. The connection is always suspended before the job is
 * submitted, so a resume can never come before its suspend.
 *
 * Never: block an MHD thread on compute, or answer infer while draining
 * (readiness and infer turn 503 the moment intake stops). */
#include "http_transport.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
#include "model.h"

typedef struct ht {
    struct MHD_Daemon *d;
    qn_core *core;
    qn_registry *reg;
    qn_cache *cache;
    size_t max_body;
    int port;
    atomic_int started, up, draining;
    atomic_int_fast64_t inflight; /* infer requests accepted and not yet completed */
} ht;

enum { K_OTHER = 0, K_INFER };

typedef struct hreq {
    ht *t;
    int kind;
    int in_flight;      /* counted in t->inflight */
    int too_large;
    char *body;
    size_t len, cap;
    struct MHD_Connection *conn;
    /* Set by the completing thread before it resumes the connection. */
    unsigned code;
    char *resp;
    size_t resp_len;
    char *id;           /* the request's "id", echoed */
    char model[QN_MODEL_NAME_MAX + 1];
} hreq;

/* ------------------------------------------------------------- answers */

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned code, char *buf, size_t len,
                                const char *ctype)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned code, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return MHD_NO;
    return send_buf(c, code, s, strlen(s), "application/json");
}

/* Builds {"error": msg}; NULL when out of memory. */
static char *error_body(const char *msg, size_t *len)
{
    json_t *j = json_pack("{s:s}", "error", msg ? msg : "error");
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s) *len = strlen(s);
    return s;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned code, const char *msg)
{
    size_t len = 0;
    char *s = error_body(msg, &len);
    if (!s) return MHD_NO;
    return send_buf(c, code, s, len, "application/json");
}

static enum MHD_Result send_empty(struct MHD_Connection *c, unsigned code)
{
    return send_buf(c, code, NULL, 0, "text/plain");
}

/* --------------------------------------------------------------- state */

typedef struct count_ud {
    int n;
} count_ud;

static void count_one(void *ud, const char *name, int64_t latest)
{
    (void)name;
    (void)latest;
    ((count_ud *)ud)->n++;
}

static int is_ready(ht *t)
{
    if (!atomic_load(&t->up) || atomic_load(&t->draining)) return 0;
    count_ud cu = {0};
    qn_registry_each_name(t->reg, count_one, &cu);
    return cu.n > 0;
}

/* ------------------------------------------------------------- metrics */

typedef struct models_ud {
    qn_metrics_model *m;
    char (*names)[QN_MODEL_NAME_MAX + 1];
    char (*reprs)[64];
    int n, cap;
} models_ud;

static void repr_of(const qn_model *m, char *out, size_t cap)
{
    out[0] = 0;
    unsigned seen = 0;
    for (int i = 0; i < m->nlayers; i++) {
        unsigned bit = 1u << m->layers[i].rep;
        if (seen & bit) continue;
        seen |= bit;
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", l ? "+" : "", qn_rep_name(m->layers[i].rep));
    }
}

static void collect_model(void *ud, qn_model *m)
{
    models_ud *u = ud;
    if (u->n == u->cap) {
        int nc = u->cap ? u->cap * 2 : 16;
        qn_metrics_model *nm = realloc(u->m, (size_t)nc * sizeof *nm);
        if (nm) u->m = nm;
        void *nn = realloc(u->names, (size_t)nc * sizeof *u->names);
        if (nn) u->names = nn;
        void *nr = realloc(u->reprs, (size_t)nc * sizeof *u->reprs);
        if (nr) u->reprs = nr;
        if (!nm || !nn || !nr) return;
        u->cap = nc;
    }
    memcpy(u->names[u->n], m->name, sizeof u->names[u->n]);
    repr_of(m, u->reprs[u->n], sizeof u->reprs[u->n]);
    u->m[u->n].version = m->version;
    u->n++;
}

static enum MHD_Result serve_metrics(ht *t, struct MHD_Connection *c)
{
    models_ud u = {0};
    qn_registry_each_version(t->reg, collect_model, &u);
    for (int i = 0; i < u.n; i++) {
        u.m[i].name = u.names[i];
        u.m[i].repr = u.reprs[i];
    }
    qn_cache_stats cs;
    int have_cache = t->cache && qn_cache_stats_get(t->cache, &cs) == 0;
    qn_metrics_extra x = {.cache = have_cache ? &cs : NULL,
                          .queue_rows = qn_core_queued_rows(t->core), .models = u.m,
                          .nmodels = u.n};
    qn_buf b = {0};
    int rc = qn_metrics_render(&x, &b);
    free(u.m);
    free(u.names);
    free(u.reprs);
    if (rc) {
        qn_buf_free(&b);
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    }
    return send_buf(c, MHD_HTTP_OK, b.data, b.len, "text/plain; version=0.0.4; charset=utf-8");
}

/* ------------------------------------------------------ model metadata */

typedef struct versions_ud {
    const char *name;
    json_t *arr;
} versions_ud;

static void add_version(void *ud, qn_model *m)
{
    versions_ud *u = ud;
    if (strcmp(m->name, u->name) == 0) {
        char v[24];
        snprintf(v, sizeof v, "%lld", (long long)m->version);
        json_array_append_new(u->arr, json_string(v));
    }
}

static json_t *tensor_meta(const char *name, int64_t dim)
{
    return json_pack("{s:s,s:s,s:[I,I]}", "name", name, "datatype", "FP32", "shape",
                     (json_int_t)-1, (json_int_t)dim);
}

/* Looks name/version up; on failure answers 404 and returns NULL. */
static qn_model *lookup(ht *t, struct MHD_Connection *c, const char *name, int64_t version,
                        enum MHD_Result *ret)
{
    qn_model *m = NULL;
    int rc = qn_model_name_valid(name) ? qn_registry_get(t->reg, name, version, &m) : QN_ENOTFOUND;
    if (rc == 0) return m;
    char msg[256];
    if (rc == QN_ENOVERSION)
        snprintf(msg, sizeof msg, "unknown_version: model '%s' has no version %lld", name,
                 (long long)version);
    else
        snprintf(msg, sizeof msg, "unknown_model: no model named '%.64s' in the repository", name);
    *ret = send_error(c, MHD_HTTP_NOT_FOUND, msg);
    return NULL;
}

static enum MHD_Result serve_model_meta(ht *t, struct MHD_Connection *c, const char *name,
                                        int64_t version)
{
    enum MHD_Result ret = MHD_NO;
    qn_model *m = lookup(t, c, name, version, &ret);
    if (!m) return ret;
    json_t *versions = json_array();
    if (version) {
        char v[24];
        snprintf(v, sizeof v, "%lld", (long long)version);
        json_array_append_new(versions, json_string(v));
    } else {
        versions_ud u = {.name = name, .arr = versions};
        qn_registry_each_version(t->reg, add_version, &u);
    }
    json_t *j = json_pack("{s:s,s:o,s:s,s:[o],s:[o]}", "name", m->name, "versions", versions,
                          "platform", "quern", "inputs", tensor_meta("input", m->in_dim),
                          "outputs", tensor_meta("output", m->out_dim));
    qn_model_unref(&m);
    if (!j) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    return send_json(c, MHD_HTTP_OK, j);
}

/* ---------------------------------------------------------------- infer */

static unsigned http_code(ht *t, const qn_result *res)
{
    switch (res->code) {
    case QN_CODE_BAD_MESSAGE:
    case QN_CODE_BAD_JOB:
    case QN_CODE_SHAPE_MISMATCH: return MHD_HTTP_BAD_REQUEST;
    case QN_CODE_UNKNOWN_MODEL:
    case QN_CODE_UNKNOWN_VERSION: return MHD_HTTP_NOT_FOUND;
    case QN_CODE_TOO_LARGE: return MHD_HTTP_CONTENT_TOO_LARGE;
    case QN_CODE_OVERLOADED:
        /* The core refuses with "overloaded" while it shuts down too. */
        return atomic_load(&t->draining) ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_TOO_MANY_REQUESTS;
    case QN_CODE_EXPIRED: return MHD_HTTP_GATEWAY_TIMEOUT;
    default: return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

/* Appends s to the growing response. */
static int sb_add(qn_buf *b, const char *s) { return qn_buf_append(b, s, strlen(s)); }

/* The OIP response for an ok result; NULL when out of memory. Floats are
 * written with 9 significant digits, which round-trip any float32 exactly,
 * so the answer equals the binary transports' bit for bit. */
static char *ok_body(const hreq *r, const qn_result *res, size_t *len)
{
    qn_buf b = {0};
    json_t *head = json_object();
    char ver[24];
    snprintf(ver, sizeof ver, "%lld", (long long)res->version);
    if (head) {
        json_object_set_new(head, "model_name", json_string(res->model ? res->model : r->model));
        json_object_set_new(head, "model_version", json_string(ver));
        if (r->id) json_object_set_new(head, "id", json_string(r->id));
        json_object_set_new(head, "parameters", json_pack("{s:b}", "cached", res->cached ? 1 : 0));
    }
    char *hs = head ? json_dumps(head, JSON_COMPACT) : NULL;
    json_decref(head);
    if (!hs) return NULL;
    /* hs ends in '}': splice the outputs in before it. */
    size_t hl = strlen(hs);
    int err = qn_buf_append(&b, hs, hl - 1);
    free(hs);
    char tmp[96];
    snprintf(tmp, sizeof tmp,
             ",\"outputs\":[{\"name\":\"output\",\"datatype\":\"FP32\",\"shape\":[%lld,%lld],\"data\":[",
             (long long)res->rows, (long long)res->cols);
    err = err || sb_add(&b, tmp);
    int64_t n = res->rows * res->cols;
    for (int64_t i = 0; i < n && !err; i++) {
        float v = res->outputs[i];
        int k;
        if (isfinite(v)) k = snprintf(tmp, sizeof tmp, "%s%.9g", i ? "," : "", (double)v);
        else k = snprintf(tmp, sizeof tmp, "%snull", i ? "," : "");
        err = qn_buf_append(&b, tmp, (size_t)k);
    }
    err = err || sb_add(&b, "]}]}");
    if (err) {
        qn_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.data;
}

/* The job's completion: any thread. */
static void infer_complete(qn_job *job, const qn_result *res)
{
    if (res->type != QN_RESULT_FINAL) return;
    hreq *r = job->origin.data;
    ht *t = r->t;
    if (res->status == QN_STATUS_OK) {
        r->resp = ok_body(r, res, &r->resp_len);
        r->code = MHD_HTTP_OK;
    } else {
        r->code = http_code(t, res);
        char msg[320];
        snprintf(msg, sizeof msg, "%s: %s", qn_code_name(res->code),
                 res->message ? res->message : qn_status_name(res->status));
        r->resp = error_body(msg, &r->resp_len);
    }
    if (res->status != QN_STATUS_OK)
        qn_log_job(r->code >= 500 ? QN_LOG_WARN : QN_LOG_DEBUG, "http", r->id, r->model,
                   "infer answered %u: %s: %s", r->code, qn_code_name(res->code),
                   res->message ? res->message : "");
    if (!r->resp) {
        r->code = MHD_HTTP_INTERNAL_SERVER_ERROR;
        r->resp_len = 0;
    }
    MHD_resume_connection(r->conn);
}

/* Flattens data (flat or nested, row-major) into out[0..n). Returns the
 * number of numbers seen (may exceed n), or -1 for a non-number. */
static int64_t flatten(json_t *data, float *out, int64_t n, int64_t at, int depth)
{
    if (depth > 8) return -1;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v) {
        if (json_is_array(v)) {
            int64_t k = flatten(v, out, n, at, depth + 1);
            if (k < 0) return -1;
            at = k;
        } else if (json_is_number(v)) {
            if (at < n) out[at] = (float)json_number_value(v);
            at++;
        } else {
            return -1;
        }
    }
    return at;
}

/* Parses the OIP request into a job; on failure writes why into err and
 * returns NULL with *code the HTTP status. */
static qn_job *parse_infer(ht *t, const hreq *r, const char *model, int64_t version, char *err,
                           size_t errlen, unsigned *code)
{
    *code = MHD_HTTP_BAD_REQUEST;
    json_error_t je;
    json_t *root = json_loadb(r->body ? r->body : "", r->len, 0, &je);
    qn_job *job = NULL;
    if (!root) {
        snprintf(err, errlen, "request body is not JSON: %s (line %d, column %d)", je.text,
                 je.line, je.column);
        return NULL;
    }
    json_t *inputs = json_object_get(root, "inputs");
    if (!json_is_object(root) || !json_is_array(inputs) || json_array_size(inputs) != 1) {
        snprintf(err, errlen, "'inputs' must be an array of exactly one input tensor");
        goto out;
    }
    json_t *in = json_array_get(inputs, 0);
    json_t *dt = json_object_get(in, "datatype"), *shape = json_object_get(in, "shape"),
           *data = json_object_get(in, "data"), *id = json_object_get(root, "id");
    if (!json_is_string(dt) || strcmp(json_string_value(dt), "FP32") != 0) {
        snprintf(err, errlen, "input datatype must be \"FP32\"");
        goto out;
    }
    if (!json_is_array(shape) || json_array_size(shape) != 2 ||
        !json_is_integer(json_array_get(shape, 0)) || !json_is_integer(json_array_get(shape, 1))) {
        snprintf(err, errlen, "input shape must be [rows, cols]");
        goto out;
    }
    json_int_t rows = json_integer_value(json_array_get(shape, 0)),
               cols = json_integer_value(json_array_get(shape, 1));
    if (rows < 1 || cols < 1 || rows > (1 << 24) || cols > (1 << 24)) {
        snprintf(err, errlen, "input shape [%lld, %lld] is out of range", (long long)rows,
                 (long long)cols);
        goto out;
    }
    if ((uint64_t)rows * (uint64_t)cols * 4u > QN_DEFAULT_MAX_MESSAGE) {
        *code = MHD_HTTP_CONTENT_TOO_LARGE;
        snprintf(err, errlen, "input of %lld x %lld floats is too large", (long long)rows,
                 (long long)cols);
        goto out;
    }
    if (!json_is_array(data)) {
        snprintf(err, errlen, "input data must be an array of numbers");
        goto out;
    }
    if (id && !json_is_string(id)) {
        snprintf(err, errlen, "'id' must be a string");
        goto out;
    }
    job = qn_job_new(rows, cols);
    if (!job) {
        *code = MHD_HTTP_INTERNAL_SERVER_ERROR;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    int64_t n = flatten(data, job->inputs, (int64_t)rows * cols, 0, 0);
    if (n != (int64_t)rows * cols) {
        if (n < 0) snprintf(err, errlen, "input data must hold only numbers");
        else snprintf(err, errlen, "input data has %lld numbers; shape [%lld, %lld] needs %lld",
                      (long long)n, (long long)rows, (long long)cols, (long long)(rows * cols));
        qn_job_free(&job);
        goto out;
    }
    if (id && qn_job_set_id_str(job, json_string_value(id), json_string_length(id)) != 0) {
        *code = MHD_HTTP_INTERNAL_SERVER_ERROR;
        snprintf(err, errlen, "out of memory");
        qn_job_free(&job);
        goto out;
    }
    snprintf(job->model, sizeof job->model, "%s", model);
    job->version = version;
    job->type = QN_JOB_PREDICT;
    (void)t;
out:
    json_decref(root);
    return job;
}

static enum MHD_Result start_infer(ht *t, hreq *r, const char *model, int64_t version)
{
    struct MHD_Connection *c = r->conn;
    if (!atomic_load(&t->started) || atomic_load(&t->draining))
        return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          atomic_load(&t->draining) ? "worker is draining" : "worker is not ready");
    if (r->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is larger than %zu bytes", t->max_body);
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, msg);
    }
    if (!qn_model_name_valid(model)) return send_error(c, MHD_HTTP_NOT_FOUND, "invalid model name");
    char err[300];
    unsigned code;
    qn_job *job = parse_infer(t, r, model, version, err, sizeof err, &code);
    if (!job) return send_error(c, code, err);
    if (job->id.kind == QN_ID_STR) r->id = strdup(job->id.s);
    snprintf(r->model, sizeof r->model, "%s", model);
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
    job->origin = (qn_origin){.complete = infer_complete, .ctx = t, .data = r};
    r->in_flight = 1;
    atomic_fetch_add(&t->inflight, 1);
    /* Suspend first: the answer may come before qn_core_submit returns
     * (cache hits, admission errors), and its resume must find the
     * connection suspended. */
    MHD_suspend_connection(c);
    qn_core_submit(t->core, job);
    return MHD_YES;
}

/* ------------------------------------------------------------- routing */

static int parse_version_seg(const char *s, int64_t *v)
{
    char *end;
    long long x = strtoll(s, &end, 10);
    if (!*s || *end || x < 1) return -1;
    *v = x;
    return 0;
}

static enum MHD_Result route(ht *t, hreq *r, const char *url, const char *method)
{
    struct MHD_Connection *c = r->conn;
    int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (strcmp(url, "/metrics") == 0) {
        if (!get) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
        return serve_metrics(t, c);
    }
    if (strcmp(url, "/v2/health/live") == 0) return send_empty(c, MHD_HTTP_OK);
    if (strcmp(url, "/v2/health/ready") == 0)
        return send_empty(c, is_ready(t) ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE);
    if (strcmp(url, "/v2") == 0 || strcmp(url, "/v2/") == 0) {
        json_t *j = json_pack("{s:s,s:s,s:[]}", "name", "quern", "version", "1", "extensions");
        return j ? send_json(c, MHD_HTTP_OK, j) : MHD_NO;
    }
    /* /v2/models/{name}[/versions/{v}][/ready|/infer] */
    if (strncmp(url, "/v2/models/", 11) != 0) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
    char path[512];
    snprintf(path, sizeof path, "%s", url + 11);
    char *seg[5];
    int n = 0;
    for (char *save = NULL, *p = strtok_r(path, "/", &save); p && n < 5; p = strtok_r(NULL, "/", &save))
        seg[n++] = p;
    int64_t version = 0;
    int i = 1;
    if (n >= 3 && strcmp(seg[1], "versions") == 0) {
        if (parse_version_seg(seg[2], &version))
            return send_error(c, MHD_HTTP_BAD_REQUEST, "a version is a positive integer");
        i = 3;
    }
    if (n < 1 || n > i + 1) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
    const char *what = n == i + 1 ? seg[i] : "";
    if (!*what) {
        if (!get) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
        return serve_model_meta(t, c, seg[0], version);
    }
    if (strcmp(what, "ready") == 0) {
        if (!get) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
        enum MHD_Result ret = MHD_NO;
        qn_model *m = lookup(t, c, seg[0], version, &ret);
        if (!m) return ret;
        qn_model_unref(&m);
        return send_empty(c, MHD_HTTP_OK);
    }
    if (strcmp(what, "infer") == 0) {
        if (!post) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST");
        return start_infer(t, r, seg[0], version);
    }
    return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    ht *t = cls;
    hreq *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->t = t;
        r->conn = c;
        *con_cls = r;
        /* A body announced as too large is refused before it is read. */
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > t->max_body) {
            char msg[128];
            snprintf(msg, sizeof msg, "request body is larger than %zu bytes", t->max_body);
            return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, msg);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_large) return MHD_YES;
        if (r->len + n > t->max_body) {
            /* Chunked: no length up front. Keep reading (and dropping) so
             * the answer can be sent once the request is in. */
            r->too_large = 1;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n > r->cap) {
            size_t nc = r->cap ? r->cap : 4096;
            while (nc < r->len + n) nc *= 2;
            char *nb = realloc(r->body, nc);
            if (!nb) return MHD_NO;
            r->body = nb;
            r->cap = nc;
        }
        memcpy(r->body + r->len, upload, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->in_flight) {
        /* Resumed: the answer is here. */
        char *resp = r->resp;
        r->resp = NULL;
        if (!resp) return send_empty(c, r->code);
        return send_buf(c, r->code, resp, r->resp_len, "application/json");
    }
    if (r->too_large && !strstr(url, "/infer"))
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large");
    return route(t, r, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    ht *t = cls;
    hreq *r = *con_cls;
    if (!r) return;
    if (r->in_flight) atomic_fetch_sub(&t->inflight, 1);
    free(r->body);
    free(r->resp);
    free(r->id);
    free(r);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t l = strlen(buf);
    while (l && (buf[l - 1] == '\n' || buf[l - 1] == '\r')) buf[--l] = 0;
    QN_LOGW("http", "%s", buf);
}

/* ------------------------------------------------------------ lifecycle */

/* Parses listen into addr. 0 or -1. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *sl)
{
    char host[256] = "127.0.0.1";
    const char *port = s;
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (!e || e[1] != ':' || (size_t)(e - s - 1) >= sizeof host) return -1;
        memcpy(host, s + 1, (size_t)(e - s - 1));
        host[e - s - 1] = 0;
        port = e + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon) {
            if ((size_t)(colon - s) >= sizeof host) return -1;
            if (colon > s) {
                memcpy(host, s, (size_t)(colon - s));
                host[colon - s] = 0;
            }
            port = colon + 1;
        }
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 0 || p > 65535) return -1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *sl = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int ht_start(void *self)
{
    atomic_store(&((ht *)self)->started, 1);
    return 0;
}

static void ht_stop_intake(void *self) { atomic_store(&((ht *)self)->draining, 1); }
static int64_t ht_inflight(void *self) { return atomic_load(&((ht *)self)->inflight); }

static void ht_destroy(void *self)
{
    ht *t = self;
    if (!t) return;
    atomic_store(&t->draining, 1);
    if (t->d) {
        if (atomic_load(&t->inflight))
            QN_LOGW("http", "closing with %lld requests unanswered", (long long)atomic_load(&t->inflight));
        MHD_stop_daemon(t->d);
    }
    free(t);
}

static const qn_transport_i ht_iface = {
    .name = "http",
    .start = ht_start,
    .stop_intake = ht_stop_intake,
    .inflight = ht_inflight,
    .destroy = ht_destroy,
};

void qn_http_transport_set_ready(void *self) { atomic_store(&((ht *)self)->up, 1); }
int qn_http_transport_port(void *self) { return ((ht *)self)->port; }

int qn_http_transport_create(const qn_http_opts *o, qn_transport *out)
{
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (!o->listen || parse_listen(o->listen, &ss, &sl) != 0) {
        QN_LOGE("http", "--http wants ADDR:PORT (e.g. 127.0.0.1:8000, [::1]:8000, :8000), got '%s'",
                o->listen ? o->listen : "");
        return QN_EINVAL;
    }
    ht *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->core = o->core;
    t->reg = o->reg;
    t->cache = o->cache;
    t->max_body = o->max_body ? o->max_body : QN_HTTP_DEFAULT_MAX_BODY;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    t->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, t,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, as MHD wants */
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, t,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(o->threads > 0 ? o->threads : 2),
                            MHD_OPTION_CONNECTION_LIMIT, 4096u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                            MHD_OPTION_END);
    if (!t->d) {
        QN_LOGE("http", "cannot listen on %s (address in use or not available?)", o->listen);
        free(t);
        return QN_EEXTERNAL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(t->d, MHD_DAEMON_INFO_BIND_PORT);
    t->port = di ? di->port : 0;
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
    if (ss.ss_family == AF_INET6) QN_LOGI("http", "serving on http://[%s]:%d", host, t->port);
    else QN_LOGI("http", "serving on http://%s:%d", host, t->port);
    out->iface = &ht_iface;
    out->self = t;
    return 0;
}
