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

/* ---- small documents ------------------------------------------------------------------------ */

/* Standard base64 (RFC 4648, padding required, no whitespace). Returns the decoded length, or
 * -1 when the text is not valid base64. out needs room for 3 * (len / 4) bytes. */
long api_base64_decode(const char *in, size_t len, uint8_t *out);

#endif
