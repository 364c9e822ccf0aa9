/* table.h: the broker's state without its sockets: services, the workers
 * serving them, the queue of requests waiting for each service, which
 * worker holds which request, and the dispatch policies. Pure bookkeeping,
 * so that every decision the broker makes (who gets the next request, what
 * happens to requests held by a worker that died, when the queue is full)
 * is unit-testable without ZeroMQ.
 *
 * Model: a request is queued on its service (FIFO) until some worker of that
 * service has spare credit; the policy picks which one. A worker holds at
 * most `credit` requests (1 for plain MDP workers); each reply frees one unit.
 * When a worker goes away, the requests it holds go back to the front of the
 * queue, unless they have already been dispatched 1 + retries times: those
 * are handed back to the caller to answer with an error.
 *
 * Times are in milliseconds on any monotonic clock the caller chooses.
 * Not thread-safe: one broker thread owns a table. */
#ifndef QN_BROKER_TABLE_H
#define QN_BROKER_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    QN_POLICY_LRU = 0,      /* the worker whose credit came back longest ago (the reference broker's) */
    QN_POLICY_ROUND_ROBIN,  /* the next worker with spare credit after the last one chosen */
    QN_POLICY_RANDOM,       /* uniformly among the workers with spare credit */
    QN_POLICY_LEAST_LOADED, /* fewest requests held per unit of credit; ties as lru */
} qn_policy;

/* "lru", "round-robin", "random", "least-loaded": 0 and *out set, or QN_EINVAL. */
int qn_policy_parse(const char *s, qn_policy *out);
const char *qn_policy_name(qn_policy p);

#define QN_BRK_MAX_CREDIT 65536

typedef struct qn_brk_service qn_brk_service;
typedef struct qn_brk_worker qn_brk_worker;

typedef struct qn_brk_req {
    uint64_t seq;                /* unique per table, never reused */
    int attempts;                /* times dispatched so far */
    qn_brk_service *svc;
    qn_brk_worker *worker;       /* holder, NULL while queued */
    struct qn_brk_req *prev, *next; /* in the service queue or the holder's list;
                                       in a failed list (qn_brk_worker_remove) only next */
    void *payload;               /* the caller's (client envelope, body); never touched here */
} qn_brk_req;

struct qn_brk_worker {
    unsigned char *id;           /* the peer's routing id, owned */
    size_t idlen;
    qn_brk_service *svc;
    int credit;                  /* most requests held at once, >= 1 */
    int held;                    /* requests held now */
    uint64_t avail_stamp;        /* when credit last came back (READY, reply): lru's key */
    int64_t expiry_ms;           /* dead when nothing was heard from it by then */
    uint64_t replies;            /* replies accepted from it */
    qn_brk_req *held_head, *held_tail;
    qn_brk_worker *gprev, *gnext; /* every worker of the table */
};

struct qn_brk_service {
    char *name;                  /* NUL-terminated copy; may contain other bytes before */
    size_t namelen;
    qn_brk_worker **workers;     /* in READY order */
    int nworkers, capworkers;
    int rr_next;                 /* round-robin: index to try first */
    qn_brk_req *q_head, *q_tail;
    int64_t queued;
    qn_brk_service *gprev, *gnext; /* every service of the table */
};

typedef struct qn_brk_opts {
    qn_policy policy;
    int retries;          /* re-dispatches after the first, >= 0 */
    int64_t queue_limit;  /* most queued (not dispatched) requests per service, >= 1 */
    int64_t liveness_ms;  /* a worker is dead this long after it was last heard from */
    uint64_t seed;        /* for the random policy */
} qn_brk_opts;

typedef struct qn_brk_table qn_brk_table;

/* 0 or QN_ENOMEM / QN_EINVAL (an option out of range). */
int qn_brk_table_create(const qn_brk_opts *o, qn_brk_table **out);
/* Frees everything; free_payload (may be NULL) is called for each request
 * still queued or held. Sets *t NULL. NULL-safe. */
void qn_brk_table_destroy(qn_brk_table **t, void (*free_payload)(void *payload));

/* The service named name[0..len), or NULL. */
qn_brk_service *qn_brk_service_find(qn_brk_table *t, const void *name, size_t len);
/* The same, created (empty, no workers) when absent: services exist on demand.
 * 0 or QN_ENOMEM. */
int qn_brk_service_get(qn_brk_table *t, const void *name, size_t len, qn_brk_service **out);
/* Drops services with no workers and nothing queued (memory stays bounded by
 * what is live however many names clients try). Returns how many. */
int qn_brk_service_gc(qn_brk_table *t);
size_t qn_brk_service_count(const qn_brk_table *t);
/* The first service of the table (follow ->gnext). */
qn_brk_service *qn_brk_services(qn_brk_table *t);

/* Registers a worker (its READY) with credit in [1, QN_BRK_MAX_CREDIT].
 * QN_EINVAL: the id is already registered or credit is out of range;
 * QN_ENOMEM. */
int qn_brk_worker_add(qn_brk_table *t, const void *id, size_t len, qn_brk_service *svc, int credit,
                      int64_t now_ms, qn_brk_worker **out);
qn_brk_worker *qn_brk_worker_find(qn_brk_table *t, const void *id, size_t len);
/* Something arrived from w: it lives until now + liveness. */
void qn_brk_worker_seen(qn_brk_table *t, qn_brk_worker *w, int64_t now_ms);
/* The first worker of the table (follow ->gnext); save gnext before removing. */
qn_brk_worker *qn_brk_workers(qn_brk_table *t);
/* Removes w (DISCONNECT, missed heartbeats, unreachable) and frees it, *w
 * set NULL. Requests it held go back to the front of the service queue in
 * their dispatch order; those dispatched 1 + retries times already are
 * prepended to *failed (linked by ->next; the caller answers and frees them).
 * Returns how many were requeued. */
int qn_brk_worker_remove(qn_brk_table *t, qn_brk_worker **w, qn_brk_req **failed);

/* Queues a request for svc (payload borrowed until the request is freed).
 * 0 and *out set; QN_EFULL when svc already has queue_limit requests queued
 * (nothing is queued then; the caller answers the client); QN_ENOMEM. */
int qn_brk_submit(qn_brk_table *t, qn_brk_service *svc, void *payload, qn_brk_req **out);
/* The next dispatch for svc: when a request is queued and a worker has spare
 * credit, takes the head of the queue, gives it to the worker the policy
 * picks (counted as one attempt) and returns it with *w set. NULL when there
 * is nothing to do. Call until NULL after anything that queued a request or
 * freed credit. */
qn_brk_req *qn_brk_next(qn_brk_table *t, qn_brk_service *svc, qn_brk_worker **w);
/* w replied to the request with seq: returns that request, no longer held
 * (w's credit comes back), for the caller to answer and free. NULL when w does
 * not hold it (a late or forged reply: drop it). */
qn_brk_req *qn_brk_reply(qn_brk_table *t, qn_brk_worker *w, uint64_t seq);
/* Frees a request that is neither queued nor held (after qn_brk_reply, or
 * from a failed list); the payload is the caller's. Sets *r NULL. */
void qn_brk_req_free(qn_brk_req **r);

/* Live workers of svc (mmi.workers). */
int qn_brk_service_workers(const qn_brk_service *svc);

#endif
