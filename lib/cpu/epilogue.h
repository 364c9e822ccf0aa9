/* epilogue.h: the fused pass every dense kernel ends with: add the bias and
 * apply the activation, in place, in one sweep over the output while it is
 * still in cache. Shared by the f32, f16, int8 and sparse kernels. */
#ifndef QN_CPU_EPILOGUE_H
#define QN_CPU_EPILOGUE_H

#include <stdint.h>

#include "model.h"

/* y [rows, cols] row-major, leading dimension ld (>= cols). bias [cols] or
 * NULL. Softmax is per row and numerically stable (max subtracted). GELU is
 * the exact erf form (torch.nn.GELU default). NaN and ±Inf come out as
 * torch's: relu keeps NaN (and -0), gelu(-Inf) is NaN, sigmoid and tanh
 * saturate at ±Inf, a softmax row holding NaN or +Inf (or only -Inf) is all
 * NaN. */
void qn_cpu_epilogue(float *y, int64_t rows, int64_t cols, int64_t ld, const float *bias, qn_act act);

/* Scalar activations, for references and tests. */
float qn_act_scalar(qn_act act, float x);

#endif
