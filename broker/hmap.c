/* hmap.c: see hmap.h. Capacity is a power of two, kept at most 3/4 full. */
#include "hmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "error.h"

typedef struct slot {
    void *key; /* NULL: empty */
    size_t len;
    uint64_t hash;
    void *value;
} slot;

struct qn_hmap {
    slot *slots;
    size_t cap, count; /* cap: a power of two */
};

int qn_hmap_create(qn_hmap **out)
{
    qn_hmap *m = calloc(1, sizeof *m);
    if (!m) return QN_ENOMEM;
    m->cap = 16;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots) {
        free(m);
        return QN_ENOMEM;
    }
    *out = m;
    return 0;
}

void qn_hmap_destroy(qn_hmap **pm)
{
    qn_hmap *m = pm ? *pm : NULL;
    if (!m) return;
    for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
    free(m->slots);
    free(m);
    *pm = NULL;
}

static size_t find(const qn_hmap *m, const void *key, size_t len, uint64_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const slot *s = &m->slots[i];
        if (!s->key) return i;
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0) return i;
    }
}

static int grow(qn_hmap *m)
{
    size_t ncap = m->cap * 2;
    slot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return QN_ENOMEM;
    slot *old = m->slots;
    size_t ocap = m->cap;
    m->slots = ns;
    m->cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].key) continue;
        size_t j = (size_t)old[i].hash & (ncap - 1);
        while (ns[j].key) j = (j + 1) & (ncap - 1);
        ns[j] = old[i];
    }
    free(old);
    return 0;
}

void *qn_hmap_get(const qn_hmap *m, const void *key, size_t len)
{
    uint64_t h = XXH3_64bits(key, len);
    const slot *s = &m->slots[find(m, key, len, h)];
    return s->key ? s->value : NULL;
}

int qn_hmap_put(qn_hmap *m, const void *key, size_t len, void *value)
{
    if ((m->count + 1) * 4 > m->cap * 3 && grow(m) != 0) return QN_ENOMEM;
    uint64_t h = XXH3_64bits(key, len);
    slot *s = &m->slots[find(m, key, len, h)];
    if (s->key) {
        s->value = value;
        return 0;
    }
    /* malloc(0) may return NULL; a key slot must be non-NULL to mark use */
    void *k = malloc(len ? len : 1);
    if (!k) return QN_ENOMEM;
    if (len) memcpy(k, key, len);
    *s = (slot){.key = k, .len = len, .hash = h, .value = value};
    m->count++;
    return 0;
}

void *qn_hmap_del(qn_hmap *m, const void *key, size_t len)
{
    uint64_t h = XXH3_64bits(key, len);
    size_t mask = m->cap - 1, i = find(m, key, len, h);
    slot *s = &m->slots[i];
    if (!s->key) return NULL;
    void *v = s->value;
    free(s->key);
    s->key = NULL;
    m->count--;
    /* Backward shift: pull later entries of the probe run into the hole
     * when their home slot is at or before it (cyclically). */
    for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
        size_t home = (size_t)m->slots[j].hash & mask;
        int movable = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            m->slots[i] = m->slots[j];
            m->slots[j].key = NULL;
            i = j;
        }
    }
    return v;
}

size_t qn_hmap_count(const qn_hmap *m) { return m->count; }
