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
 * low side of what repeated runs gave (bench/notes/csr.md for 1-15 rows,
 * bench/notes/kernels.md above). Up to 8 rows the packed kernel runs; its
 * cost per row falls with the batch (each packed step is shared by all
 * rows) while per-row sgemv re-reads W for every row, so from 2 rows it won
 * at every density tried (up to 0.9). Not monotone: sgemm at 16-32 rows
 * still pays OpenBLAS's per-call packing of all of W, where the blocked
 * sparse kernel runs at FMA speed. */
static const struct { int64_t lo; double crit; } g_ranges[QN_CSR_NRANGES] = {
    {1, 0.60},   /* batch 1 (f32 0.70, int8 0.60-0.70): packed kernel */
    {2, 0.90},   /* batch 2 (>= 0.90) */
    {4, 0.90},   /* batch 4 (>= 0.90) */
    {8, 0.70},   /* batches 8 (>= 0.90, packed), 9 and 12 (>= 0.90), 15 (0.70-0.90, blocked) */
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

void qn_csr_pack_free(qn_csr_pack *p)
{
    if (!p) return;
    free(p->blk_seg);
    free(p->blk_step);
    free(p->seg);
    free(p->idx);
    free(p->vf);
    free(p->vi);
    free(p->scale);
    free(p);
}

typedef struct { int32_t col; int64_t at; } col_at;

static int cmp_col_at(const void *a, const void *b)
{
    const col_at *x = a, *y = b;
    return x->col < y->col ? -1 : x->col > y->col;
}

/* qn_csr_pack_build on a copy of the layer with each row's columns sorted. */
static int pack_sorted(int64_t in, int64_t out, const int32_t *indptr, const int32_t *indices, const float *vf,
                       const int8_t *vi, const float *scale, int R, int W, qn_csr_pack **out_pack)
{
    const int i8 = scale != NULL;
    const int64_t nnz = indptr[out];
    int rc = QN_ENOMEM;
    int32_t *si = malloc((size_t)nnz * sizeof(int32_t) + 1);
    float *sf = i8 ? NULL : malloc((size_t)nnz * sizeof(float) + 1);
    int8_t *sv = i8 ? malloc((size_t)nnz + 1) : NULL;
    col_at *ca = malloc((size_t)nnz * sizeof(col_at) + 1);
    if (!si || !ca || (i8 ? !sv : !sf)) goto done;
    for (int64_t o = 0; o < out; o++) {
        const int64_t p0 = indptr[o], n = indptr[o + 1] - p0;
        for (int64_t q = 0; q < n; q++) ca[q] = (col_at){indices[p0 + q], p0 + q};
        qsort(ca, (size_t)n, sizeof *ca, cmp_col_at);
        for (int64_t q = 0; q < n; q++) {
            si[p0 + q] = ca[q].col;
            if (i8) sv[p0 + q] = vi[ca[q].at];
            else sf[p0 + q] = vf[ca[q].at];
        }
    }
    rc = qn_csr_pack_build(in, out, indptr, si, sf, sv, scale, R, W, out_pack);
done:
    free(si); free(sf); free(sv); free(ca);
    return rc;
}

int qn_csr_pack_build(int64_t in, int64_t out, const int32_t *indptr, const int32_t *indices, const float *vf,
                      const int8_t *vi, const float *scale, int R, int W, qn_csr_pack **out_pack)
{
    const int i8 = scale != NULL;
    qn_csr_pack *p = calloc(1, sizeof *p);
    int64_t *cur = NULL; /* per lane: the next nonzero of its row not yet packed */
    int rc = QN_ENOMEM;
    *out_pack = NULL;
    if (!p) goto fail;
    p->R = R;
    p->W = W;
    p->nblk = (out + R - 1) / R;
    const int64_t nwin = (in + W - 1) / W;
    if (!(p->blk_seg = malloc((size_t)(p->nblk + 1) * sizeof(int64_t)))) goto fail;
    if (!(p->blk_step = malloc((size_t)(p->nblk + 1) * sizeof(int64_t)))) goto fail;
    if (!(cur = malloc((size_t)R * sizeof(int64_t)))) goto fail;
    /* Rows are walked window by window with a cursor per lane, which needs
     * ascending columns within each row; the format leaves column order free
     * (writers emit ascending), so an unsorted layer is packed from a sorted
     * copy. Pass 0 counts segments and steps, pass 1 fills them. */
    for (int64_t o = 0; o < out; o++)
        for (int64_t q = indptr[o] + 1; q < indptr[o + 1]; q++)
            if (indices[q] < indices[q - 1]) {
                free(cur);
                qn_csr_pack_free(p);
                return pack_sorted(in, out, indptr, indices, vf, vi, scale, R, W, out_pack);
            }
    for (int pass = 0; pass < 2; pass++) {
        int64_t nseg = 0, nsteps = 0;
        for (int64_t b = 0; b < p->nblk; b++) {
            const int64_t o0 = b * R, nr = out - o0 < R ? out - o0 : R;
            p->blk_seg[b] = nseg;
            p->blk_step[b] = nsteps;
            for (int j = 0; j < nr; j++) cur[j] = indptr[o0 + j];
            for (;;) {
                /* the next window with a nonzero in any row of the block */
                int64_t w = nwin;
                for (int j = 0; j < nr; j++)
                    if (cur[j] < indptr[o0 + j + 1] && indices[cur[j]] / W < w) w = indices[cur[j]] / W;
                if (w == nwin) break;
                int64_t steps = 0;
                for (int j = 0; j < nr; j++) {
                    int64_t c = 0;
                    while (cur[j] < indptr[o0 + j + 1] && indices[cur[j]] / W == w) {
                        if (pass) {
                            const int64_t t = (nsteps + c) * R + j;
                            p->idx[t] = (uint8_t)(indices[cur[j]] - w * W);
                            if (i8) p->vi[t] = vi[cur[j]];
                            else p->vf[t] = vf[cur[j]];
                        }
                        c++;
                        cur[j]++;
                    }
                    steps = c > steps ? c : steps;
                }
                if (pass) p->seg[nseg] = (qn_csr_seg){.col = (uint32_t)(w * W), .steps = (uint32_t)steps};
                nseg++;
                nsteps += steps;
            }
        }
        p->blk_seg[p->nblk] = nseg;
        p->blk_step[p->nblk] = nsteps;
        if (!pass) {
            p->nseg = nseg;
            p->nsteps = nsteps;
            /* zeroed: padding lanes are offset 0, value 0 */
            if (!(p->seg = calloc((size_t)nseg + 1, sizeof *p->seg))) goto fail;
            if (!(p->idx = qn_alloc_aligned((size_t)(nsteps * R) + 64, 1))) goto fail;
            if (!i8 && !(p->vf = qn_alloc_aligned((size_t)(nsteps * R) * sizeof(float) + 64, 1))) goto fail;
            if (i8 && !(p->vi = qn_alloc_aligned((size_t)(nsteps * R) + 64, 1))) goto fail;
        }
    }
    if (i8) {
        if (!(p->scale = qn_alloc_aligned((size_t)(p->nblk * R) * sizeof(float), 1))) goto fail;
        memcpy(p->scale, scale, (size_t)out * sizeof(float));
    }
    free(cur);
    *out_pack = p;
    return 0;
fail:
    free(cur);
    qn_csr_pack_free(p);
    return rc;
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
    /* the packed small-batch form, for the SIMD paths (the portable kernel
     * reads the CSR arrays as they are) */
    if (k->path != QN_KPATH_PORTABLE) {
        const int avx512 = k->path == QN_KPATH_AVX512VNNI;
        int rc = qn_csr_pack_build(in, l->out, l->csr_indptr, l->csr_indices, i8 ? NULL : l->csr_f32,
                                   i8 ? l->csr_i8 : NULL, i8 ? l->w_scale : NULL, avx512 ? 16 : 8, avx512 ? 32 : 8,
                                   &k->csrp);
        if (rc) return rc;
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
        .scale = l->w_scale, .pack = k->csrp, .x = x, .y = y,
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
