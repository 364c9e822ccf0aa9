/* test_registry.c: the model repository. A test-local fake backend (counts
 * prepares and releases, can be told to fail) stands in for the CPU backend so
 * that this tests the registry alone. Every test ends by checking that each
 * prepared model was released exactly once. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <fcntl.h>

#include "backend.h"
#include "error.h"
#include "log.h"
#include "qn_test.h"
#include "registry.h"
#include "safetensors.h"

/* ---- fake backend */

typedef struct fake {
    atomic_int prepares, releases;
    char fail_name[QN_MODEL_NAME_MAX + 1]; /* prepare fails for this model name */
} fake;

static int fk_prepare(qn_backend *be, qn_model *m, void **state)
{
    fake *f = be->impl;
    atomic_fetch_add(&f->prepares, 1);
    if (f->fail_name[0] && strcmp(f->fail_name, m->name) == 0) return QN_ENOTSUP;
    /* a real allocation, so a double or missing release shows under ASan */
    int64_t *s = malloc(sizeof *s);
    *s = m->version;
    *state = s;
    return 0;
}

static void fk_release(qn_backend *be, qn_model *m, void *state)
{
    fake *f = be->impl;
    CHECK(state && *(int64_t *)state == m->version);
    free(state);
    atomic_fetch_add(&f->releases, 1);
}

static const qn_backend_i g_fake_i = {
    .name = "fake", .model_prepare = fk_prepare, .model_release = fk_release,
};

static fake g_fake;
static qn_backend g_be = {.iface = &g_fake_i, .impl = &g_fake};

static void fake_reset(void)
{
    atomic_store(&g_fake.prepares, 0);
    atomic_store(&g_fake.releases, 0);
    g_fake.fail_name[0] = 0;
}

/* Successful prepares minus releases: models still alive. */
static int alive(void) { return atomic_load(&g_fake.prepares) - atomic_load(&g_fake.releases); }

/* ---- repository helpers */

static char *g_root;

static void mkdirs(const char *path)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') { *s = 0; mkdir(p, 0777); *s = '/'; }
    mkdir(p, 0777);
}

static char *repo_new(const char *tag)
{
    return qn_test_tmpdir(tag);
}

static const char *model_path(const char *repo, const char *name, const char *ver)
{
    static char p[4200];
    char d[4096];
    snprintf(d, sizeof d, "%s/%s/%s", repo, name, ver);
    mkdirs(d);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    return p;
}

/* A 4 -> out model whose first weight is `mark`, so tests can tell files apart. */
static void put_model(const char *repo, const char *name, int64_t version, int out, float mark)
{
    char ver[32];
    snprintf(ver, sizeof ver, "%lld", (long long)version);
    float w[4 * 16] = {0};
    w[0] = mark;
    qn_st_tensor t = {.name = "w", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {out, 4},
                      .data = w, .nbytes = (size_t)out * 4 * sizeof(float)};
    const char *meta[] = {"format", "quern.mlp.v1", "layers",
                          "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]"};
    char err[256];
    int rc = qn_st_write(model_path(repo, name, ver), &t, 1, meta, 2, err, sizeof err);
    if (rc) fprintf(stderr, "put_model: %s\n", err);
    CHECK_EQ_INT(rc, 0);
}

/* Writes bytes in place (no rename): a broken or half-copied file. */
static void put_garbage(const char *repo, const char *name, const char *ver, const char *bytes)
{
    FILE *f = fopen(model_path(repo, name, ver), "w");
    fputs(bytes, f);
    fclose(f);
}

static void rm_rf(const char *path)
{
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    CHECK_EQ_INT(system(cmd), 0);
}

static int64_t latest(qn_registry *r, const char *name)
{
    qn_model *m = NULL;
    int rc = qn_registry_get(r, name, 0, &m);
    if (rc) return rc;
    int64_t v = m->version;
    qn_model_unref(&m);
    return v;
}

static float mark_of(qn_registry *r, const char *name, int64_t version)
{
    qn_model *m = NULL;
    if (qn_registry_get(r, name, version, &m)) return -1;
    float v = m->layers[0].w[0];
    qn_model_unref(&m);
    return v;
}

/* Captures stderr (the log) around a block into a string. */
static int g_saved_fd = -1;
static char g_logpath[4200];
static void log_capture_begin(void)
{
    snprintf(g_logpath, sizeof g_logpath, "%s/log.txt", g_root);
    fflush(stderr);
    g_saved_fd = dup(2);
    int fd = open(g_logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
}
static int log_capture_count(const char *needle)
{
    fflush(stderr);
    dup2(g_saved_fd, 2);
    close(g_saved_fd);
    FILE *f = fopen(g_logpath, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        fputs(line, stderr); /* still visible */
        if (strstr(line, needle)) n++;
    }
    if (f) fclose(f);
    return n;
}

/* A model of in -> out columns (put_model's, with another input width). */
static void put_model_in(const char *repo, const char *name, int64_t version, int in, int out, float mark)
{
    char ver[32];
    snprintf(ver, sizeof ver, "%lld", (long long)version);
    float w[16 * 16] = {0};
    w[0] = mark;
    qn_st_tensor t = {.name = "w", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {out, in},
                      .data = w, .nbytes = (size_t)out * (size_t)in * sizeof(float)};
    const char *meta[] = {"format", "quern.mlp.v1", "layers",
                          "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]"};
    char err[256];
    CHECK_EQ_INT(qn_st_write(model_path(repo, name, ver), &t, 1, meta, 2, err, sizeof err), 0);
}

/* Writes REPO/name/config.json through a rename, as an editor or a deploy
 * does (a new file each time, so the registry sees the change at once). */
static void put_config(const char *repo, const char *name, const char *text)
{
    char tmp[4200], path[4200];
    snprintf(tmp, sizeof tmp, "%s/%s/.config.json.tmp", repo, name);
    snprintf(path, sizeof path, "%s/%s/config.json", repo, name);
    FILE *f = fopen(tmp, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
    CHECK_EQ_INT(rename(tmp, path), 0);
}

static void rm_config(const char *repo, const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/config.json", repo, name);
    CHECK_EQ_INT(unlink(path), 0);
}

/* Which versions of name are served, as "1,3," */
static void served_versions(qn_registry *r, const char *name, char *buf, size_t n)
{
    buf[0] = 0;
    for (int64_t v = 1; v <= 12; v++) {
        qn_model *m = NULL;
        if (qn_registry_get(r, name, v, &m) == 0) {
            snprintf(buf + strlen(buf), n - strlen(buf), "%lld,", (long long)v);
            qn_model_unref(&m);
        }
    }
}

/* ---- tests */

TEST(names_valid)
{
    CHECK(qn_model_name_valid("a"));
    CHECK(qn_model_name_valid("Model_1.v-2"));
    char n64[65], n65[66];
    memset(n64, 'x', 64); n64[64] = 0;
    memset(n65, 'x', 65); n65[65] = 0;
    CHECK(qn_model_name_valid(n64));
    CHECK(!qn_model_name_valid(n65));
    CHECK(!qn_model_name_valid(""));
    CHECK(!qn_model_name_valid(NULL));
    CHECK(!qn_model_name_valid("a b"));
    CHECK(!qn_model_name_valid("a/b"));
    CHECK(!qn_model_name_valid("caf\xc3\xa9"));
    CHECK(!qn_model_name_valid("x!"));
}

TEST(open_errors)
{
    qn_registry *r = (qn_registry *)0x1;
    CHECK_EQ_INT(qn_registry_open("/nonexistent/quern/repo", &g_be, &r), QN_EIO);
    CHECK(r == NULL);
    /* an empty repository is fine, and knows nothing */
    char *repo = repo_new("reg_empty");
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 0, &m), QN_ENOTFOUND);
    CHECK(m == NULL);
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    qn_registry_close(&r);
    CHECK(r == NULL);
    qn_registry_close(&r); /* NULL-safe */
    free(repo);
}

static void collect(void *ud, const char *name, int64_t v)
{
    char *s = ud;
    char one[128];
    snprintf(one, sizeof one, "%s:%lld;", name, (long long)v);
    strcat(s, one);
}

TEST(initial_load_and_lookup)
{
    fake_reset();
    char *repo = repo_new("reg_init");
    put_model(repo, "a", 1, 2, 1.0f);
    put_model(repo, "a", 2, 3, 2.0f);
    put_model(repo, "a", 10, 3, 10.0f); /* 10 > 2: numeric, not lexical */
    put_model(repo, "b", 7, 2, 7.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 4);
    CHECK_EQ_INT(latest(r, "a"), 10);
    CHECK_EQ_INT(latest(r, "b"), 7);
    CHECK(mark_of(r, "a", 1) == 1.0f && mark_of(r, "a", 2) == 2.0f);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 2, &m), 0);
    if (m) {
        CHECK_STR(m->name, "a");
        CHECK_EQ_INT(m->version, 2);
        CHECK_EQ_INT(m->out_dim, 3);
        CHECK(m->backend == &g_be && m->backend_state && *(int64_t *)m->backend_state == 2);
        CHECK_EQ_INT(atomic_load(&m->refs), 2); /* the registry's and ours */
        qn_model_unref(&m);
    }
    CHECK_EQ_INT(qn_registry_get(r, "a", 3, &m), QN_ENOVERSION);
    CHECK_EQ_INT(qn_registry_get(r, "a", -1, &m), QN_ENOVERSION);
    CHECK_EQ_INT(qn_registry_get(r, "c", 0, &m), QN_ENOTFOUND);
    CHECK_EQ_INT(qn_registry_get(r, "c", 1, &m), QN_ENOTFOUND);
    CHECK_EQ_INT(qn_registry_get(r, "", 0, &m), QN_ENOTFOUND);
    CHECK(m == NULL);
    char names[256] = "";
    qn_registry_each_name(r, collect, names);
    CHECK_STR(names, "a:10;b:7;");
    /* nothing changed: a rescan loads nothing */
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 4);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

TEST(invalid_entries_ignored)
{
    fake_reset();
    char *repo = repo_new("reg_invalid");
    char n65[66];
    memset(n65, 'x', 65); n65[65] = 0;
    put_model(repo, "ok", 1, 2, 1.0f);
    put_model(repo, "bad name", 1, 2, 1.0f);
    put_model(repo, n65, 1, 2, 1.0f);
    put_model(repo, "bad!", 1, 2, 1.0f);
    char ver[8][24] = {"0", "01", "abc", "-1", "1.0", "+2", "2x", "99999999999999999999"};
    for (int i = 0; i < 8; i++) {
        char err[256];
        float w[8] = {0};
        qn_st_tensor t = {.name = "w", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {2, 4}, .data = w, .nbytes = 32};
        const char *meta[] = {"format", "quern.mlp.v1", "layers",
                              "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]"};
        CHECK_EQ_INT(qn_st_write(model_path(repo, "ok", ver[i]), &t, 1, meta, 2, err, sizeof err), 0);
    }
    /* a version directory without model.safetensors, a file named otherwise,
     * a stray file at the top, a model "directory" that is a file */
    char p[4200];
    snprintf(p, sizeof p, "%s/ok/5", repo);
    mkdirs(p);
    snprintf(p, sizeof p, "%s/ok/6/other.safetensors", repo);
    mkdirs(p);
    snprintf(p, sizeof p, "%s/stray.safetensors", repo);
    fclose(fopen(p, "w"));
    snprintf(p, sizeof p, "%s/ok/3", repo);
    fclose(fopen(p, "w"));
    /* model.safetensors that is a directory */
    snprintf(p, sizeof p, "%s/ok/4/model.safetensors", repo);
    mkdirs(p);

    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    char names[512] = "";
    qn_registry_each_name(r, collect, names);
    CHECK_STR(names, "ok:1;");
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 1);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

TEST(add_replace_remove)
{
    fake_reset();
    char *repo = repo_new("reg_arr");
    put_model(repo, "a", 1, 2, 1.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    CHECK_EQ_INT(latest(r, "a"), 1);

    /* add */
    put_model(repo, "a", 2, 2, 2.0f);
    put_model(repo, "b", 1, 2, 5.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 2);
    CHECK_EQ_INT(latest(r, "a"), 2);
    CHECK_EQ_INT(latest(r, "b"), 1);
    CHECK(mark_of(r, "a", 1) == 1.0f); /* pinned old version still served */

    /* replace a/2 while a batch holds the old one */
    qn_model *held = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 2, &held), 0);
    put_model(repo, "a", 2, 3, 22.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK(mark_of(r, "a", 2) == 22.0f);
    qn_model *now = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 2, &now), 0);
    CHECK(now && now != held && now->out_dim == 3);
    qn_model_unref(&now);
    CHECK(held && held->layers[0].w[0] == 2.0f && held->out_dim == 2); /* old one intact */
    int releases = atomic_load(&g_fake.releases);
    qn_model_unref(&held);
    CHECK_EQ_INT(atomic_load(&g_fake.releases), releases + 1); /* ours was the last ref */

    /* remove the latest: the next one down becomes latest */
    char d[4200];
    snprintf(d, sizeof d, "%s/a/2", repo);
    rm_rf(d);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(latest(r, "a"), 1);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 2, &m), QN_ENOVERSION);

    /* remove a whole model while someone holds it */
    CHECK_EQ_INT(qn_registry_get(r, "b", 0, &held), 0);
    snprintf(d, sizeof d, "%s/b", repo);
    rm_rf(d);
    releases = atomic_load(&g_fake.releases);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(qn_registry_get(r, "b", 0, &m), QN_ENOTFOUND);
    CHECK_EQ_INT(atomic_load(&g_fake.releases), releases); /* still alive: held */
    CHECK(held && held->layers[0].w[0] == 5.0f && held->backend_state);
    qn_model_unref(&held);
    CHECK_EQ_INT(atomic_load(&g_fake.releases), releases + 1);
    char names[256] = "";
    qn_registry_each_name(r, collect, names);
    CHECK_STR(names, "a:1;");

    /* a version directory that comes back */
    put_model(repo, "b", 1, 2, 6.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK(mark_of(r, "b", 0) == 6.0f);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

TEST(broken_version_skipped)
{
    fake_reset();
    char *repo = repo_new("reg_broken");
    put_model(repo, "a", 1, 2, 1.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);

    /* a broken new version: logged once with its reason, not retried while
     * its file is unchanged, the old version keeps serving as latest */
    put_garbage(repo, "a", "2", "not a safetensors file at all");
    log_capture_begin();
    int c1 = qn_registry_scan(r), c2 = qn_registry_scan(r), c3 = qn_registry_scan(r);
    int logged = log_capture_count("a v2: skipped");
    CHECK(c1 == 0 && c2 == 0 && c3 == 0);
    CHECK_EQ_INT(logged, 1);
    CHECK_EQ_INT(latest(r, "a"), 1);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 2, &m), QN_ENOVERSION);

    /* a different broken file (its stat changed) is tried and logged again */
    put_garbage(repo, "a", "2", "still not a safetensors file, but longer");
    log_capture_begin();
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(log_capture_count("a v2: skipped"), 1);

    /* fixed later: picked up */
    put_model(repo, "a", 2, 2, 2.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(latest(r, "a"), 2);

    /* a broken replacement of a served version: the previous load of that
     * version keeps serving until a good file arrives */
    put_garbage(repo, "a", "2", "half a copy");
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK(mark_of(r, "a", 2) == 2.0f);
    put_model(repo, "a", 2, 2, 3.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK(mark_of(r, "a", 2) == 3.0f);

    /* a valid safetensors file that is not a valid model, as first version
     * of a new name: the name is not served at all */
    char err[256];
    float w[8] = {0};
    qn_st_tensor t = {.name = "w", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {2, 4}, .data = w, .nbytes = 32};
    const char *meta[] = {"format", "quern.mlp.v1", "layers", "[]"};
    CHECK_EQ_INT(qn_st_write(model_path(repo, "c", "1"), &t, 1, meta, 2, err, sizeof err), 0);
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(qn_registry_get(r, "c", 0, &m), QN_ENOTFOUND);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

TEST(prepare_failure)
{
    fake_reset();
    char *repo = repo_new("reg_prep");
    snprintf(g_fake.fail_name, sizeof g_fake.fail_name, "p");
    put_model(repo, "p", 1, 2, 1.0f);
    put_model(repo, "q", 1, 2, 1.0f);
    qn_registry *r;
    log_capture_begin();
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    CHECK_EQ_INT(log_capture_count("cannot prepare"), 1);
    if (!r) return;
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 2);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "p", 0, &m), QN_ENOTFOUND);
    CHECK_EQ_INT(latest(r, "q"), 1);
    /* not retried while the file is unchanged */
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 2);
    /* the backend recovers and the file is rewritten: served */
    g_fake.fail_name[0] = 0;
    put_model(repo, "p", 1, 2, 1.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 3);
    CHECK_EQ_INT(latest(r, "p"), 1);
    qn_registry_close(&r);
    /* the failed prepare made no state and got no release */
    CHECK_EQ_INT(atomic_load(&g_fake.releases), 2);
    rm_rf(repo);
    free(repo);
}

/* A directory that cannot be read (here: a symlink loop, ELOOP; EACCES
 * cannot be provoked when tests run as root) is not the same as a removed
 * one: its versions stay. */
TEST(unreadable_kept)
{
    fake_reset();
    char *repo = repo_new("reg_keep");
    put_model(repo, "a", 1, 2, 1.0f);
    put_model(repo, "b", 1, 2, 1.0f);
    put_model(repo, "b", 2, 2, 2.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    char d[4200], l[4200];
    /* a's directory becomes a loop */
    snprintf(d, sizeof d, "%s/a", repo);
    rm_rf(d);
    CHECK_EQ_INT(symlink(d, d), 0);
    /* b/2's model file becomes a loop */
    snprintf(l, sizeof l, "%s/b/2/model.safetensors", repo);
    unlink(l);
    CHECK_EQ_INT(symlink(l, l), 0);
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(latest(r, "a"), 1);
    CHECK_EQ_INT(latest(r, "b"), 2);
    /* once really gone, they go */
    unlink(d);
    unlink(l);
    CHECK_EQ_INT(qn_registry_scan(r), 2);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 0, &m), QN_ENOTFOUND);
    CHECK_EQ_INT(latest(r, "b"), 1);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

TEST(watcher)
{
    fake_reset();
    char *repo = repo_new("reg_watch");
    put_model(repo, "a", 1, 2, 1.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    CHECK_EQ_INT(qn_registry_watch(r, 20), 0);
    CHECK_EQ_INT(qn_registry_watch(r, 20), QN_EINVAL); /* one watcher */

    /* a new version shows up without anyone calling scan */
    put_model(repo, "a", 2, 2, 2.0f);
    uint64_t t0 = qn_now_ns();
    while (latest(r, "a") != 2 && qn_now_ns() - t0 < 3000000000ull) usleep(5000);
    CHECK_EQ_INT(latest(r, "a"), 2);
    printf("     new version served after %.0f ms (interval 20 ms)\n", (qn_now_ns() - t0) / 1e6);
    /* and a removal */
    char d[4200];
    snprintf(d, sizeof d, "%s/a/2", repo);
    rm_rf(d);
    t0 = qn_now_ns();
    while (latest(r, "a") != 1 && qn_now_ns() - t0 < 3000000000ull) usleep(5000);
    CHECK_EQ_INT(latest(r, "a"), 1);
    qn_registry_close(&r);

    /* close does not wait out a long interval */
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    CHECK_EQ_INT(qn_registry_watch(r, 60000), 0);
    usleep(20000);
    t0 = qn_now_ns();
    qn_registry_close(&r);
    double ms = (qn_now_ns() - t0) / 1e6;
    CHECK(ms < 500);
    printf("     close with a 60 s interval took %.2f ms\n", ms);

    /* default interval */
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    CHECK_EQ_INT(qn_registry_watch(r, 0), 0);
    put_model(repo, "a", 3, 2, 3.0f);
    t0 = qn_now_ns();
    while (latest(r, "a") != 3 && qn_now_ns() - t0 < 3000000000ull) usleep(10000);
    CHECK_EQ_INT(latest(r, "a"), 3);
    CHECK(qn_now_ns() - t0 < 2000000000ull); /* the contract: within 2 s */
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

/* Readers look up and drop models while versions are replaced, added and
 * removed under them: every lookup gets a live model of the version asked
 * for (ASan/TSan builds watch the memory). */
typedef struct reader_arg {
    qn_registry *r;
    atomic_int *stop;
    long lookups, errors;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    unsigned seed = 12345;
    while (!atomic_load(a->stop)) {
        seed = seed * 1103515245u + 12345u;
        int64_t want = (seed >> 16) % 3; /* 0 (latest), 1 or 2 */
        qn_model *m = NULL;
        int rc = qn_registry_get(a->r, "hot", want, &m);
        a->lookups++;
        if (rc == 0) {
            if ((want && m->version != want) || m->layers[0].w[0] != (float)m->version ||
                atomic_load(&m->refs) < 1)
                a->errors++;
            qn_model_unref(&m);
        } else if (rc != QN_ENOVERSION && rc != QN_ENOTFOUND)
            a->errors++;
    }
    return NULL;
}

TEST(concurrent_lookups)
{
    fake_reset();
    char *repo = repo_new("reg_conc");
    put_model(repo, "hot", 1, 2, 1.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    atomic_int stop = 0;
    reader_arg args[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (reader_arg){.r = r, .stop = &stop};
        pthread_create(&th[i], NULL, reader, &args[i]);
    }
    char d[4200];
    snprintf(d, sizeof d, "%s/hot/2", repo);
    for (int round = 0; round < 30; round++) {
        put_model(repo, "hot", 2, 2 + round % 3, 2.0f);
        CHECK(qn_registry_scan(r) >= 1);
        put_model(repo, "hot", 1, 2 + round % 2, 1.0f);
        CHECK(qn_registry_scan(r) >= 1);
        rm_rf(d);
        CHECK(qn_registry_scan(r) >= 1);
    }
    atomic_store(&stop, 1);
    long lookups = 0, errors = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        lookups += args[i].lookups;
        errors += args[i].errors;
    }
    CHECK_EQ_INT(errors, 0);
    CHECK(lookups > 0);
    printf("     %ld lookups during 90 swaps\n", lookups);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

/* Lookups are meant to be cheap enough for ~100k/s: measure one thread. */
TEST(lookup_cost)
{
    fake_reset();
    char *repo = repo_new("reg_cost");
    char name[16];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "m%02d", i);
        put_model(repo, name, 1, 2, 1.0f);
        put_model(repo, name, 2, 2, 2.0f);
    }
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    const int n = 200000;
    uint64_t t0 = qn_now_ns();
    for (int i = 0; i < n; i++) {
        qn_model *m = NULL;
        snprintf(name, sizeof name, "m%02d", i % 20);
        if (qn_registry_get(r, name, (i & 1) ? 0 : 1, &m) == 0) qn_model_unref(&m);
        else CHECK(0);
    }
    double ns = (double)(qn_now_ns() - t0) / n;
    printf("     %.0f ns per lookup + unref (20 models, 40 versions)\n", ns);
    CHECK(ns < 10000); /* 100k/s with room to spare, even under sanitizers */
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

/* Triton's version policy per model (issue 9 item 9), from
 * REPO/<name>/config.json, picked up on rescan; versions outside it are not
 * loaded at all, and pinned jobs for them get unknown_version. */
TEST(version_policy)
{
    fake_reset();
    char *repo = repo_new("reg_policy");
    char got[128];
    for (int v = 1; v <= 3; v++) put_model(repo, "a", v, 2, (float)v);
    put_model(repo, "b", 1, 2, 1.0f); /* no config: every version, as before */
    put_config(repo, "a", "{\"version_policy\": {\"latest\": {\"num_versions\": 2}}}");
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    if (!r) return;
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "2,3,");
    CHECK_EQ_INT(latest(r, "a"), 3);
    CHECK_EQ_INT(atomic_load(&g_fake.prepares), 3); /* a v1 was never loaded */
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 1, &m), QN_ENOVERSION);
    CHECK_EQ_INT(latest(r, "b"), 1);

    /* a new version under "latest 2": the oldest of the two goes */
    put_model(repo, "a", 4, 2, 4.0f);
    CHECK_EQ_INT(qn_registry_scan(r), 2); /* v4 loaded, v2 unloaded */
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "3,4,");
    CHECK_EQ_INT(alive(), 3 + 0); /* a v3, a v4, b v1 */

    /* a newest version that fails to load takes no slot */
    put_garbage(repo, "a", "5", "not a model");
    log_capture_begin();
    CHECK_EQ_INT(qn_registry_scan(r), 0);
    CHECK_EQ_INT(log_capture_count("a v5: skipped"), 1);
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "3,4,");
    CHECK_EQ_INT(latest(r, "a"), 4);

    /* specific versions: exactly those present; the highest of them serves
     * unpinned jobs even with higher versions on disk */
    put_config(repo, "a", "{\"name\": \"a\", \"version_policy\": {\"specific\": {\"versions\": [1, 3, 9]}}}");
    CHECK(qn_registry_scan(r) > 0);
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "1,3,");
    CHECK_EQ_INT(latest(r, "a"), 3);
    CHECK(mark_of(r, "a", 1) == 1.0f);

    /* malformed configs: logged with the reason, once per file, and the
     * policy in effect stays */
    const char *bad[] = {
        "{\"version_policy\": {\"latest\": {\"num_versions\": 0}}}",
        "{\"version_policy\": {\"latest\": {}, \"all\": {}}}",
        "{\"version_polcy\": {\"all\": {}}}",
        "{\"version_policy\": {\"specific\": {\"versions\": []}}}",
        "{\"version_policy\": {\"newest\": {}}}",
        "{\"name\": \"not-a\"}",
        "{\"version_policy\": {\"latest\": {\"num_versions\": 1}},",
    };
    const char *why[] = {"num_versions\" must be an integer >= 1", "exactly one of", "unknown key \"version_polcy\"",
                         "non-empty array", "unknown version policy \"newest\"", "\"name\" must be",
                         "not valid JSON"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        put_config(repo, "a", bad[i]);
        log_capture_begin();
        CHECK_EQ_INT(qn_registry_scan(r), 0);
        CHECK_EQ_INT(qn_registry_scan(r), 0);
        int n_logged = log_capture_count("keeping the version policy specific [1, 3, 9]");
        int n_why = log_capture_count(why[i]);
        CHECK_EQ_INT(n_logged, 1);
        CHECK_EQ_INT(n_why, 1);
        if (n_logged != 1 || n_why != 1) fprintf(stderr, "  config: %s\n", bad[i]);
        served_versions(r, "a", got, sizeof got);
        CHECK_STR(got, "1,3,");
    }

    /* all, written out */
    put_config(repo, "a", "{\"version_policy\": {\"all\": {}}}");
    CHECK(qn_registry_scan(r) > 0);
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "1,2,3,4,");
    /* latest 1, then the file removed: back to the default (every version) */
    put_config(repo, "a", "{\"version_policy\": {\"latest\": {\"num_versions\": 1}}}");
    CHECK(qn_registry_scan(r) > 0);
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "4,");
    rm_config(repo, "a");
    CHECK(qn_registry_scan(r) > 0);
    served_versions(r, "a", got, sizeof got);
    CHECK_STR(got, "1,2,3,4,");
    CHECK_EQ_INT(latest(r, "a"), 4);
    /* a malformed first config keeps the default */
    put_model(repo, "c", 1, 2, 1.0f);
    put_model(repo, "c", 2, 2, 2.0f);
    put_config(repo, "c", "[1, 2]");
    log_capture_begin();
    CHECK(qn_registry_scan(r) > 0);
    CHECK_EQ_INT(log_capture_count("keeping the version policy all"), 1);
    served_versions(r, "c", got, sizeof got);
    CHECK_STR(got, "1,2,");
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

/* A new latest version with another input or output width is a warning:
 * every unpinned client shaped for the old one now gets shape_mismatch. */
TEST(width_change_warned)
{
    fake_reset();
    char *repo = repo_new("reg_width");
    put_model_in(repo, "a", 1, 4, 2, 1.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, &g_be, &r), 0);
    if (!r) return;
    put_model_in(repo, "a", 2, 4, 2, 2.0f); /* same widths: quiet */
    log_capture_begin();
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(log_capture_count("the latest version is now"), 0);
    put_model_in(repo, "a", 3, 8, 2, 3.0f); /* input width */
    log_capture_begin();
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(log_capture_count("a: the latest version is now v3 (8 -> 2), v2 was 4 -> 2: unpinned jobs "
                                   "shaped for v2 now get shape_mismatch; pin \"version\": 2, or set a "
                                   "version policy in"), 1);
    put_model_in(repo, "a", 4, 8, 5, 4.0f); /* output width */
    log_capture_begin();
    CHECK_EQ_INT(qn_registry_scan(r), 1);
    CHECK_EQ_INT(log_capture_count("a: the latest version is now v4 (8 -> 5), v3 was 8 -> 2"), 1);
    /* a policy that keeps the old width serving: no warning, v2 is latest */
    put_model_in(repo, "a", 5, 16, 5, 5.0f);
    put_config(repo, "a", "{\"version_policy\": {\"specific\": {\"versions\": [1, 2]}}}");
    log_capture_begin();
    CHECK(qn_registry_scan(r) > 0);
    int warned = log_capture_count("a: the latest version is now v2 (4 -> 2), v4 was 8 -> 5: unpinned jobs "
                                   "shaped for v4 now get shape_mismatch; v4 is no longer loaded; set a");
    CHECK_EQ_INT(latest(r, "a"), 2);
    /* v4 (8 -> 5) gave way to v2 (4 -> 2): that is a width change too */
    CHECK_EQ_INT(warned, 1);
    qn_registry_close(&r);
    CHECK_EQ_INT(alive(), 0);
    rm_rf(repo);
    free(repo);
}

/* Without a backend (tools that only inspect), models load unprepared. */
TEST(no_backend)
{
    char *repo = repo_new("reg_nobe");
    put_model(repo, "a", 1, 2, 1.0f);
    qn_registry *r;
    CHECK_EQ_INT(qn_registry_open(repo, NULL, &r), 0);
    qn_model *m = NULL;
    CHECK_EQ_INT(qn_registry_get(r, "a", 0, &m), 0);
    CHECK(m && m->backend == NULL);
    qn_model_unref(&m);
    qn_registry_close(&r);
    rm_rf(repo);
    free(repo);
}

int main(void)
{
    /* loads and removals log at info; the tests read the warnings */
    qn_log_set_level(QN_LOG_WARN);
    qn_log_init_from_env();
    g_root = qn_test_tmpdir("test_registry");
    RUN(names_valid);
    RUN(open_errors);
    RUN(initial_load_and_lookup);
    RUN(invalid_entries_ignored);
    RUN(add_replace_remove);
    RUN(broken_version_skipped);
    RUN(prepare_failure);
    RUN(unreadable_kept);
    RUN(watcher);
    RUN(concurrent_lookups);
    RUN(lookup_cost);
    RUN(no_backend);
    RUN(version_policy);
    RUN(width_change_warned);
    return qn_test_done();
}
