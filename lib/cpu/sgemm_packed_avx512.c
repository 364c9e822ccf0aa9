/* sgemm_packed_avx512.c: the AVX-512F micro-kernels and blocking loops for
 * sgemm_packed.h. Compiled with -mavx512f -mfma (CMakeLists.txt) and only
 * ever entered after qn_sgemm_packed_run has checked the CPU, so nothing here
 * may run at load time.
 *
 * One panel row (16 output columns at one k) is exactly one zmm. A tile of
 * MR rows x NV panels keeps MR*NV zmm accumulators; each k costs NV aligned
 * panel loads, MR broadcasts of x and MR*NV FMAs. The tile shapes are
 * instantiated at compile time (fully unrolled, so the accumulators live in
 * registers) and picked from a table at run time. */
#include "cpu/sgemm_packed.h"

#if defined(QN_SGEMM_X86)

#include <immintrin.h>

#include "cpu/epilogue.h"

/* TILE_BODY(MR, NV) is one tile, MR rows x NV panels, with MR and NV
 * literal constants: y[0..MR-1][0..ncols-1] (ld ldy) gets x[0..MR-1][0..kc-1]
 * (ld ldx) times the panels at w (panel v at w + v*pstride). load: continue
 * the sums already in y (a later K block); fin: this is the last K block, add
 * the bias (at the tile's first column, or NULL) and apply relu if asked.
 * Columns at or past ncols are neither read nor written in y or bias.
 *
 * A macro and not an inline function with MR, NV parameters: only with
 * constant loop bounds in the source do both gcc and clang unroll the tile
 * loops fully and keep acc[][] in registers (clang optimises an inline
 * callee on its own first, and left the accumulators on the stack: 0.6x of
 * gcc's speed). UNROLL: full unroll (trip count <= n); UNROLL_K: the k loop's
 * partial unroll. */
#define UNROLL_STR(x) #x
#if defined(__clang__)
#define UNROLL(n) _Pragma("unroll")
#define UNROLL_K(n) _Pragma(UNROLL_STR(unroll n))
#else
#define UNROLL(n) _Pragma(UNROLL_STR(GCC unroll n))
#define UNROLL_K(n) _Pragma(UNROLL_STR(GCC unroll n))
#endif

#define TILE_BODY(MR, NV)                                                                                   \
    __m512 acc[MR][NV];                                                                                     \
    __mmask16 mk[NV];                                                                                       \
    UNROLL(4) for (int v = 0; v < NV; v++)                                                                  \
    {                                                                                                       \
        int c = ncols - 16 * v; /* >= 1: a group holds only panels with real columns */                     \
        mk[v] = c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << c) - 1u);                                  \
    }                                                                                                       \
    UNROLL(8) for (int m = 0; m < MR; m++)                                                                  \
    UNROLL(4) for (int v = 0; v < NV; v++)                                                                  \
        acc[m][v] = load ? _mm512_maskz_loadu_ps(mk[v], y + m * ldy + 16 * v) : _mm512_setzero_ps();        \
    UNROLL_K(2) for (int64_t k = 0; k < kc; k++)                                                            \
    {                                                                                                       \
        __m512 b[NV];                                                                                       \
        UNROLL(4) for (int v = 0; v < NV; v++) b[v] = _mm512_load_ps(w + v * pstride + 16 * k);             \
        UNROLL(8) for (int m = 0; m < MR; m++)                                                              \
        {                                                                                                   \
            __m512 a = _mm512_set1_ps(x[m * ldx + k]);                                                      \
            UNROLL(4) for (int v = 0; v < NV; v++) acc[m][v] = _mm512_fmadd_ps(a, b[v], acc[m][v]);         \
        }                                                                                                   \
    }                                                                                                       \
    if (fin) {                                                                                              \
        /* as qn_cpu_epilogue: y + b, then relu as max(0, y): max returns                                   \
         * its second operand for NaN and +-0, so NaN stays NaN and -0 stays                                \
         * -0, as torch.relu and epilogue.c's `y < 0 ? 0 : y` do */                                         \
        const __m512 zero = _mm512_setzero_ps();                                                            \
        __m512 bv[NV];                                                                                      \
        UNROLL(4) for (int v = 0; v < NV; v++) bv[v] = bias ? _mm512_maskz_loadu_ps(mk[v], bias + 16 * v) : zero; \
        UNROLL(8) for (int m = 0; m < MR; m++)                                                              \
        UNROLL(4) for (int v = 0; v < NV; v++)                                                              \
        {                                                                                                   \
            if (bias) acc[m][v] = _mm512_add_ps(acc[m][v], bv[v]);                                          \
            if (relu) acc[m][v] = _mm512_max_ps(zero, acc[m][v]);                                           \
        }                                                                                                   \
    }                                                                                                       \
    UNROLL(8) for (int m = 0; m < MR; m++)                                                                  \
    UNROLL(4) for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(y + m * ldy + 16 * v, mk[v], acc[m][v]);

typedef void (*tile_fn)(const float *x, int64_t ldx, const float *w, int64_t pstride, int64_t kc, float *y,
                        int64_t ldy, int ncols, const float *bias, int load, int fin, int relu);

#define TILE_FN(MR, NV)                                                                                      \
    static void tile_##MR##x##NV(const float *restrict x, int64_t ldx, const float *restrict w,             \
                                 int64_t pstride, int64_t kc, float *restrict y, int64_t ldy, int ncols,    \
                                 const float *restrict bias, int load, int fin, int relu)                   \
    {                                                                                                        \
        TILE_BODY(MR, NV)                                                                                    \
    }
#define TILE_ROW(MR) TILE_FN(MR, 1) TILE_FN(MR, 2) TILE_FN(MR, 3)
TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4) TILE_ROW(5) TILE_ROW(6) TILE_ROW(7) TILE_ROW(8)
TILE_FN(1, 4) TILE_FN(2, 4) TILE_FN(3, 4) TILE_FN(4, 4) TILE_FN(5, 4) TILE_FN(6, 4)

/* [mr][nv]; NULL where mr*nv > 24, which would not fit the 32 zmm registers
 * with the panel loads and the broadcast. mr stops at 8: past it the row
 * addresses outgrow the general registers (spills in the inner loop). */
static const tile_fn g_tiles[9][5] = {
#define T4(m) [m] = {NULL, tile_##m##x1, tile_##m##x2, tile_##m##x3, tile_##m##x4}
#define T3(m) [m] = {NULL, tile_##m##x1, tile_##m##x2, tile_##m##x3, NULL}
    T4(1), T4(2), T4(3), T4(4), T4(5), T4(6), T3(7), T3(8),
#undef T4
#undef T3
};

void qn_sgemm_packed_avx512(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                            qn_act act, float *y, int mr, int nv, int64_t kc, int64_t mc,
                            int64_t pb, int64_t pe, int epi)
{
    const int64_t K = p->in, N = p->out, pstride = QN_SGEMM_NR * K;
    const int relu = act == QN_ACT_RELU;
    /* Loop order: a block of mc rows of x (mc x kc floats, sized for L2) is
     * swept against every panel group; each group's kc x nv*16 slice of W
     * is reused, from L1/L2, by every mr-row tile of the block. */
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
