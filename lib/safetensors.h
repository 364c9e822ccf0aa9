/* safetensors.h: reading and writing safetensors files (8-byte LE header
 * length, JSON header, raw LE data). The JSON header is parsed with jansson.
 * Every offset, size, dtype and shape is validated against the file length:
 * a lying or truncated file is an error, never a crash or an out-of-bounds
 * read. */
#ifndef QN_SAFETENSORS_H
#define QN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

#define QN_ST_MAX_DIMS 8
#define QN_ST_MAX_HEADER (100u * 1024u * 1024u) /* as the reference implementation */

typedef struct qn_st_tensor {
    const char *name;       /* owned by the file object */
    qn_dtype dtype;
    int ndim;
    int64_t shape[QN_ST_MAX_DIMS];
    const void *data;       /* points into the file's buffer, NOT aligned */
    size_t nbytes;
} qn_st_tensor;

typedef struct qn_st_file qn_st_file;

/* Reads and validates path. 0 on success (*out owned by caller, close with
 * qn_st_close); QN_EIO (cannot read) or QN_EFORMAT (invalid) with a reason in
 * err (err may be NULL). */
int qn_st_open(const char *path, qn_st_file **out, char *err, size_t errlen);
/* Same, from memory; the buffer is copied. */
int qn_st_parse(const void *buf, size_t len, qn_st_file **out, char *err, size_t errlen);
void qn_st_close(qn_st_file **f);

size_t qn_st_count(const qn_st_file *f);
const qn_st_tensor *qn_st_at(const qn_st_file *f, size_t i);
/* NULL when absent. */
const qn_st_tensor *qn_st_find(const qn_st_file *f, const char *name);
/* A "__metadata__" string value, NULL when absent. Valid until close. */
const char *qn_st_meta(const qn_st_file *f, const char *key);
/* Size of the whole file in bytes. */
size_t qn_st_file_size(const qn_st_file *f);

/* Writes a safetensors file: tensors in the given order, metadata as
 * key/value string pairs (meta[2*i], meta[2*i+1]). Written to path.tmp then
 * renamed, so a watcher never sees a half-written model. 0 or QN_EIO/QN_EINVAL. */
int qn_st_write(const char *path, const qn_st_tensor *tensors, size_t ntensors,
                const char *const *meta, size_t nmeta_pairs, char *err, size_t errlen);

#endif
