/* config.h - lunaserve's settings: one table declares every setting (name, type, range,
 * default, help); it generates --help and --print-config. Sources, later ones winning: the
 * config file (--config FILE, default config/lunaserve.conf when it exists), the environment
 * (LUNASERVE_MEMORY_BUDGET for memory-budget), then the command line. A bad value is an error
 * that names the setting and its source. Call only from the main thread, before serving. */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define SRV_MAX_LIST 32

typedef struct {
    char host[256];
    int port;
    char config_file[1024];
    char classify_model[1024];
    char generate_model[1024];
    int workers;
    int blas_threads;
    char blas_core[32];       /* auto, default or an OpenBLAS core name (engine/blas.h) */
    uint64_t memory_budget;   /* bytes */
    int max_queue;
    uint64_t max_body_bytes;
    uint64_t max_input_bytes;
    int max_batch;            /* generations per batched decode step; 1 = no batching */
    int max_batch_tokens;     /* prompt tokens per prefill slice */
    int prefill_admission;    /* refuse a prompt that cannot be prefilled before its deadline */
    int classify_packs;       /* short documents share packs (luna_classify_pack) */
    uint64_t state_cache_bytes; /* the prefix state cache's limit; 0 = no cache */
    int state_cache_interval; /* prompt tokens between stored states */
    int max_new_tokens;
    int default_new_tokens;   /* max_new_tokens of a request that names none */
    double sse_ping_interval; /* seconds without an event before a stream gets a comment */
    double request_timeout;   /* seconds */
    double max_request_timeout;
    double drain_timeout;
    int connection_timeout;   /* seconds idle before libmicrohttpd closes a connection */
    int max_connections;      /* open connections the main listener takes; more wait */
    int max_connections_per_ip; /* 0 = no limit */
    double header_timeout;    /* seconds from a request line to the end of its head */
    double body_timeout;      /* seconds for a body, before body_min_rate's allowance */
    uint64_t body_min_rate;   /* bytes a second that earn a body one more second; 0 = none */
    int health_port;          /* the health listener's port; 0 = a free one; -1 = none */
    int max_requests_per_key; /* engine requests one client may hold at once; 0 = no limit
                                 (-1 in the sources: max_queued_per_key + max_queue / 4) */
    int max_queued_per_key;   /* jobs one client may have waiting or running; 0 = no limit
                                 (-1 in the sources: max_batch + max_queue / 4) */
    uint64_t max_body_bytes_per_client; /* bodies and parsed input one client may hold in the
                                           ledger; 0 = max(bodies' half / 4, max_input_bytes + 1),
                                           resolved by http.c, which knows the bodies' half */
    char api_keys[SRV_MAX_LIST][256];
    int n_api_keys;
    char api_key_file[1024];
    int metrics_auth;         /* 1: /metrics needs an API key (when there are keys) */
    char cors_origins[SRV_MAX_LIST][256];
    int n_cors_origins;
    char log_level[16];
} srv_config;

/* Fills cfg from defaults, file, environment and argv. Returns 0 to serve, 1 when --help or
 * --print-config was handled (exit 0), or -1 after printing the error to stderr (exit 2). */
int srv_config_load(srv_config *cfg, int argc, char **argv);

/* Parses "512M", "2G", "1048576" (K, M, G, T are powers of 1024). Returns 0 or -1. */
int srv_parse_bytes(const char *s, uint64_t *out);

#endif
