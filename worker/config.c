/* config.c: the YAML file into entries (config.h). libyaml's document API
 * keeps each node's position, so every error names its line. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "error.h"

static int add(qn_config *c, const char *key, const char *value, int line)
{
    qn_config_entry *n = realloc(c->e, (size_t)(c->n + 1) * sizeof *n);
    if (!n) return QN_ENOMEM;
    c->e = n;
    n[c->n].key = strdup(key);
    n[c->n].value = strdup(value);
    n[c->n].line = line;
    if (!n[c->n].key || !n[c->n].value) {
        free(n[c->n].key);
        free(n[c->n].value);
        return QN_ENOMEM;
    }
    c->n++;
    return 0;
}

static const char *scalar(yaml_node_t *n) { return (const char *)n->data.scalar.value; }

int qn_config_load(const char *path, qn_config *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read it");
        return QN_EIO;
    }
    yaml_parser_t p;
    yaml_document_t doc;
    int rc = QN_EFORMAT, have_doc = 0;
    if (!yaml_parser_initialize(&p)) {
        fclose(f);
        snprintf(err, errlen, "out of memory");
        return QN_ENOMEM;
    }
    yaml_parser_set_input_file(&p, f);
    if (!yaml_parser_load(&p, &doc)) {
        snprintf(err, errlen, "%zu: not YAML: %s", p.problem_mark.line + 1,
                 p.problem ? p.problem : "parse error");
        goto out;
    }
    have_doc = 1;
    out->path = strdup(path);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) { /* an empty file: nothing set */
        rc = 0;
        goto out;
    }
    if (root->type != YAML_MAPPING_NODE) {
        snprintf(err, errlen, "%zu: the file must be a mapping of flag names to values",
                 root->start_mark.line + 1);
        goto out;
    }
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key), *v = yaml_document_get_node(&doc, pr->value);
        int line = (int)k->start_mark.line + 1;
        if (k->type != YAML_SCALAR_NODE) {
            snprintf(err, errlen, "%d: a key must be a flag name", line);
            goto out;
        }
        for (int i = 0; i < out->n; i++)
            if (strcmp(out->e[i].key, scalar(k)) == 0) {
                snprintf(err, errlen, "%d: key '%s' given twice (first on line %d)", line, scalar(k),
                         out->e[i].line);
                goto out;
            }
        if (strcmp(scalar(k), "kafka") == 0) {
            if (v->type != YAML_MAPPING_NODE) {
                snprintf(err, errlen, "%d: key 'kafka' wants a mapping of librdkafka settings", line);
                goto out;
            }
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
                yaml_node_t *kk = yaml_document_get_node(&doc, q->key),
                            *vv = yaml_document_get_node(&doc, q->value);
                int l2 = (int)kk->start_mark.line + 1;
                if (kk->type != YAML_SCALAR_NODE || vv->type != YAML_SCALAR_NODE || !*scalar(kk)) {
                    snprintf(err, errlen, "%d: kafka: entries are 'setting: value'", l2);
                    goto out;
                }
                size_t len = strlen(scalar(kk)) + strlen(scalar(vv)) + 2;
                char *kv = malloc(len);
                if (!kv) { rc = QN_ENOMEM; goto out; }
                snprintf(kv, len, "%s=%s", scalar(kk), scalar(vv));
                int a = add(out, "kafka", kv, l2);
                free(kv);
                if (a) { rc = a; goto out; }
            }
            continue;
        }
        if (v->type != YAML_SCALAR_NODE) {
            snprintf(err, errlen, "%d: key '%s' wants a single value", line, scalar(k));
            goto out;
        }
        if ((rc = add(out, scalar(k), scalar(v), line))) goto out;
        rc = QN_EFORMAT;
    }
    rc = 0;
out:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    fclose(f);
    if (rc) qn_config_free(out);
    return rc;
}

void qn_config_free(qn_config *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->e[i].key);
        free(c->e[i].value);
    }
    free(c->e);
    free(c->path);
    memset(c, 0, sizeof *c);
}

void qn_config_print_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch < 0x20) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}
