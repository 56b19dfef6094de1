/* utf8.h - a streaming UTF-8 sanitiser for generated text.
 *
 * A causal model emits bytes one token at a time, and nothing stops it from emitting a broken
 * or half-finished UTF-8 sequence; JSON (and a streamed HTTP chunk) needs valid UTF-8. This
 * module passes through every complete valid sequence as soon as its last byte arrives, holds
 * back a prefix that may still become valid (at most 3 bytes), and replaces every byte run
 * that can never become valid with U+FFFD (EF BF BD) the moment that is known. Replacement
 * follows the Unicode "maximal subpart" practice (Unicode 15, section 3.9, U+FFFD
 * Substitution of Maximal Subparts): the longest prefix of a well-formed sequence becomes
 * one U+FFFD, and a byte that cannot start one becomes one U+FFFD of its own. That is the
 * result of Python 3's bytes.decode("utf-8", "replace"), and splitting the input anywhere
 * never changes the output.
 *
 * Valid means RFC 3629 (Unicode Table 3-7): no overlong forms (C0, C1, E0 80..9F,
 * F0 80..8F), no surrogates (ED A0..BF), nothing above U+10FFFF (F4 90..BF, F5..FF).
 *
 * Threads: the functions are pure; an api_utf8 is one stream's state, used by one thread at
 * a time. Nothing here allocates. */
#ifndef API_UTF8_H
#define API_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* One stream's state; zero-initialised = empty. pend holds an incomplete but still possibly
 * valid prefix: pend[0] is a lead byte C2..F4 and npend is 0..3. */
typedef struct api_utf8 {
    uint8_t pend[4];
    int npend;
} api_utf8;

/* A bound on what one api_utf8_feed of len bytes (or one api_utf8_finish, len 0) can write:
 * every byte in or held back becomes at most 3 bytes out. */
#define API_UTF8_MAX_OUT(len) (3 * ((size_t)(len) + 4))

/* Appends to out (capacity API_UTF8_MAX_OUT(len)) the complete, valid UTF-8 that in[0..len)
 * settles, as described above; in may be NULL when len is 0. Returns the bytes written. Out
 * is not NUL-terminated. */
size_t api_utf8_feed(api_utf8 *u, const uint8_t *in, size_t len, char *out);

/* End of stream: a held-back prefix becomes one U+FFFD. Returns the bytes written (0 or 3);
 * the state is empty after, ready for a new stream. */
size_t api_utf8_finish(api_utf8 *u, char *out);

/* A whole buffer: feed + finish into out (capacity API_UTF8_MAX_OUT(len)). Returns the length
 * written (not NUL-terminated). */
size_t api_utf8_sanitize(const uint8_t *in, size_t len, char *out);

#endif
