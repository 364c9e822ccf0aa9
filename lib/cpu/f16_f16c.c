/* f16_f16c.c: the fp16-weight GEMM on AVX2 + FMA + F16C (ymm), for the avx2
 * and avxvnni paths. Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
 * Same panel layout as the AVX-512 kernel: a 16-output panel is two ymm per
 * k, each widened by one vcvtph2ps. Blocking: MR = 6 rows x one panel (12
 * accumulators + 2 weights + 1 broadcast of 16 registers); a single row runs
 * 3 panels at once (6 independent FMA chains). */
#include <immintrin.h>
#include <string.h>

#include "cpu/kernels_impl.h"

#define MR_MAX 6
#define NV_MAX 3

static inline __attribute__((always_inline)) void kern(const qn_f16_args *a, int64_t r0, int64_t p0,
                                                      const int MR, const int NV)
{
    const int64_t pstride = a->in * QN_PANEL;
    const uint16_t *wp = a->w + p0 * pstride;
    const float *x = a->x + r0 * a->ldx;
    __m256 acc[MR_MAX][2 * NV_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 8
        for (int v = 0; v < 2 * NV; v++) acc[r][v] = _mm256_setzero_ps();

    for (int64_t k = 0; k < a->in; k++) {
        __m256 w[2 * NV_MAX];
#pragma GCC unroll 8
        for (int v = 0; v < 2 * NV; v++)
            w[v] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wp + (v / 2) * pstride + k * QN_PANEL + (v % 2) * 8)));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            const __m256 b = _mm256_broadcast_ss(x + r * a->ldx + k);
#pragma GCC unroll 8
            for (int v = 0; v < 2 * NV; v++) acc[r][v] = _mm256_fmadd_ps(b, w[v], acc[r][v]);
        }
    }

#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        const int64_t o0 = (p0 + v) * QN_PANEL, n = a->out - o0 < QN_PANEL ? a->out - o0 : QN_PANEL;
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            float tmp[QN_PANEL];
            float *dst = n == QN_PANEL ? a->y + (r0 + r) * a->ldy + o0 : tmp;
            for (int h = 0; h < 2; h++) {
                __m256 f = _mm256_add_ps(acc[r][2 * v + h], _mm256_loadu_ps(a->bias + o0 + h * 8));
                if (a->relu) f = _mm256_max_ps(_mm256_setzero_ps(), f); /* NaN stays: max returns its second operand */
                _mm256_storeu_ps(dst + h * 8, f);
            }
            if (dst == tmp) memcpy(a->y + (r0 + r) * a->ldy + o0, tmp, (size_t)n * sizeof(float));
        }
    }
}

#define K(mr, nv) static void kern_##mr##_##nv(const qn_f16_args *a, int64_t r0, int64_t p0) { kern(a, r0, p0, mr, nv); }
K(1, 1) K(2, 1) K(3, 1) K(4, 1) K(5, 1) K(6, 1) K(1, 2) K(1, 3)
#undef K

typedef void (*kern_fn)(const qn_f16_args *, int64_t, int64_t);
static const kern_fn g_kern[MR_MAX] = {kern_1_1, kern_2_1, kern_3_1, kern_4_1, kern_5_1, kern_6_1};
static const kern_fn g_kern_row[NV_MAX] = {kern_1_1, kern_1_2, kern_1_3};

void qn_f16_gemm_f16c(const qn_f16_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    if (a->rows == 1) {
        for (int64_t p0 = 0; p0 < npan; p0 += NV_MAX)
            g_kern_row[(npan - p0 < NV_MAX ? npan - p0 : NV_MAX) - 1](a, 0, p0);
        return;
    }
    for (int64_t p = 0; p < npan; p++)
        for (int64_t r0 = 0; r0 < a->rows; r0 += MR_MAX) {
            const int mr = (int)(a->rows - r0 < MR_MAX ? a->rows - r0 : MR_MAX);
            g_kern[mr - 1](a, r0, p);
        }
}
