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
 * for deletion, sets *bad, and reads as a miss. */
static int lookup(qn_cache *c, MDB_txn *t, const uint64_t key[2], uint8_t kb[16], MDB_val *val, bool *bad)
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
        *bad = true;
        return QN_ENOTFOUND;
    }
    return 0;
}

/* Copies a checked value out. With into != NULL the stored shape must be
 * want_rows x want_cols and the floats land in into; otherwise they are
 * copied to a new *alloc and the shape goes to *rows, *cols. */
static int copy_value(const MDB_val *val, int64_t want_rows, int64_t want_cols, float *into, float **alloc,
                      int64_t *rows, int64_t *cols)
{
    const unsigned char *v = val->mv_data;
    size_t n = val->mv_size - VAL_HDR;
    int64_t r = get_u32(v + 8), k = get_u32(v + 12);
    if (into) {
        if (r != want_rows || k != want_cols) return QN_ESHAPE;
        memcpy(into, v + VAL_HDR, n);
        return 0;
    }
    float *f = malloc(n ? n : 1);
    if (!f) return QN_ENOMEM;
    memcpy(f, v + VAL_HDR, n);
    *alloc = f;
    *rows = r;
    *cols = k;
    return 0;
}

/* The lookup behind every get. LMDB's snapshot in *t first (a hit there
 * takes no lock), then the inserts still queued or being flushed: a result
 * that was answered is a hit before its batched write lands
 * (read-your-writes). A miss in both can still be an entry that a flush
 * committed after the snapshot was taken and has dropped from the queue
 * since; then, if a flush committed since *gen (loaded before the snapshot
 * was taken), the snapshot is renewed and LMDB asked once more: the commit
 * is in the new snapshot, because it came before the bump of commit_gen that
 * came before the entry left the queue. Returns 0 on a hit (*pend_hit: it
 * came from the queue), QN_ENOTFOUND, QN_ESHAPE, QN_ENOMEM or lookup's
 * errors. A failed renew aborts *t and sets it NULL. */
static int find(qn_cache *c, MDB_txn **t, uint64_t *gen, const uint64_t key[2], int64_t want_rows,
                int64_t want_cols, float *into, float **alloc, int64_t *rows, int64_t *cols, bool *pend_hit)
{
    uint8_t kb[16];
    *pend_hit = false;
    for (int round = 0;; round++) {
        MDB_val val;
        bool bad = false;
        int rc = lookup(c, *t, key, kb, &val, &bad);
        if (rc == 0) return copy_value(&val, want_rows, want_cols, into, alloc, rows, cols);
        if (rc != QN_ENOTFOUND) return rc;
        rc = qnc_pending_get(c, kb, want_rows, want_cols, into, alloc, rows, cols);
        if (rc != QN_ENOTFOUND) {
            *pend_hit = rc == 0;
            return rc;
        }
        uint64_t g = atomic_load(&c->commit_gen);
        if (bad || round || g == *gen) return QN_ENOTFOUND;
        mdb_txn_reset(*t);
        int mrc = mdb_txn_renew(*t);
        if (mrc) {
            QN_LOGW(QNC_MOD, "%s: read txn: %s", c->dir, mdb_strerror(mrc));
            mdb_txn_abort(*t);
            *t = NULL;
            return qnc_from_mdb(mrc);
        }
        *gen = g;
    }
}

/* One lookup in its own read txn, counted as a hit (with an LFU bump) or a
 * miss; into / alloc as copy_value. */
static int fetch(qn_cache *c, const uint64_t key[2], int64_t want_rows, int64_t want_cols,
                 float *into, float **alloc, int64_t *rows, int64_t *cols)
{
    if (atomic_load_explicit(&c->broken, memory_order_relaxed)) { cnt_add(&c->misses, 1); return QN_ENOTFOUND; }
    uint64_t gen = atomic_load(&c->commit_gen);
    MDB_txn *t;
    int rc = qnc_rtxn_get(c, &t);
    if (rc) { cnt_add(&c->misses, 1); return qnc_from_mdb(rc); }
    bool pend_hit;
    rc = find(c, &t, &gen, key, want_rows, want_cols, into, alloc, rows, cols, &pend_hit);
    if (t) qnc_rtxn_put(c, t);
    if (rc == 0) {
        cnt_add(&c->hits, 1);
        if (pend_hit) cnt_add(&c->pending_hits, 1);
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
    uint64_t gen;            /* commit_gen when t's snapshot was taken (find) */
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
    r->gen = atomic_load(&c->commit_gen); /* before the snapshot: see find */
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
    float dummy;
    bool pend_hit;
    int rc = find(c, &r->t, &r->gen, key, rows, cols, out ? out : &dummy, NULL, NULL, NULL, &pend_hit);
    if (!r->t) r->live = false; /* its renew failed: the rest of the session misses */
    if (rc == 0) {
        cnt_add(&c->hits, 1);
        if (pend_hit) cnt_add(&c->pending_hits, 1);
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
