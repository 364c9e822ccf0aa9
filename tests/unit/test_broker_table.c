/* test_broker_table.c: broker/table.c — queues, credit, the four policies,
 * what happens to requests held by a worker that goes away, the queue bound. */
#include "qn_test.h"

#include "error.h"
#include "table.h"

static qn_brk_table *mk(qn_policy p, int retries, int64_t qlimit)
{
    qn_brk_opts o = {.policy = p, .retries = retries, .queue_limit = qlimit, .liveness_ms = 300, .seed = 7};
    qn_brk_table *t = NULL;
    CHECK_EQ_INT(qn_brk_table_create(&o, &t), 0);
    return t;
}

static qn_brk_worker *add(qn_brk_table *t, qn_brk_service *s, const char *id, int credit)
{
    qn_brk_worker *w = NULL;
    CHECK_EQ_INT(qn_brk_worker_add(t, id, strlen(id), s, credit, 0, &w), 0);
    return w;
}

static int payload_frees;
static void count_free(void *p) { (void)p; payload_frees++; }

TEST(policy_names)
{
    qn_policy p;
    const char *names[] = {"lru", "round-robin", "random", "least-loaded"};
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(qn_policy_parse(names[i], &p), 0);
        CHECK_STR(qn_policy_name(p), names[i]);
    }
    CHECK_EQ_INT(qn_policy_parse("fastest", &p), QN_EINVAL);
    CHECK_EQ_INT(qn_policy_parse(NULL, &p), QN_EINVAL);
}

TEST(services_on_demand_and_gc)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 1, 10);
    CHECK(qn_brk_service_find(t, "echo", 4) == NULL);
    qn_brk_service *s, *s2;
    CHECK_EQ_INT(qn_brk_service_get(t, "echo", 4, &s), 0);
    CHECK_EQ_INT(qn_brk_service_get(t, "echo", 4, &s2), 0);
    CHECK(s == s2);
    CHECK_STR(s->name, "echo");
    CHECK_EQ_INT(qn_brk_service_count(t), 1);
    /* a service with a queued request or a worker survives gc */
    qn_brk_req *r;
    CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r), 0);
    qn_brk_service *other;
    CHECK_EQ_INT(qn_brk_service_get(t, "other", 5, &other), 0);
    CHECK_EQ_INT(qn_brk_service_gc(t), 1);
    CHECK(qn_brk_service_find(t, "other", 5) == NULL);
    CHECK(qn_brk_service_find(t, "echo", 4) == s);
    qn_brk_table_destroy(&t, count_free);
    CHECK(t == NULL);
}

TEST(fifo_and_one_at_a_time_without_credit)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 1, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_req *r[3];
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r[i]), 0);
    qn_brk_worker *w, *got = NULL;
    CHECK(qn_brk_next(t, s, &got) == NULL); /* no worker yet: stays queued */
    w = add(t, s, "w1", 1);
    CHECK(qn_brk_next(t, s, &got) == r[0]);
    CHECK(got == w);
    CHECK_EQ_INT(r[0]->attempts, 1);
    CHECK(qn_brk_next(t, s, &got) == NULL); /* credit 1 is used */
    CHECK_EQ_INT(s->queued, 2);
    CHECK(qn_brk_reply(t, w, r[1]->seq) == NULL); /* not held by w */
    CHECK(qn_brk_reply(t, w, r[0]->seq) == r[0]);
    qn_brk_req_free(&r[0]);
    CHECK(qn_brk_next(t, s, &got) == r[1]);
    CHECK_EQ_INT(w->held, 1);
    CHECK_EQ_INT(w->replies, 1);
    qn_brk_table_destroy(&t, NULL);
}

TEST(credit_bounds_held_requests)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 1, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *w = add(t, s, "w", 4), *got;
    qn_brk_req *r;
    for (int i = 0; i < 10; i++) qn_brk_submit(t, s, NULL, &r);
    int n = 0;
    qn_brk_req *held[10];
    while ((r = qn_brk_next(t, s, &got))) held[n++] = r;
    CHECK_EQ_INT(n, 4);
    CHECK_EQ_INT(w->held, 4);
    CHECK_EQ_INT(s->queued, 6);
    /* credit comes back one unit per reply, in any order */
    CHECK(qn_brk_reply(t, w, held[2]->seq) == held[2]);
    qn_brk_req_free(&held[2]);
    CHECK(qn_brk_next(t, s, &got) != NULL);
    CHECK(qn_brk_next(t, s, &got) == NULL);
    qn_brk_worker *dup;
    CHECK_EQ_INT(qn_brk_worker_add(t, "w", 1, s, 1, 0, &dup), QN_EINVAL);
    CHECK_EQ_INT(qn_brk_worker_add(t, "x", 1, s, 0, 0, &dup), QN_EINVAL);
    CHECK_EQ_INT(qn_brk_worker_add(t, "x", 1, s, QN_BRK_MAX_CREDIT + 1, 0, &dup), QN_EINVAL);
    payload_frees = 0;
    qn_brk_table_destroy(&t, count_free);
    CHECK_EQ_INT(payload_frees, 9); /* 4 held + 5 queued; one was freed above */
}

TEST(lru_prefers_the_longest_waiting)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 1, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *a = add(t, s, "a", 1), *b = add(t, s, "b", 1), *got;
    qn_brk_req *r1, *r2, *r3;
    qn_brk_submit(t, s, NULL, &r1);
    qn_brk_submit(t, s, NULL, &r2);
    CHECK(qn_brk_next(t, s, &got) == r1 && got == a); /* a READY first */
    CHECK(qn_brk_next(t, s, &got) == r2 && got == b);
    /* b answers before a: b has waited longest when the next arrives */
    qn_brk_reply(t, b, r2->seq);
    qn_brk_reply(t, a, r1->seq);
    qn_brk_submit(t, s, NULL, &r3);
    CHECK(qn_brk_next(t, s, &got) == r3 && got == b);
    qn_brk_req_free(&r1);
    qn_brk_req_free(&r2);
    qn_brk_table_destroy(&t, NULL);
}

TEST(round_robin_rotates)
{
    qn_brk_table *t = mk(QN_POLICY_ROUND_ROBIN, 1, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *w[3] = {add(t, s, "a", 10), add(t, s, "b", 10), add(t, s, "c", 10)}, *got;
    int count[3] = {0};
    qn_brk_req *r;
    for (int i = 0; i < 9; i++) {
        qn_brk_submit(t, s, NULL, &r);
        CHECK(qn_brk_next(t, s, &got) == r);
        CHECK(got == w[i % 3]);
        for (int k = 0; k < 3; k++) count[k] += got == w[k];
    }
    CHECK(count[0] == 3 && count[1] == 3 && count[2] == 3);
    /* a full worker is skipped, not waited for */
    qn_brk_worker *d = add(t, s, "d", 1);
    for (int i = 0; i < 4; i++) {
        qn_brk_submit(t, s, NULL, &r);
        qn_brk_next(t, s, &got);
    }
    CHECK_EQ_INT(d->held, 1);
    qn_brk_submit(t, s, NULL, &r);
    qn_brk_next(t, s, &got);
    CHECK(got != d);
    qn_brk_table_destroy(&t, NULL);
}

TEST(random_spreads_and_respects_credit)
{
    qn_brk_table *t = mk(QN_POLICY_RANDOM, 1, 100000);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *a = add(t, s, "a", 60000), *b = add(t, s, "b", 60000), *got;
    qn_brk_req *r;
    for (int i = 0; i < 4000; i++) {
        qn_brk_submit(t, s, NULL, &r);
        qn_brk_next(t, s, &got);
    }
    CHECK(a->held > 1700 && b->held > 1700);
    CHECK_EQ_INT(a->held + b->held, 4000);
    qn_brk_table_destroy(&t, NULL);

    t = mk(QN_POLICY_RANDOM, 1, 100);
    qn_brk_service_get(t, "svc", 3, &s);
    a = add(t, s, "a", 1);
    b = add(t, s, "b", 2);
    for (int i = 0; i < 5; i++) qn_brk_submit(t, s, NULL, &r);
    int n = 0;
    while (qn_brk_next(t, s, &got)) n++;
    CHECK_EQ_INT(n, 3);
    CHECK(a->held == 1 && b->held == 2);
    qn_brk_table_destroy(&t, NULL);
}

TEST(least_loaded_per_unit_of_credit)
{
    qn_brk_table *t = mk(QN_POLICY_LEAST_LOADED, 1, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *a = add(t, s, "a", 2), *b = add(t, s, "b", 8), *got;
    qn_brk_req *r;
    for (int i = 0; i < 10; i++) {
        qn_brk_submit(t, s, NULL, &r);
        /* the chosen worker was the least loaded relative to its credit
         * (or the other was full) */
        double la = a->held / 2.0, lb = b->held / 8.0;
        CHECK(qn_brk_next(t, s, &got) == r);
        if (got == a) CHECK(la <= lb || b->held == 8);
        else CHECK(lb <= la || a->held == 2);
        if (i == 0) CHECK(got == a); /* tie: the one READY first */
        if (i == 1) CHECK(got == b);
    }
    CHECK_EQ_INT(a->held, 2);
    CHECK_EQ_INT(b->held, 8);
    /* a worker that is done with its work gets the next one */
    qn_brk_req *held_a = a->held_head;
    qn_brk_reply(t, a, held_a->seq);
    qn_brk_req_free(&held_a);
    qn_brk_submit(t, s, NULL, &r);
    CHECK(qn_brk_next(t, s, &got) == r && got == a);
    qn_brk_table_destroy(&t, NULL);
}

TEST(dead_worker_requests_requeued_then_failed)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 1, 100); /* one retry: two attempts */
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *a = add(t, s, "a", 3), *got;
    qn_brk_req *r[4];
    for (int i = 0; i < 4; i++) qn_brk_submit(t, s, NULL, &r[i]);
    for (int i = 0; i < 3; i++) CHECK(qn_brk_next(t, s, &got) == r[i]);
    qn_brk_req *failed = NULL;
    CHECK_EQ_INT(qn_brk_worker_remove(t, &a, &failed), 3);
    CHECK(a == NULL && failed == NULL);
    CHECK(qn_brk_worker_find(t, "a", 1) == NULL);
    CHECK_EQ_INT(s->queued, 4);
    /* requeued at the front, in their order, ahead of the never-sent one */
    CHECK(s->q_head == r[0] && r[0]->next == r[1] && r[1]->next == r[2] && r[2]->next == r[3]);
    qn_brk_worker *b = add(t, s, "b", 2);
    CHECK(qn_brk_next(t, s, &got) == r[0] && got == b);
    CHECK(qn_brk_next(t, s, &got) == r[1]);
    CHECK_EQ_INT(r[0]->attempts, 2);
    /* b dies too: r0 and r1 have used their retry */
    CHECK_EQ_INT(qn_brk_worker_remove(t, &b, &failed), 0);
    int nf = 0;
    for (qn_brk_req *f = failed; f; f = f->next) {
        CHECK(f == r[0] || f == r[1]);
        nf++;
    }
    CHECK_EQ_INT(nf, 2);
    CHECK_EQ_INT(s->queued, 2);
    CHECK(s->q_head == r[2]);
    while (failed) {
        qn_brk_req *f = failed;
        failed = f->next;
        qn_brk_req_free(&f);
    }
    CHECK_EQ_INT(qn_brk_service_workers(s), 0);
    qn_brk_table_destroy(&t, NULL);
}

TEST(zero_retries_fail_at_once)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 0, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *a = add(t, s, "a", 1), *got;
    qn_brk_req *r, *failed = NULL;
    qn_brk_submit(t, s, NULL, &r);
    qn_brk_next(t, s, &got);
    CHECK_EQ_INT(qn_brk_worker_remove(t, &a, &failed), 0);
    CHECK(failed == r && r->next == NULL);
    qn_brk_req_free(&r);
    qn_brk_table_destroy(&t, NULL);
}

TEST(queue_limit)
{
    qn_brk_table *t = mk(QN_POLICY_LRU, 1, 3);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_req *r;
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r), 0);
    CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r), QN_EFULL);
    /* dispatched requests do not count against the bound */
    qn_brk_worker *w = add(t, s, "w", 2), *got;
    qn_brk_next(t, s, &got);
    qn_brk_next(t, s, &got);
    CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r), 0);
    CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r), 0);
    CHECK_EQ_INT(qn_brk_submit(t, s, NULL, &r), QN_EFULL);
    /* but requests of a dead worker are requeued past it, never dropped */
    qn_brk_req *failed = NULL;
    CHECK_EQ_INT(qn_brk_worker_remove(t, &w, &failed), 2);
    CHECK_EQ_INT(s->queued, 5);
    qn_brk_table_destroy(&t, NULL);
}

TEST(expiry_and_remove_order)
{
    qn_brk_table *t = mk(QN_POLICY_ROUND_ROBIN, 1, 100);
    qn_brk_service *s;
    qn_brk_service_get(t, "svc", 3, &s);
    qn_brk_worker *a = add(t, s, "a", 1), *b = add(t, s, "b", 1), *c = add(t, s, "c", 1);
    CHECK_EQ_INT(a->expiry_ms, 300);
    qn_brk_worker_seen(t, b, 1000);
    CHECK_EQ_INT(b->expiry_ms, 1300);
    int n = 0;
    for (qn_brk_worker *w = qn_brk_workers(t); w; w = w->gnext) n++;
    CHECK_EQ_INT(n, 3);
    qn_brk_req *failed = NULL;
    qn_brk_worker_remove(t, &b, &failed);
    CHECK(s->nworkers == 2 && s->workers[0] == a && s->workers[1] == c);
    CHECK(qn_brk_worker_find(t, "c", 1) == c);
    qn_brk_table_destroy(&t, NULL);
}

int main(void)
{
    RUN(policy_names);
    RUN(services_on_demand_and_gc);
    RUN(fifo_and_one_at_a_time_without_credit);
    RUN(credit_bounds_held_requests);
    RUN(lru_prefers_the_longest_waiting);
    RUN(round_robin_rotates);
    RUN(random_spreads_and_respects_credit);
    RUN(least_loaded_per_unit_of_credit);
    RUN(dead_worker_requests_requeued_then_failed);
    RUN(zero_retries_fail_at_once);
    RUN(queue_limit);
    RUN(expiry_and_remove_order);
    return qn_test_done();
}
