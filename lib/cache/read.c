/* read.c: lookups. A get opens only read-only transactions (pooled, see
 * env.c): it never waits for the writer lock and a writer never waits for
 * it. Every value is checked against its checksum before it is served; a
 * failure reads as a miss and queues the entry's delete. Frequency bumps of
 * hits are recorded for the next flush (writeback.c), never written here. */
#include "cache_int.h"
#include "error.h"
#include "log.h"
#include "tensor.h"

#include <stdlib.h>

/* ---- get */

/* Finds key in a read txn and checks it. 0 and the value, QN_ENOTFOUND, or
 * QN_EEXTERNAL/QN_EFORMAT (logged). A checksum failure is counted and queued
 * for deletion, and reads as a miss. */
static int lookup(qn_cache *c, MDB_txn *t, const uint64_t key[2], uint8_t kb[16], MDB_val *val)
{
    key_bytes(key, kb);
    MDB_val k = {16, kb};
    int rc = mdb_get(t, c->db_entries, &k, val);
    if (rc == MDB_NOTFOUND) return QN_ENOTFOUND;
    if (rc) {
        if (qnc_mdb_is_corrupt(rc)) qnc_mark_broken(c, rc, "get");
        else QN_LOGW(QNC_MOD, "%s: get: %s", c->dir, mdb_strerror(rc));
        return qnc_from_mdb(rc);
    }
    const unsigned char *v = val->mv_data;
    bool ok = val->mv_size >= VAL_HDR && get_u32(v) == VAL_MAGIC && get_u16(v + 4) == VAL_FORMAT &&
              get_u16(v + 6) == QN_DTYPE_F32;
    if (ok) {
        uint64_t n = (uint64_t)get_u32(v + 8) * get_u32(v + 12);
        ok = val->mv_size == VAL_HDR + n * 4 &&
             qnc_value_checksum(kb, v, v + VAL_HDR, (size_t)n * 4) == get_u64(v + 16);
    }
    if (!ok) {
        cnt_add(&c->csum_fail, 1);
        QN_LOGW(QNC_MOD, "%s: entry %016llx%016llx fails its checksum: dropped", c->dir,
                (unsigned long long)key[1], (unsigned long long)key[0]);
        qnc_record_delete(c, kb);
        return QN_ENOTFOUND;
    }
    return 0;
}

/* One lookup in its own read txn, counted as a hit (with an LFU bump) or a
 * miss. With into != NULL the stored shape must be want_rows x want_cols and
 * the floats land in into; otherwise they are copied to a new *alloc and the
 * shape goes to *rows, *cols. */
static int fetch(qn_cache *c, const uint64_t key[2], int64_t want_rows, int64_t want_cols,
                 float *into, float **alloc, int64_t *rows, int64_t *cols)
{
    if (atomic_load_explicit(&c->broken, memory_order_relaxed)) { cnt_add(&c->misses, 1); return QN_ENOTFOUND; }
    MDB_txn *t;
    int rc = qnc_rtxn_get(c, &t);
    if (rc) { cnt_add(&c->misses, 1); return qnc_from_mdb(rc); }
    uint8_t kb[16];
    MDB_val val;
    rc = lookup(c, t, key, kb, &val);
    if (rc == 0) {
        const unsigned char *v = val.mv_data;
        size_t n = val.mv_size - VAL_HDR;
        int64_t r = get_u32(v + 8), k = get_u32(v + 12);
        if (into) {
            if (r != want_rows || k != want_cols) rc = QN_ESHAPE;
            else memcpy(into, v + VAL_HDR, n);
        } else {
            float *f = malloc(n ? n : 1);
            if (!f) rc = QN_ENOMEM;
            else {
                memcpy(f, v + VAL_HDR, n);
                *alloc = f;
                *rows = r;
                *cols = k;
            }
        }
    }
    qnc_rtxn_put(c, t);
    if (rc == 0) {
        cnt_add(&c->hits, 1);
        qnc_record_bump(c, key);
    } else {
        cnt_add(&c->misses, 1);
    }
    return rc;
}

int qn_cache_get_into(qn_cache *c, const uint64_t key[2], int64_t rows, int64_t cols, float *out)
{
    if (!c || !key || rows < 0 || cols < 0 || (rows && cols && !out)) return QN_EINVAL;
    float dummy;
    return fetch(c, key, rows, cols, out ? out : &dummy, NULL, NULL, NULL);
}

int qn_cache_get(qn_cache *c, const uint64_t key[2], float **out, int64_t *rows, int64_t *cols)
{
    if (!c || !key || !out || !rows || !cols) return QN_EINVAL;
    *out = NULL;
    return fetch(c, key, 0, 0, NULL, out, rows, cols);
}

/* ---- reader sessions: one read txn and one pending-lock step per burst.
 * Idle sessions are kept with their reset txn, so begin is a pop and an
 * mdb_txn_renew, and end an mdb_txn_reset and a push: no allocation and no
 * trip through LMDB's reader-table mutex in steady state. */

struct qn_cache_reader {
    qn_cache *c;
    MDB_txn *t;              /* reset while idle; NULL when none could be made */
    bool live;               /* t renewed for this session (false: the cache is broken, every get misses) */
    qn_cache_reader *next;   /* in c->readers while idle */
    size_t nb;
    uint64_t bk[READER_BUMPS][2];
};

static void reader_push_bumps(qn_cache_reader *r)
{
    if (!r->nb) return;
    qn_cache *c = r->c;
    pthread_mutex_lock(&c->pend_mu);
    for (size_t i = 0; i < r->nb; i++) qnc_record_bump_locked(c, r->bk[i][0], r->bk[i][1]);
    pthread_mutex_unlock(&c->pend_mu);
    r->nb = 0;
}

int qn_cache_reader_begin(qn_cache *c, qn_cache_reader **out)
{
    if (!c || !out) return QN_EINVAL;
    *out = NULL;
    pthread_mutex_lock(&c->rpool_mu);
    qn_cache_reader *r = c->readers;
    if (r) { c->readers = r->next; c->nreaders--; }
    pthread_mutex_unlock(&c->rpool_mu);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return QN_ENOMEM;
        r->c = c;
    }
    r->next = NULL;
    r->nb = 0;
    r->live = false;
    if (atomic_load_explicit(&c->broken, memory_order_relaxed)) {
        /* as get_into: a broken cache reads as all misses; its txn stays
         * reset (a renew could hit the corruption again) */
        *out = r;
        return 0;
    }
    int rc = MDB_BAD_TXN;
    if (r->t) {
        rc = mdb_txn_renew(r->t);
        if (rc) { mdb_txn_abort(r->t); r->t = NULL; }
    }
    if (rc) {
        rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &r->t);
        if (rc) {
            QN_LOGW(QNC_MOD, "%s: read txn: %s", c->dir, mdb_strerror(rc));
            r->t = NULL;
            free(r);
            return qnc_from_mdb(rc);
        }
    }
    r->live = true;
    *out = r;
    return 0;
}

int qn_cache_reader_get_into(qn_cache_reader *r, const uint64_t key[2], int64_t rows, int64_t cols, float *out)
{
    if (!r || !key || rows < 0 || cols < 0 || (rows && cols && !out)) return QN_EINVAL;
    qn_cache *c = r->c;
    if (!r->live || atomic_load_explicit(&c->broken, memory_order_relaxed)) {
        cnt_add(&c->misses, 1);
        return QN_ENOTFOUND;
    }
    uint8_t kb[16];
    MDB_val val;
    int rc = lookup(c, r->t, key, kb, &val);
    if (rc == 0) {
        const unsigned char *v = val.mv_data;
        if ((int64_t)get_u32(v + 8) != rows || (int64_t)get_u32(v + 12) != cols) rc = QN_ESHAPE;
        else memcpy(out, v + VAL_HDR, val.mv_size - VAL_HDR);
    }
    if (rc == 0) {
        cnt_add(&c->hits, 1);
        if (r->nb == READER_BUMPS) reader_push_bumps(r);
        r->bk[r->nb][0] = key[0];
        r->bk[r->nb][1] = key[1];
        r->nb++;
    } else {
        cnt_add(&c->misses, 1);
    }
    return rc;
}

void qn_cache_reader_end(qn_cache_reader **pr)
{
    if (!pr || !*pr) return;
    qn_cache_reader *r = *pr;
    qn_cache *c = r->c;
    *pr = NULL;
    /* the snapshot goes first: a writer can reuse its pages from here on */
    if (r->live) mdb_txn_reset(r->t);
    r->live = false;
    reader_push_bumps(r);
    pthread_mutex_lock(&c->rpool_mu);
    if (c->nreaders < RPOOL_MAX) {
        r->next = c->readers;
        c->readers = r;
        c->nreaders++;
        r = NULL;
    }
    pthread_mutex_unlock(&c->rpool_mu);
    if (r) {
        if (r->t) mdb_txn_abort(r->t);
        free(r);
    }
}

void qnc_readers_free(qn_cache *c)
{
    while (c->readers) {
        qn_cache_reader *r = c->readers;
        c->readers = r->next;
        if (r->t) mdb_txn_abort(r->t);
        free(r);
    }
    c->nreaders = 0;
}
