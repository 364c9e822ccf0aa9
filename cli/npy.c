/* npy.c: .npy and CSV readers and the .npy writer behind `quern predict`
 * (see npy.h). The .npy header is a Python dict literal; it is parsed here by
 * a small strict parser rather than by searching for substrings, so that a
 * file numpy would refuse is refused here too. Byte order is handled
 * explicitly, so the code does not assume a little-endian host. */
#include "npy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static const unsigned char NPY_MAGIC[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static void seterr(qn_npy_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(qn_npy_error *err, const char *fmt, ...)
{
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

void qn_matrix_free(qn_matrix *m)
{
    if (!m) return;
    free(m->data);
    memset(m, 0, sizeof *m);
}

/* ---- little-endian loads/stores, host-order independent */

static uint32_t ld_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld_u64(const unsigned char *p)
{
    return (uint64_t)ld_u32(p) | (uint64_t)ld_u32(p + 4) << 32;
}

static void st_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* ---- the header: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } */

typedef struct npy_header {
    char descr[16];
    bool fortran_order;
    int ndim;
    int64_t shape[8];
    bool have_descr, have_order, have_shape;
} npy_header;

typedef struct cursor {
    const char *p, *end;
} cursor;

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool eat(cursor *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

/* A quoted string without escapes (numpy never writes any). */
static bool parse_str(cursor *c, char *out, size_t cap)
{
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return false;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || n + 1 >= cap) return false;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) return false;
    c->p++;
    out[n] = 0;
    return true;
}

static bool parse_word(cursor *c, const char *w)
{
    skip_ws(c);
    size_t n = strlen(w);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return false;
    c->p += n;
    return true;
}

/* A tuple of non-negative ints: (), (3,), (3, 4). */
static bool parse_shape(cursor *c, npy_header *h)
{
    if (!eat(c, '(')) return false;
    h->ndim = 0;
    for (;;) {
        if (eat(c, ')')) return true;
        skip_ws(c);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return false;
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (v > (INT64_MAX - 9) / 10) return false;
            v = v * 10 + (*c->p++ - '0');
        }
        if (c->p < c->end && *c->p == 'L') c->p++; /* Python 2 longs */
        if (h->ndim >= (int)(sizeof h->shape / sizeof h->shape[0])) return false;
        h->shape[h->ndim++] = v;
        if (eat(c, ',')) continue;
        if (eat(c, ')')) return true;
        return false;
    }
}

static int parse_header(const char *s, size_t n, npy_header *h, qn_npy_error *err)
{
    cursor c = {s, s + n};
    memset(h, 0, sizeof *h);
    if (!eat(&c, '{')) goto bad;
    for (;;) {
        if (eat(&c, '}')) break;
        char key[32];
        if (!parse_str(&c, key, sizeof key) || !eat(&c, ':')) goto bad;
        if (!strcmp(key, "descr")) {
            if (!parse_str(&c, h->descr, sizeof h->descr)) goto bad;
            h->have_descr = true;
        } else if (!strcmp(key, "fortran_order")) {
            if (parse_word(&c, "True")) h->fortran_order = true;
            else if (parse_word(&c, "False")) h->fortran_order = false;
            else goto bad;
            h->have_order = true;
        } else if (!strcmp(key, "shape")) {
            if (!parse_shape(&c, h)) goto bad;
            h->have_shape = true;
        } else {
            seterr(err, "npy header has an unexpected key '%s'", key);
            return QN_EFORMAT;
        }
        if (eat(&c, ',')) continue;
        if (eat(&c, '}')) break;
        goto bad;
    }
    if (!h->have_descr || !h->have_order || !h->have_shape) {
        seterr(err, "npy header lacks one of 'descr', 'fortran_order', 'shape'");
        return QN_EFORMAT;
    }
    return 0;
bad:
    seterr(err, "npy header is not a valid dict literal: %.*s", (int)(n > 120 ? 120 : n), s);
    return QN_EFORMAT;
}

typedef enum { EL_F4, EL_F8, EL_I4, EL_I8, EL_U1 } el_kind;

static int parse_descr(const char *d, el_kind *k, size_t *size, qn_npy_error *err)
{
    static const struct {
        const char *name;
        el_kind kind;
        size_t size;
    } known[] = {
        {"<f4", EL_F4, 4}, {"<f8", EL_F8, 8}, {"<i4", EL_I4, 4},
        {"<i8", EL_I8, 8}, {"|u1", EL_U1, 1}, {"<u1", EL_U1, 1},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (!strcmp(d, known[i].name)) {
            *k = known[i].kind;
            *size = known[i].size;
            return 0;
        }
    }
    seterr(err, "npy dtype '%s' is not supported (use float32, float64, int32, int64 or uint8, "
                "little-endian)", d);
    return QN_EFORMAT;
}

int qn_npy_parse(const void *buf, size_t len, qn_matrix *out, qn_npy_error *err)
{
    const unsigned char *b = buf;
    memset(out, 0, sizeof *out);
    if (err) err->message[0] = 0;
    if (len < 10 || memcmp(b, NPY_MAGIC, sizeof NPY_MAGIC) != 0) {
        seterr(err, "not an .npy file (bad magic)");
        return QN_EFORMAT;
    }
    unsigned major = b[6];
    size_t hlen, hoff;
    if (major == 1) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        hoff = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) {
            seterr(err, "npy file truncated in its preamble");
            return QN_EFORMAT;
        }
        hlen = ld_u32(b + 8);
        hoff = 12;
    } else {
        seterr(err, "npy format version %u.%u is not supported", major, (unsigned)b[7]);
        return QN_EFORMAT;
    }
    if (hlen > len - hoff) {
        seterr(err, "npy file truncated in its header (%zu header bytes announced, %zu present)",
               hlen, len - hoff);
        return QN_EFORMAT;
    }
    npy_header h;
    int rc = parse_header((const char *)b + hoff, hlen, &h, err);
    if (rc) return rc;
    if (h.fortran_order) {
        seterr(err, "npy array is in Fortran order; save it with np.ascontiguousarray first");
        return QN_EFORMAT;
    }
    el_kind kind;
    size_t esize;
    rc = parse_descr(h.descr, &kind, &esize, err);
    if (rc) return rc;

    int64_t rows, cols;
    if (h.ndim == 1) {
        rows = 1;
        cols = h.shape[0];
    } else if (h.ndim == 2) {
        rows = h.shape[0];
        cols = h.shape[1];
    } else {
        seterr(err, "npy array has %d dimensions; need 1 (one row) or 2 (rows, cols)", h.ndim);
        return QN_EFORMAT;
    }
    if (rows == 0 || cols == 0) {
        seterr(err, "npy array is empty (shape %lld x %lld)", (long long)rows, (long long)cols);
        return QN_EFORMAT;
    }
    size_t avail = len - hoff - hlen;
    if ((uint64_t)rows > SIZE_MAX / (uint64_t)cols / esize / 4) {
        seterr(err, "npy array is too large (%lld x %lld)", (long long)rows, (long long)cols);
        return QN_EFORMAT;
    }
    size_t n = (size_t)rows * (size_t)cols;
    if (n * esize != avail) {
        seterr(err, "npy data is %zu bytes but shape %lld x %lld of %s needs %zu", avail,
               (long long)rows, (long long)cols, h.descr, n * esize);
        return QN_EFORMAT;
    }
    float *data = malloc(n * sizeof(float));
    if (!data) {
        seterr(err, "out of memory for %zu values", n);
        return QN_ENOMEM;
    }
    const unsigned char *src = b + hoff + hlen;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *e = src + i * esize;
        switch (kind) {
        case EL_F4: {
            uint32_t u = ld_u32(e);
            float f;
            memcpy(&f, &u, 4);
            data[i] = f;
            break;
        }
        case EL_F8: {
            uint64_t u = ld_u64(e);
            double d;
            memcpy(&d, &u, 8);
            data[i] = (float)d;
            break;
        }
        case EL_I4: data[i] = (float)(int32_t)ld_u32(e); break;
        case EL_I8: data[i] = (float)(int64_t)ld_u64(e); break;
        case EL_U1: data[i] = (float)e[0]; break;
        }
    }
    out->rows = rows;
    out->cols = cols;
    out->data = data;
    return 0;
}

/* ---- CSV */

/* Parses one field (trimmed) as a number; false when it is not one. */
static bool parse_number(const char *s, size_t n, float *out)
{
    while (n && (*s == ' ' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    char tmp[96];
    if (n == 0 || n >= sizeof tmp) return false;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    double d = strtod(tmp, &end);
    if (end != tmp + n) return false;
    *out = (float)d;
    return true;
}

int qn_csv_parse(const char *text, size_t len, qn_matrix *out, qn_npy_error *err)
{
    int rc = QN_EFORMAT;
    float *data = NULL, *row = NULL;
    size_t n = 0, cap = 0, row_cap = 0;
    int64_t rows = 0, cols = -1;
    long line = 0, cols_line = 0;
    bool first = true;
    memset(out, 0, sizeof *out);
    if (err) err->message[0] = 0;

    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *next = eol ? eol + 1 : end;
        line++;
        if (le > p && le[-1] == '\r') le--;
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\t')) q++;
        if (q == le) { /* blank line */
            p = next;
            continue;
        }
        /* split into fields; parse them into row[] */
        int64_t k = 0;
        bool numeric = true;
        long bad_col = 0;
        const char *bad = NULL;
        size_t bad_n = 0;
        const char *f = p;
        for (;;) {
            const char *comma = memchr(f, ',', (size_t)(le - f));
            const char *fe = comma ? comma : le;
            if ((size_t)k >= row_cap) {
                size_t nc = row_cap ? row_cap * 2 : 64;
                float *r = realloc(row, nc * sizeof *r);
                if (!r) {
                    seterr(err, "out of memory reading CSV");
                    rc = QN_ENOMEM;
                    goto fail;
                }
                row = r;
                row_cap = nc;
            }
            if (!parse_number(f, (size_t)(fe - f), &row[k]) && numeric) {
                numeric = false;
                bad_col = (long)k + 1;
                bad = f;
                bad_n = (size_t)(fe - f);
            }
            k++;
            if (!comma) break;
            f = comma + 1;
        }
        if (!numeric) {
            if (first) { /* a header line */
                first = false;
                p = next;
                continue;
            }
            seterr(err, "CSV line %ld, column %ld: '%.*s' is not a number", line, bad_col,
                   (int)(bad_n > 40 ? 40 : bad_n), bad);
            goto fail;
        }
        first = false;
        if (cols < 0) {
            cols = k;
            cols_line = line;
        } else if (k != cols) {
            seterr(err, "CSV line %ld has %lld values but line %ld has %lld", line, (long long)k,
                   cols_line, (long long)cols);
            goto fail;
        }
        if (n + (size_t)k > cap) {
            size_t nc = cap ? cap * 2 : 1024;
            while (nc < n + (size_t)k) nc *= 2;
            float *d = realloc(data, nc * sizeof *d);
            if (!d) {
                seterr(err, "out of memory reading CSV");
                rc = QN_ENOMEM;
                goto fail;
            }
            data = d;
            cap = nc;
        }
        memcpy(data + n, row, (size_t)k * sizeof *row);
        n += (size_t)k;
        rows++;
        p = next;
    }
    if (rows == 0) {
        seterr(err, "CSV has no rows of numbers");
        goto fail;
    }
    free(row);
    out->rows = rows;
    out->cols = cols;
    out->data = data;
    return 0;
fail:
    free(row);
    free(data);
    return rc;
}

/* ---- files */

int qn_matrix_read(const char *path, qn_matrix *out, qn_npy_error *err)
{
    int rc = QN_EIO;
    char *buf = NULL;
    memset(out, 0, sizeof *out);
    if (err) err->message[0] = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        seterr(err, "cannot open %s: %s", path, strerror(errno));
        return QN_EIO;
    }
    size_t cap = 1 << 16, n = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = QN_ENOMEM;
        seterr(err, "out of memory reading %s", path);
        goto fail;
    }
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = QN_ENOMEM;
                seterr(err, "out of memory reading %s", path);
                goto fail;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) break;
    }
    if (ferror(fp)) {
        seterr(err, "cannot read %s: %s", path, strerror(errno));
        goto fail;
    }
    if (n >= sizeof NPY_MAGIC && memcmp(buf, NPY_MAGIC, sizeof NPY_MAGIC) == 0)
        rc = qn_npy_parse(buf, n, out, err);
    else
        rc = qn_csv_parse(buf, n, out, err);
    if (rc && err) { /* say which file */
        char why[sizeof err->message];
        memcpy(why, err->message, sizeof why);
        seterr(err, "%s: %s", path, why);
    }
fail:
    free(buf);
    fclose(fp);
    return rc;
}

int qn_npy_write_f32(const char *path, const float *data, int64_t rows, int64_t cols)
{
    if (rows < 0 || cols < 0 || (!data && rows * cols > 0)) return QN_EINVAL;
    char dict[128];
    int dl = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                      (long long)rows, (long long)cols);
    /* pad with spaces and a final newline so the data starts 64-byte aligned,
     * as numpy itself does */
    size_t total = 10 + (size_t)dl + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    unsigned char head[256];
    memcpy(head, NPY_MAGIC, 6);
    head[6] = 1;
    head[7] = 0;
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8);
    memcpy(head + 10, dict, (size_t)dl);
    memset(head + 10 + dl, ' ', hlen - (size_t)dl - 1);
    head[padded - 1] = '\n';

    FILE *fp = fopen(path, "wb");
    if (!fp) return QN_EIO;
    int rc = QN_EIO;
    if (fwrite(head, 1, padded, fp) != padded) goto fail;
    size_t n = (size_t)rows * (size_t)cols;
    unsigned char chunk[4096];
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; i < n && k + 4 <= sizeof chunk; i++, k += 4) {
            uint32_t u;
            memcpy(&u, &data[i], 4);
            st_u32(chunk + k, u);
        }
        if (fwrite(chunk, 1, k, fp) != k) goto fail;
    }
    rc = 0;
fail:
    if (fclose(fp) != 0 && rc == 0) rc = QN_EIO;
    return rc;
}
