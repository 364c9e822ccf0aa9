/* test_sgemm_packed.c: the packed-weight f32 kernel (lib/cpu/sgemm_packed.h)
 * and its use by the dense layer (dense.h), on every ISA this CPU has.
 *
 * Tolerance. Each output is one FMA chain over k in order plus the bias, so
 * (Higham, Accuracy and Stability, 3.1) |got - exact| <= (K+1)·u·S / (1-(K+1)u)
 * with u = 2⁻²⁴ and S = |b| + Σ_k |x_k·w_k|, the sum of the magnitudes that
 * enter the chain. We check |got - ref| <= 2(K+2)·u·S against a double
 * reference: a rigorous bound (cannot flake), relative to the condition of
 * the sum rather than to |ref| (which can be ~0 by cancellation), and for
 * the shapes here (K <= 1000) 6e-5·S at most: below the brief's
 * 1e-5·sqrt(K)·S. What it cannot see (a single dropped term of a long sum can
 * be smaller than the bound) the exact test catches: small integers make every
 * product and partial sum exact in float, so the result must equal the
 * reference bit for bit. After a non-linear activation f (Lipschitz <= 1.13
 * for gelu, 1 for relu/tanh, 1/4 for sigmoid) the bound is scaled by 1.13 and
 * libm's few ulp are added as 1e-6·(1+|ref|). */
#include "qn_test.h"

#include <float.h>
#include <stdint.h>
#include <sys/wait.h>

#include "backend.h"
#include "cpu/dense.h"
#include "cpu/epilogue.h"
#include "cpu/sgemm_packed.h"
#include "error.h"
#include "log.h"
#include "model.h"

/* ---- deterministic random numbers (splitmix64) */
static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static double urand(void) /* U[-1, 1) */
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / (double)(1ull << 52) - 1.0;
}

/* Plain malloc of exactly n floats (not rounded up to a cache line), so that
 * ASan sees a read or write even one float past the end. */
static float *fnew(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static float *frand(int64_t n, double scale)
{
    float *p = fnew(n);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(scale * urand());
    return p;
}

static float *fint(int64_t n, int range) /* integers in [-range, range] */
{
    float *p = fnew(n);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(int)lround(range * urand());
    return p;
}

static void fill_nan(float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = NAN;
}

/* The ISAs this CPU runs packed kernels on; returns how many. */
static int isas(qn_sgemm_isa out[2])
{
    int n = 0;
    if (qn_sgemm_isa_supported(QN_SGEMM_AVX512)) out[n++] = QN_SGEMM_AVX512;
    if (qn_sgemm_isa_supported(QN_SGEMM_AVX2)) out[n++] = QN_SGEMM_AVX2;
    return n;
}

/* ref [rows, out] = x·Wᵀ + b in double, and mag the matching S (header). */
static void reference(const float *x, int64_t rows, int64_t in, const float *w, int64_t out, const float *b,
                      double *ref, double *mag)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < out; j++) {
            double s = b ? b[j] : 0.0, m = b ? fabs(b[j]) : 0.0;
            for (int64_t k = 0; k < in; k++) {
                double p = (double)x[r * in + k] * (double)w[j * in + k];
                s += p;
                m += fabs(p);
            }
            ref[r * out + j] = s;
            mag[r * out + j] = m;
        }
}

static double ref_act(qn_act a, double v)
{
    switch (a) {
    case QN_ACT_RELU: return v > 0 ? v : 0;
    case QN_ACT_GELU: return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    case QN_ACT_SIGMOID: return 1.0 / (1.0 + exp(-v));
    case QN_ACT_TANH: return tanh(v);
    default: return v;
    }
}

/* Applies act to ref in place (softmax per row of out), scaling mag to the
 * bound after it. */
static void ref_apply(qn_act a, double *ref, double *mag, int64_t rows, int64_t out)
{
    for (int64_t r = 0; r < rows; r++) {
        double *o = ref + r * out, *m = mag + r * out;
        if (a == QN_ACT_SOFTMAX) {
            /* a logit error e moves each probability by at most e/2; take the
             * worst logit's bound for the whole row */
            double mx = o[0], sum = 0, em = 0;
            for (int64_t j = 0; j < out; j++) mx = o[j] > mx ? o[j] : mx, em = m[j] > em ? m[j] : em;
            for (int64_t j = 0; j < out; j++) sum += (o[j] = exp(o[j] - mx));
            for (int64_t j = 0; j < out; j++) o[j] /= sum, m[j] = em;
        } else {
            for (int64_t j = 0; j < out; j++) o[j] = ref_act(a, o[j]), m[j] *= a == QN_ACT_NONE ? 1.0 : 1.13;
        }
    }
}

/* Count of elements outside the bound; the worst ratio err/bound in *worst. */
static int64_t check_bound(const float *got, const double *ref, const double *mag, int64_t n, int64_t K,
                           int libm, double *worst)
{
    const double u = 1.0 / 16777216.0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double bound = 2.0 * (double)(K + 2) * u * mag[i] + (libm ? 1e-6 * (1.0 + fabs(ref[i])) : 0.0);
        double e = fabs((double)got[i] - ref[i]);
        if (!isfinite(got[i]) || !(e <= bound)) bad++;
        else if (bound > 0 && e / bound > *worst) *worst = e / bound;
    }
    return bad;
}

/* ---- tests */

TEST(pack_layout)
{
    /* W [17, 3]: two panels, the second with one real column */
    float w[17 * 3];
    for (int i = 0; i < 17 * 3; i++) w[i] = (float)(i + 1);
    qn_sgemm_packed *p = NULL;
    CHECK_EQ_INT(qn_sgemm_pack(w, 17, 3, &p), 0);
    if (!p) return;
    CHECK(p->in == 3 && p->out == 17 && p->npanels == 2);
    CHECK(((uintptr_t)p->panels & 63) == 0);
    for (int pi = 0; pi < 2; pi++)
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < 16; j++) {
                int col = pi * 16 + j;
                float want = col < 17 ? w[col * 3 + k] : 0.0f;
                CHECK(p->panels[pi * 48 + k * 16 + j] == want);
            }
    qn_sgemm_packed_free(p);
    qn_sgemm_packed_free(NULL);

    p = (qn_sgemm_packed *)1;
    CHECK_EQ_INT(qn_sgemm_pack(NULL, 4, 4, &p), QN_EINVAL);
    CHECK(p == NULL);
    CHECK_EQ_INT(qn_sgemm_pack(w, 0, 4, &p), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_pack(w, 4, 0, &p), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_pack(w, 4, (int64_t)INT32_MAX + 1, &p), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_pack(w, 4, 4, NULL), QN_EINVAL);
}

TEST(run_args)
{
    float w[16 * 4] = {0}, x[4] = {1, 2, 3, 4}, y[16];
    qn_sgemm_packed *p = NULL;
    CHECK_EQ_INT(qn_sgemm_pack(w, 16, 4, &p), 0);
    qn_sgemm_isa is[2];
    int n = isas(is);
    CHECK_EQ_INT(qn_sgemm_packed_run(NULL, x, 1, NULL, QN_ACT_NONE, y, NULL), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run(p, NULL, 1, NULL, QN_ACT_NONE, y, NULL), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, NULL, NULL), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run(p, x, -1, NULL, QN_ACT_NONE, y, NULL), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_COUNT, y, NULL), QN_EINVAL);
    qn_sgemm_opts o = {.isa = QN_SGEMM_ISA_COUNT};
    CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, y, &o), QN_EINVAL);
    for (int i = 0; i < n; i++) {
        /* tiles past each ISA's register budget are refused, not run */
        o = (qn_sgemm_opts){.isa = is[i], .mr = is[i] == QN_SGEMM_AVX512 ? 7 : 3, .nv = is[i] == QN_SGEMM_AVX512 ? 4 : 2};
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, y, &o), QN_EINVAL);
        o = (qn_sgemm_opts){.isa = is[i], .mr = 9};
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, y, &o), QN_EINVAL);
        o = (qn_sgemm_opts){.isa = is[i], .nv = 5};
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, y, &o), QN_EINVAL);
        o = (qn_sgemm_opts){.isa = is[i], .kc = -1};
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, y, &o), QN_EINVAL);
        y[0] = 42;
        o = (qn_sgemm_opts){.isa = is[i]};
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 0, NULL, QN_ACT_NONE, y, &o), 0); /* no-op */
        CHECK(y[0] == 42);
    }
    for (int i = QN_SGEMM_AVX2; i < QN_SGEMM_ISA_COUNT; i++)
        if (!qn_sgemm_isa_supported((qn_sgemm_isa)i)) {
            o = (qn_sgemm_opts){.isa = (qn_sgemm_isa)i};
            CHECK_EQ_INT(qn_sgemm_packed_run(p, x, 1, NULL, QN_ACT_NONE, y, &o), QN_ENOTSUP);
        }
    CHECK_STR(qn_sgemm_isa_name(QN_SGEMM_AVX512), "avx512");
    CHECK_STR(qn_sgemm_isa_name(QN_SGEMM_ISA_COUNT), "invalid");
    CHECK(qn_sgemm_isa_supported(QN_SGEMM_BLAS));
    CHECK(!qn_sgemm_isa_supported(QN_SGEMM_ISA_COUNT));
    qn_sgemm_packed_free(p);
}

/* Every ISA, the odd shapes of the brief, bias absent or present, act none
 * and relu (fused in the kernel): within the rigorous bound, every element
 * written (y prefilled with NaN), nothing read or written past any buffer
 * (exact-size mallocs, checked under ASan). */
TEST(odd_shapes_vs_reference)
{
    static const int64_t rows_set[] = {1, 3, 17, 1000};
    static const int64_t dims[] = {1, 7, 15, 16, 17, 33, 100, 1000};
    qn_sgemm_isa is[2];
    int n = isas(is);
    if (!n) printf("     (no AVX2 or AVX-512 here: nothing to run)\n");
    for (int ii = 0; ii < n; ii++) {
        double worst = 0;
        int64_t bad = 0, cases = 0;
        for (int a = 0; a < 8; a++)
            for (int b = 0; b < 8; b++) {
                int64_t in = dims[a], out = dims[b];
                float *w = frand(in * out, 1.0 / sqrt((double)in)), *bias = frand(out, 0.5);
                qn_sgemm_packed *p = NULL;
                CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
                for (int ri = 0; ri < 4; ri++) {
                    int64_t rows = rows_set[ri];
                    if (rows * in * out > 20000000) continue; /* 1000x1000x1000: covered by smaller ones */
                    float *x = frand(rows * in, 1.0), *y = fnew(rows * out);
                    double *ref = malloc(sizeof(double) * (size_t)(rows * out)),
                           *mag = malloc(sizeof(double) * (size_t)(rows * out));
                    for (int hb = 0; hb < 2; hb++)
                        for (int act = QN_ACT_NONE; act <= QN_ACT_RELU; act++) {
                            const float *bb = hb ? bias : NULL;
                            reference(x, rows, in, w, out, bb, ref, mag);
                            ref_apply((qn_act)act, ref, mag, rows, out);
                            fill_nan(y, rows * out);
                            qn_sgemm_opts o = {.isa = is[ii]};
                            CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, bb, (qn_act)act, y, &o), 0);
                            int64_t nb = check_bound(y, ref, mag, rows * out, in, 0, &worst);
                            if (nb)
                                fprintf(stderr, "  %s rows %lld %lld->%lld bias %d act %d: %lld bad\n",
                                        qn_sgemm_isa_name(is[ii]), (long long)rows, (long long)in, (long long)out,
                                        hb, act, (long long)nb);
                            bad += nb;
                            cases++;
                        }
                    free(x), free(y), free(ref), free(mag);
                }
                qn_sgemm_packed_free(p);
                free(w), free(bias);
            }
        CHECK_EQ_INT(bad, 0);
        printf("     %-6s %lld cases, worst err = %.3f of the bound\n", qn_sgemm_isa_name(is[ii]), (long long)cases,
               worst);
    }
}

/* Small integers: every product and partial sum is exact in float, so the
 * kernel must match the reference exactly. Catches a dropped, doubled or
 * misplaced term that a rounding bound could hide. */
TEST(exact_integers)
{
    static const int64_t shapes[][3] = {{1, 1, 1}, {3, 17, 33}, {17, 100, 15}, {9, 1000, 16}, {1000, 7, 17}, {5, 33, 100}};
    qn_sgemm_isa is[2];
    int n = isas(is);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t rows = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        float *w = fint(in * out, 8), *x = fint(rows * in, 8), *bias = fint(out, 100), *y = fnew(rows * out);
        double *ref = malloc(sizeof(double) * (size_t)(rows * out)), *mag = malloc(sizeof(double) * (size_t)(rows * out));
        reference(x, rows, in, w, out, bias, ref, mag);
        qn_sgemm_packed *p = NULL;
        CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
        for (int ii = 0; ii < n; ii++) {
            fill_nan(y, rows * out);
            qn_sgemm_opts o = {.isa = is[ii]};
            CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, bias, QN_ACT_NONE, y, &o), 0);
            int64_t bad = 0;
            for (int64_t i = 0; i < rows * out; i++) bad += (double)y[i] != ref[i];
            if (bad) fprintf(stderr, "  %s shape %zu: %lld inexact\n", qn_sgemm_isa_name(is[ii]), s, (long long)bad);
            CHECK_EQ_INT(bad, 0);
        }
        qn_sgemm_packed_free(p);
        free(w), free(x), free(bias), free(y), free(ref), free(mag);
    }
}

/* Every tile shape each ISA has, K blocks of 1, 5 and all of K, row blocks
 * of 1, 5 and all rows: all give the same bits as the default (one FMA chain
 * per element in k order, whatever the blocking), and AVX2 the same bits as
 * AVX-512. Also: a row's result does not depend on the rows batched with it. */
TEST(bit_identical_across_tiles_isas_batches)
{
    const int64_t rows = 23, in = 37, out = 71; /* 5 panels, the last with 7 columns */
    float *w = frand(in * out, 0.2), *x = frand(rows * in, 1.0), *bias = frand(out, 0.5);
    float *y0 = fnew(rows * out), *y = fnew(rows * out);
    qn_sgemm_packed *p = NULL;
    CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
    qn_sgemm_isa is[2];
    int n = isas(is);
    if (n) {
        qn_sgemm_opts o0 = {.isa = is[0]};
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, bias, QN_ACT_RELU, y0, &o0), 0);
    }
    int combos = 0, mismatched = 0;
    for (int ii = 0; ii < n; ii++)
        for (int mr = 1; mr <= 8; mr++)
            for (int nv = 1; nv <= 4; nv++) {
                if (is[ii] == QN_SGEMM_AVX512 ? mr * nv > 24 : (mr > 6 || (mr > 1 && 2 * mr * nv + 2 * nv + 1 > 16)))
                    continue;
                static const int64_t kcs[] = {1, 5, 0}, mcs[] = {1, 5, 0};
                for (int a = 0; a < 3; a++)
                    for (int b = 0; b < 3; b++) {
                        qn_sgemm_opts o = {.isa = is[ii], .mr = mr, .nv = nv, .kc = kcs[a], .mc = mcs[b]};
                        fill_nan(y, rows * out);
                        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, bias, QN_ACT_RELU, y, &o), 0);
                        combos++;
                        if (memcmp(y, y0, sizeof(float) * (size_t)(rows * out))) {
                            mismatched++;
                            fprintf(stderr, "  %s %dx%d kc %lld mc %lld differs\n", qn_sgemm_isa_name(is[ii]), mr, nv,
                                    (long long)kcs[a], (long long)mcs[b]);
                        }
                    }
            }
    CHECK_EQ_INT(mismatched, 0);
    /* each row alone, and rows 5..16 as their own batch */
    for (int ii = 0; ii < n; ii++) {
        qn_sgemm_opts o = {.isa = is[ii]};
        for (int64_t r = 0; r < rows; r++) {
            CHECK_EQ_INT(qn_sgemm_packed_run(p, x + r * in, 1, bias, QN_ACT_RELU, y, &o), 0);
            CHECK(memcmp(y, y0 + r * out, sizeof(float) * (size_t)out) == 0);
        }
        CHECK_EQ_INT(qn_sgemm_packed_run(p, x + 5 * in, 12, bias, QN_ACT_RELU, y, &o), 0);
        CHECK(memcmp(y, y0 + 5 * out, sizeof(float) * (size_t)(12 * out)) == 0);
    }
    printf("     %d tile/blocking combos, %d mismatched\n", combos, mismatched);
    qn_sgemm_packed_free(p);
    free(w), free(x), free(bias), free(y0), free(y);
}

/* The activations that run after the kernel (gelu, sigmoid, tanh per block
 * of rows, softmax per row) on blocked runs too (mc 5: several blocks). */
TEST(other_activations)
{
    const int64_t rows = 19, in = 33, out = 40;
    float *w = frand(in * out, 1.0 / sqrt(33.0)), *x = frand(rows * in, 3.0), *bias = frand(out, 0.5);
    float *y = fnew(rows * out);
    double *ref = malloc(sizeof(double) * (size_t)(rows * out)), *mag = malloc(sizeof(double) * (size_t)(rows * out));
    qn_sgemm_packed *p = NULL;
    CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
    qn_sgemm_isa is[2];
    int n = isas(is);
    for (int ii = 0; ii < n; ii++)
        for (int a = QN_ACT_GELU; a < QN_ACT_COUNT; a++)
            for (int mc = 0; mc <= 5; mc += 5) {
                reference(x, rows, in, w, out, bias, ref, mag);
                ref_apply((qn_act)a, ref, mag, rows, out);
                fill_nan(y, rows * out);
                qn_sgemm_opts o = {.isa = is[ii], .mc = mc};
                CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, bias, (qn_act)a, y, &o), 0);
                double worst = 0;
                int64_t bad = check_bound(y, ref, mag, rows * out, in, 1, &worst);
                if (bad) fprintf(stderr, "  %s act %d mc %d: %lld bad\n", qn_sgemm_isa_name(is[ii]), a, mc, (long long)bad);
                CHECK_EQ_INT(bad, 0);
            }
    qn_sgemm_packed_free(p);
    free(w), free(x), free(bias), free(y), free(ref), free(mag);
}

/* The dense layer with packed weights: PACKED and AUTO give the packed
 * kernel's bits where it is chosen, and every path stays right. */
TEST(dense_with_packed)
{
    const int64_t in = 100, out = 33;
    float *w = frand(in * out, 0.1), *bias = frand(out, 0.5);
    qn_sgemm_packed *p = NULL;
    CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
    int have = qn_sgemm_isa_default() != QN_SGEMM_BLAS;
    static const int64_t rows_set[] = {1, 2, 8, 64, 257};
    for (int ri = 0; ri < 5; ri++) {
        int64_t rows = rows_set[ri];
        float *x = frand(rows * in, 1.0), *yp = fnew(rows * out), *ya = fnew(rows * out), *yk = fnew(rows * out);
        double *ref = malloc(sizeof(double) * (size_t)(rows * out)), *mag = malloc(sizeof(double) * (size_t)(rows * out));
        reference(x, rows, in, w, out, bias, ref, mag);
        ref_apply(QN_ACT_TANH, ref, mag, rows, out);
        fill_nan(yp, rows * out), fill_nan(ya, rows * out);
        int rc = qn_cpu_dense_f32_packed(x, rows, in, w, p, out, bias, QN_ACT_TANH, yp, QN_DENSE_PACKED);
        CHECK_EQ_INT(rc, have ? 0 : QN_ENOTSUP);
        CHECK_EQ_INT(qn_cpu_dense_f32_packed(x, rows, in, w, p, out, bias, QN_ACT_TANH, ya, QN_DENSE_AUTO), 0);
        double worst = 0;
        CHECK_EQ_INT(check_bound(ya, ref, mag, rows * out, in, 1, &worst), 0);
        if (have) {
            CHECK_EQ_INT(check_bound(yp, ref, mag, rows * out, in, 1, &worst), 0);
            CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, bias, QN_ACT_TANH, yk, NULL), 0);
            CHECK(memcmp(yp, yk, sizeof(float) * (size_t)(rows * out)) == 0);
            if (qn_cpu_dense_packed_wins(rows, in, out)) CHECK(memcmp(ya, yk, sizeof(float) * (size_t)(rows * out)) == 0);
        }
        free(x), free(yp), free(ya), free(yk), free(ref), free(mag);
    }
    float x1[100] = {0}, y1[33];
    CHECK_EQ_INT(qn_cpu_dense_f32_packed(x1, 1, in, w, NULL, out, NULL, QN_ACT_NONE, y1, QN_DENSE_PACKED), QN_EINVAL);
    CHECK_EQ_INT(qn_cpu_dense_f32_packed(x1, 1, in - 1, w, p, out, NULL, QN_ACT_NONE, y1, QN_DENSE_AUTO), QN_EINVAL);
    qn_sgemm_packed_free(p);
    free(w), free(bias);
}

/* The backend packs f32 layers at prepare (layer.kernel_data, freed with the
 * model), reuses a packing on a second prepare, and runs them right. */
TEST(backend_packs_at_prepare)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    qn_model *m = calloc(1, sizeof *m);
    m->layers = calloc(2, sizeof *m->layers);
    snprintf(m->name, sizeof m->name, "t");
    m->nlayers = 2, m->in_dim = 70, m->out_dim = 9, m->max_width = 70;
    const int64_t dims[3] = {70, 50, 9};
    for (int i = 0; i < 2; i++) {
        qn_layer *l = &m->layers[i];
        l->rep = QN_REP_F32, l->in = dims[i], l->out = dims[i + 1], l->act = i ? QN_ACT_NONE : QN_ACT_RELU;
        l->w = frand(l->in * l->out, 0.2), l->bias = frand(l->out, 0.5);
    }
    atomic_init(&m->refs, 1);
    void *st = (void *)1;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), 0);
    int have = qn_sgemm_isa_default() != QN_SGEMM_BLAS;
    for (int i = 0; i < 2; i++) {
        CHECK(have ? m->layers[i].kernel_data != NULL : m->layers[i].kernel_data == NULL);
        if (have) CHECK(m->layers[i].kernel_free == qn_sgemm_packed_free);
    }
    void *first = m->layers[0].kernel_data;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), 0);
    CHECK(m->layers[0].kernel_data == first); /* kept, not re-packed or leaked */
    m->backend = be, m->backend_state = st;
    const int64_t rows = 13;
    float *x = frand(rows * 70, 1.0), *y = fnew(rows * 9), *h = fnew(rows * 50), *y2 = fnew(rows * 9);
    fill_nan(y, rows * 9);
    CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, rows, y), 0);
    /* the backend is the dense layer's AUTO on the packings it made: same bits */
    const qn_layer *l0 = &m->layers[0], *l1 = &m->layers[1];
    CHECK_EQ_INT(qn_cpu_dense_f32_packed(x, rows, 70, l0->w, l0->kernel_data, 50, l0->bias, QN_ACT_RELU, h, QN_DENSE_AUTO), 0);
    CHECK_EQ_INT(qn_cpu_dense_f32_packed(h, rows, 50, l1->w, l1->kernel_data, 9, l1->bias, QN_ACT_NONE, y2, QN_DENSE_AUTO), 0);
    CHECK(memcmp(y, y2, sizeof(float) * rows * 9) == 0);
    /* and right: against the double reference through both layers, at
     * test_cpu_backend.c's 1e-4·(1+|ref|) (two chained roundings) */
    double *h64 = malloc(sizeof(double) * rows * 50), *mag = malloc(sizeof(double) * rows * 50);
    reference(x, rows, 70, l0->w, 50, l0->bias, h64, mag);
    for (int64_t i = 0; i < rows * 50; i++) h64[i] = h64[i] > 0 ? h64[i] : 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < 9; j++) {
            double s = l1->bias[j];
            for (int64_t k = 0; k < 50; k++) s += h64[r * 50 + k] * (double)l1->w[j * 50 + k];
            CHECK(fabs((double)y[r * 9 + j] - s) <= 1e-4 * (1.0 + fabs(s)));
        }
    free(x), free(y), free(h), free(y2), free(h64), free(mag);
    qn_model_unref(&m); /* frees the packings via kernel_free (ASan: no leak) */
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be);
}

/* QN_SGEMM is read once per process (and this one has read it): check each
 * value in a fresh exec of this binary, which answers with its exit status. */
static int child_default(const char *val)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (val) setenv("QN_SGEMM", val, 1);
        else unsetenv("QN_SGEMM");
        execl("/proc/self/exe", "test_sgemm_packed", "--print-default-isa", (char *)NULL);
        _exit(99);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

TEST(env_forces_isa)
{
    int best = child_default(NULL);
    CHECK(best >= 0 && best < QN_SGEMM_ISA_COUNT);
    CHECK_EQ_INT(child_default("blas"), QN_SGEMM_BLAS);
    CHECK_EQ_INT(child_default("bogus"), best);
    CHECK_EQ_INT(child_default("avx2"), qn_sgemm_isa_supported(QN_SGEMM_AVX2) ? QN_SGEMM_AVX2 : best);
    CHECK_EQ_INT(child_default("avx512"), qn_sgemm_isa_supported(QN_SGEMM_AVX512) ? QN_SGEMM_AVX512 : best);
    printf("     default here: %s (QN_SGEMM=%s)\n", qn_sgemm_isa_name(qn_sgemm_isa_default()),
           getenv("QN_SGEMM") ? getenv("QN_SGEMM") : "unset");
}

int main(int argc, char **argv)
{
    qn_log_set_level(QN_LOG_ERROR); /* the env test's children warn on purpose */
    if (argc == 2 && !strcmp(argv[1], "--print-default-isa")) return (int)qn_sgemm_isa_default();
    RUN(pack_layout);
    RUN(run_args);
    RUN(odd_shapes_vs_reference);
    RUN(exact_integers);
    RUN(bit_identical_across_tiles_isas_batches);
    RUN(other_activations);
    RUN(dense_with_packed);
    RUN(backend_packs_at_prepare);
    RUN(env_forces_isa);
    return qn_test_done();
}
