/* info.c - GET /info: the models, their configs, the limits, the memory budget and the batch. */
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "server/batch.h"
#include "server/cache.h"

static const char *act_name(luna_act a) { return a == LUNA_ACT_GELU ? "gelu" : a == LUNA_ACT_TANH ? "tanh" : "relu"; }
static const char *pos_name(luna_pos p) { return p == LUNA_POS_LEARNED ? "learned" : p == LUNA_POS_SINUSOIDAL ? "sinusoidal" : "none"; }
static const char *pool_name(luna_pool p) { return p == LUNA_POOL_MEAN ? "mean" : p == LUNA_POOL_P ? "p" : "cls"; }

static cJSON *model_json(const srv_app *app, const char *dir, const luna_model *m)
{
    const luna_config *c = luna_model_config(m);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", dir);
    cJSON_AddStringToObject(o, "task", c->task == LUNA_TASK_CAUSAL_LM ? "causal-lm" : "classification");
    cJSON_AddNumberToObject(o, "weight_bytes", (double)luna_model_weight_bytes(m));
    if (c->task == LUNA_TASK_CAUSAL_LM) {
        /* per worker, allocated once: the context each worker holds (a lane per core, the
         * prefill chunk) and the generation state, whatever the context */
        cJSON_AddNumberToObject(o, "state_bytes", (double)luna_gen_state_bytes(m));
        cJSON_AddNumberToObject(o, "context_bytes", (double)srv_worker_gctx_bytes(app));
        cJSON_AddNumberToObject(o, "panel_bytes", (double)luna_model_panel_bytes(m));
    } else {
        cJSON_AddNumberToObject(o, "workspace_bytes_per_token", (double)luna_workspace_bytes(m, 1));
    }
    cJSON *cfg = cJSON_AddObjectToObject(o, "config");
    cJSON_AddNumberToObject(cfg, "d", c->d);
    cJSON_AddNumberToObject(cfg, "H", c->H);
    cJSON_AddNumberToObject(cfg, "Hp", c->Hp);
    cJSON_AddNumberToObject(cfg, "l", c->l);
    cJSON_AddNumberToObject(cfg, "layers", c->layers);
    cJSON_AddNumberToObject(cfg, "ffn", c->ffn);
    if (c->task == LUNA_TASK_CAUSAL_LM) cJSON_AddNumberToObject(cfg, "vocab_size", c->vocab_size);
    cJSON_AddStringToObject(cfg, "activation", act_name(c->activation));
    cJSON_AddBoolToObject(cfg, "tie_kv", c->tie_kv);
    cJSON_AddBoolToObject(cfg, "normalize_before", c->normalize_before);
    cJSON_AddStringToObject(cfg, "positions", pos_name(c->positions));
    cJSON_AddNumberToObject(cfg, "max_positions", c->max_positions);
    cJSON_AddNumberToObject(cfg, "ngram_embed", c->ngram_embed);
    cJSON_AddNumberToObject(cfg, "hash_ngrams", c->hash_ngrams);
    if (c->hash_ngrams > 1) {
        cJSON_AddNumberToObject(cfg, "hash_buckets", c->hash_buckets);
        cJSON_AddNumberToObject(cfg, "hash_dim", c->hash_dim);
    }
    cJSON_AddStringToObject(cfg, "input_transform", c->input_transform == LUNA_XFORM_EMAIL_SUBJECT_BODY ? "email_subject_body" : "none");
    if (c->task == LUNA_TASK_CLASSIFY) {
        cJSON_AddStringToObject(cfg, "pooling", pool_name(c->pooling));
        cJSON *labels = cJSON_AddArrayToObject(cfg, "labels");
        for (int i = 0; i < c->n_labels; i++) cJSON_AddItemToArray(labels, cJSON_CreateString(c->labels[i]));
    }
    return o;
}

char *srv_render_info(const srv_app *app)
{
    const srv_config *c = &app->cfg;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "name", "lunaserve");
    cJSON_AddStringToObject(root, "version", LUNASERVE_VERSION);
    cJSON *models = cJSON_AddObjectToObject(root, "models");
    if (app->classifier) cJSON_AddItemToObject(models, "classify", model_json(app, c->classify_model, app->classifier));
    if (app->generator) cJSON_AddItemToObject(models, "generate", model_json(app, c->generate_model, app->generator));
    cJSON *lim = cJSON_AddObjectToObject(root, "limits");
    cJSON_AddNumberToObject(lim, "max_body_bytes", (double)c->max_body_bytes);
    cJSON_AddNumberToObject(lim, "max_input_bytes", (double)c->max_input_bytes);
    cJSON_AddNumberToObject(lim, "max_new_tokens", c->max_new_tokens);
    cJSON_AddNumberToObject(lim, "default_new_tokens", c->default_new_tokens);
    cJSON_AddNumberToObject(lim, "max_queue", c->max_queue);
    cJSON_AddNumberToObject(lim, "request_timeout_seconds", c->request_timeout);
    cJSON_AddNumberToObject(lim, "max_request_timeout_seconds", c->max_request_timeout);
    cJSON_AddNumberToObject(lim, "max_document_tokens", app->max_doc_tokens == (size_t)-1 ? -1 : (double)app->max_doc_tokens);
    cJSON *mem = cJSON_AddObjectToObject(root, "memory");
    cJSON_AddNumberToObject(mem, "budget_bytes", (double)c->memory_budget);
    /* held for the server's life (the batch's scratch); requests share the rest */
    cJSON_AddNumberToObject(mem, "fixed_bytes", (double)(app->batch ? app->batch->scratch : 0));
    /* classifications: short documents in packs (classify-packs) */
    cJSON *packs = cJSON_AddObjectToObject(root, "packs");
    cJSON_AddBoolToObject(packs, "enabled", c->classify_packs && app->classifier);
    cJSON_AddNumberToObject(packs, "max_tokens", LUNA_DEFAULT_CHUNK); /* the workers' contexts: the default chunk */
    cJSON *batch = cJSON_AddObjectToObject(root, "batch");
    cJSON_AddBoolToObject(batch, "continuous", app->batch != NULL);
    cJSON_AddNumberToObject(batch, "max_batch", c->max_batch);
    cJSON_AddNumberToObject(batch, "max_batch_tokens", c->max_batch_tokens);
    /* what admission estimates a prompt's prefill time with (prefill-admission) */
    cJSON_AddNumberToObject(batch, "prefill_tokens_per_second", srv_prefill_rate(app));
    cJSON_AddBoolToObject(batch, "prefill_admission", c->prefill_admission);
    cJSON *sc = cJSON_AddObjectToObject(root, "state_cache");
    srv_cache_stats st;
    srv_cache_stats_get(app->cache, &st);
    cJSON_AddBoolToObject(sc, "enabled", app->cache != NULL);
    cJSON_AddNumberToObject(sc, "max_bytes", (double)srv_cache_max_bytes(app->cache));
    cJSON_AddNumberToObject(sc, "interval_tokens", (double)srv_cache_interval(app->cache));
    cJSON_AddNumberToObject(sc, "chunk_tokens", app->cache ? SRV_PREFILL_CHUNK : 0);
    cJSON_AddNumberToObject(sc, "entry_bytes", (double)srv_cache_entry_bytes(app->cache)); /* a state, its logits, the entry */
    cJSON_AddNumberToObject(sc, "bytes", (double)st.bytes);
    cJSON_AddNumberToObject(sc, "states", (double)st.states);
    cJSON_AddNumberToObject(sc, "entries", (double)st.entries);
    cJSON_AddNumberToObject(sc, "hits", (double)st.hits);
    cJSON_AddNumberToObject(sc, "misses", (double)st.misses);
    cJSON_AddNumberToObject(root, "workers", app->n_workers);
    cJSON_AddNumberToObject(root, "blas_threads", c->blas_threads);
    /* what every number this server reports ran on */
    const luna_blas_info *b = &app->blas;
    cJSON *blas = cJSON_AddObjectToObject(root, "blas");
    cJSON_AddStringToObject(blas, "library", b->library);
    cJSON_AddStringToObject(blas, "version", b->version);
    cJSON_AddStringToObject(blas, "core", b->core);
    cJSON_AddStringToObject(blas, "default_core", b->default_core);
    cJSON_AddStringToObject(blas, "selection", b->selection);
    cJSON_AddStringToObject(blas, "reason", b->reason);
    cJSON_AddNumberToObject(blas, "threads", c->blas_threads);
    cJSON_AddStringToObject(blas, "cpu", b->cpu);
    cJSON_AddBoolToObject(root, "auth", c->n_api_keys > 0);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}
