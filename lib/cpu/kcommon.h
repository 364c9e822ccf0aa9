/* kcommon.h: what every compressed-layer kernel shares, below all of them:
 * the panel geometry, the per-thread scratch, the non-finite row check and
 * fix-up, and the intra-op split of a layer's output panels over the helper
 * pool. kernels.c (the dispatcher) sits above the representation drivers
 * (quant.c, f16.c, csr.c), which sit above this; nothing here calls up.
 * Private to lib/cpu/ (and the kernel unit test); the contract is kernels.h. */
#ifndef QN_CPU_KCOMMON_H
#define QN_CPU_KCOMMON_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/kernels.h"
#include "cpu/pool.h"

/* Output channels per packed panel, for every representation and path. */
#define QN_PANEL 16

static inline int64_t qn_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* ---- per-thread scratch (kernels.h's qn_kernel_scratch) */

/* A few independent growable buffers: quantized activations, their int16
 * widening, f32 temporaries, per-row statistics, the non-finite fix-up's
 * column list. */
enum { QN_SCR_Q, QN_SCR_Q16, QN_SCR_F, QN_SCR_STATS, QN_SCR_NF, QN_SCR_COUNT };
struct qn_kernel_scratch {
    void *buf[QN_SCR_COUNT];
    size_t cap[QN_SCR_COUNT];
};
/* A 64-byte aligned buffer of at least bytes (contents undefined), or NULL. */
void *qn_scratch_get(qn_kernel_scratch *s, int slot, size_t bytes);

/* ---- NaN and Inf (torch semantics, issue 9 item 3)
 *
 * A kernel that does not multiply every input by every weight (int8: the
 * row is quantized, and a NaN or an Inf has no quantized value; CSR: absent
 * weights are never multiplied) would lose what the f32 model computes for
 * a row holding a NaN or an Inf: NaN · w = NaN and Inf · 0 = NaN for every
 * output, Inf · w = ±Inf. Such a row is therefore computed apart. Its exact
 * pre-activation is b_o + Σ_k x_k·W_ok, where the terms with finite x_k are
 * finite and each term with a non-finite x_k is ±Inf or NaN, so the whole
 * sum is Σ_{k non-finite} x_k·W_ok (+ b_o, which changes nothing): IEEE
 * addition of ±Inf and NaN does not depend on order. The fix-up computes
 * just that, over the few non-finite columns, and overwrites the row's
 * outputs before the activation. Rows without NaN/Inf are never touched;
 * finite inputs whose products overflow are not special-cased (they stay
 * what the kernel computes). */

/* 1 if x [n] holds a NaN or ±Inf, else 0. Branch-free over the row (an
 * integer test of the exponent bits, which vectorizes on baseline SSE2). */
int qn_row_nonfinite(const float *x, int64_t n);
/* The columns of x [n] holding NaN or ±Inf, in order, into cols [n];
 * returns how many. */
int64_t qn_nonfinite_cols(const float *x, int64_t n, int32_t *cols);

/* ---- intra-op split
 *
 * The drivers' forward for few rows of a big layer may cut the layer's
 * output panels into chunks run by the caller and the pool's helpers
 * (pool.h): the same rule and chunking as the f32 split (dense.c), so every
 * representation gets what f32 layers get on the direct path. Each output
 * is computed by the same code as without the split: bit-identical. */

/* fn(arg, p_begin, p_end) computes output panels [p_begin, p_end). */
typedef void (*qn_panel_fn)(void *arg, int64_t p_begin, int64_t p_end);
/* Runs fn over panels [0, npanels) in chunks of at least min_per panels,
 * about 4 per thread, over pool (NULL: one call on the caller). Returns
 * when every chunk is done. */
void qn_kernel_split_panels(qn_cpu_pool *pool, int64_t npanels, int64_t min_per, qn_panel_fn fn, void *arg);
/* Whether a forward of rows rows over a layer whose pass streams wbytes
 * bytes of weights is worth splitting: rows <= QN_KERNEL_SPLIT_MAX_ROWS and
 * wbytes >= QN_KERNEL_SPLIT_MIN_BYTES, whatever the row count. Few-row
 * passes are memory-bound: the weights stream once for all the rows, so the
 * time a split can save scales with the bytes, not with rows·bytes (int8 and
 * f16 1024 x 256 lost at 2 and 4 rows, 1024 x 1024 won: bench/notes/
 * intraop.md). 1 MiB is the f32 rule's 256K MACs at 4 bytes. */
#define QN_KERNEL_SPLIT_MAX_ROWS 4
#define QN_KERNEL_SPLIT_MIN_BYTES (1024 * 1024)
int qn_kernel_split_wins(int64_t rows, int64_t wbytes);
/* Replaces QN_KERNEL_SPLIT_MIN_BYTES (>= 1; 0 restores it) for the whole
 * process, so that tests can force splits on small odd shapes and benches
 * can time split against unsplit. Not for production use. */
void qn_kernel_set_split_min_bytes(int64_t bytes);

#endif
