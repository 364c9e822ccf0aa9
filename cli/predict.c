/* predict.c: `quern predict`: send one predict job built from a .npy or CSV
 * file and print its result as a table. Meant for a person at a terminal
 * (and for scripts through --output and the exit code), not for load: that
 * is `quern bench`.
 *
 * Two transports, one flow: read the input, encode the job, exchange it,
 * judge the replies (take_reply), print. Only the exchange differs.
 * ZeroMQ: a DEALER socket sends the job as a single frame (no empty
 * delimiter, as a DEALER talking to a ROUTER does); the worker answers with
 * the same envelope, so the reply arrives as a single frame too.
 * Kafka (kafka_client.c): the job is produced to --topic with its id as key
 * and reply_to set to --reply-topic, which is then read until the result
 * with the job's id arrives. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "cli.h"
#include "error.h"
#include "job.h"
#include "kafka_client.h"
#include "mpjson.h"
#include "npy.h"
#include "tensor.h"

#define PREDICT_USAGE                                                                         \
    "predict (--zmq ENDPOINT | --broker ENDPOINT | --kafka BROKERS [--topic T] [--reply-topic T] [-X key=value]...) " \
    "--model NAME --input FILE [--version N] [--timeout-ms N] [--id ID] [--output FILE.npy] "      \
    "[--max-rows N] [--json]"
#define MAX_X 64

static void predict_help(FILE *out)
{
    fprintf(out,
            "usage: quern " PREDICT_USAGE "\n\n"
            "Sends one predict job and prints the result.\n\n"
            "  --zmq ENDPOINT   a quern-worker's --zmq-bind endpoint, e.g. tcp://127.0.0.1:5555\n"
            "  --broker ENDPOINT or: a quern-broker's --bind endpoint (an MDP client: the\n"
            "                   model name is the service)\n"
            "  --kafka BROKERS  or: Kafka bootstrap servers of workers' --kafka-brokers\n"
            "                   (a worker started with --kafka-brokers mock logs them)\n"
            "  --topic T        with --kafka: the job topic (default quern.jobs)\n"
            "  --reply-topic T  with --kafka: the job's reply_to, read for the result\n"
            "                   (default quern.predict.PID, auto-created by the brokers)\n"
            "  -X key=value     with --kafka: a librdkafka property (producer./consumer.\n"
            "                   prefixes for one side only), as quern-worker's -X\n"
            "  --model NAME     model name in the worker's repository\n"
            "  --input FILE     .npy (1-D: one row; 2-D: rows x cols; f4/f8/i4/i8/u1) or CSV\n"
            "                   (comma-separated numbers, optional header line)\n"
            "  --version N      pin a model version (default: the latest)\n"
            "  --timeout-ms N   how long to wait for the result (default 10000)\n"
            "  --id ID          the job id (an integer or a string; default quern-predict-PID)\n"
            "  --output FILE    also write the outputs to FILE as .npy (float32)\n"
            "  --max-rows N     rows shown in the table (default 100, 0: all)\n"
            "  --json           print the result message as one line of JSON instead of the\n"
            "                   table (outputs as nested lists; quern decode's conversion)\n\n"
            "Exit status: 0 result ok, 1 error result / timeout / failure, 2 usage.\n");
}


/* A softmax-shaped row set: every row non-negative, at most 1, summing to 1.
 * Only then is an argmax column a class prediction rather than noise. */
static bool looks_like_probabilities(const float *y, int64_t rows, int64_t cols)
{
    if (cols < 2) return false;
    for (int64_t r = 0; r < rows; r++) {
        double s = 0;
        for (int64_t c = 0; c < cols; c++) {
            float v = y[r * cols + c];
            if (!(v >= 0.0f && v <= 1.0f)) return false;
            s += v;
        }
        if (fabs(s - 1.0) > 1e-3) return false;
    }
    return true;
}

#define SHOW_COLS 10

static void print_result(const qn_result_view *v, int64_t max_rows)
{
    printf("status   %s\n", qn_status_name(v->status));
    if (v->model[0]) {
        if (v->version > 0) printf("model    %s (version %" PRId64 ")\n", v->model, v->version);
        else printf("model    %s\n", v->model);
    }
    printf("cached   %s\n", v->cached ? "yes" : "no");
    if (!v->outputs) {
        printf("outputs  none\n");
        return;
    }
    printf("outputs  %" PRId64 " x %" PRId64 "\n\n", v->rows, v->cols);

    const int64_t shown = v->cols > SHOW_COLS ? SHOW_COLS - 1 : v->cols;
    const bool probs = looks_like_probabilities(v->outputs, v->rows, v->cols);
    printf("%6s", "row");
    for (int64_t c = 0; c < shown; c++) {
        char name[32];
        snprintf(name, sizeof name, "out%" PRId64, c);
        printf("  %10s", name);
    }
    if (shown < v->cols) {
        char name[32];
        snprintf(name, sizeof name, "out%" PRId64, v->cols - 1);
        printf("  %3s  %10s", "...", name);
    }
    if (probs) printf("  %6s  %8s", "argmax", "p");
    printf("\n");

    int64_t nrows = (max_rows > 0 && v->rows > max_rows) ? max_rows : v->rows;
    for (int64_t r = 0; r < nrows; r++) {
        const float *y = v->outputs + r * v->cols;
        printf("%6" PRId64, r);
        for (int64_t c = 0; c < shown; c++) printf("  %10.5g", y[c]);
        if (shown < v->cols) printf("  %3s  %10.5g", "...", y[v->cols - 1]);
        if (probs) {
            int64_t best = 0;
            for (int64_t c = 1; c < v->cols; c++)
                if (y[c] > y[best]) best = c;
            printf("  %6" PRId64 "  %8.4f", best, y[best]);
        }
        printf("\n");
    }
    if (nrows < v->rows)
        printf("... %" PRId64 " more rows (--max-rows 0 shows all, --output FILE.npy saves them)\n",
               v->rows - nrows);
}

/* What the exchange waits for: the result carrying the job's id. */
typedef struct awaited {
    const char *id_str; /* the job's id: a string, or id_int when NULL */
    int64_t id_int;
    qn_result_view res; /* the accepted result (outputs owned) */
    int decode_rc;      /* nonzero: the accepted reply was not a result */
    void *raw;          /* the accepted reply's bytes (malloc'd), for --json */
    size_t raw_len;
} awaited;

/* Keeps the accepted reply's bytes. */
static void keep_raw(awaited *a, const void *buf, size_t len)
{
    a->raw = malloc(len ? len : 1);
    if (a->raw) {
        memcpy(a->raw, buf, len);
        a->raw_len = len;
    }
}

/* Judges one reply; true when it ends the wait. trusted: the reply is known
 * to answer this job whatever it holds (the private ZeroMQ socket; on Kafka,
 * our kafka_correlationId echoed). Only a trusted reply may end the wait
 * without our id: a nil id is the worker saying it could not read the job,
 * and an undecodable one is an error worth reporting. Untrusted replies (a
 * shared reply topic) are skipped unless they carry our id. */
static bool take_reply(const void *buf, size_t len, bool trusted, void *arg)
{
    awaited *a = arg;
    qn_result_view v;
    int rc = qn_result_decode(buf, len, &v);
    if (rc) {
        if (!trusted) return false;
        a->decode_rc = rc;
        keep_raw(a, buf, len);
        return true;
    }
    bool mine = a->id_str ? (v.id_kind == QN_ID_STR && !strcmp(v.id_str, a->id_str))
                          : ((v.id_kind == QN_ID_INT || v.id_kind == QN_ID_UINT) &&
                             v.id_int == a->id_int);
    if (mine || (trusted && v.id_kind == QN_ID_NIL)) {
        a->res = v;
        keep_raw(a, buf, len);
        return true;
    }
    free(v.outputs);
    return false;
}

/* Receives one whole message and returns its last frame (the payload, after
 * any envelope) in *payload, which the caller closes. 0 or -1 (errno). */
static int recv_payload(void *sock, zmq_msg_t *payload)
{
    zmq_msg_init(payload);
    for (;;) {
        zmq_msg_close(payload);
        zmq_msg_init(payload);
        if (zmq_msg_recv(payload, sock, 0) < 0) return -1;
        if (!zmq_msg_more(payload)) return 0;
    }
}

/* Sends the job to a worker's ROUTER and waits for its result into *a.
 * *t0 is set when the job is sent. 0 or 1 (the message already printed). */
static int zmq_exchange(const char *endpoint, const char *mdp_service, const qn_buf *msg, int64_t timeout_ms,
                        awaited *a, uint64_t *t0)
{
    int ret = 1;
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    if (!sock) {
        fprintf(stderr, "quern predict: zmq: %s\n", zmq_strerror(errno));
        goto out;
    }
    int linger = 0, sndtimeo = (int)timeout_ms;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    if (zmq_connect(sock, endpoint) != 0) {
        fprintf(stderr, "quern predict: cannot connect to '%s': %s\n", endpoint, zmq_strerror(errno));
        goto out;
    }
    *t0 = qn_now_ns();
    /* through a broker: MDP client framing (RFC 7), the model as service;
     * the reply's last frame is the result either way */
    if (mdp_service && (zmq_send(sock, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(sock, "MDPC01", 6, ZMQ_SNDMORE) < 0 ||
                        zmq_send(sock, mdp_service, strlen(mdp_service), ZMQ_SNDMORE) < 0)) {
        fprintf(stderr, "quern predict: cannot send to %s: %s\n", endpoint, zmq_strerror(errno));
        goto out;
    }
    if (zmq_send(sock, msg->data, msg->len, 0) < 0) {
        fprintf(stderr, "quern predict: cannot send to %s: %s\n", endpoint, zmq_strerror(errno));
        goto out;
    }
    uint64_t deadline = *t0 + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        uint64_t now = qn_now_ns();
        if (now >= deadline) {
            fprintf(stderr, "quern predict: no result from %s within %" PRId64
                            " ms (is a worker bound there? --timeout-ms waits longer)\n",
                    endpoint, timeout_ms);
            goto out;
        }
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        long wait_ms = (long)((deadline - now + 999999) / 1000000);
        int n = zmq_poll(&it, 1, wait_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "quern predict: zmq_poll: %s\n", zmq_strerror(errno));
            goto out;
        }
        if (n == 0) continue;
        zmq_msg_t reply;
        if (recv_payload(sock, &reply) < 0) {
            fprintf(stderr, "quern predict: receive: %s\n", zmq_strerror(errno));
            zmq_msg_close(&reply);
            goto out;
        }
        bool done = take_reply(zmq_msg_data(&reply), zmq_msg_size(&reply), true, a);
        zmq_msg_close(&reply);
        if (done) break;
    }
    ret = 0;
out:
    if (sock) zmq_close(sock);
    if (ctx) zmq_ctx_term(ctx);
    return ret;
}

/* The same over Kafka (kafka_client.h). 0, 1 (message printed), or 2 for a
 * bad -X property (a usage error). */
static int kafka_exchange(qn_kafka_call *call, awaited *a, uint64_t *t0)
{
    char err[768];
    int rc = qn_kafka_call_run(call, take_reply, a, err, sizeof err);
    if (rc == QN_ETIMEDOUT) {
        fprintf(stderr, "quern predict: no result on %s within %" PRId64 " ms: %s (is a worker "
                        "consuming %s at %s? --timeout-ms waits longer)\n",
                call->reply_topic, call->timeout_ms, err, call->topic, call->brokers);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "quern predict: kafka: %s\n", err[0] ? err : qn_strerror(rc));
        return rc == QN_EINVAL ? 2 : 1;
    }
    *t0 = call->produced_ns;
    return 0;
}

static int predict_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"zmq", required_argument, NULL, 'z'},        {"model", required_argument, NULL, 'm'},
        {"input", required_argument, NULL, 'i'},      {"version", required_argument, NULL, 'V'},
        {"timeout-ms", required_argument, NULL, 't'}, {"id", required_argument, NULL, 'I'},
        {"output", required_argument, NULL, 'o'},     {"max-rows", required_argument, NULL, 'r'},
        {"kafka", required_argument, NULL, 'k'},      {"topic", required_argument, NULL, 'T'},
        {"reply-topic", required_argument, NULL, 'R'}, {"help", no_argument, NULL, 'h'},
        {"broker", required_argument, NULL, 'B'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL, *brokers = NULL, *topic = NULL, *reply_topic = NULL, *mdp = NULL;
    const char *model = NULL, *input = NULL, *id_arg = NULL, *output = NULL;
    const char *props[MAX_X];
    int nprops = 0;
    int64_t version = 0, timeout_ms = 10000, max_rows = 100;
    bool json = false;
    int ret = 1;
    qn_matrix m = {0};
    qn_buf msg = {0};
    awaited a = {0};

    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        switch (ch) {
        case 'z': endpoint = optarg; break;
        case 'B': mdp = optarg; break;
        case 'k': brokers = optarg; break;
        case 'T': topic = optarg; break;
        case 'R': reply_topic = optarg; break;
        case 'X':
            if (nprops == MAX_X) {
                fprintf(stderr, "quern predict: at most %d -X options\n", MAX_X);
                return 2;
            }
            props[nprops++] = optarg;
            break;
        case 'm': model = optarg; break;
        case 'i': input = optarg; break;
        case 'I': id_arg = optarg; break;
        case 'o': output = optarg; break;
        case 'V':
            if (!qn_cli_parse_i64(optarg, 1, INT64_MAX, &version)) {
                fprintf(stderr, "quern predict: --version wants a positive integer, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 't':
            if (!qn_cli_parse_i64(optarg, 1, INT32_MAX, &timeout_ms)) {
                fprintf(stderr, "quern predict: --timeout-ms wants a positive integer, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            if (!qn_cli_parse_i64(optarg, 0, INT64_MAX, &max_rows)) {
                fprintf(stderr, "quern predict: --max-rows wants an integer >= 0, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'j': json = true; break;
        case 'h': predict_help(stdout); return 0;
        default:
            fprintf(stderr, "quern predict: unknown or incomplete option '%s'\n", argv[optind - 1]);
            predict_help(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "quern predict: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if ((endpoint != NULL) + (brokers != NULL) + (mdp != NULL) != 1 || !model || !input) {
        fprintf(stderr, "quern predict: one of --zmq, --broker or --kafka, and --model and --input, are required\n");
        predict_help(stderr);
        return 2;
    }
    if ((endpoint || mdp) && (topic || reply_topic || nprops)) {
        fprintf(stderr, "quern predict: --topic, --reply-topic and -X go with --kafka, not --zmq or --broker\n");
        return 2;
    }
    if ((topic && !*topic) || (reply_topic && !*reply_topic)) {
        fprintf(stderr, "quern predict: --topic and --reply-topic want a topic name\n");
        return 2;
    }

    qn_npy_error nerr;
    int rc = qn_matrix_read(input, &m, &nerr);
    if (rc) {
        fprintf(stderr, "quern predict: %s\n", nerr.message);
        goto out;
    }

    /* an id that parses as an integer travels as one */
    char id_default[64], reply_default[64], key[32];
    if (!id_arg) {
        snprintf(id_default, sizeof id_default, "quern-predict-%ld", (long)getpid());
        a.id_str = id_default;
    } else if (!qn_cli_parse_i64(id_arg, INT64_MIN, INT64_MAX, &a.id_int)) {
        a.id_str = id_arg;
    }
    if (brokers && !reply_topic) {
        snprintf(reply_default, sizeof reply_default, "quern.predict.%ld", (long)getpid());
        reply_topic = reply_default;
    }
    rc = qn_job_encode_predict_to(a.id_str, a.id_int, model, version, m.data, m.rows, m.cols,
                                  brokers ? reply_topic : NULL, &msg);
    if (rc) {
        fprintf(stderr, "quern predict: cannot encode the job: %s\n", qn_strerror(rc));
        goto out;
    }

    uint64_t t0 = 0;
    if (endpoint || mdp) {
        ret = zmq_exchange(endpoint ? endpoint : mdp, endpoint ? NULL : model, &msg, timeout_ms, &a, &t0);
    } else {
        /* the key is the id as text, as the worker keys its result */
        if (!a.id_str) snprintf(key, sizeof key, "%" PRId64, a.id_int);
        qn_kafka_call call = {.brokers = brokers, .topic = topic ? topic : "quern.jobs",
                              .reply_topic = reply_topic, .key = a.id_str ? a.id_str : key,
                              .value = msg.data, .len = msg.len, .props = props,
                              .nprops = nprops, .timeout_ms = timeout_ms};
        ret = kafka_exchange(&call, &a, &t0);
    }
    if (ret) goto out;
    ret = 1;
    double ms = (double)(qn_now_ns() - t0) / 1e6;
    const qn_result_view *res = &a.res;

    if (json && a.raw) {
        /* The reply as it came, whatever it holds; the exit status still
         * says whether it was an ok result. */
        json_t *jv = qn_mpjson_convert(a.raw, a.raw_len, NULL, NULL);
        char *line = jv ? qn_mpjson_dumps(jv) : NULL;
        json_decref(jv);
        if (line) puts(line);
        else fprintf(stderr, "quern predict: the reply cannot be shown as JSON\n");
        free(line);
    }
    if (a.decode_rc) {
        fprintf(stderr, "quern predict: the reply is not a valid result message (%s)\n",
                qn_strerror(a.decode_rc));
        goto out;
    }
    if (res->status != QN_STATUS_OK) {
        if (json) {
            fprintf(stderr, "quern predict: %s: %s: %s\n", qn_status_name(res->status),
                    res->code != QN_CODE_NONE ? qn_code_name(res->code) : "(no code)",
                    res->message[0] ? res->message : "(no message)");
            goto out;
        }
        printf("status   %s\n", qn_status_name(res->status));
        if (res->model[0]) printf("model    %s\n", res->model);
        fprintf(stderr, "quern predict: %s: %s: %s\n", qn_status_name(res->status),
                res->code != QN_CODE_NONE ? qn_code_name(res->code) : "(no code)",
                res->message[0] ? res->message : "(no message)");
        goto out;
    }
    if (res->outputs && res->rows != m.rows)
        fprintf(stderr, "quern predict: warning: %" PRId64 " input rows but %" PRId64 " output rows\n",
                m.rows, res->rows);
    if (!json) {
        print_result(res, max_rows);
        printf("\n%" PRId64 " rows in %.2f ms\n", m.rows, ms);
    }
    if (output) {
        if (!res->outputs) {
            fprintf(stderr, "quern predict: no outputs to write to %s\n", output);
            goto out;
        }
        rc = qn_npy_write_f32(output, res->outputs, res->rows, res->cols);
        if (rc) {
            fprintf(stderr, "quern predict: cannot write %s: %s\n", output,
                    rc == QN_EIO ? strerror(errno) : qn_strerror(rc));
            goto out;
        }
    }
    ret = 0;
out:
    free(a.res.outputs);
    free(a.raw);
    qn_buf_free(&msg);
    qn_matrix_free(&m);
    return ret;
}

QN_CLI_COMMAND(predict, "predict", PREDICT_USAGE, predict_run)
