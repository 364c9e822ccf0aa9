/* main.c: quern-broker. Parses the flags of CONTRACT.md section 5, runs the
 * loop of broker.c until SIGTERM or SIGINT, exits 0. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "broker.h"
#include "error.h"
#include "log.h"

static int g_sigpipe[2] = {-1, -1};

static void on_signal(int sig)
{
    unsigned char c = (unsigned char)sig;
    int saved = errno;
    ssize_t w = write(g_sigpipe[1], &c, 1);
    (void)w;
    errno = saved;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: quern-broker [--bind ENDPOINT] [options]\n"
            "\n"
            "A Majordomo Protocol (RFC 7, MDP 0.1) broker: MDPC01 clients and MDPW01 workers on one\n"
            "ROUTER socket, MMI (mmi.service, mmi.workers), worker credit, retries (schemas/broker.md).\n"
            "\n"
            "  --bind ENDPOINT      ROUTER endpoint (default tcp://*:5555; tcp://127.0.0.1:* picks a port)\n"
            "  --policy P           lru (default), round-robin, random, least-loaded\n"
            "  --heartbeat-ms N     heartbeat interval; a worker silent for 3 intervals is dead (default %d)\n"
            "  --retries N          re-dispatches of a request whose worker died (default %d)\n"
            "  --queue-limit N      most queued requests per service; past it an error reply (default %d)\n"
            "  --seed N             seed of the random policy (default: from the clock)\n"
            "  -h, --help           this text\n",
            QN_BROKER_DEFAULT_HEARTBEAT_MS, QN_BROKER_DEFAULT_RETRIES, QN_BROKER_DEFAULT_QUEUE_LIMIT);
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "quern-broker: %s wants an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

enum { OPT_BIND = 256, OPT_POLICY, OPT_HB, OPT_RETRIES, OPT_QLIMIT, OPT_SEED };

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"bind", required_argument, 0, OPT_BIND},         {"policy", required_argument, 0, OPT_POLICY},
        {"heartbeat-ms", required_argument, 0, OPT_HB},   {"retries", required_argument, 0, OPT_RETRIES},
        {"queue-limit", required_argument, 0, OPT_QLIMIT}, {"seed", required_argument, 0, OPT_SEED},
        {"help", no_argument, 0, 'h'},                    {0, 0, 0, 0},
    };
    qn_broker_opts o = {.bind = "tcp://*:5555", .policy = QN_POLICY_LRU,
                        .heartbeat_ms = QN_BROKER_DEFAULT_HEARTBEAT_MS, .retries = QN_BROKER_DEFAULT_RETRIES,
                        .queue_limit = QN_BROKER_DEFAULT_QUEUE_LIMIT, .seed = 0};
    long v;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_BIND: o.bind = optarg; break;
        case OPT_POLICY:
            if (qn_policy_parse(optarg, &o.policy) != 0) {
                fprintf(stderr, "quern-broker: --policy is lru, round-robin, random or least-loaded, got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_HB:
            if (parse_long("--heartbeat-ms", optarg, 10, 3600000, &v)) return 2;
            o.heartbeat_ms = (int)v;
            break;
        case OPT_RETRIES:
            if (parse_long("--retries", optarg, 0, 1000, &v)) return 2;
            o.retries = (int)v;
            break;
        case OPT_QLIMIT:
            if (parse_long("--queue-limit", optarg, 1, 1L << 30, &v)) return 2;
            o.queue_limit = v;
            break;
        case OPT_SEED:
            if (parse_long("--seed", optarg, 0, 0x7fffffffL, &v)) return 2;
            o.seed = (uint64_t)v;
            break;
        case 'h': usage(stdout); return 0;
        default:
            fprintf(stderr, "quern-broker: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "quern-broker: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!o.seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
    }
    qn_log_init_from_env();
    if (pipe(g_sigpipe) != 0) {
        perror("quern-broker: pipe");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    void *zctx = zmq_ctx_new();
    qn_broker *b = NULL;
    int exit_code = 1;
    if (!zctx) {
        fprintf(stderr, "quern-broker: zmq_ctx_new failed\n");
        return 1;
    }
    if (qn_broker_create(zctx, &o, &b) != 0) goto out;
    if (qn_broker_run(b, g_sigpipe[0]) == 0) exit_code = 0;
out:
    qn_broker_destroy(&b);
    zmq_ctx_term(zctx);
    if (exit_code == 0) QN_LOGI("broker", "stopped");
    return exit_code;
}
