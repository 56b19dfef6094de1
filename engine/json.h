/* json.h - a small, strict RFC 8259 JSON parser for the engine (engine-internal).
 *
 * The engine reads two JSON texts: config.json and the safetensors header. It may not use cJSON
 * (JSON for HTTP lives in api/), so it has this parser. It builds a read-only tree in one arena
 * per parse, freed by one jsn_free call. It is strict: anything RFC 8259 does not allow is an
 * error, and so are a few things it only discourages, because a model file is never the place
 * for them: duplicate object keys, lone surrogates in \u escapes, invalid UTF-8, a byte order
 * mark, NUL bytes anywhere in the text, nesting deeper than JSN_MAX_DEPTH, numbers that
 * overflow a double or are longer than JSN_MAX_NUMBER_LEN characters.
 *
 * Robustness: the parser reads only the `len` bytes it is given (no NUL terminator needed),
 * recurses at most JSN_MAX_DEPTH levels, runs in O(len log len) time and uses O(len) memory,
 * capped by max_mem. It is fuzzed (tests/unit/test_json.c).
 *
 * Threads: parses are independent; a parsed document may be read from any thread. */
#ifndef LUNA_JSON_H
#define LUNA_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSN_MAX_DEPTH 64      /* arrays and objects nested deeper than this are an error */
#define JSN_MAX_NUMBER_LEN 512 /* characters in one number token */

enum {
    JSN_ESYNTAX = -1, /* not valid (strict) JSON; err says where and why */
    JSN_ENOMEM = -2,  /* malloc failed */
    JSN_ETOOBIG = -3, /* the tree would need more than max_mem bytes */
};

typedef enum {
    JSN_NULL = 0,
    JSN_FALSE,
    JSN_TRUE,
    JSN_NUMBER,
    JSN_STRING,
    JSN_ARRAY,
    JSN_OBJECT,
} jsn_type;

typedef struct jsn_value jsn_value;
struct jsn_value {
    jsn_type type;
    int is_int;          /* JSN_NUMBER: the text had no fraction and no exponent ("-0" counts) */
    double num;          /* JSN_NUMBER: always finite */
    const char *str;     /* JSN_STRING: decoded UTF-8, NUL-terminated; may hold a NUL (\u0000) */
    size_t len;          /* JSN_STRING: bytes in str; JSN_ARRAY, JSN_OBJECT: number of items */
    jsn_value **items;   /* JSN_ARRAY, JSN_OBJECT: (len) values in document order */
    jsn_value **sorted;  /* JSN_OBJECT: (len) the same members sorted by key, for jsn_get */
    const char *key;     /* a member of an object: its decoded key, NUL-terminated */
    size_t key_len;      /* bytes in key */
    size_t pos;          /* byte offset in the text where the value (for a member: its key)
                          * starts, for error messages */
    jsn_value *next;     /* internal: the next sibling while parsing */
};

typedef struct jsn_doc jsn_doc;

/* Parses text[0..len). max_mem caps the bytes the tree may take (0: no cap); a document that
 * would need more fails with JSN_ETOOBIG. On success returns 0 and sets *out; the caller frees it
 * with jsn_free. On failure returns a negative JSN_E* code, writes a one-line reason with the
 * line and column into err (errlen bytes, may be 0) and leaves *out untouched. */
int jsn_parse(const char *text, size_t len, size_t max_mem, jsn_doc **out, char *err,
              size_t errlen);
void jsn_free(jsn_doc *doc); /* frees the whole tree; NULL is a no-op */

const jsn_value *jsn_root(const jsn_doc *doc);

/* The member of obj named key (compared byte for byte), or NULL if there is none or obj is not
 * an object. O(log n). */
const jsn_value *jsn_get(const jsn_value *obj, const char *key);

/* If v is a number written as an integer with |value| <= 2^53 (so exactly representable),
 * stores it in *out and returns 0; else returns -1 and leaves *out untouched. */
int jsn_int64(const jsn_value *v, int64_t *out);

/* Copies up to 40 bytes of s[0..len) into buf (buflen >= 48) for an error message: bytes below
 * 0x20, '"', '\\' and 0x7F become '?', a cut is marked "...". Returns buf. */
const char *jsn_show(const char *s, size_t len, char *buf, size_t buflen);

/* "null", "a boolean", "a number", "a string", "an array" or "an object", for messages such
 * as "expected an integer, got a string". */
const char *jsn_type_name(jsn_type t);

#endif
