/* score.c - POST /score on a worker: the prefix prefilled once, each candidate scored on a copy
 * of its state (engine/luna.h: luna_score), so N candidates cost one prefix and N candidates,
 * not N prefixes. A worker job like a classification: the same queue, memory ledger, deadline
 * and cancel flag (polled by the engine between chunks). */
#include <stdlib.h>

#include "engine/generate.h"
#include "server/server.h"

/* the tokens converted at once: bos and the prefix go through the engine in pieces this long,
 * a multiple of every chunk length, so the chunks fall where one call would put them */
#define PIECE LUNA_GEN_PREFILL_PIECE

static size_t token_buffer(const api_score_req *q)
{
    size_t p = q->prefix.len + 1 < PIECE ? q->prefix.len + 1 : PIECE;
    return p > q->longest ? p : q->longest;
}

uint64_t srv_score_reservation(const srv_app *app, const api_score_req *req)
{
    uint64_t V = (uint64_t)luna_model_config(app->generator)->vocab_size;
    uint64_t rows = req->longest < SRV_PREFILL_CHUNK ? req->longest : SRV_PREFILL_CHUNK; /* luna_score's */
    return srv_worker_gctx_bytes(app) + 2 * (uint64_t)luna_gen_state_bytes(app->generator) +
           V * 4 + token_buffer(req) * 4 + rows * V * 4 +
           req->n_candidates * (sizeof(api_score_result) + 128) + req->candidate_bytes * (8 + 32);
}

int srv_score_run(srv_app *app, luna_ctx *ctx, luna_gen_state *prefix, srv_job *job)
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
