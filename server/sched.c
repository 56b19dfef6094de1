/* sched.c - the bounded job queue, the memory ledger, the worker pool and the libuv loop. It
 * knows a job by its kind's hooks (server/jobs.h): `batched` picks its lane, `run` is what a
 * worker calls, on the context of the kind's model.
 *
 * Admission is two-stage. Before a job is queued, its kind refuses what can never run (413: its
 * reservation exceeds the whole budget, or its input the model; a prompt that cannot be
 * prefilled before its deadline) and http.c what cannot wait (429: the queue is full).
 * Everything else is queued, and the loop thread dispatches in FIFO order: the head job starts
 * when a worker is idle AND its reservation fits in what the running jobs leave of the budget.
 * Only the loop thread changes the ledger, so the sum of reservations can never exceed the
 * budget. The head waits rather than being overtaken by smaller jobs, so a large document
 * cannot starve.
 *
 * Every 25 ms the loop also expires queued jobs past their deadline (504), cancels running ones
 * (the engine stops at the next chunk or layer), and cancels the jobs of clients that went away:
 * libmicrohttpd does not watch suspended connections, so the loop peeks at each client socket. */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/batch.h"
#include "server/cache.h"
#include "server/jobs.h"

/* What a worker does: a whole job (a classification, or a generation alone), or a task of the
 * continuous batch (batch.h). */
typedef enum { TASK_NONE = 0, TASK_JOB, TASK_PREFILL, TASK_STEP } srv_task;

struct srv_worker {
    srv_app *app;
    int id;
    uv_thread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    srv_task task;  /* set by the loop (lock held), TASK_NONE again once the loop took it back */
    srv_job *job;   /* TASK_JOB */
    srv_seq *seq;   /* TASK_PREFILL */
    int lanes;      /* TASK_PREFILL, TASK_STEP */
    int finished;   /* the worker is done with the task (lock held) */
    int busy;       /* loop thread's view: a task is assigned and not yet taken back */
    int lent;       /* loop thread's: busy lending its core to the decode step's lanes */
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

static int reserve_raw(srv_app *app, uint64_t bytes)
{
    uint64_t cur = atomic_load(&app->reserved);
    do {
        if (bytes > app->cfg.memory_budget - cur) return -1;
    } while (!atomic_compare_exchange_weak(&app->reserved, &cur, cur + bytes));
    srv_metrics_reserved_add(&app->metrics, (int64_t)bytes);
    return 0;
}

/* Requests come before the state cache: what does not fit makes the cache give back states. */
int srv_reserve(srv_app *app, uint64_t bytes)
{
    if (reserve_raw(app, bytes) == 0) return 0;
    if (!app->cache) return -1;
    uint64_t cur = atomic_load(&app->reserved);
    uint64_t short_by = bytes > app->cfg.memory_budget - cur ? bytes - (app->cfg.memory_budget - cur) : 0;
    srv_cache_reclaim(app->cache, short_by);
    return reserve_raw(app, bytes);
}

/* The cache's side of the ledger: no reclaim (it evicts its own states itself). */
static int cache_reserve(void *app, uint64_t bytes) { return reserve_raw(app, bytes); }
static void cache_release(void *app, uint64_t bytes) { srv_release(app, bytes); }

uint64_t srv_reserved_idle(srv_app *app)
{
    srv_cache_stats st;
    srv_cache_stats_get(app->cache, &st);
    return (app->batch ? app->batch->scratch : 0) + st.bytes;
}

double srv_prefill_rate(const srv_app *app)
{
    pthread_mutex_t *lock = (pthread_mutex_t *)&app->rate_lock; /* a read, under the writers' lock */
    pthread_mutex_lock(lock);
    double r = app->prefill_rate;
    pthread_mutex_unlock(lock);
    return r;
}

void srv_prefill_observe(srv_app *app, uint64_t tokens, double seconds)
{
    if (tokens < 128 || seconds <= 0) return; /* a short slice's rate is mostly its overhead */
    double r = (double)tokens / seconds;
    pthread_mutex_lock(&app->rate_lock);
    app->prefill_rate = app->prefill_rate > 0 ? 0.8 * app->prefill_rate + 0.2 * r : r;
    pthread_mutex_unlock(&app->rate_lock);
}

/* The first prefill rate: 1024 tokens of text prefilled once on a worker's context, before the
 * server listens (it also brings the weights into memory). */
static void calibrate_prefill(srv_app *app, srv_worker *w)
{
    int32_t tok[1024];
    const luna_config *cfg = luna_model_config(app->generator);
    for (size_t i = 0; i < 1024; i++) tok[i] = cfg->byte_offset + "It is a truth universally acknowledged. "[i % 40];
    luna_gen_state_reset(w->gstate);
    double t0 = srv_now();
    int rc = luna_prefill(w->gctx, w->gstate, tok, 1024, NULL, 0);
    double dt = srv_now() - t0;
    luna_gen_state_reset(w->gstate);
    if (!rc) srv_prefill_observe(app, 1024, dt);
    srv_log(LOG_INFO, "prefill rate", "\"tokens_per_second\":%.0f", srv_prefill_rate(app));
}

uint64_t srv_request_budget(const srv_app *app)
{
    return app->cfg.memory_budget - (app->batch ? app->batch->scratch : 0);
}

void srv_release(srv_app *app, uint64_t bytes)
{
    if (!bytes) return;
    atomic_fetch_sub(&app->reserved, bytes);
    srv_metrics_reserved_add(&app->metrics, -(int64_t)bytes);
    if (bytes >= SRV_TRIM_BYTES) atomic_store(&app->trim, 1);
}

/* The workers' contexts: a lane for every core (a classification or a prefill slice that runs
 * alone uses them all); the generator's chunk is SRV_PREFILL_CHUNK. */
static luna_ctx_opts worker_ctx_opts(int generator)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    luna_ctx_opts co = {generator ? SRV_PREFILL_CHUNK : 0, LUNA_ATTN_LUNA,
                        (int)(cores < 1 ? 1 : cores > LUNA_MAX_THREADS ? LUNA_MAX_THREADS : cores)};
    return co;
}

uint64_t srv_worker_gctx_bytes(const srv_app *app)
{
    luna_ctx_opts gco = worker_ctx_opts(1);
    return (uint64_t)luna_ctx_bytes(app->generator, &gco);
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

/* Engine results (and, for a cancelled job, why) to API errors: the one table. API_OK: nobody
 * is left to answer (the client went away). The message may use the deadline (%g, seconds). */
static const struct {
    int rc;     /* LUNA_E* */
    int reason; /* srv_cancel_reason, for LUNA_ECANCELED; -1: any */
    api_err kind;
    const char *message;
} ENGINE_ERRORS[] = {
    {LUNA_ECANCELED, CANCEL_DEADLINE, API_E_TIMEOUT, "the request did not finish within its deadline of %gs"},
    {LUNA_ECANCELED, CANCEL_SHUTDOWN, API_E_SHUTTING_DOWN, "the server is shutting down"},
    {LUNA_ECANCELED, CANCEL_OVERFLOW, API_E_INTERNAL, "the stream's events passed the memory they reserved"},
    {LUNA_ECANCELED, -1, API_OK, NULL},
    {LUNA_ENOMEM, -1, API_E_ENGINE_MEMORY, "the engine could not allocate its workspace; retry later"},
    {LUNA_ETOOLONG, -1, API_E_INPUT_TOO_LONG, "the input is longer than the model accepts"},
};

api_err srv_job_error(const srv_job *job, api_error *e)
{
    double timeout = job->deadline - job->t_submit;
    int reason = atomic_load(&job->cancel_reason);
    for (size_t i = 0; i < sizeof ENGINE_ERRORS / sizeof ENGINE_ERRORS[0]; i++) {
        if (ENGINE_ERRORS[i].rc != job->rc || (ENGINE_ERRORS[i].reason >= 0 && ENGINE_ERRORS[i].reason != reason))
            continue;
        if (ENGINE_ERRORS[i].kind == API_OK) return API_OK;
        return api_fail(e, ENGINE_ERRORS[i].kind, ENGINE_ERRORS[i].message, timeout);
    }
    return api_fail(e, API_E_INTERNAL, "engine error: %s", luna_strerror(job->rc));
}

/* ---- the worker threads -------------------------------------------------------------------- */

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

static void worker_main(void *arg)
{
    srv_worker *w = arg;
    srv_app *app = w->app;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while ((w->task == TASK_NONE || w->finished) && !w->quit) pthread_cond_wait(&w->cond, &w->lock);
        srv_task task = w->quit ? TASK_NONE : w->task;
        srv_job *job = w->job;
        pthread_mutex_unlock(&w->lock);
        if (task == TASK_NONE) break; /* quit */
        if (task == TASK_PREFILL) {
            srv_batch_run_prefill(app, w->gctx, w->seq, w->lanes);
        } else if (task == TASK_STEP) {
            srv_batch_run_step(app, w->lanes);
        } else {
            /* a group runs whole (a member's cancel does not stop the others' forward, which is
             * short: one pack); a member cancelled meanwhile gets its ECANCELED afterwards */
            luna_ctx *ctx = job->kind->model == SRV_MODEL_CLASSIFIER ? w->ctx : w->gctx;
            luna_ctx_set_cancel(ctx, job->group ? NULL : &job->cancel);
            job->lanes = luna_ctx_set_lanes(ctx, job->lanes);
            if (!job->group && atomic_load(&job->cancel)) job->rc = LUNA_ECANCELED;
            else job->rc = job->kind->run(app, ctx, w->gstate, job);
            luna_ctx_set_cancel(ctx, NULL);
            double t_end = srv_now();
            for (srv_job *j = job; j; j = j->group) {
                if (job->group && atomic_load(&j->cancel)) j->rc = LUNA_ECANCELED;
                j->t_end = t_end;
            }
        }
        pthread_mutex_lock(&w->lock);
        w->finished = 1;
        pthread_mutex_unlock(&w->lock);
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
    assert(pthread_mutex_trylock(&app->lock) == EBUSY);
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

static void assign(srv_worker *w, srv_task task, srv_job *job, srv_seq *seq, int lanes)
{
    w->busy = 1;
    pthread_mutex_lock(&w->lock);
    w->task = task;
    w->job = job;
    w->seq = seq;
    w->lanes = lanes;
    w->finished = 0;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Two lanes share the queue: generations that join the batch (LANE_BATCH) and jobs that need
 * a worker of their own (LANE_WORKER: classifications; generations with --max-batch 1). */
enum { LANE_BATCH = 0, LANE_WORKER = 1 };

static int job_lane(const srv_app *app, const srv_job *j)
{
    return j->kind->batched && app->batch ? LANE_BATCH : LANE_WORKER;
}

/* Pops the oldest job of the lane when it can start now: a generation when the batch has rows
 * for it, a job for a worker when one is idle; either when its reservation fits what is free.
 * A job that does not fit runs in its least reservation when that fits (a classification:
 * the streaming plan); else it waits, and so does everything behind it, so a large job cannot
 * starve. The lanes do not wait on each other's rows or workers (a classification is not held
 * up by streams that wait for rows of the batch, nor those by a long classification), but a
 * job that waits for memory holds up both: an older job of the other lane that could start but
 * for memory goes first. */
static srv_job *queue_take(srv_app *app, int lane, int idle)
{
    pthread_mutex_lock(&app->lock);
    srv_job *job = NULL;
    for (srv_job *j = app->q_head; j; j = j->next) {
        int room = job_lane(app, j) == LANE_BATCH ? srv_batch_room(app, j) : idle;
        if (job_lane(app, j) == lane) {
            job = room ? j : NULL;
            break;
        }
        if (room) break; /* the other lane's older job waits for memory */
    }
    int ok = job != NULL;
    if (ok && srv_reserve(app, job->reserve) != 0) {
        ok = job->min_reserve < job->reserve && srv_reserve(app, job->min_reserve) == 0;
        if (ok) job->reserve = job->min_reserve;
    }
    if (ok) queue_remove(app, job);
    pthread_mutex_unlock(&app->lock);
    if (!ok) return NULL;
    job->t_start = srv_now();
    srv_metrics_queue_wait(&app->metrics, job->t_start - job->t_submit);
    return job;
}

int srv_group_room(int queued, int idle) { return queued / (idle > 0 ? idle : 1); }

/* Queued jobs that may run with `lead` on worker w (its kind's `joins`: classifications that
 * fit one pack with it), oldest first, leave the queue with it: each in its least reservation
 * (their one forward runs in the worker's context), counted as started now. With other workers
 * idle, it takes its share of the queue only: theirs run side by side. It looks at GROUP_SCAN
 * jobs of its kind at most, under the queue's lock, and stops when the group is full. */
#define GROUP_SCAN 64
static void group_take(srv_app *app, srv_worker *w, srv_job *lead)
{
    if (!lead->kind->joins) return;
    int idle = 0;
    for (int i = 0; i < app->n_workers; i++) idle += !app->workers[i].busy;
    int room = srv_group_room(srv_queue_len(app), idle);
    const luna_ctx *ctx = lead->kind->model == SRV_MODEL_CLASSIFIER ? w->ctx : w->gctx;
    srv_job *tail = lead, *taken = NULL;
    pthread_mutex_lock(&app->lock);
    int scan = GROUP_SCAN;
    for (srv_job *j = app->q_head, *next; j && room > 0 && scan > 0; j = next) {
        next = j->next;
        if (j->kind != lead->kind || job_lane(app, j) != LANE_WORKER || atomic_load(&j->cancel)) continue;
        scan--;
        int fit = lead->kind->joins(app, ctx, lead, j);
        if (fit < 0) break;
        if (!fit || srv_reserve(app, j->min_reserve) != 0) continue;
        queue_remove(app, j);
        j->reserve = j->min_reserve;
        j->lanes = 1;
        room--;
        tail = tail->group = j;
        if (!taken) taken = j;
    }
    pthread_mutex_unlock(&app->lock);
    for (srv_job *j = taken; j; j = j->group) {
        j->t_start = lead->t_start;
        srv_metrics_queue_wait(&app->metrics, j->t_start - j->t_submit);
    }
}

/* Sends the decode step to worker w. With nothing else waiting, the step also takes the cores
 * of the other idle workers (lanes of the batch's context): they are lent, busy without a
 * task, until it comes back, so that no job lands on a core the step's lanes run on. */
static void step_out(srv_app *app, srv_worker *w, int lend)
{
    int cores = 1;
    for (int i = 0; i < app->n_workers && lend; i++) {
        srv_worker *o = &app->workers[i];
        if (o == w || o->busy) continue;
        o->busy = o->lent = 1;
        cores++;
    }
    srv_batch_step_out(app);
    assign(w, TASK_STEP, NULL, NULL, cores * app->cfg.blas_threads);
    app->step_last = 1;
}

/* Takes back the cores lent to a decode step. */
static void step_back(srv_app *app)
{
    for (int i = 0; i < app->n_workers; i++)
        if (app->workers[i].lent) app->workers[i].busy = app->workers[i].lent = 0;
}

/* Hands out work. The queue's generations join the batch as soon as it has rows for them.
 * Then each idle worker gets, in this order: the batch's decode step when it is due (the
 * streams wait on it), unless the other work has had no worker since the last step (on one
 * worker, steps and the rest take turns); else a prefill slice or the worker lane's oldest
 * job, taking turns when both wait. A lone job (nothing else running or waiting) gets every
 * core's lane. */
static void dispatch(srv_app *app)
{
    SRV_ON_LOOP(app);
    srv_batch_reap(app);
    for (;;) {
        srv_worker *idle = NULL;
        int running = 0, others = 0; /* tasks out; of them, not decode steps */
        for (int i = 0; i < app->n_workers; i++) {
            srv_worker *w = &app->workers[i];
            if (!w->busy && !idle) idle = w;
            running += w->busy;
            others += w->busy && w->task != TASK_STEP;
        }
        srv_job *job;
        while (app->batch && (job = queue_take(app, LANE_BATCH, idle != NULL)) != NULL) srv_batch_admit(app, job);
        if (!idle) return;
        int queued = srv_queue_len(app);
        srv_batch *b = app->batch;
        int prefill = b && b->pf_head, step = srv_batch_step_due(app);
        int other = prefill || queued;
        if (step && (!other || others > 0 || !app->step_last)) {
            step_out(app, idle, !other);
            continue;
        }
        int waiting = queued + (prefill ? 1 + (b->pf_head->next != NULL) : 0);
        int lanes = running == 0 && !step && waiting <= 1 ? app->n_workers * app->cfg.blas_threads : 1;
        job = NULL;
        if (prefill && (!queued || !app->queue_turn)) {
            app->queue_turn = 1;
        } else if (queued && (job = queue_take(app, LANE_WORKER, 1)) != NULL) {
            app->queue_turn = 0;
        } else if (!prefill) { /* the lane's oldest waits for memory, or nothing waits */
            if (!step) return;
            step_out(app, idle, 0); /* which only the steps can free */
            continue;
        }
        app->step_last = 0;
        if (job) {
            job->lanes = lanes; /* a classification's, or a lone generation's prefill */
            group_take(app, idle, job);
            assign(idle, TASK_JOB, job, NULL, 0);
        } else {
            assign(idle, TASK_PREFILL, NULL, srv_batch_next_prefill(app), lanes);
        }
    }
}

static void on_wakeup(uv_async_t *h)
{
    srv_app *app = h->data;
    SRV_ON_LOOP(app);
    /* take back what the workers finished: a job is answered, a batch task's sequences move on */
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        pthread_mutex_lock(&w->lock);
        int done = w->busy && w->finished;
        pthread_mutex_unlock(&w->lock);
        if (!done) continue;
        srv_task task = w->task;
        srv_job *job = w->job;
        srv_seq *seq = w->seq;
        pthread_mutex_lock(&w->lock);
        w->task = TASK_NONE;
        w->job = NULL;
        w->seq = NULL;
        w->finished = 0;
        pthread_mutex_unlock(&w->lock);
        w->busy = 0;
        if (task == TASK_JOB) {
            for (srv_job *j = job, *next; j; j = next) { /* the job, and its group's */
                next = j->group;
                j->group = NULL;
                srv_release(app, j->reserve);
                j->on_done(j); /* after this, the job belongs to http.c */
            }
        } else if (task == TASK_PREFILL) {
            srv_batch_prefilled(app, seq);
        } else {
            step_back(app);
            srv_batch_stepped(app);
        }
    }
    dispatch(app);
}

int srv__client_gone(int fd)
{
    if (fd < 0) return 0;
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void srv__cancel_job(srv_job *job, srv_cancel_reason why)
{
    int none = CANCEL_NONE;
    atomic_compare_exchange_strong(&job->cancel_reason, &none, (int)why);
    atomic_store(&job->cancel, 1);
}

/* A long prefill sends nothing: a comment keeps proxies from timing the stream out. */
void srv__stream_ping(srv_app *app, srv_job *job, double now)
{
    if (!job->stream) return;
    pthread_mutex_lock(&job->stream->lock);
    int ping = job->stream->started && !job->stream->finished && now - job->stream->last_push >= app->cfg.sse_ping_interval;
    pthread_mutex_unlock(&job->stream->lock);
    if (ping) srv_stream_push(job, ": keep-alive\n\n", 14);
}

static void maybe_stop(srv_app *app);

static void on_tick(uv_timer_t *t)
{
    srv_app *app = t->data;
    SRV_ON_LOOP(app);
    double now = srv_now();
    /* large blocks were freed and nothing runs: give the heap's free pages back to the system,
     * so that an idle server's RSS comes back down after a burst */
    if (atomic_load(&app->trim) && atomic_load(&app->reserved) == srv_reserved_idle(app)) {
        atomic_store(&app->trim, 0);
        malloc_trim(0);
    }
    /* queued jobs: expire, or drop when the client left */
    srv_job *expired = NULL;
    pthread_mutex_lock(&app->lock);
    for (srv_job *j = app->q_head, *next; j; j = next) {
        next = j->next;
        int gone = srv__client_gone(j->client_fd);
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
        for (srv_job *j = w->task == TASK_JOB && !w->finished ? w->job : NULL; j; j = j->group) {
            if (!atomic_load(&j->cancel)) {
                if (now >= j->deadline) srv__cancel_job(j, CANCEL_DEADLINE);
                else if (srv__client_gone(j->client_fd)) srv__cancel_job(j, CANCEL_DISCONNECT);
            }
            srv__stream_ping(app, j, now);
        }
        pthread_mutex_unlock(&w->lock);
    }
    srv_batch_tick(app, now);
    dispatch(app); /* a cancelled sequence of the batch leaves now, not at the next step */
    if (atomic_load(&app->draining)) maybe_stop(app);
}

/* While draining: stop when nothing is queued or running; past the drain deadline, cancel. */
static void maybe_stop(srv_app *app)
{
    int busy = srv_batch_jobs(app);
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
            for (srv_job *j = app->workers[i].task == TASK_JOB ? app->workers[i].job : NULL; j; j = j->group)
                srv__cancel_job(j, CANCEL_SHUTDOWN); /* a group: every member, as it runs whole */
            pthread_mutex_unlock(&app->workers[i].lock);
        }
        srv_batch_cancel_all(app, CANCEL_SHUTDOWN);
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
    app->loop_thread = uv_thread_self(); /* the caller runs the loop (server/main.c) */
    pthread_mutex_init(&app->rate_lock, NULL);
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
        /* each context holds a lane for every core: a classification, or a prefill (slice), that
         * runs alone uses them all (dispatch), jobs side by side one each */
        luna_ctx_opts co = worker_ctx_opts(0), gco = worker_ctx_opts(1);
        int rc = app->classifier ? luna_ctx_new(app->classifier, &co, &w->ctx) : 0;
        if (!rc && app->generator) rc = luna_ctx_new(app->generator, &gco, &w->gctx);
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
    if (app->generator && app->n_workers > 0) calibrate_prefill(app, &app->workers[0]);
    if (app->generator && app->cfg.state_cache_bytes) {
        app->cache = srv_cache_new(app->generator, app->cfg.state_cache_bytes, (size_t)app->cfg.state_cache_interval,
                                   SRV_PREFILL_CHUNK, (srv_ledger){cache_reserve, cache_release, app});
        if (!app->cache) srv_log(LOG_WARN, "no state cache: out of memory", "\"state_cache_bytes\":%llu",
                                 (unsigned long long)app->cfg.state_cache_bytes);
    }
    return srv_batch_new(app);
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
    srv_batch_free(app);
    srv_cache_free(app->cache);
    app->cache = NULL;
    uv_close((uv_handle_t *)&app->wakeup, close_cb);
    uv_close((uv_handle_t *)&app->tick, close_cb);
    uv_close((uv_handle_t *)&app->sigterm, close_cb);
    uv_close((uv_handle_t *)&app->sigint, close_cb);
    uv_run(&app->loop, UV_RUN_DEFAULT);
    uv_loop_close(&app->loop);
    pthread_mutex_destroy(&app->lock);
    pthread_mutex_destroy(&app->rate_lock);
}
