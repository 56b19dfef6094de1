/* pack.c - luna bench-pack: short documents classified one by one against the same documents
 * as one pack (luna_classify_pack), side by side in one run. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char bench_pack_help[] =
    "usage: luna bench-pack --model DIR [--lengths 16,32,64,128] [--rounds N] [--threads N] [--lanes N] [--json]\n"
    "Measures packs (luna_classify_pack): for each document length, as many documents of random\n"
    "printable bytes (for an email model, \"Subject: \", the subject, a blank line and the body) as fit one pack (their tokens and rows of P within a chunk, 256 rows, per lane) are\n"
    "classified one by one (luna_classify), then as one pack, in turn for --rounds rounds (the\n"
    "order flips each round; each round repeats both for at least 50 ms); the medians of the\n"
    "time per document, the documents/s both ways and the pack's speed-up. max_rel_diff: the\n"
    "largest relative difference of a document's probabilities between the two.\n"
    "  --lengths LIST  document lengths in bytes (default 16,32,64,128)\n"
    "  --rounds N      rounds per length (default 9)\n"
    "  --threads N     OpenBLAS threads (default 1)\n"
    "  --lanes N       lanes of the context (default 1): a pack splits its documents over them, a\n"
    "                  lone document its chunks\n"
    "  --json          one JSON object per length instead of the table\n";

/* Seconds per document of `k` documents, one by one (pack 0) or as one pack, repeated for at
 * least 50 ms; probs receives the last repeat's (k x labels). */
static int time_docs(luna_ctx *ctx, int pack, size_t k, const uint8_t *const *docs, const size_t *lens, float *probs,
                     size_t labels, double *per_doc)
{
    long reps = 0;
    int rc = 0;
    double t0 = now_s(), t;
    do {
        if (pack) rc = luna_classify_pack(ctx, k, docs, lens, probs, NULL);
        for (size_t i = 0; i < k && !pack && !rc; i++) rc = luna_classify(ctx, docs[i], lens[i], probs + i * labels, NULL);
        reps++;
    } while (!rc && (t = now_s() - t0) < 0.05);
    *per_doc = rc ? 0 : t / (double)reps / (double)k;
    return rc;
}

int cmd_bench_pack(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},  {"lengths", required_argument, 0, 'n'},
                                         {"rounds", required_argument, 0, 'r'}, {"threads", required_argument, 0, 't'},
                                         {"lanes", required_argument, 0, 'L'},  {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *lengths = "16,32,64,128";
    int rounds = 9, threads = 1, lanes = 1, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:n:r:t:L:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'n': lengths = optarg; break;
        case 'r': rounds = (int)parse_long("bench-pack", "--rounds", optarg, 1, 1000); break;
        case 't': threads = (int)parse_long("bench-pack", "--threads", optarg, 1, 256); break;
        case 'L': lanes = (int)parse_long("bench-pack", "--lanes", optarg, 1, LUNA_MAX_THREADS); break;
        case 'j': json = 1; break;
        case 'h': fputs(bench_pack_help, stdout); return 0;
        case ':': die_usage("bench-pack", "option %s needs a value", argv[optind - 1]); break;
        default: die_usage("bench-pack", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("bench-pack", "unexpected argument '%s'", argv[optind]);
    if (!model) die_usage("bench-pack", "%s", "--model DIR is required");
    size_t ns[64];
    int count = parse_lengths("bench-pack", "--lengths", lengths, ns, 64);
    luna_blas_set_threads(threads);
    luna_model *m = load_or_die(model);
    const luna_config *cfg = luna_model_config(m);
    if (cfg->task != LUNA_TASK_CLASSIFY) {
        fprintf(stderr, "%s bench-pack: %s is not a classifier\n", prog, model);
        luna_model_free(m);
        return 1;
    }
    enum { MAX_DOCS = 1024 }; /* (a pack of more stops at these) */
    size_t labels = (size_t)cfg->n_labels;
    luna_ctx *ctx = NULL;
    luna_ctx_opts co = {0, LUNA_ATTN_LUNA, lanes};
    int rc = luna_ctx_new(m, &co, &ctx);
    const uint8_t *docs[MAX_DOCS];
    size_t lens[MAX_DOCS], tok[MAX_DOCS];
    uint8_t *bytes = NULL;
    float *p1 = malloc(MAX_DOCS * labels * sizeof(float)), *pk = malloc(MAX_DOCS * labels * sizeof(float));
    double *t1 = malloc((size_t)rounds * sizeof(double)), *tk = malloc((size_t)rounds * sizeof(double));
    if (!rc && (!p1 || !pk || !t1 || !tk)) rc = LUNA_ENOMEM;
    if (!rc && !json) {
        char blas[512];
        luna_blas_summary(&cli_blas, blas, sizeof blas);
        printf("# %s\n# d %d, %d layers, l %d, ffn %d; median of %d rounds; %d BLAS thread(s), %d lane(s)\n", blas,
               cfg->d, cfg->layers, cfg->l, cfg->ffn, rounds, threads, lanes);
        printf("%8s %8s %6s %12s %12s %10s %10s %8s %13s\n", "bytes", "tokens", "docs", "alone_ms", "pack_ms",
               "alone_dps", "pack_dps", "speedup", "max_rel_diff");
    }
    for (int li = 0; li < count && !rc; li++) {
        size_t len = ns[li] ? ns[li] : 1;
        free(bytes);
        if (!(bytes = malloc(MAX_DOCS * len))) {
            rc = LUNA_ENOMEM;
            break;
        }
        unsigned x = 12345u + (unsigned)li;
        for (size_t i = 0; i < MAX_DOCS * len; i++) x = x * 1103515245u + 12345u, bytes[i] = (uint8_t)((x >> 16) % 95 + 32);
        /* an email model reads a message: its random bytes start with a header and a blank line */
        static const char head[] = "Subject: ";
        for (size_t i = 0; i < MAX_DOCS && cfg->input_transform == LUNA_XFORM_EMAIL_SUBJECT_BODY; i++) {
            uint8_t *d = bytes + i * len;
            memcpy(d, head, len < 9 ? len : 9);
            if (len > 20) memcpy(d + len / 3, "\n\n", 2);
        }
        for (size_t i = 0; i < MAX_DOCS; i++) {
            docs[i] = bytes + i * len, lens[i] = len;
            tok[i] = luna_input_tokens(m, docs[i], len);
        }
        size_t k = luna_pack_fit(m, 0, lanes, tok, MAX_DOCS);
        if (k == 0) {
            fprintf(stderr, "%s bench-pack: %zu bytes (%zu tokens) do not fit a pack\n", prog, len, tok[0]);
            continue;
        }
        for (int r = 0; r < rounds && !rc; r++) {
            int pack_first = r & 1;
            rc = time_docs(ctx, pack_first, k, docs, lens, pack_first ? pk : p1, labels, pack_first ? &tk[r] : &t1[r]);
            if (!rc) rc = time_docs(ctx, !pack_first, k, docs, lens, pack_first ? p1 : pk, labels, pack_first ? &t1[r] : &tk[r]);
        }
        if (rc) break;
        double diff = 0;
        for (size_t i = 0; i < k * labels; i++) {
            double e = fabs((double)pk[i] - p1[i]) / (fabs((double)p1[i]) > 1e-30 ? fabs((double)p1[i]) : 1e-30);
            if (e > diff) diff = e;
        }
        qsort(t1, (size_t)rounds, sizeof *t1, cmp_double);
        qsort(tk, (size_t)rounds, sizeof *tk, cmp_double);
        double a = t1[rounds / 2], b = tk[rounds / 2];
        if (json)
            printf("{\"bytes\": %zu, \"tokens\": %zu, \"docs\": %zu, \"alone_ms\": %.4f, \"pack_ms\": %.4f, "
                   "\"alone_docs_s\": %.1f, \"pack_docs_s\": %.1f, \"speedup\": %.3f, \"max_rel_diff\": %.3g, "
                   "\"threads\": %d, \"lanes\": %d, \"blas_core\": \"%s\"}\n",
                   len, tok[0], k, a * 1e3, b * 1e3, 1 / a, 1 / b, a / b, diff, threads, lanes, cli_blas.core);
        else
            printf("%8zu %8zu %6zu %12.4f %12.4f %10.0f %10.0f %8.2f %13.2g\n", len, tok[0], k, a * 1e3, b * 1e3, 1 / a,
                   1 / b, a / b, diff);
        fflush(stdout);
    }
    if (rc) fprintf(stderr, "%s bench-pack: %s\n", prog, luna_strerror(rc));
    free(bytes), free(p1), free(pk), free(t1), free(tk);
    luna_ctx_free(ctx);
    luna_model_free(m);
    return rc ? 1 : 0;
}
