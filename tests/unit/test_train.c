/* test_train.c: gradients by finite differences for every activation and
 * loss, schedules against values torch 1.13 printed, and the bad-input and
 * divergence paths of qn_train_run. (Weights against torch.optim itself:
 * tests/integration/test_train_torch.py.) */
#include "qn_test.h"

#include <math.h>

#include "error.h"
#include "job.h"
#include "train.h"

/* Loss of net on (x, y) in double, through the same forward. */
static double net_loss(qn_tnet *net, qn_train_ws *ws, qn_loss_kind loss, const float *x, const float *y,
                       int64_t rows, int64_t yc)
{
    bool fold = loss == QN_LOSS_CROSS_ENTROPY && net->layers[net->nlayers - 1].act == QN_ACT_SOFTMAX;
    const float *out = qn_train_forward(net, ws, x, rows, fold);
    return qn_train_loss(loss, fold, out, y, rows, net->out_dim, yc, NULL);
}

static uint64_t g_rng = 12345;
static float frand(void)
{
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

/* Central differences on every weight and bias against the analytic
 * gradient; returns the worst error relative to the gradient's scale. */
static double grad_check(qn_act hidden, qn_act last, qn_loss_kind loss, int64_t yc)
{
    const int64_t rows = 6, in = 5, h = 7, out = 4;
    int64_t units[2] = {h, out};
    qn_act acts[2] = {hidden, last};
    qn_tnet net;
    CHECK_EQ_INT(qn_tnet_init(&net, in, 2, units, acts, 7), 0);
    float x[6 * 5], y[6 * 4];
    for (int i = 0; i < rows * in; i++) x[i] = 2.0f * frand();
    for (int r = 0; r < rows; r++) {
        if (yc == 1) y[r] = (float)(r % out);
        else {
            float s = 0;
            for (int j = 0; j < out; j++) s += (y[r * out + j] = loss == QN_LOSS_MSE ? frand() : frand() + 1.5f);
            if (loss != QN_LOSS_MSE)
                for (int j = 0; j < out; j++) y[r * out + j] /= s;
        }
    }
    qn_train_ws ws;
    CHECK_EQ_INT(qn_train_ws_init(&ws, &net, rows, yc), 0);
    qn_train_step(&net, &ws, loss, x, y, rows, yc, NULL, 0.0, NULL);
    /* keep the analytic gradients: the finite-difference forwards reuse ws */
    double worst = 0, scale = 1e-3;
    float *an[2][2];
    for (int l = 0; l < 2; l++) {
        qn_tlayer *L = &net.layers[l];
        an[l][0] = malloc((size_t)(L->in * L->out) * 4);
        an[l][1] = malloc((size_t)L->out * 4);
        memcpy(an[l][0], ws.dw[l], (size_t)(L->in * L->out) * 4);
        memcpy(an[l][1], ws.db[l], (size_t)L->out * 4);
        for (int64_t k = 0; k < L->in * L->out; k++) scale = fmax(scale, fabs(an[l][0][k]));
    }
    const float eps = 1e-3f; /* small enough that few relu kinks fall inside */
    for (int l = 0; l < 2; l++) {
        qn_tlayer *L = &net.layers[l];
        for (int which = 0; which < 2; which++) {
            float *p = which ? L->b : L->w;
            int64_t n = which ? L->out : L->in * L->out;
            for (int64_t k = 0; k < n; k++) {
                float keep = p[k];
                p[k] = keep + eps;
                double lp = net_loss(&net, &ws, loss, x, y, rows, yc);
                p[k] = keep - eps;
                double lm = net_loss(&net, &ws, loss, x, y, rows, yc);
                p[k] = keep;
                double num = (lp - lm) / (2.0 * (double)eps);
                double err = fabs(num - an[l][which][k]);
                if (err > worst) worst = err;
            }
        }
    }
    for (int l = 0; l < 2; l++) {
        free(an[l][0]);
        free(an[l][1]);
    }
    qn_train_ws_free(&ws);
    qn_tnet_free(&net);
    return worst / scale;
}

TEST(gradients_every_activation_and_loss)
{
    qn_act acts[] = {QN_ACT_NONE, QN_ACT_RELU, QN_ACT_GELU, QN_ACT_SIGMOID, QN_ACT_TANH, QN_ACT_SOFTMAX};
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        double e1 = grad_check(acts[a], QN_ACT_NONE, QN_LOSS_MSE, 4);
        double e2 = grad_check(acts[a], QN_ACT_SOFTMAX, QN_LOSS_CROSS_ENTROPY, 1);
        double e3 = grad_check(QN_ACT_TANH, acts[a], QN_LOSS_MSE, 4);
        double e4 = grad_check(acts[a], QN_ACT_NONE, QN_LOSS_CROSS_ENTROPY, 4);
        if (e1 > 2e-3 || e2 > 2e-3 || e3 > 2e-3 || e4 > 2e-3)
            fprintf(stderr, "act %s: %g %g %g %g\n", qn_act_name(acts[a]), e1, e2, e3, e4);
        CHECK(e1 < 2e-3);
        CHECK(e2 < 2e-3);
        CHECK(e3 < 2e-3);
        CHECK(e4 < 2e-3);
    }
}

TEST(init_is_torch_bound_and_seeded)
{
    int64_t units[2] = {64, 10};
    qn_act acts[2] = {QN_ACT_RELU, QN_ACT_SOFTMAX};
    qn_tnet a, b, c;
    CHECK_EQ_INT(qn_tnet_init(&a, 100, 2, units, acts, 1), 0);
    CHECK_EQ_INT(qn_tnet_init(&b, 100, 2, units, acts, 1), 0);
    CHECK_EQ_INT(qn_tnet_init(&c, 100, 2, units, acts, 2), 0);
    CHECK(memcmp(a.layers[0].w, b.layers[0].w, 6400 * 4) == 0);
    CHECK(memcmp(a.layers[0].w, c.layers[0].w, 6400 * 4) != 0);
    float mx = 0;
    for (int i = 0; i < 6400; i++) mx = fmaxf(mx, fabsf(a.layers[0].w[i]));
    CHECK(mx <= 0.1f && mx > 0.095f); /* 1/sqrt(100) */
    CHECK_STR(a.layers[1].wname, "layers.1.weight");
    qn_tnet_free(&a);
    qn_tnet_free(&b);
    qn_tnet_free(&c);
}

/* A small regression problem run through qn_train_run with a schedule;
 * returns the lr reported after each epoch. */
static int lr_trace(const qn_sched_spec *s, int epochs, double *lrs)
{
    static float x[8 * 2], y[8];
    for (int i = 0; i < 16; i++) x[i] = (float)(i % 5) * 0.1f;
    for (int i = 0; i < 8; i++) y[i] = 0.5f;
    qn_train_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.loss = QN_LOSS_MSE;
    qn_opt_defaults(QN_OPT_SGD, &sp.opt);
    sp.opt.lr = 0.1;
    sp.sched = *s;
    sp.epochs = 1;
    sp.batch_size = 4;
    sp.rows = 8;
    sp.x_cols = 2;
    sp.y_cols = 1;
    sp.x = x;
    sp.y = y;
    int64_t u = 1;
    qn_act a = QN_ACT_NONE;
    qn_tnet net;
    qn_tnet_init(&net, 2, 1, &u, &a, 3);
    /* one epoch per job: the schedule state carries over, as between versions */
    for (int e = 0; e < epochs; e++) {
        qn_train_outcome o;
        int rc = qn_train_run(&net, &sp, NULL, &o);
        if (rc) return rc;
        lrs[e] = net.sched.lr;
    }
    qn_tnet_free(&net);
    return 0;
}

TEST(schedules_match_torch)
{
    double lrs[8];
    qn_sched_spec s;
    /* torch 1.13: StepLR(step_size=2, gamma=0.5), lr 0.1, after each of 6 epochs */
    qn_sched_defaults(QN_SCHED_STEP, &s);
    s.step_size = 2;
    s.gamma = 0.5;
    CHECK_EQ_INT(lr_trace(&s, 6, lrs), 0);
    double step_ref[6] = {0.1, 0.05, 0.05, 0.025, 0.025, 0.0125};
    for (int i = 0; i < 6; i++) CHECK_NEAR(lrs[i], step_ref[i], 1e-15);
    /* CosineAnnealingLR(T_max=3, eta_min=0.01), recursive form, past T_max */
    qn_sched_defaults(QN_SCHED_COSINE, &s);
    s.t_max = 3;
    s.eta_min = 0.01;
    CHECK_EQ_INT(lr_trace(&s, 7, lrs), 0);
    double cos_ref[7] = {0.0775, 0.0325, 0.01, 0.0325, 0.0775, 0.1, 0.0775};
    for (int i = 0; i < 7; i++) CHECK_NEAR(lrs[i], cos_ref[i], 1e-12);
    /* ReduceLROnPlateau(factor 0.5, patience 0) on a loss that stops improving */
    qn_sched_defaults(QN_SCHED_PLATEAU, &s);
    s.factor = 0.5;
    s.patience = 0;
    s.threshold = 0.9; /* needs a 90% improvement: every epoch after the first is bad */
    CHECK_EQ_INT(lr_trace(&s, 4, lrs), 0);
    double pl_ref[4] = {0.1, 0.05, 0.025, 0.0125};
    for (int i = 0; i < 4; i++) CHECK_NEAR(lrs[i], pl_ref[i], 1e-15);
}

static qn_train_spec *small_spec(float *x, float *y, int64_t rows)
{
    qn_train_spec *sp = calloc(1, sizeof *sp);
    sp->loss = QN_LOSS_CROSS_ENTROPY;
    qn_opt_defaults(QN_OPT_ADAM, &sp->opt);
    qn_sched_defaults(QN_SCHED_CONSTANT, &sp->sched);
    sp->epochs = 2;
    sp->batch_size = 2;
    sp->rows = rows;
    sp->x_cols = 3;
    sp->y_cols = 1;
    sp->x = x;
    sp->y = y;
    return sp;
}

TEST(bad_inputs_and_divergence)
{
    float x[4 * 3] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f, 1.1f, 1.2f};
    float y[4] = {0, 1, 2, 1};
    int64_t units[2] = {8, 3};
    qn_act acts[2] = {QN_ACT_RELU, QN_ACT_SOFTMAX};
    qn_tnet net;
    qn_train_outcome o;
    CHECK_EQ_INT(qn_tnet_init(&net, 3, 2, units, acts, 1), 0);
    qn_train_spec *sp = small_spec(x, y, 4);
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), 0);
    CHECK_EQ_INT(o.epochs_run, 2);
    CHECK_EQ_INT(o.steps, 4);

    y[2] = 3; /* out of range */
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_EINVAL);
    CHECK(strstr(o.message, "class index") != NULL);
    y[2] = 1.5f;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_EINVAL);
    y[2] = 2;
    x[5] = NAN;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_EINVAL);
    CHECK(strstr(o.message, "NaN") != NULL);
    x[5] = 0.6f;
    sp->batch_size = 5;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_EINVAL);
    sp->batch_size = 0;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_EINVAL);
    sp->batch_size = 2;
    sp->x_cols = 2; /* 6 rows of 2 is not what the model takes */
    sp->rows = 6;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_ESHAPE);
    sp->x_cols = 3;
    sp->rows = 4;
    sp->opt.lr = 0;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), QN_EINVAL);

    /* SGD at lr 1e30 on mse: the loss goes to inf/NaN within a few steps */
    float yr[4 * 3];
    for (int i = 0; i < 12; i++) yr[i] = 100.0f;
    sp->loss = QN_LOSS_MSE;
    sp->y = yr;
    sp->y_cols = 3;
    qn_opt_defaults(QN_OPT_SGD, &sp->opt);
    sp->opt.lr = 1e30;
    sp->epochs = 50;
    acts[1] = QN_ACT_NONE;
    qn_tnet n2;
    CHECK_EQ_INT(qn_tnet_init(&n2, 3, 2, units, acts, 1), 0);
    CHECK_EQ_INT(qn_train_run(&n2, sp, NULL, &o), QN_TRAIN_DIVERGED);
    CHECK(strstr(o.message, "diverged") != NULL);
    qn_tnet_free(&n2);
    free(sp);
    qn_tnet_free(&net);
}

TEST(learns_and_stops_early)
{
    /* y = 2x0 - x1: an MLP gets the mse well under its start */
    enum { R = 64 };
    static float x[R * 3], y[R];
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < 3; j++) x[r * 3 + j] = frand();
        y[r] = 2 * x[r * 3] - x[r * 3 + 1];
    }
    int64_t units[2] = {16, 1};
    qn_act acts[2] = {QN_ACT_TANH, QN_ACT_NONE};
    qn_tnet net;
    CHECK_EQ_INT(qn_tnet_init(&net, 3, 2, units, acts, 5), 0);
    qn_train_spec *sp = small_spec(x, y, R);
    sp->loss = QN_LOSS_MSE;
    sp->opt.lr = 0.01;
    sp->epochs = 200;
    sp->batch_size = 16;
    sp->shuffle = true;
    sp->seed = 9;
    qn_train_outcome o;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), 0);
    CHECK(o.loss < 0.02);
    /* early stopping with an impossible min_delta stops after patience epochs */
    sp->early_stopping = true;
    sp->es_patience = 3;
    sp->es_min_delta = 1e9;
    CHECK_EQ_INT(qn_train_run(&net, sp, NULL, &o), 0);
    CHECK(o.stopped_early);
    CHECK_EQ_INT(o.epochs_run, 4); /* the first epoch improves on inf, then 3 without */
    free(sp);
    qn_tnet_free(&net);
}

/* qn_job_encode_train then qn_job_decode gives back the same spec; bad
 * bodies are refused with the field named. */
TEST(train_job_codec_round_trip)
{
    float x[3 * 2] = {1, 2, 3, 4, 5, 6}, y[3] = {0, 1, 1};
    qn_train_spec sp;
    memset(&sp, 0, sizeof sp);
    sp.loss = QN_LOSS_CROSS_ENTROPY;
    qn_opt_defaults(QN_OPT_RMSPROP, &sp.opt);
    sp.opt.lr = 0.02;
    sp.opt.centered = true;
    qn_sched_defaults(QN_SCHED_EXPONENTIAL, &sp.sched);
    sp.sched.decay_steps = 7;
    sp.sched.decay_rate = 0.5;
    sp.sched.staircase = true;
    sp.epochs = 3;
    sp.batch_size = 2;
    sp.shuffle = false;
    sp.seed = 11;
    sp.rows = 3;
    sp.x_cols = 2;
    sp.y_cols = 1;
    sp.x = x;
    sp.y = y;
    sp.has_init = true;
    sp.init_in = 2;
    sp.init_n = 2;
    sp.init_units[0] = 5;
    sp.init_acts[0] = QN_ACT_GELU;
    sp.init_units[1] = 2;
    sp.init_acts[1] = QN_ACT_SOFTMAX;
    sp.early_stopping = true;
    sp.es_patience = 2;
    qn_buf b = {0};
    CHECK_EQ_INT(qn_job_encode_train("t1", 0, "m", 4, &sp, &b), 0);
    qn_job *job = NULL;
    qn_decode_error err;
    CHECK_EQ_INT(qn_job_decode(b.data, b.len, NULL, &job, &err), 0);
    if (job) {
        CHECK_EQ_INT(job->type, QN_JOB_TRAIN);
        CHECK_EQ_INT(job->version, 4);
        qn_train_spec *d = job->train;
        CHECK(d != NULL);
        if (d) {
            CHECK_EQ_INT(d->loss, QN_LOSS_CROSS_ENTROPY);
            CHECK_EQ_INT(d->opt.kind, QN_OPT_RMSPROP);
            CHECK_NEAR(d->opt.lr, 0.02, 0);
            CHECK_NEAR(d->opt.alpha, 0.99, 0);
            CHECK(d->opt.centered);
            CHECK_EQ_INT(d->sched.kind, QN_SCHED_EXPONENTIAL);
            CHECK_EQ_INT(d->sched.decay_steps, 7);
            CHECK(d->sched.staircase);
            CHECK_EQ_INT(d->epochs, 3);
            CHECK_EQ_INT(d->batch_size, 2);
            CHECK(!d->shuffle);
            CHECK_EQ_INT(d->seed, 11);
            CHECK_EQ_INT(d->rows, 3);
            CHECK(memcmp(d->x, x, sizeof x) == 0 && memcmp(d->y, y, sizeof y) == 0);
            CHECK(d->has_init && d->init_n == 2 && d->init_units[0] == 5 && d->init_acts[0] == QN_ACT_GELU);
            CHECK(d->early_stopping && d->es_patience == 2);
        }
    }
    qn_job_free(&job);
    /* a bad body: batch_size past the rows, named in the error */
    qn_buf_reset(&b);
    sp.batch_size = 9;
    CHECK_EQ_INT(qn_job_encode_train("t2", 0, "m", 0, &sp, &b), 0);
    CHECK_EQ_INT(qn_job_decode(b.data, b.len, NULL, &job, &err), QN_EFORMAT);
    CHECK_EQ_INT(err.code, QN_CODE_BAD_JOB);
    CHECK(strstr(err.message, "batch_size") != NULL);
    qn_job_free(&job);
    qn_buf_free(&b);
}

int main(void)
{
    RUN(train_job_codec_round_trip);
    RUN(gradients_every_activation_and_loss);
    RUN(init_is_torch_bound_and_seeded);
    RUN(schedules_match_torch);
    RUN(bad_inputs_and_divergence);
    RUN(learns_and_stops_early);
    return qn_test_done();
}
