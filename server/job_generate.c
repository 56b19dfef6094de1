/* job_generate.c - the generation job (server/jobs.h): POST /generate, /generate_stream (TGI's
 * shape), /v1/completions and /v1/chat/completions (OpenAI's). Its admission refuses what cannot
 * run: a prompt past the model's positions, or one that cannot be prefilled before its deadline
 * (prefill admission), a reservation past the budget, a "state" to continue that is not one of
 * this model's. It runs in the continuous batch, or alone on a worker with --max-batch 1
 * (server/batch.c); a streamed answer is written as it runs, and rendered here otherwise. */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "server/batch.h"
#include "server/cache.h"
#include "server/jobs.h"

static api_err parse(srv_request *q)
{
    srv_app *app = q->app;
    char model[256];
    srv_model_id(app->cfg.generate_model, model, sizeof model);
    api_gen_limits lim = {app->cfg.max_input_bytes, app->cfg.max_new_tokens, app->cfg.default_new_tokens, model};
    api_generate_req *req = &q->in.generate;
    api_err rc = q->variant == SRV_GEN_COMPLETIONS ? api_parse_completions(q->body, q->body_len, &lim, req, q->err)
                 : q->variant == SRV_GEN_CHAT      ? api_parse_chat(q->body, q->body_len, &lim, req, q->err)
                                                   : api_parse_generate(q->body, q->body_len, &lim, req, q->err);
    req->stream |= rc == API_OK && q->variant == SRV_GEN_TGI_STREAM;
    return rc;
}

/* What a stream's events carry beyond its tokens: with return_full_text (TGI's last event) or
 * echo (OpenAI's first chunk), the prompt, at most 6 bytes a byte as JSON (a control byte's
 * \u00XX; a byte that is not UTF-8 becomes U+FFFD, 3). */
static uint64_t stream_prompt_bytes(const api_generate_req *req)
{
    uint64_t b = 0;
    for (size_t c = 0; req->stream && req->return_full_text && c < req->n_prompts; c++) b += 6 * (uint64_t)req->prompts[c].len;
    return b;
}

uint64_t srv_gen_reservation(const srv_app *app, const api_generate_req *req)
{
    uint64_t V = (uint64_t)luna_model_config(app->generator)->vocab_size;
    uint64_t n = (uint64_t)req->max_new_tokens;
    /* per prompt running at once (one alone; up to max-batch in the batch): its generation
     * state, sampler scratch (12 B and a bit per id) and logits (4 B per id); alone, the
     * context that runs it (a worker's, allocated once, but the job's working set all the
     * same; in the batch, the workers' contexts are shared by every request, slice by slice,
     * and the batch's own is reserved once); per prompt: the output bytes and their UTF-8
     * rendering (3x), a stream's unread events. None of it grows with the prompt. */
    uint64_t prompts = req->n_prompts ? req->n_prompts : 1;
    uint64_t rows = app->batch && prompts > (uint64_t)app->cfg.max_batch ? (uint64_t)app->cfg.max_batch
                    : app->batch                                         ? prompts
                                                                         : 1;
    /* portable states: an imported one (state and logits), and per prompt a returned one's
     * export, its base64 and the JSON that carries it (3x) */
    uint64_t sb = (uint64_t)luna_gen_state_bytes(app->generator);
    uint64_t in_state = req->state ? sb + V * 4 : 0;
    uint64_t out_state = req->return_state ? 3 * (uint64_t)luna_gen_state_export_bytes(app->generator, 1) : 0;
    return rows * (sb + V * 17) + in_state +
           (app->batch ? 0 : srv_worker_gctx_bytes(app)) + /* alone, it runs on a worker's context */
           prompts * (n * 4 + out_state + (req->stream ? srv_stream_limit(1, (size_t)n) : 0)) +
           stream_prompt_bytes(req) + srv_gen_lp_bytes(app, req);
}


/* The request's "state": imported into the job (checked whole first: a state that is not one
 * of this model's, or is damaged in any way, is a 422 naming the fault). */
static api_err import_state(srv_request *q)
{
    srv_app *app = q->app;
    const api_generate_req *req = &q->in.generate;
    size_t V = (size_t)luna_model_config(app->generator)->vocab_size;
    srv_job *job = q->job;
    if (luna_gen_state_new(app->generator, &job->cont) || !(job->cont_logits = malloc(V * sizeof(float))))
        return api_fail(q->err, API_E_ENGINE_MEMORY, "%s", "out of memory importing the state");
    const char *why = NULL;
    if (luna_gen_state_import(job->cont, req->state, req->state_len, job->cont_logits, &job->cont_has_logits, &why)) {
        api_fail(q->err, API_E_VALIDATION, "\"state\" cannot be continued: %s", why ? why : "not a state");
        q->err->param = "state";
        return q->err->kind;
    }
    if (!job->cont_has_logits && req->prompts[0].len == 0) {
        api_fail(q->err, API_E_VALIDATION, "%s", "this state has no logits: send input to continue it with");
        q->err->param = "state";
        return q->err->kind;
    }
    return API_OK;
}

/* A prompt that cannot be prefilled before its deadline is refused now, not cut off later.
 * Against the server's own deadline the prompt is too long (413, with the tokens it could
 * take); against the client's X-Request-Timeout the deadline is too short: 504, the answer
 * the deadline would have given, without spending the cores first. */
static api_err admit_prefill(srv_request *q, uint64_t prompt_tokens)
{
    srv_app *app = q->app;
    const api_generate_req *req = &q->in.generate;
    double rate = srv_prefill_rate(app);
    if (app->cfg.prefill_admission && rate > 0 && (double)prompt_tokens / rate > q->timeout && app->cache &&
        !req->prompt_logprobs) /* which does not use the cache (batch.c: uses_cache) */
        for (size_t i = 0; i < req->n_prompts; i++) /* what the state cache holds is not prefilled again */
            prompt_tokens -= srv_cache_peek(app->cache, req->prompts[i].data, req->prompts[i].len);
    if (!app->cfg.prefill_admission || !(rate > 0) || (double)prompt_tokens / rate <= q->timeout) return API_OK;
    double need = (double)prompt_tokens / rate;
    if (q->timeout_from_client) {
        api_fail(q->err, API_E_TIMEOUT,
                 "the prompt is %llu tokens: at this server's prefill rate (%.0f tokens/s) it would take about %.1f s, "
                 "longer than the X-Request-Timeout of %g s", (unsigned long long)prompt_tokens, rate, need, q->timeout);
    } else {
        api_fail(q->err, API_E_INPUT_TOO_LONG,
                 "the prompt is %llu tokens: at this server's prefill rate (%.0f tokens/s) it would take about %.1f s, "
                 "longer than the request's deadline of %g s", (unsigned long long)prompt_tokens, rate, need, q->timeout);
        q->err->extra_key[0] = "max_tokens";
        q->err->extra_val[0] = floor(rate * q->timeout);
    }
    srv_metrics_reject(&app->metrics, REJ_PREFILL_TIME);
    return q->err->kind;
}

static api_err admit(srv_request *q)
{
    srv_app *app = q->app;
    api_generate_req *req = &q->in.generate;
    srv_job *job = q->job;
    if (req->stream && req->prompt_logprobs && req->format == API_FMT_TGI) { /* as TGI */
        api_fail(q->err, API_E_VALIDATION, "\"decoder_input_details\" is not supported with a stream");
        q->err->param = "decoder_input_details";
        return q->err->kind;
    }
    char model[256];
    srv_model_id(app->cfg.generate_model, model, sizeof model);
    api_generate_set_meta(req, model, q->request_id, (long long)time(NULL));
    if (req->state && import_state(q) != API_OK) return q->err->kind;
    uint64_t prompt_tokens = 0;
    for (size_t i = 0; i < req->n_prompts; i++) {
        /* bos, or the imported state's context */
        uint64_t tokens = (uint64_t)req->prompts[i].len + (job->cont ? luna_gen_state_tokens(job->cont) : 1);
        if (srv_job_too_long(q, luna_model_config(app->generator), tokens, "the prompt is")) return q->err->kind;
        srv_metrics_input_bytes(&app->metrics, req->prompts[i].len);
        prompt_tokens += tokens;
    }
    if (admit_prefill(q, prompt_tokens) != API_OK) return q->err->kind;
    uint64_t reserve = srv_gen_reservation(app, req);
    if (srv_job_over_budget(q, reserve)) return q->err->kind;
    job->min_reserve = reserve; /* a generation's reservation is fixed */
    job->out = malloc(req->n_prompts * (size_t)req->max_new_tokens + 1); /* max_tokens 0 with echo */
    job->gres = calloc(req->n_prompts, sizeof *job->gres);
    job->generate = req;
    if (!job->out || !job->gres || srv_gen_lp_new(job)) return api_fail(q->err, API_E_ENGINE_MEMORY, "%s", "out of memory");
    luna_model_id_hex(app->generator, job->model_id);
    job->reserve = reserve;
    if (req->stream) {
        q->stream->limit = srv_stream_limit(req->n_prompts, (size_t)req->max_new_tokens) + stream_prompt_bytes(req) +
                           srv_gen_lp_stream_bytes(req); /* reserved with the rest */
        job->stream = q->stream;
    }
    return API_OK;
}

/* A streamed answer's events went out as it ran (batch.c); this renders the others. */
static char *render(srv_request *q) { return api_render_generate(&q->in.generate, q->job->gres); }

static void release(srv_request *q)
{
    srv_job *job = q->job;
    if (job->generate) srv_gen_lp_free(job); /* before the request: its prompt count */
    for (size_t i = 0; job->gres && i < q->in.generate.n_prompts; i++) free((void *)job->gres[i].state);
    api_generate_free(&q->in.generate);
    luna_gen_state_free(job->cont);
    free(job->cont_logits);
    free(job->out);
    free(job->gres);
}

const srv_job_kind SRV_JOB_GENERATE = {SRV_MODEL_GENERATOR, 1, parse, admit, srv_gen_run, render, NULL, NULL, release};
