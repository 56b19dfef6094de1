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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

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
    luna_ctx *ctx;  /* allocated once, at start */
    float *probs;   /* (n_labels) scratch */
};

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t srv_min_reservation(const srv_app *app)
{
    return luna_workspace_bytes(app->classifier, 1);
}

/* ---- the worker threads -------------------------------------------------------------------- */

static int run_classify(srv_worker *w, srv_job *job)
{
    const api_classify_req *req = job->classify;
    int nl = luna_model_config(w->app->classifier)->n_labels;
    for (size_t i = 0; i < req->n_docs; i++) {
        float *out = job->scores + i * (size_t)nl;
        int rc = req->raw_scores ? luna_classify(w->ctx, req->docs[i].data, req->docs[i].len, NULL, out)
                                 : luna_classify(w->ctx, req->docs[i].data, req->docs[i].len, out, NULL);
        if (rc) return rc;
    }
    return 0;
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
        luna_ctx_set_cancel(w->ctx, &job->cancel);
        job->rc = atomic_load(&job->cancel) ? LUNA_ECANCELED : run_classify(w, job);
        luna_ctx_set_cancel(w->ctx, NULL);
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

static void complete(srv_app *app, srv_job *job)
{
    if (job->on_done) job->on_done(job); /* after this, the job belongs to http.c */
    (void)app;
}

/* Jobs that never ran: expired, canceled while queued, or refused at shutdown. */
static void complete_unrun(srv_app *app, srv_job *job, int rc)
{
    job->rc = rc;
    job->t_start = job->t_end = srv_now();
    complete(app, job);
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
        if (!job || app->reserved + job->reserve > app->cfg.memory_budget) {
            pthread_mutex_unlock(&app->lock);
            return; /* nothing queued, or the head waits for memory */
        }
        queue_remove(app, job);
        pthread_mutex_unlock(&app->lock);
        app->reserved += job->reserve;
        srv_metrics_reserved(&app->metrics, app->reserved);
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
        app->reserved -= done->reserve;
        srv_metrics_reserved(&app->metrics, app->reserved);
        complete(app, done);
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
        complete_unrun(app, expired, LUNA_ECANCELED);
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
            complete_unrun(app, q, LUNA_ECANCELED);
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

    int nl = luna_model_config(app->classifier)->n_labels;
    app->workers = calloc((size_t)app->n_workers, sizeof *app->workers);
    if (!app->workers) return -1;
    for (int i = 0; i < app->n_workers; i++) {
        srv_worker *w = &app->workers[i];
        w->app = app;
        w->id = i;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        w->probs = calloc((size_t)nl, sizeof(float));
        int rc = w->probs ? luna_ctx_new(app->classifier, NULL, &w->ctx) : LUNA_ENOMEM;
        if (rc || uv_thread_create(&w->thread, worker_main, w)) {
            srv_log(LOG_ERROR, "cannot start a worker", "\"worker\":%d,\"error\":\"%s\"", i, luna_strerror(rc));
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
        free(w->probs);
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
