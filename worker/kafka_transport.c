/* kafka_transport.c: quern-worker's Kafka side (librdkafka).
 *
 * Threads. One IO thread owns the consumer and all bookkeeping: it polls
 * messages, decodes and admits them, serves rebalances, serves the
 * producer's delivery reports, and commits. Completing threads (executors,
 * or the IO thread itself for jobs answered at admission) encode the result
 * and produce it directly (rd_kafka_producev is thread-safe); anything they
 * cannot finish on the spot travels to the IO thread through a locked
 * handoff list. So the offset trackers and partition records are only ever
 * touched by the IO thread (or, at destroy, by the thread that joined it).
 *
 * At least once, out of order: each assigned partition has a qn_offsets
 * tracker; a job's offset is "done" only when every message produced for it
 * (the result, and for an invalid job its DLQ copy) was acknowledged by the
 * broker. Commits carry the tracker's commit point, on a timer, on
 * revocation (after a bounded wait for that partition's jobs) and at close.
 * A partition record is per assignment: a job finishing after its
 * partition was revoked updates a detached record nobody commits from.
 *
 * Never: drop a result silently (a failed delivery goes to the DLQ, a failed
 * DLQ write is logged and leaves the offset uncommitted so the job is
 * replayed), commit past an unacknowledged job, or reject a job for overload
 * while intake could simply wait instead. The parts: kafka_internal.h. */
#include "kafka_transport.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kafka_internal.h"
#include "log.h"
#include "metrics.h"
#include "tensor.h"

_Thread_local kt *tl_owner;

/* ---------------------------------------------------------------- logging */

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    qn_log_level l = level <= 3 ? QN_LOG_ERROR : level == 4 ? QN_LOG_WARN
                   : level <= 6 ? QN_LOG_INFO : QN_LOG_DEBUG;
    if (qn_log_enabled(l)) qn_log(l, "kafka", "%s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t e = rd_kafka_fatal_error(rk, why, sizeof why);
        QN_LOGE("kafka", "%s: fatal: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(e), why);
    } else {
        QN_LOGW("kafka", "%s: %s: %s", rd_kafka_name(rk), rd_kafka_err2name(err), reason);
    }
}

/* --------------------------------------------------------------- IO loop */

/* Backpressure, in two steps. While the core has no room, intake stops
 * reading messages (one decoded message waits at the front): librdkafka
 * keeps what it prefetched and stops fetching at its queued.max.messages.*
 * bounds, so memory stays bounded and a short stall costs nothing when it
 * ends. A stall longer than quern.pause.after.ms pauses the partitions,
 * which also frees the prefetched messages; resuming refetches them, and
 * librdkafka 2.0 notices a resume only at its fetcher's next wake-up (up
 * to ~1 s: bench/notes/kafka.md), which is why short stalls do not pause. */
static void backpressure(kt *t, bool intake, uint64_t now)
{
    if (intake && t->nheld == 0) {
        t->blocked_since_ns = 0;
        if (t->paused) kt_set_paused(t, false);
        return;
    }
    if (!intake) {
        kt_set_paused(t, true);
        return;
    }
    if (!t->blocked_since_ns) t->blocked_since_ns = now;
    if (now - t->blocked_since_ns >= (uint64_t)t->pause_after_ms * 1000000u) kt_set_paused(t, true);
}

/* librdkafka 2.0 stops fetching a partition whose prefetch is full and
 * decides again only when that broker's thread next wakes, up to a second
 * later (its fetch decision sets no timer for a full queue). A worker that
 * drains a full prefetch faster than that sits idle (a 4 MiB prefetch:
 * 5-9k jobs/s of the wide model: bench/notes/kafka.md). Any request wakes a
 * broker's thread: once intake has drained half of a sizable prefetch, ask
 * for the job topic's metadata, not waiting for the answer. The request
 * goes to one usable broker (one broker: the leader of everything; several:
 * a random one each time). rd_kafka_metadata is safe to leave early: its
 * late answer travels in a heap op to a disabled queue (unlike
 * offsets_for_times, whose late answer would write to the caller's stack).
 * At most every KICK_MS. */
#define KICK_MIN_QUEUED 256
#define KICK_MS 50
static void kick_fetchers(kt *t, uint64_t now)
{
    size_t len = (size_t)rd_kafka_queue_length(t->jobs_q);
    if (len > t->q_peak) t->q_peak = len;
    if (!t->jobs_rkt || t->q_peak < KICK_MIN_QUEUED || len > t->q_peak / 2 ||
        now - t->last_kick_ns < (uint64_t)KICK_MS * 1000000u)
        return;
    t->q_peak = len;
    t->last_kick_ns = now;
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(t->consumer, 0, t->jobs_rkt, &md, 0) == 0 && md)
        rd_kafka_metadata_destroy(md);
    atomic_fetch_add(&t->n_kicks, 1);
}

/* Connects the producer and loads the default reply and DLQ topics'
 * metadata while the consumer joins its group, so the first results do not
 * wait for a connection, an idempotent producer id and a metadata round
 * (~1 s with a backlog waiting: bench/notes/kafka.md). Best effort: with
 * the brokers down nothing is lost by going on. */
static void warm_producer(kt *t)
{
    /* Bounded (the loop serves neither the group nor a stop meanwhile):
     * brokers that do not answer in 1.5 s are left to the first result. */
    const char *topics[] = {t->reply_topic, t->dlq_topic};
    for (int i = 0; i < 2 && !atomic_load(&t->quit); i++) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(t->producer, topics[i], NULL);
        if (!rkt) continue;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(t->producer, 0, rkt, &md, 1500);
        if (!err) rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
        if (err) {
            QN_LOGW("kafka", "producer: no metadata for %s yet (%s); going on", topics[i],
                    rd_kafka_err2str(err));
            break;
        }
    }
}

static void *io_main(void *arg)
{
    kt *t = arg;
    qn_thread_name("qn-kafka-io");
    tl_owner = t;
    warm_producer(t);
    rd_kafka_message_t *burst[BURST];
    while (!atomic_load(&t->quit)) {
        bool intake = atomic_load(&t->intake);
        kt_process_handoffs(t);
        rd_kafka_poll(t->producer, 0);
        if (!intake) kt_drop_held(t, NULL);
        kt_admit_held(t);
        backpressure(t, intake, qn_now_ns());

        /* The group's events, and any message that came before its
         * partition's queue was forwarded. */
        for (int i = 0; i < BURST; i++) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(t->consumer, 0);
            if (!m) break;
            kt_on_message(t, m);
        }
        if (intake && t->nheld == 0) {
            ssize_t n = rd_kafka_consume_batch_queue(t->jobs_q, 5, burst, BURST);
            for (ssize_t i = 0; i < n; i++) kt_on_message(t, burst[i]);
            kick_fetchers(t, qn_now_ns());
        } else {
            /* Blocked: wait for results to leave. */
            rd_kafka_poll(t->producer, 1);
        }
        qn_core_local_flush(t->core, t->local);
        uint64_t now = qn_now_ns();
        if (now >= t->next_commit_ns) {
            kt_commit_parts(t, NULL, false);
            t->next_commit_ns = now + (uint64_t)t->commit_interval_ms * 1000000u;
        }
    }
    return NULL;
}

/* -------------------------------------------------------------- lifecycle */

static int kt_start(void *self)
{
    kt *t = self;
    atomic_store(&t->intake, 1);
    t->next_commit_ns = qn_now_ns() + (uint64_t)t->commit_interval_ms * 1000000u;
    if (pthread_create(&t->tid, NULL, io_main, t) != 0) return QN_EEXTERNAL;
    t->started = true;
    return 0;
}

static void kt_stop_intake(void *self) { atomic_store(&((kt *)self)->intake, 0); }

static int64_t kt_inflight(void *self) { return atomic_load(&((kt *)self)->inflight); }

static void kt_destroy(void *self)
{
    kt *t = self;
    if (!t) return;
    atomic_store(&t->intake, 0);
    atomic_store(&t->quit, 1);
    if (t->started) pthread_join(t->tid, NULL);
    qn_core_local_destroy(t->core, &t->local);
    tl_owner = t; /* the bookkeeping is this thread's from here on */
    kt_drop_held(t, NULL);
    if (t->producer) {
        kt_process_handoffs(t);
        rd_kafka_flush(t->producer, 10000);
        kt_process_handoffs(t);
        rd_kafka_flush(t->producer, 5000);
        int left = rd_kafka_outq_len(t->producer);
        if (left > 0)
            QN_LOGE("kafka", "%d message(s) still undelivered at shutdown; their jobs stay "
                    "uncommitted", left);
    }
    if (t->consumer) {
        t->closing = true;
        kt_commit_parts(t, NULL, true);
        if (t->jobs_rkt) rd_kafka_topic_destroy(t->jobs_rkt);
        t->jobs_rkt = NULL;
        if (t->jobs_q) { /* its messages were never taken: uncommitted */
            rd_kafka_topic_partition_list_t *l = NULL;
            if (rd_kafka_assignment(t->consumer, &l) == 0 && l) {
                kt_forward_parts(t, l, NULL);
                rd_kafka_topic_partition_list_destroy(l);
            }
            rd_kafka_queue_destroy(t->jobs_q);
            t->jobs_q = NULL;
        }
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(t->consumer); /* revokes: commits again */
        if (err) QN_LOGW("kafka", "consumer close: %s", rd_kafka_err2str(err));
        rd_kafka_destroy(t->consumer);
    }
    for (int i = 0; i < KNOWN_TOPICS; i++) {
        if (t->known[i].rkt) rd_kafka_topic_destroy(t->known[i].rkt);
        free(t->known[i].name);
    }
    if (t->producer) rd_kafka_destroy(t->producer);
    if (t->started)
        QN_LOGI("kafka", "closed: %" PRId64 " jobs taken, %" PRId64 " answered and committed, "
                "%" PRId64 " DLQ copies, %" PRId64 " failed deliveries, %" PRId64 " lost, "
                "%" PRId64 " pauses", (int64_t)t->n_taken, (int64_t)t->n_answered,
                (int64_t)t->n_dlq, (int64_t)t->n_reply_failed, (int64_t)t->n_stuck,
                (int64_t)t->n_pauses);
    if (t->n_kicks)
        QN_LOGI("kafka", "woke the fetchers %" PRId64 " time(s) after draining the prefetch",
                (int64_t)t->n_kicks);
    if (t->s_n)
        QN_LOGI("kafka", "per job: taken to result produced %.1f ms mean (max %.1f), produced to "
                "acknowledged %.1f ms mean (max %.1f)", t->s_compute / 1e6 / t->s_n,
                t->m_compute / 1e6, t->s_ack / 1e6 / t->s_n, t->m_ack / 1e6);
    kpart_table_clear(&t->parts);
    free(t->held);
    if (t->mock) rd_kafka_mock_cluster_destroy(t->mock);
    if (t->mock_rk) rd_kafka_destroy(t->mock_rk);
    tl_owner = NULL;
    pthread_mutex_destroy(&t->ho_mu);
    free(t->topic);
    free(t->group);
    free(t->reply_topic);
    free(t->dlq_topic);
    free(t->brokers);
    free(t);
}

static const qn_transport_i kt_iface = {
    .name = "kafka",
    .start = kt_start,
    .stop_intake = kt_stop_intake,
    .inflight = kt_inflight,
    .destroy = kt_destroy,
};

/* ------------------------------------------------------------ statistics */

/* librdkafka's statistics (statistics.interval.ms), on the IO thread (the
 * consumer poll): per-partition consumer lag for quern_kafka_consumer_lag.
 * Only partitions this consumer fetches (assigned) are reported. Returns 0:
 * librdkafka frees json. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    (void)opaque;
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *topics = json_object_get(root, "topics");
    const char *tname;
    json_t *tv;
    json_object_foreach(topics, tname, tv) {
        int32_t parts[1024];
        int64_t lags[1024];
        int n = 0;
        const char *pname;
        json_t *pv;
        json_object_foreach(json_object_get(tv, "partitions"), pname, pv) {
            long p = strtol(pname, NULL, 10);
            json_t *lag = json_object_get(pv, "consumer_lag");
            const char *fs = json_string_value(json_object_get(pv, "fetch_state"));
            if (p < 0 || !json_is_integer(lag) || n == 1024) continue;
            if (!json_is_true(json_object_get(pv, "desired")) && !(fs && !strcmp(fs, "active")))
                continue;
            int64_t v = json_integer_value(lag);
            if (v < 0) {
                /* librdkafka says -1 until this consumer has a position;
                 * with nothing consumed or committed yet, everything from
                 * the low watermark on (auto.offset.reset earliest) waits. */
                json_int_t hi = json_integer_value(json_object_get(pv, "hi_offset")),
                           lo = json_integer_value(json_object_get(pv, "lo_offset")),
                           app = json_integer_value(json_object_get(pv, "app_offset")),
                           com = json_integer_value(json_object_get(pv, "committed_offset"));
                if (hi < 0 || app >= 0 || com >= 0) continue;
                v = hi - (lo > 0 ? lo : 0);
            }
            parts[n] = (int32_t)p;
            lags[n++] = v;
        }
        qn_metrics_kafka_lag(tname, parts, lags, n);
    }
    json_decref(root);
    return 0;
}

/* ---------------------------------------------------------- configuration */

static int set(rd_kafka_conf_t *c, const char *k, const char *v)
{
    char err[512];
    if (rd_kafka_conf_set(c, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        QN_LOGE("kafka", "-X %s=%s: %s", k, v, err);
        return QN_EINVAL;
    }
    return 0;
}

static int own_setting(kt *t, const char *k, const char *v)
{
    static const struct { const char *name; long lo, hi; } keys[] = {
        {"max.inflight", 1, 1000000}, {"commit.interval.ms", 10, 600000},
        {"revoke.wait.ms", 0, 600000}, {"mock.partitions", 1, 1024}, {"mock.brokers", 1, 16},
        {"pause.after.ms", 0, 600000},
    };
    char *end;
    long n = strtol(v, &end, 10);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(k, keys[i].name)) continue;
        if (!*v || *end || n < keys[i].lo || n > keys[i].hi) {
            QN_LOGE("kafka", "-X quern.%s wants an integer in [%ld, %ld], got '%s'", k, keys[i].lo,
                    keys[i].hi, v);
            return QN_EINVAL;
        }
        if (i == 0) t->max_inflight = n;
        else if (i == 1) t->commit_interval_ms = (int)n;
        else if (i == 2) t->revoke_wait_ms = (int)n;
        else if (i == 3) t->mock_partitions = (int)n;
        else if (i == 4) t->mock_brokers = (int)n;
        else t->pause_after_ms = (int)n;
        return 0;
    }
    QN_LOGE("kafka", "-X quern.%s: unknown setting (max.inflight, commit.interval.ms, "
            "revoke.wait.ms, mock.partitions, mock.brokers, pause.after.ms)", k);
    return QN_EINVAL;
}

/* -X routing: quern.* is ours, consumer.* / producer.* one side, the rest
 * both. which: 0 quern pass, 1 consumer conf, 2 producer conf. */
static int apply_x(kt *t, const qn_kafka_opts *o, int which, rd_kafka_conf_t *c)
{
    for (int i = 0; i < o->nx; i++) {
        const char *kv = o->x[i], *eq = strchr(kv, '=');
        if (!eq || eq == kv) {
            QN_LOGE("kafka", "-X wants key=value, got '%s'", kv);
            return QN_EINVAL;
        }
        char key[256];
        size_t kl = (size_t)(eq - kv);
        if (kl >= sizeof key) return QN_EINVAL;
        memcpy(key, kv, kl);
        key[kl] = 0;
        const char *v = eq + 1;
        int rc = 0;
        if (!strncmp(key, "quern.", 6)) {
            if (which == 0) rc = own_setting(t, key + 6, v);
        } else if (!strncmp(key, "consumer.", 9)) {
            if (which == 1) rc = set(c, key + 9, v);
        } else if (!strncmp(key, "producer.", 9)) {
            if (which == 2) rc = set(c, key + 9, v);
        } else if (which) {
            rc = set(c, key, v);
        }
        if (rc) return rc;
    }
    return 0;
}

static rd_kafka_conf_t *base_conf(kt *t, const char *client_id)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, log_cb);
    rd_kafka_conf_set_error_cb(c, error_cb);
    rd_kafka_conf_set_opaque(c, t);
    if (set(c, "bootstrap.servers", t->brokers) || set(c, "client.id", client_id)) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    return c;
}

static int start_mock(kt *t)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, log_cb);
    /* The host instance never connects anywhere: only its errors matter. */
    set(c, "log_level", "3");
    t->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!t->mock_rk) {
        rd_kafka_conf_destroy(c);
        QN_LOGE("kafka", "mock cluster host: %s", err);
        return QN_EEXTERNAL;
    }
    t->mock = rd_kafka_mock_cluster_new(t->mock_rk, t->mock_brokers);
    if (!t->mock) {
        QN_LOGE("kafka", "cannot start the mock cluster");
        return QN_EEXTERNAL;
    }
    const char *topics[] = {t->topic, t->reply_topic, t->dlq_topic};
    int rf = t->mock_brokers < 3 ? t->mock_brokers : 3;
    for (int i = 0; i < 3; i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(t->mock, topics[i], t->mock_partitions, rf);
        if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            QN_LOGE("kafka", "mock topic %s: %s", topics[i], rd_kafka_err2str(e));
            return QN_EEXTERNAL;
        }
    }
    free(t->brokers);
    t->brokers = strdup(rd_kafka_mock_cluster_bootstraps(t->mock));
    if (!t->brokers) return QN_ENOMEM;
    QN_LOGI("kafka", "mock cluster: %d broker(s), topics %s %s %s with %d partitions each; "
            "bootstrap.servers=%s", t->mock_brokers, t->topic, t->reply_topic, t->dlq_topic,
            t->mock_partitions, t->brokers);
    return 0;
}

int qn_kafka_opts_check(const qn_kafka_opts *o)
{
    kt *t = calloc(1, sizeof *t); /* scratch for the quern.* values */
    if (!t) return QN_ENOMEM;
    int rc = apply_x(t, o, 0, NULL);
    for (int which = 1; which <= 2 && !rc; which++) {
        rd_kafka_conf_t *c = rd_kafka_conf_new();
        rc = apply_x(t, o, which, c);
        rd_kafka_conf_destroy(c);
    }
    free(t);
    return rc;
}

/* librdkafka before 2.10.0, with the cooperative protocol: a commit in
 * flight while a rebalance bumps the generation comes back
 * ILLEGAL_GENERATION, and librdkafka then resets the member's generation
 * to -1 even though its JoinGroup already brought the new one (#4059,
 * fixed in 2.10.0); its SyncGroup is refused, its assignment lost, and it
 * rejoins, which starts the next rebalance. quern commits every
 * quern.commit.interval.ms, so every rebalance ended that way: a joining
 * worker never got partitions. And closing a member that had a JoinGroup
 * answer but no assignment yet aborts in rd_kafka_destroy (#4381, fixed in
 * 2.3.0). Opting in (-X consumer.partition.assignment.strategy=...) is the
 * operator's call; say what it costs. */
#define QN_RDKAFKA_COOP_OK 0x020a0000 /* 2.10.0 */
static void warn_cooperative(rd_kafka_conf_t *cc)
{
    char v[256];
    size_t n = sizeof v;
    if (rd_kafka_conf_get(cc, "partition.assignment.strategy", v, &n) != RD_KAFKA_CONF_OK ||
        !strstr(v, "cooperative") || rd_kafka_version() >= QN_RDKAFKA_COOP_OK)
        return;
    QN_LOGW("kafka", "partition.assignment.strategy=%s with librdkafka %s: commits during a "
            "rebalance can lose the assignment and restart the rebalance, over and over "
            "(librdkafka #4059, fixed in 2.10.0), and a worker stopped before its first "
            "assignment can abort (#4381); the default (range,roundrobin) has neither problem",
            v, rd_kafka_version_str());
}

int qn_kafka_transport_create(const qn_kafka_opts *o, qn_core *core, qn_transport *out)
{
    int rc = QN_ENOMEM;
    char err[512];
    rd_kafka_conf_t *cc = NULL, *pc = NULL;
    kt *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    pthread_mutex_init(&t->ho_mu, NULL);
    t->core = core;
    if ((rc = qn_core_local_create(core, &t->local))) goto fail;
    rc = QN_ENOMEM;
    t->limits = o->limits;
    /* Past 8192 no measurable gain through the mock, and a kill -9 replays
     * at most this many: bench/notes/kafka.md. */
    t->max_inflight = 8192;
    t->commit_interval_ms = 1000;
    t->revoke_wait_ms = 5000;
    t->mock_partitions = 16;
    t->mock_brokers = 1;
    t->pause_after_ms = 1000;
    t->topic = strdup(o->topic);
    t->group = strdup(o->group);
    t->reply_topic = strdup(o->reply_topic);
    t->dlq_topic = strdup(o->dlq_topic);
    t->brokers = strdup(o->brokers);
    if (!t->topic || !t->group || !t->reply_topic || !t->dlq_topic || !t->brokers) goto fail;
    if ((rc = apply_x(t, o, 0, NULL))) goto fail;
    if (!strcmp(o->brokers, "mock") && (rc = start_mock(t))) goto fail;

    /* Consumer: defaults first, so -X overrides them. */
    rc = QN_EINVAL;
    if (!(cc = base_conf(t, "quern-worker"))) goto fail;
    /* partition.assignment.strategy stays librdkafka's eager default
     * (range,roundrobin): cooperative-sticky is broken in the librdkafka
     * Debian 12 ships (2.0.2) in two ways, both seen as a group that never
     * recovers (schemas/kafka.md, "Consumer group protocol"). */
    if (set(cc, "group.id", t->group) ||
        set(cc, "enable.auto.commit", "false") || set(cc, "enable.auto.offset.store", "false") ||
        set(cc, "auto.offset.reset", "earliest") ||
        /* The mock answers an empty fetch only when fetch.wait.max.ms runs
         * out (a real broker answers as soon as data arrives), so there the
         * wait is latency: bench/notes/kafka.md. */
        set(cc, "fetch.wait.max.ms", t->mock ? "10" : "100") ||
        /* Consumer lag for /metrics (-X consumer.statistics.interval.ms
         * changes the period). */
        (qn_metrics_enabled() && set(cc, "statistics.interval.ms", "5000")) ||
        apply_x(t, o, 1, cc))
        goto fail;
    warn_cooperative(cc);
    if (qn_metrics_enabled()) rd_kafka_conf_set_stats_cb(cc, stats_cb);
    rd_kafka_conf_set_rebalance_cb(cc, kt_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(cc, kt_offset_commit_cb);

    /* Producer: idempotent, so broker-side retries never reorder or duplicate. */
    if (!(pc = base_conf(t, "quern-worker"))) goto fail;
    if (set(pc, "enable.idempotence", "true") || set(pc, "linger.ms", "2") ||
        apply_x(t, o, 2, pc))
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(pc, kt_dr_cb);

    rc = QN_EEXTERNAL;
    t->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (!t->producer) {
        QN_LOGE("kafka", "producer: %s", err);
        goto fail;
    }
    pc = NULL;
    t->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!t->consumer) {
        QN_LOGE("kafka", "consumer: %s", err);
        goto fail;
    }
    cc = NULL;
    rd_kafka_poll_set_consumer(t->consumer);
    if (!(t->jobs_q = rd_kafka_queue_new(t->consumer))) goto fail;
    if (!(t->jobs_rkt = rd_kafka_topic_new(t->consumer, t->topic, NULL))) goto fail;
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, t->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(t->consumer, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        QN_LOGE("kafka", "subscribe to %s: %s", t->topic, rd_kafka_err2str(e));
        goto fail;
    }
    QN_LOGI("kafka", "consuming %s in group %s from %s; results to %s (default), DLQ %s; "
            "max in flight %" PRId64 ", commit every %d ms", t->topic, t->group, t->brokers,
            t->reply_topic, t->dlq_topic, t->max_inflight, t->commit_interval_ms);
    out->iface = &kt_iface;
    out->self = t;
    return 0;
fail:
    if (cc) rd_kafka_conf_destroy(cc);
    if (pc) rd_kafka_conf_destroy(pc);
    kt_destroy(t);
    return rc;
}
