/* trainer.c: the train job queue and its thread (trainer.h).
 *
 * One thread, not one per job: a train job is compute-bound for its whole
 * length, so two at once would only halve each other's speed and take a
 * second core from inference. The thread runs at added niceness so that the
 * kernel's scheduler gives the executors the cores whenever they have work;
 * bench/README.md has the measurement behind that choice. Must never block
 * the transports: submit only takes a lock and pushes. */
#include "trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
#include "train.h"
#include "train_store.h"

struct qn_trainer {
    qn_registry *reg;
    qn_trainer_opts o;
    qn_trainer_finish_fn finish;
    void *ud;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    qn_job **q;      /* ring of queue_limit slots */
    int head, count;
    int running;     /* a job is being trained */
    int stop;
    atomic_int cancel;
    pthread_t thread;
    int started;
};

void qn_train_job_key(const qn_job *job, char *out, size_t cap)
{
    const qn_train_spec *sp = job->train;
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    if (sp) {
        XXH3_64bits_update(&st, sp->x, (size_t)(sp->rows * sp->x_cols) * 4);
        XXH3_64bits_update(&st, sp->y, (size_t)(sp->rows * sp->y_cols) * 4);
        int64_t p[4] = {sp->epochs, sp->batch_size, job->version, sp->has_init};
        XXH3_64bits_update(&st, p, sizeof p);
    }
    uint64_t h = XXH3_64bits_digest(&st);
    switch (job->id.kind) {
    case QN_ID_STR: snprintf(out, cap, "s:%s#%016" PRIx64, job->id.s ? job->id.s : "", h); break;
    case QN_ID_INT: snprintf(out, cap, "i:%" PRId64 "#%016" PRIx64, job->id.i, h); break;
    case QN_ID_UINT: snprintf(out, cap, "u:%" PRIu64 "#%016" PRIx64, job->id.u, h); break;
    default: snprintf(out, cap, "nil#%016" PRIx64, h); break;
    }
}

static void answer(qn_trainer *t, qn_job *job, qn_status st, qn_code code, const char *msg)
{
    qn_result res = {.type = QN_RESULT_FINAL, .status = st, .id = &job->id,
                     .model = job->model[0] ? job->model : NULL, .code = code, .message = msg};
    t->finish(t->ud, job, &res);
}

typedef struct run_ctx {
    qn_trainer *t;
    qn_job *job;
    int64_t steps_counted; /* reported to metrics so far */
} run_ctx;

static int on_progress(void *ud, const qn_train_progress *p)
{
    run_ctx *rc = ud;
    if (p->step > rc->steps_counted) {
        qn_metrics_train_steps(rc->job->model, (uint64_t)(p->step - rc->steps_counted), p->loss);
        rc->steps_counted = p->step;
    }
    qn_train_report rep = {.epoch = p->epoch, .epochs = p->epochs, .step = p->step, .loss = p->loss, .lr = p->lr,
                           .accuracy = p->accuracy, .val_loss = p->has_val ? p->val_loss : NAN,
                           .val_accuracy = p->has_val ? p->val_accuracy : NAN, .rows_per_s = p->rows_per_s};
    qn_result res = {.type = QN_RESULT_PROGRESS, .status = QN_STATUS_OK, .id = &rc->job->id,
                     .model = rc->job->model, .train = &rep};
    rc->job->origin.complete(rc->job, &res);
    return 0;
}

static char *metrics_json(const qn_train_outcome *o)
{
    json_t *m = json_object();
    if (isfinite(o->loss)) json_object_set_new(m, "loss", json_real(o->loss));
    if (isfinite(o->accuracy)) json_object_set_new(m, "accuracy", json_real(o->accuracy));
    if (o->has_val && isfinite(o->val_loss)) json_object_set_new(m, "val_loss", json_real(o->val_loss));
    if (o->has_val && isfinite(o->val_accuracy)) json_object_set_new(m, "val_accuracy", json_real(o->val_accuracy));
    json_object_set_new(m, "epochs", json_integer(o->epochs_run));
    json_object_set_new(m, "steps", json_integer(o->steps));
    json_object_set_new(m, "stopped_early", json_boolean(o->stopped_early));
    char *s = json_dumps(m, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(m);
    return s;
}

/* A redelivered job: the version it made, with the metrics it recorded. */
static void answer_repeat(qn_trainer *t, qn_job *job, int64_t v, const char *mj)
{
    qn_train_report rep = {.loss = NAN, .lr = NAN, .accuracy = NAN, .val_loss = NAN, .val_accuracy = NAN,
                           .rows_per_s = NAN, .repeated = true};
    json_t *m = json_loads(mj, 0, NULL);
    if (m) {
        json_t *x;
        if ((x = json_object_get(m, "loss"))) rep.loss = json_number_value(x);
        if ((x = json_object_get(m, "accuracy"))) rep.accuracy = json_number_value(x);
        if ((x = json_object_get(m, "val_loss"))) rep.val_loss = json_number_value(x);
        if ((x = json_object_get(m, "val_accuracy"))) rep.val_accuracy = json_number_value(x);
        rep.epoch = json_integer_value(json_object_get(m, "epochs"));
        rep.step = json_integer_value(json_object_get(m, "steps"));
        rep.stopped_early = json_is_true(json_object_get(m, "stopped_early"));
        json_decref(m);
    }
    qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &job->id, .model = job->model,
                     .version = v, .train = &rep};
    QN_LOGI("train", "job for '%s' was already trained into version %lld: answered with it", job->model,
            (long long)v);
    t->finish(t->ud, job, &res);
}

static void run_job(qn_trainer *t, qn_job *job)
{
    const char *repo = qn_registry_dir(t->reg);
    qn_train_spec *sp = job->train;
    char key[256], msg[512], err[256] = "";
    qn_tnet net;
    memset(&net, 0, sizeof net);
    if (!sp) {
        answer(t, job, QN_STATUS_ERROR, QN_CODE_BAD_JOB, "train job without a body");
        return;
    }
    qn_train_job_key(job, key, sizeof key);
    char mj[1024] = "";
    int64_t done = qn_train_find_job(repo, job->model, key, mj, sizeof mj);
    if (done > 0) {
        answer_repeat(t, job, done, mj);
        return;
    }
    int64_t parent = 0;
    int rc;
    if (sp->has_init) {
        if (sp->init_in != sp->x_cols) {
            snprintf(msg, sizeof msg, "init.input_dim is %lld but x has %lld columns", (long long)sp->init_in,
                     (long long)sp->x_cols);
            answer(t, job, QN_STATUS_ERROR, QN_CODE_SHAPE_MISMATCH, msg);
            return;
        }
        rc = qn_tnet_init(&net, sp->init_in, sp->init_n, sp->init_units, sp->init_acts, sp->init_seed);
        if (rc) {
            answer(t, job, QN_STATUS_ERROR, rc == QN_ENOMEM ? QN_CODE_INTERNAL : QN_CODE_BAD_JOB,
                   rc == QN_ENOMEM ? "out of memory" : "init: invalid layers");
            return;
        }
    } else {
        qn_model *m = NULL;
        rc = qn_registry_get(t->reg, job->model, job->version, &m);
        if (rc == QN_ENOTFOUND || rc == QN_ENOVERSION) {
            /* a version written a moment ago may not be picked up yet */
            qn_registry_scan(t->reg);
            rc = qn_registry_get(t->reg, job->model, job->version, &m);
        }
        if (rc == QN_ENOTFOUND) {
            snprintf(msg, sizeof msg, "no model named '%s' in the repository (send init to create one)", job->model);
            answer(t, job, QN_STATUS_ERROR, QN_CODE_UNKNOWN_MODEL, msg);
            return;
        }
        if (rc == QN_ENOVERSION) {
            snprintf(msg, sizeof msg, "model '%s' has no version %lld", job->model, (long long)job->version);
            answer(t, job, QN_STATUS_ERROR, QN_CODE_UNKNOWN_VERSION, msg);
            return;
        }
        if (rc) {
            answer(t, job, QN_STATUS_ERROR, QN_CODE_INTERNAL, qn_strerror(rc));
            return;
        }
        parent = m->version;
        qn_model_unref(&m);
        char path[4200];
        snprintf(path, sizeof path, "%s/%s/%lld/model.safetensors", repo, job->model, (long long)parent);
        rc = qn_tnet_load(path, &net, err, sizeof err);
        if (rc) {
            snprintf(msg, sizeof msg, "version %lld of '%s' cannot be trained: %s", (long long)parent, job->model, err);
            answer(t, job, QN_STATUS_ERROR, rc == QN_ENOTSUP ? QN_CODE_BAD_JOB : QN_CODE_INTERNAL, msg);
            return;
        }
    }
    char from[40] = "init";
    if (parent) snprintf(from, sizeof from, "version %lld", (long long)parent);
    QN_LOGI("train", "training '%s' from %s: %lld rows, %lld epochs, batch %lld, %s", job->model, from,
            (long long)sp->rows, (long long)sp->epochs, (long long)sp->batch_size, qn_opt_name(sp->opt.kind));
    run_ctx ctx = {.t = t, .job = job};
    qn_train_hooks hooks = {.ud = &ctx, .progress = on_progress, .cancel = &t->cancel,
                            .min_interval_ns = t->o.progress_interval_ns};
    qn_train_outcome out;
    uint64_t t0 = qn_now_ns();
    rc = qn_train_run(&net, sp, &hooks, &out);
    double secs = (double)(qn_now_ns() - t0) / 1e9;
    if (rc) {
        qn_code code = rc == QN_ESHAPE ? QN_CODE_SHAPE_MISMATCH
                     : rc == QN_EINVAL ? QN_CODE_BAD_JOB
                     : rc == QN_TRAIN_DIVERGED ? QN_CODE_DIVERGED
                     : rc == QN_ECLOSED ? QN_CODE_OVERLOADED : QN_CODE_INTERNAL;
        QN_LOGW("train", "'%s': %s", job->model, out.message);
        if (rc == QN_ECLOSED) {
            qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_REJECTED, .id = &job->id,
                             .model = job->model, .code = code, .message = out.message, .handed_back = true};
            t->finish(t->ud, job, &res);
        } else {
            answer(t, job, QN_STATUS_ERROR, code, out.message);
        }
        qn_tnet_free(&net);
        return;
    }
    char *mjs = metrics_json(&out);
    int64_t v = 0;
    rc = qn_tnet_save_version(repo, job->model, &net, key, mjs, parent, &v, err, sizeof err);
    free(mjs);
    qn_tnet_free(&net);
    if (rc) {
        snprintf(msg, sizeof msg, "the trained model could not be written: %s", err);
        QN_LOGE("train", "%s", msg);
        answer(t, job, QN_STATUS_ERROR, QN_CODE_INTERNAL, msg);
        return;
    }
    qn_registry_scan(t->reg); /* served at once, not at the watcher's next tick */
    if (out.steps > ctx.steps_counted)
        qn_metrics_train_steps(job->model, (uint64_t)(out.steps - ctx.steps_counted), out.loss);
    QN_LOGI("train", "'%s' version %lld written: %lld epochs, %lld steps in %.2f s, loss %.6g", job->model,
            (long long)v, (long long)out.epochs_run, (long long)out.steps, secs, out.loss);
    qn_train_report rep = {.epoch = out.epochs_run, .step = out.steps, .loss = out.loss, .lr = NAN,
                           .accuracy = out.accuracy, .val_loss = out.has_val ? out.val_loss : NAN,
                           .val_accuracy = out.has_val ? out.val_accuracy : NAN, .rows_per_s = NAN,
                           .stopped_early = out.stopped_early};
    qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &job->id, .model = job->model,
                     .version = v, .train = &rep};
    t->finish(t->ud, job, &res);
}

static void *trainer_main(void *arg)
{
    qn_trainer *t = arg;
    qn_thread_name("qn-train");
    /* Per-thread niceness (Linux: setpriority on a thread id): the executors
     * keep their priority, this thread yields the cores to them. Raising
     * niceness needs no privilege. */
    if (t->o.nice > 0 && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), t->o.nice) != 0)
        QN_LOGW("train", "cannot lower the trainer's priority: %s", strerror(errno));
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->stop && t->count == 0) pthread_cond_wait(&t->cv, &t->mu);
        if (t->stop) break;
        qn_job *job = t->q[t->head];
        t->head = (t->head + 1) % t->o.queue_limit;
        t->count--;
        t->running = 1;
        pthread_mutex_unlock(&t->mu);
        run_job(t, job);
        pthread_mutex_lock(&t->mu);
        t->running = 0;
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int qn_trainer_create(qn_registry *reg, const qn_trainer_opts *o, qn_trainer_finish_fn finish, void *ud,
                      qn_trainer **out)
{
    *out = NULL;
    if (!reg || !finish) return QN_EINVAL;
    qn_trainer *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->reg = reg;
    if (o) t->o = *o;
    else {
        t->o.queue_limit = QN_TRAINER_DEFAULT_QUEUE;
        t->o.nice = QN_TRAINER_DEFAULT_NICE;
    }
    if (t->o.queue_limit < 1) t->o.queue_limit = 1;
    t->finish = finish;
    t->ud = ud;
    t->q = calloc((size_t)t->o.queue_limit, sizeof *t->q);
    if (!t->q) {
        free(t);
        return QN_ENOMEM;
    }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (pthread_create(&t->thread, NULL, trainer_main, t) != 0) {
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        free(t->q);
        free(t);
        return QN_ENOMEM;
    }
    t->started = 1;
    *out = t;
    return 0;
}

int qn_trainer_submit(qn_trainer *t, qn_job *job)
{
    pthread_mutex_lock(&t->mu);
    int rc = 0;
    if (t->stop) rc = QN_ECLOSED;
    else if (t->count >= t->o.queue_limit) rc = QN_EFULL;
    else {
        t->q[(t->head + t->count) % t->o.queue_limit] = job;
        t->count++;
        pthread_cond_signal(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int qn_trainer_pending(qn_trainer *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->count + t->running;
    pthread_mutex_unlock(&t->mu);
    return n;
}

void qn_trainer_stop(qn_trainer *t)
{
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    if (t->stop) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    t->stop = 1;
    atomic_store(&t->cancel, 1);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    if (t->started) pthread_join(t->thread, NULL);
    t->started = 0;
    while (t->count > 0) {
        qn_job *job = t->q[t->head];
        t->head = (t->head + 1) % t->o.queue_limit;
        t->count--;
        qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_REJECTED, .id = &job->id,
                         .model = job->model, .code = QN_CODE_OVERLOADED,
                         .message = "worker is shutting down; train job not started", .handed_back = true};
        t->finish(t->ud, job, &res);
    }
}

void qn_trainer_destroy(qn_trainer **pt)
{
    qn_trainer *t = pt ? *pt : NULL;
    if (!t) return;
    qn_trainer_stop(t);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t->q);
    free(t);
    *pt = NULL;
}
