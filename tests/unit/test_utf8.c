/* test_utf8.c - api/utf8.c: a table of byte strings whose expected output was computed with
 * Python 3's bytes.decode("utf-8", "replace").encode() and pasted here; every 1- and 2-byte
 * string and the 3- and 4-byte strings over an alphabet of edge bytes, hashed and compared
 * with hashes Python computed the same way; a streaming property test on seeded random input
 * split at random (the output never depends on the split, each piece is valid UTF-8 by an
 * independent validator, nothing complete is held back); and the API_UTF8_MAX_OUT bound. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/utf8.h"

static const char FFFD[] = "\xef\xbf\xbd";

/* ---- an independent validator and reference -------------------------------------------- */

/* 1 if s[0..n) is valid UTF-8 (RFC 3629), by decoding each code point arithmetically and
 * checking it against the ranges, not by tables of bytes as utf8.c does. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i];
        int extra;
        uint32_t min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1, c &= 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2, c &= 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3, c &= 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= (size_t)extra) return 0;
        for (int k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            c = (c << 6) | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
        i += (size_t)extra + 1;
    }
    return 1;
}

/* 1 if p[0..m) (m = 1..3) is a proper prefix of some valid sequence: some filler of
 * continuation bytes completes it. The fillers cover every second-byte range of Table 3-7. */
static int completable(const uint8_t *p, size_t m)
{
    static const uint8_t fill[] = {0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF};
    if (p[0] < 0x80) return 0;
    for (size_t f = 0; f < sizeof fill; f++) {
        for (size_t len = m + 1; len <= 4; len++) {
            uint8_t buf[4];
            memcpy(buf, p, m);
            memset(buf + m, fill[f], len - m);
            if (valid_utf8(buf, len)) return 1;
        }
    }
    return 0;
}

/* Maximal-subpart replacement straight from its definition: at each position copy a valid
 * character if one starts there, else replace the longest prefix that could still become one
 * (or the single byte) with U+FFFD. */
static size_t ref_sanitize(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t i = 0, w = 0;
    while (i < n) {
        size_t len = 0;
        if (in[i] < 0x80) len = 1;
        for (size_t l = 2; !len && l <= 4 && i + l <= n; l++)
            if (valid_utf8(in + i, l)) len = l;
        if (len) {
            memcpy(out + w, in + i, len);
            w += len;
            i += len;
            continue;
        }
        size_t m = 1;
        for (size_t k = 3; k >= 1; k--) {
            if (i + k <= n && completable(in + i, k)) {
                m = k;
                break;
            }
        }
        memcpy(out + w, FFFD, 3);
        w += 3;
        i += m;
    }
    return w;
}

/* sanitize into a malloc'd buffer of exactly API_UTF8_MAX_OUT(n), so that ASan sees any
 * overrun; returns it with *len set. */
static char *sanitize_exact(const uint8_t *in, size_t n, size_t *len)
{
    char *out = malloc(API_UTF8_MAX_OUT(n));
    cr_assert_not_null(out);
    *len = api_utf8_sanitize(in, n, out);
    cr_assert_leq(*len, API_UTF8_MAX_OUT(n));
    return out;
}

static void show(const char *what, const uint8_t *s, size_t n, char *buf, size_t cap)
{
    size_t w = (size_t)snprintf(buf, cap, "%s:", what);
    for (size_t i = 0; i < n && w + 4 < cap; i++)
        w += (size_t)snprintf(buf + w, cap - w, " %02X", s[i]);
}

/* ---- the table ------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *in;
    size_t in_len;
    const char *out;
    size_t out_len;
} vec;

#define V(name, in, out) {name, in, sizeof(in) - 1, out, sizeof(out) - 1}

/* Expected outputs: Python 3.11, bytes.decode("utf-8", "replace").encode(). */
static const vec table[] = {
    V("empty",
      "",
      ""),
    V("ascii",
      "hello, world",
      "hello, world"),
    V("ascii controls and DEL",
      "\x00\x01\x09\x0a\x1f\x7f",
      "\x00\x01\x09\x0a\x1f\x7f"),
    V("2-byte e-acute",
      "\xc3\xa9",
      "\xc3\xa9"),
    V("3-byte euro",
      "\xe2\x82\xac",
      "\xe2\x82\xac"),
    V("4-byte emoji",
      "\xf0\x9f\x98\x80",
      "\xf0\x9f\x98\x80"),
    V("mixed valid",
      "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z",
      "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z"),
    V("U+0080 lowest 2-byte",
      "\xc2\x80",
      "\xc2\x80"),
    V("U+07FF highest 2-byte",
      "\xdf\xbf",
      "\xdf\xbf"),
    V("U+0800 lowest 3-byte",
      "\xe0\xa0\x80",
      "\xe0\xa0\x80"),
    V("U+D7FF below surrogates",
      "\xed\x9f\xbf",
      "\xed\x9f\xbf"),
    V("U+E000 above surrogates",
      "\xee\x80\x80",
      "\xee\x80\x80"),
    V("U+FFFD itself",
      "\xef\xbf\xbd",
      "\xef\xbf\xbd"),
    V("U+FFFF",
      "\xef\xbf\xbf",
      "\xef\xbf\xbf"),
    V("U+10000 lowest 4-byte",
      "\xf0\x90\x80\x80",
      "\xf0\x90\x80\x80"),
    V("U+10FFFF highest",
      "\xf4\x8f\xbf\xbf",
      "\xf4\x8f\xbf\xbf"),
    V("overlong C0 80 (NUL)",
      "\xc0\x80",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("overlong C1 BF",
      "\xc1\xbf",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("lone C0",
      "\xc0",
      "\xef\xbf\xbd"),
    V("overlong E0 80 80",
      "\xe0\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("overlong E0 9F BF",
      "\xe0\x9f\xbf",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("overlong F0 80 80 80",
      "\xf0\x80\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("overlong F0 8F BF BF",
      "\xf0\x8f\xbf\xbf",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("surrogate ED A0 80 (U+D800)",
      "\xed\xa0\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("surrogate ED BF BF (U+DFFF)",
      "\xed\xbf\xbf",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("surrogate pair",
      "\xed\xa0\xbd\xed\xb8\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
      "\xef\xbf\xbd"),
    V("too large F4 90 80 80",
      "\xf4\x90\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("too large F4 BF BF BF",
      "\xf4\xbf\xbf\xbf",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("F5 lead",
      "\xf5\x80\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("F7 BF BF BF (old 4-byte max)",
      "\xf7\xbf\xbf\xbf",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("5-byte form F8",
      "\xf8\x88\x80\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("6-byte form FC",
      "\xfc\x84\x80\x80\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
      "\xef\xbf\xbd"),
    V("FE",
      "\xfe",
      "\xef\xbf\xbd"),
    V("FF",
      "\xff",
      "\xef\xbf\xbd"),
    V("FF FE FF",
      "\xff\xfe\xff",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("stray 80",
      "\x80",
      "\xef\xbf\xbd"),
    V("stray BF",
      "\xbf",
      "\xef\xbf\xbd"),
    V("three stray continuations",
      "\x80\x80\x80",
      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
    V("stray between ASCII",
      "a\x80" "b\xbf" "c",
      "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c"),
    V("continuation after complete 2-byte",
      "\xc3\xa9\xa9",
      "\xc3\xa9\xef\xbf\xbd"),
    V("truncated 2-byte at end",
      "ab\xc3",
      "ab\xef\xbf\xbd"),
    V("truncated 3-byte at end (1 of 3)",
      "ab\xe2",
      "ab\xef\xbf\xbd"),
    V("truncated 3-byte at end (2 of 3)",
      "ab\xe2\x82",
      "ab\xef\xbf\xbd"),
    V("truncated 4-byte at end (3 of 4)",
      "ab\xf0\x9f\x98",
      "ab\xef\xbf\xbd"),
    V("truncated E0 A0 at end",
      "\xe0\xa0",
      "\xef\xbf\xbd"),
    V("truncated F4 8F BF at end",
      "\xf4\x8f\xbf",
      "\xef\xbf\xbd"),
    V("truncated 2-byte then ASCII",
      "\xc3" "a",
      "\xef\xbf\xbd" "a"),
    V("truncated 3-byte then ASCII",
      "\xe2\x82" "b",
      "\xef\xbf\xbd" "b"),
    V("truncated 4-byte then ASCII",
      "\xf0\x9f\x98" "c",
      "\xef\xbf\xbd" "c"),
    V("truncated 4-byte then 2-byte",
      "\xf0\x9f\x98\xc3\xa9",
      "\xef\xbf\xbd\xc3\xa9"),
    V("truncated 3-byte then full 3-byte",
      "\xe2\x82\xe2\x82\xac",
      "\xef\xbf\xbd\xe2\x82\xac"),
    V("lead then lead",
      "\xc3\xc3\xa9",
      "\xef\xbf\xbd\xc3\xa9"),
    V("E0 80: first byte alone is the subpart",
      "\xe0\x80",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("ED A0: surrogate prefix",
      "\xed\xa0",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("F0 90 then C0",
      "\xf0\x90\xc0",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("F4 90: beyond U+10FFFF",
      "\xf4\x90",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("F1 80 80 then FF",
      "\xf1\x80\x80\xff",
      "\xef\xbf\xbd\xef\xbf\xbd"),
    V("F1 80 80 then 4-byte",
      "\xf1\x80\x80\xf0\x90\x80\x80",
      "\xef\xbf\xbd\xf0\x90\x80\x80"),
    V("Unicode 3.9 example (Table 3-8)",
      "a\xf1\x80\x80\xe1\x80\xc2" "b\x80" "c\x80\xbf" "d",
      "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "b\xef\xbf\xbd" "c"
      "\xef\xbf\xbd\xef\xbf\xbd" "d"),
    V("Markus Kuhn: all lone leads C0..FF with spaces",
      "\xc0 \xc1 \xc2 \xc3 \xc4 \xc5 \xc6 \xc7 "
      "\xc8 \xc9 \xca \xcb \xcc \xcd \xce \xcf "
      "\xd0 \xd1 \xd2 \xd3 \xd4 \xd5 \xd6 \xd7 "
      "\xd8 \xd9 \xda \xdb \xdc \xdd \xde \xdf "
      "\xe0 \xe1 \xe2 \xe3 \xe4 \xe5 \xe6 \xe7 "
      "\xe8 \xe9 \xea \xeb \xec \xed \xee \xef "
      "\xf0 \xf1 \xf2 \xf3 \xf4 \xf5 \xf6 \xf7 "
      "\xf8 \xf9 \xfa \xfb \xfc \xfd \xfe \xff ",
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "
      "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd "),
    V("valid text with a truncated char inside",
      "na\xc3\xafve \xe2\x80\x94 \xe2\x80 ca"
      "f\xc3\xa9",
      "na\xc3\xafve \xe2\x80\x94 \xef\xbf\xbd c"
      "af\xc3\xa9"),
    V("NUL inside",
      "a\x00\xc3\xa9\x00",
      "a\x00\xc3\xa9\x00"),
};

#define N_TABLE (sizeof table / sizeof table[0])

Test(utf8, table_matches_python)
{
    for (size_t t = 0; t < N_TABLE; t++) {
        const vec *v = &table[t];
        cr_assert(valid_utf8((const uint8_t *)v->out, v->out_len), "%s: bad expected output",
                  v->name);
        size_t n;
        char *out = sanitize_exact((const uint8_t *)v->in, v->in_len, &n);
        cr_assert(n == v->out_len && memcmp(out, v->out, n) == 0, "%s: got %zu bytes, want %zu",
                  v->name, n, v->out_len);
        free(out);
    }
}

Test(utf8, table_byte_at_a_time)
{
    for (size_t t = 0; t < N_TABLE; t++) {
        const vec *v = &table[t];
        api_utf8 u = {{0}, 0};
        char *acc = malloc(API_UTF8_MAX_OUT(v->in_len));
        cr_assert_not_null(acc);
        size_t w = 0;
        for (size_t i = 0; i < v->in_len; i++) {
            char piece[API_UTF8_MAX_OUT(1)];
            size_t k = api_utf8_feed(&u, (const uint8_t *)v->in + i, 1, piece);
            cr_assert_leq(k, sizeof piece);
            memcpy(acc + w, piece, k);
            w += k;
        }
        char tail[API_UTF8_MAX_OUT(0)];
        size_t k = api_utf8_finish(&u, tail);
        memcpy(acc + w, tail, k);
        w += k;
        cr_assert(w == v->out_len && memcmp(acc, v->out, w) == 0, "%s", v->name);
        cr_assert_eq(u.npend, 0, "%s: finish leaves the state empty", v->name);
        free(acc);
    }
}

Test(utf8, table_agrees_with_the_reference)
{
    /* the in-test reference is what the random tests trust, so it must match Python too */
    for (size_t t = 0; t < N_TABLE; t++) {
        const vec *v = &table[t];
        uint8_t *out = malloc(API_UTF8_MAX_OUT(v->in_len));
        cr_assert_not_null(out);
        size_t n = ref_sanitize((const uint8_t *)v->in, v->in_len, out);
        cr_assert(n == v->out_len && memcmp(out, v->out, n) == 0, "reference on %s", v->name);
        free(out);
    }
}

/* ---- exhaustive short strings, against hashes from Python -------------------------------- */

/* FNV-1a 64 over, for each input in order, one byte of output length and the output. The
 * same loop in Python gave the constants below:
 *
 *   def digest(inputs):
 *       h = 0xcbf29ce484222325
 *       for bs in inputs:
 *           o = bytes(bs).decode('utf-8', 'replace').encode()
 *           for b in bytes([len(o)]) + o: h = ((h ^ b) * 0x100000001b3) & ((1 << 64) - 1)
 *       return hex(h)
 *   digest(itertools.product(range(256), repeat=2))   # and repeat=1; alpha3 ** 3; alpha4 ** 4
 */
typedef struct {
    uint64_t h;
    size_t count;
} digest;

static void digest_add(digest *d, const uint8_t *in, size_t n)
{
    char out[API_UTF8_MAX_OUT(4)];
    size_t len = api_utf8_sanitize(in, n, out);
    uint8_t ref[API_UTF8_MAX_OUT(4)];
    size_t rlen = ref_sanitize(in, n, ref);
    if (rlen != len || memcmp(out, ref, len) != 0) {
        char buf[64];
        show("input", in, n, buf, sizeof buf);
        cr_assert_fail("%s: differs from the reference", buf);
    }
    /* and split after every byte, the same */
    api_utf8 u = {{0}, 0};
    char acc[API_UTF8_MAX_OUT(4)];
    size_t w = 0;
    for (size_t i = 0; i < n; i++) w += api_utf8_feed(&u, in + i, 1, acc + w);
    w += api_utf8_finish(&u, acc + w);
    cr_assert(w == len && memcmp(acc, out, w) == 0);

    d->h ^= (uint8_t)len;
    d->h *= 0x100000001b3ull;
    for (size_t i = 0; i < len; i++) {
        d->h ^= (uint8_t)out[i];
        d->h *= 0x100000001b3ull;
    }
    d->count++;
}

static const uint8_t alpha3[] = {0x00, 0x61, 0x7A, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                                 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF,
                                 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF8, 0xFE, 0xFF};
static const uint8_t alpha4[] = {0x61, 0x80, 0x8F, 0x90, 0xA0, 0xBF,
                                 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xFF};

Test(utf8, every_short_string_matches_python)
{
    digest d1 = {0xcbf29ce484222325ull, 0}, d2 = d1, d3 = d1, d4 = d1;
    for (int a = 0; a < 256; a++) digest_add(&d1, (uint8_t[]){(uint8_t)a}, 1);
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++) digest_add(&d2, (uint8_t[]){(uint8_t)a, (uint8_t)b}, 2);
    const size_t n3 = sizeof alpha3, n4 = sizeof alpha4;
    for (size_t a = 0; a < n3; a++)
        for (size_t b = 0; b < n3; b++)
            for (size_t c = 0; c < n3; c++)
                digest_add(&d3, (uint8_t[]){alpha3[a], alpha3[b], alpha3[c]}, 3);
    for (size_t a = 0; a < n4; a++)
        for (size_t b = 0; b < n4; b++)
            for (size_t c = 0; c < n4; c++)
                for (size_t e = 0; e < n4; e++)
                    digest_add(&d4, (uint8_t[]){alpha4[a], alpha4[b], alpha4[c], alpha4[e]}, 4);
    cr_assert_eq(d1.count, 0x100);
    cr_assert_eq(d2.count, 0x10000);
    cr_assert_eq(d3.count, 0x55c0);
    cr_assert_eq(d4.count, 0x5100);
    cr_assert_eq(d1.h, 0xe3e3ced2d6d5b9a5ull, "1-byte strings differ from Python");
    cr_assert_eq(d2.h, 0xb215b7d3014ddc25ull, "2-byte strings differ from Python");
    cr_assert_eq(d3.h, 0xfc2cf0d750eeb7ddull, "3-byte strings differ from Python");
    cr_assert_eq(d4.h, 0xeb20dd2b19b767d3ull, "4-byte strings differ from Python");
}

/* ---- streaming: random input, random splits ---------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static size_t rnd_below(size_t n) { return (size_t)(rnd() % n); }

/* Encodes code point c (valid scalar value) into p; returns its length. */
static size_t encode(uint32_t c, uint8_t *p)
{
    if (c < 0x80) return p[0] = (uint8_t)c, 1;
    if (c < 0x800) return p[0] = (uint8_t)(0xC0 | c >> 6), p[1] = (uint8_t)(0x80 | (c & 0x3F)), 2;
    if (c < 0x10000) {
        p[0] = (uint8_t)(0xE0 | c >> 12);
        p[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        p[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    p[0] = (uint8_t)(0xF0 | c >> 18);
    p[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    p[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    p[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* A random code point, weighted toward each length and the edges of each range. */
static uint32_t random_char(void)
{
    static const uint32_t edges[] = {0x0,    0x7F,   0x80,   0x7FF,   0x800,   0xD7FF,
                                     0xE000, 0xFFFD, 0xFFFF, 0x10000, 0x10FFFF, 0x1F600};
    switch (rnd_below(6)) {
    case 0: return (uint32_t)(0x20 + rnd_below(0x5F));
    case 1: return (uint32_t)(0x80 + rnd_below(0x780));
    case 2: {
        uint32_t c = (uint32_t)(0x800 + rnd_below(0xF800));
        return c >= 0xD800 && c <= 0xDFFF ? c + 0x800 : c;
    }
    case 3: return (uint32_t)(0x10000 + rnd_below(0x100000));
    case 4: return edges[rnd_below(sizeof edges / sizeof edges[0])];
    default: return (uint32_t)('a' + rnd_below(26));
    }
}

/* Fills s (capacity cap >= 16) with one of several kinds of input; returns its length. */
static size_t random_input(uint8_t *s, size_t cap, int *kind_out)
{
    int kind = (int)rnd_below(4);
    size_t target = rnd_below(cap - 8);
    size_t n = 0;
    if (kind == 0) { /* any bytes */
        for (; n < target; n++) s[n] = (uint8_t)rnd();
    } else if (kind == 1) { /* bytes from the edge alphabet */
        for (; n < target; n++) s[n] = alpha3[rnd_below(sizeof alpha3)];
    } else { /* valid text; kind 3 corrupts it */
        while (n + 4 <= target) n += encode(random_char(), s + n);
        if (kind == 3) {
            size_t edits = 1 + rnd_below(6);
            for (size_t e = 0; e < edits && n > 0; e++) {
                size_t at = rnd_below(n);
                switch (rnd_below(4)) {
                case 0: s[at] = (uint8_t)rnd(); break;                         /* replace */
                case 1: memmove(s + at, s + at + 1, n - at - 1), n--; break; /* delete */
                case 2:                                                        /* insert */
                    if (n < cap) {
                        memmove(s + at + 1, s + at, n - at);
                        s[at] = alpha3[rnd_below(sizeof alpha3)];
                        n++;
                    }
                    break;
                default: n = at + 1; break; /* truncate, maybe mid-character */
                }
            }
        }
    }
    *kind_out = kind;
    return n;
}

/* Feeds s[0..n) in pieces whose sizes come from max_piece (1: a byte at a time; 0 allowed as
 * a size, an empty feed), checking every feed; returns the whole output in acc. With check_
 * prefix it also checks after each feed that what came out plus the held-back prefix is
 * exactly the sanitised prefix so far, which is O(n^2) and so only used on one split. */
static size_t stream(const uint8_t *s, size_t n, size_t max_piece, int check_prefix, char *acc,
                     int trial)
{
    api_utf8 u = {{0}, 0};
    size_t at = 0, w = 0;
    while (at < n) {
        size_t len = max_piece == 1 ? 1 : rnd_below(max_piece + 1);
        if (len > n - at) len = n - at;
        char *piece = malloc(API_UTF8_MAX_OUT(len) + 8);
        cr_assert_not_null(piece);
        memset(piece, 0xA5, API_UTF8_MAX_OUT(len) + 8);
        size_t k = api_utf8_feed(&u, s + at, len, piece);
        cr_assert_leq(k, API_UTF8_MAX_OUT(len), "trial %d: feed of %zu wrote %zu", trial, len, k);
        for (size_t g = API_UTF8_MAX_OUT(len); g < API_UTF8_MAX_OUT(len) + 8; g++)
            cr_assert_eq((uint8_t)piece[g], 0xA5, "trial %d: wrote past the bound", trial);
        cr_assert(valid_utf8((const uint8_t *)piece, k), "trial %d: a feed emitted invalid UTF-8",
                  trial);
        memcpy(acc + w, piece, k);
        free(piece);
        w += k;
        at += len;

        /* the held-back prefix: 0..3 bytes, the input's last bytes, still completable */
        cr_assert(u.npend >= 0 && u.npend <= 3, "trial %d: npend %d", trial, u.npend);
        if (u.npend > 0) {
            cr_assert_leq((size_t)u.npend, at);
            cr_assert_eq(memcmp(u.pend, s + at - (size_t)u.npend, (size_t)u.npend), 0);
            cr_assert(completable(u.pend, (size_t)u.npend), "trial %d: holds a dead prefix", trial);
        }
        /* nothing complete is held back: if the input so far ends with a whole valid
         * character, nothing is pending */
        for (size_t k2 = 1; k2 <= 4 && k2 <= at; k2++)
            if (valid_utf8(s + at - k2, k2))
                cr_assert_eq(u.npend, 0, "trial %d: a complete character was held back", trial);
        if (check_prefix) {
            uint8_t *ref = malloc(API_UTF8_MAX_OUT(at));
            cr_assert_not_null(ref);
            size_t rn = ref_sanitize(s, at, ref);
            size_t held = u.npend > 0 ? 3 : 0;
            cr_assert(rn == w + held && memcmp(ref, acc, w) == 0 &&
                          (!held || memcmp(ref + w, FFFD, 3) == 0),
                      "trial %d: output so far is not the settled prefix", trial);
            free(ref);
        }
    }
    char tail[API_UTF8_MAX_OUT(0)];
    size_t k = api_utf8_finish(&u, tail);
    cr_assert(k == 0 || (k == 3 && memcmp(tail, FFFD, 3) == 0));
    cr_assert_eq(u.npend, 0);
    memcpy(acc + w, tail, k);
    return w + k;
}

Test(utf8, streaming_split_anywhere_gives_the_same_output)
{
    enum { CAP = 300, TRIALS = 3000 };
    rng_state = 0x9E3779B97F4A7C15ull;
    uint8_t s[CAP];
    char acc[API_UTF8_MAX_OUT(CAP)];
    int kinds[4] = {0};
    for (int trial = 0; trial < TRIALS; trial++) {
        int kind;
        size_t n = random_input(s, CAP, &kind);
        kinds[kind]++;
        size_t wn;
        char *whole = sanitize_exact(s, n, &wn);
        cr_assert(valid_utf8((const uint8_t *)whole, wn), "trial %d: invalid output", trial);

        uint8_t ref[API_UTF8_MAX_OUT(CAP)];
        size_t rn = ref_sanitize(s, n, ref);
        cr_assert(rn == wn && memcmp(ref, whole, wn) == 0, "trial %d (kind %d): differs from the "
                  "reference", trial, kind);
        if (kind == 2) /* valid text passes through untouched */
            cr_assert(wn == n && memcmp(whole, s, n) == 0, "trial %d: valid text changed", trial);

        /* sanitising is idempotent */
        size_t wn2;
        char *again = sanitize_exact((const uint8_t *)whole, wn, &wn2);
        cr_assert(wn2 == wn && memcmp(again, whole, wn) == 0, "trial %d: not idempotent", trial);
        free(again);

        const size_t pieces[] = {1, 3, 7, 64};
        for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
            size_t k = stream(s, n, pieces[p], p == 0 && trial % 10 == 0, acc, trial);
            cr_assert(k == wn && memcmp(acc, whole, k) == 0,
                      "trial %d: pieces of up to %zu bytes give another output", trial, pieces[p]);
        }
        free(whole);
    }
    for (int k = 0; k < 4; k++) cr_assert_gt(kinds[k], TRIALS / 8, "input kind %d is rare", k);
}

/* ---- the API's edges ------------------------------------------------------------------- */

Test(utf8, finish_and_empty_feeds)
{
    api_utf8 u = {{0}, 0};
    char out[API_UTF8_MAX_OUT(4)];
    cr_assert_eq(api_utf8_feed(&u, NULL, 0, out), 0);
    cr_assert_eq(api_utf8_finish(&u, out), 0, "an empty stream ends with nothing");

    cr_assert_eq(api_utf8_feed(&u, (const uint8_t *)"\xf0\x9f", 2, out), 0, "held back");
    cr_assert_eq(u.npend, 2);
    cr_assert_eq(api_utf8_feed(&u, NULL, 0, out), 0);
    cr_assert_eq(api_utf8_feed(&u, (const uint8_t *)"\x98", 1, out), 0);
    cr_assert_eq(api_utf8_feed(&u, (const uint8_t *)"\x80", 1, out), 4, "complete: out at once");
    cr_assert_eq(memcmp(out, "\xf0\x9f\x98\x80", 4), 0);
    cr_assert_eq(u.npend, 0);

    cr_assert_eq(api_utf8_feed(&u, (const uint8_t *)"\xe2\x82", 2, out), 0);
    cr_assert_eq(api_utf8_finish(&u, out), 3, "a truncated prefix ends as one U+FFFD");
    cr_assert_eq(memcmp(out, FFFD, 3), 0);
    cr_assert_eq(u.npend, 0);
    cr_assert_eq(api_utf8_finish(&u, out), 0, "and only once");

    /* the state is reusable after finish */
    cr_assert_eq(api_utf8_feed(&u, (const uint8_t *)"\xc3\xa9", 2, out), 2);
    cr_assert_eq(memcmp(out, "\xc3\xa9", 2), 0);

    /* a dead prefix is replaced as soon as the byte that kills it arrives */
    api_utf8 v = {{0}, 0};
    cr_assert_eq(api_utf8_feed(&v, (const uint8_t *)"\xe0", 1, out), 0);
    cr_assert_eq(api_utf8_feed(&v, (const uint8_t *)"\x80", 1, out), 6, "E0 80: two U+FFFD now");
    cr_assert_eq(v.npend, 0);
    cr_assert_eq(api_utf8_feed(&v, (const uint8_t *)"\xf4\x8f\xbf", 3, out), 0);
    cr_assert_eq(api_utf8_feed(&v, (const uint8_t *)"\xc3", 1, out), 3, "F4 8F BF then a lead");
    cr_assert_eq(v.npend, 1, "the lead is held");
    cr_assert_eq(api_utf8_sanitize(NULL, 0, out), 0);
}

Test(utf8, max_out_bounds_the_worst_cases)
{
    /* all 0xFF: three bytes out per byte in */
    for (size_t n = 0; n <= 4100; n += (n < 70 ? 1 : 1007)) {
        uint8_t *in = malloc(n + 1);
        cr_assert_not_null(in);
        memset(in, 0xFF, n);
        size_t w;
        char *out = sanitize_exact(in, n, &w); /* exact-size buffer: ASan checks the bound */
        cr_assert_eq(w, 3 * n);
        free(out);
        free(in);
    }
    /* every held-back prefix, then every byte, then all 0xFF: the most one feed can write */
    static const char *const prefixes[] = {"\xc2", "\xe0", "\xe0\xa0", "\xed\x80", "\xe1\x80",
                                           "\xf0", "\xf0\x90", "\xf0\x90\x80", "\xf4\x8f\xbf",
                                           "\xf1\x80\x80"};
    for (size_t p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++) {
        for (int b = 0; b < 256; b++) {
            for (size_t tail = 0; tail <= 3; tail++) {
                api_utf8 u = {{0}, 0};
                char pre[API_UTF8_MAX_OUT(3)];
                size_t plen = strlen(prefixes[p]);
                cr_assert_eq(api_utf8_feed(&u, (const uint8_t *)prefixes[p], plen, pre), 0);
                cr_assert_eq((size_t)u.npend, plen);
                uint8_t in[4] = {(uint8_t)b, 0xFF, 0xFF, 0xFF};
                size_t len = 1 + tail;
                char *out = malloc(API_UTF8_MAX_OUT(len));
                cr_assert_not_null(out);
                size_t w = api_utf8_feed(&u, in, len, out);
                cr_assert_leq(w, API_UTF8_MAX_OUT(len));
                cr_assert(valid_utf8((const uint8_t *)out, w));
                free(out);
                char fin[API_UTF8_MAX_OUT(0)];
                cr_assert_leq(api_utf8_finish(&u, fin), 3);
            }
        }
    }
}
