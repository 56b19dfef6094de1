/* test_api.c - api/classify.c: base64 (RFC 4648 vectors and malformed input), the /classify
 * request parser's every rule, and the TEI-shaped rendering of scores and errors. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

static long dec(const char *s, uint8_t *out) { return api_base64_decode(s, strlen(s), out); }

Test(api, base64_rfc4648_vectors)
{
    const char *enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    const char *raw[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    for (int i = 0; i < 7; i++) {
        uint8_t out[16];
        long n = dec(enc[i], out);
        cr_assert_eq(n, (long)strlen(raw[i]), "%s", enc[i]);
        cr_assert_eq(memcmp(out, raw[i], (size_t)n), 0, "%s", enc[i]);
    }
    uint8_t out[8];
    cr_assert_eq(dec("AP8KAEE=", out), 5);
    cr_assert(out[0] == 0 && out[1] == 255 && out[2] == 10 && out[3] == 0 && out[4] == 'A');
}

Test(api, base64_rejects_malformed)
{
    const char *bad[] = {"Zg=", "Zg", "Z===", "Zm9v!A==", "Zg==Zg==", "Z=g=", "Zm 9v", "Zm9v\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t out[16];
        cr_assert_eq(dec(bad[i], out), -1, "accepted \"%s\"", bad[i]);
    }
}

static api_err parse(const char *body, api_classify_req *req, api_error *err)
{
    api_limits lim = {100, 4};
    return api_parse_classify(body, strlen(body), &lim, req, err);
}

Test(api, classify_requests)
{
    api_classify_req r;
    api_error e;
    cr_assert_eq(parse("{\"inputs\": \"hello\"}", &r, &e), API_OK);
    cr_assert(r.n_docs == 1 && !r.is_list && r.docs[0].len == 5 && !memcmp(r.docs[0].data, "hello", 5));
    api_classify_free(&r);
    cr_assert_eq(parse("{\"inputs\": [\"a\", \"bc\"], \"raw_scores\": true}", &r, &e), API_OK);
    cr_assert(r.n_docs == 2 && r.is_list && r.raw_scores && r.docs[1].len == 2);
    api_classify_free(&r);
    cr_assert_eq(parse("{\"inputs_base64\": [\"AP8=\"]}", &r, &e), API_OK);
    cr_assert(r.docs[0].len == 2 && r.docs[0].data[0] == 0 && r.docs[0].data[1] == 255);
    api_classify_free(&r);
    char big[300];
    snprintf(big, sizeof big, "{\"inputs\": \"%0150d\", \"truncate\": true}", 0);
    cr_assert_eq(parse(big, &r, &e), API_OK);
    cr_assert_eq(r.docs[0].len, 100, "truncate cuts to max_input_bytes");
    api_classify_free(&r);
}

Test(api, classify_errors)
{
    struct { const char *body; api_err want; const char *says; } cases[] = {
        {"{", API_E_BAD_JSON, "not valid JSON"},
        {"[]", API_E_VALIDATION, "must be a JSON object"},
        {"{}", API_E_VALIDATION, "exactly one of"},
        {"{\"inputs\": \"a\", \"inputs_base64\": \"YQ==\"}", API_E_VALIDATION, "exactly one of"},
        {"{\"inputs\": 1}", API_E_VALIDATION, "a string or a list"},
        {"{\"inputs\": [\"a\", 2]}", API_E_VALIDATION, "\"inputs\"[1] must be a string"},
        {"{\"inputs\": []}", API_E_VALIDATION, "empty list"},
        {"{\"inputs\": [\"a\",\"b\",\"c\",\"d\",\"e\"]}", API_E_VALIDATION, "at most 4"},
        {"{\"inputs\": \"a\", \"extra\": 1}", API_E_VALIDATION, "unknown field \"extra\""},
        {"{\"inputs\": \"a\", \"truncate\": 1}", API_E_VALIDATION, "true or false"},
        {"{\"inputs\": \"a\\u0000b\"}", API_E_VALIDATION, "inputs_base64"},
        {"{\"inputs_base64\": \"Zg=\"}", API_E_VALIDATION, "not valid base64"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_classify_req r;
        api_error e;
        cr_assert_eq(parse(cases[i].body, &r, &e), cases[i].want, "%s", cases[i].body);
        cr_assert(strstr(e.message, cases[i].says), "%s: message \"%s\"", cases[i].body, e.message);
        cr_assert_null(r.storage, "a failed parse leaves nothing to free");
    }
    char big[300];
    snprintf(big, sizeof big, "{\"inputs\": \"%0150d\"}", 0);
    api_classify_req r;
    api_error e;
    cr_assert_eq(parse(big, &r, &e), API_E_INPUT_TOO_LONG);
    cr_assert_eq(api_err_status(e.kind), 413);
    cr_assert_str_eq(e.extra_key[0], "max_input_bytes");
}

Test(api, render_scores_sorted_and_errors)
{
    api_classify_req r;
    api_error e;
    cr_assert_eq(parse("{\"inputs\": [\"x\", \"y\"]}", &r, &e), API_OK);
    const char *labels[] = {"ham", "spam", "eggs"};
    float scores[6] = {0.2f, 0.5f, 0.3f, 0.9f, 0.05f, 0.05f};
    char *s = api_render_classify(&r, scores, labels, 3);
    /* the labels in answer order: by score, ties in label order; one array per input */
    char order[128] = "";
    for (const char *p = s; (p = strstr(p, "\"label\":\"")); p += 9) {
        const char *q = p + 9, *e = strchr(q, '"');
        strncat(order, q, (size_t)(e - q));
        strcat(order, " ");
    }
    cr_assert_str_eq(order, "spam eggs ham ham spam eggs ");
    cr_assert(s[0] == '[' && s[1] == '[' && strstr(s, "}],[{"), "one array per input: %s", s);
    cr_assert(strstr(s, "\"score\":0.5}"), "scores are the floats given: %s", s);
    free(s);
    api_classify_free(&r);
    api_fail(&e, API_E_MEMORY, "needs %d", 5);
    e.extra_key[0] = "memory_required_bytes";
    e.extra_val[0] = 5;
    s = api_render_error(&e, "rid");
    cr_assert_str_eq(s, "{\"error\":{\"code\":413,\"type\":\"memory_budget_exceeded\",\"message\":\"needs 5\","
                        "\"request_id\":\"rid\",\"memory_required_bytes\":5}}");
    free(s);
}
