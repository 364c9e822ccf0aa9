/* main.c: quern-worker. Parses the contract's flags (CONTRACT.md section 4),
 * wires backend -> registry -> core -> transports, then waits for SIGTERM or
 * SIGINT and shuts down in data-flow order: stop intake, let in-flight jobs
 * finish and their results leave, stop the core, close the transports.
 * Configuration is passed down as arguments; nothing below reads globals. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "backend.h"
#include "cache.h"
#include "core.h"
#include "error.h"
#include "log.h"
#include "registry.h"
#include "tensor.h"
#include "transport.h"
#include "zmq_transport.h"
#include "kafka_transport.h"
#include "mdp_transport.h"
#include "http_transport.h"
#include "metrics.h"
#include "config.h"
#include "pipe_transport.h"

#define MAX_TRANSPORTS 8

static int g_sigpipe[2] = {-1, -1};

static void on_signal(int sig)
{
    unsigned char b = (unsigned char)sig;
    int saved = errno;
    ssize_t w = write(g_sigpipe[1], &b, 1);
    (void)w;
    errno = saved;
}
#define MAX_X 64

typedef struct worker_opts {
    const char *model_repo;
    const char *zmq_bind;
    const char *kafka_brokers;
    const char *kafka_topic, *kafka_group, *reply_topic, *dlq_topic;
    const char *x_conf[MAX_X];
    int nx;
    const char *cache_dir;
    long cache_size_mb;
    const char *device;
    const char *broker;
    int broker_credit;       /* 0: --max-batch */
    int broker_heartbeat_ms;
    int poll_ms;
    int drain_timeout_ms;
    int blas_threads;
    const char *http;      /* --http ADDR:PORT */
    long http_max_body;
    const char *config, *log_format;
    const char *zmq_pull, *zmq_push; /* pipeline mode */
    int print_config;
    qn_core_opts core;
    qn_zmq_opts zmq;
} worker_opts;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: quern-worker --model-repo DIR (--zmq-bind ENDPOINT | --kafka-brokers LIST | --broker ENDPOINT) [options]\n"
        "\n"
        "transports (at least one):\n"
        "  --zmq-bind ENDPOINT      bind a ZeroMQ ROUTER (REQ and DEALER clients), e.g. tcp://*:5555\n"
        "  --zmq-client-inflight N  jobs one ZeroMQ client may have in flight; past it rejected (default %d)\n"
        "  --zmq-sndhwm N           replies queued to a ZeroMQ client that does not read; past it dropped (default %d)\n"
        "  --kafka-brokers LIST     consume jobs from Kafka ('mock' starts an embedded cluster)\n"
        "  --broker ENDPOINT        serve through a quern-broker (MDP worker per model)\n"
        "  --broker-credit N        requests held at once per model (default: --max-batch)\n"
        "  --broker-heartbeat-ms N  MDP heartbeat, as the broker's --heartbeat-ms (default 2500)\n"
        "  --zmq-pull EP, --zmq-push EP  pipeline mode: jobs from PULL, results to PUSH\n"
        "                           ('connect:EP' connects; flow control by HWM, nothing dropped)\n"
        "  --http ADDR:PORT         HTTP: /metrics, /v2/health/*, Open Inference Protocol (loopback\n"
        "                           unless an address is given; port 0 picks one and logs it)\n"
        "  --http-max-body BYTES    larger HTTP request bodies get 413 (default %u)\n"
        "kafka:\n"
        "  --kafka-topic T          job topic (default quern.jobs)\n"
        "  --kafka-group G          consumer group (default quern)\n"
        "  --reply-topic T          default result topic (default quern.results)\n"
        "  --dlq-topic T            dead-letter topic (default quern.dlq)\n"
        "  -X key=value             librdkafka property (repeatable)\n"
        "batching and compute:\n"
        "  --max-batch N            most rows in one batch (default %d)\n"
        "  --max-delay-us N         longest a job waits for a batch to fill (default %d: greedy)\n"
        "  --queue-limit N          most queued rows; past it jobs are rejected (default %d)\n"
        "  --threads N              executor threads (default: one per core)\n"
        "  --blas-threads N         OpenBLAS threads inside one forward (default 1)\n"
        "  --device cpu|cuda|auto   compute device (default auto)\n"
        "  --max-message-bytes N    larger jobs get too_large (default %u)\n"
        "  --direct-max-flops N     run models up to N FLOPs/row on the IO thread (default %d; 0: off)\n"
        "  --direct-idle-rows N     ... and a lone job of up to N rows when the worker is idle (default %d)\n"
        "training:\n"
        "  --train-queue N          train jobs waiting beside the running one; past it rejected (default 4; 0: refuse train jobs)\n"
        "  --train-nice N           added niceness of the trainer thread (default 10)\n"
        "cache:\n"
        "  --cache-dir DIR          LMDB result cache directory\n"
        "  --cache-size MB          cache size, a hard bound on its file (default 1024; 0: no cache)\n"
        "other:\n"
        "  --poll-ms N              model repository rescan interval (default 500)\n"
        "  --drain-timeout-ms N     longest shutdown waits for in-flight jobs (default 30000)\n"
        "  --config FILE            YAML file: long flag names as keys, kafka: {key: value} for -X;\n"
        "                           flags on the command line override it\n"
        "  --print-config           print the effective configuration as YAML and exit\n"
        "  --log-format text|json   json: one JSON object a line (time, level, module, msg, id, model)\n"
        "  -h, --help               this text\n",
        QN_ZMQ_DEFAULT_CLIENT_INFLIGHT, QN_ZMQ_DEFAULT_SNDHWM, QN_HTTP_DEFAULT_MAX_BODY,
        QN_BATCHER_DEFAULT_MAX_BATCH, QN_BATCHER_DEFAULT_MAX_DELAY_US,
        QN_BATCHER_DEFAULT_QUEUE_LIMIT, QN_DEFAULT_MAX_MESSAGE, QN_CORE_DEFAULT_DIRECT_MAX_FLOPS,
        QN_CORE_DEFAULT_DIRECT_IDLE_ROWS);
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        fprintf(stderr, "quern-worker: %s wants an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    OPT_REPO = 256, OPT_ZMQ, OPT_KBROKERS, OPT_KTOPIC, OPT_KGROUP, OPT_REPLY, OPT_DLQ,
    OPT_MAXBATCH, OPT_MAXDELAY, OPT_QLIMIT, OPT_CACHEDIR, OPT_CACHESIZE, OPT_THREADS,
    OPT_DEVICE, OPT_BROKER, OPT_MAXMSG, OPT_POLL, OPT_DRAIN, OPT_DIRECT, OPT_BLAS, OPT_IDLE,
    OPT_ZCLIENT, OPT_ZHWM,
    OPT_TRAINQ, OPT_TRAINNICE,
    OPT_BCREDIT, OPT_BHB,
    OPT_HTTP = 400, OPT_HTTP_BODY, OPT_CONFIG, OPT_PRINT_CONFIG, OPT_LOG_FORMAT,
    OPT_ZPULL, OPT_ZPUSH,
};

static const struct option longopts[] = {
        {"model-repo", required_argument, 0, OPT_REPO},
        {"zmq-bind", required_argument, 0, OPT_ZMQ},
        {"kafka-brokers", required_argument, 0, OPT_KBROKERS},
        {"kafka-topic", required_argument, 0, OPT_KTOPIC},
        {"kafka-group", required_argument, 0, OPT_KGROUP},
        {"reply-topic", required_argument, 0, OPT_REPLY},
        {"dlq-topic", required_argument, 0, OPT_DLQ},
        {"max-batch", required_argument, 0, OPT_MAXBATCH},
        {"max-delay-us", required_argument, 0, OPT_MAXDELAY},
        {"queue-limit", required_argument, 0, OPT_QLIMIT},
        {"train-queue", required_argument, 0, OPT_TRAINQ},
        {"train-nice", required_argument, 0, OPT_TRAINNICE},
        {"cache-dir", required_argument, 0, OPT_CACHEDIR},
        {"cache-size", required_argument, 0, OPT_CACHESIZE},
        {"threads", required_argument, 0, OPT_THREADS},
        {"device", required_argument, 0, OPT_DEVICE},
        {"broker", required_argument, 0, OPT_BROKER},
        {"broker-credit", required_argument, 0, OPT_BCREDIT},
        {"broker-heartbeat-ms", required_argument, 0, OPT_BHB},
        {"max-message-bytes", required_argument, 0, OPT_MAXMSG},
        {"poll-ms", required_argument, 0, OPT_POLL},
        {"drain-timeout-ms", required_argument, 0, OPT_DRAIN},
        {"direct-max-flops", required_argument, 0, OPT_DIRECT},
        {"blas-threads", required_argument, 0, OPT_BLAS},
        {"direct-idle-rows", required_argument, 0, OPT_IDLE},
        {"zmq-client-inflight", required_argument, 0, OPT_ZCLIENT},
        {"zmq-sndhwm", required_argument, 0, OPT_ZHWM},
        {"http", required_argument, 0, OPT_HTTP},
        {"http-max-body", required_argument, 0, OPT_HTTP_BODY},
        {"config", required_argument, 0, OPT_CONFIG},
        {"zmq-pull", required_argument, 0, OPT_ZPULL},
        {"zmq-push", required_argument, 0, OPT_ZPUSH},
        {"print-config", no_argument, 0, OPT_PRINT_CONFIG},
        {"log-format", required_argument, 0, OPT_LOG_FORMAT},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };

static void opts_default(worker_opts *o)
{
    memset(o, 0, sizeof *o);
    qn_core_opts_default(&o->core);
    qn_zmq_opts_default(&o->zmq);
    o->kafka_topic = "quern.jobs";
    o->kafka_group = "quern";
    o->reply_topic = "quern.results";
    o->dlq_topic = "quern.dlq";
    o->device = "auto";
    o->poll_ms = 500;
    o->drain_timeout_ms = 30000;
    o->blas_threads = 1;
    o->broker_heartbeat_ms = 2500;
    o->core.threads = 0; /* auto: one per core */
    o->cache_size_mb = 1024;
    o->log_format = "text";
}

/* One getopt pass over argv: the command line, or one config file entry
 * (so both mean exactly the same). 0, or 2 (message printed). */
static int parse_flags(int argc, char **argv, worker_opts *o)
{
    long v;
    int c;
    opterr = 0;
    optind = 0; /* glibc: start over (a second pass) */
    while ((c = getopt_long(argc, argv, "X:h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_REPO: o->model_repo = optarg; break;
        case OPT_ZMQ: o->zmq_bind = optarg; break;
        case OPT_KBROKERS: o->kafka_brokers = optarg; break;
        case OPT_KTOPIC: o->kafka_topic = optarg; break;
        case OPT_KGROUP: o->kafka_group = optarg; break;
        case OPT_REPLY: o->reply_topic = optarg; break;
        case OPT_DLQ: o->dlq_topic = optarg; break;
        case 'X':
            if (!strchr(optarg, '=')) {
                fprintf(stderr, "quern-worker: -X wants key=value, got '%s'\n", optarg);
                return 2;
            }
            if (o->nx == MAX_X) { fprintf(stderr, "quern-worker: too many -X\n"); return 2; }
            o->x_conf[o->nx++] = optarg;
            break;
        case OPT_MAXBATCH:
            if (parse_long("--max-batch", optarg, 1, 1L << 20, &v)) return 2;
            o->core.batch.max_batch_rows = v;
            break;
        case OPT_MAXDELAY:
            if (parse_long("--max-delay-us", optarg, 0, 10000000, &v)) return 2;
            o->core.batch.max_delay_us = v;
            break;
        case OPT_QLIMIT:
            if (parse_long("--queue-limit", optarg, 1, 1L << 30, &v)) return 2;
            o->core.batch.queue_limit_rows = v;
            break;
        case OPT_TRAINQ:
            if (parse_long("--train-queue", optarg, 0, 1 << 20, &v)) return 2;
            o->core.train_queue = (int)v;
            break;
        case OPT_TRAINNICE:
            if (parse_long("--train-nice", optarg, 0, 19, &v)) return 2;
            o->core.train_nice = (int)v;
            break;
        case OPT_CACHEDIR: o->cache_dir = optarg; break;
        case OPT_CACHESIZE:
            if (parse_long("--cache-size", optarg, 0, 1L << 24, &v)) return 2;
            o->cache_size_mb = v;
            break;
        case OPT_THREADS:
            if (parse_long("--threads", optarg, 1, 256, &v)) return 2;
            o->core.threads = (int)v;
            break;
        case OPT_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto")) {
                fprintf(stderr, "quern-worker: --device is cpu, cuda or auto, got '%s'\n", optarg);
                return 2;
            }
            o->device = optarg;
            break;
        case OPT_BROKER: o->broker = optarg; break;
        case OPT_BCREDIT:
            if (parse_long("--broker-credit", optarg, 1, 65536, &v)) return 2;
            o->broker_credit = (int)v;
            break;
        case OPT_BHB:
            if (parse_long("--broker-heartbeat-ms", optarg, 10, 3600000, &v)) return 2;
            o->broker_heartbeat_ms = (int)v;
            break;
        case OPT_MAXMSG:
            if (parse_long("--max-message-bytes", optarg, 64, 1L << 31, &v)) return 2;
            o->core.limits.max_message_bytes = (size_t)v;
            break;
        case OPT_POLL:
            if (parse_long("--poll-ms", optarg, 10, 60000, &v)) return 2;
            o->poll_ms = (int)v;
            break;
        case OPT_DRAIN:
            if (parse_long("--drain-timeout-ms", optarg, 0, 3600000, &v)) return 2;
            o->drain_timeout_ms = (int)v;
            break;
        case OPT_DIRECT:
            if (parse_long("--direct-max-flops", optarg, 0, 1L << 40, &v)) return 2;
            o->core.direct_max_flops = v;
            break;
        case OPT_IDLE:
            if (parse_long("--direct-idle-rows", optarg, 0, 1L << 20, &v)) return 2;
            o->core.direct_idle_rows = v;
            break;
        case OPT_ZCLIENT:
            if (parse_long("--zmq-client-inflight", optarg, 1, 1L << 24, &v)) return 2;
            o->zmq.client_inflight = (int)v;
            break;
        case OPT_ZHWM:
            if (parse_long("--zmq-sndhwm", optarg, 1, 1L << 24, &v)) return 2;
            o->zmq.sndhwm = (int)v;
            break;
        case OPT_BLAS:
            if (parse_long("--blas-threads", optarg, 1, 256, &v)) return 2;
            o->blas_threads = (int)v;
            break;
        case OPT_HTTP: o->http = optarg; break;
        case OPT_HTTP_BODY:
            if (parse_long("--http-max-body", optarg, 1024, 1L << 34, &v)) return 2;
            o->http_max_body = v;
            break;
        case OPT_CONFIG: o->config = optarg; break; /* read before this pass */
        case OPT_ZPULL: o->zmq_pull = optarg; break;
        case OPT_ZPUSH: o->zmq_push = optarg; break;
        case OPT_PRINT_CONFIG: o->print_config = 1; break;
        case OPT_LOG_FORMAT:
            if (strcmp(optarg, "text") && strcmp(optarg, "json")) {
                fprintf(stderr, "quern-worker: --log-format is text or json, got '%s'\n", optarg);
                return 2;
            }
            o->log_format = optarg;
            break;
        case 'h': usage(stdout); exit(0);
        default:
            if (optopt) fprintf(stderr, "quern-worker: option -%c needs a value or is unknown\n", optopt);
            else fprintf(stderr, "quern-worker: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "quern-worker: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return 0;
}

/* The config file's entries, applied before the command line (which so
 * overrides them). Its strings are kept for the process's life: options
 * point into them. */
static qn_config g_config;
static char **g_config_args; /* the "--key=value" strings built for getopt */
static int g_config_nargs;

static void free_config(void)
{
    for (int i = 0; i < g_config_nargs; i++) free(g_config_args[i]);
    free(g_config_args);
    qn_config_free(&g_config);
}

static int apply_config(const char *path, worker_opts *o)
{
    char err[512];
    atexit(free_config); /* options point into it until the process ends */
    if (qn_config_load(path, &g_config, err, sizeof err)) {
        fprintf(stderr, "quern-worker: --config %s: %s\n", path, err);
        return 2;
    }
    for (int i = 0; i < g_config.n; i++) {
        const qn_config_entry *e = &g_config.e[i];
        char *av[4] = {"quern-worker", NULL, NULL, NULL};
        int ac = 2;
        if (strcmp(e->key, "kafka") == 0) {
            av[1] = "-X";
            av[2] = e->value;
            ac = 3;
        } else {
            const struct option *lo = longopts;
            while (lo->name && strcmp(lo->name, e->key)) lo++;
            if (!lo->name || lo->has_arg != required_argument || lo->val == OPT_CONFIG) {
                fprintf(stderr, "quern-worker: %s:%d: unknown key '%s' (keys are the long flag names "
                        "that take a value, and kafka:)\n", path, e->line, e->key);
                return 2;
            }
            size_t len = strlen(e->key) + strlen(e->value) + 4;
            char **na = realloc(g_config_args, (size_t)(g_config_nargs + 1) * sizeof *na);
            if (!na) return 2;
            g_config_args = na;
            av[1] = malloc(len); /* kept: o may point into it */
            if (!av[1]) return 2;
            g_config_args[g_config_nargs++] = av[1];
            snprintf(av[1], len, "--%s=%s", e->key, e->value);
        }
        if (parse_flags(ac, av, o)) {
            fprintf(stderr, "quern-worker: %s:%d: bad value for key '%s'\n", path, e->line, e->key);
            return 2;
        }
    }
    return 0;
}

/* Returns 0, 2 for a usage error (message printed), or 3 for
 * --print-config (print and exit 0). */
static int parse_args(int argc, char **argv, worker_opts *o)
{
    opts_default(o);
    /* The file first, wherever --config stands on the command line. */
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0) path = argv[i] + 9;
        if (path && apply_config(path, o)) return 2;
        if (path) break;
    }
    int rc = parse_flags(argc, argv, o);
    if (rc) return rc;
    if (o->print_config) return 3;
    if (!o->model_repo) {
        fprintf(stderr, "quern-worker: --model-repo is required\n");
        usage(stderr);
        return 2;
    }
    if (!o->zmq_pull != !o->zmq_push) {
        fprintf(stderr, "quern-worker: pipeline mode wants both --zmq-pull and --zmq-push\n");
        return 2;
    }
    if (!o->zmq_bind && !o->kafka_brokers && !o->broker && !o->http && !o->zmq_pull) {
        fprintf(stderr, "quern-worker: give at least one of --zmq-bind, --zmq-pull, --kafka-brokers, "
                "--broker, --http\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

static void pc_str(FILE *f, const char *key, const char *v)
{
    if (!v) {
        fprintf(f, "# %s: (not set)\n", key);
        return;
    }
    fprintf(f, "%s: ", key);
    qn_config_print_str(f, v);
    fputc('\n', f);
}

/* The effective configuration as a YAML config file (loadable with
 * --config). A flag added to the worker belongs here too. */
static void print_config(FILE *f, const worker_opts *o)
{
    fprintf(f, "# quern-worker effective configuration: the defaults, %s%sthen the command line\n",
            o->config ? o->config : "", o->config ? ", " : "");
    pc_str(f, "model-repo", o->model_repo);
    pc_str(f, "zmq-bind", o->zmq_bind);
    pc_str(f, "kafka-brokers", o->kafka_brokers);
    pc_str(f, "broker", o->broker);
    fprintf(f, "zmq-client-inflight: %lld\n", (long long)o->zmq.client_inflight);
    fprintf(f, "zmq-sndhwm: %lld\n", (long long)o->zmq.sndhwm);
    if (o->broker_credit) fprintf(f, "broker-credit: %d\n", o->broker_credit);
    else fprintf(f, "# broker-credit: (not set: --max-batch)\n");
    fprintf(f, "broker-heartbeat-ms: %d\n", o->broker_heartbeat_ms);
    fprintf(f, "train-queue: %d\n", o->core.train_queue);
    fprintf(f, "train-nice: %d\n", o->core.train_nice);
    pc_str(f, "zmq-pull", o->zmq_pull);
    pc_str(f, "zmq-push", o->zmq_push);
    pc_str(f, "http", o->http);
    fprintf(f, "http-max-body: %ld\n", o->http_max_body ? o->http_max_body : (long)QN_HTTP_DEFAULT_MAX_BODY);
    pc_str(f, "kafka-topic", o->kafka_topic);
    pc_str(f, "kafka-group", o->kafka_group);
    pc_str(f, "reply-topic", o->reply_topic);
    pc_str(f, "dlq-topic", o->dlq_topic);
    fprintf(f, "max-batch: %lld\n", (long long)o->core.batch.max_batch_rows);
    fprintf(f, "max-delay-us: %lld\n", (long long)o->core.batch.max_delay_us);
    fprintf(f, "queue-limit: %lld\n", (long long)o->core.batch.queue_limit_rows);
    if (o->core.threads) fprintf(f, "threads: %d\n", o->core.threads);
    else fprintf(f, "# threads: (not set: one per core)\n");
    fprintf(f, "blas-threads: %d\n", o->blas_threads);
    pc_str(f, "device", o->device);
    fprintf(f, "max-message-bytes: %zu\n", o->core.limits.max_message_bytes);
    fprintf(f, "direct-max-flops: %lld\n", (long long)o->core.direct_max_flops);
    fprintf(f, "direct-idle-rows: %lld\n", (long long)o->core.direct_idle_rows);
    pc_str(f, "cache-dir", o->cache_dir);
    fprintf(f, "cache-size: %ld\n", o->cache_size_mb);
    fprintf(f, "poll-ms: %d\n", o->poll_ms);
    fprintf(f, "drain-timeout-ms: %d\n", o->drain_timeout_ms);
    pc_str(f, "log-format", o->log_format);
    if (o->nx == 0) {
        fprintf(f, "kafka: {}\n");
        return;
    }
    fprintf(f, "kafka:\n");
    for (int i = 0; i < o->nx; i++) {
        const char *eq = strchr(o->x_conf[i], '=');
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(eq - o->x_conf[i]), o->x_conf[i]);
        /* -X is last-wins in librdkafka: print a key once, with its last value. */
        int later = 0;
        for (int k = i + 1; k < o->nx && !later; k++)
            later = strncmp(o->x_conf[k], o->x_conf[i], (size_t)(eq - o->x_conf[i]) + 1) == 0;
        if (later) continue;
        fprintf(f, "  ");
        qn_config_print_str(f, key);
        fprintf(f, ": ");
        qn_config_print_str(f, eq + 1);
        fputc('\n', f);
    }
}

/* Parts that later issues add. Refused clearly rather than ignored. */
static int refuse_unbuilt(const worker_opts *o)
{
    if (strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "quern-worker: the CUDA backend is not built yet (--device cuda)\n");
        return 2;
    }
    return 0;
}

/* What can be checked without loading or binding anything: the repository
 * is a directory we can read (a missing one is named as such, not as the
 * "input/output error" a failed scan reports), and every -X setting is one
 * librdkafka accepts. Returns 0, or the exit code (message logged). */
static int check_config(const worker_opts *o)
{
    struct stat st;
    if (stat(o->model_repo, &st) != 0) {
        QN_LOGE("worker", "--model-repo %s: %s", o->model_repo,
                errno == ENOENT ? "no such directory" : strerror(errno));
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        QN_LOGE("worker", "--model-repo %s: not a directory", o->model_repo);
        return 1;
    }
    if (access(o->model_repo, R_OK | X_OK) != 0) {
        QN_LOGE("worker", "--model-repo %s: %s", o->model_repo, strerror(errno));
        return 1;
    }
    if (o->kafka_brokers) {
        qn_kafka_opts ko = {.x = o->x_conf, .nx = o->nx};
        if (qn_kafka_opts_check(&ko)) return 1; /* as when the transport refused it */
    } else if (o->nx) {
        QN_LOGW("worker", "-X settings are for the Kafka transport; without --kafka-brokers they "
                "are ignored");
    }
    return 0;
}

static void count_model(void *ud, const char *name, int64_t latest) { ++*(int *)ud; }

/* A worker with nothing to serve answers every job unknown_model: say so at
 * start rather than let "ready" suggest otherwise. */
static void warn_if_empty(qn_registry *reg, const char *repo)
{
    int n = 0;
    qn_registry_each_name(reg, count_model, &n);
    if (n == 0)
        QN_LOGW("worker", "the model repository %s has no loadable model (want "
                "%s/NAME/VERSION/model.safetensors); every job gets unknown_model until one appears",
                repo, repo);
}

/* Waits until nothing is in flight or the clock passes end. */
static int drain(qn_transport *ts, int nt, uint64_t end, int timeout_ms)
{
    for (;;) {
        int64_t left = 0;
        for (int i = 0; i < nt; i++) left += ts[i].iface->inflight(ts[i].self);
        if (left == 0) return 0;
        if (qn_now_ns() > end) {
            QN_LOGW("worker", "shutdown: %lld jobs still in flight after %d ms", (long long)left, timeout_ms);
            return -1;
        }
        struct timespec ts_ = {0, 2000000};
        nanosleep(&ts_, NULL);
    }
}

int main(int argc, char **argv)
{
    worker_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc == 3) {
        print_config(stdout, &o);
        return 0;
    }
    if (rc) return rc;
    if (strcmp(o.log_format, "json") == 0) qn_log_set_format(QN_LOG_FORMAT_JSON);
    if ((rc = refuse_unbuilt(&o))) return rc;
    qn_log_init_from_env();

    /* OpenBLAS starts its thread pool when the library loads, before main,
     * sized from OPENBLAS_NUM_THREADS or the core count; openblas_set_num_threads
     * cannot take those threads back, and on this 2-core box the idle pool
     * thread kept spinning in sched_yield (~9% of a core, ~10% fewer jobs/s:
     * bench/README.md). So when the variable is unset, set it to what we use
     * and re-exec once; the second start finds it set. */
    if (!getenv("OPENBLAS_NUM_THREADS")) {
        char v[16];
        snprintf(v, sizeof v, "%d", o.blas_threads);
        if (setenv("OPENBLAS_NUM_THREADS", v, 1) == 0) {
            /* Through the real path, so the process keeps its name ("exe"
             * otherwise, in ps, top and pgrep). */
            char self[4096];
            ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
            if (n > 0) {
                self[n] = 0;
                execv(self, argv);
            }
            QN_LOGW("worker", "re-exec with OPENBLAS_NUM_THREADS=%s failed; continuing", v);
        }
    }

    /* Libraries start threads of their own (OpenBLAS at load time), so a
     * signal may land on any thread: the handler only writes to a pipe that
     * this thread waits on. A second signal during shutdown is harmless. */
    if (pipe(g_sigpipe) != 0) {
        perror("quern-worker: pipe");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int exit_code = 1;
    qn_backend *be = NULL;
    qn_registry *reg = NULL;
    qn_core *core = NULL;
    qn_cache *cache = NULL;
    void *zctx = NULL;
    qn_transport ts[MAX_TRANSPORTS];
    int nt = 0;

    if (o.core.threads == 0) {
        /* One executor per core, each with one BLAS thread: OpenBLAS's own
         * threads spin while waiting and fight the IO thread for cores
         * (bench/README.md has the measurements behind this). */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        o.core.threads = cores > 0 ? (int)cores : 1;
    }
    /* Configuration first: a mistake in it is refused in a line, before any
     * model is loaded or socket bound. */
    if ((rc = check_config(&o))) {
        exit_code = rc;
        goto out;
    }
    if ((rc = qn_backend_cpu_create(o.blas_threads, &be))) {
        QN_LOGE("worker", "cannot create the CPU backend: %s", qn_strerror(rc));
        goto out;
    }
    if ((rc = qn_registry_open(o.model_repo, be, &reg))) {
        QN_LOGE("worker", "cannot open model repository %s: %s", o.model_repo, qn_strerror(rc));
        goto out;
    }
    warn_if_empty(reg, o.model_repo);
    if ((rc = qn_registry_watch(reg, o.poll_ms))) {
        QN_LOGE("worker", "cannot watch the model repository: %s", qn_strerror(rc));
        goto out;
    }
    if (o.cache_dir && o.cache_size_mb > 0) {
        qn_cache_opts co;
        qn_cache_opts_default(&co);
        if ((rc = qn_cache_open(o.cache_dir, (uint64_t)o.cache_size_mb, &co, &cache))) {
            QN_LOGE("worker", "cannot open the result cache in %s: %s", o.cache_dir, qn_strerror(rc));
            goto out;
        }
        o.core.cache = cache;
        QN_LOGI("worker", "result cache: %s, %ld MiB", o.cache_dir, o.cache_size_mb);
    }
    if ((rc = qn_core_create(&o.core, reg, be, &core))) {
        QN_LOGE("worker", "cannot start the executor: %s", qn_strerror(rc));
        goto out;
    }
    zctx = zmq_ctx_new();
    /* HTTP first: health answers (ready: 503) while the others start, it is
     * the first to stop intake (ready turns 503 before anything else
     * drains) and the last closed (metrics and health through the drain). */
    void *http = NULL;
    if (o.http) {
        qn_metrics_enable(1);
        qn_http_opts ho = {.listen = o.http, .max_body = (size_t)o.http_max_body, .core = core,
                           .reg = reg, .cache = cache};
        if (qn_http_transport_create(&ho, &ts[nt])) goto out;
        http = ts[nt++].self;
    }
    if (o.zmq_bind) {
        o.zmq.drain_timeout_ms = o.drain_timeout_ms;
        if (qn_zmq_transport_create(zctx, o.zmq_bind, &o.zmq, core, &ts[nt])) goto out;
        nt++;
    }
    if (o.zmq_pull) {
        if (qn_pipe_transport_create(zctx, o.zmq_pull, o.zmq_push, 0, core, &ts[nt])) goto out;
        nt++;
    }
    if (o.kafka_brokers) {
        qn_kafka_opts ko = {.brokers = o.kafka_brokers, .topic = o.kafka_topic,
                            .group = o.kafka_group, .reply_topic = o.reply_topic,
                            .dlq_topic = o.dlq_topic, .x = o.x_conf, .nx = o.nx,
                            .limits = o.core.limits};
        if (qn_kafka_transport_create(&ko, core, &ts[nt])) goto out;
        nt++;
    }
    if (o.broker) {
        /* credit: a full batch per model, so the broker can feed the batcher */
        int64_t credit = o.broker_credit ? o.broker_credit : o.core.batch.max_batch_rows;
        qn_mdp_opts mo = {.endpoint = o.broker, .credit = (int)(credit < 65536 ? credit : 65536),
                          .heartbeat_ms = o.broker_heartbeat_ms, .rescan_ms = o.poll_ms < 1000 ? o.poll_ms : 1000};
        if (qn_mdp_transport_create(zctx, &mo, core, reg, &ts[nt])) goto out;
        nt++;
    }
    for (int i = 0; i < nt; i++)
        if ((rc = ts[i].iface->start(ts[i].self))) {
            QN_LOGE("worker", "cannot start the %s transport: %s", ts[i].iface->name, qn_strerror(rc));
            goto out;
        }
    if (http) qn_http_transport_set_ready(http);
    QN_LOGI("worker", "ready: repo %s, device cpu, %d executor thread(s) x %d BLAS thread(s), max batch %lld, "
            "max delay %lld us, queue limit %lld rows", o.model_repo, o.core.threads, o.blas_threads,
            (long long)o.core.batch.max_batch_rows, (long long)o.core.batch.max_delay_us,
            (long long)o.core.batch.queue_limit_rows);

    unsigned char sig = 0;
    while (read(g_sigpipe[0], &sig, 1) < 0 && errno == EINTR) {}
    QN_LOGI("worker", "signal %d: draining", sig);
    /* One deadline for the whole drain, taken now: the transports stop
     * running their queued jobs by it (the ZeroMQ one answers and drops what
     * is left), so stopping the core below cannot outlast it by more than
     * the batches already running. */
    uint64_t drain_end = qn_now_ns() + (uint64_t)o.drain_timeout_ms * 1000000u;
    /* Data-flow order: no new jobs; run what is queued now (no batching
     * delay) and join the executors; let the results leave; then close. */
    for (int i = 0; i < nt; i++) ts[i].iface->stop_intake(ts[i].self);
    qn_core_stop(core);
    drain(ts, nt, drain_end, o.drain_timeout_ms);
    exit_code = 0;
out:
    if (core) qn_core_stop(core);
    for (int i = nt - 1; i >= 0; i--) ts[i].iface->destroy(ts[i].self);
    qn_core_destroy(&core);
    qn_cache_close(&cache);
    if (zctx) zmq_ctx_term(zctx);
    qn_registry_close(&reg);
    qn_backend_destroy(&be);
    if (exit_code == 0) QN_LOGI("worker", "stopped");
    return exit_code;
}
