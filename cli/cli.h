/* cli.h: subcommands of the `quern` CLI. Each cli/<cmd>.c registers itself
 * with QN_CLI_COMMAND so that main.c needs no list of them (adding a command
 * is adding a file). A command's run function gets argv starting at its own
 * name (argv[0] = "inspect") and returns the process exit code: 0 success,
 * 1 failure, 2 usage error. */
#ifndef QN_CLI_H
#define QN_CLI_H

#include <stdbool.h>
#include <stdint.h>

typedef struct qn_cli_command {
    const char *name;     /* "inspect" */
    const char *usage;    /* one line, after "quern " */
    int (*run)(int argc, char **argv);
} qn_cli_command;

void qn_cli_register(const qn_cli_command *cmd);

/* Parses all of s as an integer in [lo, hi]: true and *out set, or false. */
bool qn_cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);

#define QN_CLI_COMMAND(ident, name_, usage_, fn_)                                      \
    static const qn_cli_command qn_cli_cmd_##ident = {name_, usage_, fn_};             \
    __attribute__((constructor)) static void qn_cli_register_##ident(void)           \
    {                                                                                  \
        qn_cli_register(&qn_cli_cmd_##ident);                                          \
    }

#endif
