/* evict.c: LFU eviction by sampling, as Redis's maxmemory-policy allkeys-lfu:
 * runs of lfu records from random points feed a small pool of the best
 * candidates, and the lowest decayed counter (then the longest idle) goes.
 * Runs inside a flush's write transaction only; never decides when to evict
 * (writeback.c does, from the accounted bytes and the watermarks). */
#include "cache_int.h"

/* ---- eviction */

typedef struct cand {
    uint8_t key[16];
    uint8_t score;   /* decayed counter */
    uint32_t ldt;
    uint32_t cost;
} cand;

/* Lower score first, then the longer idle. */
static bool cand_before(const cand *a, const cand *b)
{
    return a->score != b->score ? a->score < b->score : a->ldt < b->ldt;
}

/* Adds x to the pool (sorted best-first, at most EVICT_POOL, no duplicates). */
static void pool_add(cand *pool, int *n, const cand *x)
{
    for (int i = 0; i < *n; i++)
        if (!memcmp(pool[i].key, x->key, 16)) return;
    int pos = *n;
    while (pos > 0 && cand_before(x, &pool[pos - 1])) pos--;
    if (pos >= EVICT_POOL) return;
    int last = *n < EVICT_POOL ? *n : EVICT_POOL - 1;
    memmove(&pool[pos + 1], &pool[pos], (size_t)(last - pos) * sizeof *pool);
    pool[pos] = *x;
    if (*n < EVICT_POOL) (*n)++;
}

/* Reads evict_samples consecutive lfu records from a random point into the
 * pool. Keys are hashes, so key order is independent of frequency and a run
 * of neighbours is as good a sample as random picks, for one seek. Returns
 * the number sampled, or a negative LMDB code. */
static int sample_into_pool(qn_cache *c, MDB_txn *txn, uint32_t now, cand *pool, int *npool)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, c->db_lfu, &cur);
    if (rc) return -rc;
    uint8_t start[16];
    put_u64(start, qnc_rng_next(&c->rng));
    put_u64(start + 8, qnc_rng_next(&c->rng));
    MDB_val k = {16, start}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    int n = 0;
    uint8_t first[16];
    while (rc == 0 && n < (int)c->o.evict_samples) {
        if (n == 0) memcpy(first, k.mv_data, 16);
        else if (!memcmp(first, k.mv_data, 16)) break; /* wrapped: fewer keys than samples */
        if (k.mv_size == 16 && v.mv_size == LFU_REC) {
            const unsigned char *r = v.mv_data;
            cand x;
            memcpy(x.key, k.mv_data, 16);
            x.ldt = get_u32(r + 4);
            x.score = qn_lfu_decay(r[0], x.ldt / 60, now / 60, c->o.lfu_decay_min);
            x.cost = get_u32(r + 8);
            pool_add(pool, npool, &x);
        }
        n++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        if (rc == MDB_NOTFOUND) rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND) return -rc;
    return n;
}

/* Evicts the lowest-frequency entries until *acct <= target or max_ops are
 * used. Returns 0 or an LMDB code; *evicted counts what was removed. */
int qnc_evict(qn_cache *c, MDB_txn *txn, uint64_t *acct, uint64_t target, size_t max_ops,
                 uint64_t *evicted)
{
    cand pool[EVICT_POOL];
    int npool = 0;
    uint32_t now = qnc_now_sec(c);
    size_t ops = 0;
    while (*acct > target && ops < max_ops) {
        int n = sample_into_pool(c, txn, now, pool, &npool);
        if (n < 0) return -n;
        if (npool == 0) { /* empty store: the accounting drifted; it is 0 now */
            *acct = 0;
            break;
        }
        cand victim = pool[0];
        memmove(&pool[0], &pool[1], (size_t)(--npool) * sizeof *pool);
        MDB_val k = {16, victim.key};
        int rc = mdb_del(txn, c->db_entries, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        rc = mdb_del(txn, c->db_lfu, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return rc;
        *acct = *acct > victim.cost ? *acct - victim.cost : 0;
        (*evicted)++;
        ops++;
    }
    return 0;
}
