/* openai.c - OpenAI's API on the same generation jobs: POST /v1/completions,
 * POST /v1/chat/completions (both streaming too) and GET /v1/models.
 *
 * A token is a byte: max_tokens counts bytes, usage counts prompt bytes and generated tokens.
 * Sampling is OpenAI's: temperature defaults to 1 and 0 is greedy. finish_reason is "length"
 * or "stop" (eos or a stop sequence). The model field of a request, when given, must name the
 * generator (its directory's base name, as GET /v1/models lists it; or TGI's "tgi", or a URL,
 * which Hugging Face's clients send for an endpoint): any other is 404 model_not_found, as
 * OpenAI and vLLM answer.
 *
 * Chat has no template in a byte-level LM, so this one is plain and documented: each message
 * becomes "<role>: <content>\n", then "assistant: " starts the answer; "\nuser:" is added to
 * the stop sequences, so that the model does not write the user's next turn. Content is a
 * string or a list of {"type": "text", "text"} parts.
 *
 * Log-probabilities (api/logprobs.c): completions' "logprobs": N (0..API_MAX_TOP_LOGPROBS; the
 * legacy {tokens, token_logprobs, top_logprobs, text_offset}, with "echo" the prompt's bytes
 * first, each scored after bos and the bytes before it, so none is null; "max_tokens": 0 with
 * echo scores the prompt alone, as lm-evaluation-harness does), chat's "logprobs": true and
 * "top_logprobs": N; in streams, each chunk carries its token's. The model's distribution,
 * before the sampler (as OpenAI and vLLM report it).
 *
 * A field OpenAI defines but this server does not implement (n > 1, tools, ...) is
 * refused with 422 naming it, unless it holds the neutral value that clients send by default;
 * unknown fields are refused too. vLLM's extra sampling parameters top_k and
 * repetition_penalty are accepted (clients such as Hugging Face's pass them through). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/internal.h"

#define CHAT_STOP "\nuser:"

/* ---- requests ---------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int supported; /* 1: parsed below; 0: accepted only at its neutral value */
} field;

static const field COMPLETION_FIELDS[] = {
    {"model", 1}, {"prompt", 1}, {"max_tokens", 1}, {"temperature", 1}, {"top_p", 1}, {"seed", 1},
    {"stop", 1}, {"stream", 1}, {"stream_options", 1}, {"n", 1}, {"echo", 1}, {"user", 1},
    {"top_k", 1}, {"repetition_penalty", 1}, /* vLLM's extra sampling parameters */
    {"state", 1}, {"return_state", 1},       /* portable states (api/state.c) */
    {"logprobs", 1}, {"best_of", 0}, {"presence_penalty", 0}, {"frequency_penalty", 0},
    {"logit_bias", 0}, {"suffix", 0}, {NULL, 0}};

static const field CHAT_FIELDS[] = {
    {"model", 1}, {"messages", 1}, {"max_tokens", 1}, {"max_completion_tokens", 1}, {"temperature", 1},
    {"top_p", 1}, {"seed", 1}, {"stop", 1}, {"stream", 1}, {"stream_options", 1}, {"n", 1}, {"user", 1},
    {"top_k", 1}, {"repetition_penalty", 1}, /* vLLM's extra sampling parameters */
    {"state", 1}, {"return_state", 1},       /* portable states (api/state.c) */
    {"logprobs", 1}, {"top_logprobs", 1}, {"presence_penalty", 0}, {"frequency_penalty", 0},
    {"logit_bias", 0}, {"tools", 0}, {"tool_choice", 0}, {"parallel_tool_calls", 0},
    {"response_format", 0}, {NULL, 0}};

/* A field's neutral value: what clients send when they mean "not used". */
static int neutral(const char *name, const cJSON *v)
{
    if (!api__given(v)) return 1;
    if (!strcmp(name, "best_of")) return cJSON_IsNumber(v) && v->valuedouble == 1;
    if (!strcmp(name, "presence_penalty") || !strcmp(name, "frequency_penalty"))
        return cJSON_IsNumber(v) && v->valuedouble == 0;
    if (!strcmp(name, "logit_bias")) return cJSON_IsObject(v) && !v->child;
    if (!strcmp(name, "suffix")) return cJSON_IsString(v) && !v->valuestring[0];
    if (!strcmp(name, "tools")) return cJSON_IsArray(v) && !v->child;
    if (!strcmp(name, "tool_choice")) return cJSON_IsString(v) && !strcmp(v->valuestring, "none");
    if (!strcmp(name, "parallel_tool_calls")) return cJSON_IsBool(v);
    if (!strcmp(name, "response_format")) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        return cJSON_IsString(t) && !strcmp(t->valuestring, "text");
    }
    return 0;
}

static api_err check_fields(const cJSON *root, const field *fields, api_error *err)
{
    for (const cJSON *f = root->child; f; f = f->next) {
        const field *k = fields;
        while (k->name && strcmp(k->name, f->string)) k++;
        if (!k->name) {
            api_fail(err, API_E_VALIDATION, "unknown field \"%.64s\"", f->string);
            return err->kind;
        }
        if (!k->supported && !neutral(k->name, f)) {
            api_fail(err, API_E_VALIDATION, "\"%s\" is not supported by this server", k->name);
            err->param = k->name;
            return err->kind;
        }
    }
    return API_OK;
}

/* The fields both endpoints share. */
static api_err parse_common(const cJSON *root, const api_gen_limits *lim, api_generate_req *req,
                            const char *max_name, api_error *err)
{
    api_err rc;
    double x;
    int set;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (api__given(model) && !cJSON_IsString(model))
        return api_fail(err, API_E_VALIDATION, "\"model\" must be a string"), err->param = "model", err->kind;
    if (api__given(model) && !api__names_model(model->valuestring, lim->model))
        return api_fail(err, API_E_MODEL_NOT_FOUND, "the model \"%.128s\" does not exist; this server serves \"%.128s\" "
                        "(GET /v1/models)", model->valuestring, lim->model), err->param = "model", err->kind;
    req->max_new_tokens = 16 < lim->max_new_tokens ? 16 : lim->max_new_tokens; /* OpenAI's default */
    /* 0 only with echo (completions): the prompt's log-probabilities and no new token */
    int echo = 0;
    if ((rc = api__get_bool(root, "echo", &echo, err))) return rc;
    if ((rc = api__get_num(root, max_name, echo ? 0 : 1, 0, lim->max_new_tokens, 1, &x, &set, err))) return rc;
    if (set) req->max_new_tokens = (int)x;
    if ((rc = api__get_float(root, "temperature", 0, 0, 2, &req->temperature, &set, err))) return rc;
    if ((rc = api__get_float(root, "top_p", 0, 1, 1, &req->top_p, &set, err))) return rc;
    if ((rc = api__get_num(root, "seed", 0, 0, 9007199254740992.0, 1, &x, &set, err))) return rc;
    if (set) req->seed = (uint64_t)x, req->has_seed = 1;
    if ((rc = api__get_num(root, "top_k", 1, 0, 1 << 24, 1, &x, &set, err))) return rc;
    if (set) req->top_k = (int)x;
    if ((rc = api__get_float(root, "repetition_penalty", 0, 1, 1e6, &req->repetition_penalty, &set, err))) return rc;
    if ((rc = api__get_num(root, "n", 1, 0, 1, 1, &x, &set, err))) {
        api_fail(err, API_E_VALIDATION, "\"n\" must be 1: this server returns one choice per prompt");
        err->param = "n";
        return err->kind;
    }
    if ((rc = api__parse_stop(root, req, err))) return rc;
    if ((rc = api__get_bool(root, "stream", &req->stream, err))) return rc;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (api__given(so)) {
        if (!cJSON_IsObject(so)) return api_fail(err, API_E_VALIDATION, "\"stream_options\" must be an object"), err->kind;
        for (const cJSON *f = so->child; f; f = f->next)
            if (strcmp(f->string, "include_usage") && strcmp(f->string, "continuous_usage_stats"))
                return api_fail(err, API_E_VALIDATION, "unknown field \"stream_options.%.64s\"", f->string), err->kind;
        if ((rc = api__get_bool(so, "include_usage", &req->include_usage, err))) return rc;
    }
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (api__given(user) && !cJSON_IsString(user))
        return api_fail(err, API_E_VALIDATION, "\"user\" must be a string"), err->kind;
    req->do_sample = req->temperature > 0;
    return API_OK;
}

static api_err begin(const char *body, size_t len, api_gen_format fmt, api_generate_req *req, cJSON **root,
                     const field *fields, api_error *err)
{
    memset(req, 0, sizeof *req); /* the callers' fail path frees it, even when the JSON is bad */
    *root = api__parse_json(body, len, err);
    if (!*root) return err->kind;
    api_err rc = api__gen_begin(req, fmt, *root, err);
    if (rc) return rc;
    if (!cJSON_IsObject(*root)) return api_fail(err, API_E_VALIDATION, "the body must be a JSON object");
    if (api__has_nul_escape(body, len))
        return api_fail(err, API_E_VALIDATION, "the text contains U+0000, which this server cannot pass through JSON");
    return check_fields(*root, fields, err);
}

api_err api_parse_completions(const char *body, size_t len, const api_gen_limits *lim,
                              api_generate_req *req, api_error *err)
{
    cJSON *root;
    api_err rc = begin(body, len, API_FMT_COMPLETION, req, &root, COMPLETION_FIELDS, err);
    if (rc) goto fail;
    if ((rc = parse_common(root, lim, req, "max_tokens", err))) goto fail;
    if ((rc = api__get_bool(root, "echo", &req->return_full_text, err))) goto fail;
    /* logprobs: null, false (clients' "none") or an integer 0..N: the best N and the chosen token */
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (api__given(lp) && !cJSON_IsFalse(lp)) {
        double x;
        int set;
        if (!cJSON_IsNumber(lp)) {
            rc = api_fail(err, API_E_VALIDATION, "\"logprobs\" must be an integer in [0, %d] (the best tokens to list "
                          "per position) or null", API_MAX_TOP_LOGPROBS);
            err->param = "logprobs";
            goto fail;
        }
        if ((rc = api__get_num(root, "logprobs", 0, 0, API_MAX_TOP_LOGPROBS, 1, &x, &set, err))) goto fail;
        req->logprobs = 1;
        req->top_n = (int)x;
        req->prompt_logprobs = req->return_full_text;
    }
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    size_t n = cJSON_IsArray(p) ? (size_t)cJSON_GetArraySize(p) : 1;
    if (!api__given(p) || !(cJSON_IsString(p) || cJSON_IsArray(p)) || n == 0 || n > API_MAX_PROMPTS) {
        rc = api_fail(err, API_E_VALIDATION, "\"prompt\" must be a string or a list of 1 to %d strings", API_MAX_PROMPTS);
        err->param = "prompt";
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const cJSON *it = cJSON_IsArray(p) ? cJSON_GetArrayItem(p, (int)i) : p;
        if (!cJSON_IsString(it)) { /* OpenAI also takes token ids; a byte LM has no tokenizer to agree on */
            rc = api_fail(err, API_E_VALIDATION, "\"prompt\" must be text (a string or a list of strings)");
            err->param = "prompt";
            goto fail;
        }
        size_t sl = strlen(it->valuestring);
        if (sl > lim->max_input_bytes) {
            rc = api_fail(err, API_E_INPUT_TOO_LONG, "prompt %zu has %zu bytes; max-input-bytes is %llu", i, sl,
                          (unsigned long long)lim->max_input_bytes);
            err->param = "prompt";
            goto fail;
        }
        req->prompts[i] = (api_doc){(const uint8_t *)it->valuestring, sl};
    }
    req->n_prompts = n;
    if ((rc = api__parse_state(root, root, req, err))) goto fail;
    if ((rc = api__check_prompt_logprobs(req, "logprobs", err))) goto fail;
    return API_OK;
fail:
    api_generate_free(req);
    return rc;
}

/* The text of a message's content: a string, or the text parts of a list. Appends to b. */
static int content_text(const cJSON *c, char *b, size_t *at, size_t cap)
{
    if (cJSON_IsString(c)) {
        size_t n = strlen(c->valuestring);
        if (b) memcpy(b + *at, c->valuestring, n);
        *at += n;
        return *at <= cap ? 0 : -1;
    }
    if (!cJSON_IsArray(c)) return -1;
    for (const cJSON *part = c->child; part; part = part->next) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) return -1;
        if (content_text(text, b, at, cap)) return -1;
    }
    return 0;
}

/* Renders messages with the plain template into b (NULL: just measure); returns the length,
 * or -1 with *bad set to the index of a malformed message. */
static long render_chat(const cJSON *msgs, char *b, int *bad)
{
    size_t at = 0;
    int i = 0;
    for (const cJSON *m = msgs->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role) || !role->valuestring[0] || strchr(role->valuestring, '\n') ||
            !api__given(content)) {
            *bad = i;
            return -1;
        }
        size_t rl = strlen(role->valuestring);
        if (b) memcpy(b + at, role->valuestring, rl), memcpy(b + at + rl, ": ", 2);
        at += rl + 2;
        if (content_text(content, b, &at, SIZE_MAX)) {
            *bad = i;
            return -1;
        }
        if (b) b[at] = '\n';
        at++;
    }
    if (b) memcpy(b + at, "assistant: ", 11);
    return (long)(at + 11);
}

api_err api_parse_chat(const char *body, size_t len, const api_gen_limits *lim, api_generate_req *req,
                       api_error *err)
{
    cJSON *root;
    api_err rc = begin(body, len, API_FMT_CHAT, req, &root, CHAT_FIELDS, err);
    if (rc) goto fail;
    const char *max_name = api__given(cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens"))
                               ? "max_completion_tokens" : "max_tokens";
    if ((rc = parse_common(root, lim, req, max_name, err))) goto fail;
    if ((rc = api__get_bool(root, "logprobs", &req->logprobs, err))) goto fail;
    double x;
    int set;
    if ((rc = api__get_num(root, "top_logprobs", 0, 0, API_MAX_TOP_LOGPROBS, 1, &x, &set, err))) goto fail;
    if (set) req->top_n = (int)x;
    if (req->top_n && !req->logprobs) { /* as OpenAI */
        rc = api_fail(err, API_E_VALIDATION, "\"top_logprobs\" needs \"logprobs\": true");
        err->param = "top_logprobs";
        goto fail;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(msgs) || !msgs->child) {
        rc = api_fail(err, API_E_VALIDATION, "\"messages\" must be a non-empty list");
        err->param = "messages";
        goto fail;
    }
    int bad = -1;
    long n = render_chat(msgs, NULL, &bad);
    if (n < 0) {
        rc = api_fail(err, API_E_VALIDATION, "messages[%d] needs a \"role\" (one line) and a \"content\" "
                      "(a string or a list of {\"type\": \"text\", \"text\"} parts)", bad);
        err->param = "messages";
        goto fail;
    }
    if ((uint64_t)n > lim->max_input_bytes) {
        rc = api_fail(err, API_E_INPUT_TOO_LONG, "the conversation is %ld bytes once rendered; max-input-bytes is %llu", n,
                      (unsigned long long)lim->max_input_bytes);
        err->param = "messages";
        goto fail;
    }
    api__gen_storage *st = req->storage;
    if (!(st->bytes = malloc((size_t)n + 1))) {
        rc = api_fail(err, API_E_ENGINE_MEMORY, "out of memory rendering the conversation");
        goto fail;
    }
    render_chat(msgs, (char *)st->bytes, &bad);
    req->prompts[0] = (api_doc){st->bytes, (size_t)n};
    if (req->n_stop < API_MAX_STOPS) { /* the user's next turn */
        req->stop[req->n_stop] = (const uint8_t *)CHAT_STOP;
        req->stop_len[req->n_stop++] = strlen(CHAT_STOP);
    }
    if ((rc = api__parse_state(root, root, req, err))) goto fail;
    return API_OK;
fail:
    api_generate_free(req);
    return rc;
}

/* ---- answers ------------------------------------------------------------------------------------- */

static const char *finish_reason(const api_gen_result *r)
{
    return strcmp(r->finish, "length") ? "stop" : "length";
}

static cJSON *head(const api_generate_req *req, const char *object)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "id", req->id);
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)req->created);
    cJSON_AddStringToObject(root, "model", req->model);
    return root;
}

static void add_usage(cJSON *root, const api_generate_req *req, const api_gen_result *res)
{
    uint64_t prompt = 0, completion = 0, cached = 0;
    for (size_t i = 0; i < req->n_prompts; i++) {
        prompt += req->prompts[i].len;
        completion += res[i].generated_tokens;
        cached += res[i].cached_tokens ? res[i].cached_tokens - 1 : 0; /* OpenAI's tokens: no bos */
    }
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)completion);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(prompt + completion));
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens", (double)cached);
}

char *api__render_openai(const api_generate_req *req, const api_gen_result *res)
{
    int chat = req->format == API_FMT_CHAT;
    cJSON *root = head(req, chat ? "chat.completion" : "text_completion");
    if (!root) return NULL;
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    for (size_t i = 0; i < req->n_prompts; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, c);
        cJSON_AddNumberToObject(c, "index", (double)i);
        cJSON *holder = c;
        const char *key = "text";
        if (chat) {
            holder = cJSON_AddObjectToObject(c, "message");
            cJSON_AddStringToObject(holder, "role", "assistant");
            key = "content";
        }
        const api_doc *p = &req->prompts[i];
        if (api__add_text(holder, key, req->return_full_text ? p->data : NULL, req->return_full_text ? p->len : 0,
                          res[i].out, res[i].out_len)) {
            cJSON_Delete(root);
            return NULL;
        }
        if (!req->logprobs) cJSON_AddNullToObject(c, "logprobs");
        else if (!cJSON_AddItemToObject(c, "logprobs",
                                        chat ? api__chat_logprobs(&res[i], res[i].out, 0, res[i].out_len)
                                             : api__completion_logprobs(&res[i], req->prompt_logprobs ? p->data : NULL,
                                                                        p->len, res[i].out, 0, res[i].out_len, 0))) {
            cJSON_Delete(root);
            return NULL;
        }
        cJSON_AddStringToObject(c, "finish_reason", finish_reason(&res[i]));
        if (api__add_state(c, &res[i])) {
            cJSON_Delete(root);
            return NULL;
        }
    }
    add_usage(root, req, res);
    return api__print(root);
}

char *api__render_openai_chunk(const api_generate_req *req, const api_stream_token *t, int *skip)
{
    int chat = req->format == API_FMT_CHAT;
    int echo = !chat && req->return_full_text && t->first; /* echo: the prompt comes first */
    /* the token's log-probabilities go in its chunk, text or not (a byte inside a character) */
    int has_lp = req->logprobs && t->lps && t->id >= 0 && t->id != t->lps->eos_id;
    /* nothing to say: no text, not a first chunk that names the role or echoes, not the end */
    if (!t->text_len && !t->res && !(t->first && (chat || echo)) && !has_lp) {
        *skip = 1;
        return NULL;
    }
    cJSON *root = head(req, chat ? "chat.completion.chunk" : "text_completion");
    if (!root) return NULL;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "choices"), c);
    cJSON_AddNumberToObject(c, "index", (double)t->choice);
    cJSON *holder = c;
    const char *key = "text";
    if (chat) {
        holder = cJSON_AddObjectToObject(c, "delta");
        if (t->first) cJSON_AddStringToObject(holder, "role", "assistant");
        key = "content";
    }
    const api_doc *p = &req->prompts[t->choice];
    if (api__add_text(holder, key, echo ? p->data : NULL, echo ? p->len : 0, (const uint8_t *)t->text,
                      t->text_len)) {
        cJSON_Delete(root);
        return NULL;
    }
    if (!req->logprobs || (!has_lp && !echo)) {
        cJSON_AddNullToObject(c, "logprobs");
    } else {
        uint8_t byte = t->bytes && t->n_bytes ? t->bytes[0] : 0;
        size_t k = t->index - 1, to = has_lp ? k + 1 : k;
        /* the echoed prompt's bytes (first chunk), then the token's */
        cJSON *lp = chat ? api__chat_logprobs(t->lps, &byte, k, to)
                         : api__completion_logprobs(t->lps, echo && req->prompt_logprobs ? p->data : NULL, p->len,
                                                    &byte, k, to,
                                                    echo && req->prompt_logprobs ? 0 : (req->return_full_text ? p->len : 0) + k);
        if (!lp) {
            cJSON_Delete(root);
            return NULL;
        }
        cJSON_AddItemToObject(c, "logprobs", lp);
    }
    if (t->res) cJSON_AddStringToObject(c, "finish_reason", finish_reason(t->res));
    else cJSON_AddNullToObject(c, "finish_reason");
    if (t->res && api__add_state(c, t->res)) {
        cJSON_Delete(root);
        return NULL;
    }
    return api__sse(api__print(root));
}

char *api__render_openai_end(const api_generate_req *req, const api_gen_result *res)
{
    char *usage = NULL;
    if (req->include_usage) { /* OpenAI: a last chunk with no choices and the usage */
        cJSON *root = head(req, req->format == API_FMT_CHAT ? "chat.completion.chunk" : "text_completion");
        if (!root) return NULL;
        cJSON_AddArrayToObject(root, "choices");
        add_usage(root, req, res);
        if (!(usage = api__sse(api__print(root)))) return NULL;
    }
    static const char done[] = "data: [DONE]\n\n";
    size_t n = usage ? strlen(usage) : 0;
    char *s = malloc(n + sizeof done);
    if (s) {
        if (usage) memcpy(s, usage, n);
        memcpy(s + n, done, sizeof done);
    }
    free(usage);
    return s;
}

char *api_render_models(const api_model_card *models, int n)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    for (int i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", models[i].id);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)models[i].created);
        cJSON_AddStringToObject(m, "owned_by", "lunaserve");
        cJSON_AddStringToObject(m, "task", models[i].task);
        cJSON_AddItemToArray(data, m);
    }
    return api__print(root);
}
