/* test_core.c: the core pipeline (admit -> batcher -> executor -> complete)
 * with the real registry and CPU backend over a model written to a temp
 * repository, and a completion callback standing in for a transport. Checks
 * that every job gets exactly one final answer, with the right code, on both
 * the executor path and the direct path, and that they agree bit for bit. */
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>

#include "backend.h"
#include "core.h"
#include "error.h"
#include "qn_test.h"
#include "registry.h"
#include "safetensors.h"
#include "tensor.h"

#define IN 8
#define HID 16
#define OUT 3

static float g_w1[HID * IN], g_b1[HID], g_w2[OUT * HID], g_b2[OUT];

static void write_model(const char *repo, const char *name, int version)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/%s", repo, name);
    mkdir(dir, 0777);
    snprintf(dir, sizeof dir, "%s/%s/%d", repo, name, version);
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    qn_st_tensor t[4] = {
        {.name = "w1", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {HID, IN}, .data = g_w1, .nbytes = sizeof g_w1},
        {.name = "b1", .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {HID}, .data = g_b1, .nbytes = sizeof g_b1},
        {.name = "w2", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {OUT, HID}, .data = g_w2, .nbytes = sizeof g_w2},
        {.name = "b2", .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {OUT}, .data = g_b2, .nbytes = sizeof g_b2},
    };
    const char *meta[] = {"format", "quern.mlp.v1", "layers",
        "[{\"type\":\"dense\",\"weight\":\"w1\",\"bias\":\"b1\",\"activation\":\"tanh\"},"
        "{\"type\":\"dense\",\"weight\":\"w2\",\"bias\":\"b2\",\"activation\":\"softmax\"}]"};
    char err[256];
    CHECK_EQ_INT(qn_st_write(path, t, 4, meta, 2, err, sizeof err), 0);
}

static void reference(const float *x, float *y)
{
    double h[HID], o[OUT], mx = -1e300, sum = 0;
    for (int j = 0; j < HID; j++) {
        double a = g_b1[j];
        for (int k = 0; k < IN; k++) a += (double)g_w1[j * IN + k] * x[k];
        h[j] = tanh(a);
    }
    for (int j = 0; j < OUT; j++) {
        double a = g_b2[j];
        for (int k = 0; k < HID; k++) a += (double)g_w2[j * HID + k] * h[k];
        o[j] = a;
        if (a > mx) mx = a;
    }
    for (int j = 0; j < OUT; j++) sum += (o[j] = exp(o[j] - mx));
    for (int j = 0; j < OUT; j++) y[j] = (float)(o[j] / sum);
}

/* What a transport would keep per job: the answer. */
typedef struct answer {
    atomic_int calls;
    qn_status status;
    qn_code code;
    int64_t version, rows, cols;
    char msg[256];
    float out[64 * OUT];
} answer;

static void on_complete(qn_job *job, const qn_result *res)
{
    answer *a = job->origin.data;
    if (res->type != QN_RESULT_FINAL) return;
    atomic_fetch_add(&a->calls, 1);
    a->status = res->status;
    a->code = res->code;
    a->version = res->version;
    a->rows = res->rows;
    a->cols = res->cols;
    snprintf(a->msg, sizeof a->msg, "%s", res->message ? res->message : "");
    if (res->status == QN_STATUS_OK && res->rows * res->cols <= 64 * OUT)
        memcpy(a->out, res->outputs, (size_t)(res->rows * res->cols) * sizeof(float));
}

static qn_job *mkjob(const char *model, int64_t version, int64_t rows, int64_t cols, float seed,
                     answer *a)
{
    qn_job *j = qn_job_new(rows, cols);
    j->type = QN_JOB_PREDICT;
    j->id.kind = QN_ID_INT;
    j->id.i = (int64_t)seed;
    snprintf(j->model, sizeof j->model, "%s", model);
    j->version = version;
    for (int64_t i = 0; i < rows * cols; i++) j->inputs[i] = sinf(seed + (float)i * 0.37f);
    j->origin = (qn_origin){.complete = on_complete, .data = a};
    return j;
}

typedef struct fixture {
    char *repo;
    qn_backend *be;
    qn_registry *reg;
    qn_core *core;
} fixture;

static void setup(fixture *f, qn_core_opts *o)
{
    f->repo = qn_test_tmpdir("core");
    write_model(f->repo, "m", 1);
    write_model(f->repo, "m", 2);
    CHECK_EQ_INT(qn_backend_cpu_create(1, &f->be), 0);
    CHECK_EQ_INT(qn_registry_open(f->repo, f->be, &f->reg), 0);
    CHECK_EQ_INT(qn_core_create(o, f->reg, f->be, &f->core), 0);
}

static void teardown(fixture *f)
{
    qn_core_destroy(&f->core);
    qn_registry_close(&f->reg);
    qn_backend_destroy(&f->be);
    free(f->repo);
}

static void wait_calls(answer *a, int n)
{
    for (int i = 0; i < 5000 && atomic_load(&a->calls) < n; i++) usleep(1000);
}

static void check_ok(answer *a, int64_t rows, float seed)
{
    CHECK_EQ_INT(atomic_load(&a->calls), 1);
    CHECK_EQ_INT(a->status, QN_STATUS_OK);
    CHECK_EQ_INT(a->rows, rows);
    CHECK_EQ_INT(a->cols, OUT);
    for (int64_t r = 0; r < rows; r++) {
        float x[IN], y[OUT];
        for (int k = 0; k < IN; k++) x[k] = sinf(seed + (float)(r * IN + k) * 0.37f);
        reference(x, y);
        for (int k = 0; k < OUT; k++) CHECK_NEAR(a->out[r * OUT + k], y[k], 1e-5);
    }
}

TEST(executor_path_ok_and_errors)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    o.direct_max_flops = 0; /* everything through the executor */
    o.batch.queue_limit_rows = 100;
    fixture f;
    setup(&f, &o);
    answer a[8];
    memset(a, 0, sizeof a);
    qn_core_submit(f.core, mkjob("m", 0, 5, IN, 1, &a[0]));
    qn_core_submit(f.core, mkjob("m", 1, 2, IN, 2, &a[1]));
    qn_core_submit(f.core, mkjob("nope", 0, 1, IN, 3, &a[2]));
    qn_core_submit(f.core, mkjob("m", 7, 1, IN, 4, &a[3]));
    qn_core_submit(f.core, mkjob("m", 0, 1, IN + 1, 5, &a[4]));
    qn_core_submit(f.core, mkjob("m", 0, 101, IN, 6, &a[5]));
    qn_job *late = mkjob("m", 0, 1, IN, 7, &a[6]);
    late->deadline_ms = qn_wall_ms() - 5;
    qn_core_submit(f.core, late);
    qn_job *train = mkjob("m", 0, 1, IN, 8, &a[7]);
    train->type = QN_JOB_TRAIN;
    qn_core_submit(f.core, train);
    for (int i = 0; i < 8; i++) wait_calls(&a[i], 1);
    check_ok(&a[0], 5, 1);
    CHECK_EQ_INT(a[0].version, 2);
    check_ok(&a[1], 2, 2);
    CHECK_EQ_INT(a[1].version, 1);
    CHECK_EQ_INT(a[2].code, QN_CODE_UNKNOWN_MODEL);
    CHECK_EQ_INT(a[3].code, QN_CODE_UNKNOWN_VERSION);
    CHECK_EQ_INT(a[4].code, QN_CODE_SHAPE_MISMATCH);
    /* More rows than the whole queue limit: retrying never helps, so it is
     * too_large, not overloaded (issue 9 item 4). */
    CHECK_EQ_INT(a[5].status, QN_STATUS_ERROR);
    CHECK_EQ_INT(a[5].code, QN_CODE_TOO_LARGE);
    CHECK_EQ_INT(a[6].status, QN_STATUS_EXPIRED);
    CHECK_EQ_INT(a[7].code, QN_CODE_BAD_JOB);
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(atomic_load(&a[i].calls), 1);
    CHECK_EQ_INT(qn_core_inflight(f.core), 0);
    teardown(&f);
}

TEST(bytes_that_do_not_decode)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    fixture f;
    setup(&f, &o);
    answer a;
    memset(&a, 0, sizeof a);
    qn_origin org = {.complete = on_complete, .data = &a};
    qn_core_submit_bytes(f.core, "\xc1garbage", 8, &org);
    CHECK_EQ_INT(atomic_load(&a.calls), 1); /* answered synchronously */
    CHECK_EQ_INT(a.code, QN_CODE_BAD_MESSAGE);
    teardown(&f);
}

TEST(direct_path_matches_executor)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    fixture f;
    setup(&f, &o);
    qn_core_local *l = NULL;
    CHECK_EQ_INT(qn_core_local_create(f.core, &l), 0);
    static answer d[40], e[40];
    memset(d, 0, sizeof d);
    memset(e, 0, sizeof e);
    qn_buf buf = {0};
    for (int i = 0; i < 40; i++) {
        /* through bytes, as a transport does */
        float x[3 * IN];
        for (int k = 0; k < 3 * IN; k++) x[k] = sinf((float)i + (float)k * 0.37f);
        qn_buf_reset(&buf);
        CHECK_EQ_INT(qn_job_encode_predict(NULL, i, "m", 0, x, 3, IN, &buf), 0);
        qn_origin od = {.complete = on_complete, .data = &d[i]};
        qn_core_submit_bytes_local(f.core, l, buf.data, buf.len, &od);
        qn_core_submit(f.core, mkjob("m", 0, 3, IN, (float)i, &e[i]));
    }
    /* staged jobs are answered only at flush (or when a batch fills) */
    qn_core_local_flush(f.core, l);
    for (int i = 0; i < 40; i++) {
        wait_calls(&e[i], 1);
        check_ok(&d[i], 3, (float)i);
        check_ok(&e[i], 3, (float)i);
        CHECK(memcmp(d[i].out, e[i].out, 3 * OUT * sizeof(float)) == 0);
    }
    qn_buf_free(&buf);
    qn_core_local_destroy(f.core, &l);
    CHECK(l == NULL);
    teardown(&f);
}

TEST(stop_answers_everything_queued)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    o.batch.max_delay_us = 10000000; /* 10 s: only stop can release them */
    o.batch.max_batch_rows = 1000;
    fixture f;
    setup(&f, &o);
    static answer a[100];
    memset(a, 0, sizeof a);
    for (int i = 0; i < 100; i++) qn_core_submit(f.core, mkjob("m", 0, 1, IN, (float)i, &a[i]));
    CHECK_EQ_INT(qn_core_inflight(f.core), 100);
    uint64_t t0 = qn_now_ns();
    qn_core_stop(f.core);
    CHECK(qn_now_ns() - t0 < 2000000000u);
    for (int i = 0; i < 100; i++) check_ok(&a[i], 1, (float)i);
    CHECK_EQ_INT(qn_core_inflight(f.core), 0);
    answer after;
    memset(&after, 0, sizeof after);
    qn_core_submit(f.core, mkjob("m", 0, 1, IN, 1, &after));
    CHECK_EQ_INT(after.status, QN_STATUS_REJECTED);
    teardown(&f);
}

TEST(too_large_on_direct_path_names_the_limit)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    o.batch.queue_limit_rows = 64;
    fixture f;
    setup(&f, &o);
    qn_core_local *l = NULL;
    CHECK_EQ_INT(qn_core_local_create(f.core, &l), 0);
    static answer a;
    memset(&a, 0, sizeof a);
    qn_core_submit_local(f.core, l, mkjob("m", 0, 65, IN, 1, &a));
    qn_core_local_flush(f.core, l);
    wait_calls(&a, 1);
    CHECK_EQ_INT(atomic_load(&a.calls), 1);
    CHECK_EQ_INT(a.status, QN_STATUS_ERROR);
    CHECK_EQ_INT(a.code, QN_CODE_TOO_LARGE);
    CHECK(strstr(a.msg, "65 rows") && strstr(a.msg, "queue limit of 64 rows"));
    qn_core_local_destroy(f.core, &l);
    teardown(&f);
}

static int match_data(const qn_job *job, void *ud) { return job->origin.data == ud; }

TEST(cancel_answers_queued_matches_only)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    o.batch.max_delay_us = 10000000; /* 10 s: nothing runs before cancel or stop */
    o.batch.max_batch_rows = 1000;
    o.direct_max_flops = 0;
    fixture f;
    setup(&f, &o);
    static answer gone, kept;
    memset(&gone, 0, sizeof gone);
    memset(&kept, 0, sizeof kept);
    for (int i = 0; i < 30; i++) {
        qn_core_submit(f.core, mkjob("m", 0, 1, IN, (float)i, &gone));
        qn_core_submit(f.core, mkjob("m", 0, 1, IN, (float)i, &kept));
    }
    CHECK_EQ_INT(qn_core_inflight(f.core), 60);
    CHECK_EQ_INT(qn_core_cancel(f.core, match_data, &gone, QN_STATUS_REJECTED, QN_CODE_OVERLOADED,
                                "client went away"), 30);
    CHECK_EQ_INT(atomic_load(&gone.calls), 30); /* answered before cancel returned */
    CHECK_EQ_INT(gone.status, QN_STATUS_REJECTED);
    CHECK_EQ_INT(atomic_load(&kept.calls), 0);
    CHECK_EQ_INT(qn_core_inflight(f.core), 30);
    CHECK_EQ_INT(qn_core_queued_rows(f.core), 30);
    CHECK_EQ_INT(qn_core_cancel(f.core, match_data, &gone, QN_STATUS_REJECTED, QN_CODE_OVERLOADED,
                                "again"), 0);
    qn_core_stop(f.core);
    CHECK_EQ_INT(atomic_load(&kept.calls), 30);
    CHECK_EQ_INT(kept.status, QN_STATUS_OK);
    CHECK_EQ_INT(atomic_load(&gone.calls), 30);
    CHECK_EQ_INT(qn_core_inflight(f.core), 0);
    teardown(&f);
}

/* A "models" job through the bytes path: answered at once (no compute, no
 * queue) with every loaded version and its widths, in the encoded result a
 * transport would send; naming a model filters, an unknown name is
 * unknown_model. */
typedef struct models_answer {
    int calls;
    qn_buf body;
} models_answer;

static void on_models(qn_job *job, const qn_result *res)
{
    models_answer *a = job->origin.data;
    a->calls++;
    qn_buf_reset(&a->body);
    CHECK_EQ_INT(qn_result_encode(res, &a->body), 0);
}

static const msgpack_object *mp_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            !memcmp(k->via.str.ptr, key, k->via.str.size))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static int64_t mp_int(const msgpack_object *o) { return o ? o->via.i64 : -1; }

static int mp_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           !memcmp(o->via.str.ptr, s, o->via.str.size);
}

TEST(models_job_lists_versions)
{
    qn_core_opts o;
    qn_core_opts_default(&o);
    fixture f;
    setup(&f, &o);
    models_answer a = {0};
    qn_origin org = {.complete = on_models, .data = &a};
    /* {"v":1,"id":"q","type":"models"} */
    static const char job[] = "\x83\xa1v\x01\xa2id\xa1q\xa4type\xa6models";
    qn_core_submit_bytes(f.core, job, sizeof job - 1, &org);
    CHECK_EQ_INT(a.calls, 1); /* synchronously, at admission */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    CHECK_EQ_INT(msgpack_unpack_next(&u, a.body.data, a.body.len, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *r = &u.data;
    CHECK(mp_is(mp_get(r, "status"), "ok"));
    CHECK(mp_is(mp_get(r, "id"), "q"));
    CHECK(mp_get(r, "outputs") == NULL);
    const msgpack_object *ms = mp_get(r, "models");
    CHECK(ms && ms->type == MSGPACK_OBJECT_ARRAY && ms->via.array.size == 1);
    if (ms && ms->type == MSGPACK_OBJECT_ARRAY && ms->via.array.size == 1) {
        const msgpack_object *m = &ms->via.array.ptr[0];
        CHECK(mp_is(mp_get(m, "name"), "m"));
        CHECK_EQ_INT(mp_int(mp_get(m, "latest")), 2);
        const msgpack_object *vs = mp_get(m, "versions");
        CHECK(vs && vs->type == MSGPACK_OBJECT_ARRAY && vs->via.array.size == 2);
        for (uint32_t i = 0; vs && vs->type == MSGPACK_OBJECT_ARRAY && i < vs->via.array.size; i++) {
            const msgpack_object *v = &vs->via.array.ptr[i];
            CHECK_EQ_INT(mp_int(mp_get(v, "version")), i + 1);
            CHECK_EQ_INT(mp_int(mp_get(v, "input_dim")), IN);
            CHECK_EQ_INT(mp_int(mp_get(v, "output_dim")), OUT);
            CHECK(mp_is(mp_get(v, "repr"), "f32"));
        }
    }
    msgpack_unpacked_destroy(&u);

    /* naming a model that is not there */
    static const char job2[] = "\x84\xa1v\x01\xa2id\x07\xa4type\xa6models\xa5model\xa4nope";
    qn_core_submit_bytes(f.core, job2, sizeof job2 - 1, &org);
    CHECK_EQ_INT(a.calls, 2);
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(a.body.data, a.body.len, &v), 0);
    CHECK_EQ_INT(v.status, QN_STATUS_ERROR);
    CHECK_EQ_INT(v.code, QN_CODE_UNKNOWN_MODEL);
    CHECK_EQ_INT(v.id_int, 7);
    free(v.outputs);
    CHECK_EQ_INT(qn_core_inflight(f.core), 0);
    qn_buf_free(&a.body);
    teardown(&f);
}

int main(void)
{
    for (int i = 0; i < HID * IN; i++) g_w1[i] = sinf((float)i) * 0.5f;
    for (int i = 0; i < HID; i++) g_b1[i] = cosf((float)i) * 0.1f;
    for (int i = 0; i < OUT * HID; i++) g_w2[i] = cosf((float)i * 1.3f);
    for (int i = 0; i < OUT; i++) g_b2[i] = (float)i * 0.05f;
    RUN(executor_path_ok_and_errors);
    RUN(bytes_that_do_not_decode);
    RUN(direct_path_matches_executor);
    RUN(stop_answers_everything_queued);
    RUN(too_large_on_direct_path_names_the_limit);
    RUN(cancel_answers_queued_matches_only);
    RUN(models_job_lists_versions);
    return qn_test_done();
}
