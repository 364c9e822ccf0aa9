/* sgemm_packed_avx2.c: the AVX2+FMA micro-kernels and blocking loops for
 * sgemm_packed.h, for x86-64 CPUs without AVX-512. Compiled with -mavx2 -mfma
 * (CMakeLists.txt) and only ever entered after qn_sgemm_packed_run has
 * checked the CPU.
 *
 * Same packed layout and loop structure as the AVX-512 file: a 16-column
 * panel row is two ymm here. A tile of MR rows x NV panels keeps 2*MR*NV ymm
 * accumulators (at most 12 of the 16 registers, leaving room for the panel
 * loads and the x broadcast, see g_tiles); the FMAs run in the same order as the AVX-512
 * kernel's, so both give bit-identical results. */
#include "cpu/sgemm_packed.h"

#if defined(QN_SGEMM_X86)

#include <immintrin.h>

#include "cpu/epilogue.h"

/* UNROLL / UNROLL_K and TILE_BODY as in sgemm_packed_avx512.c (see there
 * why the tile is a macro with literal MR, NV). */
#define UNROLL_STR(x) #x
#if defined(__clang__)
#define UNROLL(n) _Pragma("unroll")
#define UNROLL_K(n) _Pragma(UNROLL_STR(unroll n))
#else
#define UNROLL(n) _Pragma(UNROLL_STR(GCC unroll n))
#define UNROLL_K(n) _Pragma(UNROLL_STR(GCC unroll n))
#endif

/* Lanes j with j < c set (all-ones), for maskload/maskstore. */
static inline __m256i lanes_below(int c)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* One tile, MR rows x NV panels = 2*NV ymm columns (h): y[0..MR-1][0..ncols-1]
 * gets x times the NV panels at w; load continues a previous K block's sums,
 * fin adds the bias and applies relu. Columns at or past ncols are never
 * touched. */
#define TILE_BODY(MR, NV)                                                                                   \
    __m256 acc[MR][2 * NV];                                                                                 \
    __m256i mk[2 * NV];                                                                                     \
    UNROLL(8) for (int h = 0; h < 2 * NV; h++) mk[h] = lanes_below(ncols - 8 * h);                          \
    UNROLL(6) for (int m = 0; m < MR; m++)                                                                  \
    UNROLL(8) for (int h = 0; h < 2 * NV; h++)                                                              \
        acc[m][h] = load ? _mm256_maskload_ps(y + m * ldy + 8 * h, mk[h]) : _mm256_setzero_ps();            \
    UNROLL_K(2) for (int64_t k = 0; k < kc; k++)                                                            \
    {                                                                                                       \
        __m256 b[2 * NV];                                                                                   \
        UNROLL(8) for (int h = 0; h < 2 * NV; h++)                                                          \
            b[h] = _mm256_load_ps(w + (h >> 1) * pstride + 16 * k + 8 * (h & 1));                           \
        UNROLL(6) for (int m = 0; m < MR; m++)                                                              \
        {                                                                                                   \
            __m256 a = _mm256_broadcast_ss(x + m * ldx + k);                                                \
            UNROLL(8) for (int h = 0; h < 2 * NV; h++) acc[m][h] = _mm256_fmadd_ps(a, b[h], acc[m][h]);     \
        }                                                                                                   \
    }                                                                                                       \
    if (fin) {                                                                                              \
        /* as qn_cpu_epilogue: y + b, then relu as max(0, y): max returns                                   \
         * its second operand for NaN and +-0, so NaN stays NaN and -0 stays                                \
         * -0, as torch.relu and epilogue.c's `y < 0 ? 0 : y` do */                                         \
        const __m256 zero = _mm256_setzero_ps();                                                            \
        __m256 bv[2 * NV];                                                                                  \
        UNROLL(8) for (int h = 0; h < 2 * NV; h++) bv[h] = bias ? _mm256_maskload_ps(bias + 8 * h, mk[h]) : zero; \
        UNROLL(6) for (int m = 0; m < MR; m++)                                                              \
        UNROLL(8) for (int h = 0; h < 2 * NV; h++)                                                          \
        {                                                                                                   \
            if (bias) acc[m][h] = _mm256_add_ps(acc[m][h], bv[h]);                                          \
            if (relu) acc[m][h] = _mm256_max_ps(zero, acc[m][h]);                                           \
        }                                                                                                   \
    }                                                                                                       \
    UNROLL(6) for (int m = 0; m < MR; m++)                                                                  \
    UNROLL(8) for (int h = 0; h < 2 * NV; h++) _mm256_maskstore_ps(y + m * ldy + 8 * h, mk[h], acc[m][h]);

typedef void (*tile_fn)(const float *x, int64_t ldx, const float *w, int64_t pstride, int64_t kc, float *y,
                        int64_t ldy, int ncols, const float *bias, int load, int fin, int relu);

#define TILE_FN(MR, NV)                                                                                      \
    static void tile_##MR##x##NV(const float *restrict x, int64_t ldx, const float *restrict w,             \
                                 int64_t pstride, int64_t kc, float *restrict y, int64_t ldy, int ncols,    \
                                 const float *restrict bias, int load, int fin, int relu)                   \
    {                                                                                                        \
        TILE_BODY(MR, NV)                                                                                    \
    }
TILE_FN(1, 1) TILE_FN(2, 1) TILE_FN(3, 1) TILE_FN(4, 1) TILE_FN(5, 1) TILE_FN(6, 1)
TILE_FN(1, 2) TILE_FN(2, 2)
TILE_FN(1, 3)
TILE_FN(1, 4)

/* [mr][nv]: the tiles whose accumulators (2*mr*nv) plus panel loads (2*nv,
 * kept in registers when mr > 1) plus the broadcast fit 16 ymm; with one row
 * each panel load feeds a single FMA as a memory operand. 3x2 and 2x3 were
 * measured to spill in the inner loop. */
static const tile_fn g_tiles[7][5] = {
    [1] = {NULL, tile_1x1, tile_1x2, tile_1x3, tile_1x4},
    [2] = {NULL, tile_2x1, tile_2x2, NULL, NULL},
    [3] = {NULL, tile_3x1, NULL, NULL, NULL},
    [4] = {NULL, tile_4x1, NULL, NULL, NULL},
    [5] = {NULL, tile_5x1, NULL, NULL, NULL},
    [6] = {NULL, tile_6x1, NULL, NULL, NULL},
};

void qn_sgemm_packed_avx2(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                          qn_act act, float *y, int mr, int nv, int64_t kc, int64_t mc,
                          int64_t pb, int64_t pe, int epi)
{
    const int64_t K = p->in, N = p->out, pstride = QN_SGEMM_NR * K;
    const int relu = act == QN_ACT_RELU;
    /* the AVX-512 driver's loops, see there */
    for (int64_t r0 = 0; r0 < rows; r0 += mc) {
        int64_t mrows = rows - r0 < mc ? rows - r0 : mc;
        for (int64_t k0 = 0; k0 < K; k0 += kc) {
            int64_t kcur = K - k0 < kc ? K - k0 : kc;
            int load = k0 > 0, fin = k0 + kcur == K;
            for (int64_t p0 = pb; p0 < pe; p0 += nv) {
                int nvc = pe - p0 < nv ? (int)(pe - p0) : nv;
                int64_t c0 = QN_SGEMM_NR * p0;
                int ncols = N - c0 < QN_SGEMM_NR * nvc ? (int)(N - c0) : QN_SGEMM_NR * nvc;
                const float *wp = p->panels + p0 * pstride + QN_SGEMM_NR * k0;
                for (int64_t r = r0; r < r0 + mrows; r += mr) {
                    int mrc = r0 + mrows - r < mr ? (int)(r0 + mrows - r) : mr;
                    g_tiles[mrc][nvc](x + r * K + k0, K, wp, pstride, kcur, y + r * N + c0, N, ncols,
                                      bias ? bias + c0 : NULL, load, fin, relu);
                }
            }
        }
        if (epi && act != QN_ACT_NONE && act != QN_ACT_RELU)
            qn_cpu_epilogue(y + r0 * N, mrows, N, N, NULL, act);
    }
}

#endif /* QN_SGEMM_X86 */
