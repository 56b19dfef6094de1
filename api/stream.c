/* stream.c - the events of one streamed choice (see stream.h). */
#include "api/stream.h"

#include <stdlib.h>
#include <string.h>

void api_seq_init(api_seq *s, const api_generate_req *req, size_t choice, api_gen_result *res, int byte_offset,
                  int eos_id, api_push_fn push, void *user)
{
    *s = (api_seq){.req = req, .choice = choice, .res = res, .byte_offset = byte_offset, .eos_id = eos_id,
                   .push = push, .user = user};
    res->out_len = 0;
}

static void emit(api_seq *s, int id, const uint8_t *bytes, size_t nb, const char *text, size_t nt, int special,
                 const api_gen_result *res)
{
    if (s->failed) return;
    s->index++;
    api_stream_token t = {s->choice, s->index, s->index == 1, id, text, nt, bytes, nb, special, res, s->res};
    int skip = 0;
    char *ev = api_render_stream_token(s->req, &t, &skip);
    if (s->push(s->user, ev, skip, &t) || (!ev && !skip)) s->failed = 1;
    free(ev);
}

static void flush_pending(api_seq *s, const api_gen_result *res)
{
    if (!s->pending) return;
    s->pending = 0;
    emit(s, s->byte_offset + s->pend_byte, &s->pend_byte, 1, s->pend_text, s->pend_len, 0, res);
}

int api_seq_bytes(api_seq *s, const uint8_t *b, size_t n)
{
    uint8_t *out = (uint8_t *)s->res->out;
    memcpy(out + s->res->out_len, b, n);
    s->res->out_len += n;
    if (!s->push) return 0;
    for (size_t i = 0; i < n && !s->failed; i++) {
        flush_pending(s, NULL);
        s->pending = 1;
        s->pend_byte = b[i];
        s->pend_len = api_utf8_feed(&s->utf8, b + i, 1, s->pend_text);
    }
    return s->failed;
}

int api_seq_finish(api_seq *s, int eos)
{
    if (!s->push) return 0;
    if (s->pending) s->pend_len += api_utf8_finish(&s->utf8, s->pend_text + s->pend_len);
    if (eos || !s->pending) {
        flush_pending(s, NULL);
        emit(s, eos ? s->eos_id : -1, NULL, 0, "", 0, 1, s->res);
    } else {
        flush_pending(s, s->res);
    }
    return s->failed;
}

void api_seq_abort(api_seq *s)
{
    if (s->push) flush_pending(s, NULL);
}
