/* test_batcher.c: order, limits, delays, deadlines and concurrency of the
 * dynamic batcher, with jobs and models built by hand (no codec, no loader). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "batcher.h"
#include "error.h"
#include "qn_test.h"
#include "tensor.h"

static qn_model model_a, model_b;

static qn_job *mk(qn_model *m, int64_t rows, int prio, int64_t id)
{
    qn_job *j = calloc(1, sizeof *j);
    j->served_by = m;
    j->rows = rows;
    j->cols = 1;
    j->priority = prio;
    j->id.kind = QN_ID_INT;
    j->id.i = id;
    return j;
}

static qn_batcher *mkb(int64_t max_batch, int64_t delay_us, int64_t limit)
{
    qn_batcher_opts o = {max_batch, delay_us, limit};
    qn_batcher *b = NULL;
    CHECK_EQ_INT(qn_batcher_create(&o, &b), 0);
    return b;
}

static void free_batch_jobs(qn_batch *bt)
{
    for (int i = 0; i < bt->njobs; i++) free(bt->jobs[i]);
    for (int i = 0; i < bt->nexpired; i++) free(bt->expired[i]);
}

static void drain_and_destroy(qn_batcher *b)
{
    qn_batch bt = {0};
    qn_batcher_close(b);
    while (qn_batcher_pop(b, &bt) == 0) free_batch_jobs(&bt);
    qn_batch_free(&bt);
    qn_batcher_destroy(&b);
    CHECK(b == NULL);
}

TEST(bad_options)
{
    qn_batcher *b = NULL;
    qn_batcher_opts o = {0, 0, 10};
    CHECK_EQ_INT(qn_batcher_create(&o, &b), QN_EINVAL);
    o = (qn_batcher_opts){4, -1, 10};
    CHECK_EQ_INT(qn_batcher_create(&o, &b), QN_EINVAL);
    o = (qn_batcher_opts){4, 0, 0};
    CHECK_EQ_INT(qn_batcher_create(&o, &b), QN_EINVAL);
    CHECK(b == NULL);
}

TEST(priority_then_arrival)
{
    qn_batcher *b = mkb(100, 0, 1000);
    int prios[] = {2, 0, 1, 0, 2, 1};
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(qn_batcher_push(b, mk(&model_a, 1, prios[i], i)), 0);
    qn_batch bt = {0};
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), 0);
    CHECK_EQ_INT(bt.njobs, 6);
    CHECK(bt.model == &model_a);
    int64_t want[] = {1, 3, 2, 5, 0, 4};
    for (int i = 0; i < 6 && i < bt.njobs; i++) CHECK_EQ_INT(bt.jobs[i]->id.i, want[i]);
    free_batch_jobs(&bt);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

TEST(max_batch_rows_and_big_job_alone)
{
    qn_batcher *b = mkb(8, 0, 1000);
    CHECK_EQ_INT(qn_batcher_push(b, mk(&model_a, 3, 0, 1)), 0);
    CHECK_EQ_INT(qn_batcher_push(b, mk(&model_a, 3, 0, 2)), 0);
    CHECK_EQ_INT(qn_batcher_push(b, mk(&model_a, 3, 0, 3)), 0);  /* 9 rows: does not fit */
    CHECK_EQ_INT(qn_batcher_push(b, mk(&model_a, 20, 0, 4)), 0); /* bigger than a batch */
    qn_batch bt = {0};
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), 0);
    CHECK_EQ_INT(bt.njobs, 2);
    CHECK_EQ_INT(bt.rows, 6);
    free_batch_jobs(&bt);
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), 0);
    CHECK_EQ_INT(bt.njobs, 1);
    CHECK_EQ_INT(bt.jobs[0]->id.i, 3);
    free_batch_jobs(&bt);
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), 0);
    CHECK_EQ_INT(bt.njobs, 1);
    CHECK_EQ_INT(bt.rows, 20);
    free_batch_jobs(&bt);
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), QN_EAGAIN);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

TEST(queue_limit)
{
    qn_batcher *b = mkb(8, 0, 10);
    CHECK_EQ_INT(qn_batcher_push(b, mk(&model_a, 6, 0, 1)), 0);
    qn_job *j = mk(&model_a, 5, 0, 2);
    CHECK_EQ_INT(qn_batcher_push(b, j), QN_EFULL); /* caller keeps it */
    CHECK_EQ_INT(qn_batcher_queued_rows(b), 6);
    CHECK_EQ_INT(qn_batcher_push(b, mk(&model_b, 4, 0, 3)), 0);
    CHECK_EQ_INT(qn_batcher_queued_rows(b), 10);
    qn_job *huge = mk(&model_a, 11, 0, 4);
    qn_batch bt = {0};
    while (qn_batcher_try_pop(b, &bt) == 0) free_batch_jobs(&bt);
    CHECK_EQ_INT(qn_batcher_queued_rows(b), 0);
    /* Larger than the whole limit: never fits, a different answer from "full now". */
    CHECK_EQ_INT(qn_batcher_push(b, huge), QN_ETOOLARGE);
    CHECK_EQ_INT(qn_batcher_push(b, j), 0);
    free(huge);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

static int match_odd(const qn_job *j, void *ud)
{
    (void)ud;
    return j->id.i % 2 == 1;
}

TEST(remove_if_takes_only_queued_matches)
{
    qn_batcher *b = mkb(4, 0, 1000);
    /* Two models, mixed priorities, so removal must keep each heap's order. */
    for (int i = 0; i < 40; i++)
        CHECK_EQ_INT(qn_batcher_push(b, mk(i % 3 ? &model_a : &model_b, 1, (i * 7) % 5, i)), 0);
    qn_batch bt = {0};
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), 0); /* popped: out of reach of remove_if */
    int popped = bt.njobs, popped_odd = 0;
    for (int i = 0; i < bt.njobs; i++) popped_odd += (int)(bt.jobs[i]->id.i % 2);
    free_batch_jobs(&bt);
    qn_job **got = NULL;
    int n = -1;
    CHECK_EQ_INT(qn_batcher_remove_if(b, match_odd, NULL, &got, &n), 0);
    CHECK_EQ_INT(n, 20 - popped_odd);
    for (int i = 0; i < n; i++) {
        CHECK_EQ_INT(got[i]->id.i % 2, 1);
        free(got[i]);
    }
    free(got);
    CHECK_EQ_INT(qn_batcher_queued_rows(b), 40 - popped - n);
    /* What is left still comes out by priority, then arrival, within a model. */
    int left = 0;
    while (qn_batcher_try_pop(b, &bt) == 0) {
        for (int i = 0; i < bt.njobs; i++) {
            CHECK_EQ_INT(bt.jobs[i]->id.i % 2, 0);
            if (i > 0) {
                const qn_job *p = bt.jobs[i - 1], *j = bt.jobs[i];
                CHECK(p->priority < j->priority || (p->priority == j->priority && p->seq < j->seq));
            }
        }
        left += bt.njobs;
        free_batch_jobs(&bt);
    }
    CHECK_EQ_INT(left, 40 - popped - n);
    /* Nothing matches: no array. */
    CHECK_EQ_INT(qn_batcher_remove_if(b, match_odd, NULL, &got, &n), 0);
    CHECK_EQ_INT(n, 0);
    CHECK(got == NULL);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

TEST(models_do_not_mix)
{
    qn_batcher *b = mkb(100, 0, 1000);
    for (int i = 0; i < 6; i++) qn_batcher_push(b, mk(i % 2 ? &model_b : &model_a, 1, 0, i));
    qn_batch bt = {0};
    int seen_a = 0, seen_b = 0;
    while (qn_batcher_try_pop(b, &bt) == 0) {
        for (int i = 0; i < bt.njobs; i++) CHECK(bt.jobs[i]->served_by == bt.model);
        if (bt.model == &model_a) seen_a += bt.njobs; else seen_b += bt.njobs;
        free_batch_jobs(&bt);
    }
    CHECK_EQ_INT(seen_a, 3);
    CHECK_EQ_INT(seen_b, 3);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

TEST(deadline_expires_in_queue)
{
    qn_batcher *b = mkb(100, 0, 1000);
    qn_job *late = mk(&model_a, 1, 0, 1);
    late->deadline_ms = qn_wall_ms() - 1;
    qn_job *fine = mk(&model_a, 1, 0, 2);
    fine->deadline_ms = qn_wall_ms() + 60000;
    qn_batcher_push(b, late);
    qn_batcher_push(b, fine);
    qn_batcher_push(b, mk(&model_a, 1, 0, 3));
    qn_batch bt = {0};
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), 0);
    CHECK_EQ_INT(bt.nexpired, 1);
    CHECK_EQ_INT(bt.njobs, 2);
    if (bt.nexpired) CHECK_EQ_INT(bt.expired[0]->id.i, 1);
    free_batch_jobs(&bt);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

TEST(delay_waits_then_releases)
{
    qn_batcher *b = mkb(4, 30000, 1000); /* 30 ms */
    qn_batch bt = {0};
    qn_batcher_push(b, mk(&model_a, 1, 0, 1));
    CHECK_EQ_INT(qn_batcher_try_pop(b, &bt), QN_EAGAIN); /* not full, not old */
    uint64_t t0 = qn_now_ns();
    CHECK_EQ_INT(qn_batcher_pop(b, &bt), 0);
    uint64_t waited = qn_now_ns() - t0;
    CHECK(waited >= 20000000u); /* pushed before t0, so at least ~30 ms minus push->t0 */
    CHECK_EQ_INT(bt.njobs, 1);
    free_batch_jobs(&bt);
    /* A full batch goes at once. */
    for (int i = 0; i < 4; i++) qn_batcher_push(b, mk(&model_a, 1, 0, i));
    t0 = qn_now_ns();
    CHECK_EQ_INT(qn_batcher_pop(b, &bt), 0);
    CHECK(qn_now_ns() - t0 < 20000000u);
    CHECK_EQ_INT(bt.njobs, 4);
    free_batch_jobs(&bt);
    qn_batch_free(&bt);
    drain_and_destroy(b);
}

TEST(close_drains_then_closed)
{
    qn_batcher *b = mkb(4, 1000000, 1000); /* 1 s delay: close must not wait for it */
    qn_batcher_push(b, mk(&model_a, 1, 0, 1));
    qn_batcher_close(b);
    qn_job *j = mk(&model_a, 1, 0, 2);
    CHECK_EQ_INT(qn_batcher_push(b, j), QN_ECLOSED);
    free(j);
    qn_batch bt = {0};
    uint64_t t0 = qn_now_ns();
    CHECK_EQ_INT(qn_batcher_pop(b, &bt), 0);
    CHECK(qn_now_ns() - t0 < 100000000u);
    free_batch_jobs(&bt);
    CHECK_EQ_INT(qn_batcher_pop(b, &bt), QN_ECLOSED);
    qn_batch_free(&bt);
    qn_batcher_destroy(&b);
}

/* Producers and consumers on threads: every job comes out exactly once. */
#define NPROD 3
#define PER_PROD 20000
static qn_batcher *g_b;
static atomic_long g_popped, g_sum;

static void *producer(void *arg)
{
    long base = (long)(intptr_t)arg * PER_PROD;
    for (long i = 0; i < PER_PROD; i++) {
        qn_job *j = mk(i % 3 ? &model_a : &model_b, 1 + i % 3, (int)(i % 4), base + i);
        while (qn_batcher_push(g_b, j) == QN_EFULL) sched_yield();
    }
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    qn_batch bt = {0};
    while (qn_batcher_pop(g_b, &bt) == 0) {
        CHECK(bt.rows <= 16 || bt.njobs == 1);
        for (int i = 0; i < bt.njobs; i++) {
            atomic_fetch_add(&g_sum, bt.jobs[i]->id.i);
            atomic_fetch_add(&g_popped, 1);
        }
        free_batch_jobs(&bt);
    }
    qn_batch_free(&bt);
    return NULL;
}

TEST(threads_conserve_jobs)
{
    g_b = mkb(16, 50, 500);
    pthread_t p[NPROD], c[2];
    for (int i = 0; i < 2; i++) pthread_create(&c[i], NULL, consumer, NULL);
    for (int i = 0; i < NPROD; i++) pthread_create(&p[i], NULL, producer, (void *)(intptr_t)i);
    for (int i = 0; i < NPROD; i++) pthread_join(p[i], NULL);
    qn_batcher_close(g_b);
    for (int i = 0; i < 2; i++) pthread_join(c[i], NULL);
    long n = (long)NPROD * PER_PROD;
    CHECK_EQ_INT(atomic_load(&g_popped), n);
    CHECK_EQ_INT(atomic_load(&g_sum), n * (n - 1) / 2);
    qn_batcher_destroy(&g_b);
}

int main(void)
{
    RUN(bad_options);
    RUN(priority_then_arrival);
    RUN(max_batch_rows_and_big_job_alone);
    RUN(queue_limit);
    RUN(remove_if_takes_only_queued_matches);
    RUN(models_do_not_mix);
    RUN(deadline_expires_in_queue);
    RUN(delay_waits_then_releases);
    RUN(close_drains_then_closed);
    RUN(threads_conserve_jobs);
    return qn_test_done();
}
