/* test_jobs.c - server/jobs.c and the job kinds' parse hooks (server/job_*.c), without a model
 * or a server: each route's variant gives its API's request, a raw document its query
 * arguments, and the refusals the kinds share their 413s. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "server/jobs.h"

static srv_app *app_new(void)
{
    srv_app *app = calloc(1, sizeof *app);
    cr_assert_not_null(app);
    snprintf(app->cfg.generate_model, sizeof app->cfg.generate_model, "models/lm-tiny/");
    snprintf(app->cfg.classify_model, sizeof app->cfg.classify_model, "spam");
    app->cfg.max_input_bytes = 1 << 20;
    app->cfg.max_new_tokens = 64;
    app->cfg.default_new_tokens = 16;
    app->cfg.memory_budget = 1000;
    srv_metrics_init(&app->metrics, app->cfg.memory_budget);
    return app;
}

static void app_free(srv_app *app)
{
    srv_metrics_destroy(&app->metrics);
    free(app);
}

/* A request of the route's variant with `body`, parsed by `kind`; the caller releases it. */
static api_err parse(const srv_job_kind *kind, srv_request *q, srv_app *app, int variant, const char *body,
                     api_error *err, srv_job *job)
{
    *q = (srv_request){.app = app, .variant = variant, .body = body, .body_len = strlen(body), .err = err, .job = job};
    return kind->parse(q);
}

Test(jobs, generation_variants_parse_their_api)
{
    srv_app *app = app_new();
    api_error err = {0};
    srv_job job = {0};
    srv_request q;
    cr_assert_eq(parse(&SRV_JOB_GENERATE, &q, app, SRV_GEN_TGI, "{\"inputs\":\"ab\"}", &err, &job), API_OK, "%s", err.message);
    cr_expect_eq(q.in.generate.format, API_FMT_TGI);
    cr_expect_eq(q.in.generate.stream, 0);
    SRV_JOB_GENERATE.release(&q);
    cr_assert_eq(parse(&SRV_JOB_GENERATE, &q, app, SRV_GEN_TGI_STREAM, "{\"inputs\":\"ab\"}", &err, &job), API_OK);
    cr_expect_eq(q.in.generate.stream, 1, "/generate_stream streams whatever the body says");
    SRV_JOB_GENERATE.release(&q);
    cr_assert_eq(parse(&SRV_JOB_GENERATE, &q, app, SRV_GEN_COMPLETIONS, "{\"model\":\"lm-tiny\",\"prompt\":\"ab\"}", &err,
                       &job), API_OK, "%s", err.message);
    cr_expect_eq(q.in.generate.format, API_FMT_COMPLETION);
    SRV_JOB_GENERATE.release(&q);
    cr_assert_eq(parse(&SRV_JOB_GENERATE, &q, app, SRV_GEN_CHAT,
                       "{\"model\":\"lm-tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"ab\"}]}", &err, &job),
                 API_OK, "%s", err.message);
    cr_expect_eq(q.in.generate.format, API_FMT_CHAT);
    SRV_JOB_GENERATE.release(&q);
    /* OpenAI's "model" names the generator: its directory's base name */
    cr_expect_neq(parse(&SRV_JOB_GENERATE, &q, app, SRV_GEN_COMPLETIONS, "{\"model\":\"other\",\"prompt\":\"ab\"}", &err,
                        &job), API_OK);
    SRV_JOB_GENERATE.release(&q);
    app_free(app);
}

static const char *query(void *cls, const char *name)
{
    (void)cls;
    return !strcmp(name, "raw_scores") ? "true" : NULL;
}

Test(jobs, raw_document_takes_its_query_arguments)
{
    srv_app *app = app_new();
    api_error err = {0};
    srv_job job = {0};
    srv_request q = {.app = app, .body = "Buy now", .body_len = 7, .raw = 1, .arg = query, .err = &err, .job = &job};
    cr_assert_eq(SRV_JOB_CLASSIFY.parse(&q), API_OK, "%s", err.message);
    cr_expect_eq(q.in.classify.n_docs, 1);
    cr_expect_eq(q.in.classify.docs[0].len, 7);
    cr_expect_eq((const char *)q.in.classify.docs[0].data, q.body, "the body itself, not a copy");
    cr_expect_eq(q.in.classify.raw_scores, 1);
    SRV_JOB_CLASSIFY.release(&q);
    app_free(app);
}

Test(jobs, shared_refusals)
{
    char id[64];
    srv_model_id("models/lm-tiny//", id, sizeof id);
    cr_expect_str_eq(id, "lm-tiny");
    srv_model_id("spam", id, sizeof id);
    cr_expect_str_eq(id, "spam");

    srv_app *app = app_new();
    cr_expect_str_eq(srv_job_no_model(app, &SRV_JOB_SCORE), "no generation model is loaded");
    cr_expect_str_eq(srv_job_no_model(app, &SRV_JOB_CLASSIFY), "no classification model is loaded");
    api_error err = {0};
    srv_request q = {.app = app, .err = &err};
    cr_expect_eq(srv_job_over_budget(&q, 1000), 0, "the whole budget fits");
    cr_expect_eq(srv_job_over_budget(&q, 1001), 1);
    cr_expect_eq(api_err_status(err.kind), 413);
    cr_expect_str_eq(err.extra_key[0], "memory_required_bytes");
    cr_expect_eq(err.extra_val[0], 1001);
    cr_expect_eq(err.extra_val[1], 1000);

    luna_config cfg = {.max_positions = 8};
    memset(&err, 0, sizeof err);
    cr_expect_eq(srv_job_too_long(&q, &cfg, 8, "the prompt is"), 0);
    cr_expect_eq(srv_job_too_long(&q, &cfg, 9, "the prompt is"), 1);
    cr_expect_eq(err.kind, API_E_INPUT_TOO_LONG);
    cr_expect_str_eq(err.message, "the prompt is 9 tokens; the model accepts 8");
    cr_expect_eq(err.extra_val[0], 8);
    cfg.max_positions = 0; /* none: any length */
    cr_expect_eq(srv_job_too_long(&q, &cfg, 1u << 30, "the prompt is"), 0);
    app_free(app);
}

/* srv_group_room: idle workers that take groups from a queue of jobs that all fit one pack,
 * one after another as the dispatcher hands them out (each takes the oldest as its lead, then
 * its share of the rest), end with groups that differ by one job at most, every worker with
 * one when there are enough, and the whole queue taken; a worker with no other one free takes
 * it all. */
Test(jobs, group_room_shares_the_queue_among_idle_workers)
{
    cr_assert_eq(srv_group_room(9, 1), 9);
    cr_assert_eq(srv_group_room(9, 0), 9);
    cr_assert_eq(srv_group_room(9, 2), 4);
    cr_assert_eq(srv_group_room(1, 2), 0); /* a lone follower goes to the other worker */
    cr_assert_eq(srv_group_room(0, 3), 0);
    for (int idle = 1; idle <= 4; idle++)
        for (int queued = 1; queued <= 40; queued++) {
            int left = queued, lo = queued, hi = 0, workers = 0;
            for (int free_ = idle; free_ > 0 && left > 0; free_--) {
                left--; /* the lead */
                int room = srv_group_room(left, free_);
                cr_assert(room >= 0 && room <= left, "%d of %d", room, left);
                left -= room;
                int group = 1 + room;
                lo = group < lo ? group : lo, hi = group > hi ? group : hi;
                workers++;
            }
            cr_assert_eq(left, 0, "%d jobs, %d idle workers: %d left in the queue", queued, idle, left);
            cr_assert_eq(workers, queued < idle ? queued : idle, "%d jobs, %d idle", queued, idle);
            cr_assert_leq(hi - lo, 1, "%d jobs, %d idle workers: groups of %d to %d", queued, idle, lo, hi);
        }
}
