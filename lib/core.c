/* core.c: admission and completion around the batcher and executor.
 * Admission runs on the transport's IO thread, so it must stay cheap: one
 * registry lookup (a reference count bump), a few comparisons and a queue
 * push. Completion runs on the executor thread that finished the batch. */
#include "core.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "executor.h"
#include "log.h"
#include "metrics.h"
#include "tensor.h"
#include "trainer.h"

struct qn_core {
    qn_core_opts o;
    qn_registry *reg;
    qn_backend *be;
    qn_batcher *batcher;
    qn_executor *exec;
    atomic_int_fast64_t inflight;
    atomic_int stopped;
    int direct;          /* direct path enabled */
    atomic_uint_fast64_t direct_batches, direct_rows;
    qn_trainer *trainer; /* train jobs; NULL when train_queue is 0 */
};

struct qn_core_local {
    void *ctx;           /* backend context of the owning thread */
    qn_batch staged;     /* jobs waiting for the end of the receive burst */
    qn_batch_scratch scratch;
};

void qn_core_opts_default(qn_core_opts *o)
{
    memset(o, 0, sizeof *o);
    o->batch.max_batch_rows = QN_BATCHER_DEFAULT_MAX_BATCH;
    o->batch.max_delay_us = QN_BATCHER_DEFAULT_MAX_DELAY_US;
    o->batch.queue_limit_rows = QN_BATCHER_DEFAULT_QUEUE_LIMIT;
    o->threads = 1;
    o->limits.max_message_bytes = QN_DEFAULT_MAX_MESSAGE;
    o->direct_max_flops = QN_CORE_DEFAULT_DIRECT_MAX_FLOPS;
    o->direct_idle_rows = QN_CORE_DEFAULT_DIRECT_IDLE_ROWS;
    o->train_queue = QN_TRAINER_DEFAULT_QUEUE;
    o->train_nice = QN_TRAINER_DEFAULT_NICE;
}

/* Remembers an ok, computed result for later identical jobs. */
static void cache_put(qn_core *c, qn_job *job, const qn_result *res)
{
    if (c->o.cache && job->cache_key_valid && res->status == QN_STATUS_OK && !res->cached)
        qn_cache_put(c->o.cache, job->cache_key, res->rows, res->cols, res->outputs);
}

/* The one place a job ends: answer, drop the model reference, free. */
static void job_end(qn_job *job, const qn_result *res)
{
    if (qn_metrics_enabled())
        qn_metrics_request(res->model, res->version, res->status, res->rows,
                           job->t_arrival_ns ? qn_now_ns() - job->t_arrival_ns : 0);
    job->origin.complete(job, res);
    qn_model_unref(&job->served_by);
    qn_job_free(&job);
}

void qn_core_reply_error(qn_job *job, qn_status status, qn_code code, const char *message)
{
    qn_result res = {.type = QN_RESULT_FINAL, .status = status, .id = &job->id,
                     .model = job->model[0] ? job->model : NULL,
                     .version = job->served_by ? job->served_by->version : 0, .code = code,
                     .message = message};
    job_end(job, &res);
}

static void core_finish(void *ud, qn_job *job, const qn_result *res)
{
    qn_core *c = ud;
    cache_put(c, job, res);
    job_end(job, res);
    atomic_fetch_sub(&c->inflight, 1);
}

static void core_batch_done(void *ud)
{
    qn_core *c = ud;
    if (c->o.cache) qn_cache_flush(c->o.cache); /* one write transaction per batch */
}

int qn_core_create(const qn_core_opts *opts, qn_registry *reg, qn_backend *be, qn_core **out)
{
    *out = NULL;
    if (!opts || !reg || !be || opts->threads < 1) return QN_EINVAL;
    qn_core *c = calloc(1, sizeof *c);
    if (!c) return QN_ENOMEM;
    c->o = *opts;
    if (c->o.limits.max_message_bytes == 0) c->o.limits.max_message_bytes = QN_DEFAULT_MAX_MESSAGE;
    c->reg = reg;
    c->be = be;
    c->direct = opts->direct_max_flops > 0 && opts->batch.max_delay_us == 0;
    int rc = qn_batcher_create(&opts->batch, &c->batcher);
    if (rc) goto fail;
    qn_executor_hooks h = {.ud = c, .finish = core_finish, .batch_done = core_batch_done};
    rc = qn_executor_start(c->batcher, be, opts->threads, &h, &c->exec);
    if (rc) goto fail;
    if (opts->train_queue > 0) {
        qn_trainer_opts to = {.queue_limit = opts->train_queue, .nice = opts->train_nice};
        rc = qn_trainer_create(reg, &to, core_finish, c, &c->trainer);
        if (rc) {
            qn_batcher_close(c->batcher);
            qn_executor_join(&c->exec);
            goto fail;
        }
    }
    *out = c;
    return 0;
fail:
    qn_batcher_destroy(&c->batcher);
    free(c);
    return rc;
}

void qn_core_stop(qn_core *c)
{
    if (atomic_exchange(&c->stopped, 1)) return;
    qn_trainer_stop(c->trainer);
    qn_batcher_close(c->batcher);
    uint64_t batches = 0, rows = 0, busy_ns = 0;
    qn_executor_stats(c->exec, &batches, &rows, &busy_ns);
    qn_executor_join(&c->exec);
    uint64_t db = atomic_load(&c->direct_batches), dr = atomic_load(&c->direct_rows);
    QN_LOGI("core", "ran %llu rows in %llu executor batches (%.1f rows/batch, %.0f ms busy), %llu "
            "rows in %llu direct batches (%.1f rows/batch)", (unsigned long long)rows,
            (unsigned long long)batches, batches ? (double)rows / (double)batches : 0.0,
            (double)busy_ns / 1e6, (unsigned long long)dr,
            (unsigned long long)db, db ? (double)dr / (double)db : 0.0);
}

void qn_core_destroy(qn_core **pc)
{
    qn_core *c = pc ? *pc : NULL;
    if (!c) return;
    qn_core_stop(c);
    qn_trainer_destroy(&c->trainer);
    qn_batcher_destroy(&c->batcher);
    free(c);
    *pc = NULL;
}

static void stage(qn_core *c, qn_core_local *l, qn_job *job);

/* Hands an admitted job to the batcher, or answers why not. */
static void enqueue(qn_core *c, qn_job *job)
{
    char msg[256];
    atomic_fetch_add(&c->inflight, 1);
    int rc = qn_batcher_push(c->batcher, job);
    if (rc == 0) return;
    atomic_fetch_sub(&c->inflight, 1);
    if (rc == QN_ETOOLARGE) {
        /* Retrying can never succeed: not "overloaded" but too large. */
        snprintf(msg, sizeof msg, "job has %lld rows, more than the worker's queue limit of %lld "
                 "rows (--queue-limit); split it into smaller jobs", (long long)job->rows,
                 (long long)qn_batcher_queue_limit(c->batcher));
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_TOO_LARGE, msg);
    } else if (rc == QN_EFULL) {
        snprintf(msg, sizeof msg, "queue full: %lld rows queued, limit %lld",
                 (long long)qn_batcher_queued_rows(c->batcher),
                 (long long)qn_batcher_queue_limit(c->batcher));
        qn_core_reply_error(job, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, msg);
    } else if (rc == QN_ECLOSED) {
        qn_core_reply_error(job, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, "worker is shutting down");
    } else {
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_INTERNAL, qn_strerror(rc));
    }
}

static int64_t flops_per_row(const qn_model *m)
{
    int64_t f = 0;
    for (int i = 0; i < m->nlayers; i++) f += 2 * m->layers[i].in * m->layers[i].out;
    return f;
}

/* Answers job from the cache if it is there (returns 1). Keys on the
 * version that serves the job, so another version never sees its entries.
 * With rd the lookup runs in that reader session (one read txn for a whole
 * burst); without, in a read txn of its own. */
static int cache_lookup(qn_core *c, qn_job *job, qn_model *m, qn_cache_reader *rd)
{
    if (qn_cache_key(m->name, m->version, job->rows, job->cols, job->inputs, job->cache_key) != 0)
        return 0;
    job->cache_key_valid = true;
    int64_t n = job->rows * m->out_dim;
    float stackbuf[1024];
    float *out = n <= 1024 ? stackbuf : malloc((size_t)n * sizeof(float));
    if (!out) return 0;
    int hit = (rd ? qn_cache_reader_get_into(rd, job->cache_key, job->rows, m->out_dim, out)
                  : qn_cache_get_into(c->o.cache, job->cache_key, job->rows, m->out_dim, out)) == 0;
    if (hit) {
        qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &job->id,
                         .model = m->name, .version = m->version, .rows = job->rows,
                         .cols = m->out_dim, .outputs = out, .cached = true};
        job_end(job, &res);
    }
    if (out != stackbuf) free(out);
    return hit;
}

/* Train jobs go to the trainer's bounded queue, not the batcher. */
static void train_admit(qn_core *c, qn_job *job)
{
    char msg[128];
    if (!c->trainer) {
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_BAD_JOB, "this worker does not take train jobs");
        return;
    }
    atomic_fetch_add(&c->inflight, 1);
    int rc = qn_trainer_submit(c->trainer, job);
    if (rc == 0) return;
    atomic_fetch_sub(&c->inflight, 1);
    if (rc == QN_EFULL) {
        snprintf(msg, sizeof msg, "train queue full: %d train jobs waiting, limit %d",
                 qn_trainer_pending(c->trainer), c->o.train_queue);
        qn_core_reply_error(job, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, msg);
    } else {
        qn_core_reply_error(job, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, "worker is shutting down");
    }
}

/* ---- "models" jobs: what the worker serves, answered at admission from
 * the registry with no compute, cache or queue (schemas/job.md). */

typedef struct models_list {
    const char *only;   /* a model name, or NULL: all */
    qn_model **m;
    size_t n, cap;
    int oom;
} models_list;

static void models_collect(void *ud, qn_model *m)
{
    models_list *ml = ud;
    if (ml->oom || (ml->only && strcmp(ml->only, m->name))) return;
    if (ml->n == ml->cap) {
        size_t cap = ml->cap ? ml->cap * 2 : 16;
        qn_model **p = realloc(ml->m, cap * sizeof *p);
        if (!p) { ml->oom = 1; return; }
        ml->m = p;
        ml->cap = cap;
    }
    ml->m[ml->n++] = qn_model_ref(m); /* kept past the registry lock */
}

/* The representation of a version's weights: its layers' one rep, or
 * "mixed" when they differ (compress keeps a layer f32 where CSR or int8
 * would not pay). */
static const char *model_repr(const qn_model *m)
{
    for (int i = 1; i < m->nlayers; i++)
        if (m->layers[i].rep != m->layers[0].rep) return "mixed";
    return m->nlayers ? qn_rep_name(m->layers[0].rep) : "";
}

static void answer_models(qn_core *c, qn_job *job)
{
    char msg[256];
    models_list ml = {.only = job->model[0] ? job->model : NULL};
    qn_registry_each_version(c->reg, models_collect, &ml);
    qn_model_info *info = ml.oom ? NULL : calloc(ml.n ? ml.n : 1, sizeof *info);
    if (!info) {
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_INTERNAL, "out of memory");
    } else if (ml.only && ml.n == 0) {
        snprintf(msg, sizeof msg, "no model named '%s' in the repository", job->model);
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_UNKNOWN_MODEL, msg);
    } else {
        for (size_t i = 0; i < ml.n; i++)
            info[i] = (qn_model_info){.name = ml.m[i]->name, .version = ml.m[i]->version,
                                      .input_dim = ml.m[i]->in_dim, .output_dim = ml.m[i]->out_dim,
                                      .repr = model_repr(ml.m[i])};
        qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &job->id,
                         .is_models = true, .models = info, .nmodels = ml.n};
        job_end(job, &res);
    }
    for (size_t i = 0; i < ml.n; i++) qn_model_unref(&ml.m[i]);
    free(ml.m);
    free(info);
}

static void admit(qn_core *c, qn_core_local *l, qn_job *job)
{
    char msg[256];
    if (job->type == QN_JOB_TRAIN) {
        train_admit(c, job);
        return;
    }
    if (job->type == QN_JOB_MODELS) {
        answer_models(c, job);
        return;
    }
    if (job->type != QN_JOB_PREDICT) {
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_BAD_JOB, "unsupported job type");
        return;
    }
    if (job->deadline_ms > 0 && qn_wall_ms() > job->deadline_ms) {
        qn_core_reply_error(job, QN_STATUS_EXPIRED, QN_CODE_EXPIRED,
                            "deadline passed before the job was admitted");
        return;
    }
    qn_model *m = NULL;
    int rc = qn_registry_get(c->reg, job->model, job->version, &m);
    if (rc == QN_ENOTFOUND) {
        snprintf(msg, sizeof msg, "no model named '%s' in the repository", job->model);
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_UNKNOWN_MODEL, msg);
        return;
    }
    if (rc == QN_ENOVERSION) {
        snprintf(msg, sizeof msg, "model '%s' has no version %lld", job->model,
                 (long long)job->version);
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_UNKNOWN_VERSION, msg);
        return;
    }
    if (rc) {
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_INTERNAL, qn_strerror(rc));
        return;
    }
    job->served_by = m;
    if (job->cols != m->in_dim) {
        snprintf(msg, sizeof msg, "inputs have %lld columns; model '%s' version %lld takes %lld",
                 (long long)job->cols, m->name, (long long)m->version, (long long)m->in_dim);
        qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_SHAPE_MISMATCH, msg);
        return;
    }
    if (l && c->direct && job->rows <= c->o.batch.queue_limit_rows) {
        /* Staged for the end of the receive burst, where qn_core_local_flush
         * answers cache hits and decides between this thread and the
         * executors for the rest. A job larger than the whole queue limit
         * goes to the batcher, which refuses it (too_large). */
        stage(c, l, job);
        return;
    }
    if (c->o.cache && job->cache && cache_lookup(c, job, m, NULL)) return;
    enqueue(c, job);
}

static void submit(qn_core *c, qn_core_local *l, qn_job *job)
{
    if (atomic_load(&c->stopped)) {
        qn_core_reply_error(job, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, "worker is shutting down");
        return;
    }
    /* The request duration metric starts here (the batcher restamps it at
     * its push, a few hundred ns later, for its own delay). */
    if (qn_metrics_enabled() && !job->t_arrival_ns) job->t_arrival_ns = qn_now_ns();
    admit(c, l, job);
}

void qn_core_submit(qn_core *c, qn_job *job) { submit(c, NULL, job); }
void qn_core_submit_local(qn_core *c, qn_core_local *l, qn_job *job) { submit(c, l, job); }

static void submit_bytes(qn_core *c, qn_core_local *l, const void *buf, size_t len,
                         const qn_origin *origin)
{
    qn_job *job = NULL;
    qn_decode_error err = {0};
    int rc = qn_job_decode(buf, len, &c->o.limits, &job, &err);
    if (rc == 0) {
        job->origin = *origin;
        submit(c, l, job);
        return;
    }
    if (!job) job = qn_job_new(0, 0);
    if (!job) {
        /* Out of memory: answer without a job object. */
        qn_job stub;
        memset(&stub, 0, sizeof stub);
        stub.origin = *origin;
        qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_ERROR,
                         .code = QN_CODE_INTERNAL, .message = "out of memory"};
        origin->complete(&stub, &res);
        return;
    }
    job->origin = *origin;
    qn_core_reply_error(job, QN_STATUS_ERROR, err.code ? err.code : QN_CODE_BAD_MESSAGE,
                        err.message[0] ? err.message : "undecodable message");
}

int64_t qn_core_cancel(qn_core *c, qn_job_match_fn match, void *ud, qn_status status, qn_code code,
                       const char *message)
{
    qn_job **jobs = NULL;
    int n = 0;
    int rc = qn_batcher_remove_if(c->batcher, match, ud, &jobs, &n);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        qn_core_reply_error(jobs[i], status, code, message);
        atomic_fetch_sub(&c->inflight, 1);
    }
    free(jobs);
    return n;
}

int64_t qn_core_inflight(qn_core *c) { return atomic_load(&c->inflight); }
int64_t qn_core_queued_rows(qn_core *c) { return qn_batcher_queued_rows(c->batcher); }
int64_t qn_core_queue_limit(qn_core *c) { return qn_batcher_queue_limit(c->batcher); }

void qn_core_submit_bytes(qn_core *c, const void *buf, size_t len, const qn_origin *origin)
{
    submit_bytes(c, NULL, buf, len, origin);
}

void qn_core_submit_bytes_local(qn_core *c, qn_core_local *l, const void *buf, size_t len,
                                const qn_origin *origin)
{
    submit_bytes(c, l, buf, len, origin);
}

/* ---- direct path ---- */

static void local_finish(void *ud, qn_job *job, const qn_result *res)
{
    cache_put(ud, job, res);
    job_end(job, res);
}

void qn_core_local_flush(qn_core *c, qn_core_local *l)
{
    qn_batch *b = &l->staged;
    if (b->njobs == 0) return;
    /* Cache hits first, answered here in one go: replies of a burst leave
     * together, which costs the socket's IO thread far fewer wakeups than
     * one reply per received message (bench/README.md). */
    if (c->o.cache) {
        /* One read txn and one bump-recording step for the whole burst
         * rather than per job (bench/notes/cache.md). The session is ended
         * before any computing: it pins an LMDB snapshot. Without one (no
         * read txn could be had) each lookup tries on its own. */
        qn_cache_reader *rd = NULL;
        if (qn_cache_reader_begin(c->o.cache, &rd) != 0) rd = NULL;
        int w = 0;
        for (int i = 0; i < b->njobs; i++) {
            qn_job *job = b->jobs[i];
            int64_t rows = job->rows;
            if (job->cache && cache_lookup(c, job, b->model, rd)) b->rows -= rows;
            else b->jobs[w++] = job;
        }
        qn_cache_reader_end(&rd);
        b->njobs = w;
        if (w == 0) {
            b->model = NULL;
            return;
        }
    }
    /* Run here when the model is cheaper than two thread handoffs, or when
     * the worker is idle and this is a lone small job (low load: latency is
     * all that matters and the executors have nothing to overlap with).
     * Otherwise the executors take it, and this thread goes back to IO. */
    int idle = b->rows <= c->o.direct_idle_rows && qn_executor_busy(c->exec) == 0 &&
               qn_batcher_queued_rows(c->batcher) == 0;
    int here = idle || flops_per_row(b->model) <= c->o.direct_max_flops;
    if (!here) {
        for (int i = 0; i < b->njobs; i++) enqueue(c, b->jobs[i]);
        b->njobs = 0;
        b->rows = 0;
        b->model = NULL;
        return;
    }
    qn_executor_hooks h = {.ud = c, .finish = local_finish};
    /* Cache inserts made here are written by the cache's tick thread, not
     * here: an LMDB write transaction (which may wait for another process's
     * writer) has no place on a transport's IO thread. */
    atomic_fetch_add(&c->direct_batches, 1);
    atomic_fetch_add(&c->direct_rows, (uint_fast64_t)b->rows);
    /* Idle executors mean idle cores: this lone forward may spread a big
     * layer over the backend's helper threads (backend.h ctx_set_intraop).
     * Never with busy executors, whose batches already use every core. */
    void (*intraop)(qn_backend *, void *, int) = idle ? c->be->iface->ctx_set_intraop : NULL;
    if (intraop) intraop(c->be, l->ctx, 1);
    qn_batch_run(c->be, l->ctx, &l->staged, &l->scratch, &h);
    if (intraop) intraop(c->be, l->ctx, 0);
    l->staged.njobs = 0;
    l->staged.rows = 0;
    l->staged.model = NULL;
}

static void stage(qn_core *c, qn_core_local *l, qn_job *job)
{
    qn_batch *b = &l->staged;
    if (b->njobs > 0 &&
        (b->model != job->served_by || b->rows + job->rows > c->o.batch.max_batch_rows))
        qn_core_local_flush(c, l);
    if (b->njobs == b->cap_jobs) {
        int cap = b->cap_jobs ? b->cap_jobs * 2 : 64;
        qn_job **n = realloc(b->jobs, (size_t)cap * sizeof *n);
        if (!n) {
            qn_core_reply_error(job, QN_STATUS_ERROR, QN_CODE_INTERNAL, "out of memory");
            return;
        }
        b->jobs = n;
        b->cap_jobs = cap;
    }
    b->model = job->served_by;
    b->jobs[b->njobs++] = job;
    b->rows += job->rows;
    if (b->rows >= c->o.batch.max_batch_rows) qn_core_local_flush(c, l);
}

int qn_core_local_create(qn_core *c, qn_core_local **out)
{
    *out = NULL;
    qn_core_local *l = calloc(1, sizeof *l);
    if (!l) return QN_ENOMEM;
    int rc = c->be->iface->ctx_create(c->be, &l->ctx);
    if (rc) {
        free(l);
        return rc;
    }
    *out = l;
    return 0;
}

void qn_core_local_destroy(qn_core *c, qn_core_local **pl)
{
    qn_core_local *l = pl ? *pl : NULL;
    if (!l) return;
    qn_core_local_flush(c, l);
    c->be->iface->ctx_destroy(c->be, l->ctx);
    qn_batch_free(&l->staged);
    qn_batch_scratch_free(&l->scratch);
    free(l);
    *pl = NULL;
}

int64_t qn_core_local_rows(const qn_core_local *l) { return l ? l->staged.rows : 0; }
