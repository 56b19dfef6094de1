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
    XX(BAD_REQUEST, 400, "bad_request")                     \
    XX(UNAUTHORIZED, 401, "unauthorized")                   \
    XX(NOT_FOUND, 404, "not_found")                         \
    XX(MODEL_NOT_FOUND, 404, "model_not_found")             \
    XX(METHOD, 405, "method_not_allowed")                   \
    XX(TOO_LARGE, 413, "payload_too_large")                 \
    XX(INPUT_TOO_LONG, 413, "input_too_long")               \
    XX(MEMORY, 413, "memory_budget_exceeded")               \
    XX(MEDIA_TYPE, 415, "unsupported_media_type")           \
    XX(VALIDATION, 422, "validation_error")                 \
    XX(OVERLOADED, 429, "overloaded")                       \
    XX(INTERNAL, 500, "internal_error")                     \
    XX(NOT_IMPLEMENTED, 501, "not_implemented")             \
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

/* A JSON body's parse tree: at most API_MAX_JSON_VALUES values (a classification list of 1024
 * documents, a chat of thousands of messages), each at most API_JSON_VALUE_BYTES of memory (a
 * cJSON node, its key and the allocator's overhead; the strings' bytes come on top, as many as
 * the body's). api_json_values gives an upper bound of a body's values without parsing it (one
 * pass over the bytes), so the server can reserve the tree before building it; the parsers
 * refuse a body with more (413 payload_too_large). */
#define API_MAX_JSON_VALUES 65536
#define API_JSON_VALUE_BYTES 160
size_t api_json_values(const char *body, size_t len);

int api_err_status(api_err e);
const char *api_err_type(api_err e);

/* An error being built: the kind, a message, and up to two extra numeric fields. */
typedef struct {
    api_err kind;
    const char *param;      /* the request field at fault (OpenAI's "param"), or NULL */
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
    int vllm;        /* vLLM's request shape {"model", "input"}: answer in vLLM's shape */
    int raw_scores;  /* logits instead of probabilities */
    int truncate;    /* cut inputs that are too long instead of rejecting them */
    void *storage;   /* internal: the parsed tree and decoded bytes; api_classify_free */
} api_classify_req;

typedef struct {
    uint64_t max_input_bytes;
    size_t max_batch;
    const char *model;       /* the classifier's id: vLLM's "model" must name it (404); NULL: any */
} api_limits;

/* Parses body[0..len) into *req. On failure returns the error kind with *err filled, and *req
 * needs no freeing. On success free it with api_classify_free. */
api_err api_parse_classify(const char *body, size_t len, const api_limits *lim, api_classify_req *req,
                           api_error *err);
void api_classify_free(api_classify_req *req);
/* A raw /classify body (application/octet-stream or text/plain): one document, `body` itself
 * (which must outlive req: nothing is copied). raw_scores and truncate are the query's values
 * (NULL when absent; "true" or "false"). TEI's answer shape. Free with api_classify_free. */
api_err api_classify_raw(const uint8_t *body, size_t len, const char *raw_scores, const char *truncate,
                         const api_limits *lim, api_classify_req *req, api_error *err);

/* scores: (n_docs, n_labels); labels: n_labels strings. TEI's shape: a single input gives
 * [{"label","score"},...] sorted by score, a list gives one such array per input. With
 * req->vllm, vLLM's: {"id", "object": "list", "created", "model", "data": [{"index", "label",
 * "probs", "num_classes"}], "usage"}; meta gives id, model, created and the tokens. */
typedef struct {
    const char *id, *model;
    long long created;
    uint64_t tokens;
} api_classify_meta;
char *api_render_classify(const api_classify_req *req, const float *scores, const char *const *labels,
                          int n_labels, const api_classify_meta *meta);

/* ---- generation: TGI's /generate and /generate_stream, OpenAI's completions and chat -------- */

#define API_MAX_STOPS 16     /* stop sequences per request */
#define API_MAX_STOP_LEN 256 /* bytes per stop sequence */
#define API_MAX_PROMPTS 64   /* prompts of one OpenAI completion request */
#define API_MAX_TOP_LOGPROBS 20 /* best tokens per position: top_n_tokens, logprobs, top_logprobs */

typedef enum {
    API_FMT_TGI = 0,         /* /generate, /generate_stream */
    API_FMT_COMPLETION = 1,  /* /v1/completions */
    API_FMT_CHAT = 2,        /* /v1/chat/completions */
} api_gen_format;

typedef struct {
    api_gen_format format;
    api_doc *prompts;        /* (n_prompts) into the request's own storage */
    size_t n_prompts;        /* 1, except an OpenAI completion with a list of prompts */
    int stream;              /* the body's "stream": true (the route also decides) */
    int max_new_tokens;
    int do_sample;           /* 0: greedy. TGI: when do_sample or a warper; OpenAI: temperature > 0 */
    float temperature;       /* > 0 when sampling */
    int top_k;               /* 0: off */
    float top_p;             /* 1: off */
    float repetition_penalty;/* 1: off */
    int has_seed;
    uint64_t seed;
    int n_stop;
    const uint8_t *stop[API_MAX_STOPS];
    size_t stop_len[API_MAX_STOPS];
    int details;             /* TGI: answer with "details" */
    int return_full_text;    /* prepend the prompt to the text (TGI return_full_text, OpenAI echo) */
    int raw_bytes;           /* TGI: also the raw output bytes, base64 ("return_raw_bytes") */
    int include_usage;       /* OpenAI stream_options.include_usage: a usage chunk at the end */
    int logprobs;            /* record each generated token's log-probability (TGI: details or
                              * stream; OpenAI: logprobs) */
    int top_n;               /* 0..API_MAX_TOP_LOGPROBS best tokens per position (TGI top_n_tokens,
                              * OpenAI completions logprobs, chat top_logprobs) */
    int prompt_logprobs;     /* the prompt's too (TGI decoder_input_details, OpenAI echo + logprobs);
                              * top_n of them for OpenAI, none for TGI */
    int return_state;        /* answer with each prompt's state after its generation */
    const uint8_t *state;    /* a state to continue from (its export, decoded), or NULL */
    size_t state_len;
    char model[128];         /* OpenAI answers: the model's id (api_generate_set_meta) */
    char id[96];             /* OpenAI answers: "cmpl-<request id>" or "chatcmpl-<request id>" */
    long long created;       /* OpenAI answers: unix seconds */
    void *storage;           /* internal: the parsed tree and decoded bytes; api_generate_free */
} api_generate_req;

typedef struct {
    uint64_t max_input_bytes;
    int max_new_tokens;      /* the server's cap */
    int default_new_tokens;  /* when a TGI request names none (OpenAI's default is 16) */
    const char *model;       /* the generator's id: OpenAI's "model" must name it (404 model_not_found,
                              * as OpenAI and vLLM answer); NULL: any */
} api_gen_limits;

/* Parses a TGI request: {"inputs": "text" (or "inputs_base64"), "parameters": {...},
 * "stream": bool}. Parameters that TGI clients send with null or default values (best_of,
 * typical_p, watermark, ...) are accepted as such; set to anything else they are refused,
 * as are unknown ones. On failure returns the error kind with *err filled and *req needs no
 * freeing; on success free it with api_generate_free. api/openai.c parses the OpenAI shapes
 * into the same struct (api_parse_completions, api_parse_chat). */
api_err api_parse_generate(const char *body, size_t len, const api_gen_limits *lim,
                           api_generate_req *req, api_error *err);
api_err api_parse_completions(const char *body, size_t len, const api_gen_limits *lim,
                              api_generate_req *req, api_error *err);
api_err api_parse_chat(const char *body, size_t len, const api_gen_limits *lim,
                       api_generate_req *req, api_error *err);
void api_generate_free(api_generate_req *req);
/* The fields OpenAI answers carry: the model's id, the request id, the time. */
void api_generate_set_meta(api_generate_req *req, const char *model, const char *request_id,
                           long long created);

/* Log-probabilities recorded for a run of positions (the engine's luna_gen_lp): entry i is
 * lp[i] (NAN: none) and the top_n best at top_ids/top_lps[i * top_n ..] (id -1: no more).
 * lp NULL: none recorded. The model's own distribution (log-softmax of the raw logits). */
typedef struct {
    const double *lp;
    const int32_t *top_ids;
    const double *top_lps;
    int top_n;
} api_logprobs;

/* What one generation (one prompt) produced, for the renderers. */
typedef struct {
    const uint8_t *out;      /* the raw generated bytes */
    size_t out_len;
    const char *finish;      /* "length", "eos_token", "stop_sequence" */
    uint64_t generated_tokens, prompt_tokens;
    int has_seed;            /* the request sampled: seed is the one used */
    uint64_t seed;
    int byte_offset;         /* token id of byte 0, for the token lists */
    int bos_id, eos_id;      /* to name the special tokens among the best ones */
    api_logprobs gen;        /* with req->logprobs: entry i for generated token i (eos last) */
    api_logprobs prompt;     /* with req->prompt_logprobs: entry 0 bos, entry i + 1 prompt byte i */
    uint64_t cached_tokens;  /* of prompt_tokens, those the state cache had (bos included) */
    const uint8_t *state;    /* return_state: the state's export (luna_gen_state_export), or NULL */
    size_t state_len;
    uint64_t state_tokens;   /* the tokens of its context */
    const char *state_model_id; /* the model's id, hex */
} api_gen_result;

/* The answer to a whole request, res[0 .. n_prompts): TGI's {"generated_text", "details"?,
 * "generated_bytes_base64"?}, or OpenAI's text_completion or chat.completion. */
char *api_render_generate(const api_generate_req *req, const api_gen_result *res);

/* One generated token of a stream (a byte, or eos). The event for a token goes out when the
 * next one arrives, so the last of each choice can carry its result (res non-NULL). */
typedef struct {
    size_t choice;           /* which prompt */
    uint64_t index;          /* 1-based token index within the choice */
    int first;               /* the choice's first event (OpenAI chat: the delta has the role) */
    int id;                  /* token id, or -1 */
    const char *text;        /* the UTF-8 this token completes */
    size_t text_len;
    const uint8_t *bytes;    /* its raw bytes (may be NULL) */
    size_t n_bytes;
    int special;             /* eos */
    const api_gen_result *res;
    const api_gen_result *lps; /* the choice's result record, whose gen entry index - 1 is this
                                * token's log-probabilities (with req->logprobs and id >= 0) */
} api_stream_token;

/* One complete server-sent event ("data: {...}\n\n", malloc'd) for a token: TGI's
 * {"index", "token": {"id", "text", "logprob": null, "special"}, "generated_text",
 * "details"}, or an OpenAI chunk. NULL with *skip set when the format sends nothing for it
 * (an OpenAI chunk with no text and no finish_reason); NULL otherwise is out of memory. */
char *api_render_stream_token(const api_generate_req *req, const api_stream_token *t, int *skip);
/* After every choice: OpenAI's usage chunk (include_usage) and "data: [DONE]"; for TGI
 * nothing (NULL, *skip set). res: n_prompts results. */
char *api_render_stream_end(const api_generate_req *req, const api_gen_result *res, int *skip);
/* An error once the stream has started: TGI's {"error", "error_type"}, or OpenAI's
 * {"error": {"message", "type", "param", "code"}}. */
char *api_render_stream_error(const api_generate_req *req, const api_error *e);

/* ---- POST /score: a prefix's candidate continuations, by log-probability (api/score.c) ------ */

#define API_MAX_CANDIDATES 256 /* candidates per /score request */

typedef struct {
    api_doc prefix;           /* may be empty: the candidates then follow bos alone */
    api_doc *candidates;      /* (n_candidates), each 1.. bytes; into the request's storage */
    size_t n_candidates;
    size_t candidate_bytes;   /* their sum */
    size_t longest;           /* the longest candidate's bytes */
    int token_logprobs;       /* answer each token's log-probability too (default true) */
    void *storage;            /* internal: api_score_free */
} api_score_req;

/* One candidate's score: the log-probability of its bytes after the prefix, token by token. */
typedef struct {
    double logprob;           /* the sum of per_token, in order */
    const double *per_token;  /* (tokens) */
    size_t tokens;
    int is_greedy;            /* every token is the most likely one where it stands (ties: lower id) */
} api_score_result;

/* {"prefix" | "prefix_base64", "candidates" | "candidates_base64": [...], "token_logprobs": bool,
 * "model"}. 422 for a malformed request, too many candidates or an empty one; 413 when the
 * prefix and a candidate, or the candidates together, pass max_input_bytes. Free with
 * api_score_free (also on failure). */
api_err api_parse_score(const char *body, size_t len, const api_limits *lim, api_score_req *req, api_error *err);
void api_score_free(api_score_req *req);
/* {"model", "prefix_tokens", "scores": [{"index", "logprob", "tokens", "is_greedy",
 * "token_logprobs"?}]}. */
char *api_render_score(const api_score_req *req, const api_score_result *res, const char *model,
                       uint64_t prefix_tokens);

/* ---- GET /v1/models, and vLLM's shape of /classify ------------------------------------------- */

typedef struct {
    const char *id;          /* the model directory's base name */
    const char *task;        /* "causal-lm" or "classification" */
    long long created;       /* unix seconds the server loaded it */
} api_model_card;

char *api_render_models(const api_model_card *models, int n);

/* ---- small documents ------------------------------------------------------------------------ */

/* Standard base64 (RFC 4648, padding required, no whitespace). Returns the decoded length, or
 * -1 when the text is not valid base64. out needs room for 3 * (len / 4) bytes. */
long api_base64_decode(const char *in, size_t len, uint8_t *out);
/* Internal to api/: the raw body has a \u0000 escape (which cJSON would cut a string at);
 * the body parsed as exactly one JSON document (a raw NUL byte, or anything but whitespace
 * after the value, is refused as invalid JSON), or NULL with *err set. */
int api__has_nul_escape(const char *body, size_t len);
struct cJSON;
struct cJSON *api__parse_json(const char *body, size_t len, api_error *err);
/* Standard base64 with padding; malloc'd, NUL-terminated (caller frees), NULL on ENOMEM. */
char *api_base64_encode(const uint8_t *in, size_t len);

#endif
