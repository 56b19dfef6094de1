/* json.c - the engine's strict JSON parser (see json.h for the contract).
 *
 * A recursive-descent parser over a length-bounded byte range. Every read is checked against
 * `end` first, so the text needs no terminator and no input can make it read past its end.
 * Nodes live in an arena of chained blocks; jsn_free releases them all at once. Containers are
 * built as a linked list while parsing and turned into arrays when they close; objects also get
 * a key-sorted array, which finds duplicate keys in O(n log n) and serves jsn_get. */
#include "engine/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the arena ------------------------------------------------------------------------- */

typedef struct jsn_block {
    struct jsn_block *next;
    size_t cap, used; /* bytes of data after the header */
} jsn_block;

#define ARENA_ALIGN 16
#define BLOCK_HDR ((sizeof(jsn_block) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))
#define BLOCK_FIRST 4096
#define BLOCK_MAX (1u << 20)

struct jsn_doc {
    jsn_value *root;
    jsn_block *blocks;  /* newest first */
    size_t total;       /* bytes malloc'd for blocks, headers included */
    size_t max_mem;     /* 0 = no cap */
    size_t next_cap;    /* the size of the next ordinary block */
};

/* Returns n bytes aligned to ARENA_ALIGN, or NULL with *rc set (JSN_ENOMEM or JSN_ETOOBIG). */
static void *arena_alloc(jsn_doc *doc, size_t n, int *rc)
{
    if (n > SIZE_MAX / 2) {
        *rc = JSN_ETOOBIG;
        return NULL;
    }
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    jsn_block *b = doc->blocks;
    if (b == NULL || b->cap - b->used < n) {
        size_t cap = n > doc->next_cap ? n : doc->next_cap;
        if (doc->max_mem != 0 &&
            (doc->total > doc->max_mem || doc->max_mem - doc->total < BLOCK_HDR + cap)) {
            *rc = JSN_ETOOBIG;
            return NULL;
        }
        b = malloc(BLOCK_HDR + cap);
        if (b == NULL) {
            *rc = JSN_ENOMEM;
            return NULL;
        }
        b->cap = cap;
        b->used = 0;
        b->next = doc->blocks;
        doc->blocks = b;
        doc->total += BLOCK_HDR + cap;
        if (doc->next_cap < BLOCK_MAX)
            doc->next_cap *= 2;
    }
    void *p = (char *)b + BLOCK_HDR + b->used;
    b->used += n;
    return p;
}

void jsn_free(jsn_doc *doc)
{
    if (doc == NULL)
        return;
    jsn_block *b = doc->blocks;
    while (b != NULL) {
        jsn_block *next = b->next;
        free(b);
        b = next;
    }
    free(doc);
}

/* ---- the parser state and its errors ------------------------------------------------------ */

typedef struct {
    const unsigned char *start, *p, *end;
    jsn_doc *doc;
    int rc;      /* 0, or the first error */
    char *err;
    size_t errlen;
} jsn_parser;

/* Records the first error only: later ones are consequences of it. */
static void fail(jsn_parser *ps, const unsigned char *at, int rc, const char *fmt, ...)
{
    if (ps->rc != 0)
        return;
    ps->rc = rc;
    if (ps->err == NULL || ps->errlen == 0)
        return;
    size_t line = 1, col = 1;
    for (const unsigned char *q = ps->start; q < at; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(ps->err, ps->errlen, "line %zu, column %zu: %s", line, col, msg);
}

static void fail_alloc(jsn_parser *ps, int rc)
{
    fail(ps, ps->p, rc,
         rc == JSN_ENOMEM ? "out of memory" : "document needs more than its memory limit");
}

/* Describes the byte at p (or the end of input) for "unexpected ..." messages. */
static const char *describe(const jsn_parser *ps, const unsigned char *p, char buf[16])
{
    if (p >= ps->end)
        return "end of input";
    if (*p == 0)
        return "NUL byte";
    if (*p > 0x20 && *p < 0x7f)
        snprintf(buf, 16, "'%c'", *p);
    else
        snprintf(buf, 16, "byte 0x%02X", *p);
    return buf;
}

static void fail_unexpected(jsn_parser *ps, const char *wanted)
{
    char buf[16];
    fail(ps, ps->p, JSN_ESYNTAX, "unexpected %s, expected %s", describe(ps, ps->p, buf), wanted);
}

static void skip_ws(jsn_parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static jsn_value *new_value(jsn_parser *ps, jsn_type type)
{
    int rc = 0;
    jsn_value *v = arena_alloc(ps->doc, sizeof *v, &rc);
    if (v == NULL) {
        fail_alloc(ps, rc);
        return NULL;
    }
    memset(v, 0, sizeof *v);
    v->type = type;
    v->pos = (size_t)(ps->p - ps->start);
    return v;
}

/* ---- strings ------------------------------------------------------------------------------ */

static int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(unsigned char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The length of the well-formed UTF-8 sequence at p (lead byte >= 0x80, at most `avail` bytes
 * readable), or 0 if it is ill-formed: RFC 3629 table, so no overlongs, no surrogates, nothing
 * above U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned c = p[0];
    unsigned lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

/* Parses the string at ps->p (which is '"') into a NUL-terminated arena copy. The decoded text
 * is never longer than the raw text (every escape shrinks or keeps its length), so the raw span
 * bounds the allocation. */
static int parse_string(jsn_parser *ps, const char **out, size_t *out_len)
{
    const unsigned char *open = ps->p;
    const unsigned char *q = open + 1;
    while (q < ps->end && *q != '"') {
        if (*q == '\\' && ps->end - q >= 2)
            q += 2;
        else
            q++;
    }
    if (q >= ps->end) {
        fail(ps, open, JSN_ESYNTAX, "unterminated string");
        return -1;
    }
    const unsigned char *s = open + 1, *e = q; /* the raw contents */
    int rc = 0;
    unsigned char *buf = arena_alloc(ps->doc, (size_t)(e - s) + 1, &rc);
    if (buf == NULL) {
        fail_alloc(ps, rc);
        return -1;
    }
    unsigned char *o = buf;
    while (s < e) {
        unsigned c = *s;
        if (c == '\\') {
            if (e - s < 2) { /* cannot happen: the scan paired every backslash */
                fail(ps, s, JSN_ESYNTAX, "unterminated escape");
                return -1;
            }
            unsigned x = s[1];
            const unsigned char *esc = s;
            s += 2;
            switch (x) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '/': *o++ = '/'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                int u = e - s >= 4 ? hex4(s) : -1;
                if (u < 0) {
                    fail(ps, esc, JSN_ESYNTAX, "\\u must be followed by 4 hex digits");
                    return -1;
                }
                s += 4;
                unsigned cp = (unsigned)u;
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    fail(ps, esc, JSN_ESYNTAX, "unpaired low surrogate \\u%04X", cp);
                    return -1;
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    int lo = (e - s >= 6 && s[0] == '\\' && s[1] == 'u') ? hex4(s + 2) : -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        fail(ps, esc, JSN_ESYNTAX, "unpaired high surrogate \\u%04X", cp);
                        return -1;
                    }
                    s += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned)lo - 0xDC00);
                }
                o += put_utf8(o, cp);
                break;
            }
            default: {
                char buf2[16];
                fail(ps, esc, JSN_ESYNTAX, "invalid escape \\ followed by %s",
                     describe(ps, esc + 1, buf2));
                return -1;
            }
            }
        } else if (c < 0x20) {
            if (c == 0)
                fail(ps, s, JSN_ESYNTAX, "NUL byte in string");
            else
                fail(ps, s, JSN_ESYNTAX, "unescaped control character 0x%02X in string", c);
            return -1;
        } else if (c < 0x80) {
            *o++ = (unsigned char)c;
            s++;
        } else {
            size_t n = utf8_len(s, (size_t)(e - s));
            if (n == 0) {
                fail(ps, s, JSN_ESYNTAX, "invalid UTF-8 in string");
                return -1;
            }
            memcpy(o, s, n);
            o += n;
            s += n;
        }
    }
    *o = 0;
    *out = (const char *)buf;
    *out_len = (size_t)(o - buf);
    ps->p = q + 1;
    return 0;
}

/* ---- numbers and literals ----------------------------------------------------------------- */

static int is_digit(const jsn_parser *ps, const unsigned char *p)
{
    return p < ps->end && *p >= '0' && *p <= '9';
}

/* RFC 8259's grammar, checked by hand; strtod only converts a token already known to be valid.
 * (strtod follows LC_NUMERIC: the engine assumes the process keeps the "C" locale.) */
static jsn_value *parse_number(jsn_parser *ps)
{
    const unsigned char *s = ps->p, *p = ps->p;
    int is_int = 1;
    if (*p == '-')
        p++;
    if (!is_digit(ps, p)) {
        ps->p = p;
        fail_unexpected(ps, "a digit");
        return NULL;
    }
    if (*p == '0') {
        p++;
        if (is_digit(ps, p)) {
            fail(ps, s, JSN_ESYNTAX, "number with a leading zero");
            return NULL;
        }
    } else {
        while (is_digit(ps, p))
            p++;
    }
    if (p < ps->end && *p == '.') {
        is_int = 0;
        p++;
        if (!is_digit(ps, p)) {
            ps->p = p;
            fail_unexpected(ps, "a digit after '.'");
            return NULL;
        }
        while (is_digit(ps, p))
            p++;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        if (p < ps->end && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(ps, p)) {
            ps->p = p;
            fail_unexpected(ps, "a digit in the exponent");
            return NULL;
        }
        while (is_digit(ps, p))
            p++;
    }
    size_t n = (size_t)(p - s);
    if (n > JSN_MAX_NUMBER_LEN) {
        fail(ps, s, JSN_ESYNTAX, "number longer than %d characters", JSN_MAX_NUMBER_LEN);
        return NULL;
    }
    char buf[JSN_MAX_NUMBER_LEN + 1];
    memcpy(buf, s, n);
    buf[n] = 0;
    double d = strtod(buf, NULL);
    if (!isfinite(d)) {
        fail(ps, s, JSN_ESYNTAX, "number out of range");
        return NULL;
    }
    jsn_value *v = new_value(ps, JSN_NUMBER);
    if (v == NULL)
        return NULL;
    v->num = d;
    v->is_int = is_int;
    ps->p = p;
    return v;
}

static jsn_value *parse_literal(jsn_parser *ps, const char *word, jsn_type type)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) {
        fail(ps, ps->p, JSN_ESYNTAX, "invalid literal, expected true, false or null");
        return NULL;
    }
    jsn_value *v = new_value(ps, type);
    if (v != NULL)
        ps->p += n;
    return v;
}

/* ---- arrays and objects ------------------------------------------------------------------- */

static jsn_value *parse_value(jsn_parser *ps, int depth);

static int cmp_keys(const void *a, const void *b)
{
    const jsn_value *x = *(const jsn_value *const *)a, *y = *(const jsn_value *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c != 0)
        return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* Turns the sibling list starting at first (n values) into v->items, and for objects v->sorted,
 * rejecting duplicate keys (reported at the later of the two). */
static int close_container(jsn_parser *ps, jsn_value *v, jsn_value *first, size_t n)
{
    v->len = n;
    if (n == 0)
        return 0;
    int rc = 0;
    size_t copies = v->type == JSN_OBJECT ? 2 : 1;
    if (n > SIZE_MAX / sizeof(jsn_value *) / 2) {
        fail_alloc(ps, JSN_ETOOBIG);
        return -1;
    }
    jsn_value **items = arena_alloc(ps->doc, copies * n * sizeof *items, &rc);
    if (items == NULL) {
        fail_alloc(ps, rc);
        return -1;
    }
    size_t i = 0;
    for (jsn_value *c = first; c != NULL; c = c->next)
        items[i++] = c;
    v->items = items;
    if (v->type != JSN_OBJECT)
        return 0;
    v->sorted = items + n;
    memcpy(v->sorted, items, n * sizeof *items);
    qsort(v->sorted, n, sizeof *items, cmp_keys);
    for (i = 1; i < n; i++) {
        if (cmp_keys(&v->sorted[i - 1], &v->sorted[i]) == 0) {
            const jsn_value *a = v->sorted[i - 1], *d = v->sorted[i];
            if (a->pos > d->pos)
                d = a;
            char shown[48];
            fail(ps, ps->start + d->pos, JSN_ESYNTAX, "duplicate key \"%s\" in object",
                 jsn_show(d->key, d->key_len, shown, sizeof shown));
            return -1;
        }
    }
    return 0;
}

static jsn_value *parse_array(jsn_parser *ps, int depth)
{
    const unsigned char *open = ps->p;
    if (depth > JSN_MAX_DEPTH) {
        fail(ps, open, JSN_ESYNTAX, "nesting deeper than %d levels", JSN_MAX_DEPTH);
        return NULL;
    }
    jsn_value *v = new_value(ps, JSN_ARRAY);
    if (v == NULL)
        return NULL;
    ps->p++;
    skip_ws(ps);
    jsn_value *first = NULL, *last = NULL;
    size_t n = 0;
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return v;
    }
    for (;;) {
        jsn_value *item = parse_value(ps, depth);
        if (item == NULL)
            return NULL;
        if (last != NULL)
            last->next = item;
        else
            first = item;
        last = item;
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            break;
        }
        fail_unexpected(ps, "',' or ']'");
        return NULL;
    }
    if (close_container(ps, v, first, n) != 0)
        return NULL;
    return v;
}

static jsn_value *parse_object(jsn_parser *ps, int depth)
{
    const unsigned char *open = ps->p;
    if (depth > JSN_MAX_DEPTH) {
        fail(ps, open, JSN_ESYNTAX, "nesting deeper than %d levels", JSN_MAX_DEPTH);
        return NULL;
    }
    jsn_value *v = new_value(ps, JSN_OBJECT);
    if (v == NULL)
        return NULL;
    ps->p++;
    skip_ws(ps);
    jsn_value *first = NULL, *last = NULL;
    size_t n = 0;
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return v;
    }
    for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            fail_unexpected(ps, "a string key");
            return NULL;
        }
        const char *key;
        size_t key_len, key_pos = (size_t)(ps->p - ps->start);
        if (parse_string(ps, &key, &key_len) != 0)
            return NULL;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            fail_unexpected(ps, "':' after the key");
            return NULL;
        }
        ps->p++;
        jsn_value *item = parse_value(ps, depth);
        if (item == NULL)
            return NULL;
        item->key = key;
        item->key_len = key_len;
        item->pos = key_pos;
        if (last != NULL)
            last->next = item;
        else
            first = item;
        last = item;
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            break;
        }
        fail_unexpected(ps, "',' or '}'");
        return NULL;
    }
    if (close_container(ps, v, first, n) != 0)
        return NULL;
    return v;
}

/* depth: how many containers enclose this value. */
static jsn_value *parse_value(jsn_parser *ps, int depth)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail_unexpected(ps, "a value");
        return NULL;
    }
    switch (*ps->p) {
    case '{':
        return parse_object(ps, depth + 1);
    case '[':
        return parse_array(ps, depth + 1);
    case '"': {
        jsn_value *v = new_value(ps, JSN_STRING);
        if (v == NULL || parse_string(ps, &v->str, &v->len) != 0)
            return NULL;
        return v;
    }
    case 't':
        return parse_literal(ps, "true", JSN_TRUE);
    case 'f':
        return parse_literal(ps, "false", JSN_FALSE);
    case 'n':
        return parse_literal(ps, "null", JSN_NULL);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps);
        fail_unexpected(ps, "a value");
        return NULL;
    }
}

/* ---- the public calls --------------------------------------------------------------------- */

int jsn_parse(const char *text, size_t len, size_t max_mem, jsn_doc **out, char *err,
              size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = 0;
    if (text == NULL && len > 0) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "no text");
        return JSN_ESYNTAX;
    }
    jsn_doc *doc = calloc(1, sizeof *doc);
    if (doc == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "out of memory");
        return JSN_ENOMEM;
    }
    doc->max_mem = max_mem;
    doc->next_cap = BLOCK_FIRST;
    static const unsigned char empty[1] = {0};
    jsn_parser ps = {
        .start = text != NULL ? (const unsigned char *)text : empty,
        .doc = doc,
        .err = err,
        .errlen = errlen,
    };
    ps.p = ps.start;
    ps.end = ps.start + len;
    if (len >= 3 && memcmp(ps.p, "\xEF\xBB\xBF", 3) == 0) {
        fail(&ps, ps.p, JSN_ESYNTAX, "byte order mark at the start (not allowed)");
    } else {
        doc->root = parse_value(&ps, 0);
        if (doc->root != NULL) {
            skip_ws(&ps);
            if (ps.p < ps.end) {
                char buf[16];
                fail(&ps, ps.p, JSN_ESYNTAX, "unexpected %s after the value",
                     describe(&ps, ps.p, buf));
            }
        }
    }
    if (ps.rc != 0) {
        jsn_free(doc);
        return ps.rc;
    }
    *out = doc;
    return 0;
}

const jsn_value *jsn_root(const jsn_doc *doc)
{
    return doc != NULL ? doc->root : NULL;
}

const jsn_value *jsn_get(const jsn_value *obj, const char *key)
{
    if (obj == NULL || obj->type != JSN_OBJECT || obj->len == 0 || key == NULL)
        return NULL;
    jsn_value probe = {.key = key, .key_len = strlen(key)};
    const jsn_value *pp = &probe;
    jsn_value **hit = bsearch(&pp, obj->sorted, obj->len, sizeof *obj->sorted, cmp_keys);
    return hit != NULL ? *hit : NULL;
}

int jsn_int64(const jsn_value *v, int64_t *out)
{
    const double lim = 9007199254740992.0; /* 2^53 */
    if (v == NULL || v->type != JSN_NUMBER || !v->is_int || v->num > lim || v->num < -lim)
        return -1;
    *out = (int64_t)v->num;
    return 0;
}

const char *jsn_show(const char *s, size_t len, char *buf, size_t buflen)
{
    if (buf == NULL || buflen == 0)
        return "";
    size_t max = len < 40 ? len : 40, i = 0;
    int cut = max < len;
    while (i < max && i + 1 + (cut ? 3 : 0) < buflen) {
        unsigned char c = (unsigned char)s[i];
        buf[i++] = (c < 0x20 || c == '"' || c == '\\' || c == 0x7F) ? '?' : (char)c;
    }
    if (cut && i + 4 <= buflen) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = 0;
    return buf;
}

const char *jsn_type_name(jsn_type t)
{
    switch (t) {
    case JSN_NULL: return "null";
    case JSN_FALSE:
    case JSN_TRUE: return "a boolean";
    case JSN_NUMBER: return "a number";
    case JSN_STRING: return "a string";
    case JSN_ARRAY: return "an array";
    case JSN_OBJECT: return "an object";
    }
    return "an unknown value";
}
