/* bench_cache.c: what the result cache costs, measured on a real LMDB
 * environment: one hit (key hash + read txn + checksum + copy), one miss, the
 * LMDB floor under it (renew + mdb_get + reset), a batched insert at several
 * batch sizes with and without fsync, a hits-only flush of frequency bumps,
 * and one 64-row entry against 64 one-row entries (why a job is one entry).
 * Each figure is the median of --reps runs. Usage:
 *   bench_cache [--dir DIR] [--entries N] [--lookups N] [--reps N] */
#include "cache.h"
#include "log.h"
#include "tensor.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static double now_us(void) { return (double)qn_now_ns() / 1000.0; }

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t rng = 0x1234567;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* The job input of entry i: a 1x256 row (the 256->1024->1024->16 model). */
static void input_of(uint64_t i, float *in, int n)
{
    for (int j = 0; j < n; j++) in[j] = (float)((i * 2654435761u + (uint64_t)j) % 1000) * 0.001f;
    in[0] = (float)(i & 0xffffff); /* exact: every i its own input */
    if (n > 1) in[1] = (float)(i >> 24);
}

static void key_of(uint64_t i, const char *model, uint64_t k[2])
{
    float in[256];
    input_of(i, in, 256);
    qn_cache_key(model, 1, 1, 256, in, k);
}

static char *mkdir_in(const char *base, const char *tag)
{
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/%s.XXXXXX", base, tag);
    if (!mkdtemp(p)) { perror("mkdtemp"); exit(2); }
    return p;
}

static void rm_env(const char *dir)
{
    char p[4200];
    const char *names[] = {"data.mdb", "lock.mdb", "quern.lock"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(int argc, char **argv)
{
    const char *base = "/tmp";
    uint64_t n_entries = 100000, n_lookups = 1000000;
    int reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--dir")) base = argv[i + 1];
        else if (!strcmp(argv[i], "--entries")) n_entries = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--lookups")) n_lookups = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else { fprintf(stderr, "usage: bench_cache [--dir DIR] [--entries N] [--lookups N] [--reps N]\n"); return 2; }
    }
    if (reps < 1 || reps > 99) reps = 5;
    qn_log_set_level(QN_LOG_WARN);
    qn_cache_opts o;
    qn_cache_opts_default(&o);
    o.tick_ms = 0; /* flushes are ours, so that their cost is measured here */

    char *dir = mkdir_in(base, "bench_cache");
    qn_cache *c = NULL;
    if (qn_cache_open(dir, 256, &o, &c)) return 1;
    float out[16], got[16], in[256];
    uint64_t k[2];
    for (uint64_t i = 0; i < n_entries; i++) {
        key_of(i, "mlp", k);
        for (int j = 0; j < 16; j++) out[j] = (float)(i + (uint64_t)j);
        qn_cache_put(c, k, 1, 16, out);
        if (i % 256 == 255) qn_cache_flush(c);
    }
    qn_cache_flush(c);
    qn_cache_stats st;
    qn_cache_stats_get(c, &st);
    printf("bench_cache: %llu entries of 1x16 f32 in a 256 MiB cache (%s), %llu lookups x %d reps, medians\n",
           (unsigned long long)st.entries, dir, (unsigned long long)n_lookups, reps);

    /* pre-computed keys: the hit figure is LMDB + checksum + copy + bump */
    uint64_t nk = n_lookups < 65536 ? n_lookups : 65536;
    uint64_t(*keys)[2] = malloc(nk * sizeof *keys);
    for (uint64_t i = 0; i < nk; i++) key_of(next_u64() % n_entries, "mlp", keys[i]);
    uint64_t(*mkeys)[2] = malloc(nk * sizeof *mkeys);
    for (uint64_t i = 0; i < nk; i++) key_of(n_entries + i, "mlp", mkeys[i]);

    double r_key16[99], r_key256[99], r_hit[99], r_hit_alloc[99], r_miss[99], r_bumpflush[99];
    double r_sess[2][99]; /* hits in reader sessions of 32 and of 256 lookups */
    const uint64_t sess_len[2] = {32, 256};
    for (int r = 0; r < reps; r++) {
        input_of(7, in, 256);
        double t0 = now_us();
        for (uint64_t i = 0; i < n_lookups; i++) { in[0] = (float)i; qn_cache_key("mlp", 1, 1, 256, in, k); }
        r_key256[r] = (now_us() - t0) / (double)n_lookups;
        t0 = now_us();
        for (uint64_t i = 0; i < n_lookups; i++) { in[0] = (float)i; qn_cache_key("mlp", 1, 1, 16, in, k); }
        r_key16[r] = (now_us() - t0) / (double)n_lookups;

        uint64_t hits = 0;
        t0 = now_us();
        for (uint64_t i = 0; i < n_lookups; i++) hits += qn_cache_get_into(c, keys[i % nk], 1, 16, got) == 0;
        r_hit[r] = (now_us() - t0) / (double)n_lookups;
        if (hits != n_lookups) { fprintf(stderr, "expected all hits, got %llu\n", (unsigned long long)hits); return 1; }
        /* the same lookups in reader sessions (one read txn and one locked
         * bump step per session, as the direct path's receive burst) */
        for (int s = 0; s < 2; s++) {
            qn_cache_flush(c);
            hits = 0;
            t0 = now_us();
            for (uint64_t i = 0; i < n_lookups;) {
                qn_cache_reader *rd;
                if (qn_cache_reader_begin(c, &rd)) { fprintf(stderr, "reader_begin failed\n"); return 1; }
                for (uint64_t j = 0; j < sess_len[s] && i < n_lookups; j++, i++)
                    hits += qn_cache_reader_get_into(rd, keys[i % nk], 1, 16, got) == 0;
                qn_cache_reader_end(&rd);
            }
            r_sess[s][r] = (now_us() - t0) / (double)n_lookups;
            if (hits != n_lookups) { fprintf(stderr, "sessions: expected all hits\n"); return 1; }
        }
        qn_cache_flush(c);
        /* a hits-only flush: the bumps of 1024 hits on distinct keys */
        for (uint64_t i = 0; i < 1024; i++) qn_cache_get_into(c, keys[(i * 61) % nk], 1, 16, got);
        t0 = now_us();
        qn_cache_flush(c);
        r_bumpflush[r] = (now_us() - t0) / 1024.0;

        t0 = now_us();
        for (uint64_t i = 0; i < n_lookups; i++) {
            float *p;
            int64_t rr, cc;
            if (qn_cache_get(c, keys[i % nk], &p, &rr, &cc) == 0) free(p);
        }
        r_hit_alloc[r] = (now_us() - t0) / (double)n_lookups;
        qn_cache_flush(c);
        t0 = now_us();
        for (uint64_t i = 0; i < n_lookups; i++) qn_cache_get_into(c, mkeys[i % nk], 1, 16, got);
        r_miss[r] = (now_us() - t0) / (double)n_lookups;
    }
    printf("  key hash, 1x16 input            %8.3f us\n", median(r_key16, reps));
    printf("  key hash, 1x256 input           %8.3f us\n", median(r_key256, reps));
    printf("  hit, get_into 1x16 output       %8.3f us\n", median(r_hit, reps));
    printf("  hit, reader session of 32       %8.3f us\n", median(r_sess[0], reps));
    printf("  hit, reader session of 256      %8.3f us\n", median(r_sess[1], reps));
    printf("  hit, get (malloc) 1x16 output   %8.3f us\n", median(r_hit_alloc, reps));
    printf("  miss                            %8.3f us\n", median(r_miss, reps));
    printf("  bump write (1024 in one flush)  %8.3f us per bump\n", median(r_bumpflush, reps));

    /* one 64-row entry vs 64 one-row entries */
    double r_one[99], r_rows[99];
    {
        float big[64 * 16];
        for (int j = 0; j < 64 * 16; j++) big[j] = (float)j;
        uint64_t bk[2];
        float bin[64 * 4];
        for (int j = 0; j < 64 * 4; j++) bin[j] = (float)j;
        qn_cache_key("mlp64", 1, 64, 4, bin, bk);
        qn_cache_put(c, bk, 1 * 64, 16, big);
        qn_cache_flush(c);
        uint64_t iters = n_lookups / 64 > 1000 ? n_lookups / 64 : 1000;
        for (int r = 0; r < reps; r++) {
            double t0 = now_us();
            for (uint64_t i = 0; i < iters; i++) qn_cache_get_into(c, bk, 64, 16, big);
            r_one[r] = (now_us() - t0) / (double)iters;
            t0 = now_us();
            for (uint64_t i = 0; i < iters; i++)
                for (int j = 0; j < 64; j++) qn_cache_get_into(c, keys[(i * 64 + (uint64_t)j) % nk], 1, 16, got);
            r_rows[r] = (now_us() - t0) / (double)iters;
            qn_cache_flush(c);
        }
        printf("  64-row job: one 64x16 entry     %8.3f us   64 one-row entries %8.3f us\n", median(r_one, reps),
               median(r_rows, reps));
    }
    qn_cache_close(&c);

    /* LMDB floor: renew + mdb_get + reset on the same file, nothing else */
    {
        MDB_env *env;
        MDB_txn *t;
        MDB_dbi dbi;
        mdb_env_create(&env);
        mdb_env_set_maxdbs(env, 4);
        if (mdb_env_open(env, dir, MDB_NOTLS | MDB_RDONLY, 0644) == 0 &&
            mdb_txn_begin(env, NULL, MDB_RDONLY, &t) == 0 && mdb_dbi_open(t, "entries", 0, &dbi) == 0 &&
            mdb_txn_commit(t) == 0 && mdb_txn_begin(env, NULL, MDB_RDONLY, &t) == 0) {
            mdb_txn_reset(t);
            double r_raw[99];
            uint64_t found = 0;
            for (int r = 0; r < reps; r++) {
                double t0 = now_us();
                for (uint64_t i = 0; i < n_lookups; i++) {
                    mdb_txn_renew(t);
                    MDB_val kk = {16, keys[i % nk]}, v;
                    if (mdb_get(t, dbi, &kk, &v) == 0) { memcpy(got, (const char *)v.mv_data + 32, 64); found++; }
                    mdb_txn_reset(t);
                }
                r_raw[r] = (now_us() - t0) / (double)n_lookups;
            }
            if (found != n_lookups * (uint64_t)reps) { fprintf(stderr, "LMDB floor: lookups missed\n"); return 1; }
            printf("  LMDB floor: renew+get+reset     %8.3f us\n", median(r_raw, reps));
            mdb_txn_abort(t);
        }
        mdb_env_close(env);
    }
    rm_env(dir);
    free(dir);

    /* batched inserts: one write txn per batch of B puts */
    printf("  batched insert (put x B + one flush), us per entry:\n");
    printf("    %-8s %12s %12s\n", "B", "nosync", "fsync");
    int bs[] = {1, 16, 64, 256};
    uint64_t(*ikeys)[2] = malloc(50000 * sizeof *ikeys);
    for (uint64_t i = 0; i < 50000; i++) key_of(i, "ins", ikeys[i]);
    for (int bi = 0; bi < 4; bi++) {
        double res[2];
        for (int durable = 0; durable < 2; durable++) {
            double rr[99];
            for (int r = 0; r < reps; r++) {
                char *d = mkdir_in(base, "bench_cache_ins");
                qn_cache_opts od = o;
                od.durable = durable;
                qn_cache *cw = NULL;
                if (qn_cache_open(d, 256, &od, &cw)) return 1;
                /* fsync runs cost ms per commit: fewer of them */
                uint64_t total = durable ? 20 * (uint64_t)bs[bi] : (bs[bi] == 1 ? 5000 : 50000);
                if (total > 50000) total = 50000;
                double t0 = now_us();
                for (uint64_t i = 0; i < total; i++) {
                    qn_cache_put(cw, ikeys[i], 1, 16, out);
                    if ((i + 1) % (uint64_t)bs[bi] == 0) qn_cache_flush(cw);
                }
                qn_cache_flush(cw);
                rr[r] = (now_us() - t0) / (double)total;
                qn_cache_close(&cw);
                rm_env(d);
                free(d);
            }
            res[durable] = median(rr, reps);
        }
        printf("    %-8d %12.3f %12.3f\n", bs[bi], res[0], res[1]);
    }
    free(ikeys);
    free(keys);
    free(mkeys);
    return 0;
}
