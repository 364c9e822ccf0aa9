/* sgemm_packed.h: the f32 dense product y[rows, out] = x[rows, in] · Wᵀ with W
 * packed once, at model load, into panels our own SIMD micro-kernels stream.
 *
 * Why: OpenBLAS 0.3.21's sgemm re-packs W on every call (~25% of the worker's
 * CPU on the wide model, bench/notes/sgemm.md); a model's weights never change,
 * so the packing is paid once here. The kernels keep an MR x (NV*16) tile of y
 * in registers, broadcast x and FMA against the panel, and add the bias and
 * relu (other activations: epilogue.h per tile, softmax per row) while the
 * tile is hot.
 *
 * Layout (shared by every ISA, so a packed W serves any of them): W [out, in]
 * row-major becomes ceil(out/16) panels of 16 output columns; panel p holds,
 * for k = 0 .. in-1, the 16 floats W[16p + j][k] (j = 0..15) contiguously,
 * columns past out zero. One panel is 16*in floats, 64-byte aligned.
 *
 * Numerics: every output element is one FMA chain over k = 0, 1, ... in order,
 * starting from 0, then + bias, whatever the ISA, tile shape, K blocking or
 * batch size: a row's result is bit-identical between the AVX-512 and AVX2
 * kernels and whatever other rows share its batch. It differs from BLAS's
 * (another summation order) in the last bits.
 *
 * Run-time dispatch: AVX-512F, else AVX2+FMA, else none (callers use BLAS).
 * QN_SGEMM=avx512|avx2|blas in the environment forces one (read once; a
 * forced ISA the CPU lacks falls back to the best one it has, with a warning). */
#ifndef QN_CPU_SGEMM_PACKED_H
#define QN_CPU_SGEMM_PACKED_H

#include <stdint.h>

#include "model.h"

#define QN_SGEMM_NR 16 /* output columns per panel */

typedef enum {
    QN_SGEMM_BLAS = 0, /* no packed kernel: the caller's BLAS path */
    QN_SGEMM_AVX2,     /* AVX2 + FMA, 256-bit */
    QN_SGEMM_AVX512,   /* AVX-512F, 512-bit */
    QN_SGEMM_ISA_COUNT
} qn_sgemm_isa;

typedef struct qn_sgemm_packed {
    int64_t in, out;  /* W's shape [out, in] */
    int64_t npanels;  /* ceil(out / 16) */
    float *panels;    /* npanels * 16 * in floats, 64-byte aligned, owned */
} qn_sgemm_packed;

/* "blas", "avx2", "avx512"; "invalid" otherwise. */
const char *qn_sgemm_isa_name(qn_sgemm_isa isa);
/* Does this CPU (and OS) run isa? BLAS always. */
int qn_sgemm_isa_supported(qn_sgemm_isa isa);
/* The ISA used when none is asked for: QN_SGEMM if set and supported, else
 * the best supported. Decided once per process, thread-safe. */
qn_sgemm_isa qn_sgemm_isa_default(void);

/* Packs w [out, in] (row-major, not modified, not kept). 0 with *out a new
 * packing (free with qn_sgemm_packed_free); QN_EINVAL for a NULL pointer or
 * in/out < 1 or past INT_MAX; QN_ENOMEM. */
int qn_sgemm_pack(const float *w, int64_t out_dim, int64_t in, qn_sgemm_packed **out);
/* Frees a packing; NULL-safe. Its signature is qn_layer.kernel_free's. */
void qn_sgemm_packed_free(void *p);

/* Tuning knobs for tests and benches; zero fields take the defaults. A tile
 * is mr rows x nv panels (nv*16 columns) of accumulators held in registers:
 * AVX-512 takes mr 1..8, nv 1..4, mr*nv <= 24 (zmm, 32 registers); AVX2
 * takes 1x1..1x4, 2x1, 2x2 and 3x1..6x1 (two ymm per panel, 16 registers). K is
 * processed kc at a time (partial sums kept in y between blocks), over blocks
 * of mc rows (mc >= mr). */
typedef struct qn_sgemm_opts {
    qn_sgemm_isa isa; /* QN_SGEMM_BLAS here means qn_sgemm_isa_default() */
    int mr, nv;
    int64_t kc, mc;
} qn_sgemm_opts;

/* y [rows, p->out] = act(x [rows, p->in] · Wᵀ + bias), all row-major without
 * padding; bias [out] or NULL; y must not alias x. Every element of y is
 * written. opts may be NULL (defaults). Returns 0; QN_EINVAL for a NULL
 * pointer, rows < 0, an invalid activation or invalid opts; QN_ENOTSUP when
 * the ISA asked for (or the default) is BLAS or not supported here. rows == 0
 * is a no-op. Stateless: concurrent calls on distinct y are fine. */
int qn_sgemm_packed_run(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                        qn_act act, float *y, const qn_sgemm_opts *opts);

/* As qn_sgemm_packed_run, restricted to the output panels [p_begin, p_end)
 * (columns 16*p_begin .. min(16*p_end, out) - 1 of every row of y; no other
 * element of y is read or written). Bias and relu are applied; any other
 * activation is NOT (softmax needs whole rows): the caller applies it with
 * qn_cpu_epilogue once every panel is done. For intra-op splits (dense.c):
 * each output is the same FMA chain as in the whole call, so a split result
 * is bit-identical to qn_sgemm_packed_run's. Returns as qn_sgemm_packed_run,
 * plus QN_EINVAL unless 0 <= p_begin <= p_end <= p->npanels; an empty range
 * is a no-op. Concurrent calls on disjoint panel ranges of one y are fine. */
int qn_sgemm_packed_run_panels(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                               qn_act act, float *y, const qn_sgemm_opts *opts, int64_t p_begin,
                               int64_t p_end);

/* ---- internal: the per-ISA drivers (sgemm_packed_<isa>.c, built only on
 * x86-64 with their own target flags), called by qn_sgemm_packed_run after
 * validation with every opt resolved and in range. They add the bias and
 * apply relu in registers, any other activation with qn_cpu_epilogue once a
 * block of mc rows is complete (still in cache), the latter only when epi
 * is set (whole rows: qn_sgemm_packed_run). They compute panels pb .. pe-1
 * only. */
void qn_sgemm_packed_avx512(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                            qn_act act, float *y, int mr, int nv, int64_t kc, int64_t mc, int64_t pb,
                            int64_t pe, int epi);
void qn_sgemm_packed_avx2(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                          qn_act act, float *y, int mr, int nv, int64_t kc, int64_t mc, int64_t pb,
                          int64_t pe, int epi);

#endif
