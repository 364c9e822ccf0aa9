/* executor.c: batch runner threads. The only per-batch work outside the
 * forward pass is one memcpy gather of the input rows (skipped for a batch of
 * one job) — outputs are handed out as views into one output buffer, never
 * copied here. */
#include "executor.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
#include "tensor.h"

typedef struct worker {
    struct qn_executor *ex;
    pthread_t tid;
    void *ctx;
    int started;
    int index;
} worker;

struct qn_executor {
    qn_batcher *b;
    qn_backend *be;
    qn_executor_hooks h;
    int n;
    worker *w;
    atomic_uint_fast64_t batches, rows, busy_ns;
    atomic_int busy;
};

static int grow(float **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    float *n = qn_alloc_aligned(c * sizeof(float), 0);
    if (!n) return QN_ENOMEM;
    free(*buf);
    *buf = n;
    *cap = c;
    return 0;
}

static void finish_error(const qn_executor_hooks *h, qn_job *job, qn_status st, qn_code code,
                         const char *msg)
{
    qn_result res = {.type = QN_RESULT_FINAL, .status = st, .id = &job->id, .model = job->model,
                     .version = job->served_by ? job->served_by->version : 0, .code = code,
                     .message = msg};
    h->finish(h->ud, job, &res);
}

void qn_batch_scratch_free(qn_batch_scratch *s)
{
    free(s->x);
    free(s->y);
    s->x = s->y = NULL;
    s->xcap = s->ycap = 0;
}

int qn_batch_run(qn_backend *be, void *ctx, qn_batch *batch, qn_batch_scratch *s,
                 const qn_executor_hooks *h)
{
    float **xb = &s->x, **yb = &s->y;
    size_t *xcap = &s->xcap, *ycap = &s->ycap;
    for (int i = 0; i < batch->nexpired; i++)
        finish_error(h, batch->expired[i], QN_STATUS_EXPIRED, QN_CODE_EXPIRED,
                     "deadline passed while the job was queued");
    if (batch->njobs == 0) return 0;

    const qn_model *m = batch->model;
    int64_t in = m->in_dim, out = m->out_dim, rows = batch->rows;
    const float *x;
    int rc = 0;
    int metered = qn_metrics_enabled();
    uint64_t t0 = metered ? qn_now_ns() : 0;
    if (batch->njobs == 1) {
        x = batch->jobs[0]->inputs;
    } else {
        rc = grow(xb, xcap, (size_t)(rows * in));
        if (rc == 0) {
            float *dst = *xb;
            for (int i = 0; i < batch->njobs; i++) {
                size_t n = (size_t)(batch->jobs[i]->rows * in);
                memcpy(dst, batch->jobs[i]->inputs, n * sizeof(float));
                dst += n;
            }
        }
        x = *xb;
    }
    if (rc == 0) rc = grow(yb, ycap, (size_t)(rows * out));
    if (rc == 0) rc = be->iface->forward(be, ctx, m, m->backend_state, x, rows, *yb);
    if (rc != 0) {
        qn_log_job(QN_LOG_ERROR, "executor", NULL, m->name, "forward of %s v%lld failed for %lld rows: %s",
                   m->name, (long long)m->version, (long long)rows, qn_strerror(rc));
        for (int i = 0; i < batch->njobs; i++)
            finish_error(h, batch->jobs[i], QN_STATUS_ERROR, QN_CODE_INTERNAL,
                         "the compute backend failed on this batch");
        return rc;
    }
    if (metered) {
        uint64_t t1 = qn_now_ns();
        qn_metrics_batch(m->name, m->version, rows, t1 - t0);
        for (int i = 0; i < batch->njobs; i++)
            if (batch->jobs[i]->t_arrival_ns && batch->jobs[i]->t_arrival_ns < t0)
                qn_metrics_queue(m->name, m->version, t0 - batch->jobs[i]->t_arrival_ns);
    }
    const float *y = *yb;
    for (int i = 0; i < batch->njobs; i++) {
        qn_job *job = batch->jobs[i];
        qn_result res = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &job->id,
                         .model = m->name, .version = m->version, .rows = job->rows, .cols = out,
                         .outputs = y};
        y += job->rows * out;
        h->finish(h->ud, job, &res);
    }
    return 0;
}

static void *thread_main(void *arg)
{
    worker *w = arg;
    qn_executor *ex = w->ex;
    qn_thread_name("qn-exec-%d", w->index);
    qn_batch batch = {0};
    qn_batch_scratch s = {0};
    while (qn_batcher_pop(ex->b, &batch) == 0) {
        atomic_fetch_add(&ex->busy, 1);
        uint64_t t0 = qn_now_ns();
        int64_t rows = batch.rows;
        if (qn_batch_run(ex->be, w->ctx, &batch, &s, &ex->h) == 0 && batch.njobs > 0) {
            atomic_fetch_add(&ex->batches, 1);
            atomic_fetch_add(&ex->rows, (uint_fast64_t)rows);
        }
        if (ex->h.batch_done) ex->h.batch_done(ex->h.ud);
        atomic_fetch_add(&ex->busy_ns, qn_now_ns() - t0);
        atomic_fetch_sub(&ex->busy, 1);
    }
    qn_batch_free(&batch);
    qn_batch_scratch_free(&s);
    return NULL;
}

int qn_executor_start(qn_batcher *b, qn_backend *be, int threads, const qn_executor_hooks *hooks,
                      qn_executor **out)
{
    *out = NULL;
    if (!b || !be || threads < 1 || !hooks || !hooks->finish) return QN_EINVAL;
    int rc = QN_ENOMEM;
    qn_executor *ex = calloc(1, sizeof *ex);
    if (!ex) return QN_ENOMEM;
    ex->b = b;
    ex->be = be;
    ex->h = *hooks;
    ex->w = calloc((size_t)threads, sizeof *ex->w);
    if (!ex->w) goto fail;
    for (int i = 0; i < threads; i++) {
        worker *w = &ex->w[i];
        w->ex = ex;
        w->index = i;
        rc = be->iface->ctx_create(be, &w->ctx);
        if (rc) goto fail;
        if (pthread_create(&w->tid, NULL, thread_main, w) != 0) {
            be->iface->ctx_destroy(be, w->ctx);
            w->ctx = NULL;
            rc = QN_EEXTERNAL;
            goto fail;
        }
        w->started = 1;
        ex->n = i + 1;
    }
    *out = ex;
    return 0;
fail:
    /* Threads already started block in pop until the batcher closes; a
     * failed start leaves the batcher unusable, so close it to reap them. */
    qn_batcher_close(b);
    qn_executor_join(&ex);
    return rc;
}

void qn_executor_join(qn_executor **pe)
{
    qn_executor *ex = pe ? *pe : NULL;
    if (!ex) return;
    for (int i = 0; ex->w && i < ex->n; i++) {
        if (ex->w[i].started) pthread_join(ex->w[i].tid, NULL);
        if (ex->w[i].ctx) ex->be->iface->ctx_destroy(ex->be, ex->w[i].ctx);
    }
    free(ex->w);
    free(ex);
    *pe = NULL;
}

void qn_executor_stats(qn_executor *e, uint64_t *batches, uint64_t *rows, uint64_t *busy_ns)
{
    if (busy_ns) *busy_ns = atomic_load(&e->busy_ns);
    if (batches) *batches = atomic_load(&e->batches);
    if (rows) *rows = atomic_load(&e->rows);
}

int qn_executor_busy(qn_executor *e) { return e ? atomic_load(&e->busy) : 0; }
