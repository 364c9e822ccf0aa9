/* kernels_impl.h: what the per-ISA kernel files share with the drivers in
 * quant.c / f16.c / csr.c / kernels.c: packed layouts and argument blocks.
 * Private to lib/cpu/ (and the kernel unit test); the contract is kernels.h.
 *
 * Packed int8 weights ("panel" layout, one layout for every path so that the
 * int32 sums are bit-identical everywhere): outputs are grouped in panels of
 * 16, the reduction dimension in groups of 4, and a 64-byte block holds
 * [16 outputs][4 k]:
 *     w[p][g][lane][j] = W[p*16 + lane][g*4 + j]   (0 where out of range)
 * so one 64-byte load feeds vpdpbusd with 16 output channels at once and the
 * accumulators need no horizontal reduction. Panel p starts at p * in4 * 16.
 *
 * Packed f16 weights: panels of 16 outputs, one 32-byte block per k:
 *     w[p][k][lane] = W[p*16 + lane][k]                (0 where out of range)
 * so one vcvtph2ps widens 16 output channels. Panel p starts at p * in * 16. */
#ifndef QN_CPU_KERNELS_IMPL_H
#define QN_CPU_KERNELS_IMPL_H

#include <stdint.h>

#include "cpu/kernels.h"

#define QN_PANEL 16

static inline int64_t qn_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* ---- int8 */
typedef struct {
    int64_t rows, in4, out;     /* in4: in rounded up to 4 */
    const uint8_t *xq;          /* [rows, ldq] quantized activations (padding k: any value) */
    int64_t ldq;                /* >= in4, multiple of 4 */
    int16_t *xq16;              /* avx2 path only: scratch [rows, ldq] for widened activations */
    const int32_t *zp;          /* [rows] zero points */
    const float *xs;            /* [rows] activation scales */
    const int8_t *w;            /* packed panels */
    const int32_t *colsum;      /* [out16] Σ_k W[o][k] */
    const float *wscale;        /* [out16] */
    const float *bias;          /* [out16], zeros when the layer has none */
    int relu;                   /* fuse ReLU into the epilogue */
    float *y;                   /* [rows, ldy] */
    int64_t ldy;
} qn_i8_args;

void qn_i8_gemm_portable(const qn_i8_args *a);
void qn_i8_gemm_avx2(const qn_i8_args *a);
void qn_i8_gemm_avxvnni(const qn_i8_args *a);
void qn_i8_gemm_avx512vnni(const qn_i8_args *a);

/* ---- f16 */
typedef struct {
    int64_t rows, in, out;
    const float *x;             /* [rows, ldx] */
    int64_t ldx;
    const uint16_t *w;          /* packed panels */
    const float *bias;          /* [out16], zeros when the layer has none */
    int relu;
    float *y;                   /* [rows, ldy] */
    int64_t ldy;
    float *tmp;                 /* portable path only: scratch [in * 16] floats */
} qn_f16_args;

void qn_f16_gemm_portable(const qn_f16_args *a);
void qn_f16_gemm_f16c(const qn_f16_args *a);     /* AVX2 + FMA + F16C, ymm */
void qn_f16_gemm_avx512(const qn_f16_args *a);   /* AVX-512F, zmm */

/* ---- CSR (bias and activation are applied by the caller's epilogue) */
typedef struct {
    int64_t rows, in, out;
    const int32_t *indptr, *indices;
    const float *vf;            /* f32 values, or NULL ... */
    const int8_t *vi;           /* ... int8 values with ... */
    const float *scale;         /* ... per-output scales */
    const float *x;             /* [rows, in] */
    float *xt;                  /* scratch: [in, QN_CSR_RB_MAX] transposed row block */
    float *y;                   /* [rows, out]: y = x·Wᵀ (no bias) */
} qn_csr_args;

/* Batched CSR transposes a block of rows to xt [in][RB] so that each nonzero
 * is one broadcast value times contiguous RB-row vectors; RB is 64 for full
 * blocks and 16 for the rest. Below QN_CSR_ROWWISE_BELOW rows each row is a
 * gather-dot instead (no transpose, no idle lanes). */
#define QN_CSR_RB_MAX 64
#define QN_CSR_ROWWISE_BELOW 2

void qn_csr_spmm_portable(const qn_csr_args *a);
void qn_csr_spmm_avx2(const qn_csr_args *a);
void qn_csr_spmm_avx512(const qn_csr_args *a);

/* Picks the path once (QN_KERNEL or the best), logging the choice. */
qn_kpath qn_kernel_path_init(void);

/* ---- per-layer packed state (l->kernel_data) */

/* Batch-size ranges over which a CSR layer's sparse/dense choice is made:
 * rows in [lo_i, lo_{i+1}). Each is decided with the crossover density
 * measured at a representative batch (kernels.c, bench/notes/kernels.md). */
#define QN_CSR_NRANGES 6

typedef struct {
    qn_kpath path;              /* the path it was packed for */
    qn_rep rep;
    int64_t in4, out16;
    float *bias;                /* [out16], zeros when the layer has none */
    int8_t *w8;                 /* I8: packed panels */
    int32_t *colsum;            /* I8: [out16] */
    float *wscale;              /* I8: [out16] */
    uint16_t *w16;              /* F16: packed panels */
    float *dense;               /* CSR: densified [out, in] f32, only if some range uses it */
    unsigned char sparse[QN_CSR_NRANGES]; /* CSR: 1 = sparse kernel for that range */
} qn_kpack;

/* Per-thread scratch: a few independent growable buffers. */
enum { QN_SCR_Q, QN_SCR_Q16, QN_SCR_F, QN_SCR_STATS, QN_SCR_COUNT };
struct qn_kernel_scratch {
    void *buf[QN_SCR_COUNT];
    size_t cap[QN_SCR_COUNT];
};
/* A 64-byte aligned buffer of at least bytes (contents undefined), or NULL. */
void *qn_scratch_get(qn_kernel_scratch *s, int slot, size_t bytes);

/* Representation drivers: prepare fills k (freed with the pack on failure
 * too), forward runs the whole layer including bias and activation. */
int qn_i8_prepare(const qn_layer *l, qn_kpack *k);
int qn_i8_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                  qn_kernel_scratch *s);
int qn_f16_prepare(const qn_layer *l, qn_kpack *k);
int qn_f16_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s);
int qn_csr_prepare(const qn_layer *l, qn_kpack *k);
int qn_csr_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s);
/* The range index for a batch size (0 .. QN_CSR_NRANGES-1). */
int qn_csr_range(int64_t rows);
/* y = act(x · Wᵀ + b) with a dense f32 W [out, in]: qn_cpu_dense_f32. */
int qn_dense_f32_forward(const float *w, int64_t in, int64_t out, const float *bias, qn_act act,
                          const float *x, int64_t rows, float *y);

#endif
