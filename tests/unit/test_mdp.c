/* test_mdp.c: broker/mdp.c — RFC 7 framing as the broker's ROUTER sees it,
 * the credit frame, request tokens, and the broker's error replies. */
#include "qn_test.h"

#include "error.h"
#include "mdp.h"

#define F(s) ((qn_mdp_frame){s, sizeof s - 1})
static const unsigned char c_ready = 1, c_req = 2, c_reply = 3, c_hb = 4, c_disc = 5, c_bad = 9;
#define C(c) ((qn_mdp_frame){&c, 1})

TEST(client_request)
{
    qn_mdp_frame f[] = {F("\x00id"), F(""), F("MDPC01"), F("echo"), F("body1"), F("body2")};
    qn_mdp_msg m;
    char why[128];
    CHECK_EQ_INT(qn_mdp_parse(f, 6, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.kind, QN_MDP_CLIENT_REQUEST);
    CHECK(m.service.len == 4 && memcmp(m.service.data, "echo", 4) == 0);
    CHECK_EQ_INT(m.body, 4);
    CHECK_EQ_INT(m.sender.len, 3);
    /* no body at all is still a request */
    CHECK_EQ_INT(qn_mdp_parse(f, 4, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.body, 4);
}

TEST(worker_commands)
{
    qn_mdp_msg m;
    char why[128];
    qn_mdp_frame ready[] = {F("w"), F(""), F("MDPW01"), C(c_ready), F("echo")};
    CHECK_EQ_INT(qn_mdp_parse(ready, 5, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.kind, QN_MDP_WORKER_READY);
    CHECK_EQ_INT(m.credit, 1);
    qn_mdp_frame ready_c[] = {F("w"), F(""), F("MDPW01"), C(c_ready), F("echo"), F("credit=64"), F("x-ext")};
    CHECK_EQ_INT(qn_mdp_parse(ready_c, 7, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.credit, 64);
    qn_mdp_frame ready_ext[] = {F("w"), F(""), F("MDPW01"), C(c_ready), F("echo"), F("quern")};
    CHECK_EQ_INT(qn_mdp_parse(ready_ext, 6, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.credit, 1);
    qn_mdp_frame reply[] = {F("w"), F(""), F("MDPW01"), C(c_reply), F("ADDRESS8"), F(""), F("b")};
    CHECK_EQ_INT(qn_mdp_parse(reply, 7, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.kind, QN_MDP_WORKER_REPLY);
    CHECK_EQ_INT(m.body, 6);
    CHECK_EQ_INT(m.address.len, 8);
    qn_mdp_frame hb[] = {F("w"), F(""), F("MDPW01"), C(c_hb)};
    CHECK_EQ_INT(qn_mdp_parse(hb, 4, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.kind, QN_MDP_WORKER_HEARTBEAT);
    qn_mdp_frame disc[] = {F("w"), F(""), F("MDPW01"), C(c_disc)};
    CHECK_EQ_INT(qn_mdp_parse(disc, 4, &m, why, sizeof why), 0);
    CHECK_EQ_INT(m.kind, QN_MDP_WORKER_DISCONNECT);
}

TEST(malformed_is_refused_with_a_reason)
{
    qn_mdp_msg m;
    char why[128];
    qn_mdp_frame a[] = {F("w"), F("x"), F("MDPC01"), F("echo")};
    CHECK_EQ_INT(qn_mdp_parse(a, 4, &m, why, sizeof why), QN_EFORMAT);
    CHECK(strstr(why, "delimiter") != NULL);
    qn_mdp_frame b[] = {F("w"), F(""), F("MDPX01"), F("echo")};
    CHECK_EQ_INT(qn_mdp_parse(b, 4, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame c[] = {F("w"), F(""), F("MDPC01")};
    CHECK_EQ_INT(qn_mdp_parse(c, 3, &m, why, sizeof why), QN_EFORMAT);
    CHECK_EQ_INT(qn_mdp_parse(c, 2, &m, why, sizeof why), QN_EFORMAT);
    CHECK_EQ_INT(qn_mdp_parse(c, 0, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame d[] = {F("w"), F(""), F("MDPC01"), F("")};
    CHECK_EQ_INT(qn_mdp_parse(d, 4, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame e[] = {F("w"), F(""), F("MDPW01"), C(c_bad)};
    CHECK_EQ_INT(qn_mdp_parse(e, 4, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame e2[] = {F("w"), F(""), F("MDPW01"), F("\x01\x01")};
    CHECK_EQ_INT(qn_mdp_parse(e2, 4, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame g[] = {F("w"), F(""), F("MDPW01"), C(c_ready)};
    CHECK_EQ_INT(qn_mdp_parse(g, 4, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame h[] = {F("w"), F(""), F("MDPW01"), C(c_ready), F("s"), F("credit=0")};
    CHECK_EQ_INT(qn_mdp_parse(h, 6, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame h2[] = {F("w"), F(""), F("MDPW01"), C(c_ready), F("s"), F("credit=12x")};
    CHECK_EQ_INT(qn_mdp_parse(h2, 6, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame i[] = {F("w"), F(""), F("MDPW01"), C(c_reply), F("addr")};
    CHECK_EQ_INT(qn_mdp_parse(i, 5, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame j[] = {F("w"), F(""), F("MDPW01"), C(c_reply), F("addr"), F("nonempty"), F("b")};
    CHECK_EQ_INT(qn_mdp_parse(j, 7, &m, why, sizeof why), QN_EFORMAT);
    qn_mdp_frame k[] = {F("w"), F(""), F("MDPW01"), C(c_req), F("addr"), F(""), F("b")};
    CHECK_EQ_INT(qn_mdp_parse(k, 7, &m, why, sizeof why), QN_EFORMAT);
    char big[QN_MDP_SERVICE_MAX + 1];
    memset(big, 'a', sizeof big);
    qn_mdp_frame l[] = {F("w"), F(""), F("MDPC01"), {big, sizeof big}};
    CHECK_EQ_INT(qn_mdp_parse(l, 4, &m, why, sizeof why), QN_EFORMAT);
}

TEST(credit_frame)
{
    int c = 0;
    CHECK_EQ_INT(qn_mdp_parse_credit("credit=1", 8, 100, &c), 0);
    CHECK_EQ_INT(c, 1);
    CHECK_EQ_INT(qn_mdp_parse_credit("credit=100", 10, 100, &c), 0);
    CHECK_EQ_INT(qn_mdp_parse_credit("credit=101", 10, 100, &c), QN_EFORMAT);
    CHECK_EQ_INT(qn_mdp_parse_credit("credit=", 7, 100, &c), QN_EFORMAT);
    CHECK_EQ_INT(qn_mdp_parse_credit("credit=-1", 9, 100, &c), QN_EFORMAT);
    CHECK_EQ_INT(qn_mdp_parse_credit("credit=99999999", 15, 1 << 30, &c), QN_EFORMAT);
    CHECK_EQ_INT(qn_mdp_parse_credit("credits=1", 9, 100, &c), QN_EFORMAT);
}

TEST(tokens)
{
    unsigned char t[QN_MDP_TOKEN_LEN];
    qn_mdp_token_put(0x0102030405060708ull, t);
    CHECK(t[0] == 1 && t[7] == 8);
    uint64_t seq = 0;
    CHECK_EQ_INT(qn_mdp_token_get(t, sizeof t, &seq), 0);
    CHECK(seq == 0x0102030405060708ull);
    CHECK_EQ_INT(qn_mdp_token_get(t, 7, &seq), QN_EFORMAT);
}

TEST(quern_error_replies)
{
    /* {"v":1,"id":"job-7","type":"predict","model":"m"} */
    qn_buf job = {0};
    static const unsigned char j[] = {0x84, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0xa5, 'j', 'o', 'b', '-', '7',
                                      0xa4, 't', 'y', 'p', 'e', 0xa7, 'p', 'r', 'e', 'd', 'i', 'c', 't',
                                      0xa5, 'm', 'o', 'd', 'e', 'l', 0xa1, 'm'};
    qn_buf_append(&job, j, sizeof j);
    qn_mdp_frame body = {job.data, job.len};
    qn_buf out = {0};
    CHECK_EQ_INT(qn_mdp_quern_error(&body, 1, QN_STATUS_REJECTED, QN_CODE_OVERLOADED, "queue full", &out), 1);
    qn_result_view v;
    CHECK_EQ_INT(qn_result_decode(out.data, out.len, &v), 0);
    CHECK_EQ_INT(v.status, QN_STATUS_REJECTED);
    CHECK_EQ_INT(v.code, QN_CODE_OVERLOADED);
    CHECK_EQ_INT(v.id_kind, QN_ID_STR);
    CHECK_STR(v.id_str, "job-7");
    CHECK_STR(v.message, "queue full");
    free(v.outputs);
    /* an int id */
    static const unsigned char j2[] = {0x83, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0xcd, 0x30, 0x39,
                                       0xa4, 't', 'y', 'p', 'e', 0xa7, 'p', 'r', 'e', 'd', 'i', 'c', 't'};
    qn_buf_reset(&out);
    body = (qn_mdp_frame){j2, sizeof j2};
    CHECK_EQ_INT(qn_mdp_quern_error(&body, 1, QN_STATUS_ERROR, QN_CODE_INTERNAL, "gone", &out), 1);
    CHECK_EQ_INT(qn_result_decode(out.data, out.len, &v), 0);
    CHECK_EQ_INT(v.status, QN_STATUS_ERROR);
    CHECK_EQ_INT(v.code, QN_CODE_INTERNAL);
    CHECK_EQ_INT(v.id_kind, QN_ID_INT);
    CHECK_EQ_INT(v.id_int, 12345);
    free(v.outputs);
    /* not quern: plain bytes, a map without v/type, two frames */
    qn_buf_reset(&out);
    body = F("hello");
    CHECK_EQ_INT(qn_mdp_quern_error(&body, 1, QN_STATUS_ERROR, QN_CODE_INTERNAL, "x", &out), 0);
    static const unsigned char m[] = {0x81, 0xa1, 'a', 0x01};
    body = (qn_mdp_frame){m, sizeof m};
    CHECK_EQ_INT(qn_mdp_quern_error(&body, 1, QN_STATUS_ERROR, QN_CODE_INTERNAL, "x", &out), 0);
    qn_mdp_frame two[2] = {{j2, sizeof j2}, {j2, sizeof j2}};
    CHECK_EQ_INT(qn_mdp_quern_error(two, 2, QN_STATUS_ERROR, QN_CODE_INTERNAL, "x", &out), 0);
    CHECK_EQ_INT(qn_mdp_quern_error(two, 0, QN_STATUS_ERROR, QN_CODE_INTERNAL, "x", &out), 0);
    /* truncated msgpack is not quern, and not a crash */
    body = (qn_mdp_frame){j, 10};
    CHECK_EQ_INT(qn_mdp_quern_error(&body, 1, QN_STATUS_ERROR, QN_CODE_INTERNAL, "x", &out), 0);
    CHECK_EQ_INT(out.len, 0);
    qn_buf_free(&out);
    qn_buf_free(&job);
}

int main(void)
{
    RUN(client_request);
    RUN(worker_commands);
    RUN(malformed_is_refused_with_a_reason);
    RUN(credit_frame);
    RUN(tokens);
    RUN(quern_error_replies);
    return qn_test_done();
}
