/* sched.c - the bounded job queue, the memory ledger, the worker pool and the libuv loop.
 *
 * Admission is two-stage. http.c refuses at once what can never run (413: the job's reservation
 * exceeds the whole budget) and what cannot wait (429: the queue is full). Everything else is
 * queued, and the loop thread dispatches in FIFO order: the head job starts when a worker is
 * idle AND its reservation fits in what the running jobs leave of the budget. Only the loop
 * thread changes the ledger, so the sum of reservations can never exceed the budget. The head
 * waits rather than being overtaken by smaller jobs, so a large document cannot starve.
 *
 * Every 25 ms the loop also expires queued jobs past their deadline (504), cancels running ones
 * (the engine stops at the next chunk or layer), and cancels the jobs of clients that went away:
 * libmicrohttpd does not watch suspended connections, so the loop peeks at each client socket. */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api/utf8.h"
#include "engine/generate.h"
#include "server/server.h"

struct srv_worker {
    srv_app *app;
    int id;
    uv_thread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    srv_job *job;   /* assigned by the loop, cleared by the worker when done */
    int busy;       /* loop thread's view: a job is assigned and not yet completed */
    int quit;
    luna_ctx *ctx;  /* the classifier's, allocated once at start (NULL without one) */
    luna_ctx *gctx; /* the generator's, and its fixed-size state, allocated once at start */
    luna_gen_state *gstate;
};

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int srv_reserve(srv_app *app, uint64_t bytes)
{
    uint64_t cur = atomic_load(&app->reserved);
    do {
        if (bytes > app->cfg.memory_budget - cur) return -1;
    } while (!atomic_compare_exchange_weak(&app->reserved, &cur, cur + bytes));
    srv_metrics_reserved_add(&app->metrics, (int64_t)bytes);
    return 0;
}

void srv_release(srv_app *app, uint64_t bytes)
{
    if (!bytes) return;
    atomic_fetch_sub(&app->reserved, bytes);
    srv_metrics_reserved_add(&app->metrics, -(int64_t)bytes);
    if (bytes >= SRV_TRIM_BYTES) atomic_store(&app->trim, 1);
}

/* A stream's buffer holds at most this per token of each prompt, plus 64 KiB (http.c sets its
 * limit from the same numbers): one byte token's event is about 100 bytes of JSON, and a
 * token that completes a multi-byte character or a stop sequence held back carries more. */

uint64_t srv_gen_reservation(const srv_app *app, const api_generate_req *req)
{
    uint64_t V = (uint64_t)luna_model_config(app->generator)->vocab_size;
    uint64_t n = (uint64_t)req->max_new_tokens;
    /* the worker's generation state and its context's prefill chunk (allocated once per worker,
     * but a running job's working set all the same); sampler scratch (12 B and a bit per id)
     * and logits (4 B per id); the output bytes and their UTF-8 rendering (3x); a stream's
     * unread events. None of it grows with the prompt. */
    uint64_t prompts = req->n_prompts ? req->n_prompts : 1;
    return (uint64_t)luna_gen_state_bytes(app->generator) + (uint64_t)luna_ctx_bytes(app->generator, NULL) +
           V * 17 + prompts * (n * 4 + (req->stream ? srv_stream_limit(1, (size_t)n) : 0));
}

uint64_t srv_min_reservation(const srv_app *app)
{
    uint64_t c = app->classifier ? luna_workspace_bytes(app->classifier, 1) : UINT64_MAX;
    uint64_t g = UINT64_MAX;
    if (app->generator) {
        api_generate_req one = {.max_new_tokens = 1};
        g = srv_gen_reservation(app, &one);
    }
    return c < g ? c : g;
}

api_err srv_job_error(const srv_job *job, api_error *e)
{
    double timeout = job->deadline - job->t_submit;
    switch (job->rc) {
    case LUNA_ECANCELED:
        switch (atomic_load(&job->cancel_reason)) {
        case CANCEL_DEADLINE:
            return api_fail(e, API_E_TIMEOUT, "the request did not finish within its deadline of %gs", timeout);
        case CANCEL_SHUTDOWN:
            return api_fail(e, API_E_SHUTTING_DOWN, "the server is shutting down");
        default: /* the client went away: nobody to answer */
            return API_OK;
        }
    case LUNA_ENOMEM:
        return api_fail(e, API_E_ENGINE_MEMORY, "the engine could not allocate its workspace; retry later");
    case LUNA_ETOOLONG:
        return api_fail(e, API_E_INPUT_TOO_LONG, "the input is longer than the model accepts");
    default:
        return api_fail(e, API_E_INTERNAL, "engine error: %s", luna_strerror(job->rc));
    }
}

/* ---- the worker threads -------------------------------------------------------------------- */

const char *const SRV_PLAN_NAMES[SRV_N_PLANS] = {"resident", "partial", "streaming"};

/* Each document runs under the fastest plan that fits what the job reserved: the resident one
 * when the dispatcher could give it its whole workspace, else the streaming one (see dispatch). */
static int run_classify(srv_worker *w, srv_job *job)
{
    const api_classify_req *req = job->classify;
    const luna_model *m = w->app->classifier;
    int nl = luna_model_config(m)->n_labels;
    size_t largest = 0;
    for (size_t i = 0; i < req->n_docs; i++) {
        float *out = job->scores + i * (size_t)nl;
        size_t n = luna_input_tokens(m, req->docs[i].data, req->docs[i].len);
        luna_plan plan = luna_plan_for(m, n, job->reserve);
        int kind = plan.rows >= n ? SRV_PLAN_RESIDENT : plan.rows ? SRV_PLAN_PARTIAL : SRV_PLAN_STREAMING;
        if (n >= largest) largest = n, job->plan = kind;
        srv_metrics_plan(&w->app->metrics, kind);
        int rc = req->raw_scores ? luna_classify_plan(w->ctx, &plan, req->docs[i].data, req->docs[i].len, NULL, out)
                                 : luna_classify_plan(w->ctx, &plan, req->docs[i].data, req->docs[i].len, out, NULL);
        if (rc) return rc;
    }
    return 0;
}

/* ---- generation ------------------------------------------------------------------------------ */

int srv_stream_push(srv_job *job, const char *data, size_t len)
{
    srv_stream *st = job->stream;
    pthread_mutex_lock(&st->lock);
    if (st->off == st->len) st->off = st->len = 0; /* all sent: start over */
    if (st->len + len > st->cap) {
        if (st->off) { /* compact first */
            memmove(st->buf, st->buf + st->off, st->len - st->off);
            st->len -= st->off;
            st->off = 0;
        }
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + len) cap *= 2;
        if (cap > st->limit) cap = st->len + len; /* never past the limit when it fits */
        char *nb = st->len + len <= st->limit ? realloc(st->buf, cap) : NULL;
        if (!nb) {
            pthread_mutex_unlock(&st->lock);
            return -1;
        }
        st->buf = nb;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, data, len);
    st->len += len;
    st->last_push = srv_now();
    int wake = st->waiting;
    st->waiting = 0;
    pthread_mutex_unlock(&st->lock);
    if (wake) job->on_stream(job);
    return 0;
}

/* The events of one streamed generation. Each byte is a token; its event goes out when the
 * next byte arrives, so that the last one of a choice can carry its result (TGI's final event
 * has generated_text and details; OpenAI's last chunk has the finish_reason). */
typedef struct {
    srv_job *job;
    int byte_offset;
    size_t choice;      /* the prompt being generated */
    api_gen_result *res;/* its result; res->out is its output */
    api_utf8 utf8;
    uint64_t index;     /* events of this choice so far */
    int pending;        /* a byte waits for its event */
    uint8_t pend_byte;
    char pend_text[API_UTF8_MAX_OUT(1) + 3];
    size_t pend_len;
    int failed;         /* an event could not be rendered or queued */
} gen_emit;

static void push_or_fail(gen_emit *g, char *ev, int skip)
{
    if (skip) return;
    if (!ev || srv_stream_push(g->job, ev, strlen(ev))) {
        g->failed = 1;
        atomic_store(&g->job->cancel, 1); /* the engine stops at its next step */
    }
    free(ev);
}

static void emit_event(gen_emit *g, int id, const uint8_t *bytes, size_t nb, const char *text, size_t nt,
                       int special, const api_gen_result *res)
{
    g->index++;
    api_stream_token t = {g->choice, g->index, g->index == 1, id, text, nt, bytes, nb, special, res};
    int skip;
    char *ev = api_render_stream_token(g->job->generate, &t, &skip);
    push_or_fail(g, ev, skip);
}

static void flush_pending(gen_emit *g, const api_gen_result *res)
{
    if (!g->pending) return;
    g->pending = 0;
    emit_event(g, g->byte_offset + g->pend_byte, &g->pend_byte, 1, g->pend_text, g->pend_len, 0, res);
}

static int on_bytes(void *user, const uint8_t *b, size_t n)
{
    gen_emit *g = user;
    uint8_t *out = (uint8_t *)g->res->out;
    memcpy(out + g->res->out_len, b, n); /* out holds max_new_tokens bytes: enough */
    g->res->out_len += n;
    if (!g->job->stream) return 0;
    for (size_t i = 0; i < n && !g->failed; i++) {
        flush_pending(g, NULL);
        g->pending = 1;
        g->pend_byte = b[i];
        g->pend_len = api_utf8_feed(&g->utf8, b + i, 1, g->pend_text);
    }
    return g->failed;
}

static void seed_from_os(uint64_t *seed)
{
    if (getrandom(seed, sizeof *seed, 0) != (ssize_t)sizeof *seed)
        *seed = (uint64_t)(srv_now() * 1e9) ^ (uint64_t)pthread_self();
    *seed &= (1ull << 53) - 1; /* a JSON number keeps it exactly */
}

/* The last events of a streamed choice: the held-back end of a UTF-8 sequence, then the event
 * that carries the result (after eos: the eos token itself). */
static void finish_choice(gen_emit *g, luna_finish finish, int eos_id)
{
    if (g->pending) g->pend_len += api_utf8_finish(&g->utf8, g->pend_text + g->pend_len);
    if (finish == LUNA_FINISH_EOS || !g->pending) {
        flush_pending(g, NULL);
        emit_event(g, finish == LUNA_FINISH_EOS ? eos_id : -1, NULL, 0, "", 0, 1, g->res);
    } else {
        flush_pending(g, g->res);
    }
}

/* Generates every prompt of the job in turn on the worker's context and state. */
static int run_generate(srv_worker *w, srv_job *job)
{
    const api_generate_req *q = job->generate;
    const luna_config *cfg = luna_model_config(w->app->generator);
    uint64_t seed = q->seed;
    if (q->do_sample && !q->has_seed) seed_from_os(&seed);
    luna_sampling sp = {q->do_sample ? q->temperature : 0.0f, q->do_sample ? q->top_k : 0,
                        q->do_sample ? q->top_p : 1.0f, q->repetition_penalty, seed};
    luna_gen_params gp = {.max_new_tokens = q->max_new_tokens, .n_stop = q->n_stop};
    for (int i = 0; i < q->n_stop; i++) gp.stop[i] = q->stop[i], gp.stop_len[i] = q->stop_len[i];
    if (job->stream) { /* the 200 response can go out now */
        pthread_mutex_lock(&job->stream->lock);
        job->stream->started = 1;
        job->stream->last_push = srv_now();
        pthread_mutex_unlock(&job->stream->lock);
        job->on_stream(job);
    }
    int rc = 0, failed = 0;
    for (size_t c = 0; c < q->n_prompts && !rc && !failed; c++) {
        api_gen_result *res = &job->gres[c];
        res->out = job->out + c * (size_t)q->max_new_tokens;
        res->byte_offset = cfg->byte_offset;
        res->has_seed = q->do_sample;
        res->seed = seed;
        luna_sampler *smp = NULL;
        if ((rc = luna_sampler_new(cfg->vocab_size, &sp, &smp))) break; /* each prompt: a fresh sampler */
        gen_emit g = {.job = job, .byte_offset = cfg->byte_offset, .choice = c, .res = res};
        luna_gen_state_reset(w->gstate);
        luna_gen_result r;
        rc = luna_generate(w->gctx, w->gstate, smp, q->prompts[c].data, q->prompts[c].len, &gp, on_bytes, &g, &r);
        luna_sampler_free(smp);
        res->finish = luna_finish_name(r.finish);
        res->generated_tokens = r.generated_tokens;
        res->prompt_tokens = r.prompt_tokens;
        srv_metrics_generated(&w->app->metrics, r.generated_tokens, r.prompt_tokens, r.prefill_seconds, r.decode_seconds);
        if (job->stream && !rc && !g.failed) finish_choice(&g, r.finish, cfg->eos_id);
        else if (job->stream && !g.failed) flush_pending(&g, NULL);
        failed = g.failed;
    }
    if (!job->stream) return rc;
    gen_emit end = {.job = job};
    if (rc == 0 && !failed) {
        int skip;
        char *ev = api_render_stream_end(q, job->gres, &skip);
        push_or_fail(&end, ev, skip);
        failed = end.failed;
    } else if (!failed) {
        job->rc = rc;
        api_error e;
        if (srv_job_error(job, &e) != API_OK) {
            char *ev = api_render_stream_error(q, &e);
            if (ev) srv_stream_push(job, ev, strlen(ev));
            free(ev);
        }
    }
    if (failed && rc == 0) rc = LUNA_ENOMEM;
    pthread_mutex_lock(&job->stream->lock);
    job->stream->finished = 1;
    int wake = job->stream->waiting;
    job->stream->waiting = 0;
    pthread_mutex_unlock(&job->stream->lock);
    if (wake) job->on_stream(job);
    return rc;
}

static void worker_main(void *arg)
{
    srv_worker *w = arg;
    srv_app *app = w->app;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->job && !w->quit) pthread_cond_wait(&w->cond, &w->lock);
        srv_job *job = w->job;
        pthread_mutex_unlock(&w->lock);
        if (!job) break; /* quit */
        luna_ctx *ctx = job->kind == JOB_GENERATE ? w->gctx : w->ctx;
        luna_ctx_set_cancel(ctx, &job->cancel);
        if (job->kind == JOB_CLASSIFY) job->lanes = luna_ctx_set_lanes(ctx, job->lanes);
        if (atomic_load(&job->cancel)) job->rc = LUNA_ECANCELED;
        else job->rc = job->kind == JOB_GENERATE ? run_generate(w, job) : run_classify(w, job);
        luna_ctx_set_cancel(ctx, NULL);
        job->t_end = srv_now();
        pthread_mutex_lock(&w->lock);
        w->job = NULL;
        pthread_mutex_unlock(&w->lock);
        pthread_mutex_lock(&app->lock);
        job->next = app->done_head;
        app->done_head = job;
        pthread_mutex_unlock(&app->lock);
        uv_async_send(&app->wakeup);
    }
}

/* ---- the queue (any thread pushes; the loop thread pops) ------------------------------------ */

int srv_submit(srv_app *app, srv_job *job)
{
    pthread_mutex_lock(&app->lock);
    if (app->q_len >= app->cfg.max_queue) {
        pthread_mutex_unlock(&app->lock);
        return -1;
    }
    job->next = NULL;
    if (app->q_tail) app->q_tail->next = job;
    else app->q_head = job;
    app->q_tail = job;
    app->q_len++;
    srv_metrics_queue_depth(&app->metrics, app->q_len);
    pthread_mutex_unlock(&app->lock);
    uv_async_send(&app->wakeup);
    return 0;
}

int srv_queue_len(srv_app *app)
{
    pthread_mutex_lock(&app->lock);
    int n = app->q_len;
    pthread_mutex_unlock(&app->lock);
    return n;
}

/* Unlinks job from the queue; app->lock held. */
static void queue_remove(srv_app *app, srv_job *job)
{
    srv_job **pp = &app->q_head, *prev = NULL;
    while (*pp && *pp != job) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp) return;
    *pp = job->next;
    if (app->q_tail == job) app->q_tail = prev;
    app->q_len--;
    srv_metrics_queue_depth(&app->metrics, app->q_len);
}

/* ---- the loop thread ------------------------------------------------------------------------ */

/* Jobs that never ran: expired, canceled while queued, or refused at shutdown. */
static void complete_unrun(srv_job *job, int rc)
{
    job->rc = rc;
    job->t_start = job->t_end = srv_now();
    job->on_done(job); /* after this, the job belongs to http.c */
}

static void dispatch(srv_app *app)
{
    for (;;) {
        srv_worker *idle = NULL;
        for (int i = 0; i < app->n_workers && !idle; i++)
            if (!app->workers[i].busy) idle = &app->workers[i];
        if (!idle) return;
        pthread_mutex_lock(&app->lock);
        srv_job *job = app->q_head;
        /* a job that does not fit what is free runs in its least reservation when that fits (a
         * classification: the streaming plan); else the head waits for memory */
        int ok = job && srv_reserve(app, job->reserve) == 0;
        if (job && !ok && job->min_reserve < job->reserve && srv_reserve(app, job->min_reserve) == 0) {
            job->reserve = job->min_reserve;
            ok = 1;
        }
        if (!ok) {
            pthread_mutex_unlock(&app->lock);
            return; /* nothing queued, or the head waits for memory */
        }
        queue_remove(app, job);
        int queued = app->q_len;
        pthread_mutex_unlock(&app->lock);
        /* a classification that runs alone, with nothing waiting, gets every core's lane */
        int busy = 0;
        for (int i = 0; i < app->n_workers; i++) busy += app->workers[i].busy;
        job->lanes = job->kind == JOB_CLASSIFY && busy == 0 && queued == 0 ? app->n_workers * app->cfg.blas_threads : 1;
        job->t_start = srv_now();
        srv_metrics_queue_wait(&app->metrics, job->t_start - job->t_submit);
        idle->busy = 1;
        pthread_mutex_lock(&idle->lock);
        idle->job = job;
        pthread_cond_signal(&idle->cond);
        pthread_mutex_unlock(&idle->lock);
    }
}

static void on_wakeup(uv_async_t *h)
{
    srv_app *app = h->data;
    pthread_mutex_lock(&app->lock);
    srv_job *done = app->done_head;
    app->done_head = NULL;
    pthread_mutex_unlock(&app->lock);
    while (done) {
        srv_job *next = done->next;
        srv_release(app, done->reserve);
        done->on_done(done); /* after this, the job belongs to http.c */
        done = next;
    }
    /* workers whose slot is empty are idle again (a worker empties its slot before it posts
     * the job to the done list, so an empty slot always means the job is on its way here) */
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        pthread_mutex_lock(&w->lock);
        if (w->busy && !w->job) w->busy = 0;
        pthread_mutex_unlock(&w->lock);
    }
    dispatch(app);
}

static int client_gone(int fd)
{
    if (fd < 0) return 0;
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void cancel_job(srv_job *job, srv_cancel_reason why)
{
    int none = CANCEL_NONE;
    atomic_compare_exchange_strong(&job->cancel_reason, &none, (int)why);
    atomic_store(&job->cancel, 1);
}

static void maybe_stop(srv_app *app);

static void on_tick(uv_timer_t *t)
{
    srv_app *app = t->data;
    double now = srv_now();
    /* large blocks were freed and nothing runs: give the heap's free pages back to the system,
     * so that an idle server's RSS comes back down after a burst */
    if (atomic_load(&app->trim) && atomic_load(&app->reserved) == 0) {
        atomic_store(&app->trim, 0);
        malloc_trim(0);
    }
    /* queued jobs: expire, or drop when the client left */
    srv_job *expired = NULL;
    pthread_mutex_lock(&app->lock);
    for (srv_job *j = app->q_head, *next; j; j = next) {
        next = j->next;
        int gone = client_gone(j->client_fd);
        if (now >= j->deadline || gone) {
            atomic_store(&j->cancel_reason, gone ? CANCEL_DISCONNECT : CANCEL_DEADLINE);
            queue_remove(app, j);
            j->next = expired;
            expired = j;
        }
    }
    pthread_mutex_unlock(&app->lock);
    while (expired) {
        srv_job *next = expired->next;
        if (atomic_load(&expired->cancel_reason) == CANCEL_DEADLINE) srv_metrics_reject(&app->metrics, REJ_DEADLINE);
        complete_unrun(expired, LUNA_ECANCELED);
        expired = next;
    }
    /* running jobs: cancel past the deadline, or when the client left */
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        pthread_mutex_lock(&w->lock);
        srv_job *j = w->job;
        if (j && !atomic_load(&j->cancel)) {
            if (now >= j->deadline) cancel_job(j, CANCEL_DEADLINE);
            else if (client_gone(j->client_fd)) cancel_job(j, CANCEL_DISCONNECT);
        }
        if (j && j->stream) { /* a long prefill sends nothing: keep proxies from timing out */
            pthread_mutex_lock(&j->stream->lock);
            int ping = j->stream->started && !j->stream->finished &&
                       now - j->stream->last_push >= app->cfg.sse_ping_interval;
            pthread_mutex_unlock(&j->stream->lock);
            if (ping) srv_stream_push(j, ": keep-alive\n\n", 14);
        }
        pthread_mutex_unlock(&w->lock);
    }
    if (atomic_load(&app->draining)) maybe_stop(app);
}

/* While draining: stop when nothing is queued or running; past the drain deadline, cancel. */
static void maybe_stop(srv_app *app)
{
    int busy = 0;
    for (int i = 0; i < app->n_workers; i++) busy |= app->workers[i].busy;
    int queued = srv_queue_len(app);
    if (!busy && !queued && srv_metrics_get_inflight(&app->metrics) == 0) {
        uv_stop(&app->loop);
        return;
    }
    if (srv_now() >= app->drain_deadline) {
        pthread_mutex_lock(&app->lock);
        srv_job *q = app->q_head;
        app->q_head = app->q_tail = NULL;
        app->q_len = 0;
        srv_metrics_queue_depth(&app->metrics, 0);
        pthread_mutex_unlock(&app->lock);
        while (q) {
            srv_job *next = q->next;
            atomic_store(&q->cancel_reason, CANCEL_SHUTDOWN);
            complete_unrun(q, LUNA_ECANCELED);
            q = next;
        }
        for (int i = 0; i < app->n_workers; i++) {
            pthread_mutex_lock(&app->workers[i].lock);
            if (app->workers[i].job) cancel_job(app->workers[i].job, CANCEL_SHUTDOWN);
            pthread_mutex_unlock(&app->workers[i].lock);
        }
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    srv_app *app = h->data;
    if (++app->signals > 1) {
        srv_log(LOG_WARN, "second signal: exiting now", "\"signal\":%d", signum);
        _exit(1);
    }
    atomic_store(&app->draining, 1);
    app->drain_deadline = srv_now() + app->cfg.drain_timeout;
    srv_log(LOG_INFO, "draining", "\"signal\":%d,\"drain_timeout\":%g,\"queued\":%d", signum,
            app->cfg.drain_timeout, srv_queue_len(app));
    maybe_stop(app);
}

int srv_sched_start(srv_app *app)
{
    pthread_mutex_init(&app->lock, NULL);
    if (uv_loop_init(&app->loop)) return -1;
    uv_async_init(&app->loop, &app->wakeup, on_wakeup);
    app->wakeup.data = app;
    uv_timer_init(&app->loop, &app->tick);
    app->tick.data = app;
    uv_timer_start(&app->tick, on_tick, 25, 25);
    uv_signal_init(&app->loop, &app->sigterm);
    uv_signal_init(&app->loop, &app->sigint);
    app->sigterm.data = app->sigint.data = app;
    uv_signal_start(&app->sigterm, on_signal, SIGTERM);
    uv_signal_start(&app->sigint, on_signal, SIGINT);

    app->workers = calloc((size_t)app->n_workers, sizeof *app->workers);
    if (!app->workers) return -1;
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        w->app = app;
        w->id = i;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        /* a classification context holds a lane for every core: a job that runs alone uses them
         * all (dispatch), jobs side by side one each */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        luna_ctx_opts co = {0, LUNA_ATTN_LUNA, (int)(cores < 1 ? 1 : cores > LUNA_MAX_THREADS ? LUNA_MAX_THREADS : cores)};
        int rc = app->classifier ? luna_ctx_new(app->classifier, &co, &w->ctx) : 0;
        if (!rc && app->generator) rc = luna_ctx_new(app->generator, NULL, &w->gctx);
        if (!rc && app->generator) rc = luna_gen_state_new(app->generator, &w->gstate);
        if (rc || uv_thread_create(&w->thread, worker_main, w)) {
            srv_log(LOG_ERROR, "cannot start a worker", "\"worker\":%d,\"error\":\"%s\"", i, luna_strerror(rc));
            luna_ctx_free(w->ctx);
            luna_ctx_free(w->gctx);
            luna_gen_state_free(w->gstate);
            app->n_workers = i;
            return -1;
        }
    }
    return 0;
}

static void close_cb(uv_handle_t *h) { (void)h; }

void srv_sched_stop(srv_app *app)
{
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        pthread_mutex_lock(&w->lock);
        w->quit = 1;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        uv_thread_join(&w->thread);
        luna_ctx_free(w->ctx);
        luna_ctx_free(w->gctx);
        luna_gen_state_free(w->gstate);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
    }
    free(app->workers);
    app->workers = NULL;
    uv_close((uv_handle_t *)&app->wakeup, close_cb);
    uv_close((uv_handle_t *)&app->tick, close_cb);
    uv_close((uv_handle_t *)&app->sigterm, close_cb);
    uv_close((uv_handle_t *)&app->sigint, close_cb);
    uv_run(&app->loop, UV_RUN_DEFAULT);
    uv_loop_close(&app->loop);
    pthread_mutex_destroy(&app->lock);
}
