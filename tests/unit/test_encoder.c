/* test_encoder.c - engine/encoder.c against the PyTorch reference (tests/golden) and its own
 * contracts: chunk-size independence, exact workspace accounting, cancellation, limits.
 *
 * Each golden case is run with several chunk lengths, so that inputs shorter than l, of one
 * token, not a multiple of the chunk, and many chunks long are all compared. The tolerance is
 * LUNA.md's numerical contract: ||out - ref|| / ||ref|| < 1e-4 for every output tensor. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/luna.h"
#include "engine/safetensors.h"
#include "golden.h"

size_t luna__ctx_last_alloc_bytes(const luna_ctx *c); /* engine/encoder.c, for tests */
unsigned long luna__ctx_lane_threads(const luna_ctx *c);

#define TOL 1e-4

static void check(const char *cs, int i, int chunk, const char *what, const float *out,
                  const golden *g)
{
    size_t n;
    double *ref = golden_tensor(g, what, i, &n);
    double e = golden_rel_err(out, ref, n);
    if (getenv("GOLDEN_VERBOSE")) fprintf(stderr, "%s %d %d %s %.3g\n", cs, i, chunk, what, e);
    cr_expect(e < TOL, "%s input %d chunk %d: %s rel err %.3g >= %g", cs, i, chunk, what, e, TOL);
    free(ref);
}

/* Relative error of a against b (the resident plan's output), over n floats. */
static double rel_err_f(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#define PLAN_TOL 1e-5

/* Every plan gives the resident plan's outputs: the streaming plan, partial plans that keep
 * about a third and a half of the rows (not on a chunk boundary: the forward rounds them down
 * to its own chunk length), and the resident plan through the plan API. Each allocates no
 * more than the bytes it claims; the streaming plan nothing. */
static void check_plans(const char *cs, int i, int chunk, const golden *g, luna_ctx *ctx, const uint8_t *in, size_t len,
                        const float *pf, const float *pooled, const float *logits, const float *probs)
{
    const luna_config *cfg = luna_model_config(g->m);
    size_t n = luna_input_tokens(g->m, in, len), d = (size_t)cfg->d, l = (size_t)cfg->l, C = (size_t)cfg->n_labels;
    size_t lp = cfg->dynamic_projection && n < l ? n : l;
    luna_plan plans[] = {luna_plan_streaming(g->m, n), luna_plan_rows(g->m, n, n / 3), luna_plan_rows(g->m, n, n / 2 + 5),
                         luna_plan_resident(g->m, n)};
    float *pf2 = malloc(lp * d * sizeof(float)), *pooled2 = malloc(d * sizeof(float));
    float *logits2 = malloc(C * sizeof(float)), *probs2 = malloc(C * sizeof(float));
    for (size_t p = 0; p < sizeof plans / sizeof plans[0]; p++) {
        const luna_plan *pl = &plans[p];
        cr_assert_eq(pl->n, n);
        cr_assert_eq(pl->bytes, pl->rows * d * sizeof(float));
        int rc = luna_encode_plan(ctx, pl, in, len, pf2, pooled2, logits2);
        cr_assert_eq(rc, 0, "%s input %d chunk %d plan %s (%zu rows): %s", cs, i, chunk, luna_plan_name(pl), pl->rows,
                     luna_strerror(rc));
        size_t got = luna__ctx_last_alloc_bytes(ctx);
        cr_expect_leq(got, pl->bytes, "plan %s allocated %zu > %zu", luna_plan_name(pl), got, pl->bytes);
        if (pl->rows == 0) cr_expect_eq(got, 0, "the streaming plan allocates nothing");
        const char *what[] = {"pfinal", "pooled", "logits"};
        const float *ref[] = {pf, pooled, logits}, *out[] = {pf2, pooled2, logits2};
        size_t count[] = {lp * d, d, C};
        for (int k = 0; k < 3; k++) {
            double e = rel_err_f(out[k], ref[k], count[k]);
            cr_expect(e < PLAN_TOL, "%s input %d chunk %d plan %s (%zu of %zu rows): %s differs from resident by %.3g",
                      cs, i, chunk, luna_plan_name(pl), pl->rows, n, what[k], e);
        }
        cr_assert_eq(luna_classify_plan(ctx, pl, in, len, probs2, NULL), 0);
        double e = rel_err_f(probs2, probs, C);
        cr_expect(e < PLAN_TOL, "%s input %d chunk %d plan %s: probs differ from resident by %.3g", cs, i, chunk,
                  luna_plan_name(pl), e);
    }
    /* a plan made for another length is refused */
    luna_plan other = luna_plan_streaming(g->m, n + 1);
    cr_expect_eq(luna_classify_plan(ctx, &other, in, len, probs2, NULL), LUNA_EINVAL);
    free(pf2), free(pooled2), free(logits2), free(probs2);
}

/* Under memcheck (tools/valgrind.sh sets LUNA_TEST_UNDER_VALGRIND=1) the inputs longer than
 * VALGRIND_SHORT_INPUT bytes (300 and up to 1,318) run at chunk lengths 64 and 256 only, 2 to 21
 * chunks each: at chunk lengths 1 and 7 they are hundreds of chunks that take the branches the
 * 100-byte input takes there already (gcov: the same lines and branches of engine/ are taken
 * either way), and they made most of the golden tests' time under valgrind. make check and make
 * asan run every input at every chunk length. */
#define VALGRIND_SHORT_INPUT 128

static int under_valgrind(void)
{
    const char *v = getenv("LUNA_TEST_UNDER_VALGRIND");
    return v && strcmp(v, "1") == 0;
}

/* Runs every input of case `cs` with chunk length `chunk` and compares every output. */
static void run_case(const char *cs, int chunk, int threads)
{
    golden g;
    golden_open(&g, cs);
    const luna_config *cfg = luna_model_config(g.m);
    luna_ctx_opts o = {chunk, LUNA_ATTN_LUNA, threads};
    luna_ctx *ctx;
    cr_assert_eq(luna_ctx_new(g.m, &o, &ctx), 0);
    const int short_only = under_valgrind() && chunk < 64;
    for (int i = 0; i < g.count; i++) {
        char name[32];
        snprintf(name, sizeof name, "input.%d", i);
        const st_tensor *in = st_find(&g.st, name);
        cr_assert_not_null(in);
        if (short_only && in->nbytes > VALGRIND_SHORT_INPUT) continue;
        size_t n = luna_input_tokens(g.m, in->data, in->nbytes);
        size_t d = (size_t)cfg->d, l = (size_t)cfg->l, C = (size_t)cfg->n_labels;
        size_t lp = cfg->dynamic_projection && n < l ? n : l;
        size_t hn;
        free(golden_tensor(&g, "hidden", i, &hn));
        cr_assert_eq(hn, n * d, "%s input %d: engine counts %zu tokens, reference %zu", cs, i, n, hn / d);
        float *hidden = malloc(n * d * sizeof(float)), *pf = malloc(lp * d * sizeof(float));
        float *pooled = malloc(d * sizeof(float)), *logits = malloc(C * sizeof(float));
        float *probs = malloc(C * sizeof(float)), *logits2 = malloc(C * sizeof(float));
        int rc = luna_encode(ctx, in->data, in->nbytes, hidden, pf, pooled, logits);
        cr_assert_eq(rc, 0, "%s input %d: %s", cs, i, luna_strerror(rc));
        cr_expect_eq(luna__ctx_last_alloc_bytes(ctx), luna_workspace_bytes(g.m, n),
                     "workspace accounting is not exact");
        (void)threads;
        check(cs, i, chunk, "hidden", hidden, &g);
        check(cs, i, chunk, "pfinal", pf, &g);
        check(cs, i, chunk, "pooled", pooled, &g);
        check(cs, i, chunk, "logits", logits, &g);
        cr_assert_eq(luna_classify(ctx, in->data, in->nbytes, probs, logits2), 0);
        check(cs, i, chunk, "probs", probs, &g);
        check(cs, i, chunk, "logits", logits2, &g);
        check_plans(cs, i, chunk, &g, ctx, in->data, in->nbytes, pf, pooled, logits, probs);
        free(hidden), free(pf), free(pooled), free(logits), free(probs), free(logits2);
    }
    luna_ctx_free(ctx);
    golden_close(&g);
}

static const char *const cases[] = {
    "defaults",          "bf16_weights",       "email_subject_body",          "f16_weights",
    "h1_hp2_prenorm_gelu_head", "hp1_h4_nopos_ppool", "layernorm_embedding", "lra_paper",
    "static_projection_ids",    "untied_prenorm_learned_mean", "ngram_embed_mean",
    "hash_ngrams_cls",
};
#define N_CASES (sizeof cases / sizeof cases[0])

/* chunk lengths x threads: single-threaded at every chunk length, then the chunks split over
 * 2 and 3 threads (lanes with no chunk at all included: inputs shorter than 3 chunks) */
#define GOLDEN(name)                                                                        \
    Test(golden, name) {                                                                   \
        static const int runs[][2] = {{1, 1}, {7, 1}, {64, 1}, {256, 1}, {1, 2}, {7, 3}, {64, 2}}; \
        for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) run_case(#name, runs[k][0], runs[k][1]); \
    }
GOLDEN(defaults)
GOLDEN(bf16_weights)
GOLDEN(email_subject_body)
GOLDEN(f16_weights)
GOLDEN(h1_hp2_prenorm_gelu_head)
GOLDEN(hp1_h4_nopos_ppool)
GOLDEN(layernorm_embedding)
GOLDEN(lra_paper)
GOLDEN(static_projection_ids)
GOLDEN(ngram_embed_mean)
GOLDEN(hash_ngrams_cls)
GOLDEN(untied_prenorm_learned_mean)

/* Every case directory is tested: a new golden case cannot be left out of the list above. */
/* Every classification case directory is tested here (the lm_ cases in test_decoder.c). */
Test(golden, every_case_is_listed)
{
    golden_expect_listed(cases, N_CASES, "", "lm_");
}

/* ---- contracts beyond the reference ------------------------------------------------------ */
#define PACK_TOL 1e-5

/* Packs docs[0 .. count) greedily (luna_pack_fit) on ctx and checks every packed document's
 * probs and logits against its lone forward's; returns the packs of two documents or more. Each
 * pack allocates nothing (its buffers are the context's). */
static size_t check_packs(const char *cs, luna_ctx *ctx, const luna_model *m, int chunk, int lanes,
                          const uint8_t *const *docs, const size_t *lens, size_t count)
{
    size_t C = (size_t)luna_model_config(m)->n_labels, multi = 0;
    size_t *tok = malloc(count * sizeof *tok);
    float *probs = malloc(count * C * sizeof(float)), *logits = malloc(count * C * sizeof(float));
    float *p1 = malloc(C * sizeof(float)), *l1 = malloc(C * sizeof(float));
    for (size_t i = 0; i < count; i++) tok[i] = luna_input_tokens(m, docs[i], lens[i]);
    for (size_t i = 0; i < count;) {
        size_t k = luna_pack_fit(m, chunk, lanes, tok + i, count - i);
        if (k == 0) { /* too long for a pack: the lone forward's */
            cr_expect_eq(luna_classify_pack(ctx, 1, docs + i, lens + i, probs, logits), LUNA_EINVAL);
            i++;
            continue;
        }
        int rc = luna_classify_pack(ctx, k, docs + i, lens + i, probs, logits);
        cr_assert_eq(rc, 0, "%s chunk %d: a pack of %zu: %s", cs, chunk, k, luna_strerror(rc));
        cr_expect_eq(luna__ctx_last_alloc_bytes(ctx), 0);
        for (size_t j = 0; j < k; j++) {
            cr_assert_eq(luna_classify(ctx, docs[i + j], lens[i + j], p1, l1), 0);
            double ep = rel_err_f(probs + j * C, p1, C), el = rel_err_f(logits + j * C, l1, C);
            cr_expect(ep < PACK_TOL && el < PACK_TOL,
                      "%s chunk %d: document %zu (%zu tokens), %zu of a pack of %zu: probs %.3g, logits %.3g from alone",
                      cs, chunk, i + j, tok[i + j], j, k, ep, el);
        }
        multi += k > 1;
        i += k;
    }
    free(tok), free(probs), free(logits), free(p1), free(l1);
    return multi;
}

/* Distinct documents side by side: mails whose subjects differ (the email transform unfolds
 * each into a buffer of its own) and lengths differ, empty ones among them. */
#define N_MAILS 10
static const char *const MAILS[N_MAILS] = {
    "Subject: one\r\n\r\nthe first body",
    "",
    "Subject: a longer\r\n  folded subject\r\n\r\nand a body of a few more words than that",
    "no header at all, just text",
    "Subject: x\r\n\r\n",
    "",
    "From: a@b\r\nSubject: third\r\n\r\nbody",
    "Subject: \xc3\xa9t\xc3\xa9\r\n\r\n\x00\x01\xff bytes",
    "Subject: last one\r\n\r\nshort",
    "z",
};

/* Every classification case: its golden inputs, the prefixes of its longest input (1, 2, 3, 5,
 * ... bytes) and MAILS, packed at chunk lengths 256 and 48 on 1 and 2 lanes. The prefixes give
 * packs of every configuration (pooling, norms, tied or not, dynamic projection with n < l and
 * not), the mails distinct documents. */
Test(encoder, packs_match_lone_forwards)
{
    for (size_t c = 0; c < N_CASES; c++) {
        golden g;
        golden_open(&g, cases[c]);
        size_t count = (size_t)g.count + 24 + N_MAILS, longest = 0;
        const uint8_t **docs = malloc(count * sizeof *docs);
        size_t *lens = malloc(count * sizeof *lens);
        for (int i = 0; i < g.count; i++) {
            char name[32];
            snprintf(name, sizeof name, "input.%d", i);
            const st_tensor *in = st_find(&g.st, name);
            cr_assert_not_null(in);
            docs[i] = in->data, lens[i] = in->nbytes;
            if (lens[i] > lens[longest]) longest = (size_t)i;
        }
        for (size_t j = 0, b = 1; j < 24; j++, b += 1 + j / 3) {
            docs[(size_t)g.count + j] = docs[longest];
            lens[(size_t)g.count + j] = b < lens[longest] ? b : lens[longest];
        }
        for (size_t j = 0; j < N_MAILS; j++) { /* (the one with a NUL byte: its length by hand) */
            docs[(size_t)g.count + 24 + j] = (const uint8_t *)MAILS[j];
            lens[(size_t)g.count + 24 + j] = j == 7 ? 27 : strlen(MAILS[j]);
        }
        static const int runs[][2] = {{256, 1}, {48, 1}, {256, 2}, {48, 2}, {24, 3}};
        for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
            luna_ctx_opts o = {runs[r][0], LUNA_ATTN_LUNA, runs[r][1]};
            luna_ctx *ctx;
            cr_assert_eq(luna_ctx_new(g.m, &o, &ctx), 0);
            size_t multi = check_packs(cases[c], ctx, g.m, runs[r][0], runs[r][1], docs, lens, count);
            cr_expect_gt(multi, 0, "%s chunk %d: no pack of two documents or more", cases[c], runs[r][0]);
            luna_ctx_free(ctx);
        }
        free(docs), free(lens);
        golden_close(&g);
    }
}

/* A forward uses no more lanes than its chunks: a document of one chunk starts no thread on a
 * context of two lanes (and gives the bits of one lane), one of three chunks starts some. */
Test(encoder, lanes_no_more_than_chunks)
{
    luna_model *m = golden_model("defaults");
    luna_ctx_opts one = {16, LUNA_ATTN_LUNA, 1}, two = {16, LUNA_ATTN_LUNA, 2};
    luna_ctx *c1, *c2;
    cr_assert_eq(luna_ctx_new(m, &one, &c1), 0);
    cr_assert_eq(luna_ctx_new(m, &two, &c2), 0);
    const uint8_t doc[] = "short doc";
    size_t C = (size_t)luna_model_config(m)->n_labels;
    float a[16], b[16];
    cr_assert_leq(C, 16);
    cr_assert_leq(luna_input_tokens(m, doc, sizeof doc - 1), 16);
    cr_assert_eq(luna_classify(c1, doc, sizeof doc - 1, NULL, a), 0);
    cr_assert_eq(luna_classify(c2, doc, sizeof doc - 1, NULL, b), 0);
    cr_expect_eq(luna__ctx_lane_threads(c2), 0, "one chunk: lane 1 has nothing to do");
    cr_expect(!memcmp(a, b, C * sizeof(float)), "the bits of one lane");
    uint8_t long_doc[40];
    memset(long_doc, 'x', sizeof long_doc);
    cr_assert_eq(luna_classify(c2, long_doc, sizeof long_doc, NULL, b), 0);
    cr_expect_gt(luna__ctx_lane_threads(c2), 0, "three chunks: both lanes");
    cr_assert_eq(luna_classify(c2, doc, sizeof doc - 1, NULL, b), 0); /* the context's lanes came back */
    unsigned long t = luna__ctx_lane_threads(c2);
    cr_assert_eq(luna_classify(c2, long_doc, sizeof long_doc, NULL, b), 0);
    cr_expect_gt(luna__ctx_lane_threads(c2), t);
    luna_ctx_free(c1), luna_ctx_free(c2);
    luna_model_free(m);
}

Test(encoder, pack_refuses_what_does_not_fit)
{
    luna_model *m = golden_model("defaults");
    luna_ctx_opts o = {16, LUNA_ATTN_LUNA, 1};
    luna_ctx *ctx;
    cr_assert_eq(luna_ctx_new(m, &o, &ctx), 0);
    const uint8_t a[] = "abcdef", big[40] = {0};
    const uint8_t *docs[] = {a, a, big};
    size_t lens[] = {6, 6, sizeof big}, tok[3];
    for (int i = 0; i < 3; i++) tok[i] = luna_input_tokens(m, docs[i], lens[i]);
    cr_assert_lt(tok[0] + tok[1], 16);
    cr_expect_eq(luna_pack_fit(m, 16, 1, tok, 3), 2, "the third would pass the chunk");
    cr_expect_eq(luna_pack_fit(m, 16, 2, tok, 3), 2, "the third is too long for a chunk of its own");
    cr_expect_eq(luna_pack_fit(m, 16, 2, tok, 2), 2);
    cr_expect_eq(luna_pack_fit(m, 16, 1, tok + 2, 1), 0, "longer than a chunk alone");
    cr_expect_eq(luna_pack_fit(m, 0, 1, tok, 3), 3, "the default chunk, 256 rows, takes all three");
    const size_t six[] = {6, 6, 6, 6, 6, 6};
    cr_expect_eq(luna_pack_fit(m, 16, 1, six, 6), 2, "two of 6 tokens fill a chunk of 16");
    cr_expect_eq(luna_pack_fit(m, 16, 2, six, 6), 4, "two chunks on two lanes");
    cr_expect_eq(luna_pack_fit(m, 16, 3, six, 6), 6, "and three on three");
    float probs[6];
    cr_expect_eq(luna_classify_pack(ctx, 3, docs, lens, probs, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_classify_pack(ctx, 0, docs, lens, probs, NULL), LUNA_EINVAL);
    const uint8_t *nul[] = {NULL};
    cr_expect_eq(luna_classify_pack(ctx, 1, nul, lens, probs, NULL), LUNA_EINVAL);
    cr_expect_eq(luna_classify_pack(ctx, 2, docs, lens, probs, NULL), 0);
    for (int i = 0; i < 2; i++) { /* probabilities */
        cr_expect_float_eq(probs[2 * i] + probs[2 * i + 1], 1.0f, 1e-6);
    }
    /* two lanes hold two chunks: the pair that passes one chunk runs, each on a lane */
    const uint8_t ten[] = "0123456789";
    const uint8_t *pair[] = {ten, ten};
    size_t pair_lens[] = {10, 10}, pt = luna_input_tokens(m, ten, 10);
    cr_assert(pt <= 16 && 2 * pt > 16, "%zu tokens", pt);
    cr_expect_eq(luna_classify_pack(ctx, 2, pair, pair_lens, probs, NULL), LUNA_EINVAL, "one lane, one chunk");
    luna_ctx_free(ctx);
    luna_ctx_opts two = {16, LUNA_ATTN_LUNA, 2};
    cr_assert_eq(luna_ctx_new(m, &two, &ctx), 0);
    float p1[2];
    cr_expect_eq(luna_classify_pack(ctx, 2, pair, pair_lens, probs, NULL), 0);
    cr_expect_eq(luna_classify(ctx, ten, 10, p1, NULL), 0);
    for (int i = 0; i < 2; i++) {
        cr_expect_float_eq(probs[2 * i], p1[0], 1e-5);
        cr_expect_float_eq(probs[2 * i + 1], p1[1], 1e-5);
    }
    cr_expect_eq(luna_classify_pack(ctx, 3, docs, lens, probs, NULL), LUNA_EINVAL, "the third passes a chunk alone");
    luna_ctx_set_lanes(ctx, 1);
    cr_expect_eq(luna_classify_pack(ctx, 2, pair, pair_lens, probs, NULL), LUNA_EINVAL, "the lanes in use count");
    luna_ctx_free(ctx);
    luna_ctx_opts soft = {16, LUNA_ATTN_SOFTMAX, 1};
    cr_assert_eq(luna_ctx_new(m, &soft, &ctx), 0);
    cr_expect_eq(luna_classify_pack(ctx, 2, docs, lens, probs, NULL), LUNA_EINVAL, "the baselines have no pack");
    luna_ctx_free(ctx);
    luna_model_free(m);
}


Test(encoder, workspace_is_linear_and_exact)
{
    luna_model *m = golden_model("defaults");
    const luna_config *cfg = luna_model_config(m);
    size_t per = (size_t)cfg->d * sizeof(float);
    cr_assert_eq(luna_workspace_bytes(m, 1), per);
    cr_assert_eq(luna_workspace_bytes(m, 1000000), 1000000 * per);
    cr_assert_eq(luna_workspace_bytes(m, SIZE_MAX / 2), SIZE_MAX, "overflow must saturate");
    /* the baselines need more, and the materialised one is quadratic */
    size_t n = 1000;
    cr_assert_eq(luna_workspace_bytes_attn(m, n, LUNA_ATTN_SOFTMAX_STREAM, 0), 3 * n * per);
    cr_assert_eq(luna_workspace_bytes_attn(m, n, LUNA_ATTN_SOFTMAX, 0),
                 5 * n * per + (size_t)cfg->H * n * n * sizeof(float));
    luna_model_free(m);
}

Test(encoder, cancel_flag_stops_the_forward)
{
    luna_model *m = golden_model("defaults");
    luna_ctx *ctx;
    luna_ctx_opts o = {4, LUNA_ATTN_LUNA, 2};
    cr_assert_eq(luna_ctx_new(m, &o, &ctx), 0);
    atomic_int flag = 1;
    luna_ctx_set_cancel(ctx, &flag);
    uint8_t doc[100] = {0};
    cr_assert_eq(luna_classify(ctx, doc, sizeof doc, NULL, NULL), LUNA_ECANCELED);
    atomic_store(&flag, 0);
    float probs[16];
    cr_assert_eq(luna_classify(ctx, doc, sizeof doc, probs, NULL), 0, "a context is reusable after a cancel");
    luna_ctx_set_cancel(ctx, NULL);
    cr_assert_eq(luna_classify(ctx, doc, sizeof doc, probs, NULL), 0);
    luna_ctx_free(ctx);
    luna_model_free(m);
}

Test(encoder, learned_positions_limit_the_length)
{
    luna_model *m = golden_model("lra_paper");
    const luna_config *cfg = luna_model_config(m);
    luna_ctx *ctx;
    cr_assert_eq(luna_ctx_new(m, NULL, &ctx), 0);
    size_t fits = (size_t)cfg->max_positions - 1 - (size_t)cfg->append_eos;
    uint8_t *doc = calloc(fits + 1, 1);
    float probs[16];
    cr_assert_eq(luna_input_tokens(m, doc, fits), (size_t)cfg->max_positions);
    cr_assert_eq(luna_classify(ctx, doc, fits, probs, NULL), 0);
    cr_assert_eq(luna_classify(ctx, doc, fits + 1, probs, NULL), LUNA_ETOOLONG);
    cr_assert_eq(luna_err_http_status(LUNA_ETOOLONG), 413);
    free(doc);
    luna_ctx_free(ctx);
    luna_model_free(m);
}

Test(encoder, bad_arguments)
{
    luna_model *m = golden_model("defaults");
    luna_ctx *ctx = NULL;
    luna_ctx_opts bad = {-1, LUNA_ATTN_LUNA, 1};
    cr_assert_eq(luna_ctx_new(m, &bad, &ctx), LUNA_EINVAL);
    bad = (luna_ctx_opts){0, (luna_attn)7, 1};
    cr_assert_eq(luna_ctx_new(m, &bad, &ctx), LUNA_EINVAL);
    cr_assert_null(ctx);
    cr_assert_eq(luna_ctx_new(m, NULL, &ctx), 0);
    cr_assert_eq(luna_classify(ctx, NULL, 5, NULL, NULL), LUNA_EINVAL);
    cr_assert_eq(luna_classify(ctx, NULL, 0, NULL, NULL), 0, "an empty input is valid: just bos");
    luna_ctx_free(ctx);
    luna_ctx_free(NULL);
    luna_model_free(m);
}

/* The baselines are the same Transformer on the same weights: the materialised and streaming
 * forms must agree with each other (they share no attention code), for every chunk length. */
Test(encoder, softmax_baselines_agree)
{
    luna_model *m = golden_model("untied_prenorm_learned_mean");
    const luna_config *cfg = luna_model_config(m);
    uint8_t doc[150];
    for (size_t i = 0; i < sizeof doc; i++) doc[i] = (uint8_t)(i * 37 + 11);
    size_t n = luna_input_tokens(m, doc, sizeof doc), d = (size_t)cfg->d;
    float *a = malloc(n * d * sizeof(float)), *b = malloc(n * d * sizeof(float));
    luna_ctx *ca, *cb;
    luna_ctx_opts oa = {256, LUNA_ATTN_SOFTMAX, 1}, ob = {16, LUNA_ATTN_SOFTMAX_STREAM, 1};
    cr_assert_eq(luna_ctx_new(m, &oa, &ca), 0);
    cr_assert_eq(luna_ctx_new(m, &ob, &cb), 0);
    cr_assert_eq(luna_encode(ca, doc, sizeof doc, a, NULL, NULL, NULL), 0);
    cr_assert_eq(luna_encode(cb, doc, sizeof doc, b, NULL, NULL, NULL), 0);
    cr_assert_eq(luna__ctx_last_alloc_bytes(ca), luna_workspace_bytes_attn(m, n, LUNA_ATTN_SOFTMAX, 256));
    cr_assert_eq(luna__ctx_last_alloc_bytes(cb), luna_workspace_bytes_attn(m, n, LUNA_ATTN_SOFTMAX_STREAM, 16));
    double num = 0, den = 0;
    for (size_t i = 0; i < n * d; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
    cr_assert_lt(sqrt(num / den), 1e-5, "materialised and streaming softmax differ");
    /* and they are not Luna: the comparison would be vacuous if all three computed the same */
    luna_ctx *cl;
    cr_assert_eq(luna_ctx_new(m, NULL, &cl), 0);
    cr_assert_eq(luna_encode(cl, doc, sizeof doc, b, NULL, NULL, NULL), 0);
    num = 0;
    for (size_t i = 0; i < n * d; i++) num += (a[i] - b[i]) * (a[i] - b[i]);
    cr_assert_gt(sqrt(num / den), 1e-2);
    luna_ctx_free(ca), luna_ctx_free(cb), luna_ctx_free(cl);
    free(a), free(b);
    luna_model_free(m);
}

/* The streaming plan polls the cancel flag between chunks in every pass: a cancel that comes
 * in the middle of a forward stops it there. Machine speed is not assumed: the document doubles
 * until the forward outlasts the 5 ms after which another thread sets the flag. */
typedef struct {
    atomic_int *flag;
    int delay_us;
} canceller;

static void *cancel_later(void *p)
{
    canceller *cl = p;
    usleep((useconds_t)cl->delay_us);
    atomic_store(cl->flag, 1);
    return NULL;
}

Test(encoder, streaming_plan_stops_mid_forward)
{
    luna_model *m = golden_model("defaults"); /* no max_positions */
    luna_ctx *ctx;
    luna_ctx_opts o = {64, LUNA_ATTN_LUNA, 2};
    cr_assert_eq(luna_ctx_new(m, &o, &ctx), 0);
    atomic_int flag = 0;
    luna_ctx_set_cancel(ctx, &flag);
    int canceled_mid = 0;
    for (size_t len = 1 << 16; len <= (1u << 26) && !canceled_mid; len *= 2) {
        uint8_t *doc = calloc(len, 1);
        cr_assert_not_null(doc);
        luna_plan p = luna_plan_streaming(m, luna_input_tokens(m, doc, len));
        atomic_store(&flag, 0);
        canceller cl = {&flag, 5000};
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, cancel_later, &cl), 0);
        int rc = luna_classify_plan(ctx, &p, doc, len, NULL, NULL);
        pthread_join(th, NULL);
        cr_assert(rc == 0 || rc == LUNA_ECANCELED, "%s", luna_strerror(rc));
        canceled_mid = rc == LUNA_ECANCELED;
        free(doc);
    }
    cr_assert(canceled_mid, "no forward was ever canceled in the middle");
    atomic_store(&flag, 0);
    float probs[16];
    uint8_t small[300] = {1};
    luna_plan p = luna_plan_streaming(m, luna_input_tokens(m, small, sizeof small));
    cr_assert_eq(luna_classify_plan(ctx, &p, small, sizeof small, probs, NULL), 0, "reusable after a cancel");
    luna_ctx_free(ctx);
    luna_model_free(m);
}

/* auto: the streaming plan when keeping rows saves no work (2 layers pooled from P), else the
 * resident plan when it fits, else the most rows that fit, on the default chunk's boundaries */
Test(encoder, plan_for_picks_the_fastest_that_fits)
{
    luna_model *p = golden_model("hp1_h4_nopos_ppool"), *c = golden_model("defaults");
    size_t n = 5000;
    luna_plan a = luna_plan_for(p, n, SIZE_MAX);
    cr_assert(luna_model_config(p)->layers == 2 && luna_model_config(p)->pooling == LUNA_POOL_P);
    cr_assert_eq(a.rows, 0, "P-pooled, 2 layers: streaming even with room");
    cr_assert_leq(luna_plan_streaming(p, n).flops, luna_plan_resident(p, n).flops);
    luna_plan r = luna_plan_for(c, n, SIZE_MAX);
    cr_assert_eq(r.rows, n, "room for all: resident");
    cr_assert_gt(luna_plan_streaming(c, n).flops, r.flops, "recomputing costs time here");
    size_t row = (size_t)luna_model_config(c)->d * sizeof(float);
    luna_plan q = luna_plan_for(c, n, 1000 * row);
    cr_assert_eq(q.rows, 768, "the most rows that fit, on a 256-row boundary");
    cr_assert_eq(q.bytes, 768 * row);
    cr_assert_eq(luna_plan_for(c, n, 100 * row).rows, 0, "less than a chunk: streaming");
    cr_assert_str_eq(luna_plan_name(&q), "partial");
    luna_model_free(p);
    luna_model_free(c);
}
