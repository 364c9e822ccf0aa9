/* bench_util.h: the deterministic random inputs the dense-layer benchmarks
 * share (same seed, same sequence, so runs of different drivers compare). */
#ifndef QN_BENCH_UTIL_H
#define QN_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor.h"

static uint64_t g_rng = 42;

/* Uniform in [-1, 1). */
static inline float frand1(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* n aligned floats, uniform in [-scale, scale); exits on allocation failure. */
static inline float *falloc_rand(int64_t n, float scale)
{
    float *p = qn_alloc_aligned((size_t)n * sizeof(float), 0);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    for (int64_t i = 0; i < n; i++) p[i] = scale * frand1();
    return p;
}

#endif
