/* eval.c - `luna eval`: a model's quality and throughput on a data file, computed by the engine.
 *
 *   luna eval --model DIR --data FILE [--limit N] [--piece N] [--json]
 *
 * A classifier reads FILE as JSONL: one object per line with "label" (one of the model's
 * labels) and the message as "text" or "text_base64". "text" holds the message BYTES decoded as
 * latin-1 (docs/data.md: byte b is code point U+00bb), so every code point must be below U+0100
 * and becomes one byte again; other keys ("source") are ignored. Each message goes through
 * luna_classify whole; the prediction is the likeliest label. It prints accuracy, mean log loss
 * (nats), per-label precision/recall/F1, the counts, and the throughput of the engine calls.
 *
 * A causal LM reads FILE as plain bytes and prints its bits per byte: the file is one sequence,
 * bos_id then one token per byte, fed to luna_prefill in pieces of --piece tokens with the logits
 * of every position (all = 1); the state carries the context from piece to piece, so memory is
 * the state plus one piece, whatever the file's size. Every byte is predicted once, from the
 * logits after the token before it, by a log-softmax over the whole vocabulary (in double).
 *
 * Exit status: 0; 2 for bad arguments or a data file that cannot be opened; 1 for a model that
 * does not load, a malformed data line (the message names FILE:LINE) or an engine error. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/json.h"
#include "engine/luna.h"

#define EVAL_PIECE 4096 /* tokens per luna_prefill call (--piece) */

static const char eval_help[] =
    "usage: luna eval --model DIR --data FILE [--limit N] [--piece N] [--plan PLAN] [--json]\n"
    "Scores a data file with the model in DIR, through the engine, and prints the metrics.\n"
    "  classification: FILE is JSONL, one {\"text\": ..., \"label\": ...} per line; \"text\" is the\n"
    "                  message's bytes decoded as latin-1 (each code point < U+0100 is one byte),\n"
    "                  or give \"text_base64\" instead. Prints accuracy, log loss, per-label\n"
    "                  precision/recall/F1 and counts, bytes, and messages/s and MB/s.\n"
    "  causal-lm:      FILE is plain text, scored as one stream (bos, then every byte): bits per\n"
    "                  byte, and tokens/s and MB/s of the prefill.\n"
    "  --model DIR     a model directory (config.json + model.safetensors)\n"
    "  --data FILE     the data file\n"
    "  --limit N       only the first N messages (classification) or bytes (causal-lm)\n"
    "  --piece N       causal-lm: tokens per prefill call (default 4096)\n"
    "  --plan PLAN     classification: auto (the resident plan), resident, streaming or\n"
    "                  partial:ROWS (luna classify --help); the metrics are the same under each\n"
    "  --json          print one JSON object instead of the table\n"
    "  --help          this text\n"
    "bytes are the messages' own (before the input transform); MB = 10^6 bytes; the times are\n"
    "the wall time of the engine calls alone (parsing and loading are not counted).\n"
    "Exit status: 0 on success; 2 on bad arguments or a data file that cannot be opened; 1 when\n"
    "the model does not load, a data line is malformed (FILE:LINE is named) or the engine fails.\n";

typedef struct {
    const char *model_dir, *data_path;
    long long limit; /* 0 = all */
    int piece, json;
    const char *plan; /* classification: a plan specification (cli.h) */
} eval_args;

static void json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if (*p < 0x20) fprintf(out, "\\u%04x", *p);
        else fputc(*p, out);
    }
    fputc('"', out);
}

/* ---- one JSONL record -------------------------------------------------------------------- */

/* UTF-8 (as the JSON parser returns it) back to latin-1: every code point must be < U+0100,
 * i.e. a 1-byte sequence or a 2-byte one with lead C2 or C3. out has room for len bytes.
 * Returns the byte count, or -1. The input is valid UTF-8 (the parser checked it). */
static long long utf8_to_latin1(const unsigned char *s, size_t len, unsigned char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c < 0x80) out[n++] = c;
        else if ((c == 0xC2 || c == 0xC3) && i + 1 < len) out[n++] = (unsigned char)(((c & 0x1F) << 6) | (s[++i] & 0x3F));
        else return -1;
    }
    return (long long)n;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 (RFC 4648 section 4), padding optional. out has room for len bytes.
 * Returns the byte count, or -1 on a character outside the alphabet or a bad length. */
static long long b64_decode(const unsigned char *s, size_t len, unsigned char *out)
{
    while (len && s[len - 1] == '=') len--;
    if (len % 4 == 1) return -1;
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(s[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long long)n;
}

/* Parses one line into the message bytes (*msg, *msg_len; msg must hold len bytes) and the
 * label's index. On failure writes a reason into err and returns -1. */
static int parse_record(const char *line, size_t len, const luna_config *cfg, unsigned char *msg,
                        size_t *msg_len, int *label, char *err, size_t errlen)
{
    jsn_doc *doc = NULL;
    char jerr[256], show[64];
    if (jsn_parse(line, len, 0, &doc, jerr, sizeof jerr)) {
        snprintf(err, errlen, "not valid JSON: %s", jerr);
        return -1;
    }
    int rc = -1;
    const jsn_value *root = jsn_root(doc);
    const jsn_value *lab = jsn_get(root, "label"), *text = jsn_get(root, "text");
    const jsn_value *b64 = jsn_get(root, "text_base64");
    if (root->type != JSN_OBJECT) {
        snprintf(err, errlen, "expected a JSON object, got %s", jsn_type_name(root->type));
    } else if (!lab || lab->type != JSN_STRING) {
        snprintf(err, errlen, "\"label\" must be a string%s", lab ? "" : " (it is missing)");
    } else if (!text == !b64) {
        snprintf(err, errlen, "needs exactly one of \"text\" and \"text_base64\"");
    } else if ((text ? text : b64)->type != JSN_STRING) {
        snprintf(err, errlen, "\"%s\" must be a string", text ? "text" : "text_base64");
    } else {
        *label = -1;
        for (int i = 0; i < cfg->n_labels; i++)
            if (strlen(cfg->labels[i]) == lab->len && !memcmp(cfg->labels[i], lab->str, lab->len))
                *label = i;
        long long n = text ? utf8_to_latin1((const unsigned char *)text->str, text->len, msg)
                           : b64_decode((const unsigned char *)b64->str, b64->len, msg);
        if (*label < 0)
            snprintf(err, errlen, "label \"%s\" is not one of the model's labels",
                     jsn_show(lab->str, lab->len, show, sizeof show));
        else if (n < 0 && text)
            snprintf(err, errlen, "\"text\" has a character above U+00FF (it must be bytes decoded "
                                  "as latin-1; use \"text_base64\" for other data)");
        else if (n < 0)
            snprintf(err, errlen, "\"text_base64\" is not valid base64");
        else {
            *msg_len = (size_t)n;
            rc = 0;
        }
    }
    jsn_free(doc);
    return rc;
}

/* ---- classification ------------------------------------------------------------------------ */

typedef struct {
    long long count, predicted, correct; /* per label: messages with it, predicted as it, both */
} label_counts;

static double ratio(long long a, long long b) { return b ? (double)a / (double)b : 0.0; }

static int eval_classifier(const eval_args *a, luna_model *m, FILE *f)
{
    const luna_config *cfg = luna_model_config(m);
    int L = cfg->n_labels;
    label_counts *lc = calloc((size_t)L, sizeof *lc);
    float *probs = malloc((size_t)L * sizeof *probs), *logits = malloc((size_t)L * sizeof *logits);
    luna_ctx *ctx = NULL;
    char *line = NULL;
    size_t cap = 0, msg_cap = 0;
    unsigned char *msg = NULL;
    int rc = lc && probs && logits ? luna_ctx_new(m, NULL, &ctx) : LUNA_ENOMEM;
    if (rc) {
        fprintf(stderr, "%s eval: %s (%s)\n", prog, luna_strerror(rc), luna_err_name(rc));
        goto out;
    }
    long long n = 0, lineno = 0, bytes = 0, tokens = 0, correct = 0;
    double seconds = 0, nats = 0;
    ssize_t got;
    while ((!a->limit || n < a->limit) && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        if (len && line[len - 1] == '\n') len--;
        if (len && line[len - 1] == '\r') len--;
        if (!len) continue; /* blank lines separate nothing; skip them */
        if (len > msg_cap) {
            unsigned char *nm = realloc(msg, len);
            if (!nm) {
                rc = LUNA_ENOMEM;
                fprintf(stderr, "%s eval: %s:%lld: out of memory\n", prog, a->data_path, lineno);
                goto out;
            }
            msg = nm, msg_cap = len;
        }
        size_t msg_len = 0;
        int label = 0;
        char err[512];
        if (parse_record(line, len, cfg, msg, &msg_len, &label, err, sizeof err)) {
            fprintf(stderr, "%s eval: %s:%lld: %s\n", prog, a->data_path, lineno, err);
            rc = LUNA_EINVAL;
            goto out;
        }
        double t0 = now_s();
        luna_plan plan = make_plan(m, a->plan, luna_input_tokens(m, msg, msg_len), SIZE_MAX);
        rc = luna_classify_plan(ctx, &plan, msg, msg_len, probs, logits);
        seconds += now_s() - t0;
        if (rc) {
            fprintf(stderr, "%s eval: %s:%lld: %s (%s)\n", prog, a->data_path, lineno,
                    luna_strerror(rc), luna_err_name(rc));
            goto out;
        }
        int best = 0;
        for (int i = 1; i < L; i++)
            if (probs[i] > probs[best]) best = i;
        double mx = logits[0], se = 0;
        for (int i = 1; i < L; i++) mx = logits[i] > mx ? logits[i] : mx;
        for (int i = 0; i < L; i++) se += exp((double)logits[i] - mx);
        nats += mx + log(se) - (double)logits[label]; /* -log p(label), from the logits */
        lc[label].count++;
        lc[best].predicted++;
        if (best == label) lc[label].correct++, correct++;
        n++;
        bytes += (long long)msg_len;
        tokens += (long long)luna_input_tokens(m, msg, msg_len);
    }
    if (ferror(f)) {
        fprintf(stderr, "%s eval: cannot read %s: %s\n", prog, a->data_path, strerror(errno));
        rc = LUNA_EIO;
        goto out;
    }
    if (!n) {
        fprintf(stderr, "%s eval: %s holds no messages\n", prog, a->data_path);
        rc = LUNA_EINVAL;
        goto out;
    }
    double acc = ratio(correct, n), loss = nats / (double)n, s = seconds > 0 ? seconds : 1e-9;
    if (a->json) {
        printf("{\"task\": \"classification\", \"model\": ");
        json_str(stdout, a->model_dir);
        printf(", \"data\": ");
        json_str(stdout, a->data_path);
        printf(", \"count\": %lld, \"bytes\": %lld, \"tokens\": %lld, \"correct\": %lld, "
               "\"accuracy\": %.9g, \"log_loss\": %.9g, \"labels\": {", n, bytes, tokens, correct,
               acc, loss);
        for (int i = 0; i < L; i++) {
            double p = ratio(lc[i].correct, lc[i].predicted), r = ratio(lc[i].correct, lc[i].count);
            printf("%s", i ? ", " : "");
            json_str(stdout, cfg->labels[i]);
            printf(": {\"precision\": %.9g, \"recall\": %.9g, \"f1\": %.9g, \"count\": %lld, "
                   "\"predicted\": %lld}", p, r, p + r > 0 ? 2 * p * r / (p + r) : 0.0,
                   lc[i].count, lc[i].predicted);
        }
        printf("}, \"seconds\": %.6f, \"messages_per_s\": %.3f, \"mb_per_s\": %.4f, "
               "\"tokens_per_s\": %.1f}\n", seconds, (double)n / s, (double)bytes / 1e6 / s,
               (double)tokens / s);
    } else {
        printf("model      %s (classification, %d labels)\n", a->model_dir, L);
        printf("data       %s: %lld messages, %lld bytes, %lld tokens\n", a->data_path, n, bytes,
               tokens);
        printf("accuracy   %.6f (%lld of %lld)\n", acc, correct, n);
        printf("log loss   %.6f nats\n", loss);
        printf("%-20s %10s %10s %10s %8s %10s\n", "label", "precision", "recall", "f1", "count",
               "predicted");
        for (int i = 0; i < L; i++) {
            double p = ratio(lc[i].correct, lc[i].predicted), r = ratio(lc[i].correct, lc[i].count);
            printf("%-20s %10.6f %10.6f %10.6f %8lld %10lld\n", cfg->labels[i], p, r,
                   p + r > 0 ? 2 * p * r / (p + r) : 0.0, lc[i].count, lc[i].predicted);
        }
        printf("throughput %.4f s in the engine: %.2f messages/s, %.4f MB/s, %.0f tokens/s\n",
               seconds, (double)n / s, (double)bytes / 1e6 / s, (double)tokens / s);
    }
    rc = 0;
out:
    luna_ctx_free(ctx);
    free(line);
    free(msg);
    free(lc);
    free(probs);
    free(logits);
    return rc ? 1 : 0;
}

/* ---- causal LM: bits per byte -------------------------------------------------------------- */

/* -log p(target) in nats from one row of logits, by a log-softmax over all V entries. */
static double row_nats(const float *row, int V, int target)
{
    double mx = row[0], se = 0;
    for (int i = 1; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    for (int i = 0; i < V; i++) se += exp((double)row[i] - mx);
    return mx + log(se) - (double)row[target];
}

static int eval_lm(const eval_args *a, luna_model *m, FILE *f)
{
    const luna_config *cfg = luna_model_config(m);
    int V = cfg->vocab_size, P = a->piece;
    luna_ctx *ctx = NULL;
    luna_gen_state *s = NULL;
    int32_t *toks = malloc((size_t)P * sizeof *toks);
    unsigned char *bytes = malloc((size_t)P);
    float *logits = malloc((size_t)P * (size_t)V * sizeof *logits); /* (P, V) */
    int rc = toks && bytes && logits ? luna_ctx_new(m, NULL, &ctx) : LUNA_ENOMEM;
    if (!rc) rc = luna_gen_state_new(m, &s);
    if (rc) {
        fprintf(stderr, "%s eval: %s (%s)\n", prog, luna_strerror(rc), luna_err_name(rc));
        goto out;
    }
    /* Piece k feeds [token before its first byte, its bytes but the last] and predicts its
     * bytes: the input of the first piece starts with bos_id, each later one with the previous
     * piece's last byte. */
    int32_t prev = cfg->bos_id;
    long long total = 0;
    double nats = 0, seconds = 0;
    for (;;) {
        size_t want = (size_t)P;
        if (a->limit && (long long)want > a->limit - total) want = (size_t)(a->limit - total);
        size_t got = want ? fread(bytes, 1, want, f) : 0;
        if (!got) break;
        toks[0] = prev;
        for (size_t i = 1; i < got; i++) toks[i] = cfg->byte_offset + bytes[i - 1];
        double t0 = now_s();
        rc = luna_prefill(ctx, s, toks, got, logits, 1);
        seconds += now_s() - t0;
        if (rc) {
            fprintf(stderr, "%s eval: %s: at byte %lld: %s (%s)\n", prog, a->data_path, total,
                    luna_strerror(rc), luna_err_name(rc));
            goto out;
        }
        for (size_t i = 0; i < got; i++)
            nats += row_nats(logits + i * (size_t)V, V, cfg->byte_offset + bytes[i]);
        total += (long long)got;
        prev = cfg->byte_offset + bytes[got - 1];
    }
    if (ferror(f)) {
        fprintf(stderr, "%s eval: cannot read %s: %s\n", prog, a->data_path, strerror(errno));
        rc = LUNA_EIO;
        goto out;
    }
    if (!total) {
        fprintf(stderr, "%s eval: %s is empty: no bytes to score\n", prog, a->data_path);
        rc = LUNA_EINVAL;
        goto out;
    }
    double bpb = nats / (double)total / log(2.0), sec = seconds > 0 ? seconds : 1e-9;
    if (a->json) {
        printf("{\"task\": \"causal-lm\", \"model\": ");
        json_str(stdout, a->model_dir);
        printf(", \"data\": ");
        json_str(stdout, a->data_path);
        printf(", \"bytes\": %lld, \"tokens\": %lld, \"piece\": %d, \"nats\": %.9g, "
               "\"bits_per_byte\": %.9g, \"seconds\": %.6f, \"tokens_per_s\": %.1f, "
               "\"mb_per_s\": %.4f}\n", total, total, P, nats, bpb, seconds, (double)total / sec,
               (double)total / 1e6 / sec);
    } else {
        printf("model      %s (causal-lm)\n", a->model_dir);
        printf("data       %s: %lld bytes, scored as one stream in pieces of %d tokens\n",
               a->data_path, total, P);
        printf("bits/byte  %.6f\n", bpb);
        printf("throughput %.4f s in the engine: %.0f tokens/s, %.4f MB/s\n", seconds,
               (double)total / sec, (double)total / 1e6 / sec);
    }
    rc = 0;
out:
    luna_gen_state_free(s);
    luna_ctx_free(ctx);
    free(toks);
    free(bytes);
    free(logits);
    return rc ? 1 : 0;
}

/* ---- the command --------------------------------------------------------------------------- */

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"limit", required_argument, 0, 'n'}, {"piece", required_argument, 0, 'p'},
        {"json", no_argument, 0, 'j'},        {"help", no_argument, 0, 'h'},
        {"plan", required_argument, 0, 'P'},  {0, 0, 0, 0}};
    eval_args a = {NULL, NULL, 0, EVAL_PIECE, 0, "auto"};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:d:n:p:jhP:", opts, NULL)) != -1) {
        switch (c) {
        case 'P': a.plan = optarg, parse_plan_spec("eval", optarg); break;
        case 'm': a.model_dir = optarg; break;
        case 'd': a.data_path = optarg; break;
        case 'n': a.limit = parse_long("eval", "--limit", optarg, 1, 1L << 62); break;
        case 'p': a.piece = (int)parse_long("eval", "--piece", optarg, 1, 1 << 20); break;
        case 'j': a.json = 1; break;
        case 'h': fputs(eval_help, stdout); return 0;
        case ':': die_usage("eval", "option %s needs a value", argv[optind - 1]); break;
        default: die_usage("eval", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) die_usage("eval", "unexpected argument '%s'", argv[optind]);
    if (!a.model_dir) die_usage("eval", "%s", "--model DIR is required");
    if (!a.data_path) die_usage("eval", "%s", "--data FILE is required");
    FILE *f = fopen(a.data_path, "rb");
    if (!f) {
        fprintf(stderr, "%s eval: cannot open %s: %s\n", prog, a.data_path, strerror(errno));
        return EXIT_USAGE;
    }
    luna_model *m = load_or_die(a.model_dir);
    int status = luna_model_config(m)->task == LUNA_TASK_CAUSAL_LM ? eval_lm(&a, m, f)
                                                                   : eval_classifier(&a, m, f);
    fclose(f);
    luna_model_free(m);
    return status;
}
