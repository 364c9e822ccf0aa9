/* i8_avxvnni.c: the int8 GEMM with AVX-VNNI (the VEX-encoded vpdpbusd of
 * Alder Lake / Sapphire Rapids and later, on ymm registers). Compiled with
 * -mavx2 -mfma -mavxvnni (CMakeLists.txt) and only called when dispatch.c
 * found AVX-VNNI. Same panel layout as the AVX-512 path: one 64-byte block is
 * two ymm of 8 outputs x 4 k. Blocking: MR = 6 rows x one panel (12 ymm
 * accumulators + 2 weights + 1 broadcast of the 16 registers). */
#include <immintrin.h>
#include <string.h>

#include "cpu/kernels_impl.h"

#define MR_MAX 6

/* vpdpbusd through inline asm, as in i8_avx512vnni.c: gcc 12 copies and
 * spills the accumulators around the intrinsic. {vex} pins the AVX-VNNI
 * encoding (braces escaped: gcc reads {a|b} in asm as dialect choices). */
static inline __attribute__((always_inline)) __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8)
{
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u8), "x"(s8));
    return acc;
}

static inline __attribute__((always_inline)) void kern(const qn_i8_args *a, int64_t r0, int64_t p,
                                                      const int MR)
{
    const int64_t ngrp = a->in4 / 4;
    const int8_t *wp = a->w + p * a->in4 * QN_PANEL;
    const uint8_t *xq = a->xq + r0 * a->ldq;
    __m256i acc[MR_MAX][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();

    for (int64_t g = 0; g < ngrp; g++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wp + g * 64));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wp + g * 64 + 32));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            int32_t x4;
            memcpy(&x4, xq + r * a->ldq + g * 4, 4);
            const __m256i b = _mm256_set1_epi32(x4);
            acc[r][0] = dpbusd(acc[r][0], b, w0);
            acc[r][1] = dpbusd(acc[r][1], b, w1);
        }
    }

    const int64_t o0 = p * QN_PANEL, n = a->out - o0 < QN_PANEL ? a->out - o0 : QN_PANEL;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        float tmp[QN_PANEL];
        float *dst = n == QN_PANEL ? a->y + (r0 + r) * a->ldy + o0 : tmp;
        const __m256i zp = _mm256_set1_epi32(a->zp[r0 + r]);
        const __m256 xs = _mm256_set1_ps(a->xs[r0 + r]);
        for (int h = 0; h < 2; h++) {
            const __m256i cs = _mm256_loadu_si256((const __m256i *)(a->colsum + o0 + h * 8));
            const __m256 ws = _mm256_loadu_ps(a->wscale + o0 + h * 8);
            const __m256 bs = _mm256_loadu_ps(a->bias + o0 + h * 8);
            __m256i c = _mm256_sub_epi32(acc[r][h], _mm256_mullo_epi32(zp, cs));
            __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(xs, ws), bs);
            if (a->relu) f = _mm256_max_ps(_mm256_setzero_ps(), f); /* NaN stays: max returns its second operand */
            _mm256_storeu_ps(dst + h * 8, f);
        }
        if (dst == tmp) memcpy(a->y + (r0 + r) * a->ldy + o0, tmp, (size_t)n * sizeof(float));
    }
}

#define K(mr) static void kern_##mr(const qn_i8_args *a, int64_t r0, int64_t p) { kern(a, r0, p, mr); }
K(1) K(2) K(3) K(4) K(5) K(6)
#undef K

typedef void (*kern_fn)(const qn_i8_args *, int64_t, int64_t);
static const kern_fn g_kern[MR_MAX] = {kern_1, kern_2, kern_3, kern_4, kern_5, kern_6};

void qn_i8_gemm_avxvnni(const qn_i8_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    for (int64_t p = 0; p < npan; p++)
        for (int64_t r0 = 0; r0 < a->rows; r0 += MR_MAX) {
            const int mr = (int)(a->rows - r0 < MR_MAX ? a->rows - r0 : MR_MAX);
            g_kern[mr - 1](a, r0, p);
        }
}
