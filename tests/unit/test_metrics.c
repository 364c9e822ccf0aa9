/* test_metrics.c: lib/metrics.c. Counts recorded on many threads at once
 * fold to exact totals (no update lost without a lock), histograms are
 * cumulative with +Inf equal to _count, the exposition parses as text
 * format 0.0.4 lines, and the rare series (lag, DLQ, training) replace and
 * accumulate as documented. Metrics are process-wide: each test uses its
 * own model names. */
#include <pthread.h>

#include "metrics.h"
#include "qn_test.h"

/* The value of the sample whose line starts with prefix (the series name
 * and its labels, exactly as rendered), or -1. */
static double sample(const char *text, const char *prefix)
{
    size_t pl = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, prefix, pl) == 0 && p[pl] == ' ') return strtod(p + pl + 1, NULL);
    }
    return -1;
}

static char *render(const qn_metrics_extra *x)
{
    qn_buf b = {0};
    CHECK_EQ_INT(qn_metrics_render(x, &b), 0);
    qn_buf_append(&b, "", 1);
    return b.data;
}

TEST(off_records_nothing)
{
    qn_metrics_enable(0);
    qn_metrics_request("offm", 1, QN_STATUS_OK, 3, 1000);
    qn_metrics_enable(1);
    char *t = render(NULL);
    CHECK(strstr(t, "model=\"offm\"") == NULL);
    free(t);
}

#define THREADS 8
#define PER 20000

static void *hammer(void *arg)
{
    (void)arg;
    for (int i = 0; i < PER; i++) {
        qn_metrics_request("hm", 3, i % 10 == 0 ? QN_STATUS_REJECTED : QN_STATUS_OK, 2,
                           (uint64_t)(i % 4 + 1) * 100000u); /* 0.1..0.4 ms */
        if (i % 2 == 0) qn_metrics_batch("hm", 3, 4, 2000000u); /* 2 ms */
        qn_metrics_queue("hm", 3, 30000u);
    }
    return NULL;
}

TEST(threads_fold_exactly_while_scraped)
{
    qn_metrics_enable(1);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, hammer, NULL);
    /* Scrapes while they run must not crash or go backwards. */
    double last = 0;
    for (int k = 0; k < 50; k++) {
        char *t = render(NULL);
        double v = sample(t, "quern_requests_total{model=\"hm\",version=\"3\",status=\"ok\"}");
        if (v >= 0) {
            CHECK(v >= last);
            last = v;
        }
        free(t);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    char *t = render(NULL);
    double ok = THREADS * PER * 9 / 10, rej = THREADS * PER / 10;
    CHECK_NEAR(sample(t, "quern_requests_total{model=\"hm\",version=\"3\",status=\"ok\"}"), ok, 0);
    CHECK_NEAR(sample(t, "quern_requests_total{model=\"hm\",version=\"3\",status=\"rejected\"}"), rej, 0);
    CHECK_NEAR(sample(t, "quern_rows_total{model=\"hm\",version=\"3\"}"), ok * 2, 0);
    CHECK_NEAR(sample(t, "quern_batches_total{model=\"hm\",version=\"3\"}"), THREADS * PER / 2, 0);
    /* Histograms: +Inf equals _count; le="0.00025" holds the 0.1 and 0.2 ms halves. */
    CHECK_NEAR(sample(t, "quern_request_duration_seconds_bucket{model=\"hm\",version=\"3\",le=\"+Inf\"}"),
               THREADS * PER, 0);
    CHECK_NEAR(sample(t, "quern_request_duration_seconds_count{model=\"hm\",version=\"3\"}"),
               THREADS * PER, 0);
    CHECK_NEAR(sample(t, "quern_request_duration_seconds_bucket{model=\"hm\",version=\"3\",le=\"0.00025\"}"),
               THREADS * PER / 2, 0);
    CHECK_NEAR(sample(t, "quern_request_duration_seconds_sum{model=\"hm\",version=\"3\"}"),
               THREADS * PER * 0.00025, 1e-6);
    CHECK_NEAR(sample(t, "quern_compute_duration_seconds_bucket{model=\"hm\",version=\"3\",le=\"0.001\"}"), 0, 0);
    CHECK_NEAR(sample(t, "quern_compute_duration_seconds_bucket{model=\"hm\",version=\"3\",le=\"0.0025\"}"),
               THREADS * PER / 2, 0);
    CHECK_NEAR(sample(t, "quern_batch_rows_bucket{model=\"hm\",version=\"3\",le=\"4\"}"), THREADS * PER / 2, 0);
    CHECK_NEAR(sample(t, "quern_batch_rows_bucket{model=\"hm\",version=\"3\",le=\"2\"}"), 0, 0);
    CHECK_NEAR(sample(t, "quern_queue_duration_seconds_count{model=\"hm\",version=\"3\"}"), THREADS * PER, 0);
    free(t);
}

TEST(unserved_jobs_share_one_label_set)
{
    qn_metrics_enable(1);
    char *t0 = render(NULL);
    double before = sample(t0, "quern_requests_total{model=\"\",version=\"\",status=\"error\"}");
    free(t0);
    qn_metrics_request(NULL, 0, QN_STATUS_ERROR, 0, 0);
    qn_metrics_request("client-made-up-name", 0, QN_STATUS_ERROR, 0, 0);
    char *t = render(NULL);
    CHECK_NEAR(sample(t, "quern_requests_total{model=\"\",version=\"\",status=\"error\"}"),
               (before < 0 ? 0 : before) + 2, 0);
    CHECK(strstr(t, "client-made-up-name") == NULL);
    free(t);
}

TEST(every_line_is_exposition_format)
{
    qn_metrics_enable(1);
    qn_metrics_request("fmt", 1, QN_STATUS_OK, 1, 5000);
    qn_cache_stats cs = {.hits = 7, .misses = 3, .evictions = 2, .bytes = 4096};
    qn_metrics_model mm[] = {{"fmt", 1, "int8"}, {"fmt", 2, "f16+csr_f32"}};
    qn_metrics_extra x = {.cache = &cs, .queue_rows = 11, .models = mm, .nmodels = 2};
    char *t = render(&x);
    CHECK_NEAR(sample(t, "quern_cache_hits_total"), 7, 0);
    CHECK_NEAR(sample(t, "quern_cache_misses_total"), 3, 0);
    CHECK_NEAR(sample(t, "quern_cache_evictions_total"), 2, 0);
    CHECK_NEAR(sample(t, "quern_cache_bytes"), 4096, 0);
    CHECK_NEAR(sample(t, "quern_queue_rows"), 11, 0);
    CHECK_NEAR(sample(t, "quern_model_info{model=\"fmt\",version=\"2\",repr=\"f16+csr_f32\"}"), 1, 0);
    CHECK_NEAR(sample(t, "quern_train_steps_total{model=\"fmt\"}"), 0, 0);
    /* Each line: a comment, or NAME{labels} VALUE / NAME VALUE. */
    int lines = 0;
    for (char *p = t; *p;) {
        char *e = strchr(p, '\n');
        CHECK(e != NULL);
        if (!e) break;
        *e = 0;
        lines++;
        if (p[0] == '#') {
            CHECK(strncmp(p, "# HELP quern_", 13) == 0 || strncmp(p, "# TYPE quern_", 13) == 0);
        } else {
            CHECK(strncmp(p, "quern_", 6) == 0);
            char *sp = strrchr(p, ' ');
            CHECK(sp != NULL);
            if (sp) {
                char *end;
                strtod(sp + 1, &end);
                CHECK(*end == 0 || strcmp(sp + 1, "+Inf") == 0);
            }
            char *brace = strchr(p, '{');
            if (brace && brace < sp) CHECK(sp[-1] == '}');
        }
        p = e + 1;
    }
    CHECK(lines > 50);
    free(t);
}

TEST(lag_replaces_dlq_and_train_accumulate)
{
    qn_metrics_enable(1);
    int32_t p[] = {0, 1, 2};
    int64_t l[] = {5, 0, 42};
    qn_metrics_kafka_lag("jobs", p, l, 3);
    int64_t l2[] = {7};
    qn_metrics_kafka_lag("jobs", p + 1, l2, 1); /* partitions 0 and 2 were revoked */
    char *t0 = render(NULL);
    double dlq0 = sample(t0, "quern_kafka_dlq_total");
    free(t0);
    qn_metrics_kafka_dlq();
    qn_metrics_kafka_dlq();
    qn_metrics_train_steps("tr", 3, 0.5);
    qn_metrics_train_steps("tr", 2, 0.25);
    qn_metrics_train_steps("tr", 1, NAN); /* a step count without a loss keeps the last loss */
    char *t = render(NULL);
    CHECK_NEAR(sample(t, "quern_kafka_consumer_lag{topic=\"jobs\",partition=\"1\"}"), 7, 0);
    CHECK(sample(t, "quern_kafka_consumer_lag{topic=\"jobs\",partition=\"0\"}") < 0);
    CHECK(sample(t, "quern_kafka_consumer_lag{topic=\"jobs\",partition=\"2\"}") < 0);
    CHECK_NEAR(sample(t, "quern_kafka_dlq_total"), dlq0 + 2, 0);
    CHECK_NEAR(sample(t, "quern_train_steps_total{model=\"tr\"}"), 6, 0);
    CHECK_NEAR(sample(t, "quern_train_loss{model=\"tr\"}"), 0.25, 1e-12);
    free(t);
}

int main(void)
{
    RUN(off_records_nothing);
    RUN(threads_fold_exactly_while_scraped);
    RUN(unserved_jobs_share_one_label_set);
    RUN(every_line_is_exposition_format);
    RUN(lag_replaces_dlq_and_train_accumulate);
    return qn_test_done();
}
