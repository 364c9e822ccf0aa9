/* test_hmap.c: broker/hmap.c — put/get/del under growth and heavy churn
 * (backward-shift deletion must keep every other key findable). */
#include "qn_test.h"

#include "error.h"
#include "hmap.h"

TEST(basic)
{
    qn_hmap *m;
    CHECK_EQ_INT(qn_hmap_create(&m), 0);
    int a = 1, b = 2;
    CHECK(qn_hmap_get(m, "x", 1) == NULL);
    CHECK_EQ_INT(qn_hmap_put(m, "x", 1, &a), 0);
    CHECK_EQ_INT(qn_hmap_put(m, "\0x", 2, &b), 0); /* binary keys */
    CHECK(qn_hmap_get(m, "x", 1) == &a);
    CHECK(qn_hmap_get(m, "\0x", 2) == &b);
    CHECK_EQ_INT(qn_hmap_put(m, "x", 1, &b), 0);
    CHECK(qn_hmap_get(m, "x", 1) == &b);
    CHECK_EQ_INT(qn_hmap_count(m), 2);
    CHECK(qn_hmap_del(m, "x", 1) == &b);
    CHECK(qn_hmap_del(m, "x", 1) == NULL);
    CHECK_EQ_INT(qn_hmap_put(m, "", 0, &a), 0);
    CHECK(qn_hmap_get(m, "", 0) == &a);
    qn_hmap_destroy(&m);
    CHECK(m == NULL);
    qn_hmap_destroy(&m);
}

TEST(churn_against_a_reference)
{
    enum { N = 5000 };
    static int present[N];
    static int vals[N];
    qn_hmap *m;
    qn_hmap_create(&m);
    unsigned s = 12345;
    size_t count = 0;
    for (int step = 0; step < 200000; step++) {
        s = s * 1103515245u + 12345u;
        int k = (int)((s >> 8) % N);
        char key[16];
        int len = snprintf(key, sizeof key, "k%d", k);
        if ((s >> 4) & 1) {
            if (!present[k]) count++;
            present[k] = 1;
            CHECK_EQ_INT(qn_hmap_put(m, key, (size_t)len, &vals[k]), 0);
        } else {
            void *v = qn_hmap_del(m, key, (size_t)len);
            CHECK(v == (present[k] ? &vals[k] : NULL));
            if (present[k]) count--;
            present[k] = 0;
        }
    }
    CHECK_EQ_INT(qn_hmap_count(m), count);
    for (int k = 0; k < N; k++) {
        char key[16];
        int len = snprintf(key, sizeof key, "k%d", k);
        CHECK(qn_hmap_get(m, key, (size_t)len) == (present[k] ? &vals[k] : NULL));
    }
    qn_hmap_destroy(&m);
}

int main(void)
{
    RUN(basic);
    RUN(churn_against_a_reference);
    return qn_test_done();
}
