/* csr_avx512.c: CSR SpMM with AVX-512F (CMakeLists.txt flags), used on the
 * avx512vnni path. Single rows: a masked 16-lane gather-dot per output row.
 * Batches: rows are transposed in blocks (kernels_impl.h) and each nonzero
 * becomes broadcast(value) x 1 or 4 contiguous zmm of rows; a 16-row block
 * rotates 4 accumulators over the nonzeros so the FMA latency is hidden. */
#include <immintrin.h>

#include "cpu/kernels_impl.h"

static inline __attribute__((always_inline)) __m512 vals16(const qn_csr_args *a, int64_t p, __mmask16 m, const int I8)
{
    if (I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, a->vi + p)));
    return _mm512_maskz_loadu_ps(m, a->vf + p);
}

static inline __attribute__((always_inline)) void rows1(const qn_csr_args *a, const int I8)
{
    for (int64_t r = 0; r < a->rows; r++) {
        const float *x = a->x + r * a->in;
        float *y = a->y + r * a->out;
        for (int64_t o = 0; o < a->out; o++) {
            const int64_t p1 = a->indptr[o + 1];
            __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
            int64_t p = a->indptr[o];
            for (; p + 32 <= p1; p += 32) {
                __m512i i0 = _mm512_loadu_si512((const void *)(a->indices + p));
                __m512i i1 = _mm512_loadu_si512((const void *)(a->indices + p + 16));
                acc0 = _mm512_fmadd_ps(vals16(a, p, 0xffff, I8), _mm512_i32gather_ps(i0, x, 4), acc0);
                acc1 = _mm512_fmadd_ps(vals16(a, p + 16, 0xffff, I8), _mm512_i32gather_ps(i1, x, 4), acc1);
            }
            for (; p < p1; p += 16) {
                const int64_t n = p1 - p;
                const __mmask16 m = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
                __m512i i0 = _mm512_maskz_loadu_epi32(m, a->indices + p);
                __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i0, x, 4);
                acc0 = _mm512_fmadd_ps(vals16(a, p, m, I8), g, acc0);
            }
            const float v = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
            y[o] = I8 ? v * a->scale[o] : v;
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
    for (int64_t o = 0; o < a->out; o++) {
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
    if (a->rows < QN_CSR_ROWWISE_BELOW) { rows1(a, I8); return; }
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
