/* test_metrics.c - server/metrics.c: luna_requests_total counts by the endpoint label it is
 * given (the endpoint table's, server/routes.h) and code; luna_request_duration_seconds counts
 * engine requests only. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/metrics.h"

Test(metrics, requests_by_label_and_code)
{
    srv_metrics m;
    srv_metrics_init(&m, 1 << 20);
    srv_metrics_request(&m, "chat_completions", 1, 200, 0.5);
    srv_metrics_request(&m, "chat_completions", 1, 200, 0.5);
    srv_metrics_request(&m, "health", 0, 200, 0.001);
    srv_metrics_request(&m, "other", 0, 404, 0.001);
    char *text = srv_metrics_render(&m);
    cr_assert_not_null(text);
    cr_expect_not_null(strstr(text, "\nluna_requests_total{endpoint=\"chat_completions\",code=\"200\"} 2\n"), "%s", text);
    cr_expect_not_null(strstr(text, "\nluna_requests_total{endpoint=\"health\",code=\"200\"} 1\n"), "%s", text);
    cr_expect_not_null(strstr(text, "\nluna_requests_total{endpoint=\"other\",code=\"404\"} 1\n"), "%s", text);
    cr_expect_null(strstr(text, "endpoint=\"health\",code=\"404\""), "a pair never seen is not shown");
    cr_expect_not_null(strstr(text, "\nluna_request_duration_seconds_count 2\n"), "engine requests only: %s", text);
    free(text);
    srv_metrics_destroy(&m);
}

Test(metrics, labels_past_the_table_are_dropped_not_overflowed)
{
    srv_metrics m;
    srv_metrics_init(&m, 1 << 20);
    static char names[SRV_N_ENDPOINTS + 4][16];
    for (int i = 0; i < SRV_N_ENDPOINTS + 4; i++) {
        snprintf(names[i], sizeof names[i], "e%d", i);
        srv_metrics_request(&m, names[i], 0, 200, 0);
    }
    char *text = srv_metrics_render(&m);
    cr_expect_not_null(strstr(text, "endpoint=\"e0\""));
    char last[64];
    snprintf(last, sizeof last, "endpoint=\"e%d\"", SRV_N_ENDPOINTS - 1);
    cr_expect_not_null(strstr(text, last));
    snprintf(last, sizeof last, "endpoint=\"e%d\"", SRV_N_ENDPOINTS);
    cr_expect_null(strstr(text, last));
    free(text);
    srv_metrics_destroy(&m);
}
