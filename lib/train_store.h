/* train_store.h: trained versions on disk (schemas/model.md, "Training
 * state"). A version is written as REPO/<name>/<next integer>/
 * model.safetensors in the contract's quern.mlp.v1 format, plus the
 * optimizer's state as extra tensors and a "quern.train" metadata key
 * (job key, optimizer, step counts, schedule state), so that a later job
 * from that version continues where this one stopped. Writing is atomic:
 * the file goes to a hidden directory REPO/<name>/.quern-train-<pid>-<n>/,
 * is fsynced, the directory is renamed to its version number and the
 * parent directory fsynced; a crash leaves at most a hidden directory, which
 * the next save from any process removes once its writer is gone. */
#ifndef QN_TRAIN_STORE_H
#define QN_TRAIN_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "train.h"

/* Reads a version file into net: f32 dense layers (quern.mlp.v1; a
 * compressed file is QN_ENOTSUP), tensor names, and the training state when
 * the file has one. 0 or QN_EIO / QN_EFORMAT / QN_ENOTSUP / QN_ENOMEM with
 * a reason in err. */
int qn_tnet_load(const char *path, qn_tnet *net, char *err, size_t errlen);

/* Writes net as the next version of name under repo (creating REPO/<name>
 * for a new model). job_key identifies the job (qn_train_job_key) and is
 * recorded, with metrics_json (a JSON object, may be NULL) and the version
 * it started from (0: init). *version gets the number written. 0 or QN_EIO
 * with a reason in err. */
int qn_tnet_save_version(const char *repo, const char *name, const qn_tnet *net, const char *job_key,
                         const char *metrics_json, int64_t parent, int64_t *version, char *err,
                         size_t errlen);

/* The version of name that recorded job_key (highest if several), or 0.
 * When found and metrics is not NULL, the recorded metrics JSON object is
 * copied there (truncated to cap, "" when none). */
int64_t qn_train_find_job(const char *repo, const char *name, const char *job_key, char *metrics,
                          size_t cap);

#endif
