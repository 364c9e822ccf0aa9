/* config.h: the worker's YAML configuration file (--config FILE, CONTRACT.md
 * section 4), read with libyaml. The file is one mapping whose keys are the
 * long flag names (`model-repo: /models`, `max-batch: 64`) plus `kafka:`, a
 * mapping of librdkafka settings (each one a -X key=value). This module only
 * reads the file into (key, value, line) entries; main.c applies them
 * through the same code as the flags, so a value means the same in both
 * places, and flags given on the command line override them. */
#ifndef QN_CONFIG_H
#define QN_CONFIG_H

#include <stddef.h>

typedef struct qn_config_entry {
    char *key;    /* the flag's long name, or "kafka" for one entry of kafka: */
    char *value;  /* the scalar; for "X": "key=value" */
    int line;     /* 1-based line of the key in the file */
} qn_config_entry;

typedef struct qn_config {
    char *path;
    qn_config_entry *e;
    int n;
} qn_config;

/* Reads path into *out (zeroed first). 0; or QN_EIO (cannot read) /
 * QN_EFORMAT (not YAML, not a mapping of scalars, a duplicate key, kafka:
 * not a mapping of scalars) with "LINE: why" in err. Keys are not checked
 * against the flags here. */
int qn_config_load(const char *path, qn_config *out, char *err, size_t errlen);
void qn_config_free(qn_config *c);

/* Appends s to f as a YAML double-quoted scalar. */
#include <stdio.h>
void qn_config_print_str(FILE *f, const char *s);

#endif
