/* job_classify.c - the classification job (server/jobs.h): POST /classify and /predict, a JSON
 * body (TEI's shape or vLLM's) or one raw document. Its documents run in order on a worker's
 * classifier context: short ones next to each other in packs (luna_classify_pack: one forward
 * for several), the others each under the fastest plan that fits what the job reserved. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/jobs.h"

static const char *const PLAN_NAMES[SRV_N_PLANS] = {"resident", "partial", "streaming", "packed"};

static api_err parse(srv_request *q)
{
    char model[256];
    srv_model_id(q->app->cfg.classify_model, model, sizeof model);
    api_limits lim = {q->app->cfg.max_input_bytes, 1024, model};
    if (!q->raw) return api_parse_classify(q->body, q->body_len, &lim, &q->in.classify, q->err);
    /* one document, the body itself: no copy, no decoding */
    const char *rs = q->arg(q->arg_cls, "raw_scores"), *tr = q->arg(q->arg_cls, "truncate");
    return api_classify_raw((const uint8_t *)q->body, q->body_len, rs, tr, &lim, &q->in.classify, q->err);
}

/* A document past the model's tokens: 413, or cut to them with "truncate". Its reservation is
 * its largest document's plan: see admit. */
static api_err admit(srv_request *q)
{
    srv_app *app = q->app;
    api_classify_req *req = &q->in.classify;
    uint64_t reserve = 0;
    for (size_t i = 0; i < req->n_docs; i++) {
        api_doc *d = &req->docs[i];
        size_t n = luna_input_tokens(app->classifier, d->data, d->len);
        if (n > app->max_doc_tokens) {
            if (!req->truncate) {
                api_fail(q->err, API_E_INPUT_TOO_LONG,
                         "document %zu is %zu tokens; the model accepts %zu (or set \"truncate\": true)", i, n,
                         app->max_doc_tokens);
                q->err->extra_key[0] = "max_tokens";
                q->err->extra_val[0] = (double)app->max_doc_tokens;
                return q->err->kind;
            }
            while (d->len > 0 && luna_input_tokens(app->classifier, d->data, d->len) > app->max_doc_tokens)
                d->len -= n - app->max_doc_tokens < d->len ? n - app->max_doc_tokens : d->len,
                    n = luna_input_tokens(app->classifier, d->data, d->len);
        }
        /* documents of one request run one after another: reserve the largest's plan with the
         * whole budget (resident, unless streaming costs no more time); when that does not fit
         * what is free, the dispatcher runs it under the streaming plan instead, which needs no
         * memory that grows with the input: no document is too large for the budget */
        uint64_t need = luna_plan_for(app->classifier, n, srv_request_budget(app)).bytes;
        if (need > reserve) reserve = need;
        srv_metrics_input_bytes(&app->metrics, d->len);
    }
    /* two documents or more may share packs: a pack's buffer, unless the job gets only its least
     * reservation (then each runs alone, see run) */
    uint64_t pack = req->n_docs > 1 ? luna_pack_bytes(app->classifier, 0) : 0;
    if (pack > reserve && pack <= srv_request_budget(app)) reserve = pack;
    srv_job *job = q->job;
    job->min_reserve = 0;
    job->scores = malloc(req->n_docs * (size_t)luna_model_config(app->classifier)->n_labels * sizeof(float));
    if (!job->scores) return api_fail(q->err, API_E_ENGINE_MEMORY, "%s", "out of memory");
    job->classify = req;
    job->reserve = reserve;
    return API_OK;
}

/* Documents i .. i + k of the request as one pack (luna_pack_fit took them). */
static int run_pack(srv_app *app, luna_ctx *ctx, srv_job *job, size_t i, size_t k, int nl)
{
    const api_classify_req *req = job->classify;
    const uint8_t **docs = malloc(k * sizeof *docs);
    size_t *lens = malloc(k * sizeof *lens);
    int rc = LUNA_ENOMEM;
    if (docs && lens) {
        for (size_t j = 0; j < k; j++) docs[j] = req->docs[i + j].data, lens[j] = req->docs[i + j].len;
        float *out = job->scores + i * (size_t)nl;
        rc = luna_classify_pack(ctx, k, docs, lens, req->raw_scores ? NULL : out, req->raw_scores ? out : NULL);
        for (size_t j = 0; j < k && !rc; j++) srv_metrics_plan(&app->metrics, SRV_PLAN_PACKED);
    }
    free(docs), free(lens);
    return rc;
}

/* Short documents next to each other run in packs when the job holds a pack's buffer; each
 * other document under the fastest plan that fits what the job reserved: the resident one when
 * the dispatcher could give it its whole workspace, else the streaming one (see dispatch). */
static int run(srv_app *app, luna_ctx *ctx, luna_gen_state *state, srv_job *job)
{
    (void)state;
    const api_classify_req *req = job->classify;
    const luna_model *m = app->classifier;
    int nl = luna_model_config(m)->n_labels;
    size_t n_docs = req->n_docs, largest = 0, *tok = malloc((n_docs ? n_docs : 1) * sizeof *tok);
    if (!tok) return LUNA_ENOMEM;
    for (size_t i = 0; i < n_docs; i++) tok[i] = luna_input_tokens(m, req->docs[i].data, req->docs[i].len);
    int packs = n_docs > 1 && job->reserve >= luna_pack_bytes(m, 0), rc = 0;
    for (size_t i = 0; i < n_docs && !rc;) {
        size_t k = packs ? luna_pack_fit(ctx, tok + i, n_docs - i) : 0;
        if (k > 1) {
            for (size_t j = i; j < i + k; j++)
                if (tok[j] >= largest) largest = tok[j], job->plan = SRV_PLAN_PACKED;
            rc = run_pack(app, ctx, job, i, k, nl);
            i += k;
            continue;
        }
        float *out = job->scores + i * (size_t)nl;
        size_t n = tok[i];
        luna_plan plan = luna_plan_for(m, n, job->reserve);
        int kind = plan.rows >= n ? SRV_PLAN_RESIDENT : plan.rows ? SRV_PLAN_PARTIAL : SRV_PLAN_STREAMING;
        if (n >= largest) largest = n, job->plan = kind;
        srv_metrics_plan(&app->metrics, kind);
        rc = req->raw_scores ? luna_classify_plan(ctx, &plan, req->docs[i].data, req->docs[i].len, NULL, out)
                             : luna_classify_plan(ctx, &plan, req->docs[i].data, req->docs[i].len, out, NULL);
        i++;
    }
    free(tok);
    return rc;
}

static char *render(srv_request *q)
{
    srv_app *app = q->app;
    const api_classify_req *req = &q->in.classify;
    char id[96], model[256];
    snprintf(id, sizeof id, "classify-%s", q->request_id);
    srv_model_id(app->cfg.classify_model, model, sizeof model);
    api_classify_meta meta = {id, model, (long long)time(NULL), 0};
    for (size_t i = 0; i < req->n_docs; i++)
        meta.tokens += luna_input_tokens(app->classifier, req->docs[i].data, req->docs[i].len);
    return api_render_classify(req, q->job->scores, app->labels, luna_model_config(app->classifier)->n_labels, &meta);
}

/* which plan classified the (largest) document: resident, partial or streaming */
static const char *plan(const srv_job *job)
{
    return job->t_end > 0 && job->rc == 0 ? PLAN_NAMES[job->plan] : NULL;
}

static void release(srv_request *q)
{
    api_classify_free(&q->in.classify);
    free(q->job->scores);
}

const srv_job_kind SRV_JOB_CLASSIFY = {SRV_MODEL_CLASSIFIER, 0, parse, admit, run, render, plan, release};
