/* guard.c - see guard.h: the connections' clocks, the watchdog that closes the slow ones, and
 * the per-client counts. */
#include "server/guard.h"

#include <arpa/inet.h>
#include <assert.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#include "server/server.h"

#define N_BUCKETS 1024          /* client hash buckets: at most one client per connection */
#define WATCH_PERIOD_NS 100000000L /* the watchdog looks every 0.1 s */
#define GONE_SECONDS 1.0           /* a client gone this long, with no progress, is cut */
#define QUIET_SECONDS 1.0          /* quiet this long after requests: the heaps are trimmed */

struct srv_conn {
    int fd;
    uint32_t addr;        /* IPv4, network order */
    srv_conn_phase phase;
    double since;         /* monotonic seconds: when the phase began */
    double opened;        /* monotonic seconds: when the connection began */
    double limit;         /* seconds from `opened` that every phase but BUSY may last (a
                             reserve connection); 0: none */
    uint64_t body_bytes;  /* BODY: received so far */
    srv_cut cut;          /* why the watchdog closes it, or SRV_CUT_NONE */
    int shut;             /* the watchdog shut it down */
    double gone_since;    /* the client closed its side, nothing unread, no progress since: 0
                             when not */
    double gone_mark;     /* `since` + body_bytes when gone_since was set: progress moves it */
    srv_conn *prev, *next;
};

struct srv_client {
    uint64_t id;
    int requests, jobs;
    uint64_t body_bytes;  /* bodies and parsed input held in the ledger */
    srv_client *next; /* bucket chain */
};

struct srv_guard {
    srv_guard_limits lim;
    srv_metrics *metrics;
    pthread_mutex_t lock;  /* every field below */
    srv_conn *conns;       /* open connections, newest first */
    int n_conns;
    struct pollfd *polls;  /* (polls_cap) the watchdog's scratch */
    srv_conn **polled;     /* (polls_cap) the connection of each */
    int polls_cap;
    srv_client *buckets[N_BUCKETS];
    int n_clients;
    uint64_t requests;     /* requests whose head came in (entered BUSY), ever */
    uint64_t trimmed_at;   /* `requests` at the last trim */
    double quiet_since;    /* no request in progress since (0: there is one) */
    pthread_cond_t wake;   /* stop */
    int stop;
    pthread_t thread;
};

/* When c's phase is over its time (monotonic seconds); INFINITY in BUSY. Lock held. */
static double deadline(const srv_guard *g, const srv_conn *c)
{
    double d = INFINITY;
    switch (c->phase) {
    case CONN_WAIT: d = c->since + g->lim.wait_timeout; break;
    case CONN_HEAD: d = c->since + g->lim.header_timeout; break;
    case CONN_BODY:
        d = c->since + g->lim.body_timeout + (g->lim.body_min_rate > 0 ? (double)c->body_bytes / g->lim.body_min_rate : 0);
        break;
    case CONN_BUSY: return INFINITY;
    }
    return c->limit > 0 ? fmin(d, c->opened + c->limit) : d;
}

static const char *const CUT_NAMES[] = {"request_line_timeout", "head_timeout", "body_too_slow", "client_gone"};

/* The connections whose client closed its side in the middle of a request (or between two),
 * with nothing left unread and no progress for GONE_SECONDS: libmicrohttpd 0.9.75, which waits
 * for its sockets edge-triggered, may never see that end of file when it came with the last
 * data, and would keep the request (its body's reservation and its client's slot) until the
 * connection timeout. A client that sends its request and then shuts its side down is not one
 * of them: its request completes at once (BUSY), and a request that cannot complete never
 * will. Marks them SRV_CUT_GONE. Lock held. */
static void find_gone(srv_guard *g, double now)
{
    if (g->polls_cap > 4 * g->n_conns + 64) { /* a flood is over: give its scratch back */
        free(g->polls);
        free(g->polled);
        g->polls = NULL;
        g->polled = NULL;
        g->polls_cap = 0;
    }
    if (g->polls_cap < g->n_conns) {
        int cap = g->n_conns * 2;
        struct pollfd *p = realloc(g->polls, (size_t)cap * sizeof *p);
        if (p) g->polls = p;
        srv_conn **c = realloc(g->polled, (size_t)cap * sizeof *c);
        if (c) g->polled = c;
        if (!p || !c) return; /* next time */
        g->polls_cap = cap;
    }
    int n = 0;
    for (srv_conn *c = g->conns; c; c = c->next)
        if (c->phase != CONN_BUSY && c->cut == SRV_CUT_NONE) {
            g->polls[n] = (struct pollfd){c->fd, POLLRDHUP, 0};
            g->polled[n++] = c;
        }
    if (n == 0 || poll(g->polls, (nfds_t)n, 0) < 0) return;
    for (int i = 0; i < n; i++) {
        srv_conn *c = g->polled[i];
        int unread = 0;
        int gone = (g->polls[i].revents & (POLLRDHUP | POLLHUP)) && ioctl(c->fd, FIONREAD, &unread) == 0 && unread == 0;
        double mark = c->since + (double)c->body_bytes;
        if (!gone) {
            c->gone_since = 0;
        } else if (!c->gone_since || c->gone_mark != mark) {
            c->gone_since = now;
            c->gone_mark = mark;
        } else if (now - c->gone_since >= GONE_SECONDS) {
            c->cut = SRV_CUT_GONE;
        }
    }
}

/* True, once per quiet spell, when requests came and went and for QUIET_SECONDS none has been in
 * progress (every connection waits for a request, no client holds a job): the memory that
 * requests and connections freed then goes back to the system (malloc_trim, every thread's
 * heap). The loop trims after large blocks only; a burst of small ones (a thousand connections'
 * buffers, the parse trees of many requests) stayed in the threads' heaps, and the idle RSS
 * after make soak-hostile was 12% over its level before. Lock held. */
static int quiet(srv_guard *g, double now)
{
    int busy = g->n_clients > 0;
    for (srv_conn *c = g->conns; c && !busy; c = c->next) busy = c->phase != CONN_WAIT;
    if (busy) {
        g->quiet_since = 0;
        return 0;
    }
    if (!g->quiet_since) g->quiet_since = now;
    if (g->requests == g->trimmed_at || now - g->quiet_since < QUIET_SECONDS) return 0;
    g->trimmed_at = g->requests;
    return 1;
}

/* Closes the connections past their time, or whose client is gone, every WATCH_PERIOD_NS;
 * logs the slow ones after unlocking (a log line may block on a full pipe, and the listeners'
 * threads must not wait on that). */
static void *watchdog(void *arg)
{
    srv_guard *g = arg;
    enum { MAX_LOGGED = 32 };
    struct {
        uint32_t addr;
        srv_cut cut;
        double seconds;
        uint64_t body_bytes;
    } closed[MAX_LOGGED];
    pthread_mutex_lock(&g->lock);
    while (!g->stop) {
        double now = srv_now();
        find_gone(g, now);
        int trim = quiet(g, now);
        int n = 0, more = 0;
        for (srv_conn *c = g->conns; c; c = c->next) {
            if (c->cut == SRV_CUT_NONE && now >= deadline(g, c)) c->cut = (srv_cut)c->phase;
            if (c->cut == SRV_CUT_NONE || c->shut) continue;
            /* The fd is open: libmicrohttpd closes it only after srv_guard_conn_close, which
             * waits for this lock. Its thread sees the shutdown as the client gone. */
            shutdown(c->fd, SHUT_RDWR);
            c->shut = 1;
            if (g->metrics) srv_metrics_conn_cut(g->metrics, (int)c->cut);
            if (c->cut == SRV_CUT_GONE) continue; /* the client's own doing: the request's log says 499 */
            if (n < MAX_LOGGED) {
                closed[n].addr = c->addr;
                closed[n].cut = c->cut;
                closed[n].seconds = now - c->since;
                closed[n++].body_bytes = c->body_bytes;
            } else {
                more++;
            }
        }
        pthread_mutex_unlock(&g->lock);
        for (int i = 0; i < n; i++) {
            char ip[INET_ADDRSTRLEN] = "?";
            inet_ntop(AF_INET, &closed[i].addr, ip, sizeof ip);
            srv_log(LOG_INFO, "closed a slow connection", "\"client\":\"%s\",\"reason\":\"%s\",\"seconds\":%.3f,\"body_bytes\":%llu",
                    ip, CUT_NAMES[closed[i].cut], closed[i].seconds, (unsigned long long)closed[i].body_bytes);
        }
        if (more) srv_log(LOG_INFO, "closed more slow connections", "\"count\":%d", more);
        if (trim) malloc_trim(0);
        struct timespec next;
        clock_gettime(CLOCK_MONOTONIC, &next);
        next.tv_nsec += WATCH_PERIOD_NS;
        if (next.tv_nsec >= 1000000000L) next.tv_sec++, next.tv_nsec -= 1000000000L;
        pthread_mutex_lock(&g->lock);
        while (!g->stop && pthread_cond_timedwait(&g->wake, &g->lock, &next) == 0) {
        }
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

int srv_guard_start(srv_guard **out, const srv_guard_limits *lim, srv_metrics *metrics)
{
    srv_guard *g = calloc(1, sizeof *g);
    if (!g) return -1;
    g->lim = *lim;
    g->metrics = metrics;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->lock, NULL);
    if (pthread_create(&g->thread, NULL, watchdog, g)) goto fail;
    *out = g;
    return 0;
fail:
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->wake);
    free(g);
    return -1;
}

void srv_guard_stop(srv_guard *g)
{
    if (!g) return;
    pthread_mutex_lock(&g->lock);
    g->stop = 1;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->thread, NULL);
    while (g->conns) { /* none, unless a listener was never stopped */
        srv_conn *c = g->conns;
        g->conns = c->next;
        free(c);
    }
    for (int b = 0; b < N_BUCKETS; b++)
        while (g->buckets[b]) {
            srv_client *c = g->buckets[b];
            g->buckets[b] = c->next;
            free(c);
        }
    free(g->polls);
    free(g->polled);
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->wake);
    free(g);
}

/* ---- connections ---------------------------------------------------------------------------- */

srv_conn *srv_guard_conn_open(srv_guard *g, int fd, uint32_t addr)
{
    srv_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    c->addr = addr;
    c->phase = CONN_WAIT;
    c->since = c->opened = srv_now();
    c->cut = SRV_CUT_NONE;
    pthread_mutex_lock(&g->lock);
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    g->n_conns++;
    pthread_mutex_unlock(&g->lock);
    if (g->metrics) srv_metrics_connections(g->metrics, 1);
    return c;
}

void srv_guard_conn_close(srv_guard *g, srv_conn *c)
{
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    if (c->prev) c->prev->next = c->next;
    else g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    g->n_conns--;
    pthread_mutex_unlock(&g->lock);
    if (g->metrics) srv_metrics_connections(g->metrics, -1);
    free(c);
}

void srv_guard_conn_phase(srv_guard *g, srv_conn *c, srv_conn_phase phase)
{
    if (!c) return;
    double now = srv_now();
    pthread_mutex_lock(&g->lock);
    c->phase = phase;
    c->since = now;
    c->body_bytes = 0;
    g->requests += phase == CONN_BUSY;
    pthread_mutex_unlock(&g->lock);
}

void srv_guard_conn_body(srv_guard *g, srv_conn *c, uint64_t bytes)
{
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    c->body_bytes += bytes;
    pthread_mutex_unlock(&g->lock);
}

void srv_guard_conn_limit(srv_guard *g, srv_conn *c, double seconds)
{
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    c->limit = seconds;
    pthread_mutex_unlock(&g->lock);
}

int srv_guard_conn_limited(srv_guard *g, const srv_conn *c)
{
    if (!c) return 0;
    pthread_mutex_lock(&g->lock);
    int limited = c->limit > 0;
    pthread_mutex_unlock(&g->lock);
    return limited;
}

srv_cut srv_guard_conn_cut(srv_guard *g, const srv_conn *c)
{
    if (!c) return SRV_CUT_NONE;
    pthread_mutex_lock(&g->lock);
    srv_cut cut = c->shut ? c->cut : SRV_CUT_NONE;
    pthread_mutex_unlock(&g->lock);
    return cut;
}

/* ---- clients -------------------------------------------------------------------------------- */

static size_t bucket(uint64_t id) { return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 54) % N_BUCKETS; }

/* Frees c when it holds nothing. Lock held. */
static void client_drop_if_idle(srv_guard *g, srv_client *c)
{
    assert(c->requests >= 0 && c->jobs >= 0);
    if (c->requests || c->jobs || c->body_bytes) return;
    srv_client **pp = &g->buckets[bucket(c->id)];
    while (*pp != c) pp = &(*pp)->next;
    *pp = c->next;
    free(c);
    g->n_clients--;
    if (g->metrics) srv_metrics_clients(g->metrics, g->n_clients);
}

int srv_guard_request_begin(srv_guard *g, uint64_t client_id, srv_client **out)
{
    *out = NULL;
    pthread_mutex_lock(&g->lock);
    srv_client **pp = &g->buckets[bucket(client_id)];
    while (*pp && (*pp)->id != client_id) pp = &(*pp)->next;
    srv_client *c = *pp;
    if (!c) {
        if (!(c = calloc(1, sizeof *c))) {
            pthread_mutex_unlock(&g->lock);
            return -1;
        }
        c->id = client_id;
        *pp = c;
        g->n_clients++;
        if (g->metrics) srv_metrics_clients(g->metrics, g->n_clients);
    }
    int ok = !g->lim.max_requests || c->requests < g->lim.max_requests;
    if (ok) {
        c->requests++;
        *out = c;
    }
    client_drop_if_idle(g, c);
    pthread_mutex_unlock(&g->lock);
    return ok ? 0 : -1;
}

void srv_guard_request_end(srv_guard *g, srv_client *c)
{
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    c->requests--;
    client_drop_if_idle(g, c);
    pthread_mutex_unlock(&g->lock);
}

int srv_guard_job_begin(srv_guard *g, srv_client *c)
{
    pthread_mutex_lock(&g->lock);
    assert(c->requests > 0);
    int ok = !g->lim.max_queued || c->jobs < g->lim.max_queued;
    if (ok) c->jobs++;
    pthread_mutex_unlock(&g->lock);
    return ok ? 0 : -1;
}

void srv_guard_job_end(srv_guard *g, srv_client *c)
{
    if (!c) return;
    pthread_mutex_lock(&g->lock);
    c->jobs--;
    client_drop_if_idle(g, c);
    pthread_mutex_unlock(&g->lock);
}

int srv_guard_body_hold(srv_guard *g, srv_client *c, uint64_t bytes, uint64_t own)
{
    pthread_mutex_lock(&g->lock);
    assert(c->requests > 0 && c->body_bytes >= own);
    int ok = !g->lim.max_body_bytes || c->body_bytes == own || c->body_bytes + bytes <= g->lim.max_body_bytes;
    if (ok) c->body_bytes += bytes;
    pthread_mutex_unlock(&g->lock);
    return ok ? 0 : -1;
}

void srv_guard_body_release(srv_guard *g, srv_client *c, uint64_t bytes)
{
    if (!c || !bytes) return;
    pthread_mutex_lock(&g->lock);
    assert(c->body_bytes >= bytes);
    c->body_bytes -= bytes;
    client_drop_if_idle(g, c);
    pthread_mutex_unlock(&g->lock);
}

int srv_guard_clients(srv_guard *g)
{
    pthread_mutex_lock(&g->lock);
    int n = g->n_clients;
    pthread_mutex_unlock(&g->lock);
    return n;
}

const srv_guard_limits *srv_guard_limits_of(const srv_guard *g) { return &g->lim; }
