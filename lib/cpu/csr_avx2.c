/* csr_avx2.c: CSR SpMM with AVX2 + FMA (CMakeLists.txt flags), used on the
 * avx2 and avxvnni paths. Same structure as csr_avx512.c on 8-lane ymm:
 * gather-dot per row for tiny batches, transposed row blocks (16 or 64 rows,
 * 2 or 8 ymm per nonzero) otherwise. */
#include <immintrin.h>

#include "cpu/kernels_impl.h"

static inline __attribute__((always_inline)) __m256 vals8(const qn_csr_args *a, int64_t p, const int I8)
{
    if (I8) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(a->vi + p))));
    return _mm256_loadu_ps(a->vf + p);
}

static inline __attribute__((always_inline)) void rows1(const qn_csr_args *a, const int I8)
{
    for (int64_t r = 0; r < a->rows; r++) {
        const float *x = a->x + r * a->in;
        float *y = a->y + r * a->out;
        for (int64_t o = 0; o < a->out; o++) {
            const int64_t p1 = a->indptr[o + 1];
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            int64_t p = a->indptr[o];
            for (; p + 16 <= p1; p += 16) {
                __m256i i0 = _mm256_loadu_si256((const __m256i *)(a->indices + p));
                __m256i i1 = _mm256_loadu_si256((const __m256i *)(a->indices + p + 8));
                acc0 = _mm256_fmadd_ps(vals8(a, p, I8), _mm256_i32gather_ps(x, i0, 4), acc0);
                acc1 = _mm256_fmadd_ps(vals8(a, p + 8, I8), _mm256_i32gather_ps(x, i1, 4), acc1);
            }
            acc0 = _mm256_add_ps(acc0, acc1);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            float v = _mm_cvtss_f32(h);
            for (; p < p1; p++) v += (I8 ? (float)a->vi[p] : a->vf[p]) * x[a->indices[p]];
            y[o] = I8 ? v * a->scale[o] : v;
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
    for (int64_t o = 0; o < a->out; o++) {
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
    if (a->rows < QN_CSR_ROWWISE_BELOW) { rows1(a, I8); return; }
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
