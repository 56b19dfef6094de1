/* fuzz_model.c - libFuzzer harness for the model loader: config.json (engine/json.c and
 * model.c's validation), model.safetensors (engine/safetensors.c, the F16/BF16 converters) and
 * the binding of every tensor to the config (engine/model.c), then a tiny forward pass on what
 * loads (engine/encoder.c, or for a causal LM decoder.c, sample.c and generate.c).
 *
 * Input: a 2-byte little-endian length L, L bytes of config.json, the rest model.safetensors.
 * The two files are written to a private directory in /dev/shm (tmpfs) and luna_model_load
 * reads them as it reads any model, through its real file path.
 *
 * The loader maps model.safetensors with mmap; the build compiles engine/model.c with
 * -Dmmap=fuzz_mmap -Dmunmap=fuzz_munmap, and fuzz_mmap below reads the file into a heap buffer
 * of exactly its size instead, so that ASan sees any read past the end of the file (a read past
 * the end of a real mapping stays silent up to the end of its page).
 *
 * Checked beyond ASan/UBSan: a refused model has a negative LUNA_E* code and a one-line
 * reason; a loaded one has a config within the documented ranges, its forward pass returns 0
 * (or a documented error) and, if it returns 0 with finite logits, probabilities that sum to 1. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/generate.h"
#include "engine/luna.h"
#include "engine/sample.h"
#include "fuzz/fuzz_common.h"

/* ---- the loader's mmap, as a heap copy -------------------------------------------------------- */

void *fuzz_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
int fuzz_munmap(void *addr, size_t length);

void *fuzz_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    (void)addr, (void)prot, (void)flags;
    uint8_t *p = malloc(length ? length : 1);
    if (!p) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    size_t got = 0;
    while (got < length) {
        ssize_t r = pread(fd, p + got, length - got, offset + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(p);
            errno = EIO;
            return MAP_FAILED;
        }
        got += (size_t)r;
    }
    return p;
}

int fuzz_munmap(void *addr, size_t length)
{
    (void)length;
    free(addr);
    return 0;
}

/* ---- the model directory ------------------------------------------------------------------ */

static char dir[64];
static int verbose; /* FUZZ_MODEL_VERBOSE=1: say why each input loads or not (for the seeds) */
static char cfg_path[96], st_path[96];

static void cleanup(void)
{
    unlink(cfg_path);
    unlink(st_path);
    rmdir(dir);
}

static int write_file(const char *path, const uint8_t *b, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t w = 0;
    while (w < n) {
        ssize_t r = write(fd, b + w, n - w);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            close(fd);
            return -1;
        }
        w += (size_t)r;
    }
    return close(fd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/fuzz_model.XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("fuzz_model: mkdtemp");
        abort();
    }
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
    atexit(cleanup);
    luna_blas_set_threads(1);
    verbose = getenv("FUZZ_MODEL_VERBOSE") != NULL;
    return 0;
}

/* ---- a tiny forward pass ------------------------------------------------------------------- */

static int on_bytes(void *user, const uint8_t *b, size_t n)
{
    size_t *total = user;
    fuzz_touch(b, n);
    *total += n;
    return 0;
}

static void forward(const luna_model *m)
{
    const luna_config *c = luna_model_config(m);
    luna_ctx_opts opts = {.chunk = 7}; /* several chunks even for short inputs */
    luna_ctx *ctx = NULL;
    int rc = luna_ctx_new(m, &opts, &ctx);
    if (rc == LUNA_ENOMEM) return;
    FUZZ_CHECK(rc == 0, "luna_ctx_new: %s", luna_strerror(rc));
    static const uint8_t doc[] = "Subject: cheap meds\n\nbuy now \xff\x00 caf\xc3\xa9 and more text to fill chunks";
    if (c->task == LUNA_TASK_CLASSIFY) {
        float probs[LUNA_MAX_LABELS], logits[LUNA_MAX_LABELS];
        for (size_t len = 0; len <= sizeof doc - 1; len += 23) {
            rc = luna_classify(ctx, doc, len, probs, logits);
            if (rc == LUNA_ETOOLONG || rc == LUNA_ENOMEM) continue;
            FUZZ_CHECK(rc == 0, "luna_classify: %s", luna_strerror(rc));
            int finite = 1;
            double sum = 0;
            for (int k = 0; k < c->n_labels; k++) {
                if (!isfinite(logits[k])) finite = 0;
                sum += probs[k];
            }
            if (finite) FUZZ_CHECK(fabs(sum - 1) < 1e-3, "probabilities sum to %g", sum);
            /* the streaming plan recomputes every row a pack needs: the same logits, exactly
             * in practice (the same chunks, the same arithmetic per row) */
            float slog[LUNA_MAX_LABELS];
            luna_plan sp = luna_plan_streaming(m, luna_input_tokens(m, doc, len));
            rc = luna_classify_plan(ctx, &sp, doc, len, NULL, slog);
            FUZZ_CHECK(rc == 0, "luna_classify_plan (streaming): %s", luna_strerror(rc));
            for (int k = 0; finite && k < c->n_labels; k++)
                FUZZ_CHECK(fabs((double)slog[k] - logits[k]) <= 1e-4 * (1 + fabs((double)logits[k])),
                           "streaming logit %d: %g, resident %g", k, slog[k], logits[k]);
        }
    } else {
        luna_gen_state *st = NULL;
        rc = luna_gen_state_new(m, &st);
        if (rc == LUNA_ENOMEM) {
            luna_ctx_free(ctx);
            return;
        }
        FUZZ_CHECK(rc == 0, "luna_gen_state_new: %s", luna_strerror(rc));
        for (int pass = 0; pass < 2; pass++) {
            luna_sampling sp = LUNA_SAMPLING_DEFAULTS;
            if (pass == 0) sp.temperature = 0;
            else sp.top_k = 5, sp.top_p = 0.9f, sp.repetition_penalty = 1.3f, sp.seed = 7;
            luna_sampler *smp = NULL;
            rc = luna_sampler_new(c->vocab_size, &sp, &smp);
            FUZZ_CHECK(rc == 0, "luna_sampler_new: %s", luna_strerror(rc));
            luna_gen_params gp = {.max_new_tokens = 6, .n_stop = 1};
            gp.stop[0] = (const uint8_t *)"\n\n";
            gp.stop_len[0] = 2;
            luna_gen_state_reset(st);
            size_t total = 0;
            luna_gen_result r;
            rc = luna_generate(ctx, st, smp, doc, pass ? sizeof doc - 1 : 9, &gp, on_bytes, &total, &r);
            /* EINVAL: logits that are NaN or all banned, which random weights may give */
            FUZZ_CHECK(rc == 0 || rc == LUNA_ETOOLONG || rc == LUNA_EINVAL || rc == LUNA_ENOMEM,
                       "luna_generate: %s", luna_strerror(rc));
            if (rc == 0) FUZZ_CHECK(total <= 6, "generated %zu bytes for max_new_tokens 6", total);
            luna_sampler_free(smp);
        }
        luna_gen_state_free(st);
    }
    luna_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t L = (size_t)data[0] | (size_t)data[1] << 8;
    if (L > size - 2) L = size - 2;
    const uint8_t *cfg = data + 2, *st = data + 2 + L;
    size_t st_len = size - 2 - L;
    if (write_file(cfg_path, cfg, L) || write_file(st_path, st, st_len)) {
        perror("fuzz_model: write");
        abort();
    }
    luna_model *m = NULL;
    char err[512];
    int rc = luna_model_load(dir, &m, err, sizeof err);
    if (verbose) fprintf(stderr, "fuzz_model: load: %s\n", rc ? err : "ok");
    if (rc != 0) {
        FUZZ_CHECK(rc < 0 && m == NULL, "luna_model_load returned %d", rc);
        FUZZ_CHECK(err[0] != 0 && strchr(err, '\n') == NULL, "the reason is empty or more than one line: %s", err);
        FUZZ_CHECK(strcmp(luna_strerror(rc), "unknown error") != 0, "an unknown code %d", rc);
        return 0;
    }
    const luna_config *c = luna_model_config(m);
    FUZZ_CHECK(c->d >= 1 && c->H >= 1 && c->l >= 1 && c->layers >= 1 && c->ffn >= 1, "config sizes");
    FUZZ_CHECK(c->d % c->H == 0, "d %% H");
    FUZZ_CHECK(c->vocab_size >= c->byte_offset + 256, "vocab_size");
    FUZZ_CHECK(c->task != LUNA_TASK_CLASSIFY || (c->n_labels >= 1 && c->n_labels <= LUNA_MAX_LABELS), "labels");
    FUZZ_CHECK(luna_model_weight_bytes(m) > 0, "no weights");
    (void)luna_input_tokens(m, (const uint8_t *)"Subject: x\n\ny", 14);
    forward(m);
    luna_model_free(m);
    return 0;
}
