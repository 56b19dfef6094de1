/* jobs.c - what the job kinds (server/jobs.h) share: their model, and the refusals of admission
 * that more than one kind makes. */
#include <stdio.h>
#include <string.h>

#include "server/jobs.h"

const char *srv_job_no_model(const srv_app *app, const srv_job_kind *kind)
{
    if (kind->model == SRV_MODEL_GENERATOR) return app->generator ? NULL : "no generation model is loaded";
    return app->classifier ? NULL : "no classification model is loaded";
}

void srv_model_id(const char *dir, char *out, size_t n)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(out, n, "%.*s", (int)(len - start), dir + start);
}

int srv_job_over_budget(srv_request *q, uint64_t reserve)
{
    srv_app *app = q->app;
    uint64_t budget = srv_request_budget(app);
    if (reserve <= budget) return 0;
    api_fail(q->err, API_E_MEMORY, "this request needs %llu bytes of workspace; requests may reserve %llu of the memory budget",
             (unsigned long long)reserve, (unsigned long long)budget);
    q->err->extra_key[0] = "memory_required_bytes";
    q->err->extra_val[0] = (double)reserve;
    q->err->extra_key[1] = "memory_budget_bytes";
    q->err->extra_val[1] = (double)budget;
    srv_metrics_reject(&app->metrics, REJ_MEMORY);
    return 1;
}

int srv_job_too_long(srv_request *q, const luna_config *cfg, uint64_t tokens, const char *what)
{
    if (cfg->max_positions <= 0 || tokens <= (uint64_t)cfg->max_positions) return 0;
    api_fail(q->err, API_E_INPUT_TOO_LONG, "%s %llu tokens; the model accepts %d", what, (unsigned long long)tokens,
             cfg->max_positions);
    q->err->extra_key[0] = "max_tokens";
    q->err->extra_val[0] = cfg->max_positions;
    return 1;
}
