/* sha256.c - SHA-256 (FIPS 180-4): the message schedule and the 64 rounds, once in portable C
 * and once with the x86 SHA extensions, which add 19 ms to the load of models/austen-lm (17 MB)
 * where the portable rounds add 75 ms (an Intel Xeon, 2026-12). Padding and the running length
 * are shared, so the two paths differ only in how a 64-byte block is compressed. */
#include "sha256.h"

#include <stdatomic.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SHA_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* ---- the portable rounds ----------------------------------------------------------------- */

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void compress_sw(uint32_t h[8], const uint8_t *p, size_t blocks)
{
    for (; blocks > 0; blocks--, p += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
            uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
    }
}

/* ---- the SHA extensions -------------------------------------------------------------------- */

#ifdef SHA_X86
/* The instructions keep the state as ABEF and CDGH and take the message four words at a time,
 * two rounds per sha256rnds2; each group of four words after the first four comes from the
 * previous four groups (sha256msg1 adds sigma0 of W[t-15], alignr supplies W[t-7], sha256msg2
 * adds sigma1 of W[t-2]). */
__attribute__((target("sha,sse4.1,ssse3"))) static void compress_hw(uint32_t h[8], const uint8_t *p,
                                                                      size_t blocks)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bll, 0x0405060700010203ll);
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(const void *)&h[0]), 0xB1); /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(const void *)&h[4]), 0x1B); /* EFGH */
    __m128i s0 = _mm_alignr_epi8(t, s1, 8);     /* ABEF */
    s1 = _mm_blend_epi16(s1, t, 0xF0);          /* CDGH */
    for (; blocks > 0; blocks--, p += 64) {
        __m128i save0 = s0, save1 = s1, msg[4];
        for (int g = 0; g < 16; g++) {
            __m128i m;
            if (g < 4) {
                m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(const void *)(p + 16 * g)), bswap);
            } else {
                m = _mm_sha256msg1_epu32(msg[(g - 4) & 3], msg[(g - 3) & 3]);
                m = _mm_add_epi32(m, _mm_alignr_epi8(msg[(g - 1) & 3], msg[(g - 2) & 3], 4));
                m = _mm_sha256msg2_epu32(m, msg[(g - 1) & 3]);
            }
            msg[g & 3] = m;
            __m128i wk = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)(const void *)&K[4 * g]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, wk);
            s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(wk, 0x0E));
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
    }
    t = _mm_shuffle_epi32(s0, 0x1B);            /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);           /* DCHG */
    s0 = _mm_blend_epi16(t, s1, 0xF0);          /* DCBA */
    s1 = _mm_alignr_epi8(s1, t, 8);             /* HGFE */
    _mm_storeu_si128((__m128i *)(void *)&h[0], s0);
    _mm_storeu_si128((__m128i *)(void *)&h[4], s1);
}

static int cpu_has_sha(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int sse = (c >> 9 & 1) && (c >> 19 & 1); /* SSSE3, SSE4.1 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return sse && (b >> 29 & 1);
}
#endif

/* -1: not yet probed; 0: portable; 1: the extensions. Atomic: the first hashes of two threads
 * may probe at once. */
static atomic_int hw_mode = -1;

static int probe_hw(void)
{
#ifdef SHA_X86
    return cpu_has_sha();
#else
    return 0;
#endif
}

int luna__sha256_use_hw(int on)
{
    int has = probe_hw();
    atomic_store(&hw_mode, on ? has : 0);
    return has;
}

static void compress(luna_sha256_ctx *c, const uint8_t *p, size_t blocks)
{
#ifdef SHA_X86
    if (c->hw) {
        compress_hw(c->h, p, blocks);
        return;
    }
#endif
    compress_sw(c->h, p, blocks);
}

/* ---- the message: blocks, padding, length ------------------------------------------------- */

void luna_sha256_init(luna_sha256_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->bytes = 0;
    c->used = 0;
    int mode = atomic_load(&hw_mode);
    if (mode < 0) {
        mode = probe_hw();
        atomic_store(&hw_mode, mode);
    }
    c->hw = mode;
}

void luna_sha256_update(luna_sha256_ctx *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    c->bytes += len;
    if (c->used > 0) {
        size_t take = 64 - c->used < len ? 64 - c->used : len;
        memcpy(c->buf + c->used, p, take);
        c->used += take, p += take, len -= take;
        if (c->used < 64) return;
        compress(c, c->buf, 1);
        c->used = 0;
    }
    if (len >= 64) { /* whole blocks straight from the caller's buffer: no copy */
        compress(c, p, len / 64);
        p += len / 64 * 64;
        len %= 64;
    }
    memcpy(c->buf, p, len);
    c->used = len;
}

void luna_sha256_final(luna_sha256_ctx *c, uint8_t out[LUNA_SHA256_BYTES])
{
    uint64_t bits = c->bytes * 8;
    uint8_t pad[72] = {0x80};
    size_t n = (c->used < 56 ? 56 : 120) - c->used; /* to 56 mod 64, at least one byte */
    for (int i = 0; i < 8; i++) pad[n + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
    uint64_t keep = c->bytes;
    luna_sha256_update(c, pad, n + 8);
    c->bytes = keep;
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
}

void luna_sha256(const void *data, size_t len, uint8_t out[LUNA_SHA256_BYTES])
{
    luna_sha256_ctx c;
    luna_sha256_init(&c);
    luna_sha256_update(&c, data, len);
    luna_sha256_final(&c, out);
}
