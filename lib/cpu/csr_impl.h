/* csr_impl.h: the CSR SpMM kernel body, written once in plain C and compiled
 * three times (csr.c portable, csr_avx2.c, csr_avx512.c, each with its own
 * target flags) so that the compiler's vectorizer widens the fixed-width
 * inner loops to the ISA: a 16-lane gather-dot for single rows, and a
 * 16-row FMA over a transposed activation block for batches. Both keep 16
 * independent partial sums in a fixed order, so every path sums alike.
 * Include after defining QN_CSR_FN(name) (the exported function name). */
#include <string.h>

#include "cpu/kernels_impl.h"

static inline __attribute__((always_inline)) float csr_val(const qn_csr_args *a, int64_t p, const int I8)
{
    return I8 ? (float)a->vi[p] : a->vf[p];
}

/* One row: y[o] = Σ_p v[p] · x[idx[p]] with 16 partial sums (a gather per 16
 * nonzeros once vectorized). */
static inline __attribute__((always_inline)) void csr_row(const qn_csr_args *a, int64_t r, const int I8)
{
    const float *x = a->x + r * a->in;
    float *y = a->y + r * a->out;
    for (int64_t o = 0; o < a->out; o++) {
        const int64_t p1 = a->indptr[o + 1];
        int64_t p = a->indptr[o];
        float acc[16] = {0};
        for (; p + 16 <= p1; p += 16)
            for (int j = 0; j < 16; j++) acc[j] += csr_val(a, p + j, I8) * x[a->indices[p + j]];
        float t = 0.0f;
        for (; p < p1; p++) t += csr_val(a, p, I8) * x[a->indices[p]];
        for (int w = 8; w >= 1; w /= 2)
            for (int j = 0; j < w; j++) acc[j] += acc[j + w];
        float v = acc[0] + t;
        y[o] = I8 ? v * a->scale[o] : v;
    }
}

/* A block of nr <= QN_CSR_RB rows: transpose them to xt [in][RB] (zero rows
 * beyond nr) so that each nonzero is one broadcast times a contiguous RB-row
 * vector. */
static inline __attribute__((always_inline)) void csr_block(const qn_csr_args *a, int64_t r0, int64_t nr,
                                                           const int I8)
{
    float *restrict xt = a->xt;
    for (int64_t i = 0; i < a->in; i++)
        for (int j = 0; j < QN_CSR_RB; j++) xt[i * QN_CSR_RB + j] = j < nr ? a->x[(r0 + j) * a->in + i] : 0.0f;
    for (int64_t o = 0; o < a->out; o++) {
        float acc[QN_CSR_RB] = {0};
        for (int64_t p = a->indptr[o]; p < a->indptr[o + 1]; p++) {
            const float v = csr_val(a, p, I8);
            const float *restrict xr = xt + (int64_t)a->indices[p] * QN_CSR_RB;
            for (int j = 0; j < QN_CSR_RB; j++) acc[j] += v * xr[j];
        }
        const float sc = I8 ? a->scale[o] : 1.0f;
        for (int64_t j = 0; j < nr; j++) a->y[(r0 + j) * a->out + o] = I8 ? acc[j] * sc : acc[j];
    }
}

static void csr_run(const qn_csr_args *a, const int I8)
{
    /* few rows: a gather per nonzero per row beats transposing and wasting
     * lanes of a 16-row block (bench/notes/kernels.md) */
    if (a->rows < QN_CSR_ROWWISE_BELOW) {
        for (int64_t r = 0; r < a->rows; r++) csr_row(a, r, I8);
        return;
    }
    for (int64_t r0 = 0; r0 < a->rows; r0 += QN_CSR_RB)
        csr_block(a, r0, a->rows - r0 < QN_CSR_RB ? a->rows - r0 : QN_CSR_RB, I8);
}

static void csr_run_f32(const qn_csr_args *a) { csr_run(a, 0); }
static void csr_run_i8(const qn_csr_args *a) { csr_run(a, 1); }

void QN_CSR_FN(const qn_csr_args *a)
{
    if (a->vi) csr_run_i8(a);
    else csr_run_f32(a);
}
