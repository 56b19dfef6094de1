/* test_decoder.c - engine/decoder.c against the PyTorch reference (the lm_ cases of tests/golden)
 * and its own contracts: a prefill at any chunk length, n single steps and a prefill split at
 * arbitrary points all give the reference's logits at every position; the state has a fixed
 * size, copies and resets; the softmax baseline's KV cache grows; errors leave the state as it
 * was. The tolerance is LUNA.md's: ||out - ref|| / ||ref|| < 1e-4, here for each position's
 * logits separately, not only for the whole sequence. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/ctx.h"
#include "engine/kernels.h"
#include "engine/luna.h"
#include "fixtures.h"
#include "golden.h"

#define TOL 1e-4

static const char *const lm_cases[] = {
    "lm_defaults",
    "lm_f16_h1",
    "lm_hash_ngrams",
    "lm_legacy_untied_prenorm_learned",
    "lm_ngram_embed",
    "lm_softplus_nopos_lnemb",
};
#define N_LM_CASES (sizeof lm_cases / sizeof lm_cases[0])

Test(golden_lm, every_case_is_listed)
{
    golden_expect_listed(lm_cases, N_LM_CASES, "lm_", NULL);
}

static luna_ctx *ctx_new(const luna_model *m, int chunk, luna_attn attn)
{
    luna_ctx_opts o = {chunk, attn, 1};
    luna_ctx *c;
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    return c;
}

static luna_gen_state *state_new(const luna_model *m, luna_attn attn)
{
    luna_gen_state *s;
    int rc = attn == LUNA_ATTN_LUNA ? luna_gen_state_new(m, &s) : luna_kv_state_new(m, &s);
    cr_assert_eq(rc, 0, "%s", luna_strerror(rc));
    return s;
}

/* Compares the n x V logits out with the reference, row by row (position by position). */
static void expect_rows(const float *out, const double *ref, size_t n, size_t V, const char *what,
                        const char *cs, int input, int chunk)
{
    double worst = 0;
    size_t at = 0;
    for (size_t t = 0; t < n; t++) {
        double e = golden_rel_err(out + t * V, ref + t * V, V);
        if (e > worst) worst = e, at = t;
    }
    if (getenv("GOLDEN_VERBOSE"))
        fprintf(stderr, "%s %s input %d chunk %d: worst %.3g at %zu\n", cs, what, input, chunk, worst, at);
    cr_expect(worst < TOL, "%s %s input %d chunk %d: position %zu rel err %.3g >= %g", cs, what,
              input, chunk, at, worst, TOL);
}

typedef enum { WHOLE, STEPS, SPLIT } feed_mode;

/* Feeds the tokens of input i into a fresh state in one of three ways and returns the logits
 * after every token (n x V, caller frees). SPLIT cuts the sequence at pseudo-random points. */
static float *run(luna_ctx *c, const luna_model *m, luna_attn attn, const int32_t *tok, size_t n,
                  feed_mode mode, uint64_t seed)
{
    size_t V = (size_t)luna_model_config(m)->vocab_size;
    float *out = malloc(n * V * sizeof(float));
    luna_gen_state *s = state_new(m, attn);
    size_t done = 0;
    while (done < n) {
        size_t take = n - done;
        if (mode == STEPS) take = 1;
        if (mode == SPLIT) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t piece = 1 + (size_t)(seed >> 33) % 97;
            if (piece < take) take = piece;
        }
        int rc = take == 1 && mode == STEPS ? luna_step(c, s, tok[done], out + done * V)
                                            : luna_prefill(c, s, tok + done, take, out + done * V, 1);
        cr_assert_eq(rc, 0, "%s", luna_strerror(rc));
        done += take;
        cr_assert_eq(luna_gen_state_tokens(s), done);
    }
    luna_gen_state_free(s);
    return out;
}

static void run_case(const char *cs, luna_attn attn)
{
    golden g;
    golden_open(&g, cs);
    const luna_config *cfg = luna_model_config(g.m);
    size_t V = (size_t)cfg->vocab_size;
    const char *what = attn == LUNA_ATTN_LUNA ? "logits" : "logits_softmax";
    static const int chunks[] = {1, 7, 64, 256};
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
        luna_ctx *c = ctx_new(g.m, chunks[k], attn);
        for (int i = 0; i < g.count; i++) {
            size_t n, nref;
            int32_t *tok = golden_i32(&g, "tokens", i, &n);
            double *ref = golden_tensor(&g, what, i, &nref);
            cr_assert_eq(nref, n * V);
            float *whole = run(c, g.m, attn, tok, n, WHOLE, 0);
            expect_rows(whole, ref, n, V, "prefill", cs, i, chunks[k]);
            float *split = run(c, g.m, attn, tok, n, SPLIT, (uint64_t)(i + 1) * 7919u + k);
            expect_rows(split, ref, n, V, "split prefill", cs, i, chunks[k]);
            /* without `all`, only the distribution after the last token */
            luna_gen_state *s = state_new(g.m, attn);
            float *last = malloc(V * sizeof(float));
            cr_assert_eq(luna_prefill(c, s, tok, n, last, 0), 0);
            expect_rows(last, ref + (n - 1) * V, 1, V, "last logits", cs, i, chunks[k]);
            luna_gen_state_free(s);
            if (chunks[k] == 7) { /* steps do not depend on the chunk length: once is enough */
                float *steps = run(c, g.m, attn, tok, n, STEPS, 0);
                expect_rows(steps, ref, n, V, "steps", cs, i, chunks[k]);
                free(steps);
            }
            free(whole), free(split), free(last), free(ref), free(tok);
        }
        luna_ctx_free(c);
    }
    golden_close(&g);
}

#define GOLDEN_LM(name)                                                                     \
    Test(golden_lm, name) { run_case(#name, LUNA_ATTN_LUNA); }                             \
    Test(golden_lm, name##_softmax_kv_cache) { run_case(#name, LUNA_ATTN_SOFTMAX); }
GOLDEN_LM(lm_defaults)
GOLDEN_LM(lm_f16_h1)
GOLDEN_LM(lm_legacy_untied_prenorm_learned)
GOLDEN_LM(lm_softplus_nopos_lnemb)
GOLDEN_LM(lm_ngram_embed)
GOLDEN_LM(lm_hash_ngrams)

/* ---- contracts beyond the reference ------------------------------------------------------ */


/* Pseudo-random byte tokens: bos, then bytes. */
static int32_t *tokens(const luna_config *cfg, size_t n, uint64_t seed)
{
    int32_t *t = malloc(n * sizeof *t);
    t[0] = cfg->bos_id;
    for (size_t i = 1; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = cfg->byte_offset + (int32_t)((seed >> 33) % 256);
    }
    return t;
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

/* The state of a Luna decoder is the same size after 0, 1 and 5000 tokens, and that size is
 * what luna_gen_state_bytes promises: per layer (1 or 2) x d x l doubles. */
Test(decoder, luna_state_has_a_fixed_size)
{
    luna_model *m = golden_model("lm_legacy_untied_prenorm_learned"); /* untied: two sums per layer */
    const luna_config *cfg = luna_model_config(m);
    size_t want = luna_gen_state_bytes(m);
    size_t sums = (size_t)cfg->layers * 2 * (size_t)cfg->d * (size_t)cfg->l * sizeof(double);
    cr_expect_geq(want, sums);
    cr_expect_lt(want, sums + 256, "the state is the sums plus a small header");
    luna_gen_state *s = state_new(m, LUNA_ATTN_LUNA);
    luna_ctx *c = ctx_new(m, 64, LUNA_ATTN_LUNA);
    cr_expect_eq(luna_gen_state_size(s), want);
    int32_t *t = tokens(cfg, 500, 3);
    cr_assert_eq(luna_prefill(c, s, t, 500, NULL, 0), 0);
    cr_expect_eq(luna_gen_state_size(s), want);
    cr_expect_eq(luna_gen_state_tokens(s), 500);
    free(t);
    luna_ctx_free(c);
    luna_gen_state_free(s);
    luna_model_free(m);
    cr_expect_eq(luna_gen_state_bytes(NULL), 0);
}

/* luna_decode_linears lists as many layers as the config says a step runs, each with its
 * panels (luna_linear.wp: w in kn_fixed_pack's layout), in the model's one allocation that
 * luna_model_panel_bytes counts: tied kv with a pc_proj and a tied head (lm_defaults), untied
 * kv and head (lm_legacy_...); a classifier has none. (That the list is the step's own, every
 * step checks: lin_block asserts that a fixed-order product has its panels.) */
Test(decoder, decode_layers_have_their_panels)
{
    static const char *const names[] = {"lm_defaults", "lm_legacy_untied_prenorm_learned", "lm_softplus_nopos_lnemb"};
    for (size_t n = 0; n < sizeof names / sizeof *names; n++) {
        luna_model *m = golden_model(names[n]);
        const luna_config *cfg = luna_model_config(m);
        luna_linear *lin[LUNA_DECODE_LINEARS];
        int count = luna_decode_linears(m, lin);
        /* q, k (or c), v when untied, pc when the config has it, out, fc1, fc2 a layer; the head */
        cr_assert_eq(count, cfg->layers * (5 + !cfg->tie_kv + cfg->causal_pc_proj) + 1, "%s", names[n]);
        size_t total = 0;
        for (int q = 0; q < count; q++) {
            size_t floats = kn_fixed_pack_floats((size_t)lin[q]->out, (size_t)lin[q]->in);
            cr_assert_not_null(lin[q]->wp, "%s: layer %d has no panels", names[n], q);
            float *want = malloc(floats * sizeof(float));
            cr_assert(want);
            kn_fixed_pack(lin[q], want);
            cr_assert(!memcmp(want, lin[q]->wp, floats * sizeof(float)), "%s: layer %d's panels", names[n], q);
            free(want);
            total += floats * sizeof(float);
        }
        cr_expect_eq(luna_model_panel_bytes(m), total, "%s", names[n]);
        luna_model_free(m);
    }
    luna_model *cls = golden_model("defaults");
    cr_expect_eq(luna_model_panel_bytes(cls), 0);
    luna_model_free(cls);
    cr_expect_eq(luna_model_panel_bytes(NULL), 0);
}

/* A Luna state's size does not depend on the context; a KV cache's grows linearly with it. */
Test(decoder, kv_cache_grows_with_the_context)
{
    luna_model *m = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    luna_ctx *c = ctx_new(m, 64, LUNA_ATTN_SOFTMAX);
    luna_gen_state *s = state_new(m, LUNA_ATTN_SOFTMAX);
    size_t empty = luna_gen_state_size(s);
    int32_t *t = tokens(cfg, 3000, 9);
    cr_assert_eq(luna_prefill(c, s, t, 1000, NULL, 0), 0);
    size_t at1k = luna_gen_state_size(s);
    cr_assert_eq(luna_prefill(c, s, t + 1000, 2000, NULL, 0), 0);
    size_t at3k = luna_gen_state_size(s);
    size_t row = (size_t)cfg->layers * (size_t)cfg->d * sizeof(float); /* tied: keys only */
    cr_expect_geq(at1k - empty, 1000 * row);
    cr_expect_geq(at3k - empty, 3000 * row);
    cr_expect_lt(at3k - empty, 3000 * row * 2, "the cache grows by at most 1.5x its rows + 256");
    free(t);
    luna_gen_state_free(s);
    luna_ctx_free(c);
    luna_model_free(m);
}

/* A long context: one prefill and single steps still agree at every position, in a chunk
 * layout that no golden case reaches (the running sums cross 60 chunks). */
Test(decoder, long_context_steps_match_prefill)
{
    luna_model *m = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    size_t n = 4000, V = (size_t)cfg->vocab_size;
    int32_t *t = tokens(cfg, n, 11);
    luna_ctx *c = ctx_new(m, 64, LUNA_ATTN_LUNA);
    float *whole = run(c, m, LUNA_ATTN_LUNA, t, n, WHOLE, 0);
    float *steps = run(c, m, LUNA_ATTN_LUNA, t, n, STEPS, 0);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = max_rel(steps + i * V, whole + i * V, V);
        if (e > worst) worst = e;
    }
    cr_expect_lt(worst, TOL, "steps vs prefill at 4000 tokens: %.3g", worst);
    free(whole), free(steps), free(t);
    luna_ctx_free(c);
    luna_model_free(m);
}

/* A prompt prefilled once and copied continues exactly as the original; the copy is
 * independent of it; reset is a fresh state. For both kinds of state, with and without the
 * recent tokens of n-gram embeddings. */
static void fork_case(const char *model, luna_attn attn)
{
    luna_model *m = golden_model(model);
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size;
    luna_ctx *c = ctx_new(m, 16, attn);
    int32_t *t = tokens(cfg, 120, 5);
    luna_gen_state *a = state_new(m, attn), *b = state_new(m, attn), *fresh = state_new(m, attn);
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    cr_assert_eq(luna_prefill(c, a, t, 100, NULL, 0), 0);
    cr_assert_eq(luna_gen_state_copy(b, a), 0);
    cr_expect_eq(luna_gen_state_tokens(b), 100);
    /* the same continuation: bit for bit */
    cr_assert_eq(luna_prefill(c, a, t + 100, 20, la, 0), 0);
    cr_assert_eq(luna_prefill(c, b, t + 100, 20, lb, 0), 0);
    cr_expect_arr_eq(la, lb, V * sizeof(float));
    /* b diverges; a continues as a fresh prefill of its whole sequence would */
    cr_assert_eq(luna_step(c, b, cfg->byte_offset + 'x', lb), 0);
    cr_assert_eq(luna_prefill(c, fresh, t, 120, lb, 0), 0);
    cr_expect_lt(max_rel(la, lb, V), TOL);
    /* reset */
    luna_gen_state_reset(a);
    cr_expect_eq(luna_gen_state_tokens(a), 0);
    cr_assert_eq(luna_prefill(c, a, t, 120, la, 0), 0);
    cr_expect_arr_eq(la, lb, V * sizeof(float), "a reset state is a fresh one");
    free(la), free(lb), free(t);
    luna_gen_state_free(a), luna_gen_state_free(b), luna_gen_state_free(fresh);
    luna_ctx_free(c);
    luna_model_free(m);
}

Test(decoder, copy_forks_and_reset_clears) { fork_case("lm_defaults", LUNA_ATTN_LUNA); }
Test(decoder, kv_copy_forks_and_reset_clears) { fork_case("lm_defaults", LUNA_ATTN_SOFTMAX); }
Test(decoder, ngram_copy_forks_and_reset_clears) { fork_case("lm_ngram_embed", LUNA_ATTN_LUNA); }
Test(decoder, ngram_kv_copy_forks_and_reset_clears) { fork_case("lm_ngram_embed", LUNA_ATTN_SOFTMAX); }
Test(decoder, hash_copy_forks_and_reset_clears) { fork_case("lm_hash_ngrams", LUNA_ATTN_LUNA); }
Test(decoder, hash_kv_copy_forks_and_reset_clears) { fork_case("lm_hash_ngrams", LUNA_ATTN_SOFTMAX); }

/* hashed n-grams keep max(ngram_embed, hash_ngrams) - 1 token ids in the state. */
Test(decoder, hash_state_keeps_the_longest_history)
{
    luna_model *m = golden_model("lm_hash_ngrams"), *plain = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    cr_assert_eq(cfg->hash_ngrams, 7);
    cr_assert_eq(cfg->ngram_embed, 2);
    cr_expect_eq(luna_gen_state_bytes(m), luna_gen_state_bytes(plain) + 6 * sizeof(int32_t),
                 "the same shapes as lm_defaults plus 6 token ids");
    luna_model_free(m);
    luna_model_free(plain);
}

/* The hash of docs/model-format.md, worked by hand: tokens 5, 9 (oldest first) give
 * h = ((0 * 263 + 6) * 263 + 10) mod (2^31 - 1) = 1588, and 1588 * 2654435761 mod 2^32 =
 * 1881071092 (0x701EDDF4), whose top 4 bits (16 buckets) are 7 and top 12 bits 1793. */
Test(decoder, hash_bucket_is_the_documented_function)
{
    const int32_t win[] = {9, 5}; /* newest first */
    cr_expect_eq(luna__hash_bucket(win, 2, 16), 7u);
    cr_expect_eq(luna__hash_bucket(win, 2, 4096), 1793u);
    cr_expect_eq(luna__hash_bucket(win, 1, 2), (uint32_t)(((10u * 2654435761u) & 0xffffffffu) >> 31));
}

/* n-gram embeddings keep ngram_embed - 1 token ids in the state, and nothing else grows. */
Test(decoder, ngram_state_keeps_the_recent_tokens)
{
    luna_model *m = golden_model("lm_ngram_embed"), *plain = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    cr_assert_eq(cfg->ngram_embed, 5);
    cr_expect_eq(luna_gen_state_bytes(m), luna_gen_state_bytes(plain) + 4 * sizeof(int32_t),
                 "the same shapes as lm_defaults plus 4 token ids");
    luna_gen_state *s = state_new(m, LUNA_ATTN_LUNA);
    luna_ctx *c = ctx_new(m, 64, LUNA_ATTN_LUNA);
    int32_t *t = tokens(cfg, 500, 3);
    cr_assert_eq(luna_prefill(c, s, t, 500, NULL, 0), 0);
    cr_expect_eq(luna_gen_state_size(s), luna_gen_state_bytes(m));
    free(t);
    luna_ctx_free(c);
    luna_gen_state_free(s);
    luna_model_free(m);
    luna_model_free(plain);
}

Test(decoder, bad_arguments_leave_the_state_alone)
{
    luna_model *m = golden_model("lm_defaults"), *other = golden_model("lm_f16_h1"), *cls = golden_model("defaults");
    const luna_config *cfg = luna_model_config(m);
    luna_ctx *c = ctx_new(m, 16, LUNA_ATTN_LUNA), *soft = ctx_new(m, 16, LUNA_ATTN_SOFTMAX);
    luna_ctx *oc = ctx_new(other, 16, LUNA_ATTN_LUNA);
    luna_gen_state *s = state_new(m, LUNA_ATTN_LUNA), *kv = state_new(m, LUNA_ATTN_SOFTMAX);
    luna_gen_state *os = state_new(other, LUNA_ATTN_LUNA);
    int32_t good[3] = {cfg->bos_id, cfg->byte_offset, cfg->byte_offset + 1};
    int32_t bad_lo[2] = {cfg->bos_id, -1}, bad_hi[2] = {cfg->bos_id, cfg->vocab_size};
    cr_expect_eq(luna_prefill(c, s, bad_lo, 2, NULL, 0), LUNA_EINVAL);
    cr_expect_eq(luna_prefill(c, s, bad_hi, 2, NULL, 0), LUNA_EINVAL);
    cr_expect_eq(luna_step(c, s, cfg->vocab_size, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_prefill(c, s, good, 0, NULL, 0), LUNA_EINVAL);
    cr_expect_eq(luna_prefill(NULL, s, good, 3, NULL, 0), LUNA_EINVAL);
    cr_expect_eq(luna_prefill(c, NULL, good, 3, NULL, 0), LUNA_EINVAL);
    cr_expect_eq(luna_prefill(c, kv, good, 3, NULL, 0), LUNA_EINVAL, "a KV state in a Luna context");
    cr_expect_eq(luna_prefill(soft, s, good, 3, NULL, 0), LUNA_EINVAL, "a Luna state in a softmax context");
    cr_expect_eq(luna_prefill(oc, s, good, 3, NULL, 0), LUNA_EINVAL, "a state of another model");
    cr_expect_eq(luna_gen_state_copy(os, s), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_copy(kv, s), LUNA_EINVAL);
    cr_expect_eq(luna_gen_state_tokens(s), 0, "no error consumed a token");
    /* a classifier has no generation */
    luna_gen_state *x = NULL;
    cr_expect_eq(luna_gen_state_new(cls, &x), LUNA_ETASK);
    cr_expect_eq(luna_kv_state_new(cls, &x), LUNA_ETASK);
    cr_expect_null(x);
    cr_expect_eq(luna_gen_state_bytes(cls), 0);
    luna_ctx *cc = ctx_new(cls, 16, LUNA_ATTN_LUNA);
    cr_expect_eq(luna_prefill(cc, s, good, 3, NULL, 0), LUNA_EINVAL);
    uint8_t text[] = "hi";
    float probs[2];
    cr_expect_eq(luna_classify(c, text, 2, probs, NULL), LUNA_ETASK, "an LM does not classify");
    luna_ctx_free(cc);
    luna_gen_state_free(s), luna_gen_state_free(kv), luna_gen_state_free(os);
    luna_ctx_free(c), luna_ctx_free(soft), luna_ctx_free(oc);
    luna_model_free(m), luna_model_free(other), luna_model_free(cls);
}

/* Learned positions end at max_positions: a prefill that would pass it consumes nothing. */
Test(decoder, learned_positions_limit_the_context)
{
    luna_model *m = golden_model("lm_legacy_untied_prenorm_learned");
    const luna_config *cfg = luna_model_config(m);
    size_t max = (size_t)cfg->max_positions;
    cr_assert_gt(max, 10);
    int32_t *t = tokens(cfg, max + 1, 2);
    luna_ctx *c = ctx_new(m, 64, LUNA_ATTN_LUNA);
    luna_gen_state *s = state_new(m, LUNA_ATTN_LUNA);
    cr_expect_eq(luna_prefill(c, s, t, max + 1, NULL, 0), LUNA_ETOOLONG);
    cr_expect_eq(luna_gen_state_tokens(s), 0);
    cr_expect_eq(luna_prefill(c, s, t, max - 1, NULL, 0), 0);
    cr_expect_eq(luna_prefill(c, s, t, 2, NULL, 0), LUNA_ETOOLONG);
    cr_expect_eq(luna_gen_state_tokens(s), max - 1);
    cr_expect_eq(luna_step(c, s, t[1], NULL), 0);
    cr_expect_eq(luna_step(c, s, t[1], NULL), LUNA_ETOOLONG);
    cr_expect_eq(luna_gen_state_tokens(s), max);
    free(t);
    luna_gen_state_free(s);
    luna_ctx_free(c);
    luna_model_free(m);
}

/* The cancel flag is polled between chunks: a set flag stops a prefill at a chunk boundary,
 * and the state holds exactly the whole chunks consumed. */
Test(decoder, cancel_stops_at_a_chunk_boundary)
{
    luna_model *m = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    int32_t *t = tokens(cfg, 300, 4);
    luna_ctx *c = ctx_new(m, 32, LUNA_ATTN_LUNA);
    luna_gen_state *s = state_new(m, LUNA_ATTN_LUNA);
    atomic_int flag = 1;
    luna_ctx_set_cancel(c, &flag);
    cr_expect_eq(luna_prefill(c, s, t, 300, NULL, 0), LUNA_ECANCELED);
    cr_expect_eq(luna_gen_state_tokens(s) % 32, 0);
    cr_expect_eq(luna_gen_state_tokens(s), 0);
    atomic_store(&flag, 0);
    cr_expect_eq(luna_prefill(c, s, t, 300, NULL, 0), 0);
    cr_expect_eq(luna_gen_state_tokens(s), 300);
    luna_ctx_set_cancel(c, NULL);
    free(t);
    luna_gen_state_free(s);
    luna_ctx_free(c);
    luna_model_free(m);
}

/* The loader binds exactly the causal-lm tensors that the config implies: a tensor that the
 * config makes unused is refused by name, and one that it needs is missed by name. */
static void expect_lm_load_error(const char *case_name, const char *config, const char *want)
{
    char dir[256], src[512], err[512];
    cr_assert_eq(fx_tmpdir(dir, sizeof dir), 0);
    snprintf(src, sizeof src, GOLDEN_DIR "/%s/model.safetensors", case_name);
    FILE *f = fopen(src, "rb");
    cr_assert_not_null(f);
    static uint8_t buf[4 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert_eq(fx_write_file(dir, "model.safetensors", buf, len), 0);
    cr_assert_eq(fx_write_file(dir, "config.json", config, strlen(config)), 0);
    luna_model *m = NULL;
    cr_expect_eq(luna_model_load(dir, &m, err, sizeof err), LUNA_ETENSOR);
    cr_expect_null(m);
    cr_expect(strstr(err, want) != NULL, "\"%s\" lacks \"%s\"", err, want);
    fx_rmtree(dir);
}

#define LM_HEAD "{\"format\": \"luna\", \"format_version\": 1, \"task\": \"causal-lm\", "
#define LEGACY "\"d\": 24, \"H\": 4, \"l\": 12, \"layers\": 3, \"ffn\": 48, \"activation\": \"gelu\", " \
               "\"tie_kv\": false, \"normalize_before\": true, \"positions\": \"learned\", "        \
               "\"max_positions\": 512, \"causal_phi\": \"elu_plus_1\""

Test(decoder, loader_binds_exactly_the_causal_tensors)
{
    /* lm_legacy_untied_prenorm_learned has output_projection, k/v_proj and no pc_proj */
    expect_lm_load_error("lm_legacy_untied_prenorm_learned",
                         LM_HEAD LEGACY ", \"causal_pc_proj\": false}",
                         "unexpected tensor \"output_projection.weight\"");
    expect_lm_load_error("lm_legacy_untied_prenorm_learned",
                         LM_HEAD LEGACY ", \"tie_embeddings\": false}",
                         "tensor \"layers.0.self_attn.pc_proj.weight\" is missing");
    /* lm_defaults ties everything: untied output embeddings need output_projection */
    expect_lm_load_error("lm_defaults",
                         LM_HEAD "\"d\": 16, \"H\": 2, \"l\": 8, \"layers\": 2, \"ffn\": 32, "
                                 "\"tie_embeddings\": false}",
                         "tensor \"output_projection.weight\" is missing");
}

/* ---- batched steps (luna_step_batch) ------------------------------------------------------ */

/* Every stream steps to the same bits alone and inside batches of 2 to 32, in any position,
 * with other streams joining and leaving between steps, the batch's step on 1 to 3 lanes: the
 * property that lets the server batch decode steps (on the cores it has free) and still give a
 * seeded request the same bytes whatever else runs. The first steps' sizes are set so that
 * both ways of sharing a step are taken: rows cut into a group a lane (8 rows a lane or more:
 * 17 on 2 lanes, 25 on 3, in uneven groups), and columns (9 rows on 2 lanes). */
static void batch_invariance(const char *model)
{
    enum { S = 32, STEPS = 8 };
    static const int sizes[] = {32, 17, 25, 5, 9}; /* on 1, 2, 3, 1, 2 lanes */
    luna_model *m = golden_model(model);
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size;
    luna_ctx *c;
    luna_ctx_opts o = {64, LUNA_ATTN_LUNA, 3};
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    luna_gen_state *alone[S], *batched[S];
    unsigned x = 12345;
    for (int i = 0; i < S; i++) {
        cr_assert_eq(luna_gen_state_new(m, &alone[i]), 0);
        cr_assert_eq(luna_gen_state_new(m, &batched[i]), 0);
        int32_t prompt[40];
        size_t n = 1 + (size_t)i % 37;
        for (size_t t = 0; t < n; t++) x = x * 1103515245u + 12345u, prompt[t] = (int32_t)(cfg->byte_offset + (x >> 16) % 256);
        prompt[0] = cfg->bos_id;
        cr_assert_eq(luna_prefill(c, alone[i], prompt, n, NULL, 0), 0);
        cr_assert_eq(luna_gen_state_copy(batched[i], alone[i]), 0);
    }
    float *la = malloc(V * sizeof(float)), *lb = malloc(S * V * sizeof(float));
    for (int step = 0; step < STEPS; step++) {
        /* this step's batch: a random subset of 2..32 streams in a random order */
        int order[S], B = 2 + (int)((x = x * 1103515245u + 12345u) >> 16) % (S - 1);
        if (step < (int)(sizeof sizes / sizeof *sizes)) B = sizes[step];
        for (int i = 0; i < S; i++) order[i] = i;
        for (int i = S - 1; i > 0; i--) {
            x = x * 1103515245u + 12345u;
            int j = (int)((x >> 16) % (unsigned)(i + 1)), t = order[i];
            order[i] = order[j], order[j] = t;
        }
        luna_gen_state *bs[S];
        int32_t tok[S];
        for (int b = 0; b < B; b++) {
            bs[b] = batched[order[b]];
            tok[b] = (int32_t)(cfg->byte_offset + (order[b] * 7 + step * 13) % 256);
        }
        int lanes = 1 + step % 3; /* the batch's step split across 1 to 3 lanes; alone, one */
        luna_ctx_set_lanes(c, lanes);
        cr_assert_eq(luna_step_batch(c, bs, tok, (size_t)B, lb), 0);
        luna_ctx_set_lanes(c, 1);
        for (int b = 0; b < B; b++) {
            cr_assert_eq(luna_step(c, alone[order[b]], tok[b], la), 0);
            cr_assert(!memcmp(la, lb + (size_t)b * V, V * sizeof(float)),
                      "%s step %d: stream %d at row %d of %d (%d lanes) differs from its step alone", model, step,
                      order[b], b, B, lanes);
            cr_assert_eq(luna_gen_state_tokens(alone[order[b]]), luna_gen_state_tokens(bs[b]));
        }
    }
    /* errors move no state */
    uint64_t t0 = luna_gen_state_tokens(batched[0]);
    luna_gen_state *dup[2] = {batched[0], batched[0]};
    int32_t two[2] = {cfg->byte_offset, cfg->byte_offset};
    cr_assert_eq(luna_step_batch(c, dup, two, 2, lb), LUNA_EINVAL, "a state twice in one batch");
    int32_t bad[2] = {cfg->byte_offset, (int32_t)V};
    luna_gen_state *pair[2] = {batched[0], batched[1]};
    cr_assert_eq(luna_step_batch(c, pair, bad, 2, lb), LUNA_EINVAL, "a token out of the vocabulary");
    cr_assert_eq(luna_step_batch(c, batched, two, 65, lb), LUNA_EINVAL, "more rows than the chunk holds");
    cr_assert_eq(luna_gen_state_tokens(batched[0]), t0);
    free(la), free(lb);
    for (int i = 0; i < S; i++) luna_gen_state_free(alone[i]), luna_gen_state_free(batched[i]);
    luna_ctx_free(c);
    luna_model_free(m);
}

Test(decoder, batched_steps_are_batch_invariant) { batch_invariance("lm_defaults"); }
Test(decoder, batched_steps_are_batch_invariant_untied_prenorm) { batch_invariance("lm_legacy_untied_prenorm_learned"); }
Test(decoder, batched_steps_are_batch_invariant_hash_ngrams) { batch_invariance("lm_hash_ngrams"); }
Test(decoder, batched_steps_are_batch_invariant_ngram_embed) { batch_invariance("lm_ngram_embed"); }
Test(decoder, batched_steps_are_batch_invariant_f16) { batch_invariance("lm_f16_h1"); }

/* ---- lanes: one prefill split across threads ---------------------------------------------- */

/* Adds tensor `name` (rows, cols; cols = 0: a vector of rows) of fixture weights, matrices
 * scaled by cols^-1/2 so that the activations of a wide model stay in range. */
static void add_tensor(fx_st *w, const char *name, size_t rows, size_t cols)
{
    size_t numel = rows * (cols ? cols : 1);
    float *v = malloc(numel * sizeof(float)), scale = cols > 1 ? 1.0f / sqrtf((float)cols) : 1.0f;
    for (size_t i = 0; i < numel; i++) v[i] = fx_weight(25, name, i) * scale;
    uint64_t shape[2] = {rows, cols};
    cr_assert_eq(fx_st_add(w, name, ST_F32, cols ? 2 : 1, shape, v), 0);
    free(v);
}

/* A causal LM of fixture weights wide enough that the lanes split its linear layers into
 * column blocks (d 256: 2 blocks, ffn 512: 4, the output projection's 260 columns: 2), with
 * the paths that the bundled model (models/austen-lm: tied, pre-norm, pc_proj, no positions)
 * does not take: untied K and V, post-norm, phi of x itself, sinusoidal positions (whose
 * rotation restarts every 64 rows of a call), an output projection of its own. */
static luna_model *wide_lm(void)
{
    static const char config[] = LM_HEAD "\"d\": 256, \"H\": 4, \"l\": 16, \"layers\": 2, \"ffn\": 512, "
                                         "\"activation\": \"relu\", \"tie_kv\": false, \"normalize_before\": false, "
                                         "\"positions\": \"sinusoidal\", \"causal_pc_proj\": false, "
                                         "\"tie_embeddings\": false, \"ngram_embed\": 3}";
    size_t d = 256, V = 260, ffn = 512, l = 16;
    char dir[256], name[96], err[512];
    cr_assert_eq(fx_tmpdir(dir, sizeof dir), 0);
    cr_assert_eq(fx_write_file(dir, "config.json", config, strlen(config)), 0);
    fx_st *w = fx_st_new();
    add_tensor(w, "embed_tokens.weight", V, d);
    add_tensor(w, "embed_ngrams.weight", 2 * V, d);
    add_tensor(w, "projected_embeddings", l, d);
    static const char *const attn[] = {"pq_proj", "q_proj", "out_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 2; i++) {
        for (size_t j = 0; j < sizeof attn / sizeof attn[0]; j++) {
            snprintf(name, sizeof name, "layers.%d.self_attn.%s.weight", i, attn[j]);
            add_tensor(w, name, d, d);
            snprintf(name, sizeof name, "layers.%d.self_attn.%s.bias", i, attn[j]);
            add_tensor(w, name, d, 0);
        }
        static const char *const norms[] = {"self_attn_layer_norm", "final_layer_norm"};
        for (size_t j = 0; j < 2; j++) {
            snprintf(name, sizeof name, "layers.%d.%s.weight", i, norms[j]);
            add_tensor(w, name, d, 0);
            snprintf(name, sizeof name, "layers.%d.%s.bias", i, norms[j]);
            add_tensor(w, name, d, 0);
        }
        snprintf(name, sizeof name, "layers.%d.fc1.weight", i);
        add_tensor(w, name, ffn, d);
        snprintf(name, sizeof name, "layers.%d.fc1.bias", i);
        add_tensor(w, name, ffn, 0);
        snprintf(name, sizeof name, "layers.%d.fc2.weight", i);
        add_tensor(w, name, d, ffn);
        snprintf(name, sizeof name, "layers.%d.fc2.bias", i);
        add_tensor(w, name, d, 0);
    }
    add_tensor(w, "output_projection.weight", V, d);
    size_t len;
    uint8_t *img = fx_st_build(w, &len);
    cr_assert_not_null(img);
    cr_assert_eq(fx_write_file(dir, "model.safetensors", img, len), 0);
    free(img);
    fx_st_free(w);
    luna_model *m = NULL;
    int rc = luna_model_load(dir, &m, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    fx_rmtree(dir);
    cr_assert_eq(luna_model_config(m)->vocab_size, 260);
    return m;
}

static luna_model *austen_lm(void)
{
    luna_model *m = NULL;
    char err[512];
    int rc = luna_model_load("models/austen-lm", &m, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return m;
}

/* Whole decode steps on each path of kn_linear_fixed (engine/kernels.h) that this CPU runs: the
 * logits and the state's sums of every stream, stepped alone and in batches of 7 (a block of 4
 * rows and 3 more on AVX-512, of 2 and 1 more on AVX2), and on the fastest path split across 2
 * and 3 lanes too (column blocks of 16 to 128 outputs), are those of the portable path, bit for
 * bit. Shapes the golden LMs are too narrow for: the bundled model's (d 256, pc_proj, tied) and
 * the wide one's (untied, post-norm). Few tokens: valgrind runs it too. */
static void steps_agree_on_every_isa(luna_model *m, const char *what)
{
    enum { S = 7, STEPS = 2 };
    static const kn_isa isas[] = {KN_ISA_C, KN_ISA_AVX2, KN_ISA_AVX512};
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size, ns = 0;
    luna_ctx_opts o = {64, LUNA_ATTN_LUNA, 3};
    luna_ctx *c;
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    luna_gen_state *start[S];
    for (int i = 0; i < S; i++) {
        int32_t *t = tokens(cfg, 1 + (size_t)i * 3, 40 + (uint64_t)i);
        start[i] = state_new(m, LUNA_ATTN_LUNA);
        cr_assert_eq(luna_prefill(c, start[i], t, 1 + (size_t)i * 3, NULL, 0), 0);
        free(t);
    }
    luna__gen_state_sums(start[0], &ns);
    /* per path: [0] the streams stepped alone, [mode] batched on `mode` lanes; ref: the
     * portable path's [0] */
    enum { MODES = 4 };
    float *ref = malloc(STEPS * S * V * sizeof(float)), *got[MODES];
    double *ref_sums = malloc(S * ns * sizeof(double));
    cr_assert(ref && ref_sums);
    for (int mode = 0; mode < MODES; mode++) cr_assert((got[mode] = malloc(STEPS * S * V * sizeof(float))) != NULL);
    size_t best = 0; /* the lanes (modes 2, 3) on the fastest path only: valgrind runs this too */
    for (size_t p = 0; p < sizeof isas / sizeof *isas; p++)
        if (kn_isa_supported(isas[p])) best = p;
    for (size_t p = 0; p < sizeof isas / sizeof *isas; p++) {
        if (!kn_isa_supported(isas[p])) continue;
        cr_assert_eq(kn_linear_fixed_pin(isas[p]), 0);
        for (int mode = 0; mode < (p == best ? MODES : 2); mode++) {
            luna_ctx_set_lanes(c, mode ? mode : 1);
            luna_gen_state *s[S];
            for (int i = 0; i < S; i++) {
                s[i] = state_new(m, LUNA_ATTN_LUNA);
                cr_assert_eq(luna_gen_state_copy(s[i], start[i]), 0);
            }
            for (int step = 0; step < STEPS; step++) {
                int32_t tok[S];
                for (int i = 0; i < S; i++) tok[i] = (int32_t)(cfg->byte_offset + (i * 29 + step * 11) % 256);
                float *out = got[mode] + (size_t)step * S * V;
                if (mode) cr_assert_eq(luna_step_batch(c, s, tok, S, out), 0);
                else
                    for (int i = 0; i < S; i++) cr_assert_eq(luna_step(c, s[i], tok[i], out + (size_t)i * V), 0);
            }
            for (int i = 0; i < S; i++) {
                const double *sums = luna__gen_state_sums(s[i], &ns);
                if (p == 0 && mode == 0) memcpy(ref_sums + (size_t)i * ns, sums, ns * sizeof(double));
                else
                    cr_expect(!memcmp(ref_sums + (size_t)i * ns, sums, ns * sizeof(double)),
                              "%s, isa %d, %s (%d lanes): stream %d's sums differ from the portable path's", what,
                              (int)isas[p], mode ? "batched" : "alone", mode ? mode : 1, i);
                luna_gen_state_free(s[i]);
            }
            if (p == 0 && mode == 0) memcpy(ref, got[0], STEPS * S * V * sizeof(float));
            else
                for (int r = 0; r < STEPS * S; r++)
                    cr_expect(!memcmp(ref + (size_t)r * V, got[mode] + (size_t)r * V, V * sizeof(float)),
                              "%s, isa %d, %s (%d lanes): step %d of stream %d differs from the portable path's",
                              what, (int)isas[p], mode ? "batched" : "alone", mode ? mode : 1, r / S, r % S);
        }
    }
    cr_assert_eq(kn_linear_fixed_pin(KN_ISA_BEST), 0);
    free(ref), free(ref_sums);
    for (int mode = 0; mode < MODES; mode++) free(got[mode]);
    for (int i = 0; i < S; i++) luna_gen_state_free(start[i]);
    luna_ctx_free(c);
}

Test(decoder, steps_give_the_same_bits_on_every_isa_austen)
{
    luna_model *m = austen_lm();
    steps_agree_on_every_isa(m, "austen-lm");
    luna_model_free(m);
}

Test(decoder, steps_give_the_same_bits_on_every_isa_wide_untied_postnorm)
{
    luna_model *m = wide_lm();
    steps_agree_on_every_isa(m, "wide");
    luna_model_free(m);
}

/* Prefills of each length with 1, 2 and 3 lanes give the same bits: the logits after every
 * token, the state's running sums, and with `last` (at the last length) the logits of the
 * last token alone. */
static void expect_lanes_agree(luna_model *m, const char *what, int chunk, const size_t *lens, size_t count,
                               int last_too)
{
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size;
    luna_ctx_opts o = {chunk, LUNA_ATTN_LUNA, 3};
    luna_ctx *c;
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    cr_assert_eq(luna_ctx_set_lanes(c, 5), 3, "no more lanes than the context was made with");
    for (size_t i = 0; i < count; i++) {
        size_t n = lens[i], ns = 0;
        int32_t *t = tokens(cfg, n, 17 + n);
        float *ref = malloc(n * V * sizeof(float)), *out = malloc(n * V * sizeof(float));
        float *ref_last = malloc(V * sizeof(float)), *last = malloc(V * sizeof(float));
        double *ref_sums = NULL;
        for (int lanes = 1; lanes <= 3; lanes++) {
            cr_assert_eq(luna_ctx_set_lanes(c, lanes), lanes);
            luna_gen_state *s = state_new(m, LUNA_ATTN_LUNA), *s1 = state_new(m, LUNA_ATTN_LUNA);
            cr_assert_eq(luna_prefill(c, s, t, n, lanes == 1 ? ref : out, 1), 0);
            if (last_too && i + 1 == count) cr_assert_eq(luna_prefill(c, s1, t, n, lanes == 1 ? ref_last : last, 0), 0);
            cr_assert_eq(luna_gen_state_tokens(s), n);
            const double *sums = luna__gen_state_sums(s, &ns);
            if (lanes == 1) {
                ref_sums = malloc(ns * sizeof(double));
                memcpy(ref_sums, sums, ns * sizeof(double));
            } else {
                cr_expect(!memcmp(ref, out, n * V * sizeof(float)), "%s chunk %d, %zu tokens: the logits of %d lanes differ from 1 lane's",
                          what, chunk, n, lanes);
                cr_expect(!last_too || i + 1 < count || !memcmp(ref_last, last, V * sizeof(float)),
                          "%s chunk %d, %zu tokens: the last logits of %d lanes differ", what, chunk, n, lanes);
                cr_expect(!memcmp(ref_sums, sums, ns * sizeof(double)), "%s chunk %d, %zu tokens: the sums of %d lanes differ",
                          what, chunk, n, lanes);
            }
            luna_gen_state_free(s), luna_gen_state_free(s1);
        }
        free(t), free(ref), free(out), free(ref_last), free(last), free(ref_sums);
    }
    luna_ctx_free(c);
}

/* A prompt prefilled in slices that end on chunk boundaries (as luna_gen_prefill cuts it), each
 * slice with another lane count (as the server gives a job more lanes when it runs alone), gives
 * the bits of one prefill on one lane. */
static void expect_slices_agree(luna_model *m, const char *what, int chunk, size_t n)
{
    const luna_config *cfg = luna_model_config(m);
    size_t V = (size_t)cfg->vocab_size, ns, ns1;
    luna_ctx_opts o = {chunk, LUNA_ATTN_LUNA, 3};
    luna_ctx *c;
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    int32_t *t = tokens(cfg, n, 5);
    float *whole = malloc(n * V * sizeof(float)), *sliced = malloc(n * V * sizeof(float));
    luna_gen_state *s1 = state_new(m, LUNA_ATTN_LUNA), *s = state_new(m, LUNA_ATTN_LUNA);
    luna_ctx_set_lanes(c, 1);
    cr_assert_eq(luna_prefill(c, s1, t, n, whole, 1), 0);
    uint64_t seed = 3;
    for (size_t done = 0, k = 0; done < n; k++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        size_t take = (size_t)chunk * (1 + (size_t)(seed >> 33) % 3);
        if (take > n - done) take = n - done;
        luna_ctx_set_lanes(c, (int)(k % 3) + 1);
        cr_assert_eq(luna_prefill(c, s, t + done, take, sliced + done * V, 1), 0);
        done += take;
    }
    const double *a = luna__gen_state_sums(s1, &ns1), *b = luna__gen_state_sums(s, &ns);
    cr_assert_eq(ns, ns1);
    cr_expect(!memcmp(whole, sliced, n * V * sizeof(float)), "%s chunk %d: sliced prefill logits differ", what, chunk);
    cr_expect(!memcmp(a, b, ns * sizeof(double)), "%s chunk %d: sliced prefill sums differ", what, chunk);
    free(t), free(whole), free(sliced);
    luna_gen_state_free(s), luna_gen_state_free(s1);
    luna_ctx_free(c);
}

/* The unit tests also run under valgrind, where the bundled model takes some 0.1 s a token:
 * the lengths are few and short. Around the 64-row groups of the row-wise phases and a chunk
 * of 64: one token, a partial chunk, one and a bit, several with a partial last. */
Test(decoder, lanes_give_the_same_bits_austen)
{
    luna_model *m = austen_lm();
    static const size_t lens[] = {1, 70};
    expect_lanes_agree(m, "austen-lm", 64, lens, 2, 0);
    luna_model_free(m);
}

Test(decoder, lanes_give_the_same_bits_wide_untied_postnorm)
{
    luna_model *m = wide_lm();
    static const size_t lens[] = {1, 150, 65}, odd[] = {30}; /* a chunk of 7: groups and blocks across chunks */
    expect_lanes_agree(m, "wide", 64, lens, 3, 1);
    expect_lanes_agree(m, "wide", 7, odd, 1, 0);
    expect_slices_agree(m, "wide", 32, 130);
    luna_model_free(m);
}

/* The golden LMs are too narrow for column blocks; their heads (1 to 4) still split. */
Test(decoder, lanes_give_the_same_bits_golden)
{
    for (size_t i = 0; i < N_LM_CASES; i++) {
        luna_model *m = golden_model(lm_cases[i]);
        size_t lens[] = {1, 9, 64, 200};
        expect_lanes_agree(m, lm_cases[i], 64, lens, 4, 1);
        expect_slices_agree(m, lm_cases[i], 16, 150);
        luna_model_free(m);
    }
}

/* The workspace grows by each extra lane's attention scratch, and luna_ctx_bytes says exactly
 * what luna_ctx_new lays out; a KV context has one lane whatever it asks for. */
Test(decoder, lanes_grow_the_workspace_exactly)
{
    luna_model *m = austen_lm();
    const luna_config *cfg = luna_model_config(m);
    size_t c = 256, l = (size_t)cfg->l, d = (size_t)cfg->d, k = d / (size_t)cfg->H;
#define R16(x) (((x) + 15) / 16 * 16)
    /* the attention scratch, and a pipeline's chunk buffers: X .. Y, F, SK, SV, the logits */
    size_t lane = (2 * R16(c * l) + R16(c * c) + R16(k * l)) * sizeof(float) +
                  (8 * R16(c * d) + R16(c * (size_t)cfg->ffn) + 2 * R16(d * l) + R16((size_t)cfg->vocab_size)) *
                      sizeof(float);
#undef R16
    size_t one = 0;
    for (int threads = 1; threads <= 4; threads++) {
        luna_ctx_opts o = {0, LUNA_ATTN_LUNA, threads};
        luna_ctx *ctx;
        cr_assert_eq(luna_ctx_new(m, &o, &ctx), 0);
        size_t bytes = luna_ctx_bytes(m, &o);
        cr_expect_eq(bytes, ctx->L.total * sizeof(float));
        if (threads == 1) one = bytes;
        cr_expect_eq(bytes, one + (size_t)(threads - 1) * lane, "%d lanes: %zu bytes, want %zu", threads, bytes,
                     one + (size_t)(threads - 1) * lane);
        cr_expect_eq(ctx->lanes_max, threads);
        luna_ctx_free(ctx);
        luna_ctx_opts kv = {0, LUNA_ATTN_SOFTMAX, threads}, kv1 = {0, LUNA_ATTN_SOFTMAX, 1};
        cr_expect_eq(luna_ctx_bytes(m, &kv), luna_ctx_bytes(m, &kv1));
    }
    luna_model_free(m);
}

/* A cancel flag set while lanes prefill stops them all at a chunk boundary: the state holds
 * whole chunks, and the rest of the prompt prefilled after it gives the bits of a prefill that
 * was never stopped. */
typedef struct {
    atomic_int *flag;
    long usec;
} canceler;

static void *cancel_later(void *p)
{
    const canceler *k = p;
    struct timespec ts = {0, k->usec * 1000};
    nanosleep(&ts, NULL);
    atomic_store(k->flag, 1);
    return NULL;
}

Test(decoder, lanes_cancel_at_a_chunk_boundary)
{
    luna_model *m = golden_model("lm_defaults");
    const luna_config *cfg = luna_model_config(m);
    size_t n = 20000, V = (size_t)cfg->vocab_size, ns, ns1;
    int32_t *t = tokens(cfg, n, 8);
    luna_ctx_opts o = {32, LUNA_ATTN_LUNA, 2};
    luna_ctx *c;
    cr_assert_eq(luna_ctx_new(m, &o, &c), 0);
    float *want = malloc(V * sizeof(float)), *got = malloc(V * sizeof(float));
    luna_gen_state *ref = state_new(m, LUNA_ATTN_LUNA), *s = state_new(m, LUNA_ATTN_LUNA);
    luna_ctx_set_lanes(c, 1);
    cr_assert_eq(luna_prefill(c, ref, t, n, want, 0), 0);
    luna_ctx_set_lanes(c, 2);
    atomic_int flag = 1;
    luna_ctx_set_cancel(c, &flag);
    cr_expect_eq(luna_prefill(c, s, t, n, got, 0), LUNA_ECANCELED);
    cr_expect_eq(luna_gen_state_tokens(s), 0);
    atomic_store(&flag, 0);
    canceler k = {&flag, 2000};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, cancel_later, &k), 0);
    int rc = luna_prefill(c, s, t, n, got, 0);
    pthread_join(th, NULL);
    uint64_t done = luna_gen_state_tokens(s);
    if (getenv("LANES_VERBOSE")) fprintf(stderr, "canceled after %llu of %zu tokens\n", (unsigned long long)done, n);
    if (rc == LUNA_ECANCELED) {
        cr_expect_eq(done % 32, 0, "stopped inside a chunk: %llu tokens", (unsigned long long)done);
        atomic_store(&flag, 0);
        if (done < n) cr_assert_eq(luna_prefill(c, s, t + done, n - (size_t)done, got, 0), 0);
    } else {
        cr_expect_eq(rc, 0);
        cr_expect_eq(done, n);
    }
    cr_expect_eq(luna_gen_state_tokens(s), n);
    cr_expect(!memcmp(want, got, V * sizeof(float)), "resumed after a cancel: other logits");
    const double *a = luna__gen_state_sums(ref, &ns1), *b = luna__gen_state_sums(s, &ns);
    cr_expect(!memcmp(a, b, ns * sizeof(double)), "resumed after a cancel: other sums");
    luna_ctx_set_cancel(c, NULL);
    free(t), free(want), free(got);
    luna_gen_state_free(ref), luna_gen_state_free(s);
    luna_ctx_free(c);
    luna_model_free(m);
}
