/* test_state.c - states across requests (issue 26): engine/sha256.c against FIPS 180-4's
 * vectors and across its two paths; engine/model_id.c (the same values give the same id, any
 * change another); engine/state.c (a state exported after N tokens and imported into another
 * continues bit for bit, at N = 0, inside, at and across chunk boundaries, with the recent
 * tokens of n-gram embeddings; every corruption is refused with its reason and leaves the
 * state alone); engine/logprob.c against a straightforward reference in long double and
 * against the PyTorch reference's float64 logits. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/luna.h"
#include "engine/sha256.h"
#include "fixtures.h"
#include "golden.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len + 1);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    b[*len] = 0;
    return b;
}

static luna_model *load(const char *dir)
{
    luna_model *m;
    char err[512];
    int rc = luna_model_load(dir, &m, err, sizeof err);
    cr_assert_eq(rc, 0, "load %s: %s", dir, err);
    return m;
}

/* ---- sha256.c -------------------------------------------------------------------------------- */

static void hex(const uint8_t *d, char *out)
{
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

/* FIPS 180-4 / NIST's examples, through both compressions (the portable one always; the SHA
 * extensions when this CPU has them), whole and fed in odd pieces. */
Test(sha256, nist_vectors_on_both_paths)
{
    static const struct {
        const char *msg;
        const char *digest;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    char got[65];
    uint8_t d[32];
    for (int hw = 0; hw < 2; hw++) {
        luna__sha256_use_hw(hw);
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
            luna_sha256(v[i].msg, strlen(v[i].msg), d);
            hex(d, got);
            cr_expect_str_eq(got, v[i].digest, "hw %d: \"%s\"", hw, v[i].msg);
        }
        /* a million 'a', in pieces of 1..997 bytes */
        char *a = malloc(1000000);
        memset(a, 'a', 1000000);
        luna_sha256_ctx c;
        luna_sha256_init(&c);
        for (size_t at = 0, step = 1; at < 1000000; step = step * 7 % 997 + 1) {
            size_t k = step < 1000000 - at ? step : 1000000 - at;
            luna_sha256_update(&c, a + at, k);
            at += k;
        }
        luna_sha256_final(&c, d);
        hex(d, got);
        cr_expect_str_eq(got, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", "hw %d", hw);
        free(a);
    }
    luna__sha256_use_hw(1);
}

/* The two compressions agree on every length around the block and padding boundaries. */
Test(sha256, both_paths_agree)
{
    uint8_t buf[300], a[32], b[32];
    uint64_t r = 1;
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(fx_rand(&r) >> 32);
    if (!luna__sha256_use_hw(1)) return; /* no SHA extensions (or valgrind, which hides them): one path */
    for (size_t n = 0; n <= sizeof buf; n++) {
        luna__sha256_use_hw(0);
        luna_sha256(buf, n, a);
        luna__sha256_use_hw(1);
        luna_sha256(buf, n, b);
        cr_expect_arr_eq(a, b, 32, "length %zu", n);
    }
}

/* ---- model_id.c ------------------------------------------------------------------------------ */

Test(model_id, stable_across_loads)
{
    luna_model *a = golden_model("lm_defaults"), *b = golden_model("lm_defaults"), *o = golden_model("lm_f16_h1");
    uint8_t ia[32], ib[32], io[32], zero[32] = {0};
    luna_model_id(a, ia);
    luna_model_id(b, ib);
    luna_model_id(o, io);
    cr_expect_arr_eq(ia, ib, 32, "two loads of one directory");
    cr_expect(memcmp(ia, io, 32) != 0, "two models");
    cr_expect(memcmp(ia, zero, 32) != 0);
    char h[65], want[65];
    luna_model_id_hex(a, h);
    hex(ia, want);
    cr_expect_str_eq(h, want);
    luna_model_id(NULL, ia);
    cr_expect_arr_eq(ia, zero, 32, "no model: zeros");
    luna_model_free(a), luna_model_free(b), luna_model_free(o);
}

/* Another directory with the same weight file and the same config values, written with other
 * spacing and key order: the same model. One flipped bit in a weight, or another eos_id:
 * another model. */
Test(model_id, the_same_values_are_the_same_model)
{
    char dir[256];
    cr_assert_eq(fx_tmpdir(dir, sizeof dir), 0);
    size_t wlen;
    uint8_t *w = read_all(GOLDEN_DIR "/lm_defaults/model.safetensors", &wlen);
    static const char respaced[] = "{\"ffn\":32,\"layers\":2,\"l\":8,\"H\":2,\"d\":16,\"task\":\"causal-lm\","
                                   "\n\n  \"format_version\":1, \"format\":\"luna\"}";
    cr_assert_eq(fx_write_file(dir, "config.json", respaced, strlen(respaced)), 0);
    cr_assert_eq(fx_write_file(dir, "model.safetensors", w, wlen), 0);
    luna_model *orig = golden_model("lm_defaults"), *copy = load(dir);
    uint8_t io[32], ic[32];
    luna_model_id(orig, io);
    luna_model_id(copy, ic);
    cr_expect_arr_eq(io, ic, 32, "respaced config.json, same weights");
    luna_model_free(copy);

    w[wlen - 1] ^= 0x01; /* the last tensor's last float: its top mantissa byte's lowest bit */
    cr_assert_eq(fx_write_file(dir, "model.safetensors", w, wlen), 0);
    copy = load(dir);
    luna_model_id(copy, ic);
    cr_expect(memcmp(io, ic, 32) != 0, "one weight changed");
    luna_model_free(copy);

    w[wlen - 1] ^= 0x01;
    cr_assert_eq(fx_write_file(dir, "model.safetensors", w, wlen), 0);
    static const char eos[] = "{\"format\":\"luna\",\"format_version\":1,\"task\":\"causal-lm\",\"d\":16,\"H\":2,"
                              "\"l\":8,\"layers\":2,\"ffn\":32,\"eos_id\":3}";
    cr_assert_eq(fx_write_file(dir, "config.json", eos, strlen(eos)), 0);
    copy = load(dir);
    luna_model_id(copy, ic);
    cr_expect(memcmp(io, ic, 32) != 0, "another eos_id");
    luna_model_free(copy);
    luna_model_free(orig);
    free(w);
    fx_rmtree(dir);
}

/* Writes the fixture classifier with every weight rounded to F16, stored as `dtype`. */
static void write_f16_values(const char *dir, const luna_config *cfg, st_dtype dtype)
{
    char *json = fx_config_json(cfg, NULL, NULL);
    cr_assert_eq(fx_write_file(dir, "config.json", json, strlen(json)), 0);
    free(json);
    size_t n = fx_model_tensors(cfg, NULL, 0);
    fx_tensor *ts = calloc(n, sizeof *ts);
    fx_model_tensors(cfg, ts, n);
    fx_st *w = fx_st_new();
    for (size_t i = 0; i < n; i++) {
        size_t numel = ts[i].ndim == 2 ? ts[i].shape[0] * ts[i].shape[1] : ts[i].shape[0];
        float *v = malloc(numel * sizeof *v);
        for (size_t k = 0; k < numel; k++) v[k] = fx_round(ST_F16, fx_weight(3, ts[i].name, k));
        cr_assert_eq(fx_st_add(w, ts[i].name, dtype, ts[i].ndim, ts[i].shape, v), 0);
        free(v);
    }
    size_t len;
    uint8_t *img = fx_st_build(w, &len);
    cr_assert_eq(fx_write_file(dir, "model.safetensors", img, len), 0);
    free(img);
    fx_st_free(w);
    free(ts);
}

/* The identity is of the values the model computes with: an F16 file and an F32 file of the
 * same values are one model (and one for a classifier too: every task has an identity). */
Test(model_id, f16_and_f32_of_the_same_values)
{
    luna_config cfg;
    fx_config_default(&cfg);
    char d16[256], d32[256];
    cr_assert_eq(fx_tmpdir(d16, sizeof d16), 0);
    cr_assert_eq(fx_tmpdir(d32, sizeof d32), 0);
    write_f16_values(d16, &cfg, ST_F16);
    write_f16_values(d32, &cfg, ST_F32);
    luna_model *a = load(d16), *b = load(d32);
    uint8_t ia[32], ib[32];
    luna_model_id(a, ia);
    luna_model_id(b, ib);
    cr_expect_arr_eq(ia, ib, 32);
    luna_model_free(a), luna_model_free(b);
    fx_rmtree(d16), fx_rmtree(d32);
}

/* ---- state.c: the round trip ------------------------------------------------------------------- */

static luna_ctx *ctx_new(const luna_model *m, int chunk)
{
    luna_ctx_opts o = {chunk, LUNA_ATTN_LUNA, 1};
    luna_ctx *c;
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    return c;
}

static luna_gen_state *state_new(const luna_model *m)
{
    luna_gen_state *s;
    cr_assert_eq(luna_gen_state_new(m, &s), 0);
    return s;
}

/* bos, then pseudo-random bytes */
static int32_t *tokens(const luna_config *cfg, size_t n, uint64_t seed)
{
    int32_t *t = malloc(n * sizeof *t);
    t[0] = cfg->bos_id;
    for (size_t i = 1; i < n; i++) t[i] = cfg->byte_offset + (int32_t)(fx_rand(&seed) % 256);
    return t;
}

/* Exports s (with logits when not NULL) into a malloc'd buffer. */
static uint8_t *export(const luna_gen_state *s, const float *logits, size_t *len)
{
    size_t need = 0;
    cr_assert_eq(luna_gen_state_export(s, logits, NULL, 0, &need), LUNA_EINVAL, "no buffer: EINVAL");
    uint8_t *b = malloc(need);
    cr_assert_eq(luna_gen_state_export(s, logits, b, need, len), 0);
    cr_assert_eq(*len, need);
    return b;
}

/* Seals a hand-edited state again: the SHA-256 of everything before the last 32 bytes. */
static void reseal(uint8_t *b, size_t len) { luna_sha256(b, len - 32, b + len - 32); }

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}


/* After N tokens (N = 0 included), a state exported with its logits and imported into another
 * state (one that had consumed other tokens) continues bit for bit as the original: a prefill
 * of every row's logits, then single steps. The import gives back the logits, and exporting
 * the imported state gives back the same bytes. */
static void round_trip(const char *model, int chunk)
{
    luna_model *m = golden_model(model);
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size, M = 37, steps = 5;
    luna_ctx *c = ctx_new(m, chunk);
    int32_t *t = tokens(cfg, 400, 17);
    size_t Ns[] = {0, 1, 2, 3, (size_t)chunk - 1, (size_t)chunk, (size_t)chunk + 1, 2 * (size_t)chunk + 5, 150};
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    float *ra = malloc((M + steps) * V * sizeof(float)), *rb = malloc((M + steps) * V * sizeof(float));
    for (size_t k = 0; k < sizeof Ns / sizeof Ns[0]; k++) {
        size_t N = Ns[k];
        luna_gen_state *a = state_new(m), *b = state_new(m);
        if (N > 0) cr_assert_eq(luna_prefill(c, a, t, N, la, 0), 0);
        size_t len;
        uint8_t *buf = export(a, N > 0 ? la : NULL, &len);
        cr_expect_eq(len, luna_gen_state_export_bytes(m, N > 0));
        cr_assert_eq(luna_prefill(c, b, t + 200, 9, NULL, 0), 0); /* something to overwrite */
        int has = -1;
        const char *why = NULL;
        memset(lb, 0, V * sizeof(float));
        int rc = luna_gen_state_import(b, buf, len, lb, &has, &why);
        cr_assert_eq(rc, 0, "%s N %zu: %s", model, N, why ? why : "?");
        cr_expect_eq(has, N > 0);
        if (N > 0) cr_expect_arr_eq(la, lb, V * sizeof(float), "%s N %zu: the logits come back", model, N);
        cr_expect_eq(luna_gen_state_tokens(b), N);
        size_t len2;
        uint8_t *again = export(b, N > 0 ? lb : NULL, &len2);
        cr_expect(len2 == len && memcmp(buf, again, len) == 0, "%s N %zu: export(import(x)) == x", model, N);
        /* the continuation: every row of a prefill, then steps */
        cr_assert_eq(luna_prefill(c, a, t + N, M, ra, 1), 0);
        cr_assert_eq(luna_prefill(c, b, t + N, M, rb, 1), 0);
        for (size_t i = 0; i < steps; i++) {
            cr_assert_eq(luna_step(c, a, t[N + M + i], ra + (M + i) * V), 0);
            cr_assert_eq(luna_step(c, b, t[N + M + i], rb + (M + i) * V), 0);
        }
        cr_expect_arr_eq(ra, rb, (M + steps) * V * sizeof(float), "%s chunk %d N %zu: bit for bit", model,
                         chunk, N);
        free(buf), free(again);
        luna_gen_state_free(a), luna_gen_state_free(b);
    }
    free(la), free(lb), free(ra), free(rb), free(t);
    luna_ctx_free(c);
    luna_model_free(m);
}

Test(state, round_trip_is_bit_exact) { round_trip("lm_defaults", 16); }
Test(state, round_trip_untied_learned_positions) { round_trip("lm_legacy_untied_prenorm_learned", 7); }
Test(state, round_trip_ngram_embed) { round_trip("lm_ngram_embed", 16); }
Test(state, round_trip_hash_ngrams) { round_trip("lm_hash_ngrams", 5); }
Test(state, round_trip_f16_one_head) { round_trip("lm_f16_h1", 64); }

/* A state at max_positions goes through too, and refuses one more token on both sides. */
Test(state, round_trip_at_max_positions)
{
    luna_model *m = golden_model("lm_ngram_embed");
    const luna_config *cfg = luna_model_config(m);
    size_t max = (size_t)cfg->max_positions;
    luna_ctx *c = ctx_new(m, 64);
    int32_t *t = tokens(cfg, max + 1, 5);
    luna_gen_state *a = state_new(m), *b = state_new(m);
    cr_assert_eq(luna_prefill(c, a, t, max, NULL, 0), 0);
    size_t len;
    uint8_t *buf = export(a, NULL, &len);
    cr_assert_eq(luna_gen_state_import(b, buf, len, NULL, NULL, NULL), 0);
    cr_expect_eq(luna_gen_state_tokens(b), max);
    cr_expect_eq(luna_step(c, b, t[max], NULL), LUNA_ETOOLONG);
    free(buf), free(t);
    luna_gen_state_free(a), luna_gen_state_free(b);
    luna_ctx_free(c);
    luna_model_free(m);
}

/* ---- state.c: what import refuses ------------------------------------------------------------ */

/* The layout of docs/model-format.md, for the edits below. */
enum { OFF_VERSION = 8, OFF_NLOGITS = 12, OFF_ID = 16, OFF_T = 48, OFF_NSUMS = 56, OFF_NRECENT = 64, OFF_ZERO = 68,
       HEADER = 72 };

typedef struct {
    luna_model *m;
    const luna_config *cfg;
    size_t V, n_sums, n_recent;
    uint8_t *good; /* a state after 50 tokens of lm_ngram_embed, with logits */
    size_t len;
    luna_gen_state *target; /* a state after 3 other tokens: what every refusal must leave alone */
    uint8_t *before;
    size_t before_len;
} corrupt_fx;

static void corrupt_open(corrupt_fx *f)
{
    f->m = golden_model("lm_ngram_embed"); /* 4 recent tokens, max_positions 600 */
    f->cfg = luna_model_config(f->m);
    f->V = (size_t)f->cfg->vocab_size;
    f->n_sums = (size_t)f->cfg->layers * (size_t)f->cfg->d * (size_t)f->cfg->l; /* tied */
    f->n_recent = 4;
    luna_ctx *c = ctx_new(f->m, 16);
    int32_t *t = tokens(f->cfg, 60, 2);
    luna_gen_state *s = state_new(f->m);
    float *lg = malloc(f->V * sizeof(float));
    cr_assert_eq(luna_prefill(c, s, t, 50, lg, 0), 0);
    f->good = export(s, lg, &f->len);
    cr_assert_eq(f->len, HEADER + 8 * f->n_sums + 4 * f->n_recent + 4 * f->V + 32);
    f->target = state_new(f->m);
    cr_assert_eq(luna_prefill(c, f->target, t + 50, 3, NULL, 0), 0);
    f->before = export(f->target, NULL, &f->before_len);
    free(lg), free(t);
    luna_gen_state_free(s);
    luna_ctx_free(c);
}

static void corrupt_close(corrupt_fx *f)
{
    free(f->good), free(f->before);
    luna_gen_state_free(f->target);
    luna_model_free(f->m);
}

/* Imports b[0..len) into the target and expects a refusal whose reason contains `reason`,
 * with the target and the logits buffer untouched. */
static void expect_refused(corrupt_fx *f, const uint8_t *b, size_t len, const char *reason, const char *what)
{
    float *lg = malloc(f->V * sizeof(float));
    for (size_t i = 0; i < f->V; i++) lg[i] = 12345.0f;
    int has = 7;
    const char *why = NULL;
    int rc = luna_gen_state_import(f->target, b, len, lg, &has, &why);
    cr_expect_eq(rc, LUNA_EINVAL, "%s: import returned %d", what, rc);
    cr_expect(why && strstr(why, reason), "%s: reason \"%s\", expected \"%s\"", what, why ? why : "(none)", reason);
    cr_expect_eq(has, 7, "%s: has_logits written", what);
    for (size_t i = 0; i < f->V; i++)
        if (lg[i] != 12345.0f) {
            cr_expect_fail("%s: logits written", what);
            break;
        }
    size_t n;
    uint8_t *now = export(f->target, NULL, &n);
    cr_expect(n == f->before_len && memcmp(now, f->before, n) == 0, "%s: the state changed", what);
    free(now), free(lg);
}

/* A copy of the good state to edit (len + extra bytes of room). */
static uint8_t *dup(const corrupt_fx *f, size_t extra)
{
    uint8_t *b = malloc(f->len + extra);
    memcpy(b, f->good, f->len);
    return b;
}

Test(state, refuses_bad_magic_version_and_sizes)
{
    corrupt_fx f;
    corrupt_open(&f);
    uint8_t *b = dup(&f, 1);
    b[0] = 'X';
    expect_refused(&f, b, f.len, "bad magic", "first byte");
    expect_refused(&f, (const uint8_t *)"LUX", 3, "bad magic", "3 bytes of something else");
    expect_refused(&f, (const uint8_t *)"{\"state\": 1}", 12, "bad magic", "JSON");
    memcpy(b, f.good, f.len);
    put32(b + OFF_VERSION, 2);
    expect_refused(&f, b, f.len, "version", "version 2");
    put32(b + OFF_VERSION, 0);
    expect_refused(&f, b, f.len, "version", "version 0");
    memcpy(b, f.good, f.len);
    expect_refused(&f, b, 0, "truncated", "empty");
    expect_refused(&f, b, 5, "truncated", "5 bytes of the magic");
    expect_refused(&f, b, 11, "truncated", "no whole version");
    expect_refused(&f, b, 50, "truncated", "half a header");
    expect_refused(&f, b, HEADER + 31, "truncated", "a header and less than a checksum");
    expect_refused(&f, b, f.len - 1, "truncated", "one byte short");
    expect_refused(&f, b, f.len / 2, "truncated", "half");
    b[f.len] = 0;
    expect_refused(&f, b, f.len + 1, "oversized", "one byte more");
    put64(b + OFF_NSUMS, UINT64_MAX / 4); /* a count whose size overflows */
    expect_refused(&f, b, f.len, "truncated", "n_sums overflows");
    memcpy(b, f.good, f.len);
    put32(b + OFF_ZERO, 1);
    expect_refused(&f, b, f.len, "malformed state header", "reserved field");
    free(b);
    corrupt_close(&f);
}

Test(state, refuses_a_corrupted_body)
{
    corrupt_fx f;
    corrupt_open(&f);
    uint8_t *b = dup(&f, 0);
    size_t at[] = {OFF_ID, OFF_T, HEADER, HEADER + 8 * f.n_sums, f.len - 33, f.len - 1};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        memcpy(b, f.good, f.len);
        b[at[i]] ^= 0x10;
        char what[64];
        snprintf(what, sizeof what, "a flipped bit at byte %zu", at[i]);
        expect_refused(&f, b, f.len, "checksum mismatch", what);
    }
    free(b);
    corrupt_close(&f);
}

/* Every single-byte change anywhere and every truncation is refused (and, under make asan,
 * read nothing outside the buffer). */
Test(state, refuses_every_flipped_byte_and_every_truncation)
{
    corrupt_fx f;
    corrupt_open(&f);
    uint8_t *b = dup(&f, 0);
    luna_gen_state *s = state_new(f.m);
    for (size_t i = 0; i < f.len; i++) {
        b[i] ^= 0xA5;
        const char *why = NULL;
        cr_expect_eq(luna_gen_state_import(s, b, f.len, NULL, NULL, &why), LUNA_EINVAL, "byte %zu", i);
        cr_expect_not_null(why);
        b[i] ^= 0xA5;
    }
    for (size_t n = 0; n < f.len; n++) {
        uint8_t *cut = malloc(n ? n : 1); /* exactly n bytes: ASan sees a read past them */
        memcpy(cut, f.good, n);
        cr_expect_eq(luna_gen_state_import(s, cut, n, NULL, NULL, NULL), LUNA_EINVAL, "%zu bytes", n);
        free(cut);
    }
    cr_expect_eq(luna_gen_state_tokens(s), 0);
    free(b);
    luna_gen_state_free(s);
    corrupt_close(&f);
}

Test(state, refuses_a_state_of_another_model)
{
    corrupt_fx f;
    corrupt_open(&f);
    /* another architecture */
    luna_model *o = golden_model("lm_f16_h1");
    luna_gen_state *os = state_new(o);
    luna_ctx *oc = ctx_new(o, 16);
    int32_t tok[3] = {0, 10, 11};
    cr_assert_eq(luna_prefill(oc, os, tok, 3, NULL, 0), 0);
    size_t len;
    uint8_t *b = export(os, NULL, &len);
    expect_refused(&f, b, len, "another model", "lm_f16_h1's state");
    free(b);
    /* the same shapes, another weight: only the id tells them apart */
    uint8_t *good = dup(&f, 0);
    good[OFF_ID] ^= 1;
    reseal(good, f.len);
    expect_refused(&f, good, f.len, "another model", "another id, resealed");
    free(good);
    luna_gen_state_free(os);
    luna_ctx_free(oc);
    luna_model_free(o);
    corrupt_close(&f);
}

/* A state that was edited and sealed again: the checksum passes, the values must not. */
Test(state, refuses_forged_values)
{
    corrupt_fx f;
    corrupt_open(&f);
    uint8_t *b = dup(&f, 0);
    size_t recent = HEADER + 8 * f.n_sums, logits = recent + 4 * f.n_recent;

    /* counts that do not match the model (the size still adds up) */
    uint8_t *short_recent = malloc(f.len);
    memcpy(short_recent, f.good, recent + 12);                            /* 3 recent tokens */
    memcpy(short_recent + recent + 12, f.good + recent + 16, f.len - recent - 16);
    put32(short_recent + OFF_NRECENT, 3);
    reseal(short_recent, f.len - 4);
    expect_refused(&f, short_recent, f.len - 4, "layout does not match", "3 recent tokens");
    free(short_recent);
    memcpy(b, f.good, logits);
    put32(b + OFF_NLOGITS, 0);
    memcpy(b + logits, f.good + f.len - 32, 32);
    reseal(b, logits + 32);
    cr_expect_eq(luna_gen_state_import(f.target, b, logits + 32, NULL, NULL, NULL), 0, "no logits is a state too");
    cr_assert_eq(luna_gen_state_import(f.target, f.before, f.before_len, NULL, NULL, NULL), 0);
    uint8_t *few = malloc(logits + 5 * 4 + 32);
    memcpy(few, f.good, logits + 5 * 4);
    put32(few + OFF_NLOGITS, 5);
    reseal(few, logits + 5 * 4 + 32);
    expect_refused(&f, few, logits + 5 * 4 + 32, "layout does not match", "5 logits");
    free(few);

    /* the token count */
    memcpy(b, f.good, f.len);
    put64(b + OFF_T, (uint64_t)f.cfg->max_positions + 1);
    reseal(b, f.len);
    expect_refused(&f, b, f.len, "max_positions", "max_positions + 1");
    put64(b + OFF_T, UINT64_MAX);
    reseal(b, f.len);
    expect_refused(&f, b, f.len, "max_positions", "2^64 - 1");
    put64(b + OFF_T, (uint64_t)f.cfg->max_positions);
    reseal(b, f.len);
    cr_expect_eq(luna_gen_state_import(f.target, b, f.len, NULL, NULL, NULL), 0, "t = max_positions is fine");
    cr_assert_eq(luna_gen_state_import(f.target, f.before, f.before_len, NULL, NULL, NULL), 0);

    /* the sums */
    const double bad_sums[] = {NAN, INFINITY, -INFINITY, 1e300, -(double)FLT_MAX * 2};
    for (size_t i = 0; i < sizeof bad_sums / sizeof bad_sums[0]; i++) {
        memcpy(b, f.good, f.len);
        uint64_t u;
        memcpy(&u, &bad_sums[i], 8);
        put64(b + HEADER + 8 * (i * 37 % f.n_sums), u);
        reseal(b, f.len);
        char what[64];
        snprintf(what, sizeof what, "a sum of %g", bad_sums[i]);
        expect_refused(&f, b, f.len, "non-finite running sum", what);
    }

    /* the recent tokens: in the vocabulary, and 0 in a slot before the first token */
    const uint32_t bad_ids[] = {(uint32_t)f.V, 0xFFFFFFFFu, 0x80000000u};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        memcpy(b, f.good, f.len);
        put32(b + recent + 4 * (i % f.n_recent), bad_ids[i]);
        reseal(b, f.len);
        expect_refused(&f, b, f.len, "recent token", "a recent token out of range");
    }
    memcpy(b, f.good, f.len);
    put64(b + OFF_T, 2); /* two tokens consumed: slots 2 and 3 must be 0 */
    reseal(b, f.len);
    expect_refused(&f, b, f.len, "recent token", "a token in a slot before the first");
    put32(b + recent + 8, 0), put32(b + recent + 12, 0);
    reseal(b, f.len);
    cr_expect_eq(luna_gen_state_import(f.target, b, f.len, NULL, NULL, NULL), 0, "t = 2 with 2 recent tokens");
    cr_assert_eq(luna_gen_state_import(f.target, f.before, f.before_len, NULL, NULL, NULL), 0);

    /* the logits */
    const float bad_logits[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad_logits / sizeof bad_logits[0]; i++) {
        memcpy(b, f.good, f.len);
        uint32_t u;
        memcpy(&u, &bad_logits[i], 4);
        put32(b + logits + 4 * (i * 11 % f.V), u);
        reseal(b, f.len);
        expect_refused(&f, b, f.len, "non-finite logits", "a bad logit");
    }
    free(b);
    corrupt_close(&f);
}

/* Without max_positions, the count stops at 2^53 (exact in the double that divides by it). */
Test(state, refuses_an_absurd_count_without_max_positions)
{
    luna_model *m = golden_model("lm_defaults");
    cr_assert_eq(luna_model_config(m)->max_positions, 0);
    luna_gen_state *s = state_new(m), *d = state_new(m);
    size_t len;
    uint8_t *b = export(s, NULL, &len);
    put64(b + OFF_T, (1ull << 53) + 1);
    reseal(b, len);
    const char *why = NULL;
    cr_expect_eq(luna_gen_state_import(d, b, len, NULL, NULL, &why), LUNA_EINVAL);
    cr_expect(why && strstr(why, "max_positions"));
    put64(b + OFF_T, 1ull << 53);
    reseal(b, len);
    cr_expect_eq(luna_gen_state_import(d, b, len, NULL, NULL, &why), 0);
    cr_expect_eq(luna_gen_state_tokens(d), 1ull << 53);
    free(b);
    luna_gen_state_free(s), luna_gen_state_free(d);
    luna_model_free(m);
}

Test(state, bad_arguments)
{
    luna_model *m = golden_model("lm_defaults"), *cls = golden_model("defaults");
    const luna_config *cfg = luna_model_config(m);
    luna_gen_state *s = state_new(m), *kv;
    cr_assert_eq(luna_kv_state_new(m, &kv), 0);
    size_t len = 0, need = luna_gen_state_export_bytes(m, 0);
    cr_expect_gt(need, 0);
    cr_expect_eq(luna_gen_state_export_bytes(m, 1), need + 4 * (size_t)cfg->vocab_size);
    cr_expect_eq(luna_gen_state_export_bytes(cls, 0), 0, "a classifier has no state");
    cr_expect_eq(luna_gen_state_export_bytes(NULL, 0), 0);
    uint8_t *b = malloc(need);
    memset(b, 0xEE, need);
    cr_expect_eq(luna_gen_state_export(s, NULL, b, need - 1, &len), LUNA_EINVAL, "one byte short");
    cr_expect_eq(len, need, "the size it needs");
    cr_expect_eq(b[0], 0xEE, "nothing written");
    cr_expect_eq(luna_gen_state_export(NULL, NULL, b, need, &len), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_export(s, NULL, b, need, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_export(kv, NULL, b, need, &len), LUNA_EINVAL, "a KV cache is not portable");
    float *lg = calloc((size_t)cfg->vocab_size, sizeof(float));
    uint8_t *bl = malloc(need + 4 * (size_t)cfg->vocab_size);
    lg[3] = NAN;
    cr_expect_eq(luna_gen_state_export(s, lg, bl, need + 4 * (size_t)cfg->vocab_size, &len), LUNA_EINVAL,
                 "NaN logits are not exported");
    cr_assert_eq(luna_gen_state_export(s, NULL, b, need, &len), 0);
    const char *why = NULL;
    cr_expect_eq(luna_gen_state_import(kv, b, len, NULL, NULL, &why), LUNA_EINVAL);
    cr_expect_not_null(why);
    cr_expect_eq(luna_gen_state_import(NULL, b, len, NULL, NULL, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_import(s, NULL, len, NULL, NULL, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_import(s, b, len, NULL, NULL, NULL), 0, "no out-parameters needed");
    free(b), free(bl), free(lg);
    luna_gen_state_free(s), luna_gen_state_free(kv);
    luna_model_free(m), luna_model_free(cls);
}

/* ---- logprob.c ------------------------------------------------------------------------------- */

/* The reference: log(exp(l_i) / sum_j exp(l_j)) written out in long double, no shift (the
 * test logits are small enough that nothing overflows). */
static void ref_logprobs(const float *l, int V, long double *out)
{
    long double z = 0;
    for (int i = 0; i < V; i++) z += expl((long double)l[i]);
    for (int i = 0; i < V; i++) out[i] = logl(expl((long double)l[i]) / z);
}

static void random_logits(float *l, int V, uint64_t seed, float scale)
{
    for (int i = 0; i < V; i++) l[i] = scale * ((float)(fx_rand(&seed) >> 40) / (float)(1 << 24) * 2 - 1);
}

Test(logprob, matches_a_long_double_reference)
{
    int Vs[] = {1, 2, 7, 260, 5000};
    for (size_t k = 0; k < sizeof Vs / sizeof Vs[0]; k++) {
        int V = Vs[k];
        float *l = malloc((size_t)V * sizeof(float));
        double *lp = malloc((size_t)V * sizeof(double));
        long double *ref = malloc((size_t)V * sizeof(long double));
        random_logits(l, V, (uint64_t)k + 1, 20.0f);
        if (V > 3) l[2] = -INFINITY; /* a banned token */
        ref_logprobs(l, V, ref);
        cr_assert_eq(luna_logprobs(l, V, lp), 0);
        double sum = 0;
        for (int i = 0; i < V; i++) {
            if (l[i] == -INFINITY) {
                cr_expect(lp[i] == -INFINITY, "a banned token: -inf");
                continue;
            }
            cr_expect(fabsl((long double)lp[i] - ref[i]) <= 1e-12L * (1 + fabsl(ref[i])), "V %d id %d: %.17g vs %.17Lg",
                      V, i, lp[i], ref[i]);
            sum += exp(lp[i]);
        }
        cr_expect(fabs(sum - 1) < 1e-12, "V %d: probabilities sum to %.17g", V, sum);
        /* the chosen token's, from luna_logprob_top, is the same number */
        double one;
        cr_assert_eq(luna_logprob_top(l, V, V - 1, &one, 0, NULL, NULL), 0);
        cr_expect(one == lp[V - 1]);
        free(l), free(lp), free(ref);
    }
}

/* Logits far beyond exp's range: the shift keeps them exact (a shift of every logit leaves the
 * log-probabilities as they were, up to the shift's rounding). */
Test(logprob, huge_logits_do_not_overflow)
{
    float l[4] = {1e30f, 1e30f, -1e30f, 0};
    double lp[4];
    cr_assert_eq(luna_logprobs(l, 4, lp), 0);
    cr_expect(fabs(lp[0] - log(0.5)) < 1e-15 && fabs(lp[1] - log(0.5)) < 1e-15);
    cr_expect(lp[2] < -1e29 && isfinite(lp[2]));
    float s[5] = {3, 1, 4, 1, 5};
    double a[5], b[5];
    cr_assert_eq(luna_logprobs(s, 5, a), 0);
    for (int i = 0; i < 5; i++) s[i] += 1000.0f;
    cr_assert_eq(luna_logprobs(s, 5, b), 0);
    for (int i = 0; i < 5; i++) cr_expect(fabs(a[i] - b[i]) < 1e-12, "shift invariance at %d", i);
}

/* The top n against a sort: larger logit first, ties to the lower id, banned tokens left out. */
static int by_rank(const void *pa, const void *pb, void *ctx)
{
    const float *l = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (l[a] != l[b]) return l[a] > l[b] ? -1 : 1;
    return a < b ? -1 : 1;
}

Test(logprob, top_n_is_the_ranking)
{
    int V = 300;
    float *l = malloc((size_t)V * sizeof(float));
    int32_t *order = malloc((size_t)V * sizeof(int32_t)), ids[310];
    double lps[310], full[300];
    for (int trial = 0; trial < 4; trial++) {
        uint64_t seed = (uint64_t)trial + 100;
        for (int i = 0; i < V; i++) /* few distinct values: many ties */
            l[i] = trial == 3 ? 0.0f : (float)(fx_rand(&seed) % 7) - 3.0f;
        for (int i = 0; i < V; i += 5) l[i] = -INFINITY;
        int finite = 0;
        for (int i = 0; i < V; i++) order[i] = i, finite += l[i] != -INFINITY;
        qsort_r(order, (size_t)V, sizeof *order, by_rank, l);
        cr_assert_eq(luna_logprobs(l, V, full), 0);
        int ns[] = {0, 1, 5, 20, finite, finite + 1, V + 10};
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            int n = ns[k];
            double tlp = 0;
            int got = luna_logprob_top(l, V, 7, &tlp, n, ids, lps);
            cr_assert_eq(got, n < finite ? n : finite, "trial %d n %d: %d entries", trial, n, got);
            for (int j = 0; j < got; j++) {
                cr_expect_eq(ids[j], order[j], "trial %d n %d rank %d", trial, n, j);
                cr_expect(lps[j] == full[ids[j]]);
            }
            cr_expect(tlp == full[7]);
        }
    }
    free(l), free(order);
}

Test(logprob, bad_arguments)
{
    float l[3] = {0, 1, 2};
    double out[3], lp;
    int32_t id;
    cr_expect_eq(luna_logprobs(l, 0, out), LUNA_EINVAL);
    cr_expect_eq(luna_logprobs(NULL, 3, out), LUNA_EINVAL);
    cr_expect_eq(luna_logprobs(l, 3, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_logprob_top(l, 3, 3, &lp, 0, NULL, NULL), LUNA_EINVAL, "token out of range");
    cr_expect_eq(luna_logprob_top(l, 3, -1, NULL, 1, NULL, &lp), LUNA_EINVAL, "no ids buffer");
    cr_expect_eq(luna_logprob_top(l, 3, -1, NULL, -1, &id, &lp), LUNA_EINVAL);
    cr_expect_eq(luna_logprob_top(l, 3, -1, NULL, 1, &id, &lp), 1, "no token asked for");
    cr_expect_eq(id, 2);
    float nan[3] = {0, NAN, 1}, inf[3] = {0, INFINITY, 1}, banned[3] = {-INFINITY, -INFINITY, -INFINITY};
    cr_expect_eq(luna_logprobs(nan, 3, out), LUNA_EINVAL);
    cr_expect_eq(luna_logprobs(inf, 3, out), LUNA_EINVAL);
    cr_expect_eq(luna_logprobs(banned, 3, out), LUNA_EINVAL);
}

/* ---- logprob.c: scoring ---------------------------------------------------------------------- */

/* luna_score against the PyTorch reference's float64 logits: the golden inputs after bos. */
Test(score, matches_the_pytorch_reference)
{
    const char *cases[] = {"lm_defaults", "lm_ngram_embed", "lm_hash_ngrams"};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        golden g;
        golden_open(&g, cases[k]);
        size_t V = (size_t)luna_model_config(g.m)->vocab_size;
        luna_ctx *c = ctx_new(g.m, 16);
        for (int i = 0; i < g.count; i++) {
            size_t n, nref;
            int32_t *tok = golden_i32(&g, "tokens", i, &n);
            double *ref = golden_tensor(&g, "logits", i, &nref);
            if (n < 2) {
                free(tok), free(ref);
                continue;
            }
            luna_gen_state *s = state_new(g.m);
            float *lg = malloc(V * sizeof(float));
            cr_assert_eq(luna_prefill(c, s, tok, 1, lg, 0), 0);
            double *per = malloc((n - 1) * sizeof(double)), total;
            cr_assert_eq(luna_score(c, s, lg, tok + 1, n - 1, per, &total, NULL, NULL), 0);
            cr_expect_eq(luna_gen_state_tokens(s), n);
            double worst = 0, sum = 0;
            for (size_t j = 0; j + 1 < n; j++) {
                const double *row = ref + j * V; /* after token j: scores token j + 1 */
                double mx = row[0], z = 0;
                for (size_t v = 1; v < V; v++) mx = fmax(mx, row[v]);
                for (size_t v = 0; v < V; v++) z += exp(row[v] - mx);
                double want = row[tok[j + 1]] - mx - log(z);
                worst = fmax(worst, fabs(per[j] - want));
                sum += per[j];
            }
            cr_expect(worst < 2e-3, "%s input %d: worst |logprob - reference| %.3g", cases[k], i, worst);
            cr_expect(total == sum, "the total is the per-token sum in order");
            free(per), free(lg), free(tok), free(ref);
            luna_gen_state_free(s);
        }
        luna_ctx_free(c);
        golden_close(&g);
    }
}

/* is_greedy: a candidate built token by token from the most likely next one is greedy; one
 * whose last token is the second most likely is not, and scores lower. */
Test(score, greedy_flag)
{
    luna_model *m = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    int V = cfg->vocab_size;
    luna_ctx *c = ctx_new(m, 16);
    luna_gen_state *s = state_new(m), *w = state_new(m);
    float *lg = malloc((size_t)V * sizeof(float)), *first = malloc((size_t)V * sizeof(float));
    int32_t bos = cfg->bos_id, cand[20], best[2];
    double best_lp[2], per[20], greedy_total, other_total;
    cr_assert_eq(luna_prefill(c, s, &bos, 1, first, 0), 0);
    memcpy(lg, first, (size_t)V * sizeof(float));
    cr_assert_eq(luna_gen_state_copy(w, s), 0);
    for (int i = 0; i < 20; i++) { /* the greedy continuation, stepped */
        cr_assert_eq(luna_logprob_top(lg, V, -1, NULL, 2, best, best_lp), 2);
        cand[i] = best[0];
        if (i < 19) cr_assert_eq(luna_step(c, w, cand[i], lg), 0);
    }
    int greedy = -1;
    cr_assert_eq(luna_gen_state_copy(w, s), 0);
    cr_assert_eq(luna_score(c, w, first, cand, 20, per, &greedy_total, NULL, &greedy), 0);
    cr_expect_eq(greedy, 1);
    cand[19] = best[1]; /* the runner-up at the last position */
    cr_assert_eq(luna_gen_state_copy(w, s), 0);
    cr_assert_eq(luna_score(c, w, first, cand, 20, per, &other_total, NULL, &greedy), 0);
    cr_expect_eq(greedy, 0);
    cr_expect(other_total < greedy_total);
    free(lg), free(first);
    luna_gen_state_free(s), luna_gen_state_free(w);
    luna_ctx_free(c);
    luna_model_free(m);
}

/* The /score flow: a prefix prefilled once, each candidate scored on a copy. The same numbers
 * as scoring each candidate from its own prefill of the prefix, bit for bit, and the state and
 * next logits that an all-rows prefill of the candidate gives. */
Test(score, candidates_on_copies_of_one_prefix)
{
    luna_model *m = golden_model("lm_ngram_embed");
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size, P = 45;
    luna_ctx *c = ctx_new(m, 16);
    int32_t *t = tokens(cfg, 200, 8);
    luna_gen_state *prefix = state_new(m), *work = state_new(m), *solo = state_new(m), *plain = state_new(m);
    float *lp = malloc(V * sizeof(float)), *ls = malloc(V * sizeof(float));
    float *na = malloc(V * sizeof(float)), *nb = malloc(V * sizeof(float)), *rows = malloc(64 * V * sizeof(float));
    cr_assert_eq(luna_prefill(c, prefix, t, P, lp, 0), 0);
    const size_t lens[] = {1, 2, 3, 30, 60};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        const int32_t *cand = t + 100 + 7 * k;
        size_t n = lens[k];
        double per[64], per2[64], tot, tot2;
        cr_assert_eq(luna_gen_state_copy(work, prefix), 0);
        cr_assert_eq(luna_score(c, work, lp, cand, n, per, &tot, na, NULL), 0);
        luna_gen_state_reset(solo);
        cr_assert_eq(luna_prefill(c, solo, t, P, ls, 0), 0);
        cr_assert_eq(luna_score(c, solo, ls, cand, n, per2, &tot2, nb, NULL), 0);
        cr_expect_arr_eq(per, per2, n * sizeof(double), "candidate %zu", k);
        cr_expect(tot == tot2);
        cr_expect_arr_eq(na, nb, V * sizeof(float));
        /* it leaves the state, and the last row of logits, that an all-rows prefill of the
         * candidate in the same slices gives */
        luna_gen_state_reset(plain);
        cr_assert_eq(luna_prefill(c, plain, t, P, NULL, 0), 0);
        size_t first = 16 - P % 16 < n ? 16 - P % 16 : n;
        cr_assert_eq(luna_prefill(c, plain, cand, first, rows, 1), 0);
        if (n > first) cr_assert_eq(luna_prefill(c, plain, cand + first, n - first, rows + first * V, 1), 0);
        cr_expect_arr_eq(na, rows + (n - 1) * V, V * sizeof(float), "next logits, candidate %zu", k);
        cr_expect_eq(luna_gen_state_tokens(work), P + n);
        uint8_t *ea, *eb;
        size_t la, lb;
        ea = export(work, NULL, &la);
        eb = export(plain, NULL, &lb);
        cr_expect(la == lb && memcmp(ea, eb, la) == 0, "the same state, candidate %zu", k);
        free(ea), free(eb);
    }
    free(lp), free(ls), free(na), free(nb), free(rows), free(t);
    luna_gen_state_free(prefix), luna_gen_state_free(work), luna_gen_state_free(solo), luna_gen_state_free(plain);
    luna_ctx_free(c);
    luna_model_free(m);
}

Test(score, errors)
{
    luna_model *m = golden_model("lm_ngram_embed"), *cls = golden_model("defaults");
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size, max = (size_t)cfg->max_positions;
    luna_ctx *c = ctx_new(m, 16), *cc = ctx_new(cls, 16);
    int32_t *t = tokens(cfg, max + 2, 4);
    luna_gen_state *s = state_new(m);
    float *lg = malloc(V * sizeof(float));
    cr_assert_eq(luna_prefill(c, s, t, max - 10, lg, 0), 0);
    double per[16], tot;
    cr_expect_eq(luna_score(c, s, lg, t, 11, per, &tot, NULL, NULL), LUNA_ETOOLONG);
    cr_expect_eq(luna_gen_state_tokens(s), max - 10, "nothing consumed");
    int32_t bad[2] = {5, (int32_t)V};
    cr_expect_eq(luna_score(c, s, lg, bad, 2, per, &tot, NULL, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_score(c, s, lg, t, 0, per, &tot, NULL, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_score(c, s, NULL, t, 1, per, &tot, NULL, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_score(cc, s, lg, t, 1, per, &tot, NULL, NULL), LUNA_ETASK);
    lg[0] = NAN;
    cr_expect_eq(luna_score(c, s, lg, t, 1, per, &tot, NULL, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_tokens(s), max - 10);
    lg[0] = 0;
    cr_expect_eq(luna_score(c, s, lg, t, 10, per, &tot, NULL, NULL), 0, "up to max_positions");
    cr_expect_eq(luna_score_workspace_bytes(c, 3), 3 * V * sizeof(float));
    cr_expect_eq(luna_score_workspace_bytes(c, 1000), 16 * V * sizeof(float));
    free(lg), free(t);
    luna_gen_state_free(s);
    luna_ctx_free(c), luna_ctx_free(cc);
    luna_model_free(m), luna_model_free(cls);
}
