/* logprob.c - log-probabilities of tokens under the model's distribution, and the score of a
 * continuation from a state: what TGI's details and top_n_tokens, OpenAI's logprobs, echo and
 * top_logprobs, and a /score endpoint report.
 *
 * Everything is log_softmax(logits) in double, with the usual shift by the largest logit so
 * that no exp overflows: lp_i = (l_i - m) - log(sum_j exp(l_j - m)). luna.h says why it is the
 * model's distribution and not the sampler's. */
#include <math.h>
#include <stdlib.h>

#include "ctx.h"
#include "luna.h"

/* ---- log-softmax ------------------------------------------------------------------------- */

/* The largest logit *m and log(sum exp(l - m)) *lse; EINVAL for NaN or +inf, or all -inf. */
static int log_norm(const float *logits, int V, double *m, double *lse)
{
    if (!logits || V < 1) return LUNA_EINVAL;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        float x = logits[i];
        if (isnan(x) || x == INFINITY) return LUNA_EINVAL;
        if (x > mx) mx = x;
    }
    if (mx == -INFINITY) return LUNA_EINVAL; /* every token banned: no distribution */
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - (double)mx); /* exp(-inf) = 0 */
    *m = mx;
    *lse = log(sum); /* sum >= 1: the largest term is exp(0) */
    return 0;
}

int luna_logprobs(const float *logits, int V, double *out)
{
    double m, lse;
    int rc = log_norm(logits, V, &m, &lse);
    if (rc) return rc;
    if (!out) return LUNA_EINVAL;
    for (int i = 0; i < V; i++) out[i] = ((double)logits[i] - m) - lse;
    return 0;
}

/* ---- the n best: a min-heap of the best so far ---------------------------------------------- */

/* The ranking: the larger logit first, then the lower id (ids are unique: a total order). */
static int better(float la, int32_t a, float lb, int32_t b) { return la > lb || (la == lb && a < b); }

/* Restores the min-heap (worst on top) ids[0..h) below i; logits give the keys. */
static void sift_down(int32_t *ids, size_t h, size_t i, const float *logits)
{
    int32_t x = ids[i];
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= h) break;
        if (k + 1 < h && better(logits[ids[k]], ids[k], logits[ids[k + 1]], ids[k + 1])) k++;
        if (!better(logits[x], x, logits[ids[k]], ids[k])) break;
        ids[i] = ids[k];
        i = k;
    }
    ids[i] = x;
}

int luna_logprob_top(const float *logits, int V, int32_t token, double *token_lp, int n, int32_t *top_ids,
                     double *top_lps)
{
    double m, lse;
    int rc = log_norm(logits, V, &m, &lse);
    if (rc) return rc;
    if (token >= V || n < 0 || (n > 0 && (!top_ids || !top_lps))) return LUNA_EINVAL;
    if (token >= 0 && token_lp) *token_lp = ((double)logits[token] - m) - lse;
    if (n > V) n = V;
    /* one pass: a token enters the heap of the n best only if it beats the worst of them */
    size_t h = 0, k = (size_t)n;
    for (int32_t i = 0; i < V && k > 0; i++) {
        if (logits[i] == -INFINITY) continue;
        if (h < k) {
            size_t j = h++;
            while (j > 0 && better(logits[top_ids[(j - 1) / 2]], top_ids[(j - 1) / 2], logits[i], i)) {
                top_ids[j] = top_ids[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            top_ids[j] = i;
        } else if (better(logits[i], i, logits[top_ids[0]], top_ids[0])) {
            top_ids[0] = i;
            sift_down(top_ids, h, 0, logits);
        }
    }
    /* pop the worst to the back: best first */
    for (size_t e = h; e > 1; e--) {
        int32_t worst = top_ids[0];
        top_ids[0] = top_ids[e - 1];
        top_ids[e - 1] = worst;
        sift_down(top_ids, e - 1, 0, logits);
    }
    for (size_t j = 0; j < h; j++) top_lps[j] = ((double)logits[top_ids[j]] - m) - lse;
    return (int)h;
}

/* ---- scoring a continuation ---------------------------------------------------------------- */

size_t luna_score_workspace_bytes(const luna_ctx *c, size_t n)
{
    if (!c) return 0;
    size_t rows = n < (size_t)c->chunk ? n : (size_t)c->chunk;
    return rows * (size_t)c->m->cfg.vocab_size * sizeof(float);
}

/* token's log-probability into *lp, and whether it is the most likely one (ties: lower id) */
static int score_one(const float *logits, int V, int32_t token, double *lp, int *top1)
{
    int32_t best = -1;
    double best_lp;
    int rc = luna_logprob_top(logits, V, token, lp, 1, &best, &best_lp);
    *top1 = rc == 1 && best == token;
    return rc < 0 ? rc : 0;
}

int luna_score(luna_ctx *c, luna_gen_state *s, const float *logits, const int32_t *tokens, size_t n,
               double *per_token, double *total, float *next_logits, int *greedy)
{
    if (!c || !s || !logits || !tokens || n == 0) return LUNA_EINVAL;
    const luna_config *cfg = &c->m->cfg;
    if (cfg->task != LUNA_TASK_CAUSAL_LM) return LUNA_ETASK;
    int V = cfg->vocab_size;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V) return LUNA_EINVAL;
    uint64_t t = luna_gen_state_tokens(s);
    /* checked here, before the first slice: luna_prefill would refuse only the slice that passes */
    if (cfg->max_positions > 0 && (t > (uint64_t)cfg->max_positions || n > (uint64_t)cfg->max_positions - t))
        return LUNA_ETOOLONG;
    double lp, sum = 0.0;
    int top1, all_top1;
    int rc = score_one(logits, V, tokens[0], &lp, &all_top1);
    if (rc < 0) return rc;
    float *rows = malloc(luna_score_workspace_bytes(c, n)); /* a size from the request: may fail */
    if (!rows) return LUNA_ENOMEM;
    if (per_token) per_token[0] = lp;
    sum += lp;
    size_t ch = (size_t)c->chunk, done = 0;
    while (done < n) {
        /* the slice ends on a multiple of the chunk length in absolute positions, or at n */
        uint64_t at = t + done;
        size_t take = (size_t)(ch - at % ch);
        if (take > n - done) take = n - done;
        rc = luna_prefill(c, s, tokens + done, take, rows, 1);
        if (rc) break;
        /* row r is the distribution after token done + r, so it scores token done + r + 1 */
        for (size_t r = 0; r < take && done + r + 1 < n; r++) {
            rc = score_one(rows + r * (size_t)V, V, tokens[done + r + 1], &lp, &top1);
            if (rc < 0) break;
            all_top1 &= top1;
            if (per_token) per_token[done + r + 1] = lp;
            sum += lp;
        }
        if (rc < 0) break;
        done += take;
        if (done == n && next_logits)
            for (int i = 0; i < V; i++) next_logits[i] = rows[(take - 1) * (size_t)V + (size_t)i];
    }
    free(rows);
    if (rc < 0) return rc;
    if (total) *total = sum;
    if (greedy) *greedy = all_top1;
    return 0;
}
