/* mpjson.c: msgpack -> jansson, walking the bytes directly (no msgpack-c
 * object tree), so nothing is allocated in proportion to what a header
 * claims: a container's declared count is checked against the bytes left
 * (every element takes at least one) before a single element is read. */
#include "mpjson.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct rd {
    const uint8_t *p, *end;
    const char *why;
} rd;

static int need(rd *r, size_t n)
{
    if ((size_t)(r->end - r->p) >= n) return 1;
    r->why = "truncated";
    return 0;
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static json_t *base64(const uint8_t *p, size_t n)
{
    size_t out = (n + 2) / 3 * 4;
    char *s = malloc(out + 1);
    if (!s) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        s[k++] = b64[v >> 18 & 63];
        s[k++] = b64[v >> 12 & 63];
        s[k++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        s[k++] = i + 2 < n ? b64[v & 63] : '=';
    }
    json_t *j = json_stringn(s, k);
    free(s);
    return j;
}

/* JSON has no NaN or infinities: they travel as the strings numpy and
 * JavaScript print for them. */
static json_t *real(double d)
{
    if (isnan(d)) return json_string("NaN");
    if (isinf(d)) return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

/* An f32 as the shortest decimal that reads back as the same f32 (0.97f
 * prints as 0.97, not 0.970000029): the double nearest that decimal, which
 * the 15-digit dump (qn_mpjson_dumps) prints exactly so. */
static json_t *real_f32(float f)
{
    if (!isfinite(f)) return real(f);
    char s[32];
    double d = f;
    for (int p = 6; p <= 9; p++) {
        snprintf(s, sizeof s, "%.*g", p, (double)f);
        d = strtod(s, NULL);
        if ((float)d == f) break;
    }
    return json_real(d);
}

/* A str that is not valid UTF-8 (JSON must be) keeps its ASCII and shows
 * each other byte as U+FFFD. */
static json_t *text(const uint8_t *p, size_t n)
{
    json_t *j = json_stringn((const char *)p, n);
    if (j) return j;
    char *s = malloc(n * 3 + 1);
    if (!s) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x80 && p[i] != 0) s[k++] = (char)p[i];
        else { s[k++] = (char)0xef; s[k++] = (char)0xbf; s[k++] = (char)0xbd; }
    }
    j = json_stringn(s, k);
    free(s);
    return j;
}

static json_t *value(rd *r, int depth);

/* A tensor map's rows, if m (a finished JSON object) is one: dtype "f32",
 * shape [rows, cols] or [n] of positive ints, data the bin it came with
 * (kept aside, since the JSON object holds it as base64). */
static json_t *as_tensor(json_t *m, const uint8_t *bin, size_t binlen)
{
    if (!bin || json_object_size(m) != 3) return NULL;
    json_t *dt = json_object_get(m, "dtype"), *sh = json_object_get(m, "shape");
    if (!json_is_string(dt) || strcmp(json_string_value(dt), "f32") || !json_is_array(sh)) return NULL;
    size_t nd = json_array_size(sh);
    if (nd < 1 || nd > 2 || !json_object_get(m, "data")) return NULL;
    json_int_t dims[2] = {1, 1};
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(sh, i);
        if (!json_is_integer(d) || json_integer_value(d) < 1) return NULL;
        dims[i] = json_integer_value(d);
    }
    json_int_t rows = nd == 2 ? dims[0] : 1, cols = nd == 2 ? dims[1] : dims[0];
    if ((uint64_t)cols > binlen / 4 || (uint64_t)rows > binlen / 4 / (uint64_t)cols ||
        (uint64_t)rows * (uint64_t)cols * 4 != binlen)
        return NULL;
    json_t *out = json_array();
    for (json_int_t i = 0; out && i < rows; i++) {
        json_t *row = nd == 2 ? json_array() : out;
        if (!row) { json_decref(out); return NULL; }
        for (json_int_t c = 0; c < cols; c++) {
            uint32_t u = (uint32_t)bin[0] | (uint32_t)bin[1] << 8 | (uint32_t)bin[2] << 16 |
                         (uint32_t)bin[3] << 24;
            bin += 4;
            float f;
            memcpy(&f, &u, 4);
            if (json_array_append_new(row, real_f32(f))) {
                if (row != out) json_decref(row);
                json_decref(out);
                return NULL;
            }
        }
        if (nd == 2 && json_array_append_new(out, row)) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* A map key as JSON spells it: a str as is, anything else as its own
 * compact JSON text (3 -> "3", nil -> "null"). */
static char *key_text(json_t *k)
{
    if (json_is_string(k)) return strdup(json_string_value(k));
    return qn_mpjson_dumps(k);
}

static json_t *container(rd *r, uint64_t n, int is_map, int depth)
{
    if (depth >= MAX_DEPTH) {
        r->why = "nested too deep";
        return NULL;
    }
    /* every element (a map entry: two) takes at least one byte */
    if (n > (uint64_t)(r->end - r->p) / (is_map ? 2 : 1)) {
        r->why = "truncated";
        return NULL;
    }
    json_t *c = is_map ? json_object() : json_array();
    const uint8_t *tensor_bin = NULL;
    size_t tensor_len = 0;
    for (uint64_t i = 0; c && i < n; i++) {
        if (!is_map) {
            json_t *v = value(r, depth + 1);
            if (!v || json_array_append_new(c, v)) goto fail;
            continue;
        }
        json_t *k = value(r, depth + 1);
        if (!k) goto fail;
        char *ks = key_text(k);
        json_decref(k);
        if (!ks) goto fail;
        const uint8_t *vstart = r->p;
        json_t *v = value(r, depth + 1);
        if (!v) { free(ks); goto fail; }
        /* remember a "data" bin for the tensor check below */
        if (!strcmp(ks, "data") && (*vstart == 0xc4 || *vstart == 0xc5 || *vstart == 0xc6)) {
            int h = *vstart == 0xc4 ? 1 : *vstart == 0xc5 ? 2 : 4;
            tensor_len = (size_t)be(vstart + 1, h);
            tensor_bin = vstart + 1 + h;
        }
        int bad = json_object_set_new(c, ks, v);
        free(ks);
        if (bad) goto fail;
    }
    if (c && is_map) {
        json_t *t = as_tensor(c, tensor_bin, tensor_len);
        if (t) {
            json_decref(c);
            return t;
        }
    }
    return c;
fail:
    json_decref(c);
    return NULL;
}

static json_t *value(rd *r, int depth)
{
    if (!need(r, 1)) return NULL;
    uint8_t c = *r->p++;
    if (c <= 0x7f) return json_integer(c);
    if (c >= 0xe0) return json_integer((int8_t)c);
    if (c <= 0x8f) return container(r, c & 0x0f, 1, depth);
    if (c <= 0x9f) return container(r, c & 0x0f, 0, depth);
    if (c <= 0xbf) {
        size_t n = c & 0x1f;
        if (!need(r, n)) return NULL;
        r->p += n;
        return text(r->p - n, n);
    }
    int h; /* bytes of a length or value that follow */
    switch (c) {
    case 0xc0: return json_null();
    case 0xc2: return json_false();
    case 0xc3: return json_true();
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        h = 1 << (c - 0xcc);
        if (!need(r, (size_t)h)) return NULL;
        uint64_t u = be(r->p, h);
        r->p += h;
        if (u > INT64_MAX) { /* past json_int_t: exact, as text */
            char s[24];
            snprintf(s, sizeof s, "%llu", (unsigned long long)u);
            return json_string(s);
        }
        return json_integer((json_int_t)u);
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        h = 1 << (c - 0xd0);
        if (!need(r, (size_t)h)) return NULL;
        uint64_t u = be(r->p, h);
        r->p += h;
        int64_t v = h == 1 ? (int8_t)u : h == 2 ? (int16_t)u : h == 4 ? (int32_t)u : (int64_t)u;
        return json_integer(v);
    }
    case 0xca: {
        if (!need(r, 4)) return NULL;
        uint32_t u = (uint32_t)be(r->p, 4);
        r->p += 4;
        float f;
        memcpy(&f, &u, 4);
        return real_f32(f);
    }
    case 0xcb: {
        if (!need(r, 8)) return NULL;
        uint64_t u = be(r->p, 8);
        r->p += 8;
        double d;
        memcpy(&d, &u, 8);
        return real(d);
    }
    case 0xd9: case 0xda: case 0xdb:
    case 0xc4: case 0xc5: case 0xc6: {
        h = (c == 0xd9 || c == 0xc4) ? 1 : (c == 0xda || c == 0xc5) ? 2 : 4;
        if (!need(r, (size_t)h)) return NULL;
        uint64_t n = be(r->p, h);
        r->p += h;
        if (!need(r, n)) return NULL;
        r->p += n;
        return c >= 0xd9 ? text(r->p - n, n) : base64(r->p - n, n);
    }
    case 0xdc: case 0xdd: case 0xde: case 0xdf: {
        h = (c == 0xdc || c == 0xde) ? 2 : 4;
        if (!need(r, (size_t)h)) return NULL;
        uint64_t n = be(r->p, h);
        r->p += h;
        return container(r, n, c >= 0xde, depth);
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
    case 0xc7: case 0xc8: case 0xc9: {
        uint64_t n;
        if (c >= 0xd4) n = (uint64_t)1 << (c - 0xd4);
        else {
            h = 1 << (c - 0xc7);
            if (!need(r, (size_t)h)) return NULL;
            n = be(r->p, h);
            r->p += h;
        }
        if (!need(r, 1) || (r->p++, !need(r, n))) return NULL;
        int8_t type = (int8_t)r->p[-1];
        r->p += n;
        json_t *data = base64(r->p - n, n);
        return json_pack("{s:i, s:o}", "ext_type", (int)type, "base64", data);
    }
    default:
        r->why = "invalid type byte 0xc1";
        return NULL;
    }
}

json_t *qn_mpjson_convert(const void *buf, size_t len, size_t *used, const char **why)
{
    rd r = {buf, (const uint8_t *)buf + len, NULL};
    json_t *v = value(&r, 0);
    if (used) *used = v ? (size_t)(r.p - (const uint8_t *)buf) : 0;
    if (why) *why = v ? NULL : r.why ? r.why : "out of memory";
    return v;
}

char *qn_mpjson_dumps(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
}
