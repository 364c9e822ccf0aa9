/* log.h: one-line, timestamped logging to stderr. Thread-safe (one write(2)
 * per line). The level is process-wide, set once at start (QN_LOG env var:
 * error|warn|info|debug, default info). */
#ifndef QN_LOG_H
#define QN_LOG_H

typedef enum { QN_LOG_ERROR = 0, QN_LOG_WARN = 1, QN_LOG_INFO = 2, QN_LOG_DEBUG = 3 } qn_log_level;

void qn_log_set_level(qn_log_level level);

/* text (default): "TIME LEVEL module: message", for people. json: one object
 * a line, {"time","level","module","msg"} plus "id" and "model" from
 * qn_log_job, for log shippers. Process-wide; set once at start. */
typedef enum { QN_LOG_FORMAT_TEXT = 0, QN_LOG_FORMAT_JSON = 1 } qn_log_format;
void qn_log_set_format(qn_log_format f);
/* Parses QN_LOG from the environment; unknown values leave the level as is. */
void qn_log_init_from_env(void);
int qn_log_enabled(qn_log_level level);
void qn_log(qn_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A line about one job or model: id and model (either may be NULL) become
 * fields of their own in json; the text line is the message alone. */
void qn_log_job(qn_log_level level, const char *module, const char *id, const char *model,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define QN_LOGE(mod, ...) qn_log(QN_LOG_ERROR, mod, __VA_ARGS__)
#define QN_LOGW(mod, ...) qn_log(QN_LOG_WARN, mod, __VA_ARGS__)
#define QN_LOGI(mod, ...) qn_log(QN_LOG_INFO, mod, __VA_ARGS__)
#define QN_LOGD(mod, ...) do { if (qn_log_enabled(QN_LOG_DEBUG)) qn_log(QN_LOG_DEBUG, mod, __VA_ARGS__); } while (0)

/* Names the calling thread (shown by top -H, ps -L, perf, gdb; Linux keeps
 * 15 characters), e.g. "qn-exec-0". Best effort. */
void qn_thread_name(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Broken invariants are bugs, not errors: abort with file:line. Always on. */
#define QN_ASSERT(cond) do { if (!(cond)) qn_assert_fail(#cond, __FILE__, __LINE__); } while (0)
_Noreturn void qn_assert_fail(const char *expr, const char *file, int line);

#endif
