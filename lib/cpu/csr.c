/* csr.c: the sparse layer driver and the portable CSR SpMM. At prepare it
 * validates the CSR arrays, decides per batch-size range whether the sparse
 * kernel or a densified f32 copy with sgemm is faster at this layer's
 * density (crossovers measured by bench/bench_kernels.c, recorded in
 * bench/notes/kernels.md), keeps the dense copy only if some range uses it,
 * and logs the decision. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/epilogue.h"
#include "cpu/kernels_impl.h"
#include "error.h"
#include "log.h"

/* Batch-size ranges [lo, next lo) and, for each, the density below which the
 * sparse kernel beat the dense f32 path (qn_cpu_dense_f32: per-row sgemv up
 * to 8 rows on this layer, sgemm above) at the representative batches in
 * the comment: avx512vnni path, 1024x1024 layer, single thread, taken on the
 * low side of what repeated runs gave (bench/notes/kernels.md). Not
 * monotone: sgemm at 16-32 rows still pays OpenBLAS's per-call packing of
 * all of W, where the sparse kernel runs at FMA speed. */
static const struct { int64_t lo; double crit; } g_ranges[QN_CSR_NRANGES] = {
    {1, 0.10},   /* batch 1 (0.08-0.12): the gather-dot is gather-bound */
    {2, 0.15},   /* batch 2 (0.15) */
    {4, 0.30},   /* batch 4 (0.30) */
    {8, 0.40},   /* batch 8 (0.40-0.50) */
    {16, 0.50},  /* batches 16, 32, 64 (0.9, 0.7, 0.6) */
    {128, 0.35}, /* batch 256 (0.40) */
};

/* Portable SpMM: one row at a time, 4 partial sums per output row. Plain C
 * for CPUs without AVX2; the SIMD files restructure the same sums. */
void qn_csr_spmm_portable(const qn_csr_args *a)
{
    for (int64_t r = 0; r < a->rows; r++) {
        const float *x = a->x + r * a->in;
        float *y = a->y + r * a->out;
        for (int64_t o = 0; o < a->out; o++) {
            const int64_t p1 = a->indptr[o + 1];
            int64_t p = a->indptr[o];
            float acc[4] = {0};
            if (a->vi) {
                for (; p + 4 <= p1; p += 4)
                    for (int j = 0; j < 4; j++) acc[j] += (float)a->vi[p + j] * x[a->indices[p + j]];
                for (; p < p1; p++) acc[0] += (float)a->vi[p] * x[a->indices[p]];
            } else {
                for (; p + 4 <= p1; p += 4)
                    for (int j = 0; j < 4; j++) acc[j] += a->vf[p + j] * x[a->indices[p + j]];
                for (; p < p1; p++) acc[0] += a->vf[p] * x[a->indices[p]];
            }
            const float v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            y[o] = a->vi ? v * a->scale[o] : v;
        }
    }
}

int qn_csr_range(int64_t rows)
{
    int i = 0;
    while (i + 1 < QN_CSR_NRANGES && rows >= g_ranges[i + 1].lo) i++;
    return i;
}

int qn_kernel_csr_use_sparse(double density, int64_t rows)
{
    const char *env = getenv("QN_CSR");
    if (env && strcmp(env, "sparse") == 0) return 1;
    if (env && strcmp(env, "dense") == 0) return 0;
    return density < g_ranges[qn_csr_range(rows)].crit;
}

int qn_csr_prepare(const qn_layer *l, qn_kpack *k)
{
    const int i8 = l->rep == QN_REP_CSR_I8;
    if (!l->csr_indptr || (l->nnz > 0 && !l->csr_indices) || (i8 && (!l->w_scale || (l->nnz > 0 && !l->csr_i8))) ||
        (!i8 && l->nnz > 0 && !l->csr_f32))
        return QN_EINVAL;
    const int64_t in = l->in, out = l->out;
    if (l->csr_indptr[0] != 0 || l->csr_indptr[out] != l->nnz) return QN_ESHAPE;
    for (int64_t o = 0; o < out; o++) {
        if (l->csr_indptr[o + 1] < l->csr_indptr[o]) return QN_ESHAPE;
    }
    for (int64_t p = 0; p < l->nnz; p++)
        if (l->csr_indices[p] < 0 || l->csr_indices[p] >= in) return QN_ESHAPE;

    const double density = (double)l->nnz / ((double)in * (double)out);
    int any_dense = 0;
    char desc[256];
    size_t dl = 0;
    for (int i = 0; i < QN_CSR_NRANGES; i++) {
        k->sparse[i] = (unsigned char)qn_kernel_csr_use_sparse(density, g_ranges[i].lo);
        any_dense |= !k->sparse[i];
        char hi[32] = "";
        if (i + 1 < QN_CSR_NRANGES) snprintf(hi, sizeof hi, "-%lld", (long long)g_ranges[i + 1].lo - 1);
        else snprintf(hi, sizeof hi, "+");
        int n = snprintf(desc + dl, sizeof desc - dl, "%s%lld%s %s", i ? ", " : "", (long long)g_ranges[i].lo, hi,
                         k->sparse[i] ? "sparse" : "dense");
        if (n > 0 && (size_t)n < sizeof desc - dl) dl += (size_t)n;
    }
    if (any_dense) {
        k->dense = qn_alloc_aligned((size_t)(in * out) * sizeof(float), 1);
        if (!k->dense) return QN_ENOMEM;
        for (int64_t o = 0; o < out; o++)
            for (int64_t p = l->csr_indptr[o]; p < l->csr_indptr[o + 1]; p++)
                k->dense[o * in + l->csr_indices[p]] = i8 ? (float)l->csr_i8[p] * l->w_scale[o] : l->csr_f32[p];
    }
    QN_LOGI("kernels", "%s layer %lldx%lld (out x in), density %.3f: by batch size %s%s",
            i8 ? "csr_int8" : "csr_f32", (long long)out, (long long)in, density, desc,
            any_dense ? " (densified copy kept)" : "");
    return 0;
}

int qn_csr_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s)
{
    if (!k->sparse[qn_csr_range(rows)]) return qn_dense_f32_forward(k->dense, l->in, l->out, l->bias, l->act, x, rows, y);
    const qn_csr_args a = {
        .rows = rows, .in = l->in, .out = l->out, .indptr = l->csr_indptr, .indices = l->csr_indices,
        .vf = l->rep == QN_REP_CSR_F32 ? l->csr_f32 : NULL, .vi = l->rep == QN_REP_CSR_I8 ? l->csr_i8 : NULL,
        .scale = l->w_scale, .x = x, .y = y,
        .xt = qn_scratch_get(s, QN_SCR_F, (size_t)(l->in * QN_CSR_RB_MAX) * sizeof(float)),
    };
    if (!a.xt) return QN_ENOMEM;
    switch (k->path) {
    case QN_KPATH_AVX512VNNI: qn_csr_spmm_avx512(&a); break;
    case QN_KPATH_AVXVNNI:
    case QN_KPATH_AVX2: qn_csr_spmm_avx2(&a); break;
    default: qn_csr_spmm_portable(&a); break;
    }
    qn_cpu_epilogue(y, rows, l->out, l->out, l->bias, l->act);
    return 0;
}
