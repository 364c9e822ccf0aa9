/* batcher.c: per-model-version priority queues under one mutex. The lock is
 * held only to move pointers; gathering inputs and running them happen
 * outside it, in the executor. Executors are woken only when their decision
 * can change (new queue, batch full, greedy mode), not on every push, so a
 * burst of single-row jobs costs one wakeup per batch rather than per job. */
#include "batcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "tensor.h"

/* A heap entry carries its ordering key, so that sifting through thousands
 * of queued jobs (a Kafka backlog) compares entries in one array instead of
 * chasing a pointer per comparison (heap_pop was 1.4% of the worker's
 * samples with 8192 jobs queued). */
typedef struct hent {
    int64_t priority;
    uint64_t seq;
    qn_job *job;
} hent;

typedef struct bqueue {
    qn_model *model; /* NULL: free slot */
    hent *heap;      /* min-heap on (priority, seq) */
    int n, cap;
    int64_t rows;
} bqueue;

struct qn_batcher {
    qn_batcher_opts o;
    uint64_t delay_ns;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bqueue *q;
    int nq, capq;
    int64_t queued_rows;
    uint64_t seq;
    int closed;
    int waiting;
};

static int ent_less(const hent *a, const hent *b)
{
    return a->priority != b->priority ? a->priority < b->priority : a->seq < b->seq;
}

static void heap_up(hent *h, int i)
{
    hent x = h[i];
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!ent_less(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static void heap_down(hent *h, int n, int i)
{
    hent x = h[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ent_less(&h[c + 1], &h[c])) c++;
        if (!ent_less(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static qn_job *heap_pop(bqueue *q)
{
    qn_job *top = q->heap[0].job;
    q->n--;
    if (q->n > 0) {
        q->heap[0] = q->heap[q->n];
        heap_down(q->heap, q->n, 0);
    }
    return top;
}

int qn_batcher_create(const qn_batcher_opts *opts, qn_batcher **out)
{
    *out = NULL;
    if (!opts || opts->max_batch_rows <= 0 || opts->max_delay_us < 0 || opts->queue_limit_rows <= 0)
        return QN_EINVAL;
    qn_batcher *b = calloc(1, sizeof *b);
    if (!b) return QN_ENOMEM;
    b->o = *opts;
    b->delay_ns = (uint64_t)opts->max_delay_us * 1000u;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = b;
    return 0;
}

void qn_batcher_destroy(qn_batcher **pb)
{
    qn_batcher *b = pb ? *pb : NULL;
    if (!b) return;
    QN_ASSERT(b->queued_rows == 0);
    for (int i = 0; i < b->nq; i++) free(b->q[i].heap);
    free(b->q);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
    *pb = NULL;
}

static bqueue *queue_for(qn_batcher *b, qn_model *m)
{
    bqueue *free_slot = NULL;
    for (int i = 0; i < b->nq; i++) {
        if (b->q[i].model == m) return &b->q[i];
        if (!b->q[i].model && !free_slot) free_slot = &b->q[i];
    }
    if (!free_slot) {
        if (b->nq == b->capq) {
            int cap = b->capq ? b->capq * 2 : 8;
            bqueue *nq = realloc(b->q, (size_t)cap * sizeof *nq);
            if (!nq) return NULL;
            b->q = nq;
            b->capq = cap;
        }
        free_slot = &b->q[b->nq++];
        memset(free_slot, 0, sizeof *free_slot);
    }
    free_slot->model = m;
    free_slot->n = 0;
    free_slot->rows = 0;
    return free_slot;
}

int qn_batcher_push(qn_batcher *b, qn_job *job)
{
    QN_ASSERT(job && job->served_by);
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    if (b->closed) { rc = QN_ECLOSED; goto out; }
    /* Never fits, whatever is queued: a different answer from "full now". */
    if (job->rows > b->o.queue_limit_rows) { rc = QN_ETOOLARGE; goto out; }
    if (b->queued_rows + job->rows > b->o.queue_limit_rows) { rc = QN_EFULL; goto out; }
    bqueue *q = queue_for(b, job->served_by);
    if (!q) { rc = QN_ENOMEM; goto out; }
    if (q->n == q->cap) {
        int cap = q->cap ? q->cap * 2 : 64;
        hent *h = realloc(q->heap, (size_t)cap * sizeof *h);
        if (!h) {
            if (q->n == 0) q->model = NULL;
            rc = QN_ENOMEM;
            goto out;
        }
        q->heap = h;
        q->cap = cap;
    }
    int was_empty = q->n == 0;
    job->t_arrival_ns = qn_now_ns();
    job->seq = b->seq++;
    q->heap[q->n] = (hent){.priority = job->priority, .seq = job->seq, .job = job};
    heap_up(q->heap, q->n);
    q->n++;
    q->rows += job->rows;
    b->queued_rows += job->rows;
    /* Wake an executor only when its decision can change. */
    if (b->waiting > 0 && (b->delay_ns == 0 || was_empty || q->rows >= b->o.max_batch_rows))
        pthread_cond_signal(&b->cv);
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int ensure_cap(qn_job ***arr, int *cap, int need)
{
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    qn_job **n = realloc(*arr, (size_t)c * sizeof *n);
    if (!n) return QN_ENOMEM;
    *arr = n;
    *cap = c;
    return 0;
}

/* Moves jobs from q into batch. Called locked. */
static void take(qn_batcher *b, bqueue *q, qn_batch *batch)
{
    int64_t now_ms = qn_wall_ms();
    batch->model = q->model;
    while (q->n > 0) {
        qn_job *top = q->heap[0].job;
        if (top->deadline_ms > 0 && now_ms > top->deadline_ms) {
            if (ensure_cap(&batch->expired, &batch->cap_expired, batch->nexpired + 1)) break;
            heap_pop(q);
            batch->expired[batch->nexpired++] = top;
        } else {
            if (batch->rows > 0 && batch->rows + top->rows > b->o.max_batch_rows) break;
            if (ensure_cap(&batch->jobs, &batch->cap_jobs, batch->njobs + 1)) break;
            heap_pop(q);
            batch->jobs[batch->njobs++] = top;
            batch->rows += top->rows;
        }
        q->rows -= top->rows;
        b->queued_rows -= top->rows;
        if (batch->rows >= b->o.max_batch_rows) break;
    }
    if (q->n == 0) q->model = NULL;
}

/* Finds the most urgent ready queue; *wake_at gets the earliest time a
 * not-ready queue becomes ready (UINT64_MAX if none). Called locked. */
static bqueue *pick(qn_batcher *b, uint64_t now, uint64_t *wake_at)
{
    bqueue *best = NULL;
    *wake_at = UINT64_MAX;
    for (int i = 0; i < b->nq; i++) {
        bqueue *q = &b->q[i];
        if (!q->model || q->n == 0) continue;
        qn_job *top = q->heap[0].job;
        uint64_t ready_at = top->t_arrival_ns + b->delay_ns;
        if (b->closed || q->rows >= b->o.max_batch_rows || now >= ready_at) {
            if (!best || ent_less(&q->heap[0], &best->heap[0])) best = q;
        } else if (ready_at < *wake_at) {
            *wake_at = ready_at;
        }
    }
    return best;
}

static void batch_clear(qn_batch *batch)
{
    batch->model = NULL;
    batch->njobs = 0;
    batch->nexpired = 0;
    batch->rows = 0;
}

static int pop(qn_batcher *b, qn_batch *batch, int block)
{
    batch_clear(batch);
    pthread_mutex_lock(&b->mu);
    int rc;
    for (;;) {
        uint64_t wake_at;
        bqueue *q = pick(b, qn_now_ns(), &wake_at);
        if (q) {
            take(b, q, batch);
            if (batch->njobs == 0 && batch->nexpired == 0) { rc = QN_ENOMEM; break; }
            /* More ready work and someone idle: pass the baton. */
            if (b->waiting > 0 && b->queued_rows > 0) pthread_cond_signal(&b->cv);
            rc = 0;
            break;
        }
        if (b->closed && b->queued_rows == 0) { rc = QN_ECLOSED; break; }
        if (!block) { rc = QN_EAGAIN; break; }
        b->waiting++;
        if (wake_at == UINT64_MAX) {
            pthread_cond_wait(&b->cv, &b->mu);
        } else {
            struct timespec ts = {(time_t)(wake_at / 1000000000u), (long)(wake_at % 1000000000u)};
            pthread_cond_timedwait(&b->cv, &b->mu, &ts);
        }
        b->waiting--;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int qn_batcher_pop(qn_batcher *b, qn_batch *batch) { return pop(b, batch, 1); }
int qn_batcher_try_pop(qn_batcher *b, qn_batch *batch) { return pop(b, batch, 0); }

int qn_batcher_remove_if(qn_batcher *b, qn_job_match_fn match, void *ud, qn_job ***jobs,
                         int *njobs)
{
    *jobs = NULL;
    *njobs = 0;
    pthread_mutex_lock(&b->mu);
    /* Count first, so the one allocation happens before anything moves and
     * a failed allocation leaves the queues as they were. */
    int n = 0;
    for (int i = 0; i < b->nq; i++)
        for (int k = 0; b->q[i].model && k < b->q[i].n; k++) n += match(b->q[i].heap[k].job, ud) != 0;
    qn_job **out = NULL;
    if (n > 0 && !(out = malloc((size_t)n * sizeof *out))) {
        pthread_mutex_unlock(&b->mu);
        return QN_ENOMEM;
    }
    int got = 0;
    for (int i = 0; i < b->nq && got < n; i++) {
        bqueue *q = &b->q[i];
        if (!q->model) continue;
        int w = 0;
        for (int k = 0; k < q->n; k++) {
            qn_job *j = q->heap[k].job;
            if (got < n && match(j, ud)) {
                out[got++] = j;
                q->rows -= j->rows;
                b->queued_rows -= j->rows;
            } else {
                q->heap[w++] = q->heap[k];
            }
        }
        if (w == q->n) continue;
        /* Filtering keeps no heap order: rebuild it (Floyd, O(n)). */
        q->n = w;
        for (int k = w / 2 - 1; k >= 0; k--) heap_down(q->heap, w, k);
        if (w == 0) q->model = NULL;
    }
    QN_ASSERT(got == n);
    pthread_mutex_unlock(&b->mu);
    *jobs = out;
    *njobs = n;
    return 0;
}

void qn_batcher_close(qn_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    b->closed = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

int64_t qn_batcher_queued_rows(qn_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    int64_t r = b->queued_rows;
    pthread_mutex_unlock(&b->mu);
    return r;
}

int64_t qn_batcher_queue_limit(const qn_batcher *b) { return b->o.queue_limit_rows; }

void qn_batch_free(qn_batch *batch)
{
    free(batch->jobs);
    free(batch->expired);
    memset(batch, 0, sizeof *batch);
}
