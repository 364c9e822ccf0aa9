/* kcommon.c: the helpers of kcommon.h, shared by every compressed-layer
 * driver: per-thread scratch, the NaN/Inf row tests, and the intra-op panel
 * split. It must never call a kernel or a driver: they call it. */
#include "cpu/kcommon.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tensor.h"

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

/* All exponent bits set: Inf or NaN. */
static inline uint32_t nonfinite_bit(const float *x)
{
    uint32_t u;
    memcpy(&u, x, sizeof u);
    return (u & 0x7f800000u) == 0x7f800000u;
}

int qn_row_nonfinite(const float *x, int64_t n)
{
    uint32_t any = 0;
    for (int64_t k = 0; k < n; k++) any |= nonfinite_bit(x + k);
    return any != 0;
}

int64_t qn_nonfinite_cols(const float *x, int64_t n, int32_t *cols)
{
    int64_t m = 0;
    for (int64_t k = 0; k < n; k++)
        if (nonfinite_bit(x + k)) cols[m++] = (int32_t)k;
    return m;
}

static _Atomic int64_t g_split_min_bytes = QN_KERNEL_SPLIT_MIN_BYTES;

void qn_kernel_set_split_min_bytes(int64_t bytes)
{
    atomic_store(&g_split_min_bytes, bytes > 0 ? bytes : QN_KERNEL_SPLIT_MIN_BYTES);
}

int qn_kernel_split_wins(int64_t rows, int64_t wbytes)
{
    if (rows < 1 || rows > QN_KERNEL_SPLIT_MAX_ROWS || wbytes < 1) return 0;
    const int64_t min = atomic_load_explicit(&g_split_min_bytes, memory_order_relaxed);
    return wbytes >= min;
}

typedef struct {
    qn_panel_fn fn;
    void *arg;
    int64_t npanels, per;
} split_job;

static void split_chunk(void *vj, int64_t chunk)
{
    const split_job *j = vj;
    int64_t pb = chunk * j->per, pe = pb + j->per < j->npanels ? pb + j->per : j->npanels;
    j->fn(j->arg, pb, pe);
}

void qn_kernel_split_panels(qn_cpu_pool *pool, int64_t npanels, int64_t min_per, qn_panel_fn fn, void *arg)
{
    if (npanels < 1) return;
    if (!pool) {
        fn(arg, 0, npanels);
        return;
    }
    /* as dense.c's split: about 4 chunks per thread, so that a helper that
     * wakes late still gets a share, none smaller than the kernel's widest
     * tile (the tiling then stays what the whole call would use) */
    int64_t want = 4 * (1 + (int64_t)qn_cpu_pool_helpers(pool));
    int64_t per = (npanels + want - 1) / want;
    if (per < min_per) per = min_per;
    if (per < 1) per = 1;
    split_job j = {.fn = fn, .arg = arg, .npanels = npanels, .per = per};
    qn_cpu_pool_run(pool, split_chunk, &j, (npanels + per - 1) / per);
}
