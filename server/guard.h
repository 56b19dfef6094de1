/* guard.h - what one client may take from the server: time and requests (issue 27).
 *
 * Time. libmicrohttpd 0.9.75 closes a connection only when no byte moved for
 * --connection-timeout, so a client that sends a byte now and then holds its connection (and
 * the body it reserved) for ever. The guard gives every connection a clock per phase and a
 * watchdog thread closes the ones past their time:
 *   WAIT  from the connection's start, or the end of its previous request, to the end of the
 *         next request line: wait_timeout in all (an idle connection: libmicrohttpd's own
 *         timeout closes it first; a request line trickled a byte at a time: the watchdog);
 *   HEAD  from the request line to the end of the head: header_timeout (nginx's
 *         client_header_timeout, HAProxy's timeout http-request);
 *   BODY  from the end of the head to the end of the body: body_timeout, plus one second per
 *         body_min_rate bytes received (Apache's mod_reqtimeout: body=30,MinRate=...);
 *   BUSY  the request is complete (queued, running, answered, streamed): no clock here; the
 *         request's deadline, the stream's buffer limit and the idle timeout bound it.
 * Closing is shutdown(2) of the socket, which libmicrohttpd's thread then sees as the client
 * gone; nothing is answered (nginx does the same for a head that times out). The watchdog
 * also closes a connection whose client closed its side in the middle of a request (or
 * between two), which libmicrohttpd 0.9.75 may not notice until the connection timeout.
 *
 * A listener's reserve connections (those it takes past its limit, for probes: http.c) have a
 * bound of their own besides: from the connection's start to the end of its request's head
 * (or body), whatever the phase.
 *
 * Requests. Each client (the API key it used, or its IPv4 address when the server has no keys)
 * may hold at most max_requests engine requests (from the head to the end, a body being read,
 * queued, running or streaming), max_queued jobs in the scheduler (waiting or running) and,
 * beside its first request, max_body_bytes of bodies and parsed input in the ledger (its share
 * of the bodies' half of the budget: without it, one client trickling bodies just above the minimum rate held the whole
 * half, and every other client's body was 503). Counts are taken and given back by the
 * request's owner: a request's slot when it ends (libmicrohttpd's completion callback), a job's
 * when the scheduler is done with it, body bytes when the request is freed; the client's entry
 * goes when every count is 0, so a count that leaks shows as a client that never goes away
 * (luna_clients_active).
 *
 * Threads: every function may be called from any thread (one mutex, a leaf: nothing is called
 * under it but the metrics, whose lock is a leaf too). */
#ifndef SRV_GUARD_H
#define SRV_GUARD_H

#include <stdint.h>

#include "server/metrics.h"

typedef enum { CONN_WAIT = 0, CONN_HEAD, CONN_BODY, CONN_BUSY } srv_conn_phase;
/* Why the watchdog closed a connection: its phase's time ran out (the first three, numbered as
 * the phases), or its client closed its side mid-request and nothing moved for a second. */
typedef enum {
    SRV_CUT_NONE = -1, SRV_CUT_REQUEST_LINE = 0, SRV_CUT_HEAD, SRV_CUT_BODY, SRV_CUT_GONE
} srv_cut;

typedef struct {
    double wait_timeout;   /* seconds, WAIT */
    double header_timeout; /* seconds, HEAD */
    double body_timeout;   /* seconds, BODY, before the rate's allowance */
    double body_min_rate;  /* bytes a second that earn one more second of BODY; 0: none */
    int max_requests;      /* per client; 0: no limit */
    int max_queued;        /* per client; 0: no limit */
    uint64_t max_body_bytes; /* per client: bytes of bodies and parsed input held; 0: no limit */
} srv_guard_limits;

typedef struct srv_guard srv_guard;
typedef struct srv_conn srv_conn;     /* one TCP connection's clock */
typedef struct srv_client srv_client; /* one client's counts */

/* Starts the watchdog. 0 and *out, or -1 (nothing started). metrics may be NULL. */
int srv_guard_start(srv_guard **out, const srv_guard_limits *lim, srv_metrics *metrics);
/* Stops the watchdog and frees the guard; every connection must be closed by then. */
void srv_guard_stop(srv_guard *g);

/* ---- connections: called from the listener's thread ---- */
/* A new connection (fd, its IPv4 address in network order), in WAIT. NULL when out of memory:
 * the connection then has no clock (the other functions accept NULL and do nothing). */
srv_conn *srv_guard_conn_open(srv_guard *g, int fd, uint32_t addr);
/* libmicrohttpd is closing it: the watchdog never touches fd again. Frees c. */
void srv_guard_conn_close(srv_guard *g, srv_conn *c);
/* The connection enters a phase; its clock restarts. */
void srv_guard_conn_phase(srv_guard *g, srv_conn *c, srv_conn_phase phase);
/* BODY: `bytes` more of the body arrived. */
void srv_guard_conn_body(srv_guard *g, srv_conn *c, uint64_t bytes);
/* c is one of the listener's reserve connections: it has `seconds` from its start to the end of
 * its request's head (or body), whatever its phase's own bound. */
void srv_guard_conn_limit(srv_guard *g, srv_conn *c, double seconds);
/* Whether c was given such a bound (one of the reserve); 0 for NULL. */
int srv_guard_conn_limited(srv_guard *g, const srv_conn *c);
/* Why the watchdog closed c, or SRV_CUT_NONE. */
srv_cut srv_guard_conn_cut(srv_guard *g, const srv_conn *c);

/* ---- clients ---- */
/* Takes one of the client's request slots: 0 and *out (the client's entry, for the calls
 * below), or -1 when it holds max_requests already (*out NULL, nothing taken). */
int srv_guard_request_begin(srv_guard *g, uint64_t client_id, srv_client **out);
void srv_guard_request_end(srv_guard *g, srv_client *c);
/* Takes one of the client's job slots (c from srv_guard_request_begin, whose request slot it
 * must still hold): 0, or -1 when it has max_queued jobs already. */
int srv_guard_job_begin(srv_guard *g, srv_client *c);
void srv_guard_job_end(srv_guard *g, srv_client *c);
/* Charges `bytes` more of bodies and parsed input to the client (c from srv_guard_request_begin,
 * whose request slot it must still hold) for a request that holds `own` of them already: 0, or
 * -1 when the client holds others' bytes too and that would pass max_body_bytes (nothing taken).
 * A client's one request is never refused here (the bodies' half bounds it): a share below one
 * body would refuse that body for good, and the share is about requests held side by side. The
 * entry lives while it holds bytes: release them all, from any thread, even after the request's
 * slot went back. */
int srv_guard_body_hold(srv_guard *g, srv_client *c, uint64_t bytes, uint64_t own);
void srv_guard_body_release(srv_guard *g, srv_client *c, uint64_t bytes);
/* Clients holding a request or a job now. */
int srv_guard_clients(srv_guard *g);
const srv_guard_limits *srv_guard_limits_of(const srv_guard *g);

/* A client's id: an API key's index, or an address (never the same id). */
static inline uint64_t srv_client_key(int key_index) { return (1ull << 32) | (uint32_t)key_index; }
static inline uint64_t srv_client_addr(uint32_t ipv4) { return ipv4; }

#endif
