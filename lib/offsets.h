/* offsets.h: the per-partition offset tracker behind at-least-once delivery
 * with out-of-order completion.
 *
 * A consumer takes messages of one partition in increasing offset order, but
 * their jobs finish in any order (different batches, models, cache hits). A
 * partition's committed offset must never pass a job whose result has not
 * been acknowledged, so the tracker answers one question: "what is the
 * highest offset I may commit?" = the lowest offset taken and not yet done,
 * or, when everything taken is done, one past the last offset taken.
 *
 * Offsets need not be contiguous (compacted topics, transaction markers):
 * only the offsets actually taken are tracked. Cost: take and committable are
 * O(1) amortised, done is O(log n) in the number of outstanding entries;
 * memory is one 9-byte-ish entry per offset between the commit point and the
 * newest offset taken.
 *
 * Transport-agnostic (nothing here knows Kafka) and not thread-safe: one
 * owner thread calls everything, or the caller serialises. */
#ifndef QN_OFFSETS_H
#define QN_OFFSETS_H

#include <stdint.h>

typedef struct qn_offsets qn_offsets;

/* A new empty tracker (nothing taken; committable() is -1). 0 or QN_ENOMEM. */
int qn_offsets_create(qn_offsets **out);
/* Frees. Sets *p NULL. NULL-safe. */
void qn_offsets_destroy(qn_offsets **p);

/* Records that the message at offset was taken (its job started). Offsets must
 * increase strictly from one take to the next: QN_EINVAL otherwise (the caller
 * starts a new tracker when its source rewinds). 0, QN_EINVAL or QN_ENOMEM. */
int qn_offsets_take(qn_offsets *t, int64_t offset);

/* Records that the job of offset is fully finished (its result acknowledged).
 * 0; QN_ENOTFOUND when offset was not taken or is already done (a duplicate
 * acknowledgement is harmless, but the caller may want to know). */
int qn_offsets_done(qn_offsets *t, int64_t offset);

/* The offset to commit: every taken offset below it is done. -1 when nothing
 * was ever taken. Commit semantics are Kafka's: the next offset to read. */
int64_t qn_offsets_committable(const qn_offsets *t);

/* Taken and not yet done. */
int64_t qn_offsets_pending(const qn_offsets *t);

/* The last offset taken, or -1 when nothing was taken. */
int64_t qn_offsets_last_taken(const qn_offsets *t);

#endif
