/* dense.c: f32 dense layer = one OpenBLAS call over the batch + one fused
 * bias/activation pass. Never allocates and keeps no state, so executor
 * threads can call it concurrently on their own buffers. */
#include "cpu/dense.h"

#include <cblas.h>
#include <limits.h>

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

int qn_cpu_dense_f32_path(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                          const float *bias, qn_act act, float *y, qn_dense_path path)
{
    /* OpenBLAS (non-ILP64, as Debian ships it) takes int dimensions. */
    if (rows < 0 || in < 1 || out < 1 || rows > INT_MAX || in > INT_MAX || out > INT_MAX)
        return QN_EINVAL;
    if (rows == 0) return 0;
    if (!x || !w || !y || (unsigned)act >= QN_ACT_COUNT) return QN_EINVAL;
    if (path == QN_DENSE_AUTO) path = rows <= qn_cpu_dense_gemv_rows(in, out) ? QN_DENSE_GEMV : QN_DENSE_GEMM;

    switch (path) {
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
