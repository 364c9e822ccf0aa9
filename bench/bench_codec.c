/* bench_codec.c: nanoseconds per job decode and per result encode (lib/job.c)
 * for the shapes the IO thread sees most: one row of 64 and of 256 features.
 *
 * Each repeat times every case back to back (so all cases share the same
 * noise), and the median over repeats is reported with min and max. Also
 * timed, as yardsticks for the codec's own work: a bare msgpack_unpack of the
 * same bytes with a fresh zone per message and with one reused zone (which is
 * what the codec does), and one malloc/free of a job-sized block.
 *
 *   build/bench/bench_codec [--repeats N] [--iters N]
 */
#include "error.h"
#include "job.h"
#include "tensor.h"

#include <msgpack.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_CASES = 16 };

typedef struct bcase {
    const char *name;
    double (*fn)(const struct bcase *c, int iters); /* returns ns per op */
    const qn_buf *msg;                             /* the message, for decode cases */
    int64_t cols;                                  /* outputs width, for encode cases */
    double ns[256];
} bcase;

static volatile uint64_t g_sink; /* keeps results alive */

static double bench_decode(const bcase *c, int iters)
{
    uint64_t t0 = qn_now_ns(), sum = 0;
    for (int i = 0; i < iters; i++) {
        qn_job *job = NULL;
        qn_decode_error err;
        if (qn_job_decode(c->msg->data, c->msg->len, NULL, &job, &err) != 0) {
            fprintf(stderr, "%s: decode failed: %s\n", c->name, err.message);
            exit(1);
        }
        sum += (uint64_t)job->cols + (uint64_t)job->inputs[job->cols - 1];
        qn_job_free(&job);
    }
    g_sink += sum;
    return (double)(qn_now_ns() - t0) / iters;
}

static double bench_unpack_fresh_zone(const bcase *c, int iters)
{
    uint64_t t0 = qn_now_ns(), sum = 0;
    for (int i = 0; i < iters; i++) {
        msgpack_zone z;
        msgpack_object o;
        size_t off = 0;
        msgpack_zone_init(&z, 16 * 1024);
        if (msgpack_unpack(c->msg->data, c->msg->len, &off, &z, &o) != MSGPACK_UNPACK_SUCCESS) exit(1);
        sum += o.via.map.size;
        msgpack_zone_destroy(&z);
    }
    g_sink += sum;
    return (double)(qn_now_ns() - t0) / iters;
}

static double bench_unpack_reused_zone(const bcase *c, int iters)
{
    static msgpack_zone *z;
    if (!z) z = msgpack_zone_new(16 * 1024);
    uint64_t t0 = qn_now_ns(), sum = 0;
    for (int i = 0; i < iters; i++) {
        msgpack_object o;
        size_t off = 0;
        if (msgpack_unpack(c->msg->data, c->msg->len, &off, z, &o) != MSGPACK_UNPACK_SUCCESS) exit(1);
        sum += o.via.map.size;
        msgpack_zone_clear(z);
    }
    g_sink += sum;
    return (double)(qn_now_ns() - t0) / iters;
}

static double bench_malloc_job(const bcase *c, int iters)
{
    uint64_t t0 = qn_now_ns(), sum = 0;
    for (int i = 0; i < iters; i++) {
        qn_job *job = qn_job_new(1, c->cols);
        sum += (uint64_t)(uintptr_t)job;
        qn_job_free(&job);
    }
    g_sink += sum;
    return (double)(qn_now_ns() - t0) / iters;
}

static double bench_encode_result(const bcase *c, int iters)
{
    static float out[4096];
    static qn_buf b;
    qn_id id = {.kind = QN_ID_STR, .s = "bench-000123", .len = 12};
    qn_result r = {.type = QN_RESULT_FINAL, .status = QN_STATUS_OK, .id = &id, .model = "bench_mlp", .version = 1,
                   .rows = 1, .cols = c->cols, .outputs = out};
    uint64_t t0 = qn_now_ns(), sum = 0;
    for (int i = 0; i < iters; i++) {
        qn_buf_reset(&b);
        if (qn_result_encode(&r, &b) != 0) exit(1);
        sum += b.len;
    }
    g_sink += sum;
    return (double)(qn_now_ns() - t0) / iters;
}

static double bench_encode_predict(const bcase *c, int iters)
{
    static float in[4096];
    static qn_buf b;
    uint64_t t0 = qn_now_ns(), sum = 0;
    for (int i = 0; i < iters; i++) {
        qn_buf_reset(&b);
        if (qn_job_encode_predict("bench-000123", 0, "bench_mlp", 0, in, 1, c->cols, &b) != 0) exit(1);
        sum += b.len;
    }
    g_sink += sum;
    return (double)(qn_now_ns() - t0) / iters;
}

static int buf_write(void *b, const char *p, size_t n) { return qn_buf_append(b, p, n); }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A 1 x cols job as the bench client sends it; array form when arrays != 0. */
static qn_buf make_job(int64_t cols, int arrays)
{
    qn_buf b = {0};
    float x[4096];
    for (int64_t i = 0; i < cols; i++) x[i] = (float)i * 0.25f - 3.0f;
    if (!arrays) {
        if (qn_job_encode_predict("bench-000123", 0, "bench_mlp", 0, x, 1, cols, &b) != 0) exit(1);
        return b;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_str_with_body(&pk, "bench-000123", 12);
    msgpack_pack_str_with_body(&pk, "type", 4);
    msgpack_pack_str_with_body(&pk, "predict", 7);
    msgpack_pack_str_with_body(&pk, "model", 5);
    msgpack_pack_str_with_body(&pk, "bench_mlp", 9);
    msgpack_pack_str_with_body(&pk, "inputs", 6);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, (size_t)cols);
    for (int64_t i = 0; i < cols; i++) msgpack_pack_double(&pk, x[i]); /* what Python floats become */
    return b;
}

int main(int argc, char **argv)
{
    int repeats = 21, iters = 20000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--repeats N (<=256)] [--iters N]\n", argv[0]);
            return 2;
        }
    }
    if (repeats < 1 || repeats > 256 || iters < 1) return 2;

    qn_buf j64 = make_job(64, 0), j256 = make_job(256, 0), a64 = make_job(64, 1), a256 = make_job(256, 1);
    static bcase cases[MAX_CASES];
    int n = 0;
    cases[n++] = (bcase){"decode 1x64 (bin tensor)", bench_decode, &j64, 64, {0}};
    cases[n++] = (bcase){"decode 1x256 (bin tensor)", bench_decode, &j256, 256, {0}};
    cases[n++] = (bcase){"decode 1x64 (array of float64)", bench_decode, &a64, 64, {0}};
    cases[n++] = (bcase){"decode 1x256 (array of float64)", bench_decode, &a256, 256, {0}};
    cases[n++] = (bcase){"  msgpack_unpack 1x64, fresh zone", bench_unpack_fresh_zone, &j64, 64, {0}};
    cases[n++] = (bcase){"  msgpack_unpack 1x64, reused zone", bench_unpack_reused_zone, &j64, 64, {0}};
    cases[n++] = (bcase){"  msgpack_unpack 1x256 arrays, fresh zone", bench_unpack_fresh_zone, &a256, 256, {0}};
    cases[n++] = (bcase){"  msgpack_unpack 1x256 arrays, reused zone", bench_unpack_reused_zone, &a256, 256, {0}};
    cases[n++] = (bcase){"  qn_job_new+free 1x256 (one malloc)", bench_malloc_job, NULL, 256, {0}};
    cases[n++] = (bcase){"encode result 1x64", bench_encode_result, NULL, 64, {0}};
    cases[n++] = (bcase){"encode result 1x256", bench_encode_result, NULL, 256, {0}};
    cases[n++] = (bcase){"encode predict job 1x64", bench_encode_predict, NULL, 64, {0}};
    cases[n++] = (bcase){"encode predict job 1x256", bench_encode_predict, NULL, 256, {0}};

    printf("message sizes: 1x64 bin %zu B, 1x256 bin %zu B, 1x64 arrays %zu B, 1x256 arrays %zu B\n", j64.len,
           j256.len, a64.len, a256.len);
    for (int i = 0; i < n; i++) cases[i].fn(&cases[i], iters / 10 + 1); /* warm up */
    for (int r = 0; r < repeats; r++)
        for (int i = 0; i < n; i++) cases[i].ns[r] = cases[i].fn(&cases[i], iters);

    printf("%d repeats x %d iterations; ns per op\n", repeats, iters);
    printf("%-44s %10s %10s %10s\n", "case", "median", "min", "max");
    for (int i = 0; i < n; i++) {
        qsort(cases[i].ns, (size_t)repeats, sizeof(double), cmp_double);
        printf("%-44s %10.1f %10.1f %10.1f\n", cases[i].name, cases[i].ns[repeats / 2], cases[i].ns[0],
               cases[i].ns[repeats - 1]);
    }
    qn_buf_free(&j64);
    qn_buf_free(&j256);
    qn_buf_free(&a64);
    qn_buf_free(&a256);
    return 0;
}
