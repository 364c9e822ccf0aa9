/* mpjson.h: msgpack -> JSON for people and scripts (`quern decode`,
 * `quern predict --json`, and `quern bench` reading a "models" answer).
 * Knows one thing about quern's messages: a tensor map {dtype: "f32",
 * shape: [rows, cols] or [n], data: bin} becomes nested lists of numbers, so
 * a result reads as its values rather than as base64. Everything else maps
 * one to one; schemas/result.md ("Reading results as JSON") lists the rules
 * for what JSON cannot say as such (NaN, uint64 past 2^63, bin, ext,
 * non-string keys). */
#ifndef QN_CLI_MPJSON_H
#define QN_CLI_MPJSON_H

#include <jansson.h>
#include <stddef.h>

/* Converts the one msgpack object at the start of buf[0..len) to a new JSON
 * value (caller json_decref's it) and sets *used to its length in bytes.
 * Returns NULL when the bytes are not one whole msgpack object (truncated,
 * an invalid type byte, nested past 64 levels) or on allocation failure;
 * *why then names which ("truncated" means more bytes could complete it). */
json_t *qn_mpjson_convert(const void *buf, size_t len, size_t *used, const char **why);

/* Dumps v as one compact line (no trailing newline). An f32 prints as the
 * shortest decimal that reads back as the same f32; an f64 with 15
 * significant digits. Caller frees; NULL on allocation failure. */
char *qn_mpjson_dumps(const json_t *v);

#endif
