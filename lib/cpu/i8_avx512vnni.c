/* i8_avx512vnni.c: the int8 GEMM with AVX-512 VNNI (vpdpbusd: 64 u8·s8
 * products summed into 16 int32 lanes per instruction). Compiled with
 * -mavx512f -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt) and only
 * called when dispatch.c found those features.
 *
 * Register blocking: MR activation rows x NV panels of 16 outputs, MR*NV zmm
 * accumulators (6 x 4 = 24 of 32 registers); per group of 4 k, NV weight loads
 * and MR 4-byte broadcasts feed MR*NV vpdpbusd. The panel layout makes each
 * accumulator lane one output channel, so the epilogue (zero-point
 * correction, dequantize, bias, ReLU) runs on whole vectors and the tail of
 * `out` is a masked store. */
#include <immintrin.h>
#include <string.h>

#include "cpu/kernels_impl.h"

#define MR_MAX 6
#define NV_MAX 4

/* vpdpbusd through inline asm: gcc 12 compiles _mm512_dpbusd_epi32 in an
 * unrolled loop with a register copy per call and spills the accumulators to
 * the stack every iteration (2.5x slower); "+v" keeps each accumulator in
 * its register and updated in place. */
static inline __attribute__((always_inline)) __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8)
{
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
}

static inline __attribute__((always_inline)) void kern(const qn_i8_args *a, int64_t r0, int64_t p0,
                                                      const int MR, const int NV)
{
    const int64_t ngrp = a->in4 / 4, pstride = a->in4 * QN_PANEL;
    const int8_t *wp = a->w + p0 * pstride;
    const uint8_t *xq = a->xq + r0 * a->ldq;
    __m512i acc[MR_MAX][NV_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_si512();

    for (int64_t g = 0; g < ngrp; g++) {
        __m512i w[NV_MAX];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) w[v] = _mm512_loadu_si512((const void *)(wp + v * pstride + g * 64));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            int32_t x4;
            memcpy(&x4, xq + r * a->ldq + g * 4, 4);
            const __m512i b = _mm512_set1_epi32(x4);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[r][v] = dpbusd(acc[r][v], b, w[v]);
        }
    }

#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        const int64_t o0 = (p0 + v) * QN_PANEL;
        const __m512i cs = _mm512_loadu_si512((const void *)(a->colsum + o0));
        const __m512 ws = _mm512_loadu_ps(a->wscale + o0);
        const __m512 bs = _mm512_loadu_ps(a->bias + o0);
        const int64_t n = a->out - o0;
        const __mmask16 m = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m512i c = _mm512_sub_epi32(acc[r][v], _mm512_mullo_epi32(_mm512_set1_epi32(a->zp[r0 + r]), cs));
            __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(_mm512_set1_ps(a->xs[r0 + r]), ws), bs);
            if (a->relu) f = _mm512_max_ps(_mm512_setzero_ps(), f); /* NaN stays: max returns its second operand */
            _mm512_mask_storeu_ps(a->y + (r0 + r) * a->ldy + o0, m, f);
        }
    }
}

#define K(mr, nv) static void kern_##mr##_##nv(const qn_i8_args *a, int64_t r0, int64_t p0) { kern(a, r0, p0, mr, nv); }
#define KROW(mr) K(mr, 1) K(mr, 2) K(mr, 3) K(mr, 4)
KROW(1) KROW(2) KROW(3) KROW(4) KROW(5) KROW(6)
#undef KROW
#undef K

typedef void (*kern_fn)(const qn_i8_args *, int64_t, int64_t);
static const kern_fn g_kern[MR_MAX][NV_MAX] = {
#define KROW(mr) {kern_##mr##_1, kern_##mr##_2, kern_##mr##_3, kern_##mr##_4}
    KROW(1), KROW(2), KROW(3), KROW(4), KROW(5), KROW(6)
#undef KROW
};

void qn_i8_gemm_avx512vnni(const qn_i8_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    /* panels outer: a block of NV panels (64 outputs x in bytes) stays in L2
     * while every row block streams past it */
    for (int64_t p0 = 0; p0 < npan; p0 += NV_MAX) {
        const int nv = (int)(npan - p0 < NV_MAX ? npan - p0 : NV_MAX);
        for (int64_t r0 = 0; r0 < a->rows; r0 += MR_MAX) {
            const int mr = (int)(a->rows - r0 < MR_MAX ? a->rows - r0 : MR_MAX);
            g_kern[mr - 1][nv - 1](a, r0, p0);
        }
    }
}

/* ---- the activation quantizer's passes (kernels_impl.h), 16 lanes */

int qn_i8_range_avx512(const float *x, int64_t n, float *pmn, float *pmx)
{
    __m512 mn0 = _mm512_setzero_ps(), mn1 = mn0, mx0 = mn0, mx1 = mn0;
    const __m512i em = _mm512_set1_epi32(0x7f800000);
    __mmask16 nf = 0;
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        const __m512 a = _mm512_loadu_ps(x + k), b = _mm512_loadu_ps(x + k + 16);
        mn0 = _mm512_min_ps(mn0, a);
        mn1 = _mm512_min_ps(mn1, b);
        mx0 = _mm512_max_ps(mx0, a);
        mx1 = _mm512_max_ps(mx1, b);
        nf |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(a), em), em);
        nf |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(b), em), em);
    }
    for (; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        const __m512 a = _mm512_maskz_loadu_ps(m, x + k); /* zeros past n: inside the range already */
        mn0 = _mm512_min_ps(mn0, a);
        mx0 = _mm512_max_ps(mx0, a);
        nf |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(a), em), em);
    }
    float lo[16], hi[16], mn = 0.0f, mx = 0.0f;
    _mm512_storeu_ps(lo, _mm512_min_ps(mn0, mn1));
    _mm512_storeu_ps(hi, _mm512_max_ps(mx0, mx1));
    for (int j = 0; j < 16; j++) {
        mn = lo[j] < mn ? lo[j] : mn;
        mx = hi[j] > mx ? hi[j] : mx;
    }
    *pmn = mn;
    *pmx = mx;
    return nf != 0;
}

void qn_i8_apply_avx512(const float *x, int64_t n, float inv, float lo, float hi, float z, uint8_t *q)
{
    const __m512 vinv = _mm512_set1_ps(inv), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi),
                 vz = _mm512_set1_ps(z), magic = _mm512_set1_ps(12582912.0f);
    for (int64_t k = 0; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
        __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), vinv);
        t = _mm512_min_ps(_mm512_max_ps(t, vlo), vhi);
        t = _mm512_add_ps(_mm512_sub_ps(_mm512_add_ps(t, magic), magic), vz);
        /* an integer in [0, 255]: the saturating narrow is exact */
        _mm_mask_storeu_epi8(q + k, m, _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(t)));
    }
}
