/* csr_avx2.c: CSR SpMM with AVX2 + FMA (CMakeLists.txt flags), used on the
 * avx2 and avxvnni paths. Same structure as csr_avx512.c on 8-lane ymm:
 * the packed form (8-row blocks, 8-column windows, vpermps) up to 4 rows,
 * transposed row blocks (16 or 64 rows, 2 or 8 ymm per nonzero) otherwise. */
#include <immintrin.h>

#include "cpu/kernels_impl.h"

/* Rows r0 .. r0+NB-1 (NB <= 8) through the packed form (kernels_impl.h: 8
 * output rows per ymm, 8-column windows in one ymm per input row, looked up
 * with vpermps). */
static inline __attribute__((always_inline)) void packed(const qn_csr_args *a, int64_t r0, const int NB, const int I8)
{
    const qn_csr_pack *pk = a->pack;
    const int64_t in = a->in, out = a->out;
    const float *x = a->x + r0 * in;
    float *y = a->y + r0 * out;
    const int ACC = NB == 1 ? 4 : NB <= 3 ? 2 : 1;
    /* blocks of R = 8 outputs covering [o_begin, o_end) (bounds multiples of R) */
    const int64_t b0 = a->o_begin / 8, b1 = (a->o_end + 7) / 8;
    const uint8_t *ip = pk->idx + pk->blk_step[b0] * 8;
    const float *vp = pk->vf ? pk->vf + pk->blk_step[b0] * 8 : NULL;
    const int8_t *vq = pk->vi ? pk->vi + pk->blk_step[b0] * 8 : NULL;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t b = b0; b < b1; b++) {
        __m256 acc[4][8];
#pragma GCC unroll 4
        for (int c = 0; c < ACC; c++)
#pragma GCC unroll 8
            for (int r = 0; r < NB; r++) acc[c][r] = _mm256_setzero_ps();
        for (int64_t g = pk->blk_seg[b]; g < pk->blk_seg[b + 1]; g++) {
            const int64_t col = pk->seg[g].col, n = pk->seg[g].steps, rem = in - col;
            __m256 xw[8];
            if (rem >= 8) {
#pragma GCC unroll 8
                for (int r = 0; r < NB; r++) xw[r] = _mm256_loadu_ps(x + r * in + col);
            } else {
                const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), lane);
#pragma GCC unroll 8
                for (int r = 0; r < NB; r++) xw[r] = _mm256_maskload_ps(x + r * in + col, m);
            }
            int64_t s = 0;
            for (; s + ACC <= n; s += ACC)
#pragma GCC unroll 4
                for (int c = 0; c < ACC; c++) {
                    const __m256i iv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ip + (s + c) * 8)));
                    const __m256 v = I8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(vq + (s + c) * 8))))
                                        : _mm256_loadu_ps(vp + (s + c) * 8);
#pragma GCC unroll 8
                    for (int r = 0; r < NB; r++)
                        acc[c][r] = _mm256_fmadd_ps(v, _mm256_permutevar8x32_ps(xw[r], iv), acc[c][r]);
                }
            for (; s < n; s++) {
                const __m256i iv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ip + s * 8)));
                const __m256 v = I8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(vq + s * 8))))
                                    : _mm256_loadu_ps(vp + s * 8);
#pragma GCC unroll 8
                for (int r = 0; r < NB; r++) acc[0][r] = _mm256_fmadd_ps(v, _mm256_permutevar8x32_ps(xw[r], iv), acc[0][r]);
            }
            ip += n * 8;
            if (I8) vq += n * 8;
            else vp += n * 8;
        }
        const int64_t o0 = b * 8;
        const __m256i mo = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(out - o0 < 8 ? out - o0 : 8)), lane);
#pragma GCC unroll 8
        for (int r = 0; r < NB; r++) {
            __m256 t = acc[0][r];
#pragma GCC unroll 4
            for (int c = 1; c < ACC; c++) t = _mm256_add_ps(t, acc[c][r]);
            if (I8) t = _mm256_mul_ps(t, _mm256_loadu_ps(pk->scale + o0));
            if (out - o0 >= 8) _mm256_storeu_ps(y + r * out + o0, t);
            else _mm256_maskstore_ps(y + r * out + o0, mo, t);
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

static inline __attribute__((always_inline)) void block(const qn_csr_args *a, int64_t r0, int64_t nr, const int NZ,
                                                       const int I8)
{
    const int RB = 8 * NZ, CH = NZ == 2 ? 4 : 1;
    float *restrict xt = a->xt;
    for (int64_t j = 0; j < RB; j++) {
        const float *xr = a->x + (r0 + j) * a->in;
        if (j < nr)
            for (int64_t i = 0; i < a->in; i++) xt[i * RB + j] = xr[i];
        else
            for (int64_t i = 0; i < a->in; i++) xt[i * RB + j] = 0.0f;
    }
    for (int64_t o = a->o_begin; o < a->o_end; o++) {
        __m256 acc[4][8];
#pragma GCC unroll 4
        for (int c = 0; c < CH; c++)
#pragma GCC unroll 8
            for (int z = 0; z < NZ; z++) acc[c][z] = _mm256_setzero_ps();
        const int64_t p1 = a->indptr[o + 1];
        int64_t p = a->indptr[o];
        for (; p + CH <= p1; p += CH)
#pragma GCC unroll 4
            for (int c = 0; c < CH; c++) {
                const __m256 b = _mm256_set1_ps(I8 ? (float)a->vi[p + c] : a->vf[p + c]);
                const float *xr = xt + (int64_t)a->indices[p + c] * RB;
#pragma GCC unroll 8
                for (int z = 0; z < NZ; z++) acc[c][z] = _mm256_fmadd_ps(b, _mm256_loadu_ps(xr + 8 * z), acc[c][z]);
            }
        for (; p < p1; p++) {
            const __m256 b = _mm256_set1_ps(I8 ? (float)a->vi[p] : a->vf[p]);
            const float *xr = xt + (int64_t)a->indices[p] * RB;
#pragma GCC unroll 8
            for (int z = 0; z < NZ; z++) acc[0][z] = _mm256_fmadd_ps(b, _mm256_loadu_ps(xr + 8 * z), acc[0][z]);
        }
        float tmp[64];
        const __m256 sc = _mm256_set1_ps(I8 ? a->scale[o] : 1.0f);
#pragma GCC unroll 8
        for (int z = 0; z < NZ; z++) {
            __m256 s = acc[0][z];
#pragma GCC unroll 4
            for (int c = 1; c < CH; c++) s = _mm256_add_ps(s, acc[c][z]);
            _mm256_storeu_ps(tmp + 8 * z, I8 ? _mm256_mul_ps(s, sc) : s);
        }
        for (int64_t j = 0; j < nr; j++) a->y[(r0 + j) * a->out + o] = tmp[j];
    }
}

static inline __attribute__((always_inline)) void run(const qn_csr_args *a, const int I8)
{
    if (a->pack && a->rows < QN_CSR_PACKED_BELOW_AVX2) { run_packed(a, I8); return; }
    int64_t r0 = 0;
    for (; a->rows - r0 >= 64; r0 += 64) block(a, r0, 64, 8, I8);
    for (; r0 < a->rows; r0 += 16) block(a, r0, a->rows - r0 < 16 ? a->rows - r0 : 16, 2, I8);
}

static void run_f32(const qn_csr_args *a) { run(a, 0); }
static void run_i8(const qn_csr_args *a) { run(a, 1); }

void qn_csr_spmm_avx2(const qn_csr_args *a)
{
    if (a->vi) run_i8(a);
    else run_f32(a);
}
