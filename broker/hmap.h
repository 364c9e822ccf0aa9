/* hmap.h: a small hash map from byte strings to pointers, for the broker's
 * tables (ZeroMQ identities -> workers, service names -> services). Open
 * addressing with linear probing and backward-shift deletion, so lookups
 * never walk tombstones however many peers come and go.
 *
 * Keys are copied in; values are borrowed (the map never frees them).
 * Not thread-safe: the broker has one thread. */
#ifndef QN_HMAP_H
#define QN_HMAP_H

#include <stddef.h>

typedef struct qn_hmap qn_hmap;

/* 0 or QN_ENOMEM. */
int qn_hmap_create(qn_hmap **out);
/* Frees the map and its key copies (not the values). Sets *m NULL. NULL-safe. */
void qn_hmap_destroy(qn_hmap **m);

/* The value stored under key, or NULL. */
void *qn_hmap_get(const qn_hmap *m, const void *key, size_t len);
/* Stores value (non-NULL) under key, replacing any earlier value.
 * 0 or QN_ENOMEM (the map is unchanged then). */
int qn_hmap_put(qn_hmap *m, const void *key, size_t len, void *value);
/* Removes key; returns its value, or NULL when it was absent. */
void *qn_hmap_del(qn_hmap *m, const void *key, size_t len);
/* Entries stored. */
size_t qn_hmap_count(const qn_hmap *m);

#endif
