/* model_config.c: REPO/<name>/config.json, parsed with jansson into a
 * version policy (model_config.h; format and examples in schemas/model.md).
 * Strict: an unknown key, a wrong type or a policy that selects nothing
 * expressible is an error with a reason a person can act on, never a
 * silently different policy. Must never touch the registry's state: the
 * registry decides what an error means (keep the previous policy). */
#include "model_config.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static int fail(char *err, size_t errn, const char *fmt, const char *a)
{
    if (errn) snprintf(err, errn, fmt, a);
    return QN_EFORMAT;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* One of all / latest / specific, exactly. */
static int parse_policy(json_t *vp, qn_version_policy *out, char *err, size_t errn)
{
    if (!json_is_object(vp)) return fail(err, errn, "\"version_policy\" must be an object%s", "");
    if (json_object_size(vp) != 1)
        return fail(err, errn, "\"version_policy\" must hold exactly one of \"all\", \"latest\", \"specific\"%s", "");
    const char *kind = json_object_iter_key(json_object_iter(vp));
    json_t *body = json_object_iter_value(json_object_iter(vp));
    if (!json_is_object(body)) return fail(err, errn, "\"version_policy.%s\" must be an object", kind);
    if (!strcmp(kind, "all")) {
        if (json_object_size(body))
            return fail(err, errn, "\"version_policy.all\" takes no fields (%s)", json_object_iter_key(json_object_iter(body)));
        out->kind = QN_VERSION_POLICY_ALL;
        return 0;
    }
    if (!strcmp(kind, "latest")) {
        const char *k;
        json_t *v;
        json_object_foreach(body, k, v) {
            if (strcmp(k, "num_versions")) return fail(err, errn, "\"version_policy.latest\": unknown key \"%s\"", k);
        }
        json_t *n = json_object_get(body, "num_versions");
        if (!n) return fail(err, errn, "\"version_policy.latest\" needs \"num_versions\"%s", "");
        if (!json_is_integer(n) || json_integer_value(n) < 1)
            return fail(err, errn, "\"version_policy.latest.num_versions\" must be an integer >= 1%s", "");
        out->kind = QN_VERSION_POLICY_LATEST;
        out->num_versions = json_integer_value(n);
        return 0;
    }
    if (!strcmp(kind, "specific")) {
        const char *k;
        json_t *v;
        json_object_foreach(body, k, v) {
            if (strcmp(k, "versions")) return fail(err, errn, "\"version_policy.specific\": unknown key \"%s\"", k);
        }
        json_t *a = json_object_get(body, "versions");
        if (!a) return fail(err, errn, "\"version_policy.specific\" needs \"versions\"%s", "");
        if (!json_is_array(a) || json_array_size(a) == 0)
            return fail(err, errn, "\"version_policy.specific.versions\" must be a non-empty array%s", "");
        size_t n = json_array_size(a);
        int64_t *vs = malloc(n * sizeof *vs);
        if (!vs) return QN_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(a, i);
            if (!json_is_integer(e) || json_integer_value(e) < 1) {
                free(vs);
                return fail(err, errn, "\"version_policy.specific.versions\" must hold positive integers%s", "");
            }
            vs[i] = json_integer_value(e);
        }
        qsort(vs, n, sizeof *vs, cmp_i64);
        size_t w = 0;
        for (size_t i = 0; i < n; i++)
            if (w == 0 || vs[w - 1] != vs[i]) vs[w++] = vs[i];
        out->kind = QN_VERSION_POLICY_SPECIFIC;
        out->versions = vs;
        out->nversions = w;
        return 0;
    }
    return fail(err, errn, "unknown version policy \"%s\" (all, latest or specific)", kind);
}

int qn_model_config_parse(const char *text, size_t len, const char *name, qn_version_policy *out,
                          char *err, size_t errn)
{
    if (!text || !out) return QN_EINVAL;
    memset(out, 0, sizeof *out);
    if (errn) err[0] = 0;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (errn) snprintf(err, errn, "not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        return QN_EFORMAT;
    }
    int rc = 0;
    qn_version_policy p = {0};
    if (!json_is_object(root)) {
        rc = fail(err, errn, "must be a JSON object%s", "");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (!strcmp(k, "name")) {
            if (!json_is_string(v) || (name && strcmp(json_string_value(v), name))) {
                rc = fail(err, errn, "\"name\" must be the model's directory name, \"%s\"", name ? name : "");
                goto out;
            }
        } else if (!strcmp(k, "version_policy")) {
            if ((rc = parse_policy(v, &p, err, errn))) goto out;
        } else {
            rc = fail(err, errn, "unknown key \"%s\" (known: name, version_policy)", k);
            goto out;
        }
    }
    *out = p;
    p.versions = NULL;
out:
    free(p.versions);
    json_decref(root);
    return rc;
}

int qn_model_config_load(const char *path, const char *name, qn_version_policy *out, char *err,
                         size_t errn)
{
    if (!path || !out) return QN_EINVAL;
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return QN_ENOTFOUND;
        if (errn) snprintf(err, errn, "cannot open: %s", strerror(errno));
        return QN_EIO;
    }
    char *buf = malloc(QN_MODEL_CONFIG_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return QN_ENOMEM;
    }
    size_t n = fread(buf, 1, QN_MODEL_CONFIG_MAX_BYTES + 1, f);
    int rc = 0;
    if (ferror(f)) {
        if (errn) snprintf(err, errn, "cannot read: %s", strerror(errno));
        rc = QN_EIO;
    } else if (n > QN_MODEL_CONFIG_MAX_BYTES) {
        if (errn) snprintf(err, errn, "larger than %d bytes", QN_MODEL_CONFIG_MAX_BYTES);
        rc = QN_ETOOLARGE;
    } else {
        rc = qn_model_config_parse(buf, n, name, out, err, errn);
    }
    fclose(f);
    free(buf);
    return rc;
}

void qn_version_policy_free(qn_version_policy *p)
{
    if (!p) return;
    free(p->versions);
    memset(p, 0, sizeof *p);
}

int qn_version_policy_copy(qn_version_policy *dst, const qn_version_policy *src)
{
    qn_version_policy c = *src;
    c.versions = NULL;
    if (src->nversions) {
        if (!(c.versions = malloc(src->nversions * sizeof *c.versions))) return QN_ENOMEM;
        memcpy(c.versions, src->versions, src->nversions * sizeof *c.versions);
    }
    *dst = c;
    return 0;
}

int qn_version_policy_equal(const qn_version_policy *a, const qn_version_policy *b)
{
    if (a->kind != b->kind) return 0;
    if (a->kind == QN_VERSION_POLICY_LATEST) return a->num_versions == b->num_versions;
    if (a->kind == QN_VERSION_POLICY_SPECIFIC)
        return a->nversions == b->nversions &&
               !memcmp(a->versions, b->versions, a->nversions * sizeof *a->versions);
    return 1;
}

int qn_version_policy_lists(const qn_version_policy *p, int64_t v)
{
    if (p->kind != QN_VERSION_POLICY_SPECIFIC) return 1;
    return p->nversions && bsearch(&v, p->versions, p->nversions, sizeof v, cmp_i64) != NULL;
}

void qn_version_policy_describe(const qn_version_policy *p, char *buf, size_t n)
{
    if (!n) return;
    switch (p->kind) {
    case QN_VERSION_POLICY_LATEST: snprintf(buf, n, "latest %lld", (long long)p->num_versions); return;
    case QN_VERSION_POLICY_SPECIFIC: {
        size_t w = (size_t)snprintf(buf, n, "specific [");
        for (size_t i = 0; i < p->nversions && w < n; i++)
            w += (size_t)snprintf(buf + w, n - w, "%s%lld", i ? ", " : "", (long long)p->versions[i]);
        if (w < n) snprintf(buf + w, n - w, "]");
        return;
    }
    default: snprintf(buf, n, "all"); return;
    }
}
