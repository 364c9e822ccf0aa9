/* model.c: loading an MLP from a safetensors file into a qn_model.
 *
 * Two formats (schemas/model.md): "quern.mlp.v1", the contract's plain f32
 * dense layers, and "quern.mlp.c1", the same plus compressed weight forms
 * (f16, int8 per-channel, CSR). The layer list is a JSON string in
 * __metadata__, parsed with jansson. Everything a kernel will later index
 * with (shapes, CSR row pointers and column indices) is checked here, so
 * kernels never bounds-check: a model that loads is safe to run. Every tensor
 * is copied into 64-byte aligned memory the model owns; the file is closed
 * before returning. */
#include "model.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "log.h"
#include "safetensors.h"

#define FMT_V1 "quern.mlp.v1"
#define FMT_C1 "quern.mlp.c1"

/* Dimensions and nnz are kept within int32 so that BLAS (int dims) and the
 * CSR I32 row pointers can hold them. */
#define DIM_MAX INT32_MAX

static const char *const g_act_names[QN_ACT_COUNT] = {
    [QN_ACT_NONE] = "none",     [QN_ACT_RELU] = "relu", [QN_ACT_GELU] = "gelu",
    [QN_ACT_SIGMOID] = "sigmoid", [QN_ACT_TANH] = "tanh", [QN_ACT_SOFTMAX] = "softmax",
};

static const char *const g_rep_names[QN_REP_COUNT] = {
    [QN_REP_F32] = "f32",         [QN_REP_F16] = "f16",          [QN_REP_I8] = "int8",
    [QN_REP_CSR_F32] = "csr_f32", [QN_REP_CSR_I8] = "csr_int8",
};

const char *qn_act_name(qn_act a) { return (unsigned)a < QN_ACT_COUNT ? g_act_names[a] : "?"; }

int qn_act_from_name(const char *s, qn_act *out)
{
    for (int i = 0; s && i < QN_ACT_COUNT; i++)
        if (strcmp(s, g_act_names[i]) == 0) { *out = (qn_act)i; return 0; }
    return QN_EFORMAT;
}

const char *qn_rep_name(qn_rep r) { return (unsigned)r < QN_REP_COUNT ? g_rep_names[r] : "?"; }

static int rep_from_name(const char *s, qn_rep *out)
{
    for (int i = 0; s && i < QN_REP_COUNT; i++)
        if (strcmp(s, g_rep_names[i]) == 0) { *out = (qn_rep)i; return 0; }
    return QN_EFORMAT;
}

size_t qn_layer_bytes(const qn_layer *l)
{
    size_t o = (size_t)l->out, dense = (size_t)l->out * (size_t)l->in, nnz = (size_t)l->nnz;
    size_t b = l->bias ? o * 4 : 0;
    switch (l->rep) {
    case QN_REP_F32: return b + dense * 4;
    case QN_REP_F16: return b + dense * 2;
    case QN_REP_I8: return b + dense + o * 4;
    case QN_REP_CSR_F32: return b + (o + 1) * 4 + nnz * 4 + nnz * 4;
    case QN_REP_CSR_I8: return b + (o + 1) * 4 + nnz * 4 + nnz + o * 4;
    default: return b;
    }
}

/* ---- reference counting */

static void layer_free(qn_layer *l)
{
    if (l->kernel_free && l->kernel_data) l->kernel_free(l->kernel_data);
    free(l->bias);
    free(l->w);
    free(l->w_f16);
    free(l->w_i8);
    free(l->w_scale);
    free(l->csr_indptr);
    free(l->csr_indices);
    free(l->csr_f32);
    free(l->csr_i8);
}

static void model_free(qn_model *m)
{
    if (m->backend && m->backend->iface->model_release)
        m->backend->iface->model_release((qn_backend *)m->backend, m, m->backend_state);
    for (int i = 0; m->layers && i < m->nlayers; i++) layer_free(&m->layers[i]);
    free(m->layers);
    free(m);
}

qn_model *qn_model_ref(qn_model *m)
{
    int prev = atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    QN_ASSERT(prev > 0);
    return m;
}

void qn_model_unref(qn_model **pm)
{
    if (!pm || !*pm) return;
    qn_model *m = *pm;
    *pm = NULL;
    /* acq_rel: the thread that frees must see every other thread's last use. */
    int prev = atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel);
    QN_ASSERT(prev > 0);
    if (prev == 1) model_free(m);
}

/* ---- loading */

typedef struct load_ctx {
    const qn_st_file *st;
    int li;            /* layer index, for messages */
    char *err;
    size_t errlen;
} load_ctx;

static void lerr(load_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void lerr(load_ctx *c, const char *fmt, ...)
{
    if (!c->err || !c->errlen) return;
    int n = c->li >= 0 ? snprintf(c->err, c->errlen, "layer %d: ", c->li) : 0;
    if (n < 0 || (size_t)n >= c->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Copies t's bytes into fresh aligned memory (at least one cache line, so an
 * empty CSR array is still a valid pointer). */
static int copy_out(load_ctx *c, const qn_st_tensor *t, void **dst)
{
    *dst = qn_alloc_aligned(t->nbytes ? t->nbytes : 64, 0);
    if (!*dst) {
        lerr(c, "out of memory copying \"%s\" (%zu bytes)", t->name, t->nbytes);
        return QN_ENOMEM;
    }
    if (t->nbytes) memcpy(*dst, t->data, t->nbytes);
    return 0;
}

/* Resolves the tensor named by layer key `key` and checks its dtype and shape
 * (dims[i] < 0: any extent, which the caller then reads back). A missing key
 * or tensor and a wrong dtype are QN_EFORMAT; a wrong shape is QN_ESHAPE. */
static int get_tensor(load_ctx *c, json_t *layer, const char *key, qn_dtype dt, int ndim,
                      const int64_t *dims, const qn_st_tensor **out)
{
    json_t *jn = json_object_get(layer, key);
    if (!json_is_string(jn)) {
        lerr(c, "\"%s\" must name a tensor", key);
        return QN_EFORMAT;
    }
    const qn_st_tensor *t = qn_st_find(c->st, json_string_value(jn));
    if (!t) {
        lerr(c, "%s tensor \"%s\" is not in the file", key, json_string_value(jn));
        return QN_EFORMAT;
    }
    if (t->dtype != dt) {
        lerr(c, "%s tensor \"%s\" is %s, expected %s", key, t->name, qn_dtype_st_name(t->dtype),
             qn_dtype_st_name(dt));
        return QN_EFORMAT;
    }
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = dims[d] < 0 || t->shape[d] == dims[d];
    if (!ok) {
        char want[96] = "", *p = want;
        for (int d = 0; d < ndim; d++)
            p += dims[d] < 0 ? snprintf(p, (size_t)(want + sizeof want - p), "%s?", d ? "," : "")
                             : snprintf(p, (size_t)(want + sizeof want - p), "%s%lld", d ? "," : "",
                                        (long long)dims[d]);
        lerr(c, "%s tensor \"%s\" has shape of %d dims, expected [%s]", key, t->name, t->ndim, want);
        return QN_ESHAPE;
    }
    *out = t;
    return 0;
}

/* Optional "in"/"out" ints: *v stays as is when absent. */
static int get_dim(load_ctx *c, json_t *layer, const char *key, int required, int64_t *v)
{
    json_t *j = json_object_get(layer, key);
    if (!j || json_is_null(j)) {
        if (required) {
            lerr(c, "\"%s\" is required for this repr", key);
            return QN_EFORMAT;
        }
        return 0;
    }
    if (!json_is_integer(j) || json_integer_value(j) <= 0 || json_integer_value(j) > DIM_MAX) {
        lerr(c, "\"%s\" must be an integer in [1, %d]", key, DIM_MAX);
        return QN_EFORMAT;
    }
    if (*v >= 0 && *v != json_integer_value(j)) {
        lerr(c, "\"%s\" is %lld but the weight says %lld", key, (long long)json_integer_value(j),
             (long long)*v);
        return QN_ESHAPE;
    }
    *v = json_integer_value(j);
    return 0;
}

/* Row pointers start at 0, never decrease and end at nnz; every column index
 * is in [0, in). This is what lets the sparse kernels index without checks. */
static int check_csr(load_ctx *c, const qn_layer *l)
{
    const int32_t *p = l->csr_indptr;
    if (p[0] != 0) {
        lerr(c, "indptr[0] is %d, must be 0", p[0]);
        return QN_EFORMAT;
    }
    for (int64_t r = 0; r < l->out; r++)
        if (p[r + 1] < p[r]) {
            lerr(c, "indptr decreases at row %lld", (long long)r);
            return QN_EFORMAT;
        }
    if (p[l->out] != l->nnz) {
        lerr(c, "indptr ends at %d but there are %lld values", p[l->out], (long long)l->nnz);
        return QN_EFORMAT;
    }
    /* seen[col] = last row that used col: a repeated column within a row
     * would mean "sum" to one kernel and "last wins" to another. */
    int rc = 0;
    int64_t *seen = malloc((size_t)l->in * sizeof *seen);
    if (!seen) {
        lerr(c, "out of memory checking the CSR indices");
        return QN_ENOMEM;
    }
    for (int64_t i = 0; i < l->in; i++) seen[i] = -1;
    for (int64_t r = 0; r < l->out && rc == 0; r++)
        for (int64_t k = p[r]; k < p[r + 1]; k++) {
            int32_t col = l->csr_indices[k];
            if (col < 0 || col >= l->in) {
                lerr(c, "column index %d at %lld is outside [0, %lld)", col, (long long)k,
                     (long long)l->in);
                rc = QN_EFORMAT;
                break;
            }
            if (seen[col] == r) {
                lerr(c, "column %d appears twice in row %lld", col, (long long)r);
                rc = QN_EFORMAT;
                break;
            }
            seen[col] = r;
        }
    free(seen);
    return rc;
}

static int load_layer(load_ctx *c, json_t *jl, int compressed, qn_layer *l)
{
    int rc;
    const qn_st_tensor *t;
    if (!json_is_object(jl)) {
        lerr(c, "not a JSON object");
        return QN_EFORMAT;
    }
    json_t *jt = json_object_get(jl, "type");
    if (!json_is_string(jt) || strcmp(json_string_value(jt), "dense") != 0) {
        lerr(c, "\"type\" must be \"dense\"");
        return QN_EFORMAT;
    }
    if (qn_act_from_name(json_string_value(json_object_get(jl, "activation")), &l->act) != 0) {
        lerr(c, "\"activation\" must be one of none, relu, gelu, sigmoid, tanh, softmax");
        return QN_EFORMAT;
    }
    l->rep = QN_REP_F32;
    json_t *jr = json_object_get(jl, "repr");
    if (jr) {
        if (!compressed) {
            lerr(c, "\"repr\" needs format " FMT_C1);
            return QN_EFORMAT;
        }
        if (rep_from_name(json_string_value(jr), &l->rep) != 0) {
            lerr(c, "\"repr\" must be one of f32, f16, int8, csr_f32, csr_int8");
            return QN_EFORMAT;
        }
    }

    int64_t any2[2] = {-1, -1};
    l->in = l->out = -1;
    switch (l->rep) {
    case QN_REP_F32:
    case QN_REP_F16:
    case QN_REP_I8: {
        qn_dtype dt = l->rep == QN_REP_F32 ? QN_DTYPE_F32 : l->rep == QN_REP_F16 ? QN_DTYPE_F16
                                                                                : QN_DTYPE_I8;
        if ((rc = get_tensor(c, jl, "weight", dt, 2, any2, &t)) != 0) return rc;
        if (t->shape[0] <= 0 || t->shape[1] <= 0 || t->shape[0] > DIM_MAX || t->shape[1] > DIM_MAX) {
            lerr(c, "weight shape [%lld, %lld]: dims must be in [1, %d]", (long long)t->shape[0],
                 (long long)t->shape[1], DIM_MAX);
            return QN_ESHAPE;
        }
        l->out = t->shape[0];
        l->in = t->shape[1];
        void **dst = l->rep == QN_REP_F32 ? (void **)&l->w
                   : l->rep == QN_REP_F16 ? (void **)&l->w_f16 : (void **)&l->w_i8;
        if ((rc = copy_out(c, t, dst)) != 0) return rc;
        if (compressed) {
            if ((rc = get_dim(c, jl, "in", 0, &l->in)) != 0) return rc;
            if ((rc = get_dim(c, jl, "out", 0, &l->out)) != 0) return rc;
        }
        break;
    }
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8: {
        if (json_object_get(jl, "weight") && !json_is_null(json_object_get(jl, "weight"))) {
            lerr(c, "a CSR layer has no \"weight\" (indptr, indices and values instead)");
            return QN_EFORMAT;
        }
        if ((rc = get_dim(c, jl, "in", 1, &l->in)) != 0) return rc;
        if ((rc = get_dim(c, jl, "out", 1, &l->out)) != 0) return rc;
        int64_t pdim[1] = {l->out + 1}, any1[1] = {-1};
        if ((rc = get_tensor(c, jl, "indptr", QN_DTYPE_I32, 1, pdim, &t)) != 0) return rc;
        if ((rc = copy_out(c, t, (void **)&l->csr_indptr)) != 0) return rc;
        if ((rc = get_tensor(c, jl, "indices", QN_DTYPE_I32, 1, any1, &t)) != 0) return rc;
        l->nnz = t->shape[0];
        if (l->nnz > DIM_MAX) {
            lerr(c, "%lld non-zeros do not fit I32 row pointers", (long long)l->nnz);
            return QN_ESHAPE;
        }
        if ((rc = copy_out(c, t, (void **)&l->csr_indices)) != 0) return rc;
        int64_t vdim[1] = {l->nnz};
        qn_dtype vdt = l->rep == QN_REP_CSR_F32 ? QN_DTYPE_F32 : QN_DTYPE_I8;
        if ((rc = get_tensor(c, jl, "values", vdt, 1, vdim, &t)) != 0) return rc;
        if ((rc = copy_out(c, t, l->rep == QN_REP_CSR_F32 ? (void **)&l->csr_f32
                                                          : (void **)&l->csr_i8)) != 0)
            return rc;
        if ((rc = check_csr(c, l)) != 0) return rc;
        break;
    }
    default:
        QN_ASSERT(!"unreachable repr");
    }

    int64_t odim[1] = {l->out};
    if (l->rep == QN_REP_I8 || l->rep == QN_REP_CSR_I8) {
        if ((rc = get_tensor(c, jl, "scale", QN_DTYPE_F32, 1, odim, &t)) != 0) return rc;
        if ((rc = copy_out(c, t, (void **)&l->w_scale)) != 0) return rc;
    }
    json_t *jb = json_object_get(jl, "bias");
    if (jb && !json_is_null(jb)) {
        if ((rc = get_tensor(c, jl, "bias", QN_DTYPE_F32, 1, odim, &t)) != 0) return rc;
        if ((rc = copy_out(c, t, (void **)&l->bias)) != 0) return rc;
    }
    return 0;
}

int qn_model_load(const char *path, const char *name, int64_t version, qn_model **out, char *err,
                  size_t errlen)
{
    int rc;
    qn_st_file *st = NULL;
    json_t *layers = NULL;
    qn_model *m = NULL;
    load_ctx c = {.li = -1, .err = err, .errlen = errlen};
    *out = NULL;
    if (err && errlen) err[0] = '\0';

    if ((rc = qn_st_open(path, &st, err, errlen)) != 0) goto fail;
    c.st = st;

    rc = QN_EFORMAT;
    const char *fmt = qn_st_meta(st, "format");
    int compressed;
    if (fmt && strcmp(fmt, FMT_V1) == 0) compressed = 0;
    else if (fmt && strcmp(fmt, FMT_C1) == 0) compressed = 1;
    else {
        lerr(&c, "__metadata__.format is %s%s%s, expected \"" FMT_V1 "\" or \"" FMT_C1 "\"",
             fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "");
        goto fail;
    }
    const char *ls = qn_st_meta(st, "layers");
    if (!ls) {
        lerr(&c, "__metadata__.layers is missing");
        goto fail;
    }
    json_error_t jerr;
    layers = json_loads(ls, 0, &jerr);
    if (!layers) {
        lerr(&c, "__metadata__.layers is not valid JSON: %s", jerr.text);
        goto fail;
    }
    if (!json_is_array(layers) || json_array_size(layers) == 0 ||
        json_array_size(layers) > 100000) {
        lerr(&c, "__metadata__.layers must be a non-empty JSON array");
        goto fail;
    }

    rc = QN_ENOMEM;
    m = calloc(1, sizeof *m);
    if (!m) goto fail;
    atomic_init(&m->refs, 1);
    m->version = version;
    snprintf(m->name, sizeof m->name, "%s", name ? name : "");
    m->layers = calloc(json_array_size(layers), sizeof *m->layers);
    if (!m->layers) goto fail;

    for (size_t i = 0; i < json_array_size(layers); i++) {
        qn_layer *l = &m->layers[i];
        c.li = (int)i;
        m->nlayers = (int)i + 1; /* so that a failure frees what this layer got */
        if ((rc = load_layer(&c, json_array_get(layers, i), compressed, l)) != 0) goto fail;
        if (i > 0 && l->in != m->layers[i - 1].out) {
            lerr(&c, "input width %lld does not match the previous layer's output %lld",
                 (long long)l->in, (long long)m->layers[i - 1].out);
            rc = QN_ESHAPE;
            goto fail;
        }
        if (l->in > m->max_width) m->max_width = l->in;
        if (l->out > m->max_width) m->max_width = l->out;
        size_t weights = (l->rep == QN_REP_CSR_F32 || l->rep == QN_REP_CSR_I8)
                             ? (size_t)l->nnz
                             : (size_t)l->in * (size_t)l->out;
        m->param_count += weights + (l->bias ? (size_t)l->out : 0);
    }
    m->in_dim = m->layers[0].in;
    m->out_dim = m->layers[m->nlayers - 1].out;
    m->file_bytes = qn_st_file_size(st);

    json_decref(layers);
    qn_st_close(&st);
    *out = m;
    return 0;

fail:
    if (rc >= 0) { /* every failure sets its code; never report success without a model */
        rc = QN_EINTERNAL;
        lerr(&c, "internal error: the loader failed without a code");
    }
    if (m) model_free(m);
    json_decref(layers);
    qn_st_close(&st);
    return rc;
}
