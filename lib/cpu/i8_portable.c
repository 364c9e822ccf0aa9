/* i8_portable.c: the int8 GEMM in plain C over the shared panel layout
 * (kernels_impl.h), for CPUs without AVX2 and as the readable statement of
 * what every SIMD path computes: exact int32 sums of u8·s8, then the fused
 * dequantize + bias (+ ReLU) epilogue. Its int32 sums must equal the SIMD
 * paths' bit for bit. */
#include "cpu/kernels_impl.h"

void qn_i8_gemm_portable(const qn_i8_args *a)
{
    const int64_t npan = (a->out + QN_PANEL - 1) / QN_PANEL, ngrp = a->in4 / 4;
    for (int64_t p = 0; p < npan; p++) {
        const int8_t *wp = a->w + p * a->in4 * QN_PANEL;
        const int64_t o0 = p * QN_PANEL;
        const int64_t n = a->out - o0 < QN_PANEL ? a->out - o0 : QN_PANEL;
        for (int64_t r = 0; r < a->rows; r++) {
            const uint8_t *xq = a->xq + r * a->ldq;
            int32_t acc[QN_PANEL] = {0};
            for (int64_t g = 0; g < ngrp; g++) {
                const int8_t *blk = wp + g * 64;
                const uint8_t *xg = xq + g * 4;
                for (int l = 0; l < QN_PANEL; l++)
                    for (int j = 0; j < 4; j++) acc[l] += (int32_t)xg[j] * (int32_t)blk[l * 4 + j];
            }
            float *y = a->y + r * a->ldy + o0;
            const int32_t zp = a->zp[r];
            const float xs = a->xs[r];
            for (int64_t l = 0; l < n; l++) {
                int32_t c = acc[l] - zp * a->colsum[o0 + l];
                float v = (float)c * (xs * a->wscale[o0 + l]) + a->bias[o0 + l];
                if (a->relu && v < 0.0f) v = 0.0f;
                y[l] = v;
            }
        }
    }
}
