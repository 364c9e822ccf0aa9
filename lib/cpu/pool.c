/* pool.c: the intra-op helper pool (pool.h). One job at a time: the caller
 * publishes (fn, arg, nchunks) under a new generation number, bumps the futex
 * word gen, and wakes sleeping helpers; everyone then claims chunks from one
 * 64-bit ticket, generation in the high half and next chunk in the low half,
 * so that a helper still working from an old generation can never claim a
 * chunk of a newer job (its compare-and-swap fails). Linux futexes: the
 * sleeping side must check the word it sleeps on atomically. */
#include "cpu/pool.h"

#include <linux/futex.h>
#include <signal.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "error.h"

struct qn_cpu_pool {
    int nhelpers;
    int64_t spin_ns;
    pthread_t *tids;
    _Atomic uint32_t gen;      /* futex word: the current job's generation */
    _Atomic uint64_t ticket;   /* gen << 32 | next unclaimed chunk */
    _Atomic uint32_t done;     /* chunks finished in the current job */
    _Atomic int sleepers;      /* helpers in (or entering) FUTEX_WAIT */
    _Atomic int stop;
    atomic_flag busy;          /* held by the one caller in qn_cpu_pool_run */
    /* the current job; atomic so a late helper's read is not a data race
     * (it then fails its claim and never uses what it read: work()) */
    _Atomic(qn_cpu_pool_fn) fn;
    _Atomic(void *) arg;
    _Atomic uint32_t nchunks;
    uint32_t last_gen;         /* caller-only (under busy) */
    _Atomic int64_t jobs, helped; /* qn_cpu_pool_stats */
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *w, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/* Claims and runs chunks of generation g until none is left or a newer job
 * has replaced it. Returns how many chunks this thread ran. */
static uint32_t work(qn_cpu_pool *p, uint32_t g)
{
    /* acquire: if any of these is already the NEXT job's (stored with
     * release after that job closed the ticket), the ticket load below sees
     * the closed ticket of the next generation and we claim nothing; so a
     * successful claim of generation g always runs g's fn, arg and nchunks */
    qn_cpu_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_acquire);
    void *arg = atomic_load_explicit(&p->arg, memory_order_acquire);
    uint32_t n = atomic_load_explicit(&p->nchunks, memory_order_acquire);
    uint32_t ran = 0;
    uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(t >> 32) != g || (uint32_t)t >= n) break;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue; /* t reloaded */
        fn(arg, (int64_t)(uint32_t)t);
        ran++;
        /* release: the chunk's writes (and this thread's reads of the job)
         * happen before the caller sees the count complete */
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    }
    return ran;
}

/* Waits for gen to move past seen: spins spin_ns, then sleeps. Dekker with
 * the caller (both seq_cst): either the caller sees sleepers > 0 and wakes,
 * or this FUTEX_WAIT sees the new gen and returns at once. */
static uint32_t wait_gen(qn_cpu_pool *p, uint32_t seen)
{
    int64_t t0 = now_ns();
    for (uint32_t i = 1;; i++) {
        uint32_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen) return g;
        cpu_relax();
        if ((i & 63) == 0 && now_ns() - t0 > p->spin_ns) {
            atomic_fetch_add(&p->sleepers, 1);
            futex_wait(&p->gen, seen);
            atomic_fetch_sub(&p->sleepers, 1);
            t0 = now_ns();
        }
    }
}

static void *helper_main(void *vp)
{
    qn_cpu_pool *p = vp;
    qn_thread_name("qn-intraop");
    uint32_t seen = 0;
    for (;;) {
        seen = wait_gen(p, seen);
        if (atomic_load(&p->stop)) break;
        (void)work(p, seen);
    }
    return NULL;
}

/* Stops the first n helpers of p and frees p. */
static void teardown(qn_cpu_pool *p, int n)
{
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    futex_wake_all(&p->gen);
    for (int i = 0; i < n; i++) pthread_join(p->tids[i], NULL);
    free(p->tids);
    free(p);
}

int qn_cpu_pool_create(int helpers, int spin_us, qn_cpu_pool **out)
{
    if (!out) return QN_EINVAL;
    *out = NULL;
    if (helpers < 1 || helpers > 256 || spin_us < 0 || spin_us > 1000000) return QN_EINVAL;
    qn_cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return QN_ENOMEM;
    p->tids = calloc((size_t)helpers, sizeof *p->tids);
    if (!p->tids) {
        free(p);
        return QN_ENOMEM;
    }
    p->nhelpers = helpers;
    p->spin_ns = (int64_t)spin_us * 1000;
    atomic_flag_clear(&p->busy);
    /* Helpers must not take the process's signals (the worker waits for
     * SIGTERM/SIGINT on its main thread): block them all while creating. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int started = 0;
    for (; started < helpers; started++)
        if (pthread_create(&p->tids[started], NULL, helper_main, p) != 0) break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started < helpers) {
        teardown(p, started);
        return QN_EIO;
    }
    *out = p;
    return 0;
}

void qn_cpu_pool_destroy(qn_cpu_pool **pp)
{
    if (!pp || !*pp) return;
    teardown(*pp, (*pp)->nhelpers);
    *pp = NULL;
}

int qn_cpu_pool_helpers(const qn_cpu_pool *p) { return p ? p->nhelpers : 0; }

void qn_cpu_pool_stats(const qn_cpu_pool *p, int64_t *jobs, int64_t *helped)
{
    if (jobs) *jobs = p ? atomic_load(&p->jobs) : 0;
    if (helped) *helped = p ? atomic_load(&p->helped) : 0;
}

int64_t qn_cpu_pool_run(qn_cpu_pool *p, qn_cpu_pool_fn fn, void *arg, int64_t nchunks)
{
    if (nchunks < 1 || !fn) return 0;
    if (!p || nchunks > INT32_MAX || atomic_flag_test_and_set_explicit(&p->busy, memory_order_acquire)) {
        for (int64_t c = 0; c < nchunks; c++) fn(arg, c);
        return 0;
    }
    uint32_t g = ++p->last_gen;
    if (g == 0) g = ++p->last_gen; /* 0 is the helpers' "seen nothing yet" */
    /* Close the ticket first (new generation, no chunk claimable): a helper
     * still in the previous job that reads this job's fields below then
     * fails its claim instead of claiming with a mix of two jobs' fields. */
    atomic_store(&p->ticket, (uint64_t)g << 32 | UINT32_MAX);
    atomic_store_explicit(&p->fn, fn, memory_order_release);
    atomic_store_explicit(&p->arg, arg, memory_order_release);
    atomic_store_explicit(&p->nchunks, (uint32_t)nchunks, memory_order_release);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ticket, (uint64_t)g << 32, memory_order_release);
    atomic_store(&p->gen, g); /* seq_cst: pairs with the helpers' sleepers++ */
    if (atomic_load(&p->sleepers) > 0) futex_wake_all(&p->gen);
    uint32_t mine = work(p, g);
    /* What is left is chunks a helper already claimed: spin, yielding the
     * core after a while in case that helper is preempted. */
    for (uint32_t i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < (uint32_t)nchunks; i++) {
        if (i < 4096) cpu_relax();
        else sched_yield();
    }
    int64_t helped = nchunks - (int64_t)mine;
    atomic_fetch_add_explicit(&p->jobs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->helped, helped, memory_order_relaxed);
    atomic_flag_clear_explicit(&p->busy, memory_order_release);
    return helped;
}
