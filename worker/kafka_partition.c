/* kafka_partition.c: the Kafka transport's partition records and their
 * reference counts (kafka_partition.h). Must never reach into the transport:
 * intake and reply both call down into this file, never the other way. */
#include "kafka_partition.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"

static kpart *part_new(int32_t partition)
{
    kpart *p = calloc(1, sizeof *p);
    if (!p || qn_offsets_create(&p->offs)) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->committed = -1;
    p->refs = 1;
    p->assigned = true;
    return p;
}

void kpart_unref(kpart **pp)
{
    kpart *p = *pp;
    *pp = NULL;
    if (!p || --p->refs > 0) return;
    /* The assignment's reference goes last only through detach. */
    QN_ASSERT(!p->assigned);
    qn_offsets_destroy(&p->offs);
    free(p);
}

kpart *kpart_get(const kpart_table *t, int32_t partition)
{
    return partition >= 0 && partition < t->n ? t->v[partition] : NULL;
}

int kpart_attach(kpart_table *t, int32_t partition)
{
    if (partition < 0) return QN_EINVAL;
    if (partition >= t->n) {
        int n = partition + 1 > 2 * t->n ? partition + 1 : 2 * t->n;
        kpart **nv = realloc(t->v, (size_t)n * sizeof *nv);
        if (!nv) return QN_ENOMEM;
        memset(nv + t->n, 0, (size_t)(n - t->n) * sizeof *nv);
        t->v = nv;
        t->n = n;
    }
    kpart *p = part_new(partition);
    if (!p) return QN_ENOMEM;
    kpart *old = t->v[partition];
    if (old) {
        old->assigned = false;
        kpart_unref(&old);
    }
    t->v[partition] = p;
    return 0;
}

void kpart_detach(kpart_table *t, int32_t partition)
{
    kpart *p = kpart_get(t, partition);
    if (!p) return;
    t->v[partition] = NULL;
    p->assigned = false;
    kpart_unref(&p);
}

void kpart_table_clear(kpart_table *t)
{
    for (int i = 0; i < t->n; i++) kpart_detach(t, i);
    free(t->v);
    t->v = NULL;
    t->n = 0;
}
