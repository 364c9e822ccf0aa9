/* epilogue.c: bias + activation, fused. Written as simple loops over a row so
 * that the compiler vectorises bias/relu; the transcendental activations are
 * libm-bound (expf/tanhf/erff), which at these sizes costs far less than the
 * GEMM that precedes them (bench/README.md). */
#include "cpu/epilogue.h"

#include <math.h>

float qn_act_scalar(qn_act act, float x)
{
    switch (act) {
    case QN_ACT_RELU: return x < 0.0f ? 0.0f : x; /* NaN and -0 pass, as torch.relu */
    case QN_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case QN_ACT_SIGMOID:
        /* split by sign so expf never overflows */
        if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
        else { float e = expf(x); return e / (1.0f + e); }
    case QN_ACT_TANH: return tanhf(x);
    case QN_ACT_NONE:
    case QN_ACT_SOFTMAX: /* row-wise, not scalar */
    default: return x;
    }
}

static void softmax_row(float *r, int64_t n)
{
    float mx = r[0];
    for (int64_t j = 1; j < n; j++) mx = r[j] > mx ? r[j] : mx;
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) { r[j] = expf(r[j] - mx); sum += r[j]; }
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < n; j++) r[j] *= inv;
}

void qn_cpu_epilogue(float *y, int64_t rows, int64_t cols, int64_t ld, const float *bias, qn_act act)
{
    for (int64_t i = 0; i < rows; i++) {
        float *restrict r = y + i * ld;
        if (bias)
            for (int64_t j = 0; j < cols; j++) r[j] += bias[j];
        switch (act) {
        case QN_ACT_NONE: break;
        case QN_ACT_RELU:
            /* NaN must stay NaN (torch.relu does; `x > 0 ? x : 0` made a NaN
             * row a plausible answer). Written so that it is maxps(0, x),
             * whose second operand wins for NaN: branch-free and vectorized. */
            for (int64_t j = 0; j < cols; j++) r[j] = r[j] < 0.0f ? 0.0f : r[j];
            break;
        case QN_ACT_SOFTMAX: softmax_row(r, cols); break;
        default:
            for (int64_t j = 0; j < cols; j++) r[j] = qn_act_scalar(act, r[j]);
            break;
        }
    }
}
