/* fuzz_common.h - what the libFuzzer harnesses share: an independent UTF-8 validator, the
 * check that a rendered answer is one JSON document, the check that a server-sent event is one
 * "data: " line and a blank line, and a failure that libFuzzer reports as a crash (with the
 * input saved). Header-only: each harness is one translation unit plus the project's sources. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A broken invariant: print it and abort, which libFuzzer turns into a saved crash input. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz: invariant failed at %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* 1 if s[0..n) is valid UTF-8 (RFC 3629), decoded arithmetically (not by utf8.c's tables). */
static inline int fuzz_valid_utf8(const uint8_t *s, size_t n)
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

/* A rendered answer (NUL-terminated): valid UTF-8 and exactly one JSON value. Returns the
 * parsed tree (the caller deletes it). `what` names it in the failure message. */
static inline cJSON *fuzz_json_doc(const char *s, const char *what)
{
    FUZZ_CHECK(s != NULL, "%s: rendered NULL", what);
    size_t n = strlen(s);
    FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)s, n), "%s is not valid UTF-8: %.200s", what, s);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(s, &end, 1); /* nothing but whitespace after the value */
    FUZZ_CHECK(j != NULL, "%s is not one JSON document: %.200s", what, s);
    return j;
}

/* One server-sent event: "data: " + payload + "\n\n", no other newline; the payload is JSON
 * (or "[DONE]" when allow_done). Several events may be concatenated in s (an OpenAI end:
 * usage chunk, then [DONE]); each is checked. Returns the number of events. */
static inline int fuzz_check_sse(const char *s, int allow_done, const char *what)
{
    FUZZ_CHECK(s != NULL, "%s: rendered NULL", what);
    FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)s, strlen(s)), "%s is not valid UTF-8", what);
    int events = 0;
    const char *p = s;
    while (*p) {
        FUZZ_CHECK(!strncmp(p, "data: ", 6), "%s: an event does not start with 'data: ': %.200s", what, p);
        const char *nl = strchr(p, '\n');
        FUZZ_CHECK(nl != NULL && nl[1] == '\n', "%s: an event does not end with a blank line: %.200s", what, p);
        const char *payload = p + 6;
        size_t len = (size_t)(nl - payload);
        FUZZ_CHECK(memchr(payload, '\r', len) == NULL, "%s: a CR inside an event", what);
        if (allow_done && len == 6 && !strncmp(payload, "[DONE]", 6)) {
            FUZZ_CHECK(nl[2] == 0, "%s: something after [DONE]", what);
        } else {
            const char *end = NULL;
            cJSON *j = cJSON_ParseWithLengthOpts(payload, len, &end, 0);
            FUZZ_CHECK(j != NULL && end == payload + len, "%s: an event's payload is not one JSON value: %.200s",
                       what, payload);
            cJSON_Delete(j);
        }
        events++;
        p = nl + 2;
    }
    FUZZ_CHECK(events > 0, "%s: no event", what);
    return events;
}

/* Four hex digits of a \u escape. */
static inline int fuzz_hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        FUZZ_CHECK(d >= 0, "a bad \\u escape");
        v = v * 16 + d;
    }
    return v;
}

/* The JSON string value of the nth (0-based) member named `key` in the rendered document doc,
 * decoded with its exact length into a malloc'd buffer (U+0000 included, which a cJSON string
 * cannot hold: it ends at the first NUL), *len its length; NULL if there is no such member.
 * The renderers print members as "key":"..." with no space (cJSON's unformatted output, and
 * api__add_string), and "key":" cannot occur inside a string, whose quotes are escaped, so the
 * nth match is the nth such member. The escapes are JSON's (RFC 8259 7); anything else, or a
 * raw control byte, is a failure. */
static inline char *fuzz_json_string(const char *doc, const char *key, int nth, size_t *len)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = doc;
    for (int i = 0;; i++) {
        p = strstr(p, pat);
        if (!p) return NULL;
        p += strlen(pat);
        if (i == nth) break;
    }
    char *out = malloc(strlen(p) + 1);
    FUZZ_CHECK(out != NULL, "out of memory");
    size_t n = 0;
    while (*p != '"') {
        unsigned char c = (unsigned char)*p;
        FUZZ_CHECK(c != 0, "an unterminated string for \"%s\"", key);
        FUZZ_CHECK(c >= 0x20, "a raw control byte 0x%02x in a JSON string", c);
        if (c != '\\') {
            out[n++] = (char)c;
            p++;
            continue;
        }
        p++;
        switch (*p) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp = (unsigned)fuzz_hex4(p + 1);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
                FUZZ_CHECK(p[1] == '\\' && p[2] == 'u', "a lone high surrogate");
                unsigned lo = (unsigned)fuzz_hex4(p + 3);
                FUZZ_CHECK(lo >= 0xDC00 && lo <= 0xDFFF, "a high surrogate without its low one");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else {
                FUZZ_CHECK(cp < 0xDC00 || cp > 0xDFFF, "a lone low surrogate");
            }
            if (cp < 0x80) {
                out[n++] = (char)cp;
            } else if (cp < 0x800) {
                out[n++] = (char)(0xC0 | cp >> 6);
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[n++] = (char)(0xE0 | cp >> 12);
                out[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[n++] = (char)(0xF0 | cp >> 18);
                out[n++] = (char)(0x80 | (cp >> 12 & 0x3F));
                out[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: FUZZ_CHECK(0, "a bad escape \\%c", *p);
        }
        p++;
    }
    *len = n;
    return out;
}

/* Reads every byte of b[0..n): ASan then reports a view that points outside its storage. */
static inline unsigned fuzz_touch(const uint8_t *b, size_t n)
{
    unsigned h = 0;
    for (size_t i = 0; i < n; i++) h = h * 31u + b[i];
    return h;
}

#endif
