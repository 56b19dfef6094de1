/* cli.h - what the `luna` subcommands share (cli/luna.c defines it): argument errors, number
 * parsing, timing, reading a file, loading a model. Single-threaded, like the CLI. */
#ifndef LUNA_CLI_H
#define LUNA_CLI_H

#include <stddef.h>
#include <stdio.h>

#include "engine/blas.h"
#include "engine/luna.h"

#define EXIT_USAGE 2

extern const char *prog; /* "luna" */
/* The BLAS kernel this run uses and why (chosen in main, before any command runs). */
extern luna_blas_info cli_blas;

/* Prints "luna CMD: <fmt with arg>" and a pointer to --help, then exits 2. */
void die_usage(const char *cmd, const char *fmt, const char *arg);
/* s as an integer in [lo, hi], or exit 2 naming the flag. */
long parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi);
double now_s(void);                               /* CLOCK_MONOTONIC seconds */
unsigned char *read_all(FILE *f, size_t *len);    /* malloc'd (caller frees), or NULL + errno */
luna_model *load_or_die(const char *dir);         /* exits 1 with the loader's message */
size_t rss_kb(void);                              /* this process's resident set now */
/* A comma-separated list of sizes ("1k,16k,1M": k = 1024, M = 2^20) into out[0..cap); returns
 * how many, or exits 2 naming the flag. */
int parse_lengths(const char *cmd, const char *flag, const char *list, size_t *out, int cap);

struct rusage;
/* Runs child(arg, fd) in a forked process, which writes `size` bytes of result to fd; reads
 * them into result and waits. *ru receives the child's usage (its peak RSS). Returns 0, or -1
 * when the child died or wrote less. */
int run_in_child(void (*child)(void *arg, int fd), void *arg, void *result, size_t size,
                 struct rusage *ru);

/* A plan specification: auto (the fastest plan whose workspace fits max_ws bytes), resident,
 * streaming or partial:ROWS (k and M suffixes). Exits 2 naming the flag when it is malformed.
 * parse_plan_spec checks it before the input's length is known; make_plan builds it. */
void parse_plan_spec(const char *cmd, const char *spec);
luna_plan make_plan(const luna_model *m, const char *spec, size_t n, size_t max_ws);
/* "512M", "2G", "1048576" (K, M, G powers of 1024) as bytes, or exit 2 naming the flag. */
size_t parse_bytes(const char *cmd, const char *flag, const char *s);

/* qsort's comparison of doubles, ascending. */
int cmp_double(const void *a, const void *b);

/* cli_blas as a JSON object, into buf; returns buf. */
const char *blas_json(char *buf, size_t cap);

/* cli/generate.c */
int cmd_generate(int argc, char **argv);
int cmd_bench_gen(int argc, char **argv);
int cmd_bench_batch(int argc, char **argv);

/* cli/pack.c */
int cmd_bench_pack(int argc, char **argv);

#endif
