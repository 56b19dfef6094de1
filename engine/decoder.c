/* decoder.c - the causal Luna decoder (task causal-lm): chunked prefill and single steps over
 * a state of fixed size, and the softmax baseline decoder with a KV cache that the benchmarks
 * compare it with.
 *
 * The data flows in this order, and so does this file:
 *   states -> workspace layout -> embedding -> causal Luna attention -> KV-cache attention
 *   -> the layer loop (prefill; a step is a prefill of one token).
 *
 * A chunk of c tokens goes through every layer before the next chunk starts: position t of
 * layer L depends only on positions <= t of layer L-1, so nothing of the sequence is kept
 * but the state. For one head, with S_K = sum k_i^T w_i (k x l) and S_V = sum w_i^T v_i
 * (l x k) over the tokens before the chunk (the state), and rows i of the chunk at positions
 * t_i, LUNA.md's recurrence unrolls into matrix products:
 *   W = phi(C Pq^T)                                   (c, l)
 *   a = (Q S_K + tril(Q K^T) W) / t                   (c, l), then alpha = softmax over l
 *   o = (alpha S_V + tril(alpha W^T) V) / t           (c, k)
 *   S_K += K^T W,  S_V += W^T V
 * where tril keeps j <= i (token i sees itself). The cost is O(c (k l + c k + c l)) per head
 * per chunk, linear in the sequence; the state never grows. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "kernels.h"

/* ---- states ---------------------------------------------------------------------------------- */

struct luna_gen_state {
    const luna_model *m;
    luna_attn kind;     /* LUNA_ATTN_LUNA: running sums; LUNA_ATTN_SOFTMAX: a KV cache */
    uint64_t t;         /* tokens consumed */
    double *sum;        /* Luna: per layer S_K (H, k, l), then S_V (H, l, k) when untied */
    size_t sum_len;     /* doubles in sum */
    float **kc, **vc;   /* KV: per layer (cap, d) keys and values; vc[i] NULL when tied */
    size_t cap;         /* KV: rows of every cache */
    int32_t recent[];   /* history(): the tokens that the embeddings read, the last consumed
                           first (valid: min(t, history)) */
};

static size_t sums_per_layer(const luna_config *cfg)
{
    return (cfg->tie_kv ? 1u : 2u) * (size_t)cfg->d * (size_t)cfg->l;
}

/* Tokens before the next one that its embedding reads: max(ngram_embed, hash_ngrams) - 1. */
static size_t history(const luna_config *cfg)
{
    return (size_t)(cfg->ngram_embed > cfg->hash_ngrams ? cfg->ngram_embed : cfg->hash_ngrams) - 1;
}

static size_t recent_bytes(const luna_config *cfg)
{
    return history(cfg) * sizeof(int32_t);
}

size_t luna_gen_state_bytes(const luna_model *m)
{
    if (!m || m->cfg.task != LUNA_TASK_CAUSAL_LM) return 0;
    return sizeof(luna_gen_state) + recent_bytes(&m->cfg) +
           (size_t)m->cfg.layers * sums_per_layer(&m->cfg) * sizeof(double);
}

/* A fresh state of either kind: the sums of a Luna state, or the empty per-layer cache
 * pointers of a KV state (its rows come with the first prefill). */
static int state_new(const luna_model *m, luna_attn kind, luna_gen_state **out)
{
    if (!m || !out) return LUNA_EINVAL;
    if (m->cfg.task != LUNA_TASK_CAUSAL_LM) return LUNA_ETASK;
    luna_gen_state *s = calloc(1, sizeof *s + recent_bytes(&m->cfg));
    if (!s) return LUNA_ENOMEM;
    s->m = m;
    s->kind = kind;
    if (kind == LUNA_ATTN_LUNA) {
        s->sum_len = (size_t)m->cfg.layers * sums_per_layer(&m->cfg);
        s->sum = calloc(s->sum_len, sizeof(double));
    } else {
        s->kc = calloc((size_t)m->cfg.layers, sizeof *s->kc);
        s->vc = calloc((size_t)m->cfg.layers, sizeof *s->vc);
    }
    if (kind == LUNA_ATTN_LUNA ? !s->sum : !s->kc || !s->vc) {
        luna_gen_state_free(s);
        return LUNA_ENOMEM;
    }
    *out = s;
    return 0;
}

int luna_gen_state_new(const luna_model *m, luna_gen_state **out)
{
    return state_new(m, LUNA_ATTN_LUNA, out);
}

int luna_kv_state_new(const luna_model *m, luna_gen_state **out)
{
    return state_new(m, LUNA_ATTN_SOFTMAX, out);
}

void luna_gen_state_free(luna_gen_state *s)
{
    if (!s) return;
    free(s->sum);
    for (int i = 0; s->kc && s->vc && i < s->m->cfg.layers; i++) {
        free(s->kc[i]);
        free(s->vc[i]);
    }
    free(s->kc);
    free(s->vc);
    free(s);
}

/* Grows every KV cache to hold `need` rows: 1.5x steps, so n steps cost O(n) copying. On
 * failure the state keeps its contents and its old capacity. */
static int kv_reserve(luna_gen_state *s, uint64_t need)
{
    if (need <= s->cap) return 0;
    const luna_config *cfg = &s->m->cfg;
    size_t d = (size_t)cfg->d;
    uint64_t cap = s->cap + s->cap / 2;
    if (cap < need) cap = need;
    cap = (cap + 255) & ~(uint64_t)255;
    if (cap > SIZE_MAX / sizeof(float) / d) return LUNA_ENOMEM;
    for (int i = 0; i < cfg->layers; i++) {
        float *k = realloc(s->kc[i], (size_t)cap * d * sizeof(float));
        if (!k) return LUNA_ENOMEM;
        s->kc[i] = k;
        if (!cfg->tie_kv) {
            float *v = realloc(s->vc[i], (size_t)cap * d * sizeof(float));
            if (!v) return LUNA_ENOMEM;
            s->vc[i] = v;
        }
    }
    s->cap = (size_t)cap;
    return 0;
}

int luna_gen_state_copy(luna_gen_state *dst, const luna_gen_state *src)
{
    if (!dst || !src || dst->m != src->m || dst->kind != src->kind) return LUNA_EINVAL;
    if (dst == src) return 0;
    if (src->kind == LUNA_ATTN_LUNA) {
        memcpy(dst->sum, src->sum, src->sum_len * sizeof(double));
    } else {
        int rc = kv_reserve(dst, src->t);
        if (rc) return rc;
        size_t rows = (size_t)src->t * (size_t)src->m->cfg.d;
        for (int i = 0; i < src->m->cfg.layers; i++) {
            if (rows) memcpy(dst->kc[i], src->kc[i], rows * sizeof(float));
            if (src->vc[i] && rows) memcpy(dst->vc[i], src->vc[i], rows * sizeof(float));
        }
    }
    memcpy(dst->recent, src->recent, recent_bytes(&src->m->cfg));
    dst->t = src->t;
    return 0;
}

void luna_gen_state_reset(luna_gen_state *s)
{
    if (!s) return;
    if (s->sum) memset(s->sum, 0, s->sum_len * sizeof(double));
    memset(s->recent, 0, recent_bytes(&s->m->cfg));
    s->t = 0;
}

uint64_t luna_gen_state_tokens(const luna_gen_state *s) { return s ? s->t : 0; }

size_t luna_gen_state_size(const luna_gen_state *s)
{
    if (!s) return 0;
    const luna_config *cfg = &s->m->cfg;
    if (s->kind == LUNA_ATTN_LUNA) return sizeof *s + recent_bytes(cfg) + s->sum_len * sizeof(double);
    return sizeof *s + recent_bytes(cfg) + (size_t)cfg->layers * (cfg->tie_kv ? 1u : 2u) * s->cap * (size_t)cfg->d * sizeof(float);
}

/* ---- workspace layout ---------------------------------------------------------------------- */

void luna__dec_layout(const luna_config *cfg, int chunk, luna_attn attn, ws_layout *L, size_t *off)
{
    size_t d = (size_t)cfg->d, l = (size_t)cfg->l, c = (size_t)chunk, H = (size_t)cfg->H;
    size_t o = *off;
#define TAKE(field, count) (L->field = o, o += (count))
    TAKE(dX, c * d);
    TAKE(dT, c * d);
    TAKE(dQ, c * d);
    TAKE(dK, c * d);
    TAKE(dV, c * d);
    TAKE(dC, c * d);
    TAKE(dO, c * d);
    TAKE(dY, c * d);
    if (attn == LUNA_ATTN_LUNA) {
        TAKE(dW, c * l);
        TAKE(dA, c * l);
        TAKE(dG, c * c);
        TAKE(dSK, d * l);
        TAKE(dSV, d * l);
        TAKE(dU, d * l);
    } else {
        TAKE(S, c * c);
        TAKE(rmax, c * H);
        TAKE(rsum, c * H);
    }
    TAKE(dlogits, (size_t)cfg->vocab_size);
#undef TAKE
    *off = o;
}

/* ---- embedding ------------------------------------------------------------------------------- */

/* x (rows, d) = (embed_tokens(tok) + the embed_ngrams rows of the ngram_embed - 1 tokens before
 * each + the hashed rows of the n-grams of 2 .. hash_ngrams tokens ending at each, from the
 * chunk or the state's recent tokens) * embed_scale + positions s->t ..
 * (+ emb_layer_norm). Then the chunk's last tokens become the state's recent ones. */
static void dec_embed(const luna_ctx *c, luna_gen_state *s, const int32_t *tok, size_t rows, float *x)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, first = (size_t)cfg->pad_id + 1 + (size_t)s->t;
    size_t K = (size_t)cfg->ngram_embed, V = (size_t)cfg->vocab_size;
    for (size_t r = 0; r < rows; r++) {
        const float *e = m->embed_tokens + (size_t)tok[r] * d;
        float *xr = x + r * d;
        memcpy(xr, e, d * sizeof(float));
        for (size_t b = 1; b < K && b <= s->t + r; b++) { /* the token b back: none before the first */
            int32_t prev = b <= r ? tok[r - b] : s->recent[b - r - 1];
            kn_add(xr, m->embed_ngrams + ((b - 1) * V + (size_t)prev) * d, d);
        }
        if (cfg->hash_ngrams > 1) {
            int32_t win[LUNA_MAX_NGRAM];
            size_t M = (size_t)cfg->hash_ngrams, have = M < s->t + r + 1 ? M : (size_t)s->t + r + 1;
            for (size_t b = 0; b < have; b++) win[b] = b <= r ? tok[r - b] : s->recent[b - r - 1];
            luna__add_hash_ngrams(m, win, have, xr);
        }
        for (size_t j = 0; j < d; j++) xr[j] *= cfg->embed_scale;
        if (cfg->positions == LUNA_POS_LEARNED) kn_add(xr, m->embed_positions + (first + r) * d, d);
    }
    if (cfg->positions == LUNA_POS_SINUSOIDAL) luna__add_sinusoid(c, x, first, rows);
    if (cfg->layernorm_embedding) kn_layernorm(&m->emb_layer_norm, x, x, rows, d);
    /* recent[i] is the token i + 1 back from the next one: the chunk's, then the older ones */
    if (history(cfg) > 0) {
        size_t keep = history(cfg), shift = rows < keep ? rows : keep;
        memmove(s->recent + shift, s->recent, (keep - shift) * sizeof(int32_t));
        for (size_t i = 0; i < shift; i++) s->recent[i] = tok[rows - 1 - i];
    }
}

/* Zeroes the strict upper triangle of the (rows, rows) matrix G: row i keeps columns j <= i. */
static void tril(float *G, size_t rows)
{
    for (size_t i = 0; i + 1 < rows; i++) memset(G + i * rows + i + 1, 0, (rows - i - 1) * sizeof(float));
}

/* ---- causal Luna attention ------------------------------------------------------------------ */

/* The projections of layer li for rows of xin (rows, d): Q (scaled), K, V (K when tied) and
 * the rows that feed phi (C: pc_proj's, or xin itself), in the context's buffers; `fixed` uses
 * kn_linear_fixed (decode steps). */
static void causal_proj(luna_ctx *c, int li, const float *xin, size_t rows, int fixed, const float **C)
{
    const luna_config *cfg = &c->m->cfg;
    const luna_layer *ly = &c->m->layers[li];
    size_t d = (size_t)cfg->d, k = d / (size_t)cfg->H;
    int tied = cfg->tie_kv;
    void (*linear)(const luna_linear *, const float *, size_t, size_t, float *, size_t, float) =
        fixed ? kn_linear_fixed : kn_linear;
    linear(&ly->q_proj, xin, rows, d, W(c, dQ), d, 1.0f / sqrtf((float)k));
    linear(tied ? &ly->c_proj : &ly->k_proj, xin, rows, d, W(c, dK), d, 1.0f);
    if (!tied) linear(&ly->v_proj, xin, rows, d, W(c, dV), d, 1.0f);
    *C = xin;
    if (cfg->causal_pc_proj) {
        linear(&ly->pc_proj, xin, rows, d, W(c, dC), d, 1.0f);
        *C = W(c, dC);
    }
}

/* The attention of layer li for `rows` rows whose projections are Q, K, V, C (row stride d) at
 * positions t0 + 1 .. t0 + rows, into O (stride d); the state's sums advance over them. */
static void causal_core(luna_ctx *c, int li, luna_gen_state *s, const float *Q, const float *K, const float *V,
                        const float *C, size_t rows, uint64_t t0, float *O)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, l = (size_t)cfg->l;
    int tied = cfg->tie_kv;
    const float *Pq = m->pq + (size_t)li * l * d;
    double *SK64 = s->sum + (size_t)li * sums_per_layer(cfg), *SV64 = SK64 + d * l;
    float *SK = W(c, dSK), *SV = W(c, dSV), *Wt = W(c, dW), *A = W(c, dA), *G = W(c, dG), *U = W(c, dU);
    for (size_t i = 0; i < d * l; i++) SK[i] = (float)SK64[i];
    if (!tied)
        for (size_t i = 0; i < d * l; i++) SV[i] = (float)SV64[i];
    for (size_t h = 0; h < H; h++) {
        const float *Ch = C + h * k, *Qh = Q + h * k, *Kh = K + h * k, *Vh = V + h * k;
        float *SKh = SK + h * k * l, *SVh = SV + h * l * k, *Oh = O + h * k;
        /* W = phi(C Pq^T) */
        kn_gemm_nt(rows, l, k, 1.0f, Ch, d, Pq + h * k, d, 0.0f, Wt, l);
        kn_phi(cfg->causal_phi, Wt, rows * l);
        /* a = (Q S_K + tril(Q K^T) W) / t, alpha = softmax(a) */
        kn_gemm_nn(rows, l, k, 1.0f, Qh, d, SKh, l, 0.0f, A, l);
        kn_gemm_nt(rows, rows, k, 1.0f, Qh, d, Kh, d, 0.0f, G, rows);
        tril(G, rows);
        kn_gemm_nn(rows, l, rows, 1.0f, G, rows, Wt, l, 1.0f, A, l);
        for (size_t i = 0; i < rows; i++) {
            float inv = (float)(1.0 / (double)(t0 + 1 + i));
            for (size_t j = 0; j < l; j++) A[i * l + j] *= inv;
        }
        kn_softmax_rows(A, rows, l, l);
        /* o = (alpha S_V + tril(alpha W^T) V) / t; tied, S_V is S_K^T */
        if (tied) kn_gemm_nt(rows, k, l, 1.0f, A, l, SKh, l, 0.0f, Oh, d);
        else kn_gemm_nn(rows, k, l, 1.0f, A, l, SVh, k, 0.0f, Oh, d);
        kn_gemm_nt(rows, rows, l, 1.0f, A, l, Wt, l, 0.0f, G, rows);
        tril(G, rows);
        kn_gemm_nn(rows, k, rows, 1.0f, G, rows, Vh, d, 1.0f, Oh, d);
        for (size_t i = 0; i < rows; i++) {
            float inv = (float)(1.0 / (double)(t0 + 1 + i));
            for (size_t j = 0; j < k; j++) Oh[i * d + j] *= inv;
        }
        /* the state: S_K += K^T W, S_V += W^T V, summed in double */
        kn_gemm_tn(k, l, rows, 1.0f, Kh, d, Wt, l, 0.0f, U, l);
        double *sk = SK64 + h * k * l;
        for (size_t i = 0; i < k * l; i++) sk[i] += U[i];
        if (!tied) {
            kn_gemm_tn(l, k, rows, 1.0f, Wt, l, Vh, d, 0.0f, U, k);
            double *sv = SV64 + h * l * k;
            for (size_t i = 0; i < l * k; i++) sv[i] += U[i];
        }
    }
}

/* causal_core for one row, written out as loops in one fixed order: a decode step is O(d l)
 * of small products per layer, where a BLAS call's overhead would cost more than the work.
 * The same arithmetic as causal_core's up to the order of the sums. */
static void causal_row(luna_ctx *c, int li, luna_gen_state *s, const float *q, const float *kk, const float *v,
                       const float *cc, uint64_t t0, float *o)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, l = (size_t)cfg->l;
    int tied = cfg->tie_kv;
    const float *Pq = m->pq + (size_t)li * l * d;
    double *SK64 = s->sum + (size_t)li * sums_per_layer(cfg), *SV64 = SK64 + d * l;
    float *w = W(c, dW), *a = W(c, dA);
    float inv_t = (float)(1.0 / (double)(t0 + 1));
    for (size_t h = 0; h < H; h++) {
        const float *qh = q + h * k, *kh = kk + h * k, *vh = v + h * k, *ch = cc + h * k;
        double *sk = SK64 + h * k * l, *sv = SV64 + h * l * k;
        float *oh = o + h * k;
        /* w = phi(c Pq^T) */
        for (size_t j = 0; j < l; j++) {
            const float *p = Pq + j * d + h * k;
            float acc = 0.0f;
            for (size_t i = 0; i < k; i++) acc += ch[i] * p[i];
            w[j] = acc;
        }
        kn_phi(cfg->causal_phi, w, l);
        /* a = (q S_K + (q . k) w) / t, alpha = softmax(a) */
        float qk = 0.0f;
        for (size_t i = 0; i < k; i++) qk += qh[i] * kh[i];
        for (size_t j = 0; j < l; j++) a[j] = 0.0f;
        for (size_t i = 0; i < k; i++) {
            const double *row = sk + i * l;
            float qi = qh[i];
            for (size_t j = 0; j < l; j++) a[j] += qi * (float)row[j];
        }
        for (size_t j = 0; j < l; j++) a[j] = (a[j] + qk * w[j]) * inv_t;
        kn_softmax_rows(a, 1, l, l);
        /* o = (alpha S_V + (alpha . w) v) / t; tied, S_V is S_K^T */
        float aw = 0.0f;
        for (size_t j = 0; j < l; j++) aw += a[j] * w[j];
        if (tied) {
            for (size_t i = 0; i < k; i++) {
                const double *row = sk + i * l;
                float acc = 0.0f;
                for (size_t j = 0; j < l; j++) acc += a[j] * (float)row[j];
                oh[i] = (acc + aw * vh[i]) * inv_t;
            }
        } else {
            for (size_t i = 0; i < k; i++) oh[i] = 0.0f;
            for (size_t j = 0; j < l; j++) {
                const double *row = sv + j * k;
                float aj = a[j];
                for (size_t i = 0; i < k; i++) oh[i] += aj * (float)row[i];
            }
            for (size_t i = 0; i < k; i++) oh[i] = (oh[i] + aw * vh[i]) * inv_t;
        }
        /* the state: S_K += k^T w, S_V += w^T v, products in float, summed in double */
        for (size_t i = 0; i < k; i++) {
            double *row = sk + i * l;
            float ki = kh[i];
            for (size_t j = 0; j < l; j++) row[j] += (double)(ki * w[j]);
        }
        if (!tied)
            for (size_t j = 0; j < l; j++) {
                double *row = sv + j * k;
                float wj = w[j];
                for (size_t i = 0; i < k; i++) row[i] += (double)(wj * vh[i]);
            }
    }
}

/* O (rows, d) = the attention output of layer li for the chunk rows xin (rows, d) at positions
 * t0 + 1 .. t0 + rows (1-based counts), and the state's sums advanced over them. */
static void luna_causal_attn(luna_ctx *c, int li, luna_gen_state *s, const float *xin, size_t rows,
                             uint64_t t0, float *O)
{
    const float *C;
    causal_proj(c, li, xin, rows, 0, &C);
    causal_core(c, li, s, W(c, dQ), W(c, dK), c->m->cfg.tie_kv ? W(c, dK) : W(c, dV), C, rows, t0, O);
}

/* ---- the softmax baseline: attention over a KV cache ---------------------------------------- */

/* O (rows, d) = causal softmax attention of the chunk rows xin at positions t0 .. t0+rows-1
 * (0-based) over the cache, after appending their keys and values to it. An online softmax
 * runs over key blocks of the chunk length, so nothing of size t0 x rows is built. */
static void kv_attn(luna_ctx *c, int li, luna_gen_state *s, const float *xin, size_t rows,
                    uint64_t t0, float *O)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    const luna_layer *ly = &m->layers[li];
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, ch = (size_t)c->chunk;
    float *Kc = s->kc[li], *Vc = cfg->tie_kv ? Kc : s->vc[li];
    float *Q = W(c, dQ), *S = W(c, S), *mx = W(c, rmax), *sm = W(c, rsum);
    kn_linear(&ly->q_proj, xin, rows, d, Q, d, 1.0f / sqrtf((float)k));
    kn_linear(cfg->tie_kv ? &ly->c_proj : &ly->k_proj, xin, rows, d, Kc + t0 * d, d, 1.0f);
    if (!cfg->tie_kv) kn_linear(&ly->v_proj, xin, rows, d, Vc + t0 * d, d, 1.0f);
    memset(O, 0, rows * d * sizeof(float));
    for (size_t i = 0; i < rows * H; i++) {
        mx[i] = -INFINITY;
        sm[i] = 0.0f;
    }
    size_t end = (size_t)t0 + rows; /* keys 0 .. end-1 */
    for (size_t k0 = 0; k0 < end; k0 += ch) {
        size_t kr = end - k0 < ch ? end - k0 : ch;
        for (size_t h = 0; h < H; h++) {
            kn_gemm_nt(rows, kr, k, 1.0f, Q + h * k, d, Kc + k0 * d + h * k, d, 0.0f, S, kr);
            for (size_t i = 0; i < rows; i++) {
                float *srow = S + i * kr;
                size_t last = (size_t)t0 + i; /* row i sees keys 0 .. last */
                size_t kv = last < k0 ? 0 : (last - k0 + 1 < kr ? last - k0 + 1 : kr);
                if (kv == 0) {
                    memset(srow, 0, kr * sizeof(float));
                    continue;
                }
                float *m_i = mx + i * H + h, *z_i = sm + i * H + h;
                float m_new = fmaxf(*m_i, kn_max(srow, kv));
                float rescale = kn_expf(*m_i - m_new);
                *z_i = *z_i * rescale + kn_exp_shift_sum(srow, kv, m_new);
                *m_i = m_new;
                if (kv < kr) memset(srow + kv, 0, (kr - kv) * sizeof(float));
                float *o = O + i * d + h * k;
                for (size_t j = 0; j < k; j++) o[j] *= rescale;
            }
            kn_gemm_nn(rows, k, kr, 1.0f, S, kr, Vc + k0 * d + h * k, d, 1.0f, O + h * k, d);
        }
    }
    for (size_t i = 0; i < rows; i++)
        for (size_t h = 0; h < H; h++) {
            float inv = 1.0f / sm[i * H + h], *o = O + i * d + h * k;
            for (size_t j = 0; j < k; j++) o[j] *= inv;
        }
}

/* ---- prefill and step -------------------------------------------------------------------------- */

int luna_prefill(luna_ctx *c, luna_gen_state *s, const int32_t *tokens, size_t n, float *logits,
                 int all)
{
    if (!c || !s || !tokens || n == 0 || s->m != c->m) return LUNA_EINVAL;
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    if (cfg->task != LUNA_TASK_CAUSAL_LM) return LUNA_ETASK;
    int luna = c->attn == LUNA_ATTN_LUNA;
    if (luna != (s->kind == LUNA_ATTN_LUNA)) return LUNA_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg->vocab_size) return LUNA_EINVAL;
    if (cfg->max_positions > 0 && (s->t > (uint64_t)cfg->max_positions ||
                                   n > (uint64_t)cfg->max_positions - s->t))
        return LUNA_ETOOLONG;
    c->last_alloc_bytes = 0;
    if (!luna) {
        int rc = kv_reserve(s, s->t + n);
        if (rc) return rc;
    }
    size_t d = (size_t)cfg->d, ch = (size_t)c->chunk, V = (size_t)cfg->vocab_size;
    float *X = W(c, dX), *T = W(c, dT), *O = W(c, dO);
    for (size_t r0 = 0; r0 < n; r0 += ch) {
        if (canceled(c)) return LUNA_ECANCELED;
        size_t rows = n - r0 < ch ? n - r0 : ch;
        dec_embed(c, s, tokens + r0, rows, X);
        for (int li = 0; li < cfg->layers; li++) {
            const luna_layer *ly = &m->layers[li];
            const float *xin = X;
            if (cfg->normalize_before) {
                kn_layernorm(&ly->self_attn_layer_norm, X, T, rows, d);
                xin = T;
            }
            if (luna) luna_causal_attn(c, li, s, xin, rows, s->t, O);
            else kv_attn(c, li, s, xin, rows, s->t, O);
            luna__attn_out_ffn(c, ly, X, O, rows, T, W(c, dY), W(c, F), 0);
        }
        s->t += rows;
        if (cfg->normalize_before) kn_layernorm(&m->layer_norm, X, X, rows, d);
        if (logits && all) {
            kn_linear(&m->output_projection, X, rows, d, logits + r0 * V, V, 1.0f);
        } else if (logits && r0 + rows == n) {
            kn_linear(&m->output_projection, X + (rows - 1) * d, 1, d, W(c, dlogits), V, 1.0f);
            memcpy(logits, W(c, dlogits), V * sizeof(float));
        }
    }
    return 0;
}

int luna_step_batch(luna_ctx *c, luna_gen_state *const *s, const int32_t *tokens, size_t B, float *logits)
{
    if (!c || !s || !tokens || B == 0 || B > (size_t)c->chunk) return LUNA_EINVAL;
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    if (cfg->task != LUNA_TASK_CAUSAL_LM) return LUNA_ETASK;
    if (c->attn != LUNA_ATTN_LUNA) return LUNA_EINVAL;
    for (size_t b = 0; b < B; b++) {
        if (!s[b] || s[b]->m != m || s[b]->kind != LUNA_ATTN_LUNA) return LUNA_EINVAL;
        if (tokens[b] < 0 || tokens[b] >= cfg->vocab_size) return LUNA_EINVAL;
        if (cfg->max_positions > 0 && s[b]->t >= (uint64_t)cfg->max_positions) return LUNA_ETOOLONG;
        for (size_t e = 0; e < b; e++)
            if (s[e] == s[b]) return LUNA_EINVAL; /* one row per state: they advance */
    }
    if (canceled(c)) return LUNA_ECANCELED;
    c->last_alloc_bytes = 0;
    size_t d = (size_t)cfg->d, V = (size_t)cfg->vocab_size;
    float *X = W(c, dX), *T = W(c, dT), *O = W(c, dO);
    for (size_t b = 0; b < B; b++) dec_embed(c, s[b], tokens + b, 1, X + b * d);
    for (int li = 0; li < cfg->layers; li++) {
        const luna_layer *ly = &m->layers[li];
        const float *xin = X, *C;
        if (cfg->normalize_before) {
            kn_layernorm(&ly->self_attn_layer_norm, X, T, B, d);
            xin = T;
        }
        /* the weights once for every row; each row's attention against its own state */
        causal_proj(c, li, xin, B, 1, &C);
        const float *Q = W(c, dQ), *K = W(c, dK), *Vv = cfg->tie_kv ? K : W(c, dV);
        for (size_t b = 0; b < B; b++)
            causal_row(c, li, s[b], Q + b * d, K + b * d, Vv + b * d, C + b * d, s[b]->t, O + b * d);
        luna__attn_out_ffn(c, ly, X, O, B, T, W(c, dY), W(c, F), 1);
    }
    for (size_t b = 0; b < B; b++) s[b]->t += 1;
    if (cfg->normalize_before) kn_layernorm(&m->layer_norm, X, X, B, d);
    if (logits) kn_linear_fixed(&m->output_projection, X, B, d, logits, V, 1.0f);
    return 0;
}

int luna_step(luna_ctx *c, luna_gen_state *s, int32_t token, float *logits)
{
    /* a Luna state steps as a batch of one, so that a stream gives the same bits alone or batched */
    if (c && s && c->attn == LUNA_ATTN_LUNA && s->kind == LUNA_ATTN_LUNA) return luna_step_batch(c, &s, &token, 1, logits);
    return luna_prefill(c, s, &token, 1, logits, 0);
}

/* ---- the fields, for state.c (export and import) ------------------------------------------ */

#include "state.h"

void luna__gen_state_fields(const luna_gen_state *s, luna__state_fields *f)
{
    luna_gen_state *w = (luna_gen_state *)s; /* state.h: import owns the state it writes */
    *f = (luna__state_fields){s->m, s->kind, &w->t, w->sum, s->sum_len, w->recent, history(&s->m->cfg)};
}
