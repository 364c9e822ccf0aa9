/* qn_test.h: a minimal unit-test harness. Each test file defines TEST(name)
 * functions and lists them in main via RUN(name); a failed CHECK prints
 * file:line and marks the test failed but goes on; the process exits non-zero
 * if any check failed. Prints "N passed, N failed" at the end (ctest and CI
 * read that line). */
#ifndef QN_TEST_H
#define QN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int qn_t_failed_checks, qn_t_cur_failed, qn_t_pass, qn_t_fail;

#define TEST(name) static void test_##name(void)
#define RUN(name) do { \
        qn_t_cur_failed = 0; \
        test_##name(); \
        if (qn_t_cur_failed) { qn_t_fail++; printf("FAIL %s\n", #name); } \
        else { qn_t_pass++; printf("ok   %s\n", #name); } \
        fflush(stdout); \
    } while (0)

#define CHECK(cond) do { if (!(cond)) { \
        fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        qn_t_cur_failed = 1; qn_t_failed_checks++; } } while (0)
#define CHECK_EQ_INT(a, b) do { long long qa_ = (long long)(a), qb_ = (long long)(b); if (qa_ != qb_) { \
        fprintf(stderr, "%s:%d: CHECK_EQ_INT failed: %s == %lld, %s == %lld\n", __FILE__, __LINE__, #a, qa_, #b, qb_); \
        qn_t_cur_failed = 1; qn_t_failed_checks++; } } while (0)
#define CHECK_STR(a, b) do { const char *qa_ = (a), *qb_ = (b); if (!qa_ || !qb_ || strcmp(qa_, qb_)) { \
        fprintf(stderr, "%s:%d: CHECK_STR failed: \"%s\" vs \"%s\"\n", __FILE__, __LINE__, qa_ ? qa_ : "(null)", qb_ ? qb_ : "(null)"); \
        qn_t_cur_failed = 1; qn_t_failed_checks++; } } while (0)
#define CHECK_NEAR(a, b, tol) do { double qa_ = (a), qb_ = (b); if (!(fabs(qa_ - qb_) <= (tol))) { \
        fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g, tol %g\n", __FILE__, __LINE__, #a, qa_, #b, qb_, (double)(tol)); \
        qn_t_cur_failed = 1; qn_t_failed_checks++; } } while (0)

static inline int qn_test_done(void)
{
    printf("%d passed, %d failed\n", qn_t_pass, qn_t_fail);
    return qn_t_fail ? 1 : 0;
}

/* A fresh scratch directory under $QN_TEST_TMP (or /tmp); caller frees. */
static inline char *qn_test_tmpdir(const char *tag)
{
    const char *base = getenv("QN_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    mkdir(base, 0777);
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/%s.XXXXXX", base, tag);
    if (!mkdtemp(p)) { perror("mkdtemp"); exit(2); }
    return p;
}

#endif
