/* job_classify.c - the classification job (server/jobs.h): POST /classify and /predict, a JSON
 * body (TEI's shape or vLLM's) or one raw document. Its documents run in order on a worker's
 * classifier context: short ones next to each other in packs (luna_classify_pack: one forward
 * for several), the others each under the fastest plan that fits what the job reserved. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    srv_job *job = q->job;
    if (!(job->tokens = malloc((req->n_docs ? req->n_docs : 1) * sizeof *job->tokens)))
        return api_fail(q->err, API_E_ENGINE_MEMORY, "%s", "out of memory");
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
        job->tokens[i] = n;
        srv_metrics_input_bytes(&app->metrics, d->len);
    }
    job->min_reserve = 0;
    job->scores = malloc(req->n_docs * (size_t)luna_model_config(app->classifier)->n_labels * sizeof(float));
    if (!job->scores) return api_fail(q->err, API_E_ENGINE_MEMORY, "%s", "out of memory");
    job->classify = req;
    job->reserve = reserve;
    return API_OK;
}

/* The documents of a run: the job's, or its group's (dispatch took jobs along, `joins`), in
 * order, each with its job, tokens, output row and the plan that ran it; and the scratch of a
 * pack's probabilities and logits. One allocation. */
typedef struct {
    size_t n;
    const uint8_t **data;
    size_t *len, *tok;
    srv_job **job;
    float **out;
    int *kind;
    float *probs, *logits; /* (n, n_labels) each */
    void *block;
} run_docs;

static int run_docs_make(const srv_app *app, srv_job *lead, run_docs *r)
{
    size_t nl = (size_t)luna_model_config(app->classifier)->n_labels, n = 0;
    for (srv_job *j = lead; j; j = j->group) n += j->classify->n_docs;
    /* the pointers first, then the sizes, the floats and the ints: each part stays aligned */
    size_t ptrs = 3 * n * sizeof(void *), sizes = 2 * n * sizeof(size_t), floats = 2 * n * nl * sizeof(float);
    char *p = malloc(ptrs + sizes + floats + n * sizeof(int) + 1);
    if (!p) return LUNA_ENOMEM;
    *r = (run_docs){n, (const uint8_t **)(void *)p, NULL, NULL, (srv_job **)(void *)(p + n * sizeof(void *)),
                    (float **)(void *)(p + 2 * n * sizeof(void *)), NULL, NULL, NULL, p};
    r->len = (size_t *)(void *)(p + ptrs), r->tok = r->len + n;
    r->probs = (float *)(void *)(p + ptrs + sizes), r->logits = r->probs + n * nl;
    r->kind = (int *)(void *)(p + ptrs + sizes + floats);
    size_t k = 0;
    for (srv_job *j = lead; j; j = j->group)
        for (size_t i = 0; i < j->classify->n_docs; i++, k++) {
            r->data[k] = j->classify->docs[i].data, r->len[k] = j->classify->docs[i].len;
            r->tok[k] = j->tokens[i], r->job[k] = j, r->out[k] = j->scores + i * nl;
        }
    return 0;
}

/* Documents i .. i + k of the run as one pack (luna_pack_fit took them): each job's own
 * scores (probabilities, or logits with raw_scores). */
static int run_pack(srv_app *app, luna_ctx *ctx, const run_docs *r, size_t i, size_t k, int nl)
{
    int rc = luna_classify_pack(ctx, k, r->data + i, r->len + i, r->probs, r->logits);
    for (size_t j = 0; j < k && !rc; j++) {
        const float *from = (r->job[i + j]->classify->raw_scores ? r->logits : r->probs) + j * (size_t)nl;
        memcpy(r->out[i + j], from, (size_t)nl * sizeof(float));
        r->kind[i + j] = SRV_PLAN_PACKED;
        srv_metrics_plan(&app->metrics, SRV_PLAN_PACKED);
    }
    return rc;
}

/* Short documents next to each other run in packs (in the context's own buffers: nothing to
 * reserve), a chunk of them per lane the job has (a lone job on an idle server: a lane per core,
 * each running its share of the pack); each other document under the fastest plan that fits what the job reserved: the
 * resident one when the dispatcher could give it its whole workspace, else the streaming one
 * (see dispatch). A group's jobs all get the run's result. */
static int run(srv_app *app, luna_ctx *ctx, luna_gen_state *state, srv_job *job)
{
    (void)state;
    const luna_model *m = app->classifier;
    int nl = luna_model_config(m)->n_labels;
    run_docs r = {0};
    int rc = run_docs_make(app, job, &r);
    int packs = app->cfg.classify_packs && r.n > 1;
    for (size_t i = 0; i < r.n && !rc;) {
        size_t k = packs ? luna_pack_fit(m, 0, job->lanes, r.tok + i, r.n - i) : 0;
        if (k > 1) {
            rc = run_pack(app, ctx, &r, i, k, nl);
            i += k;
            continue;
        }
        const api_classify_req *req = r.job[i]->classify;
        luna_plan plan = luna_plan_for(m, r.tok[i], job->reserve);
        r.kind[i] = plan.rows >= r.tok[i] ? SRV_PLAN_RESIDENT : plan.rows ? SRV_PLAN_PARTIAL : SRV_PLAN_STREAMING;
        srv_metrics_plan(&app->metrics, r.kind[i]);
        rc = req->raw_scores ? luna_classify_plan(ctx, &plan, r.data[i], r.len[i], NULL, r.out[i])
                             : luna_classify_plan(ctx, &plan, r.data[i], r.len[i], r.out[i], NULL);
        i++;
    }
    /* each job's plan: its largest document's */
    for (size_t i = 0, largest = 0; i < r.n && !rc; i++) {
        if (i == 0 || r.job[i] != r.job[i - 1]) largest = 0;
        if (r.tok[i] >= largest) largest = r.tok[i], r.job[i]->plan = r.kind[i];
    }
    for (srv_job *j = job->group; j; j = j->group) j->rc = rc;
    free(r.block);
    return rc;
}

/* A pack on the workers' contexts (the default chunk) takes a document a row at most: each has
 * a token at least (bos). */
enum { GROUP_MAX_DOCS = LUNA_DEFAULT_CHUNK };

/* A queued classification joins the group that `lead` heads when all their documents fit one
 * pack: they run as one forward. The group is full when not even a one-token document would. */
static int joins(const srv_app *app, const luna_ctx *ctx, const srv_job *lead, const srv_job *cand)
{
    (void)ctx;
    const luna_model *m = app->classifier;
    if (!app->cfg.classify_packs) return -1;
    size_t n = 0, tok[GROUP_MAX_DOCS + 1];
    for (const srv_job *j = lead; j; j = j->group)
        for (size_t i = 0; i < j->classify->n_docs; i++) {
            if (n == GROUP_MAX_DOCS) return -1;
            tok[n++] = j->tokens[i];
        }
    tok[n] = 1;
    if (luna_pack_fit(m, 0, 1, tok, n + 1) <= n) return -1;
    if (n + cand->classify->n_docs > GROUP_MAX_DOCS) return 0;
    for (size_t i = 0; i < cand->classify->n_docs; i++) tok[n + i] = cand->tokens[i];
    n += cand->classify->n_docs;
    return luna_pack_fit(m, 0, 1, tok, n) == n;
}

static char *render(srv_request *q)
{
    srv_app *app = q->app;
    const api_classify_req *req = &q->in.classify;
    char id[96], model[256];
    snprintf(id, sizeof id, "classify-%s", q->request_id);
    srv_model_id(app->cfg.classify_model, model, sizeof model);
    api_classify_meta meta = {id, model, (long long)time(NULL), 0};
    for (size_t i = 0; i < req->n_docs; i++) meta.tokens += q->job->tokens[i];
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
    free(q->job->tokens);
}

const srv_job_kind SRV_JOB_CLASSIFY = {SRV_MODEL_CLASSIFIER, 0, parse, admit, run, render, plan, joins, release};
