/* decode.c: `quern decode`: msgpack messages on stdin (results read with
 * kcat, a capture of ZeroMQ payloads, an example file) -> one JSON line
 * each on stdout, tensors as nested lists (mpjson.h).
 *
 * Two framings, both binary-safe:
 *  - stream (default): messages back to back. msgpack delimits itself, so
 *    nothing else is needed; a newline byte between messages is skipped,
 *    so kcat's default output (each payload followed by -D's "\n") and
 *    `kcat -f '%s'` both read as they are. (A newline inside a message is
 *    part of it and never mistaken for a separator.)
 *  - length: each message preceded by its length as a 4-byte big-endian
 *    int, what `kcat -f '%R%s'` writes; -1 (a NULL value, e.g. a
 *    tombstone) is skipped. A corrupt message costs only itself.
 * A message that does not decode is reported on stderr with its offset;
 * in stream mode the rest cannot be framed and decoding stops. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "mpjson.h"

#define DECODE_USAGE "decode [--length-prefixed] < MESSAGES"

static void decode_help(FILE *out)
{
    fprintf(out,
            "usage: quern " DECODE_USAGE "\n\n"
            "Reads msgpack messages (quern jobs and results, or any msgpack) on stdin and\n"
            "prints each as one line of JSON; an f32 tensor map {dtype, shape, data} is\n"
            "shown as nested lists of numbers. NaN and infinities print as the strings\n"
            "\"NaN\", \"Infinity\", \"-Infinity\"; other bin values as base64 strings.\n\n"
            "  (default)          messages back to back, optionally each followed by a\n"
            "                     newline: kcat's default output, or kcat -f '%%s'\n"
            "  --length-prefixed  each message after its length as a 4-byte big-endian\n"
            "                     int: kcat -f '%%R%%s'\n"
            "\n"
            "Examples:\n"
            "  kcat -C -b BROKERS -t quern.results -e | quern decode\n"
            "  kcat -C -b BROKERS -t quern.results -e -f '%%R%%s' | quern decode --length-prefixed\n\n"
            "Exit status: 0 every message decoded, 1 some did not, 2 usage.\n");
}

/* Prints one message as JSON and sets *used to its length. 1 when it
 * decoded, 0 when it needs more bytes than n (and more may come), -1 when
 * it is not msgpack (reported). */
static int emit(const unsigned char *p, size_t n, size_t offset, bool more, size_t *used)
{
    const char *why = NULL;
    json_t *v = qn_mpjson_convert(p, n, used, &why);
    if (!v) {
        if (more && why && !strcmp(why, "truncated")) return 0;
        fprintf(stderr, "quern decode: the message at byte %zu is not msgpack (%s)\n", offset, why);
        return -1;
    }
    char *s = qn_mpjson_dumps(v);
    json_decref(v);
    if (!s) {
        fprintf(stderr, "quern decode: out of memory\n");
        return -1;
    }
    puts(s);
    free(s);
    return 1;
}

/* Decodes what is complete in b[0..len) and sets *took to the bytes used.
 * eof: no more will come. 0, or 1 once a message failed (stop). */
static int drain(const unsigned char *b, size_t len, size_t base, bool length, bool eof, size_t *took)
{
    size_t off = 0;
    int ret = 0;
    while (off < len) {
        if (!length) {
            if (b[off] == '\n') { off++; continue; }
            size_t used = 0;
            int r = emit(b + off, len - off, base + off, !eof, &used);
            if (r == 0) break;
            if (r < 0) { ret = 1; off = len; break; }
            off += used;
            continue;
        }
        if (len - off < 4) {
            if (!eof) break;
            fprintf(stderr, "quern decode: %zu stray bytes at byte %zu (a length prefix is 4)\n",
                    len - off, base + off);
            ret = 1;
            off = len;
            break;
        }
        int32_t n = (int32_t)((uint32_t)b[off] << 24 | (uint32_t)b[off + 1] << 16 |
                              (uint32_t)b[off + 2] << 8 | b[off + 3]);
        if (n == -1) { off += 4; continue; } /* a NULL value */
        if (n < 0) {
            fprintf(stderr, "quern decode: the length prefix at byte %zu says %d (is this "
                    "length-prefixed input?)\n", base + off, n);
            ret = 1;
            off = len;
            break;
        }
        if ((size_t)n > len - off - 4) {
            if (!eof) break;
            fprintf(stderr, "quern decode: the message at byte %zu wants %d bytes, %zu are left\n",
                    base + off + 4, n, len - off - 4);
            ret = 1;
            off = len;
            break;
        }
        off += 4;
        size_t used = 0;
        int r = emit(b + off, (size_t)n, base + off, false, &used);
        if (r < 0) ret = 1;
        else if (used != (size_t)n) {
            fprintf(stderr, "quern decode: the message at byte %zu has %zu bytes after its end\n",
                    base + off, (size_t)n - used);
            ret = 1;
        }
        off += (size_t)n;
    }
    *took = off;
    return ret;
}

static int decode_run(int argc, char **argv)
{
    bool length = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            decode_help(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--length-prefixed")) length = true;
        else {
            fprintf(stderr, "quern decode: unknown option '%s'\n", argv[i]);
            decode_help(stderr);
            return 2;
        }
    }
    /* Streaming: a kcat that keeps consuming never reaches EOF, so each
     * message is printed as soon as its last byte has arrived. */
    size_t cap = 1 << 16, len = 0, base = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return 1;
    int ret = 0;
    for (bool eof = false; !eof;) {
        if (len == cap) {
            unsigned char *nb = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                fprintf(stderr, "quern decode: out of memory\n");
                ret = 1;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(STDIN_FILENO, buf + len, cap - len);
        if (k < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "quern decode: cannot read stdin: %s\n", strerror(errno));
            ret = 1;
            break;
        }
        eof = k == 0;
        len += (size_t)k;
        size_t took = 0;
        int bad = drain(buf, len, base, length, eof, &took);
        memmove(buf, buf + took, len - took);
        len -= took;
        base += took;
        if (fflush(stdout) != 0) bad = 1;
        if (bad) { ret = 1; if (!length) break; }
    }
    free(buf);
    return ret;
}

QN_CLI_COMMAND(decode, "decode", DECODE_USAGE, decode_run)
