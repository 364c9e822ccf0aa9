/* compress.h: turns a dense f32 model into a compressed "quern.mlp.c1" file
 * (schemas/model.md) and measures what the compression costs. Used by
 * `quern compress`; never by the worker.
 *
 * What each option does, per layer:
 *  - int8: weights to int8 with per-output-channel symmetric scales,
 *    scale[o] = max_i |w[o][i]| / 127 (1 for an all-zero row),
 *    q = clamp(round-half-even(w / scale), -127, 127).
 *  - fp16: weights rounded to IEEE binary16 (round to nearest even).
 *  - prune F (unstructured): the F fraction of all the model's weights with
 *    the smallest |w| becomes 0 (one global threshold, so layers end up with
 *    different densities). A layer is stored as CSR (csr_f32, or csr_int8
 *    with int8) when that is smaller than the dense form of the same value
 *    type (f32: density below ~1/2; int8: below ~1/5), or always with
 *    force_csr; otherwise it stays dense with explicit zeros. fp16 has no
 *    CSR form: prune with fp16 keeps dense f16 zeros.
 *  - prune F with structured: in every layer but the last, the F fraction of
 *    neurons (output rows) with the smallest L2 norm of their weight row is
 *    removed, together with their bias and the matching input column of the
 *    next layer, so the model shrinks and stays dense (then int8 / fp16
 *    apply as above). At least one neuron is kept.
 * A model whose layers are not all f32 is refused (compress starts from the
 * full-precision model). */
#ifndef QN_COMPRESS_H
#define QN_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct qn_compress_opts {
    int int8;          /* int8 weights (exclusive with fp16) */
    int fp16;          /* f16 weights */
    double prune;      /* in [0, 1): fraction of weights (or neurons) removed */
    int structured;    /* prune whole neurons instead of single weights */
    int force_csr;     /* unstructured prune: store CSR even where dense is smaller */
} qn_compress_opts;

/* What became of one layer. */
typedef struct qn_compress_layer {
    qn_rep rep;            /* as written */
    int64_t in, out;       /* as written (structured pruning shrinks them) */
    int64_t nnz;           /* non-zero weights as written */
    size_t bytes_before;   /* qn_layer_bytes of the source layer */
    size_t bytes_after;    /* the same measure for the written layer */
} qn_compress_layer;

/* Writes the compressed form of m to path (via path.tmp and a rename).
 * info, if not NULL, has m->nlayers entries and is filled. Returns 0;
 * QN_EINVAL (int8 with fp16, prune outside [0, 1), structured without
 * prune), QN_ENOTSUP (a layer of m is not f32), QN_EIO or QN_ENOMEM; err
 * gets a one-line reason. m is only read. */
int qn_compress_write(const qn_model *m, const qn_compress_opts *o, const char *path,
                      qn_compress_layer *info, char *err, size_t errlen);

/* y [rows, m->out_dim] = the model applied to x [rows, m->in_dim], every
 * layer through the lib/cpu kernels (any representation). Prepares the
 * layers' kernel data on first use (so m is modified: call it only on a
 * model nobody else is running). 0, QN_ENOMEM or a kernel error. */
int qn_compress_forward(qn_model *m, const float *x, int64_t rows, float *y);

/* Error and accuracy of a compressed model against its reference. */
typedef struct qn_compress_eval {
    double max_abs, mean_abs;  /* over all outputs */
    int has_accuracy;
    double acc_ref, acc_cmp;   /* fraction of rows whose argmax matches the label */
} qn_compress_eval;

/* Runs x [rows, in] through ref and cmp (which must have the same in_dim and
 * out_dim) and compares. labels: NULL, or [rows, lcols] with lcols 1 (class
 * indices as numbers) or out_dim (one-hot / scores: their argmax). 0,
 * QN_ESHAPE (dims differ), QN_EINVAL (a label outside [0, out_dim)) or
 * QN_ENOMEM. */
int qn_compress_evaluate(qn_model *ref, qn_model *cmp, const float *x, int64_t rows, const float *labels,
                         int64_t lcols, qn_compress_eval *out);

#endif
