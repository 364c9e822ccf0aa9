/* tensor.c: dtype tables, half-float conversion, aligned allocation, clocks. */
#include "tensor.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct { const char *name; size_t size; } g_dtypes[QN_DTYPE_COUNT] = {
    [QN_DTYPE_F32] = {"F32", 4}, [QN_DTYPE_F16] = {"F16", 2}, [QN_DTYPE_BF16] = {"BF16", 2},
    [QN_DTYPE_I8] = {"I8", 1},   [QN_DTYPE_U8] = {"U8", 1},   [QN_DTYPE_I32] = {"I32", 4},
    [QN_DTYPE_I64] = {"I64", 8}, [QN_DTYPE_F64] = {"F64", 8},
};

size_t qn_dtype_size(qn_dtype t) { return (unsigned)t < QN_DTYPE_COUNT ? g_dtypes[t].size : 0; }
const char *qn_dtype_st_name(qn_dtype t) { return (unsigned)t < QN_DTYPE_COUNT ? g_dtypes[t].name : NULL; }

int qn_dtype_from_st_name(const char *s, qn_dtype *out)
{
    for (int i = 0; i < QN_DTYPE_COUNT; i++)
        if (strcmp(s, g_dtypes[i].name) == 0) { *out = (qn_dtype)i; return 0; }
    return QN_EFORMAT;
}

float qn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t qn_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff);
    uint32_t man = x & 0x7fffff;
    if (exp == 255) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0)); /* inf / nan */
    int32_t e = exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);                       /* overflow -> inf */
    if (e <= 0) {                                                         /* subnormal or zero */
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* may carry into exp: correct */
    return (uint16_t)half;
}

void *qn_alloc_aligned(size_t n, int zero)
{
    if (n == 0) return NULL;
    size_t rounded = (n + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (p && zero) memset(p, 0, rounded);
    return p;
}

uint64_t qn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t qn_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
