/* test_compress.c: lib/compress.c end to end: an f32 model file is written,
 * compressed with each option, loaded back through the worker's loader, and
 * the stored weights are checked against the rules in compress.h (int8
 * scales and rounding, f16 rounding, exactly which weights pruning removed,
 * which neurons structured pruning removed), then run through the kernels
 * against the original. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "qn_test.h"
#include "safetensors.h"
#include "tensor.h"

static uint64_t g_rng = 12345;
static float rndf(float lo, float hi)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return lo + (hi - lo) * (float)(g_rng >> 40) / 16777216.0f;
}

#define NL 3
static const int64_t g_dims[NL + 1] = {33, 40, 17, 5};
static const char *const g_acts[NL] = {"relu", "tanh", "softmax"};
static float *g_w[NL], *g_b[NL];
static char *g_dir;

/* Layer 0 gets 8 all-zero neurons (weights and bias 0): structured pruning
 * at 0.2 must remove exactly those, and the output must not change. */
static void write_source(const char *path)
{
    qn_st_tensor t[2 * NL];
    char names[2 * NL][32];
    char layers[2048] = "[";
    size_t nt = 0;
    for (int i = 0; i < NL; i++) {
        const int64_t in = g_dims[i], out = g_dims[i + 1];
        g_w[i] = malloc((size_t)(in * out) * sizeof(float));
        g_b[i] = malloc((size_t)out * sizeof(float));
        for (int64_t k = 0; k < in * out; k++) g_w[i][k] = rndf(-1.0f, 1.0f);
        for (int64_t o = 0; o < out; o++) g_b[i][o] = rndf(-0.2f, 0.2f);
        if (i == 0)
            for (int64_t o = 3; o < out; o += 5) {
                memset(g_w[i] + o * in, 0, (size_t)in * sizeof(float));
                g_b[i][o] = 0.0f;
            }
        snprintf(names[nt], 32, "w%d", i);
        t[nt] = (qn_st_tensor){.name = names[nt], .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {out, in}, .data = g_w[i],
                               .nbytes = (size_t)(in * out) * 4};
        nt++;
        snprintf(names[nt], 32, "b%d", i);
        t[nt] = (qn_st_tensor){.name = names[nt], .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {out}, .data = g_b[i],
                               .nbytes = (size_t)out * 4};
        nt++;
        size_t at = strlen(layers);
        snprintf(layers + at, sizeof layers - at, "%s{\"type\":\"dense\",\"weight\":\"w%d\",\"bias\":\"b%d\",\"activation\":\"%s\"}",
                 i ? "," : "", i, i, g_acts[i]);
    }
    strcat(layers, "]");
    const char *meta[4] = {"format", "quern.mlp.v1", "layers", layers};
    char err[256];
    int rc = qn_st_write(path, t, nt, meta, 2, err, sizeof err);
    if (rc) { fprintf(stderr, "write_source: %s\n", err); exit(2); }
}

static qn_model *load(const char *path)
{
    qn_model *m = NULL;
    char err[256] = "";
    int rc = qn_model_load(path, "t", 1, &m, err, sizeof err);
    if (rc) fprintf(stderr, "load %s: %s\n", path, err);
    return m;
}

/* Compresses the source with o into a fresh file and loads it back. */
static qn_model *compress(qn_model *src, qn_compress_opts o, qn_compress_layer *info)
{
    static int n;
    char path[4096], err[256] = "";
    snprintf(path, sizeof path, "%s/c%d.safetensors", g_dir, n++);
    int rc = qn_compress_write(src, &o, path, info, err, sizeof err);
    CHECK_EQ_INT(rc, 0);
    if (rc) { fprintf(stderr, "compress: %s\n", err); return NULL; }
    qn_model *m = load(path);
    CHECK(m != NULL);
    return m;
}

static float *rand_x(int64_t rows)
{
    float *x = malloc((size_t)(rows * g_dims[0]) * sizeof(float));
    for (int64_t i = 0; i < rows * g_dims[0]; i++) x[i] = rndf(-1.0f, 1.0f);
    return x;
}

static qn_model *g_src;

TEST(int8)
{
    qn_compress_layer info[NL];
    qn_model *m = compress(g_src, (qn_compress_opts){.int8 = 1}, info);
    if (!m) return;
    for (int i = 0; i < NL; i++) {
        const qn_layer *l = &m->layers[i];
        CHECK_EQ_INT(l->rep, QN_REP_I8);
        CHECK_EQ_INT(info[i].rep, QN_REP_I8);
        CHECK_EQ_INT(info[i].bytes_after, qn_layer_bytes(l));
        for (int64_t o = 0; o < l->out; o++) {
            float mx = 0.0f;
            for (int64_t k = 0; k < l->in; k++) mx = fmaxf(mx, fabsf(g_w[i][o * l->in + k]));
            CHECK(l->w_scale[o] == (mx > 0.0f ? mx / 127.0f : 1.0f));
            for (int64_t k = 0; k < l->in; k++) {
                const float w = g_w[i][o * l->in + k], q = (float)l->w_i8[o * l->in + k];
                CHECK(fabsf(q * l->w_scale[o] - w) <= 0.5f * l->w_scale[o] * 1.0001f);
                CHECK(q >= -127.0f && q <= 127.0f);
            }
        }
        CHECK(l->bias && l->bias[0] == g_b[i][0]);
    }
    CHECK(m->file_bytes * 2 < g_src->file_bytes); /* small model: header, scales and biases weigh in */
    qn_model_unref(&m);
}

TEST(fp16)
{
    qn_model *m = compress(g_src, (qn_compress_opts){.fp16 = 1}, NULL);
    if (!m) return;
    for (int i = 0; i < NL; i++) {
        const qn_layer *l = &m->layers[i];
        CHECK_EQ_INT(l->rep, QN_REP_F16);
        int bad = 0;
        for (int64_t k = 0; k < l->in * l->out; k++) bad += l->w_f16[k] != qn_f32_to_f16(g_w[i][k]);
        CHECK_EQ_INT(bad, 0);
    }
    /* and it computes what the f32 model computes, to f16 precision */
    float *x = rand_x(50);
    qn_compress_eval ev;
    CHECK_EQ_INT(qn_compress_evaluate(g_src, m, x, 50, NULL, 0, &ev), 0);
    CHECK(ev.max_abs < 5e-3 && ev.max_abs > 0.0);
    free(x);
    qn_model_unref(&m);
}

/* Unstructured pruning removes exactly floor(F·N) of all N weights, the
 * smallest over the whole model, and keeps the others bit for bit (int8:
 * within half a step). */
static void check_pruned(const qn_model *m, double frac)
{
    int64_t n_all = 0, kept = 0;
    float min_kept = INFINITY, max_dropped = 0.0f;
    for (int i = 0; i < NL; i++) {
        const qn_layer *l = &m->layers[i];
        const int64_t n = l->in * l->out;
        n_all += n;
        float *dense = calloc((size_t)n, sizeof(float));
        if (l->rep == QN_REP_CSR_F32 || l->rep == QN_REP_CSR_I8) {
            CHECK(l->nnz < n);
            for (int64_t o = 0; o < l->out; o++)
                for (int32_t p = l->csr_indptr[o]; p < l->csr_indptr[o + 1]; p++)
                    dense[o * l->in + l->csr_indices[p]] =
                        l->rep == QN_REP_CSR_F32 ? l->csr_f32[p] : (float)l->csr_i8[p] * l->w_scale[o];
        } else {
            QN_ASSERT(l->rep == QN_REP_F32);
            memcpy(dense, l->w, (size_t)n * sizeof(float));
        }
        for (int64_t k = 0; k < n; k++) {
            const float w = g_w[i][k];
            if (dense[k] != 0.0f) {
                kept++;
                min_kept = fminf(min_kept, fabsf(w));
                if (l->rep == QN_REP_CSR_I8) CHECK(fabsf(dense[k] - w) <= 0.5f * l->w_scale[k / l->in] * 1.0001f);
                else CHECK(dense[k] == w);
            } else {
                max_dropped = fmaxf(max_dropped, fabsf(w));
            }
        }
        free(dense);
    }
    /* (int8 could round a kept weight to 0; none of these is that small) */
    CHECK_EQ_INT(kept, n_all - (int64_t)floor(frac * (double)n_all));
    CHECK(min_kept >= max_dropped);
}

TEST(prune_unstructured)
{
    qn_compress_layer info[NL];
    /* 90%: CSR is smaller, f32 and int8 */
    for (int i8 = 0; i8 < 2; i8++) {
        qn_model *m = compress(g_src, (qn_compress_opts){.prune = 0.9, .int8 = i8}, info);
        if (!m) return;
        for (int i = 0; i < NL; i++) {
            CHECK_EQ_INT(m->layers[i].rep, i8 ? QN_REP_CSR_I8 : QN_REP_CSR_F32);
            CHECK_EQ_INT(info[i].nnz, m->layers[i].nnz);
            CHECK(info[i].bytes_after < info[i].bytes_before);
        }
        check_pruned(m, 0.9);
        qn_model_unref(&m);
    }
    /* 30% f32: CSR would not be smaller, so the layers stay dense... */
    qn_model *m = compress(g_src, (qn_compress_opts){.prune = 0.3}, info);
    if (!m) return;
    for (int i = 0; i < NL; i++) CHECK_EQ_INT(m->layers[i].rep, QN_REP_F32);
    check_pruned(m, 0.3);
    qn_model_unref(&m);
    /* ...unless forced */
    m = compress(g_src, (qn_compress_opts){.prune = 0.3, .force_csr = 1}, info);
    if (!m) return;
    for (int i = 0; i < NL; i++) CHECK_EQ_INT(m->layers[i].rep, QN_REP_CSR_F32);
    check_pruned(m, 0.3);
    float *x = rand_x(40);
    qn_compress_eval ev;
    CHECK_EQ_INT(qn_compress_evaluate(g_src, m, x, 40, NULL, 0, &ev), 0);
    CHECK(ev.max_abs > 0.0); /* pruning changes the outputs */
    free(x);
    qn_model_unref(&m);
}

TEST(prune_structured)
{
    qn_compress_layer info[NL];
    /* 0.2 of layer 0's 40 neurons = 8: exactly the all-zero ones; 0.2 of
     * layer 1's 17 = 3 by norm; the last layer keeps its 5 */
    qn_model *m = compress(g_src, (qn_compress_opts){.prune = 0.2, .structured = 1}, info);
    if (!m) return;
    CHECK_EQ_INT(m->layers[0].out, 32);
    CHECK_EQ_INT(m->layers[1].in, 32);
    CHECK_EQ_INT(m->layers[1].out, 14);
    CHECK_EQ_INT(m->layers[2].in, 14);
    CHECK_EQ_INT(m->layers[2].out, 5);
    CHECK_EQ_INT(info[1].out, 14);
    /* layer 0 kept every non-zero neuron in order */
    int64_t j = 0;
    for (int64_t o = 0; o < 40; o++) {
        if (o % 5 == 3) continue;
        CHECK(memcmp(m->layers[0].w + j * 33, g_w[0] + o * 33, 33 * sizeof(float)) == 0);
        j++;
    }
    /* layer 1: the 3 dropped rows have the smallest norms */
    double dropped_max = 0.0, kept_min = INFINITY;
    for (int64_t o = 0; o < 17; o++) {
        double s = 0.0;
        for (int64_t k = 0; k < 40; k++) s += (double)g_w[1][o * 40 + k] * g_w[1][o * 40 + k];
        int found = 0;
        for (int64_t r = 0; r < 14 && !found; r++) found = m->layers[1].bias[r] == g_b[1][o];
        if (found) kept_min = fmin(kept_min, s);
        else dropped_max = fmax(dropped_max, s);
    }
    CHECK(kept_min >= dropped_max);
    /* layer 1's kept rows lost exactly the input columns of layer 0's
     * removed neurons */
    for (int64_t r = 0; r < 14; r++) {
        int64_t o = 0;
        while (o < 17 && g_b[1][o] != m->layers[1].bias[r]) o++;
        CHECK(o < 17);
        if (o == 17) continue;
        int64_t c = 0;
        for (int64_t k = 0; k < 40; k++) {
            if (k % 5 == 3) continue;
            CHECK(m->layers[1].w[r * 32 + c] == g_w[1][o * 40 + k]);
            c++;
        }
    }
    qn_model_unref(&m);
}

TEST(evaluate)
{
    float *x = rand_x(64);
    float labels[64];
    qn_compress_eval ev;
    /* the model against itself: no error, same accuracy */
    float *y = malloc(64 * 5 * sizeof(float));
    CHECK_EQ_INT(qn_compress_forward(g_src, x, 64, y), 0);
    for (int r = 0; r < 64; r++) {
        int best = 0;
        for (int c = 1; c < 5; c++) best = y[r * 5 + c] > y[r * 5 + best] ? c : best;
        labels[r] = (float)(r % 2 ? best : (best + 1) % 5); /* half right */
    }
    CHECK_EQ_INT(qn_compress_evaluate(g_src, g_src, x, 64, labels, 1, &ev), 0);
    CHECK(ev.max_abs == 0.0 && ev.mean_abs == 0.0);
    CHECK(ev.has_accuracy);
    CHECK_NEAR(ev.acc_ref, 0.5, 1e-12);
    CHECK_NEAR(ev.acc_cmp, 0.5, 1e-12);
    /* softmax rows sum to 1 through the kernels */
    for (int r = 0; r < 64; r++) {
        double s = 0.0;
        for (int c = 0; c < 5; c++) s += y[r * 5 + c];
        CHECK_NEAR(s, 1.0, 1e-5);
    }
    labels[7] = 5.0f; /* not a class */
    CHECK_EQ_INT(qn_compress_evaluate(g_src, g_src, x, 64, labels, 1, &ev), QN_EINVAL);
    labels[7] = 0.5f;
    CHECK_EQ_INT(qn_compress_evaluate(g_src, g_src, x, 64, labels, 1, &ev), QN_EINVAL);
    CHECK_EQ_INT(qn_compress_evaluate(g_src, g_src, x, 64, labels, 3, &ev), QN_ESHAPE);
    free(x);
    free(y);
}

TEST(option_errors)
{
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", g_dir);
    CHECK_EQ_INT(qn_compress_write(g_src, &(qn_compress_opts){.int8 = 1, .fp16 = 1}, path, NULL, err, sizeof err), QN_EINVAL);
    CHECK_EQ_INT(qn_compress_write(g_src, &(qn_compress_opts){.prune = 1.0}, path, NULL, err, sizeof err), QN_EINVAL);
    CHECK_EQ_INT(qn_compress_write(g_src, &(qn_compress_opts){.prune = -0.1}, path, NULL, err, sizeof err), QN_EINVAL);
    CHECK_EQ_INT(qn_compress_write(g_src, &(qn_compress_opts){.structured = 1}, path, NULL, err, sizeof err), QN_EINVAL);
    CHECK_EQ_INT(qn_compress_write(g_src, &(qn_compress_opts){.force_csr = 1}, path, NULL, err, sizeof err), QN_EINVAL);
    CHECK(access(path, F_OK) != 0); /* nothing written */
    /* a compressed model is not a source */
    qn_model *m = compress(g_src, (qn_compress_opts){.int8 = 1}, NULL);
    if (!m) return;
    CHECK_EQ_INT(qn_compress_write(m, &(qn_compress_opts){.fp16 = 1}, path, NULL, err, sizeof err), QN_ENOTSUP);
    CHECK(strstr(err, "int8") != NULL);
    qn_model_unref(&m);
}

int main(void)
{
    qn_log_set_level(QN_LOG_WARN);
    g_dir = qn_test_tmpdir("compress");
    char path[4096];
    snprintf(path, sizeof path, "%s/src.safetensors", g_dir);
    write_source(path);
    g_src = load(path);
    if (!g_src) return 1;
    RUN(int8);
    RUN(fp16);
    RUN(prune_unstructured);
    RUN(prune_structured);
    RUN(evaluate);
    RUN(option_errors);
    qn_model_unref(&g_src);
    for (int i = 0; i < NL; i++) { free(g_w[i]); free(g_b[i]); }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    free(g_dir);
    return qn_test_done();
}
