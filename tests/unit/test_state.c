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
    if (!luna__sha256_use_hw(1)) cr_skip("this CPU has no SHA extensions");
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
