/* dense.h: the f32 dense layer on the CPU, y = x·Wᵀ + b then the activation,
 * over a whole batch at once. W is [out, in] row-major (PyTorch nn.Linear).
 * The matrix product is OpenBLAS's; bias and activation are one fused pass
 * (epilogue.h) while the output is still in cache. Stateless and thread-safe:
 * concurrent calls on distinct outputs are fine (OpenBLAS's own thread count
 * is process-global, see cpu_backend.c). */
#ifndef QN_CPU_DENSE_H
#define QN_CPU_DENSE_H

#include <stdint.h>

#include "model.h"

/* Which BLAS routine computes x·Wᵀ. AUTO is what the backend uses: one
 * cblas_sgemv per row while rows <= qn_cpu_dense_gemv_rows(in, out), one
 * cblas_sgemm over the batch above. OpenBLAS 0.3.21's sgemm packs all of W on
 * every call; once W is past the L2 cache that costs more than streaming W
 * through sgemv once per row, up to a few rows (bench/notes/dense.md). The
 * forced paths exist so that bench_dense and the tests can measure and check
 * both. */
typedef enum {
    QN_DENSE_AUTO = 0,
    QN_DENSE_GEMM, /* one cblas_sgemm over the batch */
    QN_DENSE_GEMV, /* one cblas_sgemv per row */
} qn_dense_path;

/* x [rows, in], w [out, in], bias [out] or NULL, y [rows, out], all
 * row-major f32 with no padding; y must not alias x or w. Every element of y
 * is written (its previous contents, NaN included, never leak through).
 * Returns 0; QN_EINVAL for rows < 0, in/out < 1, a NULL pointer, an invalid
 * activation or path, or a dimension past the BLAS integer range. rows == 0 is
 * a no-op. A row's result can differ in the last bits between the two paths
 * (and so between batch sizes): BLAS sums in a different order. */
/* Most rows for which AUTO uses per-row sgemv on an [out, in] f32 weight:
 * one row per 256 KiB of weights, at most QN_DENSE_GEMV_MAX_ROWS; 0 for
 * weights under 256 KiB (sgemm's small-matrix kernel wins even at one row). */
#define QN_DENSE_GEMV_MAX_ROWS 8
int64_t qn_cpu_dense_gemv_rows(int64_t in, int64_t out);

int qn_cpu_dense_f32(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                     const float *bias, qn_act act, float *y);
int qn_cpu_dense_f32_path(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                          const float *bias, qn_act act, float *y, qn_dense_path path);

#endif
