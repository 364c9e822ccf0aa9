/* bench_sgemm.c: the packed-weight f32 kernel (lib/cpu/sgemm_packed.h) against
 * OpenBLAS on the dense layer y = act(x·Wᵀ + b), single-threaded, to decide
 * and record (bench/notes/sgemm.md):
 *   1. per layer shape and row count: GFLOP/s of the packed kernel (default
 *      ISA and, where the CPU has it, AVX2 too), one cblas_sgemm, one
 *      cblas_sgemv per row (rows <= 8), all with bias + relu included;
 *   2. the whole 256→1024→1024→16 forward at rows 1, 64, 256: the layer loop
 *      with AUTO on packed weights vs AUTO on BLAS only (the backend before);
 *   3. (--intraop, alone) that forward at rows 1..4 on one core vs split over
 *      the intra-op pool (lib/cpu/pool.h, one helper per extra core, spin
 *      --spin-us), back to back and with --gap-us of idle between calls (the
 *      worker's case: a request every ~170 µs); bench/notes/intraop.md.
 * Every sample times a loop of calls lasting about --sample-ms; the variants
 * of one case are interleaved sample by sample, so a noisy neighbour hits
 * all alike; we report the median of --reps samples.
 * Usage: bench_sgemm [--reps N] [--sample-ms M] [--shape IN OUT] [--rows R]
 *                    [--cfg ISA:MRxNV[:KC[:MC]]]... [--no-model] [--model-only]
 *                    [--intraop [--spin-us S] [--gap-us G]]
 *   --shape/--rows restrict section 1; each --cfg adds a packed variant with
 *   that tile (0 = default) for tuning. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cpu/dense.h"
#include "cpu/pool.h"
#include "cpu/sgemm_packed.h"
#include "error.h"
#include "log.h"
#include "tensor.h"
#include "bench_util.h"

static int g_reps = 7;
static double g_sample_ms = 10;


/* ---- timing, as bench_dense.c: a variant is a closure called iters times per sample */
typedef struct variant {
    char label[48];
    void (*fn)(struct variant *v);
    const void *a;       /* what fn works on */
    qn_dense_path path;
    qn_sgemm_opts opts;
    int64_t rows;
    long iters;
    double samples[64];  /* µs per call */
} variant;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double med(const variant *v)
{
    double t[64];
    memcpy(t, v->samples, sizeof(double) * (size_t)g_reps);
    qsort(t, (size_t)g_reps, sizeof(double), cmp_d);
    return g_reps % 2 ? t[g_reps / 2] : 0.5 * (t[g_reps / 2 - 1] + t[g_reps / 2]);
}

static void measure(variant *v, int nv)
{
    for (int i = 0; i < nv; i++) {
        v[i].fn(&v[i]); /* warm: page in, fill caches */
        uint64_t t0 = qn_now_ns();
        long k = 0;
        while (qn_now_ns() - t0 < 1000000ull || k < 2) { v[i].fn(&v[i]); k++; }
        double per = (double)(qn_now_ns() - t0) / (double)k;
        v[i].iters = (long)(g_sample_ms * 1e6 / per) + 1;
    }
    for (int r = 0; r < g_reps; r++)
        for (int i = 0; i < nv; i++) {
            uint64_t t0 = qn_now_ns();
            for (long k = 0; k < v[i].iters; k++) v[i].fn(&v[i]);
            v[i].samples[r] = (double)(qn_now_ns() - t0) / 1e3 / (double)v[i].iters;
        }
}

/* ---- one layer */
typedef struct {
    int64_t in, out;
    float *w, *bias, *x, *y;
    qn_sgemm_packed *pw;
} layer;

static void v_layer(variant *v)
{
    const layer *l = v->a;
    int rc;
    if (v->path == QN_DENSE_PACKED)
        rc = qn_sgemm_packed_run(l->pw, l->x, v->rows, l->bias, QN_ACT_RELU, l->y, &v->opts);
    else
        rc = qn_cpu_dense_f32_packed(l->x, v->rows, l->in, l->w, NULL, l->out, l->bias, QN_ACT_RELU, l->y, v->path);
    if (rc) { fprintf(stderr, "%s: %s\n", v->label, qn_strerror(rc)); abort(); }
}

#define MAX_CFG 8
static qn_sgemm_opts g_cfg[MAX_CFG];
static int g_ncfg;

static void bench_layer(int64_t in, int64_t out, const int64_t *rows_set, int nrows)
{
    int64_t maxrows = 0;
    for (int i = 0; i < nrows; i++) maxrows = rows_set[i] > maxrows ? rows_set[i] : maxrows;
    layer l = {.in = in, .out = out};
    l.w = falloc_rand(in * out, 1.0f / sqrtf((float)in));
    l.bias = falloc_rand(out, 0.1f);
    l.x = falloc_rand(maxrows * in, 1.0f);
    l.y = falloc_rand(maxrows * out, 0.0f);
    if (qn_sgemm_pack(l.w, out, in, &l.pw)) exit(2);
    double mib = (double)(in * out) * 4.0 / (1024.0 * 1024.0);
    printf("\n%lld -> %lld (W %.2f MiB), bias + relu; GFLOP/s (median µs)\n", (long long)in, (long long)out, mib);
    int have512 = qn_sgemm_isa_supported(QN_SGEMM_AVX512), have2 = qn_sgemm_isa_supported(QN_SGEMM_AVX2);
    for (int ri = 0; ri < nrows; ri++) {
        int64_t rows = rows_set[ri];
        variant v[16];
        int nv = 0;
        memset(v, 0, sizeof v);
        if (g_ncfg) {
            for (int c = 0; c < g_ncfg; c++) {
                v[nv] = (variant){.fn = v_layer, .a = &l, .path = QN_DENSE_PACKED, .opts = g_cfg[c], .rows = rows};
                snprintf(v[nv].label, sizeof v[nv].label, "%s %dx%d kc%lld mc%lld",
                         qn_sgemm_isa_name(g_cfg[c].isa), g_cfg[c].mr, g_cfg[c].nv, (long long)g_cfg[c].kc,
                         (long long)g_cfg[c].mc);
                nv++;
            }
        } else {
            if (have512) {
                v[nv] = (variant){.fn = v_layer, .a = &l, .path = QN_DENSE_PACKED, .rows = rows,
                                  .opts = {.isa = QN_SGEMM_AVX512}};
                snprintf(v[nv++].label, sizeof v[0].label, "packed avx512");
            }
            if (have2) {
                v[nv] = (variant){.fn = v_layer, .a = &l, .path = QN_DENSE_PACKED, .rows = rows,
                                  .opts = {.isa = QN_SGEMM_AVX2}};
                snprintf(v[nv++].label, sizeof v[0].label, "packed avx2");
            }
        }
        v[nv] = (variant){.fn = v_layer, .a = &l, .path = QN_DENSE_GEMM, .rows = rows};
        snprintf(v[nv++].label, sizeof v[0].label, "sgemm");
        if (rows <= QN_DENSE_GEMV_MAX_ROWS) {
            v[nv] = (variant){.fn = v_layer, .a = &l, .path = QN_DENSE_GEMV, .rows = rows};
            snprintf(v[nv++].label, sizeof v[0].label, "sgemv/row");
        }
        measure(v, nv);
        double flops = 2.0 * (double)rows * (double)in * (double)out;
        double best_blas = INFINITY;
        for (int i = 0; i < nv; i++)
            if (v[i].path != QN_DENSE_PACKED && med(&v[i]) < best_blas) best_blas = med(&v[i]);
        printf("  rows %4lld:", (long long)rows);
        for (int i = 0; i < nv; i++)
            printf("  %s %6.1f (%8.2f)", v[i].label, flops / med(&v[i]) / 1e3, med(&v[i]));
        printf("  | best BLAS / packed = %.2fx\n", best_blas / med(&v[0]));
        fflush(stdout);
    }
    qn_sgemm_packed_free(l.pw);
    free(l.w), free(l.bias), free(l.x), free(l.y);
}

/* ---- the whole 256→1024→1024→16 forward, the backend's layer loop with
 * packed weights (AUTO picks per layer) or without (AUTO = BLAS only) */
typedef struct {
    int n;
    int64_t dims[4];
    qn_act acts[3];
    float *w[3], *b[3];
    qn_sgemm_packed *pw[3];
    float *x, *buf[2], *y;
    qn_cpu_pool *pool; /* v_model_pool's */
} model;

static void v_model(variant *v)
{
    const model *m = v->a;
    const float *in = m->x;
    for (int i = 0; i < m->n; i++) {
        float *o = i + 1 == m->n ? m->y : m->buf[i & 1];
        if (qn_cpu_dense_f32_packed(in, v->rows, m->dims[i], m->w[i], v->path == QN_DENSE_PACKED ? m->pw[i] : NULL,
                                    m->dims[i + 1], m->b[i], m->acts[i], o, QN_DENSE_AUTO))
            abort();
        in = o;
    }
}

/* as v_model with packed weights, the backend's intra-op path: layers that
 * qn_cpu_dense_split_wins are split over m->pool */
static void v_model_pool(variant *v)
{
    const model *m = v->a;
    const float *in = m->x;
    for (int i = 0; i < m->n; i++) {
        float *o = i + 1 == m->n ? m->y : m->buf[i & 1];
        if (qn_cpu_dense_f32_auto_pool(in, v->rows, m->dims[i], m->w[i], m->pw[i], m->dims[i + 1], m->b[i],
                                       m->acts[i], o, v->path == QN_DENSE_PACKED ? NULL : m->pool))
            abort();
        in = o;
    }
}

static void model_init(model *m)
{
    for (int i = 0; i < m->n; i++) {
        m->w[i] = falloc_rand(m->dims[i] * m->dims[i + 1], 1.0f / sqrtf((float)m->dims[i]));
        m->b[i] = falloc_rand(m->dims[i + 1], 0.1f);
        if (qn_sgemm_pack(m->w[i], m->dims[i + 1], m->dims[i], &m->pw[i])) exit(2);
    }
    m->x = falloc_rand(256 * 256, 1.0f);
    m->buf[0] = falloc_rand(256 * 1024, 0.0f);
    m->buf[1] = falloc_rand(256 * 1024, 0.0f);
    m->y = falloc_rand(256 * 16, 0.0f);
}

static void model_free(model *m)
{
    for (int i = 0; i < m->n; i++) qn_sgemm_packed_free(m->pw[i]), free(m->w[i]), free(m->b[i]);
    free(m->x), free(m->buf[0]), free(m->buf[1]), free(m->y);
}

/* One call's µs, median over n calls each after gap_us of sleep (so a
 * helper past its spin is asleep, as between the worker's requests). */
static double gapped(variant *v, int n, int gap_us)
{
    double t[512];
    if (n > 512) n = 512;
    for (int k = 0; k < n; k++) {
        struct timespec ts = {0, (long)gap_us * 1000};
        nanosleep(&ts, NULL);
        uint64_t t0 = qn_now_ns();
        v->fn(v);
        t[k] = (double)(qn_now_ns() - t0) / 1e3;
    }
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    return t[n / 2];
}

static void bench_intraop(int spin_us, int gap_us)
{
    model m = {.n = 3, .dims = {256, 1024, 1024, 16}, .acts = {QN_ACT_RELU, QN_ACT_RELU, QN_ACT_NONE}};
    model_init(&m);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int helpers = ncpu > 4 ? 3 : (int)ncpu - 1;
    if (helpers < 1 || qn_cpu_pool_create(helpers, spin_us, &m.pool)) {
        printf("\nintra-op: no pool (1 core?)\n");
        model_free(&m);
        return;
    }
    printf("\nintra-op: 256->1024->1024->16 forward, µs; packed ISA %s; pool of %d helper(s), spin %d µs\n",
           qn_sgemm_isa_name(qn_sgemm_isa_default()), helpers, spin_us);
    for (int64_t ri = 0; ri < 8; ri++) {
        int64_t rows = 1 + ri % 4;
        variant v[2] = {{.fn = v_model_pool, .a = &m, .path = QN_DENSE_PACKED, .rows = rows},
                        {.fn = v_model_pool, .a = &m, .path = QN_DENSE_AUTO, .rows = rows}};
        measure(v, 2);
        double g1[9], g2[9];
        for (int r = 0; r < 9; r++) g1[r] = gapped(&v[0], 101, gap_us), g2[r] = gapped(&v[1], 101, gap_us);
        qsort(g1, 9, sizeof(double), cmp_d);
        qsort(g2, 9, sizeof(double), cmp_d);
        printf("  rows %lld: back to back  1 core %6.1f  split %6.1f  (%.2fx)   after %d µs idle  1 core %6.1f  "
               "split %6.1f  (%.2fx)\n",
               (long long)rows, med(&v[0]), med(&v[1]), med(&v[1]) / med(&v[0]), gap_us, g1[4], g2[4], g2[4] / g1[4]);
        fflush(stdout);
    }
    qn_cpu_pool_destroy(&m.pool);
    model_free(&m);
}

static void bench_model(void)
{
    model m = {.n = 3, .dims = {256, 1024, 1024, 16}, .acts = {QN_ACT_RELU, QN_ACT_RELU, QN_ACT_NONE}};
    const int64_t rows_set[] = {1, 8, 64, 256};
    for (int i = 0; i < m.n; i++) {
        m.w[i] = falloc_rand(m.dims[i] * m.dims[i + 1], 1.0f / sqrtf((float)m.dims[i]));
        m.b[i] = falloc_rand(m.dims[i + 1], 0.1f);
        if (qn_sgemm_pack(m.w[i], m.dims[i + 1], m.dims[i], &m.pw[i])) exit(2);
    }
    m.x = falloc_rand(256 * 256, 1.0f);
    m.buf[0] = falloc_rand(256 * 1024, 0.0f);
    m.buf[1] = falloc_rand(256 * 1024, 0.0f);
    m.y = falloc_rand(256 * 16, 0.0f);
    double fl = 2.0 * (256.0 * 1024 + 1024.0 * 1024 + 1024.0 * 16);
    printf("\n256->1024->1024->16 forward (relu, relu, none), µs (GFLOP/s); packed ISA %s\n",
           qn_sgemm_isa_name(qn_sgemm_isa_default()));
    for (int ri = 0; ri < 4; ri++) {
        variant v[2] = {{.fn = v_model, .a = &m, .path = QN_DENSE_PACKED, .rows = rows_set[ri]},
                        {.fn = v_model, .a = &m, .path = QN_DENSE_AUTO, .rows = rows_set[ri]}};
        measure(v, 2);
        double fp = fl * (double)rows_set[ri];
        printf("  rows %4lld:  packed auto %9.1f (%5.1f)   BLAS auto %9.1f (%5.1f)   speed-up %.2fx\n",
               (long long)rows_set[ri], med(&v[0]), fp / med(&v[0]) / 1e3, med(&v[1]), fp / med(&v[1]) / 1e3,
               med(&v[1]) / med(&v[0]));
        fflush(stdout);
    }
    for (int i = 0; i < m.n; i++) qn_sgemm_packed_free(m.pw[i]), free(m.w[i]), free(m.b[i]);
    free(m.x), free(m.buf[0]), free(m.buf[1]), free(m.y);
}

int main(int argc, char **argv)
{
    int64_t only_in = 0, only_out = 0, only_rows = 0;
    int no_model = 0, model_only = 0, intraop = 0, spin_us = 250, gap_us = 100;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sample-ms") && i + 1 < argc) g_sample_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--shape") && i + 2 < argc) only_in = atoll(argv[++i]), only_out = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) only_rows = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--no-model")) no_model = 1;
        else if (!strcmp(argv[i], "--model-only")) model_only = 1;
        else if (!strcmp(argv[i], "--intraop")) intraop = 1;
        else if (!strcmp(argv[i], "--spin-us") && i + 1 < argc) spin_us = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gap-us") && i + 1 < argc) gap_us = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cfg") && i + 1 < argc && g_ncfg < MAX_CFG) {
            qn_sgemm_opts *o = &g_cfg[g_ncfg++];
            long long kc = 0, mc = 0;
            char isa[16] = "";
            if (sscanf(argv[++i], "%15[a-z0-9]:%dx%d:%lld:%lld", isa, &o->mr, &o->nv, &kc, &mc) < 3) goto usage;
            for (int k = 0; k < QN_SGEMM_ISA_COUNT; k++)
                if (!strcmp(isa, qn_sgemm_isa_name((qn_sgemm_isa)k))) o->isa = (qn_sgemm_isa)k;
            o->kc = kc, o->mc = mc;
        } else goto usage;
    }
    if (g_reps < 1 || g_reps > 64 || g_sample_ms <= 0) goto usage;
    openblas_set_num_threads(1);
    qn_log_set_level(QN_LOG_WARN);
    printf("bench_sgemm: OpenBLAS %s (%s), 1 thread; packed default ISA %s; %d reps x ~%.0f ms\n",
           openblas_get_config(), openblas_get_corename(), qn_sgemm_isa_name(qn_sgemm_isa_default()), g_reps,
           g_sample_ms);
    if (intraop) {
        bench_intraop(spin_us, gap_us);
        return 0;
    }
    if (!model_only) {
        static const int64_t shapes[][2] = {{256, 1024}, {1024, 1024}, {1024, 16}, {64, 128}, {128, 10}, {4096, 1024}};
        static const int64_t rows_all[] = {1, 2, 4, 8, 16, 64, 128, 256};
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            if (only_in && (shapes[s][0] != only_in || shapes[s][1] != only_out)) continue;
            if (only_rows) bench_layer(shapes[s][0], shapes[s][1], &only_rows, 1);
            else bench_layer(shapes[s][0], shapes[s][1], rows_all, 8);
        }
        if (only_in && !(only_in == 256 && only_out == 1024) && !(only_in == 1024 && only_out == 1024) &&
            !(only_in == 1024 && only_out == 16) && !(only_in == 64 && only_out == 128) &&
            !(only_in == 128 && only_out == 10) && !(only_in == 4096 && only_out == 1024)) {
            if (only_rows) bench_layer(only_in, only_out, &only_rows, 1);
            else bench_layer(only_in, only_out, rows_all, 8);
        }
    }
    if (!no_model) bench_model();
    return 0;
usage:
    fprintf(stderr,
            "usage: %s [--reps N<=64] [--sample-ms M] [--shape IN OUT] [--rows R] [--cfg ISA:MRxNV[:KC[:MC]]]... "
            "[--no-model | --model-only] [--intraop [--spin-us S] [--gap-us G]]\n",
            argv[0]);
    return 2;
}
