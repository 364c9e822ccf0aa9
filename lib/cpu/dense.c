/* dense.c: f32 dense layer = our packed-weight kernel (sgemm_packed.h) with
 * its fused bias/activation, or one OpenBLAS call over the batch + one fused
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
