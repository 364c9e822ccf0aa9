/* mdp.h: the Majordomo Protocol (RFC 7, MDP 0.1) as the broker's ROUTER
 * sees it, and the broker's error replies. Framing only: no sockets, no
 * state, so both directions are unit-testable from byte arrays.
 *
 * On the broker's ROUTER every message starts with the sender's routing id,
 * then the empty delimiter, then the protocol header:
 *   client request: id, "", "MDPC01", service, body...
 *   worker READY:   id, "", "MDPW01", 0x01, service [, "credit=N"] [, ...]
 *   worker REPLY:   id, "", "MDPW01", 0x03, client address, "", body...
 *   HEARTBEAT:      id, "", "MDPW01", 0x04
 *   DISCONNECT:     id, "", "MDPW01", 0x05
 * The broker sends a worker REQUEST (0x02) with the client address frame
 * being this broker's 8-byte request token (opaque to the worker, which
 * echoes it in REPLY). schemas/broker.md is the long form. */
#ifndef QN_MDP_H
#define QN_MDP_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"

#define QN_MDPC_HEADER "MDPC01"
#define QN_MDPW_HEADER "MDPW01"
enum {
    QN_MDPW_READY = 1,
    QN_MDPW_REQUEST = 2,
    QN_MDPW_REPLY = 3,
    QN_MDPW_HEARTBEAT = 4,
    QN_MDPW_DISCONNECT = 5,
};
#define QN_MDP_SERVICE_MAX 255 /* longer service names are malformed */
#define QN_MDP_TOKEN_LEN 8

typedef struct qn_mdp_frame {
    const void *data;
    size_t len;
} qn_mdp_frame;

typedef enum {
    QN_MDP_CLIENT_REQUEST = 0,
    QN_MDP_WORKER_READY,
    QN_MDP_WORKER_REPLY,
    QN_MDP_WORKER_HEARTBEAT,
    QN_MDP_WORKER_DISCONNECT,
} qn_mdp_kind;

typedef struct qn_mdp_msg {
    qn_mdp_kind kind;
    qn_mdp_frame sender;  /* routing id (frame 0) */
    qn_mdp_frame service; /* CLIENT_REQUEST, WORKER_READY */
    qn_mdp_frame address; /* WORKER_REPLY: the client address the worker echoed */
    int credit;           /* WORKER_READY: from "credit=N", 1 when absent */
    int body;             /* CLIENT_REQUEST, WORKER_REPLY: index of the first body frame
                             (== nframes when there is none) */
} qn_mdp_msg;

/* Parses the n frames f[] of one message received on the broker's ROUTER.
 * The fields of *m point into f. Returns 0, or QN_EFORMAT with a short
 * reason in why (always NUL-terminated) for anything RFC 7 does not frame
 * (no delimiter, unknown header or command, missing service or address,
 * a bad credit frame, a worker sending REQUEST). READY frames after the
 * credit that this broker does not know are ignored (extensions). */
int qn_mdp_parse(const qn_mdp_frame *f, int n, qn_mdp_msg *m, char *why, size_t whylen);

/* Parses "credit=N" with N in [1, max]: 0 and *credit set; QN_EFORMAT. */
int qn_mdp_parse_credit(const void *p, size_t len, int max, int *credit);

/* The token carried as client address in REQUEST. */
void qn_mdp_token_put(uint64_t seq, unsigned char out[QN_MDP_TOKEN_LEN]);
/* 0 and *seq set, or QN_EFORMAT when the frame is not a token. */
int qn_mdp_token_get(const void *p, size_t len, uint64_t *seq);

/* The broker's own error reply for a request it cannot serve. When the body
 * is one frame holding a quern job (a msgpack map with "v" and "type"), out
 * gets the contract's result (v 1, the job's id when it is an int or str,
 * type "result", the status, error {code, message}) and 1 is returned; else
 * 0 and out is untouched (the caller sends the plain form, schemas/broker.md).
 * QN_ENOMEM. */
int qn_mdp_quern_error(const qn_mdp_frame *body, int nbody, qn_status status, qn_code code,
                       const char *message, qn_buf *out);

#endif
