/* metrics.h - the counters, gauges and histograms behind GET /metrics (Prometheus text format,
 * unit suffixes, no colons). Updates are per request, not per token, so one mutex guards them
 * all. Every function is thread-safe. */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/blas.h"
#include "server/cache.h"

/* The server's version: /info, luna_build_info, and api/openapi.yaml's info.version. */
#define LUNASERVE_VERSION "0.1.0"

/* endpoint labels of luna_requests_total: the endpoint table's (server/routes.h), "other" and
 * "preflight" (tests/unit/test_http.c checks that they fit) */
#define SRV_N_ENDPOINTS 16
#define SRV_N_CODES 16
#define SRV_N_BUCKETS 16
#define SRV_N_REJECTIONS 6

/* The classification plans (engine/luna.h), as the server counts and reports them; packed: a
 * short document classified in a pack with others, of its request or of requests that waited
 * with it (luna_classify_pack). */
enum { SRV_PLAN_RESIDENT = 0, SRV_PLAN_PARTIAL, SRV_PLAN_STREAMING, SRV_PLAN_PACKED, SRV_N_PLANS };

typedef struct {
    double bounds[SRV_N_BUCKETS]; /* upper bounds; +Inf is implicit */
    int n_bounds;
    uint64_t counts[SRV_N_BUCKETS + 1];
    double sum;
    uint64_t count;
} srv_histogram;

typedef struct {
    pthread_mutex_t lock;
    const char *endpoints[SRV_N_ENDPOINTS]; /* the labels seen, in that order (static strings) */
    int n_endpoints;
    uint64_t requests[SRV_N_ENDPOINTS][SRV_N_CODES];
    int codes[SRV_N_CODES];
    int n_codes;
    srv_histogram duration, queue_wait, input_bytes;
    srv_histogram prefill, per_token; /* generation: the prompt's prefill; decode time per token */
    srv_histogram ttft;               /* generation: submit to first token */
    srv_histogram batch_size;         /* rows of each batched decode step */
    uint64_t batch_step_lanes;        /* the lanes (cores) of every step, summed */
    srv_histogram batch_prefill;      /* tokens of each prefill slice */
    int batch_streams;                /* generations in the batch now */
    uint64_t generated_tokens, prompt_tokens;
    uint64_t rejections[SRV_N_REJECTIONS]; /* by srv_rejection */
    uint64_t cuts[4];        /* connections the guard closed, by srv_cut (server/guard.h) */
    int64_t connections;     /* open, both listeners */
    int clients;             /* clients holding an engine request or job (server/guard.h) */
    int64_t inflight;
    uint64_t reserved, reserved_peak, budget, fixed; /* fixed: reserved for the server's life */
    int queue_depth;
    char build_labels[1024]; /* luna_build_info's labels, escaped once at startup */
    uint64_t plans[SRV_N_PLANS]; /* documents classified, by plan: resident, partial, streaming, packed */
    srv_cache_stats cache;   /* the prefix state cache's, as of the last srv_metrics_state_cache */
} srv_metrics;

typedef enum { REJ_QUEUE_FULL = 0, REJ_MEMORY, REJ_DRAINING, REJ_DEADLINE, REJ_CLIENT_LIMIT, REJ_PREFILL_TIME } srv_rejection;

void srv_metrics_init(srv_metrics *m, uint64_t budget);
/* Sets the labels of the luna_build_info gauge: the server's version and the BLAS in use. */
void srv_metrics_build_info(srv_metrics *m, const luna_blas_info *blas, int blas_threads);
void srv_metrics_destroy(srv_metrics *m);
/* A request answered: luna_requests_total{endpoint, code}, and for an engine endpoint (one that
 * runs a job) luna_request_duration_seconds. endpoint is a static string (the endpoint table's
 * label, server/routes.h). */
void srv_metrics_request(srv_metrics *m, const char *endpoint, int engine, int code, double seconds);
void srv_metrics_queue_wait(srv_metrics *m, double seconds);
void srv_metrics_plan(srv_metrics *m, int plan); /* one document classified under plan SRV_PLAN_* */
void srv_metrics_reserved_add(srv_metrics *m, int64_t delta); /* the ledger moved (sched.c) */
void srv_metrics_input_bytes(srv_metrics *m, uint64_t bytes);
/* One generation: its token counts and how long the prefill and the decode took. */
void srv_metrics_generated(srv_metrics *m, uint64_t generated, uint64_t prompt, double prefill_s,
                           double decode_s);
/* A generation's first token, `seconds` after its request was queued. */
void srv_metrics_ttft(srv_metrics *m, double seconds);
/* The continuous batch: one decode step of `rows` rows; one prefill slice of `tokens`; the
 * number of generations in the batch. */
void srv_metrics_batch_step(srv_metrics *m, int rows, int lanes);
void srv_metrics_batch_prefill(srv_metrics *m, long tokens);
void srv_metrics_batch_streams(srv_metrics *m, int streams);
void srv_metrics_fixed(srv_metrics *m, uint64_t bytes); /* reserved for the server's life */
void srv_metrics_reject(srv_metrics *m, srv_rejection r);
void srv_metrics_inflight(srv_metrics *m, int delta);
void srv_metrics_reserved(srv_metrics *m, uint64_t reserved);
void srv_metrics_queue_depth(srv_metrics *m, int depth);
int64_t srv_metrics_get_inflight(srv_metrics *m);
/* server/guard.c: a connection it closed (the reason, a srv_cut: 0 request line, 1 head, 2
 * body too slow, 3 client gone); connections opened (+1) or closed (-1); the clients holding
 * requests now. */
void srv_metrics_conn_cut(srv_metrics *m, int reason);
void srv_metrics_connections(srv_metrics *m, int delta);
void srv_metrics_clients(srv_metrics *m, int n);
/* The prefix state cache's counters and sizes now (http.c, before rendering). */
void srv_metrics_state_cache(srv_metrics *m, const srv_cache_stats *st);
/* The text exposition; malloc'd, the caller frees. */
char *srv_metrics_render(srv_metrics *m);

#endif
