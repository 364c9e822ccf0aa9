/* dense.c: f32 dense layer = our packed-weight kernel (sgemm_packed.h) with
 * its fused bias/activation, or one OpenBLAS call over the batch + one fused
 * bias/activation pass. Never allocates and keeps no state, so executor
 * threads can call it concurrently on their own buffers. */
#include "cpu/dense.h"

#include <cblas.h>
#include <limits.h>
#include <stdatomic.h>

#include "cpu/epilogue.h"
#include "error.h"

/* Crossovers measured with bench_dense --forms (notes): per-row sgemv beats
 * sgemm up to ~4 rows for 1 MiB of weights, ~16 for 4 MiB and ~8 for 16 MiB
 * (where sgemv itself streams from L3/DRAM). One row per 256 KiB, capped at
 * 8, lands on or just below each crossover. */
int64_t qn_cpu_dense_gemv_rows(int64_t in, int64_t out)
{
    if (in < 1 || out < 1 || in > INT_MAX || out > INT_MAX) return 0;
    int64_t n = in * out / (256 * 1024 / (int64_t)sizeof(float)); /* in*out < 2^62: no overflow */
    return n < QN_DENSE_GEMV_MAX_ROWS ? n : QN_DENSE_GEMV_MAX_ROWS;
}

int qn_cpu_dense_f32(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                     const float *bias, qn_act act, float *y)
{
    return qn_cpu_dense_f32_path(x, rows, in, w, out, bias, act, y, QN_DENSE_AUTO);
}

/* bench_sgemm (notes/sgemm.md): the packed kernel runs at 105-117 GFLOP/s
 * (near this core's FMA peak) from 4 rows up on every wide layer, and beats
 * per-row sgemv at 1-2 rows too (it streams W once, as sgemv does). It loses
 * in two corners, both small layers where OpenBLAS's small-matrix kernel
 * shines:
 *  - fewer than 4 independent FMA chains (rows x 16-column panels < 4, e.g.
 *    1024->16 at 1-2 rows): each output is one chain over K, so the call
 *    costs K x the FMA latency (1024->16, 1 row: 1.1 µs vs sgemm's 0.7);
 *  - over a quarter of the last panel's columns wasted (128->10 computes 16
 *    columns for 10): sgemm wins or ties below ~128 rows. */
int qn_cpu_dense_packed_wins(int64_t rows, int64_t in, int64_t out)
{
    if (rows < 1 || in < 1 || out < 1) return 0;
    int64_t panels = (out + QN_SGEMM_NR - 1) / QN_SGEMM_NR;
    if (rows * panels < 4) return 0;
    if (4 * out < 3 * QN_SGEMM_NR * panels && rows < 128) return 0;
    return 1;
}

int qn_cpu_dense_f32_path(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                          const float *bias, qn_act act, float *y, qn_dense_path path)
{
    return qn_cpu_dense_f32_packed(x, rows, in, w, NULL, out, bias, act, y, path);
}

int qn_cpu_dense_split_wins(int64_t rows, int64_t in, int64_t out)
{
    if (rows < 1 || rows > QN_DENSE_SPLIT_MAX_ROWS || in < 1 || out < 1) return 0;
    if (in > INT_MAX || out > INT_MAX) return 0;
    /* in*out < 2^62; rows*in*out could overflow */
    return in * out >= (QN_DENSE_SPLIT_MIN_MACS + rows - 1) / rows;
}

typedef struct split_job {
    const qn_sgemm_packed *pw;
    const float *x, *bias;
    int64_t rows, per; /* panels per chunk */
    qn_act act;
    float *y;
    _Atomic int rc;    /* a failure; every chunk has the same arguments, so
                          all fail alike or none does */
} split_job;

static void split_chunk(void *vj, int64_t chunk)
{
    split_job *j = vj;
    int64_t pb = chunk * j->per, pe = pb + j->per < j->pw->npanels ? pb + j->per : j->pw->npanels;
    int rc = qn_sgemm_packed_run_panels(j->pw, j->x, j->rows, j->bias, j->act, j->y, NULL, pb, pe);
    if (rc) atomic_store(&j->rc, rc);
}

int qn_cpu_dense_packed_split(qn_cpu_pool *pool, const qn_sgemm_packed *pw, const float *x, int64_t rows,
                              const float *bias, qn_act act, float *y)
{
    if (!pw || !x || !y || rows < 0 || (unsigned)act >= QN_ACT_COUNT) return QN_EINVAL;
    if (rows == 0) return 0;
    /* Chunks of at least 4 panels (the widest tile at few rows, so the
     * tiling stays as in the whole call), about 4 per thread so a helper
     * that wakes late still gets a share. */
    int64_t want = 4 * (1 + (int64_t)qn_cpu_pool_helpers(pool));
    int64_t per = (pw->npanels + want - 1) / want;
    if (per < 4) per = 4;
    split_job j = {.pw = pw, .x = x, .bias = bias, .rows = rows, .per = per, .act = act, .y = y};
    int64_t nchunks = (pw->npanels + per - 1) / per;
    qn_cpu_pool_run(pool, split_chunk, &j, nchunks);
    int rc = atomic_load(&j.rc);
    if (rc) return rc;
    /* what the whole-call driver does per block: the activations that need
     * whole rows (or are not fused), once every panel is in */
    if (act != QN_ACT_NONE && act != QN_ACT_RELU) qn_cpu_epilogue(y, rows, pw->out, pw->out, NULL, act);
    return 0;
}

int qn_cpu_dense_f32_auto_pool(const float *x, int64_t rows, int64_t in, const float *w,
                               const qn_sgemm_packed *pw, int64_t out, const float *bias, qn_act act,
                               float *y, qn_cpu_pool *pool)
{
    if (pool && pw && pw->in == in && pw->out == out && x && w && y && (unsigned)act < QN_ACT_COUNT &&
        qn_cpu_dense_split_wins(rows, in, out) && qn_sgemm_isa_default() != QN_SGEMM_BLAS &&
        qn_cpu_dense_packed_wins(rows, in, out))
        return qn_cpu_dense_packed_split(pool, pw, x, rows, bias, act, y);
    return qn_cpu_dense_f32_packed(x, rows, in, w, pw, out, bias, act, y, QN_DENSE_AUTO);
}

int qn_cpu_dense_f32_packed(const float *x, int64_t rows, int64_t in, const float *w,
                            const qn_sgemm_packed *pw, int64_t out, const float *bias, qn_act act,
                            float *y, qn_dense_path path)
{
    /* OpenBLAS (non-ILP64, as Debian ships it) takes int dimensions. */
    if (rows < 0 || in < 1 || out < 1 || rows > INT_MAX || in > INT_MAX || out > INT_MAX)
        return QN_EINVAL;
    if (rows == 0) return 0;
    if (!x || !w || !y || (unsigned)act >= QN_ACT_COUNT) return QN_EINVAL;
    if (pw && (pw->in != in || pw->out != out)) return QN_EINVAL;
    if (path == QN_DENSE_AUTO) {
        if (pw && qn_sgemm_isa_default() != QN_SGEMM_BLAS && qn_cpu_dense_packed_wins(rows, in, out))
            path = QN_DENSE_PACKED;
        else
            path = rows <= qn_cpu_dense_gemv_rows(in, out) ? QN_DENSE_GEMV : QN_DENSE_GEMM;
    }

    switch (path) {
    case QN_DENSE_PACKED:
        /* bias and activation are applied inside, per tile */
        if (!pw) return QN_EINVAL;
        return qn_sgemm_packed_run(pw, x, rows, bias, act, y, NULL);
    case QN_DENSE_GEMV:
        /* y_r = W·x_r: on the row-major [out, in] matrix this is NoTrans, and
         * beta = 0 makes OpenBLAS store, not accumulate, so y's old bytes
         * never matter. */
        for (int64_t r = 0; r < rows; r++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)out, (int)in, 1.0f, w, (int)in, x + r * in, 1,
                        0.0f, y + r * out, 1);
        break;
    case QN_DENSE_GEMM:
        /* Y[rows, out] = X[rows, in] · W[out, in]ᵀ. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)in, 1.0f, x,
                    (int)in, w, (int)in, 0.0f, y, (int)out);
        break;
    default: return QN_EINVAL;
    }
    qn_cpu_epilogue(y, rows, out, out, bias, act);
    return 0;
}
