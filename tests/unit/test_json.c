/* test_json.c - engine/json.c: valid documents, every class of error, limits, and fuzzing.
 *
 * Every input is copied into a malloc'd buffer of exactly its length before parsing, so under
 * AddressSanitizer a read one byte past the end fails the test. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json.h"
#include "tests/unit/fixtures.h"

/* Parses text[0..len) from an exact-size copy. */
static int parse_n(const char *text, size_t len, jsn_doc **doc, char *err, size_t errlen)
{
    char *copy = malloc(len > 0 ? len : 1);
    cr_assert_not_null(copy);
    if (len > 0)
        memcpy(copy, text, len);
    int rc = jsn_parse(copy, len, 0, doc, err, errlen);
    free(copy);
    return rc;
}

static jsn_doc *parse_ok(const char *text)
{
    jsn_doc *doc = NULL;
    char err[256];
    int rc = parse_n(text, strlen(text), &doc, err, sizeof err);
    cr_assert_eq(rc, 0, "parse of %s failed: %s", text, err);
    cr_assert_not_null(doc);
    return doc;
}

/* Expects a syntax error whose message contains `want`. */
static void expect_err_n(const char *text, size_t len, const char *want)
{
    jsn_doc *doc = (jsn_doc *)0x1; /* must stay untouched */
    char err[256] = "";
    int rc = parse_n(text, len, &doc, err, sizeof err);
    cr_assert_eq(rc, JSN_ESYNTAX, "expected a syntax error for [%.*s], got %d", (int)len, text,
                 rc);
    cr_assert_eq(doc, (jsn_doc *)0x1, "out was written on failure");
    cr_assert(strstr(err, want) != NULL, "error for [%.*s] is \"%s\", expected \"%s\"",
              (int)len, text, err, want);
}

static void expect_err(const char *text, const char *want)
{
    expect_err_n(text, strlen(text), want);
}

Test(json, literals_and_top_level_scalars)
{
    const struct {
        const char *text;
        jsn_type type;
    } cases[] = {
        {"null", JSN_NULL}, {"true", JSN_TRUE}, {"false", JSN_FALSE}, {" \t\r\n0 \n", JSN_NUMBER},
        {"\"\"", JSN_STRING}, {"[]", JSN_ARRAY}, {"{}", JSN_OBJECT}, {"[ ]", JSN_ARRAY},
        {"{ \n}", JSN_OBJECT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        jsn_doc *doc = parse_ok(cases[i].text);
        cr_assert_eq(jsn_root(doc)->type, cases[i].type, "type of %s", cases[i].text);
        cr_assert_eq(jsn_root(doc)->len, 0);
        jsn_free(doc);
    }
}

Test(json, numbers)
{
    const struct {
        const char *text;
        double value;
        int is_int;
    } cases[] = {
        {"0", 0, 1},         {"-0", -0.0, 1},        {"7", 7, 1},
        {"-123", -123, 1},   {"4096", 4096, 1},      {"0.5", 0.5, 0},
        {"-2.25", -2.25, 0}, {"1e2", 100, 0},        {"1E+2", 100, 0},
        {"25e-1", 2.5, 0},   {"1.5e3", 1500, 0},     {"1e-400", 0, 0},
        {"1.7976931348623157e308", 1.7976931348623157e308, 0},
        {"9007199254740993", 9007199254740992.0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        jsn_doc *doc = parse_ok(cases[i].text);
        const jsn_value *v = jsn_root(doc);
        cr_assert_eq(v->type, JSN_NUMBER);
        cr_assert_eq(v->num, cases[i].value, "%s parsed as %g", cases[i].text, v->num);
        cr_assert_eq(v->is_int, cases[i].is_int, "is_int of %s", cases[i].text);
        jsn_free(doc);
    }
    jsn_doc *doc = parse_ok("-0");
    cr_assert(signbit(jsn_root(doc)->num), "-0 lost its sign");
    jsn_free(doc);
}

Test(json, int64_helper)
{
    jsn_doc *doc = parse_ok("[9007199254740992, -9007199254740992, 9007199254740994, 1.0, 3, "
                            "\"3\", -5]");
    const jsn_value *a = jsn_root(doc);
    int64_t x = 42;
    cr_assert_eq(jsn_int64(a->items[0], &x), 0);
    cr_assert_eq(x, 9007199254740992LL);
    cr_assert_eq(jsn_int64(a->items[1], &x), 0);
    cr_assert_eq(x, -9007199254740992LL);
    x = 42;
    cr_assert_eq(jsn_int64(a->items[2], &x), -1, "above 2^53 is not exact");
    cr_assert_eq(jsn_int64(a->items[3], &x), -1, "1.0 is written as a fraction");
    cr_assert_eq(jsn_int64(a->items[5], &x), -1, "a string is not a number");
    cr_assert_eq(x, 42, "out written on failure");
    cr_assert_eq(jsn_int64(a->items[4], &x), 0);
    cr_assert_eq(x, 3);
    cr_assert_eq(jsn_int64(a->items[6], &x), 0);
    cr_assert_eq(x, -5);
    jsn_free(doc);
}

Test(json, string_escapes)
{
    const struct {
        const char *text;
        const char *want;
        size_t len;
    } cases[] = {
        {"\"plain\"", "plain", 5},
        {"\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"", "\" \\ / \b \f \n \r \t", 15},
        {"\"\\u0041\\u00e9\\u20AC\"", "A\xC3\xA9\xE2\x82\xAC", 6},
        {"\"\\ud83d\\ude00\"", "\xF0\x9F\x98\x80", 4},               /* U+1F600 */
        {"\"\\uDBFF\\uDFFF\"", "\xF4\x8F\xBF\xBF", 4},               /* U+10FFFF */
        {"\"a\\u0000b\"", "a\0b", 3},                                  /* escaped NUL */
        {"\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"", "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 9},
        {"\"\x7F\"", "\x7F", 1},
        {"\"\\u07FF\\u0800\\uFFFF\"", "\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF", 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        jsn_doc *doc = parse_ok(cases[i].text);
        const jsn_value *v = jsn_root(doc);
        cr_assert_eq(v->type, JSN_STRING);
        cr_assert_eq(v->len, cases[i].len, "length of %s: %zu", cases[i].text, v->len);
        cr_assert(memcmp(v->str, cases[i].want, cases[i].len) == 0, "bytes of %s",
                  cases[i].text);
        cr_assert_eq(v->str[v->len], 0, "not NUL-terminated");
        jsn_free(doc);
    }
}

Test(json, arrays_objects_and_lookup)
{
    jsn_doc *doc = parse_ok("{\"b\": [1, [2, {}], \"x\"], \"a\": {\"k\": null}, \"c\": true,"
                            " \"\": 5, \"a\\u0000z\": 6}");
    const jsn_value *o = jsn_root(doc);
    cr_assert_eq(o->type, JSN_OBJECT);
    cr_assert_eq(o->len, 5);
    /* document order is kept */
    cr_assert_str_eq(o->items[0]->key, "b");
    cr_assert_str_eq(o->items[1]->key, "a");
    cr_assert_str_eq(o->items[2]->key, "c");
    cr_assert_eq(o->items[4]->key_len, 3);
    const jsn_value *b = jsn_get(o, "b");
    cr_assert_not_null(b);
    cr_assert_eq(b->type, JSN_ARRAY);
    cr_assert_eq(b->len, 3);
    cr_assert_eq(b->items[0]->num, 1);
    cr_assert_eq(b->items[1]->items[0]->num, 2);
    cr_assert_eq(b->items[1]->items[1]->type, JSN_OBJECT);
    cr_assert_str_eq(b->items[2]->str, "x");
    cr_assert_eq(jsn_get(jsn_get(o, "a"), "k")->type, JSN_NULL);
    cr_assert_eq(jsn_get(o, "c")->type, JSN_TRUE);
    cr_assert_eq(jsn_get(o, "")->num, 5);
    cr_assert_eq(jsn_get(o, "a\0z"), jsn_get(o, "a"), "a C key stops at its NUL");
    cr_assert_neq(jsn_get(o, "a\0z"), o->items[4], "\"a\\0z\" is reachable by index only");
    cr_assert_null(jsn_get(o, "zz"));
    cr_assert_null(jsn_get(b, "b"), "jsn_get on an array");
    cr_assert_null(jsn_get(NULL, "b"));
    jsn_free(doc);
}

Test(json, many_members_are_found_and_unique)
{
    enum { N = 5000 };
    char *text = malloc(N * 24 + 16);
    cr_assert_not_null(text);
    size_t n = 0;
    text[n++] = '{';
    for (int i = 0; i < N; i++)
        n += (size_t)sprintf(text + n, "%s\"k%d\":%d", i ? "," : "", i, i);
    text[n++] = '}';
    text[n] = 0;
    jsn_doc *doc = parse_ok(text);
    char key[16];
    for (int i = 0; i < N; i += 97) {
        sprintf(key, "k%d", i);
        const jsn_value *v = jsn_get(jsn_root(doc), key);
        cr_assert_not_null(v, "%s not found", key);
        cr_assert_eq(v->num, i);
    }
    jsn_free(doc);
    /* the same with a duplicate at the very end */
    n--;
    n += (size_t)sprintf(text + n, ",\"k17\":0}");
    expect_err_n(text, n, "duplicate key \"k17\"");
    free(text);
}

Test(json, depth_limit)
{
    char text[2 * (JSN_MAX_DEPTH + 1) + 1];
    for (int i = 0; i < JSN_MAX_DEPTH; i++) {
        text[i] = '[';
        text[JSN_MAX_DEPTH + i] = ']';
    }
    text[2 * JSN_MAX_DEPTH] = 0;
    jsn_doc *doc = parse_ok(text); /* exactly the limit */
    jsn_free(doc);
    for (int i = 0; i <= JSN_MAX_DEPTH; i++) {
        text[i] = '[';
        text[JSN_MAX_DEPTH + 1 + i] = ']';
    }
    text[2 * (JSN_MAX_DEPTH + 1)] = 0;
    expect_err(text, "nesting deeper than 64");
    /* objects count too, and a deep unterminated prefix fails cleanly */
    char obj[64 * 6 + 16] = "";
    for (int i = 0; i < 65; i++)
        strcat(obj, "{\"a\":");
    expect_err(obj, "nesting deeper than 64");
}

Test(json, syntax_errors)
{
    const struct {
        const char *text;
        const char *want;
    } cases[] = {
        /* structure */
        {"", "unexpected end of input, expected a value"},
        {"   \n ", "line 2, column 2: unexpected end of input"},
        {"[", "end of input"},
        {"[1", "expected ',' or ']'"},
        {"[1,]", "unexpected ']', expected a value"},
        {"[,1]", "unexpected ','"},
        {"[1 2]", "expected ',' or ']'"},
        {"{", "expected a string key"},
        {"{\"a\"", "expected ':'"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\":}", "expected a value"},
        {"{\"a\":1,}", "expected a string key"},
        {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
        {"{a:1}", "expected a string key"},
        {"{1:1}", "expected a string key"},
        {"{'a':1}", "expected a string key"},
        {"]", "unexpected ']'"},
        {"[1]]", "after the value"},
        {"{\"a\":1,\"a\":2}", "duplicate key \"a\""},
        {"{\"x\":{\"q\":1,\"r\":2,\"q\":3}}", "duplicate key \"q\""},
        {"{\"a\\u0000\":1,\"a\\u0000\":2}", "duplicate key"},
        /* trailing garbage */
        {"1 2", "unexpected '2' after the value"},
        {"{} {}", "after the value"},
        {"[1] x", "after the value"},
        {"nullx", "after the value"},
        {"\"a\"\"b\"", "after the value"},
        /* literals */
        {"tru", "invalid literal"},
        {"True", "expected a value"},
        {"nul", "invalid literal"},
        {"fals", "invalid literal"},
        {"NaN", "expected a value"},
        {"Infinity", "expected a value"},
        {"undefined", "expected a value"},
        /* numbers */
        {"01", "leading zero"},
        {"-01", "leading zero"},
        {"-", "expected a digit"},
        {"-a", "expected a digit"},
        {"1.", "expected a digit after '.'"},
        {"1.e5", "expected a digit after '.'"},
        {".5", "expected a value"},
        {"+1", "expected a value"},
        {"1e", "expected a digit in the exponent"},
        {"1e+", "expected a digit in the exponent"},
        {"0x10", "unexpected 'x'"},
        {"-Infinity", "expected a digit"},
        {"1e999", "number out of range"},
        {"-1e400", "number out of range"},
        /* strings */
        {"\"abc", "unterminated string"},
        {"\"abc\\\"", "unterminated string"},
        {"\"\\", "unterminated string"},
        {"\"\\x\"", "invalid escape"},
        {"\"\\U0041\"", "invalid escape"},
        {"\"\\'\"", "invalid escape"},
        {"\"\\u12\"", "4 hex digits"},
        {"\"\\u12G4\"", "4 hex digits"},
        {"\"\\ud800\"", "unpaired high surrogate"},
        {"\"\\ud800x\"", "unpaired high surrogate"},
        {"\"\\ud800\\u0041\"", "unpaired high surrogate"},
        {"\"\\ud800\\ud800\"", "unpaired high surrogate"},
        {"\"\\udc00\"", "unpaired low surrogate"},
        {"\"\\udfff\\ud800\"", "unpaired low surrogate"},
        {"\"a\tb\"", "unescaped control character 0x09"},
        {"\"a\nb\"", "unescaped control character 0x0A"},
        {"\"\x1F\"", "control character 0x1F"},
        /* UTF-8 */
        {"\"\xFF\"", "invalid UTF-8"},
        {"\"\x80\"", "invalid UTF-8"},
        {"\"\xC0\xAF\"", "invalid UTF-8"},          /* overlong '/' */
        {"\"\xC1\xBF\"", "invalid UTF-8"},          /* overlong */
        {"\"\xE0\x80\xAF\"", "invalid UTF-8"},      /* overlong */
        {"\"\xF0\x80\x80\xAF\"", "invalid UTF-8"},  /* overlong */
        {"\"\xED\xA0\x80\"", "invalid UTF-8"},      /* encoded surrogate */
        {"\"\xF4\x90\x80\x80\"", "invalid UTF-8"},  /* above U+10FFFF */
        {"\"\xF5\x80\x80\x80\"", "invalid UTF-8"},
        {"\"\xE2\x82\"", "invalid UTF-8"},          /* truncated */
        {"\"\xE2\x82", "unterminated string"},
        {"\"\xC3\"", "invalid UTF-8"},
        {"\"\xC3x\"", "invalid UTF-8"},
        {"\xC3\xA9", "unexpected byte 0xC3"},        /* bytes outside a string */
        /* byte order mark */
        {"\xEF\xBB\xBF{}", "byte order mark"},
        /* positions */
        {"[\n  1,\n  ]", "line 3, column 3: unexpected ']'"},
        {"{\n\"a\": [1,\n 2,, 3]}", "line 3, column 4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_err(cases[i].text, cases[i].want);
}

Test(json, nul_bytes_are_errors)
{
    expect_err_n("\"a\0b\"", 5, "NUL byte in string");
    expect_err_n("[1,\0 2]", 7, "unexpected NUL byte");
    expect_err_n("{}\0", 3, "unexpected NUL byte after the value");
    expect_err_n("\0", 1, "unexpected NUL byte");
    expect_err_n("{\"a\0\":1}", 8, "NUL byte in string");
    expect_err_n("tr\0e", 4, "invalid literal");
}

Test(json, length_is_honoured)
{
    /* The text is valid past len; the parser must stop at len. */
    expect_err_n("[1,2]", 3, "end of input");
    expect_err_n("\"abc\"", 4, "unterminated string");
    expect_err_n("true", 3, "invalid literal");
    expect_err_n("\"\\u0041\"", 6, "unterminated string");
    expect_err_n("[\"\\ud83d\\ude00\"]", 15, "end of input");
    jsn_doc *doc = NULL;
    char err[128];
    cr_assert_eq(parse_n("12345", 2, &doc, err, sizeof err), 0);
    cr_assert_eq(jsn_root(doc)->num, 12);
    jsn_free(doc);
    cr_assert_eq(jsn_parse(NULL, 0, 0, &doc, err, sizeof err), JSN_ESYNTAX);
}

Test(json, number_length_limit)
{
    char text[JSN_MAX_NUMBER_LEN + 2];
    memset(text, '1', sizeof text - 1);
    text[0] = '0';
    text[1] = '.';
    text[JSN_MAX_NUMBER_LEN] = 0; /* 0.111...1: exactly the limit */
    jsn_doc *doc = parse_ok(text);
    cr_assert_float_eq(jsn_root(doc)->num, 1.0 / 9, 1e-15);
    jsn_free(doc);
    text[JSN_MAX_NUMBER_LEN] = '1';
    text[JSN_MAX_NUMBER_LEN + 1] = 0;
    expect_err(text, "number longer than 512");
    expect_err("1e309", "out of range");
}

Test(json, memory_limit)
{
    enum { N = 20000 };
    char *text = malloc(2 * N + 2);
    cr_assert_not_null(text);
    text[0] = '[';
    for (int i = 0; i < N; i++) {
        text[1 + 2 * i] = '0';
        text[2 + 2 * i] = ',';
    }
    text[2 * N] = ']';
    jsn_doc *doc = NULL;
    char err[128];
    cr_assert_eq(jsn_parse(text, 2 * N + 1, 100000, &doc, err, sizeof err), JSN_ETOOBIG);
    cr_assert(strstr(err, "memory limit") != NULL, "%s", err);
    cr_assert_eq(jsn_parse(text, 2 * N + 1, 0, &doc, err, sizeof err), 0, "%s", err);
    cr_assert_eq(jsn_root(doc)->len, N);
    jsn_free(doc);
    free(text);
}

Test(json, error_buffer_may_be_tiny_or_absent)
{
    jsn_doc *doc = NULL;
    char err[8];
    cr_assert_eq(jsn_parse("[1,]", 4, 0, &doc, NULL, 0), JSN_ESYNTAX);
    cr_assert_eq(jsn_parse("[1,]", 4, 0, &doc, err, sizeof err), JSN_ESYNTAX);
    cr_assert_eq(strlen(err), sizeof err - 1, "truncated, terminated message");
    jsn_free(NULL);
}

Test(json, show_sanitizes)
{
    char buf[48];
    cr_assert_str_eq(jsn_show("ab\"c\n\\", 6, buf, sizeof buf), "ab?c??");
    cr_assert_str_eq(jsn_show("a\0b", 3, buf, sizeof buf), "a?b");
    const char *long_text = "0123456789012345678901234567890123456789XYZ";
    cr_assert_str_eq(jsn_show(long_text, strlen(long_text), buf, sizeof buf),
                     "0123456789012345678901234567890123456789...");
    char small[6];
    cr_assert_str_eq(jsn_show(long_text, strlen(long_text), small, sizeof small), "01...");
    char one[1];
    cr_assert_str_eq(jsn_show("abc", 3, one, sizeof one), "");
}

/* Fuzz: random mutations of a valid document, and random strings over JSON's own alphabet. The
 * parser must return 0 or an error code, never crash, read past len or leak (ASan, valgrind). */
Test(json, fuzz)
{
    static const char seed_doc[] =
        "{\"format\": \"luna\", \"d\": [1, -2.5e3, 0, true, false, null],"
        " \"s\": \"a\\u00e9\\ud83d\\ude00\\n\\\"\", \"o\": {\"x\": {}, \"y\": []}}";
    static const char alphabet[] = "{}[],:\"\\u0123456789abcdefABCDEF.eE+-tnrl \t\n"
                                   "\x80\xC3\xED\xF0";
    uint64_t state = 0x9E3779B97F4A7C15ull;
    size_t base = sizeof seed_doc - 1;
    char *buf = malloc(base + 64);
    cr_assert_not_null(buf);
    int ok = 0;
    for (int it = 0; it < 20000; it++) {
        size_t len;
        if (it % 4 == 3) { /* random text */
            len = fx_rand(&state) % 48;
            for (size_t i = 0; i < len; i++)
                buf[i] = alphabet[fx_rand(&state) % (sizeof alphabet - 1)];
        } else {
            memcpy(buf, seed_doc, base);
            len = base;
            int muts = 1 + (int)(fx_rand(&state) % 4);
            for (int m = 0; m < muts && len > 0; m++) {
                size_t at = fx_rand(&state) % len;
                switch (fx_rand(&state) % 5) {
                case 0: buf[at] ^= (char)(1u << (fx_rand(&state) % 8)); break;
                case 1: buf[at] = (char)fx_rand(&state); break;
                case 2:
                    if (len < base + 60) {
                        memmove(buf + at + 1, buf + at, len - at);
                        buf[at] = alphabet[fx_rand(&state) % (sizeof alphabet - 1)];
                        len++;
                    }
                    break;
                case 3: memmove(buf + at, buf + at + 1, len - at - 1); len--; break;
                case 4: len = at; break;
                }
            }
        }
        jsn_doc *doc = NULL;
        char err[128];
        int rc = parse_n(buf, len, &doc, err, sizeof err);
        cr_assert(rc == 0 || rc == JSN_ESYNTAX, "iteration %d: rc %d", it, rc);
        if (rc == 0) {
            ok++;
            cr_assert_not_null(jsn_root(doc));
            jsn_free(doc);
        } else {
            cr_assert(strncmp(err, "line ", 5) == 0, "iteration %d: message \"%s\"", it, err);
        }
    }
    free(buf);
    cr_assert_gt(ok, 100, "the fuzzer should also produce valid documents (%d)", ok);
}
