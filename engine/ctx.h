/* ctx.h - the context of a forward pass, shared by the encoder and the decoder
 * (engine-internal).
 *
 * A luna_ctx owns one fixed workspace, laid out once by ws_layout for the model's task and the
 * context's options; encoder.c lays out the encoder's buffers, decoder.c the decoder's. */
#ifndef LUNA_CTX_H
#define LUNA_CTX_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "input.h"
#include "luna.h"
#include "model.h"

#define DEFAULT_CHUNK LUNA_DEFAULT_CHUNK
#define MAX_CHUNK 65536

/* Offsets (in floats) of the fixed workspace of a context. One function computes them, so
 * that luna_ctx_bytes() and luna_ctx_new() can never disagree. */
typedef struct {
    size_t P, Pn, QP, acc, pmax, psum;          /* (l, d) and (Hp, l) pack state */
    size_t KU, VU;                              /* (layers, l, d): every layer's unpack keys and
                                                   values, kept so that a plan that recomputes
                                                   rows can run the earlier layers again */
    size_t Xr;                                  /* (c, d) rows recomputed from the input */
    size_t macc;                                /* (d) doubles: a lane's sum for mean pooling */
    size_t pack;                                /* a pack's documents (a chunk's per lane), lane
                                                   0's pack buffers (encoder.c pack_floats) and
                                                   the subjects (c bytes per lane) */
    size_t A, B, C;                             /* (c, d) chunk buffers */
    size_t F;                                   /* (c, ffn) FFN hidden */
    size_t S;                                   /* scores: (l, c), (c, l) or (c, c) */
    size_t rmax, rsum;                          /* (c, H): the streaming baseline's running stats */
    size_t freq;                                /* (d/2) sinusoid frequencies */
    size_t pooled, head_a, head_b, logits;      /* the classifier head */
    size_t lanes, lane_size;                    /* lanes 1.. (threads > 1): chunk buffers and
                                                   pack partials of their own, lane_size each */
    /* the decoder (decoder.c): lane 0's chunk rows X, T, Q, K, V, C, O, Y (c, d) (with F
     * above), the logits of one row, the float copies of the running sums SK (H, k, l) and
     * SV (H, l, k); each lane's attention scratch, dL_size floats from dL on (lane 0 first;
     * see lane_scratch); and lanes 1 .. lanes - 1's own copies of lane 0's chunk buffers,
     * dP_size floats each from dP on, for a prefill whose lanes run whole chunks (chunk_bufs) */
    size_t dX, dT, dQ, dK, dV, dC, dO, dY, dSK, dSV, dlogits, dL, dL_size, dP, dP_size;
    size_t total;
} ws_layout;

/* The buffers one lane works in. Lane 0 uses the context's main layout. A pack's share runs in
 * `pack` (encoder.c pack_floats), and its documents' heads in pooled .. logits. */
typedef struct {
    float *A, *B, *C, *F, *S, *acc, *pmax, *psum, *Xr;
    double *macc;
    float *pooled, *head_a, *head_b, *logits, *pack;
} lane_ws;

/* The decoder's helper threads (decoder.c): lanes 1 .. lanes_max - 1 of a causal-lm context,
 * made with it and parked between prefills. */
typedef struct luna_lanes luna_lanes;

struct luna_ctx {
    const luna_model *m;
    int chunk;
    int threads;                              /* lanes of the Luna chunk loops in use */
    int lanes_max;                            /* lanes whose buffers the workspace holds */
    lane_ws lane[LUNA_MAX_THREADS];
    luna_lanes *team;                         /* the decoder's helpers; NULL with one lane */
    luna_attn attn;
    const atomic_int *cancel;
    ws_layout L;
    float *ws;                                /* the fixed workspace, L.total floats */
    uint8_t subject[LUNA_SUBJECT_MAX + 1];    /* the email transform's unfolded subject */
    size_t last_alloc_bytes;                  /* what the last forward allocated (tests) */
    unsigned long lane_threads;               /* threads the encoder's lanes started, in all (tests) */
};

static inline int canceled(const luna_ctx *c)
{
    return c->cancel && atomic_load_explicit(c->cancel, memory_order_relaxed) != 0;
}

#define W(c, field) ((c)->ws + (c)->L.field)

/* encoder.c */
void luna__add_sinusoid(const luna_ctx *c, float *x, size_t pos0, size_t rows);
uint32_t luna__hash_bucket(const int32_t *win, int order, int buckets);
void luna__add_hash_ngrams(const luna_model *m, const int32_t *win, size_t have, float *xr);

/* decoder.c: the decoder's workspace for `lanes` lanes, laid out from offset *off on (floats). */
void luna__dec_layout(const luna_config *cfg, int chunk, luna_attn attn, int lanes, ws_layout *L, size_t *off);
/* decoder.c: starts the helper threads of lanes 1 .. c->lanes_max - 1 (none with one lane);
 * 0 or LUNA_ENOMEM, and then none runs. luna__lanes_stop joins them; NULL team is a no-op. */
int luna__lanes_start(luna_ctx *c);
void luna__lanes_stop(luna_ctx *c);
/* decoder.c, for tests: a Luna state's running sums (NULL and 0 for a KV state). */
const double *luna__gen_state_sums(const luna_gen_state *s, size_t *count);

#endif
