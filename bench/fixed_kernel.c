/* fixed_kernel.c - the decode steps' batch-invariant product (kn_linear_fixed) against OpenBLAS's
 * sgemm on a causal LM's own layers (bench/kernel.sh builds it against the engine's objects):
 *
 *   fixed_kernel MODEL_DIR BATCHES ROUNDS
 *
 * For each batch size B (a comma list) it runs every layer of a decode step (the projections,
 * out_proj, fc1, fc2 of each layer, then the vocabulary head) on B rows, once per pass, and
 * times passes in thread CPU time: on every instruction set of kn_linear_fixed that this CPU runs
 * (portable C only for B <= 4: it is slow by design), and through kn_linear (sgemm, or sgemv at
 * B = 1; not batch invariant, the rate to compare with). Each round alternates the paths; a
 * path's figure is the median over ROUNDS of each round's best of 5 passes. Prints a table, then
 * one JSON line per B. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/blas.h"
#include "engine/kernels.h"
#include "engine/luna.h"
#include "engine/model.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

enum { PATHS = 4 }; /* C, AVX2, AVX-512, sgemm */
static const char *const path_name[PATHS] = {"fixed C", "fixed AVX2", "fixed AVX-512", "sgemm"};

/* One pass over the layers on path p; returns its thread CPU seconds. */
static double pass(int p, luna_linear *const *lin, int n, const float *x, size_t B, float *y)
{
    double t0 = cpu_now();
    for (int q = 0; q < n; q++) {
        const luna_linear *L = lin[q];
        if (p == 3) kn_linear(L, x, B, (size_t)L->in, y, (size_t)L->out, 1.0f);
        else kn_linear_fixed_isa((kn_isa)p, L, x, B, (size_t)L->in, y, (size_t)L->out, 1.0f);
    }
    return cpu_now() - t0;
}

int main(int argc, char **argv)
{
    luna_blas_info bi;
    if (luna_blas_select("auto", argv, &bi) == -2) {
        fprintf(stderr, "fixed_kernel: %s\n", bi.reason);
        return 1;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: fixed_kernel MODEL_DIR BATCHES ROUNDS\n");
        return 2;
    }
    char err[256];
    luna_model *m = NULL;
    if (luna_model_load(argv[1], &m, err, sizeof err) != 0) {
        fprintf(stderr, "fixed_kernel: %s\n", err);
        return 1;
    }
    const luna_config *cfg = luna_model_config(m);
    if (cfg->task != LUNA_TASK_CAUSAL_LM) {
        fprintf(stderr, "fixed_kernel: %s is not a causal LM\n", argv[1]);
        return 1;
    }
    int rounds = atoi(argv[3]);
    if (rounds < 1) rounds = 1;
    luna_blas_set_threads(1);
    char blas[512];
    luna_blas_summary(&bi, blas, sizeof blas);
    luna_linear *lin[LUNA_DECODE_LINEARS];
    int n = luna_decode_linears(m, lin);
    double flops_row = 0;
    size_t widest = 0;
    for (int q = 0; q < n; q++) {
        flops_row += 2.0 * lin[q]->out * lin[q]->in;
        if ((size_t)lin[q]->out > widest) widest = (size_t)lin[q]->out;
        if ((size_t)lin[q]->in > widest) widest = (size_t)lin[q]->in;
    }
    printf("# %s: %d layers, %.2f MFLOP a row; %s; median of %d rounds of the best of 5 passes (thread CPU time)\n",
           argv[1], n, flops_row * 1e-6, blas, rounds);
    printf("%6s", "batch");
    for (int p = 0; p < PATHS; p++)
        if (p == 3 || kn_isa_supported((kn_isa)p)) printf("  %14s", path_name[p]);
    printf("   (GFLOP/s)\n");
    char *list = strdup(argv[2]);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        size_t B = (size_t)atoi(tok);
        if (B < 1) continue;
        float *x = malloc(B * widest * sizeof(float)), *y = malloc(B * widest * sizeof(float));
        double *best = malloc((size_t)rounds * PATHS * sizeof(double)), rate[PATHS] = {0};
        if (!x || !y || !best) return 1;
        for (size_t i = 0; i < B * widest; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        for (int r = 0; r < rounds; r++)
            for (int p = 0; p < PATHS; p++) {
                int on = p == 3 || (kn_isa_supported((kn_isa)p) && (p != 0 || B <= 4));
                double b = 1e30;
                for (int i = 0; on && i < 5; i++) {
                    double t = pass(p, lin, n, x, B, y);
                    if (t < b) b = t;
                }
                best[p * rounds + r] = on ? b : 0;
            }
        printf("%6zu", B);
        for (int p = 0; p < PATHS; p++) {
            qsort(best + p * rounds, (size_t)rounds, sizeof(double), cmp_double);
            double med = best[p * rounds + rounds / 2];
            rate[p] = med > 0 ? flops_row * (double)B / med * 1e-9 : 0;
            if (p == 3 || kn_isa_supported((kn_isa)p)) {
                if (rate[p] > 0) printf("  %14.1f", rate[p]);
                else printf("  %14s", "-");
            }
        }
        printf("\n");
        fprintf(stderr, "{\"batch\": %zu, \"gflops\": {\"c\": %.2f, \"avx2\": %.2f, \"avx512\": %.2f, \"sgemm\": %.2f}}\n", B,
                rate[0], rate[1], rate[2], rate[3]);
        free(x), free(y), free(best);
    }
    free(list);
    luna_model_free(m);
    return 0;
}
