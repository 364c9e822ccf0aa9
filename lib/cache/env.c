/* env.c: the LMDB environment of the result cache. Open creates or checks
 * the three databases and the format record, moves an unusable file aside
 * (never deletes it) and agrees on one map size with the other processes on
 * the same directory; close flushes and syncs. Here too: the pooled read
 * transactions and the run-time failure policy (a full map or disk turns
 * writes off for a while; corruption turns the cache off in this process).
 * Must never: delete a user's data file; open with a map smaller than what
 * another process uses (LMDB needs one size for all). */
#include "cache_int.h"
#include "error.h"
#include "log.h"
#include "tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int qnc_from_mdb(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return 0;
    case MDB_NOTFOUND: return QN_ENOTFOUND;
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return QN_EFULL;
    case EIO: return QN_EIO;
    case ENOMEM: return QN_ENOMEM;
    case EACCES:
    case EROFS:
    case EPERM: return QN_EIO;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INCOMPATIBLE: return QN_EFORMAT;
    default: return QN_EEXTERNAL;
    }
}

bool qnc_mdb_is_corrupt(int rc)
{
    return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED ||
           rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE;
}


/* ---- options */

void qn_cache_opts_default(qn_cache_opts *o)
{
    memset(o, 0, sizeof *o);
    o->tick_ms = 10;
    o->lfu_log_factor = 10;
    o->lfu_decay_min = 1;
    o->high_pct = 75;
    o->low_pct = 60;
    o->evict_samples = 8;
    o->durable = 0;
    o->sync_ms = 1000;
    o->write_backoff_ms = 30000;
}

/* ---- runtime failure policy */

/* LMDB said a page is corrupt while we ran: stop using the cache in this
 * process (every get misses, nothing is written) and leave a marker so the
 * next open moves the file aside. Other processes find out on their own. */
void qnc_mark_broken(qn_cache *c, int rc, const char *where)
{
    if (atomic_exchange(&c->broken, true)) return;
    QN_LOGE(QNC_MOD, "%s: %s in %s: cache disabled in this process; it is moved aside at the next open",
            c->dir, mdb_strerror(rc), where);
    char path[4096];
    snprintf(path, sizeof path, "%s/quern.corrupt", c->dir);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
}

/* A failed write transaction: count it, and on a full map or disk stop
 * writing for a while (logged once per episode). */
int qnc_write_failed(qn_cache *c, int rc, const char *where)
{
    cnt_add(&c->wfail, 1);
    int e = qnc_from_mdb(rc);
    if (qnc_mdb_is_corrupt(rc)) {
        qnc_mark_broken(c, rc, where);
    } else {
        /* full map, full disk (ENOSPC, or EIO from a short write), quota:
         * all mean the same to a cache: stop writing, keep serving. A full
         * map is usually pages pinned by a reader that was descheduled
         * mid-read, gone in a moment: pause briefly. A full disk is not. */
        uint32_t pause = c->o.write_backoff_ms;
        if (rc == MDB_MAP_FULL && pause > 1000) pause = 1000;
        atomic_store(&c->writes_off_until, qnc_mono_ms() + (int64_t)pause);
        if (!c->full_logged) {
            MDB_envinfo info;
            mdb_env_info(c->env, &info);
            QN_LOGE(QNC_MOD, "%s: %s in %s (file at page %zu of %llu): cache writes stop for %u ms; serving goes on",
                    c->dir, mdb_strerror(rc), where, info.me_last_pgno,
                    (unsigned long long)(c->map_bytes / c->psize), pause);
            c->full_logged = true;
        }
        /* a killed process's reader slot pins old pages: clear it */
        int dead = 0;
        mdb_reader_check(c->env, &dead);
    }
    return e == QN_ENOTFOUND ? QN_EEXTERNAL : e;
}

bool qnc_writes_off(qn_cache *c)
{
    int64_t until = atomic_load(&c->writes_off_until);
    return until && qnc_mono_ms() < until;
}

/* ---- read transactions: pooled, reset between uses, so a get neither takes
 * LMDB's reader-table mutex nor allocates (MDB_NOTLS lets any thread use
 * any of them). */

int qnc_rtxn_get(qn_cache *c, MDB_txn **out)
{
    MDB_txn *t = NULL;
    pthread_mutex_lock(&c->rpool_mu);
    if (c->nrpool) t = c->rpool[--c->nrpool];
    pthread_mutex_unlock(&c->rpool_mu);
    int rc;
    if (t) {
        rc = mdb_txn_renew(t);
        if (rc == 0) { *out = t; return 0; }
        mdb_txn_abort(t);
    }
    rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &t);
    if (rc) {
        QN_LOGW(QNC_MOD, "%s: read txn: %s", c->dir, mdb_strerror(rc));
        return rc;
    }
    *out = t;
    return 0;
}

void qnc_rtxn_put(qn_cache *c, MDB_txn *t)
{
    mdb_txn_reset(t);
    pthread_mutex_lock(&c->rpool_mu);
    if (c->nrpool < RPOOL_MAX) { c->rpool[c->nrpool++] = t; t = NULL; }
    pthread_mutex_unlock(&c->rpool_mu);
    if (t) mdb_txn_abort(t);
}


/* ---- open / close */

int qnc_path_in(char *buf, size_t n, const char *dir, const char *name)
{
    int m = snprintf(buf, n, "%s/%s", dir, name);
    return m < 0 || (size_t)m >= n ? QN_EINVAL : 0;
}

/* Moves a bad data file aside (never deletes it: someone may want to look)
 * and drops the lock file, whose reader table belonged to it. */
static int move_aside(const char *dir, const char *why)
{
    char from[4096], to[4200], lock[4096];
    if (qnc_path_in(from, sizeof from, dir, "data.mdb") || qnc_path_in(lock, sizeof lock, dir, "lock.mdb"))
        return QN_EINVAL;
    snprintf(to, sizeof to, "%s.corrupt-%lld", from, (long long)time(NULL));
    struct stat sb;
    if (stat(to, &sb) == 0) snprintf(to, sizeof to, "%s.corrupt-%lld-%d", from, (long long)time(NULL), (int)getpid());
    if (rename(from, to) && errno != ENOENT) {
        QN_LOGE(QNC_MOD, "%s: cannot move the bad cache file aside: %s", dir, strerror(errno));
        return QN_EIO;
    }
    unlink(lock);
    char marker[4096];
    if (qnc_path_in(marker, sizeof marker, dir, "quern.corrupt") == 0) unlink(marker);
    QN_LOGE(QNC_MOD, "%s: cache file is unusable (%s): moved to %s; starting an empty cache", dir, why, to);
    return 0;
}

static int count_other_reader(const char *msg, void *ctx)
{
    int pid = 0;
    if (sscanf(msg, "%d", &pid) == 1 && pid > 0 && pid != (int)getpid()) (*(int *)ctx)++;
    return 0;
}

/* Result of one attempt to open the environment. */
enum { OPEN_OK = 0, OPEN_CORRUPT = 1 };

static void env_close(qn_cache *c)
{
    if (c->env) mdb_env_close(c->env);
    c->env = NULL;
}

/* Opens the environment at map bytes and checks it is a quern cache of this
 * format. Returns OPEN_OK, OPEN_CORRUPT (why filled; env closed) or a
 * negative QN_E*. *stored_map gets the map size recorded in the file (0 new). */
static int env_open_once(qn_cache *c, uint64_t map, char *why, size_t whyn, uint64_t *stored_map)
{
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&c->env);
    if (rc) { QN_LOGE(QNC_MOD, "mdb_env_create: %s", mdb_strerror(rc)); return qnc_from_mdb(rc); }
    if ((rc = mdb_env_set_maxdbs(c->env, 4)) || (rc = mdb_env_set_maxreaders(c->env, 1024)) ||
        (rc = mdb_env_set_mapsize(c->env, (size_t)map)))
        goto lmdb_fail;
    unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (c->o.durable ? 0 : MDB_NOSYNC);
    rc = mdb_env_open(c->env, c->dir, flags, 0644);
    if (rc) goto lmdb_fail;

    /* a truncated file opens fine (its meta pages are intact) but would fault
     * on the first read past its end */
    MDB_envinfo info;
    MDB_stat es;
    mdb_env_info(c->env, &info);
    mdb_env_stat(c->env, &es);
    char path[4096];
    struct stat sb;
    if (qnc_path_in(path, sizeof path, c->dir, "data.mdb") == 0 && stat(path, &sb) == 0 &&
        (uint64_t)sb.st_size < (uint64_t)(info.me_last_pgno + 1) * es.ms_psize) {
        snprintf(why, whyn, "truncated: %lld bytes, pages up to %llu", (long long)sb.st_size,
                 (unsigned long long)info.me_last_pgno);
        goto corrupt;
    }
    if (qnc_path_in(path, sizeof path, c->dir, "quern.corrupt") == 0 && stat(path, &sb) == 0) {
        snprintf(why, whyn, "marked corrupt by a process that read it");
        goto corrupt;
    }
    c->psize = es.ms_psize;
    int dead = 0;
    mdb_reader_check(c->env, &dead);

    rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc) goto lmdb_fail;
    if ((rc = mdb_dbi_open(txn, "entries", MDB_CREATE, &c->db_entries)) ||
        (rc = mdb_dbi_open(txn, "lfu", MDB_CREATE, &c->db_lfu)) ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &c->db_meta)))
        goto lmdb_fail;
    /* the main database holds our three names and nothing else */
    MDB_dbi main_dbi;
    MDB_stat ms;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) || (rc = mdb_stat(txn, main_dbi, &ms))) goto lmdb_fail;
    if (ms.ms_entries != 3) {
        snprintf(why, whyn, "not a quern cache (%zu records in the main database)", ms.ms_entries);
        goto corrupt;
    }
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, c->db_meta, &k, &v);
    *stored_map = 0;
    if (rc == MDB_NOTFOUND) {
        MDB_stat s;
        if ((rc = mdb_stat(txn, c->db_entries, &s))) goto lmdb_fail;
        if (s.ms_entries) { snprintf(why, whyn, "entries without a format record"); goto corrupt; }
        unsigned char f[FORMAT_REC] = {0};
        memcpy(f, FORMAT_MAGIC, 8);
        put_u32(f + 8, FORMAT_VERSION);
        put_u32(f + 12, c->psize);
        put_u64(f + 16, (uint64_t)qn_wall_ms());
        put_u64(f + 24, map);
        MDB_val fv = {sizeof f, f};
        if ((rc = mdb_put(txn, c->db_meta, &k, &fv, 0))) goto lmdb_fail;
    } else if (rc) {
        goto lmdb_fail;
    } else {
        const unsigned char *f = v.mv_data;
        if (v.mv_size < FORMAT_REC || memcmp(f, FORMAT_MAGIC, 8)) {
            snprintf(why, whyn, "not a quern cache (bad format record)");
            goto corrupt;
        }
        if (get_u32(f + 8) != FORMAT_VERSION) {
            snprintf(why, whyn, "format version %u, this build reads %u", get_u32(f + 8), FORMAT_VERSION);
            goto corrupt;
        }
        *stored_map = get_u64(f + 24);
    }
    if ((rc = mdb_txn_commit(txn))) { txn = NULL; goto lmdb_fail; }
    return OPEN_OK;

lmdb_fail:
    if (txn) mdb_txn_abort(txn);
    txn = NULL;
    if (qnc_mdb_is_corrupt(rc)) {
        snprintf(why, whyn, "%s", mdb_strerror(rc));
        env_close(c);
        return OPEN_CORRUPT;
    }
    if (rc == EACCES || rc == EROFS || rc == EPERM)
        QN_LOGE(QNC_MOD, "%s: cache directory is not writable: %s", c->dir, mdb_strerror(rc));
    else
        QN_LOGE(QNC_MOD, "%s: opening the cache: %s", c->dir, mdb_strerror(rc));
    env_close(c);
    return qnc_from_mdb(rc) == QN_EFORMAT ? QN_EEXTERNAL : qnc_from_mdb(rc);
corrupt:
    if (txn) mdb_txn_abort(txn);
    env_close(c);
    return OPEN_CORRUPT;
}

/* Records map in the format record (the size every process should use). */
static int store_map(qn_cache *c, uint64_t map)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc) return rc;
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, c->db_meta, &k, &v);
    if (rc == 0 && v.mv_size >= FORMAT_REC) {
        unsigned char f[FORMAT_REC];
        memcpy(f, v.mv_data, FORMAT_REC);
        put_u64(f + 24, map);
        MDB_val fv = {sizeof f, f};
        rc = mdb_put(txn, c->db_meta, &k, &fv, 0);
    }
    if (rc) { mdb_txn_abort(txn); return rc; }
    return mdb_txn_commit(txn);
}

/* Opens under an exclusive flock on quern.lock, so that two processes that
 * both find a corrupt file do not both move files aside. */
static int env_open(qn_cache *c, uint64_t map)
{
    char why[256] = "";
    uint64_t stored = 0;
    int rc = env_open_once(c, map, why, sizeof why, &stored);
    if (rc == OPEN_CORRUPT) {
        if ((rc = move_aside(c->dir, why))) return rc;
        rc = env_open_once(c, map, why, sizeof why, &stored);
        if (rc == OPEN_CORRUPT) {
            QN_LOGE(QNC_MOD, "%s: a fresh cache is unusable too (%s)", c->dir, why);
            return QN_EEXTERNAL;
        }
    }
    if (rc) return rc;
    if (stored && stored != map) {
        /* LMDB needs every process to map the same size: a process with a
         * smaller map fails once another grows the file past it. While
         * others have it open, keep theirs; alone, take the new size. */
        int others = 0;
        mdb_reader_list(c->env, count_other_reader, &others);
        if (others) {
            QN_LOGW(QNC_MOD, "%s: in use with a %llu MiB map by other processes; using that, not %llu MiB",
                    c->dir, (unsigned long long)(stored >> 20), (unsigned long long)(map >> 20));
            env_close(c);
            rc = env_open_once(c, stored, why, sizeof why, &stored);
            if (rc) return rc == OPEN_CORRUPT ? QN_EEXTERNAL : rc;
            map = stored;
        } else {
            QN_LOGI(QNC_MOD, "%s: map size %llu MiB -> %llu MiB", c->dir, (unsigned long long)(stored >> 20),
                    (unsigned long long)(map >> 20));
            if ((rc = store_map(c, map))) {
                QN_LOGE(QNC_MOD, "%s: recording the map size: %s", c->dir, mdb_strerror(rc));
                return qnc_from_mdb(rc);
            }
        }
    }
    MDB_envinfo info;
    mdb_env_info(c->env, &info);
    c->map_bytes = info.me_mapsize;
    return 0;
}

int qn_cache_open(const char *dir, uint64_t size_mb, const qn_cache_opts *opts, qn_cache **out)
{
    if (!dir || !*dir || !out || size_mb == 0 || size_mb > (1ull << 30)) return QN_EINVAL;
    *out = NULL;
    qn_cache_opts o;
    if (opts) o = *opts;
    else qn_cache_opts_default(&o);
    if (o.lfu_log_factor == 0) o.lfu_log_factor = 1;
    if (o.evict_samples == 0) o.evict_samples = 1;
    if (o.high_pct == 0 || o.high_pct > 95 || o.low_pct >= o.high_pct) return QN_EINVAL;
    if (o.tick_ms && o.sync_ms == 0) o.sync_ms = 1000;

    int rc = QN_ENOMEM, lockfd = -1;
    qn_cache *c = calloc(1, sizeof *c);
    if (!c) return QN_ENOMEM;
    c->o = o;
    pthread_mutex_init(&c->rpool_mu, NULL);
    pthread_mutex_init(&c->pend_mu, NULL);
    pthread_mutex_init(&c->flush_mu, NULL);
    pthread_mutex_init(&c->tick_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->tick_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!(c->dir = strdup(dir))) goto fail;
    if ((rc = qnc_pending_init(c))) goto fail;
    c->rng = o.seed ? o.seed : ((uint64_t)qn_now_ns() ^ ((uint64_t)getpid() << 32));

    if (mkdir(dir, 0755) && errno != EEXIST) {
        QN_LOGE(QNC_MOD, "%s: cannot create the cache directory: %s", dir, strerror(errno));
        rc = QN_EIO;
        goto fail;
    }
    char path[4096];
    if ((rc = qnc_path_in(path, sizeof path, dir, "quern.lock"))) goto fail;
    lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lockfd < 0) {
        QN_LOGE(QNC_MOD, "%s: cache directory is not writable: %s", dir, strerror(errno));
        rc = QN_EIO;
        goto fail;
    }
    if (access(dir, W_OK) != 0) {
        QN_LOGE(QNC_MOD, "%s: cache directory is not writable: %s", dir, strerror(errno));
        rc = QN_EIO;
        goto fail;
    }
    while (flock(lockfd, LOCK_EX) && errno == EINTR) {}
    rc = env_open(c, size_mb << 20);
    flock(lockfd, LOCK_UN);
    close(lockfd);
    lockfd = -1;
    if (rc) goto fail;

    c->nodemax = (((c->psize - PAGE_HDR) / 2) & ~1u) - SLOT;
    /* Headroom. Each key a txn touches dirties about one leaf per tree, and
     * the pages a txn frees are reusable only once no reader holds an older
     * snapshot (and never by the next txn). So one flush can need
     * MAX_TXN_PER_FLUSH * (FIXED_TXN_PAGES + 2 * ops_cap) fresh pages while
     * the ones it freed are still pinned: keep room for eight such txns
     * above the high watermark (two in flight, the rest for a reader
     * descheduled mid-read), and ops_cap near 1/64 of the map. Small maps
     * get a lower watermark than asked rather than a full map. */
    uint64_t pages = c->map_bytes / c->psize;
    c->ops_cap = (size_t)(pages / 64);
    if (c->ops_cap < 16) c->ops_cap = 16;
    uint64_t reserve = 8 * (FIXED_TXN_PAGES + 2 * (uint64_t)c->ops_cap);
    if (reserve >= pages * 7 / 10) {
        QN_LOGE(QNC_MOD, "%s: %llu MiB is too small for a cache (2 MiB at least)", dir,
                (unsigned long long)(c->map_bytes >> 20));
        rc = QN_EINVAL;
        goto fail;
    }
    c->high_bytes = c->map_bytes / 100 * o.high_pct;
    if (c->high_bytes > (pages - reserve) * c->psize) c->high_bytes = (pages - reserve) * c->psize;
    c->low_bytes = c->high_bytes / o.high_pct * o.low_pct;
    c->hard_bytes = c->high_bytes + (c->map_bytes - c->high_bytes) / 2;
    c->max_entry_bytes = c->map_bytes / 32;
    if (!c->o.max_pending_bytes) {
        uint64_t m = c->map_bytes / 16;
        c->o.max_pending_bytes = (size_t)(m < (64u << 20) ? m : (64u << 20));
    }
    c->last_persist_ms = qnc_mono_ms();
    /* one reader slot now, so that this process shows in the reader table
     * (env_open's map-size agreement relies on it) */
    MDB_txn *t;
    if (qnc_rtxn_get(c, &t) == 0) qnc_rtxn_put(c, t);

    if (o.tick_ms && (rc = qnc_tick_start(c))) goto fail;
    QN_LOGI(QNC_MOD, "%s: cache open, map %llu MiB, evict at %u%% down to %u%%", dir,
            (unsigned long long)(c->map_bytes >> 20), o.high_pct, o.low_pct);
    *out = c;
    return 0;
fail:
    if (lockfd >= 0) close(lockfd);
    qn_cache_close(&c);
    return rc;
}

void qn_cache_close(qn_cache **pc)
{
    if (!pc || !*pc) return;
    qn_cache *c = *pc;
    qnc_tick_stop(c);
    if (c->env) {
        qnc_flush(c, true);
        for (int i = 0; i < c->nrpool; i++) mdb_txn_abort(c->rpool[i]);
        c->nrpool = 0;
    }
    qnc_readers_free(c);
    if (c->env) {
        if (!c->o.durable) mdb_env_sync(c->env, 1);
        env_close(c);
    }
    qnc_pending_free(c);
    pthread_mutex_destroy(&c->rpool_mu);
    pthread_mutex_destroy(&c->pend_mu);
    pthread_mutex_destroy(&c->flush_mu);
    pthread_mutex_destroy(&c->tick_mu);
    pthread_cond_destroy(&c->tick_cv);
    free(c->dir);
    free(c);
    *pc = NULL;
}
