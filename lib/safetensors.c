/* safetensors.c: the safetensors reader and writer.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON (parsed
 * with jansson, never by hand), then the raw tensor data. Everything the header
 * claims is checked against the bytes actually present before any pointer into
 * the data is formed, so a truncated or lying file is QN_EFORMAT, never an
 * out-of-bounds read. The checks follow the reference implementation
 * (huggingface/safetensors, Metadata::validate): tensors, sorted by offset,
 * must tile the data section exactly, with no overlap, gap or trailing bytes.
 * This file must never trust a length it has not compared with the buffer. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "quern reads safetensors data in place and assumes a little-endian host"
#endif

struct qn_st_file {
    uint8_t *buf;           /* the whole file */
    size_t len;
    json_t *root;           /* the parsed header; names and metadata point into it */
    json_t *meta;           /* root's "__metadata__" object, or NULL (borrowed) */
    qn_st_tensor *tensors;  /* sorted by data offset */
    size_t ntensors;
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Offsets of one entry while validating; kept beside the tensors to sort them. */
typedef struct st_span {
    uint64_t begin, end;
    size_t idx;
} st_span;

static int span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* A JSON integer in [0, max], else -1. Reals (even 2.0) are rejected: the
 * reference parses these fields as unsigned integers. */
static int64_t json_uint(const json_t *v, int64_t max)
{
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > max) return -1;
    return (int64_t)x;
}

static int parse_entry(const char *name, json_t *ent, uint64_t data_len, qn_st_tensor *t,
                       st_span *sp, char *err, size_t errlen)
{
    if (!json_is_object(ent)) {
        seterr(err, errlen, "tensor \"%s\": entry is not an object", name);
        return QN_EFORMAT;
    }
    json_t *jd = json_object_get(ent, "dtype");
    json_t *js = json_object_get(ent, "shape");
    json_t *jo = json_object_get(ent, "data_offsets");
    if (!json_is_string(jd) || qn_dtype_from_st_name(json_string_value(jd), &t->dtype) != 0) {
        seterr(err, errlen, "tensor \"%s\": missing or unknown dtype", name);
        return QN_EFORMAT;
    }
    if (!json_is_array(js) || json_array_size(js) > QN_ST_MAX_DIMS) {
        seterr(err, errlen, "tensor \"%s\": shape is not an array of at most %d dims", name,
               QN_ST_MAX_DIMS);
        return QN_EFORMAT;
    }
    /* Element count and byte size with overflow checks: a lying shape must not
     * wrap around to a small number that then matches the offsets. */
    uint64_t nbytes = qn_dtype_size(t->dtype);
    t->ndim = (int)json_array_size(js);
    for (int d = 0; d < t->ndim; d++) {
        int64_t dim = json_uint(json_array_get(js, (size_t)d), INT64_MAX);
        if (dim < 0) {
            seterr(err, errlen, "tensor \"%s\": shape[%d] is not a non-negative integer", name, d);
            return QN_EFORMAT;
        }
        t->shape[d] = dim;
        if (__builtin_mul_overflow(nbytes, (uint64_t)dim, &nbytes)) {
            seterr(err, errlen, "tensor \"%s\": shape overflows", name);
            return QN_EFORMAT;
        }
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2) {
        seterr(err, errlen, "tensor \"%s\": data_offsets is not [begin, end]", name);
        return QN_EFORMAT;
    }
    int64_t b = json_uint(json_array_get(jo, 0), INT64_MAX);
    int64_t e = json_uint(json_array_get(jo, 1), INT64_MAX);
    if (b < 0 || e < 0 || b > e) {
        seterr(err, errlen, "tensor \"%s\": data_offsets are not 0 <= begin <= end", name);
        return QN_EFORMAT;
    }
    if ((uint64_t)e > data_len) {
        seterr(err, errlen, "tensor \"%s\": data ends at %lld, past the %llu data bytes", name,
               (long long)e, (unsigned long long)data_len);
        return QN_EFORMAT;
    }
    if ((uint64_t)(e - b) != nbytes) {
        seterr(err, errlen, "tensor \"%s\": %lld data bytes, but dtype and shape need %llu", name,
               (long long)(e - b), (unsigned long long)nbytes);
        return QN_EFORMAT;
    }
    t->name = name;
    t->nbytes = (size_t)nbytes;
    sp->begin = (uint64_t)b;
    sp->end = (uint64_t)e;
    return 0;
}

/* Takes ownership of buf (malloc'd) in every case. */
static int parse_owned(uint8_t *buf, size_t len, qn_st_file **out, char *err, size_t errlen)
{
    int rc = QN_EFORMAT;
    st_span *spans = NULL;
    qn_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        free(buf);
        seterr(err, errlen, "out of memory");
        return QN_ENOMEM;
    }
    f->buf = buf;
    f->len = len;

    if (len < 8) {
        seterr(err, errlen, "file is %zu bytes, shorter than the 8-byte header length", len);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > QN_ST_MAX_HEADER) {
        seterr(err, errlen, "header length %llu exceeds the %u-byte limit", (unsigned long long)n,
               QN_ST_MAX_HEADER);
        goto fail;
    }
    if (n > len - 8) {
        seterr(err, errlen, "header length %llu runs past the end of the %zu-byte file",
               (unsigned long long)n, len);
        goto fail;
    }
    const uint64_t data_len = len - 8 - n;
    const uint8_t *data = buf + 8 + n;

    /* Duplicate keys would make a tensor name ambiguous; NUL inside strings
     * stays rejected (jansson's default), names are C strings. */
    json_error_t jerr;
    f->root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root) {
        seterr(err, errlen, "header is not valid JSON: %s (at byte %d)", jerr.text, jerr.position);
        goto fail;
    }
    if (!json_is_object(f->root)) {
        seterr(err, errlen, "header is not a JSON object");
        goto fail;
    }

    size_t nkeys = json_object_size(f->root);
    f->tensors = calloc(nkeys ? nkeys : 1, sizeof *f->tensors);
    spans = calloc(nkeys ? nkeys : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        rc = QN_ENOMEM;
        seterr(err, errlen, "out of memory");
        goto fail;
    }
    const char *key;
    json_t *val;
    size_t nt = 0;
    json_object_foreach(f->root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                seterr(err, errlen, "__metadata__ is not an object");
                goto fail;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    seterr(err, errlen, "__metadata__ value \"%s\" is not a string", mk);
                    goto fail;
                }
            }
            f->meta = val;
            continue;
        }
        /* Its own code, so that rc stays QN_EFORMAT for every later check
         * (issue 17: a metadata error after a valid entry returned 0). */
        int erc = parse_entry(key, val, data_len, &f->tensors[nt], &spans[nt], err, errlen);
        if (erc != 0) {
            rc = erc;
            goto fail;
        }
        spans[nt].idx = nt;
        nt++;
    }

    /* Sorted by offset, the tensors must tile [0, data_len) exactly. */
    qsort(spans, nt, sizeof *spans, span_cmp);
    uint64_t pos = 0;
    for (size_t i = 0; i < nt; i++) {
        const qn_st_tensor *t = &f->tensors[spans[i].idx];
        if (spans[i].begin != pos) {
            seterr(err, errlen, "tensor \"%s\" starts at %llu, expected %llu (%s)", t->name,
                   (unsigned long long)spans[i].begin, (unsigned long long)pos,
                   spans[i].begin < pos ? "overlap" : "gap");
            goto fail;
        }
        pos = spans[i].end;
    }
    if (pos != data_len) {
        seterr(err, errlen, "tensors cover %llu of the %llu data bytes", (unsigned long long)pos,
               (unsigned long long)data_len);
        goto fail;
    }
    /* Reorder into offset order and point each tensor at its bytes. */
    qn_st_tensor *sorted = calloc(nt ? nt : 1, sizeof *sorted);
    if (!sorted) {
        rc = QN_ENOMEM;
        seterr(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nt; i++) {
        sorted[i] = f->tensors[spans[i].idx];
        sorted[i].data = data + spans[i].begin;
    }
    free(f->tensors);
    f->tensors = sorted;
    f->ntensors = nt;
    free(spans);
    *out = f;
    return 0;

fail:
    /* Only the success path above returns 0: a failure that forgot its code
     * is a bug, but must never reach a caller as "parsed, no file". */
    if (rc >= 0) {
        rc = QN_EINTERNAL;
        seterr(err, errlen, "internal error: safetensors parser failed without a code");
    }
    free(spans);
    qn_st_close(&f);
    return rc;
}

int qn_st_parse(const void *buf, size_t len, qn_st_file **out, char *err, size_t errlen)
{
    *out = NULL;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        seterr(err, errlen, "out of memory");
        return QN_ENOMEM;
    }
    if (len) memcpy(copy, buf, len);
    return parse_owned(copy, len, out, err, errlen);
}

int qn_st_open(const char *path, qn_st_file **out, char *err, size_t errlen)
{
    *out = NULL;
    uint8_t *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return QN_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s is not a regular file", path);
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        seterr(err, errlen, "out of memory reading %zu bytes", size);
        return QN_ENOMEM;
    }
    /* A file that shrinks while we read is parsed as what we got: validation
     * then reports it truncated. */
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            seterr(err, errlen, "cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    return parse_owned(buf, got, out, err, errlen);

fail:
    free(buf);
    close(fd);
    return QN_EIO;
}

void qn_st_close(qn_st_file **pf)
{
    if (!pf || !*pf) return;
    qn_st_file *f = *pf;
    free(f->tensors);
    if (f->root) json_decref(f->root);
    free(f->buf);
    free(f);
    *pf = NULL;
}

size_t qn_st_count(const qn_st_file *f) { return f->ntensors; }

const qn_st_tensor *qn_st_at(const qn_st_file *f, size_t i)
{
    return i < f->ntensors ? &f->tensors[i] : NULL;
}

const qn_st_tensor *qn_st_find(const qn_st_file *f, const char *name)
{
    for (size_t i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *qn_st_meta(const qn_st_file *f, const char *key)
{
    if (!f->meta) return NULL;
    return json_string_value(json_object_get(f->meta, key)); /* NULL if absent */
}

size_t qn_st_file_size(const qn_st_file *f) { return f->len; }

/* ---- writing */

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Builds the header JSON (compact, metadata first, tensors in the given order
 * with consecutive offsets). Returns a malloc'd string or NULL with err set. */
static char *build_header(const qn_st_tensor *tensors, size_t nt, const char *const *meta,
                          size_t nmeta, int *rc, char *err, size_t errlen)
{
    char *s = NULL;
    json_t *root = json_object();
    *rc = QN_ENOMEM;
    if (!root) goto fail;
    if (nmeta) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0) goto fail;
        for (size_t i = 0; i < nmeta; i++) {
            const char *k = meta[2 * i], *v = meta[2 * i + 1];
            if (!k || !v) {
                *rc = QN_EINVAL;
                seterr(err, errlen, "metadata pair %zu has a NULL key or value", i);
                goto fail;
            }
            if (json_object_set_new(m, k, json_string(v)) != 0) {
                *rc = QN_EINVAL;
                seterr(err, errlen, "metadata \"%s\" is not valid UTF-8", k);
                goto fail;
            }
        }
    }
    uint64_t off = 0;
    for (size_t i = 0; i < nt; i++) {
        const qn_st_tensor *t = &tensors[i];
        *rc = QN_EINVAL;
        if (!t->name || strcmp(t->name, "__metadata__") == 0 || json_object_get(root, t->name)) {
            seterr(err, errlen, "tensor %zu: missing, reserved or duplicate name", i);
            goto fail;
        }
        const char *dt = qn_dtype_st_name(t->dtype);
        if (!dt || t->ndim < 0 || t->ndim > QN_ST_MAX_DIMS) {
            seterr(err, errlen, "tensor \"%s\": bad dtype or ndim", t->name);
            goto fail;
        }
        uint64_t nbytes = qn_dtype_size(t->dtype);
        json_t *shape = json_array();
        json_t *ent = json_object();
        json_t *offs = json_array();
        if (!shape || !ent || !offs) {
            json_decref(shape);
            json_decref(ent);
            json_decref(offs);
            *rc = QN_ENOMEM;
            goto fail;
        }
        json_object_set_new(ent, "dtype", json_string(dt));
        json_object_set_new(ent, "shape", shape);
        json_object_set_new(ent, "data_offsets", offs);
        if (json_object_set_new(root, t->name, ent) != 0) {
            seterr(err, errlen, "tensor \"%s\": name is not valid UTF-8", t->name);
            goto fail;
        }
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || __builtin_mul_overflow(nbytes, (uint64_t)t->shape[d], &nbytes)) {
                seterr(err, errlen, "tensor \"%s\": bad shape", t->name);
                goto fail;
            }
            json_array_append_new(shape, json_integer(t->shape[d]));
        }
        if (nbytes != t->nbytes || (nbytes && !t->data)) {
            seterr(err, errlen, "tensor \"%s\": nbytes %zu does not match dtype and shape (%llu)",
                   t->name, t->nbytes, (unsigned long long)nbytes);
            goto fail;
        }
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + nbytes)));
        off += nbytes;
    }
    s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) {
        *rc = QN_ENOMEM;
        seterr(err, errlen, "cannot serialise the header");
    }
    json_decref(root);
    return s;

fail:
    if (*rc == QN_ENOMEM) seterr(err, errlen, "out of memory");
    json_decref(root);
    return NULL;
}

int qn_st_write(const char *path, const qn_st_tensor *tensors, size_t ntensors,
                const char *const *meta, size_t nmeta_pairs, char *err, size_t errlen)
{
    int rc;
    int fd = -1, created = 0;
    char *tmp = NULL;
    char *hdr = build_header(tensors, ntensors, meta, nmeta_pairs, &rc, err, errlen);
    if (!hdr) return rc;

    /* As the reference writer: pad the header with spaces so the data starts
     * 8-byte aligned. */
    size_t hlen = strlen(hdr), pad = (8 - hlen % 8) % 8;
    uint8_t lenbuf[8];
    uint64_t n = hlen + pad;
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(n >> (8 * i));
    static const char spaces[8] = "        ";

    rc = QN_ENOMEM;
    size_t plen = strlen(path);
    tmp = malloc(plen + 5);
    if (!tmp) goto fail;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    rc = QN_EIO;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        seterr(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto fail;
    }
    created = 1;
    int bad = write_all(fd, lenbuf, 8) || write_all(fd, hdr, hlen) || write_all(fd, spaces, pad);
    for (size_t i = 0; i < ntensors && !bad; i++)
        bad = write_all(fd, tensors[i].data, tensors[i].nbytes);
    /* fsync before rename: after a crash the name points at a whole file or
     * at the previous one, never at a torn one. */
    if (bad || fsync(fd) != 0) {
        seterr(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        seterr(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        seterr(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    free(tmp);
    free(hdr);
    return 0;

fail:
    if (fd >= 0) close(fd);
    if (created) unlink(tmp);
    free(tmp);
    free(hdr);
    return rc;
}
