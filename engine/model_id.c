/* model_id.c - a model's identity: SHA-256 of its config and weights as loaded.
 *
 * A portable generation state (state.c) carries the identity of the model that made it, so
 * that a replica refuses a state of another model instead of continuing it into garbage. The
 * identity is of what the forward passes compute with, not of the files: two directories whose
 * config.json differ only in spacing or key order, or whose weights are F16 in one and the same
 * values in F32 in the other, are one model; any changed value is another. model.c hashes each
 * tensor as it binds it (its pass that points at or converts the data), so the identity costs
 * one read of the weights at load: the load of models/austen-lm (17 MB) goes from 3 ms to 22 ms
 * here with the SHA extensions, to 78 ms without (sha256.c). */
#include "model_id.h"

#include <stdio.h>
#include <string.h>

#include "model.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the identity hashes F32 values in their little-endian bytes as they sit in memory"
#endif

/* Every field of luna_config goes into the identity: a field left out would let two models
 * that compute differently share one. So a new field must be added below, and this assert
 * (the size of the fields as they are today) makes the compiler say so. */
_Static_assert(sizeof(luna_config) == 65672, "a luna_config field was added or removed: encode it in "
                                             "put_config (and change the tag if an old identity "
                                             "would now mean something else)");

static void put_u32(luna_sha256_ctx *h, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    luna_sha256_update(h, b, sizeof b);
}

static void put_u64(luna_sha256_ctx *h, uint64_t v)
{
    put_u32(h, (uint32_t)v);
    put_u32(h, (uint32_t)(v >> 32));
}

static void put_str(luna_sha256_ctx *h, const char *s)
{
    size_t n = strlen(s);
    put_u32(h, (uint32_t)n);
    luna_sha256_update(h, s, n);
}

/* The config: each field below as a u32 (little-endian) in this order, embed_scale as the bits
 * of its float, the labels as u32 length + bytes, only the n_labels that exist. */
static void put_config(luna_sha256_ctx *h, const luna_config *c)
{
    const int ints[] = {
        (int)c->task, c->d, c->H, c->Hp, c->l, c->layers, c->ffn, (int)c->activation, c->tie_kv,
        c->normalize_before, (int)c->positions, c->max_positions,
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) put_u32(h, (uint32_t)ints[i]);
    uint32_t scale;
    memcpy(&scale, &c->embed_scale, sizeof scale);
    put_u32(h, scale);
    const int more[] = {
        c->ngram_embed, c->hash_ngrams, c->hash_buckets, c->hash_dim, c->dynamic_projection,
        c->layernorm_embedding, c->vocab_size, c->byte_offset, c->pad_id, c->bos_id, c->eos_id,
        c->append_eos, (int)c->input_transform, (int)c->pooling, c->classifier_layers,
        c->classifier_dim, (int)c->classifier_activation, c->n_labels,
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) put_u32(h, (uint32_t)more[i]);
    for (int i = 0; i < c->n_labels && i < LUNA_MAX_LABELS; i++) put_str(h, c->labels[i]);
    put_u32(h, (uint32_t)c->causal_phi);
    put_u32(h, (uint32_t)c->causal_pc_proj);
    put_u32(h, (uint32_t)c->tie_embeddings);
}

void luna__model_id_begin(luna_sha256_ctx *h, const luna_config *cfg)
{
    static const char tag[] = "luna model id v1"; /* with its NUL */
    luna_sha256_init(h);
    luna_sha256_update(h, tag, sizeof tag);
    put_config(h, cfg);
}

void luna__model_id_tensor(luna_sha256_ctx *h, const char *name, int ndim, uint64_t d0, uint64_t d1,
                           const float *data, size_t numel)
{
    put_str(h, name);
    put_u32(h, (uint32_t)ndim);
    put_u64(h, d0);
    if (ndim == 2) put_u64(h, d1);
    luna_sha256_update(h, data, numel * sizeof(float));
}

void luna_model_id(const luna_model *m, uint8_t out[LUNA_MODEL_ID_BYTES])
{
    if (m) memcpy(out, m->id, LUNA_MODEL_ID_BYTES);
    else memset(out, 0, LUNA_MODEL_ID_BYTES);
}

void luna_model_id_hex(const luna_model *m, char out[2 * LUNA_MODEL_ID_BYTES + 1])
{
    uint8_t id[LUNA_MODEL_ID_BYTES];
    luna_model_id(m, id);
    for (int i = 0; i < LUNA_MODEL_ID_BYTES; i++) snprintf(out + 2 * i, 3, "%02x", id[i]);
}
