/* error.h: quern's error codes. Every function that can fail returns int: 0 on
 * success or a negative QN_E* code. Codes from libraries (LMDB, ZeroMQ,
 * librdkafka, CUDA) are translated where they enter; this header never grows a
 * dependency on them. */
#ifndef QN_ERROR_H
#define QN_ERROR_H

enum qn_err {
    QN_OK = 0,
    QN_EINVAL = -1,     /* bad argument or malformed input */
    QN_ENOMEM = -2,     /* allocation failed */
    QN_EIO = -3,        /* read/write/open failed (errno is kept) */
    QN_EFORMAT = -4,    /* a file or message is not in the expected format */
    QN_ENOTFOUND = -5,  /* no such model / tensor / key */
    QN_ENOVERSION = -6, /* model exists, version does not */
    QN_ESHAPE = -7,     /* tensor shapes do not fit */
    QN_ETOOLARGE = -8,  /* past a configured size limit */
    QN_EFULL = -9,      /* a bounded queue or store is full */
    QN_EEXPIRED = -10,  /* a deadline passed */
    QN_ECLOSED = -11,   /* the object is shutting down */
    QN_ENOTSUP = -12,   /* not supported in this build / on this CPU */
    QN_EAGAIN = -13,    /* try again later (nothing ready yet) */
    QN_ETIMEDOUT = -14, /* a wait ran out */
    QN_EEXTERNAL = -15, /* a library (zmq, kafka, lmdb, cuda) failed; logged where it happened */
    QN_EINTERNAL = -16, /* a bug: should never reach a caller */
};

/* Static, never NULL; unknown codes give "unknown error". */
const char *qn_strerror(int err);

#endif
