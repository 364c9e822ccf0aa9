/* i8_avx2.c: the int8 GEMM for AVX2 CPUs without VNNI. Compiled with -mavx2
 * -mfma (CMakeLists.txt), called only when dispatch.c found them.
 *
 * Why not vpmaddubsw: it sums two u8·s8 products into a saturating int16,
 * and 255·127·2 = 64770 does not fit, so with full-range u8 activations it
 * silently clips. Instead both operands are widened to int16 (activations
 * once per row, by the driver, weights with vpmovsxbw as they are loaded) and vpmaddwd sums
 * pairs of int16 products into int32 exactly, so the sums equal the other
 * paths' bit for bit. One 64-byte panel block (16 outputs x 4 k) becomes four
 * ymm of 4 outputs x 4 k; vpmaddwd leaves two partial sums per output, which
 * the epilogue folds with one vphaddd per 8 outputs. Blocking: MR = 2 rows x
 * one panel (8 accumulators, 2 broadcasts, 1 weight). */
#include <immintrin.h>
#include <string.h>

#include "cpu/kernels_impl.h"

#define MR_MAX 2

static inline __attribute__((always_inline)) void kern(const qn_i8_args *a, int64_t r0, int64_t p,
                                                      const int MR)
{
    const int64_t ngrp = a->in4 / 4;
    const int8_t *wp = a->w + p * a->in4 * QN_PANEL;
    const int16_t *x16 = a->xq16 + r0 * a->ldq;
    __m256i acc[MR_MAX][4];
#pragma GCC unroll 4
    for (int r = 0; r < MR; r++)
        for (int i = 0; i < 4; i++) acc[r][i] = _mm256_setzero_si256();

    for (int64_t g = 0; g < ngrp; g++) {
        __m256i b[MR_MAX];
#pragma GCC unroll 4
        for (int r = 0; r < MR; r++) {
            int64_t x4;
            memcpy(&x4, x16 + r * a->ldq + g * 4, 8);
            b[r] = _mm256_set1_epi64x(x4);
        }
        /* one widened weight vector live at a time keeps 8 accumulators, 2
         * broadcasts, 1 weight and 1 product in 12 of the 16 registers */
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wp + g * 64 + i * 16)));
#pragma GCC unroll 4
            for (int r = 0; r < MR; r++) acc[r][i] = _mm256_add_epi32(acc[r][i], _mm256_madd_epi16(b[r], w));
        }
    }

    const int64_t o0 = p * QN_PANEL, n = a->out - o0 < QN_PANEL ? a->out - o0 : QN_PANEL;
#pragma GCC unroll 4
    for (int r = 0; r < MR; r++) {
        float tmp[QN_PANEL];
        float *dst = n == QN_PANEL ? a->y + (r0 + r) * a->ldy + o0 : tmp;
        const __m256i zp = _mm256_set1_epi32(a->zp[r0 + r]);
        const __m256 xs = _mm256_set1_ps(a->xs[r0 + r]);
        for (int h = 0; h < 2; h++) {
            /* [o0 o1 o4 o5 | o2 o3 o6 o7] -> [o0 .. o7] */
            __m256i s = _mm256_hadd_epi32(acc[r][2 * h], acc[r][2 * h + 1]);
            s = _mm256_permute4x64_epi64(s, _MM_SHUFFLE(3, 1, 2, 0));
            const __m256i cs = _mm256_loadu_si256((const __m256i *)(a->colsum + o0 + h * 8));
            const __m256 ws = _mm256_loadu_ps(a->wscale + o0 + h * 8);
            const __m256 bs = _mm256_loadu_ps(a->bias + o0 + h * 8);
            __m256i c = _mm256_sub_epi32(s, _mm256_mullo_epi32(zp, cs));
            __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(xs, ws), bs);
            if (a->relu) f = _mm256_max_ps(_mm256_setzero_ps(), f); /* NaN stays: max returns its second operand */
            _mm256_storeu_ps(dst + h * 8, f);
        }
        if (dst == tmp) memcpy(a->y + (r0 + r) * a->ldy + o0, tmp, (size_t)n * sizeof(float));
    }
}

static void kern_1(const qn_i8_args *a, int64_t r0, int64_t p) { kern(a, r0, p, 1); }
static void kern_2(const qn_i8_args *a, int64_t r0, int64_t p) { kern(a, r0, p, 2); }

void qn_i8_gemm_avx2(const qn_i8_args *a)
{
    /* the activations were widened to int16 once by the driver (quant.c),
     * so that every panel (and intra-op chunk) reuses them */
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    for (int64_t p = 0; p < npan; p++)
        for (int64_t r0 = 0; r0 < a->rows; r0 += MR_MAX) {
            if (a->rows - r0 >= 2) kern_2(a, r0, p);
            else kern_1(a, r0, p);
        }
}

/* ---- the activation quantizer's passes (kernels_impl.h), 8 lanes; also
 * used on the avxvnni path (AVX2 is all they need) */

int qn_i8_range_avx2(const float *x, int64_t n, float *pmn, float *pmx)
{
    __m256 mn0 = _mm256_setzero_ps(), mn1 = mn0, mx0 = mn0, mx1 = mn0;
    const __m256i em = _mm256_set1_epi32(0x7f800000);
    __m256i nf = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        const __m256 a = _mm256_loadu_ps(x + k), b = _mm256_loadu_ps(x + k + 8);
        mn0 = _mm256_min_ps(mn0, a);
        mn1 = _mm256_min_ps(mn1, b);
        mx0 = _mm256_max_ps(mx0, a);
        mx1 = _mm256_max_ps(mx1, b);
        nf = _mm256_or_si256(nf, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(a), em), em));
        nf = _mm256_or_si256(nf, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(b), em), em));
    }
    float lo[8], hi[8], mn = 0.0f, mx = 0.0f;
    _mm256_storeu_ps(lo, _mm256_min_ps(mn0, mn1));
    _mm256_storeu_ps(hi, _mm256_max_ps(mx0, mx1));
    for (int j = 0; j < 8; j++) {
        mn = lo[j] < mn ? lo[j] : mn;
        mx = hi[j] > mx ? hi[j] : mx;
    }
    uint32_t nonfinite = _mm256_movemask_epi8(nf) != 0;
    nonfinite = qn_i8_range_tail(x, k, n, &mn, &mx, nonfinite);
    *pmn = mn;
    *pmx = mx;
    return nonfinite != 0;
}

void qn_i8_apply_avx2(const float *x, int64_t n, float inv, float lo, float hi, float z, uint8_t *q)
{
    const __m256 vinv = _mm256_set1_ps(inv), vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi),
                 vz = _mm256_set1_ps(z), magic = _mm256_set1_ps(12582912.0f);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m256i v[2];
        for (int j = 0; j < 2; j++) {
            __m256 t = _mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), vinv);
            t = _mm256_min_ps(_mm256_max_ps(t, vlo), vhi);
            t = _mm256_add_ps(_mm256_sub_ps(_mm256_add_ps(t, magic), magic), vz);
            v[j] = _mm256_cvttps_epi32(t);
        }
        /* integers in [0, 255]: the saturating packs are exact; the packs
         * work per 128-bit lane, so restore the order before storing */
        __m256i w = _mm256_packs_epi32(v[0], v[1]);             /* a0-3 b0-3 | a4-7 b4-7 */
        w = _mm256_permute4x64_epi64(w, _MM_SHUFFLE(3, 1, 2, 0)); /* a0-3 a4-7 | b0-3 b4-7 */
        const __m128i b8 = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *)(q + k), b8);
    }
    for (; k < n; k++) {
        float t = x[k] * inv;
        t = t > lo ? t : lo;
        t = t < hi ? t : hi;
        q[k] = (uint8_t)(int32_t)(((t + 12582912.0f) - 12582912.0f) + z);
    }
}
