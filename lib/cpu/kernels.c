/* kernels.c: the dispatcher of kernels.h, above the representation drivers
 * (quant.c, f16.c, csr.c) and below nothing of theirs: per-layer prepare
 * (common checks, padded bias, then the representation's packer), forward
 * (dispatch on the layer's representation; the path was fixed at prepare),
 * and freeing the packed state. The helpers the drivers share (scratch,
 * panel geometry, NaN/Inf rows, intra-op split) are kcommon.c, below them
 * all; the drivers never call back up into this file. */
#include <stdlib.h>
#include <string.h>

#include "cpu/dense.h"
#include "cpu/kernels_impl.h"
#include "error.h"

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
    qn_sgemm_packed_free(k->dense_pw);
    qn_csr_pack_free(k->csrp);
    free(k);
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
    return qn_kernel_layer_forward_pool(l, x, rows, y, s, NULL);
}

int qn_kernel_layer_forward_pool(const qn_layer *l, const float *x, int64_t rows, float *y,
                                 qn_kernel_scratch *s, qn_cpu_pool *pool)
{
    if (!l || !l->kernel_data || !x || !y || !s || rows < 0) return QN_EINVAL;
    if (rows == 0) return 0;
    const qn_kpack *k = l->kernel_data;
    if (k->rep != l->rep) return QN_EINVAL;
    switch (l->rep) {
    case QN_REP_F32: return qn_cpu_dense_f32(x, rows, l->in, l->w, l->out, l->bias, l->act, y);
    case QN_REP_I8: return qn_i8_forward(l, k, x, rows, y, s, pool);
    case QN_REP_F16: return qn_f16_forward(l, k, x, rows, y, s, pool);
    case QN_REP_CSR_F32:
    case QN_REP_CSR_I8: return qn_csr_forward(l, k, x, rows, y, s, pool);
    default: return QN_EINVAL;
    }
}
