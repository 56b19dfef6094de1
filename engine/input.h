/* input.h - what the model reads: request bytes to a token sequence (engine-internal).
 *
 * The sequence is never materialised: a luna_seq is a view of up to two byte runs (for the
 * email transform, the unfolded subject, which lives in a small caller-owned buffer, and the
 * body, which points into the request) plus the bos/eos tokens, and seq_token() reads token i
 * from it. A million-byte document therefore costs no extra copy. */
#ifndef LUNA_INPUT_H
#define LUNA_INPUT_H

#include <stddef.h>
#include <stdint.h>

#include "luna.h"

#define LUNA_SUBJECT_MAX 998 /* RFC 5322's line length limit; longer subjects are cut here */

typedef struct {
    const uint8_t *run[2]; /* the bytes the model reads: run[0] then run[1] */
    size_t len[2];
    int bos, eos;          /* token ids; eos < 0 when the config does not append it */
    int byte_offset;
    size_t n;              /* tokens: 1 + len[0] + len[1] + (eos >= 0) */
} luna_seq;

/* Builds the view of `bytes` as the model `cfg` reads it. For the email transform the subject
 * is unfolded into subject_buf (LUNA_SUBJECT_MAX + 1 bytes, caller-owned, must outlive seq). */
void seq_init(luna_seq *seq, const luna_config *cfg, const uint8_t *bytes, size_t len,
              uint8_t *subject_buf);

/* Token i of the sequence, 0 <= i < seq->n. */
int seq_token(const luna_seq *seq, size_t i);

/* The email transform alone: writes the unfolded subject (at most LUNA_SUBJECT_MAX bytes) to
 * subject, its length to *subject_len, and where the body starts to *body_off. */
void email_subject_body(const uint8_t *msg, size_t len, uint8_t *subject, size_t *subject_len,
                        size_t *body_off);

#endif
