/* http.c - the libmicrohttpd front end, transport only: the head, routing and auth by the
 * endpoint table (SRV_ROUTES, server/routes.h), CORS, the body and its limits, and the answer.
 * Runs on MHD's internal polling thread and never blocks there. A GET is answered from the
 * headers by its row's answer. A POST's body, once in, goes to its row's job kind
 * (server/jobs.h), which parses it and admits the job (its own 413/422/504 checks and its
 * reservation); http.c queues the job (429 when the queue is full) and suspends the
 * connection; the loop thread resumes it when the job is done, and MHD calls the handler once
 * more to send what the kind renders. http.c never knows which kind it carries.
 *
 * A request's life in the handler (req->phase):
 *   NEW      first call, headers only: route, method, auth, content type, Content-Length limit;
 *   EARLY    an answer decided on the first call (a GET, or an error) of a request without a
 *            body, kept for the second call, so that the connection stays alive (queue());
 *   BODY     body chunks arrive; counted against max-body-bytes as they come;
 *   QUEUED   the job is queued or running, the connection suspended;
 *   ANSWER   resumed (or failed before queueing): send the result or the error;
 *   STREAM   /generate_stream: a worker took the job and resumed the connection; the 200
 *            response is queued with a content reader that drains the job's events, suspending
 *            the connection whenever it finds none (srv_stream in server.h).
 *
 * Lifetime: the request owns its job. MHD may end a request (a client that left mid-stream)
 * while a worker still runs its job, so `completed` frees the request only when no job is
 * active; otherwise it cancels the job and leaves the free to on_job_done, which the loop
 * thread calls once the job is over. `life` guards that hand-over. */
#include <ctype.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "server/assets.h"
#include "server/cache.h"
#include "server/guard.h"
#include "server/jobs.h"
#include "server/routes.h"


typedef enum { PH_NEW = 0, PH_EARLY, PH_BODY, PH_QUEUED, PH_ANSWER, PH_STREAM, PH_DONE } phase;

/* A listening socket: the main one, or the health listener (--health-port), which serves
 * /health, /ready and /metrics only, with connections of its own, so that a load balancer's
 * probes are answered when the main listener has every connection it may take.
 *
 * The main listener itself takes CONNECTION_RESERVE connections past --max-connections, for
 * the same probes: a connection that comes when max-connections are open is one of the reserve
 * (on_connection). It is served /health, /ready and /metrics only, each answer closes it, and it
 * has RESERVE_SECONDS from its start to the end of its request (the guard's bound); anything
 * else on it is 503 and closed. A client cannot be told from a probe before its request is
 * read, so idle clients take the reserve too, but each for a second at most: past the reserve
 * (a flood that also fills the kernel's backlog) only the health port still answers. */
#define CONNECTION_RESERVE 16
#define RESERVE_SECONDS 1
typedef struct {
    srv_app *app;
    int health;
} http_listener;

/* http.c's own state (app->http). */
struct srv_http {
    http_listener main, health;
    struct MHD_Daemon *health_daemon;
    srv_guard *guard; /* connections' clocks, per-client counts (server/guard.h) */
    _Atomic uint64_t bodies; /* bytes the requests hold in the ledger for their bodies (and
                                parsed input), at most bodies_cap */
    uint64_t bodies_cap;     /* half of what requests may reserve; a body past it is 413 */
    _Atomic int main_conns;  /* the main listener's open connections (its reserve's included) */
};


typedef struct http_req {
    srv_app *app;
    struct MHD_Connection *conn;
    phase ph;
    const srv_route *route; /* NULL until routed */
    const char *label;      /* the endpoint label: the route's, "preflight" or "other" */
    char request_id[72];
    char origin[256];
    int cors;            /* the Origin is allowed: echo it */
    double t0;
    int status;          /* what was answered */
    size_t resp_bytes;
    api_error err;       /* kind != API_OK: answer this error */
    char *body;
    size_t body_len, body_cap;
    int raw_answer;      /* answered on the socket itself and closed (answer_mid_body) */
    int done_status;     /* MHD's part is over: the status answered (499: none), and when */
    double done_dt;
    double timeout;
    int timeout_from_client; /* X-Request-Timeout set it */
    size_t parse_body;       /* held for the parse: the body's bytes, given back once it is freed */
    const char *url;     /* the request's path (MHD's, valid while the request lives) */
    srv_request q;       /* what its job kind sees (server/jobs.h); q.job is set once it has one */
    srv_job job;
    srv_stream stream;   /* job.stream points here when the answer streams */
    int inflight;        /* counted in luna_inflight_requests */
    pthread_mutex_t life;/* guards job_active and orphaned */
    int job_active;      /* queued or running: the loop thread will call on_job_done */
    int orphaned;        /* MHD is done with the request: on_job_done frees it */
    int no_body;         /* no Content-Length (or 0) and no Transfer-Encoding */
    int raw;             /* a raw document for the body (SRV_BODY_JSON_OR_RAW) */
    size_t body_expect;  /* the Content-Length, allocated at the first chunk (0: unknown) */
    uint64_t held;       /* bytes this request holds in the ledger for its body and, once
                            parsed, its input (about the same size), until it is freed */
    int close;           /* answer with Connection: close (the request's framing is in doubt) */
    struct MHD_Response *early; /* an answer decided on the first call, queued on the second */
    unsigned early_status;
    srv_conn *clock;     /* the connection's clock (server/guard.h), or NULL */
    srv_client *client;  /* holds one of its client's request slots (given back in completed) */
    srv_client *holder;  /* the client that `held` is charged to (its share of the bodies' half),
                            whose entry lives until the request gives the bytes back */
    srv_client *job_client; /* holds one of its client's job slots (given back when the job is
                               done: on_job_done, or a refused submit) */
} http_req;

enum { HOLD_OK = 0, HOLD_BUDGET = -1, HOLD_CLIENT = -2 };

/* Holds `bytes` more for r's body in the ledger: HOLD_OK, or why not (nothing taken). Bodies
 * together may hold only part of the budget (bodies_cap, half of it): the rest is the jobs'. The
 * ledger is first come, first served, and a job that waits for memory at the head of the queue
 * was starved by uploads, which took every byte a finished job gave back before the dispatcher
 * could (make soak-hostile: generations waited 30 s, the queue behind them 120 s). Within that
 * half, the bodies a client holds beside its first may take its share in all
 * (--max-body-bytes-per-client, the guard's count): one client trickling bodies just above the
 * minimum rate held the whole half, and every other client's body was 503 (HOLD_CLIENT: 429 for
 * it, as its other limits). Any thread. */
static int hold(http_req *r, uint64_t bytes)
{
    struct srv_http *h = r->app->http;
    srv_client *c = r->holder ? r->holder : r->client;
    if (c && srv_guard_body_hold(h->guard, c, bytes, r->held)) return HOLD_CLIENT;
    uint64_t cur = atomic_load(&h->bodies);
    do {
        if (cur + bytes > h->bodies_cap) goto budget;
    } while (!atomic_compare_exchange_weak(&h->bodies, &cur, cur + bytes));
    if (srv_reserve(r->app, bytes)) {
        atomic_fetch_sub(&h->bodies, bytes);
        goto budget;
    }
    r->holder = c;
    r->held += bytes;
    return HOLD_OK;
budget:
    if (c) srv_guard_body_release(h->guard, c, bytes);
    return HOLD_BUDGET;
}

static void unhold(http_req *r, uint64_t bytes)
{
    if (bytes > r->held) bytes = r->held;
    srv_release(r->app, bytes);
    atomic_fetch_sub(&r->app->http->bodies, bytes);
    srv_guard_body_release(r->app->http->guard, r->holder, bytes);
    r->held -= bytes;
}


/* Sets r->err for a hold that failed (`what` it was for): 429 past the client's share, 503
 * past what the ledger can hold now. */
static void client_limit_error(http_req *r, double limit, const char *what, const char *setting);
static void hold_error(http_req *r, int rc, const char *what)
{
    if (rc == HOLD_CLIENT) {
        client_limit_error(r, (double)srv_guard_limits_of(r->app->http->guard)->max_body_bytes,
                           "bytes of request bodies held at once", "max-body-bytes-per-client");
        return;
    }
    srv_metrics_reject(&r->app->metrics, REJ_MEMORY);
    api_fail(&r->err, API_E_ENGINE_MEMORY, "the memory budget cannot hold %s now (other requests hold it); retry", what);
}

/* A JSON body's parse tree is held before it is built: its values (an upper bound, each a node
 * with its key) and its strings' bytes (the body's at most), which the body, freed once
 * parsed, gives back (parsed()). A tree that cannot be held now is a 503, one that never can a
 * 413; a body of more values than the parsers take is theirs to refuse. */
static int hold_parse(http_req *r)
{
    size_t values = api_json_values(r->body ? r->body : "", r->body_len);
    if (values > API_MAX_JSON_VALUES) return 0;
    srv_app *app = r->app;
    uint64_t need = (uint64_t)values * API_JSON_VALUE_BYTES + r->body_len;
    if (r->held + need > app->http->bodies_cap) {
        api_fail(&r->err, API_E_MEMORY, "parsing the body needs %llu bytes more than the body's %llu; a request's body "
                 "may hold %llu (send a large document as a raw text/plain body to /classify)",
                 (unsigned long long)need, (unsigned long long)r->held, (unsigned long long)app->http->bodies_cap);
        r->err.extra_key[0] = "memory_required_bytes";
        r->err.extra_val[0] = (double)(r->held + need);
        srv_metrics_reject(&app->metrics, REJ_MEMORY);
        return -1;
    }
    int rc = hold(r, need);
    if (rc) {
        hold_error(r, rc, "this body's parse");
        return -1;
    }
    r->parse_body = r->body_len;
    return 0;
}

/* The body is parsed and freed: the strings of the tree stand in for it. */
static void parsed(http_req *r)
{
    free(r->body);
    r->body = NULL;
    unhold(r, r->parse_body);
    r->parse_body = 0;
}

/* Refuses a body that can never be held (413 memory_budget_exceeded, the error set): past the
 * bodies' half of the budget, or its client's share. Returns what respond_error does, for the
 * first call. */
static enum MHD_Result respond_error(http_req *r, const char *allow);
static enum MHD_Result body_never_fits(http_req *r, uint64_t need)
{
    const srv_app *app = r->app;
    api_fail(&r->err, API_E_MEMORY, "the body needs %llu bytes; request bodies may hold %llu, half of what requests may reserve (%llu)",
             (unsigned long long)need, (unsigned long long)app->http->bodies_cap, (unsigned long long)srv_request_budget(app));
    r->err.extra_key[0] = "memory_required_bytes";
    r->err.extra_val[0] = (double)need;
    r->err.extra_key[1] = "memory_budget_bytes";
    r->err.extra_val[1] = (double)srv_request_budget(app);
    srv_metrics_reject(&r->app->metrics, REJ_MEMORY);
    return r->ph == PH_NEW ? respond_error(r, NULL) : MHD_YES;
}

static void free_req(http_req *r)
{
    unhold(r, r->held);
    if (r->early) MHD_destroy_response(r->early);
    if (r->q.job) r->route->job->release(&r->q);
    free(r->stream.buf);
    pthread_mutex_destroy(&r->stream.lock);
    pthread_mutex_destroy(&r->life);
    free(r->body);
    free(r);
}

/* ---- responses ---------------------------------------------------------------------------- */

/* The plan a job ran under (a classification's), or NULL. */
static const char *job_plan(const srv_job *job)
{
    return job->kind && job->kind->plan ? job->kind->plan(job) : NULL;
}

/* What an engine request reserved in the memory budget, for clients that show it. */
static void add_reserved_header(const http_req *r, struct MHD_Response *resp)
{
    const char *plan = job_plan(&r->job);
    if (plan) MHD_add_response_header(resp, "X-Luna-Plan", plan);
    if (!r->job.reserve && !(r->job.t_start > 0)) return; /* a job that ran says what it held, 0 included */
    char v[32];
    snprintf(v, sizeof v, "%llu", (unsigned long long)r->job.reserve);
    MHD_add_response_header(resp, "X-Memory-Reserved-Bytes", v);
}

/* Queues resp (and drops our reference). libmicrohttpd 0.9.75 closes the connection after any
 * answer queued on the handler's first call ("queued early": it will not read a body it has
 * not seen), so an answer decided from the headers alone (GET routes, 404, 405, 401, 415...)
 * of a request without a body waits for the second call, which comes at once, and the
 * connection stays alive. A request with a body is answered at once and the connection closes:
 * its body is never read (413 before the body, or a route that takes none). */
static enum MHD_Result queue(http_req *r, unsigned status, struct MHD_Response *resp)
{
    if (r->ph == PH_NEW && r->no_body) {
        r->early = resp;
        r->early_status = status;
        r->ph = PH_EARLY;
        return MHD_YES;
    }
    enum MHD_Result ok = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result respond(http_req *r, int status, const char *ctype, char *body, const char *allow)
{
    char oom[256];
    if (!body && status < 300) { /* the answer could not be rendered: never a 200 without it */
        snprintf(oom, sizeof oom, "{\"error\":{\"code\":500,\"type\":\"internal_error\",\"message\":\"out of memory "
                 "while rendering the answer\",\"param\":null,\"request_id\":\"%s\"}}", r->request_id);
        body = strdup(oom);
        status = 500;
        ctype = "application/json";
    }
    size_t len = body ? strlen(body) : 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (r->cors) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
        MHD_add_response_header(resp, "Vary", "Origin");
    }
    if (allow) MHD_add_response_header(resp, "Allow", allow);
    if (status == 429 || status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    add_reserved_header(r, resp);
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (r->close) MHD_add_response_header(resp, "Connection", "close");
    r->status = status;
    r->resp_bytes = len;
    return queue(r, (unsigned)status, resp);
}

static enum MHD_Result respond_error(http_req *r, const char *allow)
{
    char *body = api_render_error(&r->err, r->request_id);
    return respond(r, api_err_status(r->err.kind), "application/json", body, allow);
}

/* Answers r->err in the middle of a chunked body, and closes. libmicrohttpd 0.9.75 queues an
 * answer only before the body or after its end, and a chunked body need not end: one chunk may
 * say it is 2^64-1 bytes long (MHD refuses only sizes past 64 bits). Discarding until the end
 * would read for ever, closing without a word leaves the client guessing; so the error goes
 * to the socket from here, in one non-blocking write (a few hundred bytes into an idle send
 * buffer: MHD writes nothing while it reads a body, its 100 Continue included), and MHD_NO
 * makes MHD close the connection. The client reads the answer before the reset that the rest
 * of its unread body causes. */
static enum MHD_Result answer_mid_body(http_req *r)
{
    int status = api_err_status(r->err.kind);
    char *body = api_render_error(&r->err, r->request_id);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (body && ci) {
        char head[1024];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                         "X-Request-Id: %s\r\nCache-Control: no-store\r\n%s%s%s%s%sContent-Length: %zu\r\n\r\n",
                         status, MHD_get_reason_phrase_for((unsigned)status), r->request_id,
                         status == 429 || status == 503 ? "Retry-After: 1\r\n" : "",
                         r->cors ? "Access-Control-Allow-Origin: " : "", r->cors ? r->origin : "",
                         r->cors ? "\r\n" : "", r->cors ? "Vary: Origin\r\n" : "", strlen(body));
        struct iovec iov[2] = {{head, (size_t)n}, {body, strlen(body)}};
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
        if (n > 0 && (size_t)n < sizeof head && sendmsg(ci->connect_fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) > 0) {
            r->status = status;
            r->resp_bytes = strlen(body);
            r->raw_answer = 1;
        }
    }
    free(body);
    free(r->body);
    r->body = NULL;
    return MHD_NO;
}

static enum MHD_Result fail(http_req *r, api_err kind, const char *fmt, const char *arg)
{
    api_fail(&r->err, kind, fmt, arg);
    return respond_error(r, NULL);
}

/* ---- HTTP framing ---------------------------------------------------------------------------- */

/* libmicrohttpd 0.9.75 parses the head before the handler's first call and is lenient where a
 * proxy in front may read the same bytes otherwise (request smuggling): it takes the first of
 * two Content-Length headers, reads a body with any Transfer-Encoding but chunked until the
 * connection closes, takes HTTP/1.1 without a Host, keeps a bare CR inside a value and ends a
 * value at a NUL byte (the rest of the line is silently dropped: "Bearer key<NUL>junk"). So the
 * first call checks the head as RFC 9112 wants it and refuses, closing the connection, what a
 * second reader could take for something else. (MHD_OPTION_STRICT_FOR_CLIENT only adds the Host
 * rule and answers it in HTML; see docs/reliability.md for which layer refuses what.) */
typedef struct {
    int n_cl, n_te, n_host, n_auth;
    int bad_name, ctl, misframed; /* a field name that is no token; a control character in a
                                   * value; a line that does not end where its value does */
    int te_other, te_chunked;     /* transfer codings: other than chunked; chunked */
    const char *line_end;         /* where the previous line's value ended ('\0' there) */
} head_scan;

static int is_tchar(unsigned char c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The bytes from `end` (the NUL that ended a line's value) to `next` must be that line's own
 * terminator as MHD leaves it: CRLF or LF, each byte replaced by NUL. A NUL byte inside the
 * value leaves the rest of the line between them; a folded line moves the value elsewhere. */
static int line_ends_at(const char *end, const char *next, int lines)
{
    if (next < end + lines || next > end + 2 * lines) return 0;
    for (const char *p = end; p < next; p++)
        if (*p) return 0;
    return 1;
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t ks,
                                   const char *value, size_t vs)
{
    (void)kind;
    head_scan *h = cls;
    if (ks == 14 && !strncasecmp(key, "Content-Length", 14)) h->n_cl++;
    else if (ks == 4 && !strncasecmp(key, "Host", 4)) h->n_host++;
    else if (ks == 13 && !strncasecmp(key, "Authorization", 13)) h->n_auth++;
    else if (ks == 17 && !strncasecmp(key, "Transfer-Encoding", 17)) {
        h->n_te++;
        for (const char *p = value; *p;) { /* a list of codings: chunked, or none we know */
            while (*p == ' ' || *p == '\t' || *p == ',') p++;
            if (!*p) break;
            const char *t = p;
            while (*p && *p != ',' && *p != ';') p++;
            const char *e = p;
            while (e > t && (e[-1] == ' ' || e[-1] == '\t')) e--;
            /* anything but a bare "chunked" (another coding, parameters, a lone ";") */
            if (e - t == 7 && !strncasecmp(t, "chunked", 7) && *p != ';') h->te_chunked++;
            else h->te_other++;
            while (*p && *p != ',') p++; /* the parameters: each step moves on */
        }
    }
    if (ks == 0) h->bad_name = 1;
    for (size_t i = 0; i < ks; i++)
        if (!is_tchar((unsigned char)key[i])) h->bad_name = 1;
    for (size_t i = 0; i < vs; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F) h->ctl = 1; /* a bare CR among them */
    }
    /* the layout MHD 0.9.75 leaves in its read buffer: "name\0" (the colon), blanks, value, the
     * line's terminator as NULs, then the next line */
    if (!line_ends_at(h->line_end, key, 1) || key[ks] != 0) h->misframed = 1;
    for (const char *p = key + ks + 1; !h->misframed && p < value; p++)
        if (*p != ' ' && *p != '\t') h->misframed = 1;
    if (value < key + ks + 1) h->misframed = 1;
    h->line_end = value + vs;
    return MHD_YES;
}

/* 0, or the error the request's head earns (r->err set, and the connection will close). */
static int check_head(http_req *r, const char *method, const char *version)
{
    head_scan h = {0};
    h.line_end = version + strlen(version); /* the request line's end */
    MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, scan_header, &h);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    /* the last line, then the empty line that ends the head */
    if (!ci || !line_ends_at(h.line_end, method + ci->header_size, 2)) h.misframed = 1;
    const char *why = NULL;
    if (h.misframed) why = "a header line holds a NUL byte or is folded (obs-fold)";
    else if (h.bad_name) why = "a header name is not a token";
    else if (h.ctl) why = "a header value holds a control character (a bare CR?)";
    else if (h.n_cl > 1) why = "the request has more than one Content-Length";
    else if (h.n_cl && h.n_te) why = "the request has both Content-Length and Transfer-Encoding";
    else if (h.n_auth > 1) why = "the request has more than one Authorization header";
    else if (h.n_host > 1 || (h.n_host == 0 && !strcmp(version, MHD_HTTP_VERSION_1_1)))
        why = "an HTTP/1.1 request needs exactly one Host header";
    if (why) {
        api_fail(&r->err, API_E_BAD_REQUEST, "%s; the connection is closed", why);
        return -1;
    }
    if (h.te_other) {
        api_fail(&r->err, API_E_NOT_IMPLEMENTED,
                 "Transfer-Encoding: this server implements only \"chunked\"; the connection is closed");
        return -1;
    }
    if (h.n_te && (h.te_chunked != 1 || h.n_te > 1)) {
        api_fail(&r->err, API_E_BAD_REQUEST, "Transfer-Encoding must be \"chunked\", once; the connection is closed");
        return -1;
    }
    return 0;
}

/* ---- request ids, auth, CORS ------------------------------------------------------------------ */

static void set_request_id(http_req *r)
{
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
    size_t n = 0;
    if (h) {
        for (; h[n] && n < 64; n++)
            if (!isalnum((unsigned char)h[n]) && !strchr("-_.:", h[n])) break;
        if (h[n] == 0 && n > 0) {
            memcpy(r->request_id, h, n + 1);
            return;
        }
    }
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (unsigned char)rand();
    for (size_t i = 0; i < sizeof rnd; i++) sprintf(r->request_id + 2 * i, "%02x", rnd[i]);
}

/* Constant-time comparison: the time depends only on the lengths, never on where they differ. */
static int ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return diff == 0;
}

/* The index of the API key the request carries; -1 when it carries none that is accepted;
 * AUTH_NONE when the server has no keys. */
#define AUTH_NONE (-2)
static int api_key_index(http_req *r)
{
    const srv_config *c = &r->app->cfg;
    if (c->n_api_keys == 0) return AUTH_NONE;
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return -1;
    int index = -1;
    for (int i = 0; i < c->n_api_keys; i++) {
        int eq = ct_equal(h + 7, c->api_keys[i]); /* every key compared, whichever matches */
        index = eq ? i : index;
    }
    return index;
}

static int authorized(http_req *r) { return api_key_index(r) != -1; }

/* The request's client for the per-client limits: its API key, or its IPv4 address when the
 * server has no keys. */
static uint64_t client_id(http_req *r)
{
    int key = api_key_index(r);
    if (key >= 0) return srv_client_key(key);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr_in *sa = ci ? (const struct sockaddr_in *)ci->client_addr : NULL;
    return srv_client_addr(sa && sa->sin_family == AF_INET ? sa->sin_addr.s_addr : 0);
}

/* Refuses a request over one of its client's limits: 429 overloaded, Retry-After (respond). */
static void client_limit_error(http_req *r, double limit, const char *what, const char *setting)
{
    srv_metrics_reject(&r->app->metrics, REJ_CLIENT_LIMIT);
    char who[64] = "this API key";
    if (r->app->cfg.n_api_keys == 0) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        char ip[INET_ADDRSTRLEN] = "?";
        if (ci && ci->client_addr->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, ip, sizeof ip);
        snprintf(who, sizeof who, "this client address (%s)", ip);
    }
    api_fail(&r->err, API_E_OVERLOADED, "%s is at its limit of %.0f %s (%s); retry when one ends", who, limit, what,
             setting);
    r->err.extra_key[0] = "limit";
    r->err.extra_val[0] = limit;
}

static void check_origin(http_req *r)
{
    const srv_config *c = &r->app->cfg;
    const char *o = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
    /* "null" is the origin of sandboxed frames, file: pages and some redirects: any page can
     * send it, so echoing it would open the API to every page, whatever the list says */
    if (!o || strlen(o) >= sizeof r->origin || !strcmp(o, "null")) return;
    for (int i = 0; i < c->n_cors_origins; i++)
        if (!strcmp(c->cors_origins[i], "*") || !strcmp(c->cors_origins[i], o)) {
            snprintf(r->origin, sizeof r->origin, "%s", o);
            r->cors = 1;
        }
}

/* ---- the GET routes ------------------------------------------------------------------------- */

static uint64_t reserved_now(srv_app *app)
{
    pthread_mutex_lock(&app->metrics.lock);
    uint64_t r = app->metrics.reserved;
    pthread_mutex_unlock(&app->metrics.lock);
    return r;
}

static uint64_t cache_bytes(srv_app *app)
{
    srv_cache_stats st;
    srv_cache_stats_get(app->cache, &st);
    return st.bytes;
}

static enum MHD_Result answer_health(http_req *r)
{
    return respond(r, 200, "application/json", strdup("{\"status\":\"ok\"}"), NULL);
}

static enum MHD_Result answer_ready(http_req *r)
{
    srv_app *app = r->app;
    const char *why = NULL;
    if (!atomic_load(&app->ready)) why = "loading";
    else if (atomic_load(&app->draining)) why = "draining";
    else if (app->cfg.memory_budget - reserved_now(app) + cache_bytes(app) < srv_min_reservation(app))
        why = "memory budget exhausted"; /* (the state cache gives way to requests) */
    else if (srv_queue_len(app) >= app->cfg.max_queue) why = "queue full";
    if (why) {
        api_fail(&r->err, API_E_NOT_READY, "not ready: %s", why);
        return respond_error(r, NULL);
    }
    return respond(r, 200, "application/json", strdup("{\"status\":\"ready\"}"), NULL);
}

static enum MHD_Result answer_info(http_req *r)
{
    return respond(r, 200, "application/json", srv_render_info(r->app), NULL);
}

static enum MHD_Result answer_metrics(http_req *r)
{
    srv_app *app = r->app;
    srv_cache_stats st;
    srv_cache_stats_get(app->cache, &st);
    srv_metrics_state_cache(&app->metrics, &st);
    return respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", srv_metrics_render(&app->metrics), NULL);
}

/* The playground's files (server/assets.h). */
static enum MHD_Result answer_page(http_req *r)
{
    for (const srv_asset *a = srv_assets; a->path; a++) {
        if (strcmp(a->path, r->url)) continue;
        struct MHD_Response *resp = MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", a->content_type);
        MHD_add_response_header(resp, "X-Request-Id", r->request_id);
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        /* nothing but this server's own files and API: no inline code, no other origin */
        MHD_add_response_header(resp, "Content-Security-Policy",
                                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
        r->status = 200;
        r->resp_bytes = a->len;
        return queue(r, 200, resp);
    }
    return fail(r, API_E_NOT_FOUND, "%s", "no such page");
}

static enum MHD_Result answer_models(http_req *r)
{
    srv_app *app = r->app;
    char ids[2][256];
    api_model_card cards[2];
    int n = 0;
    if (app->generator) {
        srv_model_id(app->cfg.generate_model, ids[n], sizeof ids[n]);
        cards[n] = (api_model_card){ids[n], "causal-lm", app->started_unix};
        n++;
    }
    if (app->classifier) {
        srv_model_id(app->cfg.classify_model, ids[n], sizeof ids[n]);
        cards[n] = (api_model_card){ids[n], "classification", app->started_unix};
        n++;
    }
    return respond(r, 200, "application/json", api_render_models(cards, n), NULL);
}

/* ---- the endpoint table (server/routes.h) ------------------------------------------------------ */

#define GET(path, label, auth, health, answer) {path, "GET", label, auth, health, NULL, 0, SRV_BODY_NONE, answer}
#define POST(path, label, job, variant, body) {path, "POST", label, SRV_AUTH_KEY, 0, job, variant, body, NULL}
const srv_route SRV_ROUTES[] = {
    GET("/health", "health", SRV_AUTH_PUBLIC, 1, answer_health),
    GET("/ready", "ready", SRV_AUTH_PUBLIC, 1, answer_ready),
    GET("/metrics", "metrics", SRV_AUTH_METRICS, 1, answer_metrics),
    GET("/info", "info", SRV_AUTH_KEY, 0, answer_info),
    POST("/classify", "classify", &SRV_JOB_CLASSIFY, 0, SRV_BODY_JSON_OR_RAW),
    POST("/predict", "classify", &SRV_JOB_CLASSIFY, 0, SRV_BODY_JSON_OR_RAW),
    POST("/generate", "generate", &SRV_JOB_GENERATE, SRV_GEN_TGI, SRV_BODY_JSON),
    POST("/generate_stream", "generate", &SRV_JOB_GENERATE, SRV_GEN_TGI_STREAM, SRV_BODY_JSON),
    POST("/v1/completions", "completions", &SRV_JOB_GENERATE, SRV_GEN_COMPLETIONS, SRV_BODY_JSON),
    POST("/v1/chat/completions", "chat_completions", &SRV_JOB_GENERATE, SRV_GEN_CHAT, SRV_BODY_JSON),
    GET("/v1/models", "models", SRV_AUTH_KEY, 0, answer_models),
    POST("/score", "score", &SRV_JOB_SCORE, 0, SRV_BODY_JSON),
    /* the playground: public, since it asks for the API key itself */
    GET("/", "page", SRV_AUTH_PUBLIC, 0, answer_page),
    GET("/app.js", "page", SRV_AUTH_PUBLIC, 0, answer_page),
    GET("/app.css", "page", SRV_AUTH_PUBLIC, 0, answer_page),
};
#undef GET
#undef POST
const size_t SRV_N_ROUTES = sizeof SRV_ROUTES / sizeof SRV_ROUTES[0];

/* ---- engine requests ------------------------------------------------------------------------ */

/* Counts and logs a request once both are over: MHD's part (the answer sent, or the client
 * gone) and the job's (run_time and a stream's outcome are known only then). A stream answers
 * 200 before it runs; one that ends in an error event (a deadline, a shutdown, an engine error)
 * is counted and logged with that error's status, and the log line names the error. */
static void log_request(srv_app *app, http_req *r)
{
    srv_job *j = &r->job;
    int status = r->done_status;
    const char *stream_error = NULL;
    /* a stream whose client left ends "completed" once its last bytes reach the socket buffer */
    if (atomic_load(&j->cancel_reason) == CANCEL_DISCONNECT) status = 499;
    else if (status == 200 && r->ph == PH_STREAM && j->rc != 0) {
        api_error e;
        api_err k = srv_job_error(j, &e);
        status = k == API_OK ? 499 : api_err_status(k);
        if (k != API_OK) stream_error = api_err_type(k);
    }
    int engine = r->route && r->route->job;
    srv_metrics_request(&app->metrics, r->label, engine, status, r->done_dt);
    if (engine || status >= 400) {
        double wait = j->t_start > 0 ? j->t_start - j->t_submit : 0, run = j->t_end > j->t_start ? j->t_end - j->t_start : 0;
        char plan[64] = "";
        if (job_plan(j)) snprintf(plan, sizeof plan, ",\"plan\":\"%s\",\"lanes\":%d", job_plan(j), j->lanes);
        srv_log(status >= 500 ? LOG_WARN : LOG_INFO, "request",
                "\"request_id\":\"%s\",\"endpoint\":\"%s\",\"status\":%d,\"bytes_in\":%zu,\"bytes_out\":%zu,"
                "\"queue_wait\":%.6f,\"run_time\":%.6f,\"duration\":%.6f%s%s%s%s",
                r->request_id, r->label, status, r->body_len, r->resp_bytes, wait, run, r->done_dt,
                stream_error ? ",\"stream_error\":\"" : "", stream_error ? stream_error : "", stream_error ? "\"" : "", plan);
    }
}

/* The loop thread, once a job is over (run or not). */
static void on_job_done(srv_job *job)
{
    http_req *r = job->owner;
    /* the job's slot goes back first: r lives at least until job_active is 0 */
    srv_guard_job_end(r->app->http->guard, r->job_client);
    r->job_client = NULL;
    pthread_mutex_lock(&r->life);
    /* Read everything needed before job_active goes to 0: from then on, a started stream's
     * request belongs to MHD, whose thread may free it at once (a client that left). Lock
     * order: life, then stream (nothing takes them the other way round). */
    int streaming = 0;
    if (job->stream) {
        pthread_mutex_lock(&job->stream->lock);
        streaming = job->stream->started; /* the reader ends the answer */
        pthread_mutex_unlock(&job->stream->lock);
    }
    r->job_active = 0;
    int orphaned = r->orphaned;
    pthread_mutex_unlock(&r->life);
    if (orphaned) { /* MHD ended the request already: nobody to answer */
        log_request(r->app, r);
        free_req(r);
        return;
    }
    if (streaming) return; /* r may be gone already: do not touch it */
    /* not streaming: the connection is suspended, so MHD cannot end the request meanwhile */
    r->ph = PH_ANSWER;
    MHD_resume_connection(r->conn); /* the last touch of the loop thread */
}

/* Any thread: the stream started, or has data for a reader that suspended the connection. */
static void on_stream(srv_job *job)
{
    http_req *r = job->owner;
    MHD_resume_connection(r->conn);
}

/* MHD's thread: hands the next bytes of the event stream to MHD, or suspends for more. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    http_req *r = cls;
    srv_stream *st = &r->stream;
    pthread_mutex_lock(&st->lock);
    size_t n = st->len - st->off;
    if (n) {
        if (n > max) n = max;
        memcpy(buf, st->buf + st->off, n);
        st->off += n;
        r->resp_bytes += n;
    } else if (st->finished) {
        pthread_mutex_unlock(&st->lock);
        return MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Suspended under the lock: whoever appends next sees `waiting` only after this, so
         * its resume always follows the suspend. (Appenders never hold this lock while they
         * call into MHD, so nothing can deadlock on it.) */
        st->waiting = 1;
        MHD_suspend_connection(r->conn);
    }
    pthread_mutex_unlock(&st->lock);
    return (ssize_t)n;
}

static enum MHD_Result start_stream(http_req *r)
{
    r->ph = PH_STREAM;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, NULL);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* nginx: do not buffer the stream */
    add_reserved_header(r, resp);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    if (r->cors) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
        MHD_add_response_header(resp, "Vary", "Origin");
    }
    r->status = 200;
    enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result answer_job(http_req *r)
{
    srv_job *job = &r->job;
    if (job->rc == 0) return respond(r, 200, "application/json", job->kind->render(&r->q), NULL);
    if (srv_job_error(job, &r->err) == API_OK) return MHD_NO; /* the client left: close (499) */
    return respond_error(r, NULL);
}

/* Queues the prepared job and suspends the connection; 429 when the queue is full. */
static enum MHD_Result submit(http_req *r)
{
    srv_app *app = r->app;
    srv_job *job = &r->job;
    job->t_submit = srv_now();
    job->deadline = job->t_submit + r->timeout;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    job->client_fd = ci ? ci->connect_fd : -1;
    job->on_done = on_job_done;
    job->owner = r;
    if (r->client) { /* one of its client's job slots, held until the job is done */
        if (srv_guard_job_begin(app->http->guard, r->client)) {
            client_limit_error(r, app->cfg.max_queued_per_key, "jobs queued or running", "max-queued-per-key");
            return respond_error(r, NULL);
        }
        r->job_client = r->client;
    }
    MHD_suspend_connection(r->conn);
    r->ph = PH_QUEUED;
    pthread_mutex_lock(&r->life);
    r->job_active = 1;
    pthread_mutex_unlock(&r->life);
    if (srv_submit(app, job) != 0) {
        pthread_mutex_lock(&r->life);
        r->job_active = 0;
        pthread_mutex_unlock(&r->life);
        srv_guard_job_end(app->http->guard, r->job_client);
        r->job_client = NULL;
        srv_metrics_reject(&app->metrics, REJ_QUEUE_FULL);
        api_fail(&r->err, API_E_OVERLOADED, "the queue is full (%d waiting); retry later", app->cfg.max_queue);
        r->ph = PH_ANSWER;
        MHD_resume_connection(r->conn);
        return MHD_YES;
    }
    r->inflight = 1;
    srv_metrics_inflight(&app->metrics, 1);
    return MHD_YES;
}

/* A query argument of the request (srv_request's arg). */
static const char *query_arg(void *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
}

/* The body is complete: the route's job kind parses it (the body, once parsed, is freed: the
 * parsed input stands in for it; a raw document is the input itself) and admits it; then it is
 * queued and the connection suspended. */
static enum MHD_Result start_job(http_req *r)
{
    const srv_job_kind *kind = r->route->job;
    srv_request *q = &r->q;
    *q = (srv_request){.app = r->app, .variant = r->route->variant, .body = r->body ? r->body : "",
                       .body_len = r->body_len, .raw = r->raw, .arg = query_arg, .arg_cls = r->conn,
                       .request_id = r->request_id, .timeout = r->timeout,
                       .timeout_from_client = r->timeout_from_client, .err = &r->err, .job = &r->job,
                       .stream = &r->stream};
    if (kind->parse(q) != API_OK) return respond_error(r, NULL);
    if (!r->raw) parsed(r);
    if (kind->admit(q) != API_OK) return respond_error(r, NULL);
    r->job.kind = kind;
    if (r->job.stream) r->job.on_stream = on_stream;
    return submit(r);
}

/* A raw document for /classify: application/octet-stream or text/plain (any parameters). */
static int is_raw(const char *ctype)
{
    if (!ctype) return 0;
    static const char *const raw[] = {"application/octet-stream", "text/plain"};
    for (size_t i = 0; i < 2; i++) {
        size_t n = strlen(raw[i]);
        if (!strncasecmp(ctype, raw[i], n) && (ctype[n] == 0 || ctype[n] == ';' || ctype[n] == ' ')) return 1;
    }
    return 0;
}

static int is_json(const char *ctype)
{
    if (!ctype) return 1; /* absent: assume JSON, as curl users expect with -d and a JSON body */
    size_t n = strlen("application/json");
    return strncasecmp(ctype, "application/json", n) == 0 && (ctype[n] == 0 || ctype[n] == ';' || ctype[n] == ' ');
}

/* The connection's clock (its socket context, set by on_connection), or NULL. */
static srv_conn *clock_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    const http_listener *l = cls;
    srv_app *app = l->app;
    srv_guard *guard = app->http->guard;
    http_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        pthread_mutex_init(&r->life, NULL);
        pthread_mutex_init(&r->stream.lock, NULL);
        *con_cls = r;
        r->app = app;
        r->conn = conn;
        r->clock = clock_of(conn);
        srv_guard_conn_phase(guard, r->clock, CONN_BUSY); /* the head is in; BODY below */
        r->t0 = srv_now();
        r->label = "other";
        r->url = url;
        set_request_id(r);
        check_origin(r);
        if (check_head(r, method, version)) {
            r->close = 1;
            return respond_error(r, NULL);
        }
        const char *cl0 = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        r->no_body = !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding") &&
                     (!cl0 || strtoull(cl0, NULL, 10) == 0);

        const srv_route *rt = NULL;
        int path_known = 0;
        char allow[64] = "";
        for (const srv_route *ro = SRV_ROUTES; ro < SRV_ROUTES + SRV_N_ROUTES; ro++) {
            if (strcmp(ro->path, url) || (l->health && !ro->health)) continue;
            path_known = 1;
            snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s", allow[0] ? ", " : "", ro->method);
            if (!strcmp(ro->method, method) || (!strcmp(method, "HEAD") && !strcmp(ro->method, "GET"))) rt = ro;
        }
        if (!strcmp(url, "/metrics")) r->cors = 0; /* for Prometheus, never for another origin's page */
        if (srv_guard_conn_limited(guard, r->clock)) { /* one of the reserve: probes only, then closed */
            r->close = 1;
            MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)RESERVE_SECONDS);
            if (!rt || !rt->health || !strcmp(method, "OPTIONS")) {
                api_fail(&r->err, API_E_NOT_READY, "the server has every connection it takes (max-connections %d); "
                         "this one, kept past them for /health, /ready and /metrics, serves nothing else; retry",
                         app->cfg.max_connections);
                return respond_error(r, NULL);
            }
        }
        if (!strcmp(method, "OPTIONS")) { /* CORS preflight, answered before auth */
            r->label = "preflight";
            struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
            if (!resp) return MHD_NO;
            MHD_add_response_header(resp, "X-Request-Id", r->request_id);
            if (r->cors && path_known) {
                MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
                MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow);
                MHD_add_response_header(resp, "Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-Id, X-Request-Timeout");
                MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
                MHD_add_response_header(resp, "Vary", "Origin");
            }
            r->status = path_known ? 204 : 404;
            return queue(r, (unsigned)r->status, resp);
        }
        if (!rt) {
            if (path_known) {
                api_fail(&r->err, API_E_METHOD, "%s is not allowed on %s; use %s", method, url, allow);
                return respond_error(r, allow);
            }
            if (l->health) return fail(r, API_E_NOT_FOUND, "%s", "the health port serves /health, /ready and /metrics only");
            return fail(r, API_E_NOT_FOUND, "no route %s", url);
        }
        r->route = rt;
        r->label = rt->label;
        int key = rt->auth == SRV_AUTH_KEY || (rt->auth == SRV_AUTH_METRICS && app->cfg.metrics_auth);
        if (key && !authorized(r))
            return fail(r, API_E_UNAUTHORIZED, "%s", "a valid API key is required: Authorization: Bearer <key>");
        if (!rt->job) return rt->answer(r);

        /* POST: the engine endpoints */
        if (atomic_load(&app->draining)) {
            srv_metrics_reject(&app->metrics, REJ_DRAINING);
            return fail(r, API_E_SHUTTING_DOWN, "%s", "the server is shutting down; retry on another replica");
        }
        const char *no_model = srv_job_no_model(app, rt->job);
        if (no_model) return fail(r, API_E_NO_MODEL, "%s", no_model);
        /* one of its client's request slots, held until the request ends (completed) */
        if (srv_guard_request_begin(guard, client_id(r), &r->client)) {
            client_limit_error(r, app->cfg.max_requests_per_key, "requests open", "max-requests-per-key");
            return respond_error(r, NULL);
        }
        const char *ctype = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
        r->raw = rt->body == SRV_BODY_JSON_OR_RAW && is_raw(ctype);
        if (!r->raw && !is_json(ctype))
            return fail(r, API_E_MEDIA_TYPE, "%s",
                        r->route->body == SRV_BODY_JSON_OR_RAW
                            ? "the body must be JSON (Content-Type: application/json) or one raw document "
                              "(application/octet-stream or text/plain)"
                            : "the body must be JSON: Content-Type: application/json");
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > app->cfg.max_body_bytes) {
            api_fail(&r->err, API_E_TOO_LARGE, "the body is %s bytes; max-body-bytes is %llu", cl,
                     (unsigned long long)app->cfg.max_body_bytes);
            return respond_error(r, NULL); /* before a byte of the body is read */
        }
        if (cl) r->body_expect = (size_t)strtoull(cl, NULL, 10);
        /* the declared body is reserved before a byte of it is read: held by this request
         * until it is freed (the parsed input stands in for the body once parsed) */
        if (r->body_expect) {
            uint64_t need = (uint64_t)r->body_expect + 1;
            if (need > app->http->bodies_cap) return body_never_fits(r, need);
            int rc = hold(r, need);
            if (rc) {
                hold_error(r, rc, "this body");
                return respond_error(r, NULL);
            }
        }
        r->timeout = app->cfg.request_timeout;
        const char *to = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Timeout");
        if (to) {
            char *end;
            double t = strtod(to, &end);
            if (end == to || *end || !(t > 0) || t > app->cfg.max_request_timeout) {
                api_fail(&r->err, API_E_VALIDATION, "X-Request-Timeout must be seconds in (0, %g]", app->cfg.max_request_timeout);
                return respond_error(r, NULL);
            }
            r->timeout = t;
            r->timeout_from_client = 1;
        }
        r->ph = PH_BODY;
        if (!r->no_body) srv_guard_conn_phase(guard, r->clock, CONN_BODY);
        return MHD_YES;
    }

    if (r->ph == PH_EARLY) { /* the second call of a request without a body: answer now */
        if (*upload_size) { /* cannot happen (no body), but never leave upload data unconsumed */
            *upload_size = 0;
            return MHD_YES;
        }
        struct MHD_Response *resp = r->early;
        r->early = NULL;
        r->ph = PH_DONE;
        enum MHD_Result ok = MHD_queue_response(conn, r->early_status, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    if (r->ph == PH_BODY && *upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        srv_guard_conn_body(guard, r->clock, n);
        if (r->err.kind) return MHD_YES;
        if (r->body_len + n > app->cfg.max_body_bytes) { /* chunked: Content-Length was checked */
            api_fail(&r->err, API_E_TOO_LARGE, "the body is larger than max-body-bytes (%llu)",
                     (unsigned long long)app->cfg.max_body_bytes);
            return answer_mid_body(r);
        }
        if (r->body_len + n + 1 > r->body_cap) {
            /* the declared length at once (no doubling: a large raw body is held once, exactly),
             * else double */
            size_t cap = r->body_cap ? r->body_cap : r->body_expect >= n ? r->body_expect + 1 : 4096;
            while (cap < r->body_len + n + 1) cap *= 2;
            /* a doubling past what a body may hold, for a body that fits it: as much as fits */
            if (cap > app->http->bodies_cap && r->body_len + n + 1 <= app->http->bodies_cap) cap = (size_t)app->http->bodies_cap;
            if (cap > r->held) { /* chunked, or more than declared: reserve the growth first */
                if (cap > app->http->bodies_cap) {
                    body_never_fits(r, cap);
                    return answer_mid_body(r);
                }
                int rc = hold(r, cap - r->held);
                if (rc) {
                    hold_error(r, rc, "this body");
                    return answer_mid_body(r);
                }
            }
            char *nb = realloc(r->body, cap); /* a client-controlled size: try, never abort */
            if (!nb) {
                api_fail(&r->err, API_E_ENGINE_MEMORY, "out of memory reading the body");
                return MHD_YES;
            }
            r->body = nb;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
        return MHD_YES;
    }
    if (r->ph == PH_BODY) {
        srv_guard_conn_phase(guard, r->clock, CONN_BUSY);
        if (r->err.kind) return respond_error(r, NULL);
        if (!r->raw && hold_parse(r)) return respond_error(r, NULL); /* every body but a raw document is JSON */
        return start_job(r);
    }
    if (r->ph == PH_QUEUED && r->job.stream) {
        pthread_mutex_lock(&r->stream.lock);
        int started = r->stream.started;
        pthread_mutex_unlock(&r->stream.lock);
        if (started) return start_stream(r);
    }
    if (r->ph == PH_ANSWER) {
        r->ph = PH_DONE;
        if (r->err.kind) return respond_error(r, NULL);
        return answer_job(r);
    }
    return MHD_YES; /* a spurious call while queued */
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    const http_listener *l = cls;
    srv_app *app = l->app;
    srv_guard *guard = app->http->guard;
    srv_conn *clock = clock_of(conn);
    srv_guard_conn_phase(guard, clock, CONN_WAIT); /* for the next request, if the connection stays */
    http_req *r = *con_cls;
    if (!r) return;
    r->done_dt = srv_now() - r->t0;
    r->done_status = r->status ? r->status : 499; /* the client left before an answer was sent */
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status && !r->raw_answer) r->done_status = 499;
    /* closed by the guard for sending its body too slowly: logged and counted as 408 */
    if (!r->status && srv_guard_conn_cut(guard, clock) == SRV_CUT_BODY) r->done_status = 408;
    srv_guard_request_end(guard, r->client);
    r->client = NULL;
    if (r->inflight) srv_metrics_inflight(&app->metrics, -1);
    *con_cls = NULL;
    pthread_mutex_lock(&r->life);
    int active = r->job_active;
    if (active) { /* on_job_done logs and frees it */
        r->orphaned = 1;
        int finished = 0;
        if (r->job.stream) {
            pthread_mutex_lock(&r->stream.lock);
            finished = r->stream.finished;
            pthread_mutex_unlock(&r->stream.lock);
        }
        if (!finished || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            /* a worker still runs it for a client that left mid-stream: stop it */
            int none = CANCEL_NONE;
            atomic_compare_exchange_strong(&r->job.cancel_reason, &none, CANCEL_DISCONNECT);
            atomic_store(&r->job.cancel, 1);
        }
    }
    pthread_mutex_unlock(&r->life);
    if (!active) {
        log_request(app, r);
        free_req(r);
    }
}

/* MHD's thread of either listener: a connection starts (its clock, in WAIT) or is closed. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    const http_listener *l = cls;
    struct srv_http *h = l->app->http;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        srv_guard_conn_close(h->guard, *socket_context);
        *socket_context = NULL;
        if (!l->health) atomic_fetch_sub(&h->main_conns, 1);
        return;
    }
    const union MHD_ConnectionInfo *fd = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ad = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr_in *sa = ad ? (const struct sockaddr_in *)ad->client_addr : NULL;
    srv_conn *c = fd ? srv_guard_conn_open(h->guard, fd->connect_fd, sa && sa->sin_family == AF_INET ? sa->sin_addr.s_addr : 0)
                     : NULL;
    *socket_context = c;
    /* past max-connections: one of the reserve (the listener's top comment) */
    if (!l->health && atomic_fetch_add(&h->main_conns, 1) >= l->app->cfg.max_connections)
        srv_guard_conn_limit(h->guard, c, RESERVE_SECONDS);
}

/* MHD's thread: a request line is in; the head's clock starts. (Called before the handler's
 * first call; what it returns would be that call's *con_cls, so NULL.) */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)uri;
    const http_listener *l = cls;
    srv_guard_conn_phase(l->app->http->guard, clock_of(conn), CONN_HEAD);
    return NULL;
}

/* Enough open files for every connection both listeners take, models and pipes besides: the
 * soft limit is raised as far as the hard one allows (it is often 1024, as many as the default
 * max-connections). */
static void raise_file_limit(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur >= need) return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) || want < need)
        srv_log(LOG_WARN, "the open-file limit is below what max-connections needs",
                "\"limit\":%llu,\"needed\":%llu", (unsigned long long)want, (unsigned long long)need);
}

/* Each connection's memory pool (its read buffer, the parsed head): libmicrohttpd 0.9.75 mallocs
 * a pool of 32 KiB or less and maps a larger one on its own. Mapped, a connection's memory goes
 * back to the system when it closes, and costs nothing until written: 1,100 idle connections
 * left their malloc'd pools' pages scattered in the listener thread's heap, which kept the
 * idle RSS after make soak-hostile's flood 400 KiB up. The limits on a head are the same. */
#define CONNECTION_POOL (36 * 1024)

/* The health listener's connections: enough for every prober, never the main listener's. */
#define HEALTH_CONNECTIONS 64
#define HEALTH_CONNECTIONS_PER_IP 16

static struct MHD_Daemon *listen_on(srv_app *app, http_listener *l, int port, unsigned limit, unsigned per_ip)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, app->cfg.host, &addr.sin_addr) != 1) {
        srv_log(LOG_ERROR, "bad host: give an IPv4 address such as 127.0.0.1 or 0.0.0.0", NULL);
        return NULL;
    }
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME,
                                            (uint16_t)port, NULL, NULL, handler, l,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, l,
                                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, l,
                                            MHD_OPTION_URI_LOG_CALLBACK, on_request_line, l,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)app->cfg.connection_timeout,
                                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_POOL,
                                            MHD_OPTION_CONNECTION_LIMIT, limit,
                                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
                                            MHD_OPTION_END);
    if (!d) srv_log(LOG_ERROR, "cannot listen", "\"host\":\"%s\",\"port\":%d", app->cfg.host, port);
    return d;
}

static int bound_port(struct MHD_Daemon *d, int asked)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return di ? di->port : asked;
}

int srv_http_start(srv_app *app)
{
    const srv_config *c = &app->cfg;
    struct srv_http *h = calloc(1, sizeof *h);
    if (!h) return -1;
    app->http = h;
    app->health_port = -1;
    h->main = (http_listener){app, 0};
    h->health = (http_listener){app, 1};
    h->bodies_cap = srv_request_budget(app) / 2; /* after the scheduler's fixed reservation */
    /* a client's share of it, for bodies held beside its first: a quarter, so that four clients
     * at least find room */
    uint64_t share = c->max_body_bytes_per_client ? c->max_body_bytes_per_client : h->bodies_cap / 4;
    /* the WAIT bound is a second past the idle timeout, so that libmicrohttpd closes an idle
     * connection first and the guard only one that trickles its request line */
    srv_guard_limits lim = {(double)c->connection_timeout + 1, c->header_timeout, c->body_timeout,
                            (double)c->body_min_rate, c->max_requests_per_key, c->max_queued_per_key, share};
    if (srv_guard_start(&h->guard, &lim, &app->metrics)) goto fail;
    raise_file_limit((rlim_t)c->max_connections + CONNECTION_RESERVE + (c->health_port >= 0 ? HEALTH_CONNECTIONS : 0) + 256);
    app->httpd = listen_on(app, &h->main, c->port, (unsigned)(c->max_connections + CONNECTION_RESERVE),
                           (unsigned)c->max_connections_per_ip);
    if (!app->httpd) goto fail;
    app->port = bound_port(app->httpd, c->port);
    if (c->health_port >= 0) {
        h->health_daemon = listen_on(app, &h->health, c->health_port, HEALTH_CONNECTIONS, HEALTH_CONNECTIONS_PER_IP);
        if (!h->health_daemon) goto fail;
        app->health_port = bound_port(h->health_daemon, c->health_port);
    }
    return 0;
fail:
    srv_http_stop(app);
    return -1;
}

void srv_http_stop(srv_app *app)
{
    struct srv_http *h = app->http;
    if (app->httpd) MHD_stop_daemon(app->httpd);
    app->httpd = NULL;
    if (!h) return;
    if (h->health_daemon) MHD_stop_daemon(h->health_daemon);
    srv_guard_stop(h->guard); /* after the listeners: they closed every connection */
    free(h);
    app->http = NULL;
}
