/* backend.h: the compute interface. A backend is a const table of function
 * pointers (as ggml's ggml_backend_i) plus its own state. The core calls only
 * these; it never includes CUDA or BLAS headers. CPU lives in lib/cpu/, CUDA
 * in cuda/. */
#ifndef QN_BACKEND_H
#define QN_BACKEND_H

#include <stdint.h>

#include "model.h"

typedef struct qn_backend qn_backend;

typedef struct qn_backend_i {
    /* Short name for logs and flags: "cpu", "cuda". */
    const char *name;

    /* Prepares a freshly loaded model for this backend (pack or upload
     * weights, pick kernels per layer). Called once per model version before
     * any forward, from the loading thread. On success *state is the
     * backend's (may be NULL); returns 0 or a QN_E* code, in which case the
     * version is not served. */
    int (*model_prepare)(qn_backend *be, qn_model *m, void **state);

    /* Releases what model_prepare made. Called once, at the model's last
     * unref, from any thread. */
    void (*model_release)(qn_backend *be, qn_model *m, void *state);

    /* Creates a per-thread execution context (scratch buffers, streams).
     * Each executor thread owns one; forward calls on distinct contexts may
     * run concurrently. Returns 0 or a QN_E* code. */
    int (*ctx_create)(qn_backend *be, void **ctx);
    void (*ctx_destroy)(qn_backend *be, void *ctx);

    /* Optional (NULL: not supported, callers skip it). Marks ctx for
     * intra-op parallelism (on != 0) or not (0, the default at ctx_create):
     * while marked, a forward with few rows may spread one layer's work over
     * helper threads on other cores (CPU: lib/cpu/pool.h) to cut latency.
     * Only for a forward that is alone on an otherwise idle machine (the
     * core's direct path with idle executors): executor batches already use
     * every core. Results do not change. Called by ctx's owning thread. */
    void (*ctx_set_intraop)(qn_backend *be, void *ctx, int on);

    /* Runs x [rows, m->in_dim] through every layer of m into y [rows,
     * m->out_dim]. x and y are host memory, row-major f32, and do not alias.
     * Returns 0 or a QN_E* code (the batch's jobs then get "internal"). */
    int (*forward)(qn_backend *be, void *ctx, const qn_model *m, void *state, const float *x,
                   int64_t rows, float *y);

    /* Frees the backend itself. */
    void (*destroy)(qn_backend *be);
} qn_backend_i;

struct qn_backend {
    const qn_backend_i *iface;
    void *impl;
};

/* The CPU backend (lib/cpu/). threads: OpenBLAS threads per forward call
 * (1 is what the executor uses; see bench/README.md for why). It also starts
 * its intra-op helper pool (ctx_set_intraop), one helper per online core
 * beyond the first, at most 3, none on one core; QN_INTRAOP=0 in the
 * environment starts none (ctx_set_intraop is then a no-op), and
 * QN_INTRAOP_SPIN_US (default 250) is how long an idle helper spins before
 * sleeping: longer than the gap between a lone client's requests (~100-170
 * µs over ZeroMQ), so at one job in flight the helper is awake when the next
 * forward comes (bench/notes/intraop.md; with 50 the split lost). A pool that cannot start only costs the speed-up (a warning). */
int qn_backend_cpu_create(int blas_threads, qn_backend **out);
/* Destroys any backend; sets *be to NULL. NULL-safe. */
void qn_backend_destroy(qn_backend **be);

/* Convenience wrappers that go through the table. */
static inline int qn_backend_forward(qn_backend *be, void *ctx, const qn_model *m, const float *x,
                                     int64_t rows, float *y)
{
    return be->iface->forward(be, ctx, m, m->backend_state, x, rows, y);
}

#endif
