/* error.c: messages for QN_E* codes. */
#include "error.h"

const char *qn_strerror(int err)
{
    switch (err) {
    case QN_OK: return "success";
    case QN_EINVAL: return "invalid argument";
    case QN_ENOMEM: return "out of memory";
    case QN_EIO: return "input/output error";
    case QN_EFORMAT: return "bad format";
    case QN_ENOTFOUND: return "not found";
    case QN_ENOVERSION: return "no such version";
    case QN_ESHAPE: return "shape mismatch";
    case QN_ETOOLARGE: return "too large";
    case QN_EFULL: return "full";
    case QN_EEXPIRED: return "expired";
    case QN_ECLOSED: return "closed";
    case QN_ENOTSUP: return "not supported";
    case QN_EAGAIN: return "try again";
    case QN_ETIMEDOUT: return "timed out";
    case QN_EEXTERNAL: return "library error";
    case QN_EINTERNAL: return "internal error";
    default: return "unknown error";
    }
}
