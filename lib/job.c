/* job.c: the msgpack codec for jobs and results (CONTRACT.md section 3), on
 * msgpack-c.
 *
 * qn_job_decode runs on a transport's IO thread for every message (up to
 * ~100k/s), so it is built to be both cheap and paranoid:
 *  - it never trusts a length, count, type or shape from the wire, and never
 *    allocates in proportion to what a message claims, only to what it
 *    carries (see mp_scan: msgpack-c allocates a container's declared size
 *    before it has seen a single element);
 *  - a decoded job is ONE heap block: the struct, its inputs, and its id and
 *    reply_to strings; the msgpack object tree lives in a per-thread zone
 *    that is reused, not rebuilt, from one message to the next.
 * Encoding packs straight into a qn_buf through a msgpack_packer callback. */
#include "job.h"
#include "error.h"
#include "log.h"
#include "train.h"

#include <msgpack.h>

#include <math.h>

#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ---- */

static const char *const g_status_names[] = {"ok", "error", "expired", "rejected"};
static const char *const g_code_names[QN_CODE_COUNT] = {
    [QN_CODE_NONE] = "",
    [QN_CODE_BAD_MESSAGE] = "bad_message",
    [QN_CODE_BAD_JOB] = "bad_job",
    [QN_CODE_UNKNOWN_MODEL] = "unknown_model",
    [QN_CODE_UNKNOWN_VERSION] = "unknown_version",
    [QN_CODE_SHAPE_MISMATCH] = "shape_mismatch",
    [QN_CODE_TOO_LARGE] = "too_large",
    [QN_CODE_OVERLOADED] = "overloaded",
    [QN_CODE_EXPIRED] = "expired",
    [QN_CODE_INTERNAL] = "internal",
    [QN_CODE_DIVERGED] = "diverged",
};

/* Out-of-range values are bugs in the caller, but a result must still go out
 * with some spelling the client understands: "error" / "internal". */
const char *qn_status_name(qn_status s)
{
    return (unsigned)s < sizeof g_status_names / sizeof g_status_names[0] ? g_status_names[s] : "error";
}

const char *qn_code_name(qn_code c) { return (unsigned)c < QN_CODE_COUNT ? g_code_names[c] : "internal"; }

/* ---- qn_buf ---- */

void qn_buf_reset(qn_buf *b) { b->len = 0; }

void qn_buf_free(qn_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(qn_buf *b, size_t extra)
{
    if (extra <= b->cap - b->len) return 0;
    if (extra > SIZE_MAX / 2 - b->len) return QN_ENOMEM;
    size_t want = b->len + extra, cap = b->cap ? b->cap : 256;
    while (cap < want) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return QN_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int qn_buf_append(qn_buf *b, const void *p, size_t n)
{
    if (n == 0) return 0;
    int rc = buf_reserve(b, n);
    if (rc) return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- jobs: one block holding the struct, inputs and strings ---- */

/* Inputs start right after the struct, kept 16-byte aligned (malloc's own
 * guarantee); the batcher copies rows into its own aligned batch matrix. */
#define JOB_HDR ((sizeof(qn_job) + 15) & ~(size_t)15)

/* A job with room for rows*cols inputs (uninitialised) and `tail` bytes of
 * string space after them, returned in *tail_out. */
static qn_job *job_alloc(int64_t rows, int64_t cols, size_t tail, char **tail_out)
{
    if (rows < 0 || cols < 0) return NULL;
    uint64_t n;
    if (__builtin_mul_overflow((uint64_t)rows, (uint64_t)cols, &n) || n > (SIZE_MAX - JOB_HDR - tail) / 4)
        return NULL;
    qn_job *job = malloc(JOB_HDR + (size_t)n * 4 + tail);
    if (!job) return NULL;
    memset(job, 0, sizeof *job);
    job->id.kind = QN_ID_NIL;
    job->cache = true;
    job->rows = rows;
    job->cols = cols;
    job->inputs = n ? (float *)((char *)job + JOB_HDR) : NULL;
    if (tail_out) *tail_out = (char *)job + JOB_HDR + (size_t)n * 4;
    return job;
}

/* A job block with room for rows x cols inputs that carries the decoded id
 * (a string id copied from idstr) and reply_to, both NUL-terminated in the
 * block's tail. NULL on allocation failure or impossible sizes. */
static qn_job *job_with_id(int64_t rows, int64_t cols, const qn_id *id, const char *idstr,
                           const msgpack_object *reply_to)
{
    size_t id_bytes = id->kind == QN_ID_STR ? (size_t)id->len + 1 : 0;
    size_t rt_bytes = reply_to ? (size_t)reply_to->via.str.size + 1 : 0;
    char *tail;
    qn_job *job = job_alloc(rows, cols, id_bytes + rt_bytes, &tail);
    if (!job) return NULL;
    job->id = *id;
    if (id->kind == QN_ID_STR) {
        memcpy(tail, idstr, id->len);
        tail[id->len] = '\0';
        job->id.s = tail;
        tail += id_bytes;
    }
    if (reply_to) {
        memcpy(tail, reply_to->via.str.ptr, reply_to->via.str.size);
        tail[reply_to->via.str.size] = '\0';
        job->reply_to = tail;
    }
    return job;
}

qn_job *qn_job_new(int64_t rows, int64_t cols)
{
    qn_job *job = job_alloc(rows, cols, 0, NULL);
    if (job && job->inputs) memset(job->inputs, 0, (size_t)(rows * cols) * 4);
    return job;
}

/* Whether p lies inside the job's own block (a string decoded with it) rather
 * than in a separate allocation (qn_job_set_id_str, or a transport's own).
 * Distinct live allocations never overlap, so the block's usable size decides
 * exactly, with no flag to keep in sync. */
static int job_owns_inline(const qn_job *job, const void *p)
{
    uintptr_t b = (uintptr_t)job, q = (uintptr_t)p;
    return q >= b && q < b + malloc_usable_size((void *)job);
}

int qn_job_set_id_str(qn_job *job, const char *s, size_t len)
{
    if (!job || (!s && len) || len > UINT32_MAX) return QN_EINVAL;
    char *c = malloc(len + 1);
    if (!c) return QN_ENOMEM;
    if (len) memcpy(c, s, len);
    c[len] = '\0';
    if (job->id.kind == QN_ID_STR && job->id.s && !job_owns_inline(job, job->id.s)) free(job->id.s);
    job->id.kind = QN_ID_STR;
    job->id.s = c;
    job->id.len = (uint32_t)len;
    job->id.i = 0;
    job->id.u = 0;
    return 0;
}

void qn_job_free(qn_job **pjob)
{
    if (!pjob || !*pjob) return;
    qn_job *job = *pjob;
    if (job->id.kind == QN_ID_STR && job->id.s && !job_owns_inline(job, job->id.s)) free(job->id.s);
    if (job->reply_to && !job_owns_inline(job, job->reply_to)) free(job->reply_to);
    qn_train_spec_free(&job->train);
    free(job);
    *pjob = NULL;
}

/* ---- msgpack pre-scan ---- */

/* Deepest nesting a message may have. Jobs need 4 (map > inputs > rows > row);
 * msgpack-c's own limit is 32 and reports it as out-of-memory, so we stop
 * earlier and say what is wrong. */
#define MP_MAX_DEPTH 16

static inline uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

typedef enum { MP_OK = 0, MP_TRUNCATED, MP_INVALID, MP_TOO_DEEP } mp_scan_status;

/* Walks the one msgpack object at the start of p[0..n) without building
 * anything and sets *used to its length; msgpack_unpack only ever sees bytes
 * that passed. msgpack-c allocates n*24 bytes for an array the moment it reads
 * the header, so unchecked, a 5-byte message declaring 2^32 elements asks for
 * 96 GiB. Here every declared element must actually be present, so the tree
 * msgpack-c then builds is at most 24 bytes per message byte; the running
 * `pending` bound (each owed element needs at least one more byte) only makes
 * such a message fail at its header instead of at its end. Cost: one pass over
 * headers; str/bin bodies are skipped. */
static mp_scan_status mp_scan(const uint8_t *p, size_t n, size_t *used)
{
    const uint8_t *start = p, *end = p + n;
    uint64_t left[MP_MAX_DEPTH]; /* elements still to read, per open container */
    int top = 0;
    uint64_t pending = 1; /* sum of left[]: elements still owed in total */
    left[0] = 1;
    while (top >= 0) {
        if (left[top] == 0) {
            top--;
            continue;
        }
        if (p >= end) return MP_TRUNCATED;
        left[top]--;
        pending--;
        uint8_t c = *p++;
        uint64_t skip = 0, items = 0;
        size_t hdr = 0; /* length bytes that follow the type byte */
        if (c <= 0x7f || c >= 0xe0) {
            /* fixint */
        } else if (c <= 0x8f) {
            items = 2u * (c & 0x0fu);
        } else if (c <= 0x9f) {
            items = c & 0x0fu;
        } else if (c <= 0xbf) {
            skip = c & 0x1fu;
        } else {
            switch (c) {
            case 0xc0: case 0xc2: case 0xc3: break;                  /* nil, false, true */
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xca: case 0xce: case 0xd2: skip = 4; break;
            case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                              /* fixext: type + data */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xc4: case 0xd9: case 0xc7: hdr = 1; break;         /* bin8, str8, ext8 */
            case 0xc5: case 0xda: case 0xc8: case 0xdc: case 0xde: hdr = 2; break;
            case 0xc6: case 0xdb: case 0xc9: case 0xdd: case 0xdf: hdr = 4; break;
            default: return MP_INVALID;                              /* 0xc1: never used */
            }
            if (hdr) {
                if ((size_t)(end - p) < hdr) return MP_TRUNCATED;
                uint64_t v = hdr == 1 ? p[0] : hdr == 2 ? be16(p) : be32(p);
                p += hdr;
                switch (c) {
                case 0xdc: case 0xdd: items = v; break;
                case 0xde: case 0xdf: items = 2 * v; break;
                case 0xc7: case 0xc8: case 0xc9: skip = v + 1; break; /* ext: + type byte */
                default: skip = v; break;
                }
            }
        }
        if (skip > (uint64_t)(end - p)) return MP_TRUNCATED;
        p += skip;
        if (items) {
            pending += items;
            if (pending > (uint64_t)(end - p)) return MP_TRUNCATED;
            if (++top >= MP_MAX_DEPTH) return MP_TOO_DEEP;
            left[top] = items;
        }
    }
    *used = (size_t)(p - start);
    return MP_OK;
}

/* ---- per-thread unpack zone ---- */

/* Holds a typical job's tree (~0.6 KiB) and an array-of-arrays input of a few
 * hundred numbers without growing; msgpack_zone_clear keeps this first chunk
 * and frees any growth, so a rare huge message does not stay resident. */
#define ZONE_CHUNK (16 * 1024)

static pthread_once_t g_zone_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_zone_key;
static int g_zone_key_ok;

static void zone_destroy_cb(void *z) { msgpack_zone_free(z); }
static void zone_key_init(void) { g_zone_key_ok = pthread_key_create(&g_zone_key, zone_destroy_cb) == 0; }

/* The calling thread's zone, created on first use and freed when the thread
 * exits. *owned says the caller must free it itself (key creation failed). */
static msgpack_zone *zone_get(int *owned)
{
    *owned = 0;
    pthread_once(&g_zone_once, zone_key_init);
    msgpack_zone *z = g_zone_key_ok ? pthread_getspecific(g_zone_key) : NULL;
    if (z) return z;
    z = msgpack_zone_new(ZONE_CHUNK);
    if (!z) return NULL;
    if (!g_zone_key_ok || pthread_setspecific(g_zone_key, z) != 0) *owned = 1;
    return z;
}

static void zone_put(msgpack_zone *z, int owned)
{
    if (!z) return;
    if (owned) msgpack_zone_free(z);
    else msgpack_zone_clear(z);
}

/* ---- decode helpers ---- */

static int set_err(qn_decode_error *err, qn_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(qn_decode_error *err, qn_code code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code == QN_CODE_TOO_LARGE ? QN_ETOOLARGE : QN_EFORMAT;
}

static const char *obj_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    return "unknown";
}

static int obj_is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

/* A msgpack int that fits int64_t. */
static int obj_int64(const msgpack_object *o, int64_t *v)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *v = o->via.i64; return 1; }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) { *v = (int64_t)o->via.u64; return 1; }
    return 0;
}

static int obj_is_number(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
           o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64;
}

static float obj_f32(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (float)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (float)o->via.i64;
    default: return (float)o->via.f64; /* out of f32 range gives inf (IEEE, Annex F) */
    }
}

/* Looks up keys of a map in one pass. names[i] gets found[i] (NULL when
 * absent); a second occurrence of a known key sets *dup to its index. */
static void map_collect(const msgpack_object *map, const char *const *names, size_t n,
                        const msgpack_object **found, int *dup)
{
    QN_ASSERT(n <= 16);
    size_t lens[16];
    *dup = -1;
    for (size_t i = 0; i < n; i++) {
        found[i] = NULL;
        lens[i] = strlen(names[i]);
    }
    for (uint32_t k = 0; k < map->via.map.size; k++) {
        const msgpack_object *key = &map->via.map.ptr[k].key;
        if (key->type != MSGPACK_OBJECT_STR) continue; /* unknown: ignored */
        for (size_t i = 0; i < n; i++) {
            if (key->via.str.size == lens[i] && memcmp(key->via.str.ptr, names[i], lens[i]) == 0) {
                if (found[i] && *dup < 0) *dup = (int)i;
                found[i] = &map->via.map.ptr[k].val;
                break;
            }
        }
    }
}

/* A tensor on the wire, validated but not yet copied. */
typedef struct tensor_src {
    int64_t rows, cols;
    const char *bin;              /* tensor map: rows*cols*4 bytes, little-endian */
    const msgpack_object *arrays; /* array form: the outer array (or one row) */
    int one_row;                  /* array form: arrays is a single row of numbers */
} tensor_src;

/* Validates a tensor (map or array form) named `field` for messages. */
static int tensor_parse(const msgpack_object *o, const char *field, tensor_src *t, qn_decode_error *err)
{
    memset(t, 0, sizeof *t);
    if (o->type == MSGPACK_OBJECT_MAP) {
        static const char *const names[] = {"dtype", "shape", "data"};
        const msgpack_object *f[3];
        int dup;
        map_collect(o, names, 3, f, &dup);
        if (dup >= 0) return set_err(err, QN_CODE_BAD_JOB, "%s.%s: duplicate field", field, names[dup]);
        if (!f[0]) return set_err(err, QN_CODE_BAD_JOB, "%s.dtype: missing", field);
        if (!obj_is_str(f[0], "f32")) {
            if (f[0]->type == MSGPACK_OBJECT_STR)
                return set_err(err, QN_CODE_BAD_JOB, "%s.dtype: \"%.*s\" is not supported (only \"f32\")", field,
                               (int)(f[0]->via.str.size > 32 ? 32 : f[0]->via.str.size), f[0]->via.str.ptr);
            return set_err(err, QN_CODE_BAD_JOB, "%s.dtype: must be the str \"f32\", not %s", field, obj_type_name(f[0]));
        }
        if (!f[1]) return set_err(err, QN_CODE_BAD_JOB, "%s.shape: missing", field);
        const msgpack_object *sh = f[1];
        if (sh->type != MSGPACK_OBJECT_ARRAY || sh->via.array.size < 1 || sh->via.array.size > 2)
            return set_err(err, QN_CODE_BAD_JOB, "%s.shape: must be [rows, cols] or [n]", field);
        uint64_t dims[2];
        for (uint32_t i = 0; i < sh->via.array.size; i++) {
            const msgpack_object *d = &sh->via.array.ptr[i];
            if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER || d->via.u64 == 0)
                return set_err(err, QN_CODE_BAD_JOB, "%s.shape: dimensions must be positive ints", field);
            dims[i] = d->via.u64;
        }
        uint64_t rows = sh->via.array.size == 2 ? dims[0] : 1, cols = sh->via.array.size == 2 ? dims[1] : dims[0];
        if (!f[2]) return set_err(err, QN_CODE_BAD_JOB, "%s.data: missing", field);
        if (f[2]->type != MSGPACK_OBJECT_BIN)
            return set_err(err, QN_CODE_BAD_JOB, "%s.data: must be bin (raw little-endian f32), not %s", field,
                           obj_type_name(f[2]));
        /* A bin is at most 4 GiB, so any shape whose byte count overflows, or
         * even passes INT64_MAX, cannot match it: say so without multiplying. */
        uint64_t n, bytes;
        if (__builtin_mul_overflow(rows, cols, &n) || __builtin_mul_overflow(n, 4, &bytes) || bytes > INT64_MAX)
            return set_err(err, QN_CODE_BAD_JOB, "%s.shape: [%llu, %llu] is too large", field,
                           (unsigned long long)rows, (unsigned long long)cols);
        if (bytes != f[2]->via.bin.size)
            return set_err(err, QN_CODE_BAD_JOB, "%s.data: %u bytes, but shape [%llu, %llu] needs %llu", field,
                           f[2]->via.bin.size, (unsigned long long)rows, (unsigned long long)cols,
                           (unsigned long long)bytes);
        t->rows = (int64_t)rows;
        t->cols = (int64_t)cols;
        t->bin = f[2]->via.bin.ptr;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        uint32_t nr = o->via.array.size;
        if (nr == 0) return set_err(err, QN_CODE_BAD_JOB, "%s: empty array", field);
        if (obj_is_number(&o->via.array.ptr[0])) { /* one row: [x, y, z] */
            for (uint32_t c = 0; c < nr; c++)
                if (!obj_is_number(&o->via.array.ptr[c]))
                    return set_err(err, QN_CODE_BAD_JOB, "%s[%u]: must be a number, not %s", field, c,
                                   obj_type_name(&o->via.array.ptr[c]));
            t->rows = 1;
            t->cols = nr;
            t->arrays = o;
            t->one_row = 1;
            return 0;
        }
        uint32_t nc = 0;
        for (uint32_t r = 0; r < nr; r++) {
            const msgpack_object *row = &o->via.array.ptr[r];
            if (row->type != MSGPACK_OBJECT_ARRAY)
                return set_err(err, QN_CODE_BAD_JOB, "%s[%u]: must be an array of numbers, not %s", field, r,
                               obj_type_name(row));
            if (r == 0) nc = row->via.array.size;
            if (row->via.array.size == 0) return set_err(err, QN_CODE_BAD_JOB, "%s[%u]: empty row", field, r);
            if (row->via.array.size != nc)
                return set_err(err, QN_CODE_BAD_JOB, "%s[%u]: %u values, row 0 has %u", field, r,
                               row->via.array.size, nc);
            for (uint32_t c = 0; c < nc; c++)
                if (!obj_is_number(&row->via.array.ptr[c]))
                    return set_err(err, QN_CODE_BAD_JOB, "%s[%u][%u]: must be a number, not %s", field, r, c,
                                   obj_type_name(&row->via.array.ptr[c]));
        }
        t->rows = nr;
        t->cols = nc;
        t->arrays = o;
        return 0;
    }
    return set_err(err, QN_CODE_BAD_JOB, "%s: must be a tensor map or an array of arrays, not %s", field,
                   obj_type_name(o));
}

/* Copies a validated tensor into dst (rows*cols floats). */
static void tensor_fill(const tensor_src *t, float *dst)
{
    size_t n = (size_t)t->rows * (size_t)t->cols;
    if (t->bin) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, t->bin + 4 * i, 4);
            u = __builtin_bswap32(u);
            memcpy(dst + i, &u, 4);
        }
#else
        memcpy(dst, t->bin, n * 4);
#endif
        return;
    }
    if (t->one_row) {
        for (size_t c = 0; c < n; c++) dst[c] = obj_f32(&t->arrays->via.array.ptr[c]);
        return;
    }
    for (int64_t r = 0; r < t->rows; r++) {
        const msgpack_object *row = t->arrays->via.array.ptr[r].via.array.ptr;
        for (int64_t c = 0; c < t->cols; c++) *dst++ = obj_f32(&row[c]);
    }
}

/* JSON text sent where msgpack belongs is a common mistake (curl, kcat -P
 * with a typed message), and as msgpack it reads as a small int ('{' is the
 * fixint 123) followed by "trailing data", which says nothing useful. Text
 * that opens with '{' or '[' and closes with '}' or ']' (whitespace aside)
 * is named as JSON instead; no msgpack map starts with either byte. */
static int looks_like_json(const void *buf, size_t len)
{
    const unsigned char *p = buf, *e = p + len;
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) e--;
    return e - p >= 2 && (*p == '{' || *p == '[') && (e[-1] == '}' || e[-1] == ']');
}

static int json_err(const void *buf, size_t len, qn_decode_error *err)
{
    const char *p = buf;
    while (*p != '{' && *p != '[') p++; /* looks_like_json found one */
    return set_err(err, QN_CODE_BAD_MESSAGE,
                   "not msgpack: the message looks like JSON text (%zu bytes starting with '%c'); a "
                   "job is one msgpack map (schemas/job.md)", len, *p);
}

/* Unpacks buf into *root using zone, after the pre-scan; fills err. */
static int unpack_root(const void *buf, size_t len, msgpack_zone *zone, msgpack_object *root, qn_decode_error *err)
{
    if (len == 0) return set_err(err, QN_CODE_BAD_MESSAGE, "empty message");
    size_t used = 0;
    switch (mp_scan(buf, len, &used)) {
    case MP_OK: break;
    case MP_TRUNCATED: return set_err(err, QN_CODE_BAD_MESSAGE, "not msgpack: truncated");
    case MP_INVALID: return set_err(err, QN_CODE_BAD_MESSAGE, "not msgpack: invalid type byte");
    case MP_TOO_DEEP: return set_err(err, QN_CODE_BAD_MESSAGE, "nested deeper than %d levels", MP_MAX_DEPTH - 1);
    }
    if (used != len) {
        if (looks_like_json(buf, len)) return json_err(buf, len, err);
        return set_err(err, QN_CODE_BAD_MESSAGE, "%zu bytes of trailing data after the message", len - used);
    }
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack(buf, len, &off, zone, root);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR) return QN_ENOMEM;
    if (r != MSGPACK_UNPACK_SUCCESS) /* the scan accepted it: a disagreement, still the client's bytes */
        return set_err(err, QN_CODE_BAD_MESSAGE, "not msgpack (unpack status %d)", (int)r);
    if (root->type != MSGPACK_OBJECT_MAP) {
        if (looks_like_json(buf, len)) return json_err(buf, len, err);
        return set_err(err, QN_CODE_BAD_MESSAGE, "top level is %s, not a map", obj_type_name(root));
    }
    return 0;
}

static int train_decode(const msgpack_object *root, qn_train_spec **out, qn_decode_error *err);

/* ---- qn_job_decode ---- */

enum { F_V, F_ID, F_TYPE, F_MODEL, F_VERSION, F_INPUTS, F_REPLY_TO, F_DEADLINE, F_PRIORITY, F_CACHE, F_COUNT };
static const char *const g_job_fields[F_COUNT] = {"v", "id", "type", "model", "version", "inputs",
                                                  "reply_to", "deadline_ms", "priority", "cache"};

/* Kafka topic names are at most 249 bytes; anything longer cannot be sent to. */
#define REPLY_TO_MAX 249

static int model_name_ok(const char *s, uint32_t n)
{
    if (n < 1 || n > QN_MODEL_NAME_MAX) return 0;
    for (uint32_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    /* "." and ".." match the contract's pattern but name directories that are
     * not models; refusing them keeps a name from walking out of the repo. */
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    return 1;
}

/* An int field that must be at least lo (0 or 1) and fit int64. The three
 * ways to miss say different things: a uint past INT64_MAX is out of range
 * (not "negative"), a small one is below the minimum, anything else is the
 * wrong type. */
static int int_field(const msgpack_object *o, const char *name, int64_t lo, int64_t *out,
                     qn_decode_error *err)
{
    const char *want = lo > 0 ? "a positive int" : "a non-negative int";
    const char *unit = strcmp(name, "deadline_ms") == 0 ? " (Unix time in ms)" : "";
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 > INT64_MAX)
        return set_err(err, QN_CODE_BAD_JOB, "%s: %llu is out of range (at most %lld)%s", name,
                       (unsigned long long)o->via.u64, (long long)INT64_MAX, unit);
    if (!obj_int64(o, out))
        return set_err(err, QN_CODE_BAD_JOB, "%s: must be %s%s, not %s", name, want, unit, obj_type_name(o));
    if (*out < lo)
        return set_err(err, QN_CODE_BAD_JOB, "%s: must be %s%s, not %lld", name, want, unit, (long long)*out);
    return 0;
}

/* nil counts as absent for optional fields (Python clients send None). */
static const msgpack_object *opt(const msgpack_object *o)
{
    return o && o->type != MSGPACK_OBJECT_NIL ? o : NULL;
}

int qn_job_decode(const void *buf, size_t len, const qn_job_limits *limits, qn_job **out, qn_decode_error *err)
{
    qn_decode_error scratch;
    if (!err) err = &scratch;
    err->code = QN_CODE_NONE;
    err->message[0] = '\0';
    if (!out) return QN_EINVAL;
    *out = NULL;
    if (!buf && len) return QN_EINVAL;

    size_t max = limits && limits->max_message_bytes ? limits->max_message_bytes : QN_DEFAULT_MAX_MESSAGE;
    if (len > max) return set_err(err, QN_CODE_TOO_LARGE, "message is %zu bytes, the limit is %zu", len, max);

    int owned = 0, rc;
    msgpack_zone *zone = zone_get(&owned);
    if (!zone) return QN_ENOMEM;
    msgpack_object root;
    rc = unpack_root(buf, len, zone, &root, err);
    if (rc) goto done;

    const msgpack_object *f[F_COUNT];
    int dup;
    map_collect(&root, g_job_fields, F_COUNT, f, &dup);

    /* The id and reply_to first: every error result after this point can be
     * addressed and correlated, so these are read even if others are bad. */
    qn_id id = {.kind = QN_ID_NIL};
    const msgpack_object *reply_to = NULL;
    int id_ok = 0;
    if (f[F_ID] && dup != F_ID) {
        const msgpack_object *o = f[F_ID];
        if (o->type == MSGPACK_OBJECT_STR) {
            id.kind = QN_ID_STR;
            id.len = o->via.str.size;
            id_ok = 1;
        } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            id.kind = QN_ID_INT;
            id.i = o->via.i64;
            id_ok = 1;
        } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            if (o->via.u64 <= INT64_MAX) {
                id.kind = QN_ID_INT;
                id.i = (int64_t)o->via.u64;
            } else {
                id.kind = QN_ID_UINT;
                id.u = o->via.u64;
            }
            id_ok = 1;
        }
    }
    const msgpack_object *rt = dup == F_REPLY_TO ? NULL : opt(f[F_REPLY_TO]);
    if (rt && rt->type == MSGPACK_OBJECT_STR && rt->via.str.size >= 1 && rt->via.str.size <= REPLY_TO_MAX &&
        !memchr(rt->via.str.ptr, '\0', rt->via.str.size))
        reply_to = rt;

    if (dup >= 0) {
        rc = set_err(err, QN_CODE_BAD_JOB, "%s: duplicate field", g_job_fields[dup]);
        goto bad;
    }
    int64_t v;
    if (!f[F_V]) { rc = set_err(err, QN_CODE_BAD_JOB, "v: missing (the schema version, 1)"); goto bad; }
    if (!obj_int64(f[F_V], &v)) { rc = set_err(err, QN_CODE_BAD_JOB, "v: must be an int, not %s", obj_type_name(f[F_V])); goto bad; }
    if (v != 1) { rc = set_err(err, QN_CODE_BAD_JOB, "v: schema version %lld is not supported (only 1)", (long long)v); goto bad; }
    if (!f[F_ID]) { rc = set_err(err, QN_CODE_BAD_JOB, "id: missing"); goto bad; }
    if (!id_ok) { rc = set_err(err, QN_CODE_BAD_JOB, "id: must be a str or an int, not %s", obj_type_name(f[F_ID])); goto bad; }

    qn_job_type type;
    if (!f[F_TYPE]) { rc = set_err(err, QN_CODE_BAD_JOB, "type: missing"); goto bad; }
    if (obj_is_str(f[F_TYPE], "predict")) type = QN_JOB_PREDICT;
    else if (obj_is_str(f[F_TYPE], "train")) type = QN_JOB_TRAIN;
    else if (obj_is_str(f[F_TYPE], "models")) type = QN_JOB_MODELS;
    else { rc = set_err(err, QN_CODE_BAD_JOB, "type: must be \"predict\", \"train\" or \"models\""); goto bad; }

    /* A models job lists every model unless it names one. */
    const msgpack_object *m = type == QN_JOB_MODELS ? opt(f[F_MODEL]) : f[F_MODEL];
    if (!m && type != QN_JOB_MODELS) { rc = set_err(err, QN_CODE_BAD_JOB, "model: missing"); goto bad; }
    if (m && m->type != MSGPACK_OBJECT_STR) { rc = set_err(err, QN_CODE_BAD_JOB, "model: must be a str, not %s", obj_type_name(m)); goto bad; }
    if (m && !model_name_ok(m->via.str.ptr, m->via.str.size)) {
        rc = set_err(err, QN_CODE_BAD_JOB, "model: must match [A-Za-z0-9_.-]{1,64} (and not be . or ..)");
        goto bad;
    }

    int64_t version = 0, deadline = 0, priority = 0;
    const msgpack_object *o;
    if ((o = opt(f[F_VERSION])) && (rc = int_field(o, "version", 1, &version, err))) goto bad;
    if ((o = opt(f[F_REPLY_TO])) && o != reply_to) {
        rc = set_err(err, QN_CODE_BAD_JOB, "reply_to: must be a str of 1 to %d bytes without NUL", REPLY_TO_MAX);
        goto bad;
    }
    if ((o = opt(f[F_DEADLINE])) && (rc = int_field(o, "deadline_ms", 0, &deadline, err))) goto bad;
    if ((o = opt(f[F_PRIORITY])) && (!obj_int64(o, &priority) || priority < 0 || priority > INT32_MAX)) {
        rc = set_err(err, QN_CODE_BAD_JOB, "priority: must be an int from 0 to %d", INT32_MAX);
        goto bad;
    }
    bool cache = true;
    if ((o = opt(f[F_CACHE]))) {
        if (o->type != MSGPACK_OBJECT_BOOLEAN) { rc = set_err(err, QN_CODE_BAD_JOB, "cache: must be a bool, not %s", obj_type_name(o)); goto bad; }
        cache = o->via.boolean;
    }

    /* The train body (x, y, loss, optimizer, ...) is a later issue: a train job
     * carries only the common fields for now, and inputs are not read. */
    tensor_src t = {0};
    qn_train_spec *spec = NULL;
    if (type == QN_JOB_PREDICT) {
        if (!f[F_INPUTS]) { rc = set_err(err, QN_CODE_BAD_JOB, "inputs: missing"); goto bad; }
        if ((rc = tensor_parse(f[F_INPUTS], "inputs", &t, err))) goto bad;
    } else if (type == QN_JOB_TRAIN) {
        if ((rc = train_decode(&root, &spec, err))) {
            if (rc == QN_ENOMEM) goto done;
            goto bad;
        }
    }

    qn_job *job = job_with_id(t.rows, t.cols, &id, id.kind == QN_ID_STR ? f[F_ID]->via.str.ptr : NULL,
                              reply_to);
    if (!job) { qn_train_spec_free(&spec); rc = QN_ENOMEM; goto done; }
    job->type = type;
    if (m) {
        memcpy(job->model, m->via.str.ptr, m->via.str.size);
        job->model[m->via.str.size] = '\0';
    }
    job->version = version;
    job->deadline_ms = deadline;
    job->priority = (int32_t)priority;
    job->cache = cache;
    job->train = spec;
    if (job->inputs) tensor_fill(&t, job->inputs);
    *out = job;
    rc = 0;
    goto done;

bad:
    /* A job holding just the id (and reply_to), so the error reaches the
     * client correlated; without an id there is nothing to echo. */
    if (id_ok) {
        qn_job *ej = job_with_id(0, 0, &id, id.kind == QN_ID_STR ? f[F_ID]->via.str.ptr : NULL,
                                 reply_to);
        if (ej) *out = ej;
    }
done:
    zone_put(zone, owned);
    return rc;
}

/* ---- encoding ---- */

/* The packer calls this for every header and scalar (mostly 1 to 9 bytes),
 * dozens of times per message; the space is reserved up front, so the common
 * case is a short inline copy rather than a call into memcpy. */
static int pk_write(void *data, const char *p, size_t n)
{
    qn_buf *b = data;
    if (n <= 16 && n <= b->cap - b->len) {
        char *d = b->data + b->len;
        for (size_t i = 0; i < n; i++) d[i] = p[i];
        b->len += n;
        return 0;
    }
    return qn_buf_append(b, p, n) ? -1 : 0;
}

static int pk_str(msgpack_packer *pk, const char *s) { return msgpack_pack_str_with_body(pk, s, strlen(s)); }

/* A tensor map {dtype, shape, data} of rows*cols little-endian f32. */
static int pk_tensor(msgpack_packer *pk, const float *x, int64_t rows, int64_t cols)
{
    size_t n = (size_t)rows * (size_t)cols;
    int e = msgpack_pack_map(pk, 3);
    e = e || pk_str(pk, "dtype") || pk_str(pk, "f32");
    e = e || pk_str(pk, "shape") || msgpack_pack_array(pk, 2) || msgpack_pack_int64(pk, rows) ||
        msgpack_pack_int64(pk, cols);
    e = e || pk_str(pk, "data") || msgpack_pack_bin(pk, n * 4);
    if (e) return e;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        u = __builtin_bswap32(u);
        if ((e = msgpack_pack_bin_body(pk, &u, 4))) return e;
    }
    return 0;
#else
    return msgpack_pack_bin_body(pk, x, n * 4);
#endif
}

/* A "models" answer: one map per model, {name, latest, versions: [{version,
 * input_dim, output_dim, repr}, ...]}, from entries sorted by name then
 * version (so each model's entries are adjacent). */
static int pk_models(msgpack_packer *pk, const qn_model_info *mi, size_t n)
{
    size_t groups = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(mi[i].name, mi[i - 1].name)) groups++;
    int e = msgpack_pack_array(pk, groups);
    for (size_t i = 0; i < n && !e;) {
        size_t j = i;
        while (j < n && !strcmp(mi[j].name, mi[i].name)) j++;
        e = msgpack_pack_map(pk, 3);
        e = e || pk_str(pk, "name") || pk_str(pk, mi[i].name);
        e = e || pk_str(pk, "latest") || msgpack_pack_int64(pk, mi[j - 1].version);
        e = e || pk_str(pk, "versions") || msgpack_pack_array(pk, j - i);
        for (size_t k = i; k < j && !e; k++) {
            e = msgpack_pack_map(pk, 4);
            e = e || pk_str(pk, "version") || msgpack_pack_int64(pk, mi[k].version);
            e = e || pk_str(pk, "input_dim") || msgpack_pack_int64(pk, mi[k].input_dim);
            e = e || pk_str(pk, "output_dim") || msgpack_pack_int64(pk, mi[k].output_dim);
            e = e || pk_str(pk, "repr") || pk_str(pk, mi[k].repr ? mi[k].repr : "");
        }
        i = j;
    }
    return e;
}

/* rows*cols*4 must fit a msgpack bin (32-bit length). */
static int tensor_size_ok(int64_t rows, int64_t cols)
{
    return rows >= 0 && cols >= 0 && (rows == 0 || (uint64_t)cols <= UINT32_MAX / 4 / (uint64_t)rows);
}

/* Train fields: progress messages carry epoch, epochs, step, loss, lr (and
 * accuracy, val_loss, val_accuracy, rows_per_s when known); a final ok
 * result carries metrics {loss, accuracy, val_loss, val_accuracy}, epochs
 * (run), steps, stopped_early (and repeated: true for a redelivered job). */
static uint32_t train_nf(const qn_result *res)
{
    const qn_train_report *t = res->train;
    if (!t) return 0;
    if (res->type == QN_RESULT_PROGRESS)
        return 5 + (uint32_t)isfinite(t->accuracy) + (uint32_t)isfinite(t->val_loss) +
               (uint32_t)isfinite(t->val_accuracy) + (uint32_t)isfinite(t->rows_per_s);
    if (res->status != QN_STATUS_OK) return 0;
    return 4 + (t->repeated ? 1 : 0);
}

static int pk_kv_double(msgpack_packer *pk, const char *k, double v)
{
    return pk_str(pk, k) || msgpack_pack_double(pk, v);
}

static int pk_train(msgpack_packer *pk, const qn_result *res)
{
    const qn_train_report *t = res->train;
    int e = 0;
    if (res->type == QN_RESULT_PROGRESS) {
        e = e || pk_str(pk, "epoch") || msgpack_pack_int64(pk, t->epoch);
        e = e || pk_str(pk, "epochs") || msgpack_pack_int64(pk, t->epochs);
        e = e || pk_str(pk, "step") || msgpack_pack_int64(pk, t->step);
        e = e || pk_kv_double(pk, "loss", t->loss) || pk_kv_double(pk, "lr", t->lr);
        if (isfinite(t->accuracy)) e = e || pk_kv_double(pk, "accuracy", t->accuracy);
        if (isfinite(t->val_loss)) e = e || pk_kv_double(pk, "val_loss", t->val_loss);
        if (isfinite(t->val_accuracy)) e = e || pk_kv_double(pk, "val_accuracy", t->val_accuracy);
        if (isfinite(t->rows_per_s)) e = e || pk_kv_double(pk, "rows_per_s", t->rows_per_s);
        return e;
    }
    uint32_t nm = (uint32_t)isfinite(t->loss) + (uint32_t)isfinite(t->accuracy) + (uint32_t)isfinite(t->val_loss) +
                  (uint32_t)isfinite(t->val_accuracy);
    e = e || pk_str(pk, "metrics") || msgpack_pack_map(pk, nm);
    if (isfinite(t->loss)) e = e || pk_kv_double(pk, "loss", t->loss);
    if (isfinite(t->accuracy)) e = e || pk_kv_double(pk, "accuracy", t->accuracy);
    if (isfinite(t->val_loss)) e = e || pk_kv_double(pk, "val_loss", t->val_loss);
    if (isfinite(t->val_accuracy)) e = e || pk_kv_double(pk, "val_accuracy", t->val_accuracy);
    e = e || pk_str(pk, "epochs") || msgpack_pack_int64(pk, t->epoch);
    e = e || pk_str(pk, "steps") || msgpack_pack_int64(pk, t->step);
    e = e || pk_str(pk, "stopped_early") || (t->stopped_early ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
    if (t->repeated) e = e || pk_str(pk, "repeated") || msgpack_pack_true(pk);
    return e;
}

int qn_result_encode(const qn_result *res, qn_buf *out)
{
    if (!res || !out) return QN_EINVAL;
    bool ok = res->status == QN_STATUS_OK;
    bool models = ok && res->is_models;
    bool outputs = ok && res->type == QN_RESULT_FINAL && !res->train && !models;
    size_t nbytes = 0;
    if (outputs) {
        if (!tensor_size_ok(res->rows, res->cols)) return QN_ETOOLARGE;
        nbytes = (size_t)res->rows * (size_t)res->cols * 4;
        if (nbytes && !res->outputs) return QN_EINVAL;
    }
    qn_code code = res->code;
    if (!ok && (code == QN_CODE_NONE || (unsigned)code >= QN_CODE_COUNT))
        code = res->status == QN_STATUS_EXPIRED ? QN_CODE_EXPIRED
             : res->status == QN_STATUS_REJECTED ? QN_CODE_OVERLOADED : QN_CODE_INTERNAL;
    const char *msg = res->message ? res->message : "";
    const qn_id *id = res->id;

    /* One reservation up front so the packer's many small appends never
     * realloc: the fixed part is well under 128 bytes. */
    size_t start = out->len;
    size_t est = 128 + nbytes + (res->model ? strlen(res->model) : 0) + (!ok ? strlen(msg) : 0) +
                 (id && id->kind == QN_ID_STR ? id->len : 0);
    if (buf_reserve(out, est)) return QN_ENOMEM;

    if (models && res->nmodels && !res->models) return QN_EINVAL;
    uint32_t nf = 4 + (res->model ? 1 : 0) + (res->version > 0 ? 1 : 0) + (outputs ? 2 : 0) + (ok ? 0 : 1) +
                  train_nf(res) + (models ? 1 : 0);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pk_write);
    int e = msgpack_pack_map(&pk, nf);
    e = e || pk_str(&pk, "v") || msgpack_pack_int64(&pk, 1);
    e = e || pk_str(&pk, "id");
    if (!e) {
        if (!id || id->kind == QN_ID_NIL) e = msgpack_pack_nil(&pk);
        else if (id->kind == QN_ID_INT) e = msgpack_pack_int64(&pk, id->i);
        else if (id->kind == QN_ID_UINT) e = msgpack_pack_uint64(&pk, id->u);
        else e = msgpack_pack_str_with_body(&pk, id->s ? id->s : "", id->s ? id->len : 0);
    }
    e = e || pk_str(&pk, "type") || pk_str(&pk, res->type == QN_RESULT_PROGRESS ? "progress" : "result");
    e = e || pk_str(&pk, "status") || pk_str(&pk, qn_status_name(res->status));
    if (res->model) e = e || pk_str(&pk, "model") || pk_str(&pk, res->model);
    if (res->version > 0) e = e || pk_str(&pk, "version") || msgpack_pack_int64(&pk, res->version);
    if (outputs) {
        e = e || pk_str(&pk, "outputs") || pk_tensor(&pk, res->outputs, res->rows, res->cols);
        e = e || pk_str(&pk, "cached") || (res->cached ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    }
    if (models) e = e || pk_str(&pk, "models") || pk_models(&pk, res->models, res->nmodels);
    if (!ok) {
        e = e || pk_str(&pk, "error") || msgpack_pack_map(&pk, 2);
        e = e || pk_str(&pk, "code") || pk_str(&pk, qn_code_name(code));
        e = e || pk_str(&pk, "message") || pk_str(&pk, msg);
    }
    if (train_nf(res)) e = e || pk_train(&pk, res);
    if (e) {
        out->len = start; /* never leave half a message behind */
        return QN_ENOMEM;
    }
    return 0;
}

int qn_job_encode_predict(const char *id_str, int64_t id_int, const char *model, int64_t version,
                          const float *inputs, int64_t rows, int64_t cols, qn_buf *out)
{
    return qn_job_encode_predict_to(id_str, id_int, model, version, inputs, rows, cols, NULL, out);
}

int qn_job_encode_predict_to(const char *id_str, int64_t id_int, const char *model, int64_t version,
                             const float *inputs, int64_t rows, int64_t cols, const char *reply_to,
                             qn_buf *out)
{
    if (!model || !out || rows < 1 || cols < 1 || !inputs) return QN_EINVAL;
    if (reply_to && !*reply_to) return QN_EINVAL;
    if (!tensor_size_ok(rows, cols)) return QN_ETOOLARGE;
    size_t start = out->len;
    if (buf_reserve(out, 128 + strlen(model) + (id_str ? strlen(id_str) : 0) +
                             (reply_to ? strlen(reply_to) : 0) + (size_t)(rows * cols) * 4))
        return QN_ENOMEM;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pk_write);
    int e = msgpack_pack_map(&pk, 5 + (version > 0) + (reply_to != NULL));
    e = e || pk_str(&pk, "v") || msgpack_pack_int64(&pk, 1);
    e = e || pk_str(&pk, "id") || (id_str ? pk_str(&pk, id_str) : msgpack_pack_int64(&pk, id_int));
    e = e || pk_str(&pk, "type") || pk_str(&pk, "predict");
    e = e || pk_str(&pk, "model") || pk_str(&pk, model);
    if (version > 0) e = e || pk_str(&pk, "version") || msgpack_pack_int64(&pk, version);
    if (reply_to) e = e || pk_str(&pk, "reply_to") || pk_str(&pk, reply_to);
    e = e || pk_str(&pk, "inputs") || pk_tensor(&pk, inputs, rows, cols);
    if (e) {
        out->len = start;
        return QN_ENOMEM;
    }
    return 0;
}

/* ---- qn_result_decode ---- */

static double obj_double(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: return o->via.f64;
    default: return NAN;
    }
}

/* The train fields of a result (progress or final) into out->train. */
static int train_view(const msgpack_object *root, const msgpack_object *metrics, qn_result_view *out)
{
    static const char *const tn[] = {"epoch", "epochs", "step", "steps", "loss", "lr", "accuracy", "val_loss",
                                     "val_accuracy", "rows_per_s", "stopped_early", "repeated"};
    const msgpack_object *f[12];
    int dup;
    qn_train_report *t = &out->train;
    t->loss = t->lr = t->accuracy = t->val_loss = t->val_accuracy = t->rows_per_s = NAN;
    map_collect(root, tn, 12, f, &dup);
    int64_t v;
    if (f[0] && obj_int64(f[0], &v)) { t->epoch = v; out->has_train = true; }
    if (f[1] && obj_int64(f[1], &v)) { t->epochs = v; out->has_train = true; }
    if (f[2] && obj_int64(f[2], &v)) { t->step = v; out->has_train = true; }
    if (f[3] && obj_int64(f[3], &v)) { t->step = v; out->has_train = true; }
    if (!out->progress && f[1] && obj_int64(f[1], &v)) t->epoch = v; /* final: epochs run */
    double *dst[6] = {&t->loss, &t->lr, &t->accuracy, &t->val_loss, &t->val_accuracy, &t->rows_per_s};
    for (int i = 0; i < 6; i++)
        if (f[4 + i] && obj_is_number(f[4 + i])) { *dst[i] = obj_double(f[4 + i]); out->has_train = true; }
    if (f[10] && f[10]->type == MSGPACK_OBJECT_BOOLEAN) t->stopped_early = f[10]->via.boolean;
    if (f[11] && f[11]->type == MSGPACK_OBJECT_BOOLEAN) t->repeated = f[11]->via.boolean;
    if (metrics && metrics->type == MSGPACK_OBJECT_MAP) {
        static const char *const mn[] = {"loss", "accuracy", "val_loss", "val_accuracy"};
        const msgpack_object *m[4];
        map_collect(metrics, mn, 4, m, &dup);
        double *md[4] = {&t->loss, &t->accuracy, &t->val_loss, &t->val_accuracy};
        for (int i = 0; i < 4; i++)
            if (m[i] && obj_is_number(m[i])) *md[i] = obj_double(m[i]);
        out->has_train = true;
    }
    return 0;
}

static void copy_str(char *dst, size_t cap, const msgpack_object *o)
{
    size_t n = o->via.str.size < cap - 1 ? o->via.str.size : cap - 1;
    memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
}

int qn_result_decode(const void *buf, size_t len, qn_result_view *out)
{
    if (!out) return QN_EINVAL;
    memset(out, 0, sizeof *out);
    out->id_kind = QN_ID_NIL;
    if (!buf && len) return QN_EINVAL;

    enum { R_V, R_ID, R_TYPE, R_STATUS, R_MODEL, R_VERSION, R_OUTPUTS, R_CACHED, R_ERROR, R_EPOCH, R_EPOCHS,
           R_STEP, R_LOSS, R_LR, R_METRICS, R_COUNT };
    static const char *const names[R_COUNT] = {"v", "id", "type", "status", "model", "version", "outputs", "cached",
                                               "error", "epoch", "epochs", "step", "loss", "lr", "metrics"};
    qn_decode_error err;
    int owned = 0, rc = QN_EFORMAT;
    msgpack_zone *zone = zone_get(&owned);
    if (!zone) return QN_ENOMEM;
    msgpack_object root;
    if ((rc = unpack_root(buf, len, zone, &root, &err))) goto done;
    rc = QN_EFORMAT;

    const msgpack_object *f[R_COUNT], *o;
    int dup;
    map_collect(&root, names, R_COUNT, f, &dup);
    int64_t v;
    if (dup >= 0 || !f[R_V] || !obj_int64(f[R_V], &v) || v != 1) goto done;

    if ((o = f[R_ID]) && o->type != MSGPACK_OBJECT_NIL) {
        if (o->type == MSGPACK_OBJECT_STR) {
            out->id_kind = QN_ID_STR;
            copy_str(out->id_str, sizeof out->id_str, o);
        } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
                   (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)) {
            out->id_kind = QN_ID_INT;
            out->id_int = o->via.i64;
        } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            out->id_kind = QN_ID_UINT; /* id_int holds the bits: (uint64_t)id_int is the id */
            out->id_int = (int64_t)o->via.u64;
        } else goto done;
    }
    if ((o = f[R_TYPE]) && o->type != MSGPACK_OBJECT_STR) goto done;
    out->progress = o && obj_is_str(o, "progress");
    if ((rc = train_view(&root, f[R_METRICS], out)) != 0) goto done;
    rc = QN_EFORMAT;

    if (!(o = f[R_STATUS]) || o->type != MSGPACK_OBJECT_STR) goto done;
    int status = -1;
    for (int s = 0; s < (int)(sizeof g_status_names / sizeof g_status_names[0]); s++)
        if (obj_is_str(o, g_status_names[s])) status = s;
    if (status < 0) goto done;
    out->status = (qn_status)status;

    if ((o = opt(f[R_MODEL]))) {
        if (o->type != MSGPACK_OBJECT_STR) goto done;
        copy_str(out->model, sizeof out->model, o);
    }
    if ((o = opt(f[R_VERSION])) && (!obj_int64(o, &out->version) || out->version < 0)) goto done;
    if ((o = opt(f[R_CACHED]))) {
        if (o->type != MSGPACK_OBJECT_BOOLEAN) goto done;
        out->cached = o->via.boolean;
    }
    if ((o = opt(f[R_ERROR]))) {
        static const char *const en[] = {"code", "message"};
        const msgpack_object *ef[2];
        int edup;
        if (o->type != MSGPACK_OBJECT_MAP) goto done;
        map_collect(o, en, 2, ef, &edup);
        if (!ef[0] || ef[0]->type != MSGPACK_OBJECT_STR) goto done;
        out->code = QN_CODE_INTERNAL; /* a code this build does not know yet */
        for (int c = 1; c < QN_CODE_COUNT; c++)
            if (obj_is_str(ef[0], g_code_names[c])) out->code = (qn_code)c;
        if (ef[1]) {
            if (ef[1]->type != MSGPACK_OBJECT_STR) goto done;
            copy_str(out->message, sizeof out->message, ef[1]);
        }
    }
    if ((o = opt(f[R_OUTPUTS]))) {
        tensor_src t;
        if (tensor_parse(o, "outputs", &t, &err)) goto done;
        out->outputs = malloc((size_t)t.rows * (size_t)t.cols * 4);
        if (!out->outputs) { rc = QN_ENOMEM; goto done; }
        tensor_fill(&t, out->outputs);
        out->rows = t.rows;
        out->cols = t.cols;
    }
    rc = 0;
done:
    zone_put(zone, owned);
    return rc;
}

/* ---- train jobs (CONTRACT.md section 3, "Train job") ---- */

/* A number field of a sub-map (optional: *v keeps its default when absent
 * or nil). Returns 0, or the error. */
static int sub_num(const msgpack_object *o, const char *field, double *v, qn_decode_error *err)
{
    if (!(o = opt(o))) return 0;
    if (!obj_is_number(o)) return set_err(err, QN_CODE_BAD_JOB, "%s: must be a number, not %s", field, obj_type_name(o));
    *v = obj_double(o);
    if (!isfinite(*v)) return set_err(err, QN_CODE_BAD_JOB, "%s: must be finite", field);
    return 0;
}

static int sub_int(const msgpack_object *o, const char *field, int64_t lo, int64_t *v, qn_decode_error *err)
{
    if (!(o = opt(o))) return 0;
    if (!obj_int64(o, v) || *v < lo)
        return set_err(err, QN_CODE_BAD_JOB, "%s: must be an int >= %lld", field, (long long)lo);
    return 0;
}

static int sub_bool(const msgpack_object *o, const char *field, bool *v, qn_decode_error *err)
{
    if (!(o = opt(o))) return 0;
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return set_err(err, QN_CODE_BAD_JOB, "%s: must be a bool", field);
    *v = o->via.boolean;
    return 0;
}

static int decode_opt(const msgpack_object *o, qn_opt_spec *os, qn_decode_error *err)
{
    if (!o) return set_err(err, QN_CODE_BAD_JOB, "optimizer: missing (a map {name, lr, ...})");
    if (o->type != MSGPACK_OBJECT_MAP) return set_err(err, QN_CODE_BAD_JOB, "optimizer: must be a map, not %s", obj_type_name(o));
    static const char *const n[] = {"name", "lr", "momentum", "dampening", "nesterov", "weight_decay", "beta1",
                                    "beta2", "eps", "alpha", "centered"};
    const msgpack_object *f[11];
    int dup;
    map_collect(o, n, 11, f, &dup);
    if (dup >= 0) return set_err(err, QN_CODE_BAD_JOB, "optimizer.%s: duplicate field", n[dup]);
    qn_opt_kind k;
    if (!f[0]) return set_err(err, QN_CODE_BAD_JOB, "optimizer.name: missing (\"sgd\", \"adam\" or \"rmsprop\")");
    if (obj_is_str(f[0], "sgd")) k = QN_OPT_SGD;
    else if (obj_is_str(f[0], "adam")) k = QN_OPT_ADAM;
    else if (obj_is_str(f[0], "rmsprop")) k = QN_OPT_RMSPROP;
    else return set_err(err, QN_CODE_BAD_JOB, "optimizer.name: unknown optimizer (\"sgd\", \"adam\" or \"rmsprop\")");
    qn_opt_defaults(k, os);
    int rc;
    if (k == QN_OPT_SGD && !opt(f[1])) return set_err(err, QN_CODE_BAD_JOB, "optimizer.lr: missing (sgd has no default)");
    if ((rc = sub_num(f[1], "optimizer.lr", &os->lr, err))) return rc;
    if (!(os->lr > 0)) return set_err(err, QN_CODE_BAD_JOB, "optimizer.lr: must be > 0");
    if ((rc = sub_num(f[2], "optimizer.momentum", &os->momentum, err)) ||
        (rc = sub_num(f[3], "optimizer.dampening", &os->dampening, err)) ||
        (rc = sub_bool(f[4], "optimizer.nesterov", &os->nesterov, err)) ||
        (rc = sub_num(f[5], "optimizer.weight_decay", &os->weight_decay, err)) ||
        (rc = sub_num(f[6], "optimizer.beta1", &os->beta1, err)) ||
        (rc = sub_num(f[7], "optimizer.beta2", &os->beta2, err)) ||
        (rc = sub_num(f[8], "optimizer.eps", &os->eps, err)) ||
        (rc = sub_num(f[9], "optimizer.alpha", &os->alpha, err)) ||
        (rc = sub_bool(f[10], "optimizer.centered", &os->centered, err)))
        return rc;
    /* torch.optim's own argument checks */
    if (os->momentum < 0) return set_err(err, QN_CODE_BAD_JOB, "optimizer.momentum: must be >= 0");
    if (os->weight_decay < 0) return set_err(err, QN_CODE_BAD_JOB, "optimizer.weight_decay: must be >= 0");
    if (os->eps < 0) return set_err(err, QN_CODE_BAD_JOB, "optimizer.eps: must be >= 0");
    if (k == QN_OPT_SGD && os->nesterov && (os->momentum <= 0 || os->dampening != 0))
        return set_err(err, QN_CODE_BAD_JOB, "optimizer.nesterov: needs momentum > 0 and dampening 0");
    if (k == QN_OPT_ADAM && !(os->beta1 >= 0 && os->beta1 < 1 && os->beta2 >= 0 && os->beta2 < 1))
        return set_err(err, QN_CODE_BAD_JOB, "optimizer.beta1/beta2: must be in [0, 1)");
    if (k == QN_OPT_RMSPROP && os->alpha < 0) return set_err(err, QN_CODE_BAD_JOB, "optimizer.alpha: must be >= 0");
    return 0;
}

static int decode_sched(const msgpack_object *o, qn_sched_spec *ss, qn_decode_error *err)
{
    qn_sched_defaults(QN_SCHED_CONSTANT, ss);
    if (!(o = opt(o))) return 0;
    if (o->type != MSGPACK_OBJECT_MAP) return set_err(err, QN_CODE_BAD_JOB, "schedule: must be a map, not %s", obj_type_name(o));
    static const char *const n[] = {"name", "decay_steps", "decay_rate", "staircase", "step_size", "gamma",
                                    "t_max", "eta_min", "factor", "patience", "threshold", "min_lr", "cooldown"};
    const msgpack_object *f[13];
    int dup;
    map_collect(o, n, 13, f, &dup);
    if (dup >= 0) return set_err(err, QN_CODE_BAD_JOB, "schedule.%s: duplicate field", n[dup]);
    static const char *const kinds[QN_SCHED_COUNT] = {"constant", "exponential", "step", "cosine", "plateau"};
    int k = -1;
    for (int i = 0; f[0] && i < QN_SCHED_COUNT; i++)
        if (obj_is_str(f[0], kinds[i])) k = i;
    if (k < 0)
        return set_err(err, QN_CODE_BAD_JOB,
                       "schedule.name: unknown schedule (constant, exponential, step, cosine, plateau)");
    qn_sched_defaults((qn_sched_kind)k, ss);
    int rc;
    if ((rc = sub_int(f[1], "schedule.decay_steps", 1, &ss->decay_steps, err)) ||
        (rc = sub_num(f[2], "schedule.decay_rate", &ss->decay_rate, err)) ||
        (rc = sub_bool(f[3], "schedule.staircase", &ss->staircase, err)) ||
        (rc = sub_int(f[4], "schedule.step_size", 1, &ss->step_size, err)) ||
        (rc = sub_num(f[5], "schedule.gamma", &ss->gamma, err)) ||
        (rc = sub_int(f[6], "schedule.t_max", 1, &ss->t_max, err)) ||
        (rc = sub_num(f[7], "schedule.eta_min", &ss->eta_min, err)) ||
        (rc = sub_num(f[8], "schedule.factor", &ss->factor, err)) ||
        (rc = sub_int(f[9], "schedule.patience", 0, &ss->patience, err)) ||
        (rc = sub_num(f[10], "schedule.threshold", &ss->threshold, err)) ||
        (rc = sub_num(f[11], "schedule.min_lr", &ss->min_lr, err)) ||
        (rc = sub_int(f[12], "schedule.cooldown", 0, &ss->cooldown, err)))
        return rc;
    switch (ss->kind) {
    case QN_SCHED_EXPONENTIAL:
        if (!opt(f[1]) || !opt(f[2]))
            return set_err(err, QN_CODE_BAD_JOB, "schedule: exponential needs decay_steps and decay_rate");
        if (!(ss->decay_rate > 0)) return set_err(err, QN_CODE_BAD_JOB, "schedule.decay_rate: must be > 0");
        break;
    case QN_SCHED_STEP:
        if (!opt(f[4])) return set_err(err, QN_CODE_BAD_JOB, "schedule: step needs step_size");
        break;
    case QN_SCHED_COSINE:
        if (!opt(f[6])) return set_err(err, QN_CODE_BAD_JOB, "schedule: cosine needs t_max");
        break;
    case QN_SCHED_PLATEAU:
        if (!(ss->factor > 0 && ss->factor < 1)) return set_err(err, QN_CODE_BAD_JOB, "schedule.factor: must be in (0, 1)");
        break;
    default: break;
    }
    return 0;
}

static int decode_init(const msgpack_object *o, qn_train_spec *sp, qn_decode_error *err)
{
    if (o->type != MSGPACK_OBJECT_MAP) return set_err(err, QN_CODE_BAD_JOB, "init: must be a map, not %s", obj_type_name(o));
    static const char *const n[] = {"input_dim", "layers", "seed"};
    const msgpack_object *f[3];
    int dup, rc;
    map_collect(o, n, 3, f, &dup);
    if (dup >= 0) return set_err(err, QN_CODE_BAD_JOB, "init.%s: duplicate field", n[dup]);
    if (!opt(f[0])) return set_err(err, QN_CODE_BAD_JOB, "init.input_dim: missing");
    if ((rc = sub_int(f[0], "init.input_dim", 1, &sp->init_in, err))) return rc;
    if (sp->init_in > INT32_MAX) return set_err(err, QN_CODE_BAD_JOB, "init.input_dim: too large");
    int64_t seed = 0;
    if ((rc = sub_int(f[2], "init.seed", INT64_MIN, &seed, err))) return rc;
    sp->init_seed = (uint64_t)seed;
    const msgpack_object *ls = f[1];
    if (!ls || ls->type != MSGPACK_OBJECT_ARRAY || ls->via.array.size < 1 || ls->via.array.size > QN_TRAIN_MAX_LAYERS)
        return set_err(err, QN_CODE_BAD_JOB, "init.layers: must be an array of 1 to %d layer maps", QN_TRAIN_MAX_LAYERS);
    for (uint32_t i = 0; i < ls->via.array.size; i++) {
        const msgpack_object *l = &ls->via.array.ptr[i];
        if (l->type != MSGPACK_OBJECT_MAP) return set_err(err, QN_CODE_BAD_JOB, "init.layers[%u]: must be a map", i);
        static const char *const ln[] = {"units", "activation"};
        const msgpack_object *lf[2];
        map_collect(l, ln, 2, lf, &dup);
        int64_t u = 0;
        if (!opt(lf[0]) || !obj_int64(lf[0], &u) || u < 1 || u > INT32_MAX)
            return set_err(err, QN_CODE_BAD_JOB, "init.layers[%u].units: must be a positive int", i);
        qn_act a = QN_ACT_NONE;
        if (opt(lf[1])) {
            char name[16] = "";
            if (lf[1]->type == MSGPACK_OBJECT_STR && lf[1]->via.str.size < sizeof name) {
                memcpy(name, lf[1]->via.str.ptr, lf[1]->via.str.size);
                name[lf[1]->via.str.size] = '\0';
            }
            if (!name[0] || qn_act_from_name(name, &a) != 0)
                return set_err(err, QN_CODE_BAD_JOB,
                               "init.layers[%u].activation: must be relu, gelu, sigmoid, tanh, softmax or none", i);
        }
        sp->init_units[i] = u;
        sp->init_acts[i] = a;
    }
    sp->init_n = (int)ls->via.array.size;
    sp->has_init = true;
    return 0;
}

static int train_decode(const msgpack_object *root, qn_train_spec **out, qn_decode_error *err)
{
    enum { T_X, T_Y, T_LOSS, T_OPT, T_SCHED, T_EPOCHS, T_BS, T_SHUFFLE, T_SEED, T_XV, T_YV, T_ES, T_INIT, T_N };
    static const char *const n[T_N] = {"x", "y", "loss", "optimizer", "schedule", "epochs", "batch_size",
                                       "shuffle", "seed", "x_val", "y_val", "early_stopping", "init"};
    const msgpack_object *f[T_N];
    int dup, rc;
    *out = NULL;
    map_collect(root, n, T_N, f, &dup);
    if (dup >= 0) return set_err(err, QN_CODE_BAD_JOB, "%s: duplicate field", n[dup]);
    qn_train_spec sp;
    memset(&sp, 0, sizeof sp);
    tensor_src tx, ty, txv = {0}, tyv = {0};
    if (!f[T_X]) return set_err(err, QN_CODE_BAD_JOB, "x: missing (the inputs, [rows, in])");
    if ((rc = tensor_parse(f[T_X], "x", &tx, err))) return rc;
    if (!f[T_Y]) return set_err(err, QN_CODE_BAD_JOB, "y: missing (the targets)");
    if ((rc = tensor_parse(f[T_Y], "y", &ty, err))) return rc;
    if (ty.rows != tx.rows)
        return set_err(err, QN_CODE_SHAPE_MISMATCH, "y has %lld rows, x has %lld", (long long)ty.rows, (long long)tx.rows);
    const msgpack_object *xv = opt(f[T_XV]), *yv = opt(f[T_YV]);
    if (!xv != !yv) return set_err(err, QN_CODE_BAD_JOB, "x_val and y_val: give both or neither");
    if (xv) {
        if ((rc = tensor_parse(xv, "x_val", &txv, err)) || (rc = tensor_parse(yv, "y_val", &tyv, err))) return rc;
        if (txv.rows != tyv.rows)
            return set_err(err, QN_CODE_SHAPE_MISMATCH, "y_val has %lld rows, x_val has %lld", (long long)tyv.rows,
                           (long long)txv.rows);
    }
    if (!f[T_LOSS]) return set_err(err, QN_CODE_BAD_JOB, "loss: missing (\"mse\" or \"cross_entropy\")");
    if (obj_is_str(f[T_LOSS], "mse")) sp.loss = QN_LOSS_MSE;
    else if (obj_is_str(f[T_LOSS], "cross_entropy")) sp.loss = QN_LOSS_CROSS_ENTROPY;
    else return set_err(err, QN_CODE_BAD_JOB, "loss: must be \"mse\" or \"cross_entropy\"");
    if ((rc = decode_opt(opt(f[T_OPT]), &sp.opt, err))) return rc;
    if ((rc = decode_sched(f[T_SCHED], &sp.sched, err))) return rc;
    if (!opt(f[T_EPOCHS])) return set_err(err, QN_CODE_BAD_JOB, "epochs: missing");
    if ((rc = sub_int(f[T_EPOCHS], "epochs", 1, &sp.epochs, err))) return rc;
    if (!opt(f[T_BS])) return set_err(err, QN_CODE_BAD_JOB, "batch_size: missing");
    if ((rc = sub_int(f[T_BS], "batch_size", 1, &sp.batch_size, err))) return rc;
    if (sp.batch_size > tx.rows)
        return set_err(err, QN_CODE_BAD_JOB, "batch_size: %lld is more than the %lld rows of x", (long long)sp.batch_size,
                       (long long)tx.rows);
    sp.shuffle = true;
    if ((rc = sub_bool(f[T_SHUFFLE], "shuffle", &sp.shuffle, err))) return rc;
    int64_t seed = 0;
    if ((rc = sub_int(f[T_SEED], "seed", INT64_MIN, &seed, err))) return rc;
    sp.seed = (uint64_t)seed;
    const msgpack_object *es = opt(f[T_ES]);
    if (es) {
        if (es->type != MSGPACK_OBJECT_MAP) return set_err(err, QN_CODE_BAD_JOB, "early_stopping: must be a map");
        static const char *const en[] = {"patience", "min_delta"};
        const msgpack_object *ef[2];
        map_collect(es, en, 2, ef, &dup);
        sp.es_patience = 1;
        if (!opt(ef[0])) return set_err(err, QN_CODE_BAD_JOB, "early_stopping.patience: missing");
        if ((rc = sub_int(ef[0], "early_stopping.patience", 1, &sp.es_patience, err)) ||
            (rc = sub_num(ef[1], "early_stopping.min_delta", &sp.es_min_delta, err)))
            return rc;
        if (sp.es_min_delta < 0) return set_err(err, QN_CODE_BAD_JOB, "early_stopping.min_delta: must be >= 0");
        sp.early_stopping = true;
    }
    if (opt(f[T_INIT]) && (rc = decode_init(f[T_INIT], &sp, err))) return rc;

    /* one block: the spec, then x, y, x_val, y_val, each 64-byte aligned */
    size_t hdr = (sizeof sp + 63) & ~(size_t)63;
    size_t nx = (size_t)(tx.rows * tx.cols), ny = (size_t)(ty.rows * ty.cols);
    size_t nxv = (size_t)(txv.rows * txv.cols), nyv = (size_t)(tyv.rows * tyv.cols);
    size_t a = 16; /* floats per 64 bytes */
    size_t total = hdr + 4 * (((nx + a - 1) / a + (ny + a - 1) / a + (nxv + a - 1) / a + (nyv + a - 1) / a) * a);
    char *blk = aligned_alloc(64, (total + 63) & ~(size_t)63);
    if (!blk) return QN_ENOMEM;
    float *p = (float *)(blk + hdr);
    sp.x = p; p += (nx + a - 1) / a * a;
    sp.y = p; p += (ny + a - 1) / a * a;
    sp.rows = tx.rows; sp.x_cols = tx.cols; sp.y_cols = ty.cols;
    tensor_fill(&tx, sp.x);
    tensor_fill(&ty, sp.y);
    if (xv) {
        sp.xv = p; p += (nxv + a - 1) / a * a;
        sp.yv = p;
        sp.val_rows = txv.rows; sp.xv_cols = txv.cols; sp.yv_cols = tyv.cols;
        tensor_fill(&txv, sp.xv);
        tensor_fill(&tyv, sp.yv);
    }
    memcpy(blk, &sp, sizeof sp);
    *out = (qn_train_spec *)blk;
    return 0;
}

int qn_job_encode_train(const char *id_str, int64_t id_int, const char *model, int64_t version,
                        const qn_train_spec *sp, qn_buf *out)
{
    if (!model || !sp || !out || sp->rows < 1 || !sp->x || !sp->y) return QN_EINVAL;
    if (!tensor_size_ok(sp->rows, sp->x_cols) || !tensor_size_ok(sp->rows, sp->y_cols)) return QN_ETOOLARGE;
    size_t start = out->len;
    if (buf_reserve(out, 1024 + (size_t)(sp->rows * (sp->x_cols + sp->y_cols)) * 4 +
                             (size_t)(sp->val_rows * (sp->xv_cols + sp->yv_cols)) * 4))
        return QN_ENOMEM;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, pk_write);
    const qn_opt_spec *o = &sp->opt;
    const qn_sched_spec *s = &sp->sched;
    uint32_t nf = 12 + (version > 0) + (sp->sched.kind != QN_SCHED_CONSTANT) + (sp->val_rows ? 2 : 0) +
                  sp->early_stopping + sp->has_init;
    int e = msgpack_pack_map(&pk, nf);
    e = e || pk_str(&pk, "v") || msgpack_pack_int64(&pk, 1);
    e = e || pk_str(&pk, "id") || (id_str ? pk_str(&pk, id_str) : msgpack_pack_int64(&pk, id_int));
    e = e || pk_str(&pk, "type") || pk_str(&pk, "train");
    e = e || pk_str(&pk, "model") || pk_str(&pk, model);
    if (version > 0) e = e || pk_str(&pk, "version") || msgpack_pack_int64(&pk, version);
    e = e || pk_str(&pk, "x") || pk_tensor(&pk, sp->x, sp->rows, sp->x_cols);
    e = e || pk_str(&pk, "y") || pk_tensor(&pk, sp->y, sp->rows, sp->y_cols);
    e = e || pk_str(&pk, "loss") || pk_str(&pk, qn_loss_name(sp->loss));
    /* every optimizer field, torch's defaults included: explicit is unambiguous */
    e = e || pk_str(&pk, "optimizer") || msgpack_pack_map(&pk, 11);
    e = e || pk_str(&pk, "name") || pk_str(&pk, qn_opt_name(o->kind)) || pk_kv_double(&pk, "lr", o->lr);
    e = e || pk_kv_double(&pk, "momentum", o->momentum) || pk_kv_double(&pk, "dampening", o->dampening);
    e = e || pk_str(&pk, "nesterov") || (o->nesterov ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    e = e || pk_kv_double(&pk, "weight_decay", o->weight_decay) || pk_kv_double(&pk, "beta1", o->beta1);
    e = e || pk_kv_double(&pk, "beta2", o->beta2) || pk_kv_double(&pk, "eps", o->eps);
    e = e || pk_kv_double(&pk, "alpha", o->alpha);
    e = e || pk_str(&pk, "centered") || (o->centered ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    if (s->kind != QN_SCHED_CONSTANT) {
        e = e || pk_str(&pk, "schedule");
        switch (s->kind) {
        case QN_SCHED_EXPONENTIAL:
            e = e || msgpack_pack_map(&pk, 4) || pk_str(&pk, "name") || pk_str(&pk, "exponential");
            e = e || pk_str(&pk, "decay_steps") || msgpack_pack_int64(&pk, s->decay_steps);
            e = e || pk_kv_double(&pk, "decay_rate", s->decay_rate);
            e = e || pk_str(&pk, "staircase") || (s->staircase ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
            break;
        case QN_SCHED_STEP:
            e = e || msgpack_pack_map(&pk, 3) || pk_str(&pk, "name") || pk_str(&pk, "step");
            e = e || pk_str(&pk, "step_size") || msgpack_pack_int64(&pk, s->step_size);
            e = e || pk_kv_double(&pk, "gamma", s->gamma);
            break;
        case QN_SCHED_COSINE:
            e = e || msgpack_pack_map(&pk, 3) || pk_str(&pk, "name") || pk_str(&pk, "cosine");
            e = e || pk_str(&pk, "t_max") || msgpack_pack_int64(&pk, s->t_max);
            e = e || pk_kv_double(&pk, "eta_min", s->eta_min);
            break;
        default:
            e = e || msgpack_pack_map(&pk, 6) || pk_str(&pk, "name") || pk_str(&pk, "plateau");
            e = e || pk_kv_double(&pk, "factor", s->factor) || pk_kv_double(&pk, "threshold", s->threshold);
            e = e || pk_kv_double(&pk, "min_lr", s->min_lr);
            e = e || pk_str(&pk, "patience") || msgpack_pack_int64(&pk, s->patience);
            e = e || pk_str(&pk, "cooldown") || msgpack_pack_int64(&pk, s->cooldown);
            break;
        }
    }
    e = e || pk_str(&pk, "epochs") || msgpack_pack_int64(&pk, sp->epochs);
    e = e || pk_str(&pk, "batch_size") || msgpack_pack_int64(&pk, sp->batch_size);
    e = e || pk_str(&pk, "shuffle") || (sp->shuffle ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    e = e || pk_str(&pk, "seed") || msgpack_pack_int64(&pk, (int64_t)sp->seed);
    if (sp->val_rows) {
        e = e || pk_str(&pk, "x_val") || pk_tensor(&pk, sp->xv, sp->val_rows, sp->xv_cols);
        e = e || pk_str(&pk, "y_val") || pk_tensor(&pk, sp->yv, sp->val_rows, sp->yv_cols);
    }
    if (sp->early_stopping) {
        e = e || pk_str(&pk, "early_stopping") || msgpack_pack_map(&pk, 2);
        e = e || pk_str(&pk, "patience") || msgpack_pack_int64(&pk, sp->es_patience);
        e = e || pk_kv_double(&pk, "min_delta", sp->es_min_delta);
    }
    if (sp->has_init) {
        e = e || pk_str(&pk, "init") || msgpack_pack_map(&pk, 3);
        e = e || pk_str(&pk, "input_dim") || msgpack_pack_int64(&pk, sp->init_in);
        e = e || pk_str(&pk, "seed") || msgpack_pack_int64(&pk, (int64_t)sp->init_seed);
        e = e || pk_str(&pk, "layers") || msgpack_pack_array(&pk, (size_t)sp->init_n);
        for (int i = 0; i < sp->init_n && !e; i++) {
            e = msgpack_pack_map(&pk, 2) || pk_str(&pk, "units") || msgpack_pack_int64(&pk, sp->init_units[i]);
            e = e || pk_str(&pk, "activation") || pk_str(&pk, qn_act_name(sp->init_acts[i]));
        }
    }
    if (e) {
        out->len = start;
        return QN_ENOMEM;
    }
    return 0;
}
