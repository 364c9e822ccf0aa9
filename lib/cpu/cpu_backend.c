/* cpu_backend.c: the CPU backend behind backend.h. A forward runs the layers
 * in order, x → buf[0] → buf[1] → buf[0] ... → y, with the two ping-pong
 * buffers owned by the calling thread's context, and the last layer writing
 * straight into y. Each layer goes to its kernel by one switch on its weight
 * representation (layer_check at prepare, layer_forward at run); a new kernel
 * (f16, int8, CSR in lib/cpu/) plugs in as one case in each.
 *
 * It must never touch OpenBLAS's thread count after create: that setting is
 * process-global, and changing it while another thread is inside a BLAS call
 * is unsafe. */
#include "backend.h"

#include <cblas.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cpu/dense.h"
#include "cpu/kernels.h"
#include "cpu/pool.h"
#include "cpu/sgemm_packed.h"
#include "error.h"
#include "log.h"
#include "tensor.h"

typedef struct cpu_backend {
    qn_backend pub;   /* pub.impl points back here */
    int blas_threads; /* what create gave OpenBLAS, kept for logs */
    qn_cpu_pool *pool; /* intra-op helpers (pool.h), NULL when none */
} cpu_backend;

/* Per-thread scratch: two ping-pong activation buffers, each cap floats,
 * 64-byte aligned, grown on demand and never shrunk (a batch size once seen
 * is likely to come again). */
typedef struct cpu_ctx {
    float *buf[2];
    size_t cap;
    qn_kernel_scratch *ks; /* the compressed-layer kernels' own scratch */
    int intraop;           /* ctx_set_intraop: layers of every representation may use the pool */
} cpu_ctx;

/* Local names for logs; model.c's qn_rep_name says the same, but this file
 * must link without the loader (the backend tests build models by hand). */
static const char *rep_name(qn_rep r)
{
    static const char *const names[QN_REP_COUNT] = {
        [QN_REP_F32] = "f32", [QN_REP_F16] = "f16", [QN_REP_I8] = "int8",
        [QN_REP_CSR_F32] = "csr_f32", [QN_REP_CSR_I8] = "csr_int8",
    };
    return (unsigned)r < QN_REP_COUNT ? names[r] : "invalid";
}

/* Can this backend run layer l? 0, or a QN_E* code with the reason in why.
 * One case per representation, mirrored in layer_forward. */
static int layer_check(const qn_layer *l, char *why, size_t whylen)
{
    switch (l->rep) {
    case QN_REP_F32:
        if (!l->w) { snprintf(why, whylen, "f32 layer without weights"); return QN_EINVAL; }
        return 0;
    case QN_REP_F16:
    case QN_REP_I8:
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8:
        return 0; /* lib/cpu/kernels.h: packed at prepare (layer_prepare) */
    case QN_REP_COUNT:
    default:
        snprintf(why, whylen, "unknown weight representation %d", (int)l->rep);
        return QN_EFORMAT;
    }
}

/* Builds what a layer's kernel needs once, at load. */
static int layer_prepare(qn_layer *l)
{
    switch (l->rep) {
    case QN_REP_F32: return 0;
    case QN_REP_F16:
    case QN_REP_I8:
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8: return qn_kernel_layer_prepare(l);
    case QN_REP_COUNT:
    default: return QN_EFORMAT;
    }
}

/* Runs one layer: x [rows, l->in] → y [rows, l->out]. */
static int layer_forward(const qn_layer *l, const float *x, int64_t rows, float *y, cpu_ctx *c,
                         qn_cpu_pool *pool)
{
    switch (l->rep) {
    case QN_REP_F32: {
        /* the packing cpu_model_prepare made, if any; dense.c picks per call
         * (and splits over the pool, if given, where that wins) */
        const qn_sgemm_packed *pw = l->kernel_free == qn_sgemm_packed_free ? l->kernel_data : NULL;
        return qn_cpu_dense_f32_auto_pool(x, rows, l->in, l->w, pw, l->out, l->bias, l->act, y, pool);
    }
    case QN_REP_F16:
    case QN_REP_I8:
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8:
        /* the same intra-op treatment as f32: with a pool (an intra-op
         * context), few rows of a big layer split their output panels */
        return qn_kernel_layer_forward_pool(l, x, rows, y, c->ks, pool);
    case QN_REP_COUNT:
    default: return QN_ENOTSUP; /* layer_check refused these at prepare */
    }
}

/* f32: packs W once for the packed-weight kernel (sgemm_packed.h) into the
 * layer's kernel_data, which the model owns and frees at its last unref. The
 * original w stays (other code reads it; BLAS still serves the shapes where
 * it wins). Skipped when the packed kernel cannot run here (QN_SGEMM=blas, no
 * AVX2); kept when a previous prepare made it. A failed packing only costs
 * speed: that layer stays on BLAS. */
static void pack_f32(qn_model *m, qn_layer *l, int i)
{
    if (qn_sgemm_isa_default() == QN_SGEMM_BLAS || l->kernel_data) return;
    qn_sgemm_packed *pw = NULL;
    int rc = qn_sgemm_pack(l->w, l->out, l->in, &pw);
    if (rc) {
        QN_LOGW("cpu", "model %s v%lld layer %d: packing f32 weights failed (%s), BLAS only", m->name,
                (long long)m->version, i, qn_strerror(rc));
        return;
    }
    l->kernel_data = pw;
    l->kernel_free = qn_sgemm_packed_free;
}

/* Checks the whole model: a chain of layers whose widths agree, each one
 * runnable here, then packs f32 weights (pack_f32). Leaves *state NULL: what
 * it makes lives in the layers. */
static int cpu_model_prepare(qn_backend *be, qn_model *m, void **state)
{
    char why[160] = "";
    int rc = QN_EINVAL;
    *state = NULL;
    if (!m->layers || m->nlayers < 1) { snprintf(why, sizeof why, "no layers"); goto fail; }
    for (int i = 0; i < m->nlayers; i++) {
        const qn_layer *l = &m->layers[i];
        int64_t want_in = i == 0 ? m->in_dim : m->layers[i - 1].out;
        if (l->in < 1 || l->out < 1 || l->in > INT_MAX || l->out > INT_MAX) {
            snprintf(why, sizeof why, "layer %d: shape [%lld, %lld] out of range", i,
                     (long long)l->out, (long long)l->in);
            rc = QN_ESHAPE;
            goto fail;
        }
        if (l->in != want_in) {
            snprintf(why, sizeof why, "layer %d takes %lld inputs, gets %lld", i, (long long)l->in,
                     (long long)want_in);
            rc = QN_ESHAPE;
            goto fail;
        }
        if ((unsigned)l->act >= QN_ACT_COUNT) {
            snprintf(why, sizeof why, "layer %d: unknown activation %d", i, (int)l->act);
            rc = QN_EFORMAT;
            goto fail;
        }
        char lwhy[128];
        if ((rc = layer_check(l, lwhy, sizeof lwhy))) {
            snprintf(why, sizeof why, "layer %d: %s", i, lwhy);
            goto fail;
        }
        if ((rc = layer_prepare(&m->layers[i]))) {
            snprintf(why, sizeof why, "layer %d: %s kernel prepare failed", i, rep_name(l->rep));
            goto fail;
        }
    }
    if (m->layers[m->nlayers - 1].out != m->out_dim) {
        snprintf(why, sizeof why, "last layer gives %lld outputs, model says %lld",
                 (long long)m->layers[m->nlayers - 1].out, (long long)m->out_dim);
        rc = QN_ESHAPE;
        goto fail;
    }
    for (int i = 0; i < m->nlayers; i++)
        if (m->layers[i].rep == QN_REP_F32) pack_f32(m, &m->layers[i], i);
    return 0;
fail:
    QN_LOGW("cpu", "model %s v%lld not runnable on cpu: %s (%s)", m->name, (long long)m->version, why,
            qn_strerror(rc));
    return rc;
}

static void cpu_model_release(qn_backend *be, qn_model *m, void *state)
{
    /* Nothing to free: prepare keeps no state; packed f32 weights live in
     * the layers (kernel_data) and go with the model. */
    (void)state;
}

static int cpu_ctx_create(qn_backend *be, void **out)
{
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) return QN_ENOMEM;
    if (qn_kernel_scratch_create(&c->ks) != 0) {
        free(c);
        return QN_ENOMEM;
    }
    *out = c;
    return 0;
}

static void cpu_ctx_destroy(qn_backend *be, void *vctx)
{
    cpu_ctx *c = vctx;
    if (!c) return;
    free(c->buf[0]);
    free(c->buf[1]);
    qn_kernel_scratch_destroy(&c->ks);
    free(c);
}

/* Makes both buffers hold at least n floats. On failure the old buffers stay
 * (the context remains usable for smaller batches). */
static int ctx_reserve(cpu_ctx *c, size_t n)
{
    if (n <= c->cap) return 0;
    if (n > SIZE_MAX / sizeof(float)) return QN_ENOMEM;
    float *a = qn_alloc_aligned(n * sizeof(float), 0);
    float *b = qn_alloc_aligned(n * sizeof(float), 0);
    if (!a || !b) { free(a); free(b); return QN_ENOMEM; }
    free(c->buf[0]);
    free(c->buf[1]);
    c->buf[0] = a;
    c->buf[1] = b;
    c->cap = n;
    return 0;
}

static int cpu_forward(qn_backend *be, void *vctx, const qn_model *m, void *state, const float *x,
                       int64_t rows, float *y)
{
    cpu_ctx *c = vctx;
    if (!c || !m || !x || !y || rows < 0 || m->nlayers < 1 || !m->layers) return QN_EINVAL;
    if (rows == 0) return 0;

    /* Only the outputs of all but the last layer land in the scratch. */
    int64_t width = 0;
    for (int i = 0; i + 1 < m->nlayers; i++)
        if (m->layers[i].out > width) width = m->layers[i].out;
    if (width > 0) {
        if ((uint64_t)rows > SIZE_MAX / (uint64_t)width) return QN_ENOMEM;
        int rc = ctx_reserve(c, (size_t)rows * (size_t)width);
        if (rc) {
            QN_LOGE("cpu", "model %s v%lld: no scratch for %lld rows x %lld", m->name,
                    (long long)m->version, (long long)rows, (long long)width);
            return rc;
        }
    }

    qn_cpu_pool *pool = c->intraop ? ((cpu_backend *)be->impl)->pool : NULL;
    const float *in = x;
    for (int i = 0; i < m->nlayers; i++) {
        const qn_layer *l = &m->layers[i];
        float *o = i + 1 == m->nlayers ? y : c->buf[i & 1];
        int rc = layer_forward(l, in, rows, o, c, pool);
        if (rc) {
            QN_LOGE("cpu", "model %s v%lld layer %d (%s): %s", m->name, (long long)m->version, i,
                    rep_name(l->rep), qn_strerror(rc));
            return rc;
        }
        in = o;
    }
    return 0;
}

static void cpu_ctx_set_intraop(qn_backend *be, void *vctx, int on)
{
    cpu_ctx *c = vctx;
    if (c) c->intraop = on != 0;
}

static void cpu_destroy(qn_backend *be)
{
    cpu_backend *b = be->impl;
    if (b->pool) {
        int64_t jobs = 0, helped = 0;
        qn_cpu_pool_stats(b->pool, &jobs, &helped);
        QN_LOGI("cpu", "intra-op pool: %lld split layer forwards, %lld chunks run by helpers", (long long)jobs,
                (long long)helped);
    }
    qn_cpu_pool_destroy(&b->pool);
    free(b);
}

/* An integer from the environment in [lo, hi], else def (with a warning if
 * set but not valid). */
static int env_int(const char *name, int def, int lo, int hi)
{
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) {
        QN_LOGW("cpu", "%s=%s: not an integer in [%d, %d], using %d", name, s, lo, hi, def);
        return def;
    }
    return (int)v;
}

/* One helper per online core beyond the caller's, at most 3 (the split's
 * chunking is sized for few threads), none with QN_INTRAOP=0. Spin 250 µs:
 * bench/notes/intraop.md (a helper woken from its futex for each request
 * made the split slower than one core; one still spinning halves the
 * forward). */
static void pool_start(cpu_backend *b)
{
    if (!env_int("QN_INTRAOP", 1, 0, 1)) return;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int helpers = ncpu > 4 ? 3 : (int)ncpu - 1;
    if (helpers < 1) return;
    int spin = env_int("QN_INTRAOP_SPIN_US", 250, 0, 1000000);
    int rc = qn_cpu_pool_create(helpers, spin, &b->pool);
    if (rc) QN_LOGW("cpu", "intra-op pool not started (%s): single-row forwards stay on one core", qn_strerror(rc));
    else QN_LOGI("cpu", "intra-op pool: %d helper thread(s), spin %d us", helpers, spin);
}

static const qn_backend_i cpu_iface = {
    /* name: what logs and --device print */
    .name = "cpu",
    /* model_prepare: validates the layer chain and that every layer's weight
     * representation has a kernel here; packs f32 weights into the layers'
     * kernel_data (state stays NULL) */
    .model_prepare = cpu_model_prepare,
    /* model_release: nothing: prepare keeps no state (packings are the model's) */
    .model_release = cpu_model_release,
    /* ctx_create / ctx_destroy: the per-thread ping-pong activation scratch */
    .ctx_create = cpu_ctx_create,
    .ctx_destroy = cpu_ctx_destroy,
    /* ctx_set_intraop: lets this context's few-row layers split over the
     * backend's helper pool (f32: dense.c qn_cpu_dense_f32_auto_pool; int8,
     * f16, CSR: kernels.h qn_kernel_layer_forward_pool) */
    .ctx_set_intraop = cpu_ctx_set_intraop,
    /* forward: layer by layer through the context's scratch, last layer into y */
    .forward = cpu_forward,
    /* destroy: stops the helper pool, frees the backend struct; OpenBLAS's
     * thread setting stays */
    .destroy = cpu_destroy,
};

int qn_backend_cpu_create(int blas_threads, qn_backend **out)
{
    if (blas_threads < 1 || !out) return QN_EINVAL;
    cpu_backend *b = calloc(1, sizeof *b);
    if (!b) return QN_ENOMEM;
    b->pub.iface = &cpu_iface;
    b->pub.impl = b;
    b->blas_threads = blas_threads;
    /* Process-global in OpenBLAS: every BLAS call in the process now uses up
     * to this many threads. The worker's executors each run their own
     * forwards and ask for 1 (bench/notes/dense.md has the measurements). */
    openblas_set_num_threads(blas_threads);
    QN_LOGI("cpu", "backend up: %s, core %s, %d BLAS thread(s)", openblas_get_config(),
            openblas_get_corename(), blas_threads);
    pool_start(b);
    *out = &b->pub;
    return 0;
}
