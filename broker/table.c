/* table.c: see table.h. Services and workers are few (tens), so the policies
 * scan a service's workers; requests are many, so queues and held lists are
 * intrusive doubly linked lists and nothing per request is O(workers) except
 * that scan. A reply searches its worker's held list, which credit bounds. */
#include "table.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "hmap.h"
#include "log.h"

struct qn_brk_table {
    qn_brk_opts o;
    qn_hmap *services, *workers;
    qn_brk_service *svc_head;
    qn_brk_worker *w_head;
    uint64_t next_seq, stamp, rng;
};

int qn_policy_parse(const char *s, qn_policy *out)
{
    static const char *names[] = {"lru", "round-robin", "random", "least-loaded"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = (qn_policy)i;
            return 0;
        }
    return QN_EINVAL;
}

const char *qn_policy_name(qn_policy p)
{
    switch (p) {
    case QN_POLICY_LRU: return "lru";
    case QN_POLICY_ROUND_ROBIN: return "round-robin";
    case QN_POLICY_RANDOM: return "random";
    case QN_POLICY_LEAST_LOADED: return "least-loaded";
    }
    return "?";
}

int qn_brk_table_create(const qn_brk_opts *o, qn_brk_table **out)
{
    if (o->retries < 0 || o->queue_limit < 1 || o->liveness_ms < 1 || o->policy < QN_POLICY_LRU ||
        o->policy > QN_POLICY_LEAST_LOADED)
        return QN_EINVAL;
    qn_brk_table *t = calloc(1, sizeof *t);
    if (!t) return QN_ENOMEM;
    t->o = *o;
    t->next_seq = 1;
    t->rng = o->seed ? o->seed : 0x9e3779b97f4a7c15ull;
    if (qn_hmap_create(&t->services) || qn_hmap_create(&t->workers)) goto fail;
    *out = t;
    return 0;
fail:
    qn_hmap_destroy(&t->services);
    qn_hmap_destroy(&t->workers);
    free(t);
    return QN_ENOMEM;
}

/* ---- lists */

static void q_push_back(qn_brk_req **head, qn_brk_req **tail, qn_brk_req *r)
{
    r->next = NULL;
    r->prev = *tail;
    if (*tail) (*tail)->next = r;
    else *head = r;
    *tail = r;
}

static void q_push_front(qn_brk_req **head, qn_brk_req **tail, qn_brk_req *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head) (*head)->prev = r;
    else *tail = r;
    *head = r;
}

static void q_unlink(qn_brk_req **head, qn_brk_req **tail, qn_brk_req *r)
{
    if (r->prev) r->prev->next = r->next;
    else *head = r->next;
    if (r->next) r->next->prev = r->prev;
    else *tail = r->prev;
    r->prev = r->next = NULL;
}

/* ---- services */

qn_brk_service *qn_brk_service_find(qn_brk_table *t, const void *name, size_t len)
{
    return qn_hmap_get(t->services, name, len);
}

int qn_brk_service_get(qn_brk_table *t, const void *name, size_t len, qn_brk_service **out)
{
    qn_brk_service *s = qn_hmap_get(t->services, name, len);
    if (s) {
        *out = s;
        return 0;
    }
    s = calloc(1, sizeof *s);
    if (!s) return QN_ENOMEM;
    s->name = malloc(len + 1);
    if (!s->name) goto fail;
    memcpy(s->name, name, len);
    s->name[len] = 0;
    s->namelen = len;
    if (qn_hmap_put(t->services, name, len, s) != 0) goto fail;
    s->gnext = t->svc_head;
    if (t->svc_head) t->svc_head->gprev = s;
    t->svc_head = s;
    *out = s;
    return 0;
fail:
    free(s->name);
    free(s);
    return QN_ENOMEM;
}

static void service_free(qn_brk_table *t, qn_brk_service *s)
{
    qn_hmap_del(t->services, s->name, s->namelen);
    if (s->gprev) s->gprev->gnext = s->gnext;
    else t->svc_head = s->gnext;
    if (s->gnext) s->gnext->gprev = s->gprev;
    free(s->workers);
    free(s->name);
    free(s);
}

int qn_brk_service_gc(qn_brk_table *t)
{
    int n = 0;
    for (qn_brk_service *s = t->svc_head, *next; s; s = next) {
        next = s->gnext;
        if (s->nworkers == 0 && s->queued == 0) {
            service_free(t, s);
            n++;
        }
    }
    return n;
}

size_t qn_brk_service_count(const qn_brk_table *t) { return qn_hmap_count(t->services); }
qn_brk_service *qn_brk_services(qn_brk_table *t) { return t->svc_head; }
int qn_brk_service_workers(const qn_brk_service *svc) { return svc ? svc->nworkers : 0; }

/* ---- workers */

int qn_brk_worker_add(qn_brk_table *t, const void *id, size_t len, qn_brk_service *svc, int credit,
                      int64_t now_ms, qn_brk_worker **out)
{
    if (credit < 1 || credit > QN_BRK_MAX_CREDIT || qn_hmap_get(t->workers, id, len)) return QN_EINVAL;
    qn_brk_worker *w = calloc(1, sizeof *w);
    if (!w) return QN_ENOMEM;
    w->id = malloc(len ? len : 1);
    if (!w->id) goto fail;
    memcpy(w->id, id, len);
    w->idlen = len;
    w->svc = svc;
    w->credit = credit;
    w->avail_stamp = ++t->stamp;
    w->expiry_ms = now_ms + t->o.liveness_ms;
    if (svc->nworkers == svc->capworkers) {
        int ncap = svc->capworkers ? svc->capworkers * 2 : 4;
        qn_brk_worker **nw = realloc(svc->workers, (size_t)ncap * sizeof *nw);
        if (!nw) goto fail;
        svc->workers = nw;
        svc->capworkers = ncap;
    }
    if (qn_hmap_put(t->workers, id, len, w) != 0) goto fail;
    svc->workers[svc->nworkers++] = w;
    w->gnext = t->w_head;
    if (t->w_head) t->w_head->gprev = w;
    t->w_head = w;
    *out = w;
    return 0;
fail:
    free(w->id);
    free(w);
    return QN_ENOMEM;
}

qn_brk_worker *qn_brk_worker_find(qn_brk_table *t, const void *id, size_t len)
{
    return qn_hmap_get(t->workers, id, len);
}

void qn_brk_worker_seen(qn_brk_table *t, qn_brk_worker *w, int64_t now_ms)
{
    w->expiry_ms = now_ms + t->o.liveness_ms;
}

qn_brk_worker *qn_brk_workers(qn_brk_table *t) { return t->w_head; }

int qn_brk_worker_remove(qn_brk_table *t, qn_brk_worker **pw, qn_brk_req **failed)
{
    qn_brk_worker *w = *pw;
    qn_brk_service *s = w->svc;
    int requeued = 0;
    /* Walk the held list from its tail, pushing each to the front of the
     * queue, so they keep the order they were dispatched in, ahead of
     * requests that never left the broker (they are older). */
    while (w->held_tail) {
        qn_brk_req *r = w->held_tail;
        q_unlink(&w->held_head, &w->held_tail, r);
        r->worker = NULL;
        if (r->attempts > t->o.retries) {
            r->next = *failed;
            *failed = r;
        } else {
            q_push_front(&s->q_head, &s->q_tail, r);
            s->queued++;
            requeued++;
        }
    }
    w->held = 0;
    int i = 0;
    while (i < s->nworkers && s->workers[i] != w) i++;
    QN_ASSERT(i < s->nworkers);
    memmove(&s->workers[i], &s->workers[i + 1], (size_t)(s->nworkers - i - 1) * sizeof *s->workers);
    s->nworkers--;
    if (s->rr_next > i) s->rr_next--;
    if (s->rr_next >= s->nworkers) s->rr_next = 0;
    qn_hmap_del(t->workers, w->id, w->idlen);
    if (w->gprev) w->gprev->gnext = w->gnext;
    else t->w_head = w->gnext;
    if (w->gnext) w->gnext->gprev = w->gprev;
    free(w->id);
    free(w);
    *pw = NULL;
    return requeued;
}

/* ---- requests */

int qn_brk_submit(qn_brk_table *t, qn_brk_service *svc, void *payload, qn_brk_req **out)
{
    if (svc->queued >= t->o.queue_limit) return QN_EFULL;
    qn_brk_req *r = calloc(1, sizeof *r);
    if (!r) return QN_ENOMEM;
    r->seq = t->next_seq++;
    r->svc = svc;
    r->payload = payload;
    q_push_back(&svc->q_head, &svc->q_tail, r);
    svc->queued++;
    *out = r;
    return 0;
}

static uint64_t rng_next(qn_brk_table *t)
{
    /* xorshift64*: enough to spread requests, and reproducible from --seed */
    uint64_t x = t->rng;
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    t->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static qn_brk_worker *pick(qn_brk_table *t, qn_brk_service *s)
{
    qn_brk_worker *best = NULL;
    int n = s->nworkers;
    switch (t->o.policy) {
    case QN_POLICY_LRU:
        for (int i = 0; i < n; i++) {
            qn_brk_worker *w = s->workers[i];
            if (w->held < w->credit && (!best || w->avail_stamp < best->avail_stamp)) best = w;
        }
        return best;
    case QN_POLICY_ROUND_ROBIN:
        for (int k = 0; k < n; k++) {
            int i = (s->rr_next + k) % n;
            qn_brk_worker *w = s->workers[i];
            if (w->held < w->credit) {
                s->rr_next = (i + 1) % n;
                return w;
            }
        }
        return NULL;
    case QN_POLICY_RANDOM: {
        int avail = 0;
        for (int i = 0; i < n; i++) avail += s->workers[i]->held < s->workers[i]->credit;
        if (!avail) return NULL;
        int k = (int)(rng_next(t) % (uint64_t)avail);
        for (int i = 0; i < n; i++) {
            qn_brk_worker *w = s->workers[i];
            if (w->held < w->credit && k-- == 0) return w;
        }
        return NULL;
    }
    case QN_POLICY_LEAST_LOADED:
        for (int i = 0; i < n; i++) {
            qn_brk_worker *w = s->workers[i];
            if (w->held >= w->credit) continue;
            if (!best) {
                best = w;
                continue;
            }
            /* held/credit compared without division */
            int64_t a = (int64_t)w->held * best->credit, b = (int64_t)best->held * w->credit;
            if (a < b || (a == b && w->avail_stamp < best->avail_stamp)) best = w;
        }
        return best;
    }
    return NULL;
}

qn_brk_req *qn_brk_next(qn_brk_table *t, qn_brk_service *svc, qn_brk_worker **w)
{
    if (!svc->q_head) return NULL;
    qn_brk_worker *wk = pick(t, svc);
    if (!wk) return NULL;
    qn_brk_req *r = svc->q_head;
    q_unlink(&svc->q_head, &svc->q_tail, r);
    svc->queued--;
    r->attempts++;
    r->worker = wk;
    q_push_back(&wk->held_head, &wk->held_tail, r);
    wk->held++;
    *w = wk;
    return r;
}

qn_brk_req *qn_brk_reply(qn_brk_table *t, qn_brk_worker *w, uint64_t seq)
{
    for (qn_brk_req *r = w->held_head; r; r = r->next) {
        if (r->seq != seq) continue;
        q_unlink(&w->held_head, &w->held_tail, r);
        r->worker = NULL;
        w->held--;
        w->replies++;
        w->avail_stamp = ++t->stamp;
        return r;
    }
    return NULL;
}

void qn_brk_req_free(qn_brk_req **r)
{
    if (!r || !*r) return;
    free(*r);
    *r = NULL;
}

void qn_brk_table_destroy(qn_brk_table **pt, void (*free_payload)(void *payload))
{
    qn_brk_table *t = pt ? *pt : NULL;
    if (!t) return;
    while (t->w_head) {
        qn_brk_worker *w = t->w_head;
        qn_brk_req *failed = NULL;
        qn_brk_worker_remove(t, &w, &failed);
        while (failed) {
            qn_brk_req *r = failed;
            failed = r->next;
            if (free_payload) free_payload(r->payload);
            free(r);
        }
    }
    while (t->svc_head) {
        qn_brk_service *s = t->svc_head;
        while (s->q_head) {
            qn_brk_req *r = s->q_head;
            q_unlink(&s->q_head, &s->q_tail, r);
            if (free_payload) free_payload(r->payload);
            free(r);
        }
        s->queued = 0;
        service_free(t, s);
    }
    qn_hmap_destroy(&t->services);
    qn_hmap_destroy(&t->workers);
    free(t);
    *pt = NULL;
}
