/* logprobs.c - log-probabilities in the answers: TGI's token logprob, top_tokens and prefill,
 * OpenAI's legacy completions logprobs (tokens, token_logprobs, top_logprobs, text_offset) and
 * chat's logprobs.content. The numbers are the engine's (api_logprobs, engine/generate.h): the
 * model's own distribution, log_softmax of the raw logits, whatever the sampling parameters.
 *
 * A token is one byte (or a special id), so its text is not always text:
 *   - TGI: a byte below 0x80 is its character; any other is U+FFFD, as TGI decodes a lone
 *     byte of a multi-byte character (a generated token's own "text" is what it completes of
 *     the UTF-8, as before; top_tokens and prefill list tokens on their own).
 *   - OpenAI: a byte below 0x80 (but NUL) is its character; NUL and the bytes from 0x80 are
 *     "bytes:\xNN", OpenAI's own spelling of a token that is not valid UTF-8 on its own; chat
 *     also gives each token's exact "bytes".
 *   - special ids: "<bos>", "<eos>", "<special:N>" (special: true in TGI's lists; no bytes).
 * text_offset (completions) counts bytes of the choice's raw output (echoed prompt first). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "api/internal.h"

/* ---- one token's text ------------------------------------------------------------------------ */

/* Writes token id's name into out (room for 24, NUL not written) and returns its length; *byte receives the
 * byte (-1 for a special id). tgi: TGI's spelling, else OpenAI's. */
static size_t token_name(const api_gen_result *r, int32_t id, int tgi, char *out, int *byte)
{
    int b = id - r->byte_offset;
    *byte = -1;
    if (b >= 0 && b < 256) {
        *byte = b;
        if (b > 0 && b < 0x80) return out[0] = (char)b, 1;
        if (tgi && b == 0) return out[0] = 0, 1;
        if (tgi) return memcpy(out, "\xEF\xBF\xBD", 3), 3;
        return (size_t)snprintf(out, 24, "bytes:\\x%02x", b);
    }
    if (id == r->bos_id) return (size_t)snprintf(out, 24, "<bos>");
    if (id == r->eos_id) return (size_t)snprintf(out, 24, "<eos>");
    return (size_t)snprintf(out, 24, "<special:%d>", (int)id);
}

/* A log-probability: a number, or null (none, or -inf, which JSON cannot carry). */
static void add_lp(cJSON *o, const char *name, double lp)
{
    if (isfinite(lp)) cJSON_AddNumberToObject(o, name, lp);
    else cJSON_AddNullToObject(o, name);
}

static void push_lp(cJSON *a, double lp) { cJSON_AddItemToArray(a, isfinite(lp) ? cJSON_CreateNumber(lp) : cJSON_CreateNull()); }

/* ---- TGI --------------------------------------------------------------------------------------- */

void api__tgi_logprob(cJSON *tk, const api_logprobs *l, size_t i)
{
    add_lp(tk, "logprob", l->lp ? l->lp[i] : NAN);
}

cJSON *api__tgi_top(const api_gen_result *r, const api_logprobs *l, size_t i)
{
    cJSON *a = cJSON_CreateArray();
    for (int j = 0; a && l->lp && j < l->top_n; j++) {
        int32_t id = l->top_ids[i * (size_t)l->top_n + (size_t)j];
        if (id < 0) break;
        char name[24];
        int byte;
        size_t n = token_name(r, id, 1, name, &byte);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddItemToArray(a, t);
        cJSON_AddNumberToObject(t, "id", id);
        if (!t || api__add_string(t, "text", name, n)) {
            cJSON_Delete(a);
            return NULL;
        }
        add_lp(t, "logprob", l->top_lps[i * (size_t)l->top_n + (size_t)j]);
        cJSON_AddBoolToObject(t, "special", byte < 0);
    }
    return a;
}

cJSON *api__tgi_prefill(const api_gen_result *r, const uint8_t *prompt, size_t len)
{
    cJSON *a = cJSON_CreateArray();
    cJSON *t = cJSON_CreateObject();
    cJSON_AddItemToArray(a, t);
    cJSON_AddNumberToObject(t, "id", r->bos_id);
    cJSON_AddStringToObject(t, "text", "<bos>");
    cJSON_AddNullToObject(t, "logprob"); /* nothing predicts the first token, as in TGI */
    for (size_t i = 0; a && i < len; i++) {
        char name[24];
        int byte;
        size_t n = token_name(r, r->byte_offset + prompt[i], 1, name, &byte);
        t = cJSON_CreateObject();
        cJSON_AddItemToArray(a, t);
        cJSON_AddNumberToObject(t, "id", r->byte_offset + prompt[i]);
        if (!t || api__add_string(t, "text", name, n)) {
            cJSON_Delete(a);
            return NULL;
        }
        add_lp(t, "logprob", r->prompt.lp ? r->prompt.lp[i + 1] : NAN);
    }
    return a;
}

/* ---- OpenAI completions -------------------------------------------------------------------------- */

/* Appends entry i of l, token `id`, at byte offset `off`, to the four lists of lp. */
static int completion_entry(cJSON *lp, const api_gen_result *r, const api_logprobs *l, size_t i, int32_t id,
                            size_t off)
{
    char name[24];
    int byte;
    size_t n = token_name(r, id, 0, name, &byte);
    name[n] = 0; /* OpenAI's names hold no NUL byte: plain C strings */
    cJSON *tok = cJSON_CreateString(name);
    if (!tok) return -1;
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "tokens"), tok);
    push_lp(cJSON_GetObjectItemCaseSensitive(lp, "token_logprobs"), l->lp[i]);
    /* the top_n best and, as vLLM does, the chosen token when it is not among them */
    cJSON *top = cJSON_CreateObject();
    int chosen_in = 0;
    for (int j = 0; top && j < l->top_n; j++) {
        int32_t tid = l->top_ids[i * (size_t)l->top_n + (size_t)j];
        if (tid < 0) break;
        char tn[24];
        size_t m = token_name(r, tid, 0, tn, &byte);
        tn[m] = 0;
        double v = l->top_lps[i * (size_t)l->top_n + (size_t)j];
        cJSON_AddItemToObject(top, tn, isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull());
        chosen_in |= tid == id;
    }
    if (top && !chosen_in) {
        cJSON_AddItemToObject(top, name, isfinite(l->lp[i]) ? cJSON_CreateNumber(l->lp[i]) : cJSON_CreateNull());
    }
    if (!top) return -1;
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "top_logprobs"), top);
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "text_offset"), cJSON_CreateNumber((double)off));
    return 0;
}

cJSON *api__completion_logprobs(const api_gen_result *r, const uint8_t *prompt, size_t prompt_len,
                                const uint8_t *out, size_t from, size_t to, size_t off)
{
    cJSON *lp = cJSON_CreateObject();
    if (!lp) return NULL;
    cJSON_AddArrayToObject(lp, "tokens");
    cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON_AddArrayToObject(lp, "top_logprobs");
    cJSON_AddArrayToObject(lp, "text_offset");
    /* echo: the prompt's bytes, each scored after bos and the bytes before it */
    for (size_t i = 0; prompt && r->prompt.lp && i < prompt_len; i++, off++)
        if (completion_entry(lp, r, &r->prompt, i + 1, r->byte_offset + prompt[i], off)) goto oom;
    for (size_t i = from; r->gen.lp && i < to; i++, off++)
        if (completion_entry(lp, r, &r->gen, i, r->byte_offset + out[i - from], off)) goto oom;
    return lp;
oom:
    cJSON_Delete(lp);
    return NULL;
}

/* ---- OpenAI chat ------------------------------------------------------------------------------------ */

/* {token, logprob, bytes}: the fields of a content entry and of its top_logprobs. */
static cJSON *chat_token(const api_gen_result *r, int32_t id, double lp)
{
    char name[24];
    int byte;
    name[token_name(r, id, 0, name, &byte)] = 0;
    cJSON *t = cJSON_CreateObject();
    if (!t || !cJSON_AddStringToObject(t, "token", name)) {
        cJSON_Delete(t);
        return NULL;
    }
    add_lp(t, "logprob", lp);
    cJSON *b = cJSON_AddArrayToObject(t, "bytes");
    if (byte >= 0) cJSON_AddItemToArray(b, cJSON_CreateNumber(byte));
    return t;
}

cJSON *api__chat_logprobs(const api_gen_result *r, const uint8_t *out, size_t from, size_t to)
{
    cJSON *lp = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(lp, "content");
    cJSON_AddNullToObject(lp, "refusal");
    for (size_t i = from; content && r->gen.lp && i < to; i++) {
        cJSON *t = chat_token(r, r->byte_offset + out[i - from], r->gen.lp[i]);
        if (!t) goto oom;
        cJSON_AddItemToArray(content, t);
        cJSON *top = cJSON_AddArrayToObject(t, "top_logprobs");
        for (int j = 0; j < r->gen.top_n; j++) {
            int32_t tid = r->gen.top_ids[i * (size_t)r->gen.top_n + (size_t)j];
            if (tid < 0) break;
            cJSON *e = chat_token(r, tid, r->gen.top_lps[i * (size_t)r->gen.top_n + (size_t)j]);
            if (!e) goto oom;
            cJSON_AddItemToArray(top, e);
        }
    }
    if (!content) goto oom;
    return lp;
oom:
    cJSON_Delete(lp);
    return NULL;
}

/* ---- requests ---------------------------------------------------------------------------------- */

api_err api__check_prompt_logprobs(const api_generate_req *req, const char *field, api_error *err)
{
    if (!req->prompt_logprobs || !req->state) return API_OK;
    api_fail(err, API_E_VALIDATION, "\"%s\" scores the prompt from bos on: not with \"state\", whose context "
             "is not here to score", field);
    err->param = field;
    return err->kind;
}
