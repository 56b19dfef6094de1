/* api.h - the JSON edge of lunaserve: requests parsed into native structs, results and errors
 * rendered back. Only api/ includes cJSON; server/ sees the plain structs below.
 *
 * Every error answer has one shape:
 *   {"error": {"code": 413, "type": "input_too_long", "message": "...", "request_id": "...", ...}}
 * Every function here is pure (no globals) and may be called from any thread. Strings returned
 * by api_render_* are malloc'd; the caller frees them. */
#ifndef API_H
#define API_H

#include <stddef.h>
#include <stdint.h>

/* XX(name, http status, type string): every error the server answers with. */
#define API_ERROR_MAP(XX)                                   \
    XX(BAD_JSON, 400, "invalid_json")                       \
    XX(UNAUTHORIZED, 401, "unauthorized")                   \
    XX(NOT_FOUND, 404, "not_found")                         \
    XX(METHOD, 405, "method_not_allowed")                   \
    XX(TOO_LARGE, 413, "payload_too_large")                 \
    XX(INPUT_TOO_LONG, 413, "input_too_long")               \
    XX(MEMORY, 413, "memory_budget_exceeded")               \
    XX(MEDIA_TYPE, 415, "unsupported_media_type")           \
    XX(VALIDATION, 422, "validation_error")                 \
    XX(OVERLOADED, 429, "overloaded")                       \
    XX(INTERNAL, 500, "internal_error")                     \
    XX(NOT_READY, 503, "not_ready")                         \
    XX(SHUTTING_DOWN, 503, "shutting_down")                 \
    XX(NO_MODEL, 503, "model_not_loaded")                   \
    XX(ENGINE_MEMORY, 503, "out_of_memory")                 \
    XX(TIMEOUT, 504, "timeout")

typedef enum {
    API_OK = 0,
#define API_XX_ENUM(name, status, type) API_E_##name,
    API_ERROR_MAP(API_XX_ENUM)
#undef API_XX_ENUM
} api_err;

int api_err_status(api_err e);
const char *api_err_type(api_err e);

/* An error being built: the kind, a message, and up to two extra numeric fields. */
typedef struct {
    api_err kind;
    char message[512];
    const char *extra_key[2];
    double extra_val[2];
} api_error;

/* Sets *e (printf-style message) and returns e->kind, so parsers can `return api_fail(...)`. */
api_err api_fail(api_error *e, api_err kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
char *api_render_error(const api_error *e, const char *request_id);

/* ---- POST /classify (TEI's /predict) ------------------------------------------------------ */

typedef struct {
    const uint8_t *data; /* into the request's own storage */
    size_t len;
} api_doc;

typedef struct {
    api_doc *docs;
    size_t n_docs;
    int is_list;     /* "inputs" was an array: answer with one array per input */
    int raw_scores;  /* logits instead of probabilities */
    int truncate;    /* cut inputs that are too long instead of rejecting them */
    void *storage;   /* internal: the parsed tree and decoded bytes; api_classify_free */
} api_classify_req;

typedef struct {
    uint64_t max_input_bytes;
    size_t max_batch;
} api_limits;

/* Parses body[0..len) into *req. On failure returns the error kind with *err filled, and *req
 * needs no freeing. On success free it with api_classify_free. */
api_err api_parse_classify(const char *body, size_t len, const api_limits *lim, api_classify_req *req,
                           api_error *err);
void api_classify_free(api_classify_req *req);

/* scores: (n_docs, n_labels); labels: n_labels strings. TEI's shape: a single input gives
 * [{"label","score"},...] sorted by score, a list gives one such array per input. */
char *api_render_classify(const api_classify_req *req, const float *scores, const char *const *labels,
                          int n_labels);

/* ---- POST /generate and /generate_stream (TGI's shapes) ------------------------------------ */

#define API_MAX_STOPS 16     /* stop sequences per request */
#define API_MAX_STOP_LEN 256 /* bytes per stop sequence */

typedef struct {
    const uint8_t *prompt;   /* into the request's own storage */
    size_t prompt_len;
    int stream;              /* the body's "stream": true (the route also decides) */
    int max_new_tokens;
    int do_sample;           /* 0: greedy. TGI's rule: sampling when do_sample or any warper */
    float temperature;       /* > 0 when sampling; 1 unless given */
    int top_k;               /* 0: off */
    float top_p;             /* 1: off */
    float repetition_penalty;/* 1: off */
    int has_seed;
    uint64_t seed;
    int n_stop;
    const uint8_t *stop[API_MAX_STOPS];
    size_t stop_len[API_MAX_STOPS];
    int details;             /* answer with "details" */
    int return_full_text;    /* prepend the prompt to generated_text */
    int raw_bytes;           /* also the raw output bytes, base64 ("return_raw_bytes") */
    void *storage;           /* internal: the parsed tree and decoded bytes; api_generate_free */
} api_generate_req;

typedef struct {
    uint64_t max_input_bytes;
    int max_new_tokens;      /* the server's cap */
    int default_new_tokens;  /* when the request names none */
} api_gen_limits;

/* Parses a TGI request: {"inputs": "text" (or "inputs_base64"), "parameters": {...},
 * "stream": bool}. Parameters that TGI clients send with null or default values (best_of,
 * typical_p, watermark, ...) are accepted as such; set to anything else they are refused,
 * as are unknown ones. On failure returns the error kind with *err filled and *req needs no
 * freeing; on success free it with api_generate_free. */
api_err api_parse_generate(const char *body, size_t len, const api_gen_limits *lim,
                           api_generate_req *req, api_error *err);
void api_generate_free(api_generate_req *req);

/* What a generation produced, for the renderers. */
typedef struct {
    const uint8_t *out;      /* the raw generated bytes */
    size_t out_len;
    const char *finish;      /* "length", "eos_token", "stop_sequence" */
    uint64_t generated_tokens, prompt_tokens;
    int has_seed;            /* the request sampled: seed is the one used */
    uint64_t seed;
    int byte_offset;         /* token id of byte 0, for the token lists */
} api_gen_result;

/* {"generated_text", "details"?: {...}, "generated_bytes_base64"?}: TGI's /generate answer. */
char *api_render_generate(const api_generate_req *req, const api_gen_result *res);

/* Server-sent events of /generate_stream, each a complete "data: {...}\n\n" string.
 * A token event: {"index", "token": {"id", "text", "logprob": null, "special"},
 * "generated_text": null, "details": null} (+ "bytes_base64" with raw_bytes); the last event
 * also carries generated_text and details (res non-NULL). bytes may be NULL (a special token). */
char *api_render_stream_token(const api_generate_req *req, uint64_t index, int id,
                              const char *text, size_t text_len, const uint8_t *bytes,
                              size_t n_bytes, int special, const api_gen_result *res);
/* data: {"error": message, "error_type": type} */
char *api_render_stream_error(const api_error *e);

/* ---- small documents ------------------------------------------------------------------------ */

/* Standard base64 (RFC 4648, padding required, no whitespace). Returns the decoded length, or
 * -1 when the text is not valid base64. out needs room for 3 * (len / 4) bytes. */
long api_base64_decode(const char *in, size_t len, uint8_t *out);
/* Internal to api/: the raw body has a \u0000 escape (which cJSON would cut a string at);
 * the body parsed (a raw NUL byte refused as invalid JSON), or NULL with *err set. */
int api__has_nul_escape(const char *body, size_t len);
struct cJSON;
struct cJSON *api__parse_json(const char *body, size_t len, api_error *err);
/* Standard base64 with padding; malloc'd, NUL-terminated (caller frees), NULL on ENOMEM. */
char *api_base64_encode(const uint8_t *in, size_t len);

#endif
