/* kafka_partition.h: the Kafka transport's partition records (worker/ only,
 * not an interface): one record per assignment of a job-topic partition,
 * holding its offset tracker, and the table of the current ones.
 *
 * Both the way in (kafka_intake.c: assignment, admission, commits) and the
 * way out (kafka_reply.c: a job's offset done when its deliveries are
 * acknowledged) use these records; they sit below both, so dependencies
 * point one way (intake -> reply -> partition -> lib/offsets.h). This file
 * knows nothing of librdkafka or of the transport.
 *
 * Lifetime: a record is per assignment. It holds one reference for the
 * assignment and one per job taken from it; a job finishing after its
 * partition was revoked (or re-attached after a rewind) updates its own,
 * detached record, which nobody commits from, and frees it with the last
 * reference. Owner thread only (the transport's IO thread, or destroy's
 * thread once it joined it): nothing here locks. */
#ifndef QN_KAFKA_PARTITION_H
#define QN_KAFKA_PARTITION_H

#include <stdbool.h>
#include <stdint.h>

#include "offsets.h"

typedef struct kpart {
    int32_t partition;
    qn_offsets *offs;
    int64_t committed; /* last commit point sent; -1: none yet */
    int refs;          /* one for the assignment + one per job in flight */
    int stuck;         /* jobs whose result reached neither reply topic nor DLQ */
    bool assigned;     /* still the table's current record */
} kpart;

/* The current records, indexed by partition number (NULL: not assigned). */
typedef struct kpart_table {
    kpart **v;
    int n; /* slots in v */
} kpart_table;

/* The current record of partition, or NULL (not assigned, or out of range). */
kpart *kpart_get(const kpart_table *t, int32_t partition);

/* Makes a fresh record the partition's current one (an assignment, or a
 * rewind of the source: a new epoch whose offsets start anew); the previous
 * record, if any, is detached. 0, QN_EINVAL (partition < 0) or QN_ENOMEM
 * (the table is unchanged). */
int kpart_attach(kpart_table *t, int32_t partition);

/* The partition is no longer assigned: its record leaves the table and lives
 * on only while jobs hold it. No-op when it has none. */
void kpart_detach(kpart_table *t, int32_t partition);

/* Detaches every record and frees the table's storage (t stays usable,
 * empty). */
void kpart_table_clear(kpart_table *t);

/* A job taken from p holds it until kpart_unref. */
static inline void kpart_ref(kpart *p) { p->refs++; }

/* Drops one reference; frees a detached record with its last one. *p is set
 * to NULL. */
void kpart_unref(kpart **p);

#endif
