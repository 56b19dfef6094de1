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
/* The causal attention's feature map: log2(1 + 2^z) (the reference's final version), elu + 1
 * (the older lunar_attention.py), log(1 + e^z). */
typedef enum { LUNA_PHI_SOFTPLUS_LN2 = 0, LUNA_PHI_ELU_PLUS_1 = 1, LUNA_PHI_SOFTPLUS = 2 } luna_phi;

#define LUNA_MAX_LABELS 1024
#define LUNA_MAX_LABEL_LEN 64
#define LUNA_MAX_NGRAM 32 /* ngram_embed, hash_ngrams: the longest window of tokens read */

/* Every field of config.json, validated. Read-only once the model is loaded. */
typedef struct luna_config {
    luna_task task;
    int d, H, Hp, l, layers, ffn;
    luna_act activation;
    int tie_kv, normalize_before;
    luna_pos positions;
    int max_positions;      /* longest token sequence; 0 = unlimited */
    float embed_scale;      /* resolved: never "null" here */
    int ngram_embed;        /* K: token t's embedding adds embed_ngrams rows of tokens t-1..t-K+1 */
    int hash_ngrams;        /* M: token t's embedding adds hashed rows of the n-grams of 2..M
                               tokens ending at t (1: none) */
    int hash_buckets;       /* rows per order (a power of two) */
    int hash_dim;           /* width of a hashed row; embed_hash_proj maps (M - 1) of them to d */
    int dynamic_projection, layernorm_embedding;
    int vocab_size, byte_offset, pad_id, bos_id, eos_id, append_eos;
    luna_xform input_transform;
    /* classification */
    luna_pool pooling;
    int classifier_layers, classifier_dim;
    luna_act classifier_activation;
    int n_labels;
    char labels[LUNA_MAX_LABELS][LUNA_MAX_LABEL_LEN]; /* NUL-terminated */
    /* causal-lm */
    luna_phi causal_phi;
    int causal_pc_proj;     /* 1: w_t = phi(pc_proj(x)_t Pq^T); 0: phi(x_t Pq^T) (older version) */
    int tie_embeddings;     /* 1: logits = x embed_tokens^T; 0: output_projection */
} luna_config;

typedef struct luna_model luna_model;

/* Loads the model directory `dir` (config.json + model.safetensors). On failure returns a
 * negative code and writes a one-line reason naming the file, field or tensor into err
 * (errlen bytes, may be 0). *out is set only on success; free it with luna_model_free. */
int luna_model_load(const char *dir, luna_model **out, char *err, size_t errlen);
void luna_model_free(luna_model *m); /* NULL is a no-op */
const luna_config *luna_model_config(const luna_model *m);
size_t luna_model_weight_bytes(const luna_model *m); /* bytes of F32 weights, mapped or owned */
/* causal-lm: bytes of the decode steps' second copy of their layers' weights, laid out for the
 * batch-invariant product (kernels.h, kn_fixed_pack), allocated at load; 0 for a classifier. */
size_t luna_model_panel_bytes(const luna_model *m);

/* Tokens the model sees for these input bytes (after the input transform, plus bos/eos). */
size_t luna_input_tokens(const luna_model *m, const uint8_t *bytes, size_t len);

/* ---- contexts and forward passes ------------------------------------------------------- */

typedef enum {
    LUNA_ATTN_LUNA = 0,           /* pack/unpack, chunked: O(n) time and memory */
    LUNA_ATTN_SOFTMAX = 1,        /* baseline: a Transformer layer with the n x n scores built */
    LUNA_ATTN_SOFTMAX_STREAM = 2, /* baseline: flash-style online softmax, O(n) memory, O(n^2) time */
} luna_attn;

#define LUNA_MAX_THREADS 16

#define LUNA_DEFAULT_CHUNK 256 /* a context's chunk length when its options name none */
typedef struct luna_ctx_opts {
    int chunk;          /* rows per chunk along the sequence; 0 = LUNA_DEFAULT_CHUNK */
    luna_attn attention;/* LUNA_ATTN_LUNA unless benchmarking a baseline */
    int threads;        /* lanes (threads) that share one forward (Luna attention only; each
                           needs buffers of its own, counted in luna_ctx_bytes): 0 or 1 = the
                           calling thread alone. A classifier's lanes share its chunks; a causal
                           LM's run a prefill's chunks side by side (a lane a chunk, or one
                           chunk's columns and heads when there is one), on threads - 1 helper
                           threads that the context starts and keeps, parked between prefills,
                           until luna_ctx_free. For one long input's latency;
                           luna_ctx_set_lanes picks how many of them the next calls use.
                           Combine with luna_blas_set_threads(1): each lane calls OpenBLAS. */
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

/* Lanes the next forwards use, at most the `threads` the context was made with (whose buffers
 * it holds); returns the number in effect. A server gives a lone job every core and shares
 * them when jobs run side by side. A classifier's results agree to float rounding across lane
 * counts (the pack's partial softmaxes merge in another grouping), not bit for bit. A causal
 * LM's prefill gives the same bits with any lane count (its work is cut into pieces whose
 * shapes do not depend on it), so the lanes may change between the slices of one prompt;
 * so does a decode step (luna_step_batch), whatever its lanes. */
int luna_ctx_set_lanes(luna_ctx *c, int lanes);

/* The flag is polled between chunks and layers (a causal LM's prefill: before each chunk it
 * takes; chunks that lanes are running finish first); when it becomes non-zero the running call
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

/* ---- plans: classify any length in bounded memory ------------------------------------------
 *
 * The resident forward keeps X, n * d floats. A plan keeps only its first `rows` rows and
 * recomputes the others from the input bytes whenever a layer's pack needs them (layer k's
 * rows need layers 0 .. k-1 again), so the streaming plan (rows = 0) allocates nothing that
 * grows with the input: only the context's fixed workspace, whose per-layer unpack keys and
 * values it keeps. Every plan gives the resident plan's numbers (the same chunks, the same
 * arithmetic per row); they differ in time: the streaming plan of an L-layer model runs
 * L packs and up to L (L + 1) / 2 unpacks per row instead of L and L (fewer when the pooling
 * reads only P, or only the first row). */
typedef struct {
    size_t n;     /* the tokens the plan is for (luna_input_tokens) */
    size_t rows;  /* rows of X kept: n = the resident plan, 0 = streaming, between = partial;
                     a forward keeps the multiple of its context's chunk length at or below it
                     (luna_plan_for makes multiples of the default chunk, 256) */
    size_t bytes; /* what the forward allocates at most: rows * d * 4 (exact on a boundary) */
    double flops; /* its floating-point operations, from the shapes */
} luna_plan;

/* Why rows and not layers: keeping X whole after some layer K (a layer checkpoint) would cost
 * the resident plan's n * d floats and more time than it, so it is never the fastest plan for
 * any budget; keeping the first R rows of X is what trades memory for time in between. */
luna_plan luna_plan_resident(const luna_model *m, size_t n);
luna_plan luna_plan_streaming(const luna_model *m, size_t n);
luna_plan luna_plan_rows(const luna_model *m, size_t n, size_t rows);
/* The fastest plan for n tokens whose allocation fits max_bytes: the streaming one when keeping
 * rows saves no work (a 2-layer model pooled from P recomputes nothing the resident plan does
 * not compute), else the resident one when it fits, else the most rows that fit (the streaming
 * plan needs 0 bytes, so there always is one). */
luna_plan luna_plan_for(const luna_model *m, size_t n, size_t max_bytes);
const char *luna_plan_name(const luna_plan *p); /* "resident", "partial" or "streaming" */

/* luna_classify and luna_encode under a plan made for this input's token count (else EINVAL).
 * The baselines (softmax attention) ignore the plan: they keep every row. */
int luna_classify_plan(luna_ctx *c, const luna_plan *plan, const uint8_t *bytes, size_t len, float *probs,
                       float *logits);
int luna_encode_plan(luna_ctx *c, const luna_plan *plan, const uint8_t *bytes, size_t len, float *pfinal,
                     float *pooled, float *logits);

/* ---- packs: short documents share one forward -------------------------------------------
 *
 * A document shorter than a chunk runs its products on few rows, where sgemm is slow (a
 * 32-token document classifies at about a third of a long one's tokens/s). A pack puts several
 * such documents through one forward: every row-wise product (the projections, the FFN, the
 * norms) runs once over all their rows, as over one chunk of a long document, while each
 * document keeps its own P, pack, unpack and pooling. Its results are each document's lone
 * forward's to float rounding (sgemm may block M rows differently).
 *
 * How many of the documents whose token counts (luna_input_tokens) are tokens[0 .. count), in
 * order, fit in one pack on a context of chunk length `chunk` (0: the default) and `lanes`
 * lanes: the documents fill the lanes' chunks one after the other, each chunk's tokens and rows
 * of P at most the chunk length (every document has a token at least: bos). 0 when the first
 * does not fit (a document longer than a chunk, or past max_positions: classify it alone), or
 * when m is not a classifier. Only a context with Luna attention packs (luna_classify_pack). */
size_t luna_pack_fit(const luna_model *m, int chunk, int lanes, const size_t *tokens, size_t count);
/* Classifies docs[i] (lens[i] bytes), i < count, as one pack (luna_pack_fit on the context's
 * chunk and lanes in use must take all of them, else LUNA_EINVAL). On two lanes or more the
 * documents are shared out in order, about as many rows to each lane (a chunk at most), and
 * the lanes run their shares side by side. It runs in buffers of the context's workspace (a
 * Luna classifier context holds a chunk's per lane: 1.8 MB at d 256 and the default chunk, in
 * luna_ctx_bytes): it allocates nothing. probs and logits (either may be NULL) receive count x
 * n_labels floats. Errors as luna_classify's. */
int luna_classify_pack(luna_ctx *c, size_t count, const uint8_t *const *docs, const size_t *lens, float *probs,
                       float *logits);

/* ---- generation (task causal-lm) -------------------------------------------------------
 *
 * A luna_gen_state holds what a causal model remembers of the tokens it has consumed. For
 * Luna attention that is, per layer and head, the running sums sum_i k_i^T w_i (k x l) and
 * sum_i w_i^T v_i (l x k; the transpose of the first when K and V are tied) and the step
 * count: O(layers * d * l), the same size at 10 tokens and at 10 million. The sums are kept in
 * double so that a million-step context loses no precision. The cached Pq of LUNA.md is a
 * function of the weights alone, so the model keeps it once for every state.
 *
 * The softmax baseline's state (luna_kv_state_new) is a KV cache: (layers, t, d) floats for
 * the keys and as many for the values (one copy when K and V are tied). It grows with the
 * context; it exists so that the benchmarks can compare the two.
 *
 * A state is used with a context whose attention matches it (LUNA_ATTN_LUNA for a Luna state,
 * a softmax kind for a KV state) and by one thread at a time. Tokens are ids below vocab_size;
 * a byte b is token byte_offset + b, and a sequence starts with bos_id. */

typedef struct luna_gen_state luna_gen_state;

size_t luna_gen_state_bytes(const luna_model *m); /* a Luna state's size; 0 if not causal-lm */
int luna_gen_state_new(const luna_model *m, luna_gen_state **out);   /* ETASK, ENOMEM */
int luna_kv_state_new(const luna_model *m, luna_gen_state **out);    /* the softmax baseline */
void luna_gen_state_free(luna_gen_state *s);                        /* NULL is a no-op */
/* dst becomes a copy of src (same model and kind): a prompt prefilled once can be forked.
 * EINVAL if they differ; ENOMEM if a KV cache cannot grow (dst is then unchanged). */
int luna_gen_state_copy(luna_gen_state *dst, const luna_gen_state *src);
void luna_gen_state_reset(luna_gen_state *s);                       /* back to no tokens */
uint64_t luna_gen_state_tokens(const luna_gen_state *s);            /* tokens consumed */
size_t luna_gen_state_size(const luna_gen_state *s); /* bytes held now (a KV cache grows) */

/* Feeds n >= 1 tokens, in chunks of the context's chunk length, and advances the state. Time
 * O(n); memory: nothing beyond the context's fixed workspace (a KV state grows its cache).
 * A Luna context made with threads > 1 runs it on luna_ctx_set_lanes' lanes: the same bits as
 * one lane, in up to 1/lanes of the time. With two chunks or more, each lane runs whole
 * chunks, every chunk's heads after the chunk before's (the running sums), a layer or so
 * behind it; a single chunk's columns and heads are split across the lanes, with some 20% of
 * the lanes' time lost to waiting between its steps (a single token runs alone).
 * logits (may be NULL) receives vocab_size floats, the distribution after the last token, or
 * with `all` n rows of them, one after each token. Errors: EINVAL (bad token, a state of
 * another model or kind), ETASK, ETOOLONG (past max_positions; nothing is consumed), ENOMEM
 * (a KV cache), ECANCELED (polled between chunks; the state then holds the whole chunks
 * consumed so far, as luna_gen_state_tokens reports). */
int luna_prefill(luna_ctx *c, luna_gen_state *s, const int32_t *tokens, size_t n, float *logits,
                 int all);
/* One token: luna_prefill of n = 1. O(1) time and memory for a Luna state, which steps as
 * luna_step_batch of one. */
int luna_step(luna_ctx *c, luna_gen_state *s, int32_t token, float *logits);
/* One token for each of B different Luna states (B <= the context's chunk length) in one pass:
 * the weights are read once for all B rows, each row attends over its own state. logits gets
 * B rows of vocab_size. Every row's result is bit for bit the same whatever B is, wherever the
 * row sits and whatever the other rows hold (kn_linear_fixed; each row's attention alone), so
 * a seeded generation gives the same bytes alone or in any batch. The step runs on the
 * context's lanes (luna_ctx_set_lanes): with 8 rows a lane or more each lane takes a group of
 * rows through every layer, else its layers' output columns and its rows' attention are
 * shared out; each output and row is computed as on one lane. EINVAL (a state of another
 * model or kind, a state twice, a bad token), ETOOLONG (a state at max_positions), ECANCELED;
 * on an error no state has moved. */
int luna_step_batch(luna_ctx *c, luna_gen_state *const *s, const int32_t *tokens, size_t B, float *logits);

/* ---- BLAS ------------------------------------------------------------------------------- */

/* Sets OpenBLAS's thread count for the whole process (it is global in OpenBLAS). */
void luna_blas_set_threads(int n);
int luna_blas_threads(void);

/* Measures this machine's sgemm rate in GFLOP/s on an (m, k) x (k, n) product repeated for at
 * least `seconds`; for benchmarks, which report the engine's throughput as a share of it. */
double luna_sgemm_gflops(int m, int n, int k, double seconds);

/* ---- a model's identity, portable states, log-probabilities (issue 26) ---------------------
 *
 * A Luna state is the same size after 10 tokens and after 10 million, so a server can keep it
 * between requests, hand it to a client, and take it back on any replica that loads the same
 * model. These calls are the engine's part of that; the server decides where states live. */

#define LUNA_MODEL_ID_BYTES 32

/* The model's identity: SHA-256 of its config and its weights as loaded (model_id.c lists the
 * encoding), computed once by luna_model_load. Two directories with the same config values and
 * weight values give the same id (spacing in config.json, F16 against the same values in F32:
 * the same); any changed weight gives another. A NULL model gives 32 zero bytes. */
void luna_model_id(const luna_model *m, uint8_t out[LUNA_MODEL_ID_BYTES]);
void luna_model_id_hex(const luna_model *m, char out[2 * LUNA_MODEL_ID_BYTES + 1]); /* lowercase, NUL-ended */

/* A Luna state as bytes (docs/model-format.md, "Portable generation states", byte by byte):
 * magic, format version, the model id, the token count, the running sums (doubles), the recent
 * tokens of n-gram embeddings, optionally the logits after the last token, and a SHA-256 of
 * everything before it. Continuing from an imported state gives bit for bit the logits that
 * continuing the original would (the same calls on the same context settings).
 *
 * The logits ride along because a server that resumes a state must sample the next token
 * from them; without them it would have to run the last token again, which the state cannot
 * do (it has consumed it). Export them whenever a generation may resume.
 *
 * The byte count of an export: fixed by the model (with_logits: 0 or 1). 0 if not causal-lm. */
size_t luna_gen_state_export_bytes(const luna_model *m, int with_logits);
/* Writes the state s (and logits, vocab_size floats after its last token, or NULL for none) into
 * buf (cap bytes); *len receives the byte count, also when cap is too small. EINVAL: s NULL or a
 * KV state, non-finite logits or sums (no import would take them), cap too small (buf untouched). */
int luna_gen_state_export(const luna_gen_state *s, const float *logits, uint8_t *buf, size_t cap,
                          size_t *len);
/* Replaces s (a Luna state of the model to continue with) by the state in buf[0..len). logits
 * (vocab_size floats, may be NULL) receives the exported logits when there are some;
 * *has_logits (may be NULL) says whether there were. Everything is checked before anything
 * is written: on an error s, logits and *has_logits are unchanged, and *why (may be NULL)
 * points at one static sentence naming the first fault found, in this order:
 *   "not a Luna state (bad magic)"                    the first 8 bytes are not "LUNASTAT"
 *   "unsupported state format version"                a version other than 1
 *   "truncated state"                                 fewer bytes than the header announces
 *   "oversized state (bytes after its end)"           more bytes than the header announces
 *   "malformed state header"                          a reserved field that is not zero
 *   "state checksum mismatch (corrupted)"             the SHA-256 does not match
 *   "state of another model"                          the model id differs from s's model's
 *   "state layout does not match the model"           sums, recent tokens or logits counts
 *                                                     differ (a forged state: the id matched)
 *   "state token count beyond the model's max_positions"  (or beyond 2^53 when unlimited)
 *   "non-finite running sum in state"                 NaN, inf, or beyond the float range
 *                                                     that the decoder converts them to
 *   "recent token out of the vocabulary in state"     an id outside [0, vocab_size), or a slot
 *                                                     before the first token that is not 0
 *   "non-finite logits in state"
 * A checksum does not authenticate: whoever can edit a state can seal it again, and the
 * checks after the checksum are what keep such a state from crashing or misleading the
 * decoder. EINVAL for all of these and for NULL arguments or a KV state. Never reads outside
 * buf[0..len), whatever it holds (fuzz/fuzz_state.c). */
int luna_gen_state_import(luna_gen_state *s, const uint8_t *buf, size_t len, float *logits, int *has_logits,
                          const char **why);

/* Log-probabilities: the model's own distribution, log_softmax(logits) over every token id,
 * computed in double. Not the distribution after temperature, top-k, top-p or the repetition
 * penalty: so a token's log-probability is the same in the prompt (echo, prompt logprobs,
 * /score) and in the output, whatever the sampling parameters, as OpenAI's API and vLLM by
 * default report it (lm-evaluation-harness scores with it). TGI instead reports the generated
 * tokens' after its penalty and warpers (but its prompt tokens' before them). Pass logits with
 * -inf where a token is banned to get the distribution over the others; -inf logits get
 * -inf. Errors (EINVAL): V < 1, a NaN or +inf logit, every logit -inf, NULL pointers. */
int luna_logprobs(const float *logits, int V, double *out); /* out: V values */
/* The log-probability of `token` (into *token_lp, unless token < 0 or token_lp is NULL; EINVAL
 * for token >= V), and the n best tokens (ranked by logit, ties to the lower id, -inf left out)
 * into top_ids/top_lps (n entries each; may be NULL when n is 0). Returns how many top entries
 * it wrote (<= n) or a negative error. O(V log n). */
int luna_logprob_top(const float *logits, int V, int32_t token, double *token_lp, int n, int32_t *top_ids,
                     double *top_lps);

/* Scores a continuation: the log-probability of tokens[0..n) following the state s, whose next
 * token's distribution is `logits` (vocab_size floats: a prefill's last logits, or an imported
 * state's). per_token (n doubles, may be NULL) receives each token's log-probability (as
 * luna_logprob_top gives it), *total (may be NULL) their sum in order. s advances by all n
 * tokens and next_logits (may be NULL) receives the distribution after the last one, so that
 * echo-with-logprobs can go on generating (it is the last row of a prefill with `all`, which
 * agrees with a prefill without `all` to float rounding, not bit for bit: BLAS rounds a
 * product of one row and of many differently). For /score: prefill the prefix once, then for
 * each candidate luna_gen_state_copy it into a scratch state and score that. *greedy (may be
 * NULL) says whether every token was the most likely where it stood (luna_logprob_top's
 * ranking: lm-evaluation-harness's is_greedy).
 * The tokens go through luna_prefill in slices that end on multiples of the context's chunk
 * length in absolute positions (as luna_gen_prefill's do), so the numbers do not depend on how
 * the tokens were split between calls at those boundaries. Allocates
 * luna_score_workspace_bytes(c, n) for the call. Errors: EINVAL (a bad token or argument,
 * a state of another model or kind), ETASK, ETOOLONG (t + n past max_positions; nothing is
 * consumed), ENOMEM, ECANCELED (s has then consumed part of the tokens: discard it). */
int luna_score(luna_ctx *c, luna_gen_state *s, const float *logits, const int32_t *tokens, size_t n,
               double *per_token, double *total, float *next_logits, int *greedy);
size_t luna_score_workspace_bytes(const luna_ctx *c, size_t n); /* min(n, chunk) * vocab_size * 4 */

#endif
