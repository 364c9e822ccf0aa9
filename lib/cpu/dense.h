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

#include "cpu/pool.h"
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

/* Intra-op split (pool.h): the packed product of one small-row call cut by
 * output panels into chunks that the caller and the pool's helpers share.
 * Worth it only for few rows (a batch already keeps the executors' cores
 * busy) of a big layer (the join costs a few µs; qn_cpu_dense_split_wins).
 * Each output is the same FMA chain as without the split, so results are
 * bit-identical to qn_sgemm_packed_run's. */
#define QN_DENSE_SPLIT_MAX_ROWS 4
#define QN_DENSE_SPLIT_MIN_MACS (256 * 1024)
/* rows <= QN_DENSE_SPLIT_MAX_ROWS and rows*in*out >= QN_DENSE_SPLIT_MIN_MACS. */
int qn_cpu_dense_split_wins(int64_t rows, int64_t in, int64_t out);
/* y = act(x·Wᵀ + bias) on the packing pw with the panels split over pool
 * (NULL: all on the caller, same results), whatever the shape (the tests
 * force it on odd ones). Returns as qn_sgemm_packed_run. */
int qn_cpu_dense_packed_split(qn_cpu_pool *pool, const qn_sgemm_packed *pw, const float *x, int64_t rows,
                              const float *bias, qn_act act, float *y);
/* As qn_cpu_dense_f32_packed with AUTO, plus: when AUTO picks the packed
 * kernel, pool is not NULL and qn_cpu_dense_split_wins, the product is split
 * over pool (qn_cpu_dense_packed_split). The backend passes its pool only
 * for a context marked intra-op (backend.h ctx_set_intraop). */
int qn_cpu_dense_f32_auto_pool(const float *x, int64_t rows, int64_t in, const float *w,
                               const qn_sgemm_packed *pw, int64_t out, const float *bias, qn_act act,
                               float *y, qn_cpu_pool *pool);

/* Does the packed kernel beat the BLAS path AUTO would take for this many
 * rows of an [out, in] layer? From bench_sgemm's measurements
 * (bench/notes/sgemm.md). */
int qn_cpu_dense_packed_wins(int64_t rows, int64_t in, int64_t out);

#endif
