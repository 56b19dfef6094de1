/* fixtures.c - temp dirs, a tiny safetensors writer and valid tiny models for the tests.
 *
 * The writer is deliberately simple and independent of engine/safetensors.c: the tests check
 * the reader against it. The list of tensors a config implies is likewise written here from
 * docs/model-format.md, apart from engine/model.c. */
#include "tests/unit/fixtures.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- files ---------------------------------------------------------------------------------- */

int fx_tmpdir(char *path, size_t len)
{
    if (snprintf(path, len, "/tmp/luna-test-XXXXXX") >= (int)len)
        return -1;
    return mkdtemp(path) != NULL ? 0 : -1;
}

static void rmtree_depth(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        char path[4096];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            struct stat st;
            if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && depth < 8)
                rmtree_depth(path, depth + 1);
            else
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

void fx_rmtree(const char *dir)
{
    rmtree_depth(dir, 0);
}

/* Rewrites in place and then sets the length: ext4 flushes a file that is truncated to zero
 * and rewritten (auto_da_alloc), which made the fuzz tests 20 times slower. */
int fx_write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)data + done, len - done, (off_t)done);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    int rc = ftruncate(fd, (off_t)len);
    return close(fd) == 0 && rc == 0 ? 0 : -1;
}

/* ---- a growing text buffer ------------------------------------------------------------------ */

typedef struct {
    char *s;
    size_t len, cap;
    int failed;
} fx_buf;

static void buf_printf(fx_buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s != NULL ? b->s + b->len : NULL, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *s = realloc(b->s, cap);
        if (s == NULL) {
            b->failed = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

/* ---- conversions ---------------------------------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

uint16_t fx_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFFu + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

uint16_t fx_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u)
        return sign | 0x7E00; /* NaN */
    if (a >= 0x47800000u)     /* >= 65536: overflows (65520 and up round to inf too) */
        return sign | 0x7C00;
    float af;
    memcpy(&af, &a, sizeof af);
    if (a < 0x38800000u) { /* below 2^-14: subnormal or zero; the FPU rounds for us */
        float scaled = af * 16777216.0f; /* in units of 2^-24 */
        long r = lrintf(scaled);         /* nearest even in the default rounding mode */
        return sign | (uint16_t)r;
    }
    uint32_t exp = (a >> 23) - 112, mant = a & 0x7FFFFF;
    uint32_t h = exp << 10 | mant >> 13;
    uint32_t rest = mant & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, up to inf: that is correct */
    return sign | (uint16_t)h;
}

float fx_round(st_dtype dtype, float f)
{
    switch (dtype) {
    case ST_F16: return st_f16_to_f32(fx_f32_to_f16(f));
    case ST_BF16: return st_bf16_to_f32(fx_f32_to_bf16(f));
    default: return f;
    }
}

/* ---- the safetensors writer ----------------------------------------------------------------- */

typedef struct {
    char *name;
    char dtype[16];
    int ndim;
    uint64_t shape[8];
    uint8_t *data;
    size_t nbytes;
} fx_entry;

struct fx_st {
    fx_entry *e;
    size_t n, cap;
    char *meta_keys[8], *meta_values[8];
    int n_meta;
    int misalign;
};

fx_st *fx_st_new(void)
{
    return calloc(1, sizeof(fx_st));
}

void fx_st_free(fx_st *w)
{
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].data);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->e);
    free(w);
}

int fx_st_add_raw(fx_st *w, const char *name, const char *dtype, int ndim, const uint64_t *shape,
                  const void *data, size_t nbytes)
{
    if (ndim < 0 || ndim > 8 || strlen(dtype) >= 16)
        return -1;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        fx_entry *e = realloc(w->e, cap * sizeof *e);
        if (e == NULL)
            return -1;
        w->e = e;
        w->cap = cap;
    }
    fx_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->data = malloc(nbytes > 0 ? nbytes : 1);
    if (e->name == NULL || e->data == NULL) {
        free(e->name);
        free(e->data);
        return -1;
    }
    strcpy(e->dtype, dtype);
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    if (nbytes > 0)
        memcpy(e->data, data, nbytes);
    e->nbytes = nbytes;
    w->n++;
    return 0;
}

int fx_st_add(fx_st *w, const char *name, st_dtype dtype, int ndim, const uint64_t *shape,
              const float *values)
{
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= (size_t)shape[i];
    size_t size = st_dtype_size(dtype);
    uint8_t *bytes = malloc(numel * size + 1);
    if (bytes == NULL)
        return -1;
    for (size_t i = 0; i < numel; i++) {
        float f = values[i];
        if (dtype == ST_F32) {
            memcpy(bytes + 4 * i, &f, 4);
        } else if (dtype == ST_F64) {
            double d = f;
            memcpy(bytes + 8 * i, &d, 8);
        } else if (dtype == ST_F16 || dtype == ST_BF16) {
            uint16_t h = dtype == ST_F16 ? fx_f32_to_f16(f) : fx_f32_to_bf16(f);
            memcpy(bytes + 2 * i, &h, 2);
        } else {
            free(bytes);
            return -1;
        }
    }
    int rc = fx_st_add_raw(w, name, st_dtype_name(dtype), ndim, shape, bytes, numel * size);
    free(bytes);
    return rc;
}

int fx_st_meta(fx_st *w, const char *key, const char *value)
{
    if (w->n_meta == 8)
        return -1;
    w->meta_keys[w->n_meta] = strdup(key);
    w->meta_values[w->n_meta] = strdup(value);
    w->n_meta++;
    return w->meta_keys[w->n_meta - 1] && w->meta_values[w->n_meta - 1] ? 0 : -1;
}

void fx_st_set_misalign(fx_st *w, int misalign)
{
    w->misalign = misalign & 7;
}

static uint8_t *image(const char *header, size_t hlen, const fx_st *w, size_t data_len,
                      size_t *len)
{
    uint8_t *out = calloc(1, 8 + hlen + data_len + 1);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(out + 8, header, hlen);
    size_t off = 8 + hlen;
    for (size_t i = 0; w != NULL && i < w->n; i++) {
        if (w->e[i].nbytes > 0)
            memcpy(out + off, w->e[i].data, w->e[i].nbytes);
        off += w->e[i].nbytes;
    }
    *len = 8 + hlen + data_len;
    return out;
}

uint8_t *fx_st_build(const fx_st *w, size_t *len)
{
    fx_buf b = {0};
    size_t off = 0;
    buf_printf(&b, "{");
    if (w->n_meta > 0) {
        buf_printf(&b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++)
            buf_printf(&b, "%s\"%s\":\"%s\"", i ? "," : "", w->meta_keys[i], w->meta_values[i]);
        buf_printf(&b, "}");
    }
    for (size_t i = 0; i < w->n; i++) {
        const fx_entry *e = &w->e[i];
        buf_printf(&b, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", (i || w->n_meta) ? "," : "",
                   e->name, e->dtype);
        for (int j = 0; j < e->ndim; j++)
            buf_printf(&b, "%s%llu", j ? "," : "", (unsigned long long)e->shape[j]);
        buf_printf(&b, "],\"data_offsets\":[%zu,%zu]}", off, off + e->nbytes);
        off += e->nbytes;
    }
    buf_printf(&b, "}");
    while (!b.failed && (8 + b.len) % 8 != (size_t)w->misalign)
        buf_printf(&b, " ");
    uint8_t *out = b.failed ? NULL : image(b.s, b.len, w, off, len);
    free(b.s);
    return out;
}

uint8_t *fx_st_raw(const char *header, size_t data_len, size_t *len)
{
    return image(header, strlen(header), NULL, data_len, len);
}

/* ---- tiny models ---------------------------------------------------------------------------- */

void fx_config_default(luna_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->task = LUNA_TASK_CLASSIFY;
    cfg->d = 8;
    cfg->H = 2;
    cfg->Hp = 2;
    cfg->l = 4;
    cfg->layers = 2;
    cfg->ffn = 16;
    cfg->activation = LUNA_ACT_RELU;
    cfg->tie_kv = 1;
    cfg->normalize_before = 0;
    cfg->positions = LUNA_POS_SINUSOIDAL;
    cfg->max_positions = 0;
    cfg->embed_scale = 0;
    cfg->dynamic_projection = 1;
    cfg->layernorm_embedding = 0;
    cfg->vocab_size = 260;
    cfg->byte_offset = 4;
    cfg->pad_id = 1;
    cfg->bos_id = 0;
    cfg->eos_id = 2;
    cfg->append_eos = 0;
    cfg->input_transform = LUNA_XFORM_NONE;
    cfg->pooling = LUNA_POOL_CLS;
    cfg->classifier_layers = 1;
    cfg->classifier_dim = 8;
    cfg->classifier_activation = LUNA_ACT_RELU;
    cfg->n_labels = 2;
    strcpy(cfg->labels[0], "ham");
    strcpy(cfg->labels[1], "spam");
}

static int omitted(const char *omit, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = omit; p != NULL && *p != 0;) {
        while (*p == ' ')
            p++;
        size_t k = strcspn(p, " ");
        if (k == n && strncmp(p, name, n) == 0)
            return 1;
        p += k;
    }
    return 0;
}

char *fx_config_json(const luna_config *c, const char *omit, const char *extra)
{
    static const char *const acts[] = {"relu", "gelu", "tanh"};
    static const char *const pos[] = {"none", "learned", "sinusoidal"};
    static const char *const pools[] = {"cls", "mean", "p"};
    static const char *const xforms[] = {"none", "email_subject_body"};
    fx_buf b = {0};
    int first = 1;
#define FIELD(name, ...)                                    \
    do {                                                    \
        if (!omitted(omit, name)) {                         \
            buf_printf(&b, "%s\n  \"%s\": ", first ? "" : ",", name); \
            buf_printf(&b, __VA_ARGS__);                    \
            first = 0;                                      \
        }                                                   \
    } while (0)
    buf_printf(&b, "{");
    FIELD("format", "\"luna\"");
    FIELD("format_version", "1");
    FIELD("task", "\"%s\"", c->task == LUNA_TASK_CAUSAL_LM ? "causal-lm" : "classification");
    FIELD("d", "%d", c->d);
    FIELD("H", "%d", c->H);
    FIELD("Hp", "%d", c->Hp);
    FIELD("l", "%d", c->l);
    FIELD("layers", "%d", c->layers);
    FIELD("ffn", "%d", c->ffn);
    FIELD("activation", "\"%s\"", acts[c->activation]);
    FIELD("tie_kv", "%s", c->tie_kv ? "true" : "false");
    FIELD("normalize_before", "%s", c->normalize_before ? "true" : "false");
    FIELD("positions", "\"%s\"", pos[c->positions]);
    FIELD("max_positions", "%d", c->max_positions);
    if (c->embed_scale > 0)
        FIELD("embed_scale", "%.9g", c->embed_scale);
    else
        FIELD("embed_scale", "null");
    FIELD("dynamic_projection", "%s", c->dynamic_projection ? "true" : "false");
    FIELD("layernorm_embedding", "%s", c->layernorm_embedding ? "true" : "false");
    FIELD("vocab_size", "%d", c->vocab_size);
    FIELD("byte_offset", "%d", c->byte_offset);
    FIELD("pad_id", "%d", c->pad_id);
    FIELD("bos_id", "%d", c->bos_id);
    FIELD("eos_id", "%d", c->eos_id);
    FIELD("append_eos", "%s", c->append_eos ? "true" : "false");
    FIELD("input_transform", "\"%s\"", xforms[c->input_transform]);
    FIELD("pooling", "\"%s\"", pools[c->pooling]);
    FIELD("classifier_layers", "%d", c->classifier_layers);
    FIELD("classifier_dim", "%d", c->classifier_dim);
    FIELD("classifier_activation", "\"%s\"", acts[c->classifier_activation]);
    if (!omitted(omit, "labels")) {
        buf_printf(&b, "%s\n  \"labels\": [", first ? "" : ",");
        for (int i = 0; i < c->n_labels; i++)
            buf_printf(&b, "%s\"%s\"", i ? ", " : "", c->labels[i]);
        buf_printf(&b, "]");
        first = 0;
    }
#undef FIELD
    if (extra != NULL)
        buf_printf(&b, "%s\n  %s", first ? "" : ",", extra);
    buf_printf(&b, "\n}\n");
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

static void add_tensor(fx_tensor *out, size_t cap, size_t *n, int ndim, uint64_t d0,
                       uint64_t d1, const char *fmt, ...)
{
    if (*n < cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out[*n].name, sizeof out[*n].name, fmt, ap);
        va_end(ap);
        out[*n].ndim = ndim;
        out[*n].shape[0] = d0;
        out[*n].shape[1] = d1;
    }
    (*n)++;
}

size_t fx_model_tensors(const luna_config *c, fx_tensor *out, size_t cap)
{
    size_t n = 0;
    uint64_t d = (uint64_t)c->d;
#define MAT(r, k, ...) add_tensor(out, cap, &n, 2, (uint64_t)(r), (uint64_t)(k), __VA_ARGS__)
#define VEC(r, ...) add_tensor(out, cap, &n, 1, (uint64_t)(r), 0, __VA_ARGS__)
    MAT(c->vocab_size, d, "embed_tokens.weight");
    if (c->positions == LUNA_POS_LEARNED)
        MAT((uint64_t)c->max_positions + (uint64_t)c->pad_id + 1, d, "embed_positions.weight");
    MAT(c->l, d, "projected_embeddings");
    if (c->layernorm_embedding) {
        VEC(d, "emb_layer_norm.weight");
        VEC(d, "emb_layer_norm.bias");
        VEC(d, "proj_emb_layer_norm.weight");
        VEC(d, "proj_emb_layer_norm.bias");
    }
    static const char *const tied[] = {"pq_proj", "q_proj", "out_proj", "pc_proj", "c_proj"};
    static const char *const untied[] = {"pq_proj", "q_proj", "out_proj", "pk_proj",
                                         "pv_proj", "k_proj", "v_proj"};
    for (int i = 0; i < c->layers; i++) {
        const char *const *names = c->tie_kv ? tied : untied;
        int nn = c->tie_kv ? 5 : 7;
        for (int j = 0; j < nn; j++) {
            MAT(d, d, "layers.%d.self_attn.%s.weight", i, names[j]);
            VEC(d, "layers.%d.self_attn.%s.bias", i, names[j]);
        }
        VEC(d, "layers.%d.self_attn_layer_norm.weight", i);
        VEC(d, "layers.%d.self_attn_layer_norm.bias", i);
        VEC(d, "layers.%d.self_atten_proj_layer_norm.weight", i);
        VEC(d, "layers.%d.self_atten_proj_layer_norm.bias", i);
        MAT(c->ffn, d, "layers.%d.fc1.weight", i);
        VEC(c->ffn, "layers.%d.fc1.bias", i);
        MAT(d, c->ffn, "layers.%d.fc2.weight", i);
        VEC(d, "layers.%d.fc2.bias", i);
        VEC(d, "layers.%d.final_layer_norm.weight", i);
        VEC(d, "layers.%d.final_layer_norm.bias", i);
    }
    if (c->normalize_before) {
        VEC(d, "layer_norm.weight");
        VEC(d, "layer_norm.bias");
        VEC(d, "proj_layer_norm.weight");
        VEC(d, "proj_layer_norm.bias");
    }
    for (int j = 0; j < c->classifier_layers; j++) {
        MAT(c->classifier_dim, j == 0 ? d : (uint64_t)c->classifier_dim, "classifier.%d.weight",
            j);
        VEC(c->classifier_dim, "classifier.%d.bias", j);
    }
    MAT(c->n_labels, c->classifier_layers > 0 ? (uint64_t)c->classifier_dim : d,
        "sentence_projection_layer.weight");
#undef MAT
#undef VEC
    return n;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

float fx_weight(uint64_t seed, const char *name, size_t i)
{
    uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a of the name */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001B3ull;
    uint64_t r = splitmix64(h ^ splitmix64(seed) ^ (uint64_t)i * 0xD1B54A32D192ED03ull);
    float u = (float)(r >> 40) / (float)(1 << 24) * 2.0f - 1.0f; /* [-1, 1) */
    int is_norm = strstr(name, "layer_norm.") != NULL;
    if (is_norm && ends_with(name, ".weight"))
        return 1.0f + 0.1f * u;
    if (ends_with(name, ".bias"))
        return 0.1f * u;
    return 0.5f * u;
}

int fx_write_model(const char *dir, const luna_config *cfg, const fx_model_opts *opts)
{
    fx_model_opts o = {0};
    if (opts != NULL)
        o = *opts;
    st_dtype dtype = o.dtype == 0 ? ST_F32 : o.dtype;
    char *json = fx_config_json(cfg, NULL, NULL);
    if (json == NULL || fx_write_file(dir, "config.json", json, strlen(json)) != 0) {
        free(json);
        return -1;
    }
    free(json);

    size_t n = fx_model_tensors(cfg, NULL, 0);
    fx_tensor *ts = calloc(n, sizeof *ts);
    fx_st *w = fx_st_new();
    int rc = -1;
    if (ts == NULL || w == NULL)
        goto done;
    fx_model_tensors(cfg, ts, n);
    fx_st_set_misalign(w, o.misalign);
    fx_st_meta(w, "format", "pt");
    for (size_t i = 0; i < n; i++) {
        fx_tensor t = ts[i];
        if (o.skip != NULL && strcmp(o.skip, t.name) == 0)
            continue;
        if (o.reshape != NULL && strcmp(o.reshape, t.name) == 0)
            t.shape[0]++;
        size_t numel = t.ndim == 2 ? t.shape[0] * t.shape[1] : t.shape[0];
        float *v = malloc(numel * sizeof *v + 1);
        if (v == NULL)
            goto done;
        for (size_t k = 0; k < numel; k++)
            v[k] = fx_weight(o.seed, t.name, k);
        int r;
        if (o.bad_dtype != NULL && strcmp(o.bad_dtype, t.name) == 0) {
            int64_t *iv = calloc(numel + 1, sizeof *iv);
            r = iv == NULL ? -1
                           : fx_st_add_raw(w, t.name, "I64", t.ndim, t.shape, iv,
                                           numel * sizeof *iv);
            free(iv);
        } else {
            r = fx_st_add(w, t.name, dtype, t.ndim, t.shape, v);
        }
        free(v);
        if (r != 0)
            goto done;
    }
    if (o.extra != NULL) {
        float v[3] = {1, 2, 3};
        uint64_t shape[1] = {3};
        if (fx_st_add(w, o.extra, dtype, 1, shape, v) != 0)
            goto done;
    }
    size_t len;
    uint8_t *img = fx_st_build(w, &len);
    if (img == NULL)
        goto done;
    rc = fx_write_file(dir, "model.safetensors", img, len);
    free(img);
done:
    fx_st_free(w);
    free(ts);
    return rc;
}

uint64_t fx_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}
