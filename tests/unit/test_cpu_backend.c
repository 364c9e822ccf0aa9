/* test_cpu_backend.c: the CPU backend against a naive double-precision
 * reference. Models are built by hand in memory (qn_alloc_aligned buffers,
 * struct filled here) so that this test needs neither the loader nor a file.
 *
 * Tolerance. Weights are drawn as PyTorch initialises nn.Linear, U(-1,1)/sqrt(in),
 * so activations stay O(1) through a chain. A float dot product of length K
 * then carries a rounding error around sqrt(K)·2⁻²⁴·O(1), i.e. ~2e-6 for the
 * widest layer here (K = 1024); the bounded activations (sigmoid, tanh, gelu,
 * softmax) do not amplify it. We accept |got - ref| <= 1e-4 · (1 + |ref|):
 * relative for large outputs, absolute near zero (where a relative test is
 * meaningless), ~50x the expected error so it never flakes, and still orders
 * of magnitude below what a real bug does (a dropped bias, a transposed W, a
 * wrong activation or a buffer mix-up all give errors of O(0.1..1)). Tests
 * that push logits to 1e4 use a looser bound, justified there. */
#include "qn_test.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "backend.h"
#include "cpu/dense.h"
#include "cpu/epilogue.h"
#include "error.h"
#include "log.h"
#include "model.h"
#include "tensor.h"

#define TOL 1e-4

/* ---- deterministic random numbers (splitmix64) */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand(void) /* U[-1, 1) */
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / (double)(1ull << 52) - 1.0;
}

static float *falloc(int64_t n)
{
    float *p = qn_alloc_aligned((size_t)n * sizeof(float), 0);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static float *frand(int64_t n, double scale)
{
    float *p = falloc(n);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(scale * urand());
    return p;
}

static const char *act_str(qn_act a) /* not qn_act_name: that lives in model.c */
{
    static const char *const n[] = {"none", "relu", "gelu", "sigmoid", "tanh", "softmax"};
    return (unsigned)a < QN_ACT_COUNT ? n[a] : "?";
}

/* ---- models by hand */

/* A chain in_dim → outs[0] → ... → outs[n-1]; acts[i] after layer i; bias
 * present where has_bias[i] (NULL array: all present). */
static qn_model *model_new(int64_t in_dim, int n, const int64_t *outs, const qn_act *acts,
                           const int *has_bias)
{
    qn_model *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)n, sizeof *m->layers))) exit(2);
    snprintf(m->name, sizeof m->name, "test");
    m->version = 1;
    m->nlayers = n;
    m->in_dim = m->max_width = in_dim;
    int64_t in = in_dim;
    for (int i = 0; i < n; i++) {
        qn_layer *l = &m->layers[i];
        l->rep = QN_REP_F32;
        l->in = in;
        l->out = outs[i];
        l->act = acts[i];
        l->w = frand(l->in * l->out, 1.0 / sqrt((double)in));
        if (!has_bias || has_bias[i]) l->bias = frand(l->out, 0.5);
        m->param_count += (size_t)(l->in * l->out + (l->bias ? l->out : 0));
        if (l->out > m->max_width) m->max_width = l->out;
        in = l->out;
    }
    m->out_dim = in;
    atomic_init(&m->refs, 1);
    return m;
}

static void model_free(qn_model **pm)
{
    qn_model *m = *pm;
    if (!m) return;
    for (int i = 0; i < m->nlayers; i++) {
        free(m->layers[i].w);
        free(m->layers[i].bias);
    }
    free(m->layers);
    free(m);
    *pm = NULL;
}

/* ---- the reference: plain loops in double */
static double ref_act(qn_act a, double v)
{
    switch (a) {
    case QN_ACT_RELU: return v > 0 ? v : 0;
    case QN_ACT_GELU: return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    case QN_ACT_SIGMOID: return 1.0 / (1.0 + exp(-v)); /* exp(+huge) = inf → 0: fine in double */
    case QN_ACT_TANH: return tanh(v);
    default: return v;
    }
}

static double *ref_forward(const qn_model *m, const float *x, int64_t rows)
{
    double *cur = malloc(sizeof(double) * (size_t)(rows * m->in_dim));
    for (int64_t i = 0; i < rows * m->in_dim; i++) cur[i] = x[i];
    for (int li = 0; li < m->nlayers; li++) {
        const qn_layer *l = &m->layers[li];
        double *nxt = malloc(sizeof(double) * (size_t)(rows * l->out));
        for (int64_t r = 0; r < rows; r++) {
            double *o = nxt + r * l->out;
            for (int64_t j = 0; j < l->out; j++) {
                double s = l->bias ? l->bias[j] : 0.0;
                for (int64_t k = 0; k < l->in; k++) s += cur[r * l->in + k] * (double)l->w[j * l->in + k];
                o[j] = s;
            }
            if (l->act == QN_ACT_SOFTMAX) {
                double mx = o[0], sum = 0;
                for (int64_t j = 1; j < l->out; j++) mx = o[j] > mx ? o[j] : mx;
                for (int64_t j = 0; j < l->out; j++) sum += (o[j] = exp(o[j] - mx));
                for (int64_t j = 0; j < l->out; j++) o[j] /= sum;
            } else {
                for (int64_t j = 0; j < l->out; j++) o[j] = ref_act(l->act, o[j]);
            }
        }
        free(cur);
        cur = nxt;
    }
    return cur;
}

/* Worst |got - ref| / (1 + |ref|); a non-finite output counts as infinitely wrong. */
static double worst_err(const float *got, const double *ref, int64_t n)
{
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double e = fabs(got[i] - ref[i]) / (1.0 + fabs(ref[i]));
        if (e > w) w = e;
    }
    return w;
}

static void fill_nan(float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = NAN;
}

/* Prepares m on be the way the registry will. */
static int prepare(qn_backend *be, qn_model *m)
{
    void *st = (void *)1;
    int rc = be->iface->model_prepare(be, m, &st);
    if (rc == 0) { m->backend = be; m->backend_state = st; }
    return rc;
}

/* Runs m on rows random rows through ctx and checks against the reference.
 * y is prefilled with NaN so a kernel that reads or skips its output shows. */
static double run_and_compare(qn_backend *be, void *ctx, const qn_model *m, int64_t rows, double xscale)
{
    float *x = frand(rows * m->in_dim, xscale), *y = falloc(rows * m->out_dim);
    fill_nan(y, rows * m->out_dim);
    int rc = qn_backend_forward(be, ctx, m, x, rows, y);
    CHECK_EQ_INT(rc, 0);
    double *ref = ref_forward(m, x, rows);
    double e = rc ? INFINITY : worst_err(y, ref, rows * m->out_dim);
    free(x), free(y), free(ref);
    return e;
}

/* ---- tests */

TEST(create_destroy)
{
    qn_backend *be = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(0, &be), QN_EINVAL);
    CHECK(be == NULL);
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK(be && be->iface && be->iface->forward && be->iface->destroy);
    if (be) CHECK_STR(be->iface->name, "cpu");
    qn_backend_destroy(&be);
    CHECK(be == NULL);
    qn_backend_destroy(&be); /* NULL-safe */
    qn_backend_destroy(NULL);
}

TEST(prepare_validates)
{
    qn_backend *be = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    int64_t outs[] = {9, 4};
    qn_act acts[] = {QN_ACT_RELU, QN_ACT_NONE};
    qn_model *m = model_new(5, 2, outs, acts, NULL);
    void *st = (void *)1;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), 0);
    CHECK(st == NULL); /* f32 keeps no state */
    be->iface->model_release(be, m, st);

    /* a compressed rep without its arrays: refused by its kernel's prepare,
     * never silently run as f32 (tests/unit/test_kernels.c runs them) */
    for (int r = QN_REP_F16; r < QN_REP_COUNT; r++) {
        m->layers[1].rep = (qn_rep)r;
        CHECK(be->iface->model_prepare(be, m, &st) != 0);
    }
    m->layers[1].rep = (qn_rep)77;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_EFORMAT);
    m->layers[1].rep = QN_REP_F32;

    m->layers[1].act = QN_ACT_COUNT;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_EFORMAT);
    m->layers[1].act = QN_ACT_NONE;

    m->layers[1].in = 8; /* chain broken */
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_ESHAPE);
    m->layers[1].in = 9;
    m->in_dim = 6;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_ESHAPE);
    m->in_dim = 5;
    m->out_dim = 3;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_ESHAPE);
    m->out_dim = 4;
    m->layers[0].out = 0, m->layers[1].in = 0;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_ESHAPE);
    m->layers[0].out = 9, m->layers[1].in = 9;

    float *w = m->layers[0].w;
    m->layers[0].w = NULL;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_EINVAL);
    m->layers[0].w = w;

    int n = m->nlayers;
    m->nlayers = 0;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), QN_EINVAL);
    m->nlayers = n;
    CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), 0); /* all restored */
    model_free(&m);
    qn_backend_destroy(&be);
}

/* Every activation on every odd shape, with and without bias, one layer. */
TEST(activations_and_shapes)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    const int64_t rows_set[] = {1, 3, 17, 1000}, widths[] = {1, 7, 33, 100};
    for (int a = 0; a < QN_ACT_COUNT; a++) {
        double worst = 0;
        for (int bias = 0; bias < 2; bias++)
            for (int i = 0; i < 4; i++)
                for (int o = 0; o < 4; o++) {
                    qn_act act = (qn_act)a;
                    qn_model *m = model_new(widths[i], 1, &widths[o], &act, &bias);
                    CHECK_EQ_INT(prepare(be, m), 0);
                    for (int r = 0; r < 4; r++) {
                        /* inputs in [-3, 3) so gelu/sigmoid/tanh see their curved parts */
                        double e = run_and_compare(be, ctx, m, rows_set[r], 3.0);
                        if (e > worst) worst = e;
                        if (!(e <= TOL))
                            fprintf(stderr, "  %s bias=%d rows=%lld %lld->%lld: err %g\n",
                                    act_str(act), bias, (long long)rows_set[r], (long long)widths[i],
                                    (long long)widths[o], e);
                        CHECK(e <= TOL);
                    }
                    model_free(&m);
                }
        printf("     %-8s worst rel err %.2e\n", act_str((qn_act)a), worst);
    }
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be);
}

/* A batch goes through per-row sgemv or one sgemm (dense.h); both must be
 * right at any row count, and both must overwrite a NaN-filled y (beta = 0
 * stores, never scales). */
TEST(gemv_and_gemm_paths)
{
    qn_backend *be = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    int64_t out = 100;
    qn_act act = QN_ACT_TANH;
    qn_model *m = model_new(33, 1, &out, &act, NULL);
    const qn_layer *l = &m->layers[0];
    const int64_t rows_set[] = {1, 2, 3, QN_DENSE_GEMV_MAX_ROWS, QN_DENSE_GEMV_MAX_ROWS + 1, 17};
    for (int i = 0; i < 6; i++) {
        int64_t rows = rows_set[i];
        float *xr = frand(rows * 33, 2.0), *y1 = falloc(rows * out), *y2 = falloc(rows * out);
        double *ref = ref_forward(m, xr, rows);
        fill_nan(y1, rows * out), fill_nan(y2, rows * out);
        CHECK_EQ_INT(qn_cpu_dense_f32_path(xr, rows, l->in, l->w, l->out, l->bias, l->act, y1, QN_DENSE_GEMV), 0);
        CHECK_EQ_INT(qn_cpu_dense_f32_path(xr, rows, l->in, l->w, l->out, l->bias, l->act, y2, QN_DENSE_GEMM), 0);
        CHECK(worst_err(y1, ref, rows * out) <= TOL);
        CHECK(worst_err(y2, ref, rows * out) <= TOL);
        free(xr), free(y1), free(y2), free(ref);
    }
    float *x = frand(33, 1.0), *y1 = falloc(out);
    CHECK_EQ_INT(qn_cpu_dense_f32_path(x, 1, l->in, l->w, l->out, l->bias, l->act, y1, (qn_dense_path)9),
                 QN_EINVAL);
    CHECK_EQ_INT(qn_cpu_dense_f32(x, 1, 0, l->w, l->out, NULL, QN_ACT_NONE, y1), QN_EINVAL);
    CHECK_EQ_INT(qn_cpu_dense_f32(x, -1, l->in, l->w, l->out, NULL, QN_ACT_NONE, y1), QN_EINVAL);
    CHECK_EQ_INT(qn_cpu_dense_f32(x, 1, l->in, l->w, l->out, NULL, QN_ACT_COUNT, y1), QN_EINVAL);
    free(x), free(y1);
    model_free(&m);
    qn_backend_destroy(&be);
}

/* Logits given exactly by the bias (W = 0): softmax must survive ±1e30 and
 * values near FLT_MAX without inf or NaN, and give the exact split. */
TEST(softmax_extreme_bias)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    int64_t out = 6, rows = 3;
    qn_act act = QN_ACT_SOFTMAX;
    const float b1[6] = {1e30f, 1e30f, -1e30f, 0.0f, 5.0f, 88.0f};
    const double want1[6] = {0.5, 0.5, 0, 0, 0, 0};
    const float b2[6] = {1e30f, -3e38f, 3e38f, -1e30f, 0.0f, 3e38f};
    const double want2[6] = {0, 0, 0.5, 0, 0, 0.5};
    const float *bs[2] = {b1, b2};
    const double *wants[2] = {want1, want2};
    for (int c = 0; c < 2; c++) {
        qn_model *m = model_new(4, 1, &out, &act, NULL);
        memset(m->layers[0].w, 0, sizeof(float) * 4 * 6);
        memcpy(m->layers[0].bias, bs[c], sizeof b1);
        CHECK_EQ_INT(prepare(be, m), 0);
        float *x = frand(rows * 4, 1.0), y[18];
        fill_nan(y, 18);
        CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, rows, y), 0);
        for (int64_t r = 0; r < rows; r++) {
            double sum = 0;
            for (int j = 0; j < 6; j++) {
                CHECK(isfinite(y[r * 6 + j]));
                CHECK_NEAR(y[r * 6 + j], wants[c][j], 1e-7);
                sum += y[r * 6 + j];
            }
            CHECK_NEAR(sum, 1.0, 1e-6);
        }
        free(x);
        model_free(&m);
    }
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be);
}

/* Logits of order 1e4 from the weights themselves. A float logit that large
 * carries an absolute error of a few ulp(3e4) ≈ 1e-2 at worst, which moves a
 * probability by at most a quarter of that, so the comparison with the
 * reference is at 1e-2 here; sums and finiteness stay strict. */
TEST(softmax_huge_logits)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    int64_t outs[] = {10}, rows = 17;
    qn_act act = QN_ACT_SOFTMAX;
    qn_model *m = model_new(33, 1, outs, &act, NULL);
    for (int64_t i = 0; i < 330; i++) m->layers[0].w[i] *= 1e4f;
    CHECK_EQ_INT(prepare(be, m), 0);
    float *x = frand(rows * 33, 1.0), *y = falloc(rows * 10);
    fill_nan(y, rows * 10);
    CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, rows, y), 0);
    double *ref = ref_forward(m, x, rows);
    for (int64_t r = 0; r < rows; r++) {
        double sum = 0;
        for (int j = 0; j < 10; j++) {
            float v = y[r * 10 + j];
            CHECK(isfinite(v) && v >= 0.0f && v <= 1.0f);
            CHECK_NEAR(v, ref[r * 10 + j], 1e-2);
            sum += v;
        }
        CHECK_NEAR(sum, 1.0, 1e-5);
    }
    free(x), free(y), free(ref);
    model_free(&m);
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be);
}

/* Saturating inputs for the other activations, again given exactly by the
 * bias: sigmoid must not overflow expf, tanh and gelu must saturate cleanly. */
TEST(activations_large_inputs)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    const float b[] = {1e30f, -1e30f, 100.0f, -100.0f, 1e4f, -1e4f, 88.7f, -88.7f, -104.0f, 0.0f, 3e38f, -3e38f};
    int64_t out = (int64_t)(sizeof b / sizeof b[0]);
    for (int a = 0; a < QN_ACT_COUNT; a++) {
        qn_act act = (qn_act)a;
        if (act == QN_ACT_SOFTMAX) continue; /* above */
        qn_model *m = model_new(3, 1, &out, &act, NULL);
        memset(m->layers[0].w, 0, sizeof(float) * 3 * (size_t)out);
        memcpy(m->layers[0].bias, b, sizeof b);
        CHECK_EQ_INT(prepare(be, m), 0);
        float x[6] = {1, 2, 3, -1, -2, -3}, y[2 * 12];
        fill_nan(y, 2 * out);
        CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, 2, y), 0);
        double *ref = ref_forward(m, x, 2);
        for (int64_t i = 0; i < 2 * out; i++) {
            CHECK(isfinite(y[i]));
            if (!(fabs(y[i] - ref[i]) <= TOL * (1 + fabs(ref[i]))))
                fprintf(stderr, "  %s(%g) = %g, want %g\n", act_str(act), (double)b[i % out], (double)y[i], ref[i]);
            CHECK(fabs(y[i] - ref[i]) <= TOL * (1 + fabs(ref[i])));
        }
        free(ref);
        model_free(&m);
    }
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be);
}

/* Multi-layer chains: ping-pong parity over odd and even depths, width-1
 * bottlenecks, no-bias layers in the middle, the benchmark's model. */
TEST(chains)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    struct {
        int64_t in;
        int n;
        int64_t outs[6];
        qn_act acts[6];
        int bias[6];
        int64_t max_rows;
    } cases[] = {
        {7, 4, {33, 100, 1, 17}, {QN_ACT_RELU, QN_ACT_GELU, QN_ACT_TANH, QN_ACT_SOFTMAX}, {1, 0, 1, 1}, 1000},
        {100, 6, {7, 33, 1, 100, 7, 33},
         {QN_ACT_SIGMOID, QN_ACT_NONE, QN_ACT_NONE, QN_ACT_TANH, QN_ACT_GELU, QN_ACT_SOFTMAX},
         {1, 1, 0, 1, 0, 1}, 1000},
        {64, 2, {128, 10}, {QN_ACT_RELU, QN_ACT_SOFTMAX}, {1, 1}, 1000},
        {256, 3, {1024, 1024, 16}, {QN_ACT_RELU, QN_ACT_RELU, QN_ACT_NONE}, {1, 1, 1}, 17},
    };
    const int64_t rows_set[] = {1, 3, 17, 1000};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        qn_model *m = model_new(cases[c].in, cases[c].n, cases[c].outs, cases[c].acts, cases[c].bias);
        CHECK_EQ_INT(prepare(be, m), 0);
        for (int r = 0; r < 4 && rows_set[r] <= cases[c].max_rows; r++) {
            double e = run_and_compare(be, ctx, m, rows_set[r], 1.0);
            if (!(e <= TOL)) fprintf(stderr, "  chain %zu rows %lld: err %g\n", c, (long long)rows_set[r], e);
            CHECK(e <= TOL);
        }
        model_free(&m);
    }
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be);
}

/* One context serving growing, shrinking and growing-again batches, across
 * two models of different widths (ASan sees any stale-capacity overrun). */
TEST(ctx_reuse)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    int64_t o1[] = {33, 7, 5}, o2[] = {100, 100, 3};
    qn_act a1[] = {QN_ACT_RELU, QN_ACT_TANH, QN_ACT_NONE}, a2[] = {QN_ACT_GELU, QN_ACT_SIGMOID, QN_ACT_SOFTMAX};
    qn_model *m1 = model_new(7, 3, o1, a1, NULL), *m2 = model_new(20, 3, o2, a2, NULL);
    CHECK_EQ_INT(prepare(be, m1), 0);
    CHECK_EQ_INT(prepare(be, m2), 0);
    const int64_t seq[] = {1, 3, 2, 17, 5, 1000, 64, 1001, 1, 256};
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        CHECK(run_and_compare(be, ctx, m1, seq[i], 1.0) <= TOL);
        CHECK(run_and_compare(be, ctx, m2, seq[i] + 1, 1.0) <= TOL);
    }
    /* rows 0 is a no-op that leaves y alone; negative rows are refused */
    float x[7] = {0}, y[5] = {42, 42, 42, 42, 42};
    CHECK_EQ_INT(qn_backend_forward(be, ctx, m1, x, 0, y), 0);
    CHECK(y[0] == 42 && y[4] == 42);
    CHECK_EQ_INT(qn_backend_forward(be, ctx, m1, x, -1, y), QN_EINVAL);
    CHECK_EQ_INT(be->iface->forward(be, NULL, m1, NULL, x, 1, y), QN_EINVAL);
    /* a compressed layer that was never prepared fails the forward */
    m1->layers[1].rep = QN_REP_I8;
    CHECK(qn_backend_forward(be, ctx, m1, x, 1, y) != 0);
    m1->layers[1].rep = QN_REP_F32;
    model_free(&m1);
    model_free(&m2);
    be->iface->ctx_destroy(be, ctx);
    be->iface->ctx_destroy(be, NULL); /* NULL-safe */
    qn_backend_destroy(&be);
}

/* Two executor-like threads, each with its own context, run the same model
 * on the same inputs at the same time, cycling through batch sizes that take
 * both the sgemv and the sgemm path: results must be bit-identical to each
 * other and to a single-threaded run, and right. */
#define TH_ITERS 40
static const int64_t th_rows[3] = {1, 3, 257};
typedef struct {
    qn_backend *be;
    const qn_model *m;
    const float *x;
    float *y[3]; /* last result per batch size */
    int mismatches, rc;
} th_arg;

static void *th_main(void *p)
{
    th_arg *a = p;
    void *ctx = NULL;
    if ((a->rc = a->be->iface->ctx_create(a->be, &ctx))) return NULL;
    float *tmp = falloc(257 * a->m->out_dim);
    for (int it = 0; it < TH_ITERS; it++) {
        int k = it % 3;
        int64_t n = th_rows[k] * a->m->out_dim;
        float *dst = it < 3 ? a->y[k] : tmp;
        int rc = qn_backend_forward(a->be, ctx, a->m, a->x, th_rows[k], dst);
        if (rc) { a->rc = rc; break; }
        if (it >= 3 && memcmp(tmp, a->y[k], sizeof(float) * (size_t)n)) a->mismatches++;
    }
    free(tmp);
    a->be->iface->ctx_destroy(a->be, ctx);
    return NULL;
}

TEST(two_threads)
{
    qn_backend *be = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    /* widths chosen so that AUTO mixes paths: 1024→512 (2 MiB) takes sgemv
     * up to 8 rows, 64→1024 (256 KiB) at one row, 512→10 never */
    int64_t outs[] = {1024, 512, 10};
    qn_act acts[] = {QN_ACT_RELU, QN_ACT_GELU, QN_ACT_SOFTMAX};
    qn_model *m = model_new(64, 3, outs, acts, NULL);
    CHECK_EQ_INT(qn_cpu_dense_gemv_rows(1024, 512), 8);
    CHECK_EQ_INT(qn_cpu_dense_gemv_rows(64, 1024), 1);
    CHECK_EQ_INT(qn_cpu_dense_gemv_rows(512, 10), 0);
    CHECK_EQ_INT(prepare(be, m), 0);
    float *x = frand(257 * 64, 1.0);
    th_arg args[2];
    pthread_t th[2];
    for (int t = 0; t < 2; t++) {
        args[t] = (th_arg){.be = be, .m = m, .x = x};
        for (int k = 0; k < 3; k++) args[t].y[k] = falloc(th_rows[k] * 10);
        CHECK_EQ_INT(pthread_create(&th[t], NULL, th_main, &args[t]), 0);
    }
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    void *ctx = NULL;
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    for (int t = 0; t < 2; t++) {
        CHECK_EQ_INT(args[t].rc, 0);
        CHECK_EQ_INT(args[t].mismatches, 0);
    }
    for (int k = 0; k < 3; k++) {
        int64_t n = th_rows[k] * 10;
        float *solo = falloc(n);
        CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, th_rows[k], solo), 0);
        CHECK(memcmp(args[0].y[k], args[1].y[k], sizeof(float) * (size_t)n) == 0);
        CHECK(memcmp(args[0].y[k], solo, sizeof(float) * (size_t)n) == 0);
        double *ref = ref_forward(m, x, th_rows[k]);
        CHECK(worst_err(args[0].y[k], ref, n) <= TOL);
        free(ref), free(solo);
        free(args[0].y[k]), free(args[1].y[k]);
    }
    be->iface->ctx_destroy(be, ctx);
    free(x);
    model_free(&m);
    qn_backend_destroy(&be);
}

/* The epilogue on its own: a leading dimension wider than the row must leave
 * the padding alone, and softmax of a one-element row is exactly 1. */
TEST(epilogue_ld)
{
    float y[2 * 5] = {1, -2, 3, 99, 99, -4, 5, -6, 99, 99};
    const float b[3] = {0.5f, 0.5f, 0.5f};
    qn_cpu_epilogue(y, 2, 3, 5, b, QN_ACT_RELU);
    const float want[10] = {1.5f, 0, 3.5f, 99, 99, 0, 5.5f, 0, 99, 99};
    for (int i = 0; i < 10; i++) CHECK(y[i] == want[i]);
    float one[1] = {1e30f};
    qn_cpu_epilogue(one, 1, 1, 1, NULL, QN_ACT_SOFTMAX);
    CHECK(one[0] == 1.0f);
}

int main(void)
{
    /* the refusal tests log warnings on purpose; keep the output to results */
    qn_log_set_level(QN_LOG_ERROR);
    RUN(create_destroy);
    RUN(prepare_validates);
    RUN(activations_and_shapes);
    RUN(gemv_and_gemm_paths);
    RUN(softmax_extreme_bias);
    RUN(softmax_huge_logits);
    RUN(activations_large_inputs);
    RUN(chains);
    RUN(ctx_reuse);
    RUN(two_threads);
    RUN(epilogue_ld);
    return qn_test_done();
}
