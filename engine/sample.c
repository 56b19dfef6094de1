/* sample.c - the token sampler: repetition penalty, temperature, top-k, top-p and the draw.
 * sample.h states the algorithm step by step; this file follows it in the same order. The
 * exp and the ranking are written out here (no libm exp, no qsort) because their results
 * decide which token is drawn: libm may pick a different exp on another CPU, and glibc's
 * qsort may call malloc and is not stable. */
#include "sample.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* The draw must not depend on the compiler either: a fused multiply-add rounds once where the
 * written expression rounds twice, and would change p in its last bit. GCC in -std=c11 mode
 * does not fuse, but gnu11 and clang do unless told. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* After the pragma: kn_expf (Cephes expf, only + - * and floorf) is inlined here and so is
 * compiled without fused multiply-adds too. */
#include "kernels.h"

/* A token still in the running once its probability is known. */
typedef struct {
    float logit; /* after the repetition penalty: the ranking key */
    float p;     /* unnormalised probability, (0, 1] */
    int32_t id;
} sm_cand;

struct luna_sampler {
    luna_sampling p;
    int vocab;
    uint64_t rng[4]; /* xoshiro256** state */
    uint64_t *seen;  /* (ceil(vocab / 64)) bit i of word i / 64: token i was observed */
    sm_cand *cand;   /* (vocab) scratch: the tokens with p > 0, heap-ordered for top-k/top-p */
};

/* ---- the random number generator ------------------------------------------------------ */

static uint64_t sm_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t sm_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** 1.0 */
static uint64_t sm_next(uint64_t st[4])
{
    const uint64_t result = sm_rotl(st[1] * 5, 7) * 9;
    const uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = sm_rotl(st[3], 45);
    return result;
}

/* 24 random bits as a float in [0, 1): every value is exact. */
static float sm_uniform(luna_sampler *s) { return (float)(sm_next(s->rng) >> 40) * 0x1.0p-24f; }

/* ---- probabilities -------------------------------------------------------------------- */

/* The unnormalised probability of a token (step 4 of sample.h): e^((logit - lmax) / T), 0
 * below e^-87 and for -inf. lmax is the largest logit, so the best token gets exactly 1. The
 * difference is taken in double so that no finite logit and temperature can overflow it. */
static inline __attribute__((always_inline)) float sm_prob(float logit, float lmax, double inv_t)
{
    double d = ((double)logit - (double)lmax) * inv_t;
    float e = kn_expf(d >= -87.0 ? (float)d : -87.0f); /* computed either way: no branch */
    return d >= -87.0 ? e : 0.0f;
}

/* x (n) = sm_prob(x). This and the scans around it are the sampler's whole cost at a large
 * vocabulary, so the loop is kept branch-free for the vectoriser. */
static void sm_probs(float *x, size_t n, float lmax, double inv_t)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) x[i] = sm_prob(x[i], lmax, inv_t);
}

static void sm_penalise(const luna_sampler *s, float *logits)
{
    const float r = s->p.repetition_penalty;
    const size_t words = ((size_t)s->vocab + 63) / 64;
    for (size_t w = 0; w < words; w++) {
        for (uint64_t bits = s->seen[w]; bits; bits &= bits - 1) {
            size_t i = w * 64 + (size_t)__builtin_ctzll(bits);
            float x = logits[i];
            if (x == -INFINITY) continue; /* banned stays banned */
            float y = x > 0.0f ? x / r : x * r;
            /* a tiny or huge r must not turn a finite logit into +inf (not a logit) or -inf
             * (a ban the caller never asked for) */
            if (isinf(y)) y = copysignf(FLT_MAX, y);
            logits[i] = y;
        }
    }
}

/* ---- ranking: binary heaps ------------------------------------------------------------ */

/* The total order of the ranking: larger logit first, then the lower id. Ids are unique, so
 * no two tokens compare equal and the ranking never depends on the algorithm that sorts. */
static int sm_before(const sm_cand *a, const sm_cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

/* Restores the heap c[0..h) below i. worst_on_top = 0: a max-heap (the best token at c[0]);
 * 1: a min-heap (the worst at c[0]), which keeps the best k of a stream. */
static void sm_sift(sm_cand *c, size_t h, size_t i, int worst_on_top)
{
    sm_cand x = c[i];
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= h) break;
        if (k + 1 < h && (worst_on_top ? sm_before(&c[k], &c[k + 1]) : sm_before(&c[k + 1], &c[k])))
            k++;
        if (worst_on_top ? !sm_before(&x, &c[k]) : !sm_before(&c[k], &x)) break;
        c[i] = c[k];
        i = k;
    }
    c[i] = x;
}

/* Moves the top of the heap c[0..h) to c[h - 1]; the heap becomes c[0..h - 1). */
static void sm_pop(sm_cand *c, size_t h, int worst_on_top)
{
    sm_cand top = c[0];
    c[0] = c[h - 1];
    c[h - 1] = top;
    if (h > 2) sm_sift(c, h - 1, 0, worst_on_top);
}

/* The best k (k < vocab) unbanned tokens by rank, into c[0..n) best first; returns n (fewer
 * than k when fewer are unbanned). One pass over the logits with a min-heap of the k best so
 * far: a token enters only if it beats the worst of them, so the pass costs about one compare
 * per token. p is filled in later. */
static size_t sm_top_k(const float *logits, size_t vocab, size_t k, sm_cand *c)
{
    size_t h = 0;
    for (size_t i = 0; i < vocab; i++) {
        float l = logits[i];
        if (l == -INFINITY) continue;
        if (h < k) { /* push, then sift up */
            size_t j = h++;
            sm_cand x = {l, 0.0f, (int32_t)i};
            while (j > 0 && sm_before(&c[(j - 1) / 2], &x)) {
                c[j] = c[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            c[j] = x;
        } else if (l > c[0].logit) { /* ids rise, so an equal logit never wins the tie */
            c[0] = (sm_cand){l, 0.0f, (int32_t)i};
            sm_sift(c, h, 0, 1);
        }
    }
    for (size_t n = h; n > 1; n--) sm_pop(c, n, 1); /* the worst go last: c is best first */
    return h;
}

/* The walk of steps 6b/6c over the ranked c[0..n) (n >= 1) with weights c[j].p. */
static int32_t sm_walk_ranked(luna_sampler *s, const sm_cand *c, size_t n)
{
    double sum = 0.0;
    for (size_t j = 0; j < n; j++) sum += c[j].p;
    const double target = (double)sm_uniform(s) * sum;
    double cum = 0.0;
    for (size_t j = 0; j < n; j++) {
        cum += c[j].p;
        if (cum > target) return c[j].id;
    }
    return c[n - 1].id; /* unreachable: cum ends at sum > target */
}

/* Step 6b: top_k > 0 (and top_k < vocab). */
static int32_t sm_draw_top_k(luna_sampler *s, const float *logits, float lmax, double inv_t)
{
    sm_cand *c = s->cand;
    size_t n = sm_top_k(logits, (size_t)s->vocab, (size_t)s->p.top_k, c);
    size_t k = 0; /* p = 0 only for a suffix of the ranking: drop it */
    double sum = 0.0;
    for (; k < n; k++) {
        c[k].p = sm_prob(c[k].logit, lmax, inv_t);
        if (c[k].p == 0.0f) break;
        sum += c[k].p;
    }
    size_t kept = k;
    if (s->p.top_p < 1.0f) {
        double cum = 0.0, target = (double)s->p.top_p * sum;
        for (kept = 0; kept < k;) {
            cum += c[kept++].p;
            if (cum >= target) break;
        }
    }
    return sm_walk_ranked(s, c, kept);
}

/* Step 6c: top_k == 0 and top_p < 1. Ranking every token costs O(V log V), so the tokens are
 * first binned by d (bins half a nat wide: bin = (int)(-2d), 0..174) and only the bins that
 * reach the nucleus are ranked. A bin holds a range of logits, so the tokens in bins 0..B are
 * exactly the tokens above some logit: a prefix of the ranking. When that prefix's mass
 * reaches top_p * S with room to spare for rounding, the nucleus lies inside it and ranking
 * just the prefix gives the same tokens and the same sums as ranking everything would. The
 * room: two double sums of the same n positive terms in different orders differ by less than
 * 2n * 2^-53 of their value, under 1e-6 for any n below 2^31. */
enum { SM_BINS = 175 };

static int sm_bin(float logit, float lmax, double inv_t)
{
    double b = -2.0 * (((double)logit - (double)lmax) * inv_t);
    return b < SM_BINS - 1 ? (int)b : SM_BINS - 1;
}

static int32_t sm_draw_top_p(luna_sampler *s, const float *logits, float lmax, double inv_t)
{
    sm_cand *c = s->cand;
    const size_t vocab = (size_t)s->vocab;
    double mass[SM_BINS] = {0}, total = 0.0;
    size_t n = 0;
    for (size_t i = 0; i < vocab; i++) {
        float p = sm_prob(logits[i], lmax, inv_t);
        if (p > 0.0f) {
            c[n++] = (sm_cand){logits[i], p, (int32_t)i};
            total += p;
            mass[sm_bin(logits[i], lmax, inv_t)] += p;
        }
    }
    const double target = (double)s->p.top_p * total;

    int last_bin = SM_BINS - 1;
    double reach = 0.0;
    for (int b = 0; b < SM_BINS; b++) {
        reach += mass[b];
        if (reach >= target * (1.0 + 1e-6)) {
            last_bin = b;
            break;
        }
    }
    if (last_bin < SM_BINS - 1) { /* keep the prefix of the ranking: bins 0..last_bin */
        size_t m = 0;
        for (size_t j = 0; j < n; j++)
            if (sm_bin(c[j].logit, lmax, inv_t) <= last_bin) c[m++] = c[j];
        n = m;
    }

    for (size_t i = n / 2; i-- > 0;) sm_sift(c, n, i, 0);
    double cum = 0.0;
    size_t kept = 0;
    while (kept < n) { /* the j-th best lands at c[n - 1 - j] */
        sm_pop(c, n - kept, 0);
        cum += c[n - 1 - kept++].p;
        if (cum >= target) break;
    }
    for (size_t j = 0; j < kept / 2; j++) { /* reverse: c[n - kept + j] is the j-th best */
        sm_cand t = c[n - kept + j];
        c[n - kept + j] = c[n - 1 - j];
        c[n - 1 - j] = t;
    }
    return sm_walk_ranked(s, c + n - kept, kept);
}

/* ---- the public API ------------------------------------------------------------------- */

int luna_sampler_new(int vocab, const luna_sampling *p, luna_sampler **out)
{
    if (vocab < 1 || !p || !out) return LUNA_EINVAL;
    if (!isfinite(p->temperature) || p->temperature < 0.0f) return LUNA_EINVAL;
    if (p->top_k < 0) return LUNA_EINVAL;
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) return LUNA_EINVAL; /* also NaN */
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f)) return LUNA_EINVAL;

    luna_sampler *s = calloc(1, sizeof *s);
    if (!s) goto fail;
    s->seen = calloc(((size_t)vocab + 63) / 64, sizeof *s->seen);
    if (!s->seen) goto fail_sampler;
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    if (!s->cand) goto fail_seen;

    s->p = *p;
    s->vocab = vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = sm_splitmix64(&x);
    *out = s;
    return 0;

fail_seen:
    free(s->seen);
fail_sampler:
    free(s);
fail:
    return LUNA_ENOMEM;
}

void luna_sampler_free(luna_sampler *s)
{
    if (!s) return;
    free(s->cand);
    free(s->seen);
    free(s);
}

void luna_sampler_observe(luna_sampler *s, int32_t token)
{
    if (!s || token < 0 || token >= s->vocab) return;
    s->seen[(uint32_t)token >> 6] |= 1ull << ((uint32_t)token & 63);
}

int32_t luna_sampler_sample(luna_sampler *s, float *logits)
{
    if (!s || !logits) return LUNA_EINVAL;
    const size_t vocab = (size_t)s->vocab;

    int bad = 0; /* a flag rather than an early return, so that the scan vectorises */
    for (size_t i = 0; i < vocab; i++) bad |= isnan(logits[i]) || logits[i] == INFINITY;
    if (bad) return LUNA_EINVAL;
    if (s->p.repetition_penalty != 1.0f) sm_penalise(s, logits);

    float lmax = -INFINITY; /* max is exact, so the reduction order does not matter */
#pragma omp simd reduction(max : lmax)
    for (size_t i = 0; i < vocab; i++) lmax = logits[i] > lmax ? logits[i] : lmax;
    if (lmax == -INFINITY) return LUNA_EINVAL; /* every token banned */
    if (s->p.temperature == 0.0f) {
        size_t best = 0; /* the lowest id of the largest logit */
        while (logits[best] != lmax) best++;
        return (int32_t)best;
    }

    const double inv_t = 1.0 / (double)s->p.temperature;
    if (s->p.top_k > 0 && (size_t)s->p.top_k < vocab) return sm_draw_top_k(s, logits, lmax, inv_t);
    if (s->p.top_p < 1.0f) return sm_draw_top_p(s, logits, lmax, inv_t);

    /* Step 6a: the probabilities replace the logits, and the walk goes in id order. */
    sm_probs(logits, vocab, lmax, inv_t);
    double total = 0.0;
    for (size_t i = 0; i < vocab; i++) total += logits[i];
    const double target = (double)sm_uniform(s) * total;
    double cum = 0.0;
    size_t last = 0;
    for (size_t i = 0; i < vocab; i++) {
        if (logits[i] > 0.0f) {
            cum += logits[i];
            last = i;
            if (cum > target) return (int32_t)i;
        }
    }
    return (int32_t)last; /* unreachable: cum ends at total > target */
}
