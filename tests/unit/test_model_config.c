/* test_model_config.c: REPO/<name>/config.json, the per-model version
 * policy: what parses to what, what is refused and why, and the helpers the
 * registry uses (describe, lists, equal, copy, load). The registry's use of
 * it is in test_registry.c (version_policy). */
#include "error.h"
#include "model_config.h"
#include "qn_test.h"

#include <stdio.h>
#include <string.h>

static int parse(const char *text, qn_version_policy *p, char *err)
{
    return qn_model_config_parse(text, strlen(text), "m", p, err, 256);
}

TEST(parses)
{
    qn_version_policy p;
    char err[256], d[128];
    CHECK_EQ_INT(parse("{}", &p, err), 0);
    CHECK_EQ_INT(p.kind, QN_VERSION_POLICY_ALL);
    CHECK_EQ_INT(parse("{\"name\": \"m\", \"version_policy\": {\"all\": {}}}", &p, err), 0);
    CHECK_EQ_INT(p.kind, QN_VERSION_POLICY_ALL);
    CHECK_EQ_INT(parse("{\"version_policy\": {\"latest\": {\"num_versions\": 3}}}", &p, err), 0);
    CHECK_EQ_INT(p.kind, QN_VERSION_POLICY_LATEST);
    CHECK_EQ_INT(p.num_versions, 3);
    qn_version_policy_describe(&p, d, sizeof d);
    CHECK_STR(d, "latest 3");
    CHECK_EQ_INT(parse("{\"version_policy\": {\"specific\": {\"versions\": [7, 2, 7, 40]}}}", &p, err), 0);
    CHECK_EQ_INT(p.kind, QN_VERSION_POLICY_SPECIFIC);
    CHECK_EQ_INT(p.nversions, 3); /* sorted, duplicates folded */
    CHECK(p.versions[0] == 2 && p.versions[1] == 7 && p.versions[2] == 40);
    CHECK(qn_version_policy_lists(&p, 7) && !qn_version_policy_lists(&p, 3));
    qn_version_policy_describe(&p, d, sizeof d);
    CHECK_STR(d, "specific [2, 7, 40]");
    qn_version_policy q;
    CHECK_EQ_INT(qn_version_policy_copy(&q, &p), 0);
    CHECK(qn_version_policy_equal(&p, &q));
    q.versions[0] = 3;
    CHECK(!qn_version_policy_equal(&p, &q));
    qn_version_policy_free(&q);
    qn_version_policy_free(&p);
    CHECK(p.versions == NULL && p.kind == QN_VERSION_POLICY_ALL);
    qn_version_policy_free(NULL);
}

TEST(refuses_with_reason)
{
    static const struct { const char *text, *why; } cases[] = {
        {"", "not valid JSON"},
        {"{\"version_policy\": ", "not valid JSON"},
        {"[]", "must be a JSON object"},
        {"{\"a\": 1, \"a\": 2}", "not valid JSON"}, /* duplicate keys */
        {"{\"versionpolicy\": {}}", "unknown key \"versionpolicy\""},
        {"{\"name\": \"other\"}", "\"name\" must be the model's directory name, \"m\""},
        {"{\"name\": 5}", "\"name\" must be"},
        {"{\"version_policy\": 1}", "must be an object"},
        {"{\"version_policy\": {}}", "exactly one of"},
        {"{\"version_policy\": {\"all\": {}, \"latest\": {\"num_versions\": 1}}}", "exactly one of"},
        {"{\"version_policy\": {\"all\": {\"x\": 1}}}", "takes no fields"},
        {"{\"version_policy\": {\"all\": true}}", "\"version_policy.all\" must be an object"},
        {"{\"version_policy\": {\"latest\": {}}}", "needs \"num_versions\""},
        {"{\"version_policy\": {\"latest\": {\"num_versions\": -1}}}", "integer >= 1"},
        {"{\"version_policy\": {\"latest\": {\"num_versions\": 1.5}}}", "integer >= 1"},
        {"{\"version_policy\": {\"latest\": {\"num_versions\": 1, \"n\": 2}}}", "unknown key \"n\""},
        {"{\"version_policy\": {\"specific\": {}}}", "needs \"versions\""},
        {"{\"version_policy\": {\"specific\": {\"versions\": 3}}}", "non-empty array"},
        {"{\"version_policy\": {\"specific\": {\"versions\": [1, 0]}}}", "positive integers"},
        {"{\"version_policy\": {\"specific\": {\"versions\": [\"1\"]}}}", "positive integers"},
        {"{\"version_policy\": {\"lastest\": {}}}", "unknown version policy \"lastest\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        qn_version_policy p;
        char err[256] = "";
        int rc = parse(cases[i].text, &p, err);
        CHECK_EQ_INT(rc, QN_EFORMAT);
        if (!strstr(err, cases[i].why)) {
            fprintf(stderr, "  %s -> \"%s\", wanted \"%s\"\n", cases[i].text, err, cases[i].why);
            CHECK(!"reason");
        }
        CHECK(p.versions == NULL);
    }
}

TEST(load)
{
    char *dir = qn_test_tmpdir("model_config");
    char path[4200], err[256];
    qn_version_policy p;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK_EQ_INT(qn_model_config_load(path, "m", &p, err, sizeof err), QN_ENOTFOUND);
    FILE *f = fopen(path, "w");
    fputs("{\"version_policy\": {\"latest\": {\"num_versions\": 2}}}\n", f);
    fclose(f);
    CHECK_EQ_INT(qn_model_config_load(path, "m", &p, err, sizeof err), 0);
    CHECK(p.kind == QN_VERSION_POLICY_LATEST && p.num_versions == 2);
    f = fopen(path, "w");
    for (int i = 0; i < QN_MODEL_CONFIG_MAX_BYTES; i++) fputc(' ', f);
    fputs("{}", f);
    fclose(f);
    CHECK_EQ_INT(qn_model_config_load(path, "m", &p, err, sizeof err), QN_ETOOLARGE);
    remove(path);
    remove(dir);
    free(dir);
}

int main(void)
{
    RUN(parses);
    RUN(refuses_with_reason);
    RUN(load);
    return qn_test_done();
}
