/* fuzz_utf8_sse.c - libFuzzer harness for the output path of generation: the streaming UTF-8
 * sanitiser (api/utf8.c) and the server-sent events built on it (api/generate.c, api/openai.c).
 *
 * Input: byte 0 picks the answer format and options (TGI, OpenAI completion or chat; raw bytes,
 * echo / full text, include_usage, eos or not); bytes 1..4 seed the split points; the rest is
 * the "generated" output, arbitrary bytes.
 *
 * Checked beyond ASan/UBSan:
 *   - the output split at fuzzer-chosen points and fed piece by piece through api_utf8_feed /
 *     api_utf8_finish gives valid UTF-8 after every piece, never holds back more than 3 bytes,
 *     and equals api_utf8_sanitize of the whole, and equals an independent reference (Python's
 *     bytes.decode("utf-8", "replace"), written out below as Unicode's maximal-subpart rule);
 *   - a byte at a time, the same again;
 *   - the events of a stream of that output (fuzz/fuzz_stream.h) are each one "data: " line and
 *     a blank line of JSON, carry the sanitised output (NUL bytes too), and the whole answer,
 *     the stream end and a stream error render as valid UTF-8 JSON; the whole answer says what
 *     the stream said. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/utf8.h"
#include "fuzz/fuzz_common.h"
#include "fuzz/fuzz_stream.h"

/* The reference: at each position the longest prefix of a well-formed sequence (Unicode Table
 * 3-7); a complete one is copied, an incomplete one (or a byte that starts none) becomes one
 * U+FFFD and decoding resumes after it (after the single byte when the prefix is empty). */
static size_t ref_sanitize(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t w = 0, i = 0;
    while (i < n) {
        uint8_t b = s[i];
        int need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (b < 0x80) {
            out[w++] = b;
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            out[w++] = 0xEF, out[w++] = 0xBF, out[w++] = 0xBD;
            i++;
            continue;
        }
        size_t k = 1; /* bytes of the prefix that are well-formed so far */
        while ((int)k <= need && i + k < n) {
            uint8_t c = s[i + k];
            uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (c < l || c > h) break;
            k++;
        }
        if ((int)k == need + 1) {
            memcpy(out + w, s + i, k);
            w += k;
        } else {
            out[w++] = 0xEF, out[w++] = 0xBF, out[w++] = 0xBD;
        }
        i += k;
    }
    return w;
}

static uint32_t next_rand(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* A request of the format and options in flags, parsed the way the server parses one. */
static int make_req(uint8_t flags, api_generate_req *req)
{
    static const char *const bodies[3][2] = {
        {"{\"inputs\": \"It is a truth \\u00e9\", \"parameters\": {\"max_new_tokens\": 64, \"details\": true}}",
         "{\"inputs\": \"caf\\u00e9 \\ud83d\\ude00\", \"parameters\": {\"max_new_tokens\": 64, \"details\": true, "
         "\"return_raw_bytes\": true, \"return_full_text\": true, \"do_sample\": true, \"seed\": 7}}"},
        {"{\"model\": \"m\", \"prompt\": \"It is a truth\", \"max_tokens\": 64, \"stream\": true}",
         "{\"model\": \"m\", \"prompt\": [\"a\\u00e9\", \"b\\n\"], \"max_tokens\": 64, \"stream\": true, \"echo\": true, "
         "\"stream_options\": {\"include_usage\": true}}"},
        {"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 64, \"stream\": true}",
         "{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": [{\"type\": \"text\", \"text\": \"x\"}]}, "
         "{\"role\": \"user\", \"content\": \"\\u2603\"}], \"stream\": true, \"stream_options\": {\"include_usage\": true}}"},
    };
    int fmt = (flags & 3) % 3, variant = (flags >> 2) & 1;
    const char *b = bodies[fmt][variant];
    api_gen_limits lim = {1 << 20, 1 << 20, 100, NULL};
    api_error err;
    api_err rc = fmt == 0 ? api_parse_generate(b, strlen(b), &lim, req, &err)
                 : fmt == 1 ? api_parse_completions(b, strlen(b), &lim, req, &err)
                            : api_parse_chat(b, strlen(b), &lim, req, &err);
    FUZZ_CHECK(rc == API_OK, "the fixed request %d/%d was refused: %s", fmt, variant, err.message);
    api_generate_set_meta(req, "austen-lm", "0123456789abcdef", 1700000000);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5) return 0;
    uint8_t flags = data[0];
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 | (uint32_t)data[4] << 24;
    if (!seed) seed = 0x9E3779B9u;
    const uint8_t *in = data + 5;
    size_t n = size - 5;

    char *whole = malloc(API_UTF8_MAX_OUT(n) + 1);
    size_t whole_len = api_utf8_sanitize(in, n, whole);
    FUZZ_CHECK(whole_len <= 3 * n, "sanitize wrote %zu bytes for %zu", whole_len, n);
    FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)whole, whole_len), "api_utf8_sanitize gave invalid UTF-8");
    uint8_t *ref = malloc(3 * n + 1);
    size_t ref_len = ref_sanitize(in, n, ref);
    FUZZ_CHECK(ref_len == whole_len && !memcmp(ref, whole, ref_len), "api_utf8_sanitize differs from the reference");

    /* fed in pieces: lengths 0..16 from the seed, then byte by byte */
    for (int pass = 0; pass < 2; pass++) {
        char *out = malloc(API_UTF8_MAX_OUT(n) + 16);
        size_t w = 0;
        api_utf8 u = {0};
        uint32_t x = seed;
        for (size_t i = 0; i < n;) {
            size_t piece = pass == 0 ? next_rand(&x) % 17 : 1;
            if (piece > n - i) piece = n - i;
            size_t got = api_utf8_feed(&u, in + i, piece, out + w);
            FUZZ_CHECK(got <= API_UTF8_MAX_OUT(piece), "feed wrote %zu bytes for %zu", got, piece);
            FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)out + w, got), "a piece's output is not valid UTF-8");
            FUZZ_CHECK(u.npend >= 0 && u.npend <= 3, "npend %d", u.npend);
            w += got;
            i += piece;
        }
        size_t fin = api_utf8_finish(&u, out + w);
        FUZZ_CHECK(fin == 0 || fin == 3, "finish wrote %zu bytes", fin);
        FUZZ_CHECK(u.npend == 0, "state not empty after finish");
        w += fin;
        FUZZ_CHECK(w == whole_len && !memcmp(out, whole, w), "split feeding (pass %d) differs from the whole", pass);
        free(out);
    }
    free(ref);
    free(whole);

    /* the SSE path: the output as one choice of a stream (every choice for OpenAI's lists) */
    api_generate_req req;
    make_req(flags, &req);
    int eos = (flags >> 3) & 1;
    size_t max_out = 256; /* each byte is an event rendered and parsed twice: keep runs fast */
    api_gen_result *res = calloc(req.n_prompts, sizeof *res);
    for (size_t c = 0; c < req.n_prompts; c++) {
        size_t off = c * n / req.n_prompts;
        res[c].out = in + off;
        res[c].out_len = (n - off) < max_out ? n - off : max_out;
        res[c].finish = eos ? "eos_token" : (flags & 16) ? "stop_sequence" : "length";
        res[c].generated_tokens = res[c].out_len + (size_t)eos;
        res[c].prompt_tokens = req.prompts[c].len + 1;
        res[c].has_seed = req.do_sample;
        res[c].seed = req.seed;
        res[c].byte_offset = 4;
    }
    char *s = api_render_generate(&req, res);
    cJSON *j = fuzz_json_doc(s, "the whole answer");
    cJSON_Delete(j);
    for (size_t c = 0; c < req.n_prompts; c++) { /* the stream, and the answer says what it says */
        size_t said_len;
        char *said = fuzz_stream_choice(&req, c, &res[c], eos, &said_len);
        fuzz_check_answer(&req, s, c, said, said_len);
        free(said);
    }
    free(s);
    int skip = 0;
    char *end = api_render_stream_end(&req, res, &skip);
    if (!skip) {
        int events = fuzz_check_sse(end, 1, "the stream end");
        FUZZ_CHECK(events == 1 + req.include_usage, "the stream end has %d events", events);
        free(end);
    } else {
        FUZZ_CHECK(req.format == API_FMT_TGI && end == NULL, "only TGI has no stream end");
    }
    api_error e;
    api_fail(&e, API_E_ENGINE_MEMORY, "out of memory after %zu bytes", n);
    char *se = api_render_stream_error(&req, &e);
    FUZZ_CHECK(fuzz_check_sse(se, 0, "a stream error") == 1, "one error event");
    free(se);
    free(res);
    api_generate_free(&req);
    return 0;
}
