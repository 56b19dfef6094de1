/* test_http.c - server/http.c's endpoint table (server/routes.h) against api/openapi.yaml: the
 * spec describes exactly the routes the table serves, each with the table's method and auth,
 * and the table's endpoint labels fit the metrics. The spec's `paths:` are read with a line
 * scan of its layout (two spaces before a path, four before a method, six before `security:`). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "server/routes.h"

#define MAX_OPS 64

typedef struct {
    char path[128], method[16];
    char security[128]; /* the operation's `security:` value, as written */
    int seen;           /* a route of the table matched it */
} spec_op;

static int indent(const char *line)
{
    int n = 0;
    while (line[n] == ' ') n++;
    return n;
}

/* An operation's key ("post:"), not another key of a path item (its "parameters:"). */
static int is_method(const char *key)
{
    static const char *const methods[] = {"get:", "put:", "post:", "delete:", "options:", "head:", "patch:", "trace:"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(key, methods[i])) return 1;
    return 0;
}

/* The operations under api/openapi.yaml's `paths:`; returns how many. */
static size_t read_spec(spec_op *ops)
{
    FILE *f = fopen("api/openapi.yaml", "r");
    cr_assert_not_null(f, "api/openapi.yaml (run the tests from the repository's root)");
    char line[1024], path[128] = "";
    size_t n = 0;
    int in_paths = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        int ind = indent(line);
        if (ind == 0 && line[0]) in_paths = !strcmp(line, "paths:");
        if (!in_paths || !line[ind] || line[ind] == '#') continue;
        size_t len = strlen(line);
        if (ind == 2 && line[len - 1] == ':') {
            snprintf(path, sizeof path, "%.*s", (int)(len - 3), line + 2);
        } else if (ind == 4 && is_method(line + 4)) {
            cr_assert_lt(n, MAX_OPS);
            spec_op *op = &ops[n++];
            memset(op, 0, sizeof *op);
            snprintf(op->path, sizeof op->path, "%s", path);
            for (size_t i = 0; i + 5 < len && i < sizeof op->method - 1; i++) op->method[i] = (char)(line[4 + i] & ~0x20);
        } else if (ind == 6 && n && !strncmp(line + 6, "security:", 9)) {
            snprintf(ops[n - 1].security, sizeof ops[n - 1].security, "%s", line + 6 + 9 + (line[15] == ' '));
        }
    }
    fclose(f);
    return n;
}

/* The spec's way of writing each auth: public routes need nothing; the others take a bearer
 * key (or nothing, on a server without keys); /metrics the other way round. */
static const char *security_of(srv_auth a)
{
    return a == SRV_AUTH_PUBLIC ? "[]" : a == SRV_AUTH_METRICS ? "[{}, {bearer: []}]" : "[{bearer: []}, {}]";
}

Test(http, every_route_is_in_the_spec_with_its_method_and_auth)
{
    spec_op ops[MAX_OPS];
    size_t n = read_spec(ops);
    cr_assert_gt(n, 0, "no operation found under paths:");
    for (const srv_route *r = SRV_ROUTES; r < SRV_ROUTES + SRV_N_ROUTES; r++) {
        spec_op *op = NULL;
        for (size_t i = 0; i < n && !op; i++)
            if (!strcmp(ops[i].path, r->path) && !strcmp(ops[i].method, r->method)) op = &ops[i];
        cr_expect_not_null(op, "%s %s is routed but api/openapi.yaml does not describe it", r->method, r->path);
        if (!op) continue;
        op->seen = 1;
        cr_expect_str_eq(op->security, security_of(r->auth), "%s %s: the spec's security", r->method, r->path);
    }
}

Test(http, every_path_of_the_spec_is_routed)
{
    spec_op ops[MAX_OPS];
    size_t n = read_spec(ops);
    for (size_t i = 0; i < n; i++) {
        int routed = 0;
        for (const srv_route *r = SRV_ROUTES; r < SRV_ROUTES + SRV_N_ROUTES; r++)
            routed |= !strcmp(ops[i].path, r->path) && !strcmp(ops[i].method, r->method);
        cr_expect(routed, "api/openapi.yaml describes %s %s, which no route serves", ops[i].method, ops[i].path);
    }
}

Test(http, rows_are_consistent)
{
    const char *labels[SRV_N_ROUTES];
    size_t n_labels = 0;
    for (const srv_route *r = SRV_ROUTES; r < SRV_ROUTES + SRV_N_ROUTES; r++) {
        int get = !strcmp(r->method, "GET");
        cr_expect(get || !strcmp(r->method, "POST"), "%s %s", r->method, r->path);
        /* a GET answers from the headers; a POST runs a job on its body */
        cr_expect_eq(get, r->job == NULL, "%s %s: a job for a POST only", r->method, r->path);
        cr_expect_eq(get, r->answer != NULL, "%s %s: an answer for a GET only", r->method, r->path);
        cr_expect_eq(get, r->body == SRV_BODY_NONE, "%s %s: a body for a POST only", r->method, r->path);
        cr_expect(!r->health || (get && r->auth != SRV_AUTH_KEY), "%s: the health listener serves public GETs", r->path);
        for (const srv_route *o = SRV_ROUTES; o < r; o++)
            cr_expect(strcmp(o->path, r->path) || strcmp(o->method, r->method), "%s %s twice", r->method, r->path);
        size_t l = 0;
        while (l < n_labels && strcmp(labels[l], r->label)) l++;
        if (l == n_labels) labels[n_labels++] = r->label;
        cr_expect(strcmp(r->label, "other") && strcmp(r->label, "preflight"), "%s: a label of its own", r->path);
    }
    /* with "other" and "preflight", every label has a counter of luna_requests_total */
    cr_expect_leq(n_labels + 2, SRV_N_ENDPOINTS, "raise SRV_N_ENDPOINTS (server/metrics.h)");
}
