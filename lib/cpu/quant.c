/* quant.c: the int8 layer driver. At prepare it packs the int8 weights into
 * the panel layout (kernels_impl.h) with their column sums; per forward it
 * quantizes each activation row dynamically to u8 with a zero point (the
 * scheme kernels.h documents) and hands the rows to the path's GEMM, which
 * ends in the fused dequantize + bias (+ ReLU) epilogue. Activations other
 * than ReLU run afterwards through the shared qn_cpu_epilogue (they are
 * libm-bound, and softmax needs the whole row anyway). A row holding NaN or
 * Inf has no quantized form: it is computed apart from the dequantized
 * weights (kcommon.h), so that it comes out as torch's f32 forward would.
 * For a few rows of a big layer the GEMM's panels are split over the
 * intra-op pool (kcommon.h), as f32 layers' are. */
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu/epilogue.h"
#include "cpu/kcommon.h"
#include "cpu/kernels_impl.h"
#include "error.h"

/* Adding and subtracting 1.5·2^23 rounds a float of magnitude < 2^22 to the
 * nearest integer, ties to even (the default rounding mode), exactly as
 * cvtps2dq would, and unlike lrintf it vectorizes on baseline SSE2. Callers
 * clamp to [-255, 255] first. */
static inline float round_even(float v)
{
    const float magic = 12582912.0f;
    return (v + magic) - magic;
}

/* The two passes of the quantizer, baseline version (SSE2 where the target
 * has it, else scalar): range() gives mn = min(0, min x), mx = max(0, max
 * x) and returns 1 if x holds a NaN or an Inf (the range is then
 * meaningless); apply() writes q[k] = round_even(clamp(x[k]·inv, lo, hi)) +
 * z. i8_avx512vnni.c and i8_avx2.c have the same two with wider vectors:
 * min/max are exact and apply is the same operations per element, so every
 * path quantizes bit-identically. gcc keeps the `x < mn ? x : mn`
 * reduction scalar (a minss chain: 1.2 µs per 1024-wide row, a third of the
 * int8 layer's time at large batches), hence the explicit vectors. */
static int range_base(const float *x, int64_t n, float *pmn, float *pmx)
{
    float mn = 0.0f, mx = 0.0f;
    uint32_t nonfinite = 0;
    int64_t k = 0;
#if defined(__SSE2__)
    {
        __m128 mn0 = _mm_setzero_ps(), mn1 = mn0, mx0 = mn0, mx1 = mn0;
        const __m128i em = _mm_set1_epi32(0x7f800000);
        __m128i nf = _mm_setzero_si128();
        for (; k + 8 <= n; k += 8) {
            const __m128 a = _mm_loadu_ps(x + k), b = _mm_loadu_ps(x + k + 4);
            mn0 = _mm_min_ps(mn0, a);
            mn1 = _mm_min_ps(mn1, b);
            mx0 = _mm_max_ps(mx0, a);
            mx1 = _mm_max_ps(mx1, b);
            nf = _mm_or_si128(nf, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(a), em), em));
            nf = _mm_or_si128(nf, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(b), em), em));
        }
        float lo[4], hi[4];
        _mm_storeu_ps(lo, _mm_min_ps(mn0, mn1));
        _mm_storeu_ps(hi, _mm_max_ps(mx0, mx1));
        for (int j = 0; j < 4; j++) {
            mn = lo[j] < mn ? lo[j] : mn;
            mx = hi[j] > mx ? hi[j] : mx;
        }
        nonfinite = _mm_movemask_epi8(nf) != 0;
    }
#endif
    nonfinite = qn_i8_range_tail(x, k, n, &mn, &mx, nonfinite);
    *pmn = mn;
    *pmx = mx;
    return nonfinite != 0;
}

static void apply_base(const float *x, int64_t n, float inv, float lo, float hi, float z, uint8_t *q)
{
    int64_t k = 0;
#if defined(__SSE2__)
    /* 16 at a time; the values are integers in [0, 255] by the pack, so the
     * saturating packs are exact */
    const __m128 vinv = _mm_set1_ps(inv), vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi), vz = _mm_set1_ps(z),
                 magic = _mm_set1_ps(12582912.0f);
    for (; k + 16 <= n; k += 16) {
        __m128i v[4];
        for (int j = 0; j < 4; j++) {
            __m128 t = _mm_mul_ps(_mm_loadu_ps(x + k + 4 * j), vinv);
            t = _mm_min_ps(_mm_max_ps(t, vlo), vhi);
            t = _mm_add_ps(_mm_sub_ps(_mm_add_ps(t, magic), magic), vz);
            v[j] = _mm_cvttps_epi32(t);
        }
        _mm_storeu_si128((__m128i *)(q + k),
                         _mm_packus_epi16(_mm_packs_epi32(v[0], v[1]), _mm_packs_epi32(v[2], v[3])));
    }
#endif
    for (; k < n; k++) {
        float t = x[k] * inv;
        t = t > lo ? t : lo;
        t = t < hi ? t : hi;
        q[k] = (uint8_t)(int32_t)(round_even(t) + z);
    }
}

/* qn_kernel_quantize_row with the path's passes, returning 1 when the row
 * holds a NaN or an Inf (then q = 0, scale 1, zp 0: defined, and the driver
 * computes the row apart, kcommon.h), else 0. */
static int quantize_row(qn_kpath path, const float *x, int64_t n, uint8_t *q, float *scale, int32_t *zp)
{
    float mn, mx; /* the range always holds 0, so 0 is exact */
    int nonfinite;
    switch (path) {
    case QN_KPATH_AVX512VNNI: nonfinite = qn_i8_range_avx512(x, n, &mn, &mx); break;
    case QN_KPATH_AVXVNNI:
    case QN_KPATH_AVX2: nonfinite = qn_i8_range_avx2(x, n, &mn, &mx); break;
    default: nonfinite = range_base(x, n, &mn, &mx); break;
    }
    float s = (mx - mn) / 255.0f;
    /* finite values so far apart that mx - mn overflows: the same scale
     * without the overflow (rounds differently, but only here) */
    if (!nonfinite && !(s < 3.0e38f)) s = mx / 255.0f - mn / 255.0f;
    if (nonfinite || !(s > 0.0f)) { /* NaN/Inf in the row, or all zeros */
        *scale = 1.0f;
        *zp = 0;
        memset(q, 0, (size_t)n);
        return nonfinite;
    }
    const float inv = 1.0f / s;
    float z = round_even(-mn * inv);
    z = z < 0.0f ? 0.0f : z > 255.0f ? 255.0f : z;
    const float lo = -z, hi = 255.0f - z;
    switch (path) {
    case QN_KPATH_AVX512VNNI: qn_i8_apply_avx512(x, n, inv, lo, hi, z, q); break;
    case QN_KPATH_AVXVNNI:
    case QN_KPATH_AVX2: qn_i8_apply_avx2(x, n, inv, lo, hi, z, q); break;
    default: apply_base(x, n, inv, lo, hi, z, q); break;
    }
    *scale = s;
    *zp = (int32_t)z;
    return 0;
}

void qn_kernel_quantize_row(const float *x, int64_t n, uint8_t *q, float *scale, int32_t *zp)
{
    /* the portable passes: the compressor's report and the tests call this
     * without a layer; every path quantizes the same anyway */
    (void)quantize_row(QN_KPATH_PORTABLE, x, n, q, scale, zp);
}

int qn_i8_prepare(const qn_layer *l, qn_kpack *k)
{
    if (!l->w_i8 || !l->w_scale) return QN_EINVAL;
    if (l->in > 65536) return QN_ESHAPE; /* 255·127·in must fit int32 */
    const int64_t in = l->in, out = l->out, in4 = qn_round_up(in, 4), out16 = qn_round_up(out, QN_PANEL);
    k->in4 = in4;
    k->w8 = qn_alloc_aligned((size_t)(out16 * in4), 1);
    k->colsum = qn_alloc_aligned((size_t)out16 * sizeof(int32_t), 1);
    k->wscale = qn_alloc_aligned((size_t)out16 * sizeof(float), 1);
    if (!k->w8 || !k->colsum || !k->wscale) return QN_ENOMEM;
    for (int64_t o = 0; o < out; o++) {
        const int8_t *src = l->w_i8 + o * in;
        int8_t *dst = k->w8 + (o / QN_PANEL) * in4 * QN_PANEL + (o % QN_PANEL) * 4;
        int32_t sum = 0;
        for (int64_t i = 0; i < in; i++) {
            dst[(i / 4) * 64 + (i % 4)] = src[i];
            sum += src[i];
        }
        k->colsum[o] = sum;
        k->wscale[o] = l->w_scale[o];
    }
    return 0;
}

/* The GEMM on output panels [pb, pe) of a (an intra-op chunk, or all). */
static void gemm_panels(void *va, int64_t pb, int64_t pe)
{
    const qn_i8_args *a = va;
    const int64_t o0 = pb * QN_PANEL, o1 = pe * QN_PANEL < a->out ? pe * QN_PANEL : a->out;
    qn_i8_args c = *a;
    c.out = o1 - o0;
    c.w = a->w + pb * a->in4 * QN_PANEL;
    c.colsum = a->colsum + o0;
    c.wscale = a->wscale + o0;
    c.bias = a->bias + o0;
    c.y = a->y + o0;
    switch (a->path) {
    case QN_KPATH_AVX512VNNI: qn_i8_gemm_avx512vnni(&c); break;
    case QN_KPATH_AVXVNNI: qn_i8_gemm_avxvnni(&c); break;
    case QN_KPATH_AVX2: qn_i8_gemm_avx2(&c); break;
    default: qn_i8_gemm_portable(&c); break;
    }
}

/* A row with NaN/Inf inputs (kcommon.h): its pre-activation is the sum over
 * the non-finite columns of x_k · W_ok with the dequantized weights, + b. */
static void fix_row(const qn_layer *l, const float *x, const int32_t *cols, int64_t ncols, float *y)
{
    for (int64_t o = 0; o < l->out; o++) {
        const int8_t *w = l->w_i8 + o * l->in;
        float acc = 0.0f;
        for (int64_t j = 0; j < ncols; j++) acc += x[cols[j]] * ((float)w[cols[j]] * l->w_scale[o]);
        y[o] = acc + (l->bias ? l->bias[o] : 0.0f);
    }
    if (l->act == QN_ACT_RELU) qn_cpu_epilogue(y, 1, l->out, l->out, NULL, QN_ACT_RELU);
}

int qn_i8_forward(const qn_layer *l, const qn_kpack *k, const float *x, int64_t rows, float *y,
                  qn_kernel_scratch *s, qn_cpu_pool *pool)
{
    const int64_t in = l->in, ldq = k->in4;
    uint8_t *xq = qn_scratch_get(s, QN_SCR_Q, (size_t)(rows * ldq));
    void *stats = qn_scratch_get(s, QN_SCR_STATS, (size_t)rows * (sizeof(int32_t) + sizeof(float) + 1));
    int16_t *xq16 = NULL;
    if (k->path == QN_KPATH_AVX2) xq16 = qn_scratch_get(s, QN_SCR_Q16, (size_t)(rows * ldq) * sizeof(int16_t));
    if (!xq || !stats || (k->path == QN_KPATH_AVX2 && !xq16)) return QN_ENOMEM;
    int32_t *zp = stats;
    float *xs = (float *)(zp + rows);
    unsigned char *bad = (unsigned char *)(xs + rows);

    int nbad = 0;
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *q = xq + r * ldq;
        bad[r] = (unsigned char)quantize_row(k->path, x + r * in, in, q, &xs[r], &zp[r]);
        nbad += bad[r];
        memset(q + in, 0, (size_t)(ldq - in)); /* padding meets zero weights; keep it defined */
    }
    /* the AVX2 kernel multiplies int16 (i8_avx2.c): widen once, here, so
     * that every panel chunk reuses it */
    if (xq16)
        for (int64_t i = 0; i < rows * ldq; i++) xq16[i] = xq[i];

    const qn_i8_args a = {
        .path = k->path, .rows = rows, .in4 = k->in4, .out = l->out, .xq = xq, .ldq = ldq, .xq16 = xq16,
        .zp = zp, .xs = xs, .w = k->w8, .colsum = k->colsum, .wscale = k->wscale, .bias = k->bias,
        .relu = l->act == QN_ACT_RELU, .y = y, .ldy = l->out,
    };
    const int64_t npan = k->out16 / QN_PANEL;
    if (pool && qn_kernel_split_wins(rows, in * l->out)) qn_kernel_split_panels(pool, npan, 4, gemm_panels, (void *)&a);
    else gemm_panels((void *)&a, 0, npan);

    if (nbad) {
        int32_t *cols = qn_scratch_get(s, QN_SCR_NF, (size_t)in * sizeof(int32_t));
        if (!cols) return QN_ENOMEM;
        for (int64_t r = 0; r < rows; r++)
            if (bad[r]) fix_row(l, x + r * in, cols, qn_nonfinite_cols(x + r * in, in, cols), y + r * l->out);
    }
    if (l->act != QN_ACT_NONE && l->act != QN_ACT_RELU) qn_cpu_epilogue(y, rows, l->out, l->out, NULL, l->act);
    return 0;
}
