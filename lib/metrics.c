/* metrics.c: per-thread shards folded at scrape time (metrics.h). The hot
 * path (qn_metrics_request / _batch / _queue) finds its thread's entry for a
 * (model, version) — the last one used is remembered, so a steady stream
 * costs one string compare — and bumps plain counters with relaxed atomic
 * stores (a mov on x86: no lock prefix, since only the owner writes).
 * Must never: take a lock or allocate per job (only the first job of a new
 * (model, version) on a thread allocates). */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define NSTATUS 4
#define NBUCKET_MAX 18

enum { H_REQUEST, H_QUEUE, H_COMPUTE, H_ROWS, NHIST };

/* Upper bounds; durations in ns (rendered in seconds), rows as is. */
static const uint64_t g_dur_bounds[] = {
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000,
    50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000ull, 5000000000ull,
    10000000000ull};
static const uint64_t g_rows_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
#define NDUR (sizeof g_dur_bounds / sizeof g_dur_bounds[0])
#define NROWS (sizeof g_rows_bounds / sizeof g_rows_bounds[0])

typedef struct hist {
    _Atomic uint64_t bucket[NBUCKET_MAX]; /* per bucket, not cumulative; last is +Inf */
    _Atomic uint64_t count, sum;
} hist;

typedef struct entry {
    struct entry *_Atomic next;
    char model[QN_MODEL_NAME_MAX + 1];
    int64_t version;
    _Atomic uint64_t requests[NSTATUS], rows, batches;
    hist h[NHIST];
} entry;

typedef struct shard {
    struct shard *next;     /* global list, under g_mu */
    entry *_Atomic head;    /* the owner prepends; scrapes read */
    entry *last;            /* owner only */
    uint64_t generation;
} shard;

static atomic_int g_on;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* the shard list */
static shard *g_shards;
static _Thread_local shard *tl_shard;

/* Rare series. */
#define LAG_TOPICS 64
#define LAG_PARTS 1024
typedef struct lag_topic {
    char *topic;
    int n;
    int32_t part[LAG_PARTS];
    int64_t lag[LAG_PARTS];
} lag_topic;
#define TRAIN_MODELS 256
typedef struct train_row {
    char model[QN_MODEL_NAME_MAX + 1];
    uint64_t steps;
    double loss;
    int has_loss;
} train_row;
static pthread_mutex_t g_rare_mu = PTHREAD_MUTEX_INITIALIZER;
static lag_topic *g_lag[LAG_TOPICS];
static train_row g_train[TRAIN_MODELS];
static int g_ntrain;
static _Atomic uint64_t g_dlq;

void qn_metrics_enable(int on) { atomic_store(&g_on, on ? 1 : 0); }
int qn_metrics_enabled(void) { return atomic_load_explicit(&g_on, memory_order_relaxed); }

/* Only the owner thread writes, so load + store is exact. */
static inline void bump(_Atomic uint64_t *p, uint64_t by)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + by,
                          memory_order_relaxed);
}

static shard *my_shard(void)
{
    shard *s = tl_shard;
    if (s) return s;
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_lock(&g_mu);
    s->next = g_shards;
    g_shards = s;
    pthread_mutex_unlock(&g_mu);
    tl_shard = s;
    return s;
}

static entry *my_entry(const char *model, int64_t version)
{
    if (!model || version <= 0) {
        model = "";
        version = 0;
    }
    shard *s = my_shard();
    if (!s) return NULL;
    entry *e = s->last;
    if (e && e->version == version && strcmp(e->model, model) == 0) return e;
    for (e = atomic_load_explicit(&s->head, memory_order_relaxed); e;
         e = atomic_load_explicit(&e->next, memory_order_relaxed))
        if (e->version == version && strcmp(e->model, model) == 0) break;
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e) return NULL;
        snprintf(e->model, sizeof e->model, "%s", model);
        e->version = version;
        atomic_store_explicit(&e->next, atomic_load_explicit(&s->head, memory_order_relaxed),
                              memory_order_relaxed);
        /* Release: a scrape that sees the entry sees its name. */
        atomic_store_explicit(&s->head, e, memory_order_release);
    }
    s->last = e;
    return e;
}

static void observe(hist *h, const uint64_t *bounds, size_t nb, uint64_t v)
{
    size_t i = 0;
    while (i < nb && v > bounds[i]) i++;
    bump(&h->bucket[i], 1);
    bump(&h->count, 1);
    bump(&h->sum, v);
}

void qn_metrics_request(const char *model, int64_t version, qn_status status, int64_t rows,
                        uint64_t dur_ns)
{
    if (!qn_metrics_enabled()) return;
    entry *e = my_entry(model, version);
    if (!e) return;
    if ((unsigned)status < NSTATUS) bump(&e->requests[status], 1);
    if (status == QN_STATUS_OK && rows > 0) bump(&e->rows, (uint64_t)rows);
    if (dur_ns) observe(&e->h[H_REQUEST], g_dur_bounds, NDUR, dur_ns);
}

void qn_metrics_batch(const char *model, int64_t version, int64_t rows, uint64_t compute_ns)
{
    if (!qn_metrics_enabled()) return;
    entry *e = my_entry(model, version);
    if (!e) return;
    bump(&e->batches, 1);
    observe(&e->h[H_ROWS], g_rows_bounds, NROWS, rows > 0 ? (uint64_t)rows : 0);
    observe(&e->h[H_COMPUTE], g_dur_bounds, NDUR, compute_ns);
}

void qn_metrics_queue(const char *model, int64_t version, uint64_t queue_ns)
{
    if (!qn_metrics_enabled()) return;
    entry *e = my_entry(model, version);
    if (e) observe(&e->h[H_QUEUE], g_dur_bounds, NDUR, queue_ns);
}

void qn_metrics_kafka_dlq(void) { atomic_fetch_add(&g_dlq, 1); }

void qn_metrics_kafka_lag(const char *topic, const int32_t *partitions, const int64_t *lags, int n)
{
    if (!topic) return;
    if (n > LAG_PARTS) n = LAG_PARTS;
    pthread_mutex_lock(&g_rare_mu);
    lag_topic *t = NULL;
    int free_slot = -1;
    for (int i = 0; i < LAG_TOPICS; i++) {
        if (g_lag[i] && strcmp(g_lag[i]->topic, topic) == 0) { t = g_lag[i]; break; }
        if (!g_lag[i] && free_slot < 0) free_slot = i;
    }
    if (!t && free_slot >= 0 && (t = calloc(1, sizeof *t)) != NULL) {
        if (!(t->topic = strdup(topic))) {
            free(t);
            t = NULL;
        } else {
            g_lag[free_slot] = t;
        }
    }
    if (t) {
        t->n = n;
        for (int i = 0; i < n; i++) {
            t->part[i] = partitions[i];
            t->lag[i] = lags[i];
        }
    }
    pthread_mutex_unlock(&g_rare_mu);
}

void qn_metrics_train_steps(const char *model, uint64_t steps, double loss)
{
    if (!model) return;
    pthread_mutex_lock(&g_rare_mu);
    int i = 0;
    while (i < g_ntrain && strcmp(g_train[i].model, model)) i++;
    if (i == g_ntrain && g_ntrain < TRAIN_MODELS) {
        snprintf(g_train[i].model, sizeof g_train[i].model, "%s", model);
        g_ntrain++;
    }
    if (i < g_ntrain) {
        g_train[i].steps += steps;
        if (!isnan(loss)) {
            g_train[i].loss = loss;
            g_train[i].has_loss = 1;
        }
    }
    pthread_mutex_unlock(&g_rare_mu);
}

/* ---------------------------------------------------------------- render */

typedef struct agg {
    char model[QN_MODEL_NAME_MAX + 1];
    int64_t version;
    uint64_t requests[NSTATUS], rows, batches;
    struct { uint64_t bucket[NBUCKET_MAX], count, sum; } h[NHIST];
} agg;

typedef struct out {
    qn_buf *b;
    int err;
} out;

static void pf(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pf(out *o, const char *fmt, ...)
{
    if (o->err) return;
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        if (qn_buf_append(o->b, tmp, (size_t)n)) o->err = QN_ENOMEM;
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) { o->err = QN_ENOMEM; return; }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    if (qn_buf_append(o->b, big, (size_t)n)) o->err = QN_ENOMEM;
    free(big);
}

/* A label value with \ " and newline escaped (text format 0.0.4). */
static const char *esc(const char *s, char *buf, size_t cap)
{
    size_t w = 0;
    for (; s && *s && w + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') { buf[w++] = '\\'; buf[w++] = *s; }
        else if (*s == '\n') { buf[w++] = '\\'; buf[w++] = 'n'; }
        else buf[w++] = *s;
    }
    buf[w] = 0;
    return buf;
}

static void labels_mv(const agg *a, char *buf, size_t cap)
{
    char m[2 * QN_MODEL_NAME_MAX + 4];
    esc(a->model, m, sizeof m);
    if (a->version > 0) snprintf(buf, cap, "model=\"%s\",version=\"%lld\"", m, (long long)a->version);
    else snprintf(buf, cap, "model=\"%s\",version=\"\"", m);
}

static void head(out *o, const char *name, const char *type, const char *help)
{
    pf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_hist(out *o, const char *name, const char *help, const agg *a, int na, int which,
                        const uint64_t *bounds, size_t nb, double scale)
{
    head(o, name, "histogram", help);
    for (int i = 0; i < na; i++) {
        /* Jobs that reached no model never queue or run. */
        if (a[i].version <= 0 && which != H_REQUEST) continue;
        char lb[256];
        labels_mv(&a[i], lb, sizeof lb);
        uint64_t cum = 0;
        for (size_t k = 0; k < nb; k++) {
            cum += a[i].h[which].bucket[k];
            pf(o, "%s_bucket{%s,le=\"%g\"} %llu\n", name, lb, (double)bounds[k] * scale,
               (unsigned long long)cum);
        }
        cum += a[i].h[which].bucket[nb];
        pf(o, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, lb, (unsigned long long)cum);
        pf(o, "%s_sum{%s} %.9g\n", name, lb, (double)a[i].h[which].sum * scale);
        pf(o, "%s_count{%s} %llu\n", name, lb, (unsigned long long)a[i].h[which].count);
    }
}

static int agg_cmp(const void *x, const void *y)
{
    const agg *a = x, *b = y;
    int c = strcmp(a->model, b->model);
    if (c) return c;
    return (a->version > b->version) - (a->version < b->version);
}

/* Folds every shard into one row per (model, version), sorted. */
static int fold(agg **out_a, int *out_n)
{
    agg *a = NULL;
    int n = 0, cap = 0;
    pthread_mutex_lock(&g_mu);
    for (shard *s = g_shards; s; s = s->next) {
        for (entry *e = atomic_load_explicit(&s->head, memory_order_acquire); e;
             e = atomic_load_explicit(&e->next, memory_order_relaxed)) {
            int i = 0;
            while (i < n && (a[i].version != e->version || strcmp(a[i].model, e->model))) i++;
            if (i == n) {
                if (n == cap) {
                    int nc = cap ? cap * 2 : 16;
                    agg *na = realloc(a, (size_t)nc * sizeof *na);
                    if (!na) {
                        pthread_mutex_unlock(&g_mu);
                        free(a);
                        return QN_ENOMEM;
                    }
                    a = na;
                    cap = nc;
                }
                memset(&a[n], 0, sizeof a[n]);
                memcpy(a[n].model, e->model, sizeof a[n].model);
                a[n].version = e->version;
                n++;
            }
            agg *g = &a[i];
            for (int k = 0; k < NSTATUS; k++)
                g->requests[k] += atomic_load_explicit(&e->requests[k], memory_order_relaxed);
            g->rows += atomic_load_explicit(&e->rows, memory_order_relaxed);
            g->batches += atomic_load_explicit(&e->batches, memory_order_relaxed);
            for (int h = 0; h < NHIST; h++) {
                for (int k = 0; k < NBUCKET_MAX; k++)
                    g->h[h].bucket[k] += atomic_load_explicit(&e->h[h].bucket[k], memory_order_relaxed);
                g->h[h].count += atomic_load_explicit(&e->h[h].count, memory_order_relaxed);
                g->h[h].sum += atomic_load_explicit(&e->h[h].sum, memory_order_relaxed);
            }
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (n > 1) qsort(a, (size_t)n, sizeof *a, agg_cmp);
    *out_a = a;
    *out_n = n;
    return 0;
}

int qn_metrics_render(const qn_metrics_extra *x, qn_buf *b)
{
    static const char *const status_names[NSTATUS] = {"ok", "error", "expired", "rejected"};
    out o = {.b = b};
    agg *a = NULL;
    int na = 0;
    int rc = fold(&a, &na);
    if (rc) return rc;
    char lb[256], m[2 * QN_MODEL_NAME_MAX + 4];

    head(&o, "quern_requests_total", "counter", "Final results, by status.");
    for (int i = 0; i < na; i++) {
        labels_mv(&a[i], lb, sizeof lb);
        for (int k = 0; k < NSTATUS; k++)
            if (a[i].requests[k] || (k == 0 && a[i].version > 0))
                pf(&o, "quern_requests_total{%s,status=\"%s\"} %llu\n", lb, status_names[k],
                   (unsigned long long)a[i].requests[k]);
    }
    head(&o, "quern_rows_total", "counter", "Input rows answered ok.");
    for (int i = 0; i < na; i++) {
        if (a[i].version <= 0) continue;
        labels_mv(&a[i], lb, sizeof lb);
        pf(&o, "quern_rows_total{%s} %llu\n", lb, (unsigned long long)a[i].rows);
    }
    head(&o, "quern_batches_total", "counter", "Forward passes (batches) run.");
    for (int i = 0; i < na; i++) {
        if (a[i].version <= 0) continue;
        labels_mv(&a[i], lb, sizeof lb);
        pf(&o, "quern_batches_total{%s} %llu\n", lb, (unsigned long long)a[i].batches);
    }
    render_hist(&o, "quern_request_duration_seconds",
                "From admission to the final result, per job.", a, na, H_REQUEST, g_dur_bounds,
                NDUR, 1e-9);
    render_hist(&o, "quern_queue_duration_seconds",
                "From admission to the start of the job's batch.", a, na, H_QUEUE, g_dur_bounds,
                NDUR, 1e-9);
    render_hist(&o, "quern_compute_duration_seconds", "One batch's forward pass.", a, na,
                H_COMPUTE, g_dur_bounds, NDUR, 1e-9);
    render_hist(&o, "quern_batch_rows", "Rows per batch.", a, na, H_ROWS, g_rows_bounds, NROWS, 1.0);

    const qn_cache_stats *cs = x ? x->cache : NULL;
    head(&o, "quern_cache_hits_total", "counter", "Result cache hits (this process).");
    pf(&o, "quern_cache_hits_total %llu\n", (unsigned long long)(cs ? cs->hits : 0));
    head(&o, "quern_cache_misses_total", "counter", "Result cache misses (this process).");
    pf(&o, "quern_cache_misses_total %llu\n", (unsigned long long)(cs ? cs->misses : 0));
    head(&o, "quern_cache_evictions_total", "counter", "Result cache evictions (this process).");
    pf(&o, "quern_cache_evictions_total %llu\n", (unsigned long long)(cs ? cs->evictions : 0));
    head(&o, "quern_cache_bytes", "gauge", "Bytes held by the result cache.");
    pf(&o, "quern_cache_bytes %llu\n", (unsigned long long)(cs ? cs->bytes : 0));
    head(&o, "quern_queue_rows", "gauge", "Rows queued for execution.");
    pf(&o, "quern_queue_rows %lld\n", (long long)(x ? x->queue_rows : 0));

    head(&o, "quern_kafka_consumer_lag", "gauge",
         "Messages behind the partition's high watermark (librdkafka statistics).");
    pthread_mutex_lock(&g_rare_mu);
    for (int i = 0; i < LAG_TOPICS; i++) {
        const lag_topic *t = g_lag[i];
        if (!t) continue;
        char tn[512];
        esc(t->topic, tn, sizeof tn);
        for (int k = 0; k < t->n; k++)
            pf(&o, "quern_kafka_consumer_lag{topic=\"%s\",partition=\"%d\"} %lld\n", tn,
               (int)t->part[k], (long long)t->lag[k]);
    }
    head(&o, "quern_kafka_dlq_total", "counter", "Messages copied to the dead-letter topic.");
    pf(&o, "quern_kafka_dlq_total %llu\n", (unsigned long long)atomic_load(&g_dlq));

    head(&o, "quern_train_steps_total", "counter", "Optimizer steps run by train jobs.");
    for (int i = 0; i < g_ntrain; i++)
        pf(&o, "quern_train_steps_total{model=\"%s\"} %llu\n", esc(g_train[i].model, m, sizeof m),
           (unsigned long long)g_train[i].steps);
    /* Served models that never trained read 0 steps (no loss yet). */
    for (int i = 0; x && i < x->nmodels; i++) {
        int seen = 0;
        for (int k = 0; k < g_ntrain && !seen; k++) seen = strcmp(g_train[k].model, x->models[i].name) == 0;
        for (int k = 0; k < i && !seen; k++) seen = strcmp(x->models[k].name, x->models[i].name) == 0;
        if (!seen)
            pf(&o, "quern_train_steps_total{model=\"%s\"} 0\n", esc(x->models[i].name, m, sizeof m));
    }
    head(&o, "quern_train_loss", "gauge", "Training loss after the latest step.");
    for (int i = 0; i < g_ntrain; i++)
        if (g_train[i].has_loss)
            pf(&o, "quern_train_loss{model=\"%s\"} %.9g\n", esc(g_train[i].model, m, sizeof m),
               g_train[i].loss);
    pthread_mutex_unlock(&g_rare_mu);

    head(&o, "quern_model_info", "gauge", "1 for each loaded model version.");
    for (int i = 0; x && i < x->nmodels; i++) {
        char r[128];
        esc(x->models[i].name, m, sizeof m);
        pf(&o, "quern_model_info{model=\"%s\",version=\"%lld\",repr=\"%s\"} 1\n", m,
           (long long)x->models[i].version,
           esc(x->models[i].repr ? x->models[i].repr : "", r, sizeof r));
    }
    free(a);
    return o.err;
}
