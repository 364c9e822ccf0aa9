/* csr.c: the sparse layer driver and the portable CSR SpMM. At prepare it
 * validates the CSR arrays, decides per batch-size range whether the sparse
 * kernel or a densified f32 copy with sgemm is faster at this layer's
 * density (crossovers measured by bench/bench_kernels.c, recorded in
 * bench/notes/kernels.md), keeps the dense copy only if some range uses it,
 * and logs the decision (the dense copy is packed for the f32 packed GEMM
 * too, so a densified range costs what an f32 layer costs). Rows with NaN
 * or Inf inputs are computed apart (kcommon.h): the sparse kernels never
 * multiply the absent zeros, which in the dense layer turn Inf into NaN.
 * For a few rows of a big layer the outputs are split over the intra-op
 * pool (kcommon.h), as f32 layers' are. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/dense.h"
#include "cpu/epilogue.h"
#include "cpu/kcommon.h"
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
        for (int64_t o = a->o_begin; o < a->o_end; o++) {
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
        /* and packed for the f32 packed GEMM, as an f32 layer is
         * (cpu_backend.c pack_f32): the densified ranges then cost what an
         * f32 layer costs, intra-op split included. Without it (QN_SGEMM=
         * blas, no AVX2, no memory) they stay on BLAS. */
        if (qn_sgemm_isa_default() != QN_SGEMM_BLAS && qn_sgemm_pack(k->dense, out, in, &k->dense_pw) != 0)
            k->dense_pw = NULL;
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

/* The SpMM on outputs [16·pb, 16·pe) of a (an intra-op chunk, or all). */
static void spmm_panels(void *va, int64_t pb, int64_t pe)
{
    const qn_csr_args *a = va;
    qn_csr_args c = *a;
    c.o_begin = pb * QN_PANEL;
    c.o_end = pe * QN_PANEL < a->out ? pe * QN_PANEL : a->out;
    switch (a->path) {
    case QN_KPATH_AVX512VNNI: qn_csr_spmm_avx512(&c); break;
    case QN_KPATH_AVXVNNI:
    case QN_KPATH_AVX2: qn_csr_spmm_avx2(&c); break;
    default: qn_csr_spmm_portable(&c); break;
    }
}

/* A row with NaN/Inf inputs (kcommon.h), before bias and activation: the
 * sum over the non-finite columns k of x_k · W_ok, with W_ok the dense
 * weight (0 where the row has no entry at k, which makes NaN: Inf·0, as the
 * dense layer would). slot [in] is -1 everywhere on entry and on return;
 * wsum [ncols] is scratch. */
static void fix_row(const qn_layer *l, const float *x, const int32_t *cols, int64_t ncols, int32_t *slot,
                    float *wsum, float *y)
{
    const int i8 = l->rep == QN_REP_CSR_I8;
    for (int64_t j = 0; j < ncols; j++) slot[cols[j]] = (int32_t)j;
    for (int64_t o = 0; o < l->out; o++) {
        for (int64_t j = 0; j < ncols; j++) wsum[j] = 0.0f;
        for (int64_t p = l->csr_indptr[o]; p < l->csr_indptr[o + 1]; p++) {
            const int32_t sl = slot[l->csr_indices[p]];
            if (sl >= 0) wsum[sl] += i8 ? (float)l->csr_i8[p] * l->w_scale[o] : l->csr_f32[p];
        }
        float acc = 0.0f;
        for (int64_t j = 0; j < ncols; j++) acc += x[cols[j]] * wsum[j];
        y[o] = acc;
    }
    for (int64_t j = 0; j < ncols; j++) slot[cols[j]] = -1;
}

int qn_csr_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s, qn_cpu_pool *pool)
{
    if (!k->sparse[qn_csr_range(rows)])
        return qn_cpu_dense_f32_auto_pool(x, rows, l->in, k->dense, k->dense_pw, l->out, l->bias, l->act, y, pool);
    const qn_csr_args a = {
        .path = k->path, .rows = rows, .in = l->in, .out = l->out, .indptr = l->csr_indptr,
        .indices = l->csr_indices, .vf = l->rep == QN_REP_CSR_F32 ? l->csr_f32 : NULL,
        .vi = l->rep == QN_REP_CSR_I8 ? l->csr_i8 : NULL, .scale = l->w_scale, .pack = k->csrp, .x = x, .y = y,
        .xt = qn_scratch_get(s, QN_SCR_F, (size_t)(l->in * QN_CSR_RB_MAX) * sizeof(float)),
        .o_begin = 0, .o_end = l->out,
    };
    if (!a.xt) return QN_ENOMEM;
    const int64_t npan = k->out16 / QN_PANEL;
    /* Split where the packed (few-row) kernels run (and on the portable
     * path). Their cost is per packed step, shared by the rows; the rule
     * (kcommon.h) counts 16 bytes per nonzero (its value and
     * index, the register permute, int8's widening): a split from 64K
     * nonzeros. bench_kernels --only intraop: at density 0.1 the 1024 x 1024
     * layer (105K nonzeros, 12-23 µs) won 1.15-1.7x at 1-2 rows, the
     * 1024 x 256 one (26K, 3-9 µs) lost at 1-4 rows (bench/notes/intraop.md). */
    const int packed = k->path == QN_KPATH_PORTABLE ||
                       (k->csrp && rows < (k->path == QN_KPATH_AVX512VNNI ? QN_CSR_PACKED_BELOW_AVX512
                                                                           : QN_CSR_PACKED_BELOW_AVX2));
    if (pool && packed && qn_kernel_split_wins(rows, 16 * l->nnz))
        qn_kernel_split_panels(pool, npan, 2, spmm_panels, (void *)&a);
    else
        spmm_panels((void *)&a, 0, npan);

    /* rows with NaN/Inf: the sparse kernels skip absent weights, the dense
     * layer would not (kcommon.h) */
    int32_t *cols = NULL, *slot = NULL;
    float *wsum = NULL;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * l->in;
        if (!qn_row_nonfinite(xr, l->in)) continue;
        if (!cols) {
            cols = qn_scratch_get(s, QN_SCR_NF, (size_t)(3 * l->in) * sizeof(int32_t));
            if (!cols) return QN_ENOMEM;
            slot = cols + l->in;
            wsum = (float *)(slot + l->in);
            for (int64_t i = 0; i < l->in; i++) slot[i] = -1;
        }
        fix_row(l, xr, cols, qn_nonfinite_cols(xr, l->in, cols), slot, wsum, y + r * l->out);
    }
    qn_cpu_epilogue(y, rows, l->out, l->out, l->bias, l->act);
    return 0;
}
