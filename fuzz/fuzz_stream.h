/* fuzz_stream.h - the server's per-byte event stream of one generated choice, run through the
 * sequencer the server runs (api/stream.h): each byte is a token whose event goes out when
 * the next byte arrives, the held-back end of a UTF-8 sequence is flushed at the end, and the
 * last event carries the result (after eos, the eos token does).
 *
 * Checked: every event is one "data: " line plus a blank line holding one JSON value; the
 * texts the events carry, read out of their JSON with their exact length (TGI token.text,
 * OpenAI choices[0].text or delta.content; U+0000 included), concatenate to the echoed prompt
 * (an OpenAI completion with echo) and the output, each sanitised on its own
 * (api_utf8_sanitize); TGI's raw bytes_base64 decode to the token's byte; TGI's final
 * generated_text is the (prompt and) output, sanitised the same way. fuzz_check_answer then
 * checks that the whole answer (not streamed) says what the stream said. */
#ifndef FUZZ_STREAM_H
#define FUZZ_STREAM_H

#include "api/api.h"
#include "api/stream.h"
#include "api/utf8.h"
#include "fuzz/fuzz_common.h"

/* sanitise(a) + sanitise(b), each on its own, into a malloc'd buffer; *n its length. */
static inline char *fuzz_two_texts(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, size_t *n)
{
    char *t = malloc(API_UTF8_MAX_OUT(na) + API_UTF8_MAX_OUT(nb) + 1);
    FUZZ_CHECK(t != NULL, "out of memory");
    *n = api_utf8_sanitize(a, na, t);
    *n += api_utf8_sanitize(b, nb, t + *n);
    FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)t, *n), "api_utf8_sanitize gave invalid UTF-8");
    return t;
}

/* The text an event carries, appended to buf. */
static inline void fuzz_event_text(const api_generate_req *req, const char *ev, char *buf, size_t *len,
                                   const api_gen_result *res)
{
    const char *payload = ev + 6;
    cJSON *j = cJSON_Parse(payload);
    FUZZ_CHECK(j != NULL, "event JSON");
    const char *key = "text";
    if (req->format == API_FMT_TGI) {
        const cJSON *tk = cJSON_GetObjectItemCaseSensitive(j, "token");
        FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(tk, "text")), "the event has no token.text");
        if (req->raw_bytes) {
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(tk, "bytes_base64");
            FUZZ_CHECK(cJSON_IsString(b), "bytes_base64 missing");
            uint8_t raw[8];
            long n = api_base64_decode(b->valuestring, strlen(b->valuestring), raw);
            FUZZ_CHECK(n >= 0 && n <= 1, "bytes_base64 decodes to %ld bytes", n);
        }
        const cJSON *gt = cJSON_GetObjectItemCaseSensitive(j, "generated_text");
        if (res) {
            FUZZ_CHECK(cJSON_IsString(gt), "the last event has no generated_text");
            const api_doc *p = &req->prompts[0];
            size_t pl = req->return_full_text ? p->len : 0, wn, gn;
            char *want = fuzz_two_texts(p->data, pl, res->out, res->out_len, &wn);
            char *got = fuzz_json_string(payload, "generated_text", 0, &gn);
            FUZZ_CHECK(got != NULL, "generated_text is not a string member");
            FUZZ_CHECK(gn == wn && !memcmp(got, want, wn), "generated_text (%zu bytes) differs from the sanitised "
                       "output (%zu bytes)", gn, wn);
            free(got);
            free(want);
        } else {
            FUZZ_CHECK(cJSON_IsNull(gt), "generated_text before the end");
        }
    } else {
        const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
        const cJSON *text;
        if (req->format == API_FMT_CHAT) {
            key = "content";
            text = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ch, "delta"), "content");
        } else {
            text = cJSON_GetObjectItemCaseSensitive(ch, "text");
        }
        FUZZ_CHECK(cJSON_IsString(text), "the event carries no text");
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
        FUZZ_CHECK(res ? cJSON_IsString(fr) : cJSON_IsNull(fr), "finish_reason");
    }
    size_t n;
    char *t = fuzz_json_string(payload, key, 0, &n);
    FUZZ_CHECK(t != NULL, "the event's %s is not a string member", key);
    memcpy(buf + *len, t, n);
    *len += n;
    free(t);
    cJSON_Delete(j);
}

/* What the pushed events said so far, for fuzz_push. */
typedef struct {
    const api_generate_req *req;
    char *buf;
    size_t len;
} fuzz_said;

/* The sequencer's push function: each event is checked and its text collected. */
static inline int fuzz_push(void *user, const char *ev, int skip, const api_stream_token *t)
{
    fuzz_said *s = user;
    if (skip) {
        FUZZ_CHECK(ev == NULL && s->req->format != API_FMT_TGI && t->text_len == 0 && !t->res,
                   "an event with something to say was skipped");
        return 0;
    }
    FUZZ_CHECK(ev != NULL, "an event could not be rendered");
    FUZZ_CHECK(fuzz_check_sse(ev, 0, "a token event") == 1, "one event per token");
    fuzz_event_text(s->req, ev, s->buf, &s->len, t->res);
    return 0;
}

/* Replays choice `choice` of req with result res (res->out: the generated bytes) through the
 * server's own event sequencer (api/stream.h), a byte at a time as the engine emits them. eos:
 * the generation ended with the eos token. Returns what the events said, together (malloc'd;
 * *text_len its length). */
static inline char *fuzz_stream_choice(const api_generate_req *req, size_t choice, const api_gen_result *res, int eos,
                                       size_t *text_len)
{
    const api_doc *p = &req->prompts[choice];
    int echo = req->format == API_FMT_COMPLETION && req->return_full_text;
    size_t cap = API_UTF8_MAX_OUT(p->len + res->out_len) + API_UTF8_MAX_OUT(0) + 16;
    fuzz_said said = {req, malloc(cap), 0};
    uint8_t *out = malloc(res->out_len + 1);
    FUZZ_CHECK(said.buf != NULL && out != NULL, "out of memory");
    api_gen_result r = *res; /* the sequencer records the bytes again, into out */
    r.out = out;
    api_seq seq;
    api_seq_init(&seq, req, choice, &r, res->byte_offset, 2, fuzz_push, &said);
    for (size_t i = 0; i < res->out_len; i++) {
        FUZZ_CHECK(api_seq_bytes(&seq, res->out + i, 1) == 0, "the sequencer failed");
        FUZZ_CHECK(seq.utf8.npend >= 0 && seq.utf8.npend <= 3, "npend %d", seq.utf8.npend);
        FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)seq.pend_text, seq.pend_len), "a token's text is not valid UTF-8");
    }
    FUZZ_CHECK(api_seq_finish(&seq, eos) == 0, "the sequencer failed at the end");
    FUZZ_CHECK(r.out_len == res->out_len && !memcmp(out, res->out, res->out_len), "the sequencer recorded other bytes");
    free(out);
    /* what the events say, together: (the echoed prompt +) the output, each sanitised alone */
    size_t wn;
    char *want = fuzz_two_texts(p->data, echo ? p->len : 0, res->out, res->out_len, &wn);
    FUZZ_CHECK(said.len == wn && !memcmp(said.buf, want, wn),
               "the events' texts (%zu bytes) are not the sanitised output (%zu bytes)", said.len, wn);
    free(want);
    *text_len = said.len;
    return said.buf;
}

/* The whole answer (api_render_generate) says, for `choice`, what its stream said (got, from
 * fuzz_stream_choice): OpenAI's choices[choice].text or .message.content is the stream's text,
 * echo included; TGI's generated_text is the sanitised prompt (return_full_text) and then the
 * stream's text. */
static inline void fuzz_check_answer(const api_generate_req *req, const char *answer, size_t choice,
                                     const char *got, size_t got_len)
{
    size_t n;
    char *t;
    if (req->format == API_FMT_TGI) {
        t = fuzz_json_string(answer, "generated_text", 0, &n);
        FUZZ_CHECK(t != NULL, "the answer has no generated_text");
        const api_doc *p = &req->prompts[0];
        size_t pn;
        char *pt = fuzz_two_texts(p->data, req->return_full_text ? p->len : 0, NULL, 0, &pn);
        FUZZ_CHECK(n == pn + got_len && !memcmp(t, pt, pn) && !memcmp(t + pn, got, got_len),
                   "the answer's generated_text (%zu bytes) is not the prompt (%zu) and the stream's text (%zu)",
                   n, pn, got_len);
        free(pt);
    } else {
        t = fuzz_json_string(answer, req->format == API_FMT_CHAT ? "content" : "text", (int)choice, &n);
        FUZZ_CHECK(t != NULL, "the answer has no text for choice %zu", choice);
        FUZZ_CHECK(n == got_len && !memcmp(t, got, n),
                   "choice %zu: the answer's text (%zu bytes) is not what the stream said (%zu bytes)", choice, n,
                   got_len);
    }
    free(t);
}

#endif
