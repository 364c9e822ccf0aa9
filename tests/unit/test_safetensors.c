/* test_safetensors.c: the safetensors reader and writer. Good files round
 * trip; truncated, extended, lying and malformed ones are QN_EFORMAT (never a
 * crash: run this under -DQN_SANITIZE=address,undefined); files written by the
 * independent numpy writer (tests/tools/quern_model.py) read back, and ours
 * read back there. */
#include <errno.h>
#include <stdint.h>
#include <libgen.h>

#include "error.h"
#include "qn_test.h"
#include "safetensors.h"

static char *g_tmp;

static char *tmp_path(const char *leaf)
{
    static char p[8][4096];
    static int k;
    char *s = p[k++ % 8];
    snprintf(s, 4096, "%s/%s", g_tmp, leaf);
    return s;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

static void write_bytes(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

/* A buffer: 8-byte length of hdr, hdr, then dlen bytes 0..dlen-1. */
static uint8_t g_buf[1 << 16];
static size_t mk(const char *hdr, size_t dlen)
{
    uint64_t n = strlen(hdr);
    for (int i = 0; i < 8; i++) g_buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(g_buf + 8, hdr, n);
    for (size_t i = 0; i < dlen; i++) g_buf[8 + n + i] = (uint8_t)i;
    return 8 + n + dlen;
}

static int parse_rc(const void *b, size_t n, char *err, size_t errlen)
{
    qn_st_file *f = (qn_st_file *)0x1;
    int rc = qn_st_parse(b, n, &f, err, errlen);
    if (rc == 0) qn_st_close(&f);
    else CHECK(f == NULL);
    return rc;
}

/* A small file with several dtypes, an empty tensor and metadata. */
static float g_a[6] = {1.5f, -2.f, 3.25f, 0.f, -0.f, 1e-30f};
static int8_t g_b[5] = {-128, -1, 0, 1, 127};
static int64_t g_d[1] = {-1234567890123ll};
static const char *g_meta[] = {"format", "quern.mlp.v1", "note", "h\xc3\xa9llo \"quoted\""};

static int write_sample(const char *path)
{
    qn_st_tensor t[4] = {
        {.name = "a", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = g_a, .nbytes = 24},
        {.name = "b.bias", .dtype = QN_DTYPE_I8, .ndim = 1, .shape = {5}, .data = g_b, .nbytes = 5},
        {.name = "empty", .dtype = QN_DTYPE_F16, .ndim = 2, .shape = {0, 7}, .data = NULL, .nbytes = 0},
        {.name = "d", .dtype = QN_DTYPE_I64, .ndim = 3, .shape = {1, 1, 1}, .data = g_d, .nbytes = 8},
    };
    char err[256] = "";
    int rc = qn_st_write(path, t, 4, g_meta, 2, err, sizeof err);
    if (rc) fprintf(stderr, "qn_st_write: %s\n", err);
    return rc;
}

TEST(roundtrip)
{
    const char *p = tmp_path("rt.safetensors");
    CHECK_EQ_INT(write_sample(p), 0);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    CHECK(access(tmp, F_OK) != 0); /* renamed away */

    qn_st_file *f = NULL;
    char err[256] = "";
    CHECK_EQ_INT(qn_st_open(p, &f, err, sizeof err), 0);
    if (!f) return;
    CHECK_EQ_INT(qn_st_count(f), 4);
    struct stat st;
    stat(p, &st);
    CHECK_EQ_INT(qn_st_file_size(f), st.st_size);
    CHECK_STR(qn_st_meta(f, "format"), "quern.mlp.v1");
    CHECK_STR(qn_st_meta(f, "note"), "h\xc3\xa9llo \"quoted\"");
    CHECK(qn_st_meta(f, "absent") == NULL);
    CHECK(qn_st_find(f, "nope") == NULL);
    CHECK(qn_st_find(f, "__metadata__") == NULL);

    const qn_st_tensor *a = qn_st_find(f, "a");
    CHECK(a && a->dtype == QN_DTYPE_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3);
    CHECK(a && a->nbytes == 24 && memcmp(a->data, g_a, 24) == 0);
    const qn_st_tensor *b = qn_st_find(f, "b.bias");
    CHECK(b && b->dtype == QN_DTYPE_I8 && b->ndim == 1 && b->nbytes == 5 && memcmp(b->data, g_b, 5) == 0);
    const qn_st_tensor *e = qn_st_find(f, "empty");
    CHECK(e && e->dtype == QN_DTYPE_F16 && e->ndim == 2 && e->shape[0] == 0 && e->nbytes == 0);
    const qn_st_tensor *d = qn_st_find(f, "d");
    CHECK(d && d->ndim == 3 && memcmp(d->data, g_d, 8) == 0);
    /* qn_st_at walks the tensors in data order, which is write order here */
    CHECK_STR(qn_st_at(f, 0)->name, "a");
    CHECK_STR(qn_st_at(f, 3)->name, "d");
    CHECK(qn_st_at(f, 4) == NULL);
    qn_st_close(&f);
    CHECK(f == NULL);
    qn_st_close(&f); /* NULL-safe */

    /* The header is padded with spaces so the data starts 8-byte aligned. */
    size_t len;
    uint8_t *buf = read_file(p, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    CHECK(n % 8 == 0);
    CHECK(buf[8] == '{');
    size_t last = 8 + (size_t)n - 1;
    while (buf[last] == ' ') last--;
    CHECK(buf[last] == '}');
    CHECK(8 + n - 1 - last < 8);
    CHECK_EQ_INT(len, 8 + n + 24 + 5 + 8);
    free(buf);
}

TEST(handmade_good)
{
    char err[256];
    size_t n = mk("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), 0);
    /* metadata anywhere, extra unknown keys in an entry, whitespace, a scalar */
    n = mk(" {\"u\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[4,5],\"x\":1},"
           "\"__metadata__\":{},\"t\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}  ",
           5);
    qn_st_file *f = NULL;
    CHECK_EQ_INT(qn_st_parse(g_buf, n, &f, err, sizeof err), 0);
    if (f) {
        CHECK_STR(qn_st_at(f, 0)->name, "t"); /* offset order, not header order */
        CHECK_EQ_INT(qn_st_at(f, 1)->ndim, 0);
        CHECK_EQ_INT(*(const uint8_t *)qn_st_find(f, "u")->data, 4);
        qn_st_close(&f);
    }
    /* zero tensors, zero data */
    n = mk("{}", 0);
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), 0);
    n = mk("{\"__metadata__\":{\"k\":\"v\"}}", 0);
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), 0);
    /* a zero dim makes the element count 0 even next to a huge one */
    n = mk("{\"z\":{\"dtype\":\"F64\",\"shape\":[0,9223372036854775807],\"data_offsets\":[0,0]}}", 0);
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), 0);
}

static const struct bad {
    const char *hdr;
    size_t dlen;
    const char *why;
} g_bad[] = {
    {"", 0, "empty header"},
    {"[]", 0, "array"},
    {"\"s\"", 0, "string"},
    {"5", 0, "number"},
    {"null", 0, "null"},
    {"{", 0, "unterminated"},
    {"{} x", 0, "trailing garbage"},
    {"{\"t\":5}", 0, "entry not an object"},
    {"{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "no dtype"},
    {"{\"t\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
    {"{\"t\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype case"},
    {"{\"t\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype not a string"},
    {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "no shape"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "shape not an array"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative dim"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "real dim"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "string dim"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "9 dims"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "no offsets"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "one offset"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, "three offsets"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin > end"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "negative offset"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",8]}}", 8, "string offset"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "end past data"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "end far past data"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "shape says 12 bytes"},
    {"{\"t\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype says 16 bytes"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 0,
     "shape overflows"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 0,
     "shape wraps to 0"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "gap"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "not from 0"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing data"},
    {"{}", 1, "data with no tensors"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate name"},
    {"{\"__metadata__\":5}", 0, "metadata not an object"},
    {"{\"__metadata__\":{\"a\":1}}", 0, "metadata value not a string"},
    {"{\"__metadata__\":{\"a\":null}}", 0, "metadata value null"},
    {"{\"__metadata__\":{\"a\":\"x\\u0000y\"}}", 0, "NUL in a string"},
    /* Issue 17: metadata errors after a valid tensor entry once returned 0
     * with no file (the entry's parse had reset the error code). */
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"__metadata__\":{\"format\":1}}", 4, "metadata number after a tensor"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"__metadata__\":[]}", 4, "metadata array after a tensor"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"__metadata__\":{\"format\":\"quern.mlp.v1\",\"layers\":[]}}", 4,
     "metadata layers not a string after a tensor"},
    {"{\"\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not UTF-8"},
};

TEST(malformed_headers)
{
    for (size_t i = 0; i < sizeof g_bad / sizeof g_bad[0]; i++) {
        char err[256] = "";
        size_t n = mk(g_bad[i].hdr, g_bad[i].dlen);
        int rc = parse_rc(g_buf, n, err, sizeof err);
        if (rc != QN_EFORMAT) fprintf(stderr, "case %zu (%s): rc %d\n", i, g_bad[i].why, rc);
        CHECK_EQ_INT(rc, QN_EFORMAT);
        CHECK(err[0] != '\0');
    }
    /* a raw NUL byte inside the header */
    char err[256];
    size_t n = mk("{\"__metadata__\":{\"a\":\"xy\"}}", 0);
    g_buf[8 + 22] = 0;
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), QN_EFORMAT);
    /* err may be NULL */
    n = mk("[]", 0);
    CHECK_EQ_INT(parse_rc(g_buf, n, NULL, 0), QN_EFORMAT);
}

TEST(header_length)
{
    char err[256];
    uint8_t b[64] = {0};
    CHECK_EQ_INT(parse_rc(b, 0, err, sizeof err), QN_EFORMAT);
    CHECK_EQ_INT(parse_rc(b, 7, err, sizeof err), QN_EFORMAT);
    /* N = 0: an empty header is not JSON */
    CHECK_EQ_INT(parse_rc(b, 8, err, sizeof err), QN_EFORMAT);
    /* N larger than the limit, and N such that N + 8 overflows */
    size_t n = mk("{}", 0);
    uint64_t huge[] = {QN_ST_MAX_HEADER + 1ull, UINT64_MAX, UINT64_MAX - 7, 1ull << 63};
    for (size_t k = 0; k < 4; k++) {
        for (int i = 0; i < 8; i++) g_buf[i] = (uint8_t)(huge[k] >> (8 * i));
        CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), QN_EFORMAT);
    }
    /* N one past the file, and N one short of the JSON */
    n = mk("{}", 0);
    g_buf[0] = 3;
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), QN_EFORMAT);
    g_buf[0] = 1;
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), QN_EFORMAT);
    /* N pointing into the middle of a good header */
    n = mk("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    g_buf[0] = (uint8_t)(g_buf[0] - 4);
    CHECK_EQ_INT(parse_rc(g_buf, n, err, sizeof err), QN_EFORMAT);
}

/* Every prefix of a good file is invalid (the data must be covered exactly),
 * and so is the file with one byte more. */
TEST(truncated_everywhere)
{
    const char *p = tmp_path("trunc.safetensors");
    CHECK_EQ_INT(write_sample(p), 0);
    size_t len;
    uint8_t *buf = read_file(p, &len);
    if (!buf) { CHECK(0); return; }
    CHECK_EQ_INT(parse_rc(buf, len, NULL, 0), 0);
    int bad = 0;
    for (size_t l = 0; l < len; l++)
        if (parse_rc(buf, l, NULL, 0) != QN_EFORMAT) {
            fprintf(stderr, "prefix of %zu/%zu bytes accepted\n", l, len);
            bad++;
        }
    CHECK_EQ_INT(bad, 0);
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    CHECK_EQ_INT(parse_rc(longer, len + 1, NULL, 0), QN_EFORMAT);
    free(longer);

    /* the same through qn_st_open on real truncated files */
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    size_t cuts[] = {0, 4, 8, 8 + (size_t)n / 2, 8 + (size_t)n, 8 + (size_t)n + 10, len - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        const char *q = tmp_path("cut.safetensors");
        write_bytes(q, buf, cuts[k]);
        qn_st_file *f = NULL;
        char err[256] = "";
        CHECK_EQ_INT(qn_st_open(q, &f, err, sizeof err), QN_EFORMAT);
        CHECK(f == NULL && err[0]);
    }
    free(buf);
}

/* Random byte flips: whatever comes out is either an error or a file whose
 * tensors all lie inside it (ASan/UBSan watch the reads). */
TEST(random_corruption)
{
    const char *p = tmp_path("fuzz.safetensors");
    CHECK_EQ_INT(write_sample(p), 0);
    size_t len;
    uint8_t *orig = read_file(p, &len);
    uint8_t *buf = malloc(len);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int accepted = 0, rejected = 0, other = 0;
    static const uint8_t interesting[] = {'0', '9', '-', '"', '[', ']', '{', '}', ',', ':', 0, 0xff, ' ', '1'};
    for (int it = 0; it < 4000; it++) {
        memcpy(buf, orig, len);
        int flips = 1 + (int)(seed % 3);
        for (int k = 0; k < flips; k++) {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            size_t at = (size_t)(seed % len);
            buf[at] = (seed >> 32) & 1 ? interesting[(seed >> 40) % sizeof interesting] : (uint8_t)(seed >> 48);
        }
        qn_st_file *f = NULL;
        int rc = qn_st_parse(buf, len, &f, NULL, 0);
        if (rc == 0) {
            accepted++;
            size_t total = 0;
            unsigned sum = 0;
            for (size_t i = 0; i < qn_st_count(f); i++) {
                const qn_st_tensor *t = qn_st_at(f, i);
                total += t->nbytes;
                for (size_t j = 0; j < t->nbytes; j++) sum += ((const uint8_t *)t->data)[j];
            }
            (void)sum;
            CHECK(total <= qn_st_file_size(f));
            qn_st_close(&f);
        } else if (rc == QN_EFORMAT) rejected++;
        else other++;
    }
    CHECK_EQ_INT(other, 0);
    CHECK(rejected > 0);
    printf("     corruption: %d accepted (data bytes), %d rejected\n", accepted, rejected);
    free(buf);
    free(orig);
}

TEST(open_errors)
{
    qn_st_file *f = NULL;
    char err[256] = "";
    CHECK_EQ_INT(qn_st_open(tmp_path("does-not-exist"), &f, err, sizeof err), QN_EIO);
    CHECK(f == NULL && strstr(err, "does-not-exist"));
    CHECK_EQ_INT(qn_st_open(g_tmp, &f, err, sizeof err), QN_EIO); /* a directory */
}

TEST(write_errors)
{
    char err[256];
    float x[2] = {1, 2};
    const char *p = tmp_path("w.safetensors");
    qn_st_tensor t = {.name = "x", .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {2}, .data = x, .nbytes = 8};

    qn_st_tensor bad = t;
    bad.nbytes = 4;
    CHECK_EQ_INT(qn_st_write(p, &bad, 1, NULL, 0, err, sizeof err), QN_EINVAL);
    bad = t;
    bad.data = NULL;
    CHECK_EQ_INT(qn_st_write(p, &bad, 1, NULL, 0, err, sizeof err), QN_EINVAL);
    bad = t;
    bad.dtype = QN_DTYPE_COUNT;
    CHECK_EQ_INT(qn_st_write(p, &bad, 1, NULL, 0, err, sizeof err), QN_EINVAL);
    bad = t;
    bad.ndim = QN_ST_MAX_DIMS + 1;
    CHECK_EQ_INT(qn_st_write(p, &bad, 1, NULL, 0, err, sizeof err), QN_EINVAL);
    bad = t;
    bad.shape[0] = -2;
    CHECK_EQ_INT(qn_st_write(p, &bad, 1, NULL, 0, err, sizeof err), QN_EINVAL);
    bad = t;
    bad.name = "__metadata__";
    CHECK_EQ_INT(qn_st_write(p, &bad, 1, NULL, 0, err, sizeof err), QN_EINVAL);
    qn_st_tensor two[2] = {t, t};
    CHECK_EQ_INT(qn_st_write(p, two, 2, NULL, 0, err, sizeof err), QN_EINVAL);
    const char *meta[] = {"k", NULL};
    CHECK_EQ_INT(qn_st_write(p, &t, 1, meta, 1, err, sizeof err), QN_EINVAL);
    CHECK(access(p, F_OK) != 0); /* nothing written by a rejected call */

    CHECK_EQ_INT(qn_st_write(tmp_path("no/such/dir/w.safetensors"), &t, 1, NULL, 0, err, sizeof err),
                 QN_EIO);
    CHECK(strstr(err, "no/such/dir") != NULL);

    /* replacing an existing file is atomic: it is whole before and after */
    CHECK_EQ_INT(qn_st_write(p, &t, 1, NULL, 0, err, sizeof err), 0);
    x[0] = 42;
    CHECK_EQ_INT(qn_st_write(p, &t, 1, NULL, 0, err, sizeof err), 0);
    qn_st_file *f = NULL;
    CHECK_EQ_INT(qn_st_open(p, &f, err, sizeof err), 0);
    if (f) {
        CHECK(((const float *)qn_st_find(f, "x")->data)[0] == 42.0f);
        qn_st_close(&f);
    }
}

/* ---- the independent numpy implementation, both directions */

static const char *tools_dir(void)
{
    static char d[4096];
    char src[4096];
    snprintf(src, sizeof src, "%s", __FILE__);
    snprintf(d, sizeof d, "%s/../tools", dirname(src));
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/quern_model.py", d);
    if (access("/usr/bin/python3", X_OK) != 0 || access(probe, R_OK) != 0) return NULL;
    return d;
}

TEST(numpy_interop)
{
    const char *tools = tools_dir();
    if (!tools) {
        printf("     skip: /usr/bin/python3 or tests/tools/quern_model.py not found\n");
        return;
    }
    const char *py = tmp_path("py.safetensors");
    const char *c = tmp_path("c.safetensors");
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import sys; sys.path.insert(0, \"%s\"); import numpy as np, quern_model as q; "
             "q.write_safetensors(\"%s\", {\"x\": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, "
             "\"h\": np.array([1.5, -0.25], dtype=np.float16), \"i\": np.array([-7, 2**31 - 1], dtype=np.int32), "
             "\"z\": np.zeros((0,), dtype=np.int8)}, {\"format\": \"quern.mlp.v1\", \"u\": \"\\u00e9\"})'",
             tools, py);
    CHECK_EQ_INT(system(cmd), 0);
    qn_st_file *f = NULL;
    char err[256] = "";
    CHECK_EQ_INT(qn_st_open(py, &f, err, sizeof err), 0);
    if (f) {
        const qn_st_tensor *x = qn_st_find(f, "x"), *h = qn_st_find(f, "h"), *i = qn_st_find(f, "i");
        CHECK(x && x->dtype == QN_DTYPE_F32 && x->shape[0] == 2 && x->shape[1] == 3);
        float xv[6];
        if (x) memcpy(xv, x->data, 24);
        for (int k = 0; x && k < 6; k++) CHECK(xv[k] == (float)k - 2.5f);
        uint16_t hv[2];
        if (h) memcpy(hv, h->data, 4);
        CHECK(h && h->dtype == QN_DTYPE_F16 && qn_f16_to_f32(hv[0]) == 1.5f && qn_f16_to_f32(hv[1]) == -0.25f);
        int32_t iv[2];
        if (i) memcpy(iv, i->data, 8);
        CHECK(i && i->dtype == QN_DTYPE_I32 && iv[0] == -7 && iv[1] == INT32_MAX);
        CHECK(qn_st_find(f, "z") && qn_st_find(f, "z")->nbytes == 0);
        CHECK_STR(qn_st_meta(f, "u"), "\xc3\xa9");
        qn_st_close(&f);
    }
    /* ours, read by numpy (its reader checks offsets and coverage too) */
    CHECK_EQ_INT(write_sample(c), 0);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import sys; sys.path.insert(0, \"%s\"); import numpy as np, quern_model as q; "
             "t, m = q.read_safetensors(\"%s\"); "
             "assert t[\"a\"].tolist() == [[1.5, -2.0, 3.25], [0.0, -0.0, np.float32(1e-30)]], t[\"a\"]; "
             "assert t[\"b.bias\"].tolist() == [-128, -1, 0, 1, 127]; assert t[\"empty\"].shape == (0, 7); "
             "assert t[\"d\"].tolist() == [[[-1234567890123]]]; assert m[\"note\"] == \"h\\u00e9llo \\\"quoted\\\"\", m'",
             tools, c);
    CHECK_EQ_INT(system(cmd), 0);
}

int main(void)
{
    g_tmp = qn_test_tmpdir("test_safetensors");
    RUN(roundtrip);
    RUN(handmade_good);
    RUN(malformed_headers);
    RUN(header_length);
    RUN(truncated_everywhere);
    RUN(random_corruption);
    RUN(open_errors);
    RUN(write_errors);
    RUN(numpy_interop);
    return qn_test_done();
}
