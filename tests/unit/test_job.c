/* test_job.c: the msgpack job/result codec (lib/job.c).
 *
 * Messages are written in a small JSON-ish notation (see J below) and packed
 * with msgpack-c, so each case reads as the message it sends. Every error path
 * checks its return code, its contract code, the field named in the message
 * and whether the id came back for the error result. Run under
 * -DQN_SANITIZE=address,undefined too: truncation and random-byte loops are
 * there to find overreads and leaks. */
#include "error.h"
#include "job.h"
#include "qn_test.h"

#include <ctype.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdint.h>

/* ---- J: JSON-ish text -> msgpack ----
 *   {k: v, 'k': v, 3: v}   map (keys: identifiers, 'strings' or numbers)
 *   [a, b]                 array
 *   'text'                 str ('\0' and '\'' escapes)
 *   12  -3  u18446744073709551615   ints (u: uint64)
 *   1.5  1e10              float64;  f1.5: float32
 *   true false nil
 *   b(N)                   bin of N bytes: f32 values 0.5*i, little-endian
 *   x(N)                   ext type 7 with N bytes
 *   s(N)                   str of N 'a's */
typedef struct jp { const char *p; } jp;

static int buf_cb(void *d, const char *p, size_t n) { return qn_buf_append(d, p, n); }

static void jskip(jp *j) { while (isspace((unsigned char)*j->p)) j->p++; }
static void jdie(jp *j, const char *what)
{
    fprintf(stderr, "J syntax error (%s) at: %s\n", what, j->p);
    abort();
}
static size_t jnum_arg(jp *j)
{
    if (*j->p != '(') jdie(j, "(");
    char *e;
    size_t n = strtoull(j->p + 1, &e, 10);
    if (*e != ')') jdie(j, ")");
    j->p = e + 1;
    return n;
}

static void jvalue(jp *j, msgpack_packer *pk);

/* Packs a container: children go to a scratch buffer first so the count is
 * known when the header is written. */
static void jcontainer(jp *j, msgpack_packer *pk, int is_map)
{
    qn_buf kids = {0};
    msgpack_packer kp;
    msgpack_packer_init(&kp, &kids, buf_cb);
    char close = is_map ? '}' : ']';
    uint32_t n = 0;
    j->p++;
    jskip(j);
    while (*j->p != close) {
        if (is_map) {
            jskip(j);
            if (isalpha((unsigned char)*j->p) || *j->p == '_') {
                const char *s = j->p;
                while (isalnum((unsigned char)*j->p) || *j->p == '_') j->p++;
                msgpack_pack_str_with_body(&kp, s, (size_t)(j->p - s));
            } else {
                jvalue(j, &kp);
            }
            jskip(j);
            if (*j->p != ':') jdie(j, ":");
            j->p++;
        }
        jvalue(j, &kp);
        n++;
        jskip(j);
        if (*j->p == ',') { j->p++; jskip(j); }
        else if (*j->p != close) jdie(j, "separator");
    }
    j->p++;
    if (is_map) msgpack_pack_map(pk, n);
    else msgpack_pack_array(pk, n);
    pk->callback(pk->data, kids.data, kids.len);
    qn_buf_free(&kids);
}

static void jvalue(jp *j, msgpack_packer *pk)
{
    jskip(j);
    char c = *j->p;
    if (c == '{' || c == '[') { jcontainer(j, pk, c == '{'); return; }
    if (c == '\'') {
        char tmp[1024];
        size_t n = 0;
        j->p++;
        while (*j->p != '\'') {
            if (!*j->p) jdie(j, "unterminated str");
            if (*j->p == '\\') {
                j->p++;
                tmp[n++] = *j->p == '0' ? '\0' : *j->p;
            } else {
                tmp[n++] = *j->p;
            }
            j->p++;
        }
        j->p++;
        msgpack_pack_str_with_body(pk, tmp, n);
        return;
    }
    if (strncmp(j->p, "true", 4) == 0) { j->p += 4; msgpack_pack_true(pk); return; }
    if (strncmp(j->p, "false", 5) == 0) { j->p += 5; msgpack_pack_false(pk); return; }
    if (strncmp(j->p, "nil", 3) == 0) { j->p += 3; msgpack_pack_nil(pk); return; }
    if (c == 'b' && j->p[1] == '(') {
        j->p++;
        size_t n = jnum_arg(j);
        unsigned char *b = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++) {
            float f = 0.5f * (float)(i / 4);
            unsigned char fb[4];
            memcpy(fb, &f, 4);
            b[i] = fb[i % 4];
        }
        msgpack_pack_bin_with_body(pk, b, n);
        free(b);
        return;
    }
    if ((c == 'x' || c == 's') && j->p[1] == '(') {
        j->p++;
        size_t n = jnum_arg(j);
        char *b = malloc(n ? n : 1);
        memset(b, 'a', n);
        if (c == 'x') msgpack_pack_ext_with_body(pk, b, n, 7);
        else msgpack_pack_str_with_body(pk, b, n);
        free(b);
        return;
    }
    if (c == 'u') {
        char *e;
        unsigned long long u = strtoull(j->p + 1, &e, 10);
        j->p = e;
        msgpack_pack_uint64(pk, u);
        return;
    }
    if (c == 'f') {
        char *e;
        float f = strtof(j->p + 1, &e);
        j->p = e;
        msgpack_pack_float(pk, f);
        return;
    }
    if (c == '-' || isdigit((unsigned char)c)) {
        const char *s = j->p;
        size_t k = strspn(s, "-+0123456789.eE");
        int is_float = memchr(s, '.', k) || memchr(s, 'e', k) || memchr(s, 'E', k);
        char *e;
        if (is_float) msgpack_pack_double(pk, strtod(s, &e));
        else if (c == '-') msgpack_pack_int64(pk, strtoll(s, &e, 10));
        else msgpack_pack_uint64(pk, strtoull(s, &e, 10));
        j->p = e;
        return;
    }
    jdie(j, "value");
}

/* Packs text into a fresh buffer (caller frees with qn_buf_free). */
static qn_buf J(const char *text)
{
    qn_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_cb);
    jp j = {text};
    jvalue(&j, &pk);
    jskip(&j);
    if (*j.p) jdie(&j, "trailing text");
    return b;
}

/* Decodes from an exactly-sized heap copy, so ASan sees any overread. */
static int decode_exact(const void *p, size_t n, const qn_job_limits *lim, qn_job **out, qn_decode_error *err)
{
    void *copy = malloc(n ? n : 1);
    if (n) memcpy(copy, p, n);
    int rc = qn_job_decode(copy, n, lim, out, err);
    free(copy);
    return rc;
}

#define TENSOR_1x2 "{dtype: 'f32', shape: [1, 2], data: b(8)}"

/* ---- round trips ---- */

TEST(roundtrip_str_id)
{
    float in[6] = {1, -2, 3.5f, 0, 1e-30f, -7};
    qn_buf b = {0};
    CHECK_EQ_INT(qn_job_encode_predict("req-1", 0, "mnist_mlp", 3, in, 2, 3, &b), 0);
    qn_job *job = NULL;
    qn_decode_error err;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), 0);
    CHECK(job != NULL);
    if (job) {
        CHECK_EQ_INT(err.code, QN_CODE_NONE);
        CHECK_EQ_INT(job->type, QN_JOB_PREDICT);
        CHECK_EQ_INT(job->id.kind, QN_ID_STR);
        CHECK_STR(job->id.s, "req-1");
        CHECK_EQ_INT(job->id.len, 5);
        CHECK_STR(job->model, "mnist_mlp");
        CHECK_EQ_INT(job->version, 3);
        CHECK_EQ_INT(job->rows, 2);
        CHECK_EQ_INT(job->cols, 3);
        CHECK(job->inputs && memcmp(job->inputs, in, sizeof in) == 0);
        CHECK(job->reply_to == NULL);
        CHECK_EQ_INT(job->deadline_ms, 0);
        CHECK_EQ_INT(job->priority, 0);
        CHECK(job->cache);
        CHECK(job->train == NULL);
        CHECK(job->served_by == NULL);
    }
    qn_job_free(&job);
    CHECK(job == NULL);
    qn_job_free(&job); /* NULL-safe */
    qn_job_free(NULL);
    qn_buf_free(&b);
}

TEST(roundtrip_int_ids)
{
    float in[2] = {4, 5};
    const int64_t ids[] = {0, 42, -5, INT64_MIN, INT64_MAX};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        qn_buf b = {0};
        CHECK_EQ_INT(qn_job_encode_predict(NULL, ids[i], "m", 0, in, 1, 2, &b), 0);
        qn_job *job = NULL;
        CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
        if (job) {
            CHECK_EQ_INT(job->id.kind, QN_ID_INT);
            CHECK(job->id.i == ids[i]);
            CHECK_EQ_INT(job->version, 0);
        }
        qn_job_free(&job);
        qn_buf_free(&b);
    }
}

/* reply_to rides along (the CLI's Kafka path sets it); NULL leaves it out,
 * an empty one is refused rather than sent as a job the worker would reject. */
TEST(encode_predict_to_reply_to)
{
    float in[2] = {4, 5};
    qn_buf b = {0};
    CHECK_EQ_INT(qn_job_encode_predict_to("k-1", 0, "m", 2, in, 1, 2, "quern.predict.77", &b), 0);
    qn_job *job = NULL;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    if (job) {
        CHECK_STR(job->id.s, "k-1");
        CHECK_EQ_INT(job->version, 2);
        CHECK(job->reply_to != NULL);
        if (job->reply_to) CHECK_STR(job->reply_to, "quern.predict.77");
        CHECK(memcmp(job->inputs, in, sizeof in) == 0);
    }
    qn_job_free(&job);
    qn_buf_reset(&b);
    CHECK_EQ_INT(qn_job_encode_predict_to(NULL, 9, "m", 0, in, 1, 2, NULL, &b), 0);
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    if (job) CHECK(job->reply_to == NULL && job->id.kind == QN_ID_INT && job->id.i == 9);
    qn_job_free(&job);
    qn_buf_reset(&b);
    CHECK_EQ_INT(qn_job_encode_predict_to(NULL, 9, "m", 0, in, 1, 2, "", &b), QN_EINVAL);
    CHECK_EQ_INT((int)b.len, 0);
    qn_buf_free(&b);
}

TEST(big_uint_id_round_trip)
{
    qn_buf b = J("{v: 1, id: u18446744073709551615, type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}");
    qn_job *job = NULL;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    CHECK(job && job->id.kind == QN_ID_UINT && job->id.u == UINT64_MAX);
    /* and it comes back as the same uint in the result */
    if (job) {
        float o = 1;
        qn_result r = {.status = QN_STATUS_OK, .id = &job->id, .rows = 1, .cols = 1, .outputs = &o};
        qn_buf rb = {0};
        CHECK_EQ_INT(qn_result_encode(&r, &rb), 0);
        qn_result_view v;
        CHECK_EQ_INT(qn_result_decode(rb.data, rb.len, &v), 0);
        CHECK_EQ_INT(v.id_kind, QN_ID_UINT);
        CHECK((uint64_t)v.id_int == UINT64_MAX);
        free(v.outputs);
        qn_buf_free(&rb);
    }
    qn_job_free(&job);
    qn_buf_free(&b);
    /* 2^63 is the first uint that does not fit int64 */
    b = J("{v: 1, id: u9223372036854775808, type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    CHECK(job && job->id.kind == QN_ID_UINT && job->id.u == 9223372036854775808ull);
    qn_job_free(&job);
    qn_buf_free(&b);
}

TEST(all_optional_fields)
{
    qn_buf b = J("{zzz: {a: [1, 2, {b: x(3)}]}, v: 1, id: 'j', type: 'predict', model: 'A-z_0.9', version: 7,"
                 " inputs: " TENSOR_1x2 ", reply_to: 'results.team-a', deadline_ms: 1700000000123,"
                 " priority: 9, cache: false, 17: 'int key ignored', extra: nil}");
    qn_job *job = NULL;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    if (job) {
        CHECK_STR(job->model, "A-z_0.9");
        CHECK_EQ_INT(job->version, 7);
        CHECK_STR(job->reply_to, "results.team-a");
        CHECK_EQ_INT(job->deadline_ms, 1700000000123LL);
        CHECK_EQ_INT(job->priority, 9);
        CHECK(!job->cache);
        CHECK_EQ_INT(job->rows, 1);
        CHECK_EQ_INT(job->cols, 2);
        CHECK(job->inputs[0] == 0.0f && job->inputs[1] == 0.5f);
    }
    qn_job_free(&job);
    qn_buf_free(&b);

    /* nil means absent for optional fields */
    b = J("{v: 1, id: 'j', type: 'predict', model: 'm', inputs: " TENSOR_1x2
          ", version: nil, reply_to: nil, deadline_ms: nil, priority: nil, cache: nil}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    CHECK(job && job->version == 0 && !job->reply_to && job->deadline_ms == 0 && job->priority == 0 && job->cache);
    qn_job_free(&job);
    qn_buf_free(&b);

    /* bounds: 64-char model, priority INT32_MAX, 249-byte reply_to */
    char msg[1024];
    snprintf(msg, sizeof msg,
             "{v: 1, id: '', type: 'predict', model: s(64), inputs: " TENSOR_1x2
             ", priority: 2147483647, reply_to: s(249), cache: true}");
    b = J(msg);
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    if (job) {
        CHECK_EQ_INT(strlen(job->model), 64);
        CHECK_EQ_INT(job->priority, INT32_MAX);
        CHECK_EQ_INT(strlen(job->reply_to), 249);
        CHECK_EQ_INT(job->id.kind, QN_ID_STR);
        CHECK_EQ_INT(job->id.len, 0);
        CHECK_STR(job->id.s, "");
    }
    qn_job_free(&job);
    qn_buf_free(&b);
}

TEST(array_of_arrays_inputs)
{
    qn_buf b = J("{v: 1, id: 1, type: 'predict', model: 'm',"
                 " inputs: [[1, -2, 3.25], [f0.5, u4000000000, -1e10], [0, 0, 7]]}");
    qn_job *job = NULL;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    if (job) {
        CHECK_EQ_INT(job->rows, 3);
        CHECK_EQ_INT(job->cols, 3);
        const float want[9] = {1, -2, 3.25f, 0.5f, 4e9f, -1e10f, 0, 0, 7};
        for (int i = 0; i < 9; i++) CHECK(job->inputs[i] == want[i]);
    }
    qn_job_free(&job);
    qn_buf_free(&b);

    /* a flat array of numbers is one row */
    b = J("{v: 1, id: 1, type: 'predict', model: 'm', inputs: [1, 2.5, -3]}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    CHECK(job && job->rows == 1 && job->cols == 3 && job->inputs[1] == 2.5f && job->inputs[2] == -3.0f);
    qn_job_free(&job);
    qn_buf_free(&b);
}

TEST(one_d_shape_is_one_row)
{
    qn_buf b = J("{v: 1, id: 1, type: 'predict', model: 'm', inputs: {shape: [3], data: b(12), dtype: 'f32', note: 1}}");
    qn_job *job = NULL;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    CHECK(job && job->rows == 1 && job->cols == 3);
    if (job) CHECK(job->inputs[0] == 0.0f && job->inputs[1] == 0.5f && job->inputs[2] == 1.0f);
    qn_job_free(&job);
    qn_buf_free(&b);
}

TEST(train_job_common_fields)
{
    qn_buf b = J("{v: 1, id: 't1', type: 'train', model: 'new_model', version: 2, reply_to: 'r', priority: 3,"
                 " deadline_ms: 5, x: [[1]], y: [[2]], loss: 'mse', optimizer: {name: 'sgd', lr: 0.1},"
                 " epochs: 1, batch_size: 1}");
    qn_job *job = NULL;
    qn_decode_error err;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), 0);
    if (job) {
        CHECK_EQ_INT(job->type, QN_JOB_TRAIN);
        CHECK(job->train != NULL); /* the body: test_train.c checks it field by field */
        CHECK(job->inputs == NULL);
        CHECK_EQ_INT(job->rows, 0);
        CHECK_STR(job->model, "new_model");
        CHECK_EQ_INT(job->version, 2);
        CHECK_STR(job->reply_to, "r");
        CHECK_EQ_INT(job->priority, 3);
        CHECK_EQ_INT(job->deadline_ms, 5);
    }
    qn_job_free(&job);
    qn_buf_free(&b);
    /* common fields are still checked for train */
    b = J("{v: 1, id: 't1', type: 'train', model: 'a b'}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), QN_EFORMAT);
    CHECK_EQ_INT(err.code, QN_CODE_BAD_JOB);
    CHECK(strstr(err.message, "model") != NULL);
    qn_job_free(&job);
    qn_buf_free(&b);
}

/* ---- error paths ---- */

typedef struct err_case {
    const char *msg;
    qn_code code;
    int id_back;        /* the id is recovered into *out */
    const char *field;  /* substring of err.message */
} err_case;

#define BASE_OK "v: 1, id: 'j9', type: 'predict', model: 'm'"
static const err_case g_err_cases[] = {
    /* not a map / not msgpack */
    {"[1, 2]", QN_CODE_BAD_MESSAGE, 0, "not a map"},
    {"5", QN_CODE_BAD_MESSAGE, 0, "not a map"},
    {"'job'", QN_CODE_BAD_MESSAGE, 0, "not a map"},
    {"nil", QN_CODE_BAD_MESSAGE, 0, "not a map"},
    {"b(4)", QN_CODE_BAD_MESSAGE, 0, "not a map"},
    /* v */
    {"{id: 'j9', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "v:"},
    {"{v: 2, id: 'j9', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "v:"},
    {"{v: '1', id: 'j9', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "v:"},
    {"{v: 1.0, id: 'j9', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "v:"},
    {"{v: nil, id: 'j9', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "v:"},
    /* id */
    {"{v: 1, type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 0, "id:"},
    {"{v: 1, id: 1.5, type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 0, "id:"},
    {"{v: 1, id: [1], type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 0, "id:"},
    {"{v: 1, id: nil, type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 0, "id:"},
    {"{v: 1, id: b(3), type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 0, "id:"},
    {"{v: 1, id: 'a', id: 'b', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 0, "id: duplicate"},
    {"{v: 1, v: 1, id: 'j9', type: 'predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "v: duplicate"},
    /* type */
    {"{v: 1, id: 'j9', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "type:"},
    {"{v: 1, id: 'j9', type: 'score', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "type:"},
    {"{v: 1, id: 'j9', type: 'Predict', model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "type:"},
    {"{v: 1, id: 'j9', type: 1, model: 'm', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "type:"},
    /* model */
    {"{v: 1, id: 'j9', type: 'predict', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: 5, inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: '', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: 'a/b', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: 'a\\0b', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: s(65), inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: '..', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: '.', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{v: 1, id: 'j9', type: 'predict', model: 'caf\xc3\xa9', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "model:"},
    /* version */
    {"{" BASE_OK ", version: 0, inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "version:"},
    {"{" BASE_OK ", version: -1, inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "version:"},
    {"{" BASE_OK ", version: '3', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "version:"},
    {"{" BASE_OK ", version: 1.5, inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "version:"},
    {"{" BASE_OK ", version: u18446744073709551615, inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1,
     "version: 18446744073709551615 is out of range"},
    {"{" BASE_OK ", version: 0, inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "version: must be a positive int, not 0"},
    {"{" BASE_OK ", version: '3', inputs: " TENSOR_1x2 "}", QN_CODE_BAD_JOB, 1, "version: must be a positive int, not str"},
    /* inputs */
    {"{" BASE_OK "}", QN_CODE_BAD_JOB, 1, "inputs: missing"},
    {"{" BASE_OK ", inputs: nil}", QN_CODE_BAD_JOB, 1, "inputs:"},
    {"{" BASE_OK ", inputs: 5}", QN_CODE_BAD_JOB, 1, "inputs:"},
    {"{" BASE_OK ", inputs: b(8)}", QN_CODE_BAD_JOB, 1, "inputs:"},
    {"{" BASE_OK ", inputs: {shape: [1, 2], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.dtype"},
    {"{" BASE_OK ", inputs: {dtype: 'f64', shape: [1, 2], data: b(16)}}", QN_CODE_BAD_JOB, 1, "inputs.dtype"},
    {"{" BASE_OK ", inputs: {dtype: 'F32', shape: [1, 2], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.dtype"},
    {"{" BASE_OK ", inputs: {dtype: 32, shape: [1, 2], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.dtype"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 1, 2], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [0, 2], data: b(0)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [-1, 2], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1.0, 2], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: '12', data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 2]}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 2], data: 'abcdefgh'}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 2], data: [0, 0]}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 2], data: b(4)}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 2], data: b(12)}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [2, 1], data: b(7)}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1, 2], data: b(8), data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.data: duplicate"},
    /* shapes whose byte count overflows, or cannot fit any message */
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1099511627776, 1099511627776], data: b(8)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [4294967296, 4294967296], data: b(0)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [4611686018427387904, 1], data: b(0)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [u18446744073709551615, u18446744073709551615], data: b(4)}}", QN_CODE_BAD_JOB, 1, "inputs.shape"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1073741824, 4], data: b(0)}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1073741824], data: b(0)}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    {"{" BASE_OK ", inputs: {dtype: 'f32', shape: [1073741824, 1], data: b(4)}}", QN_CODE_BAD_JOB, 1, "inputs.data"},
    /* array form */
    {"{" BASE_OK ", inputs: []}", QN_CODE_BAD_JOB, 1, "inputs: empty"},
    {"{" BASE_OK ", inputs: [[]]}", QN_CODE_BAD_JOB, 1, "inputs[0]"},
    {"{" BASE_OK ", inputs: [[1, 2], [3]]}", QN_CODE_BAD_JOB, 1, "inputs[1]"},
    {"{" BASE_OK ", inputs: [[1, 2], [3, 4, 5]]}", QN_CODE_BAD_JOB, 1, "inputs[1]"},
    {"{" BASE_OK ", inputs: [[1, 'a']]}", QN_CODE_BAD_JOB, 1, "inputs[0][1]"},
    {"{" BASE_OK ", inputs: [[1, nil]]}", QN_CODE_BAD_JOB, 1, "inputs[0][1]"},
    {"{" BASE_OK ", inputs: [[1, true]]}", QN_CODE_BAD_JOB, 1, "inputs[0][1]"},
    {"{" BASE_OK ", inputs: [[1, [2]]]}", QN_CODE_BAD_JOB, 1, "inputs[0][1]"},
    {"{" BASE_OK ", inputs: [[1], 2]}", QN_CODE_BAD_JOB, 1, "inputs[1]"},
    {"{" BASE_OK ", inputs: [1, [2]]}", QN_CODE_BAD_JOB, 1, "inputs[1]"},
    {"{" BASE_OK ", inputs: [true]}", QN_CODE_BAD_JOB, 1, "inputs[0]"},
    {"{" BASE_OK ", inputs: ['1', '2']}", QN_CODE_BAD_JOB, 1, "inputs[0]"},
    /* reply_to, deadline_ms, priority, cache */
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", reply_to: 5}", QN_CODE_BAD_JOB, 1, "reply_to:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", reply_to: ''}", QN_CODE_BAD_JOB, 1, "reply_to:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", reply_to: 'a\\0b'}", QN_CODE_BAD_JOB, 1, "reply_to:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", reply_to: s(250)}", QN_CODE_BAD_JOB, 1, "reply_to:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deadline_ms: -1}", QN_CODE_BAD_JOB, 1, "deadline_ms:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deadline_ms: 1.7e12}", QN_CODE_BAD_JOB, 1, "deadline_ms:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deadline_ms: '5'}", QN_CODE_BAD_JOB, 1, "deadline_ms:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deadline_ms: u9223372036854775808}", QN_CODE_BAD_JOB, 1, "deadline_ms:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deadline_ms: u18446744073709551615}", QN_CODE_BAD_JOB, 1,
     "deadline_ms: 18446744073709551615 is out of range"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deadline_ms: -1}", QN_CODE_BAD_JOB, 1, "deadline_ms: must be a non-negative int"},
    /* models: model optional, but checked when given */
    {"{v: 1, id: 'j9', type: 'models', model: 5}", QN_CODE_BAD_JOB, 1, "model: must be a str"},
    {"{v: 1, id: 'j9', type: 'models', model: 'a/b'}", QN_CODE_BAD_JOB, 1, "model:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", priority: -1}", QN_CODE_BAD_JOB, 1, "priority:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", priority: 2147483648}", QN_CODE_BAD_JOB, 1, "priority:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", priority: 'high'}", QN_CODE_BAD_JOB, 1, "priority:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", cache: 1}", QN_CODE_BAD_JOB, 1, "cache:"},
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", cache: 'false'}", QN_CODE_BAD_JOB, 1, "cache:"},
    /* nesting past the limit, even in a field nobody reads */
    {"{" BASE_OK ", inputs: " TENSOR_1x2 ", deep: [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}", QN_CODE_BAD_MESSAGE, 0, "nested"},
};

TEST(error_paths)
{
    for (size_t i = 0; i < sizeof g_err_cases / sizeof g_err_cases[0]; i++) {
        const err_case *c = &g_err_cases[i];
        qn_buf b = J(c->msg);
        qn_job *job = (qn_job *)1; /* must be overwritten */
        qn_decode_error err;
        int rc = decode_exact(b.data, b.len, NULL, &job, &err);
        int bad = rc != QN_EFORMAT || err.code != c->code || (c->id_back ? job == NULL : job != NULL) ||
                  !strstr(err.message, c->field);
        if (bad) fprintf(stderr, "case %zu: %s\n  rc %d code %d job %p message \"%s\"\n", i, c->msg, rc, err.code,
                         (void *)job, err.message);
        CHECK_EQ_INT(rc, QN_EFORMAT);
        CHECK_EQ_INT(err.code, c->code);
        CHECK(strstr(err.message, c->field) != NULL);
        if (c->id_back) {
            CHECK(job != NULL);
            if (job) {
                CHECK_EQ_INT(job->id.kind, QN_ID_STR);
                CHECK_STR(job->id.s, "j9");
                CHECK(job->inputs == NULL);
            }
        } else {
            CHECK(job == NULL);
        }
        if (job != (qn_job *)1) qn_job_free(&job);
        qn_buf_free(&b);
    }
}

TEST(error_result_carries_id_and_reply_to)
{
    /* bad model, but the int id and reply_to are still recovered */
    qn_buf b = J("{reply_to: 'replies', v: 1, id: -77, type: 'predict', model: 'no such/model', inputs: [[1]]}");
    qn_job *job = NULL;
    qn_decode_error err;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), QN_EFORMAT);
    CHECK(job != NULL);
    if (!job) { qn_buf_free(&b); return; }
    CHECK_EQ_INT(job->id.kind, QN_ID_INT);
    CHECK_EQ_INT(job->id.i, -77);
    CHECK_STR(job->reply_to, "replies");
    qn_result r = {.type = QN_RESULT_FINAL, .status = QN_STATUS_ERROR, .id = &job->id,
                   .code = err.code, .message = err.message};
    qn_buf rb = {0};
    CHECK_EQ_INT(qn_result_encode(&r, &rb), 0);
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(rb.data, rb.len, &v), 0);
    CHECK_EQ_INT(v.status, QN_STATUS_ERROR);
    CHECK_EQ_INT(v.code, QN_CODE_BAD_JOB);
    CHECK_EQ_INT(v.id_kind, QN_ID_INT);
    CHECK_EQ_INT(v.id_int, -77);
    CHECK_STR(v.message, err.message);
    CHECK(v.outputs == NULL);
    qn_job_free(&job);
    qn_buf_free(&rb);
    qn_buf_free(&b);

    /* a bad reply_to is not recovered, the id is */
    b = J("{v: 1, id: 'x', type: 'predict', model: 'm', inputs: [[1]], reply_to: ''}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), QN_EFORMAT);
    CHECK(job && job->reply_to == NULL && job->id.kind == QN_ID_STR);
    qn_job_free(&job);
    qn_buf_free(&b);
}

TEST(not_msgpack)
{
    static const struct { const char *bytes; size_t n; const char *why; } cases[] = {
        {"", 0, "empty"},
        {"\xc1", 1, "invalid"},
        {"\x81\xc1\x01", 3, "invalid"},
        {"\x82\xa1v\x01", 4, "truncated"},
        {"\xdd\xff\xff\xff\xff", 5, "truncated"},         /* array of 2^32-1: nothing behind it */
        {"\xdf\x7f\xff\xff\xff", 5, "truncated"},         /* map of 2^31-1 */
        {"\x81\xa1x\xdd\x0f\xff\xff\xff\x00", 9, "truncated"}, /* same, inside an unread field */
        {"\xc6\xff\xff\xff\xff", 5, "truncated"},         /* bin of 4 GiB */
        {"\xc9\x00\x00\x00\x01", 5, "truncated"},         /* ext missing its type byte */
        {"\x80\x00", 2, "trailing"},                      /* empty map + garbage */
        {"\x80\x80", 2, "trailing"},                      /* two messages */
        /* JSON text: '{' and '[' are msgpack fixints, so without a look at
         * the text this read "22 bytes of trailing data" */
        {"{\"v\":1,\"id\":1,\"type\":\"predict\"}", 31, "looks like JSON"},
        {" [[1, 2]]\n", 10, "looks like JSON"},
        {"{}", 2, "looks like JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qn_job *job = (qn_job *)1;
        qn_decode_error err;
        int rc = decode_exact(cases[i].bytes, cases[i].n, NULL, &job, &err);
        if (rc != QN_EFORMAT || !strstr(err.message, cases[i].why))
            fprintf(stderr, "case %zu: rc %d \"%s\"\n", i, rc, err.message);
        CHECK_EQ_INT(rc, QN_EFORMAT);
        CHECK_EQ_INT(err.code, QN_CODE_BAD_MESSAGE);
        CHECK(job == NULL);
        CHECK(strstr(err.message, cases[i].why) != NULL);
    }
    /* nesting: 15 levels (the job map + 14 arrays) pass, 16 do not */
    for (int depth = 15; depth <= 16; depth++) {
        char msg[256];
        int k = snprintf(msg, sizeof msg, "{" BASE_OK ", inputs: [[1]], deep: ");
        for (int i = 0; i < depth - 1; i++) msg[k++] = '[';
        msg[k++] = '1'; /* an empty array opens no level, in msgpack-c either */
        for (int i = 0; i < depth - 1; i++) msg[k++] = ']';
        snprintf(msg + k, sizeof msg - (size_t)k, "}");
        qn_buf d = J(msg);
        qn_job *dj = NULL;
        qn_decode_error derr;
        int rc = decode_exact(d.data, d.len, NULL, &dj, &derr);
        if (rc != (depth == 15 ? 0 : QN_EFORMAT)) fprintf(stderr, "depth %d: %s -> %s\n", depth, msg, derr.message);
        CHECK_EQ_INT(rc, depth == 15 ? 0 : QN_EFORMAT);
        if (depth == 16) CHECK(strstr(derr.message, "nested deeper than 15") != NULL);
        qn_job_free(&dj);
        qn_buf_free(&d);
    }
    /* a valid job followed by one stray byte */
    qn_buf b = J("{" BASE_OK ", inputs: [[1]]}");
    qn_buf_append(&b, "", 1);
    qn_job *job = NULL;
    qn_decode_error err;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), QN_EFORMAT);
    CHECK_EQ_INT(err.code, QN_CODE_BAD_MESSAGE);
    CHECK(job == NULL);
    qn_buf_free(&b);
    /* argument errors */
    CHECK_EQ_INT(qn_job_decode("\x80", 1, NULL, NULL, &err), QN_EINVAL);
    CHECK_EQ_INT(qn_job_decode(NULL, 3, NULL, &job, &err), QN_EINVAL);
    /* err may be NULL */
    CHECK_EQ_INT(qn_job_decode("\x80", 1, NULL, &job, NULL), QN_EFORMAT);
}

TEST(size_limit)
{
    qn_buf b = J("{" BASE_OK ", inputs: {dtype: 'f32', shape: [4, 16], data: b(256)}}");
    qn_job_limits lim = {.max_message_bytes = b.len - 1};
    qn_job *job = (qn_job *)1;
    qn_decode_error err;
    CHECK_EQ_INT(decode_exact(b.data, b.len, &lim, &job, &err), QN_ETOOLARGE);
    CHECK_EQ_INT(err.code, QN_CODE_TOO_LARGE);
    CHECK(job == NULL);
    CHECK(strstr(err.message, "limit") != NULL);
    lim.max_message_bytes = b.len; /* exactly at the limit is fine */
    CHECK_EQ_INT(decode_exact(b.data, b.len, &lim, &job, &err), 0);
    CHECK(job && job->rows == 4 && job->cols == 16);
    qn_job_free(&job);
    qn_buf_free(&b);

    /* the default limit; the bytes past it are never parsed (garbage here) */
    size_t n = (size_t)QN_DEFAULT_MAX_MESSAGE + 1;
    char *big = calloc(1, n);
    CHECK(big != NULL);
    if (big) {
        big[0] = (char)0xc1;
        CHECK_EQ_INT(qn_job_decode(big, n, NULL, &job, &err), QN_ETOOLARGE);
        CHECK_EQ_INT(err.code, QN_CODE_TOO_LARGE);
        CHECK(job == NULL);
        lim.max_message_bytes = 0; /* 0 means the default */
        CHECK_EQ_INT(qn_job_decode(big, n, &lim, &job, &err), QN_ETOOLARGE);
        free(big);
    }
}

/* A message with every kind of field, in both tensor forms. */
static qn_buf rich_job(int array_form)
{
    return J(array_form
                 ? "{v: 1, id: 'abc-123', type: 'predict', model: 'mlp.v2', version: 4, reply_to: 'out',"
                   " deadline_ms: 1700000000000, priority: 2, cache: false, inputs: [[1, 2.5, f3], [-4, 5, 6]]}"
                 : "{v: 1, id: u18446744073709551615, type: 'predict', model: 'mlp.v2', version: 4, reply_to: 'out',"
                   " deadline_ms: 1700000000000, priority: 2, cache: false,"
                   " inputs: {dtype: 'f32', shape: [2, 3], data: b(24)}}");
}

TEST(truncated_prefixes)
{
    for (int form = 0; form < 2; form++) {
        qn_buf b = rich_job(form);
        qn_job *job = NULL;
        CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
        qn_job_free(&job);
        for (size_t n = 0; n < b.len; n++) {
            qn_decode_error err;
            job = (qn_job *)1;
            int rc = decode_exact(b.data, n, NULL, &job, &err);
            if (rc != QN_EFORMAT || err.code != QN_CODE_BAD_MESSAGE || job != NULL)
                fprintf(stderr, "prefix %zu/%zu: rc %d code %d\n", n, b.len, rc, err.code);
            CHECK_EQ_INT(rc, QN_EFORMAT);
            CHECK_EQ_INT(err.code, QN_CODE_BAD_MESSAGE);
            CHECK(job == NULL);
            if (job != (qn_job *)1) qn_job_free(&job);
        }
        qn_buf_free(&b);
    }
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

/* Whatever comes back must be one of the documented outcomes, and a job that
 * decodes must be internally consistent. */
static void check_outcome(int rc, const qn_job *job, const qn_decode_error *err)
{
    if (rc == 0) {
        CHECK(job != NULL);
        CHECK_EQ_INT(err->code, QN_CODE_NONE);
        if (job && job->type == QN_JOB_PREDICT) CHECK(job->rows >= 1 && job->cols >= 1 && job->inputs);
        if (job) CHECK(strlen(job->model) >= 1 && strlen(job->model) <= QN_MODEL_NAME_MAX);
    } else {
        CHECK_EQ_INT(rc, QN_EFORMAT);
        CHECK(err->code == QN_CODE_BAD_MESSAGE || err->code == QN_CODE_BAD_JOB);
        CHECK(err->message[0] != '\0');
        if (job) CHECK(job->id.kind != QN_ID_NIL && job->inputs == NULL);
    }
}

TEST(random_bytes)
{
    unsigned char buf[96];
    int decoded = 0;
    for (int it = 0; it < 4000; it++) {
        size_t n = rnd() % sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)rnd();
        /* bias towards maps so the field checks are reached too */
        if (n && it % 2) buf[0] = (unsigned char)(0x80 | (rnd() & 0x0f));
        qn_job *job = NULL;
        qn_decode_error err;
        int rc = decode_exact(buf, n, NULL, &job, &err);
        check_outcome(rc, job, &err);
        decoded += rc == 0;
        qn_job_free(&job);
    }
    (void)decoded;
}

TEST(mutated_jobs)
{
    /* flip bytes of real jobs: reaches far deeper than random bytes do */
    int outcomes[3] = {0};
    for (int form = 0; form < 2; form++) {
        qn_buf b = rich_job(form);
        unsigned char *m = malloc(b.len);
        for (int it = 0; it < 3000; it++) {
            memcpy(m, b.data, b.len);
            int flips = 1 + (int)(rnd() % 3);
            for (int k = 0; k < flips; k++) m[rnd() % b.len] = (unsigned char)rnd();
            size_t n = b.len - (rnd() % 4 == 0 ? rnd() % 8 : 0);
            qn_job *job = NULL;
            qn_decode_error err;
            int rc = decode_exact(m, n, NULL, &job, &err);
            check_outcome(rc, job, &err);
            outcomes[rc == 0 ? 0 : err.code == QN_CODE_BAD_JOB ? 1 : 2]++;
            qn_job_free(&job);
        }
        free(m);
        qn_buf_free(&b);
    }
    /* the mutations must exercise all three outcomes, or the test is blind */
    CHECK(outcomes[0] > 0 && outcomes[1] > 0 && outcomes[2] > 0);
}

/* ---- results ---- */

/* Keys of a top-level msgpack map, joined with ',' in wire order. */
static void result_keys(const qn_buf *b, char *out, size_t cap)
{
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    size_t off = 0;
    out[0] = '\0';
    if (msgpack_unpack(b->data, b->len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS && o.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o.via.map.size; i++) {
            const msgpack_object *k = &o.via.map.ptr[i].key;
            if (i) strncat(out, ",", cap - strlen(out) - 1);
            strncat(out, k->via.str.ptr, k->via.str.size < cap - strlen(out) - 1 ? k->via.str.size : cap - strlen(out) - 1);
        }
    }
    msgpack_zone_destroy(&z);
}

TEST(result_ok_round_trip)
{
    float outp[6] = {0.1f, 0.2f, 0.7f, -1, 2, 3};
    qn_id id = {.kind = QN_ID_STR, .s = "req-9", .len = 5};
    qn_result r = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &id, .model = "mnist", .version = 3,
                   .rows = 2, .cols = 3, .outputs = outp, .cached = true};
    qn_buf b = {0};
    CHECK_EQ_INT(qn_result_encode(&r, &b), 0);
    char keys[256];
    result_keys(&b, keys, sizeof keys);
    CHECK_STR(keys, "v,id,type,status,model,version,outputs,cached");
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
    CHECK_EQ_INT(v.status, QN_STATUS_OK);
    CHECK_EQ_INT(v.code, QN_CODE_NONE);
    CHECK_EQ_INT(v.id_kind, QN_ID_STR);
    CHECK_STR(v.id_str, "req-9");
    CHECK_STR(v.model, "mnist");
    CHECK_EQ_INT(v.version, 3);
    CHECK(v.cached);
    CHECK_EQ_INT(v.rows, 2);
    CHECK_EQ_INT(v.cols, 3);
    CHECK(v.outputs && memcmp(v.outputs, outp, sizeof outp) == 0);
    free(v.outputs);

    /* appends: a second result lands after the first, and reset empties */
    size_t first = b.len;
    r.cached = false;
    r.model = NULL;
    r.version = 0;
    CHECK_EQ_INT(qn_result_encode(&r, &b), 0);
    CHECK(b.len > first);
    CHECK_EQ_INT(qn_result_decode(b.data + first, b.len - first, &v), 0);
    CHECK(!v.cached && v.model[0] == '\0' && v.version == 0);
    free(v.outputs);
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), QN_EFORMAT); /* two messages: trailing data */
    qn_buf_reset(&b);
    CHECK_EQ_INT(b.len, 0);
    CHECK(b.cap > 0);
    qn_buf_free(&b);
    CHECK(b.data == NULL && b.cap == 0);
}

TEST(result_errors_and_statuses)
{
    qn_id id = {.kind = QN_ID_INT, .i = 12};
    struct { qn_status st; qn_code code; const char *msg; qn_code want; } cases[] = {
        {QN_STATUS_ERROR, QN_CODE_UNKNOWN_MODEL, "no model 'x'", QN_CODE_UNKNOWN_MODEL},
        {QN_STATUS_ERROR, QN_CODE_SHAPE_MISMATCH, NULL, QN_CODE_SHAPE_MISMATCH},
        {QN_STATUS_EXPIRED, QN_CODE_NONE, "queued past its deadline", QN_CODE_EXPIRED},
        {QN_STATUS_REJECTED, QN_CODE_NONE, NULL, QN_CODE_OVERLOADED},
        {QN_STATUS_ERROR, QN_CODE_NONE, NULL, QN_CODE_INTERNAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qn_result r = {.status = cases[i].st, .code = cases[i].code, .message = cases[i].msg, .id = &id,
                       .rows = 5, .cols = 5 /* ignored: not ok */};
        qn_buf b = {0};
        CHECK_EQ_INT(qn_result_encode(&r, &b), 0);
        char keys[256];
        result_keys(&b, keys, sizeof keys);
        CHECK_STR(keys, "v,id,type,status,error");
        qn_result_view v;
        CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
        CHECK_EQ_INT(v.status, cases[i].st);
        CHECK_EQ_INT(v.code, cases[i].want);
        CHECK_STR(v.message, cases[i].msg ? cases[i].msg : "");
        CHECK_EQ_INT(v.id_int, 12);
        CHECK(v.outputs == NULL);
        qn_buf_free(&b);
    }
    /* nil id, and a progress message carries neither outputs nor error */
    qn_result r = {.type = QN_RESULT_PROGRESS, .status = QN_STATUS_OK};
    qn_buf b = {0};
    CHECK_EQ_INT(qn_result_encode(&r, &b), 0);
    char keys[256];
    result_keys(&b, keys, sizeof keys);
    CHECK_STR(keys, "v,id,type,status");
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
    CHECK_EQ_INT(v.id_kind, QN_ID_NIL);
    qn_buf_free(&b);
    /* an ok result without its outputs is a caller bug, and leaves out untouched */
    qn_buf_append(&b, "xy", 2);
    qn_result bad = {.status = QN_STATUS_OK, .rows = 1, .cols = 2, .outputs = NULL};
    CHECK_EQ_INT(qn_result_encode(&bad, &b), QN_EINVAL);
    CHECK_EQ_INT(b.len, 2);
    bad.rows = 1LL << 40;
    bad.outputs = (const float *)&b;
    CHECK_EQ_INT(qn_result_encode(&bad, &b), QN_ETOOLARGE);
    CHECK_EQ_INT(qn_result_encode(NULL, &b), QN_EINVAL);
    qn_buf_free(&b);
}

TEST(result_decode_rejects)
{
    static const char *const bad[] = {
        "[1]",
        "{id: 1, type: 'result', status: 'ok'}",                 /* no v */
        "{v: 2, id: 1, type: 'result', status: 'ok'}",
        "{v: 1, id: 1, type: 'result'}",                         /* no status */
        "{v: 1, id: 1, type: 'result', status: 'fine'}",
        "{v: 1, id: 1.5, type: 'result', status: 'ok'}",
        "{v: 1, id: 1, type: 'result', status: 'ok', outputs: {dtype: 'f32', shape: [2, 2], data: b(12)}}",
        "{v: 1, id: 1, type: 'result', status: 'ok', cached: 1}",
        "{v: 1, id: 1, type: 'result', status: 'error', error: 'oops'}",
        "{v: 1, id: 1, type: 'result', status: 'error', error: {message: 'no code'}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qn_buf b = J(bad[i]);
        qn_result_view v;
        int rc = qn_result_decode(b.data, b.len, &v);
        if (rc != QN_EFORMAT) fprintf(stderr, "result case %zu accepted: %s\n", i, bad[i]);
        CHECK_EQ_INT(rc, QN_EFORMAT);
        CHECK(v.outputs == NULL);
        qn_buf_free(&b);
    }
    /* accepted: array-of-arrays outputs and an error code this build does not know */
    qn_buf b = J("{v: 1, id: 'q', type: 'result', status: 'ok', outputs: [[1, 2]], cached: false}");
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
    CHECK(v.outputs && v.rows == 1 && v.cols == 2 && v.outputs[1] == 2.0f);
    free(v.outputs);
    qn_buf_free(&b);
    b = J("{v: 1, id: 'q', type: 'result', status: 'error', error: {code: 'from_the_future', message: 'm'}}");
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
    CHECK_EQ_INT(v.code, QN_CODE_INTERNAL);
    qn_buf_free(&b);
    /* truncations of a real result never crash or leak */
    float o[4] = {1, 2, 3, 4};
    qn_id id = {.kind = QN_ID_STR, .s = "r", .len = 1};
    qn_result r = {.status = QN_STATUS_OK, .id = &id, .model = "m", .version = 1, .rows = 2, .cols = 2, .outputs = o};
    CHECK_EQ_INT(qn_result_encode(&r, &b), 0);
    for (size_t n = 0; n < b.len; n++) {
        char *c = malloc(n ? n : 1);
        memcpy(c, b.data, n);
        CHECK_EQ_INT(qn_result_decode(c, n, &v), QN_EFORMAT);
        free(c);
    }
    qn_buf_free(&b);
}

/* ---- jobs built directly, names, threads ---- */

TEST(job_new_and_ids)
{
    qn_job *job = qn_job_new(3, 4);
    CHECK(job != NULL);
    if (!job) return;
    CHECK_EQ_INT(job->id.kind, QN_ID_NIL);
    CHECK(job->cache);
    CHECK_EQ_INT(job->version, 0);
    CHECK_EQ_INT(job->rows, 3);
    CHECK_EQ_INT(job->cols, 4);
    for (int i = 0; i < 12; i++) CHECK(job->inputs[i] == 0.0f);
    job->inputs[11] = 1; /* the whole block is writable (ASan checks) */
    CHECK_EQ_INT(qn_job_set_id_str(job, "first", 5), 0);
    CHECK_EQ_INT(qn_job_set_id_str(job, "second\0x", 8), 0); /* replaces, frees the first */
    CHECK_EQ_INT(job->id.len, 8);
    CHECK(memcmp(job->id.s, "second\0x", 9) == 0);
    job->reply_to = strdup("topic"); /* a transport's own string is freed too */
    qn_job_free(&job);
    CHECK(job == NULL);
    CHECK(qn_job_new(-1, 2) == NULL);
    CHECK(qn_job_new(INT64_MAX, INT64_MAX) == NULL);
    CHECK(qn_job_new(1LL << 62, 4) == NULL);
    job = qn_job_new(0, 0);
    CHECK(job && job->inputs == NULL);
    qn_job_free(&job);
    CHECK_EQ_INT(qn_job_set_id_str(NULL, "a", 1), QN_EINVAL);

    /* replacing a decoded (inline) id must not free inside the job's block */
    qn_buf b = J("{v: 1, id: 'inline-id', type: 'predict', model: 'm', inputs: [[1]], reply_to: 'r'}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, NULL), 0);
    if (job) {
        CHECK_EQ_INT(qn_job_set_id_str(job, "other", 5), 0);
        CHECK_STR(job->id.s, "other");
        CHECK_STR(job->reply_to, "r");
    }
    qn_job_free(&job);
    qn_buf_free(&b);
}

TEST(names)
{
    CHECK_STR(qn_status_name(QN_STATUS_OK), "ok");
    CHECK_STR(qn_status_name(QN_STATUS_ERROR), "error");
    CHECK_STR(qn_status_name(QN_STATUS_EXPIRED), "expired");
    CHECK_STR(qn_status_name(QN_STATUS_REJECTED), "rejected");
    CHECK_STR(qn_code_name(QN_CODE_NONE), "");
    const char *want[QN_CODE_COUNT] = {"", "bad_message", "bad_job", "unknown_model", "unknown_version",
                                       "shape_mismatch", "too_large", "overloaded", "expired", "internal",
                                       "diverged"};
    for (int c = 0; c < QN_CODE_COUNT; c++) CHECK_STR(qn_code_name((qn_code)c), want[c]);
    CHECK_STR(qn_code_name((qn_code)99), "internal");
    CHECK_STR(qn_status_name((qn_status)99), "error");
}

static void *decode_many(void *arg)
{
    const qn_buf *b = arg;
    long bad = 0;
    for (int i = 0; i < 2000; i++) {
        qn_job *job = NULL;
        if (qn_job_decode(b->data, b->len, NULL, &job, NULL) != 0 || job->inputs[1] != 0.5f) bad++;
        qn_job_free(&job);
    }
    return (void *)bad;
}

TEST(threads_each_own_zone)
{
    /* each thread uses its own unpack zone, freed when the thread exits (LSan
     * would report it otherwise) */
    qn_buf b = J("{" BASE_OK ", inputs: [[0, 0.5, 1], [2, 3, 4]]}");
    pthread_t t[4];
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(pthread_create(&t[i], NULL, decode_many, &b), 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        CHECK_EQ_INT((long)r, 0);
    }
    qn_buf_free(&b);
}

/* ---- the documented examples (the .msgpack files in schemas/examples, made by
 * schemas/examples/make_examples.py with Python's msgpack) ---- */

static qn_buf read_example(const char *name)
{
    qn_buf b = {0};
    char path[4096];
    const char *src = __FILE__; /* .../tests/unit/test_job.c */
    const char *cut = strstr(src, "tests/unit/test_job.c");
    snprintf(path, sizeof path, "%.*sschemas/examples/%s", cut ? (int)(cut - src) : 0, src, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return b;
    }
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) qn_buf_append(&b, tmp, n);
    fclose(f);
    return b;
}

TEST(python_examples)
{
    qn_job *job = NULL;
    qn_decode_error err;
    qn_buf b = read_example("predict_tensor.msgpack");
    CHECK(b.len > 0);
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), 0);
    if (job) {
        CHECK_STR(job->id.s, "req-0001");
        CHECK_STR(job->model, "iris_mlp");
        CHECK_EQ_INT(job->rows, 2);
        CHECK_EQ_INT(job->cols, 4);
        CHECK(job->inputs[0] == 5.1f && job->inputs[7] == 1.8f);
        CHECK_EQ_INT(job->priority, 0);
    }
    qn_job_free(&job);
    qn_buf_free(&b);

    b = read_example("predict_arrays.msgpack");
    CHECK(b.len > 0);
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), 0);
    if (job) {
        CHECK_EQ_INT(job->id.kind, QN_ID_INT);
        CHECK_EQ_INT(job->id.i, 42);
        CHECK_EQ_INT(job->version, 3);
        CHECK_STR(job->reply_to, "quern.results.team-a");
        CHECK_EQ_INT(job->deadline_ms, 1767225600000LL);
        CHECK_EQ_INT(job->priority, 5);
        CHECK(!job->cache);
        CHECK_EQ_INT(job->rows, 2);
        CHECK_EQ_INT(job->cols, 4);
        CHECK(job->inputs[4] == 6.7f);
    }
    qn_job_free(&job);
    qn_buf_free(&b);

    b = read_example("bad_job_model.msgpack");
    CHECK(b.len > 0);
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), QN_EFORMAT);
    CHECK_EQ_INT(err.code, QN_CODE_BAD_JOB);
    CHECK(job && job->id.kind == QN_ID_STR && strcmp(job->id.s, "req-0002") == 0);
    qn_job_free(&job);
    qn_buf_free(&b);

    qn_result_view v;
    b = read_example("result_ok.msgpack");
    CHECK(b.len > 0);
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
    CHECK(v.status == QN_STATUS_OK && v.rows == 2 && v.cols == 3 && v.outputs && v.version == 3 && !v.cached);
    free(v.outputs);
    qn_buf_free(&b);

    b = read_example("result_error.msgpack");
    CHECK(b.len > 0);
    CHECK_EQ_INT(qn_result_decode(b.data, b.len, &v), 0);
    CHECK(v.status == QN_STATUS_ERROR && v.code == QN_CODE_UNKNOWN_MODEL && v.id_kind == QN_ID_STR);
    qn_buf_free(&b);
}

/* A models job: v, id and type are enough; a model name filters. */
TEST(models_job)
{
    qn_buf b = J("{v: 1, id: 'meta', type: 'models'}");
    qn_job *job = NULL;
    qn_decode_error err;
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), 0);
    CHECK(job && job->type == QN_JOB_MODELS && job->model[0] == '\0' && job->inputs == NULL);
    qn_job_free(&job);
    qn_buf_free(&b);
    b = J("{v: 1, id: 3, type: 'models', model: 'digits', version: nil}");
    CHECK_EQ_INT(decode_exact(b.data, b.len, NULL, &job, &err), 0);
    CHECK(job && job->type == QN_JOB_MODELS);
    if (job) CHECK_STR(job->model, "digits");
    qn_job_free(&job);
    qn_buf_free(&b);

    /* its answer: models grouped by name, in place of outputs */
    qn_id id = {.kind = QN_ID_STR, .s = "meta", .len = 4};
    qn_model_info mi[3] = {{"a", 1, 4, 2, "f32"}, {"a", 3, 5, 2, "int8"}, {"b", 2, 7, 1, "mixed"}};
    qn_result r = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &id, .is_models = true,
                   .models = mi, .nmodels = 3};
    qn_buf rb = {0};
    CHECK_EQ_INT(qn_result_encode(&r, &rb), 0);
    qn_buf want = J("{v: 1, id: 'meta', type: 'result', status: 'ok', models: ["
                    "{name: 'a', latest: 3, versions: [{version: 1, input_dim: 4, output_dim: 2, repr: 'f32'},"
                    " {version: 3, input_dim: 5, output_dim: 2, repr: 'int8'}]},"
                    " {name: 'b', latest: 2, versions: [{version: 2, input_dim: 7, output_dim: 1, repr: 'mixed'}]}]}");
    CHECK_EQ_INT(rb.len, want.len);
    CHECK(rb.len == want.len && memcmp(rb.data, want.data, rb.len) == 0);
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(rb.data, rb.len, &v), 0);
    CHECK(v.status == QN_STATUS_OK && v.outputs == NULL);
    qn_buf_free(&want);
    qn_buf_reset(&rb);
    /* an empty repository answers an empty list, not nothing */
    r.nmodels = 0;
    r.models = NULL;
    CHECK_EQ_INT(qn_result_encode(&r, &rb), 0);
    want = J("{v: 1, id: 'meta', type: 'result', status: 'ok', models: []}");
    CHECK(rb.len == want.len && memcmp(rb.data, want.data, rb.len) == 0);
    qn_buf_free(&want);
    qn_buf_free(&rb);
}

int main(void)
{
    RUN(roundtrip_str_id);
    RUN(roundtrip_int_ids);
    RUN(encode_predict_to_reply_to);
    RUN(big_uint_id_round_trip);
    RUN(all_optional_fields);
    RUN(array_of_arrays_inputs);
    RUN(one_d_shape_is_one_row);
    RUN(train_job_common_fields);
    RUN(error_paths);
    RUN(error_result_carries_id_and_reply_to);
    RUN(not_msgpack);
    RUN(size_limit);
    RUN(truncated_prefixes);
    RUN(random_bytes);
    RUN(mutated_jobs);
    RUN(result_ok_round_trip);
    RUN(result_errors_and_statuses);
    RUN(result_decode_rejects);
    RUN(job_new_and_ids);
    RUN(names);
    RUN(threads_each_own_zone);
    RUN(python_examples);
    RUN(models_job);
    return qn_test_done();
}
