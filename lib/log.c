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

static atomic_int g_format = QN_LOG_FORMAT_TEXT;

void qn_log_set_format(qn_log_format f) { atomic_store(&g_format, (int)f); }

/* Appends s as a JSON string body (no quotes) to line[*n..cap-8). */
static void json_esc(char *line, size_t cap, size_t *n, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t w = *n;
    for (; s && *s && w + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { line[w++] = '\\'; line[w++] = (char)c; }
        else if (c == '\n') { line[w++] = '\\'; line[w++] = 'n'; }
        else if (c == '\t') { line[w++] = '\\'; line[w++] = 't'; }
        else if (c == '\r') { line[w++] = '\\'; line[w++] = 'r'; }
        else if (c < 0x20) {
            memcpy(line + w, "\\u00", 4);
            w += 4;
            line[w++] = hex[c >> 4];
            line[w++] = hex[c & 15];
        } else line[w++] = (char)c;
    }
    *n = w;
}

static void json_field(char *line, size_t cap, size_t *n, const char *key, const char *v)
{
    int k = snprintf(line + *n, cap - *n, ",\"%s\":\"", key);
    if (k < 0 || (size_t)k >= cap - *n) return;
    *n += (size_t)k;
    json_esc(line, cap, n, v);
    if (*n + 2 < cap) line[(*n)++] = '"';
}

static void vlog(qn_log_level level, const char *module, const char *id, const char *model,
                 const char *fmt, va_list ap)
{
    char line[4096], msg[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    if (m < 0) msg[0] = 0;
    size_t len;
    if (atomic_load(&g_format) == QN_LOG_FORMAT_JSON) {
        static const char *const lower[] = {"error", "warn", "info", "debug"};
        int n = snprintf(line, sizeof line,
                         "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\"",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000000, lower[level]);
        len = (size_t)n;
        json_field(line, sizeof line, &len, "module", module ? module : "-");
        json_field(line, sizeof line, &len, "msg", msg);
        if (id) json_field(line, sizeof line, &len, "id", id);
        if (model) json_field(line, sizeof line, &len, "model", model);
        if (len > sizeof line - 3) len = sizeof line - 3;
        line[len++] = '}';
    } else {
        int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: %s",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000000, g_names[level], module ? module : "-", msg);
        len = n < 0 ? 0 : (size_t)n;
        if (len > sizeof line - 2) len = sizeof line - 2;
        /* id and model are fields for machines; the text line is left as
         * it was (its message names what a person needs). */
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void qn_log(qn_log_level level, const char *module, const char *fmt, ...)
{
    if (!qn_log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, module, NULL, NULL, fmt, ap);
    va_end(ap);
}

void qn_log_job(qn_log_level level, const char *module, const char *id, const char *model,
                const char *fmt, ...)
{
    if (!qn_log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, module, id, model, fmt, ap);
    va_end(ap);
}

void qn_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "quern: assertion failed: %s at %s:%d\n", expr, file, line);
    abort();
}
