/* decoder.c - the causal Luna decoder (task causal-lm): chunked prefill and single steps over
 * a state of fixed size, and the softmax baseline decoder with a KV cache that the benchmarks
 * compare it with.
 *
 * The data flows in this order, and so does this file:
 *   states -> workspace layout -> lanes (a prefill's work on several threads) -> embedding
 *   -> causal Luna attention -> KV-cache attention -> the layer loop (prefill: whole chunks a
 *   lane, or one chunk's phases shared by the lanes; a step is a batch of rows, its row groups
 *   or its phases shared by the lanes too).
 *
 * A chunk of c tokens goes through every layer, layer L of it after layer L of the chunk
 * before: position t of layer L depends only on positions <= t of layer L-1, so nothing of the
 * sequence is kept but the state. For one head, with S_K = sum k_i^T w_i (k x l) and S_V = sum w_i^T v_i
 * (l x k) over the tokens before the chunk (the state), and rows i of the chunk at positions
 * t_i, LUNA.md's recurrence unrolls into matrix products:
 *   W = phi(C Pq^T)                                   (c, l)
 *   a = (Q S_K + tril(Q K^T) W) / t                   (c, l), then alpha = softmax over l
 *   o = (alpha S_V + tril(alpha W^T) V) / t           (c, k)
 *   S_K += K^T W,  S_V += W^T V
 * where tril keeps j <= i (token i sees itself). The cost is O(c (k l + c k + c l)) per head
 * per chunk, linear in the sequence; the state never grows. */
#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
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

const double *luna__gen_state_sums(const luna_gen_state *s, size_t *count)
{
    *count = s->sum_len;
    return s->sum;
}

size_t luna_gen_state_size(const luna_gen_state *s)
{
    if (!s) return 0;
    const luna_config *cfg = &s->m->cfg;
    if (s->kind == LUNA_ATTN_LUNA) return sizeof *s + recent_bytes(cfg) + s->sum_len * sizeof(double);
    return sizeof *s + recent_bytes(cfg) + (size_t)cfg->layers * (cfg->tie_kv ? 1u : 2u) * s->cap * (size_t)cfg->d * sizeof(float);
}

/* ---- workspace layout ---------------------------------------------------------------------- */

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* One lane's attention scratch: W and A (c, l), G (c, c), a head's state update U (k, l) or
 * (l, k). Every buffer of the decoder starts on 16 floats of a workspace aligned to 64 bytes:
 * a lane's scratch sits at the same alignment as lane 0's (whose kernels then take the same
 * path), and a column block of a multiple of 16 floats starts on a cache line. */
typedef struct {
    float *W, *A, *G, *U;
} lane_scratch;

static size_t scratch_floats(const luna_config *cfg, size_t c)
{
    size_t l = (size_t)cfg->l, k = (size_t)(cfg->d / cfg->H);
    return 2 * round16(c * l) + round16(c * c) + round16(k * l);
}

static lane_scratch scratch_of(const luna_ctx *c, int lane)
{
    size_t ch = (size_t)c->chunk, cl = round16(ch * (size_t)c->m->cfg.l);
    float *p = W(c, dL) + (size_t)lane * c->L.dL_size;
    return (lane_scratch){p, p + cl, p + 2 * cl, p + 2 * cl + round16(ch * ch)};
}

/* One lane's chunk buffers: X, T, Q, K, V, C, O, Y (c, d), F (c, ffn), SK, SV (d l), the
 * logits of one row. Lane 0's are the context's (dX ...); lanes 1 .. take theirs from dP,
 * each buffer at the alignment of lane 0's (chunk_floats, bufs_of). */
typedef struct {
    float *X, *T, *Q, *K, *V, *C, *O, *Y, *F, *SK, *SV, *logits;
} chunk_bufs;

static size_t chunk_floats(const luna_config *cfg, size_t c)
{
    size_t d = (size_t)cfg->d, l = (size_t)cfg->l;
    return 8 * round16(c * d) + round16(c * (size_t)cfg->ffn) + 2 * round16(d * l) + round16((size_t)cfg->vocab_size);
}

static chunk_bufs bufs_of(const luna_ctx *c, int lane)
{
    if (lane == 0)
        return (chunk_bufs){W(c, dX), W(c, dT), W(c, dQ), W(c, dK), W(c, dV), W(c, dC), W(c, dO),
                            W(c, dY), W(c, F),  W(c, dSK), W(c, dSV), W(c, dlogits)};
    const luna_config *cfg = &c->m->cfg;
    size_t cd = round16((size_t)c->chunk * (size_t)cfg->d), dl = round16((size_t)cfg->d * (size_t)cfg->l);
    float *p = W(c, dP) + (size_t)(lane - 1) * c->L.dP_size, *end = p + c->L.dP_size;
    chunk_bufs b;
    float **rows[] = {&b.X, &b.T, &b.Q, &b.K, &b.V, &b.C, &b.O, &b.Y};
    for (size_t i = 0; i < 8; i++) *rows[i] = p, p += cd;
    b.F = p, p += round16((size_t)c->chunk * (size_t)cfg->ffn);
    b.SK = p, p += dl;
    b.SV = p, p += dl;
    b.logits = p;
    assert(p + round16((size_t)cfg->vocab_size) == end); /* chunk_floats laid out what is carved here */
    (void)end;
    return b;
}

void luna__dec_layout(const luna_config *cfg, int chunk, luna_attn attn, int lanes, ws_layout *L, size_t *off)
{
    size_t d = (size_t)cfg->d, l = (size_t)cfg->l, c = (size_t)chunk, H = (size_t)cfg->H;
    size_t o = *off;
#define TAKE(field, count) (o = round16(o), L->field = o, o += (count))
    TAKE(dX, c * d);
    TAKE(dT, c * d);
    TAKE(dQ, c * d);
    TAKE(dK, c * d);
    TAKE(dV, c * d);
    TAKE(dC, c * d);
    TAKE(dO, c * d);
    TAKE(dY, c * d);
    TAKE(dlogits, (size_t)cfg->vocab_size);
    if (attn == LUNA_ATTN_LUNA) {
        TAKE(dSK, d * l);
        TAKE(dSV, d * l);
        L->dL_size = scratch_floats(cfg, c);
        TAKE(dL, (size_t)lanes * L->dL_size);
        L->dP_size = chunk_floats(cfg, c);
        TAKE(dP, (size_t)(lanes - 1) * L->dP_size);
    } else {
        TAKE(S, c * c);
        TAKE(rmax, c * H);
        TAKE(rsum, c * H);
    }
#undef TAKE
    *off = o;
}

/* ---- lanes ------------------------------------------------------------------------------------
 *
 * A prefill with k > 1 lanes runs on the calling thread (lane 0) and on k - 1 of the
 * context's helper threads, which live as long as the context. With two chunks or more, the
 * lanes take whole chunks in turn (pipe_item), each chunk's heads of a layer after the chunk
 * before's; a lane that the machine does not schedule then holds up the chunks after its own
 * at their next heads, for as long as it waits. With one chunk, the calling thread walks its
 * layers as one lane would, and cuts each step into a phase of items: the column blocks of the
 * linear layers, the heads, groups of 64 rows for the row-wise steps (embedding, norms). It
 * publishes a phase, takes items itself, and goes on once every item is done (lanes_phase).
 * Helpers take the items they can while a phase lasts; between phases they poll briefly, then
 * sleep. Nobody waits for a lane that has no item: on a busy machine, a helper that is not
 * scheduled costs nothing but its help (a barrier would stall every phase on it).
 *
 * Bits. An item's shape does not depend on k: a column block is a function of its layer's
 * width alone (col_blocks), a head is a head, a row a row. An item is the same calls with the
 * same arguments whichever lane runs it, so a prefill gives the same bits with any number of
 * lanes. Cutting a product by the lane count would not: OpenBLAS's results for an element
 * change with the product's shape (on Cooperlake and Haswell, an (r, 256) x (256, 256) product
 * split in two column halves differs from the whole at some r < 300; measured with 0.3.21),
 * through its small-matrix kernels and edge blocks.
 *
 * A decode step (luna_step_batch) shares the same lanes, in phases of its own: its products
 * go through kn_linear_fixed, whose every output has the bits it has in any block, so a step
 * may cut its layers by the lane count (step_linear); its rows' attention is one item a row. */

/* Waiting for a phase's items or for the next phase, a lane polls SPIN_PAUSES times with a
 * pause between polls (some microseconds: phases follow each other closely), then yields the
 * core between polls (on a busy machine the lane it waits for may share it), and after
 * SPIN_POLLS polls sleeps: a phase lasts 0.02 to 1 ms, waking a sleeping thread costs tens of
 * microseconds. */
#define SPIN_PAUSES 256
#define SPIN_POLLS 1024

/* Item `item` of a phase, on lane `lane` (whose scratch it may use). */
typedef void (*item_fn)(luna_ctx *c, int lane, size_t item, void *arg);

typedef struct {
    luna_lanes *t;
    int lane;
} helper_arg;

/* Every field below mu is read and written holding mu: plain locks and condition variables
 * are what helgrind and TSan model (C11 atomics or pthread spin locks would want annotations). */
struct luna_lanes {
    luna_ctx *c;
    pthread_t th[LUNA_MAX_THREADS];  /* th[i] runs lane i, for i = 1 .. started */
    helper_arg who[LUNA_MAX_THREADS];
    int started;
    pthread_mutex_t mu;              /* adaptive: held for a few instructions at a time */
    pthread_cond_t work;             /* helpers sleep on it: a phase was published, or quit */
    pthread_cond_t done;             /* the caller sleeps on it: a phase's last item is done */
    pthread_cond_t turn;             /* a pipeline's lanes sleep on it: a chunk's heads are done */
    int lanes;                       /* lanes 1 .. lanes - 1 may take items of the phase */
    size_t items, next, finished;    /* the phase's items, the next to take, those done */
    item_fn fn;
    void *arg;
    int quit;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* One poll of a wait that holds mu: lets mu go for a pause or a yield (see SPIN_POLLS). */
static void poll_once(luna_lanes *t, int poll)
{
    pthread_mutex_unlock(&t->mu);
    if (poll < SPIN_PAUSES) cpu_relax();
    else sched_yield();
    pthread_mutex_lock(&t->mu);
}

static void *helper_main(void *p)
{
    const helper_arg *h = p;
    luna_lanes *t = h->t;
    int polls = 0;
    pthread_mutex_lock(&t->mu);
    while (!t->quit) {
        if (h->lane < t->lanes && t->next < t->items) {
            size_t i = t->next++;
            item_fn fn = t->fn;
            void *arg = t->arg;
            pthread_mutex_unlock(&t->mu);
            fn(t->c, h->lane, i, arg);
            pthread_mutex_lock(&t->mu);
            if (++t->finished == t->items) pthread_cond_signal(&t->done);
            polls = 0;
        } else if (polls < SPIN_POLLS) {
            poll_once(t, polls++);
        } else {
            pthread_cond_wait(&t->work, &t->mu);
            polls = 0;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Runs fn on items 0 .. items - 1, here and on the helpers of lanes 1 .. lanes - 1, and
 * returns when all are done; everything an item wrote is then visible to the caller, and to
 * every item of the next phase (mu orders them). With one lane (or one item), in order, here,
 * as lane `lane`: the caller's, 0 but inside a pipeline's chunk or a step's row group, whose
 * phases run on their own lane. */
static void lanes_phase(luna_ctx *c, int lanes, int lane, item_fn fn, void *arg, size_t items)
{
    luna_lanes *t = c->team;
    if (!t || lanes <= 1 || items <= 1) {
        for (size_t i = 0; i < items; i++) fn(c, lane, i, arg);
        return;
    }
    pthread_mutex_lock(&t->mu);
    t->fn = fn, t->arg = arg, t->lanes = lanes;
    t->items = items, t->next = 0, t->finished = 0;
    pthread_cond_broadcast(&t->work);
    while (t->next < t->items) {
        size_t i = t->next++;
        pthread_mutex_unlock(&t->mu);
        fn(c, 0, i, arg);
        pthread_mutex_lock(&t->mu);
        t->finished++;
    }
    for (int polls = 0; t->finished < t->items;) { /* the items that helpers took */
        if (polls < SPIN_POLLS) poll_once(t, polls++);
        else pthread_cond_wait(&t->done, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);
}

void luna__lanes_stop(luna_ctx *c)
{
    luna_lanes *t = c->team;
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);
    for (int i = 1; i <= t->started; i++) pthread_join(t->th[i], NULL);
    pthread_cond_destroy(&t->turn);
    pthread_cond_destroy(&t->done);
    pthread_cond_destroy(&t->work);
    pthread_mutex_destroy(&t->mu);
    free(t);
    c->team = NULL;
}

int luna__lanes_start(luna_ctx *c)
{
    if (c->lanes_max <= 1 || c->attn != LUNA_ATTN_LUNA) return 0;
    luna_lanes *t = calloc(1, sizeof *t);
    if (!t) return LUNA_ENOMEM;
    t->c = c;
    pthread_mutexattr_t ma;
    if (pthread_mutexattr_init(&ma)) goto fail_mu;
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP); /* spins a little when taken */
    int bad = pthread_mutex_init(&t->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    if (bad) goto fail_mu;
    if (pthread_cond_init(&t->work, NULL)) goto fail_work;
    if (pthread_cond_init(&t->done, NULL)) goto fail_done;
    if (pthread_cond_init(&t->turn, NULL)) goto fail_turn;
    c->team = t;
    /* the helpers take no signals: those are for the threads of the program that made the
     * context (a server's handlers, a CLI's SIGINT) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 1; i < c->lanes_max; i++) {
        t->who[i] = (helper_arg){t, i};
        if (pthread_create(&t->th[i], NULL, helper_main, &t->who[i])) break;
        t->started = i;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (t->started + 1 == c->lanes_max) return 0;
    luna__lanes_stop(c); /* joins those that started */
    return LUNA_ENOMEM;
fail_turn:
    pthread_cond_destroy(&t->done);
fail_done:
    pthread_cond_destroy(&t->work);
fail_work:
    pthread_mutex_destroy(&t->mu);
fail_mu:
    free(t);
    return LUNA_ENOMEM;
}

/* Rows [*a, *b) of group g of a chunk's `rows`: groups of 64 rows, because the sinusoid
 * restarts its rotation every 64 rows of a call (luna__add_sinusoid), so a group's rows get
 * the bits that one call over the chunk gives them. */
#define ROW_GROUP 64
static size_t row_groups(size_t rows) { return (rows + ROW_GROUP - 1) / ROW_GROUP; }
static void row_span(size_t rows, size_t g, size_t *a, size_t *b)
{
    *a = g * ROW_GROUP;
    *b = *a + ROW_GROUP < rows ? *a + ROW_GROUP : rows;
}

/* The column blocks of a linear layer with n outputs: up to 4 blocks of at least 128 columns,
 * so that 2 or 4 lanes share a layer evenly. A function of n alone (see "Bits" above). Each
 * block costs another pass over the input rows inside sgemm: 1 lane is some 3% slower with 2
 * blocks per 256 columns than with 1, 9% with 4 (Cooperlake, 256 rows). */
static size_t col_blocks(size_t n)
{
    size_t nb = n / 128;
    return nb < 1 ? 1 : nb > 4 ? 4 : nb;
}

/* Columns [*j0, *j1) of block b of nb over n: equal widths, a multiple of 16 (a block starts
 * on a cache line), the last block taking the rest. */
static void col_span(size_t n, size_t nb, size_t b, size_t *j0, size_t *j1)
{
    size_t w = (n / nb) & ~(size_t)15;
    *j0 = b * w;
    *j1 = b + 1 == nb ? n : *j0 + w;
}

/* y (rows, L->out; stride ldy) = alpha x L^T + b, then the activation `act` (act_on), then
 * res += y (res non-NULL, stride ldy), one column block at a time. */
typedef struct {
    const luna_linear *L;
    const float *x;
    size_t ldx;
    float *y;
    size_t ldy;
    float alpha;
    int act_on;
    luna_act act;
    float *res;
} lin_job;

/* The column blocks of the layers j[0 .. count), numbered layer after layer. */
static size_t lin_items(const lin_job *j, int count)
{
    size_t items = 0;
    for (int q = 0; q < count; q++) items += col_blocks((size_t)j[q].L->out);
    return items;
}

/* Block b of nb of one layer: through kn_linear_fixed (a decode step's rows) or kn_linear. */
static void lin_block(const lin_job *j, size_t rows, size_t nb, size_t b, int fixed)
{
    const luna_linear *L = j->L;
    size_t n = (size_t)L->out, in = (size_t)L->in, j0, j1;
    col_span(n, nb, b, &j0, &j1);
    /* a step's layers are packed at load (luna_decode_linears): without panels the fixed-order
     * product would take its slow portable path */
    assert(!fixed || L->wp != NULL);
    luna_linear part = {L->w + j0 * in, L->b ? L->b + j0 : NULL, (int)(j1 - j0), L->in,
                        L->wp ? L->wp + j0 * in : NULL}; /* j0 is a multiple of 16: a panel's start */
    if (!fixed && j->res && !j->act_on) { /* a prefill's residual: straight into it */
        kn_linear_add(&part, j->x, rows, j->ldx, j->res + j0, j->ldy, j->alpha);
        return;
    }
    float *y = j->y + j0;
    (fixed ? kn_linear_fixed : kn_linear)(&part, j->x, rows, j->ldx, y, j->ldy, j->alpha);
    for (size_t r = 0; r < rows; r++) {
        if (j->act_on) kn_act(j->act, y + r * j->ldy, j1 - j0);
        if (j->res) kn_add(j->res + j0 + r * j->ldy, y + r * j->ldy, j1 - j0);
    }
}

/* Block `item` of lin_items' numbering. */
static void lin_item(const lin_job *j, size_t rows, size_t item)
{
    while (item >= col_blocks((size_t)j->L->out)) item -= col_blocks((size_t)j->L->out), j++;
    lin_block(j, rows, col_blocks((size_t)j->L->out), item, 0);
}

/* ---- embedding ------------------------------------------------------------------------------- */

/* x (rows, d) = the embeddings of tokens r0 .. r0 + rows of the call's tokens tok, whose
 * first sits at position t (tokens the state consumed before the call): embed_tokens(tok) +
 * the embed_ngrams rows of the ngram_embed - 1 tokens before each + the hashed rows of the
 * n-grams of 2 .. hash_ngrams tokens ending at each, from the call's tokens or the state's
 * recent ones; times embed_scale, plus the position (+ emb_layer_norm). r0 is a multiple of
 * 64 (row_span). The state is only read: its recent tokens move on once, at the call's end
 * (dec_remember), so that the chunks of a call may be embedded in any order. */
static void dec_embed(const luna_ctx *c, const luna_gen_state *s, const int32_t *tok, size_t r0, size_t rows,
                      uint64_t t, float *x)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, first = (size_t)cfg->pad_id + 1 + (size_t)t + r0;
    size_t K = (size_t)cfg->ngram_embed, V = (size_t)cfg->vocab_size;
    for (size_t i = 0; i < rows; i++) {
        size_t r = r0 + i; /* the row in the call */
        const float *e = m->embed_tokens + (size_t)tok[r] * d;
        float *xr = x + i * d;
        memcpy(xr, e, d * sizeof(float));
        for (size_t b = 1; b < K && b <= t + r; b++) { /* the token b back: none before the first */
            int32_t prev = b <= r ? tok[r - b] : s->recent[b - r - 1];
            kn_add(xr, m->embed_ngrams + ((b - 1) * V + (size_t)prev) * d, d);
        }
        if (cfg->hash_ngrams > 1) {
            int32_t win[LUNA_MAX_NGRAM];
            size_t M = (size_t)cfg->hash_ngrams, have = M < t + r + 1 ? M : (size_t)t + r + 1;
            for (size_t b = 0; b < have; b++) win[b] = b <= r ? tok[r - b] : s->recent[b - r - 1];
            luna__add_hash_ngrams(m, win, have, xr);
        }
        for (size_t j = 0; j < d; j++) xr[j] *= cfg->embed_scale;
        if (cfg->positions == LUNA_POS_LEARNED) kn_add(xr, m->embed_positions + (first + i) * d, d);
    }
    if (cfg->positions == LUNA_POS_SINUSOIDAL) luna__add_sinusoid(c, x, first, rows);
    if (cfg->layernorm_embedding) kn_layernorm(&m->emb_layer_norm, x, x, rows, d);
}

/* The chunk's last tokens become the state's recent ones: recent[i] is the token i + 1 back
 * from the next one, the chunk's, then the older ones. */
static void dec_remember(luna_gen_state *s, const int32_t *tok, size_t rows)
{
    size_t keep = history(&s->m->cfg);
    if (keep == 0) return;
    size_t shift = rows < keep ? rows : keep;
    memmove(s->recent + shift, s->recent, (keep - shift) * sizeof(int32_t));
    for (size_t i = 0; i < shift; i++) s->recent[i] = tok[rows - 1 - i];
}

/* Zeroes the strict upper triangle of the (rows, rows) matrix G: row i keeps columns j <= i. */
static void tril(float *G, size_t rows)
{
    for (size_t i = 0; i + 1 < rows; i++) memset(G + i * rows + i + 1, 0, (rows - i - 1) * sizeof(float));
}

/* ---- causal Luna attention ------------------------------------------------------------------ */

/* The attention of layer li, head h, for `rows` rows whose projections are Q, K, V, C (row
 * stride d) at positions t0 + 1 .. t0 + rows, into the head's columns of O (stride d); the
 * head's part of the state's sums advances over them. w is the lane's scratch, SK and SV the
 * chunk's float copies of the sums (the head's part of each is its own). Heads share nothing
 * but read-only inputs, so lanes run them side by side. */
static void causal_head(const luna_ctx *c, int li, luna_gen_state *s, const float *Q, const float *K,
                        const float *V, const float *C, size_t rows, uint64_t t0, float *O, size_t h,
                        const lane_scratch *w, float *SK, float *SV)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, l = (size_t)cfg->l;
    int tied = cfg->tie_kv;
    const float *Pq = m->pq + (size_t)li * l * d;
    double *SK64 = s->sum + (size_t)li * sums_per_layer(cfg), *sk = SK64 + h * k * l;
    double *sv = tied ? NULL : SK64 + d * l + h * l * k; /* tied: the sums hold S_K alone */
    float *SKh = SK + h * k * l, *SVh = SV + h * l * k;
    float *Wt = w->W, *A = w->A, *G = w->G, *U = w->U;
    for (size_t i = 0; i < k * l; i++) SKh[i] = (float)sk[i];
    if (!tied)
        for (size_t i = 0; i < l * k; i++) SVh[i] = (float)sv[i];
    const float *Ch = C + h * k, *Qh = Q + h * k, *Kh = K + h * k, *Vh = V + h * k;
    float *Oh = O + h * k;
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
    for (size_t i = 0; i < k * l; i++) sk[i] += U[i];
    if (!tied) {
        kn_gemm_tn(l, k, rows, 1.0f, Wt, l, Vh, d, 0.0f, U, k);
        for (size_t i = 0; i < l * k; i++) sv[i] += U[i];
    }
}

/* causal_head for one row and every head, written out as loops in one fixed order: a decode
 * step is O(d l) of small products per layer, where a BLAS call's overhead would cost more
 * than the work. The same arithmetic as causal_head's up to the order of the sums. The state's
 * rows (S_K's k rows of l sums) are gone over twice, in blocks of 8 sums held as GCC vectors
 * (AVX2 registers at the Makefile's -march, SSE pairs at plain x86-64: the same operations in
 * the same order either way, so the same bits): once for q S_K, once for alpha S_K^T and the
 * update together. Each row's 8 lanes are summed by a fixed tree, and the sums past the last
 * block of 8 (l not a multiple of 8) one after another after it. Meanwhile the next head's sums
 * (after the last head, the first of `next`, the state that this lane likely takes next) are
 * prefetched: with 16 rows or more, their states (256 KB each for the bundled LM) no longer
 * fit in L2, and waiting for them took a third of this function's time. */
typedef float row_f8 __attribute__((vector_size(32)));
typedef double row_d4 __attribute__((vector_size(32)));

/* The helpers take and give vectors through pointers: by value, a 32-byte vector's calling
 * convention would depend on whether the build enables AVX (gcc's -Wpsabi). */
static inline __attribute__((always_inline)) void row_load_f(row_f8 *v, const float *p) { memcpy(v, p, sizeof *v); }

/* 8 sums from the state, rounded to float */
static inline __attribute__((always_inline)) void row_load_d(row_f8 *v, const double *p)
{
    row_d4 lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 4, sizeof hi);
    row_f8 f = {(float)lo[0], (float)lo[1], (float)lo[2], (float)lo[3],
                (float)hi[0], (float)hi[1], (float)hi[2], (float)hi[3]};
    *v = f;
}

/* p += the 8 float products, each widened to double */
static inline __attribute__((always_inline)) void row_add_d(double *p, const row_f8 *v)
{
    row_d4 lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 4, sizeof hi);
    row_d4 vl = {(*v)[0], (*v)[1], (*v)[2], (*v)[3]}, vh = {(*v)[4], (*v)[5], (*v)[6], (*v)[7]};
    lo += vl;
    hi += vh;
    memcpy(p, &lo, sizeof lo);
    memcpy(p + 4, &hi, sizeof hi);
}

/* y[0 .. l) += s x, x of floats (xf) or of sums rounded to float (xd; the other NULL): 8 at a
 * time, then one by one past the last 8 (l8 = l rounded down to 8) */
static inline __attribute__((always_inline)) void row_axpy(float *y, float s, const float *xf, const double *xd,
                                                           size_t l, size_t l8)
{
    size_t j = 0;
    for (; j < l8; j += 8) {
        row_f8 acc, x;
        row_load_f(&acc, y + j);
        if (xf) row_load_f(&x, xf + j);
        else row_load_d(&x, xd + j);
        acc += s * x;
        memcpy(y + j, &acc, sizeof acc);
    }
    for (; j < l; j++) y[j] += s * (xf ? xf[j] : (float)xd[j]);
}

/* (v0 + v4) + (v2 + v6) + ((v1 + v5) + (v3 + v7)), as a vector's halves fold */
static inline __attribute__((always_inline)) float row_fold(const row_f8 *v)
{
    float a0 = (*v)[0] + (*v)[4], a1 = (*v)[1] + (*v)[5], a2 = (*v)[2] + (*v)[6], a3 = (*v)[3] + (*v)[7];
    return (a0 + a2) + (a1 + a3);
}

static void causal_row(const luna_ctx *c, int lane, int li, luna_gen_state *s, const float *q, const float *kk,
                       const float *v, const float *cc, uint64_t t0, float *o, const double *next)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, H = (size_t)cfg->H, k = d / H, l = (size_t)cfg->l, l8 = l / 8 * 8;
    int tied = cfg->tie_kv;
    const float *Pqt = m->pqt + (size_t)li * l * d;
    double *SK64 = s->sum + (size_t)li * sums_per_layer(cfg);
    lane_scratch ls = scratch_of(c, lane);
    float *w = ls.W, *a = ls.A;
    float inv_t = (float)(1.0 / (double)(t0 + 1));
    for (size_t h = 0; h < H; h++) {
        const float *qh = q + h * k, *kh = kk + h * k, *vh = v + h * k, *ch = cc + h * k;
        double *sk = SK64 + h * k * l, *sv = tied ? NULL : SK64 + d * l + h * l * k;
        float *oh = o + h * k;
        /* w = phi(c Pq^T): Pq^T's rows (pqt), scaled by c, in turn */
        const float *pt = Pqt + h * k * l;
        for (size_t j = 0; j < l; j++) w[j] = 0.0f;
        for (size_t e = 0; e < k; e++) row_axpy(w, ch[e], pt + e * l, NULL, l, l8);
        kn_phi(cfg->causal_phi, w, l);
        /* a = (q S_K + (q . k) w) / t, alpha = softmax(a): S_K's rows in turn, scaled by q */
        float qk = kn_dot(qh, kh, k);
        for (size_t j = 0; j < l; j++) a[j] = 0.0f;
        for (size_t i = 0; i < k; i++) row_axpy(a, qh[i], NULL, sk + i * l, l, l8);
        for (size_t j = 0; j < l; j++) a[j] = (a[j] + qk * w[j]) * inv_t;
        kn_softmax_rows(a, 1, l, l);
        /* o = (alpha S_V + (alpha . w) v) / t; tied, S_V is S_K^T: row i of S_K gives o_i, and
         * then takes its update, k_i w (products in float, summed in double) */
        float aw = kn_dot(a, w, l);
        if (tied) {
            /* the next head's sums (or `next`'s first head) on their way to L1 meanwhile */
            const double *pf = h + 1 < H ? sk + k * l : next;
            for (size_t i = 0; i < k; i++) {
                double *row = sk + i * l;
                float ki = kh[i];
                row_f8 p = {0};
                if (pf)
                    for (size_t b = 0; b < l; b += 8) __builtin_prefetch(pf + i * l + b, 1, 3);
                size_t j = 0;
                for (; j < l8; j += 8) {
                    row_f8 av, x, wv;
                    row_load_f(&av, a + j), row_load_d(&x, row + j), row_load_f(&wv, w + j);
                    p += av * x;
                    wv = ki * wv;
                    row_add_d(row + j, &wv);
                }
                float dot = row_fold(&p);
                for (; j < l; j++) {
                    dot += a[j] * (float)row[j];
                    row[j] += (double)(ki * w[j]);
                }
                oh[i] = (dot + aw * vh[i]) * inv_t;
            }
            continue;
        }
        for (size_t i = 0; i < k; i++) oh[i] = 0.0f;
        for (size_t j = 0; j < l; j++) {
            const double *row = sv + j * k;
            float aj = a[j];
            for (size_t i = 0; i < k; i++) oh[i] += aj * (float)row[i];
        }
        for (size_t i = 0; i < k; i++) oh[i] = (oh[i] + aw * vh[i]) * inv_t;
        /* the state: S_K += k^T w, S_V += w^T v, products in float, summed in double */
        for (size_t i = 0; i < k; i++) {
            double *row = sk + i * l;
            float ki = kh[i];
            for (size_t j = 0; j < l; j++) row[j] += (double)(ki * w[j]);
        }
        for (size_t j = 0; j < l; j++) {
            double *row = sv + j * k;
            float wj = w[j];
            for (size_t i = 0; i < k; i++) row[i] += (double)(wj * vh[i]);
        }
    }
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

/* A prefill's steps, each a phase of items (see "lanes"). */
typedef enum { P_EMBED, P_PROJ, P_HEADS, P_LINEAR, P_NORM } prefill_step;

/* What the lanes of one prefill call share. In a pipeline (pipe), every field below `pipe`
 * is read and written holding the team's mu. */
typedef struct {
    luna_gen_state *s;
    const int32_t *tokens;
    size_t n;
    float *logits;
    int all;
    uint64_t t0;            /* the state's tokens before the call */
    int pipe;               /* the lanes run whole chunks (pipe_item) */
    size_t next;            /* the next chunk to take */
    size_t done;            /* the chunks taken and finished (a prefix of them: see pipe_item) */
    size_t heads[LUNA_MAX_LAYERS]; /* the chunks whose heads of layer li have run */
    int stop;               /* canceled: no chunk is taken after it */
} prefill_job;

/* One chunk in progress: set by the lane that runs it between phases, read by the phase's
 * items. */
typedef struct {
    prefill_job *job;
    chunk_bufs b;           /* its lane's buffers */
    int lane;               /* the lane that runs it (a pipeline's; a phase's items run on any) */
    prefill_step step;
    int li;                 /* the layer */
    size_t q, r0, rows;     /* the chunk: its number in the call, its first token in tokens, its rows */
    uint64_t t;             /* tokens consumed before the chunk */
    lin_job lin[4];         /* P_PROJ, P_LINEAR: the layers whose column blocks are the items */
    const float *xin;       /* P_HEADS: the layer's input (phi's rows without pc_proj) */
    const luna_norm *norm;  /* P_NORM: rows of X through norm into out; P_EMBED: after it */
    float *out;
} chunk_job;

static void prefill_item(luna_ctx *c, int lane, size_t item, void *arg)
{
    const chunk_job *cj = arg;
    const prefill_job *job = cj->job;
    const luna_config *cfg = &c->m->cfg;
    size_t d = (size_t)cfg->d, a, b;
    switch (cj->step) {
    case P_EMBED:
        row_span(cj->rows, item, &a, &b);
        dec_embed(c, job->s, job->tokens, cj->r0 + a, b - a, job->t0, cj->b.X + a * d);
        if (cj->norm) kn_layernorm(cj->norm, cj->b.X + a * d, cj->out + a * d, b - a, d);
        break;
    case P_NORM:
        row_span(cj->rows, item, &a, &b);
        kn_layernorm(cj->norm, cj->b.X + a * d, cj->out + a * d, b - a, d);
        break;
    case P_PROJ:
    case P_LINEAR:
        lin_item(cj->lin, cj->rows, item);
        break;
    case P_HEADS: {
        lane_scratch w = scratch_of(c, lane);
        const float *K = cj->b.K, *V = cfg->tie_kv ? K : cj->b.V;
        const float *C = cfg->causal_pc_proj ? cj->b.C : cj->xin;
        causal_head(c, cj->li, job->s, cj->b.Q, K, V, C, cj->rows, cj->t, cj->b.O, item, &w, cj->b.SK, cj->b.SV);
        break;
    }
    }
}

/* Runs one step of the chunk: as a phase on `lanes` lanes, or (one lane) here on its own. */
static void chunk_phase(luna_ctx *c, int lanes, chunk_job *cj, prefill_step step, size_t items)
{
    cj->step = step;
    lanes_phase(c, lanes, cj->lane, prefill_item, cj, items);
}

/* Sets the chunk's linear layers (up to 4) and runs their column blocks as one step. */
static void linear_phase(luna_ctx *c, int lanes, chunk_job *cj, prefill_step step, const lin_job *lin, int count)
{
    memcpy(cj->lin, lin, (size_t)count * sizeof *lin);
    chunk_phase(c, lanes, cj, step, lin_items(lin, count));
}

/* Rows of X through `norm` into out (X itself, or T) as one step. */
static void norm_phase(luna_ctx *c, int lanes, chunk_job *cj, const luna_norm *norm, float *out)
{
    cj->norm = norm;
    cj->out = out;
    chunk_phase(c, lanes, cj, P_NORM, row_groups(cj->rows));
}

/* In a pipeline, the heads of layer li run chunk after chunk: chunk q's wait for chunk q - 1's
 * (the state's sums of layer li after it), and then let q + 1's go. */
static void heads_turn_wait(luna_ctx *c, chunk_job *cj)
{
    prefill_job *job = cj->job;
    if (!job->pipe) return;
    luna_lanes *t = c->team;
    pthread_mutex_lock(&t->mu);
    for (int polls = 0; job->heads[cj->li] < cj->q;) {
        if (polls < SPIN_POLLS) poll_once(t, polls++);
        else pthread_cond_wait(&t->turn, &t->mu);
    }
    pthread_mutex_unlock(&t->mu);
}

static void heads_turn_pass(luna_ctx *c, chunk_job *cj)
{
    prefill_job *job = cj->job;
    if (!job->pipe) return;
    luna_lanes *t = c->team;
    pthread_mutex_lock(&t->mu);
    job->heads[cj->li] = cj->q + 1;
    pthread_cond_broadcast(&t->turn);
    pthread_mutex_unlock(&t->mu);
}

/* The chunk cj (its q, r0, rows, t and buffers set) through every layer, each step a phase on
 * `lanes` lanes (one: on the chunk's own): the embeddings (and the first norm), the
 * projections, the heads, out_proj, the norm, fc1, fc2, the norm; then its logits. */
static void chunk_run(luna_ctx *c, int lanes, chunk_job *cj)
{
    prefill_job *job = cj->job;
    luna_gen_state *s = job->s;
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    int luna = c->attn == LUNA_ATTN_LUNA, pre = cfg->normalize_before, tied = cfg->tie_kv;
    size_t d = (size_t)cfg->d, V = (size_t)cfg->vocab_size, ffn = (size_t)cfg->ffn, k = d / (size_t)cfg->H;
    size_t rows = cj->rows;
    const chunk_bufs *B = &cj->b;
    float *X = B->X, *T = B->T, *O = B->O, *Y = B->Y, *F = B->F;
    const float *xin = pre ? T : X;
    cj->xin = xin;
    cj->norm = pre ? &m->layers[0].self_attn_layer_norm : NULL;
    cj->out = T;
    chunk_phase(c, lanes, cj, P_EMBED, row_groups(rows));
    for (int li = 0; li < cfg->layers; li++) {
        const luna_layer *ly = &m->layers[li];
        cj->li = li;
        if (luna) {
            lin_job proj[4] = {{&ly->q_proj, xin, d, B->Q, d, 1.0f / sqrtf((float)k), 0, 0, NULL},
                               {tied ? &ly->c_proj : &ly->k_proj, xin, d, B->K, d, 1.0f, 0, 0, NULL}};
            int np = 2;
            if (!tied) proj[np++] = (lin_job){&ly->v_proj, xin, d, B->V, d, 1.0f, 0, 0, NULL};
            if (cfg->causal_pc_proj) proj[np++] = (lin_job){&ly->pc_proj, xin, d, B->C, d, 1.0f, 0, 0, NULL};
            linear_phase(c, lanes, cj, P_PROJ, proj, np);
            heads_turn_wait(c, cj);
            chunk_phase(c, lanes, cj, P_HEADS, (size_t)cfg->H);
            heads_turn_pass(c, cj);
        } else {
            kv_attn(c, li, s, xin, rows, cj->t, O); /* a KV context has one lane */
        }
        /* X += out_proj(O); post-norm X = LN(X), pre-norm T = LN(X) for the FFN */
        lin_job out = {&ly->out_proj, O, d, Y, d, 1.0f, 0, 0, X};
        linear_phase(c, lanes, cj, P_LINEAR, &out, 1);
        norm_phase(c, lanes, cj, pre ? &ly->final_layer_norm : &ly->self_attn_layer_norm, pre ? T : X);
        /* X += fc2(act(fc1(x))) */
        lin_job fc1 = {&ly->fc1, xin, d, F, ffn, 1.0f, 1, cfg->activation, NULL};
        linear_phase(c, lanes, cj, P_LINEAR, &fc1, 1);
        lin_job fc2 = {&ly->fc2, F, ffn, Y, d, 1.0f, 0, 0, X};
        linear_phase(c, lanes, cj, P_LINEAR, &fc2, 1);
        /* post-norm X = LN(X); pre-norm the next layer's input T, or the final norm of X */
        if (!pre) norm_phase(c, lanes, cj, &ly->final_layer_norm, X);
        else if (li + 1 < cfg->layers) norm_phase(c, lanes, cj, &m->layers[li + 1].self_attn_layer_norm, T);
        else norm_phase(c, lanes, cj, &m->layer_norm, X);
    }
    if (job->logits && job->all) {
        lin_job lg = {&m->output_projection, X, d, job->logits + cj->r0 * V, V, 1.0f, 0, 0, NULL};
        linear_phase(c, lanes, cj, P_LINEAR, &lg, 1);
    } else if (job->logits && cj->r0 + rows == job->n) {
        kn_linear(&m->output_projection, X + (rows - 1) * d, 1, d, B->logits, V, 1.0f);
        memcpy(job->logits, B->logits, V * sizeof(float));
    }
}

static size_t chunk_rows(const prefill_job *job, size_t ch, size_t q)
{
    size_t r0 = q * ch;
    return job->n - r0 < ch ? job->n - r0 : ch;
}

/* Chunk after chunk on `lanes` lanes, each chunk's steps split across them (see "lanes");
 * returns the tokens prefilled (fewer than n when canceled). */
static size_t prefill_phased(luna_ctx *c, int lanes, prefill_job *job)
{
    size_t ch = (size_t)c->chunk, r0 = 0;
    for (size_t q = 0; r0 < job->n; q++, r0 += ch) {
        if (canceled(c)) break;
        chunk_job cj = {.job = job, .b = bufs_of(c, 0), .lane = 0, .q = q, .r0 = r0, .rows = chunk_rows(job, ch, q),
                        .t = job->t0 + r0};
        chunk_run(c, lanes, &cj);
    }
    return r0 < job->n ? r0 : job->n;
}

/* A lane of a pipeline: takes the next chunk, runs it whole on its own buffers, and again,
 * until none is left. Chunk q's heads of layer li wait for q - 1's (heads_turn_wait), and
 * nothing else of it depends on another chunk; so the lanes run side by side, each a layer or
 * so behind the one before, and each chunk's every step is the same call on the same shapes
 * as in prefill_phased: the same bits. Chunks are taken in order and a taken chunk is always
 * finished (a lane that sees the cancel flag stops the taking), so the chunks done are the
 * first `done` of the call. */
static void pipe_item(luna_ctx *c, int lane, size_t item, void *arg)
{
    (void)item;
    prefill_job *job = arg;
    luna_lanes *t = c->team;
    size_t ch = (size_t)c->chunk, chunks = (job->n + ch - 1) / ch;
    for (;;) {
        int stop = canceled(c);
        pthread_mutex_lock(&t->mu);
        if (stop) job->stop = 1;
        size_t q = job->stop || job->next == chunks ? SIZE_MAX : job->next++;
        pthread_mutex_unlock(&t->mu);
        if (q == SIZE_MAX) return;
        chunk_job cj = {.job = job, .b = bufs_of(c, lane), .lane = lane, .q = q, .r0 = q * ch,
                        .rows = chunk_rows(job, ch, q), .t = job->t0 + q * ch};
        chunk_run(c, 1, &cj);
        pthread_mutex_lock(&t->mu);
        job->done++;
        pthread_mutex_unlock(&t->mu);
    }
}

/* The prefill of job->n tokens on `lanes` lanes. With two chunks or more and a lane for each,
 * the lanes run whole chunks side by side (pipe_item); else each chunk's steps are split
 * across them (prefill_phased). The state's recent tokens and count move on once, at the end,
 * by the tokens prefilled. */
static int prefill_run(luna_ctx *c, int lanes, prefill_job *job)
{
    size_t ch = (size_t)c->chunk, chunks = (job->n + ch - 1) / ch, done;
    int pipe_lanes = lanes < (int)chunks ? lanes : (int)chunks;
    if (canceled(c)) { /* before a helper still polling from the last phase takes a chunk */
        done = 0;
    } else if (c->team && pipe_lanes > 1) {
        job->pipe = 1;
        lanes_phase(c, pipe_lanes, 0, pipe_item, job, (size_t)pipe_lanes);
        done = job->done * ch < job->n ? job->done * ch : job->n;
    } else {
        done = prefill_phased(c, lanes, job);
    }
    dec_remember(job->s, job->tokens, done);
    job->s->t = job->t0 + done;
    return done < job->n ? LUNA_ECANCELED : 0;
}

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
    prefill_job job = {.s = s, .tokens = tokens, .n = n, .logits = logits, .all = all, .t0 = s->t};
    /* a single row is not worth waking the helpers for (the bits are the same either way) */
    return prefill_run(c, n > 1 ? c->threads : 1, &job);
}

/* A decode step's phases (see "lanes"): the column blocks of its linear layers, through
 * kn_linear_fixed, whose every output has the bits it has in any block, so a step may cut
 * its layers into as many blocks as it has lanes; and its rows' attention, a row an item.
 * With STEP_ROWS_PER_LANE rows a lane or more, a step cuts its rows instead: each lane takes
 * a group of rows through every layer on its own, with no phase between (step_rows). Each
 * group reads all the weights once (the lanes read them twice over, where the columns share
 * them out), but the 21 handoffs of the column blocks are gone: on 2 lanes here (AMD EPYC),
 * 16 rows took 0.95 and 32 rows 0.85 of the columns' time (medians of 3 alternated runs of
 * luna bench-batch --lanes 2). A row's bits are the same either way (kn_linear_fixed's rows
 * do not depend on their block). */
#define STEP_ROWS_PER_LANE 8

typedef enum { S_LINEAR, S_ROWS } step_phase;

typedef struct {
    luna_gen_state *const *s;
    step_phase phase;
    size_t B;           /* rows */
    size_t blocks;      /* S_LINEAR: column blocks per layer (step_linear) */
    lin_job lin[4];     /* S_LINEAR: the layers whose column blocks are the items */
    int li;             /* S_ROWS: the layer, and the rows' inputs */
    const float *Q, *K, *V, *C;
    float *O;
    size_t stride;      /* S_ROWS: rows between the ones that a lane takes in turn (its next) */
} step_job;

static void step_item(luna_ctx *c, int lane, size_t item, void *arg)
{
    const step_job *j = arg;
    if (j->phase == S_LINEAR) {
        lin_block(&j->lin[item / j->blocks], j->B, j->blocks, item % j->blocks, 1);
        return;
    }
    size_t d = (size_t)c->m->cfg.d, o = item * d, nx = item + j->stride;
    luna_gen_state *s = j->s[item];
    const double *next = nx < j->B ? j->s[nx]->sum + (size_t)j->li * sums_per_layer(&c->m->cfg) : NULL;
    causal_row(c, lane, j->li, s, j->Q + o, j->K + o, j->V + o, j->C + o, s->t, j->O + o, next);
}

/* The layers lin[0 .. count), of as many outputs each, as one phase of column blocks: two a
 * lane, so that a lane the machine slows leaves its share to the others, of 16 columns at
 * least (col_span). */
static void step_linear(luna_ctx *c, int lanes, int lane, step_job *j, const lin_job *lin, int count)
{
    size_t n = (size_t)lin[0].L->out, nb = lanes > 1 ? 2 * (size_t)lanes : 1;
    j->phase = S_LINEAR;
    j->blocks = nb < n / 16 ? nb : n / 16 ? n / 16 : 1;
    memcpy(j->lin, lin, (size_t)count * sizeof *lin);
    lanes_phase(c, lanes, lane, step_item, j, (size_t)count * j->blocks);
}

/* Rows r0 .. r0 + B of a step (their states s, tokens and logits rows, NULL for none) through
 * every layer, in rows r0 .. of the context's buffers: the column blocks of its layers on
 * `lanes` lanes, or (one lane) all of it here, on lane `lane`. */
static void step_run(luna_ctx *c, int lanes, int lane, luna_gen_state *const *s, const int32_t *tokens, size_t B,
                     float *logits, size_t r0)
{
    const luna_model *m = c->m;
    const luna_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d, V = (size_t)cfg->vocab_size, ffn = (size_t)cfg->ffn;
    size_t k = d / (size_t)cfg->H;
    int pre = cfg->normalize_before, tied = cfg->tie_kv;
    float *X = W(c, dX) + r0 * d, *T = W(c, dT) + r0 * d, *O = W(c, dO) + r0 * d, *Y = W(c, dY) + r0 * d;
    float *Q = W(c, dQ) + r0 * d, *K = W(c, dK) + r0 * d, *Vb = W(c, dV) + r0 * d, *C = W(c, dC) + r0 * d;
    float *F = W(c, F) + r0 * ffn;
    const float *xin = pre ? T : X;
    /* the norms and embeddings, a few microseconds, stay on this thread between phases */
    step_job job = {.s = s, .B = B, .O = O, .Q = Q, .K = K, .V = tied ? K : Vb, .stride = lanes > 1 ? (size_t)lanes : 1};
    job.C = cfg->causal_pc_proj ? C : xin;
    for (size_t b = 0; b < B; b++) {
        dec_embed(c, s[b], tokens + b, 0, 1, s[b]->t, X + b * d);
        dec_remember(s[b], tokens + b, 1);
    }
    for (int li = 0; li < cfg->layers; li++) {
        const luna_layer *ly = &m->layers[li];
        if (pre) kn_layernorm(&ly->self_attn_layer_norm, X, T, B, d);
        /* the weights once for every row; each row's attention against its own state */
        lin_job proj[4] = {{&ly->q_proj, xin, d, Q, d, 1.0f / sqrtf((float)k), 0, 0, NULL},
                           {tied ? &ly->c_proj : &ly->k_proj, xin, d, K, d, 1.0f, 0, 0, NULL}};
        int np = 2;
        if (!tied) proj[np++] = (lin_job){&ly->v_proj, xin, d, Vb, d, 1.0f, 0, 0, NULL};
        if (cfg->causal_pc_proj) proj[np++] = (lin_job){&ly->pc_proj, xin, d, C, d, 1.0f, 0, 0, NULL};
        step_linear(c, lanes, lane, &job, proj, np);
        job.phase = S_ROWS;
        job.li = li;
        lanes_phase(c, lanes, lane, step_item, &job, B);
        /* as encoder.c's attn_out_ffn: X += out_proj(O), the norm, X += fc2(act(fc1(x))), the norm */
        lin_job out = {&ly->out_proj, O, d, Y, d, 1.0f, 0, 0, X};
        step_linear(c, lanes, lane, &job, &out, 1);
        if (!pre) kn_layernorm(&ly->self_attn_layer_norm, X, X, B, d);
        else kn_layernorm(&ly->final_layer_norm, X, T, B, d);
        lin_job fc1 = {&ly->fc1, xin, d, F, ffn, 1.0f, 1, cfg->activation, NULL};
        step_linear(c, lanes, lane, &job, &fc1, 1);
        lin_job fc2 = {&ly->fc2, F, ffn, Y, d, 1.0f, 0, 0, X};
        step_linear(c, lanes, lane, &job, &fc2, 1);
        if (!pre) kn_layernorm(&ly->final_layer_norm, X, X, B, d);
    }
    for (size_t b = 0; b < B; b++) s[b]->t += 1;
    if (pre) kn_layernorm(&m->layer_norm, X, X, B, d);
    if (logits) {
        lin_job lg = {&m->output_projection, X, d, logits, V, 1.0f, 0, 0, NULL};
        step_linear(c, lanes, lane, &job, &lg, 1);
    }
}

/* A step cut by rows (see STEP_ROWS_PER_LANE): group `item` of `groups` (as even as they go),
 * whole, on its lane. */
typedef struct {
    luna_gen_state *const *s;
    const int32_t *tokens;
    size_t B, groups;
    float *logits;
} step_rows_job;

static void step_rows(luna_ctx *c, int lane, size_t item, void *arg)
{
    const step_rows_job *j = arg;
    size_t r0 = item * j->B / j->groups, rows = (item + 1) * j->B / j->groups - r0;
    size_t V = (size_t)c->m->cfg.vocab_size;
    step_run(c, 1, lane, j->s + r0, j->tokens + r0, rows, j->logits ? j->logits + r0 * V : NULL, r0);
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
    int lanes = c->threads;
    if (lanes > 1 && c->team && B >= (size_t)STEP_ROWS_PER_LANE * (size_t)lanes) {
        step_rows_job j = {s, tokens, B, (size_t)lanes, logits};
        lanes_phase(c, lanes, 0, step_rows, &j, (size_t)lanes);
    } else {
        step_run(c, lanes, 0, s, tokens, B, logits, 0);
    }
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
