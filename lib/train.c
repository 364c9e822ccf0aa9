/* train.c: forward with activations kept, backward, torch's optimizers and
 * schedules, and the epoch loop (train.h is the contract).
 *
 * Layout of one step over a batch of B rows:
 *   forward   per layer: sgemm Z = X·Wᵀ, then one pass b + act (Z kept only
 *             where the derivative needs it: gelu);
 *   loss      one pass over the output that also writes dL/dout;
 *   backward  per layer, last first: one pass dZ = dA ⊙ act' that also sums
 *             the bias gradient, sgemm dW = dZᵀ·X, sgemm dX = dZ·W (not for
 *             the first layer), then the optimizer update of this layer's
 *             W and b while dW is still in cache.
 * Must never allocate inside the step, nor touch anything but the net and
 * its workspace: it runs on the trainer's thread beside inference. */
#include "train.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"

static const char *const g_opt_names[QN_OPT_COUNT] = {"sgd", "adam", "rmsprop"};
static const char *const g_sched_names[QN_SCHED_COUNT] = {"constant", "exponential", "step", "cosine",
                                                          "plateau"};

const char *qn_opt_name(qn_opt_kind k) { return (unsigned)k < QN_OPT_COUNT ? g_opt_names[k] : "?"; }
const char *qn_sched_name(qn_sched_kind k) { return (unsigned)k < QN_SCHED_COUNT ? g_sched_names[k] : "?"; }
const char *qn_loss_name(qn_loss_kind k) { return k == QN_LOSS_MSE ? "mse" : "cross_entropy"; }

void qn_opt_defaults(qn_opt_kind kind, qn_opt_spec *o)
{
    memset(o, 0, sizeof *o);
    o->kind = kind;
    switch (kind) {
    case QN_OPT_SGD: o->lr = 0; break; /* torch: required */
    case QN_OPT_ADAM: o->lr = 1e-3; o->beta1 = 0.9; o->beta2 = 0.999; o->eps = 1e-8; break;
    case QN_OPT_RMSPROP: o->lr = 1e-2; o->alpha = 0.99; o->eps = 1e-8; break;
    default: break;
    }
}

void qn_sched_defaults(qn_sched_kind kind, qn_sched_spec *s)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->staircase = false;
    s->gamma = 0.1;          /* StepLR */
    s->eta_min = 0;          /* CosineAnnealingLR */
    s->factor = 0.1;         /* ReduceLROnPlateau */
    s->patience = 10;
    s->threshold = 1e-4;
    s->min_lr = 0;
    s->cooldown = 0;
}

void qn_train_spec_free(qn_train_spec **s)
{
    if (!s || !*s) return;
    free(*s);
    *s = NULL;
}

/* ---- nets ---- */

static float *falloc(int64_t n)
{
    size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 random bits (exact in f32). */
static float u01(uint64_t *x) { return (float)(splitmix64(x) >> 40) * (1.0f / 16777216.0f); }

static void net_dims(qn_tnet *net)
{
    net->in_dim = net->layers[0].in;
    net->out_dim = net->layers[net->nlayers - 1].out;
    net->max_width = net->in_dim;
    for (int i = 0; i < net->nlayers; i++)
        if (net->layers[i].out > net->max_width) net->max_width = net->layers[i].out;
}

int qn_tnet_init(qn_tnet *net, int64_t in_dim, int n, const int64_t *units, const qn_act *acts,
                 uint64_t seed)
{
    memset(net, 0, sizeof *net);
    if (n < 1 || n > QN_TRAIN_MAX_LAYERS || in_dim < 1) return QN_EINVAL;
    uint64_t st = seed;
    int64_t in = in_dim;
    char name[64];
    for (int i = 0; i < n; i++) {
        qn_tlayer *l = &net->layers[i];
        if (units[i] < 1) goto inval;
        l->in = in;
        l->out = units[i];
        l->act = acts[i];
        l->w = falloc(l->in * l->out);
        l->b = falloc(l->out);
        snprintf(name, sizeof name, "layers.%d.weight", i);
        l->wname = str_dup(name);
        snprintf(name, sizeof name, "layers.%d.bias", i);
        l->bname = str_dup(name);
        net->nlayers = i + 1;
        if (!l->w || !l->b || !l->wname || !l->bname) goto nomem;
        float bound = 1.0f / sqrtf((float)l->in);
        for (int64_t k = 0; k < l->in * l->out; k++) l->w[k] = (2.0f * u01(&st) - 1.0f) * bound;
        for (int64_t k = 0; k < l->out; k++) l->b[k] = (2.0f * u01(&st) - 1.0f) * bound;
        in = l->out;
    }
    net_dims(net);
    return 0;
inval:
    qn_tnet_free(net);
    return QN_EINVAL;
nomem:
    qn_tnet_free(net);
    return QN_ENOMEM;
}

int qn_tnet_from_model(qn_tnet *net, const qn_model *m)
{
    memset(net, 0, sizeof *net);
    if (m->nlayers < 1 || m->nlayers > QN_TRAIN_MAX_LAYERS) return QN_ENOTSUP;
    char name[64];
    for (int i = 0; i < m->nlayers; i++) {
        const qn_layer *s = &m->layers[i];
        qn_tlayer *l = &net->layers[i];
        if (s->rep != QN_REP_F32) {
            qn_tnet_free(net);
            return QN_ENOTSUP;
        }
        l->in = s->in;
        l->out = s->out;
        l->act = s->act;
        net->nlayers = i + 1;
        l->w = falloc(l->in * l->out);
        snprintf(name, sizeof name, "layers.%d.weight", i);
        l->wname = str_dup(name);
        if (!l->w || !l->wname) goto nomem;
        memcpy(l->w, s->w, (size_t)(l->in * l->out) * sizeof(float));
        if (s->bias) {
            l->b = falloc(l->out);
            snprintf(name, sizeof name, "layers.%d.bias", i);
            l->bname = str_dup(name);
            if (!l->b || !l->bname) goto nomem;
            memcpy(l->b, s->bias, (size_t)l->out * sizeof(float));
        }
    }
    net_dims(net);
    return 0;
nomem:
    qn_tnet_free(net);
    return QN_ENOMEM;
}

void qn_tnet_free(qn_tnet *net)
{
    for (int i = 0; i < net->nlayers; i++) {
        qn_tlayer *l = &net->layers[i];
        free(l->w);
        free(l->b);
        for (int k = 0; k < 3; k++) {
            free(l->wst[k]);
            free(l->bst[k]);
        }
        free(l->wname);
        free(l->bname);
    }
    memset(net, 0, sizeof *net);
}

/* Which slots an optimizer keeps. */
static int slots_needed(const qn_opt_spec *o, bool need[3])
{
    need[0] = need[1] = need[2] = false;
    switch (o->kind) {
    case QN_OPT_SGD: need[0] = o->momentum != 0; break;
    case QN_OPT_ADAM: need[0] = need[1] = true; break;
    case QN_OPT_RMSPROP: need[0] = true; need[1] = o->momentum > 0; need[2] = o->centered; break;
    default: return QN_EINVAL;
    }
    return 0;
}

int qn_tnet_opt_slots(qn_tnet *net, const qn_opt_spec *o)
{
    bool need[3];
    int rc = slots_needed(o, need);
    if (rc) return rc;
    if (net->opt_valid && net->opt_kind != o->kind) {
        /* another optimizer's state means nothing to this one: start fresh */
        for (int i = 0; i < net->nlayers; i++)
            for (int k = 0; k < 3; k++) {
                free(net->layers[i].wst[k]);
                free(net->layers[i].bst[k]);
                net->layers[i].wst[k] = net->layers[i].bst[k] = NULL;
            }
        memset(net->slot_set, 0, sizeof net->slot_set);
        net->opt_step = 0;
        net->opt_valid = false;
    }
    if (!net->opt_valid) {
        net->opt_step = 0;
        memset(net->slot_set, 0, sizeof net->slot_set);
    }
    net->opt_valid = true;
    net->opt_kind = o->kind;
    for (int i = 0; i < net->nlayers; i++) {
        qn_tlayer *l = &net->layers[i];
        for (int k = 0; k < 3; k++) {
            if (!need[k]) continue;
            if (!l->wst[k] && !(l->wst[k] = falloc(l->in * l->out))) return QN_ENOMEM;
            if (l->b && !l->bst[k] && !(l->bst[k] = falloc(l->out))) return QN_ENOMEM;
        }
    }
    /* Adam and RMSprop create their state zeroed at the first step, so it is
     * "set" from the start; SGD's momentum buffer is None until the first
     * step clones the gradient into it (and so is RMSprop's... no: zeros). */
    if (o->kind != QN_OPT_SGD)
        for (int k = 0; k < 3; k++)
            if (need[k]) net->slot_set[k] = true;
    return 0;
}

/* ---- workspace ---- */

int qn_train_ws_init(qn_train_ws *ws, const qn_tnet *net, int64_t rows, int64_t y_cols)
{
    memset(ws, 0, sizeof *ws);
    ws->cap_rows = rows;
    for (int i = 0; i < net->nlayers; i++) {
        const qn_tlayer *l = &net->layers[i];
        if (!(ws->act[i] = falloc(rows * l->out))) goto nomem;
        if (l->act == QN_ACT_GELU && !(ws->pre[i] = falloc(rows * l->out))) goto nomem;
        if (!(ws->dw[i] = falloc(l->in * l->out))) goto nomem;
        if (!(ws->db[i] = falloc(l->out))) goto nomem;
    }
    if (!(ws->g0 = falloc(rows * net->max_width)) || !(ws->g1 = falloc(rows * net->max_width)) ||
        !(ws->xb = falloc(rows * net->in_dim)) || !(ws->yb = falloc(rows * (y_cols > 0 ? y_cols : 1))))
        goto nomem;
    return 0;
nomem:
    qn_train_ws_free(ws);
    return QN_ENOMEM;
}

void qn_train_ws_free(qn_train_ws *ws)
{
    for (int i = 0; i < QN_TRAIN_MAX_LAYERS; i++) {
        free(ws->act[i]);
        free(ws->pre[i]);
        free(ws->dw[i]);
        free(ws->db[i]);
    }
    free(ws->g0);
    free(ws->g1);
    free(ws->xb);
    free(ws->yb);
    memset(ws, 0, sizeof *ws);
}

/* ---- forward ---- */

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

static inline float gelu(float z) { return 0.5f * z * (1.0f + erff(z * INV_SQRT2)); }
static inline float gelu_d(float z)
{
    return 0.5f * (1.0f + erff(z * INV_SQRT2)) + z * INV_SQRT_2PI * expf(-0.5f * z * z);
}
static inline float sigm(float z) { return 1.0f / (1.0f + expf(-z)); }

/* In place: y = act(y + b), row by row; pre (gelu) gets y + b. */
static void bias_act(float *y, const float *b, int64_t rows, int64_t n, qn_act act, float *pre)
{
    for (int64_t r = 0; r < rows; r++) {
        float *row = y + r * n;
        float *p = pre ? pre + r * n : NULL;
        switch (act) {
        case QN_ACT_NONE:
            if (b) for (int64_t j = 0; j < n; j++) row[j] += b[j];
            break;
        case QN_ACT_RELU:
            for (int64_t j = 0; j < n; j++) {
                float v = row[j] + (b ? b[j] : 0.0f);
                row[j] = v > 0.0f ? v : 0.0f;
            }
            break;
        case QN_ACT_GELU:
            for (int64_t j = 0; j < n; j++) {
                float v = row[j] + (b ? b[j] : 0.0f);
                p[j] = v;
                row[j] = gelu(v);
            }
            break;
        case QN_ACT_SIGMOID:
            for (int64_t j = 0; j < n; j++) row[j] = sigm(row[j] + (b ? b[j] : 0.0f));
            break;
        case QN_ACT_TANH:
            for (int64_t j = 0; j < n; j++) row[j] = tanhf(row[j] + (b ? b[j] : 0.0f));
            break;
        case QN_ACT_SOFTMAX: {
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                row[j] += b ? b[j] : 0.0f;
                if (row[j] > mx) mx = row[j];
            }
            float s = 0.0f;
            for (int64_t j = 0; j < n; j++) s += (row[j] = expf(row[j] - mx));
            float inv = 1.0f / s;
            for (int64_t j = 0; j < n; j++) row[j] *= inv;
            break;
        }
        default: break;
        }
    }
}

static bool folds(const qn_tnet *net, qn_loss_kind loss)
{
    return loss == QN_LOSS_CROSS_ENTROPY && net->layers[net->nlayers - 1].act == QN_ACT_SOFTMAX;
}

const float *qn_train_forward(const qn_tnet *net, qn_train_ws *ws, const float *x, int64_t rows,
                              bool fold_softmax)
{
    const float *in = x;
    for (int i = 0; i < net->nlayers; i++) {
        const qn_tlayer *l = &net->layers[i];
        float *y = ws->act[i];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)l->out, (int)l->in, 1.0f, in,
                    (int)l->in, l->w, (int)l->in, 0.0f, y, (int)l->out);
        qn_act a = l->act;
        if (fold_softmax && i == net->nlayers - 1 && a == QN_ACT_SOFTMAX) a = QN_ACT_NONE;
        bias_act(y, l->b, rows, l->out, a, ws->pre[i]);
        in = y;
    }
    return ws->act[net->nlayers - 1];
}

/* ---- losses ---- */

/* Loss and, when grad is not NULL, dL/dout into grad (rows x n). Cross
 * entropy with indices or probabilities as torch: log_softmax computed with
 * the row max subtracted; mean over rows. MSE: mean over all elements. */
static double loss_grad(qn_loss_kind loss, bool fold, const float *out, const float *y, int64_t rows,
                        int64_t n, int64_t y_cols, float *grad, int64_t *correct)
{
    double total = 0.0;
    int64_t ok = 0;
    if (loss == QN_LOSS_MSE) {
        float scale = (float)(2.0 / ((double)rows * (double)n));
        for (int64_t r = 0; r < rows; r++) {
            const float *o = out + r * n, *t = y + r * n;
            for (int64_t j = 0; j < n; j++) {
                float d = o[j] - t[j];
                total += (double)d * (double)d;
                if (grad) grad[r * n + j] = scale * d;
            }
        }
        if (correct) *correct = 0;
        return total / ((double)rows * (double)n);
    }
    /* cross entropy over logits (fold) or over whatever the net outputs */
    (void)fold;
    float inv_rows = (float)(1.0 / (double)rows);
    for (int64_t r = 0; r < rows; r++) {
        const float *z = out + r * n;
        float mx = z[0];
        int64_t arg = 0;
        for (int64_t j = 1; j < n; j++)
            if (z[j] > mx) { mx = z[j]; arg = j; }
        double s = 0.0;
        for (int64_t j = 0; j < n; j++) s += exp((double)z[j] - (double)mx);
        double lse = (double)mx + log(s);
        float *g = grad ? grad + r * n : NULL;
        if (y_cols == 1) {
            int64_t c = (int64_t)y[r];
            total += lse - (double)z[c];
            ok += arg == c;
            if (g) {
                for (int64_t j = 0; j < n; j++) g[j] = (float)exp((double)z[j] - lse) * inv_rows;
                g[c] -= inv_rows;
            }
        } else {
            const float *p = y + r * n;
            double psum = 0.0, l = 0.0;
            int64_t targ = 0;
            for (int64_t j = 0; j < n; j++) {
                psum += p[j];
                l -= (double)p[j] * ((double)z[j] - lse);
                if (p[j] > p[targ]) targ = j;
            }
            total += l;
            ok += arg == targ;
            if (g)
                for (int64_t j = 0; j < n; j++)
                    g[j] = ((float)exp((double)z[j] - lse) * (float)psum - p[j]) * inv_rows;
        }
    }
    if (correct) *correct = ok;
    return total / (double)rows;
}

double qn_train_loss(qn_loss_kind loss, bool fold_softmax, const float *out, const float *y, int64_t rows,
                     int64_t out_dim, int64_t y_cols, int64_t *correct)
{
    return loss_grad(loss, fold_softmax, out, y, rows, out_dim, y_cols, NULL, correct);
}

/* ---- backward ---- */

/* In place: dA -> dZ = dA ⊙ act'(.), and db = column sums of dZ, in one pass. */
static void act_back(float *d, const float *a, const float *pre, int64_t rows, int64_t n, qn_act act, float *db)
{
    if (db) memset(db, 0, (size_t)n * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        float *g = d + r * n;
        const float *y = a + r * n;
        switch (act) {
        case QN_ACT_NONE: break;
        case QN_ACT_RELU:
            for (int64_t j = 0; j < n; j++) g[j] = y[j] > 0.0f ? g[j] : 0.0f;
            break;
        case QN_ACT_GELU: {
            const float *z = pre + r * n;
            for (int64_t j = 0; j < n; j++) g[j] *= gelu_d(z[j]);
            break;
        }
        case QN_ACT_SIGMOID:
            for (int64_t j = 0; j < n; j++) g[j] *= y[j] * (1.0f - y[j]);
            break;
        case QN_ACT_TANH:
            for (int64_t j = 0; j < n; j++) g[j] *= 1.0f - y[j] * y[j];
            break;
        case QN_ACT_SOFTMAX: {
            float dot = 0.0f;
            for (int64_t j = 0; j < n; j++) dot += g[j] * y[j];
            for (int64_t j = 0; j < n; j++) g[j] = y[j] * (g[j] - dot);
            break;
        }
        default: break;
        }
        if (db)
            for (int64_t j = 0; j < n; j++) db[j] += g[j];
    }
}

/* ---- optimizers: torch.optim 1.13's single-tensor steps ---- */

/* One parameter tensor p[n] with gradient g[n] and its state slots. The
 * arithmetic follows torch's op order in f32, with Python-float scalars
 * (double) rounded to f32 where torch passes them to a float kernel. */
static void opt_update(const qn_opt_spec *o, const bool slot_set[3], int64_t step, double lr, float *p,
                       const float *g, float *const st[3], int64_t n)
{
    const float wd = (float)o->weight_decay;
    switch (o->kind) {
    case QN_OPT_SGD: {
        const float mom = (float)o->momentum, damp = (float)(1.0 - o->dampening), nlr = (float)-lr;
        float *buf = st[0];
        for (int64_t i = 0; i < n; i++) {
            float d = g[i];
            if (wd != 0.0f) d = d + wd * p[i];
            if (buf) {
                if (!slot_set[0]) buf[i] = d;
                else buf[i] = buf[i] * mom + damp * d;
                d = o->nesterov ? d + mom * buf[i] : buf[i];
            }
            p[i] = p[i] + nlr * d;
        }
        break;
    }
    case QN_OPT_ADAM: {
        const double t = (double)step;
        const double bc1 = 1.0 - pow(o->beta1, t), bc2 = 1.0 - pow(o->beta2, t);
        const float b1 = (float)o->beta1, omb1 = (float)(1.0 - o->beta1);
        const float b2 = (float)o->beta2, omb2 = (float)(1.0 - o->beta2);
        const float nstep = (float)-(lr / bc1), bc2s = (float)sqrt(bc2), eps = (float)o->eps;
        float *m = st[0], *v = st[1];
        for (int64_t i = 0; i < n; i++) {
            float d = g[i];
            if (wd != 0.0f) d = d + wd * p[i];
            m[i] = m[i] * b1 + omb1 * d;
            v[i] = v[i] * b2 + omb2 * (d * d);
            float denom = sqrtf(v[i]) / bc2s + eps;
            p[i] = p[i] + nstep * (m[i] / denom);
        }
        break;
    }
    case QN_OPT_RMSPROP: {
        const float a = (float)o->alpha, oma = (float)(1.0 - o->alpha), eps = (float)o->eps;
        const float mom = (float)o->momentum, nlr = (float)-lr;
        float *sq = st[0], *buf = st[1], *ga = st[2];
        for (int64_t i = 0; i < n; i++) {
            float d = g[i];
            if (wd != 0.0f) d = d + wd * p[i];
            sq[i] = sq[i] * a + oma * (d * d);
            float avg;
            if (ga) {
                ga[i] = ga[i] * a + oma * d;
                avg = sqrtf(sq[i] + -1.0f * (ga[i] * ga[i]));
            } else {
                avg = sqrtf(sq[i]);
            }
            avg = avg + eps;
            if (buf) {
                buf[i] = buf[i] * mom + d / avg;
                p[i] = p[i] + nlr * buf[i];
            } else {
                p[i] = p[i] + nlr * (d / avg);
            }
        }
        break;
    }
    default: break;
    }
}

double qn_train_step(qn_tnet *net, qn_train_ws *ws, qn_loss_kind loss, const float *x, const float *y,
                     int64_t rows, int64_t y_cols, const qn_opt_spec *opt, double lr, int64_t *correct)
{
    bool fold = folds(net, loss);
    const float *out = qn_train_forward(net, ws, x, rows, fold);
    int L = net->nlayers;
    float *g = ws->g0, *gn = ws->g1;
    double lv = loss_grad(loss, fold, out, y, rows, net->out_dim, y_cols, g, correct);
    if (opt) net->opt_step++;
    for (int i = L - 1; i >= 0; i--) {
        qn_tlayer *l = &net->layers[i];
        qn_act a = l->act;
        if (fold && i == L - 1) a = QN_ACT_NONE;
        act_back(g, ws->act[i], ws->pre[i], rows, l->out, a, l->b ? ws->db[i] : NULL);
        const float *in = i > 0 ? ws->act[i - 1] : x;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l->out, (int)l->in, (int)rows, 1.0f, g,
                    (int)l->out, in, (int)l->in, 0.0f, ws->dw[i], (int)l->in);
        if (i > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)l->in, (int)l->out, 1.0f, g,
                        (int)l->out, l->w, (int)l->in, 0.0f, gn, (int)l->in);
            float *t = g;
            g = gn;
            gn = t;
        }
        if (opt) {
            opt_update(opt, net->slot_set, net->opt_step, lr, l->w, ws->dw[i], l->wst, l->in * l->out);
            if (l->b) opt_update(opt, net->slot_set, net->opt_step, lr, l->b, ws->db[i], l->bst, l->out);
        }
    }
    if (opt && opt->kind == QN_OPT_SGD && opt->momentum != 0) net->slot_set[0] = true;
    return lv;
}

/* ---- schedules ---- */

double qn_sched_lr(const qn_sched_state *s) { return s->lr; }

static void sched_start(qn_sched_state *s, const qn_sched_spec *sp, double lr)
{
    /* A stored state continues when it is the same schedule from the same
     * base lr (the job repeats its settings); anything else starts over. */
    if (s->valid && s->kind == sp->kind && s->base_lr == lr) return;
    memset(s, 0, sizeof *s);
    s->valid = true;
    s->kind = sp->kind;
    s->base_lr = s->lr = lr;
    s->best = INFINITY;
}

/* Before optimizer step s->step (counted from 0): TF ExponentialDecay. */
static double sched_step_lr(const qn_sched_state *s, const qn_sched_spec *sp)
{
    if (sp->kind != QN_SCHED_EXPONENTIAL) return s->lr;
    double p = (double)s->step / (double)sp->decay_steps;
    if (sp->staircase) p = floor(p);
    return s->base_lr * pow(sp->decay_rate, p);
}

static double py_mod(double a, double b)
{
    double r = fmod(a, b);
    if (r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
}

/* After an epoch: StepLR / CosineAnnealingLR .step(), ReduceLROnPlateau .step(metric). */
static void sched_epoch_end(qn_sched_state *s, const qn_sched_spec *sp, double metric)
{
    s->epoch++;
    int64_t e = s->epoch; /* torch's last_epoch after the call */
    switch (sp->kind) {
    case QN_SCHED_STEP:
        if (e != 0 && e % sp->step_size == 0) s->lr = s->lr * sp->gamma;
        break;
    case QN_SCHED_COSINE: {
        double T = (double)sp->t_max, base = s->base_lr, eta = sp->eta_min;
        if (py_mod((double)(e - 1) - T, 2.0 * T) == 0)
            s->lr = s->lr + (base - eta) * (1.0 - cos(M_PI / T)) / 2.0;
        else
            s->lr = (1.0 + cos(M_PI * (double)e / T)) / (1.0 + cos(M_PI * (double)(e - 1) / T)) * (s->lr - eta) +
                    eta;
        break;
    }
    case QN_SCHED_PLATEAU: {
        if (metric < s->best * (1.0 - sp->threshold)) {
            s->best = metric;
            s->bad_epochs = 0;
        } else {
            s->bad_epochs++;
        }
        if (s->cooldown_left > 0) {
            s->cooldown_left--;
            s->bad_epochs = 0;
        }
        if (s->bad_epochs > sp->patience) {
            double nl = s->lr * sp->factor;
            if (nl < sp->min_lr) nl = sp->min_lr;
            if (s->lr - nl > 1e-8) s->lr = nl;
            s->cooldown_left = sp->cooldown;
            s->bad_epochs = 0;
        }
        break;
    }
    default: break;
    }
}

/* ---- checks ---- */

static int all_finite(const float *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(p[i])) return 0;
    return 1;
}

static int check_set(const qn_tnet *net, const qn_train_spec *sp, const float *x, const float *y, int64_t rows,
                     int64_t xc, int64_t yc, const char *xn, const char *yn, char *msg, size_t ml)
{
    if (xc != net->in_dim) {
        snprintf(msg, ml, "%s has %lld columns; the model takes %lld inputs", xn, (long long)xc,
                 (long long)net->in_dim);
        return QN_ESHAPE;
    }
    if (sp->loss == QN_LOSS_MSE && yc != net->out_dim) {
        snprintf(msg, ml, "%s has %lld columns; with mse it must match the model's %lld outputs", yn,
                 (long long)yc, (long long)net->out_dim);
        return QN_ESHAPE;
    }
    if (sp->loss == QN_LOSS_CROSS_ENTROPY && yc != 1 && yc != net->out_dim) {
        snprintf(msg, ml, "%s has %lld columns; cross_entropy takes class indices [rows, 1] or "
                 "probabilities [rows, %lld]", yn, (long long)yc, (long long)net->out_dim);
        return QN_ESHAPE;
    }
    if (!all_finite(x, rows * xc)) {
        snprintf(msg, ml, "%s holds NaN or infinite values", xn);
        return QN_EINVAL;
    }
    if (!all_finite(y, rows * yc)) {
        snprintf(msg, ml, "%s holds NaN or infinite values", yn);
        return QN_EINVAL;
    }
    if (sp->loss == QN_LOSS_CROSS_ENTROPY && yc == 1) {
        for (int64_t r = 0; r < rows; r++) {
            float c = y[r];
            if (c != floorf(c) || c < 0 || c >= (float)net->out_dim) {
                snprintf(msg, ml, "%s[%lld] = %g is not a class index in [0, %lld)", yn, (long long)r, (double)c,
                         (long long)net->out_dim);
                return QN_EINVAL;
            }
        }
    }
    return 0;
}

int qn_train_check(const qn_tnet *net, const qn_train_spec *sp, char *msg, size_t ml)
{
    if (sp->rows < 1) {
        snprintf(msg, ml, "x has no rows");
        return QN_ESHAPE;
    }
    if (sp->batch_size < 1 || sp->batch_size > sp->rows) {
        snprintf(msg, ml, "batch_size %lld must be from 1 to the %lld rows of x", (long long)sp->batch_size,
                 (long long)sp->rows);
        return QN_EINVAL;
    }
    int rc = check_set(net, sp, sp->x, sp->y, sp->rows, sp->x_cols, sp->y_cols, "x", "y", msg, ml);
    if (rc || sp->val_rows == 0) return rc;
    return check_set(net, sp, sp->xv, sp->yv, sp->val_rows, sp->xv_cols, sp->yv_cols, "x_val", "y_val", msg, ml);
}

/* ---- the epoch loop ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Epoch e's order of rows: Fisher-Yates from a PRNG seeded by (seed, e),
 * e counted over all jobs on this model, so a continued job shuffles as the
 * long one would have. */
static void permute(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch)
{
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    uint64_t st = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1));
    splitmix64(&st);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(splitmix64(&st) % (uint64_t)(i + 1));
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Loss and accuracy over a whole set, in chunks of the workspace's rows. */
static void evaluate(const qn_tnet *net, qn_train_ws *ws, qn_loss_kind loss, const float *x, const float *y,
                     int64_t rows, int64_t yc, double *lv, double *acc)
{
    bool fold = folds(net, loss);
    double total = 0.0;
    int64_t ok = 0;
    for (int64_t r = 0; r < rows; r += ws->cap_rows) {
        int64_t n = rows - r < ws->cap_rows ? rows - r : ws->cap_rows;
        const float *out = qn_train_forward(net, ws, x + r * net->in_dim, n, fold);
        int64_t c = 0;
        double l = loss_grad(loss, fold, out, y + r * yc, n, net->out_dim, yc, NULL, &c);
        /* both losses are means over rows (mse: over rows x cols, equal rows) */
        total += l * (double)n;
        ok += c;
    }
    *lv = total / (double)rows;
    *acc = loss == QN_LOSS_CROSS_ENTROPY ? (double)ok / (double)rows : NAN;
}

static int weights_finite(const qn_tnet *net)
{
    for (int i = 0; i < net->nlayers; i++) {
        const qn_tlayer *l = &net->layers[i];
        if (!all_finite(l->w, l->in * l->out) || (l->b && !all_finite(l->b, l->out))) return 0;
    }
    return 1;
}

int qn_train_run(qn_tnet *net, const qn_train_spec *sp, const qn_train_hooks *hooks, qn_train_outcome *out)
{
    memset(out, 0, sizeof *out);
    out->loss = out->accuracy = out->val_loss = out->val_accuracy = NAN;
    int rc = qn_train_check(net, sp, out->message, sizeof out->message);
    if (rc) return rc;
    if (!(sp->opt.lr > 0) || !isfinite(sp->opt.lr)) {
        snprintf(out->message, sizeof out->message, "optimizer.lr must be > 0");
        return QN_EINVAL;
    }
    qn_train_ws ws;
    int64_t *perm = NULL;
    int64_t bs = sp->batch_size, yc = sp->y_cols;
    if ((rc = qn_train_ws_init(&ws, net, bs, yc))) goto nomem;
    if ((rc = qn_tnet_opt_slots(net, &sp->opt))) goto nomem;
    if (sp->shuffle && !(perm = malloc((size_t)sp->rows * sizeof *perm))) goto nomem;
    sched_start(&net->sched, &sp->sched, sp->opt.lr);

    uint64_t interval = hooks && hooks->min_interval_ns ? hooks->min_interval_ns : 500000000ull;
    uint64_t t_start = now_ns(), t_last = t_start;
    int64_t rows_done = 0, since_best = 0;
    double best = INFINITY;
    bool fold = folds(net, sp->loss);
    (void)fold;
    for (int64_t e = 0; e < sp->epochs; e++) {
        if (sp->shuffle) permute(perm, sp->rows, sp->seed, net->epochs_done);
        double esum = 0.0;
        int64_t erows = 0, ecorrect = 0;
        for (int64_t r = 0; r < sp->rows; r += bs) {
            if (hooks && hooks->cancel && atomic_load(hooks->cancel)) {
                snprintf(out->message, sizeof out->message, "training was stopped (worker shutting down)");
                rc = QN_ECLOSED;
                goto done;
            }
            int64_t n = sp->rows - r < bs ? sp->rows - r : bs;
            const float *xb = sp->x + r * sp->x_cols, *yb = sp->y + r * yc;
            if (perm) {
                for (int64_t k = 0; k < n; k++) {
                    int64_t src = perm[r + k];
                    memcpy(ws.xb + k * sp->x_cols, sp->x + src * sp->x_cols, (size_t)sp->x_cols * sizeof(float));
                    memcpy(ws.yb + k * yc, sp->y + src * yc, (size_t)yc * sizeof(float));
                }
                xb = ws.xb;
                yb = ws.yb;
            }
            double lr = sched_step_lr(&net->sched, &sp->sched);
            int64_t c = 0;
            double lv = qn_train_step(net, &ws, sp->loss, xb, yb, n, yc, &sp->opt, lr, &c);
            net->sched.step++;
            out->steps++;
            if (!isfinite(lv)) {
                snprintf(out->message, sizeof out->message,
                         "the loss diverged to %g at epoch %lld, step %lld (try a smaller lr)", lv,
                         (long long)e + 1, (long long)out->steps);
                rc = QN_TRAIN_DIVERGED;
                goto done;
            }
            esum += lv * (double)n;
            erows += n;
            ecorrect += c;
            rows_done += n;
            uint64_t t = now_ns();
            if (hooks && hooks->progress && t - t_last >= interval && r + n < sp->rows) {
                qn_train_progress p = {.epoch = e + 1, .epochs = sp->epochs, .step = out->steps,
                                       .loss = esum / (double)erows, .lr = lr, .val_loss = NAN,
                                       .val_accuracy = NAN,
                                       .accuracy = sp->loss == QN_LOSS_CROSS_ENTROPY
                                                       ? (double)ecorrect / (double)erows : NAN,
                                       .rows_per_s = (double)rows_done * 1e9 / (double)(t - t_start)};
                t_last = t;
                if (hooks->progress(hooks->ud, &p)) {
                    snprintf(out->message, sizeof out->message, "training was stopped");
                    rc = QN_ECLOSED;
                    goto done;
                }
            }
        }
        net->epochs_done++;
        out->epochs_run = e + 1;
        out->loss = esum / (double)erows;
        out->accuracy = sp->loss == QN_LOSS_CROSS_ENTROPY ? (double)ecorrect / (double)erows : NAN;
        if (!weights_finite(net)) {
            snprintf(out->message, sizeof out->message, "the weights diverged to NaN/inf at epoch %lld",
                     (long long)e + 1);
            rc = QN_TRAIN_DIVERGED;
            goto done;
        }
        double metric = out->loss;
        if (sp->val_rows > 0) {
            evaluate(net, &ws, sp->loss, sp->xv, sp->yv, sp->val_rows, sp->yv_cols, &out->val_loss,
                     &out->val_accuracy);
            out->has_val = true;
            metric = out->val_loss;
            if (!isfinite(metric)) {
                snprintf(out->message, sizeof out->message, "the validation loss diverged at epoch %lld",
                         (long long)e + 1);
                rc = QN_TRAIN_DIVERGED;
                goto done;
            }
        }
        double lr_used = sched_step_lr(&net->sched, &sp->sched);
        sched_epoch_end(&net->sched, &sp->sched, metric);
        bool stop = false;
        if (sp->early_stopping) {
            if (metric < best - sp->es_min_delta) {
                best = metric;
                since_best = 0;
            } else if (++since_best >= sp->es_patience) {
                stop = true;
                out->stopped_early = true;
            }
        }
        uint64_t t = now_ns();
        bool last = stop || e + 1 == sp->epochs;
        /* Every epoch end is reported, but no more than ten a second (short
         * epochs), and the last always. */
        if (hooks && hooks->progress && (last || t - t_last >= interval / 5)) {
            qn_train_progress p = {.epoch = e + 1, .epochs = sp->epochs, .step = out->steps, .loss = out->loss,
                                   .lr = lr_used, .epoch_end = true, .has_val = out->has_val,
                                   .val_loss = out->val_loss, .val_accuracy = out->val_accuracy,
                                   .accuracy = out->accuracy,
                                   .rows_per_s = (double)rows_done * 1e9 / (double)(t - t_start + 1)};
            t_last = t;
            if (hooks->progress(hooks->ud, &p)) {
                snprintf(out->message, sizeof out->message, "training was stopped");
                rc = QN_ECLOSED;
                goto done;
            }
        }
        if (stop) break;
    }
    rc = 0;
done:
    free(perm);
    qn_train_ws_free(&ws);
    return rc;
nomem:
    snprintf(out->message, sizeof out->message, "out of memory");
    free(perm);
    qn_train_ws_free(&ws);
    return QN_ENOMEM;
}
