/* fuzz_api.c - libFuzzer harness for the request side of api/: the input is a request body,
 * given to every parser the server has (api_parse_classify, api_classify_raw for a raw body,
 * api_parse_generate, api_parse_completions, api_parse_chat, api_parse_score), as
 * their job kinds (server/job_*.c) give it.
 *
 * Checked beyond ASan/UBSan:
 *   - a refusal has an error kind whose status is 4xx (503 for a failed allocation: never a
 *     500, for any input), and api_render_error gives one valid-UTF-8 JSON document
 *     {"error": {"code" = the kind's status, "type", "message", "param", "request_id"}};
 *   - the engine's sampler (engine/sample.c, made as server/sched.c makes it) accepts the
 *     sampling parameters of every request the parser accepts (top_p 1e-46 was a 500);
 *   - an accepted request respects the limits it was parsed with (documents and prompts within
 *     max-input-bytes, max_new_tokens within the cap, stop sequences within theirs, sampling
 *     parameters in range), and every view into its storage is readable (ASan);
 *   - its answer renders (api_render_classify with fake scores, api_render_generate with a fake
 *     result made of the input's own bytes, every stream event, the stream end and a stream
 *     error) as valid UTF-8 JSON, each event one "data: " line and a blank line;
 *   - the events' texts together are the sanitised (echoed prompt and) output, and the answer
 *     that is not streamed says the same (fuzz/fuzz_stream.h), NUL bytes included.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. -D_GNU_SOURCE $(pkg-config --cflags libcjson) \
 *       fuzz/fuzz_api.c api/classify.c api/generate.c api/openai.c api/utf8.c engine/sample.c -lcjson -lm
 * fuzz/run.sh builds and runs it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/utf8.h"
#include "engine/sample.h"
#include "fuzz/fuzz_common.h"
#include "fuzz/fuzz_stream.h"

/* Small limits, so that the "too long" paths are reachable with small inputs. */
#define MAX_INPUT 2048
#define MAX_NEW 64

static void check_error(api_err rc, const api_error *e)
{
    FUZZ_CHECK(rc != API_OK && rc == e->kind, "refusal without a kind (%d, %d)", rc, e->kind);
    int status = api_err_status(rc);
    /* a 500 for any input is a bug: a refusal is the client's (4xx), or a failed allocation (503) */
    FUZZ_CHECK(status >= 400 && (status < 500 || rc == API_E_ENGINE_MEMORY), "a parser answered %d %s: %s", status,
               api_err_type(rc), e->message);
    FUZZ_CHECK(e->message[0] != 0, "empty error message");
    char *s = api_render_error(e, "fuzz-request-id");
    cJSON *j = fuzz_json_doc(s, "the error body");
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "error");
    FUZZ_CHECK(cJSON_IsObject(o), "no error object: %s", s);
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(o, "code");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(o, "message");
    const cJSON *param = cJSON_GetObjectItemCaseSensitive(o, "param");
    const cJSON *rid = cJSON_GetObjectItemCaseSensitive(o, "request_id");
    FUZZ_CHECK(cJSON_IsNumber(code) && code->valuedouble == status, "code: %s", s);
    FUZZ_CHECK(cJSON_IsString(type) && !strcmp(type->valuestring, api_err_type(rc)), "type: %s", s);
    FUZZ_CHECK(cJSON_IsString(msg) && msg->valuestring[0], "message: %s", s);
    FUZZ_CHECK(param && (cJSON_IsNull(param) || cJSON_IsString(param)), "param: %s", s);
    FUZZ_CHECK(cJSON_IsString(rid) && !strcmp(rid->valuestring, "fuzz-request-id"), "request_id: %s", s);
    cJSON_Delete(j);
    free(s);
}

static void fuzz_classify(const char *body, size_t len)
{
    api_limits lim = {MAX_INPUT, 8, "spam"};
    api_classify_req req;
    api_error err;
    memset(&err, 0, sizeof err);
    memset(&req, 0xA5, sizeof req); /* garbage: api.h says *req needs no freeing on failure */
    api_err rc = api_parse_classify(body, len, &lim, &req, &err);
    if (rc != API_OK) {
        check_error(rc, &err);
        return;
    }
    FUZZ_CHECK(req.n_docs >= 1 && req.n_docs <= lim.max_batch, "n_docs %zu", req.n_docs);
    FUZZ_CHECK(req.is_list || req.n_docs == 1, "a single input with %zu documents", req.n_docs);
    float scores[8 * 3];
    for (size_t i = 0; i < req.n_docs; i++) {
        FUZZ_CHECK(req.docs[i].len <= MAX_INPUT, "document %zu has %zu bytes", i, req.docs[i].len);
        unsigned h = fuzz_touch(req.docs[i].data, req.docs[i].len);
        scores[3 * i] = (float)(h % 1000) / 1000.0f; /* scores that depend on the input */
        scores[3 * i + 1] = 1.0f - scores[3 * i];
        scores[3 * i + 2] = req.raw_scores ? -1e30f : 0.0f;
    }
    static const char *const labels[3] = {"ham", "spam", "caf\xc3\xa9"};
    api_classify_meta meta = {"clf-fuzz", "spam", 1700000000, 42};
    char *s = api_render_classify(&req, scores, labels, 3, &meta);
    cJSON *j = fuzz_json_doc(s, "the classify answer");
    FUZZ_CHECK(req.vllm ? cJSON_IsObject(j) : cJSON_IsArray(j), "shape: %s", s);
    if (!req.vllm) FUZZ_CHECK(cJSON_GetArraySize(j) == (req.is_list ? (int)req.n_docs : 3), "size: %s", s);
    cJSON_Delete(j);
    free(s);
    api_classify_free(&req);
}

/* The raw /classify body: the whole input is the document; its first bytes also choose the
 * query's values (absent, true, false, or a bad one), as a client's URL would. */
static void fuzz_classify_raw(const uint8_t *body, size_t len)
{
    static const char *const q[4] = {NULL, "true", "false", "tru"};
    const char *rs = len ? q[body[0] & 3] : NULL, *tr = len > 1 ? q[(body[1] >> 2) & 3] : NULL;
    api_limits lim = {MAX_INPUT, 8, "spam"};
    api_classify_req req;
    api_error err;
    memset(&err, 0, sizeof err);
    memset(&req, 0xA5, sizeof req);
    api_err rc = api_classify_raw(body, len, rs, tr, &lim, &req, &err);
    if (rc != API_OK) {
        check_error(rc, &err);
        FUZZ_CHECK(api_err_status(rc) < 500, "a raw body gave %d", api_err_status(rc));
        return;
    }
    FUZZ_CHECK(req.n_docs == 1 && req.docs[0].data == body, "the document is the body");
    FUZZ_CHECK(req.docs[0].len == (len < MAX_INPUT ? len : MAX_INPUT), "length %zu of %zu", req.docs[0].len, len);
    fuzz_touch(req.docs[0].data, req.docs[0].len);
    float scores[3] = {0.25f, 0.75f, 0.0f};
    static const char *const labels[3] = {"ham", "spam", "caf\xc3\xa9"};
    api_classify_meta meta = {"clf-fuzz", "spam", 1700000000, 42};
    char *s = api_render_classify(&req, scores, labels, 3, &meta);
    cJSON *j = fuzz_json_doc(s, "the raw classify answer");
    FUZZ_CHECK(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 3, "shape: %s", s);
    cJSON_Delete(j);
    free(s);
    api_classify_free(&req);
}

/* n entries of fake log-probabilities with top best each, from seed; free_logprobs. */
static api_logprobs fake_logprobs(int top, size_t n, size_t seed)
{
    double *lp = malloc(n * sizeof(double)), *tl = malloc(n * (size_t)top * sizeof(double) + 1);
    int32_t *ti = malloc(n * (size_t)top * sizeof(int32_t) + 1);
    FUZZ_CHECK(lp && tl && ti, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t r = (seed + i) * 2654435761u;
        lp[i] = i == 0 ? NAN : r % 11 == 0 ? -INFINITY : -(double)(r % 1000) / 97;
        for (int k = 0; k < top; k++) {
            size_t q = r + (size_t)k * 40503u;
            ti[i * (size_t)top + (size_t)k] = q % 13 == 0 ? -1 : (int32_t)(q % 260);
            tl[i * (size_t)top + (size_t)k] = q % 17 == 0 ? -INFINITY : -(double)(q % 500) / 31;
        }
    }
    return (api_logprobs){lp, ti, tl, top};
}

static void free_logprobs(api_logprobs *l)
{
    free((void *)l->lp), free((void *)l->top_ids), free((void *)l->top_lps);
}

static void fuzz_generate(const char *body, size_t len, int which)
{
    api_gen_limits lim = {MAX_INPUT, MAX_NEW, 16, "austen-lm"};
    api_generate_req req;
    api_error err;
    memset(&err, 0, sizeof err);
    memset(&req, 0xA5, sizeof req); /* garbage: api.h says *req needs no freeing on failure */
    api_err rc = which == 0   ? api_parse_generate(body, len, &lim, &req, &err)
                 : which == 1 ? api_parse_completions(body, len, &lim, &req, &err)
                              : api_parse_chat(body, len, &lim, &req, &err);
    if (rc != API_OK) {
        check_error(rc, &err);
        return;
    }
    FUZZ_CHECK(req.n_prompts >= 1 && req.n_prompts <= API_MAX_PROMPTS, "n_prompts %zu", req.n_prompts);
    /* 0 only for a completion's echo (the prompt's log-probabilities alone) */
    int least = req.format == API_FMT_COMPLETION && req.return_full_text ? 0 : 1;
    FUZZ_CHECK(req.max_new_tokens >= least && req.max_new_tokens <= MAX_NEW, "max_new_tokens %d", req.max_new_tokens);
    FUZZ_CHECK(req.top_n >= 0 && req.top_n <= API_MAX_TOP_LOGPROBS, "top_n %d", req.top_n);
    FUZZ_CHECK(!req.prompt_logprobs || req.logprobs || req.format == API_FMT_TGI, "prompt logprobs without logprobs");
    FUZZ_CHECK(isfinite(req.temperature) && req.temperature >= 0, "temperature %g", req.temperature);
    FUZZ_CHECK(req.top_p > 0 && req.top_p <= 1, "top_p %g", req.top_p);
    FUZZ_CHECK(req.top_k >= 0, "top_k %d", req.top_k);
    FUZZ_CHECK(isfinite(req.repetition_penalty) && req.repetition_penalty > 0, "repetition_penalty %g",
               req.repetition_penalty);
    FUZZ_CHECK(!req.has_seed || req.seed <= (1ull << 53), "seed %llu", (unsigned long long)req.seed);
    /* the engine takes what the parser took (a request it refuses would be a 500, or a 200
     * stream with an error event): the sampler is made as server/sched.c makes it */
    luna_sampling sp = {req.do_sample ? req.temperature : 0.0f, req.do_sample ? req.top_k : 0,
                        req.do_sample ? req.top_p : 1.0f, req.repetition_penalty, req.seed};
    luna_sampler *smp = NULL;
    int src = luna_sampler_new(260, &sp, &smp);
    FUZZ_CHECK(src == 0, "the engine refuses an accepted request's sampling (%d): temperature %g top_k %d top_p %g "
               "repetition_penalty %g", src, sp.temperature, sp.top_k, sp.top_p, sp.repetition_penalty);
    luna_sampler_free(smp);
    FUZZ_CHECK(req.n_stop >= 0 && req.n_stop <= API_MAX_STOPS, "n_stop %d", req.n_stop);
    for (int i = 0; i < req.n_stop; i++) {
        FUZZ_CHECK(req.stop_len[i] >= 1 && req.stop_len[i] <= API_MAX_STOP_LEN, "stop %d: %zu bytes", i, req.stop_len[i]);
        fuzz_touch(req.stop[i], req.stop_len[i]);
    }
    for (size_t i = 0; i < req.n_prompts; i++) {
        FUZZ_CHECK(req.prompts[i].len <= MAX_INPUT, "prompt %zu has %zu bytes", i, req.prompts[i].len);
        fuzz_touch(req.prompts[i].data, req.prompts[i].len);
    }
    api_generate_set_meta(&req, "austen-lm", "fuzz-request-id", 1700000000);

    /* fake results: each choice "generates" a slice of the input itself (arbitrary bytes) */
    api_gen_result *res = calloc(req.n_prompts, sizeof *res);
    static const char *const finishes[3] = {"length", "eos_token", "stop_sequence"};
    for (size_t i = 0; i < req.n_prompts; i++) {
        size_t start = (i * 7) % (len + 1), n = len - start;
        if (n > (size_t)req.max_new_tokens) n = (size_t)req.max_new_tokens;
        res[i].out = (const uint8_t *)body + start;
        res[i].out_len = n;
        res[i].finish = finishes[(len + i) % 3];
        res[i].generated_tokens = n;
        res[i].prompt_tokens = req.prompts[i].len + 1;
        res[i].has_seed = req.do_sample;
        res[i].seed = req.seed;
        res[i].byte_offset = 4;
        res[i].bos_id = 0, res[i].eos_id = 1;
        /* log-probabilities of every kind the engine records: numbers, -inf, NAN (bos), ids of
         * bytes, of special tokens and -1 (no more) among the best */
        if (req.logprobs) res[i].gen = fake_logprobs(req.top_n, (size_t)req.max_new_tokens + 1, len + i);
        if (req.prompt_logprobs) res[i].prompt = fake_logprobs(req.top_n, req.prompts[i].len + 1, len * 3 + i);
        if (req.return_state) { /* a returned state: bytes of the body again (it is not checked here) */
            res[i].state = (const uint8_t *)body;
            res[i].state_len = len;
            res[i].state_tokens = n + 1;
            res[i].state_model_id = "00ff";
        }
    }
    if (req.state) {
        FUZZ_CHECK(req.n_prompts == 1, "a state with %zu prompts", req.n_prompts);
        fuzz_touch(req.state, req.state_len);
    }
    char *s = api_render_generate(&req, res);
    cJSON *j = fuzz_json_doc(s, "the generate answer");
    cJSON_Delete(j);

    /* each choice streamed: the events, and the answer says what they say */
    for (size_t i = 0; i < req.n_prompts; i++) {
        size_t n;
        char *said = fuzz_stream_choice(&req, i, &res[i], !strcmp(res[i].finish, "eos_token"), &n);
        fuzz_check_answer(&req, s, i, said, n);
        free(said);
    }
    free(s);
    int skip = 0;
    char *end = api_render_stream_end(&req, res, &skip);
    if (!skip) {
        fuzz_check_sse(end, 1, "the stream end");
        free(end);
    }
    api_error e;
    api_fail(&e, API_E_TIMEOUT, "the request's deadline passed after %d tokens", 3);
    char *se = api_render_stream_error(&req, &e);
    fuzz_check_sse(se, 0, "a stream error");
    free(se);

    for (size_t i = 0; i < req.n_prompts; i++) free_logprobs(&res[i].gen), free_logprobs(&res[i].prompt);
    free(res);
    api_generate_free(&req);
}

static void fuzz_score(const char *body, size_t len)
{
    api_limits lim = {MAX_INPUT, 0, "austen-lm"};
    api_score_req req;
    api_error err;
    memset(&err, 0, sizeof err);
    api_err rc = api_parse_score(body, len, &lim, &req, &err);
    if (rc != API_OK) {
        check_error(rc, &err);
        return;
    }
    FUZZ_CHECK(req.n_candidates >= 1 && req.n_candidates <= API_MAX_CANDIDATES, "%zu candidates", req.n_candidates);
    FUZZ_CHECK(req.prefix.len + req.longest <= MAX_INPUT && req.candidate_bytes <= MAX_INPUT, "past max-input-bytes");
    fuzz_touch(req.prefix.data, req.prefix.len);
    size_t sum = 0;
    api_score_result *res = calloc(req.n_candidates, sizeof *res);
    double *per = malloc((req.candidate_bytes + 1) * sizeof(double));
    FUZZ_CHECK(res && per, "out of memory");
    for (size_t i = 0; i < req.n_candidates; i++) {
        FUZZ_CHECK(req.candidates[i].len >= 1 && req.candidates[i].len <= req.longest, "candidate %zu: %zu bytes", i,
                   req.candidates[i].len);
        fuzz_touch(req.candidates[i].data, req.candidates[i].len);
        res[i] = (api_score_result){0, per + sum, req.candidates[i].len, (int)(i & 1)};
        for (size_t k = 0; k < req.candidates[i].len; k++)
            per[sum + k] = k % 5 == 4 ? -INFINITY : -(double)req.candidates[i].data[k] / 7;
        sum += req.candidates[i].len;
    }
    FUZZ_CHECK(sum == req.candidate_bytes, "candidate bytes %zu, counted %zu", req.candidate_bytes, sum);
    char *s = api_render_score(&req, res, "austen-lm", req.prefix.len + 1);
    cJSON *j = fuzz_json_doc(s, "the score answer");
    cJSON_Delete(j);
    free(s);
    free(per);
    free(res);
    api_score_free(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the server hands the parsers a NUL-terminated copy of exactly the body */
    char *body = malloc(size + 1);
    if (!body) return 0;
    memcpy(body, data, size);
    body[size] = 0;
    fuzz_classify(body, size);
    fuzz_classify_raw(data, size);
    fuzz_generate(body, size, 0);
    fuzz_generate(body, size, 1);
    fuzz_generate(body, size, 2);
    fuzz_score(body, size);
    free(body);
    return 0;
}
