/* compress.c: the compressor behind `quern compress` (compress.h): int8 /
 * fp16 quantization, magnitude pruning (single weights to CSR, or whole
 * neurons), written as a "quern.mlp.c1" safetensors file, and the
 * evaluation of what that cost against the f32 model. It works on copies of
 * the weights; the source model is only read. It must never write a file the
 * loader would refuse: the test loads everything it writes. */
#include "compress.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/kernels.h"
#include "error.h"
#include "log.h"
#include "safetensors.h"
#include "tensor.h"

/* One layer being built: dense weights (f32, possibly pruned) and bias. */
typedef struct {
    int64_t in, out;
    float *w;      /* [out, in], owned */
    float *bias;   /* [out] or NULL, owned */
    qn_act act;
} work_layer;

/* What is written for one layer (buffers owned, freed with the writer). */
typedef struct {
    qn_rep rep;
    int64_t in, out, nnz;
    void *weight;          /* F32 / F16 / I8 [out, in] (dense reprs) */
    float *scale;          /* [out] (int8 reprs) */
    int32_t *indptr, *indices;
    void *values;          /* F32 / I8 [nnz] */
    float *bias;           /* borrowed from work_layer */
    qn_act act;
} out_layer;

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Global magnitude pruning (as torch.nn.utils.prune.global_unstructured
 * with L1): zeroes exactly floor(frac * N) of the N weights of all layers
 * together, the smallest |w| first (ties by layer, then position). One
 * threshold for the whole model rather than one per layer: on the digits MLP
 * a per-layer 50% cut cost 6-12 accuracy points (mostly from the small
 * output layer), the global one 0.2-1.7 (bench/notes/kernels.md). */
static int prune_unstructured(work_layer *wl, int nl, double frac)
{
    int64_t n = 0;
    for (int i = 0; i < nl; i++) n += wl[i].in * wl[i].out;
    const int64_t k = (int64_t)floor(frac * (double)n);
    if (k <= 0) return 0;
    float *mag = malloc((size_t)n * sizeof(float));
    if (!mag) return QN_ENOMEM;
    int64_t at = 0;
    for (int i = 0; i < nl; i++)
        for (int64_t j = 0; j < wl[i].in * wl[i].out; j++) mag[at++] = fabsf(wl[i].w[j]);
    qsort(mag, (size_t)n, sizeof(float), cmp_float);
    const float thr = mag[k - 1];
    free(mag);
    int64_t below = 0; /* strictly below the threshold: all go */
    for (int i = 0; i < nl; i++)
        for (int64_t j = 0; j < wl[i].in * wl[i].out; j++) below += fabsf(wl[i].w[j]) < thr;
    int64_t ties = k - below; /* this many of the |w| == thr go, first ones first */
    for (int i = 0; i < nl; i++)
        for (int64_t j = 0; j < wl[i].in * wl[i].out; j++) {
            const float a = fabsf(wl[i].w[j]);
            if (a < thr) wl[i].w[j] = 0.0f;
            else if (a == thr && ties > 0) { wl[i].w[j] = 0.0f; ties--; }
        }
    return 0;
}

/* Removes floor(frac * out) neurons of layer a (smallest L2 norm of the
 * weight row), their bias, and the matching input columns of layer b. */
static int prune_structured(work_layer *a, work_layer *b, double frac)
{
    int64_t drop = (int64_t)floor(frac * (double)a->out);
    if (drop >= a->out) drop = a->out - 1;
    if (drop <= 0) return 0;
    const int64_t keep = a->out - drop;
    float *norm = malloc((size_t)a->out * sizeof(float)), *sorted = malloc((size_t)a->out * sizeof(float));
    unsigned char *kept = calloc((size_t)a->out, 1);
    float *wa = malloc((size_t)(keep * a->in) * sizeof(float)), *wb = malloc((size_t)(b->out * keep) * sizeof(float));
    float *ba = a->bias ? malloc((size_t)keep * sizeof(float)) : NULL;
    int rc = QN_ENOMEM;
    if (!norm || !sorted || !kept || !wa || !wb || (a->bias && !ba)) goto done;
    for (int64_t o = 0; o < a->out; o++) {
        double s = 0.0;
        for (int64_t i = 0; i < a->in; i++) s += (double)a->w[o * a->in + i] * a->w[o * a->in + i];
        norm[o] = sorted[o] = (float)sqrt(s);
    }
    qsort(sorted, (size_t)a->out, sizeof(float), cmp_float);
    const float thr = sorted[drop]; /* the smallest norm that stays */
    int64_t above = 0;
    for (int64_t o = 0; o < a->out; o++) above += norm[o] > thr;
    int64_t at_thr = keep - above; /* this many with norm == thr stay, first ones first */
    for (int64_t o = 0; o < a->out; o++) {
        if (norm[o] > thr) kept[o] = 1;
        else if (norm[o] == thr && at_thr > 0) { kept[o] = 1; at_thr--; }
    }
    int64_t j = 0;
    for (int64_t o = 0; o < a->out; o++) {
        if (!kept[o]) continue;
        memcpy(wa + j * a->in, a->w + o * a->in, (size_t)a->in * sizeof(float));
        if (ba) ba[j] = a->bias[o];
        for (int64_t r = 0; r < b->out; r++) wb[r * keep + j] = b->w[r * b->in + o];
        j++;
    }
    QN_ASSERT(j == keep);
    free(a->w);
    free(a->bias);
    free(b->w);
    a->w = wa;
    a->bias = ba;
    a->out = keep;
    b->w = wb;
    b->in = keep;
    wa = wb = ba = NULL;
    rc = 0;
done:
    free(norm);
    free(sorted);
    free(kept);
    free(wa);
    free(wb);
    free(ba);
    return rc;
}

/* Symmetric per-row int8 of w [out, in] (compress.h spells the rule). */
static void quantize_rows(const float *w, int64_t out, int64_t in, int8_t *q, float *scale)
{
    for (int64_t o = 0; o < out; o++) {
        float mx = 0.0f;
        for (int64_t i = 0; i < in; i++) mx = fabsf(w[o * in + i]) > mx ? fabsf(w[o * in + i]) : mx;
        const float s = mx > 0.0f ? mx / 127.0f : 1.0f;
        scale[o] = s;
        for (int64_t i = 0; i < in; i++) {
            float v = nearbyintf(w[o * in + i] / s);
            q[o * in + i] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
        }
    }
}

static size_t layer_bytes(qn_rep rep, int64_t in, int64_t out, int64_t nnz, int bias)
{
    qn_layer l = {.rep = rep, .in = in, .out = out, .nnz = nnz, .bias = bias ? (float *)1 : NULL};
    return qn_layer_bytes(&l);
}

/* Chooses the representation of a finished work layer and builds its
 * arrays. */
static int encode(const work_layer *w, const qn_compress_opts *o, out_layer *ol)
{
    const int64_t n = w->in * w->out;
    int64_t nnz = 0;
    for (int64_t i = 0; i < n; i++) nnz += w->w[i] != 0.0f;
    memset(ol, 0, sizeof *ol);
    ol->in = w->in;
    ol->out = w->out;
    ol->bias = w->bias;
    ol->act = w->act;
    qn_rep dense = o->int8 ? QN_REP_I8 : o->fp16 ? QN_REP_F16 : QN_REP_F32;
    qn_rep rep = dense;
    if (o->prune > 0.0 && !o->structured && !o->fp16) {
        qn_rep sparse = o->int8 ? QN_REP_CSR_I8 : QN_REP_CSR_F32;
        if (o->force_csr || layer_bytes(sparse, w->in, w->out, nnz, 0) < layer_bytes(dense, w->in, w->out, n, 0))
            rep = sparse;
    }
    ol->rep = rep;
    switch (rep) {
    case QN_REP_F32:
        ol->nnz = nnz;
        if (!(ol->weight = malloc((size_t)n * sizeof(float)))) return QN_ENOMEM;
        memcpy(ol->weight, w->w, (size_t)n * sizeof(float));
        return 0;
    case QN_REP_F16: {
        uint16_t *h = malloc((size_t)n * sizeof(uint16_t));
        if (!(ol->weight = h)) return QN_ENOMEM;
        ol->nnz = 0;
        for (int64_t i = 0; i < n; i++) {
            h[i] = qn_f32_to_f16(w->w[i]);
            ol->nnz += (h[i] & 0x7fff) != 0;
        }
        return 0;
    }
    case QN_REP_I8: {
        int8_t *q = malloc((size_t)n);
        ol->scale = malloc((size_t)w->out * sizeof(float));
        if (!(ol->weight = q) || !ol->scale) return QN_ENOMEM;
        quantize_rows(w->w, w->out, w->in, q, ol->scale);
        ol->nnz = 0;
        for (int64_t i = 0; i < n; i++) ol->nnz += q[i] != 0;
        return 0;
    }
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8: {
        const int i8 = rep == QN_REP_CSR_I8;
        int8_t *q = NULL;
        ol->indptr = malloc((size_t)(w->out + 1) * sizeof(int32_t));
        ol->indices = malloc((size_t)(nnz ? nnz : 1) * sizeof(int32_t));
        ol->values = malloc((size_t)(nnz ? nnz : 1) * (i8 ? 1 : sizeof(float)));
        if (!ol->indptr || !ol->indices || !ol->values) return QN_ENOMEM;
        if (i8) {
            /* scales from the kept weights (pruning removed the small ones,
             * so the row maximum is the same) */
            q = malloc((size_t)n);
            ol->scale = malloc((size_t)w->out * sizeof(float));
            if (!q || !ol->scale) { free(q); return QN_ENOMEM; }
            quantize_rows(w->w, w->out, w->in, q, ol->scale);
        }
        int64_t p = 0;
        ol->indptr[0] = 0;
        for (int64_t r = 0; r < w->out; r++) {
            for (int64_t i = 0; i < w->in; i++) {
                if (w->w[r * w->in + i] == 0.0f) continue;
                ol->indices[p] = (int32_t)i;
                if (i8) ((int8_t *)ol->values)[p] = q[r * w->in + i];
                else ((float *)ol->values)[p] = w->w[r * w->in + i];
                p++;
            }
            ol->indptr[r + 1] = (int32_t)p;
        }
        free(q);
        ol->nnz = p;
        return 0;
    }
    default: return QN_EINTERNAL;
    }
}

static void out_layer_free(out_layer *ol)
{
    free(ol->weight);
    free(ol->scale);
    free(ol->indptr);
    free(ol->indices);
    free(ol->values);
}

/* Adds one tensor to the list (names are kept in names[] for the lifetime of
 * the write). */
static void add_tensor(qn_st_tensor *t, size_t *nt, char (*names)[48], const char *name, qn_dtype dt, int ndim,
                       int64_t d0, int64_t d1, const void *data)
{
    snprintf(names[*nt], 48, "%s", name);
    qn_st_tensor *x = &t[*nt];
    memset(x, 0, sizeof *x);
    x->name = names[*nt];
    x->dtype = dt;
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->data = data;
    x->nbytes = (size_t)d0 * (ndim == 2 ? (size_t)d1 : 1) * qn_dtype_size(dt);
    (*nt)++;
}

int qn_compress_write(const qn_model *m, const qn_compress_opts *o, const char *path,
                      qn_compress_layer *info, char *err, size_t errlen)
{
    if (!m || !o || !path) return fail(err, errlen, QN_EINVAL, "missing argument");
    if (o->int8 && o->fp16) return fail(err, errlen, QN_EINVAL, "--int8 and --fp16 exclude each other");
    if (!(o->prune >= 0.0 && o->prune < 1.0)) return fail(err, errlen, QN_EINVAL, "--prune must be in [0, 1)");
    if (o->structured && !(o->prune > 0.0)) return fail(err, errlen, QN_EINVAL, "--structured needs --prune F > 0");
    if (o->force_csr && (o->structured || o->fp16 || !(o->prune > 0.0)))
        return fail(err, errlen, QN_EINVAL, "--csr goes with an unstructured --prune, without --fp16");
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i].rep != QN_REP_F32)
            return fail(err, errlen, QN_ENOTSUP, "layer %d is already %s: compress starts from an f32 model", i,
                        qn_rep_name(m->layers[i].rep));

    const int nl = m->nlayers;
    int rc = QN_ENOMEM;
    work_layer *wl = calloc((size_t)nl, sizeof *wl);
    out_layer *ol = calloc((size_t)nl, sizeof *ol);
    qn_st_tensor *tens = calloc((size_t)nl * 6, sizeof *tens);
    char(*names)[48] = calloc((size_t)nl * 6, sizeof *names);
    json_t *layers = json_array();
    char *layers_str = NULL;
    size_t nt = 0;
    if (!wl || !ol || !tens || !names || !layers) goto done;

    for (int i = 0; i < nl; i++) {
        const qn_layer *src = &m->layers[i];
        const size_t n = (size_t)(src->in * src->out);
        wl[i] = (work_layer){.in = src->in, .out = src->out, .act = src->act};
        if (!(wl[i].w = malloc(n * sizeof(float)))) goto done;
        memcpy(wl[i].w, src->w, n * sizeof(float));
        if (src->bias) {
            if (!(wl[i].bias = malloc((size_t)src->out * sizeof(float)))) goto done;
            memcpy(wl[i].bias, src->bias, (size_t)src->out * sizeof(float));
        }
    }
    if (o->prune > 0.0 && o->structured) {
        for (int i = 0; i + 1 < nl; i++)
            if ((rc = prune_structured(&wl[i], &wl[i + 1], o->prune))) goto done;
    } else if (o->prune > 0.0 && (rc = prune_unstructured(wl, nl, o->prune))) {
        goto done;
    }
    for (int i = 0; i < nl; i++) {
        if ((rc = encode(&wl[i], o, &ol[i]))) goto done;
        rc = QN_ENOMEM;
        const out_layer *L = &ol[i];
        char nm[48];
        json_t *jl = json_object();
        if (!jl || json_array_append_new(layers, jl)) goto done;
        json_object_set_new(jl, "type", json_string("dense"));
        json_object_set_new(jl, "repr", json_string(qn_rep_name(L->rep)));
        json_object_set_new(jl, "in", json_integer(L->in));
        json_object_set_new(jl, "out", json_integer(L->out));
        json_object_set_new(jl, "activation", json_string(qn_act_name(L->act)));
        if (L->rep == QN_REP_CSR_F32 || L->rep == QN_REP_CSR_I8) {
            snprintf(nm, sizeof nm, "layers.%d.indptr", i);
            add_tensor(tens, &nt, names, nm, QN_DTYPE_I32, 1, L->out + 1, 0, L->indptr);
            json_object_set_new(jl, "indptr", json_string(nm));
            snprintf(nm, sizeof nm, "layers.%d.indices", i);
            add_tensor(tens, &nt, names, nm, QN_DTYPE_I32, 1, L->nnz, 0, L->indices);
            json_object_set_new(jl, "indices", json_string(nm));
            snprintf(nm, sizeof nm, "layers.%d.values", i);
            add_tensor(tens, &nt, names, nm, L->rep == QN_REP_CSR_I8 ? QN_DTYPE_I8 : QN_DTYPE_F32, 1, L->nnz, 0, L->values);
            json_object_set_new(jl, "values", json_string(nm));
        } else {
            snprintf(nm, sizeof nm, "layers.%d.weight", i);
            add_tensor(tens, &nt, names, nm, L->rep == QN_REP_F32 ? QN_DTYPE_F32 : L->rep == QN_REP_F16 ? QN_DTYPE_F16 : QN_DTYPE_I8,
                       2, L->out, L->in, L->weight);
            json_object_set_new(jl, "weight", json_string(nm));
        }
        if (L->scale) {
            snprintf(nm, sizeof nm, "layers.%d.scale", i);
            add_tensor(tens, &nt, names, nm, QN_DTYPE_F32, 1, L->out, 0, L->scale);
            json_object_set_new(jl, "scale", json_string(nm));
        }
        if (L->bias) {
            snprintf(nm, sizeof nm, "layers.%d.bias", i);
            add_tensor(tens, &nt, names, nm, QN_DTYPE_F32, 1, L->out, 0, L->bias);
            json_object_set_new(jl, "bias", json_string(nm));
        } else {
            json_object_set_new(jl, "bias", json_null());
        }
        if (info) {
            info[i] = (qn_compress_layer){
                .rep = L->rep, .in = L->in, .out = L->out, .nnz = L->nnz,
                .bytes_before = qn_layer_bytes(&m->layers[i]),
                .bytes_after = layer_bytes(L->rep, L->in, L->out, L->nnz, L->bias != NULL),
            };
        }
    }
    if (!(layers_str = json_dumps(layers, JSON_COMPACT))) goto done;
    const char *meta[4] = {"format", "quern.mlp.c1", "layers", layers_str};
    rc = qn_st_write(path, tens, nt, meta, 2, err, errlen);
done:
    if (rc == QN_ENOMEM) fail(err, errlen, rc, "out of memory");
    for (int i = 0; wl && i < nl; i++) {
        free(wl[i].w);
        free(wl[i].bias);
        if (ol) out_layer_free(&ol[i]);
    }
    free(wl);
    free(ol);
    free(tens);
    free(names);
    json_decref(layers);
    free(layers_str);
    return rc;
}

int qn_compress_forward(qn_model *m, const float *x, int64_t rows, float *y)
{
    int rc = QN_ENOMEM;
    qn_kernel_scratch *s = NULL;
    float *a = malloc((size_t)(rows * m->max_width) * sizeof(float));
    float *b = malloc((size_t)(rows * m->max_width) * sizeof(float));
    if (!a || !b || qn_kernel_scratch_create(&s)) goto done;
    const float *in = x;
    for (int i = 0; i < m->nlayers; i++) {
        qn_layer *l = &m->layers[i];
        if (!l->kernel_data && (rc = qn_kernel_layer_prepare(l))) goto done;
        float *outp = i + 1 == m->nlayers ? y : (i % 2 ? b : a);
        if ((rc = qn_kernel_layer_forward(l, in, rows, outp, s))) goto done;
        in = outp;
    }
    rc = 0;
done:
    qn_kernel_scratch_destroy(&s);
    free(a);
    free(b);
    return rc;
}

static int64_t argmax(const float *v, int64_t n)
{
    int64_t best = 0;
    for (int64_t j = 1; j < n; j++)
        if (v[j] > v[best]) best = j;
    return best;
}

int qn_compress_evaluate(qn_model *ref, qn_model *cmp, const float *x, int64_t rows, const float *labels,
                         int64_t lcols, qn_compress_eval *out)
{
    memset(out, 0, sizeof *out);
    if (ref->in_dim != cmp->in_dim || ref->out_dim != cmp->out_dim) return QN_ESHAPE;
    if (labels && lcols != 1 && lcols != ref->out_dim) return QN_ESHAPE;
    const int64_t od = ref->out_dim;
    float *yr = malloc((size_t)(rows * od) * sizeof(float)), *yc = malloc((size_t)(rows * od) * sizeof(float));
    int rc = QN_ENOMEM;
    if (!yr || !yc) goto done;
    if ((rc = qn_compress_forward(ref, x, rows, yr)) || (rc = qn_compress_forward(cmp, x, rows, yc))) goto done;
    double sum = 0.0;
    for (int64_t i = 0; i < rows * od; i++) {
        double e = fabs((double)yr[i] - (double)yc[i]);
        if (!(e <= out->max_abs)) out->max_abs = e; /* NaN propagates as the max */
        sum += e;
    }
    out->mean_abs = rows > 0 && od > 0 ? sum / (double)(rows * od) : 0.0;
    if (labels) {
        int64_t hit_r = 0, hit_c = 0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t want;
            if (lcols == 1) {
                float v = labels[r];
                if (!(v >= 0.0f && v < (float)od && v == floorf(v))) { rc = QN_EINVAL; goto done; }
                want = (int64_t)v;
            } else {
                want = argmax(labels + r * lcols, lcols);
            }
            hit_r += argmax(yr + r * od, od) == want;
            hit_c += argmax(yc + r * od, od) == want;
        }
        out->has_accuracy = 1;
        out->acc_ref = rows ? (double)hit_r / (double)rows : 0.0;
        out->acc_cmp = rows ? (double)hit_c / (double)rows : 0.0;
    }
    rc = 0;
done:
    free(yr);
    free(yc);
    return rc;
}
