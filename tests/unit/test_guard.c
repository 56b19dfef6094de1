/* test_guard.c - server/guard.c: the per-client counts (exact, whatever order the ends come
 * in) and the watchdog that closes a connection past its phase's time. */
#include <criterion/criterion.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/guard.h"
#include "server/server.h"

static srv_guard *start(double header, double body, double rate, int max_requests, int max_queued)
{
    srv_guard_limits lim = {60, header, body, rate, max_requests, max_queued, 0};
    srv_guard *g;
    cr_assert_eq(srv_guard_start(&g, &lim, NULL), 0);
    return g;
}

Test(guard, client_counts_are_exact)
{
    srv_guard *g = start(10, 10, 0, 3, 2);
    srv_client *a[4], *b;
    for (int i = 0; i < 3; i++) cr_assert_eq(srv_guard_request_begin(g, srv_client_key(0), &a[i]), 0);
    cr_expect_eq(srv_guard_request_begin(g, srv_client_key(0), &a[3]), -1, "a 4th request over max-requests 3");
    cr_expect_null(a[3]);
    cr_assert_eq(srv_guard_request_begin(g, srv_client_key(1), &b), 0, "another key has its own slots");
    cr_expect_eq(srv_guard_request_begin(g, srv_client_addr(0x0100007f), &a[3]), 0, "an address is another client");
    srv_guard_request_end(g, a[3]);
    cr_expect_eq(srv_guard_clients(g), 2);
    cr_assert_eq(srv_guard_job_begin(g, a[0]), 0);
    cr_assert_eq(srv_guard_job_begin(g, a[1]), 0);
    cr_expect_eq(srv_guard_job_begin(g, a[2]), -1, "a 3rd job over max-queued 2");
    /* a request that ends before its job (a client that left while its job ran): the client
     * stays until the job is done too */
    for (int i = 0; i < 3; i++) srv_guard_request_end(g, a[i]);
    cr_expect_eq(srv_guard_clients(g), 2);
    srv_guard_job_end(g, a[0]);
    srv_guard_job_end(g, a[1]);
    cr_expect_eq(srv_guard_clients(g), 1, "key 0 holds nothing: gone");
    srv_guard_request_end(g, b);
    cr_expect_eq(srv_guard_clients(g), 0);
    srv_guard_request_end(g, NULL); /* a request that never took a slot */
    srv_guard_job_end(g, NULL);
    srv_guard_stop(g);
}

/* A client's body bytes: at most its share beside its first request (which alone may pass it),
 * exact whatever the order of the releases, and its entry lives while it holds any (a request
 * freed after its slot went back). */
Test(guard, body_share_is_exact)
{
    srv_guard_limits lim = {60, 10, 10, 0, 0, 0, 1000};
    srv_guard *g;
    cr_assert_eq(srv_guard_start(&g, &lim, NULL), 0);
    srv_client *a, *b;
    cr_assert_eq(srv_guard_request_begin(g, srv_client_addr(1), &a), 0);
    cr_assert_eq(srv_guard_request_begin(g, srv_client_addr(2), &b), 0);
    cr_expect_eq(srv_guard_body_hold(g, a, 600, 0), 0);
    cr_expect_eq(srv_guard_body_hold(g, a, 400, 0), 0, "exactly the share");
    cr_expect_eq(srv_guard_body_hold(g, a, 1, 0), -1, "a byte past it");
    cr_expect_eq(srv_guard_body_hold(g, a, 1, 400), -1, "a byte past it, for a request that holds some");
    cr_expect_eq(srv_guard_body_hold(g, b, 1000, 0), 0, "another client has its own share");
    cr_expect_eq(srv_guard_body_hold(g, b, 5000, 1000), 0, "its one request, past the share");
    srv_guard_body_release(g, b, 5000);
    srv_guard_request_end(g, a);
    cr_expect_eq(srv_guard_clients(g), 2, "a still holds its bytes");
    srv_guard_body_release(g, a, 400);
    cr_expect_eq(srv_guard_clients(g), 2);
    srv_guard_body_release(g, a, 600);
    cr_expect_eq(srv_guard_clients(g), 1, "a holds nothing: gone");
    srv_guard_body_release(g, b, 1000);
    cr_expect_eq(srv_guard_clients(g), 1, "b still holds its request slot");
    srv_guard_request_end(g, b);
    cr_expect_eq(srv_guard_clients(g), 0);
    srv_guard_body_release(g, NULL, 5); /* a request that never held a byte */
    srv_guard_stop(g);
}

Test(guard, zero_is_no_limit)
{
    srv_guard *g = start(10, 10, 0, 0, 0);
    srv_client *c[100];
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(srv_guard_request_begin(g, srv_client_addr(7), &c[i]), 0);
        cr_assert_eq(srv_guard_job_begin(g, c[i]), 0);
    }
    for (int i = 0; i < 100; i++) srv_guard_job_end(g, c[i]), srv_guard_request_end(g, c[i]);
    cr_expect_eq(srv_guard_clients(g), 0);
    srv_guard_stop(g);
}

/* True when the peer of `fd` sees the connection end within `ms`. */
static int ended(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, ms) != 1) return 0;
    char b;
    return read(fd, &b, 1) == 0;
}

Test(guard, watchdog_closes_what_is_past_its_time)
{
    srv_guard *g = start(0.3, 0.3, 1000, 0, 0);
    int head[2], body[2], busy[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, head), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, body), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, busy), 0);
    srv_conn *h = srv_guard_conn_open(g, head[0], 0), *b = srv_guard_conn_open(g, body[0], 0),
             *u = srv_guard_conn_open(g, busy[0], 0);
    srv_guard_conn_phase(g, h, CONN_HEAD);
    srv_guard_conn_phase(g, b, CONN_BODY);
    srv_guard_conn_body(g, b, 700); /* 0.7 s more at 1000 bytes a second: 1.0 s in all */
    srv_guard_conn_phase(g, u, CONN_BUSY);
    double t0 = srv_now();
    cr_expect(ended(head[1], 5000), "a head past 0.3 s is closed");
    double dt = srv_now() - t0;
    cr_expect(dt >= 0.25, "closed after %.3f s, before its 0.3 s", dt);
    cr_expect_eq(srv_guard_conn_cut(g, h), SRV_CUT_HEAD);
    cr_expect(!ended(body[1], 0), "the body has earned more time");
    cr_expect(ended(body[1], 5000), "the body past 1.0 s is closed");
    cr_expect(srv_now() - t0 >= 0.9, "closed after %.3f s, before its 1.0 s", srv_now() - t0);
    cr_expect_eq(srv_guard_conn_cut(g, b), SRV_CUT_BODY);
    cr_expect(!ended(busy[1], 300), "a complete request has no clock");
    cr_expect_eq(srv_guard_conn_cut(g, u), SRV_CUT_NONE);
    srv_guard_conn_close(g, h);
    srv_guard_conn_close(g, b);
    srv_guard_conn_close(g, u);
    for (int i = 0; i < 2; i++) close(head[i]), close(body[i]), close(busy[i]);
    srv_guard_stop(g);
}

/* libmicrohttpd 0.9.75 may never see the end of file of a client that closed in the middle of
 * a request: the watchdog cuts such a connection once nothing is left unread and nothing has
 * moved for a second; bytes left unread keep it (the listener will read them). */
Test(guard, a_client_gone_mid_request_is_cut)
{
    srv_guard *g = start(60, 60, 0, 0, 0);
    int gone[2], unread[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, gone), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, unread), 0);
    srv_conn *a = srv_guard_conn_open(g, gone[0], 0), *b = srv_guard_conn_open(g, unread[0], 0);
    srv_guard_conn_phase(g, a, CONN_BODY);
    srv_guard_conn_phase(g, b, CONN_BODY);
    cr_assert_eq(write(unread[1], "abc", 3), 3);
    close(gone[1]);
    close(unread[1]);
    double t0 = srv_now();
    while (srv_guard_conn_cut(g, a) == SRV_CUT_NONE && srv_now() - t0 < 10) usleep(20000);
    double dt = srv_now() - t0;
    cr_expect_eq(srv_guard_conn_cut(g, a), SRV_CUT_GONE);
    cr_expect(dt >= 0.9 && dt < 5, "cut after %.3f s", dt);
    cr_expect_eq(srv_guard_conn_cut(g, b), SRV_CUT_NONE, "3 bytes unread: the listener has work to do");
    char buf[3];
    cr_assert_eq(read(unread[0], buf, 3), 3);
    t0 = srv_now();
    while (srv_guard_conn_cut(g, b) == SRV_CUT_NONE && srv_now() - t0 < 10) usleep(20000);
    cr_expect_eq(srv_guard_conn_cut(g, b), SRV_CUT_GONE);
    srv_guard_conn_close(g, a);
    srv_guard_conn_close(g, b);
    close(gone[0]);
    close(unread[0]);
    srv_guard_stop(g);
}

/* A reserve connection's bound runs from its start, whatever its phase's own. */
Test(guard, a_reserve_connection_has_its_own_bound)
{
    srv_guard *g = start(60, 60, 0, 0, 0);
    int res[2], other[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, res), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, other), 0);
    srv_conn *r = srv_guard_conn_open(g, res[0], 0), *o = srv_guard_conn_open(g, other[0], 0);
    double t0 = srv_now();
    srv_guard_conn_limit(g, r, 0.3);
    cr_expect(srv_guard_conn_limited(g, r) && !srv_guard_conn_limited(g, o) && !srv_guard_conn_limited(g, NULL));
    srv_guard_conn_phase(g, r, CONN_HEAD); /* a new phase does not restart it */
    cr_expect(ended(res[1], 5000), "a reserve connection past 0.3 s is closed");
    cr_expect(srv_now() - t0 >= 0.25, "closed after %.3f s, before its 0.3 s", srv_now() - t0);
    cr_expect_eq(srv_guard_conn_cut(g, r), SRV_CUT_HEAD);
    cr_expect(!ended(other[1], 0), "the other has its phase's 60 s");
    cr_expect_eq(srv_guard_conn_cut(g, o), SRV_CUT_NONE);
    srv_guard_conn_close(g, r);
    srv_guard_conn_close(g, o);
    for (int i = 0; i < 2; i++) close(res[i]), close(other[i]);
    srv_guard_stop(g);
}
