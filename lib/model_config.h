/* model_config.h: a model's own configuration, REPO/<name>/config.json
 * (schemas/model.md), read by the registry on every scan. Today it holds
 * Triton's version policy: which versions of the model are loaded and
 * served. Pure parsing; reading the repository is the registry's. */
#ifndef QN_MODEL_CONFIG_H
#define QN_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum qn_version_policy_kind {
    QN_VERSION_POLICY_ALL = 0,   /* every version present (the default, without a config) */
    QN_VERSION_POLICY_LATEST,    /* the num_versions highest versions that load */
    QN_VERSION_POLICY_SPECIFIC,  /* the listed versions that are present */
} qn_version_policy_kind;

typedef struct qn_version_policy {
    qn_version_policy_kind kind;
    int64_t num_versions; /* LATEST: >= 1 */
    int64_t *versions;    /* SPECIFIC: ascending, no duplicates, all >= 1; owned */
    size_t nversions;
} qn_version_policy;

/* The largest config.json read (a config is a few lines; this bounds a
 * mistake, say a model file saved under that name). */
#define QN_MODEL_CONFIG_MAX_BYTES (64 * 1024)

/* Parses a config.json text (len bytes, need not be NUL-terminated) for the
 * model called name. Top-level keys: "name" (optional; must equal name) and
 * "version_policy" (optional; default: all), which holds exactly one of
 * {"all": {}}, {"latest": {"num_versions": N}} (N >= 1) and
 * {"specific": {"versions": [v, ...]}} (one or more positive integers).
 * Any other key is an error, so a misspelt key is never silently ignored.
 * Returns 0 and *out (free with qn_version_policy_free), or QN_EFORMAT with
 * the reason in err (JSON errors with line and column), or QN_ENOMEM. */
int qn_model_config_parse(const char *text, size_t len, const char *name, qn_version_policy *out,
                          char *err, size_t errn);

/* Reads and parses the file at path. As parse, plus QN_ENOTFOUND (no such
 * file: the caller uses the default), QN_EIO (cannot read it; reason in err)
 * and QN_ETOOLARGE (past QN_MODEL_CONFIG_MAX_BYTES). */
int qn_model_config_load(const char *path, const char *name, qn_version_policy *out, char *err,
                         size_t errn);

/* Frees what p owns and leaves it the default (all). NULL-safe. */
void qn_version_policy_free(qn_version_policy *p);
/* Deep copy: 0 or QN_ENOMEM. */
int qn_version_policy_copy(qn_version_policy *dst, const qn_version_policy *src);
/* 1 when a and b select the same way. */
int qn_version_policy_equal(const qn_version_policy *a, const qn_version_policy *b);
/* For SPECIFIC: 1 when v is listed; ALL: 1; LATEST: 1 (the count decides). */
int qn_version_policy_lists(const qn_version_policy *p, int64_t v);
/* "all", "latest 2", "specific [1, 3]" into buf (truncated to n). */
void qn_version_policy_describe(const qn_version_policy *p, char *buf, size_t n);

#endif
