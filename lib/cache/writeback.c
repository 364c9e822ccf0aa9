/* writeback.c: the write-behind queue. Puts, frequency bumps and deletes of
 * corrupt entries collect in memory (pend, under pend_mu) and a flush writes
 * them in one write transaction per batch or tick (more only when the work
 * is larger than what one transaction may dirty), evicting first when the
 * accounted bytes would pass the high watermark. The tick thread flushes
 * every tick_ms and syncs a non-durable environment every sync_ms.
 * Must never: write one transaction per job; hold pend_mu across LMDB work. */
#include "cache_int.h"
#include "error.h"
#include "log.h"
#include "tensor.h"

#include <stdlib.h>
#include <time.h>

/* ---- pending work */

/* Caller holds pend_mu. */
void qnc_record_bump_locked(qn_cache *c, uint64_t k0, uint64_t k1)
{
    bump *tab = c->pend.bumps;
    uint32_t i = (uint32_t)(k0 ^ (k1 >> 7)) & (BUMP_CAP - 1);
    for (uint32_t probe = 0; probe < 32; probe++, i = (i + 1) & (BUMP_CAP - 1)) {
        if (tab[i].n && tab[i].k0 == k0 && tab[i].k1 == k1) { tab[i].n++; return; }
        if (!tab[i].n) {
            if (c->pend.nbumps >= BUMP_CAP / 2) return; /* full enough: drop; LFU is approximate */
            tab[i].k0 = k0;
            tab[i].k1 = k1;
            tab[i].n = 1;
            c->pend.nbumps++;
            return;
        }
    }
}

void qnc_record_bump(qn_cache *c, const uint64_t key[2])
{
    pthread_mutex_lock(&c->pend_mu);
    qnc_record_bump_locked(c, key[0], key[1]);
    pthread_mutex_unlock(&c->pend_mu);
}

void qnc_record_delete(qn_cache *c, const uint8_t key[16])
{
    pthread_mutex_lock(&c->pend_mu);
    if (c->pend.ndels < DEL_CAP) memcpy(c->pend.dels[c->pend.ndels++], key, 16);
    pthread_mutex_unlock(&c->pend_mu);
}

/* ---- the pending index (read-your-writes).
 * A put is answered before its flush, so without this a client that sends
 * the same job again as soon as it has its answer misses. Chained hashing on
 * the key, chains through the queued inserts themselves, so indexing costs
 * no allocation but the bucket array's growth. */

static size_t pidx_slot(const qn_cache *c, const uint8_t kb[16])
{
    return (size_t)(get_u64(kb) ^ get_u64(kb + 8)) & (c->pidx_cap - 1);
}

/* Caller holds pend_mu. */
static pput *pidx_find_locked(qn_cache *c, const uint8_t kb[16])
{
    if (!c->pidx_cap) return NULL;
    for (pput *p = c->pidx[pidx_slot(c, kb)]; p; p = p->hnext)
        if (!memcmp(p->key, kb, 16)) return p;
    return NULL;
}

/* Doubles the buckets (load factor 1). On ENOMEM the chains just get longer. */
static void pidx_grow_locked(qn_cache *c)
{
    size_t ncap = c->pidx_cap ? c->pidx_cap * 2 : 1024, ocap = c->pidx_cap;
    pput **nb = calloc(ncap, sizeof *nb), **ob = c->pidx;
    if (!nb) return;
    c->pidx = nb;
    c->pidx_cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        for (pput *p = ob[i], *next; p; p = next) {
            next = p->hnext;
            size_t sl = pidx_slot(c, p->key);
            p->hnext = nb[sl];
            nb[sl] = p;
        }
    }
    free(ob);
}

/* Indexes p unless its key is already there: the first answer is the one
 * served, as the first is the one a flush writes. Caller holds pend_mu. */
static void pidx_add_locked(qn_cache *c, pput *p)
{
    p->indexed = false;
    p->hnext = NULL;
    size_t n = atomic_load_explicit(&c->pidx_n, memory_order_relaxed);
    if (n >= c->pidx_cap) pidx_grow_locked(c);
    if (!c->pidx_cap || pidx_find_locked(c, p->key)) return;
    size_t sl = pidx_slot(c, p->key);
    p->hnext = c->pidx[sl];
    c->pidx[sl] = p;
    p->indexed = true;
    atomic_store(&c->pidx_n, n + 1);
}

/* Caller holds pend_mu. */
static void pidx_remove_locked(qn_cache *c, pput *p)
{
    if (!p->indexed) return;
    for (pput **pp = &c->pidx[pidx_slot(c, p->key)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == p) {
            *pp = p->hnext;
            p->indexed = false;
            atomic_fetch_sub(&c->pidx_n, 1);
            return;
        }
    }
    QN_ASSERT(!"indexed insert not in the pending index");
}

int qnc_pending_get(qn_cache *c, const uint8_t kb[16], int64_t want_rows, int64_t want_cols, float *into,
                    float **alloc, int64_t *rows, int64_t *cols)
{
    if (!atomic_load(&c->pidx_n)) return QN_ENOTFOUND;
    int rc = QN_ENOTFOUND;
    pthread_mutex_lock(&c->pend_mu);
    const pput *p = pidx_find_locked(c, kb);
    if (p) {
        const unsigned char *v = p->v;
        int64_t r = get_u32(v + 8), k = get_u32(v + 12);
        size_t n = p->vlen - VAL_HDR;
        if (into) {
            if (r != want_rows || k != want_cols) rc = QN_ESHAPE;
            else { memcpy(into, v + VAL_HDR, n); rc = 0; }
        } else {
            float *f = malloc(n ? n : 1);
            if (!f) rc = QN_ENOMEM;
            else {
                memcpy(f, v + VAL_HDR, n);
                *alloc = f;
                *rows = r;
                *cols = k;
                rc = 0;
            }
        }
    }
    pthread_mutex_unlock(&c->pend_mu);
    return rc;
}

/* Drops p's inserts from the index, then frees them. After a flush this runs
 * only once every transaction of it has committed (or failed): until then a
 * lookup that misses LMDB must still find them here. */
static void pending_free_puts(qn_cache *c, pending *p)
{
    if (!p->nputs) return;
    pthread_mutex_lock(&c->pend_mu);
    for (size_t i = 0; i < p->nputs; i++) pidx_remove_locked(c, p->puts[i]);
    pthread_mutex_unlock(&c->pend_mu);
    for (size_t i = 0; i < p->nputs; i++) free(p->puts[i]);
    p->nputs = 0;
    p->put_bytes = 0;
}


/* ---- put */

int qn_cache_put(qn_cache *c, const uint64_t key[2], int64_t rows, int64_t cols, const float *data)
{
    if (!c || !key || rows < 0 || cols < 0 || rows > UINT32_MAX || cols > UINT32_MAX ||
        (rows && cols && !data))
        return QN_EINVAL;
    if (atomic_load_explicit(&c->broken, memory_order_relaxed) || qnc_writes_off(c)) {
        cnt_add(&c->dropped, 1);
        return QN_EFULL;
    }
    uint64_t plen = (uint64_t)rows * (uint64_t)cols * 4;
    if (VAL_HDR + plen > c->max_entry_bytes) {
        cnt_add(&c->dropped, 1);
        return QN_ETOOLARGE;
    }
    size_t vlen = VAL_HDR + (size_t)plen;
    pput *p = malloc(sizeof *p + vlen);
    if (!p) return QN_ENOMEM;
    key_bytes(key, p->key);
    p->vlen = vlen;
    p->cost = qnc_entry_cost(c, vlen);
    unsigned char *v = p->v;
    put_u32(v, VAL_MAGIC);
    put_u16(v + 4, VAL_FORMAT);
    put_u16(v + 6, QN_DTYPE_F32);
    put_u32(v + 8, (uint32_t)rows);
    put_u32(v + 12, (uint32_t)cols);
    if (plen) memcpy(v + VAL_HDR, data, (size_t)plen);
    put_u64(v + 16, qnc_value_checksum(p->key, v, v + VAL_HDR, (size_t)plen));
    put_u64(v + 24, (uint64_t)qnc_wall_ms(c));

    int rc = 0;
    pthread_mutex_lock(&c->pend_mu);
    pending *pd = &c->pend;
    if (pd->put_bytes + vlen > c->o.max_pending_bytes) {
        rc = QN_EFULL;
    } else if (pd->nputs == pd->cap_puts) {
        size_t ncap = pd->cap_puts ? pd->cap_puts * 2 : 64;
        pput **np = realloc(pd->puts, ncap * sizeof *np);
        if (!np) rc = QN_ENOMEM;
        else { pd->puts = np; pd->cap_puts = ncap; }
    }
    if (rc == 0) {
        pd->puts[pd->nputs++] = p;
        pd->put_bytes += vlen;
        pidx_add_locked(c, p);
        p = NULL;
    }
    pthread_mutex_unlock(&c->pend_mu);
    if (p) {
        free(p);
        cnt_add(&c->dropped, 1);
    }
    return rc;
}


static int apply_bump(qn_cache *c, MDB_txn *txn, const uint8_t kb[16], uint32_t n, uint32_t now)
{
    MDB_val k = {16, (void *)kb}, v;
    int rc = mdb_get(txn, c->db_lfu, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    if (v.mv_size != LFU_REC) return 0;
    const unsigned char *r = v.mv_data;
    uint8_t cnt = qn_lfu_decay(r[0], get_u32(r + 4) / 60, now / 60, c->o.lfu_decay_min);
    /* past ~2000 hits in one flush the counter is saturated at any factor
     * that matters; the loop bound keeps a flush cheap */
    for (uint32_t i = 0; i < n && i < 2048 && cnt < 255; i++)
        cnt = qn_lfu_incr(cnt, c->o.lfu_log_factor, qnc_rng_unit(&c->rng));
    /* Most hits on a warm key change nothing LFU can see: the counter grows
     * with probability 1/((c-5)*factor+1) and aging counts minutes. Then
     * skip the write, which would copy a whole leaf page. */
    if (cnt == r[0] && now / 60 == get_u32(r + 4) / 60) return 0;
    unsigned char nr[LFU_REC];
    qnc_lfu_rec(nr, cnt, now, get_u32(r + 8));
    MDB_val nv = {LFU_REC, nr};
    return mdb_put(txn, c->db_lfu, &k, &nv, 0);
}

typedef struct flush_pos {
    size_t put, bump, del;
} flush_pos;

/* One write transaction over the next slice of the work. */
static int flush_txn(qn_cache *c, pending *w, flush_pos *pos, uint64_t *n_ins, uint64_t *n_ev)
{
    MDB_txn *txn = NULL;
    uint64_t st[STATS_N];
    uint64_t ins = 0, ev = 0;
    size_t ops = 0;
    uint32_t now = qnc_now_sec(c);
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc) return rc;
    if ((rc = qnc_read_stats_rec(c, txn, st))) goto fail;
    uint64_t acct = st[ST_BYTES];

    /* deletes of entries that failed their checksum */
    for (; pos->del < w->ndels && ops < c->ops_cap; pos->del++, ops++) {
        MDB_val k = {16, w->dels[pos->del]}, v;
        rc = mdb_get(txn, c->db_lfu, &k, &v);
        if (rc == 0 && v.mv_size == LFU_REC) {
            uint64_t cost = get_u32((const unsigned char *)v.mv_data + 8);
            acct = acct > cost ? acct - cost : 0;
        }
        if ((rc = mdb_del(txn, c->db_lfu, &k, NULL)) && rc != MDB_NOTFOUND) goto fail;
        if ((rc = mdb_del(txn, c->db_entries, &k, NULL)) && rc != MDB_NOTFOUND) goto fail;
    }

    /* the slice of inserts this txn takes: bounded in keys and in bytes, so
     * that its copy-on-write pages stay inside the headroom; half the keys
     * when it must evict too (about one eviction per insert) */
    bool over_pages = (qnc_tree_pages(txn, c->db_entries) + qnc_tree_pages(txn, c->db_lfu)) * c->psize >
                      c->hard_bytes;
    size_t room = c->ops_cap > ops ? c->ops_cap - ops : 1, p_end;
    uint64_t incoming;
    bool must_evict = false;
    for (int pass = 0; pass < 2; pass++) {
        size_t lim = pass ? (room + 1) / 2 : room;
        p_end = pos->put;
        incoming = 0;
        while (p_end < w->nputs && p_end - pos->put < lim &&
               incoming + w->puts[p_end]->cost <= c->map_bytes / 16) {
            incoming += w->puts[p_end]->cost;
            p_end++;
        }
        if (p_end == pos->put && pos->put < w->nputs) { incoming = w->puts[p_end]->cost; p_end++; }
        must_evict = acct + incoming > c->high_bytes ||
                     (st[ST_EVICTING] && acct + incoming > c->low_bytes) || over_pages;
        if (!must_evict) break;
    }

    /* eviction: from the high watermark down to the low one; the round's
     * state is in the stats record so that every process continues it */
    if (must_evict) {
        uint64_t target = c->low_bytes > incoming ? c->low_bytes - incoming : 0;
        if (over_pages) {
            /* accounting says fine, pages say otherwise: trust the pages */
            if (!c->pages_logged)
                QN_LOGW(QNC_MOD, "%s: B-tree pages past %llu bytes: evicting below the accounted watermark",
                        c->dir, (unsigned long long)c->hard_bytes);
            c->pages_logged = true;
            target = acct > acct / 8 ? acct - acct / 8 : 0;
        }
        /* a big insert may need many small evictions: the evictions get the
         * whole room, the inserts half of it (reserve counts 2 pages a key) */
        size_t budget = room;
        if ((rc = qnc_evict(c, txn, &acct, target, budget, &ev))) goto fail;
        ops += ev;
        st[ST_EVICTING] = acct > target;
    }

    /* inserts, unless eviction could not make room yet (then the next txn of
     * this flush evicts again first) */
    if (acct + incoming <= c->high_bytes) {
        for (; pos->put < p_end; pos->put++, ops++) {
            pput *p = w->puts[pos->put];
            MDB_val k = {16, p->key}, v;
            rc = mdb_get(txn, c->db_lfu, &k, &v);
            if (rc == 0) { /* another process (or job) got there first: a hit */
                if ((rc = apply_bump(c, txn, p->key, 1, now))) goto fail;
                continue;
            }
            if (rc != MDB_NOTFOUND) goto fail;
            MDB_val val = {p->vlen, p->v};
            if ((rc = mdb_put(txn, c->db_entries, &k, &val, 0))) goto fail;
            unsigned char r[LFU_REC];
            qnc_lfu_rec(r, QN_LFU_INIT_VAL, now, p->cost);
            MDB_val lv = {LFU_REC, r};
            if ((rc = mdb_put(txn, c->db_lfu, &k, &lv, 0))) goto fail;
            acct += p->cost;
            ins++;
        }
    }

    /* frequency bumps recorded by hits */
    for (; pos->bump < BUMP_CAP && ops < c->ops_cap; pos->bump++) {
        bump *b = &w->bumps[pos->bump];
        if (!b->n) continue;
        uint8_t kb[16];
        uint64_t kk[2] = {b->k0, b->k1};
        key_bytes(kk, kb);
        if ((rc = apply_bump(c, txn, kb, b->n, now))) goto fail;
        ops++;
    }

    /* counters: this txn's own, plus this process's since the last persist */
    uint64_t cur[6] = {cnt_get(&c->hits), cnt_get(&c->misses), 0, 0, cnt_get(&c->csum_fail),
                       cnt_get(&c->wfail)};
    st[ST_HITS] += cur[0] - c->persisted[0];
    st[ST_MISSES] += cur[1] - c->persisted[1];
    st[ST_CSUM] += cur[4] - c->persisted[4];
    st[ST_WFAIL] += cur[5] - c->persisted[5];
    st[ST_INSERTS] += ins;
    st[ST_EVICTIONS] += ev;
    st[ST_BYTES] = acct;
    if ((rc = qnc_write_stats_rec(c, txn, st))) goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc) goto fail;
    /* before this txn's inserts leave the pending index (read.c) */
    atomic_fetch_add(&c->commit_gen, 1);
    c->persisted[0] = cur[0];
    c->persisted[1] = cur[1];
    c->persisted[4] = cur[4];
    c->persisted[5] = cur[5];
    *n_ins += ins;
    *n_ev += ev;
    return 0;
fail:
    if (txn) mdb_txn_abort(txn);
    return rc;
}

int qnc_flush(qn_cache *c, bool force_counters)
{
    pthread_mutex_lock(&c->flush_mu);
    pending *w = &c->work;
    /* take the pending work; gets and puts go on while we write */
    pthread_mutex_lock(&c->pend_mu);
    pending tmp = c->pend;
    c->pend.puts = w->puts;
    c->pend.cap_puts = w->cap_puts;
    c->pend.nputs = c->pend.put_bytes = 0;
    c->pend.bumps = w->bumps;
    c->pend.nbumps = 0;
    c->pend.ndels = 0;
    pthread_mutex_unlock(&c->pend_mu);
    w->puts = tmp.puts;
    w->cap_puts = tmp.cap_puts;
    w->nputs = tmp.nputs;
    w->put_bytes = tmp.put_bytes;
    w->bumps = tmp.bumps;
    w->nbumps = tmp.nbumps;
    w->ndels = tmp.ndels;
    memcpy(w->dels, tmp.dels, tmp.ndels * 16);

    int ret = 0;
    int64_t now = qnc_mono_ms();
    bool counters_due = (force_counters || now - c->last_persist_ms >= 1000) &&
                        (cnt_get(&c->hits) != c->persisted[0] || cnt_get(&c->misses) != c->persisted[1] ||
                         cnt_get(&c->wfail) != c->persisted[5]);
    if (atomic_load(&c->broken)) {
        cnt_add(&c->dropped, w->nputs);
        goto done;
    }
    if (qnc_writes_off(c)) {
        cnt_add(&c->dropped, w->nputs);
        ret = QN_EFULL;
        goto done;
    }
    if (!w->nputs && !w->nbumps && !w->ndels && !counters_due) goto done;

    flush_pos pos = {0, w->nbumps ? 0 : BUMP_CAP, 0};
    uint64_t ins = 0, ev = 0;
    for (int i = 0; i < MAX_TXN_PER_FLUSH; i++) {
        int rc = flush_txn(c, w, &pos, &ins, &ev);
        if (rc) {
            ret = qnc_write_failed(c, rc, "flush");
            cnt_add(&c->dropped, w->nputs - pos.put);
            break;
        }
        if (pos.put >= w->nputs && pos.del >= w->ndels && pos.bump >= BUMP_CAP) break;
    }
    if (ret == 0 && c->full_logged) {
        QN_LOGI(QNC_MOD, "%s: cache writes resumed", c->dir);
        c->full_logged = false;
    }
    if (ret == 0 && pos.put < w->nputs) cnt_add(&c->dropped, w->nputs - pos.put);
    cnt_add(&c->inserts, ins);
    cnt_add(&c->evictions, ev);
    c->last_persist_ms = now;
done:
    pending_free_puts(c, w);
    if (w->nbumps) memset(w->bumps, 0, BUMP_CAP * sizeof *w->bumps);
    w->nbumps = 0;
    w->ndels = 0;
    pthread_mutex_unlock(&c->flush_mu);
    return ret;
}

int qnc_pending_init(qn_cache *c)
{
    c->pend.bumps = calloc(BUMP_CAP, sizeof(bump));
    c->work.bumps = calloc(BUMP_CAP, sizeof(bump));
    return c->pend.bumps && c->work.bumps ? 0 : QN_ENOMEM;
}

void qnc_pending_free(qn_cache *c)
{
    pending_free_puts(c, &c->pend);
    pending_free_puts(c, &c->work);
    free(c->pidx);
    c->pidx = NULL;
    c->pidx_cap = 0;
    free(c->pend.puts);
    free(c->work.puts);
    free(c->pend.bumps);
    free(c->work.bumps);
}

int qn_cache_flush(qn_cache *c)
{
    if (!c) return QN_EINVAL;
    return qnc_flush(c, false);
}

/* ---- tick thread */

static void *tick_main(void *arg)
{
    qn_cache *c = arg;
    qn_thread_name("qn-cache-tick");
    int64_t last_sync = qnc_mono_ms(), last_check = last_sync;
    pthread_mutex_lock(&c->tick_mu);
    while (!c->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)c->o.tick_ms * 1000000u;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&c->tick_cv, &c->tick_mu, &ts);
        if (c->stop) break;
        pthread_mutex_unlock(&c->tick_mu);
        qn_cache_flush(c);
        int64_t now = qnc_mono_ms();
        if (!c->o.durable && now - last_sync >= (int64_t)c->o.sync_ms) {
            mdb_env_sync(c->env, 1);
            last_sync = now;
        }
        if (now - last_check >= 10000) { /* slots of killed processes pin pages */
            int dead = 0;
            mdb_reader_check(c->env, &dead);
            if (dead) QN_LOGI(QNC_MOD, "%s: cleared %d reader slots of dead processes", c->dir, dead);
            last_check = now;
        }
        pthread_mutex_lock(&c->tick_mu);
    }
    pthread_mutex_unlock(&c->tick_mu);
    return NULL;
}

int qnc_tick_start(qn_cache *c)
{
    if (pthread_create(&c->tick, NULL, tick_main, c)) {
        QN_LOGE(QNC_MOD, "%s: cannot start the cache tick thread", c->dir);
        return QN_EEXTERNAL;
    }
    c->tick_started = true;
    return 0;
}

void qnc_tick_stop(qn_cache *c)
{
    if (!c->tick_started) return;
    pthread_mutex_lock(&c->tick_mu);
    c->stop = true;
    pthread_cond_signal(&c->tick_cv);
    pthread_mutex_unlock(&c->tick_mu);
    pthread_join(c->tick, NULL);
    c->tick_started = false;
}
