/* luna.c - the offline command line: classify a document, benchmark the engine.
 *
 *   luna classify --model DIR [FILE|-]
 *   luna bench    --model DIR --lengths 1024,4096,... [--attention luna|softmax|softmax-stream]
 *                 [--chunk N] [--threads N] [--repeat N] [--json]
 *   luna sgemm    [--size N] [--threads N] [--json]
 *   luna generate, luna bench-gen: cli/generate.c
 *
 * Every subcommand has --help. Bad arguments print a one-line reason and exit 2; engine errors
 * exit 1. Output on stdout is JSON (classify) or a table (bench, unless --json). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/luna.h"

const char *prog = "luna";
luna_blas_info cli_blas;

void die_usage(const char *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "%s %s: ", prog, cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry '%s %s --help'.\n", prog, cmd);
    exit(EXIT_USAGE);
}

long parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s %s: %s expects an integer in [%ld, %ld], got '%s'\n", prog, cmd, flag,
                lo, hi, s);
        exit(EXIT_USAGE);
    }
    return v;
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads all of f; returns a malloc'd buffer (caller frees) or NULL with errno set. */
unsigned char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (n == cap) {
            unsigned char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    *len = n;
    return buf;
}

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if (*p < 0x20) fprintf(out, "\\u%04x", *p);
        else fputc(*p, out);
    }
    fputc('"', out);
}

luna_model *load_or_die(const char *dir)
{
    luna_model *m;
    char err[512];
    int rc = luna_model_load(dir, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: cannot load model %s: %s (%s)\n", prog, dir, err, luna_err_name(rc));
        exit(1);
    }
    return m;
}

int run_in_child(void (*child)(void *arg, int fd), void *arg, void *result, size_t size,
                 struct rusage *ru)
{
    int fds[2];
    if (pipe(fds)) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        child(arg, fds[1]);
        _exit(0);
    }
    close(fds[1]);
    ssize_t got = pid > 0 ? read(fds[0], result, size) : -1;
    close(fds[0]);
    int ws = 0;
    memset(ru, 0, sizeof *ru);
    if (pid > 0) wait4(pid, &ws, 0, ru);
    return got == (ssize_t)size && WIFEXITED(ws) && WEXITSTATUS(ws) == 0 ? 0 : -1;
}

int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int parse_lengths(const char *cmd, const char *flag, const char *list, size_t *out, int cap)
{
    int count = 0;
    char *copy = strdup(list), *save = NULL;
    if (!copy) exit(1);
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (count == cap) die_usage(cmd, "%s takes too many values", flag);
        size_t mult = 1, tl = strlen(tok);
        if (tl && (tok[tl - 1] == 'k' || tok[tl - 1] == 'K')) mult = 1024, tok[tl - 1] = 0;
        else if (tl && tok[tl - 1] == 'M') mult = 1024 * 1024, tok[tl - 1] = 0;
        out[count++] = (size_t)parse_long(cmd, flag, tok, 1, 1L << 30) * mult;
    }
    free(copy);
    if (!count) die_usage(cmd, "%s is empty", flag);
    return count;
}

/* ---- plans ------------------------------------------------------------------------------- */

size_t parse_bytes(const char *cmd, const char *flag, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mult = *end == 'K' || *end == 'k' ? 1024.0 : *end == 'M' ? 1048576.0 : *end == 'G' ? 1073741824.0 : 1.0;
    if (mult > 1) end++;
    if (errno || end == s || *end || !(v >= 0) || v * mult > 1e18) {
        fprintf(stderr, "%s %s: %s expects bytes (e.g. 1048576, 512M, 2G), got '%s'\n", prog, cmd, flag, s);
        exit(EXIT_USAGE);
    }
    return (size_t)(v * mult);
}

static size_t plan_rows_of(const char *cmd, const char *spec)
{
    const char *r = spec + 8; /* after "partial:" */
    size_t mult = 1, tl = strlen(r);
    char buf[32];
    if (!tl || tl >= sizeof buf) die_usage(cmd, "--plan partial:ROWS needs a row count, got '%s'", spec);
    memcpy(buf, r, tl + 1);
    if (buf[tl - 1] == 'k' || buf[tl - 1] == 'K') mult = 1024, buf[tl - 1] = 0;
    else if (buf[tl - 1] == 'M') mult = 1024 * 1024, buf[tl - 1] = 0;
    return (size_t)parse_long(cmd, "--plan partial:ROWS", buf, 0, 1L << 40) * mult;
}

void parse_plan_spec(const char *cmd, const char *spec)
{
    if (!strcmp(spec, "auto") || !strcmp(spec, "resident") || !strcmp(spec, "streaming")) return;
    if (!strncmp(spec, "partial:", 8)) {
        plan_rows_of(cmd, spec);
        return;
    }
    die_usage(cmd, "--plan must be auto, resident, streaming or partial:ROWS, got '%s'", spec);
}

luna_plan make_plan(const luna_model *m, const char *spec, size_t n, size_t max_ws)
{
    if (!strcmp(spec, "resident")) return luna_plan_resident(m, n);
    if (!strcmp(spec, "streaming")) return luna_plan_streaming(m, n);
    if (!strncmp(spec, "partial:", 8)) return luna_plan_rows(m, n, plan_rows_of("", spec));
    return luna_plan_for(m, n, max_ws);
}

/* ---- classify --------------------------------------------------------------------------- */

static const char classify_help[] =
    "usage: luna classify --model DIR [--plan PLAN] [--max-workspace BYTES] [FILE|-]\n"
    "Classifies FILE (or standard input) with the classifier in DIR and prints JSON:\n"
    "{\"label\", \"score\", \"probabilities\": {label: p}, \"logits\": [...], \"input_bytes\", \"tokens\",\n"
    " \"plan\", \"plan_rows\", \"workspace_bytes\"}. FILE is mapped, not read into memory, so a file of any\n"
    "size costs only the pages the passes touch.\n"
    "  --model DIR            a model directory (config.json + model.safetensors)\n"
    "  --plan PLAN            auto (default): the fastest plan whose workspace fits --max-workspace;\n"
    "                         resident: keep every row (n x d floats); streaming: keep none and\n"
    "                         recompute rows for each layer (no memory grows with the input);\n"
    "                         partial:ROWS keep the first ROWS rows. Every plan gives the same result.\n"
    "  --max-workspace BYTES  the auto plan's limit (K, M, G suffixes; default: no limit)\n"
    "  --help                 this text\n";

static int cmd_classify(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"plan", required_argument, 0, 'p'},
                                         {"max-workspace", required_argument, 0, 'w'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *plan_spec = "auto";
    size_t max_ws = SIZE_MAX;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:p:w:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': plan_spec = optarg, parse_plan_spec("classify", optarg); break;
        case 'w': max_ws = parse_bytes("classify", "--max-workspace", optarg); break;
        case 'h': fputs(classify_help, stdout); return 0;
        case ':': die_usage("classify", "option %s needs a value", argv[optind - 1]); break;
        default: die_usage("classify", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (!model) die_usage("classify", "%s", "--model DIR is required");
    if (argc - optind > 1) die_usage("classify", "expects at most one FILE, got extra '%s'", argv[optind + 1]);
    const char *path = optind < argc ? argv[optind] : "-";
    size_t len = 0;
    unsigned char *buf = NULL;
    void *map = NULL;
    if (strcmp(path, "-")) {
        /* a file is mapped and read in order, once per pass: no copy of it is ever made */
        int fd = open(path, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) || S_ISDIR(st.st_mode)) {
            fprintf(stderr, "%s classify: cannot open %s: %s\n", prog, path, fd < 0 ? strerror(errno) : "a directory");
            if (fd >= 0) close(fd);
            return EXIT_USAGE;
        }
        if (!S_ISREG(st.st_mode)) { /* a pipe or a device: read it */
            FILE *f = fdopen(fd, "rb");
            buf = f ? read_all(f, &len) : NULL;
            if (f) fclose(f);
            else close(fd);
            if (!buf) {
                fprintf(stderr, "%s classify: cannot read %s: %s\n", prog, path, strerror(errno));
                return 1;
            }
            fd = -1;
        }
        len = fd >= 0 ? (size_t)st.st_size : len;
        if (fd >= 0 && len) {
            map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (map == MAP_FAILED) {
                fprintf(stderr, "%s classify: cannot map %s: %s\n", prog, path, strerror(errno));
                close(fd);
                return 1;
            }
            madvise(map, len, MADV_SEQUENTIAL);
            buf = map;
        }
        if (fd >= 0) close(fd);
    } else {
        buf = read_all(stdin, &len);
        if (!buf) {
            fprintf(stderr, "%s classify: cannot read standard input: %s\n", prog, strerror(errno));
            return 1;
        }
    }
    luna_model *m = load_or_die(model);
    const luna_config *cfg = luna_model_config(m);
    luna_ctx *ctx = NULL;
    float *probs = calloc((size_t)cfg->n_labels, sizeof(float));
    float *logits = calloc((size_t)cfg->n_labels, sizeof(float));
    int rc = probs && logits ? luna_ctx_new(m, NULL, &ctx) : LUNA_ENOMEM;
    size_t n = luna_input_tokens(m, buf, len);
    luna_plan plan = make_plan(m, plan_spec, n, max_ws);
    if (!rc) rc = luna_classify_plan(ctx, &plan, buf, len, probs, logits);
    if (rc) {
        fprintf(stderr, "%s classify: %s (%s)\n", prog, luna_strerror(rc), luna_err_name(rc));
    } else {
        int best = 0;
        for (int i = 1; i < cfg->n_labels; i++)
            if (probs[i] > probs[best]) best = i;
        printf("{\"label\": ");
        json_string(stdout, cfg->labels[best]);
        printf(", \"score\": %.6g, \"probabilities\": {", probs[best]);
        for (int i = 0; i < cfg->n_labels; i++) {
            printf(i ? ", " : "");
            json_string(stdout, cfg->labels[i]);
            printf(": %.6g", probs[i]);
        }
        printf("}, \"logits\": [");
        for (int i = 0; i < cfg->n_labels; i++) printf("%s%.6g", i ? ", " : "", logits[i]);
        printf("], \"input_bytes\": %zu, \"tokens\": %zu, \"plan\": \"%s\", \"plan_rows\": %zu, \"workspace_bytes\": %zu}\n",
               len, n, luna_plan_name(&plan), plan.rows, plan.bytes);
    }
    luna_ctx_free(ctx);
    luna_model_free(m);
    free(probs);
    free(logits);
    if (map) munmap(map, len);
    else free(buf);
    return rc ? 1 : 0;
}

/* ---- bench -------------------------------------------------------------------------------- */

static const char bench_help[] =
    "usage: luna bench --model DIR --lengths N,N,... [options]\n"
    "Runs one classification forward pass per length (and per repeat) on random bytes, each length\n"
    "in a fresh child process, and prints latency, peak RSS and throughput.\n"
    "  --model DIR        a classifier model directory\n"
    "  --lengths LIST     comma-separated token counts, e.g. 1024,4096,65536 (k = *1024, M = *2^20)\n"
    "  --attention KIND   luna (default), softmax (n x n scores built) or softmax-stream (flash-style)\n"
    "  --chunk N          rows per chunk (default 256)\n"
    "  --threads N        OpenBLAS threads (default: OpenBLAS's own)\n"
    "  --lanes N          threads that split one forward's chunks (Luna only; default 1)\n"
    "  --repeat N         forward passes per length; the fastest is reported (default 1)\n"
    "  --max-mb N         skip lengths whose workspace would exceed N MB (default 20480)\n"
    "  --plan PLAN        auto, resident, streaming or partial:ROWS (luna classify --help); the\n"
    "                     default runs luna_encode, the resident plan\n"
    "  --max-workspace B  the auto plan's limit in bytes (K, M, G suffixes)\n"
    "  --json             one JSON object per length instead of the table (with anon_mb: the peak\n"
    "                     RSS less the mapped weights, and the plan)\n"
    "  --help             this text\n"
    "Columns: n tokens; ms = fastest wall time of one forward; rss_mb = the child's peak RSS;\n"
    "base_mb = its RSS before the forward (weights + workspace); pred_mb = luna_workspace_bytes;\n"
    "gflops = analytic FLOPs / time.\n";

/* Analytic FLOPs of one forward over n tokens (multiply-adds count 2). */
static double forward_flops(const luna_config *c, double n, luna_attn attn)
{
    double d = c->d, l = c->l, ffn = c->ffn, kv = c->tie_kv ? 1 : 2;
    double lp = c->dynamic_projection && n < l ? n : l;
    double per_layer = 2 * n * d * d * 2 /* q_proj, out_proj */ + 2 * n * d * ffn * 2 /* FFN */;
    if (attn == LUNA_ATTN_LUNA) {
        per_layer += 2 * n * d * d * kv          /* pack keys (and values) */
                     + 2 * lp * d * d * (1 + kv) /* pq_proj, unpack keys (and values) */
                     + 2 * lp * n * d * 4;       /* pack and unpack: scores and A V */
    } else {
        per_layer += 2 * n * d * d * 2 /* k and v */ + 2 * n * n * d * 2 /* scores and A V */;
    }
    return per_layer * c->layers;
}

size_t rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (size_t)sysconf(_SC_PAGESIZE) / 1024;
}

typedef struct {
    int rc;
    double best_s;
    size_t base_kb;
    size_t file_kb;   /* file-backed resident pages at the end (the mapped weights) */
    size_t plan_rows; /* the plan that ran */
    size_t plan_bytes;
} bench_result;

typedef struct {
    const luna_model *m;
    const luna_ctx_opts *o;
    size_t n;
    int repeat;
    const char *plan; /* NULL: luna_encode (resident) */
    size_t max_ws;
} bench_job;

/* A field of /proc/self/status in kB ("RssFile"), or 0. */
static size_t status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t v = 0, fl = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':') v = strtoull(line + fl + 1, NULL, 10);
    if (f) fclose(f);
    return v;
}

/* In the child: make a context, run `repeat` forwards over n tokens, report through fd. */
static void bench_child(void *arg, int fd)
{
    const bench_job *job = arg;
    const luna_model *m = job->m;
    const luna_ctx_opts *o = job->o;
    size_t n = job->n;
    int repeat = job->repeat;
    const luna_config *cfg = luna_model_config(m);
    bench_result r = {0, 1e30, 0, 0, 0, 0};
    size_t special = 1 + (size_t)cfg->append_eos;
    size_t len = n > special ? n - special : 0;
    unsigned char *bytes = malloc(len ? len : 1);
    luna_ctx *ctx = NULL;
    if (!bytes) r.rc = LUNA_ENOMEM;
    else {
        unsigned x = 2463534242u;
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            bytes[i] = (unsigned char)(32 + x % 95);
        }
        r.rc = luna_ctx_new(m, o, &ctx);
    }
    r.base_kb = rss_kb();
    luna_plan plan = job->plan ? make_plan(m, job->plan, luna_input_tokens(m, bytes, len), job->max_ws)
                               : luna_plan_resident(m, luna_input_tokens(m, bytes, len));
    r.plan_rows = plan.rows;
    r.plan_bytes = plan.bytes;
    for (int i = 0; i < repeat && r.rc == 0; i++) {
        double t0 = now_s();
        r.rc = job->plan ? luna_encode_plan(ctx, &plan, bytes, len, NULL, NULL, NULL)
                         : luna_encode(ctx, bytes, len, NULL, NULL, NULL, NULL);
        double t = now_s() - t0;
        if (t < r.best_s) r.best_s = t;
    }
    r.file_kb = status_kb("RssFile");
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r) _exit(3);
    luna_ctx_free(ctx);
    free(bytes);
    _exit(0);
}

static int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"lengths", required_argument, 0, 'n'},
        {"attention", required_argument, 0, 'a'}, {"chunk", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'}, {"repeat", required_argument, 0, 'r'},
        {"json", no_argument, 0, 'j'},          {"help", no_argument, 0, 'h'},
        {"max-mb", required_argument, 0, 'M'},  {"lanes", required_argument, 0, 'L'},
        {"plan", required_argument, 0, 'p'},    {"max-workspace", required_argument, 0, 'w'},
        {0, 0, 0, 0}};
    const char *model = NULL, *lengths = NULL, *attn_name = "luna", *plan_spec = NULL;
    size_t max_ws = SIZE_MAX;
    luna_ctx_opts o = {0, LUNA_ATTN_LUNA, 1};
    int threads = 0, repeat = 1, json = 0, c;
    double max_mb = 20480;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:n:a:c:t:r:jhM:L:p:w:", opts, NULL)) != -1) {
        switch (c) {
        case 'p': plan_spec = optarg, parse_plan_spec("bench", optarg); break;
        case 'w': max_ws = parse_bytes("bench", "--max-workspace", optarg); break;
        case 'm': model = optarg; break;
        case 'n': lengths = optarg; break;
        case 'a': attn_name = optarg; break;
        case 'c': o.chunk = (int)parse_long("bench", "--chunk", optarg, 1, 65536); break;
        case 't': threads = (int)parse_long("bench", "--threads", optarg, 1, 256); break;
        case 'r': repeat = (int)parse_long("bench", "--repeat", optarg, 1, 1000); break;
        case 'j': json = 1; break;
        case 'L': o.threads = (int)parse_long("bench", "--lanes", optarg, 1, LUNA_MAX_THREADS); break;
        case 'M': max_mb = (double)parse_long("bench", "--max-mb", optarg, 1, 1L << 30); break;
        case 'h': fputs(bench_help, stdout); return 0;
        case ':': die_usage("bench", "option %s needs a value", argv[optind - 1]); break;
        default: die_usage("bench", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("bench", "unexpected argument '%s'", argv[optind]);
    if (!model) die_usage("bench", "%s", "--model DIR is required");
    if (!lengths) die_usage("bench", "%s", "--lengths LIST is required");
    if (!strcmp(attn_name, "luna")) o.attention = LUNA_ATTN_LUNA;
    else if (!strcmp(attn_name, "softmax")) o.attention = LUNA_ATTN_SOFTMAX;
    else if (!strcmp(attn_name, "softmax-stream")) o.attention = LUNA_ATTN_SOFTMAX_STREAM;
    else die_usage("bench", "--attention must be luna, softmax or softmax-stream, got '%s'", attn_name);

    /* parse the whole list before running anything */
    size_t ns[256];
    int count = parse_lengths("bench", "--lengths", lengths, ns, 256);

    if (threads) luna_blas_set_threads(threads);
    luna_model *m = load_or_die(model);
    const luna_config *cfg = luna_model_config(m);
    if (!json) {
        char blas[512];
        luna_blas_summary(&cli_blas, blas, sizeof blas);
        printf("# %s\n%-15s %4s %9s %11s %9s %9s %9s %8s\n", blas, "attention", "l", "n", "ms", "rss_mb",
               "base_mb", "pred_mb", "gflops");
    }
    int status = 0;
    for (int i = 0; i < count; i++) {
        size_t n = ns[i];
        double pred = (double)luna_workspace_bytes_attn(m, n, o.attention, o.chunk) / 1048576.0;
        if (plan_spec && o.attention == LUNA_ATTN_LUNA) pred = (double)make_plan(m, plan_spec, n, max_ws).bytes / 1048576.0;
        if (pred > max_mb) {
            if (json)
                printf("{\"attention\": \"%s\", \"l\": %d, \"n\": %zu, \"skipped\": "
                       "\"workspace %.0f MB > --max-mb %.0f\"}\n", attn_name, cfg->l, n, pred, max_mb);
            else
                printf("%-15s %4d %9zu   skipped: workspace %.0f MB > --max-mb %.0f\n", attn_name,
                       cfg->l, n, pred, max_mb);
            continue;
        }
        bench_job job = {m, &o, n, repeat, plan_spec, max_ws};
        bench_result r = {LUNA_EINVAL, 0, 0, 0, 0, 0};
        struct rusage ru;
        if (run_in_child(bench_child, &job, &r, sizeof r, &ru)) {
            fprintf(stderr, "%s bench: n=%zu: the child died\n", prog, n);
            status = 1;
            continue;
        }
        if (r.rc) {
            fprintf(stderr, "%s bench: n=%zu: %s\n", prog, n, luna_strerror(r.rc));
            status = 1;
            continue;
        }
        double gf = forward_flops(cfg, (double)n, o.attention) / r.best_s * 1e-9;
        double rss = (double)ru.ru_maxrss / 1024.0, base = (double)r.base_kb / 1024.0;
        /* the peak of anonymous memory: the peak RSS less the mapped weights' pages */
        double anon = rss - (double)r.file_kb / 1024.0;
        luna_plan shown = {n, r.plan_rows, r.plan_bytes, 0};
        const char *plan_name = o.attention == LUNA_ATTN_LUNA ? luna_plan_name(&shown) : "resident";
        if (json)
            printf("{\"attention\": \"%s\", \"l\": %d, \"n\": %zu, \"ms\": %.3f, \"rss_mb\": %.2f, "
                   "\"anon_mb\": %.2f, \"base_mb\": %.2f, \"pred_mb\": %.2f, \"gflops\": %.2f, \"threads\": %d, "
                   "\"lanes\": %d, \"plan\": \"%s\", \"plan_rows\": %zu, \"blas_core\": \"%s\"}\n",
                   attn_name, cfg->l, n, r.best_s * 1e3, rss, anon, base, pred, gf, luna_blas_threads(),
                   o.threads > 1 ? o.threads : 1, plan_name, r.plan_rows, cli_blas.core);
        else
            printf("%-15s %4d %9zu %11.2f %9.1f %9.1f %9.1f %8.1f\n", attn_name, cfg->l, n,
                   r.best_s * 1e3, rss, base, pred, gf);
        fflush(stdout);
    }
    luna_model_free(m);
    return status;
}

/* cli_blas as a JSON object (the strings are core names, versions and cpuid text: no quotes or
 * backslashes, but escape them anyway). */
static void json_str(char **p, char *end, const char *key, const char *v)
{
    *p += snprintf(*p, (size_t)(end - *p), "%s\"%s\": \"", (*p)[-1] == '{' ? "" : ", ", key);
    for (; *v && *p < end - 8; v++) {
        if (*v == '"' || *v == '\\') *(*p)++ = '\\';
        *(*p)++ = (unsigned char)*v < 0x20 ? ' ' : *v;
    }
    *p += snprintf(*p, (size_t)(end - *p), "\"");
}

const char *blas_json(char *buf, size_t cap)
{
    char *p = buf, *end = buf + cap;
    *p++ = '{';
    *p = 0;
    json_str(&p, end, "library", cli_blas.library);
    json_str(&p, end, "version", cli_blas.version);
    json_str(&p, end, "core", cli_blas.core);
    json_str(&p, end, "selection", cli_blas.selection);
    json_str(&p, end, "cpu", cli_blas.cpu);
    if (p < end - 2) *p++ = '}', *p = 0;
    return buf;
}

/* ---- sgemm ---------------------------------------------------------------------------------- */

static const char sgemm_help[] =
    "usage: luna sgemm [--size N] [--threads N] [--seconds S] [--json]\n"
    "Measures OpenBLAS sgemm on N x N x N (default 1024) and prints GFLOP/s: the machine's rate\n"
    "that benchmark throughput is compared with.\n";

static int cmd_sgemm(int argc, char **argv)
{
    static const struct option opts[] = {{"size", required_argument, 0, 's'},
                                         {"threads", required_argument, 0, 't'},
                                         {"seconds", required_argument, 0, 'S'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int size = 1024, threads = 0, json = 0, c;
    double seconds = 1.0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":s:t:S:jh", opts, NULL)) != -1) {
        switch (c) {
        case 's': size = (int)parse_long("sgemm", "--size", optarg, 16, 8192); break;
        case 't': threads = (int)parse_long("sgemm", "--threads", optarg, 1, 256); break;
        case 'S': seconds = (double)parse_long("sgemm", "--seconds", optarg, 1, 60); break;
        case 'j': json = 1; break;
        case 'h': fputs(sgemm_help, stdout); return 0;
        case ':': die_usage("sgemm", "option %s needs a value", argv[optind - 1]); break;
        default: die_usage("sgemm", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("sgemm", "unexpected argument '%s'", argv[optind]);
    if (threads) luna_blas_set_threads(threads);
    double g = luna_sgemm_gflops(size, size, size, seconds);
    char blas[512];
    if (json) {
        printf("{\"size\": %d, \"threads\": %d, \"gflops\": %.2f, \"blas\": %s}\n", size, luna_blas_threads(), g,
               blas_json(blas, sizeof blas));
    } else {
        luna_blas_summary(&cli_blas, blas, sizeof blas);
        printf("sgemm %dx%dx%d, %d threads: %.1f GFLOP/s\n# %s\n", size, size, size, luna_blas_threads(), g, blas);
    }
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static const char main_help[] =
    "usage: luna [--blas-core auto|default|NAME] COMMAND [options]\n"
    "Commands:\n"
    "  classify   classify a document with a Luna classifier\n"
    "  bench      measure latency and peak memory of a forward pass at several lengths\n"
    "  generate   generate text with a causal LM, streaming bytes to stdout\n"
    "  bench-gen  measure prefill throughput, time per token and state bytes at several contexts\n"
    "  bench-batch measure batched decode steps: tokens/s of B streams stepping together\n"
    "  bench-pack measure packs: short documents classified as one forward against one by one\n"
    "  eval       score a model on a data file: accuracy and F1, or bits per byte\n"
    "  sgemm      measure this machine's sgemm rate\n"
    "Run 'luna COMMAND --help' for a command's options.\n"
    "--blas-core (or LUNA_BLAS_CORE) picks OpenBLAS's kernels: auto (default: the best this CPU\n"
    "runs, unless OPENBLAS_CORETYPE is set), default (OpenBLAS's own choice) or a core name.\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(main_help, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(main_help, stdout);
        return 0;
    }
    /* the BLAS kernel, before anything else: choosing it may re-execute this program */
    const char *blas_core = getenv("LUNA_BLAS_CORE");
    int skip = 0;
    if (!strcmp(cmd, "--blas-core") || !strncmp(cmd, "--blas-core=", 12)) {
        if (cmd[11] == '=') blas_core = cmd + 12, skip = 1;
        else if (argc > 2) blas_core = argv[2], skip = 2;
        else {
            fprintf(stderr, "%s: --blas-core needs a value\n", prog);
            return EXIT_USAGE;
        }
        if (argc <= skip + 1) {
            fputs(main_help, stderr);
            return EXIT_USAGE;
        }
        cmd = argv[skip + 1];
    }
    int brc = luna_blas_select(blas_core, argv, &cli_blas);
    if (brc) {
        fprintf(stderr, "%s: %s\n", prog, cli_blas.reason);
        return brc == -1 ? EXIT_USAGE : 1;
    }
    if (!strcmp(cli_blas.selection, "fallback")) fprintf(stderr, "%s: warning: %s\n", prog, cli_blas.reason);
    argc -= skip;
    argv += skip;
    if (!strcmp(cmd, "classify")) return cmd_classify(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "sgemm")) return cmd_sgemm(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-gen")) return cmd_bench_gen(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-batch")) return cmd_bench_batch(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-pack")) return cmd_bench_pack(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) { int cmd_eval(int, char **); return cmd_eval(argc - 1, argv + 1); } /* cli/eval.c */
    fprintf(stderr, "%s: unknown command '%s'\n", prog, cmd);
    fputs(main_help, stderr);
    return EXIT_USAGE;
}
