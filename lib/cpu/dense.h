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

/* Which BLAS routine computes x·Wᵀ. AUTO is what the backend uses: GEMV for a
 * single row when QN_DENSE_GEMV_ROW1 says it is faster, GEMM otherwise. The
 * others exist so that bench_dense can measure the choice. */
typedef enum {
    QN_DENSE_AUTO = 0,
    QN_DENSE_GEMM, /* cblas_sgemm over the batch, any rows */
    QN_DENSE_GEMV, /* cblas_sgemv per call; only valid for rows == 1 */
} qn_dense_path;

/* x [rows, in], w [out, in], bias [out] or NULL, y [rows, out], all
 * row-major f32 with no padding; y must not alias x or w. Every element of y
 * is written (its previous contents, NaN included, never leak through).
 * Returns 0; QN_EINVAL for rows < 0, in/out < 1, a NULL pointer, a dimension
 * past the BLAS integer range, or GEMV with rows != 1. rows == 0 is a no-op. */
int qn_cpu_dense_f32(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                     const float *bias, qn_act act, float *y);
int qn_cpu_dense_f32_path(const float *x, int64_t rows, int64_t in, const float *w, int64_t out,
                          const float *bias, qn_act act, float *y, qn_dense_path path);

#endif
