/* log.h: one-line, timestamped logging to stderr. Thread-safe (one write(2)
 * per line). The level is process-wide, set once at start (QN_LOG env var:
 * error|warn|info|debug, default info). */
#ifndef QN_LOG_H
#define QN_LOG_H

typedef enum { QN_LOG_ERROR = 0, QN_LOG_WARN = 1, QN_LOG_INFO = 2, QN_LOG_DEBUG = 3 } qn_log_level;

void qn_log_set_level(qn_log_level level);
/* Parses QN_LOG from the environment; unknown values leave the level as is. */
void qn_log_init_from_env(void);
int qn_log_enabled(qn_log_level level);
void qn_log(qn_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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
