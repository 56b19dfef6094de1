/* plan_time.c - the resident and the streaming plan timed alternately on one file, in one process
 * (bench/plans.sh builds it against the engine's objects, as bench/load/engine_tput.c is):
 *
 *   plan_time MODEL_DIR FILE ROUNDS LANES
 *
 * maps FILE (the bytes luna classify would see), makes one context with LANES lanes and one BLAS
 * thread, then runs ROUNDS rounds of "resident, streaming" (luna_classify_plan), each forward
 * timed alone, and prints one JSON line: the tokens, every time in ms, the best of each plan, the
 * largest difference between the two plans' probabilities and the BLAS core. `luna bench` cannot
 * time this model: its random bytes hold no blank line, so the email transform leaves no body. */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/blas.h"
#include "engine/luna.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: plan_time MODEL_DIR FILE ROUNDS LANES\n");
        return 2;
    }
    int rounds = atoi(argv[3]), lanes = atoi(argv[4]);
    if (rounds < 1 || rounds > 100 || lanes < 1 || lanes > LUNA_MAX_THREADS) {
        fprintf(stderr, "plan_time: bad arguments\n");
        return 2;
    }
    int fd = open(argv[2], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || st.st_size == 0) {
        perror(argv[2]);
        return 1;
    }
    size_t len = (size_t)st.st_size;
    const uint8_t *bytes = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (bytes == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    luna_blas_set_threads(1);
    luna_model *m;
    char err[512];
    if (luna_model_load(argv[1], &m, err, sizeof err)) {
        fprintf(stderr, "plan_time: %s\n", err);
        return 1;
    }
    luna_ctx_opts o = {0, LUNA_ATTN_LUNA, lanes};
    luna_ctx *ctx;
    int rc = luna_ctx_new(m, &o, &ctx);
    if (rc) {
        fprintf(stderr, "plan_time: luna_ctx_new: %s\n", luna_strerror(rc));
        return 1;
    }
    size_t n = luna_input_tokens(m, bytes, len);
    luna_plan plans[2] = {luna_plan_resident(m, n), luna_plan_streaming(m, n)};
    const char *names[2] = {"resident", "streaming"};
    float probs[2][64];
    double best[2] = {1e30, 1e30}, *ms = calloc((size_t)rounds * 2, sizeof *ms);
    for (int r = 0; r < rounds; r++)
        for (int p = 0; p < 2; p++) {
            double t0 = now();
            rc = luna_classify_plan(ctx, &plans[p], bytes, len, probs[p], NULL);
            double t = (now() - t0) * 1e3;
            if (rc) {
                fprintf(stderr, "plan_time: %s plan: %s\n", names[p], luna_strerror(rc));
                return 1;
            }
            ms[r * 2 + p] = t;
            if (t < best[p]) best[p] = t;
        }
    int labels = luna_model_config(m)->n_labels;
    double diff = 0;
    for (int i = 0; i < labels && i < 64; i++) diff = fmax(diff, fabs((double)probs[0][i] - (double)probs[1][i]));
    luna_blas_info blas;
    luna_blas_describe(&blas);
    printf("{\"file\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"rounds\": %d, \"lanes\": %d, \"resident_ms\": %.3f, "
           "\"streaming_ms\": %.3f, \"ratio\": %.4f, \"max_prob_diff\": %.3g, \"resident_bytes\": %zu, \"times_ms\": [",
           argv[2], len, n, rounds, lanes, best[0], best[1], best[1] / best[0], diff, plans[0].bytes);
    for (int i = 0; i < rounds * 2; i++) printf("%s%.3f", i ? ", " : "", ms[i]);
    printf("], \"blas_core\": \"%s\"}\n", blas.core);
    free(ms);
    luna_ctx_free(ctx);
    luna_model_free(m);
    munmap((void *)bytes, len);
    close(fd);
    return 0;
}
