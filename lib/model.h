/* model.h: a loaded model: an ordered list of layers, immutable once loaded
 * and reference-counted, so that in-flight batches finish on the version they
 * started with while the registry swaps in a newer one.
 *
 * The on-disk format is safetensors with __metadata__ {"format":
 * "quern.mlp.v1", "layers": "<json array>"} (CONTRACT.md section 2) and the
 * project's compressed extension (schemas/model.md). Loading copies every
 * tensor into 64-byte aligned memory owned by the model. */
#ifndef QN_MODEL_H
#define QN_MODEL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"
#include "tensor.h"

typedef enum {
    QN_ACT_NONE = 0,
    QN_ACT_RELU,
    QN_ACT_GELU,     /* exact erf form, as torch.nn.GELU() */
    QN_ACT_SIGMOID,
    QN_ACT_TANH,
    QN_ACT_SOFTMAX,  /* over each row, numerically stable */
    QN_ACT_COUNT
} qn_act;

const char *qn_act_name(qn_act a);              /* "relu", ... */
int qn_act_from_name(const char *s, qn_act *out); /* 0 or QN_EFORMAT */

/* How a dense layer's weight is stored. */
typedef enum {
    QN_REP_F32 = 0, /* w [out, in] */
    QN_REP_F16,     /* w_f16 [out, in] */
    QN_REP_I8,      /* w_i8 [out, in], w_scale [out]: w = w_i8 * scale (symmetric per output channel) */
    QN_REP_CSR_F32, /* csr_indptr [out+1], csr_indices [nnz], csr_f32 [nnz] */
    QN_REP_CSR_I8,  /* as CSR_F32 with csr_i8 [nnz] and w_scale [out] */
    QN_REP_COUNT
} qn_rep;

const char *qn_rep_name(qn_rep r); /* "f32", "f16", "int8", "csr_f32", "csr_int8" */

typedef struct qn_layer {
    qn_rep rep;
    int64_t in, out;
    qn_act act;
    float *bias;           /* [out] or NULL */
    float *w;              /* QN_REP_F32 */
    uint16_t *w_f16;       /* QN_REP_F16 */
    int8_t *w_i8;          /* QN_REP_I8 */
    float *w_scale;        /* QN_REP_I8, QN_REP_CSR_I8 */
    int32_t *csr_indptr;   /* QN_REP_CSR_* */
    int32_t *csr_indices;
    float *csr_f32;
    int8_t *csr_i8;
    int64_t nnz;
    void *kernel_data;     /* kernel-private packed form, built at load (owned,
                              freed with kernel_free) */
    void (*kernel_free)(void *kernel_data);
} qn_layer;

typedef struct qn_model {
    char name[QN_MODEL_NAME_MAX + 1];
    int64_t version;
    int nlayers;
    qn_layer *layers;
    int64_t in_dim, out_dim;
    int64_t max_width;      /* widest activation (in or out of any layer) */
    size_t file_bytes;      /* size of the file it came from */
    size_t param_count;

    /* Backend state, set once by whoever prepares the model for a backend
     * (the registry), released at the last unref. */
    const struct qn_backend *backend;
    void *backend_state;

    atomic_int refs;
} qn_model;

/* Loads and validates a model file. 0 on success with *out holding one
 * reference; QN_EIO / QN_EFORMAT / QN_ESHAPE / QN_ENOMEM with a reason in err
 * otherwise. name/version are recorded as given (the registry passes the
 * directory names). */
int qn_model_load(const char *path, const char *name, int64_t version, qn_model **out, char *err,
                  size_t errlen);

/* Takes one more reference; returns m. */
qn_model *qn_model_ref(qn_model *m);
/* Drops one reference and sets *m to NULL; the last one releases backend
 * state and frees everything. NULL-safe. */
void qn_model_unref(qn_model **m);

/* Parameter bytes as stored (for inspect / compress reports). */
size_t qn_layer_bytes(const qn_layer *l);

#endif
