/* sgemm_packed.c: the portable half of sgemm_packed.h: packing W, picking the
 * ISA (CPU features, QN_SGEMM), default tile shapes, argument checks, and the
 * call into the per-ISA driver (sgemm_packed_avx512.c, sgemm_packed_avx2.c).
 * Nothing here needs more than baseline x86-64 (or any other target, where
 * only QN_SGEMM_BLAS exists and callers keep their BLAS path). */
#include "cpu/sgemm_packed.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "tensor.h"

const char *qn_sgemm_isa_name(qn_sgemm_isa isa)
{
    switch (isa) {
    case QN_SGEMM_BLAS: return "blas";
    case QN_SGEMM_AVX2: return "avx2";
    case QN_SGEMM_AVX512: return "avx512";
    default: return "invalid";
    }
}

static int g_supported[QN_SGEMM_ISA_COUNT];
static qn_sgemm_isa g_default = QN_SGEMM_BLAS;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void isa_init(void)
{
    g_supported[QN_SGEMM_BLAS] = 1;
#if defined(QN_SGEMM_X86)
    /* libgcc's checks include the OS having enabled the ymm/zmm state (XCR0) */
    __builtin_cpu_init();
    g_supported[QN_SGEMM_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    g_supported[QN_SGEMM_AVX512] = __builtin_cpu_supports("avx512f");
#endif
    qn_sgemm_isa best = g_supported[QN_SGEMM_AVX512] ? QN_SGEMM_AVX512
                        : g_supported[QN_SGEMM_AVX2] ? QN_SGEMM_AVX2
                                                     : QN_SGEMM_BLAS;
    g_default = best;
    const char *env = getenv("QN_SGEMM");
    if (env && *env) {
        int found = 0;
        for (int i = 0; i < QN_SGEMM_ISA_COUNT; i++)
            if (!strcmp(env, qn_sgemm_isa_name((qn_sgemm_isa)i))) {
                found = 1;
                if (g_supported[i]) g_default = (qn_sgemm_isa)i;
                else QN_LOGW("sgemm", "QN_SGEMM=%s: not supported by this CPU, using %s", env, qn_sgemm_isa_name(best));
            }
        if (!found) QN_LOGW("sgemm", "QN_SGEMM=%s: unknown (avx512, avx2 or blas), using %s", env, qn_sgemm_isa_name(best));
    }
}

int qn_sgemm_isa_supported(qn_sgemm_isa isa)
{
    pthread_once(&g_once, isa_init);
    return (unsigned)isa < QN_SGEMM_ISA_COUNT && g_supported[isa];
}

qn_sgemm_isa qn_sgemm_isa_default(void)
{
    pthread_once(&g_once, isa_init);
    return g_default;
}

int qn_sgemm_pack(const float *w, int64_t out_dim, int64_t in, qn_sgemm_packed **out)
{
    if (!out) return QN_EINVAL;
    *out = NULL;
    if (!w || out_dim < 1 || in < 1 || out_dim > INT_MAX || in > INT_MAX) return QN_EINVAL;
    int64_t np = (out_dim + QN_SGEMM_NR - 1) / QN_SGEMM_NR;
    /* np*16*in < 2^63 (both factors < 2^31+16); only size_t can overflow */
    if ((uint64_t)(np * QN_SGEMM_NR) > SIZE_MAX / sizeof(float) / (uint64_t)in) return QN_ENOMEM;
    qn_sgemm_packed *p = calloc(1, sizeof *p);
    if (!p) return QN_ENOMEM;
    p->in = in;
    p->out = out_dim;
    p->npanels = np;
    /* zeroed: the columns past out_dim in the last panel stay 0 */
    p->panels = qn_alloc_aligned((size_t)(np * QN_SGEMM_NR) * (size_t)in * sizeof(float), 1);
    if (!p->panels) { free(p); return QN_ENOMEM; }
    for (int64_t pi = 0; pi < np; pi++) {
        float *dst = p->panels + pi * QN_SGEMM_NR * in;
        for (int j = 0; j < QN_SGEMM_NR && pi * QN_SGEMM_NR + j < out_dim; j++) {
            const float *src = w + (pi * QN_SGEMM_NR + j) * in;
            for (int64_t k = 0; k < in; k++) dst[k * QN_SGEMM_NR + j] = src[k];
        }
    }
    *out = p;
    return 0;
}

void qn_sgemm_packed_free(void *vp)
{
    qn_sgemm_packed *p = vp;
    if (!p) return;
    free(p->panels);
    free(p);
}

/* Register budgets (sgemm_packed.h): the largest tiles each ISA instantiates. */
static int tile_ok(qn_sgemm_isa isa, int mr, int nv)
{
    if (isa == QN_SGEMM_AVX512) return mr >= 1 && mr <= 8 && nv >= 1 && nv <= 4 && mr * nv <= 24;
    if (isa == QN_SGEMM_AVX2)
        return mr >= 1 && mr <= 6 && nv >= 1 && nv <= 4 && (mr == 1 || 2 * mr * nv + 2 * nv + 1 <= 16);
    return 0;
}

/* The widest tile (most panels) with mr rows that the ISA has; 0 if none. */
static int widest(qn_sgemm_isa isa, int mr)
{
    for (int nv = 4; nv >= 1; nv--)
        if (tile_ok(isa, mr, nv)) return nv;
    return 0;
}

/* Fills the zero fields of o for this call. Tile: for many rows the ISA's
 * main tile (AVX-512 8x3, AVX2 6x1: measured in bench/notes/sgemm.md); for
 * fewer rows, all of them in one tile, as wide as the registers allow, so
 * that enough independent FMA chains hide the FMA latency. The row count per
 * tile is then balanced (17 rows with mr 8 run as 6+6+5, not 8+8+1). */
static void resolve(qn_sgemm_opts *o, const qn_sgemm_packed *p, int64_t rows)
{
    const int avx512 = o->isa == QN_SGEMM_AVX512;
    if (!o->mr) {
        int cap = avx512 ? 8 : 6;
        while (o->nv && cap > 1 && !tile_ok(o->isa, cap, o->nv)) cap--;
        int64_t nb = (rows + cap - 1) / cap;
        o->mr = (int)((rows + nb - 1) / nb);
    }
    if (!o->nv) o->nv = widest(o->isa, o->mr);
    if (!o->kc) o->kc = p->in;
    if (!o->mc) o->mc = rows;
}

static int run(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias, qn_act act,
               float *y, const qn_sgemm_opts *opts, int64_t p_begin, int64_t p_end, int epi);

int qn_sgemm_packed_run(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                        qn_act act, float *y, const qn_sgemm_opts *opts)
{
    if (!p) return QN_EINVAL;
    return run(p, x, rows, bias, act, y, opts, 0, p->npanels, 1);
}

int qn_sgemm_packed_run_panels(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias,
                               qn_act act, float *y, const qn_sgemm_opts *opts, int64_t p_begin,
                               int64_t p_end)
{
    return run(p, x, rows, bias, act, y, opts, p_begin, p_end, 0);
}

/* Both entry points: panels [p_begin, p_end); epi: apply the activations
 * that are not fused in the tiles (only right when the range is every panel). */
static int run(const qn_sgemm_packed *p, const float *x, int64_t rows, const float *bias, qn_act act,
               float *y, const qn_sgemm_opts *opts, int64_t p_begin, int64_t p_end, int epi)
{
    if (!p || !x || !y || rows < 0 || (unsigned)act >= QN_ACT_COUNT) return QN_EINVAL;
    if (p_begin < 0 || p_begin > p_end || p_end > p->npanels) return QN_EINVAL;
    qn_sgemm_opts o = opts ? *opts : (qn_sgemm_opts){0};
    if ((unsigned)o.isa >= QN_SGEMM_ISA_COUNT || o.mr < 0 || o.nv < 0 || o.kc < 0 || o.mc < 0) return QN_EINVAL;
    if (o.isa == QN_SGEMM_BLAS) o.isa = qn_sgemm_isa_default();
    if (o.isa == QN_SGEMM_BLAS || !qn_sgemm_isa_supported(o.isa)) return QN_ENOTSUP;
    if (rows == 0 || p_begin == p_end) return 0;
    resolve(&o, p, rows);
    if (!tile_ok(o.isa, o.mr, o.nv)) return QN_EINVAL;
#if defined(QN_SGEMM_X86)
    if (o.isa == QN_SGEMM_AVX512)
        qn_sgemm_packed_avx512(p, x, rows, bias, act, y, o.mr, o.nv, o.kc, o.mc, p_begin, p_end, epi);
    else qn_sgemm_packed_avx2(p, x, rows, bias, act, y, o.mr, o.nv, o.kc, o.mc, p_begin, p_end, epi);
    return 0;
#else
    return QN_ENOTSUP; /* unreachable: no ISA but BLAS is ever supported here */
#endif
}
