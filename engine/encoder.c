/* encoder.c - the bidirectional Luna encoder and classifier head, chunked along the sequence,
 * and the two softmax baselines that the benchmarks compare it with.
 *
 * The data flows in this order, and so does this file:
 *   workspace layout -> contexts -> embedding -> Luna layer (pack, then unpack + FFN)
 *   -> softmax baseline layers -> pooling and the head -> public entry points.
 *
 * Memory. The only buffer that grows with the input is X (n, d): the token stream, updated in
 * place layer after layer. Everything else is a fixed per-context workspace sized by the chunk
 * length c, the projected length l and the widths (see ws_layout). Pack needs all of X before
 * unpack may overwrite it, so each layer makes two passes over X:
 *   1. pack:   for each chunk of X, the keys/values of that chunk and an online softmax that
 *              accumulates A_P V for the l queries of P (running max, running sum, rescale);
 *   2. unpack: for each chunk of X, its queries against the l packed rows, out_proj, residual,
 *              LayerNorm, FFN, LayerNorm, written back into the same rows of X.
 * Nothing is n x l per head or n x ffn, so a forward over n tokens allocates n*d floats. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "input.h"
#include "kernels.h"

/* ---- workspace layout ----------------------------------------------------------------- */

static int resolve_chunk(const luna_ctx_opts *opts)
{
    int c = opts && opts->chunk > 0 ? opts->chunk : DEFAULT_CHUNK;
    return c > MAX_CHUNK ? MAX_CHUNK : c;
}

static luna_attn resolve_attn(const luna_ctx_opts *opts)
{
    return opts ? opts->attention : LUNA_ATTN_LUNA;
}

/* Lanes split the Luna chunk loops of the encoder and the Luna decoder's prefill (whose chunks
 * depend on each other through the running sums: decoder.c pipelines them, or splits the
 * columns and heads of a lone chunk); the baselines run on the calling thread. */
static int resolve_threads(const luna_config *cfg, const luna_ctx_opts *opts)
{
    (void)cfg;
    int t = opts && opts->threads > 1 ? opts->threads : 1;
    if (t > LUNA_MAX_THREADS) t = LUNA_MAX_THREADS;
    return resolve_attn(opts) == LUNA_ATTN_LUNA ? t : 1;
}

/* The classifier head's widest row: its hidden layers' or d. */
static size_t head_dim(const luna_config *cfg)
{
    return (size_t)(cfg->classifier_dim > cfg->d ? cfg->classifier_dim : cfg->d);
}

/* A lane's share of a pack runs in buffers of its own (luna_classify_pack): X (rows), then P,
 * Pn, QP, Cp, KU and VU (P rows each), then the running max and sum (Hp per P row); a share has
 * at most a chunk of rows and of P rows. An even count (pack_region_floats). */
static size_t pack_floats(const luna_config *cfg, size_t rows, size_t prows)
{
    size_t n = (rows + 6 * prows) * (size_t)cfg->d + 2 * (size_t)cfg->Hp * prows;
    return n + (n & 1);
}

/* One lane's private buffers: macc (d doubles, first, so that it is aligned), A..C and Xr
 * (c, d), F (c, ffn), S (l, c), acc (l, d), pmax, psum (Hp, l), then the head's pooled (d),
 * head_a and head_b (head_dim), logits (n_labels) and its share of a pack (pack_floats); an even
 * count, so that the next lane's doubles are aligned too. */
static size_t lane_floats(const luna_config *cfg, size_t c)
{
    size_t d = (size_t)cfg->d, l = (size_t)cfg->l;
    size_t n = 2 * d + 4 * c * d + c * (size_t)cfg->ffn + l * c + l * d + 2 * (size_t)cfg->Hp * l;
    n += d + 2 * head_dim(cfg) + (size_t)cfg->n_labels;
    n += n & 1;
    return n + pack_floats(cfg, c, c);
}

/* A pack's document: its view, its tokens and rows of P, where its rows start in its share's. */
typedef struct {
    luna_seq seq;
    size_t n, lp; /* tokens, rows of P */
    size_t x0, p0; /* its first row in its share's X and P */
} pack_doc;

_Static_assert(sizeof(pack_doc) % sizeof(double) == 0, "pack_doc: the buffers after them stay aligned");

/* The context's pack region on a chunk of c rows and `lanes` lanes: a chunk's documents per
 * lane (pack_doc, first: they hold pointers; every document has a row at least), lane 0's
 * buffers, then the subjects (a chunk's bytes per lane: a subject's bytes are tokens). */
static size_t pack_region_floats(const luna_config *cfg, size_t c, size_t lanes)
{
    return lanes * c * (sizeof(pack_doc) / sizeof(float)) + pack_floats(cfg, c, c) + (lanes * c + 3) / 4;
}

static void layout(const luna_config *cfg, int chunk, luna_attn attn, int threads, ws_layout *L)
{
    size_t d = (size_t)cfg->d, l = (size_t)cfg->l, c = (size_t)chunk;
    size_t hd = head_dim(cfg);
    size_t off = 0;
#define TAKE(field, count) (L->field = off, off += (count))
    memset(L, 0, sizeof *L);
    if (cfg->task == LUNA_TASK_CAUSAL_LM) {
        TAKE(F, c * (size_t)cfg->ffn); /* first: on a cache line (decoder.c's lanes) */
        TAKE(freq, d / 2);
        luna__dec_layout(cfg, chunk, attn, threads, L, &off);
        L->total = off;
        return;
    }
    if (attn == LUNA_ATTN_LUNA) {
        TAKE(P, l * d);
        TAKE(Pn, l * d);
        TAKE(QP, l * d);
        TAKE(acc, l * d);
        TAKE(pmax, (size_t)cfg->Hp * l);
        TAKE(psum, (size_t)cfg->Hp * l);
        TAKE(KU, (size_t)cfg->layers * l * d);
        TAKE(VU, (size_t)cfg->layers * l * d);
        TAKE(S, l * c);
        TAKE(Xr, c * d);
        off += off & 1; /* the pack's documents hold pointers */
        TAKE(pack, pack_region_floats(cfg, c, (size_t)threads));
        off += off & 1; /* doubles */
        TAKE(macc, 2 * d);
    } else {
        TAKE(S, c * c);
        TAKE(rmax, c * (size_t)cfg->H);
        TAKE(rsum, c * (size_t)cfg->H);
    }
    TAKE(A, c * d);
    TAKE(B, c * d);
    TAKE(C, c * d);
    TAKE(F, c * (size_t)cfg->ffn);
    TAKE(freq, d / 2);
    TAKE(pooled, d);
    TAKE(head_a, hd);
    TAKE(head_b, hd);
    TAKE(logits, (size_t)cfg->n_labels);
    L->lane_size = lane_floats(cfg, c);
    off += off & 1;
    TAKE(lanes, (size_t)(threads - 1) * L->lane_size);
#undef TAKE
    L->total = off;
}

size_t luna_ctx_bytes(const luna_model *m, const luna_ctx_opts *opts)
{
    ws_layout L;
    layout(&m->cfg, resolve_chunk(opts), resolve_attn(opts), resolve_threads(&m->cfg, opts), &L);
    return L.total * sizeof(float);
}

/* n * k floats, or SIZE_MAX on overflow */
static size_t mul_floats(size_t n, size_t k)
{
    if (k && n > SIZE_MAX / sizeof(float) / k) return SIZE_MAX;
    return n * k;
}

/* Floats that a forward over n tokens allocates (the layout of the per-call buffer). */
static size_t forward_floats(const luna_config *cfg, size_t n, luna_attn attn)
{
    size_t d = (size_t)cfg->d;
    if (cfg->task == LUNA_TASK_CAUSAL_LM) return 0; /* the decoder allocates nothing per call */
    size_t nd = mul_floats(n, d);
    if (nd == SIZE_MAX) return SIZE_MAX;
    switch (attn) {
    case LUNA_ATTN_LUNA:
        return nd; /* X */
    case LUNA_ATTN_SOFTMAX_STREAM:
        return nd > SIZE_MAX / 3 ? SIZE_MAX : 3 * nd; /* X, K, V */
    case LUNA_ATTN_SOFTMAX: {
        /* the (H, n, n) scores of all heads, as a standard multi-head attention builds them */
        size_t nn = mul_floats(n, n);
        size_t hnn = nn == SIZE_MAX ? SIZE_MAX : mul_floats(nn, (size_t)cfg->H);
        if (hnn == SIZE_MAX || nd > SIZE_MAX / 5 || 5 * nd > SIZE_MAX - hnn) return SIZE_MAX;
        return 5 * nd + hnn; /* X, Q, K, V, O, scores */
    }
    }
    return SIZE_MAX;
}

size_t luna_workspace_bytes_attn(const luna_model *m, size_t n, luna_attn attn, int chunk)
{
    (void)chunk; /* the per-call buffer does not depend on the chunk length */
    size_t f = forward_floats(&m->cfg, n, attn);
    return f == SIZE_MAX || f > SIZE_MAX / sizeof(float) ? SIZE_MAX : f * sizeof(float);
}

size_t luna_workspace_bytes(const luna_model *m, size_t n)
{
    return luna_workspace_bytes_attn(m, n, LUNA_ATTN_LUNA, 0);
}

/* ---- contexts ---------------------------------------------------------------------------- */

int luna_ctx_new(const luna_model *m, const luna_ctx_opts *opts, luna_ctx **out)
{
    if (!m || !out) return LUNA_EINVAL;
    luna_attn attn = resolve_attn(opts);
    if (attn != LUNA_ATTN_LUNA && attn != LUNA_ATTN_SOFTMAX && attn != LUNA_ATTN_SOFTMAX_STREAM)
        return LUNA_EINVAL;
    if (opts && opts->chunk < 0) return LUNA_EINVAL;
    luna_ctx *c = calloc(1, sizeof *c);
    if (!c) return LUNA_ENOMEM;
    c->m = m;
    c->chunk = resolve_chunk(opts);
    c->attn = attn;
    c->threads = c->lanes_max = resolve_threads(&m->cfg, opts);
    layout(&m->cfg, c->chunk, attn, c->threads, &c->L);
    /* on a cache line: lanes write neighbouring column blocks of one row (decoder.c), and a
     * block that starts on a line shares none with its neighbour */
    size_t ws_bytes = (c->L.total * sizeof(float) + 63) & ~(size_t)63;
    c->ws = aligned_alloc(64, ws_bytes ? ws_bytes : 64);
    if (!c->ws) {
        free(c);
        return LUNA_ENOMEM;
    }
    memset(c->ws, 0, ws_bytes);
    const luna_config *cfg = &m->cfg;
    size_t cd = (size_t)c->chunk * (size_t)cfg->d, l = (size_t)cfg->l;
    c->lane[0] = (lane_ws){c->ws + c->L.A, c->ws + c->L.B, c->ws + c->L.C, c->ws + c->L.F,
                           c->ws + c->L.S, c->ws + c->L.acc, c->ws + c->L.pmax, c->ws + c->L.psum,
                           c->ws + c->L.Xr, (double *)(void *)(c->ws + c->L.macc),
                           c->ws + c->L.pooled, c->ws + c->L.head_a, c->ws + c->L.head_b, c->ws + c->L.logits,
                           NULL};
    if (attn == LUNA_ATTN_LUNA && cfg->task == LUNA_TASK_CLASSIFY)
        c->lane[0].pack = (float *)(void *)((pack_doc *)(void *)W(c, pack) + (size_t)c->threads * (size_t)c->chunk);
    for (int t = 1; t < c->threads && cfg->task == LUNA_TASK_CLASSIFY; t++) { /* the decoder's: dL */
        float *base = c->ws + c->L.lanes + (size_t)(t - 1) * c->L.lane_size, *p = base;
        lane_ws *w = &c->lane[t];
        w->macc = (double *)(void *)p, p += 2 * (size_t)cfg->d;
        w->Xr = p, p += cd;
        w->A = p, p += cd;
        w->B = p, p += cd;
        w->C = p, p += cd;
        w->F = p, p += (size_t)c->chunk * (size_t)cfg->ffn;
        w->S = p, p += l * (size_t)c->chunk;
        w->acc = p, p += l * (size_t)cfg->d;
        w->pmax = p, p += (size_t)cfg->Hp * l;
        w->psum = p, p += (size_t)cfg->Hp * l;
        w->pooled = p, p += (size_t)cfg->d;
        w->head_a = p, p += head_dim(cfg);
        w->head_b = p, p += head_dim(cfg);
        w->logits = p, p += (size_t)cfg->n_labels;
        p += (p - base) & 1;
        w->pack = p;
    }
    /* fairseq's sinusoid: half sin, half cos, frequency exp(-j ln(10000) / (half - 1)) */
    int half = m->cfg.d / 2;
    float *freq = c->ws + c->L.freq;
    for (int j = 0; j < half; j++)
        freq[j] = half > 1 ? (float)exp(-(double)j * log(10000.0) / (half - 1)) : 1.0f;
    /* the decoder's lanes are threads that live as long as the context: a prefill hands them
     * some 30 phases per chunk, too many to start threads for (the encoder's few passes per
     * layer start theirs, run_lanes) */
    if (cfg->task == LUNA_TASK_CAUSAL_LM && luna__lanes_start(c)) {
        free(c->ws);
        free(c);
        return LUNA_ENOMEM;
    }
    *out = c;
    return 0;
}

void luna_ctx_free(luna_ctx *c)
{
    if (!c) return;
    luna__lanes_stop(c);
    free(c->ws);
    free(c);
}

void luna_ctx_set_cancel(luna_ctx *c, const atomic_int *flag) { c->cancel = flag; }

int luna_ctx_set_lanes(luna_ctx *c, int lanes)
{
    c->threads = lanes < 1 ? 1 : lanes > c->lanes_max ? c->lanes_max : lanes;
    return c->threads;
}

size_t luna__ctx_last_alloc_bytes(const luna_ctx *c) { return c->last_alloc_bytes; }
unsigned long luna__ctx_lane_threads(const luna_ctx *c) { return c->lane_threads; }


/* ---- embedding ----------------------------------------------------------------------------- */

/* Adds fairseq's sinusoid for positions pos0 .. pos0+rows-1 to rows of x (stride d). The
 * angle advances by rotation in double from an exact start every 64 rows: far cheaper than
 * n*d calls to sin and cos, and accurate to ~1e-14 before rounding to float. */
void luna__add_sinusoid(const luna_ctx *c, float *x, size_t pos0, size_t rows)
{
    int d = c->m->cfg.d, half = d / 2;
    const float *freq = W(c, freq);
    for (int j = 0; j < half; j++) {
        double f = freq[j], cf = cos(f), sf = sin(f), s = 0, co = 0;
        for (size_t r = 0; r < rows; r++) {
            if (r % 64 == 0) {
                double a = (double)(pos0 + r) * f;
                s = sin(a);
                co = cos(a);
            } else {
                double ns = s * cf + co * sf;
                co = co * cf - s * sf;
                s = ns;
            }
            x[r * (size_t)d + (size_t)j] += (float)s;
            x[r * (size_t)d + (size_t)half + (size_t)j] += (float)co;
        }
    }
}

/* hash_ngrams (docs/model-format.md, "Hashed n-gram embeddings"): the bucket of the `order`
 * tokens win[order - 1] (oldest) .. win[0] (newest). buckets is a power of two. */
uint32_t luna__hash_bucket(const int32_t *win, int order, int buckets)
{
    uint64_t h = 0;
    for (int j = order - 1; j >= 0; j--)
        h = (h * 263u + (uint64_t)(uint32_t)win[j] + 1u) % 2147483647u;
    int log2b = 0;
    while ((1 << log2b) < buckets) log2b++;
    return (uint32_t)(((h * 2654435761u) & 0xffffffffu) >> (32 - log2b));
}

/* xr (d) += embed_hash_proj . concat over o = 2 .. M of the embed_hash row of the o-gram that
 * ends at the token, M = hash_ngrams. win[b] is the token b back (win[0]: the token itself),
 * valid for b < have; an o-gram with o > have would start before the first token and adds
 * nothing (its part of the concatenation is zero). */
void luna__add_hash_ngrams(const luna_model *m, const int32_t *win, size_t have, float *xr)
{
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, r = (size_t)cfg->hash_dim, B = (size_t)cfg->hash_buckets;
    size_t M = (size_t)cfg->hash_ngrams, in = (M - 1) * r;
    for (size_t o = 2; o <= M && o <= have; o++) {
        const float *row = m->embed_hash + ((o - 2) * B + luna__hash_bucket(win, (int)o, (int)B)) * r;
        const float *w = m->embed_hash_proj + (o - 2) * r;
        for (size_t i = 0; i < d; i++) {
            float acc = 0.0f;
            for (size_t k = 0; k < r; k++) acc += w[i * in + k] * row[k];
            xr[i] += acc;
        }
    }
}

/* X rows [r0, r0+rows) = (embed_tokens + the embed_ngrams rows of the ngram_embed - 1 tokens
 * before + the hashed n-gram rows) * embed_scale + positions (+ emb_layer_norm). */
static void embed_rows(const luna_ctx *c, const luna_seq *seq, size_t r0, size_t rows, float *x)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d;
    size_t K = (size_t)cfg->ngram_embed, V = (size_t)cfg->vocab_size;
    for (size_t r = 0; r < rows; r++) {
        const float *e = m->embed_tokens + (size_t)seq_token(seq, r0 + r) * d;
        float *xr = x + r * d;
        memcpy(xr, e, d * sizeof(float));
        for (size_t b = 1; b < K && b <= r0 + r; b++) /* the tokens b back: none before the first */
            kn_add(xr, m->embed_ngrams + ((b - 1) * V + (size_t)seq_token(seq, r0 + r - b)) * d, d);
        if (cfg->hash_ngrams > 1) {
            int32_t win[LUNA_MAX_NGRAM];
            size_t have = (size_t)cfg->hash_ngrams < r0 + r + 1 ? (size_t)cfg->hash_ngrams : r0 + r + 1;
            for (size_t b = 0; b < have; b++) win[b] = (int32_t)seq_token(seq, r0 + r - b);
            luna__add_hash_ngrams(m, win, have, xr);
        }
        for (size_t j = 0; j < d; j++) xr[j] *= cfg->embed_scale;
        if (cfg->positions == LUNA_POS_LEARNED) {
            const float *p = m->embed_positions + ((size_t)cfg->pad_id + 1 + r0 + r) * d;
            kn_add(xr, p, d);
        }
    }
    if (cfg->positions == LUNA_POS_SINUSOIDAL) luna__add_sinusoid(c, x, (size_t)cfg->pad_id + 1 + r0, rows);
    if (cfg->layernorm_embedding) kn_layernorm(&m->emb_layer_norm, x, x, rows, d);
}

/* P0 = projected_embeddings[:lp] * embed_scale (+ sinusoid 0..lp-1) (+ proj_emb_layer_norm). */
static void embed_p(const luna_ctx *c, size_t lp, float *P)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d;
    for (size_t i = 0; i < lp * d; i++) P[i] = m->projected_embeddings[i] * cfg->embed_scale;
    if (cfg->positions == LUNA_POS_SINUSOIDAL) luna__add_sinusoid(c, P, 0, lp);
    if (cfg->layernorm_embedding) kn_layernorm(&m->proj_emb_layer_norm, P, P, lp, d);
}

/* ---- the Luna layer ---------------------------------------------------------------------- */

/* The rest of a layer for one chunk once the attention output O (rows, d) is known, shared by
 * Luna and the baselines: out_proj, residual and norm, FFN, residual and norm, in place in x.
 * T (rows, d) and F (rows, ffn) are scratch. */
static void attn_out_ffn(const luna_ctx *c, const luna_layer *ly, float *x, const float *O, size_t rows,
                         float *T, float *F)
{
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, ffn = (size_t)cfg->ffn;
    int pre = cfg->normalize_before;
    kn_linear_add(&ly->out_proj, O, rows, d, x, d, 1.0f); /* X1 = X + out_proj(O), in place */
    if (!pre) kn_layernorm(&ly->self_attn_layer_norm, x, x, rows, d);
    const float *fin = x;
    if (pre) {
        kn_layernorm(&ly->final_layer_norm, x, T, rows, d);
        fin = T;
    }
    kn_linear(&ly->fc1, fin, rows, d, F, ffn, 1.0f);
    kn_act(cfg->activation, F, rows * ffn);
    kn_linear_add(&ly->fc2, F, rows, ffn, x, d, 1.0f);
    if (!pre) kn_layernorm(&ly->final_layer_norm, x, x, rows, d);
}

/* Runs fn for lanes 0 .. lanes-1 (at most the context's), lane 0 on the calling thread, the
 * others on threads of their own; returns the first non-zero result. A lane whose thread cannot
 * start runs here. */
typedef int (*lane_fn)(luna_ctx *c, int lane, void *arg);
typedef struct {
    luna_ctx *c;
    int lane;
    lane_fn fn;
    void *arg;
    int rc;
} lane_job;

static void *lane_main(void *p)
{
    lane_job *j = p;
    j->rc = j->fn(j->c, j->lane, j->arg);
    return NULL;
}

static int run_lanes(luna_ctx *c, int lanes, lane_fn fn, void *arg)
{
    lane_job jobs[LUNA_MAX_THREADS];
    pthread_t th[LUNA_MAX_THREADS];
    int started[LUNA_MAX_THREADS] = {0};
    for (int t = 1; t < lanes; t++) {
        jobs[t] = (lane_job){c, t, fn, arg, 0};
        started[t] = pthread_create(&th[t], NULL, lane_main, &jobs[t]) == 0;
        c->lane_threads += (unsigned long)started[t];
    }
    int rc = fn(c, 0, arg);
    for (int t = 1; t < lanes; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else jobs[t].rc = fn(c, t, arg);
        if (!rc) rc = jobs[t].rc;
    }
    return rc;
}

/* ---- plans: which rows of X are kept ------------------------------------------------------
 *
 * Layer k's pack is a softmax over all n rows of X_k (the input of layer k, X_0 the
 * embeddings); its unpack and FFN need, for row t, only X_k's row t and layer k's unpack keys
 * and values, which the pack gives. So a row of X_k can be recomputed at any time from the
 * input bytes: embed it, then run layers 0 .. k-1's unpack + FFN on it with their kept keys and
 * values. A plan keeps the first R rows of X in memory (R = n: the resident plan, today's;
 * R = 0: the streaming plan, which allocates nothing that grows with n) and recomputes the
 * others whenever a pass needs them. Chunks fall on the same rows in every plan and each row's
 * arithmetic is the same, so every plan gives the resident plan's numbers. */

typedef struct {
    const luna_seq *seq;
    float *X;     /* rows [0, R) of the current layer's input, in place; NULL when R = 0 */
    size_t n, R, lp;
    int k;        /* the layer */
    const luna_layer *ly;
    size_t U;     /* unpack: rows [0, U) of X; the final pass: its first row (cls) or all */
} layer_pass;

static float *ku_of(luna_ctx *c, int k) { return W(c, KU) + (size_t)k * c->m->cfg.l * c->m->cfg.d; }
static float *vu_of(luna_ctx *c, int k)
{
    return c->m->cfg.tie_kv ? ku_of(c, k) : W(c, VU) + (size_t)k * c->m->cfg.l * c->m->cfg.d;
}

/* The unpack's attention of `rows` queries Q (stride d) against the lp packed rows KU, VU
 * (stride d): O (stride d) = concat_h softmax(Q_h KU_h^T) VU_h; S (rows, lp) is scratch. */
static void unpack_heads(const luna_config *cfg, const float *Q, const float *KU, const float *VU, size_t rows,
                         size_t lp, float *S, float *O)
{
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, hk = d / H;
    for (size_t h = 0; h < H; h++) {
        kn_gemm_nt(rows, lp, hk, 1.0f, Q + h * hk, d, KU + h * hk, d, 0.0f, S, lp);
        kn_softmax_rows(S, rows, lp, lp);
        kn_gemm_nn(rows, hk, lp, 1.0f, S, lp, VU + h * hk, d, 0.0f, O + h * hk, d);
    }
}

/* Unpack + FFN of layer k on `rows` rows of x (stride d), in place; the lane's A..C, F and S
 * are scratch. */
static void unpack_rows(luna_ctx *c, const lane_ws *w, int k, float *x, size_t rows, size_t lp)
{
    const luna_config *cfg = &c->m->cfg;
    const luna_layer *ly = &c->m->layers[k];
    size_t d = (size_t)cfg->d, hk = d / (size_t)cfg->H;
    float *T = w->A, *Q = w->B, *O = w->C;
    const float *xin = x;
    if (cfg->normalize_before) {
        kn_layernorm(&ly->self_attn_layer_norm, x, T, rows, d);
        xin = T;
    }
    kn_linear(&ly->q_proj, xin, rows, d, Q, d, 1.0f / sqrtf((float)hk));
    unpack_heads(cfg, Q, ku_of(c, k), vu_of(c, k), rows, lp, w->S, O);
    attn_out_ffn(c, ly, x, O, rows, T, w->F);
}

/* Rows [r0, r0 + rows) of X_k, recomputed from the input into the lane's Xr. */
static float *recompute_rows(luna_ctx *c, const lane_ws *w, const layer_pass *a, size_t r0, size_t rows, int k)
{
    embed_rows(c, a->seq, r0, rows, w->Xr);
    for (int j = 0; j < k; j++) unpack_rows(c, w, j, w->Xr, rows, a->lp);
    return w->Xr;
}

/* One row of scores s (cols) into an online softmax: its running max *m and sum *z move on,
 * and the unnormalised output out (width) is rescaled to the new max (the caller adds s's
 * share). The pack and the flash-style baseline share it. */
static void online_row(float *s, size_t cols, float *m, float *z, float *out, size_t width)
{
    float m_new = fmaxf(*m, kn_max(s, cols));
    float rescale = kn_expf(*m - m_new);
    *z = *z * rescale + kn_exp_shift_sum(s, cols, m_new);
    *m = m_new;
    for (size_t j = 0; j < width; j++) out[j] *= rescale;
}

/* A pack's online softmax, started: no row seen (running max -inf, sum 0, A_P V 0). */
static void pack_start(const luna_config *cfg, size_t lp, float *acc, float *mx, float *sm)
{
    memset(acc, 0, lp * (size_t)cfg->d * sizeof(float));
    for (size_t i = 0; i < (size_t)cfg->Hp * lp; i++) {
        mx[i] = -INFINITY;
        sm[i] = 0.0f;
    }
}

/* One chunk of `rows` keys K and values V (stride d) into a pack's online softmax for the lp
 * queries QP (stride d): per head, S (lp, rows) = Q_P,h K_h^T, the running max and sum mx, sm
 * (Hp, lp) move on and rescale acc (lp, d), then acc_h += S V_h. */
static void pack_chunk(const luna_config *cfg, const float *QP, const float *K, const float *V, size_t rows,
                       size_t lp, float *S, float *acc, float *mx, float *sm)
{
    size_t d = (size_t)cfg->d, Hp = (size_t)cfg->Hp, kp = d / Hp;
    for (size_t h = 0; h < Hp; h++) {
        kn_gemm_nt(lp, rows, kp, 1.0f, QP + h * kp, d, K + h * kp, d, 0.0f, S, rows);
        for (size_t i = 0; i < lp; i++)
            online_row(S + i * rows, rows, mx + h * lp + i, sm + h * lp + i, acc + i * d + h * kp, kp);
        kn_gemm_nn(lp, kp, rows, 1.0f, S, rows, V + h * kp, d, 1.0f, acc + h * kp, d);
    }
}

/* The pack's result: acc (lp, d) over the running sums sm (Hp, lp), in place: Cp. */
static void pack_finish(const luna_config *cfg, size_t lp, float *acc, const float *sm)
{
    size_t d = (size_t)cfg->d, Hp = (size_t)cfg->Hp, kp = d / Hp;
    for (size_t h = 0; h < Hp; h++)
        for (size_t i = 0; i < lp; i++) {
            float inv = 1.0f / sm[h * lp + i], *acc_i = acc + i * d + h * kp;
            for (size_t j = 0; j < kp; j++) acc_i[j] *= inv;
        }
}

/* Pack, one lane's share: chunks lane, lane + threads, ... of X_k (kept or recomputed),
 * accumulated by an online softmax into the lane's own (running max, running sum,
 * unnormalised A_P V). */
static int pack_lane(luna_ctx *c, int lane, void *arg)
{
    const layer_pass *a = arg;
    const luna_config *cfg = &c->m->cfg;
    const luna_layer *ly = a->ly;
    size_t d = (size_t)cfg->d, ch = (size_t)c->chunk, lp = a->lp, n = a->n;
    const lane_ws *w = &c->lane[lane];
    const float *QP = W(c, QP);
    float *acc = w->acc, *mx = w->pmax, *sm = w->psum, *S = w->S;
    pack_start(cfg, lp, acc, mx, sm);
    const luna_linear *kproj = cfg->tie_kv ? &ly->pc_proj : &ly->pk_proj;
    for (size_t r0 = (size_t)lane * ch; r0 < n; r0 += (size_t)c->threads * ch) {
        if (canceled(c)) return LUNA_ECANCELED;
        size_t rows = n - r0 < ch ? n - r0 : ch;
        const float *xin = r0 < a->R ? a->X + r0 * d : recompute_rows(c, w, a, r0, rows, a->k);
        if (cfg->normalize_before) {
            kn_layernorm(&ly->self_attn_layer_norm, xin, w->C, rows, d);
            xin = w->C;
        }
        float *K = w->A, *V = K;
        kn_linear(kproj, xin, rows, d, K, d, 1.0f);
        if (!cfg->tie_kv) {
            V = w->B;
            kn_linear(&ly->pv_proj, xin, rows, d, V, d, 1.0f);
        }
        pack_chunk(cfg, QP, K, V, rows, lp, S, acc, mx, sm);
    }
    return 0;
}

/* Pack: Cp (lp, d) = concat_h softmax(Q_P K^T) V over all n rows of X_k. Each lane reduces its
 * chunks; the partial softmaxes then merge exactly (rescaled to the larger running max) into
 * lane 0's, which is normalised into Cp, left in acc. Pre-norm reads LN_a(X) and LN_p(P). */
static int luna_pack(luna_ctx *c, layer_pass *a)
{
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, Hp = (size_t)cfg->Hp, kp = d / Hp, lp = a->lp;
    const float *Pin = cfg->normalize_before ? W(c, Pn) : W(c, P);
    kn_linear(&a->ly->pq_proj, Pin, lp, d, W(c, QP), d, 1.0f / sqrtf((float)kp));
    int rc = run_lanes(c, c->threads, pack_lane, a);
    if (rc) return rc;
    const lane_ws *w0 = &c->lane[0];
    for (int t = 1; t < c->threads; t++) {
        const lane_ws *wt = &c->lane[t];
        for (size_t h = 0; h < Hp; h++)
            for (size_t i = 0; i < lp; i++) {
                size_t k = h * lp + i;
                float m = fmaxf(w0->pmax[k], wt->pmax[k]);
                float s0 = kn_expf(w0->pmax[k] - m), s1 = kn_expf(wt->pmax[k] - m);
                w0->psum[k] = w0->psum[k] * s0 + wt->psum[k] * s1;
                w0->pmax[k] = m;
                float *a0 = w0->acc + i * d + h * kp;
                const float *a1 = wt->acc + i * d + h * kp;
                for (size_t j = 0; j < kp; j++) a0[j] = a0[j] * s0 + a1[j] * s1;
            }
    }
    pack_finish(cfg, lp, w0->acc, w0->psum);
    return 0;
}

/* Unpack and FFN of the pass's layer, one lane's share of the kept rows [0, U), in place. */
static int unpack_lane(luna_ctx *c, int lane, void *arg)
{
    const layer_pass *a = arg;
    size_t d = (size_t)c->m->cfg.d, ch = (size_t)c->chunk;
    for (size_t r0 = (size_t)lane * ch; r0 < a->U; r0 += (size_t)c->threads * ch) {
        if (canceled(c)) return LUNA_ECANCELED;
        size_t rows = a->U - r0 < ch ? a->U - r0 : ch;
        unpack_rows(c, &c->lane[lane], a->k, a->X + r0 * d, rows, a->lp);
    }
    return 0;
}

/* From the packed context Cp (lp rows): the unpack's keys and values (K_U = V_U = c_proj(Cp)
 * when tied), and P' = LN_p(P + Cp) post-norm, P + Cp pre-norm. */
static void packed_to_p(const luna_config *cfg, const luna_layer *ly, const float *Cp, size_t lp, float *P, float *KU,
                        float *VU)
{
    size_t d = (size_t)cfg->d;
    if (cfg->tie_kv) {
        kn_linear(&ly->c_proj, Cp, lp, d, KU, d, 1.0f);
    } else {
        kn_linear(&ly->k_proj, Cp, lp, d, KU, d, 1.0f);
        kn_linear(&ly->v_proj, Cp, lp, d, VU, d, 1.0f);
    }
    kn_add(P, Cp, lp * d);
    if (!cfg->normalize_before) kn_layernorm(&ly->self_atten_proj_layer_norm, P, P, lp, d);
}

/* One Luna encoder layer: pack over all n rows of X_k, the layer's unpack keys and values, P
 * becomes P', then unpack + FFN of the kept rows [0, a->U) in place. */
static int luna_layer_forward(luna_ctx *c, layer_pass *a)
{
    const luna_config *cfg = &c->m->cfg;
    const luna_layer *ly = a->ly;
    size_t d = (size_t)cfg->d, lp = a->lp;
    float *P = W(c, P), *Pn = W(c, Pn), *Cp = W(c, acc), *KU = ku_of(c, a->k), *VU = vu_of(c, a->k);
    int pre = cfg->normalize_before;

    if (pre) kn_layernorm(&ly->self_atten_proj_layer_norm, P, Pn, lp, d);
    int rc = luna_pack(c, a);
    if (rc) return rc;

    packed_to_p(cfg, ly, Cp, lp, P, KU, VU);

    return a->U ? run_lanes(c, c->threads, unpack_lane, a) : 0;
}

/* Mean pooling's sum over rows of the final X (after the final LayerNorm with pre-norm), one
 * lane's chunks: kept rows are read, the others recomputed through every layer. */
static int mean_lane(luna_ctx *c, int lane, void *arg)
{
    const layer_pass *a = arg;
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, ch = (size_t)c->chunk;
    const lane_ws *w = &c->lane[lane];
    double *sum = w->macc;
    for (size_t j = 0; j < d; j++) sum[j] = 0.0;
    for (size_t r0 = (size_t)lane * ch; r0 < a->n; r0 += (size_t)c->threads * ch) {
        if (canceled(c)) return LUNA_ECANCELED;
        size_t rows = a->n - r0 < ch ? a->n - r0 : ch;
        float *x = r0 < a->R ? a->X + r0 * d : recompute_rows(c, w, a, r0, rows, cfg->layers);
        if (cfg->normalize_before) {
            kn_layernorm(&c->m->layer_norm, x, w->A, rows, d);
            x = w->A;
        }
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < d; j++) sum[j] += x[r * d + j];
    }
    return 0;
}

/* ---- softmax baselines ------------------------------------------------------------------- */

/* K = key projection, V = value projection of rows of x (stride d); pre-norm reads LN_a(x). */
static void softmax_kv(luna_ctx *c, const luna_layer *ly, const float *x, size_t rows, float *K,
                       float *V, float *Q, float qscale)
{
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d;
    const float *xin = x;
    if (cfg->normalize_before) {
        kn_layernorm(&ly->self_attn_layer_norm, x, W(c, A), rows, d);
        xin = W(c, A);
    }
    if (K) kn_linear(cfg->tie_kv ? &ly->pc_proj : &ly->pk_proj, xin, rows, d, K, d, 1.0f);
    if (V) kn_linear(cfg->tie_kv ? &ly->c_proj : &ly->pv_proj, xin, rows, d, V, d, 1.0f);
    if (Q) kn_linear(&ly->q_proj, xin, rows, d, Q, d, qscale);
}

/* Materialised softmax attention, as a standard Transformer layer computes it: Q, K, V for all
 * rows, then the (H, n, n) scores of every head, their softmax, and A V. */
static int softmax_layer(luna_ctx *c, const luna_layer *ly, float *X, size_t n, float *Qb,
                         float *Kb, float *Vb, float *Ob, float *scores)
{
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, ch = (size_t)c->chunk;
    float scale = 1.0f / sqrtf((float)k);
    for (size_t r0 = 0; r0 < n; r0 += ch) {
        size_t rows = n - r0 < ch ? n - r0 : ch;
        softmax_kv(c, ly, X + r0 * d, rows, Kb + r0 * d, Vb + r0 * d, Qb + r0 * d, scale);
    }
    for (size_t h = 0; h < H; h++)
        kn_gemm_nt(n, n, k, 1.0f, Qb + h * k, d, Kb + h * k, d, 0.0f, scores + h * n * n, n);
    if (canceled(c)) return LUNA_ECANCELED;
    kn_softmax_rows(scores, H * n, n, n);
    for (size_t h = 0; h < H; h++)
        kn_gemm_nn(n, k, n, 1.0f, scores + h * n * n, n, Vb + h * k, d, 0.0f, Ob + h * k, d);
    for (size_t r0 = 0; r0 < n; r0 += ch) {
        size_t rows = n - r0 < ch ? n - r0 : ch;
        attn_out_ffn(c, ly, X + r0 * d, Ob + r0 * d, rows, W(c, A), W(c, F));
    }
    return 0;
}

/* Flash-style softmax attention: K and V for all rows, then for each query chunk an online
 * softmax over key chunks. O(n) memory, O(n^2) time. */
static int softmax_stream_layer(luna_ctx *c, const luna_layer *ly, float *X, size_t n, float *Kb,
                                float *Vb)
{
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, ch = (size_t)c->chunk;
    float scale = 1.0f / sqrtf((float)k);
    float *S = W(c, S), *mx = W(c, rmax), *sm = W(c, rsum);
    for (size_t r0 = 0; r0 < n; r0 += ch) {
        size_t rows = n - r0 < ch ? n - r0 : ch;
        softmax_kv(c, ly, X + r0 * d, rows, Kb + r0 * d, Vb + r0 * d, NULL, 0.0f);
    }
    for (size_t q0 = 0; q0 < n; q0 += ch) {
        if (canceled(c)) return LUNA_ECANCELED;
        size_t qr = n - q0 < ch ? n - q0 : ch;
        float *Q = W(c, B), *O = W(c, C);
        softmax_kv(c, ly, X + q0 * d, qr, NULL, NULL, Q, scale);
        memset(O, 0, qr * d * sizeof(float));
        for (size_t i = 0; i < qr * H; i++) {
            mx[i] = -INFINITY;
            sm[i] = 0.0f;
        }
        for (size_t k0 = 0; k0 < n; k0 += ch) {
            size_t kr = n - k0 < ch ? n - k0 : ch;
            for (size_t h = 0; h < H; h++) {
                kn_gemm_nt(qr, kr, k, 1.0f, Q + h * k, d, Kb + k0 * d + h * k, d, 0.0f, S, kr);
                for (size_t i = 0; i < qr; i++)
                    online_row(S + i * kr, kr, mx + i * H + h, sm + i * H + h, O + i * d + h * k, k);
                kn_gemm_nn(qr, k, kr, 1.0f, S, kr, Vb + k0 * d + h * k, d, 1.0f, O + h * k, d);
            }
        }
        for (size_t i = 0; i < qr; i++)
            for (size_t h = 0; h < H; h++) {
                float inv = 1.0f / sm[i * H + h], *o = O + i * d + h * k;
                for (size_t j = 0; j < k; j++) o[j] *= inv;
            }
        attn_out_ffn(c, ly, X + q0 * d, O, qr, W(c, A), W(c, F));
    }
    return 0;
}

/* ---- pooling and the head ------------------------------------------------------------------ */

static void head_forward(const luna_ctx *c, const lane_ws *w, const float *pooled, float *logits)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    const float *in = pooled;
    float *bufs[2] = {w->head_a, w->head_b};
    for (int j = 0; j < cfg->classifier_layers; j++) {
        float *out = bufs[j & 1];
        kn_linear(&m->classifier[j], in, 1, (size_t)m->classifier[j].in, out, (size_t)m->classifier[j].out, 1.0f);
        kn_act(cfg->classifier_activation, out, (size_t)m->classifier[j].out);
        in = out;
    }
    kn_linear(&m->sentence_projection_layer, in, 1, (size_t)m->sentence_projection_layer.in, logits,
              (size_t)cfg->n_labels, 1.0f);
}

/* Rows of P for an input of n tokens: l, or n when shorter with dynamic projection. */
static size_t proj_len(const luna_config *cfg, size_t n)
{
    return cfg->dynamic_projection && n < (size_t)cfg->l ? n : (size_t)cfg->l;
}

/* ---- plans ------------------------------------------------------------------------------- */

/* Multiply-adds x 2 of one row through one layer: the pack (K and V, scores, A V) and the
 * unpack + FFN (Q, scores, A V, out_proj, FFN). */
static double pack_row_flops(const luna_config *cfg, size_t lp)
{
    double d = cfg->d;
    return 2.0 * d * d * (cfg->tie_kv ? 1 : 2) + 4.0 * (double)lp * d;
}

static double unpack_row_flops(const luna_config *cfg, size_t lp)
{
    double d = cfg->d;
    return 4.0 * d * d + 4.0 * (double)lp * d + 4.0 * d * cfg->ffn;
}

/* Rows of the final X that the pooling reads: 0 (P), the first chunk (cls) or all (mean). */
static size_t final_rows(const luna_config *cfg, size_t n, int chunk)
{
    if (cfg->pooling == LUNA_POOL_P) return 0;
    if (cfg->pooling == LUNA_POOL_CLS) return n < (size_t)chunk ? n : (size_t)chunk;
    return n;
}

static luna_plan make_plan(const luna_model *m, size_t n, size_t rows)
{
    const luna_config *cfg = &m->cfg;
    luna_plan p = {0};
    p.n = n;
    if (cfg->task != LUNA_TASK_CLASSIFY) return p;
    size_t lp = proj_len(cfg, n);
    size_t Lyr = (size_t)cfg->layers;
    if (rows > n) rows = n;
    p.rows = rows;
    p.bytes = luna_workspace_bytes(m, rows);
    double pk = pack_row_flops(cfg, lp), up = unpack_row_flops(cfg, lp);
    double kept = (double)rows, other = (double)(n - rows);
    size_t fin = final_rows(cfg, n, DEFAULT_CHUNK);
    /* kept rows: a pack per layer and an unpack per layer but the last, which only the rows the
     * pooling reads need; other rows: before layer k's pack, k unpacks, and for the pooling a
     * last pass through every layer */
    double fin_kept = (double)(fin < rows ? fin : rows), fin_other = (double)(fin > rows ? fin - rows : 0);
    p.flops = kept * (double)Lyr * pk + kept * (double)(Lyr - 1) * up + fin_kept * up +
              other * (double)Lyr * pk + other * (double)(Lyr * (Lyr - 1) / 2) * up + fin_other * (double)Lyr * up;
    return p;
}

luna_plan luna_plan_resident(const luna_model *m, size_t n) { return make_plan(m, n, n); }
luna_plan luna_plan_streaming(const luna_model *m, size_t n) { return make_plan(m, n, 0); }
luna_plan luna_plan_rows(const luna_model *m, size_t n, size_t rows) { return make_plan(m, n, rows); }

luna_plan luna_plan_for(const luna_model *m, size_t n, size_t max_bytes)
{
    luna_plan p = make_plan(m, n, n), s = make_plan(m, n, 0);
    if (s.flops <= p.flops) return s; /* keeping rows buys no time (a 2-layer, P-pooled model) */
    if (p.bytes <= max_bytes) return p;
    /* the most rows that fit, on the default chunk's boundaries: the fewer recomputed, the faster */
    size_t rows = max_bytes / ((size_t)m->cfg.d * sizeof(float));
    return make_plan(m, n, rows - rows % DEFAULT_CHUNK);
}

const char *luna_plan_name(const luna_plan *p)
{
    return p->rows >= p->n ? "resident" : p->rows == 0 ? "streaming" : "partial";
}

/* ---- entry points -------------------------------------------------------------------------- */

static int encode(luna_ctx *c, const luna_plan *plan, const uint8_t *bytes, size_t len, float *hidden, float *pfinal,
                  float *pooled, float *logits)
{
    if (!c || (!bytes && len)) return LUNA_EINVAL;
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    if (cfg->task != LUNA_TASK_CLASSIFY) return LUNA_ETASK;
    static const uint8_t empty[1] = {0};
    if (!bytes) bytes = empty;

    luna_seq seq;
    seq_init(&seq, cfg, bytes, len, c->subject);
    size_t n = seq.n, d = (size_t)cfg->d, ch = (size_t)c->chunk;
    if (cfg->max_positions > 0 && n > (size_t)cfg->max_positions) return LUNA_ETOOLONG;
    size_t lp = proj_len(cfg, n);

    /* the rows kept: all of them (the baselines always), or the plan's, on chunk boundaries */
    size_t R = n;
    if (plan && c->attn == LUNA_ATTN_LUNA) {
        if (plan->n != n) return LUNA_EINVAL;
        R = plan->rows >= n ? n : plan->rows - plan->rows % ch;
    }
    if (hidden && R < n) return LUNA_EINVAL; /* the hidden rows are the kept ones */

    size_t nfloats = c->attn == LUNA_ATTN_LUNA ? (R == 0 ? 0 : forward_floats(cfg, R, c->attn)) : forward_floats(cfg, n, c->attn);
    if (nfloats == SIZE_MAX) return LUNA_ENOMEM;
    /* a size the client controls: try, never abort */
    float *buf = NULL;
    if (nfloats) {
        buf = malloc(nfloats * sizeof(float));
        if (!buf) return LUNA_ENOMEM;
    }
    c->last_alloc_bytes = nfloats * sizeof(float);
    float *X = buf;
    /* no more lanes than chunks: a lane past them would start a thread with nothing to do (its
     * empty partial softmax merges as nothing: the same bits); the context's count comes back */
    int lanes = c->threads;
    if ((size_t)c->threads > (n + ch - 1) / ch) c->threads = n > ch ? (int)((n + ch - 1) / ch) : 1;

    int rc = 0;
    for (size_t r0 = 0; r0 < R; r0 += ch) {
        size_t rows = R - r0 < ch ? R - r0 : ch;
        embed_rows(c, &seq, r0, rows, X + r0 * d);
    }
    if (c->attn == LUNA_ATTN_LUNA) embed_p(c, lp, W(c, P));

    /* the kept rows the last layer must unpack: those the pooling or the caller reads */
    size_t fin = hidden ? n : final_rows(cfg, n, c->chunk);
    for (int i = 0; i < cfg->layers && rc == 0; i++) {
        if (canceled(c)) {
            rc = LUNA_ECANCELED;
            break;
        }
        const luna_layer *ly = &m->layers[i];
        switch (c->attn) {
        case LUNA_ATTN_LUNA: {
            layer_pass a = {&seq, X, n, R, lp, i, ly, i + 1 < cfg->layers ? R : (fin < R ? fin : R)};
            rc = luna_layer_forward(c, &a);
            break;
        }
        case LUNA_ATTN_SOFTMAX_STREAM:
            rc = softmax_stream_layer(c, ly, X, n, buf + n * d, buf + 2 * n * d);
            break;
        case LUNA_ATTN_SOFTMAX:
            rc = softmax_layer(c, ly, X, n, buf + n * d, buf + 2 * n * d, buf + 3 * n * d,
                               buf + 4 * n * d, buf + 5 * n * d);
            break;
        }
    }
    if (rc) goto out;

    float *P = W(c, P);
    int luna = c->attn == LUNA_ATTN_LUNA;
    if (cfg->normalize_before && luna) kn_layernorm(&m->proj_layer_norm, P, P, lp, d);
    float *pool = W(c, pooled);
    switch (cfg->pooling) {
    case LUNA_POOL_CLS: {
        const float *x0 = X;
        if (!luna || R == 0) {
            /* the baselines keep every row; the streaming plan recomputes the first chunk */
            if (luna) {
                layer_pass a = {&seq, X, n, 0, lp, cfg->layers, NULL, 0};
                x0 = recompute_rows(c, &c->lane[0], &a, 0, n < ch ? n : ch, cfg->layers);
            }
        }
        if (cfg->normalize_before) {
            kn_layernorm(&m->layer_norm, x0, W(c, A), 1, d);
            x0 = W(c, A);
        }
        memcpy(pool, x0, d * sizeof(float));
        break;
    }
    case LUNA_POOL_MEAN:
        if (luna) {
            layer_pass a = {&seq, X, n, R, lp, cfg->layers, NULL, 0};
            rc = run_lanes(c, c->threads, mean_lane, &a);
            if (rc) goto out;
            for (size_t j = 0; j < d; j++) {
                double s = c->lane[0].macc[j];
                for (int t = 1; t < c->threads; t++) s += c->lane[t].macc[j];
                pool[j] = n ? (float)(s / (double)n) : 0.0f;
            }
        } else {
            if (cfg->normalize_before) kn_layernorm(&m->layer_norm, X, X, n, d);
            for (size_t j = 0; j < d; j++) {
                double s = 0.0;
                for (size_t r = 0; r < n; r++) s += X[r * d + j];
                pool[j] = n ? (float)(s / (double)n) : 0.0f;
            }
        }
        break;
    case LUNA_POOL_P:
        for (size_t j = 0; j < d; j++) {
            double s = 0.0;
            size_t count = luna ? lp : 0; /* the baselines have no P */
            for (size_t r = 0; r < count; r++) s += P[r * d + j];
            pool[j] = count ? (float)(s / (double)count) : 0.0f;
        }
        break;
    }
    head_forward(c, &c->lane[0], pool, W(c, logits));
    if (hidden) {
        /* the final LayerNorm of pre-norm; only the baselines' mean pooling applied it in place */
        int normed = !luna && cfg->pooling == LUNA_POOL_MEAN;
        if (cfg->normalize_before && !normed) kn_layernorm(&m->layer_norm, X, X, n, d);
        memcpy(hidden, X, n * d * sizeof(float));
    }
    if (pfinal && luna) memcpy(pfinal, P, lp * d * sizeof(float));
    if (pooled) memcpy(pooled, pool, d * sizeof(float));
    if (logits) memcpy(logits, W(c, logits), (size_t)cfg->n_labels * sizeof(float));
out:
    c->threads = lanes;
    free(buf);
    return rc;
}

int luna_encode(luna_ctx *c, const uint8_t *bytes, size_t len, float *hidden, float *pfinal,
                float *pooled, float *logits)
{
    return encode(c, NULL, bytes, len, hidden, pfinal, pooled, logits);
}

int luna_encode_plan(luna_ctx *c, const luna_plan *plan, const uint8_t *bytes, size_t len, float *pfinal,
                     float *pooled, float *logits)
{
    if (!plan) return LUNA_EINVAL;
    return encode(c, plan, bytes, len, NULL, pfinal, pooled, logits);
}

int luna_classify_plan(luna_ctx *c, const luna_plan *plan, const uint8_t *bytes, size_t len, float *probs,
                       float *logits)
{
    if (!c) return LUNA_EINVAL;
    int rc = encode(c, plan, bytes, len, NULL, NULL, NULL, NULL);
    if (rc) return rc;
    const float *lg = W(c, logits);
    size_t nl = (size_t)c->m->cfg.n_labels;
    if (logits) memcpy(logits, lg, nl * sizeof(float));
    if (probs) {
        memcpy(probs, lg, nl * sizeof(float));
        kn_softmax_rows(probs, 1, nl, nl);
    }
    return 0;
}

int luna_classify(luna_ctx *c, const uint8_t *bytes, size_t len, float *probs, float *logits)
{
    return luna_classify_plan(c, NULL, bytes, len, probs, logits);
}

/* ---- packs: short documents through one forward -------------------------------------------- */

/* Whether a document of n tokens joins a share of `rows` tokens and `prows` rows of P on a
 * chunk of ch rows; if so, it is counted in. */
static int pack_takes(const luna_config *cfg, size_t ch, size_t n, size_t *rows, size_t *prows)
{
    size_t lp = proj_len(cfg, n);
    if (n == 0 || (cfg->max_positions > 0 && n > (size_t)cfg->max_positions)) return 0;
    if (*rows + n > ch || *prows + lp > ch) return 0;
    *rows += n, *prows += lp;
    return 1;
}

/* The documents, in order, filling `lanes` chunks one after the other: how many fit. A
 * document that fits no chunk alone ends the pack. */
static size_t pack_fill(const luna_config *cfg, size_t ch, int lanes, const size_t *tokens, size_t count)
{
    size_t k = 0;
    for (int t = 0; t < (lanes > 1 ? lanes : 1) && k < count; t++) {
        size_t rows = 0, prows = 0, k0 = k;
        while (k < count && pack_takes(cfg, ch, tokens[k], &rows, &prows)) k++;
        if (k == k0) break;
    }
    return k;
}

size_t luna_pack_fit(const luna_model *m, int chunk, int lanes, const size_t *tokens, size_t count)
{
    if (!m || !tokens || m->cfg.task != LUNA_TASK_CLASSIFY) return 0;
    return pack_fill(&m->cfg, chunk > 0 ? (size_t)chunk : DEFAULT_CHUNK, lanes, tokens, count);
}

/* A share's buffers (pack_floats), in its lane's: X on the share's rows; P, its layer-norm Pn,
 * the queries QP, the packed context Cp, KU and VU on its rows of P; the running max and sum of
 * each document's softmax (Hp per row of P). */
typedef struct {
    float *X, *P, *Pn, *QP, *Cp, *KU, *VU, *mx, *sm;
} pack_bufs;

/* A lane's share of a pack: documents [i0, i1), rows of X and of P from 0 in its buffers. */
typedef struct {
    pack_bufs b;
    const pack_doc *pd;
    size_t i0, i1, rows, prows;
    float *probs, *logits; /* the pack's, (count, n_labels) each */
} pack_part;

/* The layers of a share of a pack, as luna_layer_forward for each of its documents: one pack and
 * one unpack per document, every row-wise product over all the share's rows. The lane's buffers
 * are the scratch (a share fits a chunk). */
static int pack_layers(luna_ctx *c, const lane_ws *w, const pack_part *s)
{
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, Hp = (size_t)cfg->Hp, kp = d / Hp, hk = d / (size_t)cfg->H;
    size_t rows = s->rows, prows = s->prows;
    int pre = cfg->normalize_before;
    const pack_bufs *b = &s->b;
    float *X = b->X, *P = b->P;
    for (int k = 0; k < cfg->layers; k++) {
        if (canceled(c)) return LUNA_ECANCELED;
        const luna_layer *ly = &c->m->layers[k];
        /* the pack: P's queries, every row's keys and values, then each document's softmax */
        if (pre) kn_layernorm(&ly->self_atten_proj_layer_norm, P, b->Pn, prows, d);
        kn_linear(&ly->pq_proj, pre ? b->Pn : P, prows, d, b->QP, d, 1.0f / sqrtf((float)kp));
        const float *xin = X;
        if (pre) {
            kn_layernorm(&ly->self_attn_layer_norm, X, w->C, rows, d);
            xin = w->C;
        }
        float *K = w->A, *V = K;
        kn_linear(cfg->tie_kv ? &ly->pc_proj : &ly->pk_proj, xin, rows, d, K, d, 1.0f);
        if (!cfg->tie_kv) {
            V = w->B;
            kn_linear(&ly->pv_proj, xin, rows, d, V, d, 1.0f);
        }
        for (size_t i = s->i0; i < s->i1; i++) {
            const pack_doc *q = &s->pd[i];
            float *acc = b->Cp + q->p0 * d, *m_i = b->mx + Hp * q->p0, *s_i = b->sm + Hp * q->p0;
            pack_start(cfg, q->lp, acc, m_i, s_i);
            pack_chunk(cfg, b->QP + q->p0 * d, K + q->x0 * d, V + q->x0 * d, q->n, q->lp, w->S, acc, m_i, s_i);
            pack_finish(cfg, q->lp, acc, s_i);
        }
        packed_to_p(cfg, ly, b->Cp, prows, P, b->KU, b->VU);
        /* the unpack and FFN: a last layer pooled from P needs none */
        if (k + 1 == cfg->layers && cfg->pooling == LUNA_POOL_P) break;
        float *T = w->A, *Q = w->B, *O = w->C;
        xin = X;
        if (pre) {
            kn_layernorm(&ly->self_attn_layer_norm, X, T, rows, d);
            xin = T;
        }
        kn_linear(&ly->q_proj, xin, rows, d, Q, d, 1.0f / sqrtf((float)hk));
        for (size_t i = s->i0; i < s->i1; i++) {
            const pack_doc *q = &s->pd[i];
            unpack_heads(cfg, Q + q->x0 * d, b->KU + q->p0 * d, b->VU + q->p0 * d, q->n, q->lp, w->S, O + q->x0 * d);
        }
        attn_out_ffn(c, ly, X, O, rows, T, w->F);
    }
    if (pre) kn_layernorm(&c->m->proj_layer_norm, P, P, prows, d);
    return 0;
}

/* Document q's pooled row, as encode pools a lone document, in the lane's buffers. */
static void pack_pool(const luna_ctx *c, const lane_ws *w, const pack_doc *q, const float *X, const float *P,
                      float *pool)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d;
    const float *x = X + q->x0 * d;
    float *T = w->A;
    switch (cfg->pooling) {
    case LUNA_POOL_CLS:
        if (cfg->normalize_before) {
            kn_layernorm(&m->layer_norm, x, T, 1, d);
            x = T;
        }
        memcpy(pool, x, d * sizeof(float));
        break;
    case LUNA_POOL_MEAN: {
        double *sum = w->macc;
        if (cfg->normalize_before) {
            kn_layernorm(&m->layer_norm, x, T, q->n, d);
            x = T;
        }
        for (size_t j = 0; j < d; j++) sum[j] = 0.0;
        for (size_t r = 0; r < q->n; r++)
            for (size_t j = 0; j < d; j++) sum[j] += x[r * d + j];
        for (size_t j = 0; j < d; j++) pool[j] = (float)(sum[j] / (double)q->n);
        break;
    }
    case LUNA_POOL_P:
        for (size_t j = 0; j < d; j++) {
            double s = 0.0;
            for (size_t r = 0; r < q->lp; r++) s += P[(q->p0 + r) * d + j];
            pool[j] = (float)(s / (double)q->lp);
        }
        break;
    }
}

/* One lane's share of a pack, from the embeddings to each document's logits and probabilities. */
static int pack_share(luna_ctx *c, int lane, void *arg)
{
    const pack_part *s = (const pack_part *)arg + lane;
    const luna_config *cfg = &c->m->cfg;
    const lane_ws *w = &c->lane[lane];
    const pack_bufs *b = &s->b;
    size_t d = (size_t)cfg->d, nl = (size_t)cfg->n_labels;
    if (s->i0 == s->i1) return 0;
    for (size_t i = s->i0; i < s->i1; i++) {
        embed_rows(c, &s->pd[i].seq, 0, s->pd[i].n, b->X + s->pd[i].x0 * d);
        embed_p(c, s->pd[i].lp, b->P + s->pd[i].p0 * d);
    }
    int rc = pack_layers(c, w, s);
    for (size_t i = s->i0; i < s->i1 && !rc; i++) {
        pack_pool(c, w, &s->pd[i], b->X, b->P, w->pooled);
        head_forward(c, w, w->pooled, w->logits);
        if (s->logits) memcpy(s->logits + i * nl, w->logits, nl * sizeof(float));
        if (s->probs) {
            memcpy(s->probs + i * nl, w->logits, nl * sizeof(float));
            kn_softmax_rows(s->probs + i * nl, 1, nl, nl);
        }
    }
    return rc;
}

/* The pack's documents, in order: each one's view (an email's unfolded subject moved from the
 * context's buffer into `subjects`: a subject's bytes are tokens of its document, and the pack
 * has a chunk of them per lane at most), its tokens and rows of P. LUNA_EINVAL when one is
 * missing, LUNA_ETOOLONG past max_positions. */
static int pack_docs(luna_ctx *c, size_t count, const uint8_t *const *docs, const size_t *lens, pack_doc *pd,
                     uint8_t *subjects, size_t room)
{
    const luna_config *cfg = &c->m->cfg;
    static const uint8_t empty[1] = {0};
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        if (!docs[i] && lens[i]) return LUNA_EINVAL;
        pack_doc *q = &pd[i];
        seq_init(&q->seq, cfg, docs[i] ? docs[i] : empty, lens[i], c->subject);
        q->n = q->seq.n, q->lp = proj_len(cfg, q->n), q->x0 = q->p0 = 0;
        if (cfg->max_positions > 0 && q->n > (size_t)cfg->max_positions) return LUNA_ETOOLONG;
        if (q->seq.run[0] == c->subject && q->seq.len[0]) {
            if (used + q->seq.len[0] > room) return LUNA_EINVAL; /* (then they do not fit) */
            memcpy(subjects + used, c->subject, q->seq.len[0]);
            q->seq.run[0] = subjects + used;
            used += q->seq.len[0];
        }
    }
    return 0;
}

/* The lanes' shares of the pack's documents: in order, each within a chunk, about as many rows
 * (of X and of P) each when `even` (else each chunk filled in turn, as luna_pack_fit counts);
 * where each document's rows start in its share's. 0 when every document found a share. */
static int pack_split(const luna_config *cfg, size_t ch, int lanes, pack_doc *pd, size_t count, int even,
                      pack_part *part)
{
    size_t total = 0, done = 0, i = 0;
    for (size_t j = 0; j < count; j++) total += pd[j].n + pd[j].lp;
    for (int t = 0; t < lanes; t++) {
        size_t goal = even ? total * (size_t)(t + 1) / (size_t)lanes : SIZE_MAX;
        pack_part *s = &part[t];
        s->i0 = s->i1 = i, s->rows = s->prows = 0;
        /* each share a document at least, and the last takes what is left */
        while (i < count && count - i > (size_t)(lanes - 1 - t) && (done < goal || s->i1 == s->i0 || t + 1 == lanes)) {
            size_t x0 = s->rows, p0 = s->prows;
            if (!pack_takes(cfg, ch, pd[i].n, &s->rows, &s->prows)) break;
            pd[i].x0 = x0, pd[i].p0 = p0;
            done += pd[i].n + pd[i].lp, s->i1 = ++i;
        }
    }
    return i == count ? 0 : -1;
}

int luna_classify_pack(luna_ctx *c, size_t count, const uint8_t *const *docs, const size_t *lens, float *probs,
                       float *logits)
{
    if (!c || !docs || !lens || count == 0) return LUNA_EINVAL;
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    if (cfg->task != LUNA_TASK_CLASSIFY) return LUNA_ETASK;
    int lanes = c->threads;
    size_t ch = (size_t)c->chunk;
    if (c->attn != LUNA_ATTN_LUNA || count > (size_t)lanes * ch) return LUNA_EINVAL;
    pack_doc *pd = (pack_doc *)(void *)W(c, pack);
    uint8_t *subjects = (uint8_t *)(c->lane[0].pack + pack_floats(cfg, ch, ch));
    c->last_alloc_bytes = 0;
    int rc = pack_docs(c, count, docs, lens, pd, subjects, (size_t)lanes * ch);
    if (rc) return rc;
    /* the shares: no more lanes than documents; even when they can be, else as the fit counts */
    if ((size_t)lanes > count) lanes = (int)count;
    pack_part part[LUNA_MAX_THREADS];
    if (pack_split(cfg, ch, lanes, pd, count, 1, part) && pack_split(cfg, ch, lanes, pd, count, 0, part))
        return LUNA_EINVAL;
    size_t d = (size_t)cfg->d;
    for (int t = 0; t < lanes; t++) {
        pack_part *s = &part[t];
        size_t pr = s->prows * d;
        pack_bufs *b = &s->b;
        b->X = c->lane[t].pack, b->P = b->X + s->rows * d;
        b->Pn = b->P + pr, b->QP = b->Pn + pr, b->Cp = b->QP + pr, b->KU = b->Cp + pr;
        b->VU = cfg->tie_kv ? b->KU : b->KU + pr, b->mx = b->KU + 2 * pr, b->sm = b->mx + (size_t)cfg->Hp * s->prows;
        s->pd = pd, s->probs = probs, s->logits = logits;
    }
    return run_lanes(c, lanes, pack_share, part);
}
