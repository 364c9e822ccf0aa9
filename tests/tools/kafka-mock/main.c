/* quern-kafka-mock: librdkafka's mock cluster (rdkafka_mock.h) as a process
 * of its own, so tests and benchmarks get a Kafka-protocol cluster on
 * loopback that any client (python confluent-kafka, kcat, quern) can talk to,
 * and can inject faults into it while it runs.
 *
 *   quern-kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...
 *
 * On start it prints one line on stdout, "bootstrap HOST:PORT,...", then
 * reads commands on stdin, one per line, and answers each with one line
 * ("ok" or "error: why"), so a test can wait for a fault to be in place:
 *
 *   down ID                 broker ID stops answering (connections closed)
 *   up ID                   broker ID is back
 *   rtt ID MS               broker ID answers MS ms late
 *   errors API ERR [ERR..]  the next requests of API (a number or a name:
 *                           Produce, Fetch, OffsetCommit, ...) fail with
 *                           these errors in order (numbers or names such as
 *                           NOT_LEADER_FOR_PARTITION)
 *   clear API               drop the errors still pending for API
 *   topic NAME PARTITIONS   create a topic
 *   coordinator GROUP ID    broker ID coordinates consumer group GROUP
 *   leader TOPIC PART ID    broker ID becomes the partition's leader (as a
 *                           controller would elect one when a broker dies;
 *                           clients see NOT_LEADER and refresh metadata)
 *   quit                    exit (so does end of input, SIGTERM, SIGINT)
 *
 * Remember the mock's retention: each partition keeps only the newest 5 MiB
 * and 100,000 message sets and silently drops older ones; a test that
 * produces much faster than it consumes must spread over partitions. Never:
 * listen beyond loopback (the mock binds 127.0.0.1 only). */
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_ERRS 64

static const struct { const char *name; int16_t key; } apis[] = {
    {"Produce", 0},      {"Fetch", 1},         {"ListOffsets", 2},  {"Metadata", 3},
    {"OffsetCommit", 8}, {"OffsetFetch", 9},   {"FindCoordinator", 10},
    {"JoinGroup", 11},   {"Heartbeat", 12},    {"LeaveGroup", 13},  {"SyncGroup", 14},
    {"InitProducerId", 22},
};

static int parse_api(const char *s, int16_t *out)
{
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++)
        if (strcasecmp(s, apis[i].name) == 0) return *out = apis[i].key, 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v > 1000) return -1;
    *out = (int16_t)v;
    return 0;
}

/* An error code by number or by name (as rd_kafka_err2name spells it). */
static int parse_err(const char *s, rd_kafka_resp_err_t *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && !*end) return *out = (rd_kafka_resp_err_t)v, 0;
    const struct rd_kafka_err_desc *descs;
    size_t n;
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++)
        if (descs[i].name && strcasecmp(descs[i].name, s) == 0) return *out = descs[i].code, 0;
    return -1;
}

static int create_topic(rd_kafka_mock_cluster_t *mc, const char *name, int parts, int brokers)
{
    int rf = brokers < 3 ? brokers : 3;
    rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, name, parts, rf);
    if (err) fprintf(stderr, "quern-kafka-mock: topic %s: %s\n", name, rd_kafka_err2str(err));
    return err ? -1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: quern-kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...\n"
               "prints 'bootstrap LIST', then takes commands on stdin: down ID | up ID | "
               "rtt ID MS | errors API ERR... | clear API | topic NAME PARTITIONS | leader TOPIC PART ID | coordinator GROUP ID | quit\n");
}

/* Runs one command line; writes the answer into ans. */
static void command(rd_kafka_mock_cluster_t *mc, char *line, int brokers, char *ans, size_t anssz)
{
    char *argv[MAX_ERRS + 4];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && argc < (int)(sizeof argv / sizeof argv[0]);
         tok = strtok(NULL, " \t\r\n"))
        argv[argc++] = tok;
    snprintf(ans, anssz, "ok");
    if (argc == 0) return;
    rd_kafka_resp_err_t err = 0;
    if ((!strcmp(argv[0], "down") || !strcmp(argv[0], "up")) && argc == 2) {
        int id = atoi(argv[1]);
        err = argv[0][0] == 'd' ? rd_kafka_mock_broker_set_down(mc, id)
                                : rd_kafka_mock_broker_set_up(mc, id);
    } else if (!strcmp(argv[0], "rtt") && argc == 3) {
        err = rd_kafka_mock_broker_set_rtt(mc, atoi(argv[1]), atoi(argv[2]));
    } else if (!strcmp(argv[0], "errors") && argc >= 3) {
        int16_t api;
        rd_kafka_resp_err_t errs[MAX_ERRS];
        size_t n = 0;
        if (parse_api(argv[1], &api)) {
            snprintf(ans, anssz, "error: unknown API '%s'", argv[1]);
            return;
        }
        for (int i = 2; i < argc && n < MAX_ERRS; i++)
            if (parse_err(argv[i], &errs[n++])) {
                snprintf(ans, anssz, "error: unknown error code '%s'", argv[i]);
                return;
            }
        rd_kafka_mock_push_request_errors_array(mc, api, n, errs);
    } else if (!strcmp(argv[0], "clear") && argc == 2) {
        int16_t api;
        if (parse_api(argv[1], &api)) {
            snprintf(ans, anssz, "error: unknown API '%s'", argv[1]);
            return;
        }
        rd_kafka_mock_clear_request_errors(mc, api);
    } else if (!strcmp(argv[0], "coordinator") && argc == 3) {
        err = rd_kafka_mock_coordinator_set(mc, "group", argv[1], atoi(argv[2]));
    } else if (!strcmp(argv[0], "leader") && argc == 4) {
        err = rd_kafka_mock_partition_set_leader(mc, argv[1], atoi(argv[2]), atoi(argv[3]));
    } else if (!strcmp(argv[0], "topic") && argc == 3) {
        if (create_topic(mc, argv[1], atoi(argv[2]), brokers))
            snprintf(ans, anssz, "error: cannot create topic %s", argv[1]);
        return;
    } else {
        snprintf(ans, anssz, "error: unknown command (down ID | up ID | rtt ID MS | errors API ERR... | "
                             "topic NAME PARTITIONS | leader TOPIC PART ID | coordinator GROUP ID | quit)");
        return;
    }
    if (err) snprintf(ans, anssz, "error: %s", rd_kafka_err2str(err));
}

int main(int argc, char **argv)
{
    int brokers = 1;
    const char *topics[64];
    int ntopics = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--brokers") && i + 1 < argc) {
            brokers = atoi(argv[++i]);
            if (brokers < 1 || brokers > 16) { usage(stderr); return 2; }
        } else if (!strcmp(argv[i], "--topic") && i + 1 < argc && ntopics < 64) {
            topics[ntopics++] = argv[++i];
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);

    /* The mock cluster lives inside a client instance; a producer that is
     * never used is the lightest one. */
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "quern-kafka-mock: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "quern-kafka-mock: cannot start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < ntopics; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s", topics[i]);
        char *colon = strrchr(name, ':');
        int parts = colon ? atoi(colon + 1) : 1;
        if (colon) *colon = 0;
        if (parts < 1 || create_topic(mc, name, parts, brokers)) {
            fprintf(stderr, "quern-kafka-mock: bad --topic '%s' (NAME:PARTITIONS)\n", topics[i]);
            rc = 2;
            goto out;
        }
    }
    printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    /* SIGTERM and SIGINT keep their default action: the process (and the
     * cluster, which is only memory) simply goes away. */
    char line[4096], ans[512];
    while (fgets(line, sizeof line, stdin)) {
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (!strncmp(p, "quit", 4)) break;
        command(mc, p, brokers, ans, sizeof ans);
        printf("%s\n", ans);
        fflush(stdout);
    }
out:
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
