/* bench_kernels.c: throughput of the compressed-layer kernels (lib/cpu/
 * kernels.h) against OpenBLAS on the same shapes (through the backend's f32
 * path, qn_cpu_dense_f32: per-row sgemv for a few rows, sgemm above), and of the int8
 * kernel against oneDNN's u8s8s32 GEMM (when built with it), plus the
 * density at which CSR SpMM stops beating dense sgemm. Single-threaded
 * throughout (OpenBLAS and oneDNN pinned to one thread): the worker runs one
 * forward per executor thread.
 *
 * Every number is the median over --samples samples of a timed loop long
 * enough (>= --sample-ms) to swamp the clock; the kernels compared on one
 * shape are sampled in turn (interleaved). The machine is shared, so read
 * ratios within one group, not absolute numbers across runs.
 *
 * Usage: bench_kernels [--quick] [--only dense|csr|csr-small|intraop] [--helpers N] [--samples N] [--sample-ms MS]
 *                      [--csr-batches 1,8,64,256] [--csr-dens 0.05,0.1,0.2,0.3]
 * (--only csr-small: 1024x1024 and 1024x256 at the --csr-dens densities and
 * --csr-batches batch sizes, packed vs blocked vs previous gather kernel;
 * --only intraop: each representation at 1, 2, 4 rows, unsplit vs split over
 * --helpers helper threads.)
 * Output: one line per measurement, "kernel layer batch us GFLOP/s ratio-vs-sgemm". */
#include <cblas.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef QN_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

#include "cpu/dense.h"
#include "cpu/kcommon.h"
#include "cpu/kernels.h"
#include "cpu/kernels_impl.h"
#include "log.h"
#include "tensor.h"

static int g_samples = 7;
static int64_t g_csr_batches[16] = {1, 8, 64, 256};
static int g_ncsr_batches = 4;
static double g_sample_ms = 20.0;
static double g_dens[16] = {0.05, 0.1, 0.2, 0.3};
static int g_ndens = 4;

typedef void (*bench_fn)(void *ctx);

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A group of kernels compared on one shape: their samples are interleaved
 * (one sample of each in turn), so a burst of load from other processes hits
 * all of them alike and the ratios survive it. */
#define GROUP_MAX 16
typedef struct {
    int n;
    const char *name[GROUP_MAX];
    bench_fn fn[GROUP_MAX];
    void *ctx[GROUP_MAX];
    double ns[GROUP_MAX]; /* median ns per call, after group_run */
} group;

static void group_add(group *g, const char *name, bench_fn fn, void *ctx)
{
    if (g->n == GROUP_MAX) abort();
    g->name[g->n] = name;
    g->fn[g->n] = fn;
    g->ctx[g->n] = ctx;
    g->n++;
}

static void group_run(group *g)
{
    long iters[GROUP_MAX];
    static double smp[GROUP_MAX][64];
    const int ns = g_samples < 64 ? g_samples : 64;
    for (int i = 0; i < g->n; i++) {
        g->fn[i](g->ctx[i]); /* warm caches and scratch */
        uint64_t t0 = qn_now_ns();
        g->fn[i](g->ctx[i]);
        double one = (double)(qn_now_ns() - t0);
        iters[i] = (long)(g_sample_ms * 1e6 / (one > 1 ? one : 1)) + 1;
    }
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < g->n; i++) {
            uint64_t a = qn_now_ns();
            for (long j = 0; j < iters[i]; j++) g->fn[i](g->ctx[i]);
            smp[i][k] = (double)(qn_now_ns() - a) / (double)iters[i];
        }
    for (int i = 0; i < g->n; i++) {
        qsort(smp[i], (size_t)ns, sizeof(double), cmp_d);
        g->ns[i] = smp[i][ns / 2];
    }
}

static uint64_t g_rng = 88172645463325252ull;
static float rndf(float lo, float hi)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return lo + (hi - lo) * (float)(g_rng >> 40) / 16777216.0f;
}

typedef struct {
    qn_layer *l;
    const float *x;
    int64_t rows;
    float *y;
    qn_kernel_scratch *s;
} fwd_ctx;

static void run_fwd(void *p)
{
    fwd_ctx *c = p;
    if (qn_kernel_layer_forward(c->l, c->x, c->rows, c->y, c->s) != 0) abort();
}

#ifdef QN_HAVE_DNNL
typedef struct {
    int64_t rows, in, out;
    const float *x;
    uint8_t *xq;
    float *xs;
    int32_t *zp;
    const int8_t *w;
    const int32_t *colsum;
    const float *ws, *bias;
    int32_t *c;
    float *y;
    int full; /* also quantize and dequantize (+bias, ReLU) like our kernel */
} dnnl_ctx;

static void run_dnnl(void *p)
{
    dnnl_ctx *d = p;
    if (d->full)
        for (int64_t r = 0; r < d->rows; r++) qn_kernel_quantize_row(d->x + r * d->in, d->in, d->xq + r * d->in, &d->xs[r], &d->zp[r]);
    /* C [rows, out] = A [rows, in] · B where B is our W [out, in] read transposed */
    if (dnnl_gemm_u8s8s32('N', 'T', 'F', d->rows, d->out, d->in, 1.0f, d->xq, d->in, 0, d->w, d->in, 0, 0.0f, d->c,
                          d->out, &(int32_t){0}) != dnnl_success)
        abort();
    if (d->full)
        for (int64_t r = 0; r < d->rows; r++) {
            const int32_t zp = d->zp[r];
            const float xs = d->xs[r];
            for (int64_t o = 0; o < d->out; o++) {
                float v = (float)(d->c[r * d->out + o] - zp * d->colsum[o]) * (xs * d->ws[o]) + d->bias[o];
                d->y[r * d->out + o] = v > 0.0f ? v : 0.0f;
            }
        }
}
#endif

static void report(const char *kernel, int64_t out, int64_t in, int64_t rows, double ns, double ref_ns)
{
    double gf = 2.0 * (double)rows * (double)in * (double)out / ns;
    printf("%-22s %5lldx%-5lld %4lld %10.1f %8.2f %7.2fx\n", kernel, (long long)out, (long long)in, (long long)rows,
           ns / 1e3, gf, ref_ns / ns);
    fflush(stdout);
}

/* Dense kernels: sgemm, int8 on every supported path, oneDNN, f16. */
static void bench_dense(int quick)
{
    const int64_t layers[2][2] = {{1024, 1024}, {4096, 1024}};
    const int64_t batches[4] = {1, 8, 64, 256};
    printf("# dense: kernel  layer(out x in)  batch  us/call  GFLOP/s(GOP/s int8)  speed vs f32 (same layer, batch)\n");
    printf("# f32(openblas) is the backend's dense path, qn_cpu_dense_f32: sgemv per row up to a few rows, sgemm above\n");
    printf("# every kernel includes bias + ReLU; int8 includes the per-row activation quantization\n");
    qn_kernel_scratch *s = NULL;
    if (qn_kernel_scratch_create(&s)) abort();
    const qn_kpath best = qn_kernel_path();
    for (int li = 0; li < 2; li++) {
        const int64_t out = layers[li][0], in = layers[li][1];
        float *w = qn_alloc_aligned((size_t)(out * in) * sizeof(float), 0);
        int8_t *w8 = qn_alloc_aligned((size_t)(out * in), 0);
        uint16_t *w16 = qn_alloc_aligned((size_t)(out * in) * sizeof(uint16_t), 0);
        float *sc = malloc((size_t)out * sizeof(float)), *bias = malloc((size_t)out * sizeof(float));
        int32_t *colsum = calloc((size_t)out, sizeof(int32_t));
        for (int64_t o = 0; o < out; o++) {
            sc[o] = 0.01f;
            bias[o] = rndf(-0.1f, 0.1f);
            for (int64_t k = 0; k < in; k++) {
                w[o * in + k] = rndf(-1.0f, 1.0f);
                w8[o * in + k] = (int8_t)(w[o * in + k] * 127.0f);
                w16[o * in + k] = qn_f32_to_f16(w[o * in + k]);
                colsum[o] += w8[o * in + k];
            }
        }
        /* one prepared copy of each layer per path */
        qn_layer lf = {.rep = QN_REP_F32, .in = in, .out = out, .act = QN_ACT_RELU, .bias = bias, .w = w};
        qn_layer li8[QN_KPATH_COUNT], lh[QN_KPATH_COUNT];
        if (qn_kernel_layer_prepare(&lf)) abort();
        for (int p = 0; p < QN_KPATH_COUNT; p++) {
            li8[p] = (qn_layer){.rep = QN_REP_I8, .in = in, .out = out, .act = QN_ACT_RELU, .bias = bias, .w_i8 = w8, .w_scale = sc};
            lh[p] = (qn_layer){.rep = QN_REP_F16, .in = in, .out = out, .act = QN_ACT_RELU, .bias = bias, .w_f16 = w16};
            if (qn_kernel_set_path((qn_kpath)p) != 0) continue;
            if (qn_kernel_layer_prepare(&li8[p]) || qn_kernel_layer_prepare(&lh[p])) abort();
        }
        qn_kernel_set_path(best);
        for (int bi = 0; bi < 4; bi++) {
            const int64_t rows = batches[bi];
            if (quick && rows == 8) continue;
            float *x = qn_alloc_aligned((size_t)(rows * in) * sizeof(float), 0);
            float *y = qn_alloc_aligned((size_t)(rows * out) * sizeof(float), 0);
            for (int64_t i = 0; i < rows * in; i++) x[i] = rndf(0.0f, 1.0f);
            group g = {0};
            fwd_ctx cf = {&lf, x, rows, y, s}, ci[QN_KPATH_COUNT], ch[QN_KPATH_COUNT];
            static const char *const i8n[QN_KPATH_COUNT] = {"int8/portable", "int8/avx2", "int8/avxvnni", "int8/avx512vnni"};
            static const char *const f16n[QN_KPATH_COUNT] = {"f16/portable", "f16/f16c", NULL, "f16/avx512"};
            group_add(&g, "f32(openblas)", run_fwd, &cf);
            for (int p = QN_KPATH_COUNT - 1; p >= 0; p--) {
                if (!li8[p].kernel_data) continue;
                if (p == QN_KPATH_PORTABLE && (quick || rows > 8)) continue; /* seconds per call */
                ci[p] = (fwd_ctx){&li8[p], x, rows, y, s};
                ch[p] = (fwd_ctx){&lh[p], x, rows, y, s};
                group_add(&g, i8n[p], run_fwd, &ci[p]);
                if (f16n[p]) group_add(&g, f16n[p], run_fwd, &ch[p]); /* avxvnni runs the f16c kernel */
            }
#ifdef QN_HAVE_DNNL
            dnnl_ctx d = {.rows = rows, .in = in, .out = out, .x = x, .w = w8, .colsum = colsum, .ws = sc, .bias = bias, .y = y};
            d.xq = malloc((size_t)(rows * in));
            d.xs = malloc((size_t)rows * sizeof(float));
            d.zp = malloc((size_t)rows * sizeof(int32_t));
            d.c = malloc((size_t)(rows * out) * sizeof(int32_t));
            for (int64_t r = 0; r < rows; r++) qn_kernel_quantize_row(x + r * in, in, d.xq + r * in, &d.xs[r], &d.zp[r]);
            dnnl_ctx dfull = d;
            dfull.full = 1;
            group_add(&g, "onednn_u8s8s32(gemm)", run_dnnl, &d);
            group_add(&g, "onednn+quant+dequant", run_dnnl, &dfull);
#endif
            group_run(&g);
            for (int i = 0; i < g.n; i++) report(g.name[i], out, in, rows, g.ns[i], g.ns[0]);
#ifdef QN_HAVE_DNNL
            free(d.xq); free(d.xs); free(d.zp); free(d.c);
#endif
            free(x);
            free(y);
        }
        lf.kernel_free(lf.kernel_data);
        for (int p = 0; p < QN_KPATH_COUNT; p++) {
            if (li8[p].kernel_free) li8[p].kernel_free(li8[p].kernel_data);
            if (lh[p].kernel_free) lh[p].kernel_free(lh[p].kernel_data);
        }
        free(w); free(w8); free(w16); free(sc); free(bias); free(colsum);
    }
    qn_kernel_scratch_destroy(&s);
}

/* CSR vs dense sgemm over densities; prints the crossover per batch size. */
static void bench_csr(int quick)
{
    const int64_t out = 1024, in = 1024;
    const double dens[] = {0.01, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9};
    const int nd = (int)(sizeof dens / sizeof dens[0]);
    printf("# csr: kernel  layer  batch  us/call  GFLOP/s (dense-equivalent)  speed vs the dense f32 path (qn_cpu_dense_f32), measured interleaved per density (>1: sparse wins)\n");
    qn_kernel_scratch *s = NULL;
    if (qn_kernel_scratch_create(&s)) abort();
    float *wd = qn_alloc_aligned((size_t)(out * in) * sizeof(float), 0);
    for (int64_t i = 0; i < out * in; i++) wd[i] = rndf(-1.0f, 1.0f);
    qn_layer lf = {.rep = QN_REP_F32, .in = in, .out = out, .act = QN_ACT_RELU, .w = wd};
    if (qn_kernel_layer_prepare(&lf)) abort();
    int32_t *indptr = malloc((size_t)(out + 1) * sizeof(int32_t)), *idx = malloc((size_t)(out * in) * sizeof(int32_t));
    float *vf = malloc((size_t)(out * in) * sizeof(float)), *sc = malloc((size_t)out * sizeof(float));
    int8_t *vi = malloc((size_t)(out * in));
    for (int64_t o = 0; o < out; o++) sc[o] = 0.01f;
    setenv("QN_CSR", "sparse", 1);
    for (int bi = 0; bi < g_ncsr_batches; bi++) {
        const int64_t rows = g_csr_batches[bi];
        if (quick && rows == 8) continue;
        float *x = qn_alloc_aligned((size_t)(rows * in) * sizeof(float), 0);
        float *y = qn_alloc_aligned((size_t)(rows * out) * sizeof(float), 0);
        for (int64_t i = 0; i < rows * in; i++) x[i] = rndf(0.0f, 1.0f);
        fwd_ctx cd = {&lf, x, rows, y, s};
        double cross[2] = {0, 0};
        int lost[2] = {0, 0}; /* crossover: the last density before sparse first loses */
        for (int di = 0; di < nd; di++) {
            int64_t nnz = 0;
            indptr[0] = 0;
            for (int64_t o = 0; o < out; o++) {
                for (int64_t k = 0; k < in; k++)
                    if (rndf(0.0f, 1.0f) < dens[di]) { idx[nnz] = (int32_t)k; vf[nnz] = rndf(-1.0f, 1.0f); vi[nnz] = (int8_t)(vf[nnz] * 127); nnz++; }
                indptr[o + 1] = (int32_t)nnz;
            }
            qn_layer l[2];
            fwd_ctx c[2];
            group g = {0};
            char name[3][64];
            snprintf(name[0], sizeof name[0], "dense-f32 (d=%.2f)", dens[di]);
            group_add(&g, name[0], run_fwd, &cd);
            for (int v = 0; v < 2; v++) {
                l[v] = (qn_layer){.rep = v ? QN_REP_CSR_I8 : QN_REP_CSR_F32, .in = in, .out = out, .act = QN_ACT_RELU,
                                  .csr_indptr = indptr, .csr_indices = idx, .csr_f32 = v ? NULL : vf, .csr_i8 = v ? vi : NULL,
                                  .w_scale = v ? sc : NULL, .nnz = nnz};
                if (qn_kernel_layer_prepare(&l[v])) abort();
                c[v] = (fwd_ctx){&l[v], x, rows, y, s};
                snprintf(name[v + 1], sizeof name[v + 1], "%s d=%.2f", v ? "csr_i8" : "csr_f32", dens[di]);
                group_add(&g, name[v + 1], run_fwd, &c[v]);
            }
            group_run(&g);
            for (int i = 0; i < 3; i++) report(g.name[i], out, in, rows, g.ns[i], g.ns[0]);
            for (int v = 0; v < 2; v++) {
                if (g.ns[v + 1] < g.ns[0] && !lost[v]) cross[v] = dens[di];
                else lost[v] = 1;
                l[v].kernel_free(l[v].kernel_data);
            }
        }
        printf("# crossover batch %lld: sparse faster than dense at every density up to: csr_f32 %.2f, csr_i8 %.2f (of those tried)\n",
               (long long)rows, cross[0], cross[1]);
        free(x);
        free(y);
    }
    unsetenv("QN_CSR");
    lf.kernel_free(lf.kernel_data);
    free(wd); free(indptr); free(idx); free(vf); free(vi); free(sc);
    qn_kernel_scratch_destroy(&s);
}

/* The batch-1 CSR kernel before the packed form (a masked vgatherdps dot
 * product per output row), kept here only as the reference the packed
 * kernel is measured against. */
__attribute__((target("avx512f"))) static void gather_dot(const qn_csr_args *a)
{
    for (int64_t r = 0; r < a->rows; r++) {
        const float *x = a->x + r * a->in;
        for (int64_t o = 0; o < a->out; o++) {
            const int64_t p1 = a->indptr[o + 1];
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            int64_t p = a->indptr[o];
            for (; p + 32 <= p1; p += 32) {
                __m512i i0 = _mm512_loadu_si512((const void *)(a->indices + p));
                __m512i i1 = _mm512_loadu_si512((const void *)(a->indices + p + 16));
                acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a->vf + p), _mm512_i32gather_ps(i0, x, 4), acc0);
                acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a->vf + p + 16), _mm512_i32gather_ps(i1, x, 4), acc1);
            }
            for (; p < p1; p += 16) {
                const int64_t n = p1 - p;
                const __mmask16 m = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
                __m512i i0 = _mm512_maskz_loadu_epi32(m, a->indices + p);
                __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i0, x, 4);
                acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a->vf + p), g, acc0);
            }
            a->y[r * a->out + o] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        }
    }
}

typedef struct {
    qn_csr_args a;
    void (*fn)(const qn_csr_args *);
} spmm_ctx;

static void run_spmm(void *p)
{
    spmm_ctx *c = p;
    c->fn(&c->a);
}

/* Small batches in detail: per layer shape, density and batch size, the
 * dense f32 path against the sparse kernel the layer runs (packed below
 * QN_CSR_PACKED_BELOW_* rows), the transposed-block kernel on the same rows
 * (the CSR arrays without the pack) and, at batch 1 on AVX-512, the previous
 * gather-dot kernel. */
static void bench_csr_small(const double *dens, int nd)
{
    const int64_t shapes[2][2] = {{1024, 1024}, {1024, 256}};
    const qn_kpath path = qn_kernel_path();
    void (*blocked)(const qn_csr_args *) = path == QN_KPATH_AVX512VNNI ? qn_csr_spmm_avx512
                                           : path == QN_KPATH_PORTABLE ? qn_csr_spmm_portable : qn_csr_spmm_avx2;
    printf("# csr-small: kernel  layer(out x in)  batch  us/call  GFLOP/s (dense-equivalent)  speed vs the dense f32 path (>1: sparse wins)\n");
    printf("# csr_* = the layer's sparse forward (packed kernel up to %d rows on avx512vnni, %d on avx2/avxvnni, + bias/ReLU); blocked = transposed-block kernel without the pack; gather-dot = the previous batch-1 kernel\n",
           QN_CSR_PACKED_BELOW_AVX512 - 1, QN_CSR_PACKED_BELOW_AVX2 - 1);
    qn_kernel_scratch *s = NULL;
    if (qn_kernel_scratch_create(&s)) abort();
    setenv("QN_CSR", "sparse", 1);
    for (int si = 0; si < 2; si++) {
        const int64_t out = shapes[si][0], in = shapes[si][1];
        float *wd = qn_alloc_aligned((size_t)(out * in) * sizeof(float), 0);
        for (int64_t i = 0; i < out * in; i++) wd[i] = rndf(-1.0f, 1.0f);
        qn_layer lf = {.rep = QN_REP_F32, .in = in, .out = out, .act = QN_ACT_RELU, .w = wd};
        if (qn_kernel_layer_prepare(&lf)) abort();
        int32_t *indptr = malloc((size_t)(out + 1) * sizeof(int32_t)), *idx = malloc((size_t)(out * in) * sizeof(int32_t));
        float *vf = malloc((size_t)(out * in) * sizeof(float)), *sc = malloc((size_t)out * sizeof(float));
        int8_t *vi = malloc((size_t)(out * in));
        for (int64_t o = 0; o < out; o++) sc[o] = 0.01f;
        float *xt = qn_alloc_aligned((size_t)(in * QN_CSR_RB_MAX) * sizeof(float), 0);
        for (int di = 0; di < nd; di++) {
            int64_t nnz = 0;
            indptr[0] = 0;
            for (int64_t o = 0; o < out; o++) {
                for (int64_t k = 0; k < in; k++)
                    if (rndf(0.0f, 1.0f) < dens[di]) { idx[nnz] = (int32_t)k; vf[nnz] = rndf(-1.0f, 1.0f); vi[nnz] = (int8_t)(vf[nnz] * 127); nnz++; }
                indptr[o + 1] = (int32_t)nnz;
            }
            qn_layer l[2];
            for (int v = 0; v < 2; v++) {
                l[v] = (qn_layer){.rep = v ? QN_REP_CSR_I8 : QN_REP_CSR_F32, .in = in, .out = out, .act = QN_ACT_RELU,
                                  .csr_indptr = indptr, .csr_indices = idx, .csr_f32 = v ? NULL : vf, .csr_i8 = v ? vi : NULL,
                                  .w_scale = v ? sc : NULL, .nnz = nnz};
                if (qn_kernel_layer_prepare(&l[v])) abort();
            }
            for (int bi = 0; bi < g_ncsr_batches; bi++) {
                const int64_t rows = g_csr_batches[bi];
                float *x = qn_alloc_aligned((size_t)(rows * in) * sizeof(float), 0);
                float *y = qn_alloc_aligned((size_t)(rows * out) * sizeof(float), 0);
                for (int64_t i = 0; i < rows * in; i++) x[i] = rndf(0.0f, 1.0f);
                group g = {0};
                char name[5][64];
                fwd_ctx cd = {&lf, x, rows, y, s}, c[2];
                snprintf(name[0], sizeof name[0], "dense-f32 (d=%.2f)", dens[di]);
                group_add(&g, name[0], run_fwd, &cd);
                for (int v = 0; v < 2; v++) {
                    c[v] = (fwd_ctx){&l[v], x, rows, y, s};
                    snprintf(name[v + 1], sizeof name[v + 1], "%s d=%.2f", v ? "csr_i8" : "csr_f32", dens[di]);
                    group_add(&g, name[v + 1], run_fwd, &c[v]);
                }
                spmm_ctx sb = {.a = {.rows = rows, .in = in, .out = out, .indptr = indptr, .indices = idx, .vf = vf,
                                     .x = x, .xt = xt, .y = y, .o_end = out}, .fn = blocked};
                snprintf(name[3], sizeof name[3], "blocked_f32 d=%.2f", dens[di]);
                group_add(&g, name[3], run_spmm, &sb);
                spmm_ctx sg = sb;
                sg.fn = gather_dot;
                if (path == QN_KPATH_AVX512VNNI && rows == 1) {
                    snprintf(name[4], sizeof name[4], "gather-dot_f32 d=%.2f", dens[di]);
                    group_add(&g, name[4], run_spmm, &sg);
                }
                group_run(&g);
                for (int i = 0; i < g.n; i++) report(g.name[i], out, in, rows, g.ns[i], g.ns[0]);
                free(x);
                free(y);
            }
            for (int v = 0; v < 2; v++) l[v].kernel_free(l[v].kernel_data);
        }
        lf.kernel_free(lf.kernel_data);
        free(wd); free(indptr); free(idx); free(vf); free(vi); free(sc); free(xt);
    }
    unsetenv("QN_CSR");
    qn_kernel_scratch_destroy(&s);
}

/* Intra-op split of one few-row forward (kcommon.h, issue 9 item 8): each
 * representation on the wide model's layers, unsplit against split over a
 * pool of --helpers helper threads (spinning 250 µs, as the backend's),
 * called back to back so the helper stays awake (what the worker's direct
 * path sees at one job in flight, bench/notes/intraop.md). The split is
 * forced (threshold 1 byte) to find where it starts to win. */
typedef struct {
    qn_layer *l;
    const qn_sgemm_packed *pw; /* f32 only */
    const float *x;
    int64_t rows;
    float *y;
    qn_kernel_scratch *s;
    qn_cpu_pool *pool;
} split_ctx;

static void run_split(void *p)
{
    split_ctx *c = p;
    int rc;
    if (c->l->rep == QN_REP_F32)
        rc = qn_cpu_dense_f32_auto_pool(c->x, c->rows, c->l->in, c->l->w, c->pw, c->l->out, c->l->bias, c->l->act,
                                        c->y, c->pool);
    else
        rc = qn_kernel_layer_forward_pool(c->l, c->x, c->rows, c->y, c->s, c->pool);
    if (rc) abort();
}

static void bench_intraop(int helpers)
{
    const int64_t shapes[3][2] = {{1024, 256}, {1024, 1024}, {16, 1024}};
    qn_cpu_pool *pool = NULL;
    if (qn_cpu_pool_create(helpers, 250, &pool)) abort();
    qn_kernel_scratch *s = NULL;
    if (qn_kernel_scratch_create(&s)) abort();
    qn_kernel_set_split_min_bytes(1);
    setenv("QN_CSR", "sparse", 1);
    printf("# intraop: kernel  layer(out x in)  batch  us/call  GFLOP/s  split speed-up (>1: the split wins), %d helper(s)\n",
           helpers);
    for (int si = 0; si < 3; si++) {
        const int64_t out = shapes[si][0], in = shapes[si][1];
        float *wd = qn_alloc_aligned((size_t)(out * in) * sizeof(float), 0);
        float *bias = qn_alloc_aligned((size_t)out * sizeof(float), 0);
        int8_t *w8 = malloc((size_t)(out * in));
        uint16_t *w16 = malloc((size_t)(out * in) * sizeof(uint16_t));
        float *sc = malloc((size_t)out * sizeof(float));
        int32_t *indptr = malloc((size_t)(out + 1) * sizeof(int32_t)), *idx = malloc((size_t)(out * in) * sizeof(int32_t));
        float *vf = malloc((size_t)(out * in) * sizeof(float));
        int8_t *vi = malloc((size_t)(out * in));
        for (int64_t i = 0; i < out * in; i++) {
            wd[i] = rndf(-1.0f, 1.0f) / 32;
            w8[i] = (int8_t)(wd[i] * 32 * 127);
            w16[i] = qn_f32_to_f16(wd[i]);
        }
        int64_t nnz = 0;
        indptr[0] = 0;
        for (int64_t o = 0; o < out; o++) {
            bias[o] = rndf(-0.1f, 0.1f);
            sc[o] = 1.0f / (32 * 127);
            for (int64_t k = 0; k < in; k++)
                if (rndf(0.0f, 1.0f) < 0.1f) { idx[nnz] = (int32_t)k; vf[nnz] = wd[o * in + k]; vi[nnz] = w8[o * in + k]; nnz++; }
            indptr[o + 1] = (int32_t)nnz;
        }
        qn_layer ls[5] = {
            {.rep = QN_REP_F32, .in = in, .out = out, .act = QN_ACT_RELU, .w = wd, .bias = bias},
            {.rep = QN_REP_I8, .in = in, .out = out, .act = QN_ACT_RELU, .w_i8 = w8, .w_scale = sc, .bias = bias},
            {.rep = QN_REP_F16, .in = in, .out = out, .act = QN_ACT_RELU, .w_f16 = w16, .bias = bias},
            {.rep = QN_REP_CSR_F32, .in = in, .out = out, .act = QN_ACT_RELU, .csr_indptr = indptr, .csr_indices = idx,
             .csr_f32 = vf, .nnz = nnz, .bias = bias},
            {.rep = QN_REP_CSR_I8, .in = in, .out = out, .act = QN_ACT_RELU, .csr_indptr = indptr, .csr_indices = idx,
             .csr_i8 = vi, .w_scale = sc, .nnz = nnz, .bias = bias},
        };
        static const char *const names[5] = {"f32(packed)", "int8", "f16", "csr_f32 d=0.1", "csr_i8 d=0.1"};
        qn_sgemm_packed *pw = NULL;
        if (qn_sgemm_pack(wd, out, in, &pw)) abort();
        for (int v = 1; v < 5; v++)
            if (qn_kernel_layer_prepare(&ls[v])) abort();
        for (int64_t rows = 1; rows <= 4; rows *= 2) {
            float *x = qn_alloc_aligned((size_t)(rows * in) * sizeof(float), 0);
            float *y = qn_alloc_aligned((size_t)(rows * out) * sizeof(float), 0);
            for (int64_t i = 0; i < rows * in; i++) x[i] = rndf(-1.0f, 1.0f);
            for (int v = 0; v < 5; v++) {
                group g = {0};
                split_ctx c1 = {&ls[v], pw, x, rows, y, s, NULL}, c2 = c1;
                c2.pool = pool;
                char n1[64], n2[64];
                snprintf(n1, sizeof n1, "%s", names[v]);
                snprintf(n2, sizeof n2, "%s split", names[v]);
                group_add(&g, n1, run_split, &c1);
                group_add(&g, n2, run_split, &c2);
                group_run(&g);
                for (int i = 0; i < g.n; i++) report(g.name[i], out, in, rows, g.ns[i], g.ns[0]);
            }
            free(x);
            free(y);
        }
        for (int v = 1; v < 5; v++) ls[v].kernel_free(ls[v].kernel_data);
        qn_sgemm_packed_free(pw);
        free(wd); free(bias); free(w8); free(w16); free(sc); free(indptr); free(idx); free(vf); free(vi);
    }
    unsetenv("QN_CSR");
    qn_kernel_set_split_min_bytes(0);
    qn_kernel_scratch_destroy(&s);
    qn_cpu_pool_destroy(&pool);
}

int main(int argc, char **argv)
{
    /* libgomp (oneDNN's runtime) reads OMP_NUM_THREADS when it loads, before
     * main: pin it by re-executing ourselves once with it set. */
    if (!getenv("OMP_NUM_THREADS")) {
        setenv("OMP_NUM_THREADS", "1", 1);
        execv("/proc/self/exe", argv);
    }
    int quick = 0, helpers = 1;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else if (strcmp(argv[i], "--samples") == 0 && i + 1 < argc) g_samples = atoi(argv[++i]);
        else if (strcmp(argv[i], "--sample-ms") == 0 && i + 1 < argc) g_sample_ms = atof(argv[++i]);
        else if (strcmp(argv[i], "--helpers") == 0 && i + 1 < argc) helpers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--csr-dens") == 0 && i + 1 < argc) {
            g_ndens = 0;
            for (char *t = strtok(argv[++i], ","); t && g_ndens < 16; t = strtok(NULL, ",")) g_dens[g_ndens++] = atof(t);
        }
        else if (strcmp(argv[i], "--csr-batches") == 0 && i + 1 < argc) {
            g_ncsr_batches = 0;
            for (char *t = strtok(argv[++i], ","); t && g_ncsr_batches < 16; t = strtok(NULL, ","))
                g_csr_batches[g_ncsr_batches++] = atoll(t);
        }
        else { fprintf(stderr, "usage: %s [--quick] [--only dense|csr] [--samples N] [--sample-ms MS] [--csr-batches 1,8,64,256] [--csr-dens 0.05,0.1,0.2,0.3]\n", argv[0]); return 2; }
    }
    qn_log_init_from_env();
    qn_log_set_level(QN_LOG_WARN); /* the per-prepare sparse/dense log would drown the table */
    openblas_set_num_threads(1);
    printf("# kernel path %s, OpenBLAS %s, samples %d x >= %.0f ms, median\n", qn_kernel_path_name(), openblas_get_config(),
           g_samples, g_sample_ms);
#ifndef QN_HAVE_DNNL
    printf("# oneDNN not found at build time: no u8s8s32 comparison\n");
#endif
    if (!only || strcmp(only, "dense") == 0) bench_dense(quick);
    if (!only || strcmp(only, "csr") == 0) bench_csr(quick);
    if (only && strcmp(only, "csr-small") == 0) bench_csr_small(g_dens, g_ndens);
    if (only && strcmp(only, "intraop") == 0) bench_intraop(helpers);
    return 0;
}
