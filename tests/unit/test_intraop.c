/* test_intraop.c: the CPU backend's intra-op helper pool (lib/cpu/pool.h)
 * and the dense layer's split over it (dense.h qn_cpu_dense_packed_split):
 * every chunk runs exactly once, a split product is bit-identical to the
 * single-threaded packed kernel for odd shapes, rows 1..4 and every
 * activation, and the pool starts and stops cleanly (ASan/UBSan builds). */
#include "qn_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "backend.h"
#include "cpu/dense.h"
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
    qn_model *m = calloc(1, sizeof *m);
    const int64_t dims[4] = {256, 1024, 1024, 16};
    m->layers = calloc(3, sizeof *m->layers);
    snprintf(m->name, sizeof m->name, "wide");
    m->nlayers = 3, m->in_dim = 256, m->out_dim = 16, m->max_width = 1024;
    for (int i = 0; i < 3; i++) {
        qn_layer *l = &m->layers[i];
        l->rep = QN_REP_F32, l->in = dims[i], l->out = dims[i + 1], l->act = i < 2 ? QN_ACT_RELU : QN_ACT_NONE;
        l->w = frand(l->in * l->out, 1.0f / 16), l->bias = frand(l->out, 0.1f);
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
    RUN(backend_intraop_same_bits);
    return qn_test_done();
}
