/* test_kafka_partition.c: the Kafka transport's partition records
 * (worker/kafka_partition.c): a record outlives its assignment while jobs
 * hold it, a re-attach (rewind) starts a fresh record, and a table clear
 * frees what nobody holds. Runs under ASan in make asan, which is what
 * catches a record freed early or never. */
#include "error.h"
#include "kafka_partition.h"
#include "qn_test.h"

TEST(attach_get_detach)
{
    kpart_table t = {0};
    CHECK(kpart_get(&t, 0) == NULL);
    CHECK(kpart_get(&t, -1) == NULL);
    CHECK_EQ_INT(kpart_attach(&t, -1), QN_EINVAL);
    CHECK_EQ_INT(kpart_attach(&t, 5), 0);
    CHECK(t.n >= 6);
    kpart *p = kpart_get(&t, 5);
    CHECK(p && p->partition == 5 && p->assigned && p->refs == 1 && p->committed == -1);
    CHECK(kpart_get(&t, 4) == NULL);
    CHECK(kpart_get(&t, 1000) == NULL);
    kpart_detach(&t, 5);
    CHECK(kpart_get(&t, 5) == NULL);
    kpart_detach(&t, 5); /* not assigned: no-op */
    kpart_table_clear(&t);
    CHECK(t.v == NULL && t.n == 0);
}

TEST(job_outlives_its_assignment)
{
    kpart_table t = {0};
    CHECK_EQ_INT(kpart_attach(&t, 0), 0);
    kpart *held = kpart_get(&t, 0);
    kpart_ref(held); /* a job in flight */
    CHECK_EQ_INT(qn_offsets_take(held->offs, 10), 0);
    kpart_detach(&t, 0); /* revoked while the job computes */
    CHECK(kpart_get(&t, 0) == NULL);
    CHECK(!held->assigned && held->refs == 1);
    /* the job finishes on its detached record */
    CHECK_EQ_INT(qn_offsets_done(held->offs, 10), 0);
    CHECK_EQ_INT(qn_offsets_committable(held->offs), 11);
    kpart_unref(&held); /* last reference: freed (ASan checks) */
    CHECK(held == NULL);
    kpart_table_clear(&t);
}

TEST(reattach_is_a_new_epoch)
{
    kpart_table t = {0};
    CHECK_EQ_INT(kpart_attach(&t, 3), 0);
    kpart *old = kpart_get(&t, 3);
    kpart_ref(old);
    CHECK_EQ_INT(qn_offsets_take(old->offs, 100), 0);
    CHECK_EQ_INT(kpart_attach(&t, 3), 0); /* the source rewound */
    kpart *cur = kpart_get(&t, 3);
    CHECK(cur != old && cur->assigned && !old->assigned);
    CHECK_EQ_INT(qn_offsets_take(cur->offs, 5), 0); /* a lower offset is fine here */
    CHECK_EQ_INT(qn_offsets_pending(cur->offs), 1);
    kpart_unref(&old);
    /* growth keeps the records already there */
    CHECK_EQ_INT(kpart_attach(&t, 40), 0);
    CHECK(kpart_get(&t, 3) == cur);
    kpart_table_clear(&t); /* frees cur (no job holds it) and 40 */
}

TEST(clear_leaves_held_records_to_their_jobs)
{
    kpart_table t = {0};
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(kpart_attach(&t, i), 0);
    kpart *held = kpart_get(&t, 6);
    kpart_ref(held);
    kpart_table_clear(&t);
    CHECK(!held->assigned && held->refs == 1);
    kpart_unref(&held);
    kpart_unref(&held); /* NULL: no-op */
}

int main(void)
{
    RUN(attach_get_detach);
    RUN(job_outlives_its_assignment);
    RUN(reattach_is_a_new_epoch);
    RUN(clear_leaves_held_records_to_their_jobs);
    return qn_test_done();
}
