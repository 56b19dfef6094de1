/* internal.h - what the files of api/ share and nothing else includes: JSON helpers and the
 * request storage of a generation. */
#ifndef API_INTERNAL_H
#define API_INTERNAL_H

#include <cjson/cJSON.h>

#include "api/api.h"

/* The parsed tree, decoded bytes and prompt table a generation request points into. */
typedef struct {
    cJSON *tree;
    uint8_t *bytes;  /* decoded base64 or a rendered chat prompt */
    api_doc docs[API_MAX_PROMPTS];
    uint8_t *state;  /* the decoded "state" */
} api__gen_storage;

/* Sets up req with the defaults every format shares and its storage; API_OK or ENGINE_MEMORY. */
api_err api__gen_begin(api_generate_req *req, api_gen_format fmt, cJSON *root, api_error *err);

int api__given(const cJSON *v); /* present and not null */
/* Whether a request's "model" names the model served, whose id is `served` (NULL: any name
 * does): that id, TGI's placeholder "tgi", or an http(s) URL, which Hugging Face's clients send
 * as the model when they are given an endpoint (the endpoint is the model). */
int api__names_model(const char *model, const char *served);
api_err api__get_bool(const cJSON *o, const char *name, int *out, api_error *err);
/* A number in [lo, hi] (lo excluded with lo_open); *set tells whether it was given. */
api_err api__get_num(const cJSON *o, const char *name, double lo, int lo_open, double hi, int integer,
                     double *out, int *set, api_error *err);
/* The same for a float field: the range also holds for the value rounded to float, which is
 * what the engine gets (1e-46 is a double in (0, 1] and 0.0f); *out is set only when given. */
api_err api__get_float(const cJSON *o, const char *name, double lo, int lo_open, double hi, float *out,
                       int *set, api_error *err);
/* "stop": a string or a list of strings, 1..API_MAX_STOP_LEN bytes each, at most API_MAX_STOPS. */
api_err api__parse_stop(const cJSON *o, api_generate_req *req, api_error *err);

/* bytes a, then bytes b, each sanitised to UTF-8 on its own (a's unfinished last character
 * is U+FFFD whatever b starts with: a is the echoed prompt, b the output, and a stream sends
 * them apart), added to o under name with api__add_string; -1 on ENOMEM. */
int api__add_text(cJSON *o, const char *name, const uint8_t *a, size_t na, const uint8_t *b, size_t nb);
/* s[0..n), valid UTF-8 that may hold NUL bytes, added to o under name as a JSON string of
 * exactly those characters (U+0000 as \u0000): cJSON's strings end at a NUL, so the string is
 * escaped here, as cJSON escapes, and added raw. -1 on ENOMEM. */
int api__add_string(cJSON *o, const char *name, const char *s, size_t n);
char *api__print(cJSON *root); /* unformatted, and frees root */
char *api__sse(char *json);    /* "data: " json "\n\n"; frees json; NULL in, NULL out */

/* api/state.c: "state" (in root) and "return_state" (in flags, may be NULL) parsed into req
 * (after its prompts: a state continues exactly one); a result's "state" object added to o
 * (nothing without one; -1 on ENOMEM). */
api_err api__parse_state(const cJSON *root, const cJSON *flags, api_generate_req *req, api_error *err);
int api__add_state(cJSON *o, const api_gen_result *res);

/* api/openai.c: the OpenAI renderers behind api_render_generate and the stream ones. */
char *api__render_openai(const api_generate_req *req, const api_gen_result *res);
char *api__render_openai_chunk(const api_generate_req *req, const api_stream_token *t, int *skip);
char *api__render_openai_end(const api_generate_req *req, const api_gen_result *res);

/* api/logprobs.c: log-probabilities in the answers (api_logprobs entries).
 * TGI: a token's "logprob" (entry i of l, null when none), the "top_tokens" of entry i, and the
 * prefill list (bos with a null logprob, then the prompt's bytes: res->prompt). */
void api__tgi_logprob(cJSON *tk, const api_logprobs *l, size_t i);
cJSON *api__tgi_top(const api_gen_result *r, const api_logprobs *l, size_t i);
cJSON *api__tgi_prefill(const api_gen_result *r, const uint8_t *prompt, size_t len);
/* OpenAI completions: {tokens, token_logprobs, top_logprobs, text_offset} of the prompt's
 * bytes (prompt non-NULL: echo) then of generated tokens from..to (out[0] is token from's
 * byte); text offsets start at off. */
cJSON *api__completion_logprobs(const api_gen_result *r, const uint8_t *prompt, size_t prompt_len,
                                const uint8_t *out, size_t from, size_t to, size_t off);
/* OpenAI chat: {content: [{token, logprob, bytes, top_logprobs}], refusal: null} of generated
 * tokens from..to (out[0] is token from's byte). */
cJSON *api__chat_logprobs(const api_gen_result *r, const uint8_t *out, size_t from, size_t to);
/* The prompt's log-probabilities (named by `field`) with a "state" to continue from: 422. */
api_err api__check_prompt_logprobs(const api_generate_req *req, const char *field, api_error *err);

#endif
