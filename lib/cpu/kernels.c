/* kernels.c: the entry points of kernels.h: per-layer prepare (common
 * checks, padded bias, then the representation's packer), forward (dispatch
 * on the layer's representation; the path was fixed at prepare), the
 * per-thread scratch, and the dense f32 forward that plain f32 layers and
 * densified sparse layers share (the CPU backend's qn_cpu_dense_f32). */
#include <stdlib.h>
#include <string.h>

#include "cpu/dense.h"
#include "cpu/kernels_impl.h"
#include "error.h"

void *qn_scratch_get(qn_kernel_scratch *s, int slot, size_t bytes)
{
    if (bytes <= s->cap[slot]) return s->buf[slot];
    size_t cap = s->cap[slot] ? s->cap[slot] : 4096;
    while (cap < bytes) cap *= 2;
    void *p = qn_alloc_aligned(cap, 0);
    if (!p) return NULL;
    free(s->buf[slot]);
    s->buf[slot] = p;
    s->cap[slot] = cap;
    return p;
}

int qn_kernel_scratch_create(qn_kernel_scratch **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : QN_ENOMEM;
}

void qn_kernel_scratch_destroy(qn_kernel_scratch **s)
{
    if (!s || !*s) return;
    for (int i = 0; i < QN_SCR_COUNT; i++) free((*s)->buf[i]);
    free(*s);
    *s = NULL;
}

static void pack_free(void *p)
{
    qn_kpack *k = p;
    if (!k) return;
    free(k->bias);
    free(k->w8);
    free(k->colsum);
    free(k->wscale);
    free(k->w16);
    free(k->dense);
    free(k);
}

int qn_dense_f32_forward(const float *w, int64_t in, int64_t out, const float *bias, qn_act act,
                         const float *x, int64_t rows, float *y)
{
    /* the backend's own f32 path (sgemv per row for a few rows, sgemm
     * above: dense.h), so a densified layer costs what an f32 layer costs */
    return qn_cpu_dense_f32(x, rows, in, w, out, bias, act, y);
}

int qn_kernel_layer_prepare(qn_layer *l)
{
    int rc = QN_EINVAL;
    qn_kpack *k = NULL;
    if (!l) goto fail;
    if (l->kernel_data && l->kernel_free) l->kernel_free(l->kernel_data);
    l->kernel_data = NULL;
    l->kernel_free = NULL;
    rc = QN_ESHAPE;
    if (l->in <= 0 || l->out <= 0 || l->in > INT32_MAX || l->out > INT32_MAX) goto fail;
    rc = QN_EINVAL;
    if ((unsigned)l->act >= QN_ACT_COUNT) goto fail;
    rc = QN_ENOMEM;
    if (!(k = calloc(1, sizeof *k))) goto fail;
    k->path = qn_kernel_path_init();
    k->rep = l->rep;
    k->out16 = qn_round_up(l->out, QN_PANEL);
    if (!(k->bias = qn_alloc_aligned((size_t)k->out16 * sizeof(float), 1))) goto fail;
    if (l->bias) memcpy(k->bias, l->bias, (size_t)l->out * sizeof(float));
    switch (l->rep) {
    case QN_REP_F32: rc = l->w ? 0 : QN_EINVAL; break;
    case QN_REP_I8: rc = qn_i8_prepare(l, k); break;
    case QN_REP_F16: rc = qn_f16_prepare(l, k); break;
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8: rc = qn_csr_prepare(l, k); break;
    default: rc = QN_EINVAL; break;
    }
    if (rc) goto fail;
    l->kernel_data = k;
    l->kernel_free = pack_free;
    return 0;
fail:
    pack_free(k);
    return rc;
}

int qn_kernel_layer_forward(const qn_layer *l, const float *x, int64_t rows, float *y, qn_kernel_scratch *s)
{
    if (!l || !l->kernel_data || !x || !y || !s || rows < 0) return QN_EINVAL;
    if (rows == 0) return 0;
    const qn_kpack *k = l->kernel_data;
    if (k->rep != l->rep) return QN_EINVAL;
    switch (l->rep) {
    case QN_REP_F32: return qn_dense_f32_forward(l->w, l->in, l->out, l->bias, l->act, x, rows, y);
    case QN_REP_I8: return qn_i8_forward(l, k, x, rows, y, s);
    case QN_REP_F16: return qn_f16_forward(l, k, x, rows, y, s);
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8: return qn_csr_forward(l, k, x, rows, y, s);
    default: return QN_EINVAL;
    }
}
