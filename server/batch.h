/* batch.h - generation in the server: a request alone on a worker (--max-batch 1), or every
 * live generation in one continuous batch (server-internal: sched.c and batch.c).
 *
 * The continuous batch. Each prompt of an admitted request is a sequence (srv_seq) with its
 * own fixed-size state. The loop thread owns the batch and hands the workers two kinds of
 * task:
 *   - a decode step: every sequence whose prompt is in samples its next token, and one
 *     luna_step_batch advances them all (the weights are read once for B rows). One decode
 *     task is out at a time; it runs on the batch's own context, split across the cores of
 *     every idle worker when nothing else waits (sched.c lends them to it).
 *   - a prefill slice: up to --max-batch-tokens more prompt tokens of one sequence, on the
 *     worker's own context. Waiting sequences take turns (round robin), so a short prompt is
 *     not stuck behind a long one, and slices end on the engine's chunk boundaries, so that
 *     any slicing gives the same bits. With a core to spare the slice runs beside the decode
 *     steps; on one worker, slices and steps alternate. A lone slice (nothing else runs or
 *     waits) runs on every core and, with another worker free for what arrives meanwhile,
 *     takes 4096 tokens (srv_batch_run_prefill).
 * A sequence joins the decode steps once its prompt is in and leaves the moment it finishes,
 * is cancelled (the client left, a deadline, shutdown) or fails. A request is answered when
 * its last sequence has left. Every row of a batched step gives the bits it would give alone
 * (engine/luna.h: luna_step_batch), so a seeded request gives the same bytes whatever shares
 * its batch.
 *
 * Memory: the batch's context and logits are reserved once, at start, for the server's life
 * (srv_batch_new); each request reserves its sequences' states, samplers, outputs and stream
 * buffers (srv_gen_reservation). Nothing grows with the batch's history. */
#ifndef SRV_BATCH_H
#define SRV_BATCH_H

#include "api/stream.h"
#include "engine/generate.h"
#include "server/server.h"

typedef enum { SEQ_PREFILL = 0, SEQ_DECODE, SEQ_DONE } srv_seq_phase;

/* One prompt's log-probabilities (api/api.h: api_logprobs), recorded by the engine. */
struct srv_gen_lps {
    luna_gen_lp gen;    /* (max_new_tokens) entries, with the request's logprobs */
    luna_gen_lp prompt; /* (prompt bytes + 1) entries, with its prompt_logprobs */
    void *mem;          /* the arrays, one block */
};

typedef struct srv_seq srv_seq;
struct srv_seq {
    srv_job *job;
    size_t choice;          /* which prompt of the job */
    luna_gen g;             /* the generation loop (engine/generate.h) */
    luna_gen_state *state;  /* its fixed-size state, reserved by the job */
    luna_sampler *smp;
    api_seq ev;             /* its events (api/stream.h) */
    srv_seq_phase phase;    /* set by the worker that holds it, else by the loop */
    int in_task;            /* a worker holds it (the loop's view) */
    int looked_up;          /* its prompt was looked up in the state cache (its first slice) */
    int final;              /* the decode task steps its last token, for its returned state */
    struct srv_cnode *pin;  /* its entry in the state cache (server/cache.h), or NULL */
    srv_seq *next;          /* the prefill queue */
};

struct srv_batch {
    int max_rows;              /* --max-batch */
    size_t slice;              /* --max-batch-tokens */
    luna_ctx *ctx;             /* the decode steps' context */
    float *logits;             /* (max_rows, vocab) */
    luna_gen_state **states;   /* (max_rows): the rows of a step */
    int32_t *tokens;           /* (max_rows) */
    srv_seq **rows;            /* (max_rows): the sequences of those rows */
    srv_seq **step;            /* (max_rows): the decode task's sequences, the worker's while out */
    int n_step;
    srv_seq **decode;          /* (max_rows): sequences whose prompt is in */
    int n_decode;
    srv_seq *pf_head, *pf_tail;/* sequences waiting for a prefill slice, in turn */
    srv_job *jobs;             /* admitted requests */
    int rows_used;             /* the sum of their rows */
    int decode_out;            /* a decode task is out */
    uint64_t scratch;          /* reserved at start: the context and the logits */
};

/* Allocates app->batch (when --max-batch > 1 and there is a generator) and reserves its
 * scratch; 0, or -1 (logged) when it cannot. */
int srv_batch_new(srv_app *app);
void srv_batch_free(srv_app *app);

/* ---- the loop thread ---- */
/* Whether the job fits the batch's free rows now. */
int srv_batch_room(const srv_app *app, const srv_job *job);
/* Admits a job whose reservation is held: its stream starts, its first prompts join. */
void srv_batch_admit(srv_app *app, srv_job *job);
/* Ends the sequences of cancelled or failed jobs that no worker holds. */
void srv_batch_reap(srv_app *app);
/* The next sequence to prefill (off the queue, in_task set), or NULL. */
srv_seq *srv_batch_next_prefill(srv_app *app);
void srv_batch_prefilled(srv_app *app, srv_seq *s); /* its prefill task came back */
/* Whether a decode step is due (sequences decode and no step is out); srv_batch_step_out
 * snapshots them for a worker; srv_batch_stepped takes the task back. */
int srv_batch_step_due(const srv_app *app);
void srv_batch_step_out(srv_app *app);
void srv_batch_stepped(srv_app *app);
/* Deadlines, clients gone, keep-alive pings of the batch's jobs. */
void srv_batch_tick(srv_app *app, double now);
/* Cancels every job of the batch (drain past its deadline). */
void srv_batch_cancel_all(srv_app *app, srv_cancel_reason why);
int srv_batch_jobs(const srv_app *app); /* requests in the batch */

/* ---- worker threads ---- */
void srv_batch_run_prefill(srv_app *app, luna_ctx *ctx, srv_seq *s, int lanes);
void srv_batch_run_step(srv_app *app, int lanes); /* on `lanes` of the batch's context */
/* A generation alone, start to end (--max-batch 1): every prompt in turn on ctx and state. */
int srv_gen_run(srv_app *app, luna_ctx *ctx, luna_gen_state *state, srv_job *job);

/* sched.c, shared with batch.c */
void srv__cancel_job(srv_job *job, srv_cancel_reason why);
int srv__client_gone(int fd);
void srv__stream_ping(srv_app *app, srv_job *job, double now);

#endif
