/* input.c - request bytes to the model's token sequence, and the email transform.
 * docs/model-format.md defines both; tools/luna_ref.py implements the same rules in Python. */
#include "input.h"

#include <string.h>

/* One header line: [start, end) without its line break; *next is where the next line starts. */
static size_t line_end(const uint8_t *s, size_t len, size_t start, size_t *next)
{
    const uint8_t *lf = memchr(s + start, '\n', len - start);
    size_t end = lf ? (size_t)(lf - s) : len;
    *next = lf ? end + 1 : len;
    if (end > start && s[end - 1] == '\r') end--;
    return end;
}

static int is_wsp(uint8_t c) { return c == ' ' || c == '\t'; }

static void append(uint8_t *dst, size_t *dlen, const uint8_t *src, size_t n)
{
    size_t room = LUNA_SUBJECT_MAX - *dlen;
    if (n > room) n = room;
    memcpy(dst + *dlen, src, n);
    *dlen += n;
}

void email_subject_body(const uint8_t *msg, size_t len, uint8_t *subject, size_t *subject_len,
                        size_t *body_off)
{
    size_t pos = 0, slen = 0;
    int found = 0, in_subject = 0;
    *body_off = len; /* no empty line: all header, empty body */
    while (pos < len) {
        size_t next, end = line_end(msg, len, pos, &next);
        if (end == pos) { /* the empty line ends the header */
            *body_off = next;
            break;
        }
        if (in_subject && is_wsp(msg[pos])) { /* a folded continuation of Subject */
            size_t s = pos;
            while (s < end && is_wsp(msg[s])) s++;
            append(subject, &slen, (const uint8_t *)" ", 1);
            append(subject, &slen, msg + s, end - s);
        } else {
            in_subject = 0;
            if (!found && end - pos >= 8 && strncasecmp((const char *)msg + pos, "subject:", 8) == 0) {
                size_t s = pos + 8;
                while (s < end && is_wsp(msg[s])) s++;
                append(subject, &slen, msg + s, end - s);
                found = in_subject = 1;
            }
        }
        pos = next;
    }
    *subject_len = slen;
}

void seq_init(luna_seq *seq, const luna_config *cfg, const uint8_t *bytes, size_t len,
              uint8_t *subject_buf)
{
    memset(seq, 0, sizeof *seq);
    seq->bos = cfg->bos_id;
    seq->eos = cfg->append_eos ? cfg->eos_id : -1;
    seq->byte_offset = cfg->byte_offset;
    if (cfg->input_transform == LUNA_XFORM_EMAIL_SUBJECT_BODY) {
        size_t slen, body;
        email_subject_body(bytes, len, subject_buf, &slen, &body);
        subject_buf[slen++] = '\n'; /* subject, newline, body */
        seq->run[0] = subject_buf;
        seq->len[0] = slen;
        seq->run[1] = bytes + body;
        seq->len[1] = len - body;
    } else {
        seq->run[0] = bytes;
        seq->len[0] = len;
    }
    seq->n = 1 + seq->len[0] + seq->len[1] + (seq->eos >= 0);
}

int seq_token(const luna_seq *seq, size_t i)
{
    if (i == 0) return seq->bos;
    i--;
    if (i < seq->len[0]) return seq->byte_offset + seq->run[0][i];
    i -= seq->len[0];
    if (i < seq->len[1]) return seq->byte_offset + seq->run[1][i];
    return seq->eos;
}

size_t luna_input_tokens(const luna_model *m, const uint8_t *bytes, size_t len)
{
    uint8_t subject[LUNA_SUBJECT_MAX + 1];
    luna_seq seq;
    seq_init(&seq, luna_model_config(m), bytes, len, subject);
    return seq.n;
}
