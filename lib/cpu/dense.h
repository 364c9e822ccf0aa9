/* dense.h: the f32 dense layer on the CPU, y = x·Wᵀ + b then the activation,
 * over a whole batch at once. W is [out, in] row-major (PyTorch nn.Linear).
 * The matrix product is our packed-weight kernel (sgemm_packed.h) where the
 * backend packed W at load and that kernel is faster for the shape, else
 * OpenBLAS's; bias and activation are fused (epilogue.h) while the output is
 * still in cache. Stateless and thread-safe: concurrent calls on distinct
 * outputs are fine (OpenBLAS's own thread count is process-global, see
 * cpu_backend.c). */
#ifndef QN_CPU_DENSE_H
#define QN_CPU_DENSE_H

#include <stdint.h>

#include "cpu/sgemm_packed.h"
#include "model.h"

/* Which routine computes x·Wᵀ. AUTO is what the backend uses: the packed
 * kernel where there is a packing and it wins (qn_cpu_dense_f32_packed),
 * else one cblas_sgemv per row while rows <= qn_cpu_dense_gemv_rows(in, out),
 * one cblas_sgemm over the batch above. OpenBLAS 0.3.21's sgemm packs all of
 * W on every call; once W is past the L2 cache that costs more than streaming
 * W through sgemv once per row, up to a few rows (bench/notes/dense.md). The
 * forced paths exist so that the benches and the tests can measure and check
 * each. */
typedef enum {
    QN_DENSE_AUTO = 0,
    QN_DENSE_GEMM, /* one cblas_sgemm over the batch */
    QN_DENSE_GEMV, /* one cblas_sgemv per row */
    QN_DENSE_PACKED, /* qn_sgemm_packed_run on the packing (default ISA);
                        needs qn_cpu_dense_f32_packed with one */
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

/* As qn_cpu_dense_f32_path, with pw the packing of w (qn_sgemm_pack) or NULL.
 * AUTO takes the packed kernel when pw is given, the default ISA
 * (qn_sgemm_isa_default, so QN_SGEMM=blas turns it off) is not BLAS, and
 * qn_cpu_dense_packed_wins(rows, in, out); else the BLAS choice above.
 * PACKED forces it: QN_EINVAL without pw or if pw's shape is not [out, in],
 * QN_ENOTSUP when the default ISA is BLAS. The packed kernel's results differ
 * from BLAS's in the last bits (summation order), never between its ISAs or
 * batch sizes (sgemm_packed.h). */
int qn_cpu_dense_f32_packed(const float *x, int64_t rows, int64_t in, const float *w,
                            const qn_sgemm_packed *pw, int64_t out, const float *bias, qn_act act,
                            float *y, qn_dense_path path);

/* Does the packed kernel beat the BLAS path AUTO would take for this many
 * rows of an [out, in] layer? From bench_sgemm's measurements
 * (bench/notes/sgemm.md). */
int qn_cpu_dense_packed_wins(int64_t rows, int64_t in, int64_t out);

#endif
