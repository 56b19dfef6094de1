/* test_api.c - api/classify.c and api/generate.c: base64 (RFC 4648 vectors and malformed input), the /classify
 * request parser's every rule, and the TEI-shaped rendering of scores and errors. */
#include <criterion/criterion.h>
#include <math.h>
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
    api_limits lim = {100, 4, NULL};
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

Test(api, classify_raw_body)
{
    api_limits lim = {10, 1024, NULL};
    api_classify_req req;
    api_error err = {0};
    const uint8_t body[] = "abc\0def";
    cr_assert_eq(api_classify_raw(body, 7, NULL, NULL, &lim, &req, &err), API_OK);
    cr_assert_eq(req.n_docs, 1);
    cr_assert_eq(req.docs[0].data, body, "the document is the body itself, not a copy");
    cr_assert_eq(req.docs[0].len, 7, "NUL bytes are data");
    cr_assert(!req.raw_scores && !req.truncate && !req.is_list && !req.vllm);
    api_classify_free(&req);
    cr_assert_eq(api_classify_raw(body, 7, "true", "false", &lim, &req, &err), API_OK);
    cr_assert(req.raw_scores && !req.truncate);
    api_classify_free(&req);
    cr_assert_eq(api_classify_raw(body, 7, "1", NULL, &lim, &req, &err), API_E_VALIDATION);
    cr_assert_str_eq(err.param, "raw_scores");
    cr_assert_eq(api_classify_raw(body, 7, NULL, "yes", &lim, &req, &err), API_E_VALIDATION);
    cr_assert_str_eq(err.param, "truncate");
    const uint8_t big[12] = {0};
    cr_assert_eq(api_classify_raw(big, 12, NULL, NULL, &lim, &req, &err), API_E_INPUT_TOO_LONG);
    cr_assert_eq(err.extra_val[0], 10.0);
    cr_assert_eq(api_classify_raw(big, 12, NULL, "true", &lim, &req, &err), API_OK);
    cr_assert_eq(req.docs[0].len, 10, "truncated to max-input-bytes");
    api_classify_free(&req);
    cr_assert_eq(api_classify_raw(big, 0, NULL, NULL, &lim, &req, &err), API_OK, "an empty document is valid");
    api_classify_free(&req);
}

Test(api, render_scores_sorted_and_errors)
{
    api_classify_req r;
    api_error e;
    cr_assert_eq(parse("{\"inputs\": [\"x\", \"y\"]}", &r, &e), API_OK);
    const char *labels[] = {"ham", "spam", "eggs"};
    float scores[6] = {0.2f, 0.5f, 0.3f, 0.9f, 0.05f, 0.05f};
    char *s = api_render_classify(&r, scores, labels, 3, NULL);
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
    cr_assert_str_eq(s, "{\"error\":{\"code\":413,\"type\":\"memory_budget_exceeded\",\"message\":\"needs 5\",\"param\":null,"
                        "\"request_id\":\"rid\",\"memory_required_bytes\":5}}");
    free(s);
}

/* ---- api/generate.c ------------------------------------------------------------------------- */

Test(api, base64_encode_round_trips)
{
    const char *raw[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char *e = api_base64_encode((const uint8_t *)raw[i], strlen(raw[i]));
        cr_assert_str_eq(e, enc[i]);
        free(e);
    }
    uint8_t all[256], back[256];
    for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
    char *e = api_base64_encode(all, 256);
    cr_assert_eq(api_base64_decode(e, strlen(e), back), 256);
    cr_assert_arr_eq(back, all, 256);
    free(e);
}

static api_err gparse(const char *body, api_generate_req *req, api_error *err)
{
    api_gen_limits lim = {50, 500, 100, NULL};
    return api_parse_generate(body, strlen(body), &lim, req, err);
}

Test(api, generate_defaults_and_tgi_sampling_rule)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(gparse("{\"inputs\": \"hello\"}", &q, &e), API_OK, "%s", e.message);
    cr_expect_eq(q.max_new_tokens, 100);
    cr_expect_eq(q.do_sample, 0, "greedy by default");
    cr_expect_eq(q.prompts[0].len, 5);
    cr_expect(q.temperature == 1.0f && q.top_p == 1.0f && q.repetition_penalty == 1.0f && q.top_k == 0);
    api_generate_free(&q);
    /* any warper means sampling, as in TGI; temperature 0 means greedy */
    const char *sampling[] = {"{\"inputs\": \"a\", \"parameters\": {\"temperature\": 0.5}}",
                              "{\"inputs\": \"a\", \"parameters\": {\"top_k\": 5}}",
                              "{\"inputs\": \"a\", \"parameters\": {\"top_p\": 0.9}}",
                              "{\"inputs\": \"a\", \"parameters\": {\"do_sample\": true}}"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(gparse(sampling[i], &q, &e), API_OK, "%s", e.message);
        cr_expect_eq(q.do_sample, 1, "%s", sampling[i]);
        api_generate_free(&q);
    }
    cr_assert_eq(gparse("{\"inputs\": \"a\", \"parameters\": {\"do_sample\": true, \"temperature\": 0}}", &q, &e), API_OK);
    cr_expect_eq(q.do_sample, 0);
    api_generate_free(&q);
    cr_assert_eq(gparse("{\"inputs\": \"a\", \"parameters\": {\"temperature\": 1, \"top_p\": 1, \"seed\": null}}", &q, &e), API_OK);
    cr_expect_eq(q.do_sample, 0, "neutral values are not warpers");
    cr_expect_eq(q.has_seed, 0);
    api_generate_free(&q);
}

Test(api, generate_stop_truncate_and_limits)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(gparse("{\"inputs\": \"0123456789\", \"parameters\": {\"stop\": [\"\\n\\n\", \"END\"], "
                        "\"truncate\": 4, \"max_new_tokens\": 500, \"seed\": 9007199254740992}}", &q, &e), API_OK, "%s", e.message);
    cr_expect_eq(q.n_stop, 2);
    cr_expect_eq(q.stop_len[0], 2);
    cr_expect_eq(memcmp(q.stop[1], "END", 3), 0);
    cr_expect_eq(q.prompts[0].len, 4);
    cr_expect_eq(memcmp(q.prompts[0].data, "6789", 4), 0, "truncate keeps the end");
    cr_expect_eq(q.max_new_tokens, 500);
    cr_expect_eq(q.seed, 9007199254740992ull);
    api_generate_free(&q);
    cr_assert_eq(gparse("{\"inputs\": \"a\", \"parameters\": {\"stop\": \"x\"}}", &q, &e), API_OK, "one string is a list of one");
    cr_expect_eq(q.n_stop, 1);
    api_generate_free(&q);
    struct { const char *body; api_err want; const char *msg; } bad[] = {
        {"{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 501}}", API_E_VALIDATION, "\"max_new_tokens\" must be an integer in [1, 500]"},
        {"{\"inputs\": \"a\", \"parameters\": {\"top_p\": 0}}", API_E_VALIDATION, "\"top_p\" must be a number in (0, 1]"},
        {"{\"inputs\": \"a\", \"parameters\": {\"typical_p\": 0.5}}", API_E_VALIDATION, "parameter \"typical_p\" is not supported"},
        {"{\"inputs\": \"a\", \"parameters\": {\"nope\": 1}}", API_E_VALIDATION, "unknown parameter \"nope\""},
        {"{\"inputs\": \"0123456789012345678901234567890123456789012345678901\"}", API_E_INPUT_TOO_LONG, "max-input-bytes is 50"},
        {"{\"inputs\": \"a\", \"inputs_base64\": null}", API_OK, ""},
        {"[]", API_E_VALIDATION, "must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_err rc = gparse(bad[i].body, &q, &e);
        cr_expect_eq(rc, bad[i].want, "%s", bad[i].body);
        if (rc == API_OK) api_generate_free(&q);
        else cr_expect(strstr(e.message, bad[i].msg) != NULL, "\"%s\" lacks \"%s\"", e.message, bad[i].msg);
    }
}

Test(api, generate_renders_tgi_shapes)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(gparse("{\"inputs\": \"Hi\", \"parameters\": {\"details\": true, \"return_full_text\": true, "
                        "\"return_raw_bytes\": true, \"seed\": 7}}", &q, &e), API_OK);
    const uint8_t out[] = {'!', 0xE2, 0x82}; /* '!' then an unfinished euro sign */
    api_gen_result r = {.out = out, .out_len = 3, .finish = "length", .generated_tokens = 3, .prompt_tokens = 3, .has_seed = 1, .seed = 7, .byte_offset = 4};
    char *s = api_render_generate(&q, &r);
    cr_expect_str_eq(s, "{\"generated_text\":\"Hi!\xEF\xBF\xBD\",\"details\":{\"finish_reason\":\"length\","
                        "\"generated_tokens\":3,\"input_length\":3,\"seed\":7,\"prefill\":[],\"tokens\":["
                        "{\"id\":37,\"text\":\"!\",\"logprob\":null,\"special\":false},"
                        "{\"id\":230,\"text\":\"\",\"logprob\":null,\"special\":false},"
                        "{\"id\":134,\"text\":\"\xEF\xBF\xBD\",\"logprob\":null,\"special\":false}]},"
                        "\"generated_bytes_base64\":\"IeKC\"}");
    free(s);
    api_stream_token t = {0, 2, 0, 37, "!", 1, out, 1, 0, NULL, NULL};
    int skip;
    s = api_render_stream_token(&q, &t, &skip);
    cr_expect_eq(skip, 0);
    cr_expect_str_eq(s, "data: {\"index\":2,\"token\":{\"id\":37,\"text\":\"!\",\"logprob\":null,\"special\":false,"
                        "\"bytes_base64\":\"IQ==\"},\"generated_text\":null,\"details\":null}\n\n");
    free(s);
    api_fail(&e, API_E_TIMEOUT, "too slow");
    s = api_render_stream_error(&q, &e);
    cr_expect_str_eq(s, "data: {\"error\":\"too slow\",\"error_type\":\"timeout\"}\n\n");
    free(s);
    api_generate_free(&q);
}

/* ---- log-probabilities (issue 26) ---- */

/* OpenAI's completions (chat 0) or chat (1) parser, with room for any test here */
static api_err oparse(int chat, const char *body, api_generate_req *q, api_error *e)
{
    api_gen_limits lim = {1000, 100, 20, NULL};
    return (chat ? api_parse_chat : api_parse_completions)(body, strlen(body), &lim, q, e);
}
#define cparse(b, q, e) oparse(0, b, q, e)
#define chparse(b, q, e) oparse(1, b, q, e)

Test(api, logprob_fields_parse)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(gparse("{\"inputs\": \"a\", \"parameters\": {\"top_n_tokens\": 5, \"decoder_input_details\": true}}", &q, &e),
                 API_OK);
    cr_expect(q.logprobs == 1 && q.top_n == 5 && q.prompt_logprobs == 1);
    api_generate_free(&q);
    cr_assert_eq(cparse("{\"prompt\": \"a\", \"logprobs\": 3, \"echo\": true, \"max_tokens\": 0}", &q, &e), API_OK);
    cr_expect(q.logprobs == 1 && q.top_n == 3 && q.prompt_logprobs == 1 && q.max_new_tokens == 0);
    api_generate_free(&q);
    cr_assert_eq(cparse("{\"prompt\": \"a\", \"logprobs\": 0}", &q, &e), API_OK); /* the chosen token's only */
    cr_expect(q.logprobs == 1 && q.top_n == 0 && q.prompt_logprobs == 0);
    api_generate_free(&q);
    cr_assert_eq(cparse("{\"prompt\": \"a\", \"logprobs\": null}", &q, &e), API_OK);
    cr_expect(q.logprobs == 0);
    api_generate_free(&q);
    cr_assert_eq(chparse("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"logprobs\": true, "
                         "\"top_logprobs\": 20}", &q, &e), API_OK);
    cr_expect(q.logprobs == 1 && q.top_n == 20 && q.prompt_logprobs == 0);
    api_generate_free(&q);
    static const struct { int kind; const char *body, *msg; } bad[] = {
        {0, "{\"inputs\": \"a\", \"parameters\": {\"top_n_tokens\": 21}}", "\"top_n_tokens\" must be an integer in [0, 20]"},
        {0, "{\"inputs\": \"a\", \"parameters\": {\"top_n_tokens\": -1}}", "\"top_n_tokens\" must be an integer"},
        {0, "{\"inputs\": \"a\", \"parameters\": {\"top_n_tokens\": 2.5}}", "\"top_n_tokens\" must be an integer"},
        {0, "{\"inputs\": \"a\", \"stream\": true, \"parameters\": {\"decoder_input_details\": true}}",
         "not supported with a stream"},
        {1, "{\"prompt\": \"a\", \"logprobs\": 21}", "\"logprobs\" must be an integer in [0, 20]"},
        {1, "{\"prompt\": \"a\", \"logprobs\": true}", "\"logprobs\" must be an integer in [0, 20]"},
        {1, "{\"prompt\": \"a\", \"logprobs\": 1.5}", "\"logprobs\" must be an integer"},
        {1, "{\"prompt\": \"a\", \"max_tokens\": 0}", "\"max_tokens\" must be an integer in [1"},
        {2, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"top_logprobs\": 1}", "needs \"logprobs\": true"},
        {2, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"logprobs\": 1}", "\"logprobs\" must be true or false"},
        {2, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"logprobs\": true, \"top_logprobs\": 21}",
         "\"top_logprobs\" must be an integer in [0, 20]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_err rc = bad[i].kind == 0 ? gparse(bad[i].body, &q, &e) : bad[i].kind == 1 ? cparse(bad[i].body, &q, &e)
                                                                                      : chparse(bad[i].body, &q, &e);
        cr_expect_eq(rc, API_E_VALIDATION, "%s", bad[i].body);
        cr_expect(strstr(e.message, bad[i].msg) != NULL, "\"%s\" lacks \"%s\"", e.message, bad[i].msg);
    }
}

/* Two generated tokens ('A', then byte 0x80) with their two best, and a 2-byte prompt. */
static const double GEN_LP[] = {-0.5, -1.25};
static const int32_t GEN_TOP[] = {69, 1, 132, 1}; /* 'A' (4 + 65), <eos>; 0x80, <eos> */
static const double GEN_TOP_LP[] = {-0.5, -2, -1.25, -3};
static const double PROMPT_LP[] = {NAN, -4, -0.75};
static const int32_t PROMPT_TOP[] = {-1, -1, 104, 4, 108, -1}; /* the best of each position; -1: none */
static const double PROMPT_TOP_LP[] = {0, 0, -0.5, -5, -0.75, 0};

static api_gen_result lp_result(const uint8_t *out)
{
    return (api_gen_result){.out = out, .out_len = 2, .finish = "length", .generated_tokens = 2, .prompt_tokens = 3,
                            .byte_offset = 4, .bos_id = 0, .eos_id = 1, .gen = {GEN_LP, GEN_TOP, GEN_TOP_LP, 2},
                            .prompt = {PROMPT_LP, PROMPT_TOP, PROMPT_TOP_LP, 2}};
}

Test(api, logprobs_render_tgi)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(gparse("{\"inputs\": \"dh\", \"parameters\": {\"details\": true, \"top_n_tokens\": 2, "
                        "\"decoder_input_details\": true}}", &q, &e), API_OK);
    const uint8_t out[] = {'A', 0x80};
    api_gen_result r = lp_result(out);
    char *s = api_render_generate(&q, &r);
    cr_expect_str_eq(s, "{\"generated_text\":\"A\xEF\xBF\xBD\",\"details\":{\"finish_reason\":\"length\","
                        "\"generated_tokens\":2,\"input_length\":3,\"seed\":null,\"prefill\":["
                        "{\"id\":0,\"text\":\"<bos>\",\"logprob\":null},{\"id\":104,\"text\":\"d\",\"logprob\":-4},"
                        "{\"id\":108,\"text\":\"h\",\"logprob\":-0.75}],\"tokens\":["
                        "{\"id\":69,\"text\":\"A\",\"logprob\":-0.5,\"special\":false},"
                        "{\"id\":132,\"text\":\"\xEF\xBF\xBD\",\"logprob\":-1.25,\"special\":false}],\"top_tokens\":["
                        "[{\"id\":69,\"text\":\"A\",\"logprob\":-0.5,\"special\":false},"
                        "{\"id\":1,\"text\":\"<eos>\",\"logprob\":-2,\"special\":true}],"
                        "[{\"id\":132,\"text\":\"\xEF\xBF\xBD\",\"logprob\":-1.25,\"special\":false},"
                        "{\"id\":1,\"text\":\"<eos>\",\"logprob\":-3,\"special\":true}]]}}");
    free(s);
    /* a stream event: its token's numbers, the best at the top level; the closing event (id -1) none */
    api_stream_token t = {0, 2, 0, 132, "", 0, out + 1, 1, 0, NULL, &r};
    int skip;
    s = api_render_stream_token(&q, &t, &skip);
    cr_expect_str_eq(s, "data: {\"index\":2,\"token\":{\"id\":132,\"text\":\"\",\"logprob\":-1.25,\"special\":false},"
                        "\"top_tokens\":[{\"id\":132,\"text\":\"\xEF\xBF\xBD\",\"logprob\":-1.25,\"special\":false},"
                        "{\"id\":1,\"text\":\"<eos>\",\"logprob\":-3,\"special\":true}],\"generated_text\":null,\"details\":null}\n\n");
    free(s);
    t = (api_stream_token){0, 3, 0, -1, "", 0, NULL, 0, 1, &r, &r};
    s = api_render_stream_token(&q, &t, &skip);
    cr_expect(strstr(s, "\"logprob\":null,\"special\":true},\"top_tokens\":[],") != NULL, "%s", s);
    free(s);
    api_generate_free(&q);
}

Test(api, logprobs_render_openai)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(cparse("{\"prompt\": \"dh\", \"logprobs\": 1, \"echo\": true}", &q, &e), API_OK);
    api_generate_set_meta(&q, "m", "r", 1);
    const uint8_t out[] = {'A', 0x80};
    api_gen_result r = lp_result(out);
    char *s = api_render_generate(&q, &r);
    /* the prompt's bytes first (each scored after bos); the chosen token joins the best (vLLM);
     * byte 0x80 is "bytes:\x80"; offsets count bytes */
    cr_expect(strstr(s, "\"logprobs\":{\"tokens\":[\"d\",\"h\",\"A\",\"bytes:\\\\x80\"],"
                        "\"token_logprobs\":[-4,-0.75,-0.5,-1.25],"
                        "\"top_logprobs\":[{\"d\":-0.5,\"bytes:\\\\x00\":-5},{\"h\":-0.75},{\"A\":-0.5,\"<eos>\":-2},"
                        "{\"bytes:\\\\x80\":-1.25,\"<eos>\":-3}],"
                        "\"text_offset\":[0,1,2,3]}") != NULL, "%s", s);
    free(s);
    api_generate_free(&q);
    cr_assert_eq(chparse("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"logprobs\": true, "
                         "\"top_logprobs\": 1}", &q, &e), API_OK);
    api_generate_set_meta(&q, "m", "r", 1);
    s = api_render_generate(&q, &r);
    cr_expect(strstr(s, "\"logprobs\":{\"content\":[{\"token\":\"A\",\"logprob\":-0.5,\"bytes\":[65],"
                        "\"top_logprobs\":[{\"token\":\"A\",\"logprob\":-0.5,\"bytes\":[65]},"
                        "{\"token\":\"<eos>\",\"logprob\":-2,\"bytes\":[]}]},"
                        "{\"token\":\"bytes:\\\\x80\",\"logprob\":-1.25,\"bytes\":[128],"
                        "\"top_logprobs\":[{\"token\":\"bytes:\\\\x80\",\"logprob\":-1.25,\"bytes\":[128]},"
                        "{\"token\":\"<eos>\",\"logprob\":-3,\"bytes\":[]}]}],"
                        "\"refusal\":null}") != NULL, "%s", s);
    free(s);
    /* a stream chunk: its one token, text or not (0x80 completes no character) */
    api_stream_token t = {0, 2, 0, 132, "", 0, out + 1, 1, 0, NULL, &r};
    int skip;
    s = api_render_stream_token(&q, &t, &skip);
    cr_expect(skip == 0 && strstr(s, "\"content\":[{\"token\":\"bytes:\\\\x80\",\"logprob\":-1.25") != NULL, "%s", s);
    free(s);
    api_generate_free(&q);
}

/* Found by fuzz/fuzz_api: a body that is not JSON left the request uninitialised, and an error
 * message quoting the client's bytes could carry invalid UTF-8 into the JSON answer. */
Test(api, openai_bad_json_and_error_messages_stay_valid)
{
    api_generate_req q;
    api_error e;
    api_gen_limits lim = {100, 10, 5, NULL};
    memset(&q, 0xA5, sizeof q); /* garbage, as on a caller's stack */
    cr_expect_eq(api_parse_completions("{no", 3, &lim, &q, &e), API_E_BAD_JSON);
    memset(&q, 0xA5, sizeof q);
    cr_expect_eq(api_parse_chat("[", 1, &lim, &q, &e), API_E_BAD_JSON);
    const char body[] = "{\"prompt\": \"a\", \"\xE2\x82\": 1}"; /* a field name cut inside a character */
    cr_assert_eq(api_parse_completions(body, strlen(body), &lim, &q, &e), API_E_VALIDATION);
    char *s = api_render_error(&e, "rid");
    cr_assert_not_null(s);
    cr_expect(strstr(s, "unknown field \\\"\xEF\xBF\xBD\\\"") != NULL, "%s", s);
    free(s);
}

/* A body is exactly one JSON document: whitespace may follow it, nothing else (every parser). */
Test(api, one_json_document_per_body)
{
    api_gen_limits glim = {100, 10, 5, NULL};
    api_limits clim = {100, 4, NULL};
    const char *bad[] = {"{\"inputs\": \"a\"} {\"inputs\": \"b\"}", "{\"inputs\": \"a\"}x", "{\"inputs\": \"a\"}}",
                         "{\"inputs\": \"a\"}\n,"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_classify_req c;
        api_generate_req g;
        api_error e;
        cr_expect_eq(api_parse_classify(bad[i], strlen(bad[i]), &clim, &c, &e), API_E_BAD_JSON, "%s", bad[i]);
        cr_expect(strstr(e.message, "after the JSON value") != NULL, "%s", e.message);
        cr_expect_eq(api_parse_generate(bad[i], strlen(bad[i]), &glim, &g, &e), API_E_BAD_JSON, "%s", bad[i]);
    }
    const char cbad[] = "{\"prompt\": \"a\"}[]", hbad[] = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]} 1";
    api_generate_req g;
    api_error e;
    cr_expect_eq(api_parse_completions(cbad, strlen(cbad), &glim, &g, &e), API_E_BAD_JSON);
    cr_expect_eq(api_parse_chat(hbad, strlen(hbad), &glim, &g, &e), API_E_BAD_JSON);
    const char ok[] = " {\"inputs\": \"a\"} \r\n\t ";
    api_classify_req c;
    cr_assert_eq(api_parse_classify(ok, strlen(ok), &clim, &c, &e), API_OK);
    api_classify_free(&c);
    /* the length counts, not a NUL terminator: a body cut after its value is whole */
    cr_assert_eq(api_parse_classify("{\"inputs\": \"a\"}garbage", 15, &clim, &c, &e), API_OK);
    api_classify_free(&c);
}

/* A NUL byte in rendered text is U+0000 (\u0000), and nothing after it is lost: in the answer,
 * its token list, and a stream's events. */
Test(api, nul_bytes_render_as_u0000)
{
    api_generate_req q;
    api_error e;
    const char body[] = "{\"inputs_base64\": \"YQBi\", \"parameters\": {\"details\": true, \"return_full_text\": true}}";
    cr_assert_eq(gparse(body, &q, &e), API_OK); /* the prompt is a, NUL, b */
    const uint8_t out[] = {'x', 0, '"', 1};
    api_gen_result r = {.out = out, .out_len = 4, .finish = "length", .generated_tokens = 4, .prompt_tokens = 4, .byte_offset = 4};
    char *s = api_render_generate(&q, &r);
    cr_expect_str_eq(s, "{\"generated_text\":\"a\\u0000bx\\u0000\\\"\\u0001\",\"details\":{\"finish_reason\":\"length\","
                        "\"generated_tokens\":4,\"input_length\":4,\"seed\":null,\"prefill\":[],\"tokens\":["
                        "{\"id\":124,\"text\":\"x\",\"logprob\":null,\"special\":false},"
                        "{\"id\":4,\"text\":\"\\u0000\",\"logprob\":null,\"special\":false},"
                        "{\"id\":38,\"text\":\"\\\"\",\"logprob\":null,\"special\":false},"
                        "{\"id\":5,\"text\":\"\\u0001\",\"logprob\":null,\"special\":false}]}}");
    free(s);
    api_stream_token t = {0, 2, 0, 4, "\0", 1, out + 1, 1, 0, &r, NULL};
    int skip;
    s = api_render_stream_token(&q, &t, &skip);
    cr_expect_str_eq(s, "data: {\"index\":2,\"token\":{\"id\":4,\"text\":\"\\u0000\",\"logprob\":null,\"special\":false},"
                        "\"generated_text\":\"a\\u0000bx\\u0000\\\"\\u0001\",\"details\":{\"finish_reason\":\"length\","
                        "\"generated_tokens\":4,\"input_length\":4,\"seed\":null}}\n\n");
    free(s);
    api_generate_free(&q);
}

/* OpenAI completions with echo: a prompt that ends inside a character, completed by the first
 * output bytes. The prompt and the output are sanitised each on its own, in the answer as in the
 * stream (whose first chunk echoes the prompt before any output exists): U+FFFD for the open
 * character, and U+FFFD for the orphaned continuation byte; the two say the same. */
Test(api, echo_of_a_prompt_cut_mid_character_streams_as_answered)
{
    api_generate_req q;
    api_error e;
    api_gen_limits lim = {100, 10, 5, NULL};
    const char body[] = "{\"prompt\": \"ab\xE2\x82\", \"echo\": true, \"max_tokens\": 2}";
    cr_assert_eq(api_parse_completions(body, strlen(body), &lim, &q, &e), API_OK);
    api_generate_set_meta(&q, "m", "rid", 1);
    const uint8_t out[] = {0xAC, '!'}; /* with the prompt's E2 82: a euro sign */
    api_gen_result r = {.out = out, .out_len = 2, .finish = "length", .generated_tokens = 2, .prompt_tokens = 5, .byte_offset = 4};
    char *s = api_render_generate(&q, &r);
    cr_expect(strstr(s, "\"text\":\"ab\xEF\xBF\xBD\xEF\xBF\xBD!\"") != NULL, "%s", s);
    free(s);
    /* the stream: the output byte by byte through its own sanitiser, as server/sched.c does */
    api_stream_token t1 = {0, 1, 1, 0xAC + 4, "\xEF\xBF\xBD", 3, out, 1, 0, NULL, NULL};
    api_stream_token t2 = {0, 2, 0, '!' + 4, "!", 1, out + 1, 1, 0, &r, NULL};
    int skip;
    char *e1 = api_render_stream_token(&q, &t1, &skip), *e2 = api_render_stream_token(&q, &t2, &skip);
    cr_expect(strstr(e1, "\"text\":\"ab\xEF\xBF\xBD\xEF\xBF\xBD\"") != NULL, "%s", e1);
    cr_expect(strstr(e2, "\"text\":\"!\"") != NULL, "%s", e2);
    free(e1);
    free(e2);
    api_generate_free(&q);
}

/* Issue 27. A key twice in one object, at any depth, is refused by every parser with 400 naming
 * the key: cJSON reads the first, a proxy may read the last, and the two must not disagree. */
Test(api, duplicate_keys_are_refused_everywhere)
{
    api_gen_limits glim = {100, 10, 5, NULL};
    api_limits clim = {100, 4, NULL};
    const char *gen[] = {"{\"inputs\": \"a\", \"parameters\": {\"max_new_tokens\": 2, \"max_new_tokens\": 10}}",
                         "{\"inputs\": \"a\", \"inputs\": \"b\"}",
                         "{\"parameters\": {}, \"inputs\": \"a\", \"parameters\": {\"seed\": 1}}"};
    for (size_t i = 0; i < sizeof gen / sizeof gen[0]; i++) {
        api_generate_req g;
        api_error e;
        cr_expect_eq(api_parse_generate(gen[i], strlen(gen[i]), &glim, &g, &e), API_E_BAD_JSON, "%s", gen[i]);
        cr_expect(strstr(e.message, "duplicate key") != NULL, "%s", e.message);
    }
    api_generate_req g;
    api_classify_req c;
    api_error e;
    const char cmp[] = "{\"prompt\": \"a\", \"max_tokens\": 1, \"max_tokens\": 9}";
    cr_expect_eq(api_parse_completions(cmp, strlen(cmp), &glim, &g, &e), API_E_BAD_JSON);
    cr_expect(strstr(e.message, "\"max_tokens\"") != NULL, "names the key: %s", e.message);
    const char chat[] = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\", \"role\": \"system\"}]}";
    cr_expect_eq(api_parse_chat(chat, strlen(chat), &glim, &g, &e), API_E_BAD_JSON);
    cr_expect(strstr(e.message, "\"role\"") != NULL, "%s", e.message);
    const char deep[] = "{\"inputs\": \"a\", \"parameters\": {\"grammar\": {\"x\": [{\"k\": 1, \"k\": 2}]}}}";
    cr_expect_eq(api_parse_generate(deep, strlen(deep), &glim, &g, &e), API_E_BAD_JSON, "nested in a list");
    const char cls[] = "{\"inputs\": \"a\", \"raw_scores\": true, \"raw_scores\": false}";
    cr_expect_eq(api_parse_classify(cls, strlen(cls), &clim, &c, &e), API_E_BAD_JSON);
    cr_expect_eq(api_err_status(API_E_BAD_JSON), 400);
    /* the same key in two different objects is fine, and so is a key that differs in case */
    const char ok[] = "{\"inputs\": \"a\", \"parameters\": {\"stop\": [\"x\"], \"Stop\": null, \"seed\": 1}}";
    cr_assert_eq(api_parse_generate(ok, strlen(ok), &glim, &g, &e), API_E_VALIDATION, "%s", e.message);
    const char ok2[] = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}";
    cr_assert_eq(api_parse_chat(ok2, strlen(ok2), &glim, &g, &e), API_OK, "%s", e.message);
    api_generate_free(&g);
    /* many keys, as many as a body may hold (API_MAX_JSON_VALUES): sorted, not compared pairwise
     * (32,000 keys would be 5 x 10^8 comparisons) */
    size_t n = 32000, at = 0;
    char *big = malloc(200000 * 16 + 64);
    at += (size_t)sprintf(big, "{\"inputs\": \"a\", \"parameters\": {\"grammar\": {");
    for (size_t i = 0; i < n; i++) at += (size_t)sprintf(big + at, "%s\"k%zu\":0", i ? "," : "", i);
    at += (size_t)sprintf(big + at, ",\"k%zu\":0}}}", n / 2);
    cr_expect_eq(api_parse_generate(big, at, &glim, &g, &e), API_E_BAD_JSON, "%s", e.message);
    cr_expect(strstr(e.message, "\"k16000\"") != NULL, "%s", e.message);
    /* more values than that: refused before a node is built */
    at = (size_t)sprintf(big, "{\"inputs\": \"a\", \"parameters\": {\"grammar\": {");
    for (size_t i = 0; i < 200000; i++) at += (size_t)sprintf(big + at, "%s\"k%zu\":0", i ? "," : "", i);
    at += (size_t)sprintf(big + at, "}}}");
    cr_expect_eq(api_parse_generate(big, at, &glim, &g, &e), API_E_TOO_LARGE, "%s", e.message);
    free(big);
}

/* api_json_values bounds the values of a body from above, strings and escapes skipped. */
Test(api, json_values_bound)
{
    static const struct { const char *body; size_t at_least; } cases[] = {
        {"0", 1}, {"[]", 1}, {"[1,2,3]", 4}, {"{\"a\":1,\"b\":[2,3]}", 5}, {"\"x,[{:\"", 1},
        {"[\"a\\\",b\",1]", 3}, {"{\"messages\": [{\"role\": \"u\", \"content\": \"a,b\"}]}", 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t v = api_json_values(cases[i].body, strlen(cases[i].body));
        cr_expect_geq(v, cases[i].at_least, "%s: %zu", cases[i].body, v);
        cr_expect_leq(v, 2 * cases[i].at_least, "%s: %zu", cases[i].body, v);
    }
    cr_expect_eq(api_json_values("\"x,[{:\"", 7), 1, "inside a string nothing counts");
    const char *esc = "[\"\\\"\",1]";
    cr_expect_eq(api_json_values(esc, strlen(esc)), 3, "an escaped quote does not end the string");
}

/* Issue 27. \u0000 is refused wherever it is (cJSON would cut the string there), a base64
 * request's stop sequence included; an escaped backslash followed by the text u0000 is no NUL. */
Test(api, nul_escapes_found_exactly)
{
    cr_expect(api__has_nul_escape("\"a\\u0000b\"", 10));
    cr_expect(!api__has_nul_escape("\"C:\\\\u0000x\"", 12), "an escaped backslash, then u0000");
    cr_expect(api__has_nul_escape("\"C:\\\\\\u0000x\"", 13), "an escaped backslash, then \\u0000");
    cr_expect(!api__has_nul_escape("\"\\u0000\"", 6), "the length counts");
    cr_expect(!api__has_nul_escape("\"\\\"u0000\"", 9));
    api_gen_limits glim = {100, 10, 5, NULL};
    api_limits clim = {100, 4, NULL};
    api_generate_req g;
    api_classify_req c;
    api_error e;
    const char path[] = "{\"inputs\": \"C:\\\\u0000x\"}";
    cr_assert_eq(api_parse_generate(path, strlen(path), &glim, &g, &e), API_OK, "%s", e.message);
    cr_expect_eq(g.prompts[0].len, 9);
    cr_expect(!memcmp(g.prompts[0].data, "C:\\u0000x", 9));
    api_generate_free(&g);
    cr_assert_eq(api_parse_classify(path, strlen(path), &clim, &c, &e), API_OK, "%s", e.message);
    api_classify_free(&c);
    const char cpath[] = "{\"prompt\": \"C:\\\\u0000x\"}";
    cr_assert_eq(api_parse_completions(cpath, strlen(cpath), &glim, &g, &e), API_OK, "%s", e.message);
    api_generate_free(&g);
    const char stop[] = "{\"inputs_base64\": \"YWJj\", \"parameters\": {\"stop\": [\"a\\u0000b\"]}}";
    cr_expect_eq(api_parse_generate(stop, strlen(stop), &glim, &g, &e), API_E_VALIDATION, "not cut to \"a\"");
    cr_expect(strstr(e.message, "U+0000") != NULL, "%s", e.message);
    const char cstop[] = "{\"inputs_base64\": \"YWJj\", \"model\": \"a\\u0000\"}";
    cr_expect_eq(api_parse_classify(cstop, strlen(cstop), &clim, &c, &e), API_E_VALIDATION);
}

/* Issue 27. Sampling parameters are checked as the float the engine samples with: a double in
 * range that rounds to 0.0f (top_p 1e-46, 1e-320; repetition_penalty 1e-320) is a 422 here, not
 * a 500 from the engine once the request runs (a stream has sent its 200 by then). */
Test(api, sampling_ranges_hold_as_floats)
{
    api_gen_limits glim = {100, 10, 5, NULL};
    const char *bad[] = {"{\"inputs\": \"a\", \"parameters\": {\"top_p\": 1e-46}}",
                         "{\"inputs\": \"a\", \"parameters\": {\"top_p\": 1e-320}}",
                         "{\"inputs\": \"a\", \"parameters\": {\"repetition_penalty\": 1e-320}}",
                         "{\"inputs\": \"a\", \"parameters\": {\"repetition_penalty\": 1e-46}}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_generate_req g;
        api_error e;
        cr_expect_eq(api_parse_generate(bad[i], strlen(bad[i]), &glim, &g, &e), API_E_VALIDATION, "%s", bad[i]);
        cr_expect(strstr(e.message, "32-bit float") != NULL, "%s", e.message);
        cr_expect(e.param != NULL);
    }
    const char *obad[] = {"{\"prompt\": \"a\", \"top_p\": 1e-46}", "{\"prompt\": \"a\", \"repetition_penalty\": 1e-320}"};
    for (size_t i = 0; i < 2; i++) {
        api_generate_req g;
        api_error e;
        cr_expect_eq(api_parse_completions(obad[i], strlen(obad[i]), &glim, &g, &e), API_E_VALIDATION, "%s", obad[i]);
        char chat[160];
        snprintf(chat, sizeof chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], %s", strchr(obad[i], ',') + 2);
        cr_expect_eq(api_parse_chat(chat, strlen(chat), &glim, &g, &e), API_E_VALIDATION, "%s", chat);
    }
    /* the smallest floats above 0 pass, as floats > 0 (the engine takes them); temperature 1e-46
     * is 0.0f, which is greedy */
    api_generate_req g;
    api_error e;
    const char ok[] = "{\"inputs\": \"a\", \"parameters\": {\"top_p\": 1e-40, \"repetition_penalty\": 1e-40, \"temperature\": 1e-46}}";
    cr_assert_eq(api_parse_generate(ok, strlen(ok), &glim, &g, &e), API_OK, "%s", e.message);
    cr_expect(g.top_p > 0 && g.repetition_penalty > 0 && g.temperature == 0 && !g.do_sample);
    api_generate_free(&g);
}

/* Issue 27. OpenAI's "model" (and vLLM's on /classify) must name the served model: another
 * is 404 model_not_found, as OpenAI and vLLM answer; absent or null is fine. */
Test(api, unknown_model_is_404)
{
    api_gen_limits glim = {100, 10, 5, "austen-lm"};
    api_limits clim = {100, 4, "spam"};
    api_generate_req g;
    api_classify_req c;
    api_error e;
    const char bad[] = "{\"model\": \"nonexistent\", \"prompt\": \"a\"}";
    cr_assert_eq(api_parse_completions(bad, strlen(bad), &glim, &g, &e), API_E_MODEL_NOT_FOUND);
    cr_expect_eq(api_err_status(e.kind), 404);
    cr_expect_str_eq(api_err_type(e.kind), "model_not_found");
    cr_expect_str_eq(e.param, "model");
    cr_expect(strstr(e.message, "nonexistent") && strstr(e.message, "austen-lm"), "%s", e.message);
    const char cbad[] = "{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}";
    cr_expect_eq(api_parse_chat(cbad, strlen(cbad), &glim, &g, &e), API_E_MODEL_NOT_FOUND);
    const char vbad[] = "{\"model\": \"austen-lm\", \"input\": \"a\"}";
    cr_expect_eq(api_parse_classify(vbad, strlen(vbad), &clim, &c, &e), API_E_MODEL_NOT_FOUND);
    /* TGI's placeholder and an endpoint's URL (Hugging Face's clients send it as the model) */
    const char *good[] = {"{\"model\": \"austen-lm\", \"prompt\": \"a\"}", "{\"prompt\": \"a\"}", "{\"model\": null, \"prompt\": \"a\"}",
                          "{\"model\": \"tgi\", \"prompt\": \"a\"}", "{\"model\": \"http://127.0.0.1:8080\", \"prompt\": \"a\"}",
                          "{\"model\": \"https://x.example/v1/\", \"prompt\": \"a\"}"};
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(api_parse_completions(good[i], strlen(good[i]), &glim, &g, &e), API_OK, "%s", good[i]);
        api_generate_free(&g);
    }
    const char vgood[] = "{\"model\": \"spam\", \"input\": \"a\"}";
    cr_assert_eq(api_parse_classify(vgood, strlen(vgood), &clim, &c, &e), API_OK);
    api_classify_free(&c);
}

/* Portable states (issue 26): "state" (base64, or the object a response returned) and
 * "return_state" parsed on TGI and OpenAI shapes; a state continues exactly one prompt; the
 * result's state rendered with its model id, tokens and checksum. */
Test(api, portable_state_fields)
{
    api_generate_req q;
    api_error e;
    cr_assert_eq(gparse("{\"inputs\": \"Hi\", \"state\": \"AAECAw==\", \"parameters\": {\"return_state\": true}}", &q, &e), API_OK);
    cr_expect(q.return_state && q.state_len == 4 && !memcmp(q.state, "\0\1\2\3", 4));
    api_generate_free(&q);
    cr_assert_eq(gparse("{\"inputs\": \"Hi\", \"state\": {\"data\": \"AAEC\", \"tokens\": 9}}", &q, &e), API_OK);
    cr_expect(!q.return_state && q.state_len == 3);
    api_generate_free(&q);
    cr_expect_eq(gparse("{\"inputs\": \"Hi\", \"state\": \"%%%\"}", &q, &e), API_E_VALIDATION);
    cr_expect_str_eq(e.param, "state");
    cr_expect_eq(gparse("{\"inputs\": \"Hi\", \"state\": 3}", &q, &e), API_E_VALIDATION);
    cr_expect_eq(gparse("{\"inputs\": \"Hi\", \"parameters\": {\"return_state\": 1}}", &q, &e), API_E_VALIDATION);
    api_gen_limits lim = {50, 500, 100, NULL};
    const char *two = "{\"prompt\": [\"a\", \"b\"], \"state\": \"AAEC\"}";
    cr_expect_eq(api_parse_completions(two, strlen(two), &lim, &q, &e), API_E_VALIDATION, "a state continues one prompt");
    const char *chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"state\": \"AAEC\", \"return_state\": true}";
    cr_assert_eq(api_parse_chat(chat, strlen(chat), &lim, &q, &e), API_OK);
    cr_expect(q.return_state && q.state_len == 3);
    /* rendered on the choice */
    uint8_t blob[40];
    for (int i = 0; i < 40; i++) blob[i] = (uint8_t)i;
    api_generate_set_meta(&q, "lm", "rid", 1);
    api_gen_result r = {.out = (const uint8_t *)"ok", .out_len = 2, .finish = "length", .generated_tokens = 2,
                        .prompt_tokens = 5, .byte_offset = 4, .state = blob, .state_len = 40, .state_tokens = 77,
                        .state_model_id = "ab12"};
    char *s = api_render_generate(&q, &r);
    cr_assert_not_null(s);
    cr_expect_not_null(strstr(s, "\"state\":{\"data\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJw==\","
                                 "\"model_id\":\"ab12\",\"tokens\":77,\"sha256\":"
                                 "\"08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627\"}"), "%s", s);
    free(s);
    api_generate_free(&q);
}
