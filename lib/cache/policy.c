/* policy.c: what the cache's records mean, independent of LMDB: the key
 * (qn_cache_key), the value checksum, what an entry costs in pages, the LFU
 * counter math (Redis's) and the sampling RNG. Pure functions of their
 * arguments (and the cache's clock); nothing here touches the store. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cache_int.h"
#include "error.h"
#include "tensor.h"

int64_t qnc_mono_ms(void) { return (int64_t)(qn_now_ns() / 1000000u); }

int64_t qnc_wall_ms(const qn_cache *c)
{
    return c->o.clock_ms ? c->o.clock_ms(c->o.clock_ctx) : qn_wall_ms();
}

uint32_t qnc_now_sec(const qn_cache *c) { return (uint32_t)(qnc_wall_ms(c) / 1000); }

uint64_t qnc_rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double qnc_rng_unit(uint64_t *s) { return (double)(qnc_rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

/* ---- LFU counter (Redis's LFULogIncr / LFUDecrAndReturn) */

uint8_t qn_lfu_incr(uint8_t counter, uint32_t log_factor, double r)
{
    if (counter == 255) return 255;
    double base = (double)counter - QN_LFU_INIT_VAL;
    if (base < 0) base = 0;
    double p = 1.0 / (base * (double)log_factor + 1.0);
    return r < p ? (uint8_t)(counter + 1) : counter;
}

uint8_t qn_lfu_decay(uint8_t counter, uint32_t last_min, uint32_t now_min_, uint32_t decay_min)
{
    if (!decay_min || now_min_ <= last_min) return counter;
    uint32_t periods = (now_min_ - last_min) / decay_min;
    return periods >= counter ? 0 : (uint8_t)(counter - periods);
}

void qnc_lfu_rec(unsigned char r[LFU_REC], uint8_t counter, uint32_t ldt, uint64_t cost)
{
    memset(r, 0, LFU_REC);
    r[0] = counter;
    put_u32(r + 4, ldt);
    put_u32(r + 8, cost > UINT32_MAX ? UINT32_MAX : (uint32_t)cost);
}

/* ---- key */

int qn_cache_key(const char *model, int64_t version, int64_t rows, int64_t cols, const float *data,
                 uint64_t out[2])
{
    if (!model || !out || rows < 0 || cols < 0 || (rows && cols && !data)) return QN_EINVAL;
    if (cols && (uint64_t)rows > SIZE_MAX / 4 / (uint64_t)cols) return QN_EINVAL;
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    /* Every variable-length field is length-prefixed, so no two different
     * (model, version, shape, data) tuples hash the same byte stream. */
    static const char tag[] = "quern.cache.key.v1";
    XXH3_128bits_update(&st, tag, sizeof tag);
    unsigned char b[8];
    uint32_t mlen = (uint32_t)strlen(model);
    put_u32(b, mlen);
    XXH3_128bits_update(&st, b, 4);
    XXH3_128bits_update(&st, model, mlen);
    put_u64(b, (uint64_t)version);
    XXH3_128bits_update(&st, b, 8);
    static const char dtype[] = "f32"; /* the only dtype a job carries (CONTRACT.md) */
    XXH3_128bits_update(&st, dtype, sizeof dtype);
    put_u64(b, (uint64_t)rows);
    XXH3_128bits_update(&st, b, 8);
    put_u64(b, (uint64_t)cols);
    XXH3_128bits_update(&st, b, 8);
    if (rows && cols) XXH3_128bits_update(&st, data, (size_t)rows * (size_t)cols * 4);
    XXH128_hash_t h = XXH3_128bits_digest(&st);
    out[0] = h.low64;
    out[1] = h.high64;
    return 0;
}

/* The checksum covers the key (a value moved under another key fails), the
 * first 16 header bytes (magic, format, dtype, shape) and the payload. */
uint64_t qnc_value_checksum(const uint8_t key[16], const unsigned char *hdr, const void *payload,
                            size_t plen)
{
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, key, 16);
    XXH3_64bits_update(&st, hdr, 16);
    XXH3_64bits_update(&st, payload, plen);
    return XXH3_64bits_digest(&st);
}

/* An entry costs its leaf node (or its overflow pages) in entries plus its
 * node in lfu. */
uint64_t qnc_entry_cost(const qn_cache *c, size_t vlen)
{
    uint64_t lfu_node = (NODE_HDR + 16 + LFU_REC + SLOT) * FILL_NUM / FILL_DEN;
    if (NODE_HDR + 16 + vlen > c->nodemax) {
        uint64_t pages = (PAGE_HDR + vlen + c->psize - 1) / c->psize;
        return pages * c->psize + (NODE_HDR + 16 + 8 + SLOT) * FILL_NUM / FILL_DEN + lfu_node;
    }
    return (NODE_HDR + 16 + vlen + SLOT) * FILL_NUM / FILL_DEN + lfu_node;
}
