/* server.h - lunaserve's shared state and the life of a job.
 *
 * Threads, and what each may touch:
 *   - the MHD thread (libmicrohttpd's internal polling thread) runs http.c: it reads requests,
 *     answers what needs no engine, and pushes jobs with srv_submit() (any thread);
 *   - the loop thread (main, running uv_run) runs sched.c: it alone moves jobs from the queue to
 *     workers, owns the memory ledger (so reservations never exceed the budget), enforces
 *     deadlines, detects disconnected clients, completes jobs and resumes their connections;
 *   - N worker threads each own one luna_ctx (allocated once) and run one job at a time.
 * A job is queued -> running -> done. Once done, the loop thread calls job->on_done and never
 * touches the job again: http.c then owns it (and frees it when MHD says the request ended). */
#ifndef SRV_SERVER_H
#define SRV_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "api/api.h"
#include "engine/luna.h"
#include "server/config.h"
#include "server/metrics.h"

typedef enum { JOB_CLASSIFY = 0 } srv_job_kind;
typedef enum { CANCEL_NONE = 0, CANCEL_DISCONNECT = 1, CANCEL_DEADLINE = 2, CANCEL_SHUTDOWN = 3 } srv_cancel_reason;

typedef struct srv_job srv_job;
struct srv_job {
    srv_job_kind kind;
    const api_classify_req *classify; /* the input, owned by the request */
    float *scores;                    /* OUT: (n_docs, n_labels) */
    uint64_t reserve;                 /* bytes reserved while it runs */
    double t_submit, t_start, t_end;  /* monotonic seconds */
    double deadline;                  /* monotonic seconds */
    int client_fd;                    /* to notice a client that went away; -1 if unknown */
    atomic_int cancel;                /* polled by the engine between chunks and layers */
    atomic_int cancel_reason;         /* srv_cancel_reason */
    int rc;                           /* OUT: 0 or a LUNA_E* code */
    void (*on_done)(srv_job *);       /* called on the loop thread when the job is done */
    void *owner;
    srv_job *next;                    /* queue link (loop thread / queue lock) */
};

typedef struct srv_worker srv_worker;

typedef struct {
    srv_config cfg;
    luna_model *classifier;
    const char *labels[LUNA_MAX_LABELS];
    size_t max_doc_tokens; /* tokens the classifier accepts (max_positions), or SIZE_MAX */

    uv_loop_t loop;
    uv_async_t wakeup;    /* a job was submitted or finished */
    uv_timer_t tick;      /* deadlines, disconnects, drain */
    uv_signal_t sigterm, sigint;

    pthread_mutex_t lock; /* guards the queue and the done list */
    srv_job *q_head, *q_tail;
    int q_len;
    srv_job *done_head;   /* finished by workers, not yet completed by the loop */

    srv_worker *workers;
    int n_workers;
    uint64_t reserved;    /* loop thread only; mirrored in metrics */

    atomic_int draining;  /* SIGTERM seen: refuse new work, finish the rest */
    atomic_int ready;     /* models loaded and serving */
    double drain_deadline;
    int signals;

    struct MHD_Daemon *httpd;
    int port;
    srv_metrics metrics;
} srv_app;

double srv_now(void); /* monotonic seconds */

/* ---- sched.c ---- */
int srv_sched_start(srv_app *app);          /* workers and loop handles; main thread, before MHD */
void srv_sched_stop(srv_app *app);          /* after uv_run returns */
/* Queues a job (any thread). Returns 0, or -1 when the queue is full (answer 429). */
int srv_submit(srv_app *app, srv_job *job);
int srv_queue_len(srv_app *app);
uint64_t srv_min_reservation(const srv_app *app);

/* ---- http.c ---- */
int srv_http_start(srv_app *app);           /* binds and serves; sets app->port */
void srv_http_stop(srv_app *app);

/* ---- log.c ---- */
typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } srv_log_level;
void srv_log_init(const char *level);
/* One JSON line on stderr: {"time", "level", "msg", ...fields}. fields is a JSON fragment of
 * extra members without braces (e.g. "\"port\":8080"), or NULL. Thread-safe. */
void srv_log(srv_log_level lvl, const char *msg, const char *fields_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Escapes s for a JSON string into buf (truncating); returns buf. */
const char *srv_json_esc(const char *s, char *buf, size_t n);

#endif
