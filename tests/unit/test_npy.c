/* test_npy.c: the CLI's .npy/CSV reader and .npy writer (cli/npy.c).
 * Hand-built byte images check the parser's edges; files written by numpy
 * itself (via /usr/bin/python3) check that what numpy writes we read, and
 * what we write numpy reads. */
#include "qn_test.h"

#include "../../cli/npy.c"

static char *tmpdir;

/* Builds a v1 .npy image: header dict padded to 64, then data bytes. */
static size_t make_npy(unsigned char *out, int major, const char *dict, const void *data, size_t dlen)
{
    size_t pre = major == 1 ? 10 : 12;
    size_t dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64;
    size_t hlen = total - pre;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    if (major == 1) {
        out[8] = (unsigned char)(hlen & 0xff);
        out[9] = (unsigned char)(hlen >> 8);
    } else {
        out[8] = (unsigned char)(hlen & 0xff);
        out[9] = (unsigned char)(hlen >> 8);
        out[10] = 0;
        out[11] = 0;
    }
    memcpy(out + pre, dict, dl);
    memset(out + pre + dl, ' ', hlen - dl - 1);
    out[total - 1] = '\n';
    memcpy(out + total, data, dlen);
    return total + dlen;
}

TEST(npy_f32_2d)
{
    float v[6] = {1, 2, 3, 4.5f, -5, 6e-3f};
    unsigned char img[512];
    size_t n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v);
    qn_matrix m;
    qn_npy_error e;
    CHECK_EQ_INT(qn_npy_parse(img, n, &m, &e), 0);
    CHECK_EQ_INT(m.rows, 2);
    CHECK_EQ_INT(m.cols, 3);
    for (int i = 0; i < 6 && m.data; i++) CHECK(m.data[i] == v[i]);
    qn_matrix_free(&m);
    CHECK(m.data == NULL);
}

TEST(npy_1d_is_one_row_v2_header)
{
    double v[4] = {0.25, -1, 3, 1e10};
    unsigned char img[512];
    size_t n = make_npy(img, 2, "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (4,)}", v, sizeof v);
    qn_matrix m;
    CHECK_EQ_INT(qn_npy_parse(img, n, &m, NULL), 0);
    CHECK_EQ_INT(m.rows, 1);
    CHECK_EQ_INT(m.cols, 4);
    for (int i = 0; i < 4 && m.data; i++) CHECK(m.data[i] == (float)v[i]);
    qn_matrix_free(&m);
}

TEST(npy_int_dtypes)
{
    int32_t a[2] = {-7, 100000};
    int64_t b[2] = {-3, 1ll << 40};
    uint8_t c[3] = {0, 128, 255};
    unsigned char img[512];
    qn_matrix m;
    size_t n = make_npy(img, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2), }", a, sizeof a);
    CHECK_EQ_INT(qn_npy_parse(img, n, &m, NULL), 0);
    CHECK(m.data && m.data[0] == -7.0f && m.data[1] == 100000.0f);
    qn_matrix_free(&m);
    n = make_npy(img, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1), }", b, sizeof b);
    CHECK_EQ_INT(qn_npy_parse(img, n, &m, NULL), 0);
    CHECK_EQ_INT(m.rows, 2);
    CHECK(m.data && m.data[0] == -3.0f && m.data[1] == (float)(1ll << 40));
    qn_matrix_free(&m);
    n = make_npy(img, 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", c, sizeof c);
    CHECK_EQ_INT(qn_npy_parse(img, n, &m, NULL), 0);
    CHECK(m.data && m.data[0] == 0.0f && m.data[1] == 128.0f && m.data[2] == 255.0f);
    qn_matrix_free(&m);
}

static void expect_npy_error(const unsigned char *img, size_t n, const char *needle)
{
    qn_matrix m = {1, 1, NULL};
    qn_npy_error e;
    int rc = qn_npy_parse(img, n, &m, &e);
    CHECK_EQ_INT(rc, QN_EFORMAT);
    CHECK(m.data == NULL && m.rows == 0);
    if (!strstr(e.message, needle)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", e.message, needle);
        CHECK(0);
    }
}

TEST(npy_refusals)
{
    float v[8] = {0};
    unsigned char img[512];
    size_t n;
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", v, 16);
    expect_npy_error(img, n, "Fortran");
    n = make_npy(img, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", v, 16);
    expect_npy_error(img, n, "'>f4' is not supported");
    n = make_npy(img, 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", v, 16);
    expect_npy_error(img, n, "not supported");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }", v, 32);
    expect_npy_error(img, n, "3 dimensions");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", v, 4);
    expect_npy_error(img, n, "0 dimensions");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", v, 0);
    expect_npy_error(img, n, "empty");
    /* data shorter and longer than the shape says */
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v, 12);
    expect_npy_error(img, n, "needs 16");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v, 20);
    expect_npy_error(img, n, "needs 16");
    /* header cut off */
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v, 16);
    expect_npy_error(img, 40, "truncated");
    /* not a dict / missing keys / unknown key / huge shape */
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2}", v, 16);
    expect_npy_error(img, n, "not a valid dict");
    n = make_npy(img, 1, "{'descr': '<f4', 'shape': (2, 2), }", v, 16);
    expect_npy_error(img, n, "lacks");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'x': 1}", v, 16);
    expect_npy_error(img, n, "unexpected key");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", v, 16);
    expect_npy_error(img, n, "too large");
    /* not npy at all; unknown version */
    expect_npy_error((const unsigned char *)"hello, world", 12, "magic");
    n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", v, 16);
    img[6] = 9;
    expect_npy_error(img, n, "version 9");
}

static int csv(const char *text, qn_matrix *m, qn_npy_error *e)
{
    return qn_csv_parse(text, strlen(text), m, e);
}

TEST(csv_plain_and_header)
{
    qn_matrix m;
    qn_npy_error e;
    CHECK_EQ_INT(csv("1,2,3\n4, 5 ,6e1\n", &m, &e), 0);
    CHECK_EQ_INT(m.rows, 2);
    CHECK_EQ_INT(m.cols, 3);
    CHECK(m.data && m.data[0] == 1 && m.data[4] == 5 && m.data[5] == 60);
    qn_matrix_free(&m);

    CHECK_EQ_INT(csv("a,b\r\n\r\n-1.5,2\r\n3,4", &m, &e), 0); /* header, CRLF, blank, no final newline */
    CHECK_EQ_INT(m.rows, 2);
    CHECK_EQ_INT(m.cols, 2);
    CHECK(m.data && m.data[0] == -1.5f && m.data[3] == 4);
    qn_matrix_free(&m);

    CHECK_EQ_INT(csv("7\n8\n9\n", &m, &e), 0); /* one column */
    CHECK_EQ_INT(m.rows, 3);
    CHECK_EQ_INT(m.cols, 1);
    qn_matrix_free(&m);
}

TEST(csv_errors)
{
    qn_matrix m;
    qn_npy_error e;
    CHECK_EQ_INT(csv("1,2\n3\n", &m, &e), QN_EFORMAT);
    CHECK(strstr(e.message, "line 2 has 1 values but line 1 has 2") != NULL);
    CHECK(m.data == NULL);
    CHECK_EQ_INT(csv("x,y\n1,2\n3,oops\n", &m, &e), QN_EFORMAT);
    CHECK(strstr(e.message, "line 3, column 2: 'oops'") != NULL);
    CHECK_EQ_INT(csv("1,,2\n", &m, &e), QN_EFORMAT); /* an empty field is a header... */
    CHECK(strstr(e.message, "no rows") != NULL);      /* ...and then nothing is left */
    CHECK_EQ_INT(csv("1,2\n3,\n", &m, &e), QN_EFORMAT);
    CHECK(strstr(e.message, "line 2, column 2") != NULL);
    CHECK_EQ_INT(csv("", &m, &e), QN_EFORMAT);
    CHECK_EQ_INT(csv("only,a,header\n", &m, &e), QN_EFORMAT);
    CHECK(strstr(e.message, "no rows") != NULL);
}

TEST(write_then_read)
{
    float v[15];
    for (int i = 0; i < 15; i++) v[i] = (float)i * 0.5f - 3.0f;
    char path[4200];
    snprintf(path, sizeof path, "%s/rt.npy", tmpdir);
    CHECK_EQ_INT(qn_npy_write_f32(path, v, 5, 3), 0);
    qn_matrix m;
    qn_npy_error e;
    CHECK_EQ_INT(qn_matrix_read(path, &m, &e), 0);
    CHECK_EQ_INT(m.rows, 5);
    CHECK_EQ_INT(m.cols, 3);
    CHECK(m.data && memcmp(m.data, v, sizeof v) == 0);
    qn_matrix_free(&m);
    /* the data starts 64-byte aligned, as numpy writes it */
    struct stat st;
    CHECK_EQ_INT(stat(path, &st), 0);
    CHECK_EQ_INT((st.st_size - (off_t)sizeof v) % 64, 0);
    CHECK_EQ_INT(qn_npy_write_f32(path, NULL, 2, 2), QN_EINVAL);
}

TEST(read_missing_file)
{
    qn_matrix m;
    qn_npy_error e;
    CHECK_EQ_INT(qn_matrix_read("/nonexistent/x.npy", &m, &e), QN_EIO);
    CHECK(strstr(e.message, "/nonexistent/x.npy") != NULL);
    CHECK(strstr(e.message, "No such file") != NULL);
}

static int have_numpy(void)
{
    return system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

/* numpy writes every supported dtype and both header versions; we read them. */
TEST(numpy_writes_we_read)
{
    if (!have_numpy()) {
        printf("  (skipped: /usr/bin/python3 with numpy not found)\n");
        return;
    }
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 - <<'EOF'\n"
             "import numpy as np\n"
             "d = '%s'\n"
             "base = np.arange(12).reshape(3, 4) - 5\n"
             "np.save(d + '/f4.npy', (base / 4).astype('<f4'))\n"
             "np.save(d + '/f8.npy', (base / 8).astype('<f8'))\n"
             "np.save(d + '/i4.npy', base.astype('<i4'))\n"
             "np.save(d + '/i8.npy', base.astype('<i8'))\n"
             "np.save(d + '/u1.npy', (base + 5).astype('u1'))\n"
             "np.save(d + '/one.npy', np.array([1.5, 2.5, 3.5], dtype='<f4'))\n"
             "with open(d + '/v2.npy', 'wb') as f:\n"
             "    np.lib.format.write_array(f, (base / 4).astype('<f4'), version=(2, 0))\n"
             "np.save(d + '/fort.npy', np.asfortranarray((base / 4).astype('<f4')))\n"
             "np.savetxt(d + '/x.csv', base / 4, delimiter=',', header='a,b,c,d', comments='')\n"
             "EOF",
             tmpdir);
    CHECK_EQ_INT(system(cmd), 0);
    static const struct {
        const char *file;
        float scale;
        float offset;
        int rows, cols;
    } cases[] = {
        {"f4.npy", 0.25f, 0, 3, 4}, {"f8.npy", 0.125f, 0, 3, 4}, {"i4.npy", 1, 0, 3, 4},
        {"i8.npy", 1, 0, 3, 4},     {"u1.npy", 1, 5, 3, 4},      {"v2.npy", 0.25f, 0, 3, 4},
        {"x.csv", 0.25f, 0, 3, 4},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", tmpdir, cases[c].file);
        qn_matrix m;
        qn_npy_error e;
        int rc = qn_matrix_read(path, &m, &e);
        if (rc) fprintf(stderr, "  %s: %s\n", cases[c].file, e.message);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(m.rows, cases[c].rows);
        CHECK_EQ_INT(m.cols, cases[c].cols);
        for (int i = 0; i < 12 && m.data; i++)
            CHECK_NEAR(m.data[i], ((float)i - 5 + cases[c].offset) * cases[c].scale, 1e-6);
        qn_matrix_free(&m);
    }
    char path[4200];
    qn_matrix m;
    qn_npy_error e;
    snprintf(path, sizeof path, "%s/one.npy", tmpdir);
    CHECK_EQ_INT(qn_matrix_read(path, &m, &e), 0);
    CHECK(m.rows == 1 && m.cols == 3 && m.data && m.data[2] == 3.5f);
    qn_matrix_free(&m);
    snprintf(path, sizeof path, "%s/fort.npy", tmpdir);
    CHECK_EQ_INT(qn_matrix_read(path, &m, &e), QN_EFORMAT);
    CHECK(strstr(e.message, "fort.npy: ") && strstr(e.message, "Fortran"));
}

/* what we write, numpy reads back exactly */
TEST(we_write_numpy_reads)
{
    if (!have_numpy()) {
        printf("  (skipped: /usr/bin/python3 with numpy not found)\n");
        return;
    }
    float v[6] = {0.1f, -2, 3.25f, 1e30f, -0.0f, 7};
    char path[4200], cmd[8192];
    snprintf(path, sizeof path, "%s/ours.npy", tmpdir);
    CHECK_EQ_INT(qn_npy_write_f32(path, v, 2, 3), 0);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import numpy as np, sys; a = np.load('%s'); "
             "e = np.array([0.1, -2, 3.25, 1e30, -0.0, 7], dtype='<f4').reshape(2, 3); "
             "sys.exit(0 if a.dtype == np.float32 and a.shape == (2, 3) and (a == e).all() else 1)\"",
             path);
    CHECK_EQ_INT(system(cmd), 0);
}

int main(void)
{
    tmpdir = qn_test_tmpdir("npy");
    RUN(npy_f32_2d);
    RUN(npy_1d_is_one_row_v2_header);
    RUN(npy_int_dtypes);
    RUN(npy_refusals);
    RUN(csv_plain_and_header);
    RUN(csv_errors);
    RUN(write_then_read);
    RUN(read_missing_file);
    RUN(numpy_writes_we_read);
    RUN(we_write_numpy_reads);
    free(tmpdir);
    return qn_test_done();
}
