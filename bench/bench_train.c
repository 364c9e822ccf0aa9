/* bench_train.c: quern's training step (lib/train.c) against the GEMMs it is
 * made of, in the same run, single-threaded (the worker's setting: one BLAS
 * thread; bench/README.md "Training"):
 *   1. qn_train_run over ROWS rows, EPOCHS epochs, batch B, Adam, shuffled:
 *      wall time and GFLOP/s of training arithmetic (forward 2·B·in·out per
 *      layer, dW the same, dX the same for every layer but the first);
 *   2. the same GEMMs alone (cblas_sgemm NT forward, TN dW, NN dX on the
 *      same shapes, same buffers sizes), looped for one epoch's steps: the
 *      GEMM rate and so the fraction of it the whole step reaches.
 * Usage: bench_train [--dims 256,1024,1024,16] [--rows 4096] [--epochs 10]
 *                    [--batch 256] [--reps 3]
 * Prints one line per measurement, key=value, for bench/train_bench.py. */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t g_rng = 7;
static float frand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

int main(int argc, char **argv)
{
    int64_t dims[QN_TRAIN_MAX_LAYERS + 1] = {256, 1024, 1024, 16};
    int nd = 4;
    int64_t rows = 4096, epochs = 10, bs = 256;
    int reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dims") && i + 1 < argc) {
            nd = 0;
            for (char *s = argv[++i]; *s && nd <= QN_TRAIN_MAX_LAYERS;) {
                dims[nd++] = strtoll(s, &s, 10);
                if (*s == ',') s++;
            }
        } else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) bs = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_train [--dims a,b,c] [--rows N] [--epochs N] [--batch N] [--reps N]\n");
            return 2;
        }
    }
    openblas_set_num_threads(1);
    int nl = nd - 1;
    int64_t units[QN_TRAIN_MAX_LAYERS];
    qn_act acts[QN_TRAIN_MAX_LAYERS];
    for (int i = 0; i < nl; i++) {
        units[i] = dims[i + 1];
        acts[i] = i == nl - 1 ? QN_ACT_SOFTMAX : QN_ACT_RELU;
    }
    float *x = malloc((size_t)(rows * dims[0]) * 4), *y = malloc((size_t)rows * 4);
    for (int64_t i = 0; i < rows * dims[0]; i++) x[i] = frand();
    for (int64_t r = 0; r < rows; r++) y[r] = (float)(r % dims[nd - 1]);
    double flops_step_full = 0; /* per batch of bs rows */
    for (int i = 0; i < nl; i++) {
        double f = 2.0 * (double)bs * (double)dims[i] * (double)dims[i + 1];
        flops_step_full += f * (i == 0 ? 2 : 3);
    }
    int64_t steps = epochs * ((rows + bs - 1) / bs);
    double total_flops = flops_step_full * (double)steps * ((double)rows / (double)(steps / epochs * bs));

    qn_train_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.loss = QN_LOSS_CROSS_ENTROPY;
    qn_opt_defaults(QN_OPT_ADAM, &sp.opt);
    qn_sched_defaults(QN_SCHED_CONSTANT, &sp.sched);
    sp.epochs = epochs;
    sp.batch_size = bs;
    sp.shuffle = true;
    sp.seed = 1;
    sp.rows = rows;
    sp.x_cols = dims[0];
    sp.y_cols = 1;
    sp.x = x;
    sp.y = y;
    double best_train = 1e30, best_gemm = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        qn_tnet net;
        qn_tnet_init(&net, dims[0], nl, units, acts, 1);
        qn_train_outcome o;
        double t0 = now_s();
        int rc = qn_train_run(&net, &sp, NULL, &o);
        double t = now_s() - t0;
        if (rc) {
            fprintf(stderr, "train failed: %s\n", o.message);
            return 1;
        }
        if (t < best_train) best_train = t;
        qn_tnet_free(&net);

        /* the GEMMs alone, same shapes, one epoch's worth of steps scaled */
        float *a[QN_TRAIN_MAX_LAYERS + 1], *w[QN_TRAIN_MAX_LAYERS], *dw[QN_TRAIN_MAX_LAYERS], *g0, *g1;
        int64_t maxw = 0;
        for (int i = 0; i < nd; i++) {
            a[i] = calloc((size_t)(bs * dims[i]), 4);
            if (dims[i] > maxw) maxw = dims[i];
        }
        for (int i = 0; i < nl; i++) {
            w[i] = calloc((size_t)(dims[i] * dims[i + 1]), 4);
            dw[i] = calloc((size_t)(dims[i] * dims[i + 1]), 4);
            for (int64_t k = 0; k < dims[i] * dims[i + 1]; k++) w[i][k] = frand() * 0.01f;
        }
        g0 = calloc((size_t)(bs * maxw), 4);
        g1 = calloc((size_t)(bs * maxw), 4);
        int64_t gsteps = steps;
        t0 = now_s();
        for (int64_t s = 0; s < gsteps; s++) {
            for (int i = 0; i < nl; i++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bs, (int)dims[i + 1], (int)dims[i], 1.0f,
                            a[i], (int)dims[i], w[i], (int)dims[i], 0.0f, a[i + 1], (int)dims[i + 1]);
            for (int i = nl - 1; i >= 0; i--) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)dims[i + 1], (int)dims[i], (int)bs, 1.0f,
                            g0, (int)dims[i + 1], a[i], (int)dims[i], 0.0f, dw[i], (int)dims[i]);
                if (i > 0)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bs, (int)dims[i], (int)dims[i + 1],
                                1.0f, g0, (int)dims[i + 1], w[i], (int)dims[i], 0.0f, g1, (int)dims[i]);
            }
        }
        double tg = now_s() - t0;
        double gemm_flops = flops_step_full * (double)gsteps;
        double tg_scaled = tg * total_flops / gemm_flops;
        if (tg_scaled < best_gemm) best_gemm = tg_scaled;
        for (int i = 0; i < nd; i++) free(a[i]);
        for (int i = 0; i < nl; i++) {
            free(w[i]);
            free(dw[i]);
        }
        free(g0);
        free(g1);
    }
    printf("train_s=%.3f train_gflops=%.1f gemm_s=%.3f gemm_gflops=%.1f fraction=%.2f steps=%lld gflop=%.1f\n",
           best_train, total_flops / best_train / 1e9, best_gemm, total_flops / best_gemm / 1e9, best_gemm / best_train,
           (long long)steps, total_flops / 1e9);
    free(x);
    free(y);
    return 0;
}
