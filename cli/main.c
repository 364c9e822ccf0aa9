/* main.c: the `quern` CLI frame. Subcommands register themselves before main
 * runs (QN_CLI_COMMAND in cli.h), so this file holds no list of them: it
 * keeps the table, prints the usage and dispatches. It must never know what
 * any subcommand does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "log.h"

#define QN_CLI_MAX_COMMANDS 32

static const qn_cli_command *commands[QN_CLI_MAX_COMMANDS];
static int n_commands;

void qn_cli_register(const qn_cli_command *cmd)
{
    /* Registration runs in constructors, before main: a full table or a
     * duplicate name is a build mistake, not a user error. */
    QN_ASSERT(cmd && cmd->name && cmd->run);
    QN_ASSERT(n_commands < QN_CLI_MAX_COMMANDS);
    for (int i = 0; i < n_commands; i++) QN_ASSERT(strcmp(commands[i]->name, cmd->name) != 0);
    commands[n_commands++] = cmd;
}

static int by_name(const void *a, const void *b)
{
    const qn_cli_command *x = *(const qn_cli_command *const *)a;
    const qn_cli_command *y = *(const qn_cli_command *const *)b;
    return strcmp(x->name, y->name);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: quern [-v] <command> [options]\n\ncommands:\n");
    for (int i = 0; i < n_commands; i++)
        fprintf(out, "  quern %s\n", commands[i]->usage ? commands[i]->usage : commands[i]->name);
    fprintf(out, "\n`quern <command> --help` describes a command's options.\n"
                 "Log lines go to stderr; only warnings and errors unless -v (info) or -vv (debug)\n"
                 "is given, before or after the command, or QN_LOG=error|warn|info|debug is set.\n");
}

/* Takes -v, -vv and --verbose out of argv (anywhere: `quern -v inspect F`
 * and `quern inspect F -v` alike) and returns how many v's there were.
 * No subcommand has an option or value spelled so. */
static int take_verbose(int *argc, char **argv)
{
    int v = 0, w = 1;
    for (int i = 1; i < *argc; i++) {
        if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) v++;
        else if (!strcmp(argv[i], "-vv")) v += 2;
        else argv[w++] = argv[i];
    }
    argv[w] = NULL;
    *argc = w;
    return v;
}

int main(int argc, char **argv)
{
    /* The CLI's output is its answer; the library's progress notes (kernel
     * paths, backend threads) would only clutter it, so the default is
     * warnings and errors. QN_LOG sets a level, -v raises it. */
    qn_log_set_level(QN_LOG_WARN);
    qn_log_init_from_env();
    int verbose = take_verbose(&argc, argv);
    if (verbose) qn_log_set_level(verbose >= 2 ? QN_LOG_DEBUG : QN_LOG_INFO);
    /* constructor order is link order; sort so the usage reads the same on every build */
    qsort(commands, (size_t)n_commands, sizeof commands[0], by_name);

    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        if (argc < 3) {
            usage(stdout);
            return 0;
        }
        /* `quern help CMD` is `quern CMD --help` */
        static char help_flag[] = "--help";
        char *hargv[3] = {argv[2], help_flag, NULL};
        for (int i = 0; i < n_commands; i++)
            if (!strcmp(commands[i]->name, argv[2])) return commands[i]->run(2, hargv);
        name = argv[2];
    }
    for (int i = 0; i < n_commands; i++) {
        if (!strcmp(commands[i]->name, name)) return commands[i]->run(argc - 1, argv + 1);
    }
    fprintf(stderr, "quern: unknown command '%s'\n\n", name);
    usage(stderr);
    return 2;
}

bool qn_cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}
