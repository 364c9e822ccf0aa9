/* stats.c: the shared counters record (meta "stats", added to by every
 * process at its flushes) and the stats calls: of an open cache, and of a
 * cache directory read without opening it for writing (`quern cache stats`,
 * which must never create or change anything there). */
#include "cache_int.h"
#include "error.h"

#include <errno.h>
#include <sys/stat.h>

uint64_t qnc_tree_pages(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_stat s;
    if (mdb_stat(txn, dbi, &s)) return 0;
    return s.ms_branch_pages + s.ms_leaf_pages + s.ms_overflow_pages;
}

int qnc_read_stats_rec(qn_cache *c, MDB_txn *txn, uint64_t st[STATS_N])
{
    memset(st, 0, STATS_N * sizeof *st);
    MDB_val k = {5, "stats"}, v;
    int rc = mdb_get(txn, c->db_meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    size_t n = v.mv_size / 8 < STATS_N ? v.mv_size / 8 : STATS_N;
    for (size_t i = 0; i < n; i++) st[i] = get_u64((const unsigned char *)v.mv_data + 8 * i);
    return 0;
}

int qnc_write_stats_rec(qn_cache *c, MDB_txn *txn, const uint64_t st[STATS_N])
{
    unsigned char buf[STATS_N * 8];
    for (int i = 0; i < STATS_N; i++) put_u64(buf + 8 * i, st[i]);
    MDB_val k = {5, "stats"}, v = {sizeof buf, buf};
    return mdb_put(txn, c->db_meta, &k, &v, 0);
}


/* ---- stats */

static void fill_env_stats(MDB_env *env, MDB_txn *txn, MDB_dbi de, MDB_dbi dl, MDB_dbi dm, const char *dir,
                           qn_cache_stats *st)
{
    MDB_stat s;
    if (mdb_stat(txn, de, &s) == 0) st->entries = s.ms_entries;
    uint64_t pages = qnc_tree_pages(txn, de) + qnc_tree_pages(txn, dl) + qnc_tree_pages(txn, dm);
    MDB_stat es;
    mdb_env_stat(env, &es);
    st->tree_bytes = pages * es.ms_psize;
    MDB_envinfo info;
    mdb_env_info(env, &info);
    st->map_bytes = info.me_mapsize;
    char path[4096];
    struct stat sb;
    if (qnc_path_in(path, sizeof path, dir, "data.mdb") == 0 && stat(path, &sb) == 0)
        st->file_bytes = (uint64_t)sb.st_size;
}

static void fill_totals(const uint64_t rec[STATS_N], qn_cache_stats *st)
{
    st->total_hits = rec[ST_HITS];
    st->total_misses = rec[ST_MISSES];
    st->total_inserts = rec[ST_INSERTS];
    st->total_evictions = rec[ST_EVICTIONS];
    st->total_checksum_failures = rec[ST_CSUM];
    st->total_write_failures = rec[ST_WFAIL];
    st->bytes = rec[ST_BYTES];
}

int qn_cache_stats_get(qn_cache *c, qn_cache_stats *st)
{
    if (!c || !st) return QN_EINVAL;
    memset(st, 0, sizeof *st);
    st->hits = cnt_get(&c->hits);
    st->misses = cnt_get(&c->misses);
    st->inserts = cnt_get(&c->inserts);
    st->evictions = cnt_get(&c->evictions);
    st->checksum_failures = cnt_get(&c->csum_fail);
    st->write_failures = cnt_get(&c->wfail);
    st->dropped = cnt_get(&c->dropped);
    st->pending_hits = cnt_get(&c->pending_hits);
    st->high_bytes = c->high_bytes;
    st->low_bytes = c->low_bytes;
    MDB_txn *t;
    int rc = qnc_rtxn_get(c, &t);
    if (rc) return qnc_from_mdb(rc);
    uint64_t rec[STATS_N];
    rc = qnc_read_stats_rec(c, t, rec);
    if (rc == 0) {
        fill_totals(rec, st);
        fill_env_stats(c->env, t, c->db_entries, c->db_lfu, c->db_meta, c->dir, st);
    }
    qnc_rtxn_put(c, t);
    return qnc_from_mdb(rc);
}

int qn_cache_stats_read(const char *dir, qn_cache_stats *st)
{
    if (!dir || !st) return QN_EINVAL;
    memset(st, 0, sizeof *st);
    char path[4096];
    struct stat sb;
    if (qnc_path_in(path, sizeof path, dir, "data.mdb") || stat(path, &sb) != 0) return QN_ENOTFOUND;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&env);
    if (rc) return qnc_from_mdb(rc);
    mdb_env_set_maxdbs(env, 4);
    rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0644);
    if (rc == EACCES || rc == EROFS) { /* a read-only copy: no reader table */
        mdb_env_close(env);
        env = NULL;
        if ((rc = mdb_env_create(&env))) return qnc_from_mdb(rc);
        mdb_env_set_maxdbs(env, 4);
        rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS | MDB_NOLOCK, 0644);
    }
    if (rc) goto fail;
    MDB_dbi de, dl, dm;
    if ((rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))) goto fail;
    if ((rc = mdb_dbi_open(txn, "entries", 0, &de)) || (rc = mdb_dbi_open(txn, "lfu", 0, &dl)) ||
        (rc = mdb_dbi_open(txn, "meta", 0, &dm))) {
        if (rc == MDB_NOTFOUND) rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    MDB_val k = {6, "format"}, v;
    if ((rc = mdb_get(txn, dm, &k, &v))) goto fail;
    if (v.mv_size < FORMAT_REC || memcmp(v.mv_data, FORMAT_MAGIC, 8) ||
        get_u32((const unsigned char *)v.mv_data + 8) != FORMAT_VERSION) {
        rc = MDB_INCOMPATIBLE;
        goto fail;
    }
    uint64_t rec[STATS_N] = {0};
    MDB_val sk = {5, "stats"}, sv;
    rc = mdb_get(txn, dm, &sk, &sv);
    if (rc == 0) {
        size_t n = sv.mv_size / 8 < STATS_N ? sv.mv_size / 8 : STATS_N;
        for (size_t i = 0; i < n; i++) rec[i] = get_u64((const unsigned char *)sv.mv_data + 8 * i);
    } else if (rc != MDB_NOTFOUND) {
        goto fail;
    }
    rc = 0;
    fill_totals(rec, st);
    fill_env_stats(env, txn, de, dl, dm, dir, st);
fail:
    if (txn) mdb_txn_abort(txn);
    mdb_env_close(env);
    if (rc) {
        int e = qnc_from_mdb(rc);
        return e == QN_ENOTFOUND ? QN_EFORMAT : e;
    }
    return 0;
}
