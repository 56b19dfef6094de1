/* config.c - the settings table and its three sources (file, environment, flags).
 * Each row of SETTINGS is one setting; adding a setting is adding a row and a field. */
#include "server/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/blas.h"

typedef enum { T_STR, T_INT, T_BYTES, T_SECONDS, T_LIST } stype;

typedef struct {
    const char *name;   /* the flag is --name; the env var LUNASERVE_NAME (upper, '-' -> '_') */
    stype type;
    double min, max;    /* for numbers */
    const char *def;    /* default, as text; NULL = empty */
    size_t off;         /* field in srv_config */
    size_t size;        /* for strings: the field's size; for lists: one entry's size */
    size_t count_off;   /* for lists: the int counting entries */
    const char *help;
} setting;

#define F(field) offsetof(srv_config, field), sizeof(((srv_config *)0)->field)
#define L(field, count) offsetof(srv_config, field), sizeof(((srv_config *)0)->field[0]), offsetof(srv_config, count)

static const setting SETTINGS[] = {
    {"host", T_STR, 0, 0, "127.0.0.1", F(host), 0, "address to bind (0.0.0.0 inside a container)"},
    {"port", T_INT, 0, 65535, "8080", F(port), 0, "TCP port; 0 picks a free port and logs it"},
    {"config", T_STR, 0, 0, NULL, F(config_file), 0, "settings file (name = value lines); default config/lunaserve.conf if present"},
    {"classify-model", T_STR, 0, 0, "models/spam", F(classify_model), 0, "classifier model directory"},
    {"generate-model", T_STR, 0, 0, "models/austen-lm", F(generate_model), 0, "generator model directory (optional)"},
    {"workers", T_INT, 0, 256, "0", F(workers), 0, "worker threads; 0 = cores / blas-threads"},
    {"blas-threads", T_INT, 1, 256, "1", F(blas_threads), 0, "OpenBLAS threads (process-wide); workers x blas-threads should be the cores"},
    {"blas-core", T_STR, 0, 0, "auto", F(blas_core), 0, "OpenBLAS kernels: auto (the best this CPU runs, unless OPENBLAS_CORETYPE is set), default (OpenBLAS's own choice) or a core name (SkylakeX, Haswell, ...)"},
    {"memory-budget", T_BYTES, 1 << 20, 1e15, "2G", F(memory_budget), 0, "bytes that running requests may reserve in all (K/M/G/T suffixes)"},
    {"max-queue", T_INT, 1, 1000000, "64", F(max_queue), 0, "requests that may wait; more get 429"},
    {"max-body-bytes", T_BYTES, 0, 1e12, "0", F(max_body_bytes), 0, "largest request body; larger gets 413 before it is read; 0 = half the memory budget"},
    {"max-input-bytes", T_BYTES, 0, 1e12, "0", F(max_input_bytes), 0, "largest document after JSON decoding; 0 = max-body-bytes"},
    {"max-batch", T_INT, 1, 256, "32", F(max_batch), 0, "generations stepped together in one batched decode step (continuous batching); 1 = each generation runs alone on a worker, start to end"},
    {"max-batch-tokens", T_INT, 1, 1000000, "256", F(max_batch_tokens), 0, "prompt tokens per prefill slice run between decode steps (rounded up to the engine's 256-token chunk; a lone prompt on every core of two workers or more takes 4096)"},
    {"classify-packs", T_INT, 0, 1, "1", F(classify_packs), 0, "1: short documents, of one request or of requests that wait together, are classified in packs (one forward for up to 256 tokens of them: the same answers, to float rounding, in less time); 0: each alone"},
    {"prefill-admission", T_INT, 0, 1, "1", F(prefill_admission), 0, "1: a prompt whose prefill, at the rate this server measures, would outlast the request's deadline is refused at once (413 against the server's deadline, 504 against X-Request-Timeout); 0: it runs until the deadline stops it (504)"},
    {"state-cache-bytes", T_BYTES, 0, 1e15, "256M", F(state_cache_bytes), 0, "the prefix state cache: generation states of prompts, so that a prompt that begins like an earlier one is prefilled only from where they part; at most this many bytes, counted in the memory budget (requests come first: the cache gives its least recently used states back when a request needs the memory); 0 = no cache"},
    {"state-cache-interval", T_INT, 1, 1 << 30, "4096", F(state_cache_interval), 0, "prompt tokens between the states a prefill stores (rounded up to the 256-token chunk); each prompt's last chunk boundary and end are stored too"},
    {"max-new-tokens", T_INT, 1, 1000000, "1024", F(max_new_tokens), 0, "cap on max_new_tokens for generation"},
    {"default-new-tokens", T_INT, 1, 1000000, "100", F(default_new_tokens), 0, "max_new_tokens of a request that names none (capped by max-new-tokens)"},
    {"sse-ping-interval", T_SECONDS, 0.01, 3600, "10", F(sse_ping_interval), 0, "seconds without an event before a stream gets a keep-alive comment"},
    {"request-timeout", T_SECONDS, 0.001, 86400, "60", F(request_timeout), 0, "default deadline of a request, seconds (queue + run)"},
    {"max-request-timeout", T_SECONDS, 0.001, 86400, "600", F(max_request_timeout), 0, "largest deadline a client may ask for (X-Request-Timeout header)"},
    {"drain-timeout", T_SECONDS, 0, 86400, "30", F(drain_timeout), 0, "on SIGTERM, seconds to let queued and running requests finish"},
    {"connection-timeout", T_INT, 1, 86400, "30", F(connection_timeout), 0, "seconds without a byte read or written before a connection is closed (a queued or running request is not idle)"},
    {"max-connections", T_INT, 1, 65536, "1024", F(max_connections), 0, "open connections the server takes at once; 16 more serve only /health, /ready and /metrics, for a second each; more wait in the kernel's backlog (the health port has its own)"},
    {"max-connections-per-ip", T_INT, 0, 65536, "128", F(max_connections_per_ip), 0, "connections one client address may hold, more are closed at once; 0 = no limit (behind a proxy, whose address is every client's, set it above the proxy's connections)"},
    {"header-timeout", T_SECONDS, 0.1, 86400, "10", F(header_timeout), 0, "seconds from a request line to the end of its headers, however the bytes trickle in; slower is closed"},
    {"body-timeout", T_SECONDS, 0.1, 86400, "30", F(body_timeout), 0, "seconds a request body may take, plus one per body-min-rate bytes received; slower is closed"},
    {"body-min-rate", T_BYTES, 0, 1e12, "16K", F(body_min_rate), 0, "bytes a second that earn a body one more second past body-timeout (K/M suffixes); 0 = body-timeout bounds every body"},
    {"health-port", T_INT, -1, 65535, "-1", F(health_port), 0, "a second listener for /health, /ready and /metrics only, for probes and scrapers, with connections of its own: never stalled by the main port's; 0 picks a free port; -1 = none"},
    {"max-requests-per-key", T_INT, -1, 1000000, "-1", F(max_requests_per_key), 0, "engine requests one client (API key, or address without keys) may hold at once: body being read, queued, running, streaming; more get 429; 0 = no limit; -1 = max-queued-per-key + a quarter of max-queue"},
    {"max-queued-per-key", T_INT, -1, 1000000, "-1", F(max_queued_per_key), 0, "jobs one client (API key, or address without keys) may have waiting or running; more get 429; 0 = no limit; -1 = max-batch + a quarter of max-queue: a lone client fills the batch, and never the queue"},
    {"max-body-bytes-per-client", T_BYTES, 0, 1e15, "0", F(max_body_bytes_per_client), 0, "bytes of request bodies, and their parsed input while queued or running, one client (API key, or address without keys) may hold in the memory budget at once: past it, a body beside the client's others gets 429 (its one request is never refused by it); 0 = a quarter of what bodies may hold (half the budget)"},
    {"api-key", T_LIST, 0, 0, NULL, L(api_keys, n_api_keys), "accepted Bearer token (repeatable); none = no auth"},
    {"api-key-file", T_STR, 0, 0, NULL, F(api_key_file), 0, "file with one accepted token per line"},
    {"metrics-auth", T_INT, 0, 1, "0", F(metrics_auth), 0, "1: /metrics needs an API key too (when keys are set); it is never readable cross-origin"},
    {"cors-allow-origin", T_LIST, 0, 0, NULL, L(cors_origins, n_cors_origins), "origin allowed by CORS (repeatable; * = any)"},
    {"log-level", T_STR, 0, 0, "info", F(log_level), 0, "debug, info, warn or error"},
};
#define N_SETTINGS (sizeof SETTINGS / sizeof SETTINGS[0])

int srv_parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || !isfinite(v)) return -1;
    double mult = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mult = 1024.0; end++; break;
    case 'M': mult = 1048576.0; end++; break;
    case 'G': mult = 1073741824.0; end++; break;
    case 'T': mult = 1099511627776.0; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    v *= mult;
    if (v >= 18446744073709551615.0) return -1;
    *out = (uint64_t)v;
    return 0;
}

static const setting *find(const char *name, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strlen(SETTINGS[i].name) == len && strncmp(SETTINGS[i].name, name, len) == 0) return &SETTINGS[i];
    return NULL;
}

/* Sets one setting from text; `src` names the source for the error message. */
static int set(srv_config *cfg, const setting *s, const char *val, const char *src)
{
    char *base = (char *)cfg + s->off;
    switch (s->type) {
    case T_STR:
        if (strlen(val) >= s->size) {
            fprintf(stderr, "lunaserve: %s: %s is longer than %zu bytes\n", src, s->name, s->size - 1);
            return -1;
        }
        strcpy(base, val);
        return 0;
    case T_LIST: {
        int *count = (int *)((char *)cfg + s->count_off);
        if (*count >= SRV_MAX_LIST || strlen(val) >= s->size || !*val) {
            fprintf(stderr, "lunaserve: %s: %s: empty, longer than %zu bytes, or more than %d values\n",
                    src, s->name, s->size - 1, SRV_MAX_LIST);
            return -1;
        }
        strcpy(base + (size_t)*count * s->size, val);
        (*count)++;
        return 0;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < s->min || v > s->max) {
            fprintf(stderr, "lunaserve: %s: %s must be an integer in [%.0f, %.0f], got '%s'\n", src,
                    s->name, s->min, s->max, val);
            return -1;
        }
        *(int *)base = (int)v;
        return 0;
    }
    case T_BYTES: {
        uint64_t v;
        if (srv_parse_bytes(val, &v) || (double)v < s->min || (double)v > s->max) {
            fprintf(stderr, "lunaserve: %s: %s must be a byte count (e.g. 512M, 2G) in [%.0f, %.0f], got '%s'\n",
                    src, s->name, s->min, s->max, val);
            return -1;
        }
        *(uint64_t *)base = v;
        return 0;
    }
    case T_SECONDS: {
        char *end;
        errno = 0;
        double v = strtod(val, &end);
        if (errno || end == val || *end || !(v >= s->min && v <= s->max)) {
            fprintf(stderr, "lunaserve: %s: %s must be seconds in [%g, %g], got '%s'\n", src, s->name,
                    s->min, s->max, val);
            return -1;
        }
        *(double *)base = v;
        return 0;
    }
    }
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

/* The value of a file line, after its '=': "a quoted value" is taken as it is between the
 * quotes ('#' included); an unquoted one ends at a comment, a '#' after a blank. A '#' right
 * after other characters is refused rather than guessed at: "api-key = abc#def" once became the
 * key "abc" without a word. 0 and *val, or -1 and *val the reason. Edits s in place. */
static int file_value(char *s, char **val)
{
    while (isspace((unsigned char)*s)) s++;
    if (*s == '"') {
        char *end = strchr(s + 1, '"');
        if (!end) {
            *val = "the quoted value has no closing '\"'";
            return -1;
        }
        *end = 0;
        char *rest = end + 1;
        while (isspace((unsigned char)*rest)) rest++;
        if (*rest && *rest != '#') {
            *val = "only a comment may follow a quoted value";
            return -1;
        }
        *val = s + 1;
        return 0;
    }
    for (char *p = s; *p; p++) {
        if (*p != '#') continue;
        if (p > s && !isspace((unsigned char)p[-1])) {
            *val = "'#' inside an unquoted value: quote the value (\"abc#def\") or put a blank before a comment";
            return -1;
        }
        *p = 0;
        break;
    }
    *val = trim(s);
    return 0;
}

static int load_file(srv_config *cfg, const char *path, int must_exist)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!must_exist) return 0;
        fprintf(stderr, "lunaserve: config: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096], src[1100];
    int lineno = 0, rc = 0;
    /* list settings from the file replace, rather than extend, the defaults: reset once */
    while (fgets(line, sizeof line, f)) {
        lineno++;
        snprintf(src, sizeof src, "%s:%d", path, lineno);
        char *t = trim(line);
        if (!*t || *t == '#') continue;
        char *eq = strchr(t, '=');
        if (!eq) {
            fprintf(stderr, "lunaserve: %s: expected 'name = value'\n", src);
            rc = -1;
            break;
        }
        *eq = 0;
        char *name = trim(t), *val;
        if ((rc = file_value(eq + 1, &val))) {
            fprintf(stderr, "lunaserve: %s: %s: %s\n", src, name, val);
            break;
        }
        const setting *s = find(name, strlen(name));
        if (!s || s->off == offsetof(srv_config, config_file)) {
            fprintf(stderr, "lunaserve: %s: unknown setting '%s'\n", src, name);
            rc = -1;
            break;
        }
        if ((rc = set(cfg, s, val, src))) break;
    }
    fclose(f);
    return rc;
}

static void env_name(const setting *s, char *buf, size_t n)
{
    size_t j = (size_t)snprintf(buf, n, "LUNASERVE_");
    for (const char *p = s->name; *p && j + 1 < n; p++) buf[j++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[j] = 0;
}

static void print_value(const srv_config *cfg, const setting *s, FILE *out)
{
    const char *base = (const char *)cfg + s->off;
    switch (s->type) {
    case T_STR: fprintf(out, "%s", base); break;
    case T_INT: fprintf(out, "%d", *(const int *)base); break;
    case T_BYTES: fprintf(out, "%llu", (unsigned long long)*(const uint64_t *)base); break;
    case T_SECONDS: fprintf(out, "%g", *(const double *)base); break;
    case T_LIST: {
        int count = *(const int *)((const char *)cfg + s->count_off);
        for (int i = 0; i < count; i++) {
            /* never print secrets */
            if (s->off == offsetof(srv_config, api_keys)) fprintf(out, "%s<redacted>", i ? ", " : "");
            else fprintf(out, "%s%s", i ? ", " : "", base + (size_t)i * s->size);
        }
        break;
    }
    }
}

static void usage(FILE *out)
{
    fprintf(out, "usage: lunaserve [--name value ...] [--help] [--print-config]\n"
                 "Serves Luna models over HTTP. Every setting can also come from the config file\n"
                 "(name = value) or the environment (LUNASERVE_NAME); flags win, then the\n"
                 "environment, then the file.\n\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const setting *s = &SETTINGS[i];
        char env[64];
        env_name(s, env, sizeof env);
        fprintf(out, "  --%-22s %s\n  %24s [default: %s; env %s]\n", s->name, s->help, "",
                s->def ? s->def : "none", env);
    }
    fprintf(out, "  --%-22s %s\n  --%-22s %s\n", "print-config", "print the effective settings and exit",
            "help", "this text");
}

int srv_config_load(srv_config *cfg, int argc, char **argv)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (SETTINGS[i].def && set(cfg, &SETTINGS[i], SETTINGS[i].def, "default")) return -1;

    /* the config file named by --config / LUNASERVE_CONFIG comes first, so find it first */
    const char *file = getenv("LUNASERVE_CONFIG");
    int print = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--print-config")) print = 1;
        if (!strcmp(argv[i], "--config") && i + 1 < argc) file = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9)) file = argv[i] + 9;
    }
    if (file) {
        if (load_file(cfg, file, 1)) return -1;
        snprintf(cfg->config_file, sizeof cfg->config_file, "%s", file);
    } else if (load_file(cfg, "config/lunaserve.conf", 0)) {
        return -1;
    } else if (access("config/lunaserve.conf", R_OK) == 0) {
        snprintf(cfg->config_file, sizeof cfg->config_file, "config/lunaserve.conf");
    }

    for (size_t i = 0; i < N_SETTINGS; i++) {
        char env[64];
        env_name(&SETTINGS[i], env, sizeof env);
        const char *v = getenv(env);
        if (!v || SETTINGS[i].off == offsetof(srv_config, config_file)) continue;
        if (SETTINGS[i].type == T_LIST) {
            /* comma-separated in the environment */
            char buf[4096];
            snprintf(buf, sizeof buf, "%s", v);
            char *save = NULL;
            for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
                if (set(cfg, &SETTINGS[i], trim(tok), env)) return -1;
        } else if (set(cfg, &SETTINGS[i], v, env)) {
            return -1;
        }
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--print-config")) continue;
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "lunaserve: unexpected argument '%s' (try --help)\n", a);
            return -1;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const setting *s = find(name, nlen);
        if (!s) {
            fprintf(stderr, "lunaserve: unknown option '%s' (try --help)\n", a);
            return -1;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lunaserve: option --%s needs a value\n", s->name);
                return -1;
            }
            val = argv[++i];
        }
        if (s->off == offsetof(srv_config, config_file)) continue; /* already read */
        char src[80];
        snprintf(src, sizeof src, "flag --%s", s->name);
        if (set(cfg, s, val, src)) return -1;
    }
    /* the body limits follow the budget unless set: a classification needs no memory that grows
     * with its document (the streaming plan), so what bounds a document is holding its body */
    if (!cfg->max_body_bytes) cfg->max_body_bytes = cfg->memory_budget / 2;
    if (!cfg->max_input_bytes) cfg->max_input_bytes = cfg->max_body_bytes;
    /* a client alone may run as many generations as the batch steps together and wait in a
     * quarter of the queue: it uses the whole server, and others always find room in the queue */
    if (cfg->max_queued_per_key < 0) cfg->max_queued_per_key = cfg->max_batch + cfg->max_queue / 4;
    if (cfg->max_requests_per_key < 0)
        cfg->max_requests_per_key = cfg->max_queued_per_key ? cfg->max_queued_per_key + cfg->max_queue / 4 : 0;
    char err[256];
    if (luna_blas_check_setting(cfg->blas_core, err, sizeof err)) {
        fprintf(stderr, "lunaserve: %s\n", err);
        return -1;
    }
    if (cfg->health_port > 0 && cfg->health_port == cfg->port) {
        fprintf(stderr, "lunaserve: health-port (%d) is the port itself\n", cfg->health_port);
        return -1;
    }
    if (cfg->max_request_timeout < cfg->request_timeout) {
        fprintf(stderr, "lunaserve: max-request-timeout (%g) is below request-timeout (%g)\n",
                cfg->max_request_timeout, cfg->request_timeout);
        return -1;
    }
    if (cfg->api_key_file[0]) {
        FILE *f = fopen(cfg->api_key_file, "r");
        if (!f) {
            fprintf(stderr, "lunaserve: api-key-file: cannot open %s: %s\n", cfg->api_key_file, strerror(errno));
            return -1;
        }
        char line[512];
        const setting *s = find("api-key", 7);
        while (fgets(line, sizeof line, f)) {
            char *t = trim(line);
            if (*t && *t != '#' && set(cfg, s, t, "api-key-file")) {
                fclose(f);
                return -1;
            }
        }
        fclose(f);
    }
    if (print) {
        for (size_t i = 0; i < N_SETTINGS; i++) {
            printf("%s = ", SETTINGS[i].name);
            print_value(cfg, &SETTINGS[i], stdout);
            printf("\n");
        }
        return 1;
    }
    return 0;
}
