/* registry.h: the model repository (Triton's layout:
 * REPO/<name>/<version>/model.safetensors) and the versions loaded from it.
 *
 * Every valid version present that the model's version policy selects is
 * loaded and prepared for the backend (REPO/<name>/config.json, Triton's
 * all / latest N / specific; default all; schemas/model.md); an unpinned
 * lookup gets the highest loaded version, a pinned one outside the policy
 * QN_ENOVERSION. A config that does not parse is logged with its reason and
 * the policy in effect stays; a new latest version with another input or
 * output width is logged as a warning. A watcher thread rescans
 * the repository (polling, default every 500 ms: new, replaced and removed
 * versions are picked up well within the contract's 2 s). A version that fails
 * to load is logged with its reason once and skipped until its file changes;
 * the versions already loaded keep serving. Lookups are thread-safe and
 * return a reference the caller must unref. */
#ifndef QN_REGISTRY_H
#define QN_REGISTRY_H

#include <stdint.h>

#include "backend.h"
#include "model.h"

typedef struct qn_registry qn_registry;

/* Opens the repository at dir and loads what is there (one scan). backend is
 * borrowed and must outlive the registry. Returns 0; QN_EIO when dir cannot
 * be read. An empty repository is not an error. */
int qn_registry_open(const char *dir, qn_backend *backend, qn_registry **out);
/* Stops the watcher, drops the registry's references, frees. Sets *r NULL. */
void qn_registry_close(qn_registry **r);

/* Rescans now (the watcher calls this). Returns the number of changes
 * (versions added, replaced or removed) or a negative QN_E* code. */
int qn_registry_scan(qn_registry *r);
/* Starts the watcher thread rescanning every interval_ms. 0 or QN_E*. */
int qn_registry_watch(qn_registry *r, int interval_ms);

/* Looks up name at version (0: the latest). On success *out holds a new
 * reference. QN_ENOTFOUND: no such model; QN_ENOVERSION: the model exists but
 * not that version. */
int qn_registry_get(qn_registry *r, const char *name, int64_t version, qn_model **out);

/* Calls fn for each model name currently served (e.g. to register one MDP
 * service per model). Holds the registry lock: fn must not call back in. */
void qn_registry_each_name(qn_registry *r, void (*fn)(void *ud, const char *name, int64_t latest),
                           void *ud);

/* The repository directory (train jobs write new versions there). Valid
 * while the registry is open. */
const char *qn_registry_dir(const qn_registry *r);
/* Calls fn for each version served, sorted by name then version (a
 * "models" job's answer). m is borrowed: fn may qn_model_ref it to keep it.
 * Holds the registry lock: fn must not call back in. */
void qn_registry_each_version(qn_registry *r, void (*fn)(void *ud, qn_model *m), void *ud);

/* True when name matches [A-Za-z0-9_.-]{1,64}. */
int qn_model_name_valid(const char *name);

#endif
