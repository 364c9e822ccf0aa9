/* log.c: stderr logging; a line is formatted in a local buffer and written
 * with one write(2) so lines from threads never interleave. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <stdatomic.h>

static atomic_int g_level = QN_LOG_INFO;
static const char *const g_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void qn_log_set_level(qn_log_level level) { atomic_store(&g_level, (int)level); }

void qn_log_init_from_env(void)
{
    const char *v = getenv("QN_LOG");
    if (!v) return;
    for (int i = 0; i < 4; i++)
        if (strncasecmp(v, g_names[i], strlen(v)) == 0 && v[0]) { qn_log_set_level((qn_log_level)i); return; }
}

void qn_thread_name(const char *fmt, ...)
{
    char name[16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    pthread_setname_np(pthread_self(), name);
}

int qn_log_enabled(qn_log_level level) { return (int)level <= atomic_load(&g_level); }

void qn_log(qn_log_level level, const char *module, const char *fmt, ...)
{
    if (!qn_log_enabled(level)) return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, g_names[level], module ? module : "-");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void qn_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "quern: assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}
