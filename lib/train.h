/* train.h: fitting dense f32 MLPs with mini-batch gradient descent, with
 * torch's numbers (CONTRACT.md section 3, "Train job").
 *
 * A qn_tnet is a trainable copy of a model: f32 weights [out, in] and biases,
 * the optimizer's per-parameter state (torch.optim's names: exp_avg,
 * exp_avg_sq, momentum_buffer, square_avg, grad_avg) and the schedule's
 * state, all of which persist with a version (train_store.c,
 * schemas/model.md) so that a later job continues exactly.
 *
 * Semantics are torch 1.13's, step for step:
 *  - losses: mse is torch.nn.MSELoss (mean over all elements);
 *    cross_entropy is torch.nn.CrossEntropyLoss (mean over rows) on the
 *    logits: a final softmax layer is skipped in training (folded into the
 *    loss); targets are class indices [rows, 1] or probabilities [rows, out];
 *  - optimizers: torch.optim.SGD (momentum, dampening, nesterov,
 *    weight_decay), Adam (betas, eps, weight_decay, torch's bias
 *    correction), RMSprop (alpha, eps, momentum, weight_decay, centered);
 *  - schedules: constant; exponential per optimizer step, TF's
 *    ExponentialDecay lr * rate^(step / decay_steps) (staircase: floor);
 *    per epoch torch's StepLR and CosineAnnealingLR (their recursive forms,
 *    as 1.13 computes them) and ReduceLROnPlateau (mode min, threshold_mode
 *    rel) on the validation loss, else the epoch's training loss.
 * The GEMMs go to cblas_sgemm on the calling thread; the elementwise work is
 * fused: bias + activation in one pass forward, activation derivative + bias
 * gradient in one pass backward, and each layer's optimizer update right
 * after its gradients, while they are still in cache. Nothing here allocates
 * per step: a qn_train_ws holds every buffer for a batch size. */
#ifndef QN_TRAIN_H
#define QN_TRAIN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define QN_TRAIN_MAX_LAYERS 64

typedef enum { QN_LOSS_MSE = 0, QN_LOSS_CROSS_ENTROPY } qn_loss_kind;
typedef enum { QN_OPT_SGD = 0, QN_OPT_ADAM, QN_OPT_RMSPROP, QN_OPT_COUNT } qn_opt_kind;
typedef enum {
    QN_SCHED_CONSTANT = 0,
    QN_SCHED_EXPONENTIAL,
    QN_SCHED_STEP,
    QN_SCHED_COSINE,
    QN_SCHED_PLATEAU,
    QN_SCHED_COUNT
} qn_sched_kind;

const char *qn_opt_name(qn_opt_kind k);     /* "sgd", "adam", "rmsprop" */
const char *qn_sched_name(qn_sched_kind k); /* "constant", ... */
const char *qn_loss_name(qn_loss_kind k);   /* "mse", "cross_entropy" */

/* torch.optim's parameters; qn_opt_defaults fills torch's defaults. */
typedef struct qn_opt_spec {
    qn_opt_kind kind;
    double lr;
    double momentum, dampening, weight_decay; /* sgd: momentum, dampening, nesterov; rmsprop: momentum */
    bool nesterov, centered;
    double beta1, beta2, eps; /* adam; rmsprop: eps */
    double alpha;             /* rmsprop */
} qn_opt_spec;
void qn_opt_defaults(qn_opt_kind kind, qn_opt_spec *o);

typedef struct qn_sched_spec {
    qn_sched_kind kind;
    int64_t decay_steps; double decay_rate; bool staircase; /* exponential */
    int64_t step_size; double gamma;                        /* step */
    int64_t t_max; double eta_min;                          /* cosine */
    double factor, threshold, min_lr; int64_t patience, cooldown; /* plateau (torch defaults) */
} qn_sched_spec;
void qn_sched_defaults(qn_sched_kind kind, qn_sched_spec *s);

/* Everything a train job asks for besides which model (job.c decodes it).
 * One heap block with its data; free with qn_train_spec_free. */
typedef struct qn_train_spec {
    qn_loss_kind loss;
    qn_opt_spec opt;
    qn_sched_spec sched;
    int64_t epochs, batch_size;
    bool shuffle;
    uint64_t seed;
    /* init: a new model instead of a stored version */
    bool has_init;
    int64_t init_in;
    int init_n;
    int64_t init_units[QN_TRAIN_MAX_LAYERS];
    qn_act init_acts[QN_TRAIN_MAX_LAYERS];
    uint64_t init_seed;
    /* data, row-major f32 */
    int64_t rows, x_cols, y_cols;
    float *x, *y;
    int64_t val_rows, xv_cols, yv_cols; /* val_rows 0: no validation set */
    float *xv, *yv;
    /* early stopping on the validation loss (else the training loss) */
    bool early_stopping;
    int64_t es_patience;
    double es_min_delta;
} qn_train_spec;
void qn_train_spec_free(qn_train_spec **s);

/* One trainable layer. The optimizer slots are NULL until first used. */
typedef struct qn_tlayer {
    int64_t in, out;
    qn_act act;
    float *w, *b;          /* [out*in], [out] or NULL (no bias) */
    /* optimizer state per parameter, torch's names:
     * sgd [0] momentum_buffer; adam [0] exp_avg, [1] exp_avg_sq;
     * rmsprop [0] square_avg, [1] momentum_buffer, [2] grad_avg */
    float *wst[3], *bst[3];
    char *wname, *bname;   /* tensor names in the file (kept across versions) */
} qn_tlayer;

/* The schedule's state, carried across jobs. */
typedef struct qn_sched_state {
    bool valid;             /* false: start fresh at the job's lr */
    qn_sched_kind kind;
    double base_lr, lr;     /* the job's lr when it started; the lr now */
    int64_t step, epoch;    /* optimizer steps and epochs under this schedule */
    double best;            /* plateau */
    int64_t bad_epochs, cooldown_left;
} qn_sched_state;

typedef struct qn_tnet {
    int nlayers;
    qn_tlayer layers[QN_TRAIN_MAX_LAYERS];
    int64_t in_dim, out_dim, max_width;
    /* optimizer state: which optimizer it belongs to and torch's step count */
    bool opt_valid;
    qn_opt_kind opt_kind;
    bool slot_set[3];       /* whether slot k holds state (torch: None or not) */
    int64_t opt_step;
    int64_t epochs_done;    /* all jobs together: seeds each epoch's shuffle */
    qn_sched_state sched;
} qn_tnet;

/* A new net with torch nn.Linear's default init, from our own PRNG
 * (splitmix64 seeded by seed): weight and bias uniform in
 * [-1/sqrt(in), 1/sqrt(in)] (kaiming_uniform_(a=sqrt(5)) works out to
 * that bound). Tensor names "layers.<i>.weight" / "layers.<i>.bias". */
int qn_tnet_init(qn_tnet *net, int64_t in_dim, int n, const int64_t *units, const qn_act *acts,
                 uint64_t seed);
/* A net from an f32 model (no optimizer state); names given per layer
 * (NULL: defaults). QN_ENOTSUP for compressed layers. */
int qn_tnet_from_model(qn_tnet *net, const qn_model *m);
void qn_tnet_free(qn_tnet *net);
/* Allocates (zeroed) the optimizer slots kind needs; drops others. 0 or QN_ENOMEM. */
int qn_tnet_opt_slots(qn_tnet *net, const qn_opt_spec *o);

/* Per-batch-size buffers. */
typedef struct qn_train_ws {
    int64_t cap_rows;
    float *act[QN_TRAIN_MAX_LAYERS];  /* each layer's output [rows, out] */
    float *pre[QN_TRAIN_MAX_LAYERS];  /* pre-activation, kept only for gelu */
    float *g0, *g1;                   /* gradient ping-pong [rows, max_width] */
    float *dw[QN_TRAIN_MAX_LAYERS], *db[QN_TRAIN_MAX_LAYERS];
    float *xb, *yb;                   /* gathered (shuffled) batch */
} qn_train_ws;
int qn_train_ws_init(qn_train_ws *ws, const qn_tnet *net, int64_t rows, int64_t y_cols);
void qn_train_ws_free(qn_train_ws *ws);

/* Forward over rows of x; returns the last layer's output in ws (with the
 * final softmax skipped when fold_softmax: the logits). */
const float *qn_train_forward(const qn_tnet *net, qn_train_ws *ws, const float *x, int64_t rows,
                              bool fold_softmax);

/* Loss of out (rows x out_dim, the forward's output) against y, as torch
 * reduces it; also counts correct argmax predictions (cross_entropy) in
 * *correct (may be NULL). y_cols 1 with cross_entropy: class indices. */
double qn_train_loss(qn_loss_kind loss, bool fold_softmax, const float *out, const float *y,
                     int64_t rows, int64_t out_dim, int64_t y_cols, int64_t *correct);

/* One batch: forward, loss, backward into ws->dw/db. With opt, each layer is
 * also updated (torch's optimizer step at learning rate lr; opt_step is
 * incremented once). Returns the batch loss. */
double qn_train_step(qn_tnet *net, qn_train_ws *ws, qn_loss_kind loss, const float *x,
                     const float *y, int64_t rows, int64_t y_cols, const qn_opt_spec *opt,
                     double lr, int64_t *correct);

/* Progress, handed to the callback at most every min_interval and after
 * each epoch (the last always). */
typedef struct qn_train_progress {
    int64_t epoch;      /* 1-based within this job */
    int64_t epochs;
    int64_t step;       /* optimizer steps in this job */
    double loss;        /* running mean of this epoch's batch losses */
    double lr;
    bool epoch_end;
    bool has_val;
    double val_loss, val_accuracy;
    double accuracy;    /* training accuracy this epoch (cross_entropy), else NAN */
    double rows_per_s;
} qn_train_progress;

typedef struct qn_train_outcome {
    int64_t epochs_run, steps;
    double loss, accuracy;          /* last epoch's training loss / accuracy (NAN: n/a) */
    bool has_val;
    double val_loss, val_accuracy;
    bool stopped_early;
    char message[256];              /* on failure */
} qn_train_outcome;

typedef struct qn_train_hooks {
    void *ud;
    /* Returns nonzero to stop the job (the run then returns QN_ECLOSED). */
    int (*progress)(void *ud, const qn_train_progress *p);
    const atomic_int *cancel;       /* nonzero: stop at the next batch; may be NULL */
    uint64_t min_interval_ns;       /* between mid-epoch reports; 0: 500 ms */
} qn_train_hooks;

/* Checks spec's data against net (shapes, class indices, finite values).
 * 0, or QN_ESHAPE (shapes) / QN_EINVAL (values) with the reason in msg. */
int qn_train_check(const qn_tnet *net, const qn_train_spec *spec, char *msg, size_t msglen);

/* Runs the whole job on net. 0 on success; QN_ERANGE-like failures:
 * QN_EINVAL/QN_ESHAPE (bad data, as qn_train_check), QN_EFORMAT when the
 * loss or weights went NaN/inf (the contract's "diverged"), QN_ECLOSED when
 * cancelled, QN_ENOMEM. The reason is in out->message. */
#define QN_TRAIN_DIVERGED QN_EFORMAT
int qn_train_run(qn_tnet *net, const qn_train_spec *spec, const qn_train_hooks *hooks,
                 qn_train_outcome *out);

/* The learning rate the schedule gives now (before the next step). */
double qn_sched_lr(const qn_sched_state *s);

#endif
