/* jobs.h - the job kinds: what each kind of engine request (classification, generation,
 * scoring) does, behind one struct of hooks, so that server/http.c stays transport (the head,
 * the body, auth, the answer) and server/sched.c the queue, the ledger and the workers, and
 * neither knows the kinds. Each kind lives in its own file: server/job_classify.c,
 * server/job_generate.c, server/job_score.c.
 *
 * A request's way through its kind, in order:
 *   parse   (MHD thread) the body into the request's native input (api/);
 *   admit   (MHD thread) the checks that refuse it before it is queued: too long for the model
 *           (413 input_too_long), a prefill that cannot end before the deadline (413 or 504),
 *           a reservation that can never fit the budget (413), a bad state (422); then its
 *           reservation (job.reserve, min_reserve) and its outputs: the job is ready to queue;
 *   run     (a worker thread) the job on the worker's context of the kind's model; a kind that
 *           is `batched` joins the continuous batch instead when there is one (server/batch.h);
 *           one with `joins` may take other queued jobs of its kind along (a group);
 *   render  (MHD thread) the 200 answer of a job that ran;
 *   release (MHD or loop thread) frees what the others allocated, when the request ends.
 * What every kind shares (the queue's 429, the deadline's 504, cancellation, the engine's errors)
 * is sched.c's and http.c's. */
#ifndef SRV_JOBS_H
#define SRV_JOBS_H

#include "server/server.h"

/* The generation routes' request shapes (the route's variant, server/routes.h). */
enum { SRV_GEN_TGI = 0, SRV_GEN_TGI_STREAM, SRV_GEN_COMPLETIONS, SRV_GEN_CHAT };

/* The model a kind runs, and so the worker context it runs on. */
typedef enum { SRV_MODEL_CLASSIFIER = 0, SRV_MODEL_GENERATOR } srv_model;

/* A request as its job kind sees it. http.c owns it (one per HTTP request) and fills it before
 * parse; err, job and stream point into http.c's request. */
typedef struct {
    srv_app *app;
    int variant;              /* the route's: which API's request the body is (SRV_GEN_*) */
    const char *body;         /* (body_len) bytes and a NUL; a raw document's body lives as long
                                 as the request (its input points into it), a JSON one is freed
                                 once parsed */
    size_t body_len;
    int raw;                  /* the body is one raw document (a route of SRV_BODY_JSON_OR_RAW) */
    const char *(*arg)(void *cls, const char *name); /* a query argument, or NULL */
    void *arg_cls;
    const char *request_id;
    double timeout;           /* seconds: the request's deadline, from its submission */
    int timeout_from_client;  /* X-Request-Timeout set it */
    api_error *err;           /* OUT: why a hook refused it */
    srv_job *job;             /* OUT (admit): the job to queue */
    srv_stream *stream;       /* the stream's buffer, for a kind whose answer streams */
    union {                   /* the parsed input, the kind's */
        api_classify_req classify;
        api_generate_req generate;
        api_score_req score;
    } in;
} srv_request;

struct srv_job_kind {
    srv_model model;
    int batched; /* joins the continuous batch when there is one (sched.c's lanes) */
    /* API_OK, or the error set in q->err (and returned) */
    api_err (*parse)(srv_request *q);
    api_err (*admit)(srv_request *q);
    /* 0 or a LUNA_E* code; ctx is the worker's context of the kind's model, state the worker's
     * generation state (NULL without a generator) */
    int (*run)(srv_app *app, luna_ctx *ctx, luna_gen_state *state, srv_job *job);
    /* the body of a job that ran (rc 0), malloc'd; NULL: out of memory */
    char *(*render)(srv_request *q);
    /* the plan the job ran under, for X-Luna-Plan and the request log; NULL: none. May be NULL */
    const char *(*plan)(const srv_job *job);
    /* (loop thread, queue lock held) whether queued job `cand` of this kind may run with the
     * group that `lead` heads (lead, lead->group, ...), in the same call of run, on ctx (the
     * worker's context of the kind's model, idle): 1 it may, 0 it may not, -1 the group is full
     * (no job could join). run then runs the whole group and sets each member's rc (it returns
     * the lead's). May be NULL: every job runs alone */
    int (*joins)(const srv_app *app, const luna_ctx *ctx, const srv_job *lead, const srv_job *cand);
    void (*release)(srv_request *q);
};

extern const srv_job_kind SRV_JOB_CLASSIFY, SRV_JOB_GENERATE, SRV_JOB_SCORE;

/* ---- jobs.c: what the kinds share ---- */
/* NULL when the kind's model is loaded, else why it cannot run (503 no_model). */
const char *srv_job_no_model(const srv_app *app, const srv_job_kind *kind);
/* A model's id in OpenAI's and vLLM's answers: its directory's base name. */
void srv_model_id(const char *dir, char *out, size_t n);
/* 413 memory_budget_exceeded (q->err set, 1) when `reserve` can never fit what requests may
 * reserve; else 0. */
int srv_job_over_budget(srv_request *q, uint64_t reserve);
/* 413 input_too_long (q->err set, 1) when `tokens` pass the model's max_positions ("<what> N
 * tokens"); else 0. */
int srv_job_too_long(srv_request *q, const luna_config *cfg, uint64_t tokens, const char *what);

#endif
