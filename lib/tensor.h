/* tensor.h: element types and small helpers shared by the codec, the model
 * loader and the kernels. Matrices in quern are row-major and dense unless a
 * layer says otherwise (see model.h). Nothing here allocates except
 * qn_alloc_aligned. */
#ifndef QN_TENSOR_H
#define QN_TENSOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    QN_DTYPE_F32 = 0,
    QN_DTYPE_F16,
    QN_DTYPE_BF16,
    QN_DTYPE_I8,
    QN_DTYPE_U8,
    QN_DTYPE_I32,
    QN_DTYPE_I64,
    QN_DTYPE_F64,
    QN_DTYPE_COUNT
} qn_dtype;

/* Size of one element in bytes; 0 for an invalid dtype. */
size_t qn_dtype_size(qn_dtype t);
/* Safetensors spelling ("F32", "F16", "I8", ...); NULL for an invalid dtype. */
const char *qn_dtype_st_name(qn_dtype t);
/* Parses a safetensors dtype string; 0 on success, QN_EFORMAT if unknown. */
int qn_dtype_from_st_name(const char *s, qn_dtype *out);

/* IEEE half <-> float, round-to-nearest-even; portable C (kernels use F16C). */
float qn_f16_to_f32(uint16_t h);
uint16_t qn_f32_to_f16(float f);

/* 64-byte aligned allocation (zeroed when zero != 0); free with free(). NULL on
 * failure or when n is 0. */
void *qn_alloc_aligned(size_t n, int zero);

/* Monotonic and wall clocks. */
uint64_t qn_now_ns(void);  /* CLOCK_MONOTONIC */
int64_t qn_wall_ms(void);  /* Unix time in ms, as deadline_ms uses */

#endif
