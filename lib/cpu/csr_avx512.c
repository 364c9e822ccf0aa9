/* csr_avx512.c: CSR SpMM with AVX-512F (CMakeLists.txt flags), used on the
 * avx512vnni path. Up to 8 rows: the packed form built at prepare (register
 * permutes of x windows, no memory gathers; kernels_impl.h). Larger
 * batches: rows are transposed in blocks (kernels_impl.h) and each nonzero
 * becomes broadcast(value) x 1 or 4 contiguous zmm of rows; a 16-row block
 * rotates 4 accumulators over the nonzeros so the FMA latency is hidden. */
#include <immintrin.h>

#include "cpu/kernels_impl.h"

/* Rows r0 .. r0+NB-1 (NB <= 8) through the packed form (kernels_impl.h: 16
 * output rows per zmm, 32-column windows in two zmm per input row, looked up
 * with vpermt2ps). One or two rows get 4 or 2 accumulators per block so that
 * the FMA latency does not serialize the steps. */
static inline __attribute__((always_inline)) void packed(const qn_csr_args *a, int64_t r0, const int NB, const int I8)
{
    const qn_csr_pack *pk = a->pack;
    const int64_t in = a->in, out = a->out;
    const float *x = a->x + r0 * in;
    float *y = a->y + r0 * out;
    const int ACC = NB == 1 ? 4 : NB <= 3 ? 2 : 1;
    /* blocks of R = 16 outputs covering [o_begin, o_end) (bounds multiples of R) */
    const int64_t b0 = a->o_begin / 16, b1 = (a->o_end + 15) / 16;
    const uint8_t *ip = pk->idx + pk->blk_step[b0] * 16;
    const float *vp = pk->vf ? pk->vf + pk->blk_step[b0] * 16 : NULL;
    const int8_t *vq = pk->vi ? pk->vi + pk->blk_step[b0] * 16 : NULL;
    for (int64_t b = b0; b < b1; b++) {
        __m512 acc[4][8];
#pragma GCC unroll 4
        for (int c = 0; c < ACC; c++)
#pragma GCC unroll 8
            for (int r = 0; r < NB; r++) acc[c][r] = _mm512_setzero_ps();
        for (int64_t g = pk->blk_seg[b]; g < pk->blk_seg[b + 1]; g++) {
            const int64_t col = pk->seg[g].col, n = pk->seg[g].steps, rem = in - col;
            const __mmask16 m0 = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
            const __mmask16 m1 = rem >= 32 ? (__mmask16)0xffff : rem <= 16 ? 0 : (__mmask16)((1u << (rem - 16)) - 1);
            __m512 xl[8], xh[8];
#pragma GCC unroll 8
            for (int r = 0; r < NB; r++) {
                xl[r] = _mm512_maskz_loadu_ps(m0, x + r * in + col);
                xh[r] = _mm512_maskz_loadu_ps(m1, x + r * in + col + 16);
            }
            int64_t s = 0;
            for (; s + ACC <= n; s += ACC)
#pragma GCC unroll 4
                for (int c = 0; c < ACC; c++) {
                    const __m512i iv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ip + (s + c) * 16)));
                    const __m512 v = I8 ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(vq + (s + c) * 16))))
                                        : _mm512_loadu_ps(vp + (s + c) * 16);
#pragma GCC unroll 8
                    for (int r = 0; r < NB; r++)
                        acc[c][r] = _mm512_fmadd_ps(v, _mm512_permutex2var_ps(xl[r], iv, xh[r]), acc[c][r]);
                }
            for (; s < n; s++) {
                const __m512i iv = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ip + s * 16)));
                const __m512 v = I8 ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(vq + s * 16))))
                                    : _mm512_loadu_ps(vp + s * 16);
#pragma GCC unroll 8
                for (int r = 0; r < NB; r++) acc[0][r] = _mm512_fmadd_ps(v, _mm512_permutex2var_ps(xl[r], iv, xh[r]), acc[0][r]);
            }
            ip += n * 16;
            if (I8) vq += n * 16;
            else vp += n * 16;
        }
        const int64_t o0 = b * 16;
        const __mmask16 mo = out - o0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (out - o0)) - 1);
#pragma GCC unroll 8
        for (int r = 0; r < NB; r++) {
            __m512 t = acc[0][r];
#pragma GCC unroll 4
            for (int c = 1; c < ACC; c++) t = _mm512_add_ps(t, acc[c][r]);
            if (I8) t = _mm512_mul_ps(t, _mm512_loadu_ps(pk->scale + o0));
            _mm512_mask_storeu_ps(y + r * out + o0, mo, t);
        }
    }
}

static inline __attribute__((always_inline)) void run_packed(const qn_csr_args *a, const int I8)
{
    for (int64_t r0 = 0; r0 < a->rows; r0 += QN_CSR_PACK_ROWS) {
        const int64_t nb = a->rows - r0 < QN_CSR_PACK_ROWS ? a->rows - r0 : QN_CSR_PACK_ROWS;
        switch (nb) {
        case 1: packed(a, r0, 1, I8); break;
        case 2: packed(a, r0, 2, I8); break;
        case 3: packed(a, r0, 3, I8); break;
        case 4: packed(a, r0, 4, I8); break;
        case 5: packed(a, r0, 5, I8); break;
        case 6: packed(a, r0, 6, I8); break;
        case 7: packed(a, r0, 7, I8); break;
        default: packed(a, r0, 8, I8); break;
        }
    }
}

/* One block of nr <= 16*NZ rows starting at r0. */
static inline __attribute__((always_inline)) void block(const qn_csr_args *a, int64_t r0, int64_t nr, const int NZ,
                                                       const int I8)
{
    const int RB = 16 * NZ, CH = NZ == 1 ? 4 : 1;
    float *restrict xt = a->xt;
    for (int64_t j = 0; j < RB; j++) {
        const float *xr = a->x + (r0 + j) * a->in;
        if (j < nr)
            for (int64_t i = 0; i < a->in; i++) xt[i * RB + j] = xr[i];
        else
            for (int64_t i = 0; i < a->in; i++) xt[i * RB + j] = 0.0f;
    }
    for (int64_t o = a->o_begin; o < a->o_end; o++) {
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int c = 0; c < CH; c++)
#pragma GCC unroll 4
            for (int z = 0; z < NZ; z++) acc[c][z] = _mm512_setzero_ps();
        const int64_t p1 = a->indptr[o + 1];
        int64_t p = a->indptr[o];
        for (; p + CH <= p1; p += CH)
#pragma GCC unroll 4
            for (int c = 0; c < CH; c++) {
                const __m512 b = _mm512_set1_ps(I8 ? (float)a->vi[p + c] : a->vf[p + c]);
                const float *xr = xt + (int64_t)a->indices[p + c] * RB;
#pragma GCC unroll 4
                for (int z = 0; z < NZ; z++) acc[c][z] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xr + 16 * z), acc[c][z]);
            }
        for (; p < p1; p++) {
            const __m512 b = _mm512_set1_ps(I8 ? (float)a->vi[p] : a->vf[p]);
            const float *xr = xt + (int64_t)a->indices[p] * RB;
#pragma GCC unroll 4
            for (int z = 0; z < NZ; z++) acc[0][z] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xr + 16 * z), acc[0][z]);
        }
        float tmp[64];
        const __m512 sc = _mm512_set1_ps(I8 ? a->scale[o] : 1.0f);
#pragma GCC unroll 4
        for (int z = 0; z < NZ; z++) {
            __m512 s = acc[0][z];
#pragma GCC unroll 4
            for (int c = 1; c < CH; c++) s = _mm512_add_ps(s, acc[c][z]);
            _mm512_storeu_ps(tmp + 16 * z, I8 ? _mm512_mul_ps(s, sc) : s);
        }
        for (int64_t j = 0; j < nr; j++) a->y[(r0 + j) * a->out + o] = tmp[j];
    }
}

static inline __attribute__((always_inline)) void run(const qn_csr_args *a, const int I8)
{
    if (a->pack && a->rows < QN_CSR_PACKED_BELOW_AVX512) { run_packed(a, I8); return; }
    int64_t r0 = 0;
    for (; a->rows - r0 >= 64; r0 += 64) block(a, r0, 64, 4, I8);
    for (; r0 < a->rows; r0 += 16) block(a, r0, a->rows - r0 < 16 ? a->rows - r0 : 16, 1, I8);
}

static void run_f32(const qn_csr_args *a) { run(a, 0); }
static void run_i8(const qn_csr_args *a) { run(a, 1); }

void qn_csr_spmm_avx512(const qn_csr_args *a)
{
    if (a->vi) run_i8(a);
    else run_f32(a);
}
