/* test_kernels.c: every compressed-layer kernel on every path this CPU can
 * run, against references computed here in double precision, on odd shapes
 * (rows 1, 3, 17, 1000; widths 1, 7, 33, 100, 1000, none a multiple of the
 * vector length). Tolerances are derived, not tuned:
 *  - int8: exact against the integer reference built from the same activation
 *    quantization (float rounding only), and within s_row·(½Σ|w| + max|w|)
 *    (times the activation's Lipschitz constant) of the fp32 model;
 *  - f16 and CSR: within the recursive-summation bound γ_n·Σ|w·x| (n terms,
 *    γ_n ≈ n·2^-24) of the f32 result on the same (f16-rounded) weights.
 * It also checks that all int8 paths produce bit-identical sums, the
 * validation errors of prepare, and that QN_KERNEL forces the path (by
 * re-running itself with the variable set). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "cpu/epilogue.h"
#include "cpu/kernels.h"
#include "cpu/kernels_impl.h"
#include "error.h"
#include "log.h"
#include "qn_test.h"
#include "tensor.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rndf(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() & 0xffffff) / 16777216.0f; }

typedef struct { int64_t rows, in, out; } shape;
static const shape g_shapes[] = {
    {1, 1, 1},     {1, 7, 33},    {3, 33, 7},    {17, 100, 1000}, {1, 1000, 1000},
    {3, 1000, 100}, {1000, 33, 100}, {17, 7, 1},  {1000, 100, 7},  {17, 1000, 33},
};
#define NSHAPES (int)(sizeof g_shapes / sizeof g_shapes[0])
static const qn_act g_acts[] = {QN_ACT_RELU, QN_ACT_NONE, QN_ACT_GELU, QN_ACT_SIGMOID, QN_ACT_TANH, QN_ACT_SOFTMAX};

/* Activation Lipschitz constants (softmax: |Δp_i| <= 2·max_j |Δz_j|, applied
 * to the row's largest bound). */
static double act_lip(qn_act a)
{
    switch (a) {
    case QN_ACT_GELU: return 1.13;
    case QN_ACT_SIGMOID: return 0.25;
    case QN_ACT_SOFTMAX: return 2.0;
    default: return 1.0;
    }
}

/* In place: act over each row of z (double). */
static void ref_act(double *z, int64_t rows, int64_t out, qn_act act)
{
    for (int64_t r = 0; r < rows; r++) {
        double *row = z + r * out;
        if (act == QN_ACT_SOFTMAX) {
            double mx = row[0], sum = 0.0;
            for (int64_t o = 1; o < out; o++) mx = row[o] > mx ? row[o] : mx;
            for (int64_t o = 0; o < out; o++) { row[o] = exp(row[o] - mx); sum += row[o]; }
            for (int64_t o = 0; o < out; o++) row[o] /= sum;
        } else {
            for (int64_t o = 0; o < out; o++) row[o] = qn_act_scalar(act, (float)row[o]);
        }
    }
}

/* Transcendental activations run in float (expf, erff): allow a few ulps of
 * the output on top of the propagated bound. */
static double act_slack(qn_act a) { return a == QN_ACT_NONE || a == QN_ACT_RELU ? 0.0 : 4e-7; }

static float *rand_x(int64_t rows, int64_t in)
{
    float *x = malloc((size_t)(rows * in) * sizeof(float));
    for (int64_t i = 0; i < rows * in; i++) x[i] = rndf(-2.0f, 2.0f);
    /* a few all-positive rows (zero point 0) and one all-zero row */
    for (int64_t r = 1; r < rows; r += 5)
        for (int64_t k = 0; k < in; k++) x[r * in + k] = fabsf(x[r * in + k]);
    if (rows > 2)
        for (int64_t k = 0; k < in; k++) x[2 * in + k] = 0.0f;
    return x;
}

static float *rand_bias(int64_t out)
{
    float *b = malloc((size_t)out * sizeof(float));
    for (int64_t o = 0; o < out; o++) b[o] = rndf(-1.0f, 1.0f);
    return b;
}

static int supported_paths(qn_kpath *paths)
{
    int n = 0;
    for (int p = 0; p < QN_KPATH_COUNT; p++)
        if (qn_kernel_path_supported((qn_kpath)p)) paths[n++] = (qn_kpath)p;
    return n;
}

TEST(dispatch)
{
    qn_kpath p;
    for (int i = 0; i < QN_KPATH_COUNT; i++) {
        CHECK_EQ_INT(qn_kpath_from_name(qn_kpath_name((qn_kpath)i), &p), 0);
        CHECK_EQ_INT(p, i);
    }
    CHECK_EQ_INT(qn_kpath_from_name("sse9", &p), QN_EINVAL);
    CHECK(qn_kernel_path_supported(QN_KPATH_PORTABLE));
    CHECK(qn_kernel_path_name() != NULL);
    for (int i = 0; i < QN_KPATH_COUNT; i++) {
        int rc = qn_kernel_set_path((qn_kpath)i);
        CHECK_EQ_INT(rc, qn_kernel_path_supported((qn_kpath)i) ? 0 : QN_ENOTSUP);
        if (rc == 0) CHECK_STR(qn_kernel_path_name(), qn_kpath_name((qn_kpath)i));
    }
    printf("     paths supported here:");
    for (int i = 0; i < QN_KPATH_COUNT; i++)
        if (qn_kernel_path_supported((qn_kpath)i)) printf(" %s", qn_kpath_name((qn_kpath)i));
    printf("\n");
}

/* QN_KERNEL is read once per process, so check it in child processes. */
static const char *g_self;
TEST(env_forcing)
{
    const char *want[] = {"portable", "avx2", "avxvnni", "avx512vnni", "bogus"};
    for (int i = 0; i < 5; i++) {
        qn_kpath p = QN_KPATH_PORTABLE;
        int valid = qn_kpath_from_name(want[i], &p) == 0;
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "QN_LOG=error QN_KERNEL=%s '%s' --print-path", want[i], g_self);
        FILE *f = popen(cmd, "r");
        CHECK(f != NULL);
        if (!f) continue;
        char got[64] = "";
        if (!fgets(got, sizeof got, f)) got[0] = 0;
        int st = pclose(f);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        got[strcspn(got, "\n")] = 0;
        if (valid && qn_kernel_path_supported(p)) CHECK_STR(got, want[i]);
        else CHECK(qn_kpath_from_name(got, &p) == 0 && qn_kernel_path_supported(p)); /* fell back */
    }
}

TEST(quantize_row)
{
    const int64_t n = 1001;
    float *x = malloc(n * sizeof(float));
    uint8_t *q = malloc(n);
    for (int trial = 0; trial < 4; trial++) {
        for (int64_t k = 0; k < n; k++) x[k] = trial == 1 ? rndf(0.0f, 3.0f) : trial == 2 ? rndf(-5.0f, -0.1f) : rndf(-1.0f, 4.0f);
        if (trial == 3) x[17] = 1000.0f; /* one outlier */
        float s;
        int32_t zp;
        qn_kernel_quantize_row(x, n, q, &s, &zp);
        CHECK(s > 0.0f);
        CHECK(zp >= 0 && zp <= 255);
        if (trial == 1) CHECK_EQ_INT(zp, 0);
        if (trial == 2) CHECK_EQ_INT(zp, 255);
        int clamped = 0;
        for (int64_t k = 0; k < n; k++) {
            double e = fabs((double)x[k] - (double)(q[k] - zp) * s);
            if (e > 0.5 * s * (1 + 1e-5)) clamped++;
            CHECK(e <= s * (1 + 1e-5));
        }
        CHECK(clamped <= 1); /* only the maximum may clamp a step */
    }
    for (int64_t k = 0; k < n; k++) x[k] = 0.0f;
    float s;
    int32_t zp;
    qn_kernel_quantize_row(x, n, q, &s, &zp);
    CHECK(s > 0.0f);
    for (int64_t k = 0; k < n; k++) CHECK((q[k] - zp) * s == 0.0f);
    free(x);
    free(q);
}

/* ---------------------------------------------------------------- int8 */

typedef struct {
    qn_layer l;
    int8_t *w;
    float *scale, *bias;
} i8_layer;

static void i8_make(i8_layer *t, int64_t in, int64_t out, qn_act act, int with_bias)
{
    memset(t, 0, sizeof *t);
    t->w = malloc((size_t)(in * out));
    t->scale = malloc((size_t)out * sizeof(float));
    for (int64_t i = 0; i < in * out; i++) t->w[i] = (int8_t)((int)(rnd() % 255) - 127);
    for (int64_t o = 0; o < out; o++) t->scale[o] = rndf(0.001f, 0.02f);
    if (out > 3) /* saturated rows: every weight ±127, the int32 worst case */
        for (int64_t i = 0; i < in; i++) { t->w[in + i] = 127; t->w[2 * in + i] = -127; }
    t->bias = with_bias ? rand_bias(out) : NULL;
    t->l = (qn_layer){.rep = QN_REP_I8, .in = in, .out = out, .act = act, .bias = t->bias,
                      .w_i8 = t->w, .w_scale = t->scale};
}

static void i8_free(i8_layer *t)
{
    if (t->l.kernel_free) t->l.kernel_free(t->l.kernel_data);
    free(t->w);
    free(t->scale);
    free(t->bias);
}

/* Checks y against (a) the exact integer reference and (b) the fp32 model. */
static void i8_check(const i8_layer *t, const float *x, int64_t rows, const float *y, int *bad)
{
    const int64_t in = t->l.in, out = t->l.out;
    double *zi = malloc((size_t)(rows * out) * sizeof(double)), *zf = malloc((size_t)(rows * out) * sizeof(double));
    double *bnd = malloc((size_t)(rows * out) * sizeof(double)), *mag = malloc((size_t)(rows * out) * sizeof(double));
    uint8_t *q = malloc((size_t)in);
    for (int64_t r = 0; r < rows; r++) {
        float s;
        int32_t zp;
        qn_kernel_quantize_row(x + r * in, in, q, &s, &zp);
        for (int64_t o = 0; o < out; o++) {
            const int8_t *w = t->w + o * in;
            int64_t acc = 0;
            double f = 0.0, sabs = 0.0, mabs = 0.0;
            for (int64_t k = 0; k < in; k++) {
                acc += (int64_t)(q[k] - zp) * w[k];
                double wd = (double)w[k] * t->scale[o];
                f += (double)x[r * in + k] * wd;
                sabs += fabs(wd);
                mabs = fabs(wd) > mabs ? fabs(wd) : mabs;
            }
            double b = t->bias ? t->bias[o] : 0.0;
            zi[r * out + o] = (double)acc * s * t->scale[o] + b;
            zf[r * out + o] = f + b;
            bnd[r * out + o] = s * (0.5 * sabs + mabs);
            mag[r * out + o] = fabs((double)acc * s * t->scale[o]) + fabs(b);
        }
    }
    const qn_act act = t->l.act;
    double *bmax = calloc((size_t)rows + 1, sizeof(double)), *mmax = calloc((size_t)rows + 1, sizeof(double));
    for (int64_t i = 0; i < rows * out; i++) {
        bmax[i / out] = bnd[i] > bmax[i / out] ? bnd[i] : bmax[i / out];
        mmax[i / out] = mag[i] > mmax[i / out] ? mag[i] : mmax[i / out];
    }
    ref_act(zi, rows, out, act);
    ref_act(zf, rows, out, act);
    const double lip = act_lip(act), slack = act_slack(act);
    for (int64_t i = 0; i < rows * out; i++) {
        /* (a) float rounding only: int32 -> float, one scale product, one fma/add */
        double tol_a = act == QN_ACT_SOFTMAX ? 2.0 * 4.0 * 6e-8 * mmax[i / out] + 1e-6
                                             : 4.0 * 6e-8 * mag[i] * lip + slack + 1e-30;
        double tol_b = lip * (act == QN_ACT_SOFTMAX ? bmax[i / out] : bnd[i]) * 1.001 + tol_a;
        if (!(fabs(y[i] - zi[i]) <= tol_a) || !(fabs(y[i] - zf[i]) <= tol_b)) {
            if (*bad < 5)
                fprintf(stderr, "  int8 %lldx%lld->%lld act %d at [%lld,%lld]: y %.9g int-ref %.9g (tol %.3g) f32-ref %.9g (tol %.3g)\n",
                        (long long)rows, (long long)in, (long long)out, (int)act, (long long)(i / out),
                        (long long)(i % out), y[i], zi[i], tol_a, zf[i], tol_b);
            (*bad)++;
        }
    }
    free(zi); free(zf); free(bnd); free(mag); free(q); free(bmax); free(mmax);
}

TEST(int8_all_paths)
{
    qn_kpath paths[QN_KPATH_COUNT];
    const int np = supported_paths(paths);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    for (int si = 0; si < NSHAPES; si++) {
        const shape sh = g_shapes[si];
        const qn_act act = g_acts[si % 6];
        i8_layer t;
        i8_make(&t, sh.in, sh.out, act, si % 3 != 2);
        float *x = rand_x(sh.rows, sh.in);
        float *y = malloc((size_t)(sh.rows * sh.out) * sizeof(float));
        for (int pi = 0; pi < np; pi++) {
            CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
            CHECK_EQ_INT(qn_kernel_layer_prepare(&t.l), 0);
            for (int64_t i = 0; i < sh.rows * sh.out; i++) y[i] = NAN;
            CHECK_EQ_INT(qn_kernel_layer_forward(&t.l, x, sh.rows, y, s), 0);
            int bad = 0;
            i8_check(&t, x, sh.rows, y, &bad);
            if (bad) fprintf(stderr, "  path %s: %d bad\n", qn_kpath_name(paths[pi]), bad);
            CHECK_EQ_INT(bad, 0);
        }
        free(x);
        free(y);
        i8_free(&t);
    }
    qn_kernel_scratch_destroy(&s);
    CHECK(s == NULL);
}

/* Without bias and activation every path computes float(int32 sum) · (s·w_s)
 * with one rounding, so the outputs must be identical bit for bit; that also
 * holds the per-path activation quantizers (kernels_impl.h) to the same
 * bits, on widths with every kind of vector tail. */
TEST(int8_paths_bit_identical)
{
    static const int64_t ins[] = {1001, 7, 33, 16, 48};
    for (size_t ii = 0; ii < sizeof ins / sizeof ins[0]; ii++) {
        qn_kpath paths[QN_KPATH_COUNT];
        const int np = supported_paths(paths);
        qn_kernel_scratch *s = NULL;
        CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
        const int64_t rows = 17, in = ins[ii], out = 100;
        i8_layer t;
        i8_make(&t, in, out, QN_ACT_NONE, 0);
        float *x = rand_x(rows, in);
        float *y0 = malloc((size_t)(rows * out) * sizeof(float)), *y = malloc((size_t)(rows * out) * sizeof(float));
        for (int pi = 0; pi < np; pi++) {
            CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
            CHECK_EQ_INT(qn_kernel_layer_prepare(&t.l), 0);
            CHECK_EQ_INT(qn_kernel_layer_forward(&t.l, x, rows, pi ? y : y0, s), 0);
            if (pi) CHECK(memcmp(y, y0, (size_t)(rows * out) * sizeof(float)) == 0);
        }
        free(x); free(y0); free(y);
        i8_free(&t);
        qn_kernel_scratch_destroy(&s);
    }
}

/* ---------------------------------------------------------------- f16 */

TEST(f16_all_paths)
{
    qn_kpath paths[QN_KPATH_COUNT];
    const int np = supported_paths(paths);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    for (int si = 0; si < NSHAPES; si++) {
        const shape sh = g_shapes[si];
        const int64_t in = sh.in, out = sh.out, rows = sh.rows;
        const qn_act act = g_acts[(si + 1) % 6];
        uint16_t *w = malloc((size_t)(in * out) * sizeof(uint16_t));
        for (int64_t i = 0; i < in * out; i++) w[i] = qn_f32_to_f16(rndf(-0.1f, 0.1f));
        float *bias = si % 3 ? rand_bias(out) : NULL;
        qn_layer l = {.rep = QN_REP_F16, .in = in, .out = out, .act = act, .bias = bias, .w_f16 = w};
        float *x = rand_x(rows, in);
        double *z = malloc((size_t)(rows * out) * sizeof(double)), *tol = malloc((size_t)(rows * out) * sizeof(double));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < out; o++) {
                double acc = 0.0, mag = 0.0;
                for (int64_t k = 0; k < in; k++) {
                    double p = (double)x[r * in + k] * qn_f16_to_f32(w[o * in + k]);
                    acc += p;
                    mag += fabs(p);
                }
                double b = bias ? bias[o] : 0.0;
                z[r * out + o] = acc + b;
                tol[r * out + o] = ((double)(in + 2) * 6e-8) * (mag + fabs(b)) * act_lip(act) + act_slack(act) + 1e-30;
            }
        double *tmax = calloc((size_t)rows + 1, sizeof(double));
        for (int64_t i = 0; i < rows * out; i++) tmax[i / out] = tol[i] > tmax[i / out] ? tol[i] : tmax[i / out];
        ref_act(z, rows, out, act);
        float *y = malloc((size_t)(rows * out) * sizeof(float));
        for (int pi = 0; pi < np; pi++) {
            CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
            CHECK_EQ_INT(qn_kernel_layer_prepare(&l), 0);
            for (int64_t i = 0; i < rows * out; i++) y[i] = NAN;
            CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, rows, y, s), 0);
            int bad = 0;
            for (int64_t i = 0; i < rows * out; i++) {
                double tl = act == QN_ACT_SOFTMAX ? tmax[i / out] + 1e-6 : tol[i];
                if (!(fabs(y[i] - z[i]) <= tl)) {
                    if (bad < 5)
                        fprintf(stderr, "  f16 %s %lldx%lld->%lld at %lld: %.9g vs %.9g tol %.3g\n", qn_kpath_name(paths[pi]),
                                (long long)rows, (long long)in, (long long)out, (long long)i, y[i], z[i], tl);
                    bad++;
                }
            }
            CHECK_EQ_INT(bad, 0);
        }
        l.kernel_free(l.kernel_data);
        free(w); free(bias); free(x); free(z); free(tol); free(tmax); free(y);
    }
    qn_kernel_scratch_destroy(&s);
}

/* Every one of the 65536 half values through a 1x1 layer (y = 1·w) on every
 * path: the F16C, AVX-512 and portable widenings all agree with the reference
 * converter, subnormals, infinities and NaNs included. */
TEST(f16_every_value)
{
    qn_kpath paths[QN_KPATH_COUNT];
    const int np = supported_paths(paths);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    const int64_t n = 65536;
    uint16_t *w = malloc((size_t)n * sizeof(uint16_t));
    for (int64_t i = 0; i < n; i++) w[i] = (uint16_t)i;
    float one = 1.0f, *y = malloc((size_t)n * sizeof(float));
    /* in = 1, out = 65536: one output per half value */
    qn_layer l = {.rep = QN_REP_F16, .in = 1, .out = n, .act = QN_ACT_NONE, .w_f16 = w};
    for (int pi = 0; pi < np; pi++) {
        CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
        CHECK_EQ_INT(qn_kernel_layer_prepare(&l), 0);
        CHECK_EQ_INT(qn_kernel_layer_forward(&l, &one, 1, y, s), 0);
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            float r = qn_f16_to_f32((uint16_t)i);
            if (!(y[i] == r || (isnan(y[i]) && isnan(r)))) {
                if (bad < 3) fprintf(stderr, "  %s: half 0x%04llx -> %g, want %g\n", qn_kpath_name(paths[pi]), (long long)i, y[i], r);
                bad++;
            }
        }
        CHECK_EQ_INT(bad, 0);
    }
    l.kernel_free(l.kernel_data);
    free(w);
    free(y);
    qn_kernel_scratch_destroy(&s);
}

/* ---------------------------------------------------------------- CSR */

typedef struct {
    qn_layer l;
    int32_t *indptr, *indices;
    float *vf, *scale, *bias;
    int8_t *vi;
} csr_layer;

/* Random CSR with the given density; a few rows empty, one row full. */
static void csr_make(csr_layer *t, int64_t in, int64_t out, double density, int i8, qn_act act, int with_bias)
{
    memset(t, 0, sizeof *t);
    t->indptr = malloc((size_t)(out + 1) * sizeof(int32_t));
    t->indices = malloc((size_t)(in * out + 1) * sizeof(int32_t));
    t->vf = malloc((size_t)(in * out + 1) * sizeof(float));
    t->vi = malloc((size_t)(in * out + 1));
    t->scale = malloc((size_t)out * sizeof(float));
    int64_t nnz = 0;
    t->indptr[0] = 0;
    for (int64_t o = 0; o < out; o++) {
        for (int64_t k = 0; k < in; k++) {
            int keep = o % 7 == 3 ? 0 : o % 11 == 5 ? 1 : (double)(rnd() & 0xffff) / 65536.0 < density;
            if (!keep) continue;
            t->indices[nnz] = (int32_t)k;
            t->vf[nnz] = rndf(-0.5f, 0.5f);
            t->vi[nnz] = (int8_t)((int)(rnd() % 255) - 127);
            nnz++;
        }
        t->indptr[o + 1] = (int32_t)nnz;
        t->scale[o] = rndf(0.001f, 0.01f);
    }
    t->bias = with_bias ? rand_bias(out) : NULL;
    t->l = (qn_layer){.rep = i8 ? QN_REP_CSR_I8 : QN_REP_CSR_F32, .in = in, .out = out, .act = act, .bias = t->bias,
                      .csr_indptr = t->indptr, .csr_indices = t->indices, .csr_f32 = i8 ? NULL : t->vf,
                      .csr_i8 = i8 ? t->vi : NULL, .w_scale = i8 ? t->scale : NULL, .nnz = nnz};
}

static void csr_free(csr_layer *t)
{
    if (t->l.kernel_free) t->l.kernel_free(t->l.kernel_data);
    free(t->indptr); free(t->indices); free(t->vf); free(t->vi); free(t->scale); free(t->bias);
}

static void csr_case(const shape sh, double density, int i8, qn_act act, const qn_kpath *paths, int np, qn_kernel_scratch *s)
{
    csr_layer t;
    csr_make(&t, sh.in, sh.out, density, i8, act, act != QN_ACT_NONE);
    const int64_t rows = sh.rows, in = sh.in, out = sh.out;
    float *x = rand_x(rows, in);
    double *z = malloc((size_t)(rows * out) * sizeof(double)), *tol = malloc((size_t)(rows * out) * sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < out; o++) {
            double acc = 0.0, mag = 0.0;
            int64_t n = t.indptr[o + 1] - t.indptr[o];
            for (int32_t p = t.indptr[o]; p < t.indptr[o + 1]; p++) {
                double v = i8 ? (double)t.vi[p] * t.scale[o] : t.vf[p];
                acc += v * x[r * in + t.indices[p]];
                mag += fabs(v * x[r * in + t.indices[p]]);
            }
            double b = t.bias ? t.bias[o] : 0.0;
            z[r * out + o] = acc + b;
            /* n-term sum (either kernel) + one scale + bias; the densified
             * sgemm sums in terms of the full row, zeros included */
            tol[r * out + o] = ((double)(in + n + 3) * 6e-8) * (mag + fabs(b)) * act_lip(act) + act_slack(act) + 1e-30;
        }
    double *tmax = calloc((size_t)rows + 1, sizeof(double));
    for (int64_t i = 0; i < rows * out; i++) tmax[i / out] = tol[i] > tmax[i / out] ? tol[i] : tmax[i / out];
    ref_act(z, rows, out, act);
    float *y = malloc((size_t)(rows * out) * sizeof(float));
    const char *modes[2] = {"sparse", "dense"};
    for (int pi = 0; pi < np; pi++)
        for (int mi = 0; mi < 2; mi++) {
            setenv("QN_CSR", modes[mi], 1);
            CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
            CHECK_EQ_INT(qn_kernel_layer_prepare(&t.l), 0);
            for (int64_t i = 0; i < rows * out; i++) y[i] = NAN;
            CHECK_EQ_INT(qn_kernel_layer_forward(&t.l, x, rows, y, s), 0);
            int bad = 0;
            for (int64_t i = 0; i < rows * out; i++) {
                double tl = act == QN_ACT_SOFTMAX ? tmax[i / out] + 1e-6 : tol[i];
                if (!(fabs(y[i] - z[i]) <= tl)) {
                    if (bad < 5)
                        fprintf(stderr, "  csr%s %s/%s %lldx%lld->%lld d=%.2f at %lld: %.9g vs %.9g tol %.3g\n", i8 ? "_i8" : "_f32",
                                qn_kpath_name(paths[pi]), modes[mi], (long long)rows, (long long)in, (long long)out,
                                density, (long long)i, y[i], z[i], tl);
                    bad++;
                }
            }
            CHECK_EQ_INT(bad, 0);
        }
    unsetenv("QN_CSR");
    free(x); free(z); free(tol); free(tmax); free(y);
    csr_free(&t);
}

TEST(csr_all_paths)
{
    qn_kpath paths[QN_KPATH_COUNT];
    const int np = supported_paths(paths);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    for (int si = 0; si < NSHAPES; si++) {
        csr_case(g_shapes[si], si % 2 ? 0.1 : 0.5, 0, g_acts[(si + 2) % 6], paths, np, s);
        csr_case(g_shapes[si], si % 2 ? 0.5 : 0.1, 1, g_acts[(si + 3) % 6], paths, np, s);
    }
    /* batch sizes around the row-wise / blocked switch and block edges */
    const int64_t rws[] = {2, 4, 5, 15, 16, 31, 33, 64, 65, 80, 129};
    for (int i = 0; i < 11; i++) csr_case((shape){rws[i], 100, 33}, 0.2, i % 2, QN_ACT_RELU, paths, np, s);
    qn_kernel_scratch_destroy(&s);
}

/* The packed small-batch kernels (and the blocked one just past them): one
 * layer per (in, out, density), every SIMD path, rows 1 .. QN_CSR_PACKED_BELOW
 * through the same prepared layer, against the double reference with the
 * summation bound of csr_case. Widths straddle the window (8 / 32 columns)
 * and lane-block (8 / 16 rows) sizes; `shuffle` permutes each row's columns
 * (the format leaves their order free) so that the sorted-copy packing runs. */
static void csr_rows_case(int64_t in, int64_t out, double density, int i8, int shuffle, const qn_kpath *paths, int np,
                          qn_kernel_scratch *s)
{
    csr_layer t;
    csr_make(&t, in, out, density, i8, QN_ACT_NONE, 1);
    if (shuffle)
        for (int64_t o = 0; o < out; o++) {
            const int32_t p0 = t.indptr[o], n = t.indptr[o + 1] - p0;
            for (int32_t q = n - 1; q > 0; q--) {
                const int32_t j = (int32_t)(rnd() % (uint32_t)(q + 1));
                int32_t ti = t.indices[p0 + q]; t.indices[p0 + q] = t.indices[p0 + j]; t.indices[p0 + j] = ti;
                float tf = t.vf[p0 + q]; t.vf[p0 + q] = t.vf[p0 + j]; t.vf[p0 + j] = tf;
                int8_t tv = t.vi[p0 + q]; t.vi[p0 + q] = t.vi[p0 + j]; t.vi[p0 + j] = tv;
            }
        }
    const int64_t maxr = QN_CSR_PACKED_BELOW;
    float *x = rand_x(maxr, in), *y = malloc((size_t)(maxr * out + 1) * sizeof(float));
    double *z = malloc((size_t)(maxr * out) * sizeof(double)), *tol = malloc((size_t)(maxr * out) * sizeof(double));
    for (int64_t r = 0; r < maxr; r++)
        for (int64_t o = 0; o < out; o++) {
            double acc = t.bias[o], mag = fabs(t.bias[o]);
            const int64_t n = t.indptr[o + 1] - t.indptr[o];
            for (int32_t p = t.indptr[o]; p < t.indptr[o + 1]; p++) {
                const double v = i8 ? (double)t.vi[p] * t.scale[o] : t.vf[p];
                acc += v * x[r * in + t.indices[p]];
                mag += fabs(v * x[r * in + t.indices[p]]);
            }
            z[r * out + o] = acc;
            tol[r * out + o] = (double)(n + 3) * 6e-8 * mag + 1e-30;
        }
    setenv("QN_CSR", "sparse", 1);
    for (int pi = 0; pi < np; pi++) {
        CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
        CHECK_EQ_INT(qn_kernel_layer_prepare(&t.l), 0);
        /* the SIMD paths must have built the packed form */
        CHECK(paths[pi] == QN_KPATH_PORTABLE || ((const qn_kpack *)t.l.kernel_data)->csrp != NULL);
        for (int64_t rows = 1; rows <= maxr; rows++) {
            for (int64_t i = 0; i <= rows * out; i++) y[i] = NAN;
            CHECK_EQ_INT(qn_kernel_layer_forward(&t.l, x, rows, y, s), 0);
            int bad = 0;
            for (int64_t i = 0; i < rows * out; i++)
                if (!(fabs(y[i] - z[i]) <= tol[i])) {
                    if (bad < 5)
                        fprintf(stderr, "  csr%s %s rows %lld %lldx%lld d=%.2f%s at %lld: %.9g vs %.9g tol %.3g\n",
                                i8 ? "_i8" : "_f32", qn_kpath_name(paths[pi]), (long long)rows, (long long)out,
                                (long long)in, density, shuffle ? " shuffled" : "", (long long)i, y[i], z[i], tol[i]);
                    bad++;
                }
            CHECK_EQ_INT(bad, 0);
            CHECK(isnan(y[rows * out])); /* nothing written past the output */
        }
    }
    unsetenv("QN_CSR");
    free(x); free(y); free(z); free(tol);
    csr_free(&t);
}

TEST(csr_packed_small_batches)
{
    qn_kpath paths[QN_KPATH_COUNT];
    const int np = supported_paths(paths);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    const int64_t w[] = {1, 7, 33, 100, 1000, 1024};
    const double dens[] = {0.01, 0.05, 0.1, 0.3, 0.5};
    int n = 0;
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++, n++)
            csr_rows_case(w[i], w[j], dens[n % 5], n % 2, n % 7 == 3, paths, np, s);
    qn_kernel_scratch_destroy(&s);
}

/* A CSR layer with no nonzeros (and so no value or index arrays) is valid:
 * y = act(bias) on every path and batch size. */
TEST(csr_empty_layer)
{
    qn_kpath paths[QN_KPATH_COUNT];
    const int np = supported_paths(paths);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    int32_t indptr[4] = {0, 0, 0, 0};
    float bias[3] = {0.5f, -1.0f, 2.0f}, sc[3] = {1, 1, 1}, x[9 * 5], y[9 * 3];
    for (int i = 0; i < 45; i++) x[i] = (float)i;
    setenv("QN_CSR", "sparse", 1);
    for (int i8 = 0; i8 < 2; i8++)
        for (int pi = 0; pi < np; pi++) {
            qn_layer l = {.rep = i8 ? QN_REP_CSR_I8 : QN_REP_CSR_F32, .in = 5, .out = 3, .act = QN_ACT_RELU, .bias = bias,
                          .csr_indptr = indptr, .w_scale = i8 ? sc : NULL, .nnz = 0};
            CHECK_EQ_INT(qn_kernel_set_path(paths[pi]), 0);
            CHECK_EQ_INT(qn_kernel_layer_prepare(&l), 0);
            for (int64_t rows = 1; rows <= 9; rows++) {
                CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, rows, y, s), 0);
                for (int64_t r = 0; r < rows; r++) {
                    CHECK(y[r * 3] == 0.5f);
                    CHECK(y[r * 3 + 1] == 0.0f);
                    CHECK(y[r * 3 + 2] == 2.0f);
                }
            }
            l.kernel_free(l.kernel_data);
        }
    unsetenv("QN_CSR");
    qn_kernel_scratch_destroy(&s);
}

TEST(csr_decision)
{
    unsetenv("QN_CSR");
    CHECK(qn_kernel_csr_use_sparse(0.01, 1));
    CHECK(qn_kernel_csr_use_sparse(0.01, 64));
    CHECK(!qn_kernel_csr_use_sparse(0.9, 1));
    CHECK(!qn_kernel_csr_use_sparse(0.9, 256));
    /* the measured table: the packed kernel pays at batch 1 up to ~60%
     * density, and to ~90% once 2-8 rows share each packed step */
    CHECK(qn_kernel_csr_use_sparse(0.3, 1));
    CHECK(!qn_kernel_csr_use_sparse(0.8, 1));
    CHECK(qn_kernel_csr_use_sparse(0.85, 2));
    CHECK(qn_kernel_csr_use_sparse(0.3, 8));
    CHECK(qn_kernel_csr_use_sparse(0.45, 64));
    CHECK(!qn_kernel_csr_use_sparse(0.45, 256));
    /* each batch size is decided by exactly one range, and rows past the last
     * range still get a decision */
    for (int64_t b = 1; b <= 100000; b = b * 3 + 1) {
        int s1 = qn_kernel_csr_use_sparse(0.001, b), s2 = qn_kernel_csr_use_sparse(0.999, b);
        CHECK(s1 == 1 && s2 == 0);
    }
    setenv("QN_CSR", "dense", 1);
    CHECK(!qn_kernel_csr_use_sparse(0.01, 1));
    setenv("QN_CSR", "sparse", 1);
    CHECK(qn_kernel_csr_use_sparse(0.99, 256));
    unsetenv("QN_CSR");
}

/* ---------------------------------------------------------------- errors */

TEST(prepare_errors)
{
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    float x[4] = {1, 2, 3, 4}, y[4];

    qn_layer l = {.rep = QN_REP_I8, .in = 4, .out = 1};
    CHECK_EQ_INT(qn_kernel_layer_prepare(&l), QN_EINVAL); /* no weights */
    CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, 1, y, s), QN_EINVAL); /* not prepared */
    int8_t w8[4] = {1, 2, 3, 4};
    float sc[1] = {0.5f};
    l.w_i8 = w8;
    l.w_scale = sc;
    l.in = 70000;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&l), QN_ESHAPE); /* int32 sums could overflow */
    l.in = 0;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&l), QN_ESHAPE);
    l.in = 4;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&l), 0);
    CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, 0, y, s), 0);
    CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, -1, y, s), QN_EINVAL);
    CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, 1, y, NULL), QN_EINVAL);
    CHECK_EQ_INT(qn_kernel_layer_forward(&l, x, 1, y, s), 0);
    CHECK_NEAR(y[0], 0.5 * (1 + 4 + 9 + 16), 30 * 0.5 * 4 / 255.0);
    l.kernel_free(l.kernel_data);

    int32_t indptr[3] = {0, 2, 3}, idx[3] = {0, 3, 1};
    float v[3] = {1, 2, 3};
    qn_layer c = {.rep = QN_REP_CSR_F32, .in = 4, .out = 2, .csr_indptr = indptr, .csr_indices = idx, .csr_f32 = v, .nnz = 3};
    CHECK_EQ_INT(qn_kernel_layer_prepare(&c), 0);
    CHECK_EQ_INT(qn_kernel_layer_forward(&c, x, 1, y, s), 0);
    CHECK_NEAR(y[0], 1 * 1 + 2 * 4, 1e-6);
    CHECK_NEAR(y[1], 3 * 2, 1e-6);
    idx[1] = 4;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&c), QN_ESHAPE); /* index past in */
    CHECK(c.kernel_data == NULL);
    idx[1] = 3;
    indptr[1] = 4;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&c), QN_ESHAPE); /* not monotone */
    indptr[1] = 2;
    c.nnz = 2;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&c), QN_ESHAPE); /* indptr[out] != nnz */
    c.nnz = 3;
    c.rep = QN_REP_CSR_I8;
    CHECK_EQ_INT(qn_kernel_layer_prepare(&c), QN_EINVAL); /* no int8 values / scales */

    qn_layer h = {.rep = QN_REP_F16, .in = 4, .out = 1};
    CHECK_EQ_INT(qn_kernel_layer_prepare(&h), QN_EINVAL);
    qn_layer bad = {.rep = QN_REP_COUNT, .in = 4, .out = 1};
    CHECK_EQ_INT(qn_kernel_layer_prepare(&bad), QN_EINVAL);
    qn_kernel_scratch_destroy(&s);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--print-path") == 0) {
        qn_log_init_from_env();
        printf("%s\n", qn_kernel_path_name());
        return 0;
    }
    g_self = argv[0];
    qn_log_set_level(QN_LOG_WARN); /* the sparse/dense choice is logged per prepare */
    RUN(dispatch);
    RUN(env_forcing);
    RUN(quantize_row);
    RUN(int8_all_paths);
    RUN(int8_paths_bit_identical);
    RUN(f16_all_paths);
    RUN(f16_every_value);
    RUN(csr_all_paths);
    RUN(csr_packed_small_batches);
    RUN(csr_empty_layer);
    RUN(csr_decision);
    RUN(prepare_errors);
    return qn_test_done();
}
