/* kernels.h: the CPU kernels for compressed layers (int8, fp16, CSR sparse),
 * picked at run time by CPU feature. The CPU backend calls
 * qn_kernel_layer_prepare once per layer at load and qn_kernel_layer_forward
 * per batch; it never sees which instruction set runs.
 *
 * Numerics, per representation (y [rows, out] = act(x·Wᵀ + b)):
 *  - QN_REP_I8: each activation row is quantized dynamically to u8 with its
 *    own scale and zero point (asymmetric: s = (max(0,max x) - min(0,min x)) /
 *    255, zp = round(-min/s), q = clamp(round(x/s) + zp, 0, 255)). Asymmetric
 *    because hidden activations after ReLU are non-negative: a symmetric s8
 *    scheme would waste half its levels on them; and u8 is what VNNI's
 *    vpdpbusd (u8 x s8) takes natively. The products are summed in int32
 *    exactly (bit-identical on every path), the zero point is removed with
 *    precomputed weight column sums (Σ (q - zp)·w = Σ q·w - zp·Σ w), and the
 *    result is dequantized with s_row · w_scale[o] in the same pass that adds
 *    the bias and applies ReLU. Error against the fp32 model with the
 *    dequantized weights: |Δy_o| <= s_row · (½ Σ_k |w_o,k| + max_k |w_o,k|)
 *    (½ step per element, one full step where the top clamps at 255).
 *    Limit: in <= 65536 (so that 255·127·in fits int32).
 *  - QN_REP_F16: weights stay f16 in memory (half the bytes of f32) and are
 *    widened with F16C/AVX-512 inside the GEMM; accumulation in f32, so the
 *    result equals the f32 GEMM on the f16-rounded weights up to summation
 *    order.
 *  - QN_REP_CSR_F32 / QN_REP_CSR_I8: CSR SpMM with f32 activations (int8
 *    values are widened, Σ v·x is scaled by w_scale[o] once per output).
 *    On the SIMD paths prepare also builds a packed copy for small batches
 *    (kernels_impl.h; 0.8-1.7x the bytes of the CSR arrays at 10% density);
 *    the CSR arrays themselves are only read. Per layer and per batch-size
 *    range, prepare decides from measured crossover densities
 *    (bench/notes/csr.md, bench/notes/kernels.md) whether to run the sparse
 *    kernel or a densified f32 copy through the dense f32 path, keeps that
 *    copy only if some range uses it, and logs the decision.
 *  - QN_REP_F32: the backend's dense path, qn_cpu_dense_f32 (cpu/dense.h),
 *    so callers may route every layer through here.
 *
 * NaN and ±Inf propagate as in torch's f32 forward on the same (dequantized,
 * densified) weights, per element, on every representation and path: a row
 * with a NaN input gives NaN outputs, an Inf input ±Inf (NaN where its
 * weight is 0 or Infs of both signs meet), then the activation as torch
 * defines it (relu keeps NaN, gelu(-Inf) is NaN, a softmax row with NaN or
 * +Inf is all NaN). int8 and CSR kernels compute such rows apart
 * (kcommon.h); rows without NaN/Inf are unaffected.
 *
 * Kernel paths: avx512vnni (AVX-512 F/BW/VL + VNNI), avxvnni (AVX2 + VEX
 * VNNI), avx2 (AVX2 + FMA + F16C), portable (C). The best the CPU supports is
 * used unless the environment variable QN_KERNEL names another (so CI can
 * exercise every path); the choice is logged once. A layer records the path
 * it was prepared for and keeps using it.
 *
 * Thread-safety: prepare must not run concurrently with forward on the same
 * layer; forward on a prepared layer is read-only on the layer and may run on
 * many threads at once, each with its own scratch. */
#ifndef QN_CPU_KERNELS_H
#define QN_CPU_KERNELS_H

#include <stdint.h>

#include "cpu/pool.h"
#include "model.h"

typedef enum {
    QN_KPATH_PORTABLE = 0,
    QN_KPATH_AVX2,
    QN_KPATH_AVXVNNI,
    QN_KPATH_AVX512VNNI,
    QN_KPATH_COUNT
} qn_kpath;

/* Name of the path new layers are prepared for ("avx512vnni", ...). Static.
 * The first call (or the first prepare) reads QN_KERNEL and logs the choice. */
const char *qn_kernel_path_name(void);
/* The path new layers are prepared for. */
qn_kpath qn_kernel_path(void);
/* Static name of a path; "?" when out of range. */
const char *qn_kpath_name(qn_kpath p);
/* 0 and *out set, or QN_EINVAL for an unknown name ("auto" is not a path). */
int qn_kpath_from_name(const char *name, qn_kpath *out);
/* 1 if this CPU (and OS) can run path p, else 0. */
int qn_kernel_path_supported(qn_kpath p);
/* Makes p the path for layers prepared from now on (tests and benchmarks loop
 * over paths with it). 0, or QN_ENOTSUP if the CPU cannot run p (nothing
 * changes). Layers already prepared keep their path. */
int qn_kernel_set_path(qn_kpath p);

/* Per-thread scratch (quantized activations, transposes); grows on demand,
 * never shrinks. create: 0 or QN_ENOMEM. destroy sets *s NULL; NULL-safe. */
typedef struct qn_kernel_scratch qn_kernel_scratch;
int qn_kernel_scratch_create(qn_kernel_scratch **out);
void qn_kernel_scratch_destroy(qn_kernel_scratch **s);

/* Builds the layer's kernel-private form for the current path: packed int8
 * panels with column sums, packed f16 panels, padded bias, the sparse/dense
 * decision and (if used) the densified copy. Sets l->kernel_data and
 * l->kernel_free (replacing and freeing any previous ones). The layer's own
 * arrays are only read and must outlive kernel_data. Returns 0, QN_EINVAL
 * (missing arrays, bad rep), QN_ESHAPE (in/out <= 0, in > 65536 for int8,
 * CSR indices out of range or indptr not monotone) or QN_ENOMEM. */
int qn_kernel_layer_prepare(qn_layer *l);

/* y [rows, out] = act(x [rows, in] · Wᵀ + b), both row-major and dense; y
 * must not alias x. The layer must have been prepared. rows == 0 is a no-op.
 * Returns 0, QN_EINVAL (not prepared, NULL pointers, rows < 0) or QN_ENOMEM
 * (scratch could not grow). */
int qn_kernel_layer_forward(const qn_layer *l, const float *x, int64_t rows, float *y,
                            qn_kernel_scratch *s);

/* As qn_kernel_layer_forward, and for a few rows of a big layer (kcommon.h
 * qn_kernel_split_wins) the layer's output panels are split over pool, the
 * CPU backend's intra-op helpers (pool.h; NULL: no split), as f32 layers
 * are (dense.h). Only for a forward alone on an idle machine (backend.h
 * ctx_set_intraop). Results are bit-identical to the unsplit call. */
int qn_kernel_layer_forward_pool(const qn_layer *l, const float *x, int64_t rows, float *y,
                                 qn_kernel_scratch *s, qn_cpu_pool *pool);

/* The dynamic activation quantization used by the int8 kernels, exposed for
 * tests and for the compressor's error report: q [n] u8, *scale > 0, *zp in
 * [0, 255]; x ≈ (q - zp) · scale. */
void qn_kernel_quantize_row(const float *x, int64_t n, uint8_t *q, float *scale, int32_t *zp);

/* The sparse/dense decision for a CSR layer with this density (nnz / (in·out))
 * at this batch size: 1 = sparse kernel, 0 = densified dense f32 path. Reads
 * QN_CSR=sparse|dense|auto (default auto: the measured crossovers). */
int qn_kernel_csr_use_sparse(double density, int64_t rows);

#endif
