/* state.c - portable generation states in the generation APIs (issue 26).
 *
 * Request: "state": the "data" string of a state another response returned (base64), or that
 * whole object; the prompt ("inputs", "prompt", the rendered chat) then comes after the
 * state's context. "return_state": true asks for the state after the generation (TGI: under
 * "parameters"; OpenAI: top level). The server imports and checks the state
 * (luna_gen_state_import); here it is only decoded.
 *
 * Response: "state": {"data": base64 of the export, "model_id", "tokens", "sha256"}: on TGI's
 * answer (and the last stream event) and on each OpenAI choice (and its last chunk). The
 * context it holds is bos (unless it was itself continued), the prompt, and every generated
 * token: the text, then the eos or stop sequence that ended it. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/internal.h"

api_err api__parse_state(const cJSON *root, const cJSON *flags, api_generate_req *req, api_error *err)
{
    api_err rc;
    if (flags && (rc = api__get_bool(flags, "return_state", &req->return_state, err))) return rc;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "state");
    if (!api__given(s)) return API_OK;
    const cJSON *data = cJSON_IsObject(s) ? cJSON_GetObjectItemCaseSensitive(s, "data") : s;
    if (!cJSON_IsString(data))
        return api_fail(err, API_E_VALIDATION, "\"state\" must be a state a response returned: its \"data\" "
                        "(base64) or the whole object"), err->param = "state", err->kind;
    if (req->n_prompts != 1)
        return api_fail(err, API_E_VALIDATION, "\"state\" continues one prompt; this request has %zu",
                        req->n_prompts), err->param = "state", err->kind;
    api__gen_storage *st = req->storage;
    size_t sl = strlen(data->valuestring);
    if (!(st->state = malloc(sl / 4 * 3 + 3)))
        return api_fail(err, API_E_ENGINE_MEMORY, "out of memory decoding the state"), err->kind;
    long got = api_base64_decode(data->valuestring, sl, st->state);
    if (got <= 0)
        return api_fail(err, API_E_VALIDATION, "\"state\" is not valid base64"), err->param = "state", err->kind;
    req->state = st->state;
    req->state_len = (size_t)got;
    return API_OK;
}

int api__add_state(cJSON *o, const api_gen_result *res)
{
    if (!res->state) return 0;
    char *b = api_base64_encode(res->state, res->state_len);
    cJSON *s = b ? cJSON_AddObjectToObject(o, "state") : NULL;
    if (!s || !cJSON_AddStringToObject(s, "data", b)) {
        free(b);
        return -1;
    }
    free(b);
    char hex[65];
    static const char digits[] = "0123456789abcdef";
    size_t n = res->state_len < 32 ? res->state_len : 32; /* the export ends with its SHA-256 */
    for (size_t i = 0; i < n; i++) {
        uint8_t x = res->state[res->state_len - n + i];
        hex[2 * i] = digits[x >> 4], hex[2 * i + 1] = digits[x & 15];
    }
    hex[2 * n] = 0;
    if (!cJSON_AddStringToObject(s, "model_id", res->state_model_id) ||
        !cJSON_AddNumberToObject(s, "tokens", (double)res->state_tokens) || !cJSON_AddStringToObject(s, "sha256", hex))
        return -1;
    return 0;
}
