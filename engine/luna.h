/* luna.h - the public API of the Luna engine.
 *
 * The engine loads a Luna model (docs/model-format.md) and runs it on bytes. It knows nothing
 * of JSON or HTTP: the server's api/ layer turns requests into these calls. A model is loaded
 * once, read-only, and shared by every thread; each worker thread owns one luna_ctx, whose fixed
 * workspace is allocated once, when the context is made.
 *
 * Memory: a forward pass over n tokens allocates exactly luna_workspace_bytes(model, n) bytes on
 * top of the weights and the context's fixed luna_ctx_bytes(); nothing in it is n x l per head
 * or n x ffn. The server reserves that number against its memory budget before it runs a job.
 *
 * Errors: functions return 0 or a negative LUNA_E* code; luna_strerror() names it. A function
 * that fails leaves its OUT parameters untouched unless it says otherwise.
 *
 * Threads: luna_model_* and luna_*_bytes may be called from any thread once the model is loaded.
 * A luna_ctx is used by one thread at a time. The cancel flag may be set from any thread. */
#ifndef LUNA_H
#define LUNA_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* XX(name, value, message, http_status): the one table of error codes. */
#define LUNA_ERRNO_MAP(XX)                                                               \
    XX(EINVAL, -1, "invalid argument", 422)                                              \
    XX(ENOMEM, -2, "out of memory", 503)                                                 \
    XX(EIO, -3, "cannot read model file", 500)                                           \
    XX(EFORMAT, -4, "malformed model file", 500)                                         \
    XX(ECONFIG, -5, "invalid model config", 500)                                         \
    XX(ETENSOR, -6, "model tensors do not match the config", 500)                        \
    XX(ETOOLONG, -7, "input is longer than the model accepts", 413)                      \
    XX(ECANCELED, -8, "canceled", 499)                                                   \
    XX(ETASK, -9, "the model does not serve this task", 422)

enum {
#define LUNA_XX_ENUM(name, value, msg, http) LUNA_##name = value,
    LUNA_ERRNO_MAP(LUNA_XX_ENUM)
#undef LUNA_XX_ENUM
};

const char *luna_strerror(int err);   /* "out of memory"; "unknown error" for other values */
const char *luna_err_name(int err);   /* "LUNA_ENOMEM" */
int luna_err_http_status(int err);    /* the HTTP status the server answers with; 500 if unknown */

/* ---- the model ------------------------------------------------------------------------- */

typedef enum { LUNA_TASK_CLASSIFY = 0, LUNA_TASK_CAUSAL_LM = 1 } luna_task;
typedef enum { LUNA_ACT_RELU = 0, LUNA_ACT_GELU = 1, LUNA_ACT_TANH = 2 } luna_act;
typedef enum { LUNA_POS_NONE = 0, LUNA_POS_LEARNED = 1, LUNA_POS_SINUSOIDAL = 2 } luna_pos;
typedef enum { LUNA_POOL_CLS = 0, LUNA_POOL_MEAN = 1, LUNA_POOL_P = 2 } luna_pool;
typedef enum { LUNA_XFORM_NONE = 0, LUNA_XFORM_EMAIL_SUBJECT_BODY = 1 } luna_xform;

#define LUNA_MAX_LABELS 1024
#define LUNA_MAX_LABEL_LEN 64

/* Every field of config.json, validated. Read-only once the model is loaded. */
typedef struct luna_config {
    luna_task task;
    int d, H, Hp, l, layers, ffn;
    luna_act activation;
    int tie_kv, normalize_before;
    luna_pos positions;
    int max_positions;      /* longest token sequence; 0 = unlimited */
    float embed_scale;      /* resolved: never "null" here */
    int dynamic_projection, layernorm_embedding;
    int vocab_size, byte_offset, pad_id, bos_id, eos_id, append_eos;
    luna_xform input_transform;
    /* classification */
    luna_pool pooling;
    int classifier_layers, classifier_dim;
    luna_act classifier_activation;
    int n_labels;
    char labels[LUNA_MAX_LABELS][LUNA_MAX_LABEL_LEN]; /* NUL-terminated */
} luna_config;

typedef struct luna_model luna_model;

/* Loads the model directory `dir` (config.json + model.safetensors). On failure returns a
 * negative code and writes a one-line reason naming the file, field or tensor into err
 * (errlen bytes, may be 0). *out is set only on success; free it with luna_model_free. */
int luna_model_load(const char *dir, luna_model **out, char *err, size_t errlen);
void luna_model_free(luna_model *m); /* NULL is a no-op */
const luna_config *luna_model_config(const luna_model *m);
size_t luna_model_weight_bytes(const luna_model *m); /* bytes of F32 weights, mapped or owned */

/* Tokens the model sees for these input bytes (after the input transform, plus bos/eos). */
size_t luna_input_tokens(const luna_model *m, const uint8_t *bytes, size_t len);

/* ---- contexts and forward passes ------------------------------------------------------- */

typedef enum {
    LUNA_ATTN_LUNA = 0,           /* pack/unpack, chunked: O(n) time and memory */
    LUNA_ATTN_SOFTMAX = 1,        /* baseline: a Transformer layer with the n x n scores built */
    LUNA_ATTN_SOFTMAX_STREAM = 2, /* baseline: flash-style online softmax, O(n) memory, O(n^2) time */
} luna_attn;

#define LUNA_MAX_THREADS 16

typedef struct luna_ctx_opts {
    int chunk;          /* rows per chunk along the sequence; 0 = default (256) */
    luna_attn attention;/* LUNA_ATTN_LUNA unless benchmarking a baseline */
    int threads;        /* threads that share one forward's chunks (Luna attention only; each
                           needs its own chunk buffers): 0 or 1 = the calling thread alone. For
                           one long document's latency; a server with as many workers as cores
                           keeps 1. Combine with luna_blas_set_threads(1). */
} luna_ctx_opts;

typedef struct luna_ctx luna_ctx;

/* Makes a context for m with its fixed workspace. opts may be NULL for defaults. The model
 * must outlive the context. */
int luna_ctx_new(const luna_model *m, const luna_ctx_opts *opts, luna_ctx **out);
void luna_ctx_free(luna_ctx *c); /* NULL is a no-op */

/* The context's fixed workspace, allocated by luna_ctx_new (opts may be NULL). */
size_t luna_ctx_bytes(const luna_model *m, const luna_ctx_opts *opts);

/* The exact bytes that one forward pass over n tokens allocates, on top of the weights and the
 * context's fixed workspace, with Luna attention. luna_workspace_bytes_attn gives it for any
 * attention kind (the baselines need more). Returns SIZE_MAX if the size overflows. */
size_t luna_workspace_bytes(const luna_model *m, size_t n);
size_t luna_workspace_bytes_attn(const luna_model *m, size_t n, luna_attn attn, int chunk);

/* The flag is polled between chunks and layers; when it becomes non-zero the running call
 * returns LUNA_ECANCELED. NULL detaches it. The flag must outlive its use by the context. */
void luna_ctx_set_cancel(luna_ctx *c, const atomic_int *flag);

/* Classifies `len` bytes. probs and logits (either may be NULL) receive n_labels floats each.
 * Errors: LUNA_ETASK (not a classifier), LUNA_ETOOLONG (more tokens than max_positions),
 * LUNA_ENOMEM (the workspace could not be allocated), LUNA_ECANCELED. */
int luna_classify(luna_ctx *c, const uint8_t *bytes, size_t len, float *probs, float *logits);

/* The encoder's outputs, for tests and embeddings. Any pointer may be NULL.
 *   hidden: (n, d)  final X rows (after layer_norm with normalize_before); n from luna_input_tokens
 *   pfinal: (l', d) final P rows, l' = min(n, l) with dynamic projection, else l
 *   pooled: (d)     the sentence representation that feeds the classifier head
 *   logits: (n_labels) */
int luna_encode(luna_ctx *c, const uint8_t *bytes, size_t len, float *hidden, float *pfinal,
                float *pooled, float *logits);

/* ---- BLAS ------------------------------------------------------------------------------- */

/* Sets OpenBLAS's thread count for the whole process (it is global in OpenBLAS). */
void luna_blas_set_threads(int n);
int luna_blas_threads(void);

/* Measures this machine's sgemm rate in GFLOP/s on an (m, k) x (k, n) product repeated for at
 * least `seconds`; for benchmarks, which report the engine's throughput as a share of it. */
double luna_sgemm_gflops(int m, int n, int k, double seconds);

#endif
