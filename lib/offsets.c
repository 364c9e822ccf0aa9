/* offsets.c: the offset tracker (offsets.h). A ring of the offsets taken and
 * not yet released, in take order (so sorted), with a done flag each. The
 * head is always a pending entry: done entries at the head are released at
 * once, so committable() is the head's offset, or last+1 when the ring is
 * empty. */
#include "offsets.h"

#include <stdbool.h>
#include <stdlib.h>

#include "error.h"
#include "log.h"

#define INITIAL_CAP 64 /* power of two */

struct qn_offsets {
    int64_t *off;   /* ring, capacity cap (a power of two) */
    uint8_t *done;  /* parallel to off */
    size_t cap, head, count;
    int64_t last;   /* last offset taken, -1 before the first */
    int64_t pending;
};

int qn_offsets_create(qn_offsets **out)
{
    *out = NULL;
    qn_offsets *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->cap = INITIAL_CAP;
    t->off = malloc(t->cap * sizeof *t->off);
    t->done = malloc(t->cap);
    if (!t->off || !t->done) {
        qn_offsets_destroy(&t);
        return QN_ENOMEM;
    }
    t->last = -1;
    *out = t;
    return 0;
}

void qn_offsets_destroy(qn_offsets **p)
{
    qn_offsets *t = p ? *p : NULL;
    if (!t) return;
    free(t->off);
    free(t->done);
    free(t);
    *p = NULL;
}

static size_t slot(const qn_offsets *t, size_t i) { return (t->head + i) & (t->cap - 1); }

/* Doubles the ring, unrolling it so the head lands at 0. */
static int grow(qn_offsets *t)
{
    size_t ncap = t->cap * 2;
    int64_t *noff = malloc(ncap * sizeof *noff);
    uint8_t *ndone = malloc(ncap);
    if (!noff || !ndone) {
        free(noff);
        free(ndone);
        return QN_ENOMEM;
    }
    for (size_t i = 0; i < t->count; i++) {
        size_t s = slot(t, i);
        noff[i] = t->off[s];
        ndone[i] = t->done[s];
    }
    free(t->off);
    free(t->done);
    t->off = noff;
    t->done = ndone;
    t->cap = ncap;
    t->head = 0;
    return 0;
}

int qn_offsets_take(qn_offsets *t, int64_t offset)
{
    if (offset < 0 || offset <= t->last) return QN_EINVAL;
    if (t->count == t->cap) {
        int rc = grow(t);
        if (rc) return rc;
    }
    size_t s = slot(t, t->count);
    t->off[s] = offset;
    t->done[s] = 0;
    t->count++;
    t->last = offset;
    t->pending++;
    return 0;
}

int qn_offsets_done(qn_offsets *t, int64_t offset)
{
    /* Binary search over the logical (sorted) order. */
    size_t lo = 0, hi = t->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->off[slot(t, mid)] < offset) lo = mid + 1;
        else hi = mid;
    }
    if (lo == t->count) return QN_ENOTFOUND;
    size_t s = slot(t, lo);
    if (t->off[s] != offset || t->done[s]) return QN_ENOTFOUND;
    t->done[s] = 1;
    t->pending--;
    /* Release the done prefix so the head is pending again. */
    while (t->count > 0 && t->done[t->head]) {
        t->head = (t->head + 1) & (t->cap - 1);
        t->count--;
    }
    QN_ASSERT(t->count > 0 || t->pending == 0);
    return 0;
}

int64_t qn_offsets_committable(const qn_offsets *t)
{
    if (t->count > 0) return t->off[t->head];
    return t->last < 0 ? -1 : t->last + 1;
}

int64_t qn_offsets_pending(const qn_offsets *t) { return t->pending; }
int64_t qn_offsets_last_taken(const qn_offsets *t) { return t->last; }
