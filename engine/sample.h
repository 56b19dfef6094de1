/* sample.h - the token sampler: turns a causal model's logits into the next token id.
 *
 * A sampler holds one request's sampling parameters, its random number generator and the set
 * of token ids seen so far (for the repetition penalty). Everything it needs is allocated by
 * luna_sampler_new, so luna_sampler_sample never allocates. The draw is written out below in
 * full so that another implementation can reproduce a token sequence bit for bit: it uses only
 * IEEE-754 float and double arithmetic written in sample.c (no libm exp, no qsort), so the same
 * seed, parameters, observe() history and logits give the same tokens on any machine, in any
 * thread.
 *
 * The algorithm of luna_sampler_sample(s, logits), vocab V:
 *   1. Any NaN or +inf logit: LUNA_EINVAL. A logit of -inf bans its token.
 *   2. Repetition penalty r (skipped when r == 1), in float, for every observed id i:
 *        logits[i] = logits[i] > 0 ? logits[i] / r : logits[i] * r
 *      (-inf stays -inf; a finite result that overflows is clamped to +-FLT_MAX.)
 *   3. lmax = the largest logit; all -inf: LUNA_EINVAL. temperature == 0: return the lowest id
 *      whose logit equals lmax, without advancing the RNG.
 *   4. p[i] = d >= -87 ? sample_exp((float)d) : 0, where, in double,
 *        d = ((double)logits[i] - (double)lmax) * (1.0 / (double)temperature)
 *      and sample_exp is the Cephes expf kn_expf of kernels.h, inlined into sample.c (k = floorf(x * log2(e) + 0.5),
 *      r = x - k ln2 in two parts, a degree-6 polynomial, times 2^k). So the best token gets
 *      p = 1 exactly, and a token e^87 times less likely than the best gets p = 0: tokens with
 *      p = 0 are never returned and do not count below.
 *   5. u = (float)(next() >> 40) * 2^-24: 24 random bits, u in [0, 1). next() is xoshiro256**
 *      (Blackman & Vigna 2018) whose four state words are the first four outputs of splitmix64
 *      started at `seed`. Exactly one output is used by each call with temperature > 0.
 *   6. The rank of a token: larger (penalised) logit first, ties to the lower id; the same
 *      order as probability. "Walk" a list of tokens: total = the double sum of their p in list
 *      order; cum adds their p in the same order; return the first with cum > (double)u * total.
 *      top_k >= V counts as top_k == 0 (off).
 *      a. top_k == 0 and top_p == 1: walk all tokens in id order.
 *      b. top_k > 0: take the top_k best by rank (fewer if fewer have p > 0), best first;
 *         S = the double sum of their p in that order. If top_p < 1, keep only the shortest
 *         prefix whose double sum of p (in order) is >= (double)top_p * S (so top_p applies to
 *         the renormalised top-k set). Walk what is kept, best first.
 *      c. top_k == 0 and top_p < 1: S = the double sum of p over all ids in id order; keep the
 *         shortest prefix of the whole ranking whose sum is >= (double)top_p * S; walk it, best
 *         first.
 *
 * Threads: a sampler is used by one thread at a time; different samplers share nothing. */
#ifndef LUNA_SAMPLE_H
#define LUNA_SAMPLE_H

#include <stdint.h>

#include "luna.h"

typedef struct luna_sampling {
    float temperature;        /* 0: greedy (argmax, ties to the lowest id); else > 0, finite */
    int top_k;                /* 0: off; else keep the k most likely tokens (k >= 1) */
    float top_p;              /* nucleus, 0 < p <= 1; 1: off. Keep the smallest set of most likely
                                 tokens whose probability sum >= p (always at least one) */
    float repetition_penalty; /* > 0, finite; 1: off. CTRL / Hugging Face rule on every id observed
                                 at least once: logit > 0 ? logit / r : logit * r. Applied before
                                 temperature; observing an id twice penalises it once. */
    uint64_t seed;            /* the RNG seed */
} luna_sampling;

/* temperature 1, no top-k, no top-p, no repetition penalty, seed 0 */
#define LUNA_SAMPLING_DEFAULTS {1.0f, 0, 1.0f, 1.0f, 0}

typedef struct luna_sampler luna_sampler;

/* Makes a sampler over vocab >= 1 token ids with a copy of *p. Allocates everything sample()
 * will need: vocab-sized scratch and the seen-set (12 bytes and one bit per token id).
 * Errors: LUNA_EINVAL for vocab < 1, NULL p or out, or any parameter out of range (NaN, inf,
 * negative temperature, top_k < 0, top_p outside (0, 1], penalty <= 0); LUNA_ENOMEM.
 * *out is set only on success; free it with luna_sampler_free. */
int luna_sampler_new(int vocab, const luna_sampling *p, luna_sampler **out);
void luna_sampler_free(luna_sampler *s); /* NULL is a no-op */

/* Marks a token as seen (a prompt token or a generated one) for the repetition penalty. Ids
 * outside [0, vocab) are ignored. O(1). */
void luna_sampler_observe(luna_sampler *s, int32_t token);

/* Picks the next token from logits (vocab floats; overwritten: they are the scratch). -inf
 * bans a token (the caller bans special ids this way). Returns the token id (>= 0), or
 * LUNA_EINVAL when every logit is -inf, any logit is NaN or +inf, or s or logits is NULL; an
 * error does not advance the RNG. It does not observe the token it returns: the caller does.
 * Time O(vocab), plus O(n log n) to rank the n tokens that top_k keeps or that top_p's nucleus
 * reaches. Never allocates. */
int32_t luna_sampler_sample(luna_sampler *s, float *logits);

#endif
