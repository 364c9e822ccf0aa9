/* job.h: jobs and results, and their msgpack codec (CONTRACT.md section 3).
 *
 * A transport turns bytes into a qn_job with qn_job_decode and a qn_result
 * back into bytes with qn_result_encode. Nothing here knows which transport a
 * job came from: the transport's own data rides in qn_job.origin, opaque.
 * Decoding never trusts its input: every length, type and size is checked, and
 * a failure says which contract error code the client gets. */
#ifndef QN_JOB_H
#define QN_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QN_MODEL_NAME_MAX 64
#define QN_DEFAULT_MAX_MESSAGE (64u * 1024u * 1024u) /* too_large past this */

/* QN_JOB_MODELS: a metadata request ({"type": "models"}, schemas/job.md),
 * answered at admission from the registry, never computed. */
typedef enum { QN_JOB_PREDICT = 0, QN_JOB_TRAIN = 1, QN_JOB_MODELS = 2 } qn_job_type;

/* Result status and error code, as spelled on the wire. */
typedef enum { QN_STATUS_OK = 0, QN_STATUS_ERROR, QN_STATUS_EXPIRED, QN_STATUS_REJECTED } qn_status;
typedef enum {
    QN_CODE_NONE = 0,
    QN_CODE_BAD_MESSAGE,    /* not msgpack / not a map */
    QN_CODE_BAD_JOB,        /* missing or mistyped field */
    QN_CODE_UNKNOWN_MODEL,
    QN_CODE_UNKNOWN_VERSION,
    QN_CODE_SHAPE_MISMATCH,
    QN_CODE_TOO_LARGE,
    QN_CODE_OVERLOADED,
    QN_CODE_EXPIRED,
    QN_CODE_INTERNAL,
    QN_CODE_DIVERGED,       /* a train job's loss or weights went NaN/inf */
    QN_CODE_COUNT
} qn_code;

const char *qn_status_name(qn_status s); /* "ok", "error", ... */
const char *qn_code_name(qn_code c);     /* "bad_message", ...; "" for NONE */

/* The client's correlation id: str or int, echoed verbatim. nil when a
 * message could not be decoded far enough to find it. */
typedef enum { QN_ID_NIL = 0, QN_ID_INT, QN_ID_UINT, QN_ID_STR } qn_id_kind;
typedef struct qn_id {
    qn_id_kind kind;
    int64_t i;      /* QN_ID_INT */
    uint64_t u;     /* QN_ID_UINT (positive ints past INT64_MAX) */
    char *s;        /* QN_ID_STR: owned by the job, NUL-terminated */
    uint32_t len;   /* QN_ID_STR: bytes, without the NUL */
} qn_id;

struct qn_job;
struct qn_result;
/* Called exactly once per job with its final result (and any number of times
 * before that with res->type == QN_RESULT_PROGRESS). Runs on whatever thread
 * finished the job (IO, executor); must not block for long. res and the
 * pointers inside it are valid only during the call. The job is freed by the
 * caller after the final call: copy what you need. */
typedef void (*qn_complete_fn)(struct qn_job *job, const struct qn_result *res);

typedef struct qn_origin {
    qn_complete_fn complete;
    void *ctx;       /* the transport */
    void *data;      /* per-job transport data (envelope, partition/offset);
                        the transport frees it in complete() */
    uint64_t tag;    /* per-job transport scalar, free for the transport's use */
} qn_origin;

typedef struct qn_job {
    qn_job_type type;
    qn_id id;
    char model[QN_MODEL_NAME_MAX + 1];
    int64_t version;     /* 0: the latest */
    int64_t rows, cols;  /* inputs shape */
    float *inputs;       /* rows*cols f32, owned (allocated with the job) */
    char *reply_to;      /* NULL when absent; owned */
    int64_t deadline_ms; /* Unix ms; 0: none */
    int32_t priority;    /* 0 most urgent */
    bool cache;          /* default true */

    /* Filled by the core, not the codec. */
    struct qn_model *served_by; /* reference held while queued/executing */
    uint64_t t_arrival_ns;      /* qn_now_ns() at admission */
    uint64_t seq;               /* admission order, ties in priority */
    uint64_t cache_key[2];      /* XXH3-128 of model, version, shape, inputs */
    bool cache_key_valid;

    qn_origin origin;
    struct qn_train_spec *train; /* train job body (train.h), owned; NULL for predict */
} qn_job;

typedef enum { QN_RESULT_FINAL = 0, QN_RESULT_PROGRESS = 1 } qn_result_type;

/* What a train job's progress messages and final result add (NULL in
 * predict results). Fields NAN or 0 are omitted on the wire. */
typedef struct qn_train_report {
    int64_t epoch, epochs, step;  /* progress: epoch (1-based) of epochs, optimizer steps so far */
    double loss, lr;              /* progress: this epoch's running mean loss, the lr now */
    double accuracy;              /* training accuracy (cross_entropy) or NAN */
    double val_loss, val_accuracy; /* NAN without a validation set */
    double rows_per_s;            /* progress */
    bool stopped_early;           /* final: early stopping ended it */
    bool repeated;                /* final: a redelivered job answered with its earlier version */
} qn_train_report;

/* One loaded model version, as a "models" result lists it (schemas/result.md). */
typedef struct qn_model_info {
    const char *name;
    int64_t version;
    int64_t input_dim, output_dim;
    const char *repr;       /* "f32", "int8", ... or "mixed" */
} qn_model_info;

typedef struct qn_result {
    qn_result_type type;
    qn_status status;
    const qn_id *id;        /* NULL: nil */
    const char *model;      /* NULL: omitted */
    int64_t version;        /* 0: omitted */
    int64_t rows, cols;     /* outputs, on ok */
    const float *outputs;   /* borrowed view, row-major */
    bool cached;
    qn_code code;           /* on anything but ok */
    const char *message;    /* on anything but ok; may be NULL */
    const qn_train_report *train; /* train progress / final result fields; NULL otherwise */
    /* Final results only: the job was stopped unfinished because the worker
     * is shutting down (a train job interrupted by SIGTERM; nothing was
     * written). A transport that can redeliver (Kafka) leaves the job
     * uncommitted instead of answering, so another worker runs it; others
     * send the result (status rejected, code overloaded) as usual. */
    bool handed_back;
    /* The answer to a "models" job (is_models, status ok): nmodels loaded
     * versions sorted by name then version, borrowed; written as "models"
     * in place of outputs. */
    bool is_models;
    const qn_model_info *models;
    size_t nmodels;
} qn_result;

/* Decode limits. */
typedef struct qn_job_limits {
    size_t max_message_bytes;    /* messages past this: too_large (default 64 MiB) */
} qn_job_limits;

/* Failure details from qn_job_decode. */
typedef struct qn_decode_error {
    qn_code code;          /* BAD_MESSAGE, BAD_JOB, TOO_LARGE */
    char message[256];     /* human-readable, names the field */
} qn_decode_error;

/* Decodes one job from buf[0..len). On success returns 0 and *out is a new job
 * the caller owns (free with qn_job_free). On failure returns QN_EFORMAT or
 * QN_ETOOLARGE, fills *err, and — when the message was a map whose "id" could
 * be read — still returns a job in *out holding only that id (and reply_to if
 * readable), so the error result can carry it; otherwise *out is NULL.
 * Accepts inputs as a tensor map {dtype:"f32", shape:[r,c], data:bin} or as an
 * array of equal-length arrays of numbers. A "models" job needs only v, id and
 * type (model, when given, names the one model to list; model is "" when not). Unknown fields are ignored
 * (forward compatibility). limits may be NULL for defaults. */
int qn_job_decode(const void *buf, size_t len, const qn_job_limits *limits, qn_job **out,
                  qn_decode_error *err);

/* A job with no fields set (id nil, cache true, version 0) and room for
 * rows*cols inputs; NULL on allocation failure. For tests and transports that
 * build jobs directly. */
qn_job *qn_job_new(int64_t rows, int64_t cols);
/* Sets a string id (copied); 0 or QN_ENOMEM. */
int qn_job_set_id_str(qn_job *job, const char *s, size_t len);
/* Frees the job, its inputs, id and reply_to. Does not touch origin.data or
 * served_by (the core releases its model reference before freeing). Sets *job
 * to NULL. NULL-safe. */
void qn_job_free(qn_job **job);

/* A growable byte buffer; encode appends. */
typedef struct qn_buf {
    char *data;
    size_t len, cap;
} qn_buf;
void qn_buf_reset(qn_buf *b);           /* len = 0, keeps memory */
void qn_buf_free(qn_buf *b);            /* frees memory, zeroes the struct */
int qn_buf_append(qn_buf *b, const void *p, size_t n); /* 0 or QN_ENOMEM */

/* Appends the msgpack encoding of res to out. Outputs are written as a
 * tensor map with dtype "f32". Returns 0 or QN_ENOMEM. */
int qn_result_encode(const qn_result *res, qn_buf *out);

/* Appends the msgpack encoding of a predict job (used by the CLI, the bench
 * client and tests). inputs is rows*cols f32. id_str NULL means id_int. */
int qn_job_encode_predict(const char *id_str, int64_t id_int, const char *model, int64_t version,
                          const float *inputs, int64_t rows, int64_t cols, qn_buf *out);
/* The same with a "reply_to" field (the Kafka topic the result should go to;
 * NULL: none, as qn_job_encode_predict). An empty reply_to is QN_EINVAL. */
int qn_job_encode_predict_to(const char *id_str, int64_t id_int, const char *model, int64_t version,
                             const float *inputs, int64_t rows, int64_t cols, const char *reply_to,
                             qn_buf *out);

/* Decodes a result (for the CLI and tests). On success *out_outputs is a
 * malloc'd rows*cols f32 (or NULL when absent), *out_status/code set, message
 * copied into msg (may be truncated). Returns 0, QN_EFORMAT. */
typedef struct qn_result_view {
    qn_status status;
    qn_code code;
    char message[256];
    char model[QN_MODEL_NAME_MAX + 1];
    int64_t version;
    bool cached;
    qn_id_kind id_kind;
    int64_t id_int;
    char id_str[128];
    int64_t rows, cols;
    float *outputs; /* malloc'd, caller frees; NULL when absent */
    /* train jobs: type "progress" or a final result's metrics */
    bool progress;        /* type == "progress" */
    bool has_train;       /* any of the fields below was present */
    qn_train_report train; /* loss/accuracy/val_* from "metrics" in a final result */
} qn_result_view;

/* Appends the msgpack encoding of a train job built from spec (the CLI and
 * tests). model_name required; version 0: latest. QN_EINVAL / QN_ENOMEM. */
struct qn_train_spec;
int qn_job_encode_train(const char *id_str, int64_t id_int, const char *model, int64_t version,
                        const struct qn_train_spec *spec, qn_buf *out);
int qn_result_decode(const void *buf, size_t len, qn_result_view *out);

#endif
