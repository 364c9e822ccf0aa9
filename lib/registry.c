/* registry.c: the model repository, REPO/<name>/<version>/model.safetensors,
 * and the versions loaded from it.
 *
 * Two tables, two locks:
 *  - the file table (scan_mu): every model file seen on disk with its stat
 *    identity (st_dev, st_ino, size, mtime ns) and the model loaded from it,
 *    or none when it failed. Only a scan touches it, so a failed file is
 *    retried, and logged, only when its identity changes.
 *  - the served table (rwlock): name -> sorted versions -> model, rebuilt by a
 *    scan when something changed and swapped in under the write lock. A
 *    lookup is a read lock, a binary search and an atomic increment: no
 *    allocation, no system call.
 * Loading and backend preparation happen with no lock that lookups need, so
 * a slow load never stalls serving. A replaced or removed model is unref'd
 * only after the table that pointed at it is gone; batches holding it finish
 * on it. Which versions of a model are loaded at all is its version policy
 * (REPO/<name>/config.json, model_config.h), read again when it changes.
 * This file must never serve a model that has not been prepared. */
#include "registry.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "model_config.h"

#define MODULE "registry"
#define MODEL_FILE "model.safetensors"
#define CONFIG_FILE "config.json"
#define DEFAULT_INTERVAL_MS 500

typedef struct reg_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
} reg_id;

/* One model file on disk, as the scan saw it. */
typedef struct reg_file {
    char name[QN_MODEL_NAME_MAX + 1];
    int64_t version;   /* 0 in a "keep" marker: every version of name */
    reg_id id;
    int keep;          /* found list only: could not be examined, keep what we had */
    qn_model *model;   /* file table only: the registry's reference, NULL if it failed */
} reg_file;

typedef struct served_model {
    char name[QN_MODEL_NAME_MAX + 1];
    size_t n;
    int64_t *versions;  /* ascending */
    qn_model **models;  /* borrowed from the file table, valid while this table is current */
} served_model;

typedef struct served_table {
    size_t n;
    served_model *m;    /* sorted by name */
} served_table;

/* A model's version policy (REPO/<name>/config.json) as the last scan left
 * it: the file's identity when it was last read, and the policy in effect,
 * which a malformed file does not change. */
typedef struct reg_conf {
    char name[QN_MODEL_NAME_MAX + 1];
    int present;             /* a config file was there at the last scan */
    reg_id id;               /* its identity when last read (read again only when it changes) */
    qn_version_policy pol;   /* in effect; the default (all) without a file */
} reg_conf;

struct qn_registry {
    char *dir;
    qn_backend *be;

    pthread_mutex_t scan_mu;   /* one scan at a time; guards files */
    reg_file *files;           /* sorted by (name, version) */
    size_t nfiles;
    reg_conf *confs;           /* sorted by name; guarded by scan_mu */
    size_t nconfs;

    pthread_rwlock_t lock;     /* guards served */
    served_table *served;

    pthread_mutex_t wmu;       /* watcher */
    pthread_cond_t wcond;
    int stop, watching, interval_ms, last_rc;
    pthread_t thread;
};

int qn_model_name_valid(const char *name)
{
    size_t n = 0;
    if (!name) return 0;
    for (; name[n]; n++) {
        char ch = name[n];
        int ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                 ch == '_' || ch == '.' || ch == '-';
        if (!ok || n >= QN_MODEL_NAME_MAX) return 0;
    }
    return n >= 1;
}

/* A version directory is a positive decimal integer without leading zeros
 * ("01" and "1" would otherwise be two directories for one version). */
static int64_t parse_version(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18 || s[0] == '0') return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int file_cmp(const void *a, const void *b)
{
    const reg_file *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return x->version < y->version ? -1 : x->version > y->version;
}

static int id_eq(const reg_id *a, const reg_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns;
}

/* ---- listing the repository */

typedef struct file_vec {
    reg_file *v;
    size_t n, cap;
} file_vec;

static int vec_push(file_vec *fv, const reg_file *f)
{
    if (fv->n == fv->cap) {
        size_t cap = fv->cap ? fv->cap * 2 : 16;
        reg_file *nv = realloc(fv->v, cap * sizeof *nv);
        if (!nv) return QN_ENOMEM;
        fv->v = nv;
        fv->cap = cap;
    }
    fv->v[fv->n++] = *f;
    return 0;
}

/* errno values that mean "not there" rather than "could not look". */
static int gone(int e) { return e == ENOENT || e == ENOTDIR; }

static int list_versions(const char *dir, const char *name, file_vec *out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    DIR *d = opendir(path);
    reg_file f = {0};
    snprintf(f.name, sizeof f.name, "%s", name);
    if (!d) {
        if (gone(errno)) return 0;
        QN_LOGD(MODULE, "cannot list %s: %s; keeping its versions as they were", path,
                strerror(errno));
        f.keep = 1;
        return vec_push(out, &f);
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        int64_t v = parse_version(de->d_name);
        if (v <= 0) continue;
        snprintf(path, sizeof path, "%s/%s/%s/" MODEL_FILE, dir, name, de->d_name);
        struct stat st;
        f.version = v;
        f.keep = 0;
        if (stat(path, &st) != 0) {
            if (gone(errno)) continue;
            f.keep = 1;
        } else {
            if (!S_ISREG(st.st_mode)) continue;
            f.id = (reg_id){st.st_dev, st.st_ino, st.st_size,
                            (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec};
        }
        rc = vec_push(out, &f);
    }
    closedir(d);
    return rc;
}

/* Lists every REPO/<name>/<version>/model.safetensors. QN_EIO when the
 * repository itself cannot be read (the scan then changes nothing). */
static int list_repo(const char *dir, file_vec *out)
{
    DIR *d = opendir(dir);
    if (!d) return QN_EIO;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || !qn_model_name_valid(de->d_name))
            continue;
        rc = list_versions(dir, de->d_name, out);
    }
    closedir(d);
    if (rc == 0 && out->n) qsort(out->v, out->n, sizeof *out->v, file_cmp);
    return rc;
}

/* ---- loading one file */

static qn_model *load_one(qn_registry *r, const reg_file *f)
{
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/%s/%lld/" MODEL_FILE, r->dir, f->name, (long long)f->version);
    qn_model *m = NULL;
    /* Said before the parse, so that a crash inside it leaves the file's name
     * as the last line of a debug log. */
    QN_LOGD(MODULE, "%s v%lld: loading %s", f->name, (long long)f->version, path);
    int rc = qn_model_load(path, f->name, f->version, &m, err, sizeof err);
    if (rc == 0 && !m) { /* a loader bug; refuse the version rather than crash on it */
        rc = QN_EINTERNAL;
        snprintf(err, sizeof err, "the loader reported success without a model");
    }
    if (rc != 0) {
        QN_LOGW(MODULE, "%s v%lld: skipped, %s: %s (%s)", f->name, (long long)f->version,
                qn_strerror(rc), err, path);
        return NULL;
    }
    if (r->be) {
        void *state = NULL;
        rc = r->be->iface->model_prepare(r->be, m, &state);
        if (rc != 0) {
            QN_LOGW(MODULE, "%s v%lld: skipped, backend %s cannot prepare it: %s (%s)", f->name,
                    (long long)f->version, r->be->iface->name, qn_strerror(rc), path);
            qn_model_unref(&m);
            return NULL;
        }
        m->backend = r->be;
        m->backend_state = state;
    }
    qn_log_job(QN_LOG_INFO, MODULE, NULL, f->name,
               "%s v%lld: loaded, %d layers, %lld -> %lld, %zu parameters, %zu bytes", f->name, (long long)f->version, m->nlayers, (long long)m->in_dim,
            (long long)m->out_dim, m->param_count, m->file_bytes);
    return m;
}

/* ---- the served table */

static void served_free(served_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->m[i].versions);
        free(t->m[i].models);
    }
    free(t->m);
    free(t);
}

/* Builds the table of loaded versions from the (sorted) file table. */
static served_table *served_build(const reg_file *files, size_t n)
{
    served_table *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->m = calloc(n ? n : 1, sizeof *t->m);
    if (!t->m) goto fail;
    for (size_t i = 0; i < n;) {
        size_t j = i, loaded = 0;
        for (; j < n && strcmp(files[j].name, files[i].name) == 0; j++) loaded += files[j].model != NULL;
        if (loaded) {
            served_model *sm = &t->m[t->n++];
            memcpy(sm->name, files[i].name, sizeof sm->name);
            sm->versions = malloc(loaded * sizeof *sm->versions);
            sm->models = malloc(loaded * sizeof *sm->models);
            if (!sm->versions || !sm->models) goto fail;
            for (size_t k = i; k < j; k++)
                if (files[k].model) {
                    sm->versions[sm->n] = files[k].version;
                    sm->models[sm->n++] = files[k].model;
                }
        }
        i = j;
    }
    return t;
fail:
    served_free(t);
    return NULL;
}

static const served_model *served_find(const served_table *t, const char *name)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(t->m[mid].name, name);
        if (c == 0) return &t->m[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ---- scanning */

static reg_file *files_find(reg_file *files, size_t n, const char *name, int64_t version)
{
    if (n == 0) return NULL; /* bsearch on a NULL base is undefined even for n 0 */
    reg_file key;
    snprintf(key.name, sizeof key.name, "%s", name);
    key.version = version;
    return bsearch(&key, files, n, sizeof *files, file_cmp);
}

static int kept(const file_vec *found, const reg_file *old)
{
    /* A keep marker for the whole name (version 0) or for this version. */
    for (size_t i = 0; i < found->n; i++)
        if (found->v[i].keep && strcmp(found->v[i].name, old->name) == 0 &&
            (found->v[i].version == 0 || found->v[i].version == old->version))
            return 1;
    return 0;
}

/* ---- version policy (model_config.h) */

static int conf_cmp(const void *a, const void *b)
{
    return strcmp(((const reg_conf *)a)->name, ((const reg_conf *)b)->name);
}

/* The policy record of name, created (default policy) when there is none.
 * NULL only when out of memory. The pointer lives until the next call. */
static reg_conf *conf_get(qn_registry *r, const char *name)
{
    reg_conf key;
    snprintf(key.name, sizeof key.name, "%s", name);
    reg_conf *c = r->nconfs ? bsearch(&key, r->confs, r->nconfs, sizeof *r->confs, conf_cmp) : NULL;
    if (c) return c;
    reg_conf *nv = realloc(r->confs, (r->nconfs + 1) * sizeof *nv);
    if (!nv) return NULL;
    r->confs = nv;
    memset(&nv[r->nconfs], 0, sizeof *nv);
    memcpy(nv[r->nconfs].name, key.name, sizeof key.name);
    r->nconfs++;
    qsort(r->confs, r->nconfs, sizeof *r->confs, conf_cmp);
    return bsearch(&key, r->confs, r->nconfs, sizeof *r->confs, conf_cmp);
}

/* The version policy of name for this scan: REPO/<name>/config.json, read
 * again only when its identity changed. No file: the default (every version).
 * A file that cannot be parsed is logged with its reason, once per change
 * of the file, and the policy in effect stays. */
static const qn_version_policy *policy_for(qn_registry *r, const char *name)
{
    static const qn_version_policy all = {.kind = QN_VERSION_POLICY_ALL};
    reg_conf *c = conf_get(r, name);
    if (!c) return &all;
    char path[4096], desc[256], err[512];
    snprintf(path, sizeof path, "%s/%s/" CONFIG_FILE, r->dir, name);
    struct stat st;
    if (stat(path, &st) != 0) {
        if (gone(errno) && c->present) {
            QN_LOGI(MODULE, "%s: %s removed: version policy all (the default)", name, path);
            qn_version_policy_free(&c->pol);
            c->present = 0;
        }
        return &c->pol; /* could not look (say EACCES): keep what we had */
    }
    reg_id id = {st.st_dev, st.st_ino, st.st_size,
                 (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec};
    if (c->present && id_eq(&c->id, &id)) return &c->pol;
    c->present = 1;
    c->id = id;
    qn_version_policy p;
    int rc = qn_model_config_load(path, name, &p, err, sizeof err);
    if (rc == QN_ENOTFOUND) { /* removed between stat and open */
        QN_LOGI(MODULE, "%s: %s removed: version policy all (the default)", name, path);
        qn_version_policy_free(&c->pol);
        c->present = 0;
        return &c->pol;
    }
    if (rc) {
        qn_version_policy_describe(&c->pol, desc, sizeof desc);
        QN_LOGW(MODULE, "%s: %s is not a valid model config: %s; keeping the version policy %s%s", name,
                path, rc == QN_ENOMEM ? "out of memory" : err, desc,
                c->pol.kind == QN_VERSION_POLICY_ALL ? " (every version)" : "");
        return &c->pol;
    }
    qn_version_policy_describe(&p, desc, sizeof desc);
    if (!qn_version_policy_equal(&p, &c->pol)) QN_LOGI(MODULE, "%s: version policy %s (%s)", name, desc, path);
    qn_version_policy_free(&c->pol);
    c->pol = p;
    return &c->pol;
}

/* Gives nf its model: the one already loaded from the same file, a fresh
 * load, or (the file changed and fails) the previous load. */
static void resolve(qn_registry *r, reg_file *nf, int *changes)
{
    reg_file *old = files_find(r->files, r->nfiles, nf->name, nf->version);
    if (old && id_eq(&old->id, &nf->id)) {
        nf->model = old->model ? qn_model_ref(old->model) : NULL;
    } else if ((nf->model = load_one(r, nf))) {
        (*changes)++;
        if (old && old->model) QN_LOGI(MODULE, "%s v%lld: replaced", nf->name, (long long)nf->version);
    } else if (old && old->model) {
        /* A broken replacement (say, a copy still in progress) does not
         * take the version down: the previous load keeps serving until a
         * good file replaces it or it is removed. */
        QN_LOGW(MODULE, "%s v%lld: keeping the previously loaded file", nf->name, (long long)nf->version);
        nf->model = qn_model_ref(old->model);
    }
}

/* Adds to next the versions of one model (e[0..n), ascending) that its
 * policy selects, each with its model. "latest N" walks down from the
 * highest and stops after N versions that loaded, so a newest version that
 * fails does not take a slot (the one below keeps serving) and versions
 * below the N are never loaded. */
static int scan_model(qn_registry *r, const reg_file *e, size_t n, const qn_version_policy *pol,
                      file_vec *next, int *changes)
{
    int64_t got = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = pol->kind == QN_VERSION_POLICY_LATEST ? n - 1 - i : i;
        if (pol->kind == QN_VERSION_POLICY_LATEST && got >= pol->num_versions) break;
        reg_file nf = e[k];
        if (nf.keep || !qn_version_policy_lists(pol, nf.version)) continue;
        resolve(r, &nf, changes);
        got += nf.model != NULL;
        int rc = vec_push(next, &nf);
        if (rc) {
            qn_model_unref(&nf.model);
            return rc;
        }
    }
    return 0;
}

/* A new latest version that takes or gives another width breaks every
 * unpinned client of the old one (shape_mismatch): say so, with the fix. */
static void warn_width_changes(const qn_registry *r, const served_table *old_t, const served_table *new_t)
{
    for (size_t i = 0; old_t && i < new_t->n; i++) {
        const served_model *nm = &new_t->m[i];
        const served_model *om = served_find(old_t, nm->name);
        if (!om) continue;
        const qn_model *o = om->models[om->n - 1], *m = nm->models[nm->n - 1];
        if (o->version == m->version || (o->in_dim == m->in_dim && o->out_dim == m->out_dim)) continue;
        int still = 0; /* is the old latest still served (pinned)? */
        for (size_t k = 0; k < nm->n; k++) still |= nm->versions[k] == o->version;
        char fix[64];
        if (still) snprintf(fix, sizeof fix, "pin \"version\": %lld, or ", (long long)o->version);
        else snprintf(fix, sizeof fix, "v%lld is no longer loaded; ", (long long)o->version);
        QN_LOGW(MODULE,
                "%s: the latest version is now v%lld (%lld -> %lld), v%lld was %lld -> %lld: unpinned jobs "
                "shaped for v%lld now get shape_mismatch; %sset a version policy in %s/%s/" CONFIG_FILE
                " (schemas/model.md)",
                nm->name, (long long)m->version, (long long)m->in_dim, (long long)m->out_dim,
                (long long)o->version, (long long)o->in_dim, (long long)o->out_dim, (long long)o->version, fix,
                r->dir, nm->name);
    }
}

int qn_registry_scan(qn_registry *r)
{
    file_vec found = {0}, next = {0};
    served_table *table = NULL;
    int rc, changes = 0;

    pthread_mutex_lock(&r->scan_mu);
    if ((rc = list_repo(r->dir, &found)) != 0) goto fail;

    /* next: the new file table, holding its own reference to every model in
     * it. The old table is left intact until the new one is complete, so a
     * failure part way (out of memory) just drops next. */
    for (size_t i = 0; i < found.n;) {
        size_t j = i;
        while (j < found.n && strcmp(found.v[j].name, found.v[i].name) == 0) j++;
        const qn_version_policy *pol = policy_for(r, found.v[i].name);
        if ((rc = scan_model(r, &found.v[i], j - i, pol, &next, &changes)) != 0) goto fail;
        i = j;
    }
    /* sorted again ("latest N" adds a model's versions top down): the
     * lookups below bsearch it */
    if (next.n) qsort(next.v, next.n, sizeof *next.v, file_cmp);
    /* Old entries not listed this time: carried over when their directory
     * could not be read (a transient error must not unload a model), removed
     * otherwise. */
    size_t nlisted = next.n;
    for (size_t i = 0; i < r->nfiles; i++) {
        const reg_file *old = &r->files[i];
        if (files_find(next.v, nlisted, old->name, old->version)) continue;
        if (kept(&found, old)) {
            reg_file cf = *old;
            cf.model = old->model ? qn_model_ref(old->model) : NULL;
            if ((rc = vec_push(&next, &cf)) != 0) {
                qn_model_unref(&cf.model);
                goto fail;
            }
        } else if (old->model) {
            if (files_find(found.v, found.n, old->name, old->version))
                QN_LOGI(MODULE, "%s v%lld: unloaded, outside the model's version policy", old->name,
                        (long long)old->version);
            else
                QN_LOGI(MODULE, "%s v%lld: removed", old->name, (long long)old->version);
            changes++;
        }
    }
    if (next.n) qsort(next.v, next.n, sizeof *next.v, file_cmp);

    if (changes) {
        rc = QN_ENOMEM;
        if (!(table = served_build(next.v, next.n))) goto fail;
        warn_width_changes(r, r->served, table);
        pthread_rwlock_wrlock(&r->lock);
        served_table *old_table = r->served;
        r->served = table;
        pthread_rwlock_unlock(&r->lock);
        served_free(old_table);
    }
    /* No reader can reach the old table's models any more except through
     * references it already holds: drop the registry's old references. */
    for (size_t i = 0; i < r->nfiles; i++) qn_model_unref(&r->files[i].model);
    free(r->files);
    r->files = next.v;
    r->nfiles = next.n;
    free(found.v);
    pthread_mutex_unlock(&r->scan_mu);
    return changes;

fail:
    for (size_t i = 0; i < next.n; i++) qn_model_unref(&next.v[i].model);
    free(next.v);
    free(found.v);
    pthread_mutex_unlock(&r->scan_mu);
    return rc;
}

/* ---- lookups */

int qn_registry_get(qn_registry *r, const char *name, int64_t version, qn_model **out)
{
    int rc = QN_ENOTFOUND;
    *out = NULL;
    pthread_rwlock_rdlock(&r->lock);
    const served_model *sm = r->served ? served_find(r->served, name) : NULL;
    if (sm) {
        rc = QN_ENOVERSION;
        if (version == 0) {
            *out = qn_model_ref(sm->models[sm->n - 1]);
            rc = 0;
        } else {
            size_t lo = 0, hi = sm->n;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (sm->versions[mid] == version) {
                    *out = qn_model_ref(sm->models[mid]);
                    rc = 0;
                    break;
                }
                if (sm->versions[mid] < version) lo = mid + 1;
                else hi = mid;
            }
        }
    }
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

void qn_registry_each_name(qn_registry *r, void (*fn)(void *ud, const char *name, int64_t latest),
                           void *ud)
{
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; r->served && i < r->served->n; i++) {
        const served_model *sm = &r->served->m[i];
        fn(ud, sm->name, sm->versions[sm->n - 1]);
    }
    pthread_rwlock_unlock(&r->lock);
}

void qn_registry_each_version(qn_registry *r, void (*fn)(void *ud, qn_model *m), void *ud)
{
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; r->served && i < r->served->n; i++)
        for (size_t v = 0; v < r->served->m[i].n; v++) fn(ud, r->served->m[i].models[v]);
    pthread_rwlock_unlock(&r->lock);
}

/* ---- watcher */

static void *watch_main(void *arg)
{
    qn_registry *r = arg;
    qn_thread_name("qn-registry");
    pthread_mutex_lock(&r->wmu);
    while (!r->stop) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += r->interval_ms / 1000;
        dl.tv_nsec += (long)(r->interval_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        /* A timed wait, not a sleep: close wakes us at once. */
        while (!r->stop && pthread_cond_timedwait(&r->wcond, &r->wmu, &dl) == 0) {
        }
        if (r->stop) break;
        pthread_mutex_unlock(&r->wmu);
        int rc = qn_registry_scan(r);
        pthread_mutex_lock(&r->wmu);
        /* Log a failing repository once, not every interval. */
        if (rc < 0 && r->last_rc >= 0)
            QN_LOGE(MODULE, "cannot scan %s: %s (will keep trying)", r->dir, qn_strerror(rc));
        else if (rc >= 0 && r->last_rc < 0)
            QN_LOGI(MODULE, "scanning %s again", r->dir);
        r->last_rc = rc;
    }
    pthread_mutex_unlock(&r->wmu);
    return NULL;
}

int qn_registry_watch(qn_registry *r, int interval_ms)
{
    int rc = 0;
    pthread_mutex_lock(&r->wmu);
    if (r->watching) {
        rc = QN_EINVAL;
        goto out;
    }
    r->interval_ms = interval_ms > 0 ? interval_ms : DEFAULT_INTERVAL_MS;
    r->stop = 0;
    if (pthread_create(&r->thread, NULL, watch_main, r) != 0) {
        rc = QN_ENOMEM;
        goto out;
    }
    r->watching = 1;
out:
    pthread_mutex_unlock(&r->wmu);
    return rc;
}

/* ---- open / close */

int qn_registry_open(const char *dir, qn_backend *backend, qn_registry **out)
{
    int rc = QN_ENOMEM;
    *out = NULL;
    qn_registry *r = calloc(1, sizeof *r);
    if (!r) return QN_ENOMEM;
    if (!(r->dir = strdup(dir))) {
        free(r);
        return QN_ENOMEM;
    }
    r->be = backend;
    pthread_mutex_init(&r->scan_mu, NULL);
    pthread_mutex_init(&r->wmu, NULL);
    /* Lookups run ~100k/s from many threads; prefer the (rare) writer so a
     * swap is never starved by overlapping readers. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&r->lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wcond, &ca);
    pthread_condattr_destroy(&ca);

    rc = qn_registry_scan(r);
    if (rc < 0) {
        if (rc == QN_EIO) QN_LOGE(MODULE, "cannot read the model repository %s", dir);
        goto fail;
    }
    if (!r->served) { /* nothing loaded: an empty table, so lookups need no NULL case */
        rc = QN_ENOMEM;
        if (!(r->served = served_build(NULL, 0))) goto fail;
    }
    *out = r;
    return 0;
fail:
    qn_registry_close(&r);
    return rc;
}

void qn_registry_close(qn_registry **pr)
{
    if (!pr || !*pr) return;
    qn_registry *r = *pr;
    pthread_mutex_lock(&r->wmu);
    int watching = r->watching;
    r->stop = 1;
    pthread_cond_broadcast(&r->wcond);
    pthread_mutex_unlock(&r->wmu);
    if (watching) pthread_join(r->thread, NULL);

    served_free(r->served);
    for (size_t i = 0; i < r->nfiles; i++) qn_model_unref(&r->files[i].model);
    free(r->files);
    for (size_t i = 0; i < r->nconfs; i++) qn_version_policy_free(&r->confs[i].pol);
    free(r->confs);
    pthread_cond_destroy(&r->wcond);
    pthread_rwlock_destroy(&r->lock);
    pthread_mutex_destroy(&r->wmu);
    pthread_mutex_destroy(&r->scan_mu);
    free(r->dir);
    free(r);
    *pr = NULL;
}

const char *qn_registry_dir(const qn_registry *r) { return r->dir; }
