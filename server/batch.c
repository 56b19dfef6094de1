/* batch.c - generation: alone on a worker, or in the continuous batch (see batch.h). */
#include "server/batch.h"

#include "server/cache.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* ---- what both ways share ------------------------------------------------------------------- */

/* Delivers one event to the job's stream; a stream past its limit (a client that does not
 * read) cancels the job: the engine stops at its next step. */
static int push_event(void *user, const char *ev, int skip, const api_stream_token *t)
{
    (void)t;
    srv_job *job = user;
    if (skip) return 0;
    if (!ev || srv_stream_push(job, ev, strlen(ev))) {
        srv__cancel_job(job, CANCEL_OVERFLOW); /* (or out of memory rendering it) */
        return -1;
    }
    return 0;
}

static int on_bytes(void *user, const uint8_t *b, size_t n) { return api_seq_bytes(user, b, n); }

/* ---- log-probabilities ------------------------------------------------------------------------ */

_Static_assert(API_MAX_TOP_LOGPROBS <= LUNA_GEN_MAX_TOP, "the engine records the best tokens the API lists");
/* Per entry and per best token: its cJSON tree while the answer is rendered (an object of
 * four members: five nodes and their strings) and its text; and in a stream's unread events
 * (job_generate.c adds it to the stream's limit: an echo's first chunk carries the whole prompt's). */
#define LP_RENDER_BYTES 512
#define LP_EVENT_BYTES 128

/* Entries of prompt c: generated tokens, prompt positions (bos + bytes); best tokens of each. */
static size_t lp_gen_n(const api_generate_req *q) { return q->logprobs ? (size_t)q->max_new_tokens : 0; }
static size_t lp_prompt_n(const api_generate_req *q, size_t c) { return q->prompt_logprobs ? q->prompts[c].len + 1 : 0; }
static int lp_prompt_top(const api_generate_req *q) { return q->format == API_FMT_TGI ? 0 : q->top_n; }
static size_t lp_entry_bytes(int top) { return sizeof(double) + (size_t)top * (sizeof(int32_t) + sizeof(double)); }

/* Entries of the whole request, each weighted by 1 + its best tokens. */
static uint64_t lp_weighted(const api_generate_req *req)
{
    uint64_t w = 0;
    for (size_t c = 0; c < req->n_prompts; c++)
        w += lp_gen_n(req) * (1 + (uint64_t)req->top_n) + lp_prompt_n(req, c) * (1 + (uint64_t)lp_prompt_top(req));
    return w;
}

uint64_t srv_gen_lp_stream_bytes(const api_generate_req *req) { return req->stream ? lp_weighted(req) * LP_EVENT_BYTES : 0; }

uint64_t srv_gen_lp_bytes(const srv_app *app, const api_generate_req *req)
{
    if (!req->logprobs && !req->prompt_logprobs) return 0;
    uint64_t V = (uint64_t)luna_model_config(app->generator)->vocab_size, b = 0, longest = 0;
    for (size_t c = 0; c < req->n_prompts; c++) {
        uint64_t p = lp_prompt_n(req, c);
        b += lp_gen_n(req) * lp_entry_bytes(req->top_n) + p * lp_entry_bytes(lp_prompt_top(req));
        if (p > longest) longest = p;
    }
    b += lp_weighted(req) * LP_RENDER_BYTES + srv_gen_lp_stream_bytes(req);
    uint64_t rows = app->batch ? (uint64_t)app->cfg.max_batch : 1; /* prompts prefilling at once, at most */
    if (rows > (req->n_prompts ? req->n_prompts : 1)) rows = req->n_prompts ? req->n_prompts : 1;
    /* the copy of each row's logits, and a prefill chunk's rows of every position's logits */
    return b + rows * V * 4 + (req->prompt_logprobs ? rows * (longest < SRV_PREFILL_CHUNK ? longest : SRV_PREFILL_CHUNK) * V * 4 : 0);
}

/* Lays n entries of `top` best tokens out at *at (doubles first, then ids: aligned). */
static luna_gen_lp lp_layout(char **at, size_t n, int top)
{
    luna_gen_lp l = {.n_top = top, .cap = n};
    l.lp = (double *)*at, *at += n * sizeof(double);
    l.top_lps = (double *)*at, *at += n * (size_t)top * sizeof(double);
    l.top_ids = (int32_t *)*at, *at += n * (size_t)top * sizeof(int32_t);
    return l;
}

int srv_gen_lp_new(srv_job *job)
{
    const api_generate_req *q = job->generate;
    if (!q->logprobs && !q->prompt_logprobs) return 0;
    if (!(job->lps = calloc(q->n_prompts, sizeof *job->lps))) return -1;
    for (size_t c = 0; c < q->n_prompts; c++) {
        struct srv_gen_lps *l = &job->lps[c];
        size_t g = lp_gen_n(q), p = lp_prompt_n(q, c);
        l->mem = malloc(g * lp_entry_bytes(q->top_n) + p * lp_entry_bytes(lp_prompt_top(q)) + 1); /* a request's size */
        if (!l->mem) return -1;
        char *at = l->mem;
        l->gen = lp_layout(&at, g, q->top_n);
        l->prompt = lp_layout(&at, p, lp_prompt_top(q));
    }
    return 0;
}

void srv_gen_lp_free(srv_job *job)
{
    for (size_t c = 0; job->lps && c < job->generate->n_prompts; c++) free(job->lps[c].mem);
    free(job->lps);
    job->lps = NULL;
}

/* After luna_gen_begin: prompt c's generation records what its request asks for. */
static int gen_logprobs(srv_job *job, size_t c, luna_gen *g)
{
    const api_generate_req *q = job->generate;
    if (!job->lps) return 0;
    return luna_gen_logprobs(g, q->logprobs ? &job->lps[c].gen : NULL, q->prompt_logprobs ? &job->lps[c].prompt : NULL);
}

static api_logprobs lp_view(const luna_gen_lp *l)
{
    return (api_logprobs){l->cap ? l->lp : NULL, l->top_ids, l->top_lps, l->n_top};
}

/* The job's seed: the request's, or one from the OS when it samples without one (reported
 * back, so the answer can be reproduced). */
static void gen_seed(srv_job *job)
{
    const api_generate_req *q = job->generate;
    job->seed = q->seed;
    if (q->do_sample && !q->has_seed) {
        if (getrandom(&job->seed, sizeof job->seed, 0) != (ssize_t)sizeof job->seed)
            job->seed = (uint64_t)(srv_now() * 1e9) ^ (uint64_t)(uintptr_t)job;
        job->seed &= (1ull << 53) - 1; /* a JSON number keeps it exactly */
    }
}

static void gen_params(const srv_job *job, luna_sampling *sp, luna_gen_params *gp)
{
    const api_generate_req *q = job->generate;
    *sp = (luna_sampling){q->do_sample ? q->temperature : 0.0f, q->do_sample ? q->top_k : 0,
                          q->do_sample ? q->top_p : 1.0f, q->repetition_penalty, job->seed};
    *gp = (luna_gen_params){.max_new_tokens = q->max_new_tokens, .n_stop = q->n_stop};
    for (int i = 0; i < q->n_stop; i++) gp->stop[i] = q->stop[i], gp->stop_len[i] = q->stop_len[i];
}

/* Whether prompt c's generation uses the state cache: not a continued prompt (the cache's
 * states start at bos, and the context is not the prompt), nor one whose prompt's
 * log-probabilities are asked for (they need every position's logits from bos, and those
 * slices' logits round otherwise than a plain prefill's: stored, they would change the bytes
 * of a later hit). */
static int uses_cache(const srv_job *job) { return !job->cont && !job->generate->prompt_logprobs; }

/* Before the first prefill slice of prompt c (g begun on a fresh state): when the state cache
 * holds a prefix of the prompt, g goes on from a copy of it instead (luna_gen_resume), with
 * the same bytes to come. *pin receives the cache's entry. A failure fails g. */
static void cache_resume(srv_app *app, srv_job *job, size_t c, luna_gen *g, luna_sampler *smp, api_seq *ev, srv_cnode **pin)
{
    const api_doc *pr = &job->generate->prompts[c];
    float *logits = app->cache ? malloc(luna_model_config(app->generator)->vocab_size * sizeof(float)) : NULL;
    if (!logits) return; /* no cache, or no memory for a lookup: prefill it all */
    *pin = srv_cache_lookup(app->cache, pr->data, pr->len, g->state, logits);
    if (*pin) {
        luna_sampling sp;
        luna_gen_params gp;
        gen_params(job, &sp, &gp);
        luna_gen_state *st = g->state;
        luna_gen_end(g, NULL); /* nothing was prefilled or emitted yet */
        int rc = luna_gen_resume(g, app->generator, st, logits, smp, pr->data, pr->len, &gp, on_bytes, ev);
        if (!rc) rc = gen_logprobs(job, c, g); /* the generated tokens' (the prompt's never come here) */
        if (rc) luna_gen_fail(g, rc);
    }
    free(logits);
}

/* One prefill slice of at most max_tokens that stops where the state cache stores, and stores
 * there. Returns what luna_gen_prefill does. */
static long prefill_slice(srv_app *app, luna_ctx *ctx, srv_job *job, size_t c, luna_gen *g, srv_cnode **pin,
                          size_t max_tokens)
{
    const api_doc *pr = &job->generate->prompts[c];
    srv_cache *cache = uses_cache(job) ? app->cache : NULL;
    uint64_t t = luna_gen_state_tokens(g->state);
    size_t stop = srv_cache_next_stop(cache, t, pr->len);
    if (stop - t < max_tokens) max_tokens = stop - t;
    long n = luna_gen_prefill(g, ctx, max_tokens);
    if (n > 0) srv_cache_put(cache, pin, pr->data, pr->len, g->state, g->logits);
    return n;
}

/* Starts prompt c's generation on the fresh state st: from nothing, or after the request's
 * imported state. */
static int gen_start(srv_app *app, srv_job *job, size_t c, luna_gen *g, luna_gen_state *st, luna_sampler *smp,
                     api_seq *ev)
{
    const api_doc *pr = &job->generate->prompts[c];
    luna_sampling sp;
    luna_gen_params gp;
    gen_params(job, &sp, &gp);
    int rc = job->cont ? luna_gen_state_copy(st, job->cont) : 0;
    if (!rc && !job->cont) rc = luna_gen_begin(g, app->generator, st, smp, pr->data, pr->len, &gp, on_bytes, ev);
    else if (!rc)
        rc = luna_gen_continue(g, app->generator, st, job->cont_has_logits ? job->cont_logits : NULL, smp, pr->data,
                               pr->len, &gp, on_bytes, ev);
    if (!rc && (rc = gen_logprobs(job, c, g)) != 0) luna_gen_end(g, NULL); /* the log-probabilities asked for */
    return rc;
}

/* return_state: the state of prompt c's generation, once it holds every token (the caller
 * stepped the last), exported with the next token's logits into its result. A state at
 * max_positions could not take the last token: it goes without it, and without logits. */
static int state_out(srv_app *app, srv_job *job, size_t c, const luna_gen *g, int complete)
{
    size_t cap = luna_gen_state_export_bytes(app->generator, 1), len = 0;
    uint8_t *buf = malloc(cap);
    int rc = buf ? luna_gen_state_export(g->state, complete ? g->logits : NULL, buf, cap, &len) : LUNA_ENOMEM;
    if (rc) {
        free(buf);
        return rc;
    }
    api_gen_result *res = &job->gres[c];
    res->state = buf;
    res->state_len = len;
    res->state_tokens = luna_gen_state_tokens(g->state);
    res->state_model_id = job->model_id;
    return 0;
}

/* Whether the generation's last token still has to be stepped before its state is exported;
 * if not, the export happens now (a failure fails g). */
static int state_wants_last(srv_app *app, srv_job *job, size_t c, luna_gen *g)
{
    if (!job->generate->return_state || g->rc) return 0;
    const luna_config *cfg = luna_model_config(app->generator);
    int32_t last = luna_gen_last(g);
    int room = cfg->max_positions <= 0 || luna_gen_state_tokens(g->state) < (uint64_t)cfg->max_positions;
    if (last >= 0 && room) return 1;
    int rc = state_out(app, job, c, g, last < 0);
    if (rc) luna_gen_fail(g, rc);
    return 0;
}

/* Prompt c's result record and event sequencer. */
static void choice_begin(srv_app *app, srv_job *job, size_t c, api_seq *ev)
{
    const luna_config *cfg = luna_model_config(app->generator);
    api_gen_result *res = &job->gres[c];
    res->out = job->out + c * (size_t)job->generate->max_new_tokens;
    res->byte_offset = cfg->byte_offset;
    res->has_seed = job->generate->do_sample;
    res->seed = job->seed;
    res->bos_id = cfg->bos_id, res->eos_id = cfg->eos_id;
    if (job->lps) res->gen = lp_view(&job->lps[c].gen), res->prompt = lp_view(&job->lps[c].prompt);
    api_seq_init(ev, job->generate, c, res, cfg->byte_offset, cfg->eos_id, job->stream ? push_event : NULL, job);
}

/* Prompt c is over (rc: its error): the result, the metrics, its last events. */
static void choice_end(srv_app *app, srv_job *job, size_t c, api_seq *ev, const luna_gen_result *r, int rc)
{
    api_gen_result *res = &job->gres[c];
    res->finish = luna_finish_name(r->finish);
    res->generated_tokens = r->generated_tokens;
    res->prompt_tokens = r->prompt_tokens;
    srv_metrics_generated(&app->metrics, r->generated_tokens, r->prompt_tokens, r->prefill_seconds, r->decode_seconds);
    if (job->stream && !rc) api_seq_finish(ev, r->finish == LUNA_FINISH_EOS);
    else if (job->stream) api_seq_abort(ev);
    if (ev->failed) job->failed = 1;
}

/* Any thread: the 200 response of a stream can go out. */
static void stream_start(srv_job *job)
{
    if (!job->stream) return;
    pthread_mutex_lock(&job->stream->lock);
    job->stream->started = 1;
    job->stream->last_push = srv_now();
    pthread_mutex_unlock(&job->stream->lock);
    job->on_stream(job);
}

/* Every prompt is over: a stream gets its end (or error) event and is finished. Returns the
 * job's result code: rc, or ENOMEM when an event could not be delivered. */
static int gen_close(srv_job *job, int rc)
{
    if (job->failed && rc == 0) rc = LUNA_ENOMEM;
    if (!job->stream) return rc;
    if (rc == 0) {
        int skip = 0;
        char *ev = api_render_stream_end(job->generate, job->gres, &skip);
        if (!skip && (!ev || srv_stream_push(job, ev, strlen(ev)))) rc = LUNA_ENOMEM;
        free(ev);
    } else if (!job->failed) {
        job->rc = rc;
        api_error e;
        if (srv_job_error(job, &e) != API_OK) {
            char *ev = api_render_stream_error(job->generate, &e);
            if (ev) srv_stream_push(job, ev, strlen(ev));
            free(ev);
        }
    }
    pthread_mutex_lock(&job->stream->lock);
    job->stream->finished = 1;
    int wake = job->stream->waiting;
    job->stream->waiting = 0;
    pthread_mutex_unlock(&job->stream->lock);
    if (wake) job->on_stream(job);
    return rc;
}

/* ---- alone on a worker (--max-batch 1) ------------------------------------------------------ */

int srv_gen_run(srv_app *app, luna_ctx *ctx, luna_gen_state *state, srv_job *job)
{
    const api_generate_req *q = job->generate;
    const luna_config *cfg = luna_model_config(app->generator);
    luna_sampling sp;
    luna_gen_params gp;
    gen_seed(job);
    gen_params(job, &sp, &gp);
    stream_start(job);
    int rc = 0;
    for (size_t c = 0; c < q->n_prompts && !rc && !job->failed; c++) {
        luna_sampler *smp = NULL;
        if ((rc = luna_sampler_new(cfg->vocab_size, &sp, &smp))) break; /* each prompt: a fresh sampler */
        api_seq ev;
        choice_begin(app, job, c, &ev);
        luna_gen_state_reset(state);
        luna_gen_result r;
        luna_gen g;
        srv_cnode *pin = NULL;
        uint64_t reused = 0;
        rc = gen_start(app, job, c, &g, state, smp, &ev);
        if (!rc) {
            if (uses_cache(job)) cache_resume(app, job, c, &g, smp, &ev, &pin);
            reused = job->cont ? 0 : luna_gen_state_tokens(state);
            while (luna_gen_prefilling(&g)) prefill_slice(app, ctx, job, c, &g, &pin, LUNA_GEN_PREFILL_PIECE);
            int32_t tok;
            while ((rc = luna_gen_next(&g, &tok)) == 1)
                if ((rc = luna_step(ctx, state, tok, g.logits)) != 0) luna_gen_fail(&g, rc);
            if (state_wants_last(app, job, c, &g)) {
                if ((rc = luna_step(ctx, state, luna_gen_last(&g), g.logits)) == 0) rc = state_out(app, job, c, &g, 1);
                if (rc) luna_gen_fail(&g, rc);
            }
            rc = luna_gen_end(&g, &r);
        } else {
            memset(&r, 0, sizeof r);
        }
        srv_cache_unpin(app->cache, pin);
        luna_sampler_free(smp);
        srv_prefill_observe(app, r.prompt_tokens - reused, r.prefill_seconds);
        job->gres[c].cached_tokens = reused;
        if (c == 0 && r.prompt_tokens) /* the prefill's end is when the first token was due */
            srv_metrics_ttft(&app->metrics, job->t_start - job->t_submit + r.prefill_seconds);
        choice_end(app, job, c, &ev, &r, rc);
    }
    return gen_close(job, rc);
}

/* ---- the continuous batch ------------------------------------------------------------------- */

int srv_batch_new(srv_app *app)
{
    if (app->cfg.max_batch <= 1 || !app->generator) return 0;
    srv_batch *b = calloc(1, sizeof *b);
    if (!b) return -1;
    size_t R = (size_t)app->cfg.max_batch, V = (size_t)luna_model_config(app->generator)->vocab_size;
    b->max_rows = (int)R;
    b->slice = (size_t)app->cfg.max_batch_tokens;
    /* a step of B rows needs a context whose chunk holds B rows, and it never prefills; its
     * lanes take the cores that nothing else needs (sched.c lends them) */
    int lanes = app->n_workers * app->cfg.blas_threads;
    luna_ctx_opts co = {(int)R, LUNA_ATTN_LUNA, lanes < LUNA_MAX_THREADS ? lanes : LUNA_MAX_THREADS};
    b->scratch = luna_ctx_bytes(app->generator, &co) + R * (V * sizeof(float) + 4 * sizeof(void *) + sizeof(int32_t));
    b->logits = malloc(R * V * sizeof(float));
    b->states = malloc(R * sizeof *b->states);
    b->tokens = malloc(R * sizeof *b->tokens);
    b->rows = malloc(R * sizeof *b->rows);
    b->step = malloc(R * sizeof *b->step);
    b->decode = malloc(R * sizeof *b->decode);
    int rc = b->logits && b->states && b->tokens && b->rows && b->step && b->decode ? 0 : LUNA_ENOMEM;
    if (!rc) rc = luna_ctx_new(app->generator, &co, &b->ctx);
    if (!rc && srv_reserve(app, b->scratch)) {
        srv_log(LOG_ERROR, "the memory budget cannot hold the batch's scratch",
                "\"max_batch\":%d,\"scratch_bytes\":%llu,\"memory_budget\":%llu", b->max_rows,
                (unsigned long long)b->scratch, (unsigned long long)app->cfg.memory_budget);
        b->scratch = 0;
        rc = LUNA_ENOMEM;
    } else if (rc) {
        srv_log(LOG_ERROR, "cannot allocate the batch", "\"error\":\"%s\"", luna_strerror(rc));
    }
    app->batch = b;
    srv_metrics_fixed(&app->metrics, b->scratch);
    if (rc) {
        srv_batch_free(app);
        return -1;
    }
    return 0;
}

void srv_batch_free(srv_app *app)
{
    srv_batch *b = app->batch;
    if (!b) return;
    srv_release(app, b->scratch);
    luna_ctx_free(b->ctx);
    free(b->logits);
    free(b->states);
    free(b->tokens);
    free(b->rows);
    free(b->step);
    free(b->decode);
    free(b);
    app->batch = NULL;
}

int srv_batch_room(const srv_app *app, const srv_job *job)
{
    const srv_batch *b = app->batch;
    int rows = (int)(job->generate->n_prompts < (size_t)b->max_rows ? job->generate->n_prompts : (size_t)b->max_rows);
    return b->rows_used + rows <= b->max_rows;
}

int srv_batch_jobs(const srv_app *app)
{
    int n = 0;
    for (const srv_job *j = app->batch ? app->batch->jobs : NULL; j; j = j->bnext) n++;
    return n;
}

static void pf_push(srv_batch *b, srv_seq *s)
{
    s->next = NULL;
    if (b->pf_tail) b->pf_tail->next = s;
    else b->pf_head = s;
    b->pf_tail = s;
}

/* Starts the job's next prompt as a sequence waiting for its prefill; the job fails (rc) when
 * its state or sampler cannot be had. */
static void seq_start(srv_app *app, srv_job *job)
{
    const luna_config *cfg = luna_model_config(app->generator);
    size_t c = job->next_choice++;
    luna_sampling sp;
    luna_gen_params gp;
    gen_params(job, &sp, &gp);
    srv_seq *s = calloc(1, sizeof *s);
    int rc = s ? 0 : LUNA_ENOMEM;
    if (!rc) rc = luna_gen_state_new(app->generator, &s->state);
    if (!rc) rc = luna_sampler_new(cfg->vocab_size, &sp, &s->smp);
    if (!rc) {
        s->job = job;
        s->choice = c;
        choice_begin(app, job, c, &s->ev);
        rc = gen_start(app, job, c, &s->g, s->state, s->smp, &s->ev);
        s->looked_up = !uses_cache(job); /* not looked up in the cache: see uses_cache */
    }
    if (rc) {
        if (s) {
            luna_sampler_free(s->smp);
            luna_gen_state_free(s->state);
            free(s);
        }
        if (!job->rc) job->rc = rc;
        return;
    }
    job->live++;
    pf_push(app->batch, s);
}

static void job_finish(srv_app *app, srv_job *job)
{
    srv_batch *b = app->batch;
    int rc = job->rc;
    if (!rc && atomic_load(&job->cancel)) rc = LUNA_ECANCELED;
    job->rc = gen_close(job, rc);
    job->t_end = srv_now();
    srv_release(app, job->reserve);
    b->rows_used -= job->rows;
    for (srv_job **pp = &b->jobs; *pp; pp = &(*pp)->bnext)
        if (*pp == job) {
            *pp = job->bnext;
            break;
        }
    srv_metrics_batch_streams(&app->metrics, b->rows_used);
    job->on_done(job); /* after this, the job belongs to http.c */
}

/* The job is over when nothing of it runs and nothing more will start. */
static void job_next(srv_app *app, srv_job *job)
{
    int stop = job->rc || job->failed || atomic_load(&job->cancel);
    while (!stop && job->live < job->rows && job->next_choice < job->generate->n_prompts) {
        seq_start(app, job);
        stop = job->rc != 0;
    }
    if (job->live == 0 && (stop || job->next_choice == job->generate->n_prompts)) job_finish(app, job);
}

/* The sequence has left the batch (finished, failed or cancelled): its choice's result. */
static void seq_end(srv_app *app, srv_seq *s)
{
    srv_job *job = s->job;
    luna_gen_result r;
    int rc = luna_gen_end(&s->g, &r);
    srv_cache_unpin(app->cache, s->pin);
    choice_end(app, job, s->choice, &s->ev, &r, rc);
    if (rc && !job->rc) job->rc = rc;
    luna_sampler_free(s->smp);
    luna_gen_state_free(s->state);
    free(s);
    job->live--;
    job_next(app, job);
}

void srv_batch_admit(srv_app *app, srv_job *job)
{
    SRV_ON_LOOP(app);
    srv_batch *b = app->batch;
    size_t n = job->generate->n_prompts;
    job->rows = (int)(n < (size_t)b->max_rows ? n : (size_t)b->max_rows);
    job->next_choice = 0;
    job->live = 0;
    b->rows_used += job->rows;
    job->bnext = b->jobs;
    b->jobs = job;
    srv_metrics_batch_streams(&app->metrics, b->rows_used);
    gen_seed(job);
    stream_start(job);
    job_next(app, job);
}

static int seq_over(const srv_seq *s)
{
    return s->job->rc || s->job->failed || atomic_load(&s->job->cancel);
}

static int seq_done(const srv_seq *s) { return s->phase == SEQ_DONE; }

/* Moves the decoding sequences for which `leaves` holds onto the list `to`; returns it. */
static srv_seq *decode_take(srv_batch *b, int (*leaves)(const srv_seq *), srv_seq *to)
{
    int k = 0;
    for (int i = 0; i < b->n_decode; i++) {
        srv_seq *s = b->decode[i];
        if (leaves(s)) {
            s->next = to;
            to = s;
        } else {
            b->decode[k++] = s;
        }
    }
    b->n_decode = k;
    return to;
}

/* Ends every sequence of the list; rc: marks them failed first (0: they are over already). */
static void ends(srv_app *app, srv_seq *list, int rc)
{
    while (list) {
        srv_seq *next = list->next;
        if (rc) luna_gen_fail(&list->g, rc);
        seq_end(app, list);
        list = next;
    }
}

void srv_batch_reap(srv_app *app)
{
    SRV_ON_LOOP(app);
    srv_batch *b = app->batch;
    if (!b) return;
    srv_seq *over = NULL;
    for (srv_seq **pp = &b->pf_head, *prev = NULL; *pp;) {
        srv_seq *s = *pp;
        if (!seq_over(s)) {
            prev = s;
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        if (b->pf_tail == s) b->pf_tail = prev;
        s->next = over;
        over = s;
    }
    if (!b->decode_out) over = decode_take(b, seq_over, over);
    ends(app, over, LUNA_ECANCELED);
}

srv_seq *srv_batch_next_prefill(srv_app *app)
{
    SRV_ON_LOOP(app);
    srv_batch *b = app->batch;
    srv_seq *s = b ? b->pf_head : NULL;
    if (!s) return NULL;
    b->pf_head = s->next;
    if (!b->pf_head) b->pf_tail = NULL;
    s->next = NULL;
    s->in_task = 1;
    return s;
}

void srv_batch_prefilled(srv_app *app, srv_seq *s)
{
    SRV_ON_LOOP(app);
    srv_batch *b = app->batch;
    assert(s->in_task && b->n_decode < b->max_rows);
    s->in_task = 0;
    switch (s->phase) {
    case SEQ_DONE: seq_end(app, s); break;
    case SEQ_DECODE: b->decode[b->n_decode++] = s; break; /* rows_used bounds n_decode */
    default: pf_push(b, s); break; /* its turn again after the others' */
    }
}

int srv_batch_step_due(const srv_app *app)
{
    const srv_batch *b = app->batch;
    return b && b->n_decode > 0 && !b->decode_out;
}

void srv_batch_step_out(srv_app *app)
{
    SRV_ON_LOOP(app);
    srv_batch *b = app->batch;
    assert(!b->decode_out); /* one decode step out at a time: the batch's context is its own */
    for (int i = 0; i < b->n_decode; i++) {
        b->step[i] = b->decode[i];
        b->step[i]->in_task = 1;
    }
    b->n_step = b->n_decode;
    b->decode_out = 1;
}

void srv_batch_stepped(srv_app *app)
{
    SRV_ON_LOOP(app);
    srv_batch *b = app->batch;
    double now = srv_now();
    for (int i = 0; i < b->n_step; i++) {
        srv_seq *s = b->step[i];
        s->in_task = 0;
        if (!s->job->first_token && s->g.k > 0) {
            s->job->first_token = 1;
            srv_metrics_ttft(&app->metrics, now - s->job->t_submit);
        }
    }
    b->decode_out = 0;
    b->n_step = 0;
    ends(app, decode_take(b, seq_done, NULL), 0);
}

void srv_batch_tick(srv_app *app, double now)
{
    SRV_ON_LOOP(app);
    for (srv_job *j = app->batch ? app->batch->jobs : NULL; j; j = j->bnext) {
        if (!atomic_load(&j->cancel)) {
            if (now >= j->deadline) srv__cancel_job(j, CANCEL_DEADLINE);
            else if (srv__client_gone(j->client_fd)) srv__cancel_job(j, CANCEL_DISCONNECT);
        }
        srv__stream_ping(app, j, now);
    }
}

void srv_batch_cancel_all(srv_app *app, srv_cancel_reason why)
{
    for (srv_job *j = app->batch ? app->batch->jobs : NULL; j; j = j->bnext) srv__cancel_job(j, why);
}

/* ---- worker threads -------------------------------------------------------------------------- */

void srv_batch_run_prefill(srv_app *app, luna_ctx *ctx, srv_seq *s, int lanes)
{
    srv_job *job = s->job;
    if (atomic_load(&job->cancel)) {
        luna_gen_fail(&s->g, LUNA_ECANCELED);
        s->phase = SEQ_DONE;
        return;
    }
    luna_ctx_set_cancel(ctx, &job->cancel);
    int in_use = luna_ctx_set_lanes(ctx, lanes);
    if (!s->looked_up) {
        s->looked_up = 1;
        cache_resume(app, job, s->choice, &s->g, s->smp, &s->ev, &s->pin);
        job->gres[s->choice].cached_tokens = luna_gen_state_tokens(s->state);
        if (!luna_gen_prefilling(&s->g)) { /* the whole prompt was there, or the resume failed */
            luna_ctx_set_cancel(ctx, NULL);
            if (s->g.done) state_wants_last(app, job, s->choice, &s->g); /* max_new_tokens 0: no last token */
            s->phase = s->g.done ? SEQ_DONE : SEQ_DECODE;
            return;
        }
    }
    /* A slice given every core (nothing else ran or waited: sched.c) takes a generation's
     * prefill piece (LUNA_GEN_PREFILL_PIECE, 16 chunks), as --max-batch 1 does, so that its
     * lanes run whole chunks side by side (engine/luna.h: luna_prefill), some 15% faster than
     * splitting each chunk between them; a short slice would leave them idle at its end while
     * the last chunk finishes. A request that arrives meanwhile takes another worker; with one
     * worker (its lanes BLAS threads) it would wait for the slice, so the slice stays short. */
    size_t slice = app->batch->slice;
    if (in_use > 1 && app->n_workers > 1 && slice < LUNA_GEN_PREFILL_PIECE) slice = LUNA_GEN_PREFILL_PIECE;
    double t0 = srv_now();
    long n = prefill_slice(app, ctx, job, s->choice, &s->g, &s->pin, slice);
    double dt = srv_now() - t0;
    luna_ctx_set_cancel(ctx, NULL);
    if (n < 0) {
        s->phase = SEQ_DONE; /* the generation failed: luna_gen_end reports it */
        return;
    }
    srv_metrics_batch_prefill(&app->metrics, n);
    srv_prefill_observe(app, (uint64_t)n, dt * in_use); /* the rate of one lane */
    if (luna_gen_prefilling(&s->g)) return;
    if (s->g.done) state_wants_last(app, job, s->choice, &s->g); /* max_new_tokens 0: no last token */
    s->phase = s->g.done ? SEQ_DONE : SEQ_DECODE;
}

void srv_batch_run_step(srv_app *app, int lanes)
{
    srv_batch *b = app->batch;
    size_t V = (size_t)luna_model_config(app->generator)->vocab_size, B = 0;
    for (int i = 0; i < b->n_step; i++) {
        srv_seq *s = b->step[i];
        if (atomic_load(&s->job->cancel)) {
            luna_gen_fail(&s->g, LUNA_ECANCELED);
            s->phase = SEQ_DONE;
            continue;
        }
        int32_t tok;
        if (luna_gen_next(&s->g, &tok) != 1) { /* finished, or failed: luna_gen_end says which */
            s->phase = SEQ_DONE;
            if (!state_wants_last(app, s->job, s->choice, &s->g)) continue;
            tok = luna_gen_last(&s->g); /* return_state: this step gives the state its last token */
            s->final = 1;
        }
        b->states[B] = s->state;
        b->tokens[B] = tok;
        b->rows[B++] = s;
    }
    if (!B) return;
    lanes = luna_ctx_set_lanes(b->ctx, lanes); /* (at most the context's) */
    srv_metrics_batch_step(&app->metrics, (int)B, lanes);
    int rc = luna_step_batch(b->ctx, b->states, b->tokens, B, b->logits);
    for (size_t i = 0; i < B; i++) {
        srv_seq *s = b->rows[i];
        if (rc) {
            luna_gen_fail(&s->g, rc);
            s->phase = SEQ_DONE;
        } else {
            memcpy(s->g.logits, b->logits + i * V, V * sizeof(float));
        }
        if (s->final && !rc && (rc = state_out(app, s->job, s->choice, &s->g, 1)) != 0) luna_gen_fail(&s->g, rc);
        s->final = 0;
    }
}
