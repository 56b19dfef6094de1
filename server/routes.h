/* routes.h - the endpoint table: one row per route, as Redis's command table has one per
 * command. Routing, auth, the health listener, the endpoint label of the metrics and logs, the
 * content-type check and the job a POST runs all read the row; tests/unit/test_http.c checks
 * that api/openapi.yaml describes exactly the table's routes. Adding an endpoint is a row here
 * (server/http.c), its job kind's file (server/job_*.c) and its path in api/openapi.yaml. */
#ifndef SRV_ROUTES_H
#define SRV_ROUTES_H

#include <microhttpd.h>
#include <stddef.h>

#include "server/jobs.h"

typedef enum {
    SRV_AUTH_KEY = 0,  /* an API key, when the server has keys */
    SRV_AUTH_PUBLIC,   /* none */
    SRV_AUTH_METRICS,  /* none unless --metrics-auth 1 */
} srv_auth;

typedef enum {
    SRV_BODY_NONE = 0,    /* a GET: a body is never read */
    SRV_BODY_JSON,        /* application/json (or no Content-Type) */
    SRV_BODY_JSON_OR_RAW, /* JSON, or one raw document: application/octet-stream, text/plain */
} srv_body;

struct http_req; /* server/http.c's */

typedef struct {
    const char *path, *method;
    const char *label; /* the `endpoint` label of luna_requests_total and of the request log */
    srv_auth auth;
    int health;        /* served on the health listener (--health-port) too */
    const srv_job_kind *job; /* the job a POST runs (server/jobs.h); NULL for a GET */
    int variant;       /* the job kind's: which API's request it parses (SRV_GEN_*) */
    srv_body body;
    enum MHD_Result (*answer)(struct http_req *r); /* a GET's answer, from the headers alone */
} srv_route;

extern const srv_route SRV_ROUTES[];
extern const size_t SRV_N_ROUTES;

#endif
