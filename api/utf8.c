/* utf8.c - the streaming UTF-8 sanitiser (utf8.h): a byte-at-a-time decoder that knows, from
 * the lead byte and how many continuation bytes it has seen, the one range the next byte must
 * fall in. A byte outside that range ends the held-back prefix (one U+FFFD) and is then read
 * again as the start of a new sequence, which is what makes the replacement "maximal
 * subpart" and independent of where the input is split. */
#include "utf8.h"

#include <string.h>

/* The bytes in a sequence that starts with b: 1 for ASCII, 2..4 for a lead byte, 0 for a byte
 * that can never start one (80..BF, C0, C1, F5..FF). */
static int utf8_seq_len(uint8_t b)
{
    if (b < 0x80) return 1;
    if (b < 0xC2) return 0;
    if (b < 0xE0) return 2;
    if (b < 0xF0) return 3;
    if (b < 0xF5) return 4;
    return 0;
}

/* The range [*lo, *hi] of the byte after the prefix pend[0..n), n >= 1. Only the second byte
 * has a range narrower than 80..BF (Unicode Table 3-7). */
static void utf8_next_range(const uint8_t *pend, int n, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (n != 1) return;
    switch (pend[0]) {
    case 0xE0: *lo = 0xA0; break; /* below: overlong */
    case 0xED: *hi = 0x9F; break; /* above: surrogates */
    case 0xF0: *lo = 0x90; break; /* below: overlong */
    case 0xF4: *hi = 0x8F; break; /* above: beyond U+10FFFF */
    default: break;
    }
}

static size_t utf8_put_fffd(uint8_t *o)
{
    o[0] = 0xEF;
    o[1] = 0xBF;
    o[2] = 0xBD;
    return 3;
}

size_t api_utf8_feed(api_utf8 *u, const uint8_t *in, size_t len, char *out)
{
    uint8_t *o = (uint8_t *)out;
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        const uint8_t b = in[i];
        if (u->npend > 0) {
            uint8_t lo, hi;
            utf8_next_range(u->pend, u->npend, &lo, &hi);
            if (b >= lo && b <= hi) {
                u->pend[u->npend++] = b;
                if (u->npend == utf8_seq_len(u->pend[0])) { /* complete: out it goes */
                    memcpy(o + w, u->pend, (size_t)u->npend);
                    w += (size_t)u->npend;
                    u->npend = 0;
                }
                continue;
            }
            /* the prefix can never complete: one U+FFFD for all of it, then b starts afresh */
            w += utf8_put_fffd(o + w);
            u->npend = 0;
        }
        switch (utf8_seq_len(b)) {
        case 1: o[w++] = b; break;
        case 0: w += utf8_put_fffd(o + w); break;
        default:
            u->pend[0] = b;
            u->npend = 1;
            break;
        }
    }
    return w;
}

size_t api_utf8_finish(api_utf8 *u, char *out)
{
    size_t w = u->npend > 0 ? utf8_put_fffd((uint8_t *)out) : 0;
    u->npend = 0;
    return w;
}

size_t api_utf8_sanitize(const uint8_t *in, size_t len, char *out)
{
    api_utf8 u = {{0}, 0};
    size_t w = api_utf8_feed(&u, in, len, out);
    return w + api_utf8_finish(&u, out + w);
}
