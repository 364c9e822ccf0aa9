/* test_intraop.c: the CPU backend's intra-op helper pool (lib/cpu/pool.h)
 * and the layers' split over it (dense.h qn_cpu_dense_packed_split for f32,
 * kernels.h qn_kernel_layer_forward_pool for int8, f16 and CSR): every chunk
 * runs exactly once, a split forward is bit-identical to the single-threaded
 * one for odd shapes, rows 1..4, every activation, every kernel path and
 * rows holding NaN/Inf, the helpers really take part, and the pool starts
 * and stops cleanly (ASan/UBSan builds). */
#include "qn_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "backend.h"
#include "cpu/dense.h"
#include "cpu/kcommon.h"
#include "cpu/kernels.h"
#include "cpu/pool.h"
#include "cpu/sgemm_packed.h"
#include "error.h"
#include "log.h"
#include "model.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand1(void) /* U[-1, 1), splitmix64 */
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 4503599627370496.0 - 1.0);
}
static float *frand(int64_t n, float scale)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = scale * frand1();
    return p;
}
static float *fnan(int64_t n)
{
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* ---- the pool alone */

typedef struct count_job {
    _Atomic int *hits;
    int spin; /* busy work per chunk, so helpers get a chance to claim some */
} count_job;

static void count_chunk(void *vj, int64_t c)
{
    count_job *j = vj;
    volatile unsigned s = 0;
    for (int i = 0; i < j->spin; i++) s += (unsigned)i;
    atomic_fetch_add(&j->hits[c], 1);
}

/* Every chunk exactly once, over many back-to-back and spaced-out jobs, with
 * helpers that spin and helpers that always sleep (spin 0: every job goes
 * through the futex wakeup). */
TEST(pool_runs_every_chunk_once)
{
    static const int helpers[] = {1, 3};
    static const int spins[] = {0, 100};
    for (int hi = 0; hi < 2; hi++)
        for (int si = 0; si < 2; si++) {
            qn_cpu_pool *p = NULL;
            CHECK_EQ_INT(qn_cpu_pool_create(helpers[hi], spins[si], &p), 0);
            if (!p) continue;
            CHECK_EQ_INT(qn_cpu_pool_helpers(p), helpers[hi]);
            _Atomic int hits[64];
            int bad = 0;
            for (int it = 0; it < 600; it++) {
                int64_t n = 1 + it % 64;
                for (int c = 0; c < 64; c++) atomic_init(&hits[c], 0);
                count_job j = {.hits = hits, .spin = it % 3 ? 0 : 2000};
                int64_t helped = qn_cpu_pool_run(p, count_chunk, &j, n);
                if (helped < 0 || helped > n) bad++;
                for (int c = 0; c < 64; c++) if (atomic_load(&hits[c]) != (c < n)) bad++;
                if (it % 100 == 99) usleep(300); /* let helpers fall asleep */
            }
            CHECK_EQ_INT(bad, 0);
            qn_cpu_pool_destroy(&p);
            CHECK(p == NULL);
        }
    qn_cpu_pool_destroy(NULL);
    qn_cpu_pool *p = NULL;
    CHECK_EQ_INT(qn_cpu_pool_create(0, 50, &p), QN_EINVAL);
    CHECK_EQ_INT(qn_cpu_pool_create(1, -1, &p), QN_EINVAL);
    CHECK(p == NULL);
    /* no pool: the caller runs everything */
    _Atomic int hits[5];
    for (int c = 0; c < 5; c++) atomic_init(&hits[c], 0);
    count_job j = {.hits = hits};
    CHECK_EQ_INT(qn_cpu_pool_run(NULL, count_chunk, &j, 5), 0);
    for (int c = 0; c < 5; c++) CHECK_EQ_INT(atomic_load(&hits[c]), 1);
    CHECK_EQ_INT(qn_cpu_pool_run(NULL, count_chunk, &j, 0), 0);
}

/* The helper really takes chunks (else the split tests below would prove
 * nothing about concurrency): with slow chunks and a spinning helper it must
 * get some within a few tries, even on a busy machine. */
TEST(pool_helper_takes_chunks)
{
    qn_cpu_pool *p = NULL;
    CHECK_EQ_INT(qn_cpu_pool_create(1, 100000, &p), 0);
    if (!p) return;
    _Atomic int hits[16];
    int64_t helped = 0;
    for (int it = 0; it < 200 && helped == 0; it++) {
        for (int c = 0; c < 16; c++) atomic_init(&hits[c], 0);
        count_job j = {.hits = hits, .spin = 200000};
        helped = qn_cpu_pool_run(p, count_chunk, &j, 16);
    }
    CHECK(helped > 0);
    qn_cpu_pool_destroy(&p);
}

typedef struct two_callers {
    qn_cpu_pool *p;
    int bad;
} two_callers;

static void *caller_main(void *va)
{
    two_callers *a = va;
    _Atomic int hits[32];
    for (int it = 0; it < 400; it++) {
        for (int c = 0; c < 32; c++) atomic_init(&hits[c], 0);
        count_job j = {.hits = hits, .spin = 500};
        qn_cpu_pool_run(a->p, count_chunk, &j, 32);
        for (int c = 0; c < 32; c++) if (atomic_load(&hits[c]) != 1) a->bad++;
    }
    return NULL;
}

/* Two threads on one pool: one gets it, the other runs its chunks itself;
 * neither loses or repeats a chunk. */
TEST(pool_two_callers)
{
    qn_cpu_pool *p = NULL;
    CHECK_EQ_INT(qn_cpu_pool_create(1, 50, &p), 0);
    if (!p) return;
    two_callers a = {.p = p}, b = {.p = p};
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, caller_main, &a), 0);
    caller_main(&b);
    pthread_join(t, NULL);
    CHECK_EQ_INT(a.bad + b.bad, 0);
    qn_cpu_pool_destroy(&p);
}

/* ---- the split product */

TEST(run_panels_args)
{
    if (qn_sgemm_isa_default() == QN_SGEMM_BLAS) return; /* no packed kernel here */
    const int64_t in = 7, out = 40; /* 3 panels */
    float *w = frand(in * out, 0.5f), *x = frand(2 * in, 1.0f), *y = fnan(2 * out);
    qn_sgemm_packed *p = NULL;
    CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
    CHECK_EQ_INT(qn_sgemm_packed_run_panels(p, x, 2, NULL, QN_ACT_NONE, y, NULL, 2, 1), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run_panels(p, x, 2, NULL, QN_ACT_NONE, y, NULL, -1, 1), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run_panels(p, x, 2, NULL, QN_ACT_NONE, y, NULL, 0, 4), QN_EINVAL);
    CHECK_EQ_INT(qn_sgemm_packed_run_panels(p, x, 2, NULL, QN_ACT_NONE, y, NULL, 1, 1), 0);
    for (int64_t i = 0; i < 2 * out; i++) CHECK(isnan(y[i])); /* empty range: nothing written */
    /* the middle panel only: columns 16..31 of each row, nothing else */
    CHECK_EQ_INT(qn_sgemm_packed_run_panels(p, x, 2, NULL, QN_ACT_NONE, y, NULL, 1, 2), 0);
    for (int64_t r = 0; r < 2; r++)
        for (int64_t j = 0; j < out; j++) CHECK(isnan(y[r * out + j]) == (j < 16 || j >= 32));
    qn_sgemm_packed_free(p);
    free(w), free(x), free(y);
}

/* Split over a pool (1 and 3 helpers, spinning or not) and over no pool is
 * bit-identical to qn_sgemm_packed_run, for odd shapes, rows 1..4 and every
 * activation (softmax needs the whole row: applied after the join). */
TEST(split_bit_identical)
{
    if (qn_sgemm_isa_default() == QN_SGEMM_BLAS) return;
    static const int64_t shapes[][2] = {{1, 1}, {3, 17}, {100, 33}, {5, 80}, {257, 1000}, {64, 16},
                                        {33, 129}, {256, 1024}, {1024, 16}, {31, 65}};
    static const qn_act acts[] = {QN_ACT_NONE, QN_ACT_RELU, QN_ACT_GELU, QN_ACT_SIGMOID, QN_ACT_TANH, QN_ACT_SOFTMAX};
    qn_cpu_pool *pools[3] = {NULL, NULL, NULL};
    CHECK_EQ_INT(qn_cpu_pool_create(1, 50, &pools[1]), 0);
    CHECK_EQ_INT(qn_cpu_pool_create(3, 0, &pools[2]), 0);
    int bad = 0, runs = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t in = shapes[s][0], out = shapes[s][1];
        float *w = frand(in * out, 1.0f / sqrtf((float)in)), *bias = frand(out, 0.5f);
        qn_sgemm_packed *p = NULL;
        CHECK_EQ_INT(qn_sgemm_pack(w, out, in, &p), 0);
        for (int64_t rows = 1; rows <= 4; rows++) {
            float *x = frand(rows * in, 1.0f), *ref = fnan(rows * out), *got = fnan(rows * out);
            for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++)
                for (int pi = 0; pi < 3; pi++)
                    for (int withb = 0; withb < 2; withb++) {
                        const float *b = withb ? bias : NULL;
                        for (int64_t i = 0; i < rows * out; i++) ref[i] = got[i] = NAN;
                        CHECK_EQ_INT(qn_sgemm_packed_run(p, x, rows, b, acts[a], ref, NULL), 0);
                        CHECK_EQ_INT(qn_cpu_dense_packed_split(pools[pi], p, x, rows, b, acts[a], got), 0);
                        if (memcmp(ref, got, sizeof(float) * (size_t)(rows * out))) {
                            bad++;
                            fprintf(stderr, "split differs: in %lld out %lld rows %lld act %d pool %d bias %d\n",
                                    (long long)in, (long long)out, (long long)rows, (int)acts[a], pi, withb);
                        }
                        runs++;
                    }
            free(x), free(ref), free(got);
        }
        qn_sgemm_packed_free(p);
        free(w), free(bias);
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(runs > 0);
    qn_cpu_pool_destroy(&pools[1]);
    qn_cpu_pool_destroy(&pools[2]);
}

TEST(split_wins)
{
    CHECK(qn_cpu_dense_split_wins(1, 256, 1024));  /* 256K MACs: the wide model's first layer */
    CHECK(qn_cpu_dense_split_wins(4, 1024, 1024));
    CHECK(!qn_cpu_dense_split_wins(5, 1024, 1024)); /* batches stay on one core */
    CHECK(!qn_cpu_dense_split_wins(1, 1024, 16));   /* too little work to pay the join */
    CHECK(!qn_cpu_dense_split_wins(1, 255, 1024));
    CHECK(qn_cpu_dense_split_wins(4, 256, 256));
    CHECK(!qn_cpu_dense_split_wins(0, 1024, 1024));
    CHECK(qn_cpu_dense_split_wins(4, INT32_MAX, INT32_MAX)); /* no overflow */
    /* compressed layers: by weight bytes, whatever the rows (<= 4) */
    CHECK(qn_kernel_split_wins(1, 1024 * 1024));      /* int8 1024 x 1024 */
    CHECK(qn_kernel_split_wins(4, 2 * 1024 * 1024));  /* f16 1024 x 1024 */
    CHECK(!qn_kernel_split_wins(4, 256 * 1024));      /* int8 1024 x 256 lost at 4 rows too */
    CHECK(!qn_kernel_split_wins(2, 512 * 1024));      /* f16 1024 x 256 */
    CHECK(!qn_kernel_split_wins(5, 1L << 30));        /* batches stay on one core */
    CHECK(!qn_kernel_split_wins(0, 1L << 30));
}

/* ---- compressed layers (issue 9 item 8: the split served only f32) */

typedef struct {
    qn_layer l;
    int8_t *w8, *v8;
    uint16_t *w16;
    float *scale, *bias, *vf;
    int32_t *indptr, *indices;
} test_layer;

/* A layer of representation rep [out, in]; CSR at the given density. */
static void make_layer(test_layer *t, qn_rep rep, int64_t in, int64_t out, double density, qn_act act)
{
    const size_t n = (size_t)(uint32_t)in * (uint32_t)out + 1;
    memset(t, 0, sizeof *t);
    t->scale = frand(out, 0.01f);
    for (int64_t o = 0; o < out; o++) t->scale[o] = 0.002f + fabsf(t->scale[o]);
    t->bias = frand(out, 0.5f);
    t->l = (qn_layer){.rep = rep, .in = in, .out = out, .act = act, .bias = t->bias};
    if (rep == QN_REP_I8) {
        t->w8 = malloc(n);
        for (int64_t i = 0; i < in * out; i++) t->w8[i] = (int8_t)(127.0f * frand1());
        t->l.w_i8 = t->w8, t->l.w_scale = t->scale;
    } else if (rep == QN_REP_F16) {
        t->w16 = malloc(n * sizeof(uint16_t));
        for (int64_t i = 0; i < in * out; i++) t->w16[i] = qn_f32_to_f16(frand1() / sqrtf((float)in));
        t->l.w_f16 = t->w16;
    } else {
        t->indptr = malloc((size_t)(out + 1) * sizeof(int32_t));
        t->indices = malloc(n * sizeof(int32_t));
        t->vf = malloc(n * sizeof(float));
        t->v8 = malloc(n);
        int64_t nnz = 0;
        t->indptr[0] = 0;
        for (int64_t o = 0; o < out; o++) {
            for (int64_t k = 0; k < in; k++)
                if ((frand1() + 1.0f) / 2.0f < density) {
                    t->indices[nnz] = (int32_t)k;
                    t->vf[nnz] = frand1() / sqrtf((float)in);
                    t->v8[nnz] = (int8_t)(127.0f * frand1());
                    nnz++;
                }
            t->indptr[o + 1] = (int32_t)nnz;
        }
        t->l.csr_indptr = t->indptr, t->l.csr_indices = t->indices, t->l.nnz = nnz;
        if (rep == QN_REP_CSR_I8) t->l.csr_i8 = t->v8, t->l.w_scale = t->scale;
        else t->l.csr_f32 = t->vf;
    }
}

static void free_layer(test_layer *t)
{
    if (t->l.kernel_free) t->l.kernel_free(t->l.kernel_data);
    free(t->w8), free(t->v8), free(t->w16), free(t->scale), free(t->bias), free(t->vf);
    free(t->indptr), free(t->indices);
}

/* int8, f16, CSR f32 / int8 (sparse kernels and the densified path), on
 * every kernel path this CPU runs: split over 1 or 3 helpers is
 * bit-identical to the call without a pool, for odd shapes (tails of the
 * 16-output panels and the CSR blocks), rows 1..4 (the packed CSR form),
 * every activation, with a NaN row and an Inf row among them. The split is
 * forced on these small shapes (qn_kernel_set_split_min_bytes). */
TEST(kernels_split_bit_identical)
{
    static const int64_t shapes[][2] = {{33, 129}, {100, 1000}, {257, 40}, {7, 17}, {64, 48}};
    static const qn_act acts[] = {QN_ACT_NONE, QN_ACT_RELU, QN_ACT_GELU, QN_ACT_SIGMOID, QN_ACT_TANH, QN_ACT_SOFTMAX};
    static const struct { qn_rep rep; double density; const char *csr; } reps[] = {
        {QN_REP_I8, 0, NULL}, {QN_REP_F16, 0, NULL}, {QN_REP_CSR_F32, 0.1, "sparse"},
        {QN_REP_CSR_I8, 0.3, "sparse"}, {QN_REP_CSR_F32, 0.5, "dense"},
    };
    qn_cpu_pool *pools[3] = {NULL, NULL, NULL};
    CHECK_EQ_INT(qn_cpu_pool_create(1, 50, &pools[1]), 0);
    CHECK_EQ_INT(qn_cpu_pool_create(3, 0, &pools[2]), 0);
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    qn_kernel_set_split_min_bytes(1);
    const qn_kpath before = qn_kernel_path();
    int bad = 0, runs = 0;
    for (int path = 0; path < QN_KPATH_COUNT; path++) {
        if (qn_kernel_set_path((qn_kpath)path) != 0) continue;
        for (size_t ri = 0; ri < sizeof reps / sizeof reps[0]; ri++) {
            if (reps[ri].csr) setenv("QN_CSR", reps[ri].csr, 1);
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                const int64_t in = shapes[si][0], out = shapes[si][1];
                test_layer t;
                make_layer(&t, reps[ri].rep, in, out, reps[ri].density, acts[(si + ri) % 6]);
                CHECK_EQ_INT(qn_kernel_layer_prepare(&t.l), 0);
                for (int64_t rows = 1; rows <= 4; rows++) {
                    float *x = frand(rows * in, 1.0f), *ref = fnan(rows * out), *got = fnan(rows * out);
                    if (rows >= 3) x[in + 1] = NAN, x[2 * in] = INFINITY;
                    CHECK_EQ_INT(qn_kernel_layer_forward_pool(&t.l, x, rows, ref, s, NULL), 0);
                    for (int pi = 1; pi < 3; pi++) {
                        for (int64_t i = 0; i < rows * out; i++) got[i] = NAN;
                        CHECK_EQ_INT(qn_kernel_layer_forward_pool(&t.l, x, rows, got, s, pools[pi]), 0);
                        if (memcmp(ref, got, sizeof(float) * (size_t)(rows * out))) {
                            bad++;
                            fprintf(stderr, "split differs: path %s rep %d in %lld out %lld rows %lld pool %d\n",
                                    qn_kpath_name((qn_kpath)path), (int)reps[ri].rep, (long long)in,
                                    (long long)out, (long long)rows, pi);
                        }
                        runs++;
                    }
                    free(x), free(ref), free(got);
                }
                free_layer(&t);
            }
            unsetenv("QN_CSR");
        }
    }
    qn_kernel_set_path(before);
    qn_kernel_set_split_min_bytes(0);
    CHECK_EQ_INT(bad, 0);
    CHECK(runs > 0);
    qn_kernel_scratch_destroy(&s);
    qn_cpu_pool_destroy(&pools[1]);
    qn_cpu_pool_destroy(&pools[2]);
}

/* The split really happens for compressed layers at the default threshold:
 * one row of the wide model's 1024 x 1024 layer, int8 / f16 / CSR int8 at
 * density 0.5, goes through the pool (each forward is a pool job); a
 * 1024 -> 16 layer never does. Before, only f32 layers used the pool. */
TEST(kernels_split_used)
{
    static const qn_rep reps[] = {QN_REP_I8, QN_REP_F16, QN_REP_CSR_I8};
    qn_cpu_pool *p = NULL;
    CHECK_EQ_INT(qn_cpu_pool_create(1, 100000, &p), 0);
    if (!p) return;
    qn_kernel_scratch *s = NULL;
    CHECK_EQ_INT(qn_kernel_scratch_create(&s), 0);
    setenv("QN_CSR", "sparse", 1);
    for (size_t ri = 0; ri < sizeof reps / sizeof reps[0]; ri++) {
        test_layer big, small;
        make_layer(&big, reps[ri], 1024, 1024, 0.5, QN_ACT_RELU);
        make_layer(&small, reps[ri], 1024, 16, 0.5, QN_ACT_RELU);
        CHECK_EQ_INT(qn_kernel_layer_prepare(&big.l), 0);
        CHECK_EQ_INT(qn_kernel_layer_prepare(&small.l), 0);
        float *x = frand(1024, 1.0f), *y = fnan(1024);
        int64_t jobs0, helped0, jobs1, helped1;
        qn_cpu_pool_stats(p, &jobs0, &helped0);
        for (int it = 0; it < 20; it++) CHECK_EQ_INT(qn_kernel_layer_forward_pool(&small.l, x, 1, y, s, p), 0);
        qn_cpu_pool_stats(p, &jobs1, &helped1);
        CHECK_EQ_INT(jobs1, jobs0);
        for (int it = 0; it < 20; it++) CHECK_EQ_INT(qn_kernel_layer_forward_pool(&big.l, x, 1, y, s, p), 0);
        qn_cpu_pool_stats(p, &jobs1, &helped1);
        /* every forward went through the pool; whether the helper got a
         * chunk of these short jobs depends on the scheduler of a busy
         * machine (pool_helper_takes_chunks tests that the helper works) */
        CHECK_EQ_INT(jobs1 - jobs0, 20);
        free(x), free(y);
        free_layer(&big), free_layer(&small);
    }
    unsetenv("QN_CSR");
    qn_kernel_scratch_destroy(&s);
    qn_cpu_pool_destroy(&p);
}

/* The backend with ctx_set_intraop on gives the same bits as with it off,
 * rows 1..6 (1..4 split where the layer is big enough), on the wide model. */
TEST(backend_intraop_same_bits)
{
    qn_backend *be = NULL;
    void *ctx = NULL;
    CHECK_EQ_INT(qn_backend_cpu_create(1, &be), 0);
    if (!be) return;
    CHECK(be->iface->ctx_set_intraop != NULL);
    CHECK_EQ_INT(be->iface->ctx_create(be, &ctx), 0);
    static const qn_rep reps[] = {QN_REP_F32, QN_REP_I8, QN_REP_F16, QN_REP_CSR_F32, QN_REP_CSR_I8};
    for (size_t ri = 0; ri < sizeof reps / sizeof reps[0]; ri++) {
        qn_model *m = calloc(1, sizeof *m);
        const int64_t dims[4] = {256, 1024, 1024, 16};
        test_layer tl[3];
        memset(tl, 0, sizeof tl);
        m->layers = calloc(3, sizeof *m->layers);
        snprintf(m->name, sizeof m->name, "wide");
        m->nlayers = 3, m->in_dim = 256, m->out_dim = 16, m->max_width = 1024;
        for (int i = 0; i < 3; i++) {
            qn_layer *l = &m->layers[i];
            const qn_act act = i < 2 ? QN_ACT_RELU : QN_ACT_NONE;
            if (reps[ri] == QN_REP_F32) {
                l->rep = QN_REP_F32, l->in = dims[i], l->out = dims[i + 1], l->act = act;
                l->w = frand(l->in * l->out, 1.0f / 16), l->bias = frand(l->out, 0.1f);
            } else {
                /* the model owns (and frees) what the layer points to */
                make_layer(&tl[i], reps[ri], dims[i], dims[i + 1], 0.5, act);
                *l = tl[i].l;
                if (!l->w_i8) free(tl[i].w8);
                if (!l->csr_i8) free(tl[i].v8);
                if (!l->w_scale) free(tl[i].scale);
                if (!l->csr_f32) free(tl[i].vf);
            }
        }
        atomic_init(&m->refs, 1);
        void *st = NULL;
        CHECK_EQ_INT(be->iface->model_prepare(be, m, &st), 0);
        m->backend = be, m->backend_state = st;
        for (int64_t rows = 1; rows <= 6; rows++) {
            float *x = frand(rows * 256, 1.0f), *y0 = fnan(rows * 16), *y1 = fnan(rows * 16);
            be->iface->ctx_set_intraop(be, ctx, 0);
            CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, rows, y0), 0);
            be->iface->ctx_set_intraop(be, ctx, 1);
            for (int rep = 0; rep < 20; rep++) {
                CHECK_EQ_INT(qn_backend_forward(be, ctx, m, x, rows, y1), 0);
                CHECK(memcmp(y0, y1, sizeof(float) * (size_t)(rows * 16)) == 0);
            }
            be->iface->ctx_set_intraop(be, ctx, 0);
            free(x), free(y0), free(y1);
        }
        qn_model_unref(&m);
    }
    be->iface->ctx_destroy(be, ctx);
    qn_backend_destroy(&be); /* stops the pool: ASan/LSan see no thread or leak left */
}

int main(void)
{
    qn_log_set_level(QN_LOG_ERROR);
    RUN(pool_runs_every_chunk_once);
    RUN(pool_helper_takes_chunks);
    RUN(pool_two_callers);
    RUN(run_panels_args);
    RUN(split_bit_identical);
    RUN(split_wins);
    RUN(kernels_split_bit_identical);
    RUN(kernels_split_used);
    RUN(backend_intraop_same_bits);
    return qn_test_done();
}
