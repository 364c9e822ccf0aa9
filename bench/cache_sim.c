/* cache_sim.c: trace-driven hit ratios of the result cache's eviction policy
 * against LRU and Belady's optimum (OPT, offline: evict the entry used
 * farthest in the future), on Zipf traces and on "hot set, then a cold scan
 * larger than the cache". The LFU policy here is the store's: the same
 * counter functions (qn_lfu_incr / qn_lfu_decay from lib/cache.c), new
 * entries at QN_LFU_INIT_VAL, eviction by sampling 8 keys into a pool of 16
 * and dropping the lowest (counter, then longest idle), from the high
 * watermark down to the low one (low/high = 60/75 = 0.8, as the store).
 * "LFU-1" evicts one entry at a time instead (Redis's way), to show what the
 * watermark batches cost. Time is counted in requests; a "minute" of LFU
 * aging is --minute requests.
 *
 * --real DIR also drives the real store (qn_cache, LMDB) in DIR through a
 * scan trace and a Zipf trace sized to its capacity, flushing every 64
 * requests, and prints its hit ratio beside the simulated ones at the same
 * capacity.
 *
 * Usage: cache_sim [--requests N] [--keys N] [--minute N] [--seed N] [--real DIR] */
#include "cache.h"
#include "log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- RNG */
static uint64_t g_rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
static double rnd_unit(void) { return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0); }

/* ---- traces */
typedef struct trace {
    uint32_t *k;
    size_t n;
    uint32_t nkeys;  /* key ids are < nkeys */
    size_t measure_from; /* hit ratio counted from this request on */
} trace;

static trace zipf_trace(size_t n, uint32_t keys, double alpha)
{
    double *cdf = malloc(keys * sizeof *cdf), sum = 0;
    for (uint32_t i = 0; i < keys; i++) sum += 1.0 / pow((double)(i + 1), alpha);
    double acc = 0;
    for (uint32_t i = 0; i < keys; i++) {
        acc += 1.0 / pow((double)(i + 1), alpha) / sum;
        cdf[i] = acc;
    }
    /* ranks map to key ids through a random permutation: key order means
     * nothing to any policy, but it keeps the trace honest */
    uint32_t *perm = malloc(keys * sizeof *perm);
    for (uint32_t i = 0; i < keys; i++) perm[i] = i;
    for (uint32_t i = keys - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    trace t = {malloc(n * sizeof(uint32_t)), n, keys, n / 10}; /* first 10%: warm-up */
    for (size_t i = 0; i < n; i++) {
        double u = rnd_unit();
        uint32_t lo = 0, hi = keys - 1;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (cdf[mid] < u) lo = mid + 1;
            else hi = mid;
        }
        t.k[i] = perm[lo];
    }
    free(cdf);
    free(perm);
    return t;
}

/* hot keys [0, hot) requested uniformly, then a scan of `scan` new keys
 * once each (mixed 1:1 with hot requests when mix), then the hot set again;
 * measured over the last phase. */
static trace scan_trace(uint32_t hot, uint32_t scan, int mix)
{
    size_t p1 = (size_t)hot * 20, p3 = (size_t)hot * 10;
    size_t n = p1 + (mix ? 2 * (size_t)scan : scan) + p3;
    trace t = {malloc(n * sizeof(uint32_t)), 0, hot + scan, 0};
    for (size_t i = 0; i < p1; i++) t.k[t.n++] = (uint32_t)(rnd() % hot);
    for (uint32_t i = 0; i < scan; i++) {
        t.k[t.n++] = hot + i;
        if (mix) t.k[t.n++] = (uint32_t)(rnd() % hot);
    }
    t.measure_from = t.n;
    for (size_t i = 0; i < p3; i++) t.k[t.n++] = (uint32_t)(rnd() % hot);
    return t;
}

/* ---- LRU: intrusive list over key ids */
static double run_lru(const trace *t, size_t cap)
{
    int32_t *prev = malloc(t->nkeys * sizeof(int32_t)), *next = malloc(t->nkeys * sizeof(int32_t));
    char *in = calloc(t->nkeys, 1);
    int32_t head = -1, tail = -1; /* head: most recent */
    size_t count = 0, hits = 0, total = 0;
    for (size_t i = 0; i < t->n; i++) {
        int32_t k = (int32_t)t->k[i];
        int hit = in[k];
        if (i >= t->measure_from) { total++; hits += (size_t)hit; }
        if (hit) { /* unlink */
            if (prev[k] >= 0) next[prev[k]] = next[k]; else head = next[k];
            if (next[k] >= 0) prev[next[k]] = prev[k]; else tail = prev[k];
            count--;
        } else if (count == cap) { /* evict the tail */
            int32_t v = tail;
            tail = prev[v];
            if (tail >= 0) next[tail] = -1; else head = -1;
            in[v] = 0;
            count--;
        }
        prev[k] = -1;
        next[k] = head;
        if (head >= 0) prev[head] = k;
        head = k;
        if (tail < 0) tail = k;
        in[k] = 1;
        count++;
    }
    free(prev);
    free(next);
    free(in);
    return total ? (double)hits / (double)total : 0;
}

/* ---- OPT (Belady's MIN): evict the resident key whose next use is farthest */
typedef struct hent { size_t nu; uint32_t k; } hent;
static void heap_push(hent *h, size_t *n, hent x)
{
    size_t i = (*n)++;
    while (i && h[(i - 1) / 2].nu < x.nu) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = x;
}
static hent heap_pop(hent *h, size_t *n)
{
    hent top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        hent best = x;
        if (l < *n && h[l].nu > best.nu) { m = l; best = h[l]; }
        if (r < *n && h[r].nu > best.nu) { m = r; }
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = x;
    return top;
}
static double run_opt(const trace *t, size_t cap)
{
    size_t *nextuse = malloc(t->n * sizeof(size_t)), *last = malloc(t->nkeys * sizeof(size_t));
    for (uint32_t k = 0; k < t->nkeys; k++) last[k] = SIZE_MAX;
    for (size_t i = t->n; i-- > 0;) {
        nextuse[i] = last[t->k[i]];
        last[t->k[i]] = i;
    }
    size_t *cur = malloc(t->nkeys * sizeof(size_t)); /* resident key -> its next use */
    char *in = calloc(t->nkeys, 1);
    hent *h = malloc((t->n + 1) * sizeof *h);
    size_t hn = 0, count = 0, hits = 0, total = 0;
    for (size_t i = 0; i < t->n; i++) {
        uint32_t k = t->k[i];
        int hit = in[k];
        if (i >= t->measure_from) { total++; hits += (size_t)hit; }
        if (!hit) {
            if (count == cap) {
                for (;;) { /* lazy deletion: skip stale heap entries */
                    hent e = heap_pop(h, &hn);
                    if (in[e.k] && cur[e.k] == e.nu) { in[e.k] = 0; count--; break; }
                }
            }
            in[k] = 1;
            count++;
        }
        cur[k] = nextuse[i];
        heap_push(h, &hn, (hent){nextuse[i], k});
    }
    free(nextuse);
    free(last);
    free(cur);
    free(in);
    free(h);
    return total ? (double)hits / (double)total : 0;
}

/* ---- LFU as the store does it */
typedef struct cand { uint32_t k; uint8_t score; size_t ldt; } cand;
static int cand_before(const cand *a, const cand *b)
{
    return a->score != b->score ? a->score < b->score : a->ldt < b->ldt;
}
static double run_lfu(const trace *t, size_t cap, int watermarks, size_t minute, uint32_t decay_min)
{
    uint8_t *cnt = calloc(t->nkeys, 1);
    size_t *ldt = calloc(t->nkeys, sizeof(size_t));
    int32_t *pos = malloc(t->nkeys * sizeof(int32_t)); /* index in res, -1 if absent */
    uint32_t *res = malloc((cap + 1) * sizeof(uint32_t));
    for (uint32_t k = 0; k < t->nkeys; k++) pos[k] = -1;
    size_t count = 0, hits = 0, total = 0;
    size_t low = watermarks ? cap * 4 / 5 : cap;
    for (size_t i = 0; i < t->n; i++) {
        uint32_t k = t->k[i];
        uint32_t now_min = (uint32_t)(i / minute);
        int hit = pos[k] >= 0;
        if (i >= t->measure_from) { total++; hits += (size_t)hit; }
        if (hit) {
            uint8_t c = qn_lfu_decay(cnt[k], (uint32_t)(ldt[k] / minute), now_min, decay_min);
            cnt[k] = qn_lfu_incr(c, 10, rnd_unit());
            ldt[k] = i;
            continue;
        }
        cnt[k] = QN_LFU_INIT_VAL;
        ldt[k] = i;
        pos[k] = (int32_t)count;
        res[count++] = k;
        if (count <= cap) continue;
        cand pool[16];
        int np = 0;
        while (count > low) {
            for (int s = 0; s < 8; s++) {
                uint32_t x = res[rnd() % count];
                cand c = {x, qn_lfu_decay(cnt[x], (uint32_t)(ldt[x] / minute), now_min, decay_min), ldt[x]};
                int dup = 0;
                for (int j = 0; j < np; j++) dup |= pool[j].k == x;
                if (dup) continue;
                int p = np;
                while (p > 0 && cand_before(&c, &pool[p - 1])) p--;
                if (p >= 16) continue;
                int lastp = np < 16 ? np : 15;
                memmove(&pool[p + 1], &pool[p], (size_t)(lastp - p) * sizeof *pool);
                pool[p] = c;
                if (np < 16) np++;
            }
            uint32_t v = pool[0].k;
            memmove(&pool[0], &pool[1], (size_t)(--np) * sizeof *pool);
            int32_t pv = pos[v];
            res[pv] = res[--count];
            pos[res[pv]] = pv;
            pos[v] = -1;
        }
    }
    free(cnt);
    free(ldt);
    free(pos);
    free(res);
    return total ? (double)hits / (double)total : 0;
}

static void row(const char *name, const trace *t, size_t cap, size_t minute)
{
    printf("| %-34s | %7zu | %6.4f | %6.4f | %6.4f | %6.4f |\n", name, cap, run_lru(t, cap),
           run_lfu(t, cap, 1, minute, 1), run_lfu(t, cap, 0, minute, 1), run_opt(t, cap));
    fflush(stdout);
}

/* ---- the real store through a trace */
static double run_real(const char *base, const trace *t, size_t *entries_max)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/cache_sim.XXXXXX", base);
    if (!mkdtemp(dir)) return -1;
    qn_cache_opts o;
    qn_cache_opts_default(&o);
    o.tick_ms = 0;
    qn_cache *c = NULL;
    if (qn_cache_open(dir, 4, &o, &c)) return -1;
    size_t hits = 0, total = 0;
    *entries_max = 0;
    for (size_t i = 0; i < t->n; i++) {
        float in[1] = {(float)t->k[i]}, out[16];
        uint64_t key[2];
        qn_cache_key("sim", 1, 1, 1, in, key);
        int hit = qn_cache_get_into(c, key, 1, 16, out) == 0;
        if (i >= t->measure_from) { total++; hits += (size_t)hit; }
        if (!hit) {
            for (int j = 0; j < 16; j++) out[j] = in[0];
            qn_cache_put(c, key, 1, 16, out);
        }
        if (i % 64 == 63) {
            qn_cache_flush(c);
            if (i % 4096 == 4095) {
                qn_cache_stats st;
                qn_cache_stats_get(c, &st);
                if (st.entries > *entries_max) *entries_max = (size_t)st.entries;
            }
        }
    }
    qn_cache_close(&c);
    char p[4200];
    const char *names[] = {"data.mdb", "lock.mdb", "quern.lock"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
    return total ? (double)hits / (double)total : 0;
}

int main(int argc, char **argv)
{
    size_t n = 1000000, minute = 100000;
    uint32_t keys = 100000;
    const char *real = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--requests")) n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--keys")) keys = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--minute")) minute = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--seed")) g_rng = strtoull(argv[i + 1], NULL, 10) | 1;
        else if (!strcmp(argv[i], "--real")) real = argv[i + 1];
        else { fprintf(stderr, "usage: cache_sim [--requests N] [--keys N] [--minute N] [--seed N] [--real DIR]\n"); return 2; }
    }
    if (minute == 0) minute = 1;
    qn_log_set_level(QN_LOG_WARN);
    printf("cache_sim: %zu requests, %u keys, LFU minute = %zu requests, decay 1/minute, log factor 10\n", n,
           keys, minute);
    printf("hit ratios (Zipf: after 10%% warm-up; scans: over the hot phase after the scan)\n\n");
    printf("| %-34s | %7s | %6s | %6s | %6s | %6s |\n", "trace", "cache", "LRU", "LFU", "LFU-1", "OPT");
    printf("|%s|%s|%s|%s|%s|%s|\n", "------------------------------------", "---------", "--------",
           "--------", "--------", "--------");
    double alphas[] = {0.8, 1.0, 1.2};
    for (int a = 0; a < 3; a++) {
        trace t = zipf_trace(n, keys, alphas[a]);
        char name[64];
        for (int s = 0; s < 2; s++) {
            size_t cap = s ? keys / 10 : keys / 100;
            snprintf(name, sizeof name, "zipf %.1f, cache %d%% of keys", alphas[a], s ? 10 : 1);
            row(name, &t, cap, minute);
        }
        free(t.k);
    }
    size_t cap = keys / 100;
    trace s1 = scan_trace((uint32_t)cap / 2, (uint32_t)cap * 3, 0);
    row("hot 50% of cache, scan 3x cache", &s1, cap, minute);
    free(s1.k);
    trace s2 = scan_trace((uint32_t)cap / 2, (uint32_t)cap * 3, 1);
    row("same, scan mixed 1:1 with hot", &s2, cap, minute);
    free(s2.k);
    trace s3 = scan_trace((uint32_t)(cap * 9 / 10), (uint32_t)cap * 3, 1);
    row("hot 90% of cache, mixed scan 3x", &s3, cap, minute);
    free(s3.k);

    if (real) {
        /* the store: a 4 MiB cache holds ~8000 1x16 entries; size the traces to it */
        printf("\nreal store (qn_cache, 4 MiB, flush every 64 requests) vs simulation at its peak entries:\n\n");
        printf("| %-34s | %7s | %6s | %6s | %6s | %6s |\n", "trace", "entries", "real", "LRU", "LFU", "OPT");
        printf("|%s|%s|%s|%s|%s|%s|\n", "------------------------------------", "---------", "--------",
               "--------", "--------", "--------");
        trace ts = scan_trace(4000, 30000, 1);
        size_t emax;
        double hr = run_real(real, &ts, &emax);
        printf("| %-34s | %7zu | %6.4f | %6.4f | %6.4f | %6.4f |\n", "hot 4000, mixed scan 30000", emax, hr,
               run_lru(&ts, emax), run_lfu(&ts, emax, 1, minute, 1), run_opt(&ts, emax));
        free(ts.k);
        trace tz = zipf_trace(400000, 80000, 1.0);
        hr = run_real(real, &tz, &emax);
        printf("| %-34s | %7zu | %6.4f | %6.4f | %6.4f | %6.4f |\n", "zipf 1.0, 80000 keys, 400k req", emax, hr,
               run_lru(&tz, emax), run_lfu(&tz, emax, 1, minute, 1), run_opt(&tz, emax));
        free(tz.k);
    }
    return 0;
}
