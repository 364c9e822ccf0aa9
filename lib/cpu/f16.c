/* f16.c: the fp16 layer driver (packing at prepare, path dispatch per
 * forward) and the portable fp16 GEMM. The portable kernel widens one
 * 16-output panel at a time into scratch with the C half-float converter and
 * reuses it for every row: slower than F16C, but it keeps the memory saving
 * and exists only for CPUs without AVX2. */
#include <string.h>

#include "cpu/epilogue.h"
#include "cpu/kernels_impl.h"
#include "error.h"
#include "tensor.h"

void qn_f16_gemm_portable(const qn_f16_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL;
    for (int64_t p = 0; p < npan; p++) {
        const uint16_t *wp = a->w + p * a->in * QN_PANEL;
        for (int64_t i = 0; i < a->in * QN_PANEL; i++) a->tmp[i] = qn_f16_to_f32(wp[i]);
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

int qn_f16_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                   qn_kernel_scratch *s)
{
    qn_f16_args a = {
        .rows = rows, .in = l->in, .out = l->out, .x = x, .ldx = l->in, .w = k->w16,
        .bias = k->bias, .relu = l->act == QN_ACT_RELU, .y = y, .ldy = l->out,
    };
    switch (k->path) {
    case QN_KPATH_AVX512VNNI: qn_f16_gemm_avx512(&a); break;
    case QN_KPATH_AVXVNNI:
    case QN_KPATH_AVX2: qn_f16_gemm_f16c(&a); break;
    default:
        a.tmp = qn_scratch_get(s, QN_SCR_F, (size_t)(l->in * QN_PANEL) * sizeof(float));
        if (!a.tmp) return QN_ENOMEM;
        qn_f16_gemm_portable(&a);
        break;
    }
    if (l->act != QN_ACT_NONE && l->act != QN_ACT_RELU) qn_cpu_epilogue(y, rows, l->out, l->out, NULL, l->act);
    return 0;
}
