/* generate.c - POST /generate and /generate_stream: TGI's request, its answer and its
 * server-sent events.
 *
 * Request: {"inputs": "text" | "inputs_base64": "...", "stream": bool, "parameters": {
 *   "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
 *   "seed", "stop": [...], "details", "return_full_text", "truncate", "return_raw_bytes",
 *   "top_n_tokens" (0..API_MAX_TOP_LOGPROBS), "decoder_input_details" (not with a stream, as in
 *   TGI), and TGI's best_of, frequency_penalty, grammar, typical_p, watermark, adapter_id,
 *   which are accepted only at their neutral values}}.
 * Log-probabilities (api/logprobs.c) are the model's distribution, before the sampler.
 * Every parameter may be null, which means "not given": TGI's own clients send them all.
 *
 * Sampling follows TGI: greedy unless do_sample is true or a warper is set (temperature != 1,
 * top_k, top_p < 1). temperature 0 also means greedy (llama.cpp's convention). A request that
 * samples without a seed gets one from the server, reported in details.seed.
 *
 * Output text: the model emits bytes; the text fields carry them as UTF-8 with every invalid
 * sequence replaced by U+FFFD (api/utf8.h). With "return_raw_bytes": true the exact bytes
 * come too, base64-encoded. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/internal.h"
#include "api/utf8.h"

#define given api__given

/* A JSON value that means "not given": absent or null. */
int api__given(const cJSON *v) { return v && !cJSON_IsNull(v); }

int api__names_model(const char *model, const char *served)
{
    return !served || !strcmp(model, served) || !strcmp(model, "tgi") || !strncmp(model, "http://", 7) ||
           !strncmp(model, "https://", 8);
}

static const char *const SUPPORTED[] = {
    "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed",
    "stop", "details", "return_full_text", "truncate", "return_raw_bytes", "return_state", "top_n_tokens",
    "decoder_input_details", NULL};
/* TGI's parameters that this server does not implement: fine at TGI's defaults (null, false,
 * 0 or 1), refused otherwise, since the request would silently get something else. */
static const char *const NEUTRAL_ONLY[] = {"best_of", "frequency_penalty", "grammar", "typical_p",
                                           "watermark", "adapter_id", NULL};

static int listed(const char *const *names, const char *name)
{
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], name)) return 1;
    return 0;
}

static int neutral(const char *name, const cJSON *v)
{
    if (!given(v)) return 1;
    if (!strcmp(name, "best_of") || !strcmp(name, "typical_p")) return cJSON_IsNumber(v) && v->valuedouble == 1;
    if (!strcmp(name, "watermark")) return cJSON_IsFalse(v);
    if (!strcmp(name, "frequency_penalty")) return cJSON_IsNumber(v) && v->valuedouble == 0;
    return 0; /* grammar, adapter_id */
}

api_err api__get_bool(const cJSON *p, const char *name, int *out, api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, name);
    if (!given(v)) return API_OK;
    if (!cJSON_IsBool(v)) return api_fail(err, API_E_VALIDATION, "\"%s\" must be true or false", name);
    *out = cJSON_IsTrue(v);
    return API_OK;
}

api_err api__get_num(const cJSON *p, const char *name, double lo, int lo_open, double hi, int integer,
                       double *out, int *set, api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, name);
    *set = 0;
    if (!given(v)) return API_OK;
    double x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(x) || (integer && x != floor(x)) || (lo_open ? x <= lo : x < lo) || x > hi)
        return api_fail(err, API_E_VALIDATION, "\"%s\" must be %s in %c%g, %g]", name,
                        integer ? "an integer" : "a number", lo_open ? '(' : '[', lo, hi), err->param = name, err->kind;
    *out = x;
    *set = 1;
    return API_OK;
}

api_err api__get_float(const cJSON *p, const char *name, double lo, int lo_open, double hi, float *out,
                       int *set, api_error *err)
{
    double x = 0;
    api_err rc = api__get_num(p, name, lo, lo_open, hi, 0, &x, set, err);
    if (rc || !*set) return rc;
    /* the engine samples in float: a double in range may round out of it there (top_p 1e-46
     * is 0.0f), and the engine would refuse it once the request runs (a 500, or a stream that
     * has sent its 200); so the range is checked again on the float the engine gets */
    float f = (float)x;
    if (!isfinite(f) || (lo_open ? !(f > (float)lo) : !(f >= (float)lo)) || !(f <= (float)hi)) {
        *set = 0;
        api_fail(err, API_E_VALIDATION, "\"%s\" is %g, which is %g as a 32-bit float; it must be in %c%g, %g] as one",
                 name, x, (double)f, lo_open ? '(' : '[', lo, hi);
        err->param = name;
        return err->kind;
    }
    *out = f;
    return API_OK;
}

api_err api__parse_stop(const cJSON *p, api_generate_req *req, api_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, "stop");
    if (!given(v)) return API_OK;
    if (cJSON_IsString(v)) { /* one string: as OpenAI allows */
        req->stop[0] = (const uint8_t *)v->valuestring;
        req->stop_len[0] = strlen(v->valuestring);
        req->n_stop = 1;
    } else if (cJSON_IsArray(v)) {
        int n = cJSON_GetArraySize(v);
        if (n > API_MAX_STOPS)
            return api_fail(err, API_E_VALIDATION, "\"stop\" has %d sequences; at most %d", n, API_MAX_STOPS);
        for (int i = 0; i < n; i++) {
            const cJSON *s = cJSON_GetArrayItem(v, i);
            if (!cJSON_IsString(s)) return api_fail(err, API_E_VALIDATION, "\"stop\"[%d] must be a string", i);
            req->stop[i] = (const uint8_t *)s->valuestring;
            req->stop_len[i] = strlen(s->valuestring);
        }
        req->n_stop = n;
    } else {
        return api_fail(err, API_E_VALIDATION, "\"stop\" must be a list of strings");
    }
    for (int i = 0; i < req->n_stop; i++)
        if (req->stop_len[i] == 0 || req->stop_len[i] > API_MAX_STOP_LEN)
            return api_fail(err, API_E_VALIDATION, "\"stop\"[%d] must have 1 to %d bytes", i, API_MAX_STOP_LEN);
    return API_OK;
}

static api_err parse_parameters(const cJSON *p, const api_gen_limits *lim, api_generate_req *req,
                                api_error *err)
{
    api_err rc;
    if (!given(p)) return API_OK;
    if (!cJSON_IsObject(p)) return api_fail(err, API_E_VALIDATION, "\"parameters\" must be an object");
    for (const cJSON *f = p->child; f; f = f->next) {
        if (listed(SUPPORTED, f->string)) continue;
        if (!listed(NEUTRAL_ONLY, f->string))
            return api_fail(err, API_E_VALIDATION, "unknown parameter \"%.64s\"", f->string);
        if (!neutral(f->string, f))
            return api_fail(err, API_E_VALIDATION, "parameter \"%s\" is not supported here, except at its default", f->string);
    }
    double x;
    int set;
    if ((rc = api__get_num(p, "max_new_tokens", 1, 0, lim->max_new_tokens, 1, &x, &set, err))) return rc;
    if (set) req->max_new_tokens = (int)x;
    if ((rc = api__get_bool(p, "do_sample", &req->do_sample, err))) return rc;
    if ((rc = api__get_float(p, "temperature", 0, 0, 1e6, &req->temperature, &set, err))) return rc;
    if (set && req->temperature != 1) req->do_sample = 1; /* a warper: TGI samples */
    if ((rc = api__get_num(p, "top_k", 1, 0, 1 << 24, 1, &x, &set, err))) return rc;
    if (set) req->top_k = (int)x, req->do_sample = 1;
    if ((rc = api__get_float(p, "top_p", 0, 1, 1, &req->top_p, &set, err))) return rc;
    if (set && req->top_p < 1) req->do_sample = 1;
    if ((rc = api__get_float(p, "repetition_penalty", 0, 1, 1e6, &req->repetition_penalty, &set, err))) return rc;
    if ((rc = api__get_num(p, "seed", 0, 0, 9007199254740992.0, 1, &x, &set, err))) return rc;
    if (set) req->seed = (uint64_t)x, req->has_seed = 1;
    if ((rc = api__parse_stop(p, req, err))) return rc;
    if ((rc = api__get_bool(p, "details", &req->details, err))) return rc;
    if ((rc = api__get_bool(p, "return_full_text", &req->return_full_text, err))) return rc;
    if ((rc = api__get_bool(p, "return_raw_bytes", &req->raw_bytes, err))) return rc;
    if ((rc = api__get_num(p, "top_n_tokens", 0, 0, API_MAX_TOP_LOGPROBS, 1, &x, &set, err))) return rc;
    if (set) req->top_n = (int)x;
    if ((rc = api__get_bool(p, "decoder_input_details", &req->prompt_logprobs, err))) return rc;
    if ((rc = api__get_num(p, "truncate", 1, 0, 1e15, 1, &x, &set, err))) return rc;
    if (set && (size_t)x < req->prompts[0].len) { /* keep the end of the prompt, as TGI does */
        req->prompts[0].data += req->prompts[0].len - (size_t)x;
        req->prompts[0].len = (size_t)x;
    }
    if (req->temperature == 0) req->do_sample = 0; /* temperature 0: greedy */
    return API_OK;
}

api_err api__gen_begin(api_generate_req *req, api_gen_format fmt, cJSON *root, api_error *err)
{
    memset(req, 0, sizeof *req);
    req->format = fmt;
    req->temperature = 1.0f;
    req->top_p = 1.0f;
    req->repetition_penalty = 1.0f;
    api__gen_storage *st = calloc(1, sizeof *st);
    if (!st) {
        cJSON_Delete(root);
        return api_fail(err, API_E_ENGINE_MEMORY, "out of memory parsing the request");
    }
    st->tree = root;
    req->storage = st;
    req->prompts = st->docs;
    req->n_prompts = 1;
    return API_OK;
}

api_err api_parse_generate(const char *body, size_t len, const api_gen_limits *lim,
                           api_generate_req *req, api_error *err)
{
    cJSON *root = api__parse_json(body, len, err);
    if (!root) return err->kind;
    api_err rc = api__gen_begin(req, API_FMT_TGI, root, err);
    if (rc) return rc;
    req->max_new_tokens = lim->default_new_tokens < lim->max_new_tokens ? lim->default_new_tokens : lim->max_new_tokens;
    api__gen_storage *st = req->storage;
    if (!cJSON_IsObject(root)) {
        rc = api_fail(err, API_E_VALIDATION, "the body must be a JSON object");
        goto fail;
    }
    for (const cJSON *f = root->child; f; f = f->next)
        if (strcmp(f->string, "inputs") && strcmp(f->string, "inputs_base64") && strcmp(f->string, "parameters") &&
            strcmp(f->string, "stream") && strcmp(f->string, "state")) {
            rc = api_fail(err, API_E_VALIDATION, "unknown field \"%.64s\"", f->string);
            goto fail;
        }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    const cJSON *b64 = cJSON_GetObjectItemCaseSensitive(root, "inputs_base64");
    if (given(text) == given(b64)) {
        rc = api_fail(err, API_E_VALIDATION, "give exactly one of \"inputs\" and \"inputs_base64\"");
        goto fail;
    }
    const cJSON *in = given(text) ? text : b64;
    if (!cJSON_IsString(in)) {
        rc = api_fail(err, API_E_VALIDATION, "\"%s\" must be a string", given(text) ? "inputs" : "inputs_base64");
        goto fail;
    }
    size_t sl = strlen(in->valuestring);
    if (given(b64)) {
        if (!(st->bytes = malloc(sl / 4 * 3 + 1))) {
            rc = api_fail(err, API_E_ENGINE_MEMORY, "out of memory decoding inputs_base64");
            goto fail;
        }
        long got = api_base64_decode(in->valuestring, sl, st->bytes);
        if (got < 0) {
            rc = api_fail(err, API_E_VALIDATION, "\"inputs_base64\" is not valid base64");
            goto fail;
        }
        req->prompts[0] = (api_doc){st->bytes, (size_t)got};
    } else {
        req->prompts[0] = (api_doc){(const uint8_t *)in->valuestring, sl};
    }
    /* cJSON ends a string at \u0000, so a prompt or a stop sequence that holds one would be
     * silently cut: refused, whichever string it is in (base64 prompts carry NUL bytes) */
    if (api__has_nul_escape(body, len)) {
        rc = api_fail(err, API_E_VALIDATION, "%s contains U+0000 (\\u0000), which cannot pass through JSON here; "
                      "send prompts with NUL bytes in \"inputs_base64\" (stop sequences cannot hold one)",
                      given(text) ? "\"inputs\" or another string" : "a string of the body");
        goto fail;
    }
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (given(stream) && !cJSON_IsBool(stream)) {
        rc = api_fail(err, API_E_VALIDATION, "\"stream\" must be true or false");
        goto fail;
    }
    req->stream = cJSON_IsTrue(stream);
    if ((rc = parse_parameters(cJSON_GetObjectItemCaseSensitive(root, "parameters"), lim, req, err)))
        goto fail;
    if (req->prompt_logprobs && req->stream) { /* as TGI: the prefill is in details, which a stream's events lack */
        rc = api_fail(err, API_E_VALIDATION, "\"decoder_input_details\" is not supported with a stream");
        err->param = "decoder_input_details";
        goto fail;
    }
    /* the generated tokens' log-probabilities: TGI shows them in details and in every stream
     * event (/generate_stream sets the stream after parsing): always */
    req->logprobs = 1;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if ((rc = api__parse_state(root, cJSON_IsObject(params) ? params : NULL, req, err))) goto fail;
    if ((rc = api__check_prompt_logprobs(req, "decoder_input_details", err))) goto fail;
    if (req->prompts[0].len > lim->max_input_bytes) {
        rc = api_fail(err, API_E_INPUT_TOO_LONG, "the prompt has %zu bytes; max-input-bytes is %llu (or set \"truncate\")",
                      req->prompts[0].len, (unsigned long long)lim->max_input_bytes);
        err->extra_key[0] = "max_input_bytes";
        err->extra_val[0] = (double)lim->max_input_bytes;
        goto fail;
    }
    return API_OK;
fail:
    api_generate_free(req);
    return rc;
}

void api_generate_free(api_generate_req *req)
{
    api__gen_storage *st = req->storage;
    if (st) {
        cJSON_Delete(st->tree);
        free(st->bytes);
        free(st->state);
        free(st);
    }
    memset(req, 0, sizeof *req);
}

void api_generate_set_meta(api_generate_req *req, const char *model, const char *request_id,
                           long long created)
{
    snprintf(req->model, sizeof req->model, "%s", model);
    snprintf(req->id, sizeof req->id, "%s%s", req->format == API_FMT_CHAT ? "chatcmpl-" : "cmpl-", request_id);
    req->created = created;
}

/* ---- answers ----------------------------------------------------------------------------- */

int api__add_string(cJSON *o, const char *name, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t len = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t') len += 2;
        else len += c < 0x20 ? 6 : 1;
    }
    char *q = malloc(len + 1), *w = q;
    if (!q) return -1;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) { /* as cJSON's print_string_ptr escapes */
        unsigned char c = (unsigned char)s[i];
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b" : c == '\f' ? "\\f"
                          : c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        if (esc) {
            *w++ = esc[0];
            *w++ = esc[1];
        } else if (c < 0x20) {
            memcpy(w, "\\u00", 4);
            w[4] = hex[c >> 4];
            w[5] = hex[c & 15];
            w += 6;
        } else {
            *w++ = (char)c;
        }
    }
    *w++ = '"';
    *w = 0;
    int rc = cJSON_AddRawToObject(o, name, q) ? 0 : -1;
    free(q);
    return rc;
}

int api__add_text(cJSON *o, const char *name, const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
    char *t = malloc(API_UTF8_MAX_OUT(na) + API_UTF8_MAX_OUT(nb));
    if (!t) return -1;
    /* each on its own: a prompt that ends inside a character stays U+FFFD whatever follows, as
     * in a stream, which sends the prompt (echo) before any output */
    size_t n = api_utf8_sanitize(a, na, t);
    n += api_utf8_sanitize(b, nb, t + n);
    int rc = api__add_string(o, name, t, n);
    free(t);
    return rc;
}

static void add_details(cJSON *o, const api_gen_result *res)
{
    cJSON *d = cJSON_AddObjectToObject(o, "details");
    cJSON_AddStringToObject(d, "finish_reason", res->finish);
    cJSON_AddNumberToObject(d, "generated_tokens", (double)res->generated_tokens);
    cJSON_AddNumberToObject(d, "input_length", (double)res->prompt_tokens); /* tokens, bos included */
    if (res->has_seed) { /* as integer text: a double would print large seeds with an exponent */
        char num[24];
        snprintf(num, sizeof num, "%llu", (unsigned long long)res->seed);
        cJSON_AddRawToObject(d, "seed", num);
    } else {
        cJSON_AddNullToObject(d, "seed");
    }
}

char *api__print(cJSON *root)
{
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *api_render_generate(const api_generate_req *req, const api_gen_result *res)
{
    if (req->format != API_FMT_TGI) return api__render_openai(req, res);
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    const api_doc *p = &req->prompts[0];
    if (api__add_text(root, "generated_text", req->return_full_text ? p->data : NULL,
                      req->return_full_text ? p->len : 0, res->out, res->out_len)) {
        cJSON_Delete(root);
        return NULL;
    }
    if (req->details) {
        add_details(root, res);
        /* one token per byte: the text each completes (UTF-8 in stream order) */
        cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "details");
        cJSON_AddItemToObject(d, "prefill", req->prompt_logprobs ? api__tgi_prefill(res, p->data, p->len)
                                                                  : cJSON_CreateArray());
        cJSON *toks = cJSON_AddArrayToObject(d, "tokens");
        cJSON *tops = req->top_n ? cJSON_AddArrayToObject(d, "top_tokens") : NULL; /* TGI: one list per token */
        api_utf8 u = {0};
        char t[API_UTF8_MAX_OUT(1)];
        for (size_t i = 0; i < res->out_len; i++) {
            size_t n = api_utf8_feed(&u, res->out + i, 1, t);
            if (i + 1 == res->out_len) n += api_utf8_finish(&u, t + n);
            cJSON *tk = cJSON_CreateObject();
            cJSON_AddNumberToObject(tk, "id", res->byte_offset + res->out[i]);
            if (!tk || api__add_string(tk, "text", t, n)) {
                cJSON_Delete(tk);
                cJSON_Delete(root);
                return NULL;
            }
            api__tgi_logprob(tk, &res->gen, i);
            cJSON_AddBoolToObject(tk, "special", 0);
            cJSON_AddItemToArray(toks, tk);
            if (tops) cJSON_AddItemToArray(tops, api__tgi_top(res, &res->gen, i));
        }
    }
    if (req->raw_bytes) {
        char *b = api_base64_encode(res->out, res->out_len);
        if (!b) {
            cJSON_Delete(root);
            return NULL;
        }
        cJSON_AddStringToObject(root, "generated_bytes_base64", b);
        free(b);
    }
    if (api__add_state(root, res)) {
        cJSON_Delete(root);
        return NULL;
    }
    return api__print(root);
}

char *api__sse(char *json)
{
    if (!json) return NULL;
    size_t n = strlen(json);
    char *s = malloc(n + 9);
    if (s) {
        memcpy(s, "data: ", 6);
        memcpy(s + 6, json, n);
        memcpy(s + 6 + n, "\n\n", 3);
    }
    free(json);
    return s;
}

char *api_render_stream_token(const api_generate_req *req, const api_stream_token *t, int *skip)
{
    *skip = 0;
    if (req->format != API_FMT_TGI) return api__render_openai_chunk(req, t, skip);
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddNumberToObject(root, "index", (double)t->index);
    cJSON *tk = cJSON_AddObjectToObject(root, "token");
    cJSON_AddNumberToObject(tk, "id", t->id);
    if (api__add_text(tk, "text", (const uint8_t *)t->text, t->text_len, NULL, 0)) {
        cJSON_Delete(root);
        return NULL;
    }
    /* the token's log-probability: entry index - 1 (the closing event of a stop or length, id -1,
     * stands for no token) */
    int has_lp = req->logprobs && t->lps && t->id >= 0;
    api__tgi_logprob(tk, has_lp ? &t->lps->gen : &(api_logprobs){0}, has_lp ? t->index - 1 : 0);
    cJSON_AddBoolToObject(tk, "special", t->special);
    if (req->top_n) /* TGI: at the event's top level, one entry per best token */
        cJSON_AddItemToObject(root, "top_tokens", has_lp ? api__tgi_top(t->lps, &t->lps->gen, t->index - 1)
                                                         : cJSON_CreateArray());
    if (req->raw_bytes) {
        char *b = api_base64_encode(t->bytes, t->bytes ? t->n_bytes : 0);
        if (!b) {
            cJSON_Delete(root);
            return NULL;
        }
        cJSON_AddStringToObject(tk, "bytes_base64", b);
        free(b);
    }
    if (t->res) {
        const api_doc *p = &req->prompts[0];
        if (api__add_text(root, "generated_text", req->return_full_text ? p->data : NULL,
                          req->return_full_text ? p->len : 0, t->res->out, t->res->out_len)) {
            cJSON_Delete(root);
            return NULL;
        }
        add_details(root, t->res);
        if (api__add_state(root, t->res)) {
            cJSON_Delete(root);
            return NULL;
        }
    } else {
        cJSON_AddNullToObject(root, "generated_text");
        cJSON_AddNullToObject(root, "details");
    }
    return api__sse(api__print(root));
}

char *api_render_stream_end(const api_generate_req *req, const api_gen_result *res, int *skip)
{
    *skip = req->format == API_FMT_TGI;
    return *skip ? NULL : api__render_openai_end(req, res);
}

char *api_render_stream_error(const api_generate_req *req, const api_error *e)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    if (req->format == API_FMT_TGI) {
        cJSON_AddStringToObject(root, "error", e->message);
        cJSON_AddStringToObject(root, "error_type", api_err_type(e->kind));
    } else {
        cJSON *o = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(o, "message", e->message);
        cJSON_AddStringToObject(o, "type", api_err_type(e->kind));
        cJSON_AddNullToObject(o, "param");
        cJSON_AddNumberToObject(o, "code", api_err_status(e->kind));
    }
    return api__sse(api__print(root));
}
