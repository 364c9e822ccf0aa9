/* test_offsets.c: the per-partition offset tracker: commit point under
 * out-of-order completion, gaps in offsets, duplicates, growth, and a
 * randomised comparison against a naive model (an array of flags). */
#include <stdint.h>

#include "error.h"
#include "offsets.h"
#include "qn_test.h"

TEST(empty)
{
    qn_offsets *t = NULL;
    CHECK_EQ_INT(qn_offsets_create(&t), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), -1);
    CHECK_EQ_INT(qn_offsets_pending(t), 0);
    CHECK_EQ_INT(qn_offsets_last_taken(t), -1);
    CHECK_EQ_INT(qn_offsets_done(t, 0), QN_ENOTFOUND);
    qn_offsets_destroy(&t);
    CHECK(t == NULL);
    qn_offsets_destroy(&t); /* NULL-safe */
}

TEST(in_order)
{
    qn_offsets *t = NULL;
    qn_offsets_create(&t);
    for (int64_t o = 100; o < 110; o++) CHECK_EQ_INT(qn_offsets_take(t, o), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 100);
    CHECK_EQ_INT(qn_offsets_pending(t), 10);
    for (int64_t o = 100; o < 110; o++) {
        CHECK_EQ_INT(qn_offsets_done(t, o), 0);
        CHECK_EQ_INT(qn_offsets_committable(t), o + 1);
    }
    CHECK_EQ_INT(qn_offsets_pending(t), 0);
    qn_offsets_destroy(&t);
}

TEST(out_of_order_holds_the_commit_point)
{
    qn_offsets *t = NULL;
    qn_offsets_create(&t);
    for (int64_t o = 0; o < 5; o++) qn_offsets_take(t, o);
    CHECK_EQ_INT(qn_offsets_done(t, 3), 0);
    CHECK_EQ_INT(qn_offsets_done(t, 1), 0);
    CHECK_EQ_INT(qn_offsets_done(t, 4), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 0); /* 0 still running */
    CHECK_EQ_INT(qn_offsets_pending(t), 2);
    CHECK_EQ_INT(qn_offsets_done(t, 0), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 2); /* 2 still running */
    CHECK_EQ_INT(qn_offsets_done(t, 2), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 5);
    /* Taking more after everything drained continues from there. */
    CHECK_EQ_INT(qn_offsets_take(t, 5), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 5);
    qn_offsets_destroy(&t);
}

TEST(gaps_and_rejections)
{
    qn_offsets *t = NULL;
    qn_offsets_create(&t);
    CHECK_EQ_INT(qn_offsets_take(t, 10), 0);
    CHECK_EQ_INT(qn_offsets_take(t, 13), 0); /* 11, 12: transaction markers, say */
    CHECK_EQ_INT(qn_offsets_take(t, 13), QN_EINVAL);
    CHECK_EQ_INT(qn_offsets_take(t, 12), QN_EINVAL);
    CHECK_EQ_INT(qn_offsets_take(t, -1), QN_EINVAL);
    CHECK_EQ_INT(qn_offsets_done(t, 11), QN_ENOTFOUND); /* never taken */
    CHECK_EQ_INT(qn_offsets_done(t, 99), QN_ENOTFOUND);
    CHECK_EQ_INT(qn_offsets_done(t, 13), 0);
    CHECK_EQ_INT(qn_offsets_done(t, 13), QN_ENOTFOUND); /* duplicate ack */
    CHECK_EQ_INT(qn_offsets_committable(t), 10);
    CHECK_EQ_INT(qn_offsets_done(t, 10), 0);
    CHECK_EQ_INT(qn_offsets_done(t, 10), QN_ENOTFOUND); /* released */
    CHECK_EQ_INT(qn_offsets_committable(t), 14);
    CHECK_EQ_INT(qn_offsets_last_taken(t), 13);
    qn_offsets_destroy(&t);
}

/* Growth while the ring has wrapped: take, release a prefix, take more. */
TEST(growth_across_wrap)
{
    qn_offsets *t = NULL;
    qn_offsets_create(&t);
    int64_t next = 0;
    for (int i = 0; i < 50; i++) qn_offsets_take(t, next++);
    for (int64_t o = 0; o < 40; o++) qn_offsets_done(t, o); /* head now at 40 */
    for (int i = 0; i < 5000; i++) CHECK_EQ_INT(qn_offsets_take(t, next++), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 40);
    CHECK_EQ_INT(qn_offsets_pending(t), 5010);
    for (int64_t o = next - 1; o >= 41; o--) CHECK_EQ_INT(qn_offsets_done(t, o), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), 40);
    CHECK_EQ_INT(qn_offsets_done(t, 40), 0);
    CHECK_EQ_INT(qn_offsets_committable(t), next);
    CHECK_EQ_INT(qn_offsets_pending(t), 0);
    qn_offsets_destroy(&t);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t xs(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Random interleavings of take and done (with gaps) against a naive model:
 * the commit point must always equal the lowest pending offset taken, or
 * one past the last taken. */
TEST(random_against_model)
{
    enum { N = 20000 };
    static int64_t offs[N];
    static uint8_t done[N];
    for (int round = 0; round < 20; round++) {
        qn_offsets *t = NULL;
        qn_offsets_create(&t);
        int ntaken = 0, ndone = 0, low = 0; /* low: first index not done */
        int64_t next = (int64_t)(xs() % 1000);
        memset(done, 0, sizeof done);
        int window = 1 + (int)(xs() % 300);
        int ok = 1;
        while (ok && ndone < N) {
            int can_take = ntaken < N, can_done = ndone < ntaken;
            if (can_take && (!can_done || (ntaken - ndone < window && xs() % 2))) {
                next += 1 + (xs() % 8 == 0 ? (int64_t)(xs() % 5) : 0); /* gaps */
                offs[ntaken++] = next;
                ok = qn_offsets_take(t, next) == 0;
            } else {
                /* Finish a random pending job among the recent ones. */
                int lo = ntaken - window > low ? ntaken - window : low;
                int k = lo + (int)(xs() % (uint64_t)(ntaken - lo));
                while (k < ntaken && done[k]) k++;
                if (k == ntaken) k = low;
                done[k] = 1;
                ndone++;
                ok = qn_offsets_done(t, offs[k]) == 0;
                while (low < ntaken && done[low]) low++;
            }
            CHECK(ok);
            int64_t expect = low < ntaken ? offs[low] : offs[ntaken - 1] + 1;
            if (qn_offsets_committable(t) != expect) {
                CHECK_EQ_INT(qn_offsets_committable(t), expect);
                ok = 0;
            }
            if (qn_offsets_pending(t) != ntaken - ndone) {
                CHECK_EQ_INT(qn_offsets_pending(t), ntaken - ndone);
                ok = 0;
            }
        }
        qn_offsets_destroy(&t);
    }
}

int main(void)
{
    RUN(empty);
    RUN(in_order);
    RUN(out_of_order_holds_the_commit_point);
    RUN(gaps_and_rejections);
    RUN(growth_across_wrap);
    RUN(random_against_model);
    return qn_test_done();
}
