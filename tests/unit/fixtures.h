/* fixtures.h - shared test fixtures: temp dirs, a tiny safetensors writer, valid tiny models.
 *
 * Tests build every model they load from a luna_config description, in a fresh temp dir, so no
 * binary fixture is checked in. Weights are deterministic: fx_weight(seed, name, i) is a pure
 * function, so a test can recompute any value it loads. All functions return 0 (or a pointer)
 * on success and -1 (or NULL) on failure; buffers they return are malloc'd for the caller. */
#ifndef LUNA_TEST_FIXTURES_H
#define LUNA_TEST_FIXTURES_H

#include <stddef.h>
#include <stdint.h>

#include "engine/luna.h"
#include "engine/safetensors.h"

/* ---- files ---------------------------------------------------------------------------------- */

int fx_tmpdir(char *path, size_t len); /* mkdtemp /tmp/luna-test-XXXXXX into path */
void fx_rmtree(const char *dir);       /* removes dir and everything in it (no symlinks followed) */
int fx_write_file(const char *dir, const char *name, const void *data, size_t len);

/* ---- a safetensors writer ------------------------------------------------------------------- */

typedef struct fx_st fx_st;

fx_st *fx_st_new(void);
void fx_st_free(fx_st *w);
/* Adds a tensor from raw bytes (nbytes need not match the shape: tests write bad files). */
int fx_st_add_raw(fx_st *w, const char *name, const char *dtype, int ndim, const uint64_t *shape,
                  const void *data, size_t nbytes);
/* Adds a tensor of numel(shape) values, converted to dtype (F64, F32, F16 or BF16). */
int fx_st_add(fx_st *w, const char *name, st_dtype dtype, int ndim, const uint64_t *shape,
              const float *values);
int fx_st_meta(fx_st *w, const char *key, const char *value);
/* Pads the header with spaces so the data section starts at an offset = misalign mod 8
 * (0, the default, keeps F32 data 4-byte aligned). */
void fx_st_set_misalign(fx_st *w, int misalign);
/* The file image: u64 header length, header JSON, the tensors back to back. */
uint8_t *fx_st_build(const fx_st *w, size_t *len);

/* A file image with this exact header text and data_len zero bytes of data. */
uint8_t *fx_st_raw(const char *header, size_t data_len, size_t *len);

/* Float to F16 / BF16 bits, rounding to nearest even; fx_round gives the value a float has
 * after a round trip through dtype. */
uint16_t fx_f32_to_f16(float f);
uint16_t fx_f32_to_bf16(float f);
float fx_round(st_dtype dtype, float f);

/* ---- tiny models ---------------------------------------------------------------------------- */

/* A valid tiny classifier: d 8, H 2, l 4, 2 layers, ffn 16, sinusoidal, labels ham and spam,
 * every other field at its default; embed_scale 0 (written as null). */
void fx_config_default(luna_config *cfg);

/* config.json text for cfg (every field written out; embed_scale <= 0 as null), leaving out the
 * fields named in `omit` (space-separated, may be NULL) and appending `extra` (raw members such
 * as "\"d\": \"x\"", may be NULL). */
char *fx_config_json(const luna_config *cfg, const char *omit, const char *extra);

typedef struct {
    char name[96];
    int ndim;
    uint64_t shape[2];
} fx_tensor;

/* The tensors cfg implies (docs/model-format.md), in the doc's order; returns how many, even
 * beyond cap (fills at most cap). Written apart from engine/model.c on purpose. */
size_t fx_model_tensors(const luna_config *cfg, fx_tensor *out, size_t cap);

/* Element i of tensor `name`: LayerNorm weights 1 + U(-0.1, 0.1), biases U(-0.1, 0.1), other
 * weights U(-0.5, 0.5). */
float fx_weight(uint64_t seed, const char *name, size_t i);

typedef struct {
    st_dtype dtype;          /* of every tensor; 0 is taken as F32 (ST_BOOL makes no sense) */
    int misalign;            /* see fx_st_set_misalign */
    uint64_t seed;
    const char *skip;        /* leave this tensor out */
    const char *reshape;     /* write this tensor with its first dimension + 1 */
    const char *extra;       /* add this tensor too, shape (3) */
    const char *bad_dtype;   /* write this tensor as I64 (same byte count as F32 needs 2x) */
} fx_model_opts;

/* Writes config.json and model.safetensors for cfg into dir. opts may be NULL. */
int fx_write_model(const char *dir, const luna_config *cfg, const fx_model_opts *opts);

/* xorshift64*: a fixed-seed generator for fuzz tests. */
uint64_t fx_rand(uint64_t *state);

#endif
