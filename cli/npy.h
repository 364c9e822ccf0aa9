/* npy.h: the CLI's input and output files. Reads a .npy array or a CSV file
 * into a row-major f32 matrix (what a predict job carries) and writes a
 * matrix back as .npy. Never trusts the file: every size is checked against
 * what was actually read, and a failure says what was wrong in a sentence the
 * user can act on.
 *
 * .npy: format versions 1.0, 2.0 and 3.0; dtypes <f4, <f8, <i4, <i8, |u1
 * (converted to f32); C order only. A 1-D array is one row, a 2-D array is
 * rows × cols; other ranks are refused.
 * CSV: one row per line, numbers separated by commas (blanks around them are
 * fine, \r\n too, blank lines are skipped); when the first line is not all
 * numbers it is a header and skipped. Every row must have the same number of
 * columns. */
#ifndef QN_CLI_NPY_H
#define QN_CLI_NPY_H

#include <stddef.h>
#include <stdint.h>

/* A matrix read from a file. data is malloc'd (rows*cols floats, row-major);
 * the caller owns it and frees it with qn_matrix_free. */
typedef struct qn_matrix {
    int64_t rows, cols;
    float *data;
} qn_matrix;

/* Human-readable reason for a failed read; "" on success. */
typedef struct qn_npy_error {
    char message[256];
} qn_npy_error;

/* Parses an in-memory .npy image. On success returns 0 and fills *out (which
 * the caller then owns). On failure returns QN_EFORMAT (not an .npy, an
 * unsupported dtype/order/rank, truncated data) or QN_ENOMEM, fills *err, and
 * leaves *out zeroed. err may be NULL. An array with no elements is refused
 * (QN_EFORMAT): the CLI has no use for it. */
int qn_npy_parse(const void *buf, size_t len, qn_matrix *out, qn_npy_error *err);

/* Parses in-memory CSV text (need not be NUL-terminated). Same return
 * convention as qn_npy_parse; an error names the line (1-based). */
int qn_csv_parse(const char *text, size_t len, qn_matrix *out, qn_npy_error *err);

/* Reads a file: .npy when it starts with the .npy magic, CSV otherwise.
 * Returns 0, QN_EIO (cannot open or read; errno's text is in err), or what the
 * parsers return. */
int qn_matrix_read(const char *path, qn_matrix *out, qn_npy_error *err);

/* Writes data (rows × cols f32, row-major) as a version 1.0 .npy file with
 * dtype <f4 and shape (rows, cols). Returns 0, QN_EINVAL (negative sizes or
 * NULL data with elements), QN_EIO (errno kept). The file is replaced. */
int qn_npy_write_f32(const char *path, const float *data, int64_t rows, int64_t cols);

/* Frees m->data and zeroes *m. NULL-safe. */
void qn_matrix_free(qn_matrix *m);

#endif
