/* f16.c: the fp16 layer driver (packing at prepare, path dispatch per
 * forward) and the portable fp16 GEMM. The portable kernel widens one
 * 16-output panel at a time into scratch with a branch-light converter and
 * reuses it for every row: slower than F16C, but it keeps the memory saving
 * and exists only for CPUs without AVX2. NaN and Inf need nothing special
 * here: every input meets every weight, as in torch's f32 product. For a
 * few rows of a big layer the panels are split over the intra-op pool
 * (kcommon.h). */
#include <string.h>

#include "cpu/epilogue.h"
#include "cpu/kcommon.h"
#include "cpu/kernels_impl.h"
#include "error.h"
#include "tensor.h"

/* Exact half -> float by moving the bits and fixing the exponent (F.
 * Giesen's method): a handful of integer ops instead of the normalising loop
 * of the generic qn_f16_to_f32, which would dominate this kernel. */
static inline float half_to_float(uint16_t h)
{
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = (uint32_t)(h & 0x7fff) << 13;
    const uint32_t exp = shifted_exp & o;
    o += (uint32_t)(127 - 15) << 23;
    float f;
    if (exp == shifted_exp) {
        o += (uint32_t)(128 - 16) << 23; /* inf / nan */
        memcpy(&f, &o, 4);
    } else if (exp == 0) {
        o += 1u << 23; /* zero / subnormal: renormalise through the FPU */
        memcpy(&f, &o, 4);
        f -= 6.103515625e-05f; /* 2^-14, the float with bits 113 << 23 */
    } else {
        memcpy(&f, &o, 4);
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    u |= (uint32_t)(h & 0x8000) << 16;
    memcpy(&f, &u, 4);
    return f;
}

void qn_f16_gemm_portable(const qn_f16_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    for (int64_t p = 0; p < npan; p++) {
        const uint16_t *wp = a->w + p * a->in * QN_PANEL;
        for (int64_t i = 0; i < a->in * QN_PANEL; i++) a->tmp[i] = half_to_float(wp[i]);
        const int64_t o0 = p * QN_PANEL, n = a->out - o0 < QN_PANEL ? a->out - o0 : QN_PANEL;
        for (int64_t r = 0; r < a->rows; r++) {
            const float *x = a->x + r * a->ldx;
            float acc[QN_PANEL] = {0};
            for (int64_t k = 0; k < a->in; k++)
                for (int l = 0; l < QN_PANEL; l++) acc[l] += x[k] * a->tmp[k * QN_PANEL + l];
            float *y = a->y + r * a->ldy + o0;
            for (int64_t l = 0; l < n; l++) {
                float v = acc[l] + a->bias[o0 + l];
                y[l] = a->relu && v < 0.0f ? 0.0f : v;
            }
        }
    }
}

int qn_f16_prepare(const qn_layer *l, qn_kpack *k)
{
    if (!l->w_f16) return QN_EINVAL;
    const int64_t in = l->in, out = l->out, out16 = qn_round_up(out, QN_PANEL);
    k->w16 = qn_alloc_aligned((size_t)(out16 * in) * sizeof(uint16_t), 1);
    if (!k->w16) return QN_ENOMEM;
    for (int64_t o = 0; o < out; o++) {
        uint16_t *dst = k->w16 + (o / QN_PANEL) * in * QN_PANEL + o % QN_PANEL;
        const uint16_t *src = l->w_f16 + o * in;
        for (int64_t i = 0; i < in; i++) dst[i * QN_PANEL] = src[i];
    }
    return 0;
}

/* The GEMM on output panels [pb, pe) of a (an intra-op chunk, or all). */
static void gemm_panels(void *va, int64_t pb, int64_t pe)
{
    const qn_f16_args *a = va;
    const int64_t o0 = pb * QN_PANEL, o1 = pe * QN_PANEL < a->out ? pe * QN_PANEL : a->out;
    qn_f16_args c = *a;
    c.out = o1 - o0;
    c.w = a->w + pb * a->in * QN_PANEL;
    c.bias = a->bias + o0;
    c.y = a->y + o0;
    switch (a->path) {
    case QN_KPATH_AVX512VNNI: qn_f16_gemm_avx512(&c); break;
    case QN_KPATH_AVXVNNI:
    case QN_KPATH_AVX2: qn_f16_gemm_f16c(&c); break;
    default: qn_f16_gemm_portable(&c); break;
    }
}

int qn_f16_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s, qn_cpu_pool *pool)
{
    qn_f16_args a = {
        .path = k->path, .rows = rows, .in = l->in, .out = l->out, .x = x, .ldx = l->in, .w = k->w16,
        .bias = k->bias, .relu = l->act == QN_ACT_RELU, .y = y, .ldy = l->out,
    };
    const int64_t npan = k->out16 / QN_PANEL;
    if (k->path == QN_KPATH_PORTABLE) {
        /* one widened panel in this thread's scratch: not split (the
         * portable path is for CPUs without AVX2) */
        a.tmp = qn_scratch_get(s, QN_SCR_F, (size_t)(l->in * QN_PANEL) * sizeof(float));
        if (!a.tmp) return QN_ENOMEM;
        gemm_panels(&a, 0, npan);
    } else if (pool && qn_kernel_split_wins(rows, 2 * l->in * l->out)) {
        /* 8 panels: the single-row AVX-512 kernel's tile */
        qn_kernel_split_panels(pool, npan, 8, gemm_panels, &a);
    } else {
        gemm_panels(&a, 0, npan);
    }
    if (l->act != QN_ACT_NONE && l->act != QN_ACT_RELU) qn_cpu_epilogue(y, rows, l->out, l->out, NULL, l->act);
    return 0;
}
