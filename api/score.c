/* score.c - POST /score: a prefix and candidate continuations in, each candidate's
 * log-probability out (total and per token) with lm-evaluation-harness's is_greedy. The
 * numbers are the model's distribution (log-softmax of the raw logits), as the logprobs of
 * /generate and the OpenAI routes, so a candidate's total equals the sum of its bytes'
 * logprobs in an echo of prefix + candidate (to float rounding).
 *
 * Request: {"prefix": "text" | "prefix_base64": "...", "candidates": ["...", ...] |
 * "candidates_base64": ["...", ...], "token_logprobs": true, "model": "<the generator>"}. A
 * missing prefix is empty (the candidates follow bos alone). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/internal.h"

typedef struct {
    cJSON *tree;
    uint8_t *bytes;      /* decoded base64: the prefix, then each candidate */
    api_doc *candidates; /* (n_candidates) */
} score_storage;

void api_score_free(api_score_req *req)
{
    score_storage *st = req->storage;
    if (st) {
        cJSON_Delete(st->tree);
        free(st->bytes);
        free(st->candidates);
        free(st);
    }
    memset(req, 0, sizeof *req);
}

/* The text of v (a string), or its decoded base64 appended at *at; -1 when it is neither. */
static int doc_of(const cJSON *v, int b64, score_storage *st, size_t *at, api_doc *out)
{
    if (!cJSON_IsString(v)) return -1;
    size_t n = strlen(v->valuestring);
    if (!b64) {
        *out = (api_doc){(const uint8_t *)v->valuestring, n};
        return 0;
    }
    long got = api_base64_decode(v->valuestring, n, st->bytes + *at);
    if (got < 0) return -1;
    *out = (api_doc){st->bytes + *at, (size_t)got};
    *at += (size_t)got;
    return 0;
}

api_err api_parse_score(const char *body, size_t len, const api_limits *lim, api_score_req *req, api_error *err)
{
    memset(req, 0, sizeof *req);
    cJSON *root = api__parse_json(body, len, err);
    if (!root) return err->kind;
    score_storage *st = calloc(1, sizeof *st);
    if (!st) {
        cJSON_Delete(root);
        return api_fail(err, API_E_ENGINE_MEMORY, "out of memory parsing the request");
    }
    st->tree = root;
    req->storage = st;
    req->token_logprobs = 1;
    api_err rc;
    if (!cJSON_IsObject(root)) {
        rc = api_fail(err, API_E_VALIDATION, "the body must be a JSON object");
        goto fail;
    }
    static const char *const known[] = {"prefix", "prefix_base64", "candidates", "candidates_base64", "token_logprobs",
                                        "model", NULL};
    for (const cJSON *f = root->child; f; f = f->next) {
        size_t k = 0;
        while (known[k] && strcmp(known[k], f->string)) k++;
        if (!known[k]) {
            rc = api_fail(err, API_E_VALIDATION, "unknown field \"%.64s\"", f->string);
            goto fail;
        }
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (api__given(model) && (!cJSON_IsString(model) || !api__names_model(model->valuestring, lim->model))) {
        rc = api_fail(err, cJSON_IsString(model) ? API_E_MODEL_NOT_FOUND : API_E_VALIDATION,
                      "\"model\" must name the generation model \"%.128s\"", lim->model ? lim->model : "");
        err->param = "model";
        goto fail;
    }
    if ((rc = api__get_bool(root, "token_logprobs", &req->token_logprobs, err))) goto fail;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prefix"), *pb = cJSON_GetObjectItemCaseSensitive(root, "prefix_base64");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "candidates"), *cb = cJSON_GetObjectItemCaseSensitive(root, "candidates_base64");
    if (api__given(p) && api__given(pb)) {
        rc = api_fail(err, API_E_VALIDATION, "give at most one of \"prefix\" and \"prefix_base64\"");
        goto fail;
    }
    if (api__given(c) == api__given(cb)) {
        rc = api_fail(err, API_E_VALIDATION, "give exactly one of \"candidates\" and \"candidates_base64\"");
        goto fail;
    }
    const cJSON *cands = api__given(c) ? c : cb;
    const char *cname = api__given(c) ? "candidates" : "candidates_base64";
    int n = cJSON_IsArray(cands) ? cJSON_GetArraySize(cands) : -1;
    if (n < 1 || n > API_MAX_CANDIDATES) {
        rc = api_fail(err, API_E_VALIDATION, "\"%s\" must be a list of 1 to %d strings", cname, API_MAX_CANDIDATES);
        err->param = cname;
        goto fail;
    }
    /* room for the decoded base64: at most 3/4 of the text */
    size_t room = api__given(pb) && cJSON_IsString(pb) ? strlen(pb->valuestring) : 0;
    for (const cJSON *it = cands->child; it && api__given(cb); it = it->next)
        room += cJSON_IsString(it) ? strlen(it->valuestring) : 0;
    st->bytes = malloc(room / 4 * 3 + 1);
    st->candidates = malloc((size_t)n * sizeof *st->candidates);
    if (!st->bytes || !st->candidates) {
        rc = api_fail(err, API_E_ENGINE_MEMORY, "out of memory parsing the request");
        goto fail;
    }
    size_t at = 0;
    if ((api__given(p) || api__given(pb)) && doc_of(api__given(p) ? p : pb, api__given(pb), st, &at, &req->prefix)) {
        rc = api_fail(err, API_E_VALIDATION, "\"%s\" must be %s", api__given(p) ? "prefix" : "prefix_base64",
                      api__given(p) ? "a string" : "a base64 string");
        goto fail;
    }
    req->candidates = st->candidates;
    for (int i = 0; i < n; i++) {
        api_doc *d = &st->candidates[i];
        if (doc_of(cJSON_GetArrayItem(cands, i), api__given(cb), st, &at, d) || d->len == 0) {
            rc = api_fail(err, API_E_VALIDATION, "\"%s\"[%d] must be a non-empty %s", cname, i,
                          api__given(cb) ? "base64 string" : "string");
            err->param = cname;
            goto fail;
        }
        req->candidate_bytes += d->len;
        if (d->len > req->longest) req->longest = d->len;
    }
    req->n_candidates = (size_t)n;
    if (api__has_nul_escape(body, len) && !api__given(cb) && !api__given(pb)) {
        rc = api_fail(err, API_E_VALIDATION, "the text contains U+0000 (\\u0000), which cannot pass through JSON here; "
                      "send it in \"prefix_base64\" and \"candidates_base64\"");
        goto fail;
    }
    if (req->prefix.len + req->longest > lim->max_input_bytes || req->candidate_bytes > lim->max_input_bytes) {
        rc = api_fail(err, API_E_INPUT_TOO_LONG, "the prefix (%zu bytes) and its longest candidate (%zu), and the "
                      "candidates together (%zu), may each have at most max-input-bytes, %llu", req->prefix.len, req->longest,
                      req->candidate_bytes, (unsigned long long)lim->max_input_bytes);
        err->extra_key[0] = "max_input_bytes";
        err->extra_val[0] = (double)lim->max_input_bytes;
        goto fail;
    }
    return API_OK;
fail:
    api_score_free(req);
    return rc;
}

char *api_render_score(const api_score_req *req, const api_score_result *res, const char *model,
                       uint64_t prefix_tokens)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddNumberToObject(root, "prefix_tokens", (double)prefix_tokens); /* bos included */
    cJSON *scores = cJSON_AddArrayToObject(root, "scores");
    for (size_t i = 0; scores && i < req->n_candidates; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddItemToArray(scores, s);
        cJSON_AddNumberToObject(s, "index", (double)i);
        cJSON_AddNumberToObject(s, "logprob", res[i].logprob);
        cJSON_AddNumberToObject(s, "tokens", (double)res[i].tokens);
        cJSON_AddBoolToObject(s, "is_greedy", res[i].is_greedy);
        if (req->token_logprobs) {
            cJSON *a = cJSON_AddArrayToObject(s, "token_logprobs");
            for (size_t k = 0; a && k < res[i].tokens; k++) cJSON_AddItemToArray(a, cJSON_CreateNumber(res[i].per_token[k]));
        }
    }
    return api__print(root);
}
