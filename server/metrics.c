/* metrics.c - see metrics.h. The exposition follows the Prometheus text format 0.0.4. */
#include "server/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const REJ_NAMES[SRV_N_REJECTIONS] = {"queue_full", "memory", "draining", "deadline", "client_limit", "prefill_time"};
static const char *const CUT_REASONS[4] = {"request_line_timeout", "head_timeout", "body_too_slow", "client_gone"};

static void hist_init(srv_histogram *h, const double *b, int n)
{
    memset(h, 0, sizeof *h);
    memcpy(h->bounds, b, (size_t)n * sizeof *b);
    h->n_bounds = n;
}

static void hist_add(srv_histogram *h, double v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void srv_metrics_init(srv_metrics *m, uint64_t budget)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->lock, NULL);
    static const double secs[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
    static const double bytes[] = {256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
    hist_init(&m->duration, secs, 15);
    hist_init(&m->queue_wait, secs, 15);
    hist_init(&m->input_bytes, bytes, 10);
    static const double tok[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};
    hist_init(&m->prefill, secs, 15);
    hist_init(&m->per_token, tok, 12);
    hist_init(&m->ttft, secs, 15);
    static const double rows[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    hist_init(&m->batch_size, rows, 9);
    static const double slice[] = {16, 64, 256, 512, 1024, 2048, 4096, 16384, 65536};
    hist_init(&m->batch_prefill, slice, 9);
    m->budget = budget;
}

void srv_metrics_destroy(srv_metrics *m) { pthread_mutex_destroy(&m->lock); }

void srv_metrics_request(srv_metrics *m, const char *endpoint, int engine, int code, double seconds)
{
    pthread_mutex_lock(&m->lock);
    int e = 0;
    while (e < m->n_endpoints && strcmp(m->endpoints[e], endpoint)) e++;
    if (e == m->n_endpoints && e < SRV_N_ENDPOINTS) m->endpoints[m->n_endpoints++] = endpoint;
    int c = 0;
    while (c < m->n_codes && m->codes[c] != code) c++;
    if (c == m->n_codes && c < SRV_N_CODES) m->codes[m->n_codes++] = code;
    if (e < SRV_N_ENDPOINTS && c < SRV_N_CODES) m->requests[e][c]++;
    if (engine) hist_add(&m->duration, seconds);
    pthread_mutex_unlock(&m->lock);
}

#define LOCKED(stmt)                     \
    do {                                 \
        pthread_mutex_lock(&m->lock);    \
        stmt;                            \
        pthread_mutex_unlock(&m->lock);  \
    } while (0)

void srv_metrics_queue_wait(srv_metrics *m, double s) { LOCKED(hist_add(&m->queue_wait, s)); }
void srv_metrics_input_bytes(srv_metrics *m, uint64_t b) { LOCKED(hist_add(&m->input_bytes, (double)b)); }
void srv_metrics_plan(srv_metrics *m, int plan)
{
    if (plan >= 0 && plan < SRV_N_PLANS) LOCKED(m->plans[plan]++);
}

void srv_metrics_generated(srv_metrics *m, uint64_t generated, uint64_t prompt, double prefill_s,
                           double decode_s)
{
    pthread_mutex_lock(&m->lock);
    m->generated_tokens += generated;
    m->prompt_tokens += prompt;
    hist_add(&m->prefill, prefill_s);
    if (generated) hist_add(&m->per_token, decode_s / (double)generated);
    pthread_mutex_unlock(&m->lock);
}
void srv_metrics_reject(srv_metrics *m, srv_rejection r) { LOCKED(m->rejections[r]++); }
void srv_metrics_ttft(srv_metrics *m, double s) { LOCKED(hist_add(&m->ttft, s)); }
void srv_metrics_batch_step(srv_metrics *m, int rows, int lanes)
{
    LOCKED(hist_add(&m->batch_size, rows); m->batch_step_lanes += (uint64_t)lanes);
}
void srv_metrics_batch_prefill(srv_metrics *m, long tokens) { LOCKED(hist_add(&m->batch_prefill, (double)tokens)); }
void srv_metrics_fixed(srv_metrics *m, uint64_t bytes) { LOCKED(m->fixed = bytes); }
void srv_metrics_state_cache(srv_metrics *m, const srv_cache_stats *st) { LOCKED(m->cache = *st); }
void srv_metrics_batch_streams(srv_metrics *m, int streams) { LOCKED(m->batch_streams = streams); }
void srv_metrics_inflight(srv_metrics *m, int delta) { LOCKED(m->inflight += delta); }
void srv_metrics_queue_depth(srv_metrics *m, int depth) { LOCKED(m->queue_depth = depth); }
void srv_metrics_reserved(srv_metrics *m, uint64_t r)
{
    LOCKED(m->reserved = r; if (r > m->reserved_peak) m->reserved_peak = r);
}
void srv_metrics_reserved_add(srv_metrics *m, int64_t delta)
{
    LOCKED(m->reserved = (uint64_t)((int64_t)m->reserved + delta); if (m->reserved > m->reserved_peak) m->reserved_peak = m->reserved);
}
void srv_metrics_conn_cut(srv_metrics *m, int reason)
{
    if (reason >= 0 && reason < 4) LOCKED(m->cuts[reason]++);
}
void srv_metrics_connections(srv_metrics *m, int delta) { LOCKED(m->connections += delta); }
void srv_metrics_clients(srv_metrics *m, int n) { LOCKED(m->clients = n); }
int64_t srv_metrics_get_inflight(srv_metrics *m)
{
    int64_t v;
    LOCKED(v = m->inflight);
    return v;
}

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = b->buf ? vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 8192;
        char *nb = realloc(b->buf, cap);
        if (!nb) return; /* the exposition is cut short rather than crashing */
        b->buf = nb;
        b->cap = cap;
    }
}

static void hist_render(sbuf *b, const char *name, const char *help, const srv_histogram *h)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
              (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}

/* A Prometheus label value: backslash, double quote and newline escaped. */
static size_t label_esc(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') out[n++] = '\\', out[n++] = *s;
        else if (*s == '\n') out[n++] = '\\', out[n++] = 'n';
        else out[n++] = *s;
    }
    out[n] = 0;
    return n;
}

void srv_metrics_build_info(srv_metrics *m, const luna_blas_info *blas, int blas_threads)
{
    char core[80], version[80], cpu[200], sel[40];
    label_esc(core, sizeof core, blas->core);
    label_esc(version, sizeof version, blas->version);
    label_esc(cpu, sizeof cpu, blas->cpu);
    label_esc(sel, sizeof sel, blas->selection);
    snprintf(m->build_labels, sizeof m->build_labels,
             "version=\"%s\",blas=\"%s\",blas_version=\"%s\",blas_core=\"%s\",blas_core_selection=\"%s\","
             "blas_threads=\"%d\",cpu=\"%s\"",
             LUNASERVE_VERSION, blas->library, version, core, sel, blas_threads, cpu);
}

char *srv_metrics_render(srv_metrics *m)
{
    sbuf b = {0};
    pthread_mutex_lock(&m->lock);
    sb_printf(&b, "# HELP luna_build_info The server's version and the BLAS kernel it runs on (value 1).\n"
                  "# TYPE luna_build_info gauge\nluna_build_info{%s} 1\n", m->build_labels);
    sb_printf(&b, "# HELP luna_requests_total HTTP requests answered, by endpoint and status code.\n"
                  "# TYPE luna_requests_total counter\n");
    for (int e = 0; e < m->n_endpoints; e++)
        for (int c = 0; c < m->n_codes; c++)
            if (m->requests[e][c])
                sb_printf(&b, "luna_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n", m->endpoints[e],
                          m->codes[c], (unsigned long long)m->requests[e][c]);
    hist_render(&b, "luna_request_duration_seconds", "Time from request to answer, engine endpoints.", &m->duration);
    hist_render(&b, "luna_queue_wait_seconds", "Time a job waited in the queue before a worker took it.", &m->queue_wait);
    hist_render(&b, "luna_input_bytes", "Bytes of each document sent to the engine.", &m->input_bytes);
    sb_printf(&b, "# HELP luna_queue_depth Jobs waiting for a worker.\n# TYPE luna_queue_depth gauge\nluna_queue_depth %d\n", m->queue_depth);
    sb_printf(&b, "# HELP luna_inflight_requests Engine requests accepted and not yet answered.\n"
                  "# TYPE luna_inflight_requests gauge\nluna_inflight_requests %lld\n", (long long)m->inflight);
    sb_printf(&b, "# HELP luna_generated_tokens_total Tokens generated.\n# TYPE luna_generated_tokens_total counter\n"
                  "luna_generated_tokens_total %llu\n", (unsigned long long)m->generated_tokens);
    sb_printf(&b, "# HELP luna_prompt_tokens_total Prompt tokens of finished generations (bos included); those the state cache had are also in luna_prompt_tokens_reused_total.\n"
                  "# TYPE luna_prompt_tokens_total counter\nluna_prompt_tokens_total %llu\n",
              (unsigned long long)m->prompt_tokens);
    const srv_cache_stats *c = &m->cache;
    sb_printf(&b, "# HELP luna_prompt_tokens_reused_total Prompt tokens not prefilled: the state cache had their state.\n"
                  "# TYPE luna_prompt_tokens_reused_total counter\nluna_prompt_tokens_reused_total %llu\n"
                  "# HELP luna_state_cache_hits_total Prompts that resumed from a state in the prefix state cache.\n"
                  "# TYPE luna_state_cache_hits_total counter\nluna_state_cache_hits_total %llu\n"
                  "# HELP luna_state_cache_misses_total Prompts looked up in the prefix state cache and prefilled from the start.\n"
                  "# TYPE luna_state_cache_misses_total counter\nluna_state_cache_misses_total %llu\n"
                  "# HELP luna_state_cache_evictions_total States the prefix state cache gave up (its limit, or a request's memory).\n"
                  "# TYPE luna_state_cache_evictions_total counter\nluna_state_cache_evictions_total %llu\n"
                  "# HELP luna_state_cache_bytes Bytes the prefix state cache holds (in luna_memory_reserved_bytes).\n"
                  "# TYPE luna_state_cache_bytes gauge\nluna_state_cache_bytes %llu\n"
                  "# HELP luna_state_cache_states States in the prefix state cache.\n"
                  "# TYPE luna_state_cache_states gauge\nluna_state_cache_states %llu\n"
                  "# HELP luna_state_cache_entries Entries of the prefix state cache: its states, and the keys of evicted ones that later states extend.\n"
                  "# TYPE luna_state_cache_entries gauge\nluna_state_cache_entries %llu\n",
              (unsigned long long)c->tokens_reused, (unsigned long long)c->hits, (unsigned long long)c->misses,
              (unsigned long long)c->evictions, (unsigned long long)c->bytes, (unsigned long long)c->states,
              (unsigned long long)c->entries);
    hist_render(&b, "luna_prefill_seconds", "Time to prefill a generation's prompt (the time to first token, less the queue).", &m->prefill);
    hist_render(&b, "luna_time_to_first_token_seconds", "Time from a generation's arrival to its first token, queue included.", &m->ttft);
    hist_render(&b, "luna_batch_size", "Generations stepped together, one value per batched decode step.", &m->batch_size);
    sb_printf(&b, "# HELP luna_batch_step_lanes_total Cores (lanes) that shared the batched decode steps, summed over steps: over luna_batch_size_count, the mean per step.\n"
                  "# TYPE luna_batch_step_lanes_total counter\nluna_batch_step_lanes_total %llu\n",
              (unsigned long long)m->batch_step_lanes);
    hist_render(&b, "luna_batch_prefill_tokens", "Prompt tokens of each prefill slice run between decode steps.", &m->batch_prefill);
    sb_printf(&b, "# HELP luna_batch_current_size Generations in the continuous batch now (prefilling or decoding).\n"
                  "# TYPE luna_batch_current_size gauge\nluna_batch_current_size %d\n", m->batch_streams);
    hist_render(&b, "luna_time_per_output_token_seconds", "Decode time per generated token, one value per generation.", &m->per_token);
    sb_printf(&b, "# HELP luna_memory_budget_bytes The memory budget of running requests.\n"
                  "# TYPE luna_memory_budget_bytes gauge\nluna_memory_budget_bytes %llu\n", (unsigned long long)m->budget);
    sb_printf(&b, "# HELP luna_memory_reserved_bytes Bytes reserved in the memory budget: requests, the batch's scratch and the state cache.\n"
                  "# TYPE luna_memory_reserved_bytes gauge\nluna_memory_reserved_bytes %llu\n", (unsigned long long)m->reserved);
    sb_printf(&b, "# HELP luna_memory_reserved_fixed_bytes Bytes of the reservation held for the server's life (the batch's scratch).\n"
                  "# TYPE luna_memory_reserved_fixed_bytes gauge\nluna_memory_reserved_fixed_bytes %llu\n", (unsigned long long)m->fixed);
    sb_printf(&b, "# HELP luna_memory_reserved_peak_bytes The most ever reserved at once.\n"
                  "# TYPE luna_memory_reserved_peak_bytes gauge\nluna_memory_reserved_peak_bytes %llu\n",
              (unsigned long long)m->reserved_peak);
    static const char *const plan_names[SRV_N_PLANS] = {"resident", "partial", "streaming", "packed"};
    sb_printf(&b, "# HELP luna_plan_total Documents classified, by plan (resident keeps n x d floats, streaming none, "
                  "packed: short documents, of a request or of requests that waited together, in one forward).\n"
                  "# TYPE luna_plan_total counter\n");
    for (int p = 0; p < SRV_N_PLANS; p++)
        sb_printf(&b, "luna_plan_total{plan=\"%s\"} %llu\n", plan_names[p], (unsigned long long)m->plans[p]);
    sb_printf(&b, "# HELP luna_admission_rejections_total Requests refused at admission, by reason.\n"
                  "# TYPE luna_admission_rejections_total counter\n");
    for (int r = 0; r < SRV_N_REJECTIONS; r++)
        sb_printf(&b, "luna_admission_rejections_total{reason=\"%s\"} %llu\n", REJ_NAMES[r], (unsigned long long)m->rejections[r]);
    sb_printf(&b, "# HELP luna_connections Open connections, both listeners.\n"
                  "# TYPE luna_connections gauge\nluna_connections %lld\n", (long long)m->connections);
    sb_printf(&b, "# HELP luna_connections_cut_total Connections closed in the middle of a request: too slow (its request "
                  "line, head or body), or its client gone.\n# TYPE luna_connections_cut_total counter\n");
    for (int r = 0; r < 4; r++)
        sb_printf(&b, "luna_connections_cut_total{reason=\"%s\"} %llu\n", CUT_REASONS[r], (unsigned long long)m->cuts[r]);
    sb_printf(&b, "# HELP luna_clients_active Clients (API keys, or addresses without keys) holding engine requests.\n"
                  "# TYPE luna_clients_active gauge\nluna_clients_active %d\n", m->clients);
    pthread_mutex_unlock(&m->lock);
    return b.buf;
}
