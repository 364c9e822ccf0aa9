/* bench_dense.c: times the CPU backend's dense f32 forward, to decide and
 * record (bench/notes/dense.md):
 *   1. µs per forward and GFLOP/s of 256→1024→1024→16 and 64→128→10 at
 *      rows 1, 8, 64, 256, and how much of it the fused epilogue takes;
 *   2. sgemm vs sgemv for a single row, per layer shape and per model;
 *   3. 1 vs 2 OpenBLAS threads for one forward at rows 1, 64, 256;
 *   4. throughput of 2 executors x 1 BLAS thread vs 1 executor x 2.
 * Every sample times a loop of forwards lasting about --sample-ms; the
 * variants being compared are interleaved sample by sample, so a noisy
 * neighbour hits all of them alike; we report the median of --reps samples.
 * Usage: bench_dense [--reps N] [--sample-ms M] [--no-threads | --threads-only] [--forms IN OUT]
 *   --no-threads skips sections 3 and 4, --threads-only runs only them; --forms runs only the comparison of
 *   four spellings of the product for one layer shape. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cpu/dense.h"
#include "cpu/epilogue.h"
#include "error.h"
#include "model.h"
#include "tensor.h"
#include "bench_util.h"

static int g_reps = 7;
static double g_sample_ms = 20;


/* A hand-built model (the bench must not depend on the loader). */
static qn_model *model_new(const char *name, int64_t in, int n, const int64_t *outs, const qn_act *acts)
{
    qn_model *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)n, sizeof *m->layers))) exit(2);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->version = 1;
    m->nlayers = n;
    m->in_dim = m->max_width = in;
    for (int i = 0; i < n; i++) {
        qn_layer *l = &m->layers[i];
        l->rep = QN_REP_F32;
        l->in = in;
        l->out = outs[i];
        l->act = acts[i];
        l->w = falloc_rand(in * outs[i], 1.0f / sqrtf((float)in));
        l->bias = falloc_rand(outs[i], 0.1f);
        if (outs[i] > m->max_width) m->max_width = outs[i];
        in = outs[i];
    }
    m->out_dim = in;
    atomic_init(&m->refs, 1);
    return m;
}

static void model_free(qn_model *m)
{
    for (int i = 0; i < m->nlayers; i++) {
        if (m->layers[i].kernel_free) m->layers[i].kernel_free(m->layers[i].kernel_data);
        free(m->layers[i].w), free(m->layers[i].bias);
    }
    free(m->layers);
    free(m);
}

static double model_flops(const qn_model *m, int64_t rows)
{
    double f = 0;
    for (int i = 0; i < m->nlayers; i++) f += 2.0 * (double)m->layers[i].in * (double)m->layers[i].out;
    return f * (double)rows;
}

/* ---- timing: a variant is a closure called `iters` times per sample */
typedef struct variant {
    const char *label;
    void (*fn)(struct variant *v);
    void *a, *b, *c; /* the variant's own arguments */
    int64_t rows;
    long iters;       /* calls per sample, calibrated */
    double *samples;  /* µs per call */
    double *cpu;      /* process CPU time / wall time per sample, % */
} variant;

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *s, int n)
{
    double *t = malloc(sizeof(double) * (size_t)n);
    memcpy(t, s, sizeof(double) * (size_t)n);
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    double m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

/* Calibrates each variant to ~g_sample_ms per sample, then takes g_reps
 * samples of every variant, interleaved. */
static void measure(variant *v, int nv)
{
    for (int i = 0; i < nv; i++) {
        v[i].fn(&v[i]); /* warm: page in weights, grow scratch */
        uint64_t t0 = qn_now_ns();
        long k = 0;
        while (qn_now_ns() - t0 < 2000000ull || k < 2) { v[i].fn(&v[i]); k++; }
        double per = (double)(qn_now_ns() - t0) / (double)k;
        v[i].iters = (long)(g_sample_ms * 1e6 / per) + 1;
        v[i].samples = calloc((size_t)g_reps, sizeof(double));
        v[i].cpu = calloc((size_t)g_reps, sizeof(double));
    }
    for (int r = 0; r < g_reps; r++)
        for (int i = 0; i < nv; i++) {
            uint64_t t0 = qn_now_ns();
            double c0 = cpu_s();
            for (long k = 0; k < v[i].iters; k++) v[i].fn(&v[i]);
            uint64_t dt = qn_now_ns() - t0;
            v[i].samples[r] = (double)dt / 1e3 / (double)v[i].iters;
            v[i].cpu[r] = 100.0 * (cpu_s() - c0) / ((double)dt / 1e9);
        }
}

static double med(variant *v) { return median(v->samples, g_reps); }
static double med_cpu(variant *v) { return median(v->cpu, g_reps); }
static void release(variant *v, int nv)
{
    for (int i = 0; i < nv; i++) free(v[i].samples), free(v[i].cpu);
}

/* ---- the things timed */
static qn_backend *g_be;

typedef struct { void *ctx; float *x, *y; } fwd_io;

static void v_forward(variant *v) /* a: model, b: fwd_io */
{
    fwd_io *io = v->b;
    if (qn_backend_forward(g_be, io->ctx, v->a, io->x, v->rows, io->y)) abort();
}

static void v_epilogues(variant *v) /* a: model, b: scratch [rows*max_width] */
{
    const qn_model *m = v->a;
    for (int i = 0; i < m->nlayers; i++)
        qn_cpu_epilogue(v->b, v->rows, m->layers[i].out, m->layers[i].out, m->layers[i].bias, m->layers[i].act);
}

typedef struct { const qn_layer *l; const float *x; float *y; qn_dense_path path; } layer_io;

static void v_layer(variant *v) /* a: layer_io */
{
    layer_io *io = v->a;
    if (qn_cpu_dense_f32_path(io->x, v->rows, io->l->in, io->l->w, io->l->out, io->l->bias, io->l->act, io->y,
                              io->path))
        abort();
}

typedef struct { const qn_model *m; const float *x; float *buf[2]; float *y; qn_dense_path path; } path_io;

static void v_model_path(variant *v) /* the backend's layer loop with a forced path */
{
    path_io *io = v->a;
    const float *in = io->x;
    for (int i = 0; i < io->m->nlayers; i++) {
        const qn_layer *l = &io->m->layers[i];
        float *o = i + 1 == io->m->nlayers ? io->y : io->buf[i & 1];
        if (qn_cpu_dense_f32_path(in, v->rows, l->in, l->w, l->out, l->bias, l->act, o, io->path)) abort();
        in = o;
    }
}

static fwd_io io_new(const qn_model *m, int64_t rows)
{
    fwd_io io = {0};
    if (g_be->iface->ctx_create(g_be, &io.ctx)) exit(2);
    io.x = falloc_rand(rows * m->in_dim, 1.0f);
    io.y = falloc_rand(rows * m->out_dim, 0.0f);
    return io;
}

static void io_free(fwd_io *io)
{
    g_be->iface->ctx_destroy(g_be, io->ctx);
    free(io->x), free(io->y);
}

/* ---- sections */
static const int64_t k_rows[] = {1, 8, 64, 256};
#define NROWS 4

static void section_forward(qn_model *m)
{
    printf("\n## %s: forward, 1 BLAS thread (median of %d)\n\n", m->name, g_reps);
    printf("| rows | µs/forward | µs/row | GFLOP/s | epilogue µs | epilogue share |\n");
    printf("|---:|---:|---:|---:|---:|---:|\n");
    variant v[2 * NROWS];
    fwd_io io[NROWS];
    float *scratch[NROWS];
    memset(v, 0, sizeof v);
    for (int r = 0; r < NROWS; r++) {
        io[r] = io_new(m, k_rows[r]);
        scratch[r] = falloc_rand(k_rows[r] * m->max_width, 1.0f);
        v[2 * r] = (variant){.label = "forward", .fn = v_forward, .a = m, .b = &io[r], .rows = k_rows[r]};
        v[2 * r + 1] = (variant){.label = "epilogue", .fn = v_epilogues, .a = m, .b = scratch[r], .rows = k_rows[r]};
    }
    measure(v, 2 * NROWS);
    for (int r = 0; r < NROWS; r++) {
        double f = med(&v[2 * r]), e = med(&v[2 * r + 1]);
        printf("| %lld | %.1f | %.2f | %.1f | %.2f | %.1f%% |\n", (long long)k_rows[r], f, f / (double)k_rows[r],
               model_flops(m, k_rows[r]) / f / 1e3, e, 100.0 * e / f);
        io_free(&io[r]);
        free(scratch[r]);
    }
    release(v, 2 * NROWS);
}

/* Small batches: per-row sgemv vs one sgemm, per layer at one row and per
 * model at 1..16 rows (the crossover sets QN_DENSE_GEMV_MAX_ROWS). */
static void section_gemv(qn_model *m)
{
    static const int64_t rows[] = {1, 2, 3, 4, 6, 8, 16};
    enum { NR = 7, MAXR = 16 };
    int n = m->nlayers, nv = 2 * n + 2 * NR;
    variant *v = calloc((size_t)nv, sizeof *v);
    layer_io *lio = calloc((size_t)(2 * n), sizeof *lio);
    float *x = falloc_rand(MAXR * m->max_width, 1.0f), *y = falloc_rand(MAXR * m->max_width, 0.0f);
    for (int i = 0; i < n; i++)
        for (int p = 0; p < 2; p++) {
            lio[2 * i + p] = (layer_io){&m->layers[i], x, y, p ? QN_DENSE_GEMV : QN_DENSE_GEMM};
            v[2 * i + p] = (variant){.fn = v_layer, .a = &lio[2 * i + p], .rows = 1};
        }
    path_io pio[2];
    for (int p = 0; p < 2; p++) {
        pio[p] = (path_io){m, x, {falloc_rand(MAXR * m->max_width, 0), falloc_rand(MAXR * m->max_width, 0)}, y,
                           p ? QN_DENSE_GEMV : QN_DENSE_GEMM};
        for (int r = 0; r < NR; r++) v[2 * n + 2 * r + p] = (variant){.fn = v_model_path, .a = &pio[p], .rows = rows[r]};
    }
    measure(v, nv);
    printf("\n## %s: one row, sgemm vs sgemv per layer (µs, median of %d; incl. epilogue)\n\n", m->name, g_reps);
    printf("| layer | sgemm | sgemv | sgemm/sgemv |\n|---|---:|---:|---:|\n");
    for (int i = 0; i < n; i++) {
        double g = med(&v[2 * i]), s = med(&v[2 * i + 1]);
        printf("| %lld→%lld | %.2f | %.2f | %.2f |\n", (long long)m->layers[i].in, (long long)m->layers[i].out, g, s,
               g / s);
    }
    printf("\n## %s: whole model, one sgemm vs one sgemv per row (µs, median of %d)\n\n", m->name, g_reps);
    printf("| rows | sgemm | sgemv x rows | sgemm/sgemv |\n|---:|---:|---:|---:|\n");
    for (int r = 0; r < NR; r++) {
        double g = med(&v[2 * n + 2 * r]), s = med(&v[2 * n + 2 * r + 1]);
        printf("| %lld | %.2f | %.2f | %.2f |\n", (long long)rows[r], g, s, g / s);
    }
    for (int p = 0; p < 2; p++) free(pio[p].buf[0]), free(pio[p].buf[1]);
    free(x), free(y), free(lio);
    release(v, nv);
    free(v);
}

/* Other spellings of the same product, for the record (notes): (A) the
 * backend's sgemm, X·Wᵀ; (B) Yᵀ = W·Xᵀ by sgemm, then a transpose; (C) one
 * sgemv per row; (D) X·Wt with a transposed copy Wt [in, out] made once, as a
 * prepare step could. No epilogue: only the product is compared. */
typedef struct { const float *w, *wt, *x; float *y, *yt; int in, out; char form; } form_io;

static void v_form(variant *v)
{
    form_io *f = v->a;
    int rows = (int)v->rows, in = f->in, out = f->out;
    switch (f->form) {
    case 'A': cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1, f->x, in, f->w, in, 0, f->y, out); break;
    case 'B':
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, out, rows, in, 1, f->w, in, f->x, in, 0, f->yt, rows);
        for (int j = 0; j < out; j++)
            for (int r = 0; r < rows; r++) f->y[(int64_t)r * out + j] = f->yt[(int64_t)j * rows + r];
        break;
    case 'C':
        for (int r = 0; r < rows; r++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1, f->w, in, f->x + (int64_t)r * in, 1, 0,
                        f->y + (int64_t)r * out, 1);
        break;
    case 'D': cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, out, in, 1, f->x, in, f->wt, out, 0, f->y, out); break;
    }
}

static void section_forms(int in, int out)
{
    static const int64_t rows[] = {1, 2, 4, 8, 16, 32, 64, 256};
    enum { NR = 8 };
    float *w = falloc_rand((int64_t)in * out, 0.03f), *wt = falloc_rand((int64_t)in * out, 0);
    for (int j = 0; j < out; j++)
        for (int k = 0; k < in; k++) wt[(int64_t)k * out + j] = w[(int64_t)j * in + k];
    float *x = falloc_rand(256 * (int64_t)in, 1), *y = falloc_rand(256 * (int64_t)out, 0), *yt = falloc_rand(256 * (int64_t)out, 0);
    form_io f[4];
    variant v[4 * NR];
    memset(v, 0, sizeof v);
    for (int k = 0; k < 4; k++) {
        f[k] = (form_io){w, wt, x, y, yt, in, out, (char)('A' + k)};
        for (int r = 0; r < NR; r++) v[4 * r + k] = (variant){.fn = v_form, .a = &f[k], .rows = rows[r]};
    }
    measure(v, 4 * NR);
    printf("\n## %d→%d product alone, four spellings (µs, median of %d)\n\n", in, out, g_reps);
    printf("| rows | A: X·Wᵀ sgemm | B: (W·Xᵀ)ᵀ sgemm | C: sgemv per row | D: X·Wt, Wt prebuilt |\n|---:|---:|---:|---:|---:|\n");
    for (int r = 0; r < NR; r++)
        printf("| %lld | %.1f | %.1f | %.1f | %.1f |\n", (long long)rows[r], med(&v[4 * r]), med(&v[4 * r + 1]),
               med(&v[4 * r + 2]), med(&v[4 * r + 3]));
    free(w), free(wt), free(x), free(y), free(yt);
    release(v, 4 * NR);
}

/* The epilogue alone, per activation, on a 256 x 1024 output (ns/element):
 * relu is a vector loop; the others are libm-bound. */
static void v_epi_act(variant *v) /* a: buffer, b: bias, c: qn_act * */
{
    qn_cpu_epilogue(v->a, v->rows, 1024, 1024, v->b, *(qn_act *)v->c);
}

static void section_epilogue(void)
{
    static qn_act acts[QN_ACT_COUNT];
    float *y = falloc_rand(256 * 1024, 2.0f), *b = falloc_rand(1024, 0.1f);
    variant v[QN_ACT_COUNT];
    memset(v, 0, sizeof v);
    for (int a = 0; a < QN_ACT_COUNT; a++) {
        acts[a] = (qn_act)a;
        v[a] = (variant){.fn = v_epi_act, .a = y, .b = b, .c = &acts[a], .rows = 256};
    }
    measure(v, QN_ACT_COUNT);
    static const char *const names[] = {"none (bias only)", "relu", "gelu", "sigmoid", "tanh", "softmax"};
    printf("\n## epilogue alone, 256 x 1024 with bias (median of %d)\n\n| activation | µs | ns/element |\n|---|---:|---:|\n", g_reps);
    for (int a = 0; a < QN_ACT_COUNT; a++)
        printf("| %s | %.1f | %.2f |\n", names[a], med(&v[a]), med(&v[a]) * 1e3 / (256.0 * 1024));
    free(y), free(b);
    release(v, QN_ACT_COUNT);
}

/* The BLAS thread count is process-global; qn_backend_cpu_create sets it
 * with this same call. Each sample switches to its own count (once per
 * sample, not per call), so 1 and 2 threads interleave. */
static int g_threads_now = 1;
static void set_threads(int t)
{
    if (t != g_threads_now) openblas_set_num_threads(t);
    g_threads_now = t;
}

static void v_forward_threads(variant *v) /* c: int *threads */
{
    set_threads(*(int *)v->c);
    v_forward(v);
}

static void section_threads(qn_model *m)
{
    static const int64_t rows[] = {1, 64, 256};
    static int threads[2] = {1, 2};
    printf("\n## %s: 1 vs 2 BLAS threads, one forward at a time (µs, median of %d)\n\n", m->name, g_reps);
    printf("| rows | 1 thread | 2 threads | speed-up | CPU %% with 2 |\n|---:|---:|---:|---:|---:|\n");
    variant v[6];
    fwd_io io[3];
    memset(v, 0, sizeof v);
    for (int r = 0; r < 3; r++) {
        io[r] = io_new(m, rows[r]);
        for (int t = 0; t < 2; t++)
            v[2 * r + t] = (variant){.fn = v_forward_threads, .a = m, .b = &io[r], .c = &threads[t], .rows = rows[r]};
    }
    measure(v, 6);
    for (int r = 0; r < 3; r++) {
        double a = med(&v[2 * r]), b = med(&v[2 * r + 1]);
        printf("| %lld | %.1f | %.1f | %.2fx | %.0f%% |\n", (long long)rows[r], a, b, a / b, med_cpu(&v[2 * r + 1]));
    }
    for (int r = 0; r < 3; r++) io_free(&io[r]);
    release(v, 6);
    set_threads(1);
}

/* Throughput: one executor with 2 BLAS threads vs two executors with one
 * each, each executor running forwards back to back for a fixed time. */
typedef struct { const qn_model *m; int64_t rows; double secs; long done; fwd_io io; } exec_arg;

static void *exec_main(void *p)
{
    exec_arg *a = p;
    fwd_io io = a->io; /* made by the caller: io_new's random fill is not thread-safe */
    uint64_t t0 = qn_now_ns(), end = t0 + (uint64_t)(a->secs * 1e9);
    while (qn_now_ns() < end) {
        if (qn_backend_forward(g_be, io.ctx, a->m, io.x, a->rows, io.y)) abort();
        a->done++;
    }
    return NULL;
}

/* Rows per second of execs executors with blas BLAS threads; *cpu gets the
 * process CPU time over wall time (200% = both cores busy, spinning counts). */
static double rows_per_s(const qn_model *m, int64_t rows, int execs, int blas, double *cpu)
{
    set_threads(blas);
    exec_arg a[2] = {{m, rows, g_sample_ms * 10 / 1e3, 0, io_new(m, rows)},
                     {m, rows, g_sample_ms * 10 / 1e3, 0, io_new(m, rows)}};
    pthread_t th[2];
    uint64_t t0 = qn_now_ns();
    double c0 = cpu_s();
    for (int i = 0; i < execs; i++) pthread_create(&th[i], NULL, exec_main, &a[i]);
    for (int i = 0; i < execs; i++) pthread_join(th[i], NULL);
    double s = (double)(qn_now_ns() - t0) / 1e9;
    *cpu = 100.0 * (cpu_s() - c0) / s;
    io_free(&a[0].io), io_free(&a[1].io);
    return (double)((a[0].done + (execs > 1 ? a[1].done : 0)) * rows) / s;
}

static void section_executors(qn_model *m)
{
    static const int64_t rows[] = {1, 64, 256};
    static const int cfg[3][2] = {{1, 1}, {1, 2}, {2, 1}}; /* executors, BLAS threads */
    printf("\n## %s: throughput, executors x BLAS threads (rows/s and process CPU %%, median of %d runs of %.0f ms)\n\n",
           m->name, g_reps, g_sample_ms * 10);
    printf("| rows | 1 exec x 1 BLAS | 1 exec x 2 BLAS | 2 exec x 1 BLAS |\n|---:|---:|---:|---:|\n");
    enum { MAXREP = 64 };
    int n = g_reps < MAXREP ? g_reps : MAXREP;
    for (int r = 0; r < 3; r++) {
        double s[3][MAXREP], c[3][MAXREP];
        for (int k = 0; k < n; k++)
            for (int i = 0; i < 3; i++) s[i][k] = rows_per_s(m, rows[r], cfg[i][0], cfg[i][1], &c[i][k]);
        printf("| %lld", (long long)rows[r]);
        for (int i = 0; i < 3; i++) printf(" | %.0f (%.0f%%)", median(s[i], n), median(c[i], n));
        printf(" |\n");
    }
    set_threads(1);
}

/* The machine is shared: the load average goes with every table. */
static void print_load(const char *when)
{
    char buf[128] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(buf, sizeof buf, f)) snprintf(buf, sizeof buf, "?\n");
        fclose(f);
    }
    printf("\n_load average %s: %s_\n", when, strtok(buf, "\n") ? buf : "?");
}

int main(int argc, char **argv)
{
    int no_threads = 0, threads_only = 0, forms_in = 0, forms_out = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sample-ms") && i + 1 < argc) g_sample_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-threads")) no_threads = 1;
        else if (!strcmp(argv[i], "--threads-only")) threads_only = 1;
        else if (!strcmp(argv[i], "--forms") && i + 2 < argc) forms_in = atoi(argv[++i]), forms_out = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--reps N] [--sample-ms M] [--no-threads | --threads-only] [--forms IN OUT]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 1) g_reps = 1;
    if (qn_backend_cpu_create(1, &g_be)) return 1;
    printf("# bench_dense: %s, core %s\n", openblas_get_config(), openblas_get_corename());
    if (forms_in > 0 && forms_out > 0) { /* only the four spellings, for one shape */
        section_forms(forms_in, forms_out);
        qn_backend_destroy(&g_be);
        return 0;
    }

    const int64_t oa[] = {1024, 1024, 16}, ob[] = {128, 10};
    const qn_act aa[] = {QN_ACT_RELU, QN_ACT_RELU, QN_ACT_NONE}, ab[] = {QN_ACT_RELU, QN_ACT_SOFTMAX};
    qn_model *ma = model_new("256-1024-1024-16", 256, 3, oa, aa), *mb = model_new("64-128-10", 64, 2, ob, ab);
    void *st = NULL;
    if (g_be->iface->model_prepare(g_be, ma, &st) || g_be->iface->model_prepare(g_be, mb, &st)) return 1;

    print_load("at start");
    if (!threads_only) {
        section_forward(ma);
        section_forward(mb);
        section_gemv(ma);
        section_gemv(mb);
        section_forms(1024, 1024);
        section_forms(256, 1024);
        section_epilogue();
    }
    if (!no_threads) {
        section_threads(ma);
        section_executors(ma);
    }
    print_load("at end");
    model_free(ma);
    model_free(mb);
    qn_backend_destroy(&g_be);
    return 0;
}
