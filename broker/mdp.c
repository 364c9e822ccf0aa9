/* mdp.c: see mdp.h. Everything here distrusts its input: lengths are
 * checked before every read, and nothing is copied. */
#include "mdp.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

static int bad(char *why, size_t whylen, const char *s)
{
    snprintf(why, whylen, "%s", s);
    return QN_EFORMAT;
}

static int is(const qn_mdp_frame *f, const char *s)
{
    size_t n = strlen(s);
    return f->len == n && memcmp(f->data, s, n) == 0;
}

int qn_mdp_parse_credit(const void *p, size_t len, int max, int *credit)
{
    static const char pre[] = "credit=";
    size_t pl = sizeof pre - 1;
    if (len <= pl || len > pl + 7 || memcmp(p, pre, pl) != 0) return QN_EFORMAT;
    const unsigned char *d = (const unsigned char *)p + pl;
    long v = 0;
    for (size_t i = 0; i < len - pl; i++) {
        if (d[i] < '0' || d[i] > '9') return QN_EFORMAT;
        v = v * 10 + (d[i] - '0');
    }
    if (v < 1 || v > max) return QN_EFORMAT;
    *credit = (int)v;
    return 0;
}

int qn_mdp_parse(const qn_mdp_frame *f, int n, qn_mdp_msg *m, char *why, size_t whylen)
{
    if (whylen) why[0] = 0;
    memset(m, 0, sizeof *m);
    if (n < 3) return bad(why, whylen, "fewer than 3 frames");
    m->sender = f[0];
    if (f[1].len != 0) return bad(why, whylen, "no empty delimiter after the routing id");
    if (is(&f[2], QN_MDPC_HEADER)) {
        if (n < 4) return bad(why, whylen, "client request without a service name");
        if (f[3].len == 0 || f[3].len > QN_MDP_SERVICE_MAX) return bad(why, whylen, "bad service name length");
        m->kind = QN_MDP_CLIENT_REQUEST;
        m->service = f[3];
        m->body = 4;
        return 0;
    }
    if (!is(&f[2], QN_MDPW_HEADER)) return bad(why, whylen, "unknown protocol header");
    if (n < 4 || f[3].len != 1) return bad(why, whylen, "worker message without a one-byte command");
    switch (((const unsigned char *)f[3].data)[0]) {
    case QN_MDPW_READY:
        if (n < 5 || f[4].len == 0 || f[4].len > QN_MDP_SERVICE_MAX)
            return bad(why, whylen, "READY without a valid service name");
        m->kind = QN_MDP_WORKER_READY;
        m->service = f[4];
        m->credit = 1;
        /* The credit frame, if any, is the first after the service name;
         * later frames are extensions this broker ignores. */
        if (n >= 6 && f[5].len >= 7 && memcmp(f[5].data, "credit=", 7) == 0 &&
            qn_mdp_parse_credit(f[5].data, f[5].len, 65536, &m->credit) != 0)
            return bad(why, whylen, "READY with a bad credit frame (want credit=N, N in 1..65536)");
        return 0;
    case QN_MDPW_REPLY:
        if (n < 6) return bad(why, whylen, "REPLY without client address and delimiter");
        if (f[5].len != 0) return bad(why, whylen, "REPLY without the empty frame after the address");
        m->kind = QN_MDP_WORKER_REPLY;
        m->address = f[4];
        m->body = 6;
        return 0;
    case QN_MDPW_HEARTBEAT: m->kind = QN_MDP_WORKER_HEARTBEAT; return 0;
    case QN_MDPW_DISCONNECT: m->kind = QN_MDP_WORKER_DISCONNECT; return 0;
    case QN_MDPW_REQUEST: return bad(why, whylen, "REQUEST sent to the broker by a worker");
    default: return bad(why, whylen, "unknown worker command");
    }
}

void qn_mdp_token_put(uint64_t seq, unsigned char out[QN_MDP_TOKEN_LEN])
{
    for (int i = QN_MDP_TOKEN_LEN - 1; i >= 0; i--, seq >>= 8) out[i] = (unsigned char)seq;
}

int qn_mdp_token_get(const void *p, size_t len, uint64_t *seq)
{
    if (len != QN_MDP_TOKEN_LEN) return QN_EFORMAT;
    const unsigned char *b = p;
    uint64_t v = 0;
    for (int i = 0; i < QN_MDP_TOKEN_LEN; i++) v = v << 8 | b[i];
    *seq = v;
    return 0;
}

static int key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

int qn_mdp_quern_error(const qn_mdp_frame *body, int nbody, qn_status status, qn_code code,
                       const char *message, qn_buf *out)
{
    if (nbody != 1 || body[0].len == 0) return 0;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int quern = 0, rc = 0;
    qn_id id = {0};
    if (msgpack_unpack_next(&u, body[0].data, body[0].len, &off) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        int has_v = 0, has_type = 0;
        const msgpack_object_map *mp = &u.data.via.map;
        for (uint32_t i = 0; i < mp->size; i++) {
            const msgpack_object *k = &mp->ptr[i].key, *v = &mp->ptr[i].val;
            if (key_is(k, "v")) has_v = 1;
            else if (key_is(k, "type")) has_type = v->type == MSGPACK_OBJECT_STR;
            else if (key_is(k, "id")) {
                if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                    if (v->via.u64 <= INT64_MAX) id = (qn_id){.kind = QN_ID_INT, .i = (int64_t)v->via.u64};
                    else id = (qn_id){.kind = QN_ID_UINT, .u = v->via.u64};
                } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                    id = (qn_id){.kind = QN_ID_INT, .i = v->via.i64};
                } else if (v->type == MSGPACK_OBJECT_STR) {
                    /* the result encoder reads s/len only; it never frees */
                    id = (qn_id){.kind = QN_ID_STR, .s = (char *)v->via.str.ptr, .len = v->via.str.size};
                }
            }
        }
        quern = has_v && has_type;
    }
    if (quern) {
        qn_result res = {.type = QN_RESULT_FINAL, .status = status, .id = id.kind ? &id : NULL,
                         .code = code, .message = message};
        rc = qn_result_encode(&res, out) == 0 ? 1 : QN_ENOMEM;
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}
