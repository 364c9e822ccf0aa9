/* train_store.c: reading a version into a trainable net and writing a
 * trained one back as the next version, atomically (train_store.h). The
 * state layout is documented in schemas/model.md ("Training state"); this
 * file must stay its only writer. */
#include "train_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "safetensors.h"

#define STATE_KEY "quern.train"
#define TMP_PREFIX ".quern-train-"

static void seterr(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t n, const char *fmt, ...)
{
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

/* torch's state names per optimizer and slot (train.h). */
static const char *slot_name(qn_opt_kind k, int slot)
{
    static const char *const n[QN_OPT_COUNT][3] = {
        {"momentum_buffer", NULL, NULL},
        {"exp_avg", "exp_avg_sq", NULL},
        {"square_avg", "momentum_buffer", "grad_avg"},
    };
    return (unsigned)k < QN_OPT_COUNT && slot >= 0 && slot < 3 ? n[k][slot] : NULL;
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static float *copy_f32(const qn_st_tensor *t, int64_t n)
{
    size_t bytes = ((size_t)n * 4 + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p) memcpy(p, t->data, (size_t)n * 4);
    return p;
}

static const qn_st_tensor *f32_tensor(const qn_st_file *f, const char *name, int64_t d0, int64_t d1)
{
    const qn_st_tensor *t = name ? qn_st_find(f, name) : NULL;
    if (!t || t->dtype != QN_DTYPE_F32) return NULL;
    if (d1 > 0) return t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1 ? t : NULL;
    return t->ndim == 1 && t->shape[0] == d0 ? t : NULL;
}

static void state_from_json(qn_tnet *net, const qn_st_file *f, json_t *st)
{
    const char *opt = json_string_value(json_object_get(st, "optimizer"));
    int kind = -1;
    for (int k = 0; opt && k < QN_OPT_COUNT; k++)
        if (strcmp(opt, qn_opt_name((qn_opt_kind)k)) == 0) kind = k;
    if (kind >= 0) {
        net->opt_valid = true;
        net->opt_kind = (qn_opt_kind)kind;
        net->opt_step = json_integer_value(json_object_get(st, "step"));
        json_t *set = json_object_get(st, "slots");
        char name[512];
        for (int s = 0; s < 3; s++) {
            const char *sn = slot_name(net->opt_kind, s);
            if (!sn || !json_is_true(json_array_get(set, (size_t)s))) continue;
            bool all = true;
            for (int i = 0; i < net->nlayers; i++) {
                qn_tlayer *l = &net->layers[i];
                snprintf(name, sizeof name, "quern.opt.%s.%s", sn, l->wname);
                const qn_st_tensor *t = f32_tensor(f, name, l->out, l->in);
                if (!t || !(l->wst[s] = copy_f32(t, l->out * l->in))) { all = false; break; }
                if (l->b) {
                    snprintf(name, sizeof name, "quern.opt.%s.%s", sn, l->bname);
                    t = f32_tensor(f, name, l->out, 0);
                    if (!t || !(l->bst[s] = copy_f32(t, l->out))) { all = false; break; }
                }
            }
            net->slot_set[s] = all;
        }
    }
    net->epochs_done = json_integer_value(json_object_get(st, "epochs_done"));
    json_t *sc = json_object_get(st, "schedule");
    const char *sn = json_string_value(json_object_get(sc, "name"));
    for (int k = 0; sn && k < QN_SCHED_COUNT; k++) {
        if (strcmp(sn, qn_sched_name((qn_sched_kind)k)) != 0) continue;
        qn_sched_state *s = &net->sched;
        s->valid = true;
        s->kind = (qn_sched_kind)k;
        s->base_lr = json_number_value(json_object_get(sc, "base_lr"));
        s->lr = json_number_value(json_object_get(sc, "lr"));
        s->step = json_integer_value(json_object_get(sc, "step"));
        s->epoch = json_integer_value(json_object_get(sc, "epoch"));
        json_t *b = json_object_get(sc, "best");
        s->best = json_is_number(b) ? json_number_value(b) : INFINITY;
        s->bad_epochs = json_integer_value(json_object_get(sc, "bad_epochs"));
        s->cooldown_left = json_integer_value(json_object_get(sc, "cooldown_left"));
    }
}

int qn_tnet_load(const char *path, qn_tnet *net, char *err, size_t errlen)
{
    memset(net, 0, sizeof *net);
    qn_st_file *f = NULL;
    json_t *layers = NULL, *st = NULL;
    int rc = qn_st_open(path, &f, err, errlen);
    if (rc) return rc;
    rc = QN_EFORMAT;
    const char *fmt = qn_st_meta(f, "format");
    if (fmt && strcmp(fmt, "quern.mlp.c1") == 0) {
        seterr(err, errlen, "the version is compressed (quern.mlp.c1): train from an f32 version");
        rc = QN_ENOTSUP;
        goto fail;
    }
    const char *ls = qn_st_meta(f, "layers");
    if (!fmt || strcmp(fmt, "quern.mlp.v1") != 0 || !ls) {
        seterr(err, errlen, "not a quern.mlp.v1 model");
        goto fail;
    }
    layers = json_loads(ls, 0, NULL);
    size_t n = json_array_size(layers);
    if (n < 1 || n > QN_TRAIN_MAX_LAYERS) {
        seterr(err, errlen, "layers: 1 to %d layers", QN_TRAIN_MAX_LAYERS);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *lo = json_array_get(layers, i);
        qn_tlayer *l = &net->layers[i];
        const char *wn = json_string_value(json_object_get(lo, "weight"));
        const char *bn = json_string_value(json_object_get(lo, "bias"));
        const char *an = json_string_value(json_object_get(lo, "activation"));
        const qn_st_tensor *w = wn ? qn_st_find(f, wn) : NULL;
        net->nlayers = (int)i + 1;
        if (!w || w->dtype != QN_DTYPE_F32 || w->ndim != 2 || !an || qn_act_from_name(an, &l->act) != 0) {
            seterr(err, errlen, "layer %zu: not a dense f32 layer", i);
            goto fail;
        }
        l->out = w->shape[0];
        l->in = w->shape[1];
        if (i > 0 && l->in != net->layers[i - 1].out) {
            seterr(err, errlen, "layer %zu: takes %lld inputs, the layer before gives %lld", i, (long long)l->in,
                   (long long)net->layers[i - 1].out);
            goto fail;
        }
        rc = QN_ENOMEM;
        if (!(l->w = copy_f32(w, l->out * l->in)) || !(l->wname = dupstr(wn))) goto fail;
        if (bn) {
            const qn_st_tensor *b = f32_tensor(f, bn, l->out, 0);
            if (!b) {
                rc = QN_EFORMAT;
                seterr(err, errlen, "layer %zu: bias \"%s\" is not F32 [%lld]", i, bn, (long long)l->out);
                goto fail;
            }
            if (!(l->b = copy_f32(b, l->out)) || !(l->bname = dupstr(bn))) goto fail;
        }
        rc = QN_EFORMAT;
    }
    net->in_dim = net->layers[0].in;
    net->out_dim = net->layers[net->nlayers - 1].out;
    net->max_width = net->in_dim;
    for (int i = 0; i < net->nlayers; i++)
        if (net->layers[i].out > net->max_width) net->max_width = net->layers[i].out;
    const char *sj = qn_st_meta(f, STATE_KEY);
    if (sj && (st = json_loads(sj, 0, NULL))) state_from_json(net, f, st);
    json_decref(st);
    json_decref(layers);
    qn_st_close(&f);
    return 0;
fail:
    json_decref(layers);
    qn_st_close(&f);
    qn_tnet_free(net);
    return rc;
}

/* ---- writing ---- */

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

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

static void rm_tree_shallow(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char p[2600];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Highest version directory present (loadable or not: a number is taken
 * once it exists), and removes temp dirs whose writer process is gone. */
static int64_t scan_versions(const char *mdir)
{
    int64_t hi = 0;
    DIR *d = opendir(mdir);
    if (!d) return 0;
    struct dirent *de;
    char p[2400];
    while ((de = readdir(d))) {
        int64_t v = parse_version(de->d_name);
        if (v > hi) hi = v;
        if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
            long pid = strtol(de->d_name + strlen(TMP_PREFIX), NULL, 10);
            if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
                snprintf(p, sizeof p, "%s/%s", mdir, de->d_name);
                rm_tree_shallow(p);
            }
        }
    }
    closedir(d);
    return hi;
}

static json_t *state_json(const qn_tnet *net, const char *job_key, const char *metrics_json, int64_t parent)
{
    json_t *st = json_object();
    json_object_set_new(st, "job_key", json_string(job_key ? job_key : ""));
    json_object_set_new(st, "parent_version", json_integer(parent));
    json_object_set_new(st, "epochs_done", json_integer(net->epochs_done));
    if (net->opt_valid) {
        json_object_set_new(st, "optimizer", json_string(qn_opt_name(net->opt_kind)));
        json_object_set_new(st, "step", json_integer(net->opt_step));
        json_t *sl = json_array();
        for (int s = 0; s < 3; s++)
            json_array_append_new(sl, json_boolean(net->slot_set[s] && net->layers[0].wst[s] != NULL));
        json_object_set_new(st, "slots", sl);
    }
    if (net->sched.valid) {
        const qn_sched_state *s = &net->sched;
        json_t *sc = json_object();
        json_object_set_new(sc, "name", json_string(qn_sched_name(s->kind)));
        json_object_set_new(sc, "base_lr", json_real(s->base_lr));
        json_object_set_new(sc, "lr", json_real(s->lr));
        json_object_set_new(sc, "step", json_integer(s->step));
        json_object_set_new(sc, "epoch", json_integer(s->epoch));
        json_object_set_new(sc, "best", isfinite(s->best) ? json_real(s->best) : json_null());
        json_object_set_new(sc, "bad_epochs", json_integer(s->bad_epochs));
        json_object_set_new(sc, "cooldown_left", json_integer(s->cooldown_left));
        json_object_set_new(st, "schedule", sc);
    }
    json_t *m = metrics_json ? json_loads(metrics_json, 0, NULL) : NULL;
    if (m) json_object_set_new(st, "metrics", m);
    return st;
}

static atomic_uint g_tmp_seq;

int qn_tnet_save_version(const char *repo, const char *name, const qn_tnet *net, const char *job_key,
                         const char *metrics_json, int64_t parent, int64_t *version, char *err, size_t errlen)
{
    char mdir[2048], tdir[2200], file[2300], vdir[2300];
    qn_st_tensor *ts = NULL;
    char **names = NULL;
    char *layers_s = NULL, *state_s = NULL;
    json_t *layers = NULL, *st = NULL;
    int rc = QN_ENOMEM, ntens = 0, nnames = 0, made_tmp = 0;
    snprintf(mdir, sizeof mdir, "%s/%s", repo, name);
    if (mkdir(mdir, 0755) != 0 && errno != EEXIST) {
        seterr(err, errlen, "cannot create %s: %s", mdir, strerror(errno));
        return QN_EIO;
    }
    size_t cap = (size_t)net->nlayers * 8;
    ts = calloc(cap, sizeof *ts);
    names = calloc(cap, sizeof *names);
    layers = json_array();
    if (!ts || !names || !layers) goto fail;
    for (int i = 0; i < net->nlayers; i++) {
        const qn_tlayer *l = &net->layers[i];
        json_t *lo = json_object();
        json_object_set_new(lo, "type", json_string("dense"));
        json_object_set_new(lo, "weight", json_string(l->wname));
        json_object_set_new(lo, "bias", l->b ? json_string(l->bname) : json_null());
        json_object_set_new(lo, "activation", json_string(qn_act_name(l->act)));
        json_array_append_new(layers, lo);
        ts[ntens++] = (qn_st_tensor){.name = l->wname, .dtype = QN_DTYPE_F32, .ndim = 2,
                                     .shape = {l->out, l->in}, .data = l->w,
                                     .nbytes = (size_t)(l->out * l->in) * 4};
        if (l->b)
            ts[ntens++] = (qn_st_tensor){.name = l->bname, .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {l->out},
                                         .data = l->b, .nbytes = (size_t)l->out * 4};
    }
    for (int s = 0; net->opt_valid && s < 3; s++) {
        const char *sn = slot_name(net->opt_kind, s);
        if (!sn || !net->slot_set[s]) continue;
        for (int i = 0; i < net->nlayers; i++) {
            const qn_tlayer *l = &net->layers[i];
            if (!l->wst[s]) continue;
            for (int b = 0; b < 2; b++) {
                const char *pn = b ? l->bname : l->wname;
                const float *data = b ? l->bst[s] : l->wst[s];
                if (!pn || !data) continue;
                size_t len = strlen(sn) + strlen(pn) + 16;
                char *tn = malloc(len);
                if (!tn) goto fail;
                snprintf(tn, len, "quern.opt.%s.%s", sn, pn);
                names[nnames++] = tn;
                ts[ntens++] = b ? (qn_st_tensor){.name = tn, .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {l->out},
                                                 .data = data, .nbytes = (size_t)l->out * 4}
                                : (qn_st_tensor){.name = tn, .dtype = QN_DTYPE_F32, .ndim = 2,
                                                 .shape = {l->out, l->in}, .data = data,
                                                 .nbytes = (size_t)(l->out * l->in) * 4};
            }
        }
    }
    st = state_json(net, job_key, metrics_json, parent);
    layers_s = json_dumps(layers, JSON_COMPACT);
    state_s = json_dumps(st, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!layers_s || !state_s) goto fail;
    const char *meta[6] = {"format", "quern.mlp.v1", "layers", layers_s, STATE_KEY, state_s};

    snprintf(tdir, sizeof tdir, "%s/" TMP_PREFIX "%ld-%u", mdir, (long)getpid(), atomic_fetch_add(&g_tmp_seq, 1));
    rc = QN_EIO;
    if (mkdir(tdir, 0755) != 0) {
        seterr(err, errlen, "cannot create %s: %s", tdir, strerror(errno));
        goto fail;
    }
    made_tmp = 1;
    snprintf(file, sizeof file, "%s/model.safetensors", tdir);
    if ((rc = qn_st_write(file, ts, (size_t)ntens, meta, 3, err, errlen))) goto fail;
    rc = QN_EIO;
    if (fsync_dir(tdir) != 0) {
        seterr(err, errlen, "cannot fsync %s: %s", tdir, strerror(errno));
        goto fail;
    }
    /* The next number; another writer may take it first (rename onto a
     * non-empty directory fails), then the one after. */
    int64_t v = scan_versions(mdir) + 1;
    for (int tries = 0;; tries++, v++) {
        snprintf(vdir, sizeof vdir, "%s/%lld", mdir, (long long)v);
        if (rename(tdir, vdir) == 0) break;
        if ((errno != ENOTEMPTY && errno != EEXIST) || tries > 1000) {
            seterr(err, errlen, "cannot rename %s to %s: %s", tdir, vdir, strerror(errno));
            goto fail;
        }
    }
    made_tmp = 0;
    if (fsync_dir(mdir) != 0) {
        seterr(err, errlen, "cannot fsync %s: %s", mdir, strerror(errno));
        goto fail;
    }
    fsync_dir(repo); /* a new model's directory entry, too */
    *version = v;
    rc = 0;
fail:
    if (made_tmp) rm_tree_shallow(tdir);
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(names);
    free(ts);
    free(layers_s);
    free(state_s);
    json_decref(layers);
    json_decref(st);
    if (rc == QN_ENOMEM) seterr(err, errlen, "out of memory");
    return rc;
}

/* ---- finding a job's version ---- */

/* The "quern.train" metadata of a file, read from its header alone. */
static json_t *read_state(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    unsigned char lb[8];
    json_t *st = NULL, *hdr = NULL;
    char *buf = NULL;
    if (read(fd, lb, 8) != 8) goto out;
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)lb[i] << (8 * i);
    if (n == 0 || n > QN_ST_MAX_HEADER || !(buf = malloc(n + 1))) goto out;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) goto out;
        got += (size_t)r;
    }
    buf[n] = '\0';
    hdr = json_loads(buf, 0, NULL);
    const char *s = json_string_value(json_object_get(json_object_get(hdr, "__metadata__"), STATE_KEY));
    if (s) st = json_loads(s, 0, NULL);
out:
    json_decref(hdr);
    free(buf);
    close(fd);
    return st;
}

int64_t qn_train_find_job(const char *repo, const char *name, const char *job_key, char *metrics, size_t cap)
{
    char mdir[2048], path[2400];
    snprintf(mdir, sizeof mdir, "%s/%s", repo, name);
    DIR *d = opendir(mdir);
    if (!d) return 0;
    int64_t found = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t v = parse_version(de->d_name);
        if (v <= found) continue;
        snprintf(path, sizeof path, "%s/%s/model.safetensors", mdir, de->d_name);
        json_t *st = read_state(path);
        const char *k = json_string_value(json_object_get(st, "job_key"));
        if (k && strcmp(k, job_key) == 0) {
            found = v;
            if (metrics && cap) {
                char *m = json_dumps(json_object_get(st, "metrics"), JSON_COMPACT | JSON_ENCODE_ANY);
                snprintf(metrics, cap, "%s", m ? m : "");
                free(m);
            }
        }
        json_decref(st);
    }
    closedir(d);
    return found;
}
