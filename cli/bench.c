/* bench.c: `quern bench`, the load generator. One DEALER socket keeps a
 * window of predict jobs in flight against a ZeroMQ endpoint (quern-worker,
 * bench/ceiling_router, bench/baseline_worker.py) and reports throughput,
 * latency percentiles and the statuses it got back.
 *
 * The generator shares the machine with the server it measures, so its own
 * cost must stay small and visible: every message is encoded before the
 * clock starts (a pool of P distinct random inputs), a send only patches the
 * job id into a copy of a pooled message, sends and receives go in
 * non-blocking batches with zmq_poll only when neither side can progress, and
 * the client's own CPU time is reported next to the result.
 *
 * Ids are the job's sequence number, written as a fixed-width msgpack uint64
 * (0xcf + 8 bytes; non-minimal encodings are valid msgpack), so the id can be
 * patched in place; the id of a reply indexes the send-time table directly. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <zmq.h>

#include "cli.h"
#include "error.h"
#include "job.h"
#include "mpjson.h"
#include "tensor.h"

#include <msgpack.h>

#define BENCH_USAGE                                                                        \
    "bench (--zmq ENDPOINT | --broker ENDPOINT) --model NAME [--cols C] [--rows R] [--jobs N] [--window W] "       \
    "[--pool P] [--seed S] [--version V] [--warmup N] [--timeout-ms N] [--json]"

static void bench_help(FILE *out)
{
    fprintf(out,
            "usage: quern " BENCH_USAGE "\n\n"
            "Keeps W predict jobs of R x C random inputs in flight and reports jobs/s, rows/s,\n"
            "latency percentiles (microseconds, send to reply) and result statuses. Only ok\n"
            "results count toward jobs/s and latency; errors are counted apart, per code.\n\n"
            "  --zmq ENDPOINT   the server's ROUTER endpoint\n"
            "  --broker ENDPOINT or: a quern-broker's endpoint (MDP client, the model as service)\n"
            "  --model NAME     model name sent in every job\n"
            "  --cols C         input columns (default: the model's input width, asked of the\n"
            "                   worker with a \"models\" job; required with --broker)\n"
            "  --rows R         rows per job (default 1)\n"
            "  --jobs N         measured jobs (default 100000)\n"
            "  --window W       jobs in flight (default 64)\n"
            "  --pool P         distinct inputs, pre-encoded (default 256; a server with a\n"
            "                   result cache hits it after the first P jobs)\n"
            "  --seed S         input random seed (default 1)\n"
            "  --version V      pin a model version (default: the latest)\n"
            "  --warmup N       jobs sent and awaited before measuring (default 1000)\n"
            "  --timeout-ms N   give up when nothing arrives for this long (default 10000)\n"
            "  --json           also print one JSON line with every number\n\n"
            "Exit status: 0 every job answered ok, 1 any job failed (error, expired,\n"
            "rejected), a stall or a failure, 2 usage.\n");
}


static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One pre-encoded job; id_at points at the 8 id bytes after the 0xcf marker. */
typedef struct pooled {
    qn_buf buf;
    size_t id_at;
} pooled;

static void patch_id(pooled *p, uint64_t id)
{
    unsigned char *b = (unsigned char *)p->buf.data + p->id_at;
    for (int i = 7; i >= 0; i--, id >>= 8) b[i] = (unsigned char)id;
}

/* Encoding with this id makes the codec write it as a full 9-byte int (it is
 * past 2^32), which is then found and rewritten to 0xcf + 8 bytes. */
#define ID_SENTINEL 0x5EC0DE5EC0DE5EC0ll

static int find_id(const qn_buf *b, size_t *at)
{
    unsigned char pat[8];
    uint64_t v = (uint64_t)ID_SENTINEL;
    for (int i = 7; i >= 0; i--, v >>= 8) pat[i] = (unsigned char)v;
    const unsigned char *d = (const unsigned char *)b->data;
    int found = 0;
    for (size_t i = 1; i + 8 <= b->len; i++) {
        if ((d[i - 1] == 0xcf || d[i - 1] == 0xd3) && !memcmp(d + i, pat, 8)) {
            *at = i;
            found++;
        }
    }
    if (found != 1) return QN_EFORMAT;
    ((unsigned char *)b->data)[*at - 1] = 0xcf; /* uint64, whatever the codec chose */
    return 0;
}

typedef struct counts {
    uint64_t ok, error, expired, rejected, unmatched;
    uint64_t codes[QN_CODE_COUNT];
} counts;

typedef struct bench {
    void *sock;
    pooled *pool;
    int64_t npool;
    int64_t window;
    uint64_t *sent_ns;  /* per id; 0 once answered */
    uint64_t *lat_ns;   /* per measured ok job, in completion order */
    int64_t nlat;
    int64_t answered;   /* measured jobs answered, whatever the status */
    counts c;
    int timeout_ms;
    uint64_t t_last_recv;
    const char *mdp_service; /* --broker: MDP client framing with this service */
} bench;

/* Handles one reply payload; returns true when it answered one of ours. */
static bool on_reply(bench *b, const void *data, size_t len, uint64_t now, int64_t lo, int64_t hi,
                     bool record)
{
    qn_result_view v;
    if (qn_result_decode(data, len, &v) != 0) {
        b->c.unmatched++;
        return false;
    }
    free(v.outputs);
    if ((v.id_kind != QN_ID_INT && v.id_kind != QN_ID_UINT) || v.id_int < lo || v.id_int >= hi ||
        b->sent_ns[v.id_int] == 0) {
        b->c.unmatched++;
        return false;
    }
    if (record) {
        b->answered++;
        if (v.status == QN_STATUS_OK) b->lat_ns[b->nlat++] = now - b->sent_ns[v.id_int];
        switch (v.status) {
        case QN_STATUS_OK: b->c.ok++; break;
        case QN_STATUS_EXPIRED: b->c.expired++; break;
        case QN_STATUS_REJECTED: b->c.rejected++; break;
        default: b->c.error++; break;
        }
        if (v.status != QN_STATUS_OK && v.code > QN_CODE_NONE && v.code < QN_CODE_COUNT)
            b->c.codes[v.code]++;
    }
    b->sent_ns[v.id_int] = 0;
    return true;
}

/* Sends ids [lo, hi) keeping the window full, until all are answered.
 * Returns 0, QN_ETIMEDOUT (nothing arrived for timeout_ms) or QN_EEXTERNAL. */
static int run_phase(bench *b, int64_t lo, int64_t hi, bool record)
{
    int64_t next = lo, done = 0, inflight = 0, total = hi - lo;
    zmq_msg_t part;
    zmq_msg_init(&part);
    int rc = 0;
    uint64_t t_idle = qn_now_ns();
    while (done < total) {
        int progressed = 0;
        while (inflight < b->window && next < hi) {
            pooled *p = &b->pool[next % b->npool];
            patch_id(p, (uint64_t)next);
            b->sent_ns[next] = qn_now_ns();
            /* MDP client frames first; once the first frame of a message is
             * taken the rest are too (ZeroMQ queues whole messages) */
            if (b->mdp_service) {
                if (zmq_send(b->sock, "", 0, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0) {
                    b->sent_ns[next] = 0;
                    if (errno == EAGAIN || errno == EINTR) break;
                    fprintf(stderr, "quern bench: send: %s\n", zmq_strerror(errno));
                    rc = QN_EEXTERNAL;
                    goto out;
                }
                zmq_send(b->sock, "MDPC01", 6, ZMQ_SNDMORE);
                zmq_send(b->sock, b->mdp_service, strlen(b->mdp_service), ZMQ_SNDMORE);
            }
            if (zmq_send(b->sock, p->buf.data, p->buf.len, ZMQ_DONTWAIT) < 0) {
                b->sent_ns[next] = 0;
                if (errno == EAGAIN || errno == EINTR) break;
                fprintf(stderr, "quern bench: send: %s\n", zmq_strerror(errno));
                rc = QN_EEXTERNAL;
                goto out;
            }
            next++;
            inflight++;
            progressed++;
        }
        for (;;) {
            if (zmq_msg_recv(&part, b->sock, ZMQ_DONTWAIT) < 0) {
                if (errno == EAGAIN || errno == EINTR) break;
                fprintf(stderr, "quern bench: receive: %s\n", zmq_strerror(errno));
                rc = QN_EEXTERNAL;
                goto out;
            }
            if (zmq_msg_more(&part)) continue; /* envelope frames before the payload */
            uint64_t now = qn_now_ns();
            b->t_last_recv = now;
            progressed++;
            if (on_reply(b, zmq_msg_data(&part), zmq_msg_size(&part), now, lo, hi, record)) {
                done++;
                inflight--;
            }
        }
        if (progressed) {
            t_idle = 0;
            continue;
        }
        uint64_t now = qn_now_ns();
        if (!t_idle) t_idle = now;
        if (now - t_idle >= (uint64_t)b->timeout_ms * 1000000ull) {
            rc = QN_ETIMEDOUT;
            fprintf(stderr, "quern bench: nothing received for %d ms; %" PRId64 " of %" PRId64
                            " jobs of this phase answered, %" PRId64 " in flight\n",
                    b->timeout_ms, done, total, inflight);
            goto out;
        }
        zmq_pollitem_t it = {b->sock, 0, ZMQ_POLLIN, 0};
        if (inflight < b->window && next < hi) it.events |= ZMQ_POLLOUT;
        long wait = (long)(b->timeout_ms - (int64_t)((now - t_idle) / 1000000));
        if (zmq_poll(&it, 1, wait > 0 ? wait : 1) < 0 && errno != EINTR) {
            fprintf(stderr, "quern bench: poll: %s\n", zmq_strerror(errno));
            rc = QN_EEXTERNAL;
            goto out;
        }
    }
out:
    zmq_msg_close(&part);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile over sorted v, in microseconds */
static double pct_us(const uint64_t *v, int64_t n, double p)
{
    if (n <= 0) return 0;
    int64_t k = (int64_t)((double)n * p + 0.999999999) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    return (double)v[k] / 1e3;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Asks the server for the model's input width with a "models" job
 * (schemas/job.md) on the bench's own socket, before any predict job is
 * sent. 0 and *cols set, or 1 with the reason printed. */
static int ask_cols(void *sock, const char *model, int64_t version, int timeout_ms, int64_t *cols)
{
    static const char id[] = "quern-bench-models";
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_str_with_body(&pk, id, sizeof id - 1);
    msgpack_pack_str_with_body(&pk, "type", 4);
    msgpack_pack_str_with_body(&pk, "models", 6);
    msgpack_pack_str_with_body(&pk, "model", 5);
    msgpack_pack_str_with_body(&pk, model, strlen(model));
    int sent = zmq_send(sock, sb.data, sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
    if (sent < 0) {
        fprintf(stderr, "quern bench: send: %s\n", zmq_strerror(errno));
        return 1;
    }
    uint64_t deadline = qn_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    zmq_msg_t part;
    zmq_msg_init(&part);
    int ret = 1;
    for (;;) {
        uint64_t now = qn_now_ns();
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (now >= deadline || zmq_poll(&it, 1, (long)((deadline - now) / 1000000 + 1)) == 0) {
            fprintf(stderr, "quern bench: the server did not say the width of model '%s' within %d ms "
                            "(it may not answer \"models\" jobs); give --cols\n", model, timeout_ms);
            break;
        }
        if (zmq_msg_recv(&part, sock, ZMQ_DONTWAIT) < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            fprintf(stderr, "quern bench: receive: %s\n", zmq_strerror(errno));
            break;
        }
        if (zmq_msg_more(&part)) continue;
        json_t *r = qn_mpjson_convert(zmq_msg_data(&part), zmq_msg_size(&part), NULL, NULL);
        json_t *rid = json_object_get(r, "id");
        if (!json_is_string(rid) || strcmp(json_string_value(rid), id)) {
            json_decref(r);
            continue; /* not the answer to this */
        }
        const char *status = json_string_value(json_object_get(r, "status"));
        json_t *err = json_object_get(r, "error");
        json_t *ms = json_object_get(r, "models");
        if (!status || strcmp(status, "ok") || !json_is_array(ms)) {
            fprintf(stderr, "quern bench: cannot learn the width of model '%s' from the server (%s: %s); "
                            "give --cols\n", model,
                    json_string_value(json_object_get(err, "code")) ? json_string_value(json_object_get(err, "code")) : "no models list",
                    json_string_value(json_object_get(err, "message")) ? json_string_value(json_object_get(err, "message")) : "");
            json_decref(r);
            break;
        }
        size_t i, j;
        json_t *m, *v;
        json_array_foreach(ms, i, m) {
            const char *name = json_string_value(json_object_get(m, "name"));
            if (!name || strcmp(name, model)) continue;
            json_int_t want = version ? version : json_integer_value(json_object_get(m, "latest"));
            json_array_foreach(json_object_get(m, "versions"), j, v) {
                if (json_integer_value(json_object_get(v, "version")) != want) continue;
                *cols = json_integer_value(json_object_get(v, "input_dim"));
                if (*cols > 0) ret = 0;
            }
        }
        if (ret)
            fprintf(stderr, "quern bench: the server lists no %s%.0lld of model '%s'; give --cols\n",
                    version ? "version " : "latest version", (long long)version, model);
        json_decref(r);
        break;
    }
    zmq_msg_close(&part);
    return ret;
}

static int bench_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"zmq", required_argument, NULL, 'z'},     {"model", required_argument, NULL, 'm'},
        {"cols", required_argument, NULL, 'c'},    {"rows", required_argument, NULL, 'r'},
        {"jobs", required_argument, NULL, 'n'},    {"window", required_argument, NULL, 'w'},
        {"pool", required_argument, NULL, 'p'},    {"seed", required_argument, NULL, 's'},
        {"version", required_argument, NULL, 'V'}, {"warmup", required_argument, NULL, 'u'},
        {"timeout-ms", required_argument, NULL, 't'}, {"json", no_argument, NULL, 'j'},
        {"broker", required_argument, NULL, 'B'},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL, *model = NULL, *broker = NULL;
    int64_t cols = 0, rows = 1, jobs = 100000, window = 64, npool = 256, seed = 1, version = 0,
            warmup = 1000, timeout_ms = 10000;
    bool json = false;
    int ret = 1;
    bench b = {0};
    void *ctx = NULL;
    float *in = NULL;

    optind = 1;
    opterr = 0;
    int ch, li = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, &li)) != -1) {
        int64_t *dst = NULL, lo = 1, hi = INT32_MAX;
        switch (ch) {
        case 'z': endpoint = optarg; continue;
        case 'B': broker = optarg; continue;
        case 'm': model = optarg; continue;
        case 'j': json = true; continue;
        case 'h': bench_help(stdout); return 0;
        case 'c': dst = &cols; hi = 1 << 24; break;
        case 'r': dst = &rows; hi = 1 << 24; break;
        case 'n': dst = &jobs; hi = 1000000000; break;
        case 'w': dst = &window; hi = 1 << 20; break;
        case 'p': dst = &npool; hi = 1 << 24; break;
        case 's': dst = &seed; lo = 0; hi = INT64_MAX; break;
        case 'V': dst = &version; hi = INT64_MAX; break;
        case 'u': dst = &warmup; lo = 0; hi = 1000000000; break;
        case 't': dst = &timeout_ms; break;
        default:
            fprintf(stderr, "quern bench: unknown or incomplete option '%s'\n", argv[optind - 1]);
            bench_help(stderr);
            return 2;
        }
        if (!qn_cli_parse_i64(optarg, lo, hi, dst)) {
            fprintf(stderr, "quern bench: --%s wants an integer in [%" PRId64 ", %" PRId64 "], got '%s'\n",
                    opts[li].name, lo, hi, optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "quern bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!endpoint == !broker || !model || (broker && !cols)) {
        fprintf(stderr, "quern bench: one of --zmq or --broker, and --model, are required (and --cols with "
                        "--broker)\n");
        bench_help(stderr);
        return 2;
    }
    bool ask = !cols; /* a worker on --zmq says the width (a models job) */
    if (broker) {
        endpoint = broker;
        b.mdp_service = model;
    }

    ctx = zmq_ctx_new();
    b.sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    if (!b.sock) {
        fprintf(stderr, "quern bench: zmq: %s\n", zmq_strerror(errno));
        goto out;
    }
    int linger = 0, hwm = (int)(window * 2 > 1000 ? window * 2 : 1000);
    zmq_setsockopt(b.sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(b.sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b.sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_connect(b.sock, endpoint) != 0) {
        fprintf(stderr, "quern bench: cannot connect to '%s': %s\n", endpoint, zmq_strerror(errno));
        goto out;
    }
    if (ask && ask_cols(b.sock, model, version, (int)timeout_ms, &cols)) goto out;
    if ((double)npool * (double)rows * (double)cols * 4.0 > 2e9) {
        fprintf(stderr, "quern bench: the input pool would take over 2 GB; lower --pool\n");
        ret = 2;
        goto out;
    }

    /* ---- pre-encode the pool */
    b.npool = npool;
    b.window = window;
    b.timeout_ms = (int)timeout_ms;
    b.pool = calloc((size_t)npool, sizeof *b.pool);
    in = malloc((size_t)(rows * cols) * sizeof *in);
    int64_t total = warmup + jobs;
    b.sent_ns = calloc((size_t)total, sizeof *b.sent_ns);
    b.lat_ns = malloc((size_t)jobs * sizeof *b.lat_ns);
    if (!b.pool || !in || !b.sent_ns || !b.lat_ns) {
        fprintf(stderr, "quern bench: out of memory\n");
        goto out;
    }
    uint64_t rng = (uint64_t)seed;
    for (int64_t p = 0; p < npool; p++) {
        for (int attempt = 0;; attempt++) {
            for (int64_t i = 0; i < rows * cols; i++)
                in[i] = (float)((double)(splitmix64(&rng) >> 11) * 0x1.0p-52 - 1.0); /* [-1, 1) */
            qn_buf_reset(&b.pool[p].buf);
            int rc = qn_job_encode_predict(NULL, ID_SENTINEL, model, version, in, rows, cols, &b.pool[p].buf);
            if (rc) {
                fprintf(stderr, "quern bench: cannot encode a job: %s\n", qn_strerror(rc));
                goto out;
            }
            if (find_id(&b.pool[p].buf, &b.pool[p].id_at) == 0) break;
            /* the id's bytes also occurred among the random inputs: draw again */
            if (attempt == 8) {
                fprintf(stderr, "quern bench: cannot locate the job id in the encoded job\n");
                goto out;
            }
        }
    }
    /* the patched message must still be the job we mean */
    {
        patch_id(&b.pool[0], 1234567);
        qn_job *job = NULL;
        qn_decode_error derr;
        int rc = qn_job_decode(b.pool[0].buf.data, b.pool[0].buf.len, NULL, &job, &derr);
        bool good = rc == 0 && job && (job->id.kind == QN_ID_INT || job->id.kind == QN_ID_UINT) &&
                    (job->id.kind == QN_ID_INT ? job->id.i == 1234567 : job->id.u == 1234567) &&
                    job->rows == rows && job->cols == cols && !strcmp(job->model, model);
        qn_job_free(&job);
        if (!good) {
            fprintf(stderr, "quern bench: a pre-encoded job does not decode back (%s)\n",
                    rc ? derr.message : "fields differ");
            goto out;
        }
    }


    if (warmup > 0 && run_phase(&b, 0, warmup, false) != 0) {
        fprintf(stderr, "quern bench: warmup failed\n");
        goto out;
    }
    uint64_t unmatched_warmup = b.c.unmatched;
    double cpu0 = cpu_seconds();
    uint64_t t0 = qn_now_ns();
    int prc = run_phase(&b, warmup, total, true);
    uint64_t t1 = b.answered ? b.t_last_recv : qn_now_ns();
    double cpu = cpu_seconds() - cpu0;
    b.c.unmatched -= unmatched_warmup;

    double secs = (double)(t1 - t0) / 1e9;
    qsort(b.lat_ns, (size_t)b.nlat, sizeof *b.lat_ns, cmp_u64);
    double jps = secs > 0 ? (double)b.nlat / secs : 0; /* ok answers only */
    uint64_t failed = b.c.error + b.c.expired + b.c.rejected;
    double p50 = pct_us(b.lat_ns, b.nlat, 0.50), p90 = pct_us(b.lat_ns, b.nlat, 0.90),
           p99 = pct_us(b.lat_ns, b.nlat, 0.99), p999 = pct_us(b.lat_ns, b.nlat, 0.999),
           pmax = b.nlat ? (double)b.lat_ns[b.nlat - 1] / 1e3 : 0;

    printf("quern bench: %" PRId64 " jobs of %" PRId64 " x %" PRId64 ", window %" PRId64 ", pool %" PRId64
           ", model %s, %s\n",
           jobs, rows, cols, window, npool, model, endpoint);
    printf("  answered   %" PRId64 " in %.3f s (ok %" PRIu64 ", failed %" PRIu64 ")\n", b.answered, secs,
           b.c.ok, failed);
    printf("  jobs/s     %.1f%s\n", jps, failed ? " (ok jobs only)" : "");
    printf("  rows/s     %.1f\n", jps * (double)rows);
    printf("  latency us p50 %.1f  p90 %.1f  p99 %.1f  p999 %.1f  max %.1f\n", p50, p90, p99, p999, pmax);
    printf("  status     ok %" PRIu64 "  error %" PRIu64 "  expired %" PRIu64 "  rejected %" PRIu64
           "  unmatched %" PRIu64 "\n",
           b.c.ok, b.c.error, b.c.expired, b.c.rejected, b.c.unmatched);
    bool any_code = false;
    for (int k = 1; k < QN_CODE_COUNT; k++) {
        if (!b.c.codes[k]) continue;
        printf("%s%s %" PRIu64, any_code ? "  " : "  codes      ", qn_code_name((qn_code)k), b.c.codes[k]);
        any_code = true;
    }
    if (any_code) printf("\n");
    printf("  client cpu %.3f s (%.2f us/job)\n", cpu, b.answered ? cpu * 1e6 / (double)b.answered : 0.0);
    if (failed) {
        /* A run whose jobs fail measures how fast errors come back, not the
         * model: say so where scripts look (stderr, exit status). */
        fprintf(stderr, "quern bench: %" PRIu64 " of %" PRId64 " answered jobs failed (", failed, b.answered);
        bool first = true;
        for (int k = 1; k < QN_CODE_COUNT; k++)
            if (b.c.codes[k]) {
                fprintf(stderr, "%s%s %" PRIu64, first ? "" : ", ", qn_code_name((qn_code)k), b.c.codes[k]);
                first = false;
            }
        fprintf(stderr, "); jobs/s and latency count the %" PRIu64 " ok jobs only\n", b.c.ok);
    }

    if (json) {
        json_t *codes = json_object();
        for (int k = 1; k < QN_CODE_COUNT; k++)
            if (b.c.codes[k]) json_object_set_new(codes, qn_code_name((qn_code)k), json_integer((json_int_t)b.c.codes[k]));
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f,"
                              " s:{s:f, s:f, s:f, s:f, s:f},"
                              " s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:f, s:b}",
                              "endpoint", endpoint, "model", model, "jobs", (json_int_t)jobs,
                              "rows", (json_int_t)rows, "cols", (json_int_t)cols,
                              "window", (json_int_t)window, "pool", (json_int_t)npool,
                              "answered", (json_int_t)b.answered, "elapsed_s", secs, "jobs_per_s", jps,
                              "rows_per_s", jps * (double)rows, "latency_us", "p50", p50, "p90", p90,
                              "p99", p99, "p999", p999, "max", pmax, "ok", (json_int_t)b.c.ok,
                              "error", (json_int_t)b.c.error, "expired", (json_int_t)b.c.expired,
                              "rejected", (json_int_t)b.c.rejected, "failed", (json_int_t)failed, "unmatched",
                              (json_int_t)b.c.unmatched, "codes", codes, "client_cpu_s", cpu,
                              "complete", prc == 0);
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        if (s) printf("%s\n", s);
        free(s);
        json_decref(o);
    }
    fflush(stdout);
    ret = prc == 0 && failed == 0 ? 0 : 1;
out:
    if (b.pool)
        for (int64_t p = 0; p < npool; p++) qn_buf_free(&b.pool[p].buf);
    free(b.pool);
    free(b.sent_ns);
    free(b.lat_ns);
    free(in);
    if (b.sock) zmq_close(b.sock);
    if (ctx) zmq_ctx_term(ctx);
    return ret;
}

QN_CLI_COMMAND(bench, "bench", BENCH_USAGE, bench_run)
