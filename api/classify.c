/* classify.c - POST /classify: TEI's /predict request and response, and the error shape.
 *
 * Request: {"inputs": "text" | ["t1", ...], "inputs_base64": "..." | [...], "raw_scores": bool,
 *           "truncate": bool}. Exactly one of inputs / inputs_base64. Text inputs are UTF-8 as
 * JSON carries them; a document that holds NUL bytes (or any binary) goes in inputs_base64,
 * because a JSON string with \u0000 cannot be passed through cJSON intact, so it is refused
 * with a pointer to inputs_base64 rather than silently cut. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/internal.h"
#include "api/utf8.h"

static const struct {
    int status;
    const char *type;
} ERRS[] = {
    {200, "ok"},
#define API_XX_ROW(name, status, type) {status, type},
    API_ERROR_MAP(API_XX_ROW)
#undef API_XX_ROW
};

int api_err_status(api_err e) { return (unsigned)e < sizeof ERRS / sizeof ERRS[0] ? ERRS[e].status : 500; }
const char *api_err_type(api_err e) { return (unsigned)e < sizeof ERRS / sizeof ERRS[0] ? ERRS[e].type : "internal_error"; }

api_err api_fail(api_error *e, api_err kind, const char *fmt, ...)
{
    memset(e, 0, sizeof *e);
    e->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return kind;
}

char *api_render_error(const api_error *e, const char *request_id)
{
    cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddNumberToObject(err, "code", api_err_status(e->kind));
    cJSON_AddStringToObject(err, "type", api_err_type(e->kind));
    /* messages quote the client's own bytes (a field name), maybe cut inside a character */
    char msg[API_UTF8_MAX_OUT(sizeof e->message) + 1];
    size_t n = api_utf8_sanitize((const uint8_t *)e->message, strlen(e->message), msg);
    msg[n] = 0;
    cJSON_AddStringToObject(err, "message", msg);
    if (e->param) cJSON_AddStringToObject(err, "param", e->param); /* OpenAI clients read it */
    else cJSON_AddNullToObject(err, "param");
    cJSON_AddStringToObject(err, "request_id", request_id ? request_id : "");
    for (int i = 0; i < 2; i++)
        if (e->extra_key[i]) cJSON_AddNumberToObject(err, e->extra_key[i], e->extra_val[i]);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

long api_base64_decode(const char *in, size_t len, uint8_t *out)
{
    if (len % 4) return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char ch = (unsigned char)in[i + j];
            if (ch == '=' && i + 4 == len && j >= 2) {
                v[j] = 0;
                pad++;
            } else {
                v[j] = b64_value(ch);
                if (pad || v[j] < 0) return -1; /* data after padding, or not base64 */
            }
        }
        if (pad == 1 && in[i + 2] == '=') return -1;
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2) out[o++] = (uint8_t)(w >> 8);
        if (pad < 1) out[o++] = (uint8_t)w;
    }
    return (long)o;
}

char *api_base64_encode(const uint8_t *in, size_t len)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        *o++ = A[w >> 18 & 63];
        *o++ = A[w >> 12 & 63];
        *o++ = i + 1 < len ? A[w >> 6 & 63] : '=';
        *o++ = i + 2 < len ? A[w & 63] : '=';
    }
    *o = 0;
    return out;
}

typedef struct {
    cJSON *tree;
    uint8_t *decoded; /* base64 documents, back to back */
} storage;

static int key_order(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* RFC 8259 leaves the meaning of a repeated key open: cJSON keeps both and its lookups find
 * the first, while many proxies and clients keep the last. Two readers of one body must never
 * see two requests, so a key twice in one object, anywhere in the tree, is refused (400 naming
 * the key). Sorting the keys of each object keeps this O(n log n) for a body of a million keys.
 * (cJSON cuts a key at \u0000, so "a\u0000x" and "a" count as the same key.) 0 or -1. */
static int refuse_duplicate_keys(const cJSON *v, api_error *err)
{
    for (; v; v = v->next) {
        if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) continue;
        if (cJSON_IsObject(v) && v->child && v->child->next) {
            size_t n = 0;
            for (const cJSON *c = v->child; c; c = c->next) n++;
            const cJSON **keys = malloc(n * sizeof *keys); /* a size the client controls: try */
            if (!keys) {
                api_fail(err, API_E_ENGINE_MEMORY, "out of memory checking the body's keys");
                return -1;
            }
            n = 0;
            for (const cJSON *c = v->child; c; c = c->next) keys[n++] = c;
            qsort(keys, n, sizeof *keys, key_order);
            for (size_t i = 1; i < n; i++)
                if (!strcmp(keys[i - 1]->string, keys[i]->string)) {
                    api_fail(err, API_E_BAD_JSON, "duplicate key \"%.64s\" in one object: send each key once",
                             keys[i]->string);
                    free(keys);
                    return -1;
                }
            free(keys);
        }
        if (refuse_duplicate_keys(v->child, err)) return -1; /* depth: cJSON stops at 1000 */
    }
    return 0;
}

size_t api_json_values(const char *body, size_t len)
{
    /* every value but the root follows a '[' (the first element), a ',' or a ':' outside a
     * string; a '{' adds one too many per object: an upper bound */
    size_t n = 1;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{' || c == ',' || c == ':') {
            n++;
        }
    }
    return n;
}

cJSON *api__parse_json(const char *body, size_t len, api_error *err)
{
    size_t values = api_json_values(body, len);
    if (values > API_MAX_JSON_VALUES) {
        api_fail(err, API_E_TOO_LARGE, "the body holds up to %zu JSON values; at most %d are taken", values,
                 API_MAX_JSON_VALUES);
        return NULL;
    }
    /* cJSON would end a string at a raw NUL byte and parse on: JSON forbids it, so refuse */
    const char *nul = memchr(body, 0, len);
    if (nul) {
        api_fail(err, API_E_BAD_JSON, "the body is not valid JSON (a raw NUL byte at byte %zu)", (size_t)(nul - body));
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        api_fail(err, API_E_BAD_JSON, "the body is not valid JSON (error near byte %zu)", at);
        return NULL;
    }
    /* exactly one JSON document: only whitespace (RFC 8259's four) may follow the value.
     * (cJSON's own require_null_terminated wants a NUL inside len, which a body has not.) */
    size_t at = (size_t)(end - body);
    while (at < len && (body[at] == ' ' || body[at] == '\t' || body[at] == '\n' || body[at] == '\r')) at++;
    if (at < len) {
        cJSON_Delete(root);
        api_fail(err, API_E_BAD_JSON, "the body is not valid JSON (data after the JSON value at byte %zu)", at);
        return NULL;
    }
    if (refuse_duplicate_keys(root, err)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

int api__has_nul_escape(const char *body, size_t len)
{
    /* called on a body that parsed: every backslash starts an escape inside a string, so
     * stepping over each escape whole never mistakes an escaped backslash followed by the
     * text "u0000" ("C:\\u0000x") for the escape \u0000 */
    for (size_t i = 0; i + 1 < len; i++) {
        if (body[i] != '\\') continue;
        if (body[i + 1] == 'u' && i + 6 <= len && !memcmp(body + i + 2, "0000", 4)) return 1;
        i++; /* the escaped character: \\, \", \n, ... or the u of another \uXXXX */
    }
    return 0;
}

api_err api_parse_classify(const char *body, size_t len, const api_limits *lim, api_classify_req *req,
                           api_error *err)
{
    memset(req, 0, sizeof *req);
    cJSON *root = api__parse_json(body, len, err);
    if (!root) return err->kind;
    api_err rc = API_OK;
    storage *st = calloc(1, sizeof *st);
    if (!st) {
        cJSON_Delete(root);
        return api_fail(err, API_E_ENGINE_MEMORY, "out of memory parsing the request");
    }
    st->tree = root;
    req->storage = st;
    if (!cJSON_IsObject(root)) {
        rc = api_fail(err, API_E_VALIDATION, "the body must be a JSON object");
        goto fail;
    }
    /* vLLM's shape, {"model", "input"}, or TEI's, {"inputs", ...}: not a mixture */
    req->vllm = cJSON_GetObjectItemCaseSensitive(root, "input") != NULL;
    for (cJSON *f = root->child; f; f = f->next) {
        int ok = req->vllm ? !strcmp(f->string, "input") || !strcmp(f->string, "model") ||
                                 !strcmp(f->string, "user") || !strcmp(f->string, "truncate_prompt_tokens")
                           : !strcmp(f->string, "inputs") || !strcmp(f->string, "inputs_base64") ||
                                 !strcmp(f->string, "raw_scores") || !strcmp(f->string, "truncate");
        if (!ok) {
            rc = api_fail(err, API_E_VALIDATION, "unknown field \"%.64s\"%s", f->string,
                          req->vllm ? " (vLLM's shape has \"model\" and \"input\")" : "");
            goto fail;
        }
    }
    if (req->vllm) {
        cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
        cJSON *tpt = cJSON_GetObjectItemCaseSensitive(root, "truncate_prompt_tokens");
        if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) {
            rc = api_fail(err, API_E_VALIDATION, "\"model\" must be a string");
            goto fail;
        }
        if (cJSON_IsString(model) && !api__names_model(model->valuestring, lim->model)) {
            rc = api_fail(err, API_E_MODEL_NOT_FOUND, "the model \"%.128s\" does not exist; this server classifies with "
                          "\"%.128s\" (GET /v1/models)", model->valuestring, lim->model);
            err->param = "model";
            goto fail;
        }
        if (tpt && !cJSON_IsNull(tpt)) {
            rc = api_fail(err, API_E_VALIDATION, "\"truncate_prompt_tokens\" is not supported by this server");
            err->param = "truncate_prompt_tokens";
            goto fail;
        }
    }
    cJSON *text = cJSON_GetObjectItemCaseSensitive(root, req->vllm ? "input" : "inputs");
    cJSON *b64 = cJSON_GetObjectItemCaseSensitive(root, "inputs_base64");
    cJSON *raw = cJSON_GetObjectItemCaseSensitive(root, "raw_scores");
    cJSON *trunc = cJSON_GetObjectItemCaseSensitive(root, "truncate");
    if (!!text == !!b64) {
        rc = api_fail(err, API_E_VALIDATION, "give exactly one of \"inputs\" and \"inputs_base64\"");
        goto fail;
    }
    if ((raw && !cJSON_IsBool(raw)) || (trunc && !cJSON_IsBool(trunc))) {
        rc = api_fail(err, API_E_VALIDATION, "\"%s\" must be true or false", raw && !cJSON_IsBool(raw) ? "raw_scores" : "truncate");
        goto fail;
    }
    req->raw_scores = cJSON_IsTrue(raw);
    req->truncate = cJSON_IsTrue(trunc);
    cJSON *in = text ? text : b64;
    const char *field = req->vllm ? "input" : text ? "inputs" : "inputs_base64";
    req->is_list = cJSON_IsArray(in);
    size_t n = req->is_list ? (size_t)cJSON_GetArraySize(in) : 1;
    if (req->is_list && n == 0) {
        rc = api_fail(err, API_E_VALIDATION, "\"%s\" is an empty list", field);
        goto fail;
    }
    if (n > lim->max_batch) {
        rc = api_fail(err, API_E_VALIDATION, "\"%s\" has %zu documents; at most %zu per request", field, n, lim->max_batch);
        goto fail;
    }
    req->docs = calloc(n, sizeof *req->docs);
    if (!req->docs) {
        rc = api_fail(err, API_E_ENGINE_MEMORY, "out of memory parsing the request");
        goto fail;
    }
    size_t total_b64 = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *it = req->is_list ? cJSON_GetArrayItem(in, (int)i) : in;
        if (!cJSON_IsString(it)) {
            rc = req->is_list ? api_fail(err, API_E_VALIDATION, "\"%s\"[%zu] must be a string", field, i)
                              : api_fail(err, API_E_VALIDATION, "\"%s\" must be a string or a list of strings", field);
            goto fail;
        }
        total_b64 += strlen(it->valuestring);
    }
    if (api__has_nul_escape(body, len)) { /* cJSON would cut the string there */
        rc = api_fail(err, API_E_VALIDATION, "%s contains U+0000 (\\u0000), which cannot pass through JSON here; "
                      "send documents with NUL bytes in \"inputs_base64\"", text ? "\"inputs\" or another string" : "a string of the body");
        goto fail;
    }
    if (b64 && !(st->decoded = malloc(total_b64 / 4 * 3 + 1))) {
        rc = api_fail(err, API_E_ENGINE_MEMORY, "out of memory decoding inputs_base64");
        goto fail;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON *it = req->is_list ? cJSON_GetArrayItem(in, (int)i) : in;
        size_t sl = strlen(it->valuestring);
        if (b64) {
            long got = api_base64_decode(it->valuestring, sl, st->decoded + off);
            if (got < 0) {
                rc = api_fail(err, API_E_VALIDATION, "\"inputs_base64\"%s is not valid base64", req->is_list ? "[i]" : "");
                goto fail;
            }
            req->docs[i].data = st->decoded + off;
            req->docs[i].len = (size_t)got;
            off += (size_t)got;
        } else {
            req->docs[i].data = (const uint8_t *)it->valuestring;
            req->docs[i].len = sl;
        }
        if (req->docs[i].len > lim->max_input_bytes && !req->truncate) {
            rc = api_fail(err, API_E_INPUT_TOO_LONG, "document %zu has %zu bytes; max-input-bytes is %llu (or set \"truncate\": true)",
                          i, req->docs[i].len, (unsigned long long)lim->max_input_bytes);
            err->extra_key[0] = "max_input_bytes";
            err->extra_val[0] = (double)lim->max_input_bytes;
            goto fail;
        }
        if (req->docs[i].len > lim->max_input_bytes) req->docs[i].len = lim->max_input_bytes;
    }
    req->n_docs = n;
    return API_OK;
fail:
    api_classify_free(req);
    return rc;
}

static int query_bool(const char *v, const char *name, int *out, api_error *err)
{
    if (!v) return 0;
    if (!strcmp(v, "true")) *out = 1;
    else if (!strcmp(v, "false")) *out = 0;
    else {
        api_fail(err, API_E_VALIDATION, "the query parameter %s must be true or false", name);
        err->param = name;
        return -1;
    }
    return 0;
}

api_err api_classify_raw(const uint8_t *body, size_t len, const char *raw_scores, const char *truncate,
                         const api_limits *lim, api_classify_req *req, api_error *err)
{
    memset(req, 0, sizeof *req);
    if (query_bool(raw_scores, "raw_scores", &req->raw_scores, err) || query_bool(truncate, "truncate", &req->truncate, err))
        return err->kind;
    if (len > lim->max_input_bytes && !req->truncate) {
        api_fail(err, API_E_INPUT_TOO_LONG, "the document has %zu bytes; max-input-bytes is %llu (or ?truncate=true)", len,
                 (unsigned long long)lim->max_input_bytes);
        err->extra_key[0] = "max_input_bytes";
        err->extra_val[0] = (double)lim->max_input_bytes;
        return err->kind;
    }
    req->docs = malloc(sizeof *req->docs);
    if (!req->docs) return api_fail(err, API_E_ENGINE_MEMORY, "out of memory parsing the request");
    req->docs[0].data = body;
    req->docs[0].len = len > lim->max_input_bytes ? lim->max_input_bytes : len;
    req->n_docs = 1;
    return API_OK;
}

void api_classify_free(api_classify_req *req)
{
    storage *st = req->storage;
    if (st) {
        cJSON_Delete(st->tree);
        free(st->decoded);
        free(st);
    }
    free(req->docs);
    memset(req, 0, sizeof *req);
}

static cJSON *scores_array(const float *s, const char *const *labels, int n)
{
    int order[1024];
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort, descending score, ties by label order */
        int k = order[i], j = i;
        while (j > 0 && s[order[j - 1]] < s[k]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "label", labels[order[i]]);
        cJSON_AddNumberToObject(o, "score", s[order[i]]);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* vLLM's classification answer: one entry per input, probabilities in label order. */
static char *render_vllm(const api_classify_req *req, const float *scores, const char *const *labels, int n_labels,
                         const api_classify_meta *meta)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", meta->id);
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddNumberToObject(root, "created", (double)meta->created);
    cJSON_AddStringToObject(root, "model", meta->model);
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    for (size_t i = 0; i < req->n_docs; i++) {
        const float *s = scores + i * (size_t)n_labels;
        int best = 0;
        for (int k = 1; k < n_labels; k++)
            if (s[k] > s[best]) best = k;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", (double)i);
        cJSON_AddStringToObject(o, "label", labels[best]);
        cJSON *probs = cJSON_AddArrayToObject(o, "probs");
        for (int k = 0; k < n_labels; k++) cJSON_AddItemToArray(probs, cJSON_CreateNumber(s[k]));
        cJSON_AddNumberToObject(o, "num_classes", n_labels);
        cJSON_AddItemToArray(data, o);
    }
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)meta->tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)meta->tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", 0);
    cJSON_AddNullToObject(u, "prompt_tokens_details");
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

char *api_render_classify(const api_classify_req *req, const float *scores, const char *const *labels,
                          int n_labels, const api_classify_meta *meta)
{
    if (req->vllm) return render_vllm(req, scores, labels, n_labels, meta);
    cJSON *root;
    if (req->is_list) {
        root = cJSON_CreateArray();
        for (size_t i = 0; i < req->n_docs; i++)
            cJSON_AddItemToArray(root, scores_array(scores + i * (size_t)n_labels, labels, n_labels));
    } else {
        root = scores_array(scores, labels, n_labels);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}
