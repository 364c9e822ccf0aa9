/* train.c: `quern train` (CONTRACT.md section 6): one train job from
 * .npy/CSV files to a worker over ZeroMQ or Kafka; its progress shown as a
 * bar on a terminal (plain lines otherwise), then the new version and
 * metrics. Knows nothing of training itself: it encodes the job
 * (qn_job_encode_train) and reads the results. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "cli.h"
#include "error.h"
#include "job.h"
#include "kafka_client.h"
#include "model.h"
#include "npy.h"
#include "tensor.h"
#include "train.h"

#define MAX_X 64

static void train_help(FILE *out)
{
    fprintf(out,
            "usage: quern train (--zmq ENDPOINT | --kafka LIST) --model NAME --x X --y Y\n"
            "                   --loss mse|cross_entropy --optimizer sgd|adam|rmsprop --lr F --epochs N\n"
            "                   --batch-size N [--init 64:relu,10:softmax] [--schedule exponential:STEPS:RATE]\n"
            "                   [--version N] [--seed N] [--no-shuffle] [--x-val X --y-val Y]\n"
            "                   [--momentum F] [--id ID] [--timeout-ms N] [--topic T] [--reply-topic T] [-X k=v]\n"
            "X, Y: .npy or CSV files. --init makes a new model: comma-separated UNITS:ACTIVATION layers.\n"
            "--schedule: exponential:STEPS:RATE[:staircase], step:SIZE:GAMMA, cosine:TMAX[:ETA_MIN],\n"
            "plateau[:FACTOR:PATIENCE], constant. Prints progress (a bar on a terminal), then the\n"
            "new version and metrics. Exit 0 on ok, 1 on an error result.\n");
}

typedef struct tstate {
    const char *id_str;
    bool tty;
    int64_t rows;
    qn_result_view final;
    bool done;
    int decode_rc;
} tstate;

static void show_progress(tstate *s, const qn_result_view *v)
{
    const qn_train_report *t = &v->train;
    char extra[96] = "";
    if (isfinite(t->val_loss))
        snprintf(extra, sizeof extra, " val_loss %.4f val_acc %.3f", t->val_loss, t->val_accuracy);
    if (s->tty) {
        int width = 30;
        double frac = t->epochs > 0 ? ((double)t->epoch - 1 + (isfinite(t->val_loss) ? 1.0 : 0.5)) / (double)t->epochs
                                    : 0;
        if (frac > 1) frac = 1;
        int fill = (int)(frac * width);
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stdout, "\r[%s] epoch %" PRId64 "/%" PRId64 " loss %.4f lr %.3g %.0f rows/s%s\033[K", bar, t->epoch,
                t->epochs, t->loss, t->lr, isfinite(t->rows_per_s) ? t->rows_per_s : 0.0, extra);
    } else {
        fprintf(stdout, "epoch %" PRId64 "/%" PRId64 " step %" PRId64 " loss %.6f lr %.6g rows/s %.0f%s\n", t->epoch,
                t->epochs, t->step, t->loss, t->lr, isfinite(t->rows_per_s) ? t->rows_per_s : 0.0, extra);
    }
    fflush(stdout);
}

static bool take(const void *buf, size_t len, bool trusted, void *arg)
{
    tstate *s = arg;
    qn_result_view v;
    if (qn_result_decode(buf, len, &v) != 0) {
        if (!trusted) return false;
        s->decode_rc = QN_EFORMAT;
        return true;
    }
    bool mine = v.id_kind == QN_ID_STR && !strcmp(v.id_str, s->id_str);
    if (!mine && !(trusted && v.id_kind == QN_ID_NIL)) {
        free(v.outputs);
        return false;
    }
    if (v.progress) {
        show_progress(s, &v);
        free(v.outputs);
        return false;
    }
    s->final = v;
    s->done = true;
    return true;
}

static int zmq_train(const char *endpoint, const qn_buf *msg, int64_t timeout_ms, tstate *s)
{
    int ret = 1;
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    if (!sock) goto out;
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, endpoint) != 0 || zmq_send(sock, msg->data, msg->len, 0) < 0) {
        fprintf(stderr, "quern train: cannot send to '%s': %s\n", endpoint, zmq_strerror(errno));
        goto out;
    }
    /* the timeout is for silence: a long job keeps sending progress */
    for (;;) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, (long)timeout_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "quern train: nothing from %s for %" PRId64 " ms\n", endpoint, timeout_ms);
            goto out;
        }
        zmq_msg_t m;
        zmq_msg_init(&m);
        int more = 1;
        while (more) {
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, sock, 0) < 0) goto out;
            more = zmq_msg_more(&m);
        }
        bool done = take(zmq_msg_data(&m), zmq_msg_size(&m), true, s);
        zmq_msg_close(&m);
        if (done) break;
    }
    ret = 0;
out:
    if (sock) zmq_close(sock);
    if (ctx) zmq_ctx_term(ctx);
    return ret;
}

/* "64:relu,10:softmax" */
static int parse_init(const char *s, qn_train_spec *sp)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n >= QN_TRAIN_MAX_LAYERS) return -1;
        char *colon = strchr(tok, ':');
        const char *act = colon ? colon + 1 : "none";
        if (colon) *colon = '\0';
        if (!qn_cli_parse_i64(tok, 1, INT32_MAX, &sp->init_units[n])) return -1;
        if (qn_act_from_name(act, &sp->init_acts[n]) != 0) return -1;
        n++;
    }
    if (n == 0) return -1;
    sp->init_n = n;
    sp->has_init = true;
    return 0;
}

static int parse_schedule(const char *s, qn_sched_spec *ss)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    char *f[5] = {0};
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ":", &save); tok && n < 5; tok = strtok_r(NULL, ":", &save))
        f[n++] = tok;
    if (n == 0) return -1;
    if (!strcmp(f[0], "constant")) qn_sched_defaults(QN_SCHED_CONSTANT, ss);
    else if (!strcmp(f[0], "exponential") && n >= 3) {
        qn_sched_defaults(QN_SCHED_EXPONENTIAL, ss);
        if (!qn_cli_parse_i64(f[1], 1, INT64_MAX, &ss->decay_steps)) return -1;
        ss->decay_rate = strtod(f[2], NULL);
        ss->staircase = n >= 4 && !strcmp(f[3], "staircase");
    } else if (!strcmp(f[0], "step") && n >= 3) {
        qn_sched_defaults(QN_SCHED_STEP, ss);
        if (!qn_cli_parse_i64(f[1], 1, INT64_MAX, &ss->step_size)) return -1;
        ss->gamma = strtod(f[2], NULL);
    } else if (!strcmp(f[0], "cosine") && n >= 2) {
        qn_sched_defaults(QN_SCHED_COSINE, ss);
        if (!qn_cli_parse_i64(f[1], 1, INT64_MAX, &ss->t_max)) return -1;
        if (n >= 3) ss->eta_min = strtod(f[2], NULL);
    } else if (!strcmp(f[0], "plateau")) {
        qn_sched_defaults(QN_SCHED_PLATEAU, ss);
        if (n >= 2) ss->factor = strtod(f[1], NULL);
        if (n >= 3 && !qn_cli_parse_i64(f[2], 0, INT64_MAX, &ss->patience)) return -1;
    } else return -1;
    return 0;
}

static int read_matrix(const char *what, const char *path, qn_matrix *m)
{
    qn_npy_error e;
    if (qn_matrix_read(path, m, &e) != 0) {
        fprintf(stderr, "quern train: %s '%s': %s\n", what, path, e.message);
        return -1;
    }
    return 0;
}

static int train_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"zmq", required_argument, NULL, 'z'},        {"kafka", required_argument, NULL, 'k'},
        {"model", required_argument, NULL, 'm'},      {"x", required_argument, NULL, 'x'},
        {"y", required_argument, NULL, 'y'},          {"loss", required_argument, NULL, 'L'},
        {"optimizer", required_argument, NULL, 'O'},  {"lr", required_argument, NULL, 'l'},
        {"epochs", required_argument, NULL, 'e'},     {"batch-size", required_argument, NULL, 'b'},
        {"init", required_argument, NULL, 'i'},       {"schedule", required_argument, NULL, 's'},
        {"version", required_argument, NULL, 'V'},    {"seed", required_argument, NULL, 'S'},
        {"no-shuffle", no_argument, NULL, 'N'},       {"x-val", required_argument, NULL, 'a'},
        {"y-val", required_argument, NULL, 'c'},      {"momentum", required_argument, NULL, 'M'},
        {"id", required_argument, NULL, 'I'},         {"timeout-ms", required_argument, NULL, 't'},
        {"topic", required_argument, NULL, 'T'},      {"reply-topic", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},             {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL, *brokers = NULL, *model = NULL, *xp = NULL, *yp = NULL, *loss = NULL;
    const char *optname = NULL, *init = NULL, *sched = NULL, *xvp = NULL, *yvp = NULL, *id_arg = NULL;
    const char *topic = "quern.jobs", *reply_topic = "quern.results";
    const char *props[MAX_X];
    int nprops = 0, ret = 1;
    double lr = 0, momentum = -1;
    int64_t epochs = 0, bs = 0, version = 0, seed = 0, timeout_ms = 60000;
    bool shuffle = true;
    qn_matrix mx = {0}, my = {0}, mxv = {0}, myv = {0};
    qn_buf msg = {0};
    qn_train_spec sp;
    memset(&sp, 0, sizeof sp);
    qn_sched_defaults(QN_SCHED_CONSTANT, &sp.sched);

    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "hX:", opts, NULL)) != -1) {
        switch (ch) {
        case 'z': endpoint = optarg; break;
        case 'k': brokers = optarg; break;
        case 'm': model = optarg; break;
        case 'x': xp = optarg; break;
        case 'y': yp = optarg; break;
        case 'L': loss = optarg; break;
        case 'O': optname = optarg; break;
        case 'l': lr = strtod(optarg, NULL); break;
        case 'M': momentum = strtod(optarg, NULL); break;
        case 'e': if (!qn_cli_parse_i64(optarg, 1, INT64_MAX, &epochs)) goto usage; break;
        case 'b': if (!qn_cli_parse_i64(optarg, 1, INT64_MAX, &bs)) goto usage; break;
        case 'V': if (!qn_cli_parse_i64(optarg, 1, INT64_MAX, &version)) goto usage; break;
        case 'S': if (!qn_cli_parse_i64(optarg, INT64_MIN, INT64_MAX, &seed)) goto usage; break;
        case 't': if (!qn_cli_parse_i64(optarg, 1, INT64_MAX, &timeout_ms)) goto usage; break;
        case 'i': init = optarg; break;
        case 's': sched = optarg; break;
        case 'N': shuffle = false; break;
        case 'a': xvp = optarg; break;
        case 'c': yvp = optarg; break;
        case 'I': id_arg = optarg; break;
        case 'T': topic = optarg; break;
        case 'R': reply_topic = optarg; break;
        case 'X':
            if (nprops == MAX_X) goto usage;
            props[nprops++] = optarg;
            break;
        case 'h': train_help(stdout); return 0;
        default: goto usage;
        }
    }
    if ((!endpoint) == (!brokers) || !model || !xp || !yp || !loss || !optname || epochs < 1 || bs < 1 ||
        !(lr > 0) || (!xvp) != (!yvp)) {
        fprintf(stderr, "quern train: needs --zmq or --kafka, --model, --x, --y, --loss, --optimizer, --lr > 0, "
                        "--epochs, --batch-size (and --x-val with --y-val)\n");
        goto usage;
    }
    if (!strcmp(loss, "mse")) sp.loss = QN_LOSS_MSE;
    else if (!strcmp(loss, "cross_entropy")) sp.loss = QN_LOSS_CROSS_ENTROPY;
    else goto usage;
    if (!strcmp(optname, "sgd")) qn_opt_defaults(QN_OPT_SGD, &sp.opt);
    else if (!strcmp(optname, "adam")) qn_opt_defaults(QN_OPT_ADAM, &sp.opt);
    else if (!strcmp(optname, "rmsprop")) qn_opt_defaults(QN_OPT_RMSPROP, &sp.opt);
    else goto usage;
    sp.opt.lr = lr;
    if (momentum >= 0) sp.opt.momentum = momentum;
    if (init && parse_init(init, &sp) != 0) {
        fprintf(stderr, "quern train: --init wants UNITS:ACTIVATION[,UNITS:ACTIVATION...]\n");
        goto usage;
    }
    if (sched && parse_schedule(sched, &sp.sched) != 0) {
        fprintf(stderr, "quern train: bad --schedule '%s'\n", sched);
        goto usage;
    }
    if (read_matrix("--x", xp, &mx) || read_matrix("--y", yp, &my)) goto out;
    if (xvp && (read_matrix("--x-val", xvp, &mxv) || read_matrix("--y-val", yvp, &myv))) goto out;
    if (my.rows == 1 && my.cols == mx.rows && mx.rows > 1) { /* a 1-D label vector */
        my.rows = my.cols;
        my.cols = 1;
    }
    if (myv.rows == 1 && myv.cols == mxv.rows && mxv.rows > 1) {
        myv.rows = myv.cols;
        myv.cols = 1;
    }
    sp.x = mx.data; sp.rows = mx.rows; sp.x_cols = mx.cols;
    sp.y = my.data; sp.y_cols = my.cols;
    if (xvp) {
        sp.xv = mxv.data; sp.val_rows = mxv.rows; sp.xv_cols = mxv.cols;
        sp.yv = myv.data; sp.yv_cols = myv.cols;
    }
    sp.init_in = mx.cols;
    sp.init_seed = (uint64_t)seed;
    sp.epochs = epochs;
    sp.batch_size = bs;
    sp.shuffle = shuffle;
    sp.seed = (uint64_t)seed;
    char idbuf[64];
    if (!id_arg) {
        snprintf(idbuf, sizeof idbuf, "train-%d-%" PRIu64, (int)getpid(), qn_now_ns());
        id_arg = idbuf;
    }
    int rc = qn_job_encode_train(id_arg, 0, model, version, &sp, &msg);
    if (rc) {
        fprintf(stderr, "quern train: cannot encode the job: %s\n", qn_strerror(rc));
        goto out;
    }
    tstate s = {.id_str = id_arg, .tty = isatty(STDOUT_FILENO), .rows = sp.rows};
    if (endpoint) {
        if (zmq_train(endpoint, &msg, timeout_ms, &s)) goto out;
    } else {
        char err[768];
        qn_kafka_call call = {.brokers = brokers, .topic = topic, .reply_topic = reply_topic, .key = id_arg,
                              .value = msg.data, .len = msg.len, .props = props, .nprops = nprops,
                              .timeout_ms = timeout_ms};
        rc = qn_kafka_call_run(&call, take, &s, err, sizeof err);
        if (rc) {
            fprintf(stderr, "quern train: kafka: %s\n", err[0] ? err : qn_strerror(rc));
            goto out;
        }
    }
    if (s.tty) fputc('\n', stdout);
    if (s.decode_rc || !s.done) {
        fprintf(stderr, "quern train: the reply is not a result\n");
        goto out;
    }
    qn_result_view *v = &s.final;
    if (v->status != QN_STATUS_OK) {
        fprintf(stderr, "quern train: %s: %s: %s\n", qn_status_name(v->status), qn_code_name(v->code), v->message);
        free(v->outputs);
        goto out;
    }
    printf("model %s version %" PRId64 "%s\n", v->model, v->version, v->train.repeated ? " (already trained)" : "");
    printf("metrics: loss %.6f", v->train.loss);
    if (isfinite(v->train.accuracy)) printf(" accuracy %.4f", v->train.accuracy);
    if (isfinite(v->train.val_loss)) printf(" val_loss %.6f", v->train.val_loss);
    if (isfinite(v->train.val_accuracy)) printf(" val_accuracy %.4f", v->train.val_accuracy);
    printf(" epochs %" PRId64 " steps %" PRId64 "%s\n", v->train.epoch, v->train.step,
           v->train.stopped_early ? " (stopped early)" : "");
    free(v->outputs);
    ret = 0;
out:
    qn_matrix_free(&mx);
    qn_matrix_free(&my);
    qn_matrix_free(&mxv);
    qn_matrix_free(&myv);
    qn_buf_free(&msg);
    return ret;
usage:
    train_help(stderr);
    ret = 2;
    goto out;
}

QN_CLI_COMMAND(train, "train", "train (--zmq ENDPOINT | --kafka LIST) --model NAME --x X --y Y --loss L "
               "--optimizer O --lr F --epochs N --batch-size N [--init ...] [--schedule ...]", train_run)
