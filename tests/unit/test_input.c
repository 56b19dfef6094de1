/* test_input.c - engine/input.c: bytes to tokens and the email_subject_body transform. The
 * golden email case checks the same rules against the Python reference; these pin each rule. */
#include <criterion/criterion.h>
#include <string.h>

#include "engine/input.h"

static void xform(const char *msg, const char *want_subject, const char *want_body)
{
    uint8_t subject[LUNA_SUBJECT_MAX + 1];
    size_t slen, body;
    size_t len = strlen(msg);
    email_subject_body((const uint8_t *)msg, len, subject, &slen, &body);
    cr_assert_eq(slen, strlen(want_subject), "subject length %zu for %s", slen, msg);
    cr_assert_eq(memcmp(subject, want_subject, slen), 0, "subject of %s", msg);
    cr_assert_str_eq(msg + body, want_body);
}

Test(input, email_rules)
{
    xform("", "", "");
    xform("Subject: hi\n\nbody\n", "hi", "body\n");
    xform("From: a\r\nSUBJECT:\t  folded\r\n  over\r\n\tlines  \r\nX: y\r\n\r\nB", "folded over lines  ", "B");
    xform("Subject: no body\nFrom: x\n", "no body", "");
    xform("From: x\n\nSubject: in body\n", "", "Subject: in body\n");
    xform("Subject: first\nSubject: second\n\n", "first", "");
    xform("Subject : nope\nSubjects: nope\n\nb", "", "b");
    xform("X-Other: a\n  continued\nSubject:tight\n \n\nb", "tight ", "b");
    xform("\nbody only", "", "body only");
    xform("Subject: cr\r\n\nb", "cr", "b");
}

Test(input, long_subject_is_cut_at_998)
{
    char msg[3000] = "Subject: ";
    memset(msg + 9, 'a', 2000);
    strcpy(msg + 2009, "\n\nb");
    uint8_t subject[LUNA_SUBJECT_MAX + 1];
    size_t slen, body;
    email_subject_body((const uint8_t *)msg, strlen(msg), subject, &slen, &body);
    cr_assert_eq(slen, 998);
    cr_assert_eq(msg[body], 'b');
}

Test(input, tokens_of_a_sequence)
{
    luna_config cfg = {0};
    cfg.bos_id = 0, cfg.eos_id = 2, cfg.byte_offset = 4, cfg.append_eos = 1;
    const uint8_t bytes[3] = {0, 255, 'a'};
    uint8_t sub[LUNA_SUBJECT_MAX + 1];
    luna_seq s;
    seq_init(&s, &cfg, bytes, 3, sub);
    cr_assert_eq(s.n, 5);
    int want[5] = {0, 4, 259, 4 + 'a', 2};
    for (size_t i = 0; i < 5; i++) cr_assert_eq(seq_token(&s, i), want[i], "token %zu", i);
    cfg.append_eos = 0;
    cfg.input_transform = LUNA_XFORM_EMAIL_SUBJECT_BODY;
    const char *msg = "Subject: S\n\nB";
    seq_init(&s, &cfg, (const uint8_t *)msg, strlen(msg), sub);
    cr_assert_eq(s.n, 4, "bos S \\n B");
    cr_assert_eq(seq_token(&s, 1), 4 + 'S');
    cr_assert_eq(seq_token(&s, 2), 4 + '\n');
    cr_assert_eq(seq_token(&s, 3), 4 + 'B');
}
