/* main.c - lunaserve's startup and shutdown, in the order they happen:
 * settings -> models -> workers and loop -> HTTP -> serve until SIGTERM/SIGINT -> drain -> exit.
 * Exit codes: 0 after a clean drain, 1 when a model or the socket cannot be set up, 2 for a bad
 * setting. A second signal exits at once with 1. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"

static int load_model(const char *dir, luna_model **out)
{
    char err[512];
    int rc = luna_model_load(dir, out, err, sizeof err);
    if (rc) {
        char e1[600], e2[1100];
        srv_log(LOG_ERROR, "cannot load model", "\"path\":\"%s\",\"error\":\"%s\"",
                srv_json_esc(dir, e2, sizeof e2), srv_json_esc(err, e1, sizeof e1));
    }
    return rc;
}

/* A model setting names a model to load, unless it is empty, or it is the bundled default and
 * that directory is absent (a checkout without the bundled models serves what it has). */
static int want_model(const char *dir, const char *bundled)
{
    if (!dir[0]) return 0;
    if (!strcmp(dir, bundled) && access(dir, F_OK) != 0) {
        srv_log(LOG_WARN, "bundled model absent; not serving it", "\"path\":\"%s\"", dir);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    static srv_app app; /* large (labels); static keeps it off the stack */
    /* Blocks of 256 KiB and more (bodies, workspaces) are mapped on their own and unmapped when
     * freed, and each heap's top is trimmed past 128 KiB: with glibc's adaptive thresholds, a
     * burst of large requests would leave their memory in the heap for good, and malloc_trim
     * leaves a thread's heap top alone (past 1 MiB, the threads' heaps kept the idle RSS 11%
     * above its level before make soak-hostile's burst). */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    int rc = srv_config_load(&app.cfg, argc, argv);
    if (rc) return rc > 0 ? 0 : 2;
    srv_log_init(app.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);

    /* The BLAS kernel first: choosing it may re-execute this program (engine/blas.h), which
     * must happen before any thread starts or any model is mapped. */
    rc = luna_blas_select(app.cfg.blas_core, argv, &app.blas);
    {
        char e1[700], e2[200], e3[100];
        srv_log(rc ? LOG_ERROR : LOG_INFO, rc ? "cannot use this BLAS" : "blas",
                "\"library\":\"%s\",\"version\":\"%s\",\"core\":\"%s\",\"default_core\":\"%s\",\"selection\":\"%s\","
                "\"reason\":\"%s\",\"cpu\":\"%s\",\"selfcheck\":\"%s\",\"selfcheck_error\":%.3g",
                app.blas.library, srv_json_esc(app.blas.version, e3, sizeof e3), app.blas.core, app.blas.default_core,
                app.blas.selection, srv_json_esc(app.blas.reason, e1, sizeof e1), srv_json_esc(app.blas.cpu, e2, sizeof e2),
                app.blas.selfcheck_ok ? "passed" : "failed", app.blas.selfcheck_err);
    }
    if (rc) return rc == -1 ? 2 : 1;

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    app.n_workers = app.cfg.workers ? app.cfg.workers : (int)(cores / app.cfg.blas_threads);
    if (app.n_workers < 1) app.n_workers = 1;
    luna_blas_set_threads(app.cfg.blas_threads);
    srv_metrics_init(&app.metrics, app.cfg.memory_budget);
    srv_metrics_build_info(&app.metrics, &app.blas, luna_blas_threads());

    int status = 1;
    /* Each model is optional, so one server can serve either task; at least one must load. A
     * model that is named but cannot be loaded is an error, never silently skipped. */
    if (want_model(app.cfg.classify_model, "models/spam") && load_model(app.cfg.classify_model, &app.classifier)) goto out;
    if (want_model(app.cfg.generate_model, "models/austen-lm") && load_model(app.cfg.generate_model, &app.generator)) goto out;
    if (!app.classifier && !app.generator) {
        srv_log(LOG_ERROR, "no model: set classify-model and/or generate-model", NULL);
        goto out;
    }
    if (app.classifier) {
        const luna_config *cfg = luna_model_config(app.classifier);
        if (cfg->task != LUNA_TASK_CLASSIFY) {
            srv_log(LOG_ERROR, "classify-model is not a classifier", NULL);
            goto out;
        }
        for (int i = 0; i < cfg->n_labels; i++) app.labels[i] = cfg->labels[i];
        app.max_doc_tokens = cfg->max_positions > 0 ? (size_t)cfg->max_positions : (size_t)-1;
    }
    if (app.generator && luna_model_config(app.generator)->task != LUNA_TASK_CAUSAL_LM) {
        srv_log(LOG_ERROR, "generate-model is not a causal-lm model", NULL);
        goto out;
    }

    app.started_unix = (long long)time(NULL);
    if (srv_sched_start(&app)) goto stop_sched;
    if (srv_http_start(&app)) goto stop_sched;
    atomic_store(&app.ready, 1);
    srv_log(LOG_INFO, "listening",
            "\"host\":\"%s\",\"port\":%d,\"health_port\":%d,\"workers\":%d,\"blas_threads\":%d,\"blas_core\":\"%s\",\"memory_budget\":%llu,"
            "\"classify_model\":\"%s\",\"generate_model\":\"%s\"",
            app.cfg.host, app.port, app.health_port, app.n_workers, app.cfg.blas_threads, app.blas.core, (unsigned long long)app.cfg.memory_budget,
            app.classifier ? app.cfg.classify_model : "", app.generator ? app.cfg.generate_model : "");
    uv_run(&app.loop, UV_RUN_DEFAULT); /* returns when the drain is complete */
    status = 0;
    srv_log(LOG_INFO, "drained; exiting", NULL);
    srv_http_stop(&app);
stop_sched:
    srv_sched_stop(&app);
out:
    luna_model_free(app.classifier);
    luna_model_free(app.generator);
    srv_metrics_destroy(&app.metrics);
    return status;
}
