/* metrics.h: the worker's Prometheus series (CONTRACT.md section 7),
 * counted without slowing the hot path.
 *
 * Every thread that records (transport IO threads, executors) owns a shard:
 * plain per-(model, version) counters and histograms that only that thread
 * writes, with relaxed atomic stores so a scrape can read them while they
 * move. A scrape (qn_metrics_render) walks every shard and folds them. So a
 * job costs a few uncontended stores and no lock; the only lock is taken
 * once per thread (registering its shard) and by scrapes.
 *
 * Process-wide, and off until qn_metrics_enable(1) (the worker turns it on
 * with --http): while off, every record call returns at once. Shards live
 * until the process exits (a thread that ends keeps its counts: counters
 * never go back). Rare series (Kafka lag, the DLQ count, training) sit
 * behind a mutex of their own. */
#ifndef QN_METRICS_H
#define QN_METRICS_H

#include <stdint.h>

#include "cache.h"
#include "job.h"

/* Turns recording on or off for the whole process. */
void qn_metrics_enable(int on);
int qn_metrics_enabled(void);

/* One final result: quern_requests_total{model,version,status}, on ok
 * quern_rows_total += rows, and quern_request_duration_seconds when
 * dur_ns > 0. model NULL or version 0 (a job that never reached a model:
 * undecodable, unknown model) records under model="" version="", so that
 * clients cannot grow the label set. */
void qn_metrics_request(const char *model, int64_t version, qn_status status, int64_t rows,
                        uint64_t dur_ns);
/* One forward over a batch: quern_batches_total, quern_batch_rows and
 * quern_compute_duration_seconds. */
void qn_metrics_batch(const char *model, int64_t version, int64_t rows, uint64_t compute_ns);
/* One job's time between admission and the start of its batch:
 * quern_queue_duration_seconds. */
void qn_metrics_queue(const char *model, int64_t version, uint64_t queue_ns);

/* quern_kafka_dlq_total += 1. */
void qn_metrics_kafka_dlq(void);
/* Replaces topic's rows of quern_kafka_consumer_lag{topic,partition} with
 * these n (partitions no longer listed disappear). topic is copied; at
 * most 64 topics and 1024 partitions per topic are kept. */
void qn_metrics_kafka_lag(const char *topic, const int32_t *partitions, const int64_t *lags, int n);

/* Training progress of model: quern_train_steps_total{model} += steps
 * (optimizer steps since the last call) and quern_train_loss{model} = loss
 * (not set when loss is NaN). Called by the trainer; a served model that
 * never trained shows 0 steps and no loss. */
void qn_metrics_train_steps(const char *model, uint64_t steps, double loss);

/* What only the caller can know at scrape time. */
typedef struct qn_metrics_model {
    const char *name;
    int64_t version;
    const char *repr; /* weight storage, e.g. "f32", "int8", "f16+csr_f32" */
} qn_metrics_model;

typedef struct qn_metrics_extra {
    const qn_cache_stats *cache;    /* NULL: no cache (the cache series read 0) */
    int64_t queue_rows;             /* quern_queue_rows */
    const qn_metrics_model *models; /* quern_model_info, one per loaded version */
    int nmodels;
} qn_metrics_extra;

/* Appends the Prometheus text exposition (format 0.0.4) of every series to
 * out. 0 or QN_ENOMEM. Thread-safe; any thread. */
int qn_metrics_render(const qn_metrics_extra *x, qn_buf *out);

#endif
