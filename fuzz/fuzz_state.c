/* fuzz_state.c - libFuzzer harness for portable generation states: luna_gen_state_import
 * (engine/state.c) on any bytes, then a decoder step (engine/decoder.c) on whatever it accepts.
 * A client sends these bytes back to the server (issue 26), so they are as untrusted as a
 * request body.
 *
 * Input: one mode byte, then the state. Bit 0 picks the model: tests/golden/lm_ngram_embed
 * (4 recent tokens, learned positions, max_positions 600) or tests/golden/lm_hash_ngrams (6
 * recent tokens, no positions, no limit). Bit 1 asks the harness to write the model's id into
 * the header and seal the last 32 bytes again (SHA-256 of the rest) before the import: a random
 * mutation almost never passes the checksum, and this lets the fuzzer reach every check after
 * it (the token count, the sums, the recent tokens, the logits) as a forger who seals his own
 * state would.
 *
 * Checked beyond ASan/UBSan:
 *   - a refusal is LUNA_EINVAL with a reason, and leaves the state as it was (its export is
 *     the same bytes before and after);
 *   - an accepted state is canonical: exporting it (with the logits it came with) gives back
 *     exactly the input bytes;
 *   - an accepted state can be stepped: a step returns 0, or ETOOLONG at max_positions.
 *
 * Seeds: FUZZ_STATE_SEEDS=dir build/fuzz/fuzz_state writes valid states of both models (after
 * 0, 1, 7 and 50 tokens, with and without logits, as they are and in the sealing mode, and one
 * of each given to the other model) into dir and exits; fuzz/corpus/fuzz_state/ holds them
 * (sh fuzz/run.sh builds the harness). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/luna.h"
#include "engine/sha256.h"
#include "fuzz/fuzz_common.h"

#define N_MODELS 2
#define MODE_MODEL 1
#define MODE_SEAL 2

static const char *const model_dirs[N_MODELS] = {"tests/golden/lm_ngram_embed", "tests/golden/lm_hash_ngrams"};

typedef struct {
    luna_model *m;
    luna_ctx *c;
    luna_gen_state *target;  /* what each import writes into: 3 tokens in, between inputs */
    luna_gen_state *scratch; /* where an accepted state is stepped */
    uint8_t *before;         /* the target's export: what a refusal must leave */
    size_t before_len;
    float *logits;           /* (vocab_size) */
    uint8_t *again;          /* room for an export with logits */
    size_t again_cap;
} fz_model;

static fz_model models[N_MODELS];

static const int32_t warm[3] = {0, 'L' + 4, 'u' + 4}; /* bos, then two bytes (byte_offset 4) */

static void write_seed(const char *dir, const char *name, uint8_t mode, const uint8_t *b, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f != NULL, "cannot write %s", path);
    fputc(mode, f);
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Valid states of model k, after 0, 1, 7 and 50 tokens. */
static void write_seeds(const char *dir, int k)
{
    fz_model *z = &models[k];
    const luna_config *cfg = luna_model_config(z->m);
    int32_t tok[50];
    for (int i = 0; i < 50; i++) tok[i] = i == 0 ? cfg->bos_id : cfg->byte_offset + "It is a truth universally acknowledged, that a single man in possession"[i];
    static const size_t Ns[] = {0, 1, 7, 50};
    for (size_t j = 0; j < sizeof Ns / sizeof Ns[0]; j++) {
        luna_gen_state_reset(z->scratch);
        if (Ns[j] > 0) FUZZ_CHECK(luna_prefill(z->c, z->scratch, tok, Ns[j], z->logits, 0) == 0, "prefill");
        for (int with = 0; with < 2; with++) {
            if (with && Ns[j] == 0) continue;
            size_t n;
            FUZZ_CHECK(luna_gen_state_export(z->scratch, with ? z->logits : NULL, z->again, z->again_cap, &n) == 0, "export");
            char name[64];
            snprintf(name, sizeof name, "%s_t%zu%s", k ? "hash" : "ngram", Ns[j], with ? "_logits" : "");
            write_seed(dir, name, (uint8_t)k, z->again, n);
            snprintf(name, sizeof name, "%s_t%zu%s_sealed", k ? "hash" : "ngram", Ns[j], with ? "_logits" : "");
            write_seed(dir, name, (uint8_t)(k | MODE_SEAL), z->again, n);
            if (Ns[j] == 7 && !with) { /* imported into the other model: refused as another model's */
                snprintf(name, sizeof name, "%s_t7_into_the_other_model", k ? "hash" : "ngram");
                write_seed(dir, name, (uint8_t)(k ^ 1), z->again, n);
            }
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    luna_blas_set_threads(1);
    for (int k = 0; k < N_MODELS; k++) {
        fz_model *z = &models[k];
        char err[512];
        int rc = luna_model_load(model_dirs[k], &z->m, err, sizeof err);
        FUZZ_CHECK(rc == 0, "load %s (run from the repository's root): %s", model_dirs[k], err);
        luna_ctx_opts o = {.chunk = 7};
        FUZZ_CHECK(luna_ctx_new(z->m, &o, &z->c) == 0, "luna_ctx_new");
        FUZZ_CHECK(luna_gen_state_new(z->m, &z->target) == 0 && luna_gen_state_new(z->m, &z->scratch) == 0, "states");
        FUZZ_CHECK(luna_prefill(z->c, z->target, warm, 3, NULL, 0) == 0, "prefill");
        z->before_len = luna_gen_state_export_bytes(z->m, 0);
        z->before = malloc(z->before_len);
        z->logits = malloc((size_t)luna_model_config(z->m)->vocab_size * sizeof(float));
        z->again_cap = luna_gen_state_export_bytes(z->m, 1);
        z->again = malloc(z->again_cap);
        FUZZ_CHECK(z->before && z->logits && z->again, "out of memory");
        size_t n;
        FUZZ_CHECK(luna_gen_state_export(z->target, NULL, z->before, z->before_len, &n) == 0, "export");
    }
    const char *seeds = getenv("FUZZ_STATE_SEEDS");
    if (seeds) {
        for (int k = 0; k < N_MODELS; k++) write_seeds(seeds, k);
        fprintf(stderr, "fuzz_state: seeds written to %s\n", seeds);
        exit(0);
    }
    return 0;
}

/* The target's export is still `before`. */
static void expect_unchanged(fz_model *z, const char *what)
{
    size_t n;
    FUZZ_CHECK(luna_gen_state_export(z->target, NULL, z->again, z->again_cap, &n) == 0, "export");
    FUZZ_CHECK(n == z->before_len && memcmp(z->again, z->before, n) == 0, "%s changed the state", what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    fz_model *z = &models[data[0] & MODE_MODEL];
    size_t n = size - 1;
    /* a copy of exactly n bytes: a read past the state's end is a read past an allocation */
    uint8_t *buf = malloc(n ? n : 1);
    FUZZ_CHECK(buf != NULL, "out of memory");
    memcpy(buf, data + 1, n);
    if ((data[0] & MODE_SEAL) && n >= 72 + LUNA_SHA256_BYTES) {
        luna_model_id(z->m, buf + 16);
        luna_sha256(buf, n - LUNA_SHA256_BYTES, buf + n - LUNA_SHA256_BYTES);
    }
    int has = -1;
    const char *why = NULL;
    int rc = luna_gen_state_import(z->target, buf, n, z->logits, &has, &why);
    if (rc != 0) {
        FUZZ_CHECK(rc == LUNA_EINVAL, "import returned %d", rc);
        FUZZ_CHECK(why != NULL && why[0] != 0, "a refusal without a reason");
        FUZZ_CHECK(has == -1, "a refusal wrote has_logits");
        expect_unchanged(z, "a refused import");
        free(buf);
        return 0;
    }
    FUZZ_CHECK(has == 0 || has == 1, "has_logits %d", has);
    size_t len;
    FUZZ_CHECK(luna_gen_state_export(z->target, has ? z->logits : NULL, z->again, z->again_cap, &len) == 0,
               "an imported state does not export");
    FUZZ_CHECK(len == n && memcmp(z->again, buf, n) == 0, "export(import(x)) != x: the format is not canonical");
    /* the decoder on what was accepted */
    const luna_config *cfg = luna_model_config(z->m);
    FUZZ_CHECK(luna_gen_state_copy(z->scratch, z->target) == 0, "copy");
    uint64_t t = luna_gen_state_tokens(z->scratch);
    FUZZ_CHECK(cfg->max_positions == 0 || t <= (uint64_t)cfg->max_positions, "t %llu past max_positions",
               (unsigned long long)t);
    rc = luna_step(z->c, z->scratch, cfg->byte_offset + 'a', z->logits);
    FUZZ_CHECK(rc == 0 || (rc == LUNA_ETOOLONG && t == (uint64_t)cfg->max_positions), "step: %s", luna_strerror(rc));
    fuzz_touch((const uint8_t *)z->logits, (size_t)cfg->vocab_size * sizeof(float));
    /* back to the state every input starts from */
    FUZZ_CHECK(luna_gen_state_import(z->target, z->before, z->before_len, NULL, NULL, NULL) == 0, "restore");
    free(buf);
    return 0;
}
