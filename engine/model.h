/* model.h - the loaded model, as the forward passes see it (engine-internal).
 *
 * model.c fills this from a model directory: it parses config.json into luna_config, maps
 * model.safetensors, checks every tensor against the config and points each field below at its
 * F32 data (in the mapping when aligned F32, else in `owned`). All pointers are read-only for
 * the model's lifetime. A weight that the config does not use is NULL.
 * Linear weights are (out, in), row-major: y = x W^T + b. */
#ifndef LUNA_MODEL_H
#define LUNA_MODEL_H

#include "luna.h"

typedef struct {
    const float *w; /* (out, in) */
    const float *b; /* (out) or NULL when the layer has no bias */
    int out, in;
    const float *wp; /* causal-lm, the layers of a decode step: w again, in the panels of
                        kn_linear_fixed (kernels.h: kn_fixed_pack), in `packed`; else NULL */
} luna_linear;

typedef struct {
    const float *w, *b; /* (d), (d) */
} luna_norm;

typedef struct {
    /* bidirectional attention (LunarMultiheadAttention) */
    luna_linear pq_proj, q_proj, out_proj;
    luna_linear pc_proj, c_proj;                  /* tie_kv */
    luna_linear pk_proj, pv_proj, k_proj, v_proj; /* untied */
    luna_norm self_attn_layer_norm;               /* X path */
    luna_norm self_atten_proj_layer_norm;         /* P path (sic, the reference's name) */
    luna_linear fc1, fc2;                         /* (ffn, d), (d, ffn) */
    luna_norm final_layer_norm;
} luna_layer;

#define LUNA_MAX_LAYERS 64
#define LUNA_MAX_CLASSIFIER_LAYERS 8

struct luna_model {
    luna_config cfg;
    const float *embed_tokens;         /* (vocab_size, d) */
    const float *embed_positions;      /* (max_positions + pad_id + 1, d), learned positions only */
    const float *embed_ngrams;         /* ((ngram_embed - 1) * vocab_size, d): row
                                          (j - 1) * vocab_size + token for the token j back */
    const float *embed_hash;           /* ((hash_ngrams - 1) * hash_buckets, hash_dim): row
                                          (o - 2) * hash_buckets + bucket for an o-gram */
    const float *embed_hash_proj;      /* (d, (hash_ngrams - 1) * hash_dim), no bias */
    const float *projected_embeddings; /* (l, d) */
    luna_norm emb_layer_norm, proj_emb_layer_norm; /* layernorm_embedding */
    luna_norm layer_norm, proj_layer_norm;         /* normalize_before */
    luna_layer layers[LUNA_MAX_LAYERS];
    luna_linear classifier[LUNA_MAX_CLASSIFIER_LAYERS];
    luna_linear sentence_projection_layer;         /* (n_labels, in), no bias */
    luna_linear output_projection;                 /* causal-lm: (vocab_size, d), no bias; with
                                                      tie_embeddings it points at embed_tokens */
    float *pq;            /* causal-lm: (layers, l, d) pq_proj(P0) k^-1/2, a function of the
                             weights alone, computed once at load and shared by every state */
    float *pqt;           /* causal-lm: (layers, H, k, l) the same, each head's (l, k) part
                             transposed: a decode step's w = c Pq^T, row after row (causal_row) */

    /* storage */
    void *map;            /* model.safetensors, mapped read-only */
    size_t map_len;
    float *owned;         /* converted or realigned tensors */
    size_t owned_len;     /* floats in owned */
    size_t weight_bytes;  /* F32 bytes of all weights */
    float *packed;        /* causal-lm: the decode steps' layers in panels (luna_linear.wp) */
    size_t packed_len;    /* floats in packed */
    uint8_t id[LUNA_MODEL_ID_BYTES]; /* luna_model_id: SHA-256 of the config and the weights as
                                        loaded, computed once at load (model_id.h) */
};

/* Room for the linear layers of a decode step: q, k or c, v, pc, out, fc1 and fc2 a layer at
 * most, and the vocabulary head. */
#define LUNA_DECODE_LINEARS (7 * LUNA_MAX_LAYERS + 1)
/* causal-lm: the linear layers of a decode step into lin, as a step runs them (the vocabulary
 * head last); returns their count. Those have panels (luna_linear.wp). */
int luna_decode_linears(luna_model *m, luna_linear **lin);

#endif
