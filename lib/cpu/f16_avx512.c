/* f16_avx512.c: the fp16-weight GEMM on AVX-512F. Compiled with -mavx512f
 * -mavx512bw -mavx512vl (CMakeLists.txt), called on the avx512vnni path.
 * Weights stay f16 in memory, so a memory-bound batch-1 pass reads half the
 * bytes of f32; vcvtph2ps widens 16 output channels of one k per load (panel
 * layout, kernels_impl.h) right before the FMAs. Blocking: MR rows x NV
 * panels of zmm accumulators (6 x 4 = 24 of 32 registers); a single row uses
 * 8 panels instead, so that 8 independent FMA chains hide the FMA latency. */
#include <immintrin.h>

#include "cpu/kernels_impl.h"

#define MR_MAX 6
#define NV_MAX 8

static inline __attribute__((always_inline)) void kern(const qn_f16_args *a, int64_t r0, int64_t p0,
                                                      const int MR, const int NV)
{
    const int64_t pstride = a->in * QN_PANEL;
    const uint16_t *wp = a->w + p0 * pstride;
    const float *x = a->x + r0 * a->ldx;
    __m512 acc[MR_MAX][NV_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();

    for (int64_t k = 0; k < a->in; k++) {
        __m512 w[NV_MAX];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            w[v] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wp + v * pstride + k * QN_PANEL)));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            const __m512 b = _mm512_set1_ps(x[r * a->ldx + k]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(b, w[v], acc[r][v]);
        }
    }

#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        const int64_t o0 = (p0 + v) * QN_PANEL, n = a->out - o0;
        const __mmask16 m = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
        const __m512 bs = _mm512_loadu_ps(a->bias + o0);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512 f = _mm512_add_ps(acc[r][v], bs);
            if (a->relu) f = _mm512_max_ps(_mm512_setzero_ps(), f); /* NaN stays: max returns its second operand */
            _mm512_mask_storeu_ps(a->y + (r0 + r) * a->ldy + o0, m, f);
        }
    }
}

#define K(mr, nv) static void kern_##mr##_##nv(const qn_f16_args *a, int64_t r0, int64_t p0) { kern(a, r0, p0, mr, nv); }
#define KROW(mr) K(mr, 1) K(mr, 2) K(mr, 3) K(mr, 4)
KROW(1) KROW(2) KROW(3) KROW(4) KROW(5) KROW(6)
K(1, 5) K(1, 6) K(1, 7) K(1, 8)
#undef KROW
#undef K

typedef void (*kern_fn)(const qn_f16_args *, int64_t, int64_t);
static const kern_fn g_kern[MR_MAX][4] = {
#define KROW(mr) {kern_##mr##_1, kern_##mr##_2, kern_##mr##_3, kern_##mr##_4}
    KROW(1), KROW(2), KROW(3), KROW(4), KROW(5), KROW(6)
#undef KROW
};
static const kern_fn g_kern_row[NV_MAX] = {kern_1_1, kern_1_2, kern_1_3, kern_1_4,
                                           kern_1_5, kern_1_6, kern_1_7, kern_1_8};

void qn_f16_gemm_avx512(const qn_f16_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    if (a->rows == 1) {
        for (int64_t p0 = 0; p0 < npan; p0 += NV_MAX)
            g_kern_row[(npan - p0 < NV_MAX ? npan - p0 : NV_MAX) - 1](a, 0, p0);
        return;
    }
    for (int64_t p0 = 0; p0 < npan; p0 += 4) {
        const int nv = (int)(npan - p0 < 4 ? npan - p0 : 4);
        for (int64_t r0 = 0; r0 < a->rows; r0 += MR_MAX) {
            const int mr = (int)(a->rows - r0 < MR_MAX ? a->rows - r0 : MR_MAX);
            g_kern[mr - 1][nv - 1](a, r0, p0);
        }
    }
}
