/* kernels_impl.h: what the per-ISA kernel files share with the drivers in
 * quant.c / f16.c / csr.c and the dispatcher kernels.c: packed layouts and
 * argument blocks. Types and prototypes only; the helpers every kernel
 * uses (scratch, panel geometry, NaN/Inf rows, the intra-op split) are
 * kcommon.h. Private to lib/cpu/ (and the kernel unit test); the contract
 * is kernels.h.
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
#include <string.h>

#include "cpu/kcommon.h"
#include "cpu/kernels.h"
#include "cpu/pool.h"
#include "cpu/sgemm_packed.h"

/* ---- int8 */
typedef struct {
    qn_kpath path;              /* which kernel the driver runs (unused by the kernels) */
    int64_t rows, in4, out;     /* in4: in rounded up to 4 */
    const uint8_t *xq;          /* [rows, ldq] quantized activations (padding k: any value) */
    int64_t ldq;                /* >= in4, multiple of 4 */
    const int16_t *xq16;        /* avx2 path only: xq widened to int16 [rows, ldq] (by the driver) */
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

/* The int8 activation quantizer's two vector passes (quant.c, which keeps
 * the scalar decisions between them and the baseline versions): range:
 * mn = min(0, min x), mx = max(0, max x), returns 1 if x holds NaN/Inf
 * (mn, mx then meaningless); apply: q[k] = round_even(clamp(x[k]·inv, lo,
 * hi)) + z. Bit-identical to quant.c's on every path. avx2: AVX2 CPUs
 * (the avx2 and avxvnni paths). */
/* The scalar end of a range pass, shared by the baseline and the AVX2
 * versions so that both decide alike: folds x[k..n) into *mn, *mx and
 * returns nonfinite, or'ed with whether that tail holds NaN/Inf. */
static inline uint32_t qn_i8_range_tail(const float *x, int64_t k, int64_t n, float *mn, float *mx,
                                        uint32_t nonfinite)
{
    float lo = *mn, hi = *mx;
    for (; k < n; k++) {
        uint32_t u;
        memcpy(&u, x + k, sizeof u);
        nonfinite |= (u & 0x7f800000u) == 0x7f800000u;
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
    }
    *mn = lo;
    *mx = hi;
    return nonfinite;
}
int qn_i8_range_avx512(const float *x, int64_t n, float *mn, float *mx);
void qn_i8_apply_avx512(const float *x, int64_t n, float inv, float lo, float hi, float z, uint8_t *q);
int qn_i8_range_avx2(const float *x, int64_t n, float *mn, float *mx);
void qn_i8_apply_avx2(const float *x, int64_t n, float inv, float lo, float hi, float z, uint8_t *q);

void qn_i8_gemm_portable(const qn_i8_args *a);
void qn_i8_gemm_avx2(const qn_i8_args *a);
void qn_i8_gemm_avxvnni(const qn_i8_args *a);
void qn_i8_gemm_avx512vnni(const qn_i8_args *a);

/* ---- f16 */
typedef struct {
    qn_kpath path;              /* which kernel the driver runs (unused by the kernels) */
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

/* Packed CSR for small batches ("row-block ELL per column window"), built at
 * prepare from the CSR arrays for the AVX2 / AVX-512 paths. Outputs are
 * grouped in blocks of R rows (one vector lane per output row: R = 16 zmm,
 * 8 ymm) and the input in windows of W columns small enough to sit in
 * registers (W = 32: two zmm, looked up with vpermt2ps; W = 8: one ymm,
 * vpermps). For each block, each window holding a nonzero of one of its rows
 * is a segment of `steps` = (most nonzeros any of the R rows has in that
 * window) steps; step s carries, per lane, the s-th nonzero of that row in
 * the window as a column offset within the window (idx, a byte) and its value
 * (0 and offset 0 once the row has no more there). A step is then one
 * register permute of the window (no memory gather) and one FMA into the
 * block's accumulator, which needs no horizontal reduction.
 *     block b: segments seg[blk_seg[b] .. blk_seg[b+1]), their steps in order
 *     from step blk_step[b]; step t: idx[t*R .. t*R+R), v*[t*R .. t*R+R)
 * Padding lanes multiply x[window start] by 0: an inf/NaN input there makes
 * those outputs NaN, as the dense path would (the plain CSR kernels do not
 * touch it). */
typedef struct {
    uint32_t col;               /* first column of the window (multiple of W) */
    uint32_t steps;             /* 1 .. W */
} qn_csr_seg;

typedef struct {
    int R, W;
    int64_t nblk, nseg, nsteps;
    int64_t *blk_seg;           /* [nblk + 1] */
    int64_t *blk_step;          /* [nblk + 1] */
    qn_csr_seg *seg;            /* [nseg] */
    uint8_t *idx;               /* [nsteps * R] column offset in the window */
    float *vf;                  /* [nsteps * R] f32 values, or NULL ... */
    int8_t *vi;                 /* ... int8 values with ... */
    float *scale;               /* ... [nblk * R] per-output scales (0 past out) */
} qn_csr_pack;

/* The packed kernels run at most this many rows at once (larger calls are
 * split): one accumulator and one x window per row stay in registers. */
#define QN_CSR_PACK_ROWS 8

typedef struct {
    qn_kpath path;              /* which kernel the driver runs (unused by the kernels) */
    int64_t rows, in, out;
    const int32_t *indptr, *indices;
    const float *vf;            /* f32 values, or NULL ... */
    const int8_t *vi;           /* ... int8 values with ... */
    const float *scale;         /* ... per-output scales */
    const qn_csr_pack *pack;    /* packed form for the path, or NULL (portable) */
    const float *x;             /* [rows, in] */
    float *xt;                  /* scratch: [in, QN_CSR_RB_MAX] transposed row block */
    float *y;                   /* [rows, out]: y = x·Wᵀ (no bias) */
    /* Outputs [o_begin, o_end) only (an intra-op chunk; 0, out: all). The
     * packed kernels take bounds on their R-row blocks (multiples of
     * pack->R, or o_end == out), the portable one any; the blocked kernel
     * (QN_CSR_PACKED_BELOW rows and up) always computes all outputs. */
    int64_t o_begin, o_end;
} qn_csr_args;

/* Batched CSR transposes a block of rows to xt [in][RB] so that each nonzero
 * is one broadcast value times contiguous RB-row vectors; RB is 64 for full
 * blocks and 16 for the rest. Below QN_CSR_PACKED_BELOW rows (per ISA) the
 * packed kernel runs instead (x stays in registers, nothing is transposed):
 * on AVX-512 it beat the blocked kernel at 1-8 rows at every density
 * measured; on AVX2 (8-column windows, twice the segments) only up to 4 rows
 * (bench/notes/csr.md). */
#define QN_CSR_RB_MAX 64
#define QN_CSR_PACKED_BELOW_AVX512 9
#define QN_CSR_PACKED_BELOW_AVX2 5
#define QN_CSR_PACKED_BELOW QN_CSR_PACKED_BELOW_AVX512 /* the larger of the two */

void qn_csr_spmm_portable(const qn_csr_args *a);
void qn_csr_spmm_avx2(const qn_csr_args *a);
void qn_csr_spmm_avx512(const qn_csr_args *a);

/* Builds the packed form with R lanes and W-column windows (R <= 16, W <= 32)
 * from checked CSR arrays: int8 values vi with per-output scale when scale
 * is non-NULL, else f32 values vf (either may be NULL when there are no
 * nonzeros). 0 or QN_ENOMEM; *out_pack is NULL on failure.
 * qn_csr_pack_free: NULL-safe. */
int qn_csr_pack_build(int64_t in, int64_t out, const int32_t *indptr, const int32_t *indices, const float *vf,
                      const int8_t *vi, const float *scale, int R, int W, qn_csr_pack **out_pack);
void qn_csr_pack_free(qn_csr_pack *p);

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
    qn_sgemm_packed *dense_pw;  /* CSR: dense packed for the f32 packed GEMM, with dense (NULL: BLAS only) */
    qn_csr_pack *csrp;          /* CSR: packed small-batch form (AVX2 / AVX-512 paths) */
    unsigned char sparse[QN_CSR_NRANGES]; /* CSR: 1 = sparse kernel for that range */
} qn_kpack;

/* Representation drivers: prepare fills k (freed with the pack on failure
 * too), forward runs the whole layer including bias and activation, with
 * its output panels split over pool where qn_kernel_split_wins (pool NULL:
 * never). */
int qn_i8_prepare(const qn_layer *l, qn_kpack *k);
int qn_i8_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                  qn_kernel_scratch *s, qn_cpu_pool *pool);
int qn_f16_prepare(const qn_layer *l, qn_kpack *k);
int qn_f16_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s, qn_cpu_pool *pool);
int qn_csr_prepare(const qn_layer *l, qn_kpack *k);
int qn_csr_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s, qn_cpu_pool *pool);
/* The range index for a batch size (0 .. QN_CSR_NRANGES-1). */
int qn_csr_range(int64_t rows);

#endif
