/* job_score.c - the scoring job (server/jobs.h): POST /score on a worker. The prefix is
 * prefilled once, each candidate scored on a copy of its state (engine/luna.h: luna_score), so
 * N candidates cost one prefix and N candidates, not N prefixes. A worker job like a
 * classification: the same queue, memory ledger, deadline and cancel flag (polled by the engine
 * between chunks). */
#include <stdlib.h>

#include "engine/generate.h"
#include "server/jobs.h"

/* the tokens converted at once: bos and the prefix go through the engine in pieces this long,
 * a multiple of every chunk length, so the chunks fall where one call would put them */
#define PIECE LUNA_GEN_PREFILL_PIECE

static size_t token_buffer(const api_score_req *q)
{
    size_t p = q->prefix.len + 1 < PIECE ? q->prefix.len + 1 : PIECE;
    return p > q->longest ? p : q->longest;
}

static api_err parse(srv_request *q)
{
    char model[256];
    srv_model_id(q->app->cfg.generate_model, model, sizeof model);
    api_limits lim = {q->app->cfg.max_input_bytes, 0, model};
    return api_parse_score(q->body, q->body_len, &lim, &q->in.score, q->err);
}

/* What a /score job reserves: the worker's context and state (the prefix's), a scratch state
 * for the candidates, the prefix's logits, a piece of tokens, luna_score's rows, the results
 * and their rendering. Nothing grows with the prefix. */
static uint64_t reservation(const srv_app *app, const api_score_req *req)
{
    uint64_t V = (uint64_t)luna_model_config(app->generator)->vocab_size;
    uint64_t rows = req->longest < SRV_PREFILL_CHUNK ? req->longest : SRV_PREFILL_CHUNK; /* luna_score's */
    return srv_worker_gctx_bytes(app) + 2 * (uint64_t)luna_gen_state_bytes(app->generator) +
           V * 4 + token_buffer(req) * 4 + rows * V * 4 +
           req->n_candidates * (sizeof(api_score_result) + 128) + req->candidate_bytes * (8 + 32);
}

static api_err admit(srv_request *q)
{
    srv_app *app = q->app;
    const api_score_req *req = &q->in.score;
    uint64_t tokens = (uint64_t)req->prefix.len + 1 + req->longest; /* bos */
    if (srv_job_too_long(q, luna_model_config(app->generator), tokens, "the prefix and its longest candidate are"))
        return q->err->kind;
    srv_metrics_input_bytes(&app->metrics, req->prefix.len + req->candidate_bytes);
    uint64_t reserve = reservation(app, req);
    if (srv_job_over_budget(q, reserve)) return q->err->kind;
    srv_job *job = q->job;
    job->min_reserve = reserve;
    job->sres = calloc(req->n_candidates, sizeof *job->sres);
    job->score_lp = malloc(req->candidate_bytes * sizeof(double)); /* a request's size: may fail */
    if (!job->sres || !job->score_lp) return api_fail(q->err, API_E_ENGINE_MEMORY, "%s", "out of memory");
    job->score = req;
    job->reserve = reserve;
    return API_OK;
}

/* The prefix prefilled once on `prefix` (the worker's state), then each candidate scored on a
 * copy of it (luna_score). Worker thread. */
static int run(srv_app *app, luna_ctx *ctx, luna_gen_state *prefix, srv_job *job)
{
    const api_score_req *q = job->score;
    const luna_config *cfg = luna_model_config(app->generator);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof(float)); /* (vocab) after the prefix */
    int32_t *tok = malloc(token_buffer(q) * sizeof(int32_t));
    luna_gen_state *work = NULL;
    int rc = logits && tok ? luna_gen_state_new(app->generator, &work) : LUNA_ENOMEM;
    /* the prefix: bos, then its bytes, the logits after the last */
    luna_gen_state_reset(prefix);
    for (size_t at = 0, n = q->prefix.len + 1; !rc && at < n;) {
        size_t take = n - at < PIECE ? n - at : PIECE;
        for (size_t i = 0; i < take; i++)
            tok[i] = at + i == 0 ? cfg->bos_id : cfg->byte_offset + q->prefix.data[at + i - 1];
        rc = luna_prefill(ctx, prefix, tok, take, at + take == n ? logits : NULL, 0);
        at += take;
    }
    job->prefix_tokens = luna_gen_state_tokens(prefix);
    double *per = job->score_lp;
    for (size_t c = 0; !rc && c < q->n_candidates; c++) {
        const api_doc *d = &q->candidates[c];
        for (size_t i = 0; i < d->len; i++) tok[i] = cfg->byte_offset + d->data[i];
        api_score_result *r = &job->sres[c];
        *r = (api_score_result){.per_token = per, .tokens = d->len};
        if (!(rc = luna_gen_state_copy(work, prefix)))
            rc = luna_score(ctx, work, logits, tok, d->len, per, &r->logprob, NULL, &r->is_greedy);
        per += d->len;
    }
    luna_gen_state_free(work);
    free(tok);
    free(logits);
    return rc;
}

static char *render(srv_request *q)
{
    char model[256];
    srv_model_id(q->app->cfg.generate_model, model, sizeof model);
    return api_render_score(&q->in.score, q->job->sres, model, q->job->prefix_tokens);
}

static void release(srv_request *q)
{
    api_score_free(&q->in.score);
    free(q->job->sres);
    free(q->job->score_lp);
}

const srv_job_kind SRV_JOB_SCORE = {SRV_MODEL_GENERATOR, 0, parse, admit, run, render, NULL, NULL, release};
