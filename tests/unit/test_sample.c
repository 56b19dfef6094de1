/* test_sample.c - engine/sample.c: parameter checks, greedy and banned tokens, the sampled
 * frequencies against softmax(logits / T) computed here from the formula, top-k, top-p on
 * boundaries that float rounding cannot blur, the repetition penalty, determinism and the
 * documented RNG (checked against a reimplementation here and a Python-computed golden). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sample.h"

/* tools/valgrind.sh sets LUNA_TEST_UNDER_VALGRIND=1: there the long loops of draws below are
 * cut to a tenth (memcheck runs them 50 to 100 times slower). Each draw takes the same path
 * whatever its count, so memcheck still sees every branch; the full counts, on which the
 * statistical checks are sized, run in make check and make asan. */
static int n_draws(int full)
{
    const char *v = getenv("LUNA_TEST_UNDER_VALGRIND");
    return v && strcmp(v, "1") == 0 ? full / 10 : full;
}

static luna_sampler *mk(int vocab, luna_sampling p)
{
    luna_sampler *s = NULL;
    int rc = luna_sampler_new(vocab, &p, &s);
    cr_assert_eq(rc, 0, "luna_sampler_new: %d", rc);
    cr_assert_not_null(s);
    return s;
}

static luna_sampling params(float t, int k, float p, float r, uint64_t seed)
{
    luna_sampling sp = {t, k, p, r, seed};
    return sp;
}

/* One draw from a copy of logits (sample() overwrites its input). */
static int32_t draw(luna_sampler *s, const float *logits, int vocab, float *scratch)
{
    memcpy(scratch, logits, (size_t)vocab * sizeof *scratch);
    return luna_sampler_sample(s, scratch);
}

/* counts[i] = how often token i came out of `draws` draws; every draw must be a valid id. */
static void count_draws(luna_sampler *s, const float *logits, int vocab, int draws, int *counts)
{
    float *scratch = malloc((size_t)vocab * sizeof *scratch);
    cr_assert_not_null(scratch);
    memset(counts, 0, (size_t)vocab * sizeof *counts);
    for (int d = 0; d < draws; d++) {
        int32_t t = draw(s, logits, vocab, scratch);
        cr_assert(t >= 0 && t < vocab, "draw %d returned %d", d, (int)t);
        counts[t]++;
    }
    free(scratch);
}

/* Each frequency is within 5 standard errors (plus a hair) of want[i]; a zero want must
 * never be drawn. */
static void expect_freqs(const int *counts, const double *want, int vocab, int draws)
{
    for (int i = 0; i < vocab; i++) {
        double f = (double)counts[i] / draws;
        if (want[i] == 0.0) {
            cr_assert_eq(counts[i], 0, "token %d has probability 0 but was drawn %d times", i,
                         counts[i]);
            continue;
        }
        double tol = 5.0 * sqrt(want[i] * (1.0 - want[i]) / draws) + 1e-3;
        cr_assert_lt(fabs(f - want[i]), tol, "token %d: frequency %.4f, want %.4f (+-%.4f)", i, f,
                     want[i], tol);
    }
}

/* softmax(logits / t) in double, the formula the sampler must follow. */
static void softmax_ref(const double *logits, int n, double t, double *p)
{
    double m = -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++) m = logits[i] > m ? logits[i] : m;
    for (int i = 0; i < n; i++) sum += p[i] = isinf(logits[i]) ? 0.0 : exp((logits[i] - m) / t);
    for (int i = 0; i < n; i++) p[i] /= sum;
}

/* ---- parameters ----------------------------------------------------------------------- */

Test(sampler, new_rejects_every_invalid_parameter)
{
    const luna_sampling ok = LUNA_SAMPLING_DEFAULTS;
    struct { luna_sampling p; const char *why; } bad[] = {
        {params(-1.0f, 0, 1.0f, 1.0f, 0), "negative temperature"},
        {params(-0.001f, 0, 1.0f, 1.0f, 0), "slightly negative temperature"},
        {params(NAN, 0, 1.0f, 1.0f, 0), "NaN temperature"},
        {params(INFINITY, 0, 1.0f, 1.0f, 0), "inf temperature"},
        {params(-INFINITY, 0, 1.0f, 1.0f, 0), "-inf temperature"},
        {params(1.0f, -1, 1.0f, 1.0f, 0), "top_k -1"},
        {params(1.0f, -2147483647 - 1, 1.0f, 1.0f, 0), "top_k INT_MIN"},
        {params(1.0f, 0, 0.0f, 1.0f, 0), "top_p 0"},
        {params(1.0f, 0, -0.5f, 1.0f, 0), "negative top_p"},
        {params(1.0f, 0, 1.0001f, 1.0f, 0), "top_p above 1"},
        {params(1.0f, 0, NAN, 1.0f, 0), "NaN top_p"},
        {params(1.0f, 0, INFINITY, 1.0f, 0), "inf top_p"},
        {params(1.0f, 0, 1.0f, 0.0f, 0), "penalty 0"},
        {params(1.0f, 0, 1.0f, -1.0f, 0), "negative penalty"},
        {params(1.0f, 0, 1.0f, NAN, 0), "NaN penalty"},
        {params(1.0f, 0, 1.0f, INFINITY, 0), "inf penalty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        luna_sampler *s = (luna_sampler *)&bad[i]; /* must stay untouched */
        cr_assert_eq(luna_sampler_new(8, &bad[i].p, &s), LUNA_EINVAL, "%s accepted", bad[i].why);
        cr_assert_eq(s, (luna_sampler *)&bad[i], "%s: *out written on failure", bad[i].why);
    }
    luna_sampler *s = NULL;
    cr_assert_eq(luna_sampler_new(0, &ok, &s), LUNA_EINVAL, "vocab 0");
    cr_assert_eq(luna_sampler_new(-5, &ok, &s), LUNA_EINVAL, "negative vocab");
    cr_assert_eq(luna_sampler_new(8, NULL, &s), LUNA_EINVAL, "NULL params");
    cr_assert_eq(luna_sampler_new(8, &ok, NULL), LUNA_EINVAL, "NULL out");
    cr_assert_null(s);
}

Test(sampler, new_accepts_boundary_parameters)
{
    luna_sampling good[] = {
        LUNA_SAMPLING_DEFAULTS,
        params(0.0f, 0, 1.0f, 1.0f, 0),            /* greedy */
        params(1e-30f, 0, 1.0f, 1.0f, 0),          /* tiny temperature */
        params(1e30f, 0, 1.0f, 1.0f, 0),           /* huge temperature */
        params(1.0f, 1, 1e-9f, 1.0f, 0),           /* smallest top_k, tiny top_p */
        params(1.0f, 2147483647, 1.0f, 1e-30f, 0), /* top_k far above vocab, tiny penalty */
        params(1.0f, 0, 1.0f, 1e30f, UINT64_MAX),  /* huge penalty, largest seed */
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        luna_sampler *s = NULL;
        cr_assert_eq(luna_sampler_new(8, &good[i], &s), 0, "case %zu rejected", i);
        cr_assert_not_null(s);
        float l[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        int32_t t = luna_sampler_sample(s, l);
        cr_assert(t >= 0 && t < 8, "case %zu drew %d", i, (int)t);
        luna_sampler_free(s);
    }
    luna_sampler_free(NULL);
}

/* ---- greedy and bans ------------------------------------------------------------------ */

Test(sampler, greedy_picks_argmax_and_the_lowest_id_on_ties)
{
    luna_sampler *s = mk(6, params(0.0f, 0, 1.0f, 1.0f, 0));
    float a[6] = {1.0f, 3.0f, -2.0f, 3.0f, 2.999999f, 0.0f};
    cr_assert_eq(luna_sampler_sample(s, a), 1);
    float b[6] = {-5.0f, -5.0f, -5.0f, -5.0f, -5.0f, -5.0f};
    cr_assert_eq(luna_sampler_sample(s, b), 0, "all equal: the lowest id");
    float c[6] = {-1e30f, -3.0f, -7.0f, -3.0f, -FLT_MAX, -2.5f};
    cr_assert_eq(luna_sampler_sample(s, c), 5);
    float d[6] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1e-38f};
    cr_assert_eq(luna_sampler_sample(s, d), 5, "a subnormal-sized lead still wins");
    float e[6] = {FLT_MAX, 1.0f, FLT_MAX, 0.0f, 0.0f, 0.0f};
    cr_assert_eq(luna_sampler_sample(s, e), 0);
    luna_sampler_free(s);
}

Test(sampler, greedy_never_picks_a_banned_token)
{
    luna_sampler *s = mk(5, params(0.0f, 0, 1.0f, 1.0f, 0));
    float a[5] = {-INFINITY, -INFINITY, -3.0f, -INFINITY, -5.0f};
    cr_assert_eq(luna_sampler_sample(s, a), 2);
    float b[5] = {-INFINITY, -1e30f, -INFINITY, -INFINITY, -INFINITY};
    cr_assert_eq(luna_sampler_sample(s, b), 1, "the only unbanned token, however unlikely");
    float c[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -FLT_MAX};
    cr_assert_eq(luna_sampler_sample(s, c), 4);
    luna_sampler_free(s);
}

Test(sampler, greedy_ignores_the_seed)
{
    float l[7] = {0.3f, 1.2f, -0.4f, 1.19f, 0.0f, 1.2f, 0.9f};
    for (uint64_t seed = 0; seed < 20; seed++) {
        luna_sampler *s = mk(7, params(0.0f, 0, 1.0f, 1.0f, seed));
        float x[7];
        for (int rep = 0; rep < 5; rep++) cr_assert_eq(draw(s, l, 7, x), 1);
        luna_sampler_free(s);
    }
}

Test(sampler, all_banned_nan_and_posinf_logits_are_einval)
{
    luna_sampling modes[] = {
        params(0.0f, 0, 1.0f, 1.0f, 1), params(1.0f, 0, 1.0f, 1.0f, 1),
        params(1.0f, 2, 1.0f, 1.0f, 1), params(1.0f, 0, 0.5f, 1.0f, 1),
        params(0.8f, 2, 0.5f, 1.3f, 1),
    };
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        luna_sampler *s = mk(4, modes[m]);
        luna_sampler_observe(s, 0);
        float x[4];
        const float none[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        const float nan1[4] = {0.0f, NAN, 1.0f, 2.0f};
        const float inf1[4] = {0.0f, 1.0f, INFINITY, 2.0f};
        cr_assert_eq(draw(s, none, 4, x), LUNA_EINVAL, "mode %zu: all banned", m);
        cr_assert_eq(draw(s, nan1, 4, x), LUNA_EINVAL, "mode %zu: NaN", m);
        cr_assert_eq(draw(s, inf1, 4, x), LUNA_EINVAL, "mode %zu: +inf", m);
        cr_assert_eq(luna_sampler_sample(s, NULL), LUNA_EINVAL);
        cr_assert_eq(luna_sampler_sample(NULL, x), LUNA_EINVAL);

        /* the errors did not advance the RNG: the next draws match a fresh sampler's */
        luna_sampler *fresh = mk(4, modes[m]);
        luna_sampler_observe(fresh, 0);
        const float l[4] = {0.1f, 0.2f, 0.3f, 0.4f};
        for (int i = 0; i < 50; i++)
            cr_assert_eq(draw(s, l, 4, x), draw(fresh, l, 4, x), "mode %zu draw %d", m, i);
        luna_sampler_free(fresh);
        luna_sampler_free(s);
    }
}

/* ---- temperature ---------------------------------------------------------------------- */

Test(sampler, temperature_frequencies_match_softmax)
{
    enum { V = 4, N = 20000 };
    const float lf[V] = {1.0f, 0.5f, -0.3f, 2.0f};
    const double ld[V] = {1.0, 0.5, -0.3, 2.0};
    const float temps[] = {1.0f, 0.7f, 2.5f};
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        luna_sampler *s = mk(V, params(temps[k], 0, 1.0f, 1.0f, 1000 + k));
        int counts[V];
        double want[V];
        count_draws(s, lf, V, N, counts);
        softmax_ref(ld, V, temps[k], want);
        expect_freqs(counts, want, V, N);
        luna_sampler_free(s);
    }
}

Test(sampler, temperature_never_draws_a_banned_token)
{
    enum { V = 6, N = 20000 };
    const float lf[V] = {-INFINITY, 0.0f, -INFINITY, 0.0f, -INFINITY, 0.0f};
    const double ld[V] = {-INFINITY, 0.0, -INFINITY, 0.0, -INFINITY, 0.0};
    luna_sampler *s = mk(V, params(3.0f, 0, 1.0f, 1.0f, 7));
    int counts[V];
    double want[V];
    count_draws(s, lf, V, N, counts);
    softmax_ref(ld, V, 3.0, want);
    expect_freqs(counts, want, V, N);
    luna_sampler_free(s);
}

Test(sampler, tiny_temperature_is_greedy_and_huge_is_uniform)
{
    const float l[5] = {0.5f, 2.0f, 1.999f, -3.0f, 2.0f};
    luna_sampler *s = mk(5, params(1e-30f, 0, 1.0f, 1.0f, 3));
    float x[5];
    for (int i = 0; i < 2000; i++) {
        int32_t t = draw(s, l, 5, x);
        cr_assert(t == 1 || t == 4, "T = 1e-30 drew %d: only the two maxima may come out", t);
    }
    luna_sampler_free(s);

    enum { N = 20000 };
    s = mk(5, params(1e30f, 0, 1.0f, 1.0f, 4));
    int counts[5];
    double want[5] = {0.2, 0.2, 0.2, 0.2, 0.2};
    count_draws(s, l, 5, N, counts);
    expect_freqs(counts, want, 5, N);
    luna_sampler_free(s);
}

Test(sampler, extreme_logits_stay_finite)
{
    const float l[4] = {FLT_MAX, -FLT_MAX, FLT_MAX, 0.0f};
    luna_sampler *s = mk(4, params(1.0f, 0, 1.0f, 1.0f, 5));
    int counts[4];
    count_draws(s, l, 4, 4000, counts);
    cr_assert_eq(counts[1] + counts[3], 0, "only the two FLT_MAX tokens are likely");
    cr_assert(counts[0] > 1700 && counts[2] > 1700, "%d / %d", counts[0], counts[2]);
    luna_sampler_free(s);
}

/* ---- top-k and top-p ------------------------------------------------------------------ */

Test(sampler, top_k_1_equals_greedy)
{
    enum { V = 37 };
    srand(11);
    for (int trial = 0; trial < 300; trial++) {
        float l[V], a[V], b[V];
        for (int i = 0; i < V; i++) {
            int r = rand() % 20;
            /* few distinct values, so that ties are common; some banned */
            l[i] = r == 0 ? -INFINITY : (float)(r % 7) - 3.0f;
        }
        float t = 0.05f + (float)(trial % 10) * 0.5f;
        luna_sampler *g = mk(V, params(0.0f, 0, 1.0f, 1.5f, 0));
        luna_sampler *k = mk(V, params(t, 1, trial % 2 ? 1.0f : 0.9f, 1.5f, (uint64_t)trial));
        for (int i = 0; i < 5; i++) {
            int32_t seen = rand() % V;
            luna_sampler_observe(g, seen);
            luna_sampler_observe(k, seen);
        }
        cr_assert_eq(draw(k, l, V, a), draw(g, l, V, b), "trial %d", trial);
        luna_sampler_free(g);
        luna_sampler_free(k);
    }
}

Test(sampler, top_k_2_only_emits_the_two_best)
{
    enum { V = 6, N = 20000 };
    /* ids out of rank order: the two best are 4 (0.9) and 1 (0.8); 2 is third by a hair */
    const float lf[V] = {0.1f, 0.8f, 0.8f - 1e-6f, 0.5f, 0.9f, -1.0f};
    luna_sampler *s = mk(V, params(1.0f, 2, 1.0f, 1.0f, 21));
    int counts[V];
    count_draws(s, lf, V, N, counts);
    double want[V] = {0};
    double z = exp(0.9) + exp(0.8);
    want[4] = exp(0.9) / z;
    want[1] = exp(0.8) / z;
    expect_freqs(counts, want, V, N);
    luna_sampler_free(s);

    /* a tie at the cut goes to the lower id */
    const float tie[V] = {0.0f, 1.0f, 0.5f, 1.0f, 0.5f, 1.0f};
    s = mk(V, params(1.0f, 2, 1.0f, 1.0f, 22));
    count_draws(s, tie, V, N, counts);
    double want2[V] = {0, 0.5, 0, 0.5, 0, 0};
    expect_freqs(counts, want2, V, N);
    luna_sampler_free(s);
}

/* probs {0.5, 0.3, 0.15, 0.05} under ids {3, 0, 2, 1}: the ranking must sort. */
static const int tp_id[4] = {3, 0, 2, 1};
static const double tp_prob[4] = {0.5, 0.3, 0.15, 0.05};

static void top_p_case(float top_p, int kept, uint64_t seed)
{
    enum { N = 20000 };
    float lf[4];
    for (int r = 0; r < 4; r++) lf[tp_id[r]] = (float)log(tp_prob[r]);
    luna_sampler *s = mk(4, params(1.0f, 0, top_p, 1.0f, seed));
    int counts[4];
    count_draws(s, lf, 4, N, counts);
    double sum = 0.0, want[4] = {0};
    for (int r = 0; r < kept; r++) sum += tp_prob[r];
    for (int r = 0; r < kept; r++) want[tp_id[r]] = tp_prob[r] / sum;
    expect_freqs(counts, want, 4, N);
    luna_sampler_free(s);
}

Test(sampler, top_p_075_keeps_the_first_two) { top_p_case(0.75f, 2, 31); }
Test(sampler, top_p_085_keeps_the_first_three) { top_p_case(0.85f, 3, 32); }
Test(sampler, top_p_045_keeps_only_the_first) { top_p_case(0.45f, 1, 33); }
Test(sampler, top_p_1_can_emit_all) { top_p_case(1.0f, 4, 34); }
Test(sampler, top_p_097_keeps_all_four) { top_p_case(0.97f, 4, 35); }

Test(sampler, top_p_applies_to_the_renormalised_top_k_set)
{
    enum { N = 20000 };
    /* probs {0.4, 0.3, 0.2, 0.1}; top_k 3 renormalises to {4/9, 3/9, 2/9}: p = 0.75 is reached
     * by two (7/9 = 0.78). Against the full set it would take three (0.7 < 0.75). */
    const float lf[4] = {logf(0.1f), logf(0.3f), logf(0.4f), logf(0.2f)};
    luna_sampler *s = mk(4, params(1.0f, 3, 0.75f, 1.0f, 41));
    int counts[4];
    count_draws(s, lf, 4, N, counts);
    double want[4] = {0.0, 3.0 / 7.0, 4.0 / 7.0, 0.0};
    expect_freqs(counts, want, 4, N);
    luna_sampler_free(s);
}

Test(sampler, top_p_tie_at_the_cut_goes_to_the_lower_id)
{
    enum { N = 20000 };
    /* probs {0.4, 0.2, 0.2, 0.2} with the three equal ones at ids 0, 2, 3: top_p 0.5 keeps the
     * best (id 1) and the lowest-id of the tied (id 0). */
    const float lf[4] = {logf(0.2f), logf(0.4f), logf(0.2f), logf(0.2f)};
    luna_sampler *s = mk(4, params(1.0f, 0, 0.5f, 1.0f, 36));
    int counts[4];
    count_draws(s, lf, 4, N, counts);
    double want[4] = {1.0 / 3.0, 2.0 / 3.0, 0.0, 0.0};
    expect_freqs(counts, want, 4, N);
    luna_sampler_free(s);

    /* top_k 3 keeps ids 1, 0, 2 (renormalised 0.5, 0.25, 0.25); top_p 0.6 then keeps 1 and 0 */
    s = mk(4, params(1.0f, 3, 0.6f, 1.0f, 37));
    count_draws(s, lf, 4, N, counts);
    expect_freqs(counts, want, 4, N);
    luna_sampler_free(s);
}

/* ---- repetition penalty --------------------------------------------------------------- */

Test(sampler, repetition_penalty_can_flip_a_positive_greedy_choice)
{
    float x[3];
    const float l[3] = {3.0f, 2.0f, -1.0f};
    luna_sampler *s = mk(3, params(0.0f, 0, 1.0f, 2.0f, 0));
    cr_assert_eq(draw(s, l, 3, x), 0, "nothing seen yet");
    luna_sampler_observe(s, 0);
    cr_assert_eq(draw(s, l, 3, x), 1, "3 / 2 = 1.5 < 2");
    cr_assert_float_eq(x[0], 1.5f, 1e-7, "logit / r for a positive logit");
    luna_sampler_free(s);

    s = mk(3, params(0.0f, 0, 1.0f, 1.4f, 0));
    luna_sampler_observe(s, 0);
    luna_sampler_observe(s, 0); /* observing twice penalises once: 3 / 1.4 = 2.14 > 2 */
    cr_assert_eq(draw(s, l, 3, x), 0, "r = 1.4 is not enough, and seen twice is not r^2");
    luna_sampler_free(s);
}

Test(sampler, repetition_penalty_makes_a_negative_logit_more_negative)
{
    float x[3];
    const float l[3] = {-1.0f, -1.5f, -INFINITY};
    luna_sampler *s = mk(3, params(0.0f, 0, 1.0f, 2.0f, 0));
    luna_sampler_observe(s, 0);
    luna_sampler_observe(s, 2); /* banned stays banned */
    cr_assert_eq(draw(s, l, 3, x), 1, "-1 * 2 = -2 < -1.5; dividing would give -0.5 and keep 0");
    cr_assert_float_eq(x[0], -2.0f, 1e-7);
    cr_assert(x[2] == -INFINITY);
    luna_sampler_free(s);

    /* r < 1 rewards repetition: -1 * 0.5 = -0.5 beats -0.7 */
    const float m[3] = {-1.0f, -0.7f, -3.0f};
    s = mk(3, params(0.0f, 0, 1.0f, 0.5f, 0));
    luna_sampler_observe(s, 0);
    cr_assert_eq(draw(s, m, 3, x), 0);
    luna_sampler_free(s);
}

Test(sampler, repetition_penalty_ignores_out_of_range_ids)
{
    enum { V = 64 }; /* a whole word of the seen-set: id 64 would be the next word */
    float l[V], x[V];
    for (int i = 0; i < V; i++) l[i] = (float)i / 100.0f;
    luna_sampler *s = mk(V, params(0.0f, 0, 1.0f, 100.0f, 0));
    const int32_t outside[] = {-1, V, V + 1, 1000000, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++)
        luna_sampler_observe(s, outside[i]);
    luna_sampler_observe(NULL, 3);
    cr_assert_eq(draw(s, l, V, x), V - 1);
    luna_sampler_observe(s, V - 1);
    cr_assert_eq(draw(s, l, V, x), V - 2, "the last id in range is penalised");
    luna_sampler_free(s);
}

Test(sampler, repetition_penalty_overflow_is_clamped_not_a_ban)
{
    float x[2];
    const float l[2] = {-1e30f, 1e30f};
    luna_sampler *s = mk(2, params(0.0f, 0, 1.0f, 1e-30f, 0)); /* would give +inf */
    luna_sampler_observe(s, 1);
    cr_assert_eq(draw(s, l, 2, x), 1);
    cr_assert(x[1] == FLT_MAX, "%g", x[1]);
    luna_sampler_free(s);

    s = mk(2, params(1.0f, 0, 1.0f, 1e30f, 0)); /* -1e30 * 1e30 would be -inf */
    luna_sampler_observe(s, 0);
    luna_sampler_observe(s, 1);
    const float neg[2] = {-1e30f, -INFINITY};
    cr_assert_eq(draw(s, neg, 2, x), 0, "a penalised token is still drawable, not banned");
    luna_sampler_free(s);
}

Test(sampler, repetition_penalty_then_temperature_frequencies)
{
    enum { V = 4, N = 20000 };
    const float lf[V] = {1.2f, 0.6f, -0.5f, 0.0f};
    const float r = 1.8f, t = 0.8f;
    luna_sampler *s = mk(V, params(t, 0, 1.0f, r, 51));
    luna_sampler_observe(s, 0);
    luna_sampler_observe(s, 2);
    int counts[V];
    double want[V], pen[V] = {1.2 / 1.8, 0.6, -0.5 * 1.8, 0.0};
    count_draws(s, lf, V, N, counts);
    softmax_ref(pen, V, t, want);
    expect_freqs(counts, want, V, N);
    luna_sampler_free(s);
}

/* ---- determinism and the RNG ---------------------------------------------------------- */

static void sequence(luna_sampling p, int vocab, int n, int32_t *out)
{
    luna_sampler *s = mk(vocab, p);
    float *l = malloc((size_t)vocab * sizeof *l);
    cr_assert_not_null(l);
    for (int i = 0; i < n; i++) {
        /* logits that depend on the step, like a model's */
        for (int j = 0; j < vocab; j++) l[j] = (float)(((i + 3) * (j + 7)) % 13) * 0.25f;
        out[i] = luna_sampler_sample(s, l);
        cr_assert_geq(out[i], 0);
        luna_sampler_observe(s, out[i]);
    }
    free(l);
    luna_sampler_free(s);
}

Test(sampler, same_seed_same_sequence_different_seed_differs)
{
    enum { V = 50, N = 1000 };
    luna_sampling modes[] = {
        params(1.0f, 0, 1.0f, 1.0f, 0), params(0.7f, 10, 1.0f, 1.0f, 0),
        params(1.3f, 0, 0.9f, 1.0f, 0), params(0.9f, 20, 0.8f, 1.2f, 0),
    };
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        static int32_t a[N], b[N], c[N];
        modes[m].seed = 123456789;
        sequence(modes[m], V, N, a);
        sequence(modes[m], V, N, b);
        cr_assert_eq(memcmp(a, b, sizeof a), 0, "mode %zu: same seed, different tokens", m);
        modes[m].seed = 123456790;
        sequence(modes[m], V, N, c);
        int same = 0;
        for (int i = 0; i < N; i++) same += a[i] == c[i];
        cr_assert_lt(same, N / 2, "mode %zu: seeds 1 apart agree on %d of %d tokens", m, same, N);
    }
}

/* The documented generator, written again from its published description. */
typedef struct { uint64_t s0, s1, s2, s3; } ref_rng;

static uint64_t ref_splitmix(uint64_t *x)
{
    *x += 0x9e3779b97f4a7c15ull;
    uint64_t z = *x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static ref_rng ref_seed(uint64_t seed)
{
    ref_rng r;
    r.s0 = ref_splitmix(&seed);
    r.s1 = ref_splitmix(&seed);
    r.s2 = ref_splitmix(&seed);
    r.s3 = ref_splitmix(&seed);
    return r;
}

static uint64_t ref_next(ref_rng *r)
{
    uint64_t x = r->s1 * 5;
    uint64_t out = ((x << 7) | (x >> 57)) * 9, t = r->s1 << 17;
    r->s2 ^= r->s0;
    r->s3 ^= r->s1;
    r->s1 ^= r->s2;
    r->s0 ^= r->s3;
    r->s2 ^= t;
    r->s3 = (r->s3 << 45) | (r->s3 >> 19);
    return out;
}

Test(sampler, rng_is_splitmix64_seeded_xoshiro256starstar)
{
    /* splitmix64's published vector for seed 1234567 */
    uint64_t x = 1234567;
    cr_assert_eq(ref_splitmix(&x), 6457827717110365317ull);
    cr_assert_eq(ref_splitmix(&x), 3203168211198807973ull);

    /* With V = 2^b equal logits every p is exactly 1, so the token is floor(u * V): the top b
     * bits of the generator's output. */
    enum { N = 1000 };
    const uint64_t seeds[] = {0, 1, 42, 0xdeadbeefcafef00dull};
    for (size_t k = 0; k < sizeof seeds / sizeof seeds[0]; k++) {
        float l[16], x16[16];
        for (int i = 0; i < 16; i++) l[i] = 0.25f;
        luna_sampler *s = mk(16, params(0.6f, 0, 1.0f, 1.0f, seeds[k]));
        ref_rng r = ref_seed(seeds[k]);
        for (int i = 0; i < N; i++) {
            int32_t want = (int32_t)(ref_next(&r) >> 60);
            cr_assert_eq(draw(s, l, 16, x16), want, "seed %zu draw %d", k, i);
        }
        luna_sampler_free(s);
    }

    /* Golden from an independent Python implementation (seed 42, 256 equal logits). */
    static const int32_t golden[24] = {21,  97,  174, 236, 253, 197, 184, 217,
                                       194, 149, 174, 74,  205, 82,  182, 224,
                                       157, 217, 181, 181, 23,  45,  111, 154};
    float l[256], x256[256];
    for (int i = 0; i < 256; i++) l[i] = -1.0f;
    luna_sampler *s = mk(256, params(1.0f, 0, 1.0f, 1.0f, 42));
    for (int i = 0; i < 24; i++) cr_assert_eq(draw(s, l, 256, x256), golden[i], "draw %d", i);
    luna_sampler_free(s);
}

Test(sampler, rng_uses_all_24_bits_of_u)
{
    /* V equal logits, V not a power of two: the token is floor(u * V) = (m * V) >> 24 for the
     * 24-bit m, which moves with the lowest of the 24 bits about V / 2^24 of the time. */
    enum { V = 100003 };
    const int N = n_draws(2000);
    float *l = malloc(V * sizeof *l), *x = malloc(V * sizeof *x);
    cr_assert(l && x);
    for (int i = 0; i < V; i++) l[i] = 1.5f;
    luna_sampler *s = mk(V, params(1.0f, 0, 1.0f, 1.0f, 77));
    ref_rng r = ref_seed(77);
    for (int i = 0; i < N; i++) {
        uint64_t m = ref_next(&r) >> 40;
        cr_assert_eq(draw(s, l, V, x), (int32_t)((m * V) >> 24), "draw %d", i);
    }
    luna_sampler_free(s);
    free(l);
    free(x);
}

/* Seeds whose first u is exactly 0, 1/2 and 1 - 2^-24 (found by search over the reference
 * generator): the walk's two ends and a boundary hit exactly. */
enum { SEED_U0 = 15115159, SEED_UHALF = 1144774, SEED_UMAX = 8280086 };

static int32_t first_draw(int vocab, luna_sampling p, const float *logits)
{
    luna_sampler *s = mk(vocab, p);
    float *x = malloc((size_t)vocab * sizeof *x);
    cr_assert_not_null(x);
    int32_t t = draw(s, logits, vocab, x);
    free(x);
    luna_sampler_free(s);
    return t;
}

Test(sampler, the_walk_at_u_0_half_and_max)
{
    ref_rng r0 = ref_seed(SEED_U0), rh = ref_seed(SEED_UHALF), r1 = ref_seed(SEED_UMAX);
    cr_assert_eq(ref_next(&r0) >> 40, 0);
    cr_assert_eq(ref_next(&rh) >> 40, 0x800000);
    cr_assert_eq(ref_next(&r1) >> 40, 0xffffff);

    /* u = 1/2 on two equal tokens: target 1 = cum after the first, and the walk needs
     * cum > target, so the second is drawn (token i owns [C_(i-1), C_i) of the total) */
    const float h[2] = {0.5f, 0.5f};
    cr_assert_eq(first_draw(2, params(1.0f, 0, 1.0f, 1.0f, SEED_UHALF), h), 1);
    const float h3[3] = {0.5f, 0.5f, 0.5f};
    cr_assert_eq(first_draw(3, params(1.0f, 2, 1.0f, 1.0f, SEED_UHALF), h3), 1);
    cr_assert_eq(first_draw(3, params(1.0f, 0, 0.6f, 1.0f, SEED_UHALF), h3), 1);

    /* u = 0: the first token of the walk with p > 0. p = 0 exactly when the logit is more than
     * 87 T below the best: e^-89.5 is cut, e^-86.5 is kept. */
    const float a[3] = {-100.0f, -86.5f, 0.0f};
    cr_assert_eq(first_draw(3, params(1.0f, 0, 1.0f, 1.0f, SEED_U0), a), 1);
    const float a2[3] = {-86.5f, -89.5f, 0.0f};
    cr_assert_eq(first_draw(3, params(1.0f, 0, 1.0f, 1.0f, SEED_U0), a2), 0);
    const float b[3] = {-180.0f, -170.0f, 0.0f}; /* T = 2: d = -90 (cut), -85 (kept) */
    cr_assert_eq(first_draw(3, params(2.0f, 0, 1.0f, 1.0f, SEED_U0), b), 1);
    /* ranked walks start at the best */
    const float c[3] = {1.0f, 5.0f, 3.0f};
    cr_assert_eq(first_draw(3, params(1.0f, 2, 1.0f, 1.0f, SEED_U0), c), 1);
    cr_assert_eq(first_draw(3, params(1.0f, 0, 0.99f, 1.0f, SEED_U0), c), 1);

    /* u = 1 - 2^-24: the last token of the walk */
    const float d[5] = {0.0f, 0.0f, 0.0f, -INFINITY, -100.0f};
    cr_assert_eq(first_draw(5, params(1.0f, 0, 1.0f, 1.0f, SEED_UMAX), d), 2);
    const float e[5] = {5.0f, 4.0f, 3.0f, 2.0f, 1.0f};
    cr_assert_eq(first_draw(5, params(1.0f, 3, 1.0f, 1.0f, SEED_UMAX), e), 2, "worst of top 3");
    const float f[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* top_p 0.5 of four equal: ids 0 and 1 */
    cr_assert_eq(first_draw(4, params(1.0f, 0, 0.5f, 1.0f, SEED_UMAX), f), 1);
    cr_assert_eq(first_draw(4, params(1.0f, 2, 1.0f, 1.0f, SEED_UMAX), f), 1);
}

/* Token sequences computed by an independent Python implementation of the algorithm as
 * sample.h documents it, on step-dependent logits with a banned id and every generated token
 * observed. float32 arithmetic is emulated op by op: a double result of +, -, * or / on two
 * floats, rounded once to float, is the correctly rounded float result. The script:
 *
 *   import math, struct
 *   M = (1 << 64) - 1
 *   f32 = lambda x: struct.unpack('f', struct.pack('f', x))[0]
 *   rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M
 *   def splitmix(x):
 *       x = (x + 0x9e3779b97f4a7c15) & M; z = x
 *       z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
 *       z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
 *       return x, z ^ (z >> 31)
 *   class Rng:
 *       def __init__(self, seed):
 *           self.s, x = [], seed
 *           for _ in range(4): x, z = splitmix(x); self.s.append(z)
 *       def u(self):
 *           s = self.s; r = (rotl((s[1] * 5) & M, 7) * 9) & M; t = (s[1] << 17) & M
 *           s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]
 *           s[2] ^= t; s[3] = rotl(s[3], 45)
 *           return (r >> 40) * 2.0 ** -24
 *   C = [float.fromhex(h) for h in ['0x1.715476p+0', '0x1.63p-1', '-0x1.bd0106p-13',
 *        '0x1.a0d2cep-13', '0x1.6e879cp-10', '0x1.11121p-7', '0x1.555382p-5', '0x1.555554p-3',
 *        '0x1p-1']]
 *   def sexp(x):
 *       k = math.floor(f32(f32(x * C[0]) + 0.5))
 *       r = f32(x - f32(k * C[1])); r = f32(r - f32(k * C[2]))
 *       p = C[3]
 *       for c in C[4:]: p = f32(f32(p * r) + c)
 *       return f32(f32(f32(f32(f32(p * r) * r) + r) + 1.0) * 2.0 ** k)
 *   def sample(l, T, k, p, r, seen, rng):
 *       V = len(l); l = list(l)
 *       for i in seen:
 *           if r != 1.0 and l[i] != -math.inf: l[i] = f32(l[i] / r) if l[i] > 0 else f32(l[i] * r)
 *       lmax = max(l)
 *       if T == 0.0: return l.index(lmax)
 *       P = [0.0] * V
 *       for i in range(V):
 *           d = (l[i] - lmax) * (1.0 / T)
 *           if d >= -87.0: P[i] = sexp(f32(d))
 *       if k >= V: k = 0
 *       if k == 0 and p == 1.0: ids = [i for i in range(V) if P[i] > 0]
 *       else:
 *           ids = sorted([i for i in range(V) if P[i] > 0], key=lambda i: (-l[i], i))
 *           S = 0.0
 *           if k > 0: ids = ids[:k]
 *           for i in (ids if k > 0 else range(V)): S += P[i]
 *           if p < 1.0:
 *               cum, n = 0.0, 0
 *               for i in ids:
 *                   cum += P[i]; n += 1
 *                   if cum >= p * S: break
 *               ids = ids[:n]
 *       tot = 0.0
 *       for i in ids: tot += P[i]
 *       tgt, cum = rng.u() * tot, 0.0
 *       for i in ids:
 *           cum += P[i]
 *           if cum > tgt: return i
 *   for T, k, p, r, seed in [(f32(0.8), 0, 1.0, f32(1.3), 7), (f32(1.1), 4, 1.0, 1.0, 8),
 *                            (f32(0.9), 0, f32(0.7), 1.0, 9),
 *                            (f32(1.5), 6, f32(0.8), f32(1.2), 10), (0.0, 0, 1.0, f32(1.3), 11)]:
 *       rng, seen, out = Rng(seed), set(), []
 *       for step in range(40):
 *           l = [((step * 7 + j * 3) % 11) * 0.25 - 1.0 for j in range(12)]
 *           if step % 3 == 0: l[5] = -math.inf
 *           t = sample(l, T, k, p, r, seen, rng); out.append(t); seen.add(t)
 *       print(out)
 */
Test(sampler, documented_algorithm_golden_sequences)
{
    enum { V = 12, N = 40 };
    const luna_sampling modes[5] = {
        params(0.8f, 0, 1.0f, 1.3f, 7),  params(1.1f, 4, 1.0f, 1.0f, 8),
        params(0.9f, 0, 0.7f, 1.0f, 9),  params(1.5f, 6, 0.8f, 1.2f, 10),
        params(0.0f, 0, 1.0f, 1.3f, 11),
    };
    static const int32_t golden[5][N] = {
        {7, 1, 9, 11, 11, 10, 0, 1, 3, 3, 5, 7, 11, 9, 6, 6, 2, 4, 1, 2,
         3, 8, 7, 1, 8, 0, 0, 8, 2, 5, 2, 1, 9, 10, 11, 5, 3, 7, 10, 11},
        {10, 8, 2, 3, 1, 10, 0, 5, 2, 11, 1, 3, 1, 9, 3, 0, 6, 11, 9, 10,
         8, 2, 6, 4, 9, 7, 5, 6, 11, 1, 3, 4, 9, 10, 4, 5, 0, 1, 10, 7},
        {7, 1, 6, 3, 0, 2, 11, 5, 3, 4, 5, 2, 1, 5, 10, 11, 10, 0, 0, 2,
         11, 9, 7, 8, 6, 3, 5, 10, 7, 9, 10, 8, 2, 6, 8, 6, 7, 5, 6, 4},
        {2, 8, 6, 0, 1, 10, 7, 9, 2, 11, 1, 3, 8, 9, 10, 4, 9, 3, 4, 10,
         7, 8, 3, 4, 9, 11, 0, 10, 0, 9, 10, 0, 8, 2, 8, 1, 11, 5, 10, 11},
        {7, 1, 6, 0, 5, 10, 4, 9, 3, 8, 2, 7, 1, 6, 11, 1, 10, 4, 9, 3,
         8, 2, 7, 1, 6, 0, 5, 10, 4, 9, 3, 8, 2, 7, 1, 6, 0, 5, 10, 4},
    };
    for (int m = 0; m < 5; m++) {
        luna_sampler *s = mk(V, modes[m]);
        for (int step = 0; step < N; step++) {
            float l[V];
            for (int j = 0; j < V; j++) l[j] = (float)((step * 7 + j * 3) % 11) * 0.25f - 1.0f;
            if (step % 3 == 0) l[5] = -INFINITY;
            int32_t t = luna_sampler_sample(s, l);
            cr_assert_eq(t, golden[m][step], "mode %d step %d: %d, want %d", m, step, t,
                         golden[m][step]);
            luna_sampler_observe(s, t);
        }
        luna_sampler_free(s);
    }
}

/* ---- sizes ---------------------------------------------------------------------------- */

Test(sampler, vocab_of_one)
{
    luna_sampling modes[] = {
        params(0.0f, 0, 1.0f, 1.0f, 0), params(1.0f, 0, 1.0f, 1.0f, 0),
        params(1.0f, 1, 0.1f, 2.0f, 0), params(1.0f, 5, 1.0f, 1.0f, 0),
    };
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        luna_sampler *s = mk(1, modes[m]);
        luna_sampler_observe(s, 0);
        luna_sampler_observe(s, 1);
        for (int i = 0; i < 100; i++) {
            float l[1] = {(float)i - 50.0f};
            cr_assert_eq(luna_sampler_sample(s, l), 0, "mode %zu", m);
        }
        float banned[1] = {-INFINITY};
        cr_assert_eq(luna_sampler_sample(s, banned), LUNA_EINVAL);
        luna_sampler_free(s);
    }
}

/* A 65536-token vocabulary: greedy, top-k membership, the top-p nucleus computed here by
 * sorting in double, and unfiltered sampling that follows softmax on the few likely tokens. */
static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

Test(sampler, large_vocab)
{
    enum { V = 65536 };
    float *l = malloc(V * sizeof *l), *x = malloc(V * sizeof *x);
    double *p = malloc(V * sizeof *p), *sorted = malloc(V * sizeof *sorted);
    cr_assert(l && x && p && sorted);
    uint32_t h = 2463534242u;
    for (int i = 0; i < V; i++) {
        h ^= h << 13, h ^= h >> 17, h ^= h << 5;
        l[i] = (float)(h % 10000) / 1000.0f - 5.0f; /* [-5, 5) */
    }
    l[40000] = 9.0f; /* a clear maximum far from id 0 */
    l[123] = 8.5f;
    l[65535] = 8.0f;
    l[7] = -INFINITY;

    luna_sampler *g = mk(V, params(0.0f, 0, 1.0f, 1.0f, 0));
    cr_assert_eq(draw(g, l, V, x), 40000);
    luna_sampler_free(g);

    /* top_k 40: everything drawn is among the 40 largest logits */
    for (int i = 0; i < V; i++) sorted[i] = l[i];
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    double kth = sorted[39];
    luna_sampler *k = mk(V, params(2.0f, 40, 1.0f, 1.0f, 61));
    int hits_outside_top3 = 0;
    for (int i = 0; i < n_draws(1000); i++) {
        int32_t t = draw(k, l, V, x);
        cr_assert(t >= 0 && t < V);
        cr_assert_geq(l[t], kth, "draw %d: token %d (logit %g) is not in the top 40", i, t, l[t]);
        hits_outside_top3 += t != 40000 && t != 123 && t != 65535;
    }
    cr_assert_gt(hits_outside_top3, 0, "T = 2 over 40 tokens must reach beyond the top 3");
    luna_sampler_free(k);

    /* top_p 0.6 at T = 1: the nucleus from double softmax */
    double lmax = 9.0, z = 0.0;
    for (int i = 0; i < V; i++) z += p[i] = isinf(l[i]) ? 0.0 : exp(l[i] - lmax);
    for (int i = 0; i < V; i++) sorted[i] = p[i] /= z;
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    double cum = 0.0, floor_p = 0.0;
    for (int i = 0; i < V && cum < 0.6; i++) cum += floor_p = sorted[i];
    luna_sampler *tp = mk(V, params(1.0f, 0, 0.6f, 1.0f, 62));
    for (int i = 0; i < n_draws(300); i++) {
        int32_t t = draw(tp, l, V, x);
        cr_assert_geq(p[t], floor_p * (1 - 1e-5), "token %d is outside the 0.6 nucleus", t);
    }
    luna_sampler_free(tp);

    /* unfiltered: the three planted tokens keep their softmax share */
    const int N = n_draws(10000);
    luna_sampler *u = mk(V, params(1.0f, 0, 1.0f, 1.0f, 63));
    int *counts = calloc(V, sizeof *counts);
    cr_assert_not_null(counts);
    count_draws(u, l, V, N, counts);
    const int ids[3] = {40000, 123, 65535};
    for (int i = 0; i < 3; i++) {
        double f = (double)counts[ids[i]] / N, w = p[ids[i]];
        double tol = 5.0 * sqrt(w * (1 - w) / N) + 1e-3;
        cr_assert_lt(fabs(f - w), tol, "token %d: %.4f, want %.4f", ids[i], f, w);
    }
    cr_assert_eq(counts[7], 0);
    luna_sampler_free(u);
    free(counts);
    free(l);
    free(x);
    free(p);
    free(sorted);
}
