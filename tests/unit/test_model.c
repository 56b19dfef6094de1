/* test_model.c - engine/model.c and engine/errors.c: loading model directories.
 *
 * Each test gets a fresh temp dir (removed by the suite's fini, even when an assertion fails)
 * and writes its model there with the fixtures: a valid tiny model loads with every field and
 * weight in place; each way a model can be wrong fails with the right code and a message
 * naming the file and the field or tensor. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/luna.h"
#include "engine/model.h"
#include "tests/unit/fixtures.h"

static char dir[64];

static void setup(void)
{
    cr_assert_eq(fx_tmpdir(dir, sizeof dir), 0, "mkdtemp failed");
}

static void teardown(void)
{
    fx_rmtree(dir);
}

TestSuite(model, .init = setup, .fini = teardown);

/* Loads dir, expecting rc; on failure the message must contain every non-NULL want. */
static void expect_load(int rc_want, const char *want1, const char *want2)
{
    luna_model *m = (luna_model *)0x1;
    char err[512] = "";
    int rc = luna_model_load(dir, &m, err, sizeof err);
    if (rc == 0)
        luna_model_free(m);
    cr_assert_eq(rc, rc_want, "rc %s, expected %s: %s", luna_err_name(rc), luna_err_name(rc_want),
                 err);
    if (rc_want == 0)
        return;
    cr_assert_eq(m, (luna_model *)0x1, "out written on failure");
    cr_assert(want1 == NULL || strstr(err, want1) != NULL, "\"%s\" lacks \"%s\"", err, want1);
    cr_assert(want2 == NULL || strstr(err, want2) != NULL, "\"%s\" lacks \"%s\"", err, want2);
    cr_assert_eq(strchr(err, '\n'), NULL, "one line: %s", err);
}

static luna_model *load_ok(void)
{
    luna_model *m = NULL;
    char err[512] = "";
    int rc = luna_model_load(dir, &m, err, sizeof err);
    cr_assert_eq(rc, 0, "load failed: %s (%s)", err, luna_err_name(rc));
    cr_assert_not_null(m);
    return m;
}

static void write_config(const luna_config *cfg, const char *omit, const char *extra)
{
    char *json = fx_config_json(cfg, omit, extra);
    cr_assert_not_null(json);
    cr_assert_eq(fx_write_file(dir, "config.json", json, strlen(json)), 0);
    free(json);
}

static void write_text(const char *name, const char *text)
{
    cr_assert_eq(fx_write_file(dir, name, text, strlen(text)), 0);
}

/* Checks that every tensor the fixtures list is bound, in place or owned as expected, holds
 * fx_weight's values (rounded through dtype), and that no other weight field is set. */
static void check_weights(const luna_model *m, st_dtype dtype, uint64_t seed, int expect_in_place)
{
    const luna_config *c = luna_model_config(m);
    size_t n = fx_model_tensors(c, NULL, 0);
    fx_tensor *ts = calloc(n, sizeof *ts);
    cr_assert_not_null(ts);
    fx_model_tensors(c, ts, n);
    size_t total = 0;
    const char *map = m->map;
    for (size_t i = 0; i < n; i++) {
        const fx_tensor *t = &ts[i];
        const float *p = NULL;
        int layer, j;
        char field[64], part[16];
        size_t numel = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
        total += numel;
        /* find the field this tensor must be bound to */
        if (strcmp(t->name, "embed_tokens.weight") == 0)
            p = m->embed_tokens;
        else if (strcmp(t->name, "embed_positions.weight") == 0)
            p = m->embed_positions;
        else if (strcmp(t->name, "projected_embeddings") == 0)
            p = m->projected_embeddings;
        else if (sscanf(t->name, "layers.%d.self_attn.%63[^.].%15s", &layer, field, part) == 3) {
            const luna_layer *L = &m->layers[layer];
            const luna_linear *lin = strcmp(field, "pq_proj") == 0 ? &L->pq_proj
                                   : strcmp(field, "q_proj") == 0 ? &L->q_proj
                                   : strcmp(field, "out_proj") == 0 ? &L->out_proj
                                   : strcmp(field, "pc_proj") == 0 ? &L->pc_proj
                                   : strcmp(field, "c_proj") == 0 ? &L->c_proj
                                   : strcmp(field, "pk_proj") == 0 ? &L->pk_proj
                                   : strcmp(field, "pv_proj") == 0 ? &L->pv_proj
                                   : strcmp(field, "k_proj") == 0 ? &L->k_proj
                                   : strcmp(field, "v_proj") == 0 ? &L->v_proj : NULL;
            cr_assert_not_null(lin, "%s", t->name);
            p = strcmp(part, "weight") == 0 ? lin->w : lin->b;
            cr_assert_eq(lin->out, c->d);
            cr_assert_eq(lin->in, c->d);
        } else if (sscanf(t->name, "layers.%d.%63[^.].%15s", &layer, field, part) == 3) {
            const luna_layer *L = &m->layers[layer];
            const luna_norm *nm = strcmp(field, "self_attn_layer_norm") == 0
                                      ? &L->self_attn_layer_norm
                                : strcmp(field, "self_atten_proj_layer_norm") == 0
                                      ? &L->self_atten_proj_layer_norm
                                : strcmp(field, "final_layer_norm") == 0 ? &L->final_layer_norm
                                                                         : NULL;
            const luna_linear *lin = strcmp(field, "fc1") == 0 ? &L->fc1
                                   : strcmp(field, "fc2") == 0 ? &L->fc2 : NULL;
            cr_assert(nm != NULL || lin != NULL, "%s", t->name);
            int w = strcmp(part, "weight") == 0;
            p = nm != NULL ? (w ? nm->w : nm->b) : (w ? lin->w : lin->b);
            if (lin != NULL) {
                cr_assert_eq((uint64_t)lin->out, t->shape[0], "%s out", t->name);
                if (w)
                    cr_assert_eq((uint64_t)lin->in, t->shape[1], "%s in", t->name);
            }
        } else if (sscanf(t->name, "classifier.%d.%15s", &j, part) == 2) {
            const luna_linear *lin = &m->classifier[j];
            p = strcmp(part, "weight") == 0 ? lin->w : lin->b;
            cr_assert_eq(lin->out, c->classifier_dim);
            cr_assert_eq(lin->in, j == 0 ? c->d : c->classifier_dim);
        } else if (strcmp(t->name, "sentence_projection_layer.weight") == 0) {
            p = m->sentence_projection_layer.w;
            cr_assert_null(m->sentence_projection_layer.b, "no bias");
            cr_assert_eq(m->sentence_projection_layer.out, c->n_labels);
            cr_assert_eq((uint64_t)m->sentence_projection_layer.in, t->shape[1]);
        } else {
            const luna_norm *nm = strncmp(t->name, "emb_layer_norm.", 15) == 0 ? &m->emb_layer_norm
                                : strncmp(t->name, "proj_emb_layer_norm.", 20) == 0
                                      ? &m->proj_emb_layer_norm
                                : strncmp(t->name, "layer_norm.", 11) == 0 ? &m->layer_norm
                                : strncmp(t->name, "proj_layer_norm.", 16) == 0
                                      ? &m->proj_layer_norm : NULL;
            cr_assert_not_null(nm, "unknown tensor %s", t->name);
            p = strstr(t->name, ".weight") != NULL ? nm->w : nm->b;
        }
        cr_assert_not_null(p, "%s is not bound", t->name);
        int mapped = (const char *)p >= map && (const char *)p < map + m->map_len;
        int owned = m->owned != NULL && p >= m->owned && p < m->owned + m->owned_len;
        cr_assert(mapped != owned, "%s: neither mapped nor owned", t->name);
        cr_assert_eq(mapped, expect_in_place, "%s: in place %d, expected %d", t->name, mapped,
                     expect_in_place);
        cr_assert_eq((uintptr_t)p % sizeof(float), 0, "%s: misaligned pointer", t->name);
        for (size_t k = 0; k < numel; k++) {
            float want = fx_round(dtype, fx_weight(seed, t->name, k));
            cr_assert_eq(p[k], want, "%s[%zu] = %g, expected %g", t->name, k, p[k], want);
        }
    }
    cr_assert_eq(luna_model_weight_bytes(m), total * sizeof(float));
    cr_assert_eq(m->owned_len, expect_in_place ? 0 : total, "owned holds every converted float");
    free(ts);
}

/* ---- valid models --------------------------------------------------------------------------- */

Test(model, loads_default_model_in_place)
{
    luna_config cfg;
    fx_config_default(&cfg);
    fx_model_opts o = {.seed = 7};
    cr_assert_eq(fx_write_model(dir, &cfg, &o), 0);
    luna_model *m = load_ok();
    const luna_config *c = luna_model_config(m);
    cr_assert_eq(c->task, LUNA_TASK_CLASSIFY);
    cr_assert_eq(c->d, 8);
    cr_assert_eq(c->H, 2);
    cr_assert_eq(c->Hp, 2);
    cr_assert_eq(c->l, 4);
    cr_assert_eq(c->layers, 2);
    cr_assert_eq(c->ffn, 16);
    cr_assert_eq(c->positions, LUNA_POS_SINUSOIDAL);
    cr_assert_eq(c->embed_scale, sqrtf(8.0f), "null embed_scale with sinusoidal is sqrt(d)");
    cr_assert_eq(c->n_labels, 2);
    cr_assert_str_eq(c->labels[0], "ham");
    cr_assert_str_eq(c->labels[1], "spam");
    cr_assert_null(m->owned);
    cr_assert_null(m->embed_positions, "unused weights stay NULL");
    cr_assert_null(m->layers[0].pk_proj.w);
    cr_assert_null(m->layers[2].q_proj.w);
    cr_assert_null(m->emb_layer_norm.w);
    cr_assert_null(m->layer_norm.w);
    cr_assert_null(m->classifier[1].w);
    check_weights(m, ST_F32, 7, 1);
    luna_model_free(m);
    luna_model_free(NULL);
    cr_assert_null(luna_model_config(NULL));
    cr_assert_eq(luna_model_weight_bytes(NULL), 0);
}

Test(model, defaults_apply_to_a_minimal_config)
{
    write_text("config.json",
               "{\"format\":\"luna\",\"format_version\":1,\"task\":\"classification\",\"d\":12,"
               "\"H\":3,\"l\":2,\"layers\":1,\"ffn\":5,\"labels\":[\"a\",\"b\",\"c\"]}");
    luna_config cfg;
    fx_config_default(&cfg);
    cfg.d = 12, cfg.H = 3, cfg.Hp = 3, cfg.l = 2, cfg.layers = 1, cfg.ffn = 5;
    cfg.classifier_dim = 12;
    cfg.n_labels = 3;
    strcpy(cfg.labels[0], "a"), strcpy(cfg.labels[1], "b"), strcpy(cfg.labels[2], "c");
    /* the weights of the config with its defaults spelled out, then the minimal config.json */
    cr_assert_eq(fx_write_model(dir, &cfg, NULL), 0);
    write_text("config.json",
               "{\"format\":\"luna\",\"format_version\":1,\"task\":\"classification\",\"d\":12,"
               "\"H\":3,\"l\":2,\"layers\":1,\"ffn\":5,\"labels\":[\"a\",\"b\",\"c\"]}");
    luna_model *m = load_ok();
    const luna_config *c = luna_model_config(m);
    cr_assert_eq(c->Hp, 3, "Hp defaults to H");
    cr_assert_eq(c->classifier_dim, 12, "classifier_dim defaults to d");
    cr_assert_eq(c->activation, LUNA_ACT_RELU);
    cr_assert_eq(c->tie_kv, 1);
    cr_assert_eq(c->normalize_before, 0);
    cr_assert_eq(c->positions, LUNA_POS_SINUSOIDAL);
    cr_assert_eq(c->max_positions, 0);
    cr_assert_float_eq(c->embed_scale, sqrtf(12.0f), 0);
    cr_assert_eq(c->dynamic_projection, 1);
    cr_assert_eq(c->layernorm_embedding, 0);
    cr_assert_eq(c->vocab_size, 260);
    cr_assert_eq(c->byte_offset, 4);
    cr_assert_eq(c->pad_id, 1);
    cr_assert_eq(c->bos_id, 0);
    cr_assert_eq(c->eos_id, 2);
    cr_assert_eq(c->append_eos, 0);
    cr_assert_eq(c->input_transform, LUNA_XFORM_NONE);
    cr_assert_eq(c->pooling, LUNA_POOL_CLS);
    cr_assert_eq(c->classifier_layers, 1);
    cr_assert_eq(c->classifier_activation, LUNA_ACT_RELU);
    cr_assert_str_eq(c->labels[2], "c");
    check_weights(m, ST_F32, 0, 1);
    luna_model_free(m);
}

/* Every switch away from its default, in the combinations that change the tensor set. */
Test(model, loads_every_variant)
{
    for (int v = 0; v < 6; v++) {
        luna_config cfg;
        fx_config_default(&cfg);
        switch (v) {
        case 0: /* the paper-era LRA model: untied, learned positions, embedding LNs, gelu */
            cfg.tie_kv = 0;
            cfg.positions = LUNA_POS_LEARNED;
            cfg.max_positions = 30;
            cfg.layernorm_embedding = 1;
            cfg.activation = LUNA_ACT_GELU;
            cfg.classifier_dim = 20;
            cfg.append_eos = 1;
            break;
        case 1: /* pre-norm, no classifier layers, mean pooling, no positions */
            cfg.normalize_before = 1;
            cfg.classifier_layers = 0;
            cfg.pooling = LUNA_POOL_MEAN;
            cfg.positions = LUNA_POS_NONE;
            cfg.embed_scale = 0.5f;
            break;
        case 2: /* deep head, tanh, P pooling, pack heads, static projection, email input */
            cfg.classifier_layers = LUNA_MAX_CLASSIFIER_LAYERS;
            cfg.classifier_dim = 6;
            cfg.classifier_activation = LUNA_ACT_TANH;
            cfg.pooling = LUNA_POOL_P;
            cfg.Hp = 4;
            cfg.H = 1;
            cfg.dynamic_projection = 0;
            cfg.input_transform = LUNA_XFORM_EMAIL_SUBJECT_BODY;
            break;
        case 3: /* a bigger vocabulary with other special ids, learned positions, pad far up */
            cfg.vocab_size = 300;
            cfg.byte_offset = 40;
            cfg.pad_id = 299;
            cfg.bos_id = 5;
            cfg.eos_id = 6;
            cfg.positions = LUNA_POS_LEARNED;
            cfg.max_positions = 3;
            cfg.layers = 1;
            break;
        case 4: /* many labels of the longest length */
            cfg.n_labels = 40;
            for (int i = 0; i < 40; i++)
            {
                memset(cfg.labels[i], 'x', LUNA_MAX_LABEL_LEN - 1); /* the longest allowed */
                cfg.labels[i][0] = (char)('0' + i / 10);
                cfg.labels[i][1] = (char)('0' + i % 10);
                cfg.labels[i][LUNA_MAX_LABEL_LEN - 1] = 0;
            }
            break;
        case 5: /* sinusoidal with max_positions set: a limit, not a table */
            cfg.max_positions = 100;
            cfg.embed_scale = 2.0f;
            break;
        }
        fx_model_opts o = {.seed = (uint64_t)v};
        cr_assert_eq(fx_write_model(dir, &cfg, &o), 0);
        luna_model *m = load_ok();
        const luna_config *c = luna_model_config(m);
        cr_assert_eq(c->tie_kv, cfg.tie_kv, "variant %d", v);
        cr_assert_eq(c->positions, cfg.positions);
        cr_assert_eq(c->max_positions, cfg.max_positions);
        cr_assert_eq(c->layernorm_embedding, cfg.layernorm_embedding);
        cr_assert_eq(c->normalize_before, cfg.normalize_before);
        cr_assert_eq(c->activation, cfg.activation);
        cr_assert_eq(c->classifier_layers, cfg.classifier_layers);
        cr_assert_eq(c->classifier_dim, cfg.classifier_dim);
        cr_assert_eq(c->classifier_activation, cfg.classifier_activation);
        cr_assert_eq(c->pooling, cfg.pooling);
        cr_assert_eq(c->H, cfg.H);
        cr_assert_eq(c->Hp, cfg.Hp);
        cr_assert_eq(c->dynamic_projection, cfg.dynamic_projection);
        cr_assert_eq(c->input_transform, cfg.input_transform);
        cr_assert_eq(c->append_eos, cfg.append_eos);
        cr_assert_eq(c->vocab_size, cfg.vocab_size);
        cr_assert_eq(c->byte_offset, cfg.byte_offset);
        cr_assert_eq(c->pad_id, cfg.pad_id);
        cr_assert_eq(c->bos_id, cfg.bos_id);
        cr_assert_eq(c->eos_id, cfg.eos_id);
        cr_assert_eq(c->n_labels, cfg.n_labels);
        for (int i = 0; i < cfg.n_labels; i++)
            cr_assert_str_eq(c->labels[i], cfg.labels[i]);
        float scale = cfg.embed_scale > 0 ? cfg.embed_scale
                    : cfg.positions == LUNA_POS_SINUSOIDAL ? sqrtf((float)cfg.d) : 1.0f;
        cr_assert_eq(c->embed_scale, scale, "variant %d: embed_scale %g", v, c->embed_scale);
        check_weights(m, ST_F32, (uint64_t)v, 1);
        luna_model_free(m);
    }
}

Test(model, converts_f16_bf16_and_misaligned_f32)
{
    const struct {
        st_dtype dtype;
        int misalign;
    } cases[] = {{ST_F16, 0}, {ST_BF16, 0}, {ST_F32, 1}, {ST_F32, 2}, {ST_F16, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        luna_config cfg;
        fx_config_default(&cfg);
        cfg.tie_kv = 0;
        cfg.positions = LUNA_POS_LEARNED;
        cfg.max_positions = 5;
        fx_model_opts o = {.dtype = cases[i].dtype, .misalign = cases[i].misalign, .seed = 3};
        cr_assert_eq(fx_write_model(dir, &cfg, &o), 0);
        luna_model *m = load_ok();
        cr_assert_not_null(m->owned);
        check_weights(m, cases[i].dtype, 3, 0);
        luna_model_free(m);
    }
}

/* ---- tensor errors -------------------------------------------------------------------------- */

static const luna_config *tensor_configs(int i)
{
    static luna_config cfg;
    fx_config_default(&cfg);
    cfg.layers = 1;
    if (i == 1) {
        cfg.tie_kv = 0;
        cfg.positions = LUNA_POS_LEARNED;
        cfg.max_positions = 4;
        cfg.layernorm_embedding = 1;
        cfg.classifier_layers = 2;
        cfg.classifier_dim = 6;
    } else if (i == 2) {
        cfg.normalize_before = 1;
        cfg.classifier_layers = 0;
    }
    return &cfg;
}

Test(model, every_missing_tensor_is_named)
{
    for (int ci = 0; ci < 3; ci++) {
        const luna_config *cfg = tensor_configs(ci);
        fx_tensor ts[128];
        size_t n = fx_model_tensors(cfg, ts, 128);
        cr_assert_leq(n, 128);
        for (size_t i = 0; i < n; i++) {
            fx_model_opts o = {.skip = ts[i].name};
            cr_assert_eq(fx_write_model(dir, cfg, &o), 0);
            char want[256], shape[48];
            if (ts[i].ndim == 2)
                snprintf(shape, sizeof shape, "[%llu, %llu]", (unsigned long long)ts[i].shape[0],
                         (unsigned long long)ts[i].shape[1]);
            else
                snprintf(shape, sizeof shape, "[%llu]", (unsigned long long)ts[i].shape[0]);
            snprintf(want, sizeof want, "model.safetensors: tensor \"%.95s\" is missing (expected "
                     "shape %s)", ts[i].name, shape);
            expect_load(LUNA_ETENSOR, want, NULL);
        }
    }
}

Test(model, every_wrong_shape_is_named)
{
    for (int ci = 0; ci < 3; ci++) {
        const luna_config *cfg = tensor_configs(ci);
        fx_tensor ts[128];
        size_t n = fx_model_tensors(cfg, ts, 128);
        for (size_t i = 0; i < n; i++) {
            fx_model_opts o = {.reshape = ts[i].name};
            cr_assert_eq(fx_write_model(dir, cfg, &o), 0);
            char want[256];
            if (ts[i].ndim == 2)
                snprintf(want, sizeof want, "tensor \"%.95s\": shape [%llu, %llu], expected [%llu, "
                         "%llu]", ts[i].name, (unsigned long long)ts[i].shape[0] + 1,
                         (unsigned long long)ts[i].shape[1], (unsigned long long)ts[i].shape[0],
                         (unsigned long long)ts[i].shape[1]);
            else
                snprintf(want, sizeof want, "tensor \"%.95s\": shape [%llu], expected [%llu]",
                         ts[i].name, (unsigned long long)ts[i].shape[0] + 1,
                         (unsigned long long)ts[i].shape[0]);
            expect_load(LUNA_ETENSOR, want, NULL);
        }
    }
}

Test(model, extra_tensors_are_errors)
{
    luna_config cfg;
    fx_config_default(&cfg);
    const char *extras[] = {"foo", "layers.2.fc1.weight", "embed_positions.weight",
                            "layers.0.self_attn.k_proj.weight", "classifier.1.weight",
                            "sentence_projection_layer.bias", "layer_norm.weight"};
    for (size_t i = 0; i < sizeof extras / sizeof extras[0]; i++) {
        fx_model_opts o = {.extra = extras[i]};
        cr_assert_eq(fx_write_model(dir, &cfg, &o), 0);
        char want[160];
        snprintf(want, sizeof want, "model.safetensors: unexpected tensor \"%s\" (shape [3])",
                 extras[i]);
        expect_load(LUNA_ETENSOR, want, NULL);
    }
}

Test(model, wrong_dtype_and_rank)
{
    luna_config cfg;
    fx_config_default(&cfg);
    fx_model_opts o = {.bad_dtype = "layers.1.fc2.bias"};
    cr_assert_eq(fx_write_model(dir, &cfg, &o), 0);
    expect_load(LUNA_ETENSOR, "tensor \"layers.1.fc2.bias\": dtype I64, expected F32, F16 or BF16",
                NULL);

    /* a 1-D tensor written as (d, 1), and a matrix flattened */
    fx_st *w = fx_st_new();
    size_t n = fx_model_tensors(&cfg, NULL, 0);
    fx_tensor *ts = calloc(n, sizeof *ts);
    fx_model_tensors(&cfg, ts, n);
    for (size_t i = 0; i < n; i++) {
        float v[260 * 8] = {0};
        if (strcmp(ts[i].name, "layers.0.fc1.bias") == 0) {
            uint64_t s[2] = {ts[i].shape[0], 1};
            fx_st_add(w, ts[i].name, ST_F32, 2, s, v);
        } else {
            fx_st_add(w, ts[i].name, ST_F32, ts[i].ndim, ts[i].shape, v);
        }
    }
    size_t len;
    uint8_t *img = fx_st_build(w, &len);
    fx_write_file(dir, "model.safetensors", img, len);
    free(img);
    fx_st_free(w);
    free(ts);
    expect_load(LUNA_ETENSOR, "tensor \"layers.0.fc1.bias\": shape [16, 1], expected [16]", NULL);
}

/* ---- config errors -------------------------------------------------------------------------- */

/* A config change, written over the default model; the load must fail with ECONFIG and a
 * message containing want. */
typedef struct {
    void (*edit)(luna_config *c);
    const char *omit, *extra, *want;
} cfg_case;

static void e_none(luna_config *c) { (void)c; }
static void e_d_small(luna_config *c) { c->d = 1; c->H = 1; c->Hp = 1; }
static void e_d_big(luna_config *c) { c->d = 4098; }
static void e_d_odd(luna_config *c) { c->d = 9; c->H = 1; c->Hp = 1; }
static void e_d_sin2(luna_config *c) { c->d = 2; c->H = 1; c->Hp = 1; c->positions = LUNA_POS_SINUSOIDAL; }
static void e_h_div(luna_config *c) { c->d = 32; c->H = 3; }
static void e_hp_div(luna_config *c) { c->Hp = 3; }
static void e_h_zero(luna_config *c) { c->H = 0; }
static void e_h_big(luna_config *c) { c->H = 65; }
static void e_hp_big(luna_config *c) { c->Hp = 128; }
static void e_l_zero(luna_config *c) { c->l = 0; }
static void e_l_big(luna_config *c) { c->l = 1025; }
static void e_layers_zero(luna_config *c) { c->layers = 0; }
static void e_layers_big(luna_config *c) { c->layers = 65; }
static void e_ffn_zero(luna_config *c) { c->ffn = 0; }
static void e_ffn_big(luna_config *c) { c->ffn = 65537; }
static void e_maxpos_neg(luna_config *c) { c->max_positions = -1; }
static void e_maxpos_big(luna_config *c) { c->max_positions = 16777217; }
static void e_learned_nomax(luna_config *c) { c->positions = LUNA_POS_LEARNED; }
static void e_vocab_small(luna_config *c) { c->vocab_size = 259; }
static void e_vocab_offset(luna_config *c) { c->byte_offset = 10; }
static void e_vocab_min(luna_config *c) { c->vocab_size = 255; }
static void e_offset_neg(luna_config *c) { c->byte_offset = -1; }
static void e_pad(luna_config *c) { c->pad_id = 260; }
static void e_bos(luna_config *c) { c->bos_id = 1000; }
static void e_eos(luna_config *c) { c->eos_id = 260; }
static void e_pad_neg(luna_config *c) { c->pad_id = -1; }
static void e_ln_both(luna_config *c) { c->layernorm_embedding = 1; c->normalize_before = 1; }
static void e_cls_layers(luna_config *c) { c->classifier_layers = 9; }
static void e_cls_layers_neg(luna_config *c) { c->classifier_layers = -1; }
static void e_cls_dim(luna_config *c) { c->classifier_dim = 0; }
static void e_cls_dim_big(luna_config *c) { c->classifier_dim = 65537; }
static void e_one_label(luna_config *c) { c->n_labels = 1; }
static void e_dup_labels(luna_config *c) { strcpy(c->labels[1], "ham"); }
static void e_empty_label(luna_config *c) { c->labels[1][0] = 0; }
static void e_causal(luna_config *c) { c->task = LUNA_TASK_CAUSAL_LM; }
/* The classification-only fields, omitted to write a causal-lm config. */
#define CLS_FIELDS "Hp dynamic_projection append_eos input_transform pooling classifier_layers " \
                   "classifier_dim classifier_activation"

static void run_cfg_cases(const cfg_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        luna_config cfg;
        fx_config_default(&cfg);
        cr_assert_eq(fx_write_model(dir, &cfg, NULL), 0, "the weights are valid");
        cases[i].edit(&cfg);
        write_config(&cfg, cases[i].omit, cases[i].extra);
        expect_load(LUNA_ECONFIG, "config.json: ", cases[i].want);
    }
}

Test(model, config_range_and_cross_field_errors)
{
    const cfg_case cases[] = {
        {e_d_small, NULL, NULL, "field \"d\": 1 is out of range 2..4096"},
        {e_d_big, NULL, NULL, "field \"d\": 4098 is out of range 2..4096"},
        {e_d_odd, NULL, NULL, "field \"d\": 9 is not even"},
        {e_d_sin2, NULL, NULL, "field \"d\": 2 is below 4, the least that sinusoidal positions allow"},
        {e_h_div, NULL, NULL, "config.json: field \"H\": 3 does not divide d = 32"},
        {e_hp_div, NULL, NULL, "field \"Hp\": 3 does not divide d = 8"},
        {e_h_zero, NULL, NULL, "field \"H\": 0 is out of range 1..64"},
        {e_h_big, NULL, NULL, "field \"H\": 65 is out of range 1..64"},
        {e_hp_big, NULL, NULL, "field \"Hp\": 128 is out of range 1..64"},
        {e_l_zero, NULL, NULL, "field \"l\": 0 is out of range 1..1024"},
        {e_l_big, NULL, NULL, "field \"l\": 1025 is out of range"},
        {e_layers_zero, NULL, NULL, "field \"layers\": 0 is out of range 1..64"},
        {e_layers_big, NULL, NULL, "field \"layers\": 65 is out of range"},
        {e_ffn_zero, NULL, NULL, "field \"ffn\": 0 is out of range 1..65536"},
        {e_ffn_big, NULL, NULL, "field \"ffn\": 65537 is out of range"},
        {e_maxpos_neg, NULL, NULL, "field \"max_positions\": -1 is out of range 0..16777216"},
        {e_maxpos_big, NULL, NULL, "field \"max_positions\": 16777217 is out of range"},
        {e_learned_nomax, NULL, NULL, "field \"max_positions\": learned positions need it"},
        {e_learned_nomax, "max_positions", NULL, "learned positions need it"},
        {e_vocab_small, NULL, NULL,
         "field \"vocab_size\": 259 is less than byte_offset + 256 = 260"},
        {e_vocab_offset, NULL, NULL, "field \"vocab_size\": 260 is less than byte_offset + 256"},
        {e_vocab_min, NULL, NULL, "field \"vocab_size\": 255 is out of range"},
        {e_offset_neg, NULL, NULL, "field \"byte_offset\": -1 is out of range"},
        {e_pad, NULL, NULL, "field \"pad_id\": 260 is not below vocab_size = 260"},
        {e_bos, NULL, NULL, "field \"bos_id\": 1000 is not below vocab_size = 260"},
        {e_eos, NULL, NULL, "field \"eos_id\": 260 is not below vocab_size"},
        {e_pad_neg, NULL, NULL, "field \"pad_id\": -1 is out of range"},
        {e_ln_both, NULL, NULL,
         "fields \"layernorm_embedding\" and \"normalize_before\" cannot both be true"},
        {e_cls_layers, NULL, NULL, "field \"classifier_layers\": 9 is out of range 0..8"},
        {e_cls_layers_neg, NULL, NULL, "field \"classifier_layers\": -1 is out of range"},
        {e_cls_dim, NULL, NULL, "field \"classifier_dim\": 0 is out of range 1..65536"},
        {e_cls_dim_big, NULL, NULL, "field \"classifier_dim\": 65537 is out of range"},
        {e_none, "embed_scale", "\"embed_scale\": -1", "field \"embed_scale\": -1 is out of range"},
        {e_none, NULL, "\"hash_buckets\": 100", "field \"hash_buckets\": 100 is not a power of two"},
        {e_none, NULL, "\"hash_buckets\": 1", "field \"hash_buckets\": 1 is out of range 2..16777216"},
        {e_none, NULL, "\"hash_ngrams\": 33", "field \"hash_ngrams\": 33 is out of range 1..32"},
        {e_none, NULL, "\"hash_dim\": 0", "field \"hash_dim\": 0 is out of range 1..4096"},
        {e_none, "embed_scale", "\"embed_scale\": 0", "field \"embed_scale\": 0 is out of range"},
        {e_none, "embed_scale", "\"embed_scale\": 1e39", "field \"embed_scale\": 1e+39 is out"},
        {e_none, "embed_scale", "\"embed_scale\": 1e-50", "field \"embed_scale\""},
        {e_none, "d", "\"d\": 1e400", "not valid JSON: line"},
        {e_none, "d", "\"d\": 99999999999999999999", "field \"d\": 100000000000000000000 is out"},
        {e_none, "format_version", "\"format_version\": 2",
         "field \"format_version\": 2 is out of range 1..1"},
        {e_none, "vocab_size", "\"vocab_size\": 16777217", "field \"vocab_size\": 16777217 is out"},
        /* a field of one task in the other's config is refused, not ignored */
        {e_causal, NULL, NULL, "field \"Hp\" does not apply to task \"causal-lm\""},
        {e_causal, CLS_FIELDS, NULL,
         "field \"labels\" does not apply to task \"causal-lm\""},
        {e_none, NULL, "\"tie_embeddings\": false",
         "field \"tie_embeddings\" does not apply to task \"classification\""},
        {e_causal, CLS_FIELDS " labels", "\"causal_phi\": \"relu\"",
         "field \"causal_phi\": \"relu\" is not one of \"softplus_ln2\", \"elu_plus_1\", \"softplus\""},
        {e_causal, CLS_FIELDS " labels", "\"causal_pc_proj\": 1",
         "field \"causal_pc_proj\": expected a boolean, got a number"},
        {e_causal, CLS_FIELDS " labels", "\"decoder_only\": true", "unknown field \"decoder_only\""},
    };
    run_cfg_cases(cases, sizeof cases / sizeof cases[0]);
}

Test(model, config_label_errors)
{
    const cfg_case cases[] = {
        {e_one_label, NULL, NULL, "field \"labels\": 1 labels, expected 2..1024"},
        {e_dup_labels, NULL, NULL, "field \"labels\": labels[1] \"ham\" repeats labels[0]"},
        {e_empty_label, NULL, NULL, "field \"labels\": labels[1] is empty"},
        {e_none, "labels", NULL, "field \"labels\" is required for task \"classification\""},
        {e_none, "labels", "\"labels\": \"ham,spam\"",
         "field \"labels\": expected an array of strings, got a string"},
        {e_none, "labels", "\"labels\": [\"a\", 1]", "labels[1] is a number, expected a string"},
        {e_none, "labels", "\"labels\": []", "0 labels, expected 2..1024"},
        {e_none, "labels", "\"labels\": [\"a\", \"b\\u0000c\"]", "labels[1] holds a NUL"},
        {e_none, "labels",
         "\"labels\": [\"a\", \"01234567890123456789012345678901"
         "23456789012345678901234567890123\"]",
         "labels[1] is 64 bytes, the limit is 63"},
        {e_none, "labels", "\"labels\": [\"\\u00e9\", \"e\\u0301\", \"\\u00e9\"]",
         "labels[2] \"\xC3\xA9\" repeats labels[0]"},
    };
    run_cfg_cases(cases, sizeof cases / sizeof cases[0]);

    /* 1024 labels load; 1025 do not */
    luna_config cfg;
    fx_config_default(&cfg);
    cfg.n_labels = LUNA_MAX_LABELS;
    for (int i = 0; i < LUNA_MAX_LABELS; i++)
        snprintf(cfg.labels[i], LUNA_MAX_LABEL_LEN, "label-%d", i);
    cr_assert_eq(fx_write_model(dir, &cfg, NULL), 0);
    luna_model *m = load_ok();
    cr_assert_eq(luna_model_config(m)->n_labels, LUNA_MAX_LABELS);
    cr_assert_str_eq(luna_model_config(m)->labels[1023], "label-1023");
    luna_model_free(m);
    char *json = fx_config_json(&cfg, NULL, NULL);
    char *at = strstr(json, "\"label-1023\"");
    cr_assert_not_null(at);
    size_t len = strlen(json);
    char *bigger = malloc(len + 32);
    memcpy(bigger, json, (size_t)(at - json));
    sprintf(bigger + (at - json), "\"label-1023\", \"one-more\"%s", at + strlen("\"label-1023\""));
    write_text("config.json", bigger);
    expect_load(LUNA_ECONFIG, "field \"labels\": 1025 labels, expected 2..1024", NULL);
    free(bigger);
    free(json);
}

Test(model, config_type_and_field_errors)
{
    const cfg_case cases[] = {
        {e_none, NULL, "\"actvation\": \"gelu\"", "config.json: unknown field \"actvation\""},
        {e_none, NULL, "\"\": 1", "unknown field \"\""},
        {e_none, NULL, "\"d\\u0000\": 1", "unknown field \"d?\""},
        {e_none, NULL, "\"d\": 8", "not valid JSON: line 31, column 3: duplicate key \"d\""},
        {e_none, "d", NULL, "field \"d\" is required"},
        {e_none, "format", NULL, "field \"format\" is required"},
        {e_none, "format_version", NULL, "field \"format_version\" is required"},
        {e_none, "task", NULL, "field \"task\" is required"},
        {e_none, "H", NULL, "field \"H\" is required"},
        {e_none, "l", NULL, "field \"l\" is required"},
        {e_none, "layers", NULL, "field \"layers\" is required"},
        {e_none, "ffn", NULL, "field \"ffn\" is required"},
        {e_none, "d", "\"d\": \"8\"", "field \"d\": expected an integer, got a string"},
        {e_none, "d", "\"d\": 8.0", "field \"d\": 8 is not an integer"},
        {e_none, "d", "\"d\": 8e0", "field \"d\": 8 is not an integer"},
        {e_none, "d", "\"d\": null", "field \"d\": expected an integer, got null"},
        {e_none, "d", "\"d\": [8]", "expected an integer, got an array"},
        {e_none, "H", "\"H\": true", "field \"H\": expected an integer, got a boolean"},
        {e_none, "tie_kv", "\"tie_kv\": 1", "field \"tie_kv\": expected a boolean, got a number"},
        {e_none, "append_eos", "\"append_eos\": \"false\"",
         "field \"append_eos\": expected a boolean, got a string"},
        {e_none, "activation", "\"activation\": 0",
         "field \"activation\": expected a string, got a number"},
        {e_none, "activation", "\"activation\": \"swish\"",
         "field \"activation\": \"swish\" is not one of \"relu\", \"gelu\""},
        {e_none, "activation", "\"activation\": \"tanh\"", "is not one of \"relu\", \"gelu\""},
        {e_none, "activation", "\"activation\": \"RELU\"", "\"RELU\" is not one of"},
        {e_none, "activation", "\"activation\": \"relu\\u0000\"", "\"relu?\" is not one of"},
        {e_none, "classifier_activation", "\"classifier_activation\": \"softplus\"",
         "\"softplus\" is not one of \"relu\", \"gelu\", \"tanh\""},
        {e_none, "positions", "\"positions\": \"rotary\"",
         "field \"positions\": \"rotary\" is not one of \"none\", \"learned\", \"sinusoidal\""},
        {e_none, "pooling", "\"pooling\": \"max\"", "field \"pooling\": \"max\" is not one of"},
        {e_none, "input_transform", "\"input_transform\": \"email\"",
         "field \"input_transform\": \"email\" is not one of"},
        {e_none, "task", "\"task\": \"regression\"", "field \"task\": \"regression\" is not one"},
        {e_none, "format", "\"format\": \"luna2\"", "field \"format\": \"luna2\" is not one of"},
        {e_none, "embed_scale", "\"embed_scale\": \"1\"",
         "field \"embed_scale\": expected a number or null, got a string"},
        {e_none, "embed_scale", "\"embed_scale\": false", "expected a number or null"},
    };
    run_cfg_cases(cases, sizeof cases / sizeof cases[0]);
}

Test(model, config_file_errors)
{
    luna_config cfg;
    fx_config_default(&cfg);
    cr_assert_eq(fx_write_model(dir, &cfg, NULL), 0);
    const struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"", "config.json: not valid JSON: line 1, column 1: unexpected end of input"},
        {"[]", "config.json: the top level is an array, expected an object"},
        {"{\"format\": \"luna\",}", "config.json: not valid JSON: line 1, column 19"},
        {"{} x", "not valid JSON"},
        {"\xEF\xBB\xBF{}", "byte order mark"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text("config.json", cases[i].text);
        expect_load(LUNA_ECONFIG, cases[i].want, NULL);
    }
    /* over 1 MiB, even if it is whitespace around a valid config */
    char *json = fx_config_json(&cfg, NULL, NULL);
    size_t len = strlen(json), big = (1u << 20) + 1;
    char *text = malloc(big);
    memset(text, ' ', big);
    memcpy(text, json, len);
    cr_assert_eq(fx_write_file(dir, "config.json", text, big), 0);
    expect_load(LUNA_ECONFIG, "config.json: 1048577 bytes, over the 1048576-byte limit", NULL);
    cr_assert_eq(fx_write_file(dir, "config.json", text, big - 1), 0);
    luna_model *m = load_ok(); /* exactly 1 MiB is fine */
    luna_model_free(m);
    free(text);
    free(json);
}

/* ---- file errors ---------------------------------------------------------------------------- */

Test(model, io_errors)
{
    char path[128];
    luna_model *m = NULL;
    char err[256];
    /* no config.json */
    expect_load(LUNA_EIO, "config.json: cannot open ", "No such file or directory");
    /* a missing directory */
    snprintf(path, sizeof path, "%s/nope", dir);
    cr_assert_eq(luna_model_load(path, &m, err, sizeof err), LUNA_EIO);
    cr_assert(strstr(err, path) != NULL, "%s", err);
    /* config.json is a directory */
    snprintf(path, sizeof path, "%s/config.json", dir);
    cr_assert_eq(mkdir(path, 0700), 0);
    expect_load(LUNA_EIO, "config.json: ", "is not a regular file");
    rmdir(path);
    /* a FIFO must not block the load */
    cr_assert_eq(mkfifo(path, 0600), 0);
    expect_load(LUNA_EIO, "config.json: ", "is not a regular file");
    unlink(path);
    /* no model.safetensors */
    luna_config cfg;
    fx_config_default(&cfg);
    write_config(&cfg, NULL, NULL);
    expect_load(LUNA_EIO, "model.safetensors: cannot open ", "No such file or directory");
    /* arguments */
    cr_assert_eq(luna_model_load(NULL, &m, err, sizeof err), LUNA_EINVAL);
    cr_assert_eq(luna_model_load(dir, NULL, err, sizeof err), LUNA_EINVAL);
    /* no error buffer at all, and a tiny one */
    cr_assert_eq(luna_model_load(dir, &m, NULL, 0), LUNA_EIO);
    char tiny[5];
    cr_assert_eq(luna_model_load(dir, &m, tiny, sizeof tiny), LUNA_EIO);
    cr_assert_str_eq(tiny, "mode");
}

Test(model, safetensors_errors_through_the_loader)
{
    luna_config cfg;
    fx_config_default(&cfg);
    cr_assert_eq(fx_write_model(dir, &cfg, NULL), 0);
    write_text("model.safetensors", "");
    expect_load(LUNA_EFORMAT, "model.safetensors: the file is 0 bytes, too short", NULL);
    cr_assert_eq(fx_write_file(dir, "model.safetensors", "\x02\0\0\0\0\0\0\0{", 9), 0);
    expect_load(LUNA_EFORMAT, "model.safetensors: header length 2 goes past the end", NULL);
    size_t len;
    uint8_t *img = fx_st_raw("{\"embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[260,8],"
                             "\"data_offsets\":[0,8320]}}", 100, &len);
    fx_write_file(dir, "model.safetensors", img, len);
    free(img);
    expect_load(LUNA_EFORMAT, "model.safetensors: tensor \"embed_tokens.weight\": data_offsets "
                "[0, 8320] go past the 100-byte data section", NULL);
    img = fx_st_raw("not json", 0, &len);
    fx_write_file(dir, "model.safetensors", img, len);
    free(img);
    expect_load(LUNA_EFORMAT, "model.safetensors: header is not valid JSON", NULL);
    /* a valid file cut short loses its last tensor's bytes */
    cr_assert_eq(fx_write_model(dir, &cfg, NULL), 0);
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    cr_assert_eq(truncate(path, size - 1), 0);
    expect_load(LUNA_EFORMAT, "go past the", NULL);
}

/* ---- errors.c ------------------------------------------------------------------------------- */

Test(model, error_table)
{
    const struct {
        int code;
        const char *name, *msg;
        int http;
    } cases[] = {
        {LUNA_EINVAL, "LUNA_EINVAL", "invalid argument", 422},
        {LUNA_ENOMEM, "LUNA_ENOMEM", "out of memory", 503},
        {LUNA_EIO, "LUNA_EIO", "cannot read model file", 500},
        {LUNA_EFORMAT, "LUNA_EFORMAT", "malformed model file", 500},
        {LUNA_ECONFIG, "LUNA_ECONFIG", "invalid model config", 500},
        {LUNA_ETENSOR, "LUNA_ETENSOR", "model tensors do not match the config", 500},
        {LUNA_ETOOLONG, "LUNA_ETOOLONG", "input is longer than the model accepts", 413},
        {LUNA_ECANCELED, "LUNA_ECANCELED", "canceled", 499},
        {LUNA_ETASK, "LUNA_ETASK", "the model does not serve this task", 422},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_str_eq(luna_err_name(cases[i].code), cases[i].name);
        cr_assert_str_eq(luna_strerror(cases[i].code), cases[i].msg);
        cr_assert_eq(luna_err_http_status(cases[i].code), cases[i].http);
    }
    cr_assert_str_eq(luna_strerror(0), "unknown error");
    cr_assert_str_eq(luna_strerror(-1000), "unknown error");
    cr_assert_str_eq(luna_err_name(7), "LUNA_EUNKNOWN");
    cr_assert_eq(luna_err_http_status(-1000), 500);
}

/* ---- fuzz ----------------------------------------------------------------------------------- */

static void mutate(uint8_t *buf, size_t *len, size_t cap, size_t span, uint64_t *st)
{
    int muts = 1 + (int)(fx_rand(st) % 3);
    for (int m = 0; m < muts && *len > 0; m++) {
        size_t lim = span < *len ? span : *len;
        size_t at = fx_rand(st) % lim;
        switch (fx_rand(st) % 6) {
        case 0: buf[at] ^= (uint8_t)(1u << (fx_rand(st) % 8)); break;
        case 1: buf[at] = (uint8_t)fx_rand(st); break;
        case 2: buf[at] = (uint8_t)"0123456789-.e,[]{}\":tfn"[fx_rand(st) % 23]; break;
        case 3:
            if (*len < cap) {
                memmove(buf + at + 1, buf + at, *len - at);
                buf[at] = (uint8_t)"0123456789-,\" "[fx_rand(st) % 14];
                (*len)++;
            }
            break;
        case 4: memmove(buf + at, buf + at + 1, *len - at - 1); (*len)--; break;
        case 5: *len = at; break;
        }
    }
}

/* 10,000 mutated model directories: in one dir a mutated config.json next to valid weights,
 * in another a valid config.json next to a mutated model.safetensors (aimed at its header).
 * Each load returns 0 or a code from the table with a message, never crashes; a model that
 * loads must be self-consistent. (The parsers alone get 20,000 more each in test_json.c and
 * test_safetensors.c; whole loads are kept to 10,000 so the test stays near 1 s under ASan,
 * whose quarantine makes each 95 KiB luna_model allocation fault in fresh pages.) */
Test(model, fuzz)
{
    luna_config cfg;
    fx_config_default(&cfg);
    cfg.d = 2, cfg.H = 1, cfg.Hp = 1, cfg.l = 1, cfg.layers = 1, cfg.ffn = 1;
    cfg.positions = LUNA_POS_NONE; /* sinusoidal needs d >= 4 */
    cfg.classifier_dim = 2;
    char *json = fx_config_json(&cfg, NULL, NULL);
    size_t json_len = strlen(json);
    fx_st *w = fx_st_new();
    size_t n = fx_model_tensors(&cfg, NULL, 0);
    fx_tensor *ts = calloc(n, sizeof *ts);
    fx_model_tensors(&cfg, ts, n);
    for (size_t i = 0; i < n; i++) {
        float v[260 * 2];
        for (size_t k = 0; k < 260 * 2; k++)
            v[k] = fx_weight(1, ts[i].name, k);
        /* a mix of dtypes, so converted and in-place paths both run */
        st_dtype dt = i % 3 == 0 ? ST_F16 : i % 3 == 1 ? ST_F32 : ST_BF16;
        fx_st_add(w, ts[i].name, dt, ts[i].ndim, ts[i].shape, v);
    }
    free(ts);
    size_t st_len;
    uint8_t *st_img = fx_st_build(w, &st_len);
    fx_st_free(w);
    size_t header_end = 8;
    for (int i = 0; i < 8; i++)
        header_end += (size_t)st_img[i] << (8 * i);

    char dirs[2][80];
    snprintf(dirs[0], sizeof dirs[0], "%s/config", dir);
    snprintf(dirs[1], sizeof dirs[1], "%s/weights", dir);
    for (int d = 0; d < 2; d++) {
        cr_assert_eq(mkdir(dirs[d], 0700), 0);
        cr_assert_eq(fx_write_file(dirs[d], "config.json", json, json_len), 0);
        cr_assert_eq(fx_write_file(dirs[d], "model.safetensors", st_img, st_len), 0);
    }

    uint64_t state = 0xC0FFEEull;
    size_t cap = (st_len > json_len ? st_len : json_len) + 16;
    uint8_t *buf = malloc(cap);
    int loaded = 0, failed = 0;
    for (int it = 0; it < 10000; it++) {
        int on_config = it % 2 == 0;
        size_t len = on_config ? json_len : st_len;
        memcpy(buf, on_config ? (const uint8_t *)json : st_img, len);
        mutate(buf, &len, len + 16, on_config ? len : (fx_rand(&state) % 8 ? header_end : len),
               &state);
        const char *d = dirs[!on_config];
        cr_assert_eq(fx_write_file(d, on_config ? "config.json" : "model.safetensors", buf, len),
                     0);
        luna_model *m = NULL;
        char err[256] = "";
        int rc = luna_model_load(d, &m, err, sizeof err);
        if (rc == 0) {
            loaded++;
            const luna_config *c = luna_model_config(m);
            cr_assert(c->d >= 2 && c->d % c->H == 0 && c->n_labels >= 2, "iteration %d", it);
            cr_assert_not_null(m->embed_tokens);
            volatile float sum = 0;
            for (int k = 0; k < c->vocab_size * c->d; k++)
                sum += m->embed_tokens[k]; /* touches every byte (ASan, valgrind) */
            (void)sum;
            luna_model_free(m);
        } else {
            failed++;
            cr_assert(rc == LUNA_ECONFIG || rc == LUNA_EFORMAT || rc == LUNA_ETENSOR,
                      "iteration %d: %s: %s", it, luna_err_name(rc), err);
            cr_assert(strncmp(err, "config.json: ", 13) == 0 ||
                      strncmp(err, "model.safetensors: ", 19) == 0, "iteration %d: \"%s\"", it,
                      err);
        }
    }
    free(buf);
    free(st_img);
    free(json);
    cr_assert_gt(loaded, 100, "some mutations keep the model valid (%d)", loaded);
    cr_assert_gt(failed, 5000, "most mutations break it (%d)", failed);
}
