/* model.c - load a model directory into a luna_model, checking everything first.
 *
 * The data flows in three steps, in the order of this file: read and validate config.json
 * against the field table (the doc's table, docs/model-format.md, in code); map
 * model.safetensors and parse its header (engine/safetensors.c); bind every tensor the config
 * implies to its field in luna_model, with an exact shape check, in two passes over one walk of
 * the config: the first checks names, dtypes and shapes and counts the floats to convert, the
 * second points each field at its data (in the mapping when it is aligned F32) or converts it
 * into `owned`, one allocation made in between, and hashes it as loaded into the model's
 * identity (luna_model_id, model_id.h). Any tensor left over is an error, so the file
 * and the config agree exactly. No forward pass can see a model that failed any check. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* the GNU strerror_r, which returns the message */
#endif
#include "engine/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/json.h"
#include "engine/kernels.h"
#include "engine/model_id.h"
#include "engine/safetensors.h"

#define CONFIG_MAX_BYTES (1u << 20)   /* config.json larger than 1 MiB is refused */
#define CONFIG_MAX_MEM (64u << 20)    /* the JSON tree of a 1 MiB text fits well below this */
#define MAX_POSITIONS (1 << 24)
/* The doc gives vocab_size no upper bound; 2^24 keeps every token id and positions row
 * (max_positions + pad_id + 1) far from INT_MAX, and is 60 times the largest real vocabulary. */
#define MAX_VOCAB (1 << 24)

_Static_assert(sizeof(luna_task) == sizeof(int) && sizeof(luna_act) == sizeof(int) &&
                   sizeof(luna_pos) == sizeof(int) && sizeof(luna_pool) == sizeof(int) &&
                   sizeof(luna_xform) == sizeof(int) && sizeof(luna_phi) == sizeof(int),
               "the config table stores enums as int");

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- config.json: the field table ----------------------------------------------------------- */

/* The fields luna_config does not keep, or keeps in another form. */
typedef struct {
    int format, format_version;
    double embed_scale; /* -1: null (resolved after the walk) */
} cfg_extra;

/* What the table fills: the caller's luna_config (straight into the model: it holds 64 KiB of
 * labels, which is no size for a copy or a thread's stack) and the extras. */
typedef struct {
    luna_config *c;
    cfg_extra x;
} cfg_parse;

typedef enum {
    K_INT,    /* integer in [min, max], stored as int */
    K_BOOL,   /* true/false, stored as int 1/0 */
    K_ENUM,   /* one of names[], stored as its index */
    K_SCALE,  /* number > 0 or null, stored as double (-1 for null) */
    K_LABELS, /* array of label strings into c.labels, c.n_labels */
} cfg_kind;

typedef struct {
    const char *name;
    cfg_kind kind;
    int required;
    long long min, max, def;   /* K_INT: range; K_INT, K_BOOL, K_ENUM: the default */
    const char *def_from;      /* the default is this (earlier) field's value, e.g. Hp = H */
    const char *const *names;  /* K_ENUM: accepted strings, NULL-terminated; index = value */
    int extra;                 /* 1: the value goes into cfg_extra, 0: into luna_config */
    size_t off;                /* ... at this offset */
    int task;                  /* ANY, or the one task (CLS, LM) the field applies to */
} cfg_field;

static const char *const FORMATS[] = {"luna", NULL};
static const char *const TASKS[] = {"classification", "causal-lm", NULL};
static const char *const ACTS[] = {"relu", "gelu", NULL};
static const char *const CLS_ACTS[] = {"relu", "gelu", "tanh", NULL};
static const char *const POSITIONS[] = {"none", "learned", "sinusoidal", NULL};
static const char *const POOLINGS[] = {"cls", "mean", "p", NULL};
static const char *const XFORMS[] = {"none", "email_subject_body", NULL};
static const char *const PHIS[] = {"softplus_ln2", "elu_plus_1", "softplus", NULL};

#define REQ 1
#define OPT 0
#define AT(field) 0, offsetof(luna_config, field)
#define EX(field) 1, offsetof(cfg_extra, field)
#define ANY 0
#define CLS 1 /* classification only */
#define LM 2  /* causal-lm only */

/* The doc's table, in its order. A field is checked alone here; the checks that relate
 * fields come after the walk (check_cross). */
static const cfg_field FIELDS[] = {
/*   name                     kind      req  min  max                         default
 *                                      default from  enum names  stored in */
    {"format",                K_ENUM,   REQ, 0,   0,                          0,
                                        NULL,         FORMATS,    EX(format), ANY},
    {"format_version",        K_INT,    REQ, 1,   1,                          0,
                                        NULL,         NULL,       EX(format_version), ANY},
    {"task",                  K_ENUM,   REQ, 0,   0,                          0,
                                        NULL,         TASKS,      AT(task), ANY},
    {"d",                     K_INT,    REQ, 2,   4096,                       0,
                                        NULL,         NULL,       AT(d), ANY},
    {"H",                     K_INT,    REQ, 1,   64,                         0,
                                        NULL,         NULL,       AT(H), ANY},
    {"Hp",                    K_INT,    OPT, 1,   64,                         0,
                                        "H",          NULL,       AT(Hp), CLS},
    {"l",                     K_INT,    REQ, 1,   1024,                       0,
                                        NULL,         NULL,       AT(l), ANY},
    {"layers",                K_INT,    REQ, 1,   LUNA_MAX_LAYERS,            0,
                                        NULL,         NULL,       AT(layers), ANY},
    {"ffn",                   K_INT,    REQ, 1,   65536,                      0,
                                        NULL,         NULL,       AT(ffn), ANY},
    {"activation",            K_ENUM,   OPT, 0,   0,                          LUNA_ACT_RELU,
                                        NULL,         ACTS,       AT(activation), ANY},
    {"tie_kv",                K_BOOL,   OPT, 0,   0,                          1,
                                        NULL,         NULL,       AT(tie_kv), ANY},
    {"normalize_before",      K_BOOL,   OPT, 0,   0,                          0,
                                        NULL,         NULL,       AT(normalize_before), ANY},
    {"positions",             K_ENUM,   OPT, 0,   0,                          LUNA_POS_SINUSOIDAL,
                                        NULL,         POSITIONS,  AT(positions), ANY},
    {"max_positions",         K_INT,    OPT, 0,   MAX_POSITIONS,              0,
                                        NULL,         NULL,       AT(max_positions), ANY},
    {"embed_scale",           K_SCALE,  OPT, 0,   0,                          0 /* null */,
                                        NULL,         NULL,       EX(embed_scale), ANY},
    {"ngram_embed",           K_INT,    OPT, 1,   LUNA_MAX_NGRAM,             1,
                                        NULL,         NULL,       AT(ngram_embed), ANY},
    {"hash_ngrams",           K_INT,    OPT, 1,   LUNA_MAX_NGRAM,             1,
                                        NULL,         NULL,       AT(hash_ngrams), ANY},
    {"hash_buckets",          K_INT,    OPT, 2,   1 << 24,                    4096,
                                        NULL,         NULL,       AT(hash_buckets), ANY},
    {"hash_dim",              K_INT,    OPT, 1,   4096,                       32,
                                        NULL,         NULL,       AT(hash_dim), ANY},
    {"dynamic_projection",    K_BOOL,   OPT, 0,   0,                          1,
                                        NULL,         NULL,       AT(dynamic_projection), CLS},
    {"layernorm_embedding",   K_BOOL,   OPT, 0,   0,                          0,
                                        NULL,         NULL,       AT(layernorm_embedding), ANY},
    {"vocab_size",            K_INT,    OPT, 256, MAX_VOCAB,                  260,
                                        NULL,         NULL,       AT(vocab_size), ANY},
    {"byte_offset",           K_INT,    OPT, 0,   MAX_VOCAB - 256,            4,
                                        NULL,         NULL,       AT(byte_offset), ANY},
    {"pad_id",                K_INT,    OPT, 0,   MAX_VOCAB - 1,              1,
                                        NULL,         NULL,       AT(pad_id), ANY},
    {"bos_id",                K_INT,    OPT, 0,   MAX_VOCAB - 1,              0,
                                        NULL,         NULL,       AT(bos_id), ANY},
    {"eos_id",                K_INT,    OPT, 0,   MAX_VOCAB - 1,              2,
                                        NULL,         NULL,       AT(eos_id), ANY},
    {"append_eos",            K_BOOL,   OPT, 0,   0,                          0,
                                        NULL,         NULL,       AT(append_eos), CLS},
    {"input_transform",       K_ENUM,   OPT, 0,   0,                          LUNA_XFORM_NONE,
                                        NULL,         XFORMS,     AT(input_transform), CLS},
    {"pooling",               K_ENUM,   OPT, 0,   0,                          LUNA_POOL_CLS,
                                        NULL,         POOLINGS,   AT(pooling), CLS},
    {"classifier_layers",     K_INT,    OPT, 0,   LUNA_MAX_CLASSIFIER_LAYERS, 1,
                                        NULL,         NULL,       AT(classifier_layers), CLS},
    {"classifier_dim",        K_INT,    OPT, 1,   65536,                      0,
                                        "d",          NULL,       AT(classifier_dim), CLS},
    {"classifier_activation", K_ENUM,   OPT, 0,   0,                          LUNA_ACT_RELU,
                                        NULL,         CLS_ACTS,   AT(classifier_activation), CLS},
    {"causal_phi",            K_ENUM,   OPT, 0,   0,                          LUNA_PHI_SOFTPLUS_LN2,
                                        NULL,         PHIS,       AT(causal_phi), LM},
    {"causal_pc_proj",        K_BOOL,   OPT, 0,   0,                          1,
                                        NULL,         NULL,       AT(causal_pc_proj), LM},
    {"tie_embeddings",        K_BOOL,   OPT, 0,   0,                          1,
                                        NULL,         NULL,       AT(tie_embeddings), LM},
    {"labels",                K_LABELS, REQ, 0,   0,                          0,
                                        NULL,         NULL,       AT(labels), CLS},
};
#define N_FIELDS (sizeof FIELDS / sizeof FIELDS[0])

static const cfg_field *find_field(const char *name, size_t len)
{
    for (size_t i = 0; i < N_FIELDS; i++)
        if (strlen(FIELDS[i].name) == len && memcmp(FIELDS[i].name, name, len) == 0)
            return &FIELDS[i];
    return NULL;
}

static void *field_at(cfg_parse *p, const cfg_field *f)
{
    return (f->extra ? (char *)&p->x : (char *)p->c) + f->off;
}

static void put_int(cfg_parse *p, const cfg_field *f, int v)
{
    memcpy(field_at(p, f), &v, sizeof v);
}

static int get_int(cfg_parse *p, const cfg_field *f)
{
    int v;
    memcpy(&v, field_at(p, f), sizeof v);
    return v;
}

static int read_labels(cfg_parse *p, const jsn_value *v, char *err, size_t errlen)
{
    luna_config *c = p->c;
    if (v->type != JSN_ARRAY) {
        seterr(err, errlen, "config.json: field \"labels\": expected an array of strings, got "
               "%s", jsn_type_name(v->type));
        return LUNA_ECONFIG;
    }
    if (v->len < 2 || v->len > LUNA_MAX_LABELS) {
        seterr(err, errlen, "config.json: field \"labels\": %zu labels, expected 2..%d", v->len,
               LUNA_MAX_LABELS);
        return LUNA_ECONFIG;
    }
    for (size_t i = 0; i < v->len; i++) {
        const jsn_value *s = v->items[i];
        if (s->type != JSN_STRING) {
            seterr(err, errlen, "config.json: field \"labels\": labels[%zu] is %s, expected "
                   "a string", i, jsn_type_name(s->type));
            return LUNA_ECONFIG;
        }
        if (s->len == 0) {
            seterr(err, errlen, "config.json: field \"labels\": labels[%zu] is empty", i);
            return LUNA_ECONFIG;
        }
        if (strlen(s->str) != s->len) {
            seterr(err, errlen, "config.json: field \"labels\": labels[%zu] holds a NUL "
                   "character", i);
            return LUNA_ECONFIG;
        }
        if (s->len >= LUNA_MAX_LABEL_LEN) {
            seterr(err, errlen, "config.json: field \"labels\": labels[%zu] is %zu bytes, the "
                   "limit is %d", i, s->len, LUNA_MAX_LABEL_LEN - 1);
            return LUNA_ECONFIG;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->labels[j], s->str) == 0) {
                char shown[48];
                seterr(err, errlen, "config.json: field \"labels\": labels[%zu] \"%s\" repeats "
                       "labels[%zu]", i, jsn_show(s->str, s->len, shown, sizeof shown), j);
                return LUNA_ECONFIG;
            }
        }
        memcpy(c->labels[i], s->str, s->len + 1);
    }
    c->n_labels = (int)v->len;
    return 0;
}

/* Checks the value v of field f alone and stores it. */
static int read_field(cfg_parse *p, const cfg_field *f, const jsn_value *v, char *err,
                      size_t errlen)
{
    char shown[48];
    switch (f->kind) {
    case K_INT:
        if (v->type != JSN_NUMBER) {
            seterr(err, errlen, "config.json: field \"%s\": expected an integer, got %s",
                   f->name, jsn_type_name(v->type));
            return LUNA_ECONFIG;
        }
        if (!v->is_int) {
            seterr(err, errlen, "config.json: field \"%s\": %g is not an integer", f->name,
                   v->num);
            return LUNA_ECONFIG;
        }
        if (v->num < (double)f->min || v->num > (double)f->max) {
            seterr(err, errlen, "config.json: field \"%s\": %.0f is out of range %lld..%lld",
                   f->name, v->num, f->min, f->max);
            return LUNA_ECONFIG;
        }
        put_int(p, f, (int)v->num);
        return 0;
    case K_BOOL:
        if (v->type != JSN_TRUE && v->type != JSN_FALSE) {
            seterr(err, errlen, "config.json: field \"%s\": expected a boolean, got %s",
                   f->name, jsn_type_name(v->type));
            return LUNA_ECONFIG;
        }
        put_int(p, f, v->type == JSN_TRUE);
        return 0;
    case K_ENUM: {
        if (v->type != JSN_STRING) {
            seterr(err, errlen, "config.json: field \"%s\": expected a string, got %s",
                   f->name, jsn_type_name(v->type));
            return LUNA_ECONFIG;
        }
        char choices[128] = "";
        for (int i = 0; f->names[i] != NULL; i++) {
            if (strlen(f->names[i]) == v->len && memcmp(f->names[i], v->str, v->len) == 0) {
                put_int(p, f, i);
                return 0;
            }
            size_t used = strlen(choices);
            snprintf(choices + used, sizeof choices - used, "%s\"%s\"", i > 0 ? ", " : "",
                     f->names[i]);
        }
        seterr(err, errlen, "config.json: field \"%s\": \"%s\" is not one of %s", f->name,
               jsn_show(v->str, v->len, shown, sizeof shown), choices);
        return LUNA_ECONFIG;
    }
    case K_SCALE: {
        double s = -1;
        if (v->type == JSN_NUMBER) {
            float fs = (float)v->num;
            if (!(v->num > 0) || fs == 0 || isinf(fs)) {
                seterr(err, errlen, "config.json: field \"%s\": %g is out of range (it must be "
                       "> 0 and fit a float)", f->name, v->num);
                return LUNA_ECONFIG;
            }
            s = v->num;
        } else if (v->type != JSN_NULL) {
            seterr(err, errlen, "config.json: field \"%s\": expected a number or null, got %s",
                   f->name, jsn_type_name(v->type));
            return LUNA_ECONFIG;
        }
        memcpy(field_at(p, f), &s, sizeof s);
        return 0;
    }
    case K_LABELS:
        return read_labels(p, v, err, errlen);
    }
    return LUNA_ECONFIG;
}

/* The checks that relate fields, once each field is valid alone. */
static int check_cross(const luna_config *c, char *err, size_t errlen)
{
    if (c->d % 2 != 0) {
        seterr(err, errlen, "config.json: field \"d\": %d is not even", c->d);
        return LUNA_ECONFIG;
    }
    if (c->positions == LUNA_POS_SINUSOIDAL && c->d < 4) {
        /* fairseq's frequencies divide by d/2 - 1 */
        seterr(err, errlen, "config.json: field \"d\": %d is below 4, the least that sinusoidal positions allow", c->d);
        return LUNA_ECONFIG;
    }
    if (c->d % c->H != 0) {
        seterr(err, errlen, "config.json: field \"H\": %d does not divide d = %d", c->H, c->d);
        return LUNA_ECONFIG;
    }
    if (c->d % c->Hp != 0) {
        seterr(err, errlen, "config.json: field \"Hp\": %d does not divide d = %d", c->Hp,
               c->d);
        return LUNA_ECONFIG;
    }
    if (c->positions == LUNA_POS_LEARNED && c->max_positions == 0) {
        seterr(err, errlen, "config.json: field \"max_positions\": learned positions need it "
               "(1..%d)", MAX_POSITIONS);
        return LUNA_ECONFIG;
    }
    if ((long long)c->vocab_size < (long long)c->byte_offset + 256) {
        seterr(err, errlen, "config.json: field \"vocab_size\": %d is less than byte_offset + "
               "256 = %d", c->vocab_size, c->byte_offset + 256);
        return LUNA_ECONFIG;
    }
    const struct {
        const char *name;
        int id;
    } ids[] = {{"pad_id", c->pad_id}, {"bos_id", c->bos_id}, {"eos_id", c->eos_id}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        if (ids[i].id >= c->vocab_size) {
            seterr(err, errlen, "config.json: field \"%s\": %d is not below vocab_size = %d",
                   ids[i].name, ids[i].id, c->vocab_size);
            return LUNA_ECONFIG;
        }
    }
    if (c->hash_buckets & (c->hash_buckets - 1)) {
        seterr(err, errlen, "config.json: field \"hash_buckets\": %d is not a power of two",
               c->hash_buckets);
        return LUNA_ECONFIG;
    }
    if (c->layernorm_embedding && c->normalize_before) {
        seterr(err, errlen, "config.json: fields \"layernorm_embedding\" and "
               "\"normalize_before\" cannot both be true");
        return LUNA_ECONFIG;
    }
    return 0;
}

/* Parses and validates the text of config.json into *out, which must be zeroed; on failure
 * *out holds a partial result. */
static int parse_config(const char *text, size_t len, luna_config *out, char *err,
                        size_t errlen)
{
    jsn_doc *doc = NULL;
    char jerr[200];
    int rc = jsn_parse(text, len, CONFIG_MAX_MEM, &doc, jerr, sizeof jerr);
    if (rc == JSN_ENOMEM) {
        seterr(err, errlen, "config.json: out of memory");
        return LUNA_ENOMEM;
    }
    if (rc != 0) {
        seterr(err, errlen, "config.json: not valid JSON: %s", jerr);
        return LUNA_ECONFIG;
    }
    cfg_parse p = {.c = out};
    const jsn_value *root = jsn_root(doc);
    rc = LUNA_ECONFIG;
    if (root->type != JSN_OBJECT) {
        seterr(err, errlen, "config.json: the top level is %s, expected an object",
               jsn_type_name(root->type));
        goto done;
    }
    for (size_t i = 0; i < N_FIELDS; i++) {
        const cfg_field *f = &FIELDS[i];
        const jsn_value *v = jsn_get(root, f->name);
        /* "task" comes third in the table: every field after it knows the task */
        int applies = f->task == ANY || f->task == (int)out->task + 1;
        if (v != NULL && !applies) {
            seterr(err, errlen, "config.json: field \"%s\" does not apply to task \"%s\"",
                   f->name, TASKS[out->task]);
            goto done;
        }
        if (v == NULL) {
            if (f->required && applies) {
                seterr(err, errlen, "config.json: field \"%s\" is required%s", f->name,
                       f->task == CLS ? " for task \"classification\"" : "");
                goto done;
            }
            if (f->def_from != NULL)
                put_int(&p, f, get_int(&p, find_field(f->def_from, strlen(f->def_from))));
            else if (f->kind == K_SCALE)
                p.x.embed_scale = -1;
            else if (f->kind != K_LABELS)
                put_int(&p, f, (int)f->def);
            continue;
        }
        if ((rc = read_field(&p, f, v, err, errlen)) != 0)
            goto done;
        rc = LUNA_ECONFIG;
    }
    for (size_t i = 0; i < root->len; i++) {
        const jsn_value *v = root->items[i];
        if (find_field(v->key, v->key_len) == NULL) {
            char shown[48];
            seterr(err, errlen, "config.json: unknown field \"%s\"",
                   jsn_show(v->key, v->key_len, shown, sizeof shown));
            goto done;
        }
    }
    if ((rc = check_cross(out, err, errlen)) != 0)
        goto done;
    if (p.x.embed_scale < 0)
        out->embed_scale = out->positions == LUNA_POS_SINUSOIDAL ? sqrtf((float)out->d) : 1.0f;
    else
        out->embed_scale = (float)p.x.embed_scale;
    rc = 0;
done:
    jsn_free(doc);
    return rc;
}

/* ---- files ---------------------------------------------------------------------------------- */

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *path = malloc(a + 1 + b + 1);
    if (path == NULL)
        return NULL;
    memcpy(path, dir, a);
    path[a] = '/';
    memcpy(path + a + 1, name, b + 1);
    return path;
}

static const char *errno_text(int e, char *buf, size_t len)
{
    return strerror_r(e, buf, len); /* GNU: returns the message, maybe not in buf */
}

/* Opens dir/name read-only as a regular file: the fd, or a negative code with err set. */
static int open_model_file(const char *dir, const char *name, struct stat *st, char *err,
                           size_t errlen)
{
    char *path = path_join(dir, name);
    if (path == NULL) {
        seterr(err, errlen, "%s: out of memory", name);
        return LUNA_ENOMEM;
    }
    char ebuf[128];
    /* O_NONBLOCK: a FIFO planted in the model dir must not hang the open; reads of a regular
     * file ignore the flag. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        seterr(err, errlen, "%s: cannot open %s: %s", name, path,
               errno_text(errno, ebuf, sizeof ebuf));
        free(path);
        return LUNA_EIO;
    }
    if (fstat(fd, st) != 0) {
        seterr(err, errlen, "%s: cannot stat %s: %s", name, path,
               errno_text(errno, ebuf, sizeof ebuf));
        close(fd);
        free(path);
        return LUNA_EIO;
    }
    if (!S_ISREG(st->st_mode)) {
        seterr(err, errlen, "%s: %s is not a regular file", name, path);
        close(fd);
        free(path);
        return LUNA_EIO;
    }
    free(path);
    return fd;
}

/* Reads config.json whole into a malloc'd buffer (*len bytes). */
static int read_config_file(const char *dir, char **text, size_t *len, char *err,
                            size_t errlen)
{
    struct stat st;
    int fd = open_model_file(dir, "config.json", &st, err, errlen);
    if (fd < 0)
        return fd;
    int rc;
    if (st.st_size > (off_t)CONFIG_MAX_BYTES) {
        seterr(err, errlen, "config.json: %lld bytes, over the %u-byte limit",
               (long long)st.st_size, CONFIG_MAX_BYTES);
        rc = LUNA_ECONFIG;
        goto fail_fd;
    }
    size_t cap = (size_t)st.st_size, n = 0;
    char *buf = malloc(cap > 0 ? cap : 1);
    if (buf == NULL) {
        seterr(err, errlen, "config.json: out of memory");
        rc = LUNA_ENOMEM;
        goto fail_fd;
    }
    while (n < cap) { /* a file that shrinks meanwhile is read as far as it goes */
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            char ebuf[128];
            seterr(err, errlen, "config.json: read error: %s",
                   errno_text(errno, ebuf, sizeof ebuf));
            rc = LUNA_EIO;
            goto fail_buf;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    *text = buf;
    *len = n;
    return 0;

fail_buf:
    free(buf);
fail_fd:
    close(fd);
    return rc;
}

/* Maps model.safetensors read-only. The mapping is shared by every reader of the model; a file
 * truncated by someone else while it is mapped would fault on access (as with any mmap). */
static int map_weights(const char *dir, void **map, size_t *map_len, char *err, size_t errlen)
{
    struct stat st;
    int fd = open_model_file(dir, "model.safetensors", &st, err, errlen);
    if (fd < 0)
        return fd;
    if (st.st_size < 8) {
        seterr(err, errlen, "model.safetensors: the file is %lld bytes, too short for the "
               "8-byte header length", (long long)st.st_size);
        close(fd);
        return LUNA_EFORMAT;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        char ebuf[128];
        seterr(err, errlen, "model.safetensors: cannot map: %s", errno_text(e, ebuf,
               sizeof ebuf));
        return e == ENOMEM ? LUNA_ENOMEM : LUNA_EIO;
    }
    *map = p;
    *map_len = (size_t)st.st_size;
    return 0;
}

/* ---- binding tensors to the model ----------------------------------------------------------- */

typedef struct {
    const st_file *st;
    unsigned char *used;  /* (n_tensors) set once a tensor is bound */
    int pass;             /* 0: check and count; 1: point and convert */
    size_t owned_need;    /* pass 0: floats that must be copied */
    float *owned;         /* pass 1: (owned_need) */
    size_t owned_next;    /* pass 1: floats of owned handed out */
    size_t weight_bytes;  /* pass 0: F32 bytes of every bound tensor */
    luna_sha256_ctx *id;  /* pass 1: the model's identity, fed every tensor as loaded */
    char *err;
    size_t errlen;
} binder;

static void fmt_shape(char *buf, size_t len, int ndim, const uint64_t *shape)
{
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && n < len; i++) {
        if (i == 8) {
            snprintf(buf + n, len - n, ", ...");
            n = strlen(buf);
            break;
        }
        n += (size_t)snprintf(buf + n, len - n, "%s%llu", i ? ", " : "",
                              (unsigned long long)shape[i]);
    }
    if (n < len)
        snprintf(buf + n, len - n, "]");
}

static int in_place(const st_tensor *t)
{
    return t->dtype == ST_F32 && (uintptr_t)t->data % _Alignof(float) == 0;
}

/* Binds tensor `name`, of shape (d0) or (d0, d1), to *dst. */
static int bind(binder *b, const float **dst, const char *name, int ndim, long long d0,
                long long d1)
{
    const st_tensor *t = st_find(b->st, name);
    if (b->pass == 1) {
        if (in_place(t)) {
            *dst = (const float *)(const void *)t->data;
        } else {
            float *o = b->owned + b->owned_next;
            st_read_f32(t, o);
            b->owned_next += t->numel;
            *dst = o;
        }
        luna__model_id_tensor(b->id, name, ndim, (uint64_t)d0, (uint64_t)d1, *dst, t->numel);
        return 0;
    }
    uint64_t want[2] = {(uint64_t)d0, (uint64_t)d1};
    char ws[64], hs[96];
    fmt_shape(ws, sizeof ws, ndim, want);
    if (t == NULL) {
        seterr(b->err, b->errlen, "model.safetensors: tensor \"%s\" is missing (expected shape "
               "%s)", name, ws);
        return LUNA_ETENSOR;
    }
    fmt_shape(hs, sizeof hs, t->ndim, t->shape);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        seterr(b->err, b->errlen, "model.safetensors: tensor \"%s\": dtype %s, expected F32, "
               "F16 or BF16", name, st_dtype_name(t->dtype));
        return LUNA_ETENSOR;
    }
    if (t->ndim != ndim || t->shape[0] != want[0] || (ndim == 2 && t->shape[1] != want[1])) {
        seterr(b->err, b->errlen, "model.safetensors: tensor \"%s\": shape %s, expected %s",
               name, hs, ws);
        return LUNA_ETENSOR;
    }
    b->used[t - b->st->tensors] = 1;
    if (!in_place(t))
        b->owned_need += t->numel;
    b->weight_bytes += t->numel * sizeof(float);
    return 0;
}

static int bind_linear(binder *b, luna_linear *lin, const char *prefix, int out, int in,
                       int has_bias)
{
    char name[128];
    lin->out = out;
    lin->in = in;
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = bind(b, &lin->w, name, 2, out, in);
    if (rc == 0 && has_bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        rc = bind(b, &lin->b, name, 1, out, 0);
    }
    return rc;
}

static int bind_norm(binder *b, luna_norm *n, const char *prefix, int d)
{
    char name[128];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int rc = bind(b, &n->w, name, 1, d, 0);
    if (rc == 0) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        rc = bind(b, &n->b, name, 1, d, 0);
    }
    return rc;
}

#define TRY(call)              \
    do {                       \
        int rc_ = (call);      \
        if (rc_ != 0)          \
            return rc_;        \
    } while (0)

/* Walks every tensor the config implies, in the doc's table order. */
static int bind_all(binder *b, luna_model *m)
{
    const luna_config *c = &m->cfg;
    const int d = c->d, cls = c->task == LUNA_TASK_CLASSIFY;
    char p[96];
    TRY(bind(b, &m->embed_tokens, "embed_tokens.weight", 2, c->vocab_size, d));
    if (c->positions == LUNA_POS_LEARNED)
        TRY(bind(b, &m->embed_positions, "embed_positions.weight", 2,
                 (long long)c->max_positions + c->pad_id + 1, d));
    if (c->ngram_embed > 1)
        TRY(bind(b, &m->embed_ngrams, "embed_ngrams.weight", 2,
                 (long long)(c->ngram_embed - 1) * c->vocab_size, d));
    if (c->hash_ngrams > 1) {
        TRY(bind(b, &m->embed_hash, "embed_hash.weight", 2,
                 (long long)(c->hash_ngrams - 1) * c->hash_buckets, c->hash_dim));
        TRY(bind(b, &m->embed_hash_proj, "embed_hash_proj.weight", 2, d,
                 (long long)(c->hash_ngrams - 1) * c->hash_dim));
    }
    TRY(bind(b, &m->projected_embeddings, "projected_embeddings", 2, c->l, d));
    if (c->layernorm_embedding) {
        TRY(bind_norm(b, &m->emb_layer_norm, "emb_layer_norm", d));
        if (cls) /* a causal LM's P is a parameter that no layer norm touches */
            TRY(bind_norm(b, &m->proj_emb_layer_norm, "proj_emb_layer_norm", d));
    }
    for (int i = 0; i < c->layers; i++) {
        luna_layer *L = &m->layers[i];
        /* The causal attention has no pack path: no pk/pv_proj, and pc_proj only feeds w_t. */
        struct {
            luna_linear *lin;
            const char *name;
            int use;
        } attn[] = {
            {&L->pq_proj, "pq_proj", 1},
            {&L->q_proj, "q_proj", 1},
            {&L->out_proj, "out_proj", 1},
            {&L->pc_proj, "pc_proj", cls ? c->tie_kv : c->causal_pc_proj},
            {&L->c_proj, "c_proj", c->tie_kv},
            {&L->pk_proj, "pk_proj", cls && !c->tie_kv},
            {&L->pv_proj, "pv_proj", cls && !c->tie_kv},
            {&L->k_proj, "k_proj", !c->tie_kv},
            {&L->v_proj, "v_proj", !c->tie_kv},
        };
        for (size_t j = 0; j < sizeof attn / sizeof attn[0]; j++) {
            if (!attn[j].use)
                continue;
            snprintf(p, sizeof p, "layers.%d.self_attn.%s", i, attn[j].name);
            TRY(bind_linear(b, attn[j].lin, p, d, d, 1));
        }
        snprintf(p, sizeof p, "layers.%d.self_attn_layer_norm", i);
        TRY(bind_norm(b, &L->self_attn_layer_norm, p, d));
        if (cls) {
            snprintf(p, sizeof p, "layers.%d.self_atten_proj_layer_norm", i);
            TRY(bind_norm(b, &L->self_atten_proj_layer_norm, p, d));
        }
        snprintf(p, sizeof p, "layers.%d.fc1", i);
        TRY(bind_linear(b, &L->fc1, p, c->ffn, d, 1));
        snprintf(p, sizeof p, "layers.%d.fc2", i);
        TRY(bind_linear(b, &L->fc2, p, d, c->ffn, 1));
        snprintf(p, sizeof p, "layers.%d.final_layer_norm", i);
        TRY(bind_norm(b, &L->final_layer_norm, p, d));
    }
    if (c->normalize_before) {
        TRY(bind_norm(b, &m->layer_norm, "layer_norm", d));
        if (cls)
            TRY(bind_norm(b, &m->proj_layer_norm, "proj_layer_norm", d));
    }
    if (!cls) {
        if (c->tie_embeddings) /* logits = x embed_tokens^T */
            m->output_projection = (luna_linear){m->embed_tokens, NULL, c->vocab_size, d, NULL};
        else
            TRY(bind_linear(b, &m->output_projection, "output_projection", c->vocab_size, d, 0));
        return 0;
    }
    for (int j = 0; j < c->classifier_layers; j++) {
        snprintf(p, sizeof p, "classifier.%d", j);
        TRY(bind_linear(b, &m->classifier[j], p, c->classifier_dim,
                        j == 0 ? d : c->classifier_dim, 1));
    }
    TRY(bind_linear(b, &m->sentence_projection_layer, "sentence_projection_layer", c->n_labels,
                    c->classifier_layers > 0 ? c->classifier_dim : d, 0));
    return 0;
}

/* Binds every tensor of st to m: check, allocate `owned` once, then point and convert. */
static int bind_weights(luna_model *m, const st_file *st, char *err, size_t errlen)
{
    binder b = {.st = st, .err = err, .errlen = errlen};
    b.used = calloc(st->n_tensors > 0 ? st->n_tensors : 1, 1);
    if (b.used == NULL) {
        seterr(err, errlen, "model.safetensors: out of memory");
        return LUNA_ENOMEM;
    }
    int rc = bind_all(&b, m);
    if (rc != 0)
        goto done;
    for (size_t i = 0; i < st->n_tensors; i++) {
        if (!b.used[i]) {
            const st_tensor *t = &st->tensors[i];
            char shown[48], hs[96];
            fmt_shape(hs, sizeof hs, t->ndim, t->shape);
            seterr(err, errlen, "model.safetensors: unexpected tensor \"%s\" (shape %s): the "
                   "config does not use it", jsn_show(t->name, strlen(t->name), shown,
                   sizeof shown), hs);
            rc = LUNA_ETENSOR;
            goto done;
        }
    }
    if (b.owned_need > 0) {
        b.owned = b.owned_need <= SIZE_MAX / sizeof(float)
                      ? malloc(b.owned_need * sizeof(float)) : NULL;
        if (b.owned == NULL) {
            seterr(err, errlen, "model.safetensors: out of memory for %zu converted floats",
                   b.owned_need);
            rc = LUNA_ENOMEM;
            goto done;
        }
    }
    b.pass = 1;
    luna_sha256_ctx id;
    luna__model_id_begin(&id, &m->cfg);
    b.id = &id;
    rc = bind_all(&b, m); /* cannot fail: pass 0 checked every tensor */
    if (rc != 0 || b.owned_next != b.owned_need) {
        seterr(err, errlen, "model.safetensors: internal error while binding tensors");
        free(b.owned);
        rc = rc != 0 ? rc : LUNA_ETENSOR;
        goto done;
    }
    m->owned = b.owned;
    m->owned_len = b.owned_need;
    m->weight_bytes = b.weight_bytes;
    luna_sha256_final(&id, m->id);
done:
    free(b.used);
    return rc;
}

/* causal-lm: Pq of every layer, pq_proj(P0) k^-1/2 with P0 = projected_embeddings *
 * embed_scale. P is a parameter that no layer changes, so Pq depends on the weights alone.
 * Also each head's part transposed, for the decode steps (pqt). */
static int cache_pq(luna_model *m, char *err, size_t errlen)
{
    const luna_config *c = &m->cfg;
    size_t d = (size_t)c->d, l = (size_t)c->l;
    m->pq = malloc((size_t)c->layers * l * d * sizeof(float));
    m->pqt = malloc((size_t)c->layers * l * d * sizeof(float));
    float *P0 = malloc(l * d * sizeof(float));
    if (m->pq == NULL || m->pqt == NULL || P0 == NULL) {
        free(m->pq);
        free(m->pqt);
        free(P0);
        m->pq = m->pqt = NULL;
        seterr(err, errlen, "out of memory for the cached Pq");
        return LUNA_ENOMEM;
    }
    for (size_t i = 0; i < l * d; i++)
        P0[i] = m->projected_embeddings[i] * c->embed_scale;
    float s = 1.0f / sqrtf((float)(c->d / c->H));
    for (int i = 0; i < c->layers; i++)
        kn_linear(&m->layers[i].pq_proj, P0, l, d, m->pq + (size_t)i * l * d, d, s);
    size_t H = (size_t)c->H, k = d / H;
    for (size_t i = 0; i < (size_t)c->layers; i++)
        for (size_t h = 0; h < H; h++)
            for (size_t e = 0; e < k; e++)
                for (size_t j = 0; j < l; j++)
                    m->pqt[((i * H + h) * k + e) * l + j] = m->pq[(i * l + j) * d + h * k + e];
    free(P0);
    return 0;
}

/* (model.h) the list that step_run in decoder.c goes through */
int luna_decode_linears(luna_model *m, luna_linear **lin)
{
    const luna_config *c = &m->cfg;
    int n = 0;
    for (int i = 0; i < c->layers; i++) {
        luna_layer *ly = &m->layers[i];
        lin[n++] = &ly->q_proj;
        lin[n++] = c->tie_kv ? &ly->c_proj : &ly->k_proj;
        if (!c->tie_kv) lin[n++] = &ly->v_proj;
        if (c->causal_pc_proj) lin[n++] = &ly->pc_proj;
        lin[n++] = &ly->out_proj;
        lin[n++] = &ly->fc1;
        lin[n++] = &ly->fc2;
    }
    lin[n++] = &m->output_projection;
    return n;
}

/* causal-lm: the layers of a decode step again, in kn_linear_fixed's panels (luna_linear.wp),
 * one allocation for all of them: the steps' fixed-order products read them 16 outputs at a
 * time, k after k. A copy beside w, which the prefills' sgemm goes on reading. */
static int pack_decode(luna_model *m, char *err, size_t errlen)
{
    luna_linear *lin[LUNA_DECODE_LINEARS];
    int n = luna_decode_linears(m, lin);
    size_t total = 0;
    for (int q = 0; q < n; q++) total += kn_fixed_pack_floats((size_t)lin[q]->out, (size_t)lin[q]->in);
    m->packed = aligned_alloc(64, (total * sizeof(float) + 63) & ~(size_t)63);
    if (m->packed == NULL) {
        seterr(err, errlen, "out of memory for the decode steps' panels (%zu floats)", total);
        return LUNA_ENOMEM;
    }
    m->packed_len = total;
    float *at = m->packed;
    for (int q = 0; q < n; q++) {
        kn_fixed_pack(lin[q], at);
        lin[q]->wp = at;
        at += kn_fixed_pack_floats((size_t)lin[q]->out, (size_t)lin[q]->in);
    }
    return 0;
}

/* ---- the public calls ----------------------------------------------------------------------- */

int luna_model_load(const char *dir, luna_model **out, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = 0;
    if (dir == NULL || out == NULL) {
        seterr(err, errlen, "luna_model_load: dir and out must not be NULL");
        return LUNA_EINVAL;
    }
    int rc;
    st_file st = {0};
    char serr[256];
    luna_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        seterr(err, errlen, "out of memory");
        return LUNA_ENOMEM;
    }
    char *text = NULL;
    size_t text_len = 0;
    if ((rc = read_config_file(dir, &text, &text_len, err, errlen)) != 0)
        goto fail_model;
    rc = parse_config(text, text_len, &m->cfg, err, errlen);
    free(text);
    if (rc != 0)
        goto fail_model;
    if ((rc = map_weights(dir, &m->map, &m->map_len, err, errlen)) != 0)
        goto fail_model;
    if ((rc = st_parse(m->map, m->map_len, &st, serr, sizeof serr)) != 0) {
        seterr(err, errlen, "model.safetensors: %s", serr);
        goto fail_map;
    }
    if ((rc = bind_weights(m, &st, err, errlen)) != 0)
        goto fail_st;
    if (m->cfg.task == LUNA_TASK_CAUSAL_LM && (rc = cache_pq(m, err, errlen)) != 0) {
        free(m->owned);
        goto fail_st;
    }
    if (m->cfg.task == LUNA_TASK_CAUSAL_LM && (rc = pack_decode(m, err, errlen)) != 0) {
        free(m->owned);
        free(m->pq);
        free(m->pqt);
        goto fail_st;
    }
    st_free(&st); /* the model keeps pointers into the mapping and owned, not into st */
    *out = m;
    return 0;

fail_st:
    st_free(&st);
fail_map:
    munmap(m->map, m->map_len);
fail_model:
    free(m);
    return rc;
}

void luna_model_free(luna_model *m)
{
    if (m == NULL)
        return;
    if (m->map != NULL)
        munmap(m->map, m->map_len);
    free(m->owned);
    free(m->pq);
    free(m->pqt);
    free(m->packed);
    free(m);
}

const luna_config *luna_model_config(const luna_model *m)
{
    return m != NULL ? &m->cfg : NULL;
}

size_t luna_model_weight_bytes(const luna_model *m)
{
    return m != NULL ? m->weight_bytes : 0;
}

size_t luna_model_panel_bytes(const luna_model *m) { return m != NULL ? m->packed_len * sizeof(float) : 0; }
