/* test_model.c: loading quern.mlp.v1 and quern.mlp.c1 models. Files are
 * written with qn_st_write; every field of every representation is checked,
 * then every way a file can be wrong. Last, models written by the numpy tool
 * (tests/tools/quern_model.py) are run through a naive forward pass over the
 * loaded layers and compared with numpy's reference output: that pins the
 * meaning of each representation to an implementation that shares no code
 * with this one. */
#include <libgen.h>
#include <stdint.h>

#include "backend.h"
#include "error.h"
#include "model.h"
#include "qn_test.h"
#include "safetensors.h"

static char *g_tmp;
static char g_path[4096];

static const char *path_of(const char *leaf)
{
    snprintf(g_path, sizeof g_path, "%s/%s", g_tmp, leaf);
    return g_path;
}

/* ---- tensors used by most tests: a 4 -> 3 -> 2 chain and its compressed forms */

static float W1[12] = {1, 2, 3, 4, -1, -2, -3, -4, 0.5f, 0.25f, 0.125f, 0};   /* [3,4] */
static float B1[3] = {0.1f, 0.2f, 0.3f};
static float W2[6] = {1, 0, -1, 2, 0.5f, 0};                                    /* [2,3] */
static float B4[4] = {0};
static uint16_t WH[12];                                                         /* f16 [3,4] */
static int8_t WQ[12] = {127, -127, 0, 1, 2, 3, 4, 5, -6, -7, -8, -128};        /* [3,4] */
static float S3[3] = {0.5f, 0.25f, 2.0f};
/* CSR of a [3,4] matrix with 5 non-zeros:
 *   row 0: (0, 1.0) (3, 2.0); row 1: (1, -1.0); row 2: (0, 3.0) (2, 4.0) */
static int32_t P[4] = {0, 2, 3, 5};
static int32_t I[5] = {0, 3, 1, 0, 2};
static float V[5] = {1, 2, -1, 3, 4};
static int8_t VQ[5] = {1, 2, -1, 3, 4};
static int32_t P_START1[4] = {1, 2, 3, 5};
static int32_t P_DEC[4] = {0, 3, 2, 5};
static int32_t P_END[4] = {0, 2, 3, 4};
static int32_t I_OOB[5] = {0, 4, 1, 0, 2};
static int32_t I_NEG[5] = {0, -1, 1, 0, 2};
static int32_t I_DUP[5] = {3, 3, 1, 0, 2};
static int32_t P0[4] = {0, 0, 0, 0};
static int32_t IW[12];

#define T2(n, dt, a, b, d) {.name = n, .dtype = dt, .ndim = 2, .shape = {a, b}, .data = d, .nbytes = (size_t)(a) * (b) * sizeof *(d)}
#define T1(n, dt, a, d) {.name = n, .dtype = dt, .ndim = 1, .shape = {a}, .data = d, .nbytes = (size_t)(a) * sizeof *(d)}

static qn_st_tensor g_ts[] = {
    T2("w", QN_DTYPE_F32, 3, 4, W1),
    T1("b", QN_DTYPE_F32, 3, B1),
    T2("w2", QN_DTYPE_F32, 2, 3, W2),
    T1("b4", QN_DTYPE_F32, 4, B4),
    T2("wh", QN_DTYPE_F16, 3, 4, WH),
    T2("wq", QN_DTYPE_I8, 3, 4, WQ),
    T1("s", QN_DTYPE_F32, 3, S3),
    T1("p", QN_DTYPE_I32, 4, P),
    T1("i", QN_DTYPE_I32, 5, I),
    T1("v", QN_DTYPE_F32, 5, V),
    T1("vq", QN_DTYPE_I8, 5, VQ),
    T1("p_start1", QN_DTYPE_I32, 4, P_START1),
    T1("p_dec", QN_DTYPE_I32, 4, P_DEC),
    T1("p_end", QN_DTYPE_I32, 4, P_END),
    T1("i_oob", QN_DTYPE_I32, 5, I_OOB),
    T1("i_neg", QN_DTYPE_I32, 5, I_NEG),
    T1("i_dup", QN_DTYPE_I32, 5, I_DUP),
    T1("p0", QN_DTYPE_I32, 4, P0),
    {.name = "i0", .dtype = QN_DTYPE_I32, .ndim = 1, .shape = {0}, .data = NULL, .nbytes = 0},
    {.name = "v0", .dtype = QN_DTYPE_F32, .ndim = 1, .shape = {0}, .data = NULL, .nbytes = 0},
    T1("w1d", QN_DTYPE_F32, 12, W1),
    T2("wi32", QN_DTYPE_I32, 3, 4, IW),
    {.name = "w0", .dtype = QN_DTYPE_F32, .ndim = 2, .shape = {0, 4}, .data = NULL, .nbytes = 0},
    {.name = "w3d", .dtype = QN_DTYPE_F32, .ndim = 3, .shape = {3, 4, 1}, .data = W1, .nbytes = 48},
};
#define NTS (sizeof g_ts / sizeof g_ts[0])

/* Writes the standard tensors with the given metadata (NULL: key absent). */
static const char *write_model(const char *leaf, const char *format, const char *layers)
{
    const char *meta[4];
    size_t n = 0;
    if (format) { meta[2 * n] = "format"; meta[2 * n + 1] = format; n++; }
    if (layers) { meta[2 * n] = "layers"; meta[2 * n + 1] = layers; n++; }
    const char *p = path_of(leaf);
    char err[256] = "";
    int rc = qn_st_write(p, g_ts, NTS, meta, n, err, sizeof err);
    if (rc) fprintf(stderr, "write_model: %s\n", err);
    return p;
}

static int load(const char *path, qn_model **m, char *err, size_t errlen)
{
    *m = (qn_model *)0x1;
    int rc = qn_model_load(path, "m", 7, m, err, errlen);
    if (rc) CHECK(*m == NULL);
    return rc;
}

static int aligned(const void *p) { return p && ((uintptr_t)p % 64) == 0; }

TEST(names)
{
    for (int a = 0; a < QN_ACT_COUNT; a++) {
        qn_act back = QN_ACT_COUNT;
        CHECK_EQ_INT(qn_act_from_name(qn_act_name((qn_act)a), &back), 0);
        CHECK_EQ_INT(back, a);
    }
    qn_act x;
    CHECK_EQ_INT(qn_act_from_name("Relu", &x), QN_EFORMAT);
    CHECK_EQ_INT(qn_act_from_name("", &x), QN_EFORMAT);
    CHECK_EQ_INT(qn_act_from_name(NULL, &x), QN_EFORMAT);
    CHECK_STR(qn_act_name(QN_ACT_GELU), "gelu");
    CHECK_STR(qn_act_name(QN_ACT_SOFTMAX), "softmax");
    CHECK_STR(qn_rep_name(QN_REP_F32), "f32");
    CHECK_STR(qn_rep_name(QN_REP_F16), "f16");
    CHECK_STR(qn_rep_name(QN_REP_I8), "int8");
    CHECK_STR(qn_rep_name(QN_REP_CSR_F32), "csr_f32");
    CHECK_STR(qn_rep_name(QN_REP_CSR_I8), "csr_int8");
}

TEST(v1_dense)
{
    const char *p = write_model("v1.safetensors", "quern.mlp.v1",
        "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":\"b\",\"activation\":\"relu\"},"
        " {\"type\":\"dense\",\"weight\":\"w2\",\"bias\":null,\"activation\":\"softmax\"}]");
    qn_model *m;
    char err[256] = "";
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (!m) { fprintf(stderr, "%s\n", err); return; }
    CHECK_STR(m->name, "m");
    CHECK_EQ_INT(m->version, 7);
    CHECK_EQ_INT(m->nlayers, 2);
    CHECK_EQ_INT(m->in_dim, 4);
    CHECK_EQ_INT(m->out_dim, 2);
    CHECK_EQ_INT(m->max_width, 4);
    CHECK_EQ_INT(m->param_count, 12 + 3 + 6);
    struct stat st;
    stat(p, &st);
    CHECK_EQ_INT(m->file_bytes, st.st_size);
    CHECK_EQ_INT(atomic_load(&m->refs), 1);
    CHECK(m->backend == NULL && m->backend_state == NULL);

    qn_layer *l = &m->layers[0];
    CHECK(l->rep == QN_REP_F32 && l->in == 4 && l->out == 3 && l->act == QN_ACT_RELU);
    CHECK(aligned(l->w) && aligned(l->bias));
    CHECK(memcmp(l->w, W1, sizeof W1) == 0 && memcmp(l->bias, B1, sizeof B1) == 0);
    CHECK(!l->w_f16 && !l->w_i8 && !l->w_scale && !l->csr_indptr && !l->kernel_data);
    CHECK_EQ_INT(qn_layer_bytes(l), 12 * 4 + 3 * 4);
    l = &m->layers[1];
    CHECK(l->rep == QN_REP_F32 && l->in == 3 && l->out == 2 && l->act == QN_ACT_SOFTMAX);
    CHECK(l->bias == NULL && memcmp(l->w, W2, sizeof W2) == 0);
    CHECK_EQ_INT(qn_layer_bytes(l), 6 * 4);
    qn_model_unref(&m);
    CHECK(m == NULL);
    qn_model_unref(&m); /* NULL-safe */

    /* an absent "bias" is no bias, too */
    p = write_model("v1b.safetensors", "quern.mlp.v1",
                    "[{\"type\":\"dense\",\"weight\":\"w\",\"activation\":\"gelu\"}]");
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (m) {
        CHECK(m->layers[0].bias == NULL && m->layers[0].act == QN_ACT_GELU && m->param_count == 12);
        qn_model_unref(&m);
    }
}

/* One model with every representation, chained 4 -f16-> 3 -int8... each layer
 * here is square-compatible via the shared [3,4] tensors, so the chain is
 * built as separate one-layer models plus one 2-layer chain. */
TEST(c1_reprs)
{
    char err[256] = "";
    qn_model *m;
    for (int k = 0; k < 12; k++) WH[k] = qn_f32_to_f16(W1[k]);

    const char *p = write_model("f16.safetensors", "quern.mlp.c1",
        "[{\"type\":\"dense\",\"repr\":\"f16\",\"weight\":\"wh\",\"bias\":\"b\",\"activation\":\"tanh\"},"
        " {\"type\":\"dense\",\"weight\":\"w2\",\"bias\":null,\"activation\":\"none\",\"in\":3,\"out\":2}]");
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (m) {
        qn_layer *l = &m->layers[0];
        CHECK(l->rep == QN_REP_F16 && l->in == 4 && l->out == 3 && l->act == QN_ACT_TANH);
        CHECK(aligned(l->w_f16) && memcmp(l->w_f16, WH, sizeof WH) == 0 && !l->w);
        CHECK_EQ_INT(qn_layer_bytes(l), 12 * 2 + 3 * 4);
        CHECK(m->layers[1].rep == QN_REP_F32); /* repr absent in c1: f32 */
        CHECK_EQ_INT(m->param_count, 12 + 3 + 6);
        qn_model_unref(&m);
    } else fprintf(stderr, "%s\n", err);

    p = write_model("i8.safetensors", "quern.mlp.c1",
        "[{\"type\":\"dense\",\"repr\":\"int8\",\"weight\":\"wq\",\"scale\":\"s\",\"bias\":null,"
        "\"activation\":\"sigmoid\",\"in\":4,\"out\":3}]");
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (m) {
        qn_layer *l = &m->layers[0];
        CHECK(l->rep == QN_REP_I8 && l->in == 4 && l->out == 3 && l->act == QN_ACT_SIGMOID);
        CHECK(aligned(l->w_i8) && aligned(l->w_scale));
        CHECK(memcmp(l->w_i8, WQ, sizeof WQ) == 0 && memcmp(l->w_scale, S3, sizeof S3) == 0);
        CHECK_EQ_INT(qn_layer_bytes(l), 12 + 3 * 4);
        CHECK_EQ_INT(m->param_count, 12);
        qn_model_unref(&m);
    } else fprintf(stderr, "%s\n", err);

    p = write_model("csr.safetensors", "quern.mlp.c1",
        "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\","
        "\"bias\":\"b\",\"activation\":\"relu\",\"in\":4,\"out\":3},"
        " {\"type\":\"dense\",\"repr\":\"f32\",\"weight\":\"w2\",\"bias\":null,\"activation\":\"none\"}]");
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (m) {
        qn_layer *l = &m->layers[0];
        CHECK(l->rep == QN_REP_CSR_F32 && l->in == 4 && l->out == 3 && l->nnz == 5);
        CHECK(aligned(l->csr_indptr) && aligned(l->csr_indices) && aligned(l->csr_f32));
        CHECK(memcmp(l->csr_indptr, P, sizeof P) == 0 && memcmp(l->csr_indices, I, sizeof I) == 0);
        CHECK(memcmp(l->csr_f32, V, sizeof V) == 0 && memcmp(l->bias, B1, sizeof B1) == 0);
        CHECK(!l->w && !l->csr_i8 && !l->w_scale);
        CHECK_EQ_INT(qn_layer_bytes(l), 3 * 4 + 4 * 4 + 5 * 4 + 5 * 4);
        CHECK_EQ_INT(m->param_count, 5 + 3 + 6);
        CHECK_EQ_INT(m->out_dim, 2);
        qn_model_unref(&m);
    } else fprintf(stderr, "%s\n", err);

    p = write_model("csrq.safetensors", "quern.mlp.c1",
        "[{\"type\":\"dense\",\"repr\":\"csr_int8\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"vq\","
        "\"scale\":\"s\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]");
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (m) {
        qn_layer *l = &m->layers[0];
        CHECK(l->rep == QN_REP_CSR_I8 && l->nnz == 5 && aligned(l->csr_i8));
        CHECK(memcmp(l->csr_i8, VQ, sizeof VQ) == 0 && memcmp(l->w_scale, S3, sizeof S3) == 0);
        CHECK_EQ_INT(qn_layer_bytes(l), 4 * 4 + 5 * 4 + 5 + 3 * 4);
        qn_model_unref(&m);
    } else fprintf(stderr, "%s\n", err);

    /* a fully pruned layer: nnz 0, still valid pointers */
    p = write_model("csr0.safetensors", "quern.mlp.c1",
        "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p0\",\"indices\":\"i0\",\"values\":\"v0\","
        "\"bias\":\"b\",\"activation\":\"none\",\"in\":4,\"out\":3}]");
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (m) {
        qn_layer *l = &m->layers[0];
        CHECK(l->nnz == 0 && l->csr_indices && l->csr_f32 && m->param_count == 3);
        qn_model_unref(&m);
    } else fprintf(stderr, "%s\n", err);
}

static const struct bad {
    const char *format, *layers;
    int rc;
    const char *why;
} g_bad[] = {
    {NULL, "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "no format"},
    {"quern.mlp.v2", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "unknown format"},
    {"quern.mlp.v1", NULL, QN_EFORMAT, "no layers"},
    {"quern.mlp.v1", "[{\"type\":", QN_EFORMAT, "layers not JSON"},
    {"quern.mlp.v1", "{}", QN_EFORMAT, "layers an object"},
    {"quern.mlp.v1", "[]", QN_EFORMAT, "no layer"},
    {"quern.mlp.v1", "[5]", QN_EFORMAT, "layer not an object"},
    {"quern.mlp.v1", "[{\"type\":\"conv\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "type conv"},
    {"quern.mlp.v1", "[{\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "no type"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"swish\"}]", QN_EFORMAT, "activation swish"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null}]", QN_EFORMAT, "no activation"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "no weight"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"nope\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "weight not in file"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":3,\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "weight a number"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"wi32\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "weight I32"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"wh\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "f16 weight in v1"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w1d\",\"bias\":null,\"activation\":\"none\"}]", QN_ESHAPE, "weight 1-D"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w3d\",\"bias\":null,\"activation\":\"none\"}]", QN_ESHAPE, "weight 3-D"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w0\",\"bias\":null,\"activation\":\"none\"}]", QN_ESHAPE, "weight [0,4]"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":\"b4\",\"activation\":\"none\"}]", QN_ESHAPE, "bias [4] for out 3"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":\"nope\",\"activation\":\"none\"}]", QN_EFORMAT, "bias not in file"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":5,\"activation\":\"none\"}]", QN_EFORMAT, "bias a number"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":\"p\",\"activation\":\"none\"}]", QN_EFORMAT, "bias I32"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"relu\"},"
                     "{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_ESHAPE, "chain 4->3 then 4"},
    {"quern.mlp.v1", "[{\"type\":\"dense\",\"repr\":\"f16\",\"weight\":\"wh\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "repr in v1"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"int4\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "repr int4"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":7,\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "repr a number"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"f16\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "f16 repr, F32 weight"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"int8\",\"weight\":\"w\",\"scale\":\"s\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "int8 repr, F32 weight"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"int8\",\"weight\":\"wq\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "int8 without scale"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"int8\",\"weight\":\"wq\",\"scale\":\"b4\",\"bias\":null,\"activation\":\"none\"}]", QN_ESHAPE, "scale [4] for out 3"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"int8\",\"weight\":\"wq\",\"scale\":\"vq\",\"bias\":null,\"activation\":\"none\"}]", QN_EFORMAT, "scale I8"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\",\"in\":5}]", QN_ESHAPE, "in disagrees with weight"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\",\"out\":\"3\"}]", QN_EFORMAT, "out a string"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"out\":3}]", QN_EFORMAT, "csr without in"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4}]", QN_EFORMAT, "csr without out"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":0,\"out\":3}]", QN_EFORMAT, "csr in 0"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":-4,\"out\":3}]", QN_EFORMAT, "csr in negative"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4.0,\"out\":3}]", QN_EFORMAT, "csr in real"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"weight\":\"w\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "csr with weight"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":4}]", QN_ESHAPE, "indptr [4] for out 4"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"i\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_ESHAPE, "indptr [5] for out 3"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "no indptr"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"s\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":2}]", QN_EFORMAT, "indptr F32"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p_start1\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "indptr starts at 1"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p_dec\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "indptr decreases"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p_end\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "indptr ends at 4 of 5"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i_oob\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "column 4 of 4"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":3,\"out\":3}]", QN_EFORMAT, "column 3 with in 3"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i_neg\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "column -1"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i_dup\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "column 3 twice in row 0"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"b\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_ESHAPE, "values [3] for nnz 5"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"vq\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "csr_f32 with I8 values"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_int8\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"scale\":\"s\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "csr_int8 with F32 values"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_int8\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"vq\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3}]", QN_EFORMAT, "csr_int8 without scale"},
    {"quern.mlp.c1", "[{\"type\":\"dense\",\"repr\":\"csr_f32\",\"indptr\":\"p\",\"indices\":\"i\",\"values\":\"v\",\"bias\":null,\"activation\":\"none\",\"in\":4,\"out\":3},"
                     "{\"type\":\"dense\",\"weight\":\"w\",\"bias\":null,\"activation\":\"none\"}]", QN_ESHAPE, "csr out 3 then in 4"},
};

TEST(invalid_models)
{
    for (size_t k = 0; k < sizeof g_bad / sizeof g_bad[0]; k++) {
        const char *p = write_model("bad.safetensors", g_bad[k].format, g_bad[k].layers);
        qn_model *m;
        char err[256] = "";
        int rc = load(p, &m, err, sizeof err);
        if (rc != g_bad[k].rc)
            fprintf(stderr, "case %zu (%s): rc %d (%s), expected %d\n", k, g_bad[k].why, rc, err, g_bad[k].rc);
        CHECK_EQ_INT(rc, g_bad[k].rc);
        CHECK(err[0] != '\0');
        if (rc == 0) qn_model_unref(&m);
    }
    /* not a model file at all, or no file */
    qn_model *m;
    char err[256] = "";
    FILE *f = fopen(path_of("junk.safetensors"), "w");
    fputs("this is not a safetensors file", f);
    fclose(f);
    CHECK_EQ_INT(load(path_of("junk.safetensors"), &m, err, sizeof err), QN_EFORMAT);
    CHECK_EQ_INT(load(path_of("missing.safetensors"), &m, err, sizeof err), QN_EIO);
    /* a safetensors file without __metadata__ */
    CHECK_EQ_INT(qn_st_write(path_of("nometa.safetensors"), g_ts, 2, NULL, 0, err, sizeof err), 0);
    CHECK_EQ_INT(load(path_of("nometa.safetensors"), &m, err, sizeof err), QN_EFORMAT);
    CHECK(strstr(err, "format") != NULL);
}

/* ---- reference counting and release */

static int g_releases, g_kfrees;
static void *g_released_state;
static void fk_release(qn_backend *be, qn_model *m, void *state)
{
    g_releases++;
    g_released_state = state;
    CHECK(m->layers != NULL); /* released before the layers are freed */
}
static void fk_kfree(void *p)
{
    g_kfrees++;
    free(p);
}
static const qn_backend_i g_fake_i = {.name = "fake", .model_release = fk_release};

TEST(refcount_release)
{
    const char *p = write_model("rc.safetensors", "quern.mlp.v1",
        "[{\"type\":\"dense\",\"weight\":\"w\",\"bias\":\"b\",\"activation\":\"relu\"},"
        " {\"type\":\"dense\",\"weight\":\"w2\",\"bias\":null,\"activation\":\"none\"}]");
    qn_backend be = {.iface = &g_fake_i};
    qn_model *m;
    char err[256];
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    if (!m) return;
    m->backend = &be;
    m->backend_state = (void *)0x1234;
    m->layers[1].kernel_data = malloc(16);
    m->layers[1].kernel_free = fk_kfree;
    qn_model *a = qn_model_ref(m), *b = qn_model_ref(m);
    CHECK(a == m && b == m);
    CHECK_EQ_INT(atomic_load(&m->refs), 3);
    qn_model_unref(&a);
    qn_model_unref(&m);
    CHECK(a == NULL && m == NULL);
    CHECK_EQ_INT(g_releases, 0);
    CHECK_EQ_INT(g_kfrees, 0);
    CHECK(b->layers[0].w[0] == W1[0]); /* still alive */
    qn_model_unref(&b);
    CHECK_EQ_INT(g_releases, 1);
    CHECK(g_released_state == (void *)0x1234);
    CHECK_EQ_INT(g_kfrees, 1);

    /* no backend set: nothing to release */
    CHECK_EQ_INT(load(p, &m, err, sizeof err), 0);
    qn_model_unref(&m);
    CHECK_EQ_INT(g_releases, 1);
}

/* ---- against the numpy tool */

static const char *tools_dir(void)
{
    static char d[4096];
    char src[4096];
    snprintf(src, sizeof src, "%s", __FILE__);
    snprintf(d, sizeof d, "%s/../tools", dirname(src));
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/quern_model.py", d);
    if (access("/usr/bin/python3", X_OK) != 0 || access(probe, R_OK) != 0) return NULL;
    return d;
}

static float act1(qn_act a, float x)
{
    switch (a) {
    case QN_ACT_RELU: return x > 0 ? x : 0;
    case QN_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case QN_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case QN_ACT_TANH: return tanhf(x);
    default: return x;
    }
}

/* The obvious, slow forward over a loaded model: each representation read
 * back to w[o][i] as schemas/model.md defines it. */
static void naive_forward(const qn_model *m, const float *x, int64_t rows, float *y)
{
    float *h = malloc(sizeof(float) * (size_t)(rows * m->max_width));
    float *o = malloc(sizeof(float) * (size_t)(rows * m->max_width));
    memcpy(h, x, sizeof(float) * (size_t)(rows * m->in_dim));
    for (int li = 0; li < m->nlayers; li++) {
        const qn_layer *l = &m->layers[li];
        float *w = calloc((size_t)(l->out * l->in), sizeof *w);
        for (int64_t r = 0; r < l->out; r++) {
            for (int64_t c = 0; c < l->in; c++) {
                int64_t k = r * l->in + c;
                if (l->rep == QN_REP_F32) w[k] = l->w[k];
                if (l->rep == QN_REP_F16) w[k] = qn_f16_to_f32(l->w_f16[k]);
                if (l->rep == QN_REP_I8) w[k] = (float)l->w_i8[k] * l->w_scale[r];
            }
            if (l->rep == QN_REP_CSR_F32 || l->rep == QN_REP_CSR_I8)
                for (int32_t k = l->csr_indptr[r]; k < l->csr_indptr[r + 1]; k++)
                    w[r * l->in + l->csr_indices[k]] =
                        l->rep == QN_REP_CSR_F32 ? l->csr_f32[k] : (float)l->csr_i8[k] * l->w_scale[r];
        }
        for (int64_t b = 0; b < rows; b++) {
            for (int64_t r = 0; r < l->out; r++) {
                double s = l->bias ? l->bias[r] : 0;
                for (int64_t c = 0; c < l->in; c++) s += (double)h[b * l->in + c] * w[r * l->in + c];
                o[b * l->out + r] = act1(l->act, (float)s);
            }
            if (l->act == QN_ACT_SOFTMAX) {
                float *v = &o[b * l->out], mx = v[0], sum = 0;
                for (int64_t r = 1; r < l->out; r++) mx = v[r] > mx ? v[r] : mx;
                for (int64_t r = 0; r < l->out; r++) sum += v[r] = expf(v[r] - mx);
                for (int64_t r = 0; r < l->out; r++) v[r] /= sum;
            }
        }
        free(w);
        float *t = h;
        h = o;
        o = t;
    }
    memcpy(y, h, sizeof(float) * (size_t)(rows * m->out_dim));
    free(h);
    free(o);
}

TEST(numpy_models)
{
    const char *tools = tools_dir();
    if (!tools) {
        printf("     skip: /usr/bin/python3 or tests/tools/quern_model.py not found\n");
        return;
    }
    static const struct { const char *reprs; double prune; const char *acts; int bias; } cases[] = {
        {NULL, 0, "relu,gelu,softmax", 1},
        {NULL, 0, "sigmoid,tanh,none", 0},
        {"f16,int8,f32", 0, "gelu,relu,none", 1},
        {"csr_f32,csr_int8,int8", 0.6, "tanh,sigmoid,softmax", 1},
        {"csr_int8,f16,csr_f32", 0.3, "relu,none,gelu", 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char model[4200], ref[4200], cmd[16384];
        snprintf(model, sizeof model, "%s/np%zu.safetensors", g_tmp, k);
        snprintf(ref, sizeof ref, "%s/np%zu.ref.safetensors", g_tmp, k);
        /* numpy writes the model, an input and its own forward pass of it */
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 -c 'import sys; sys.path.insert(0, \"%s\"); import numpy as np, quern_model as q; "
                 "L = q.random_mlp([13, 24, 9, 5], \"%s\".split(\",\"), seed=%zu, bias=%s); "
                 "eff = q.write_mlp(\"%s\", L, reprs=%s%s%s, prune=%g); "
                 "x = np.random.default_rng(%zu).normal(size=(6, 13)).astype(np.float32) * 2; "
                 "q.write_safetensors(\"%s\", {\"x\": x, \"y\": q.forward(eff, x).astype(np.float32)})'",
                 tools, cases[k].acts, k, cases[k].bias ? "True" : "False", model,
                 cases[k].reprs ? "\"" : "", cases[k].reprs ? cases[k].reprs : "None",
                 cases[k].reprs ? "\".split(\",\")" : "", cases[k].prune, k + 100, ref);
        CHECK_EQ_INT(system(cmd), 0);
        qn_model *m;
        qn_st_file *rf = NULL;
        char err[256] = "";
        CHECK_EQ_INT(load(model, &m, err, sizeof err), 0);
        CHECK_EQ_INT(qn_st_open(ref, &rf, err, sizeof err), 0);
        if (!m || !rf) {
            fprintf(stderr, "case %zu: %s\n", k, err);
            if (m) qn_model_unref(&m);
            qn_st_close(&rf);
            continue;
        }
        CHECK(m->in_dim == 13 && m->out_dim == 5 && m->nlayers == 3 && m->max_width == 24);
        for (int li = 0; cases[k].reprs && li < 3; li++) {
            char want[16];
            sscanf(cases[k].reprs + 0, "%15[^,]", want);
            const char *s = cases[k].reprs;
            for (int j = 0; j < li; j++) s = strchr(s, ',') + 1;
            sscanf(s, "%15[^,]", want);
            CHECK_STR(qn_rep_name(m->layers[li].rep), want);
        }
        if (cases[k].prune > 0)
            for (int li = 0; li < 3; li++)
                if (m->layers[li].rep >= QN_REP_CSR_F32) CHECK(m->layers[li].nnz < m->layers[li].in * m->layers[li].out);
        float x[6 * 13], y[6 * 5], want[6 * 5];
        memcpy(x, qn_st_find(rf, "x")->data, sizeof x);
        memcpy(want, qn_st_find(rf, "y")->data, sizeof want);
        naive_forward(m, x, 6, y);
        double maxerr = 0;
        for (int i = 0; i < 30; i++) maxerr = fmax(maxerr, fabs((double)y[i] - want[i]));
        if (maxerr > 1e-4) fprintf(stderr, "case %zu: max error %g\n", k, maxerr);
        CHECK(maxerr <= 1e-4);
        qn_model_unref(&m);
        qn_st_close(&rf);
    }
    /* and the CLI the other engineers use */
    char model[4200], cmd[16384];
    snprintf(model, sizeof model, "%s/cli.safetensors", g_tmp);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/quern_model.py mlp %s --dims 64,128,10 --acts relu,none --seed 1",
             tools, model);
    CHECK_EQ_INT(system(cmd), 0);
    qn_model *m;
    char err[256];
    CHECK_EQ_INT(load(model, &m, err, sizeof err), 0);
    if (m) {
        CHECK(m->in_dim == 64 && m->out_dim == 10 && m->param_count == 64 * 128 + 128 + 128 * 10 + 10);
        qn_model_unref(&m);
    }
}

int main(void)
{
    g_tmp = qn_test_tmpdir("test_model");
    RUN(names);
    RUN(v1_dense);
    RUN(c1_reprs);
    RUN(invalid_models);
    RUN(refcount_release);
    RUN(numpy_models);
    return qn_test_done();
}
