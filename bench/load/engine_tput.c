/* engine_tput.c - the in-process baseline of the load test's HTTP-overhead target: the engine's
 * /classify throughput with no HTTP in the way. THREADS threads, each with its own luna_ctx
 * (made as server/sched.c makes a worker's: default options, one BLAS thread for the process),
 * classify the very documents the HTTP run sends, round robin, for SECONDS; prints one line
 *   {"threads", "docs", "seconds", "rate", "mean_ms", "cpu_s", "p50_ms", "p99_ms", "blas_core"}
 * (cpu_s: the process's CPU time, user + system, while the threads ran: on a shared machine,
 * documents per CPU second compare fairly where documents per second do not; blas_core: the
 * OpenBLAS kernel it ran on, which run.sh sets, through OPENBLAS_CORETYPE, to the server's).
 *
 *   engine_tput MODEL_DIR DOCS_FILE DOC_BYTES THREADS SECONDS
 *
 * DOCS_FILE holds the documents back to back, DOC_BYTES each (bench/load/prep.py writes it).
 * bench/load/run.sh links it against the engine objects of the plain build (build/engine/),
 * the same code the server runs. */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/blas.h"
#include "engine/luna.h"

static const luna_model *model;
static const uint8_t *docs;
static size_t n_docs, doc_bytes;
static double seconds;
static atomic_int go;

#define MAX_SAMPLES 100000

typedef struct {
    int id;
    luna_ctx *ctx;
    long done;
    double busy;
    float *ms; /* (MAX_SAMPLES) each forward's time */
} worker;

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *run(void *arg)
{
    worker *w = arg;
    float probs[LUNA_MAX_LABELS];
    while (!atomic_load(&go)) { /* start together */
    }
    double t0 = now(), end = t0 + seconds;
    size_t i = (size_t)w->id * 7;
    while (now() < end) {
        const uint8_t *d = docs + (i++ % n_docs) * doc_bytes;
        double a = now();
        int rc = luna_classify(w->ctx, d, doc_bytes, probs, NULL);
        if (rc) {
            fprintf(stderr, "engine_tput: luna_classify: %s\n", luna_strerror(rc));
            exit(1);
        }
        double t = now() - a;
        w->busy += t;
        if (w->done < MAX_SAMPLES) w->ms[w->done] = (float)(1000 * t);
        w->done++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: engine_tput MODEL_DIR DOCS_FILE DOC_BYTES THREADS SECONDS\n");
        return 2;
    }
    doc_bytes = strtoull(argv[3], NULL, 10);
    int threads = atoi(argv[4]);
    seconds = atof(argv[5]);
    if (doc_bytes == 0 || threads < 1 || threads > 64 || !(seconds > 0)) {
        fprintf(stderr, "engine_tput: bad arguments\n");
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)size + 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "engine_tput: cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    docs = buf;
    n_docs = (size_t)size / doc_bytes;
    if (n_docs == 0) {
        fprintf(stderr, "engine_tput: %s holds no %zu-byte document\n", argv[2], doc_bytes);
        return 1;
    }
    luna_blas_set_threads(1);
    luna_model *m;
    char err[512];
    int rc = luna_model_load(argv[1], &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "engine_tput: %s\n", err);
        return 1;
    }
    model = m;
    worker *ws = calloc((size_t)threads, sizeof *ws);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    for (int t = 0; t < threads; t++) {
        ws[t].id = t;
        ws[t].ms = malloc(MAX_SAMPLES * sizeof(float));
        if ((rc = luna_ctx_new(model, NULL, &ws[t].ctx))) {
            fprintf(stderr, "engine_tput: luna_ctx_new: %s\n", luna_strerror(rc));
            return 1;
        }
        pthread_create(&tids[t], NULL, run, &ws[t]);
    }
    double t0 = now(), c0 = cpu_now();
    atomic_store(&go, 1);
    long total = 0;
    double busy = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        total += ws[t].done;
        busy += ws[t].busy;
        luna_ctx_free(ws[t].ctx);
    }
    double dt = now() - t0, cpu = cpu_now() - c0;
    /* the forwards' time percentiles: what the machine does to one forward, with no queue */
    float *all = malloc((size_t)threads * MAX_SAMPLES * sizeof(float));
    size_t n = 0;
    for (int t = 0; t < threads; t++)
        for (long i = 0; i < ws[t].done && i < MAX_SAMPLES; i++) all[n++] = ws[t].ms[i];
    qsort(all, n, sizeof *all, cmp_float);
    double p50 = n ? all[n / 2] : 0, p99 = n ? all[(size_t)(0.99 * (double)(n - 1))] : 0;
    luna_blas_info blas;
    luna_blas_describe(&blas);
    printf("{\"threads\": %d, \"docs\": %ld, \"seconds\": %.3f, \"rate\": %.4f, \"mean_ms\": %.3f, \"cpu_s\": %.3f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"blas_core\": \"%s\"}\n",
           threads, total, dt, total / dt, total ? 1000 * busy / total : 0, cpu, p50, p99, blas.core);
    free(all);
    for (int t = 0; t < threads; t++) free(ws[t].ms);
    luna_model_free(m);
    free(ws);
    free(tids);
    free(buf);
    return 0;
}
