/* blas.h - which BLAS kernel the engine runs on, chosen at startup and reported everywhere.
 *
 * OpenBLAS picks its kernels ("core") when it is loaded, from cpuid. An OpenBLAS older than the
 * CPU does not recognise it and falls back to generic kernels: Debian 12's 0.3.21 runs an
 * Emerald Rapids Xeon on Prescott (SSE3) kernels, 3 to 5 times slower than its AVX-512 ones.
 * The choice can only be changed before the library initialises (OPENBLAS_CORETYPE), so
 * luna_blas_select() re-executes the program with that variable set when the core that
 * OpenBLAS chose is of a lower class than what the CPU supports, then checks the new kernel
 * with a short sgemm against a plain reference, in a child process so that even an illegal
 * instruction cannot take the caller down; if the check fails it goes back to the default.
 *
 * The decision itself (luna_blas_decide) is a pure function of the CPU's features, the core
 * OpenBLAS chose, the cores it has and the setting, so that it is unit-tested on made-up
 * CPUs. Call luna_blas_select() first thing in main(), before any thread starts. */
#ifndef LUNA_BLAS_H
#define LUNA_BLAS_H

#include <stddef.h>

/* What the CPU (and the OS, through XCR0) can run. */
typedef struct {
    int avx;         /* AVX with OS support */
    int avx2_fma;    /* AVX2 and FMA3 */
    int avx512;      /* AVX-512 F, BW, DQ and VL with OS support (OpenBLAS's SkylakeX kernels) */
    int avx512_bf16; /* and AVX512_BF16 (Cooperlake) */
    char vendor[16]; /* "GenuineIntel", "AuthenticAMD", ... */
    int family, model;
    char brand[64];  /* the processor brand string, trimmed */
} luna_cpu;

/* Reads cpuid and XCR0 (all zero off x86). */
void luna_cpu_detect(luna_cpu *cpu);

/* The class of kernels an OpenBLAS x86-64 core name stands for, by the widest vector
 * instructions its sgemm kernel uses: 1 SSE, 2 AVX, 3 AVX2 + FMA, 4 AVX-512; 0 for a name
 * this table does not know. Case-insensitive, as OPENBLAS_CORETYPE is. Cooperlake is 4 like
 * SkylakeX: its sgemm kernel is SkylakeX's (it adds bf16 routines the engine does not use). */
int luna_blas_core_class(const char *core);
/* The class the CPU supports (1 to 4). */
int luna_cpu_class(const luna_cpu *cpu);

typedef enum {
    LUNA_BLAS_KEEP,   /* run on the core OpenBLAS chose */
    LUNA_BLAS_SWITCH, /* re-execute with OPENBLAS_CORETYPE = target */
    LUNA_BLAS_BADNAME /* the setting names a core this OpenBLAS does not have */
} luna_blas_action;

typedef struct {
    const char *setting;      /* "auto", "default" or a core name */
    const char *env_coretype; /* OPENBLAS_CORETYPE as the user set it, NULL if unset */
    const char *current;      /* the core OpenBLAS chose (openblas_get_corename) */
    int dynamic;              /* the library can switch cores (a DYNAMIC_ARCH build) */
    luna_cpu cpu;
    /* has_core(name, user): does this OpenBLAS have kernels for the named core? */
    int (*has_core)(const char *name, void *user);
    void *user;
} luna_blas_facts;

/* Decides what to do; *target (cap bytes) gets the core to switch to, *why one sentence. */
luna_blas_action luna_blas_decide(const luna_blas_facts *f, char *target, size_t cap, char *why,
                                  size_t why_cap);

/* What the engine runs on, for /info, /metrics, logs and benchmark headers. */
typedef struct {
    char library[16];      /* "OpenBLAS" */
    char version[32];      /* "0.3.21" */
    char core[32];         /* the core in use */
    char default_core[32]; /* the one OpenBLAS chose by itself (same as core unless switched) */
    char selection[16];    /* how: "auto", "default", "setting", "environment", "fallback" */
    char reason[320];      /* why, in one sentence */
    char cpu[96];          /* vendor family/model and brand string */
    int selfcheck_ok;      /* the sgemm self-check passed */
    double selfcheck_err;  /* its largest error relative to the reference's scale */
} luna_blas_info;

/* The setting's values are checked here: returns 0, or -1 with a message in err for a name
 * that is neither auto, default nor a core name this table knows. */
int luna_blas_check_setting(const char *setting, char *err, size_t cap);

/* Applies `setting` ("auto", "default" or a core name; NULL = auto): may re-execute argv with
 * OPENBLAS_CORETYPE set (it does not return then), and on the far side verifies the core and
 * runs the self-check, falling back to the default core (one more re-execution) if it fails.
 * Fills *info. Returns 0 when the engine may run; else info->reason says why not: -1 for a bad
 * setting (a core this OpenBLAS does not have), -2 when the self-check fails on the default core
 * too (the engine would compute wrong numbers). Not thread-safe: call it
 * before any thread of the program starts. Never re-executes under valgrind (which would not
 * follow) or when /proc/self/exe cannot be executed; it says so in info->reason. */
int luna_blas_select(const char *setting, char **argv, luna_blas_info *info);

/* Fills *info without changing anything (for programs that do not select: tests, fuzzers). */
void luna_blas_describe(luna_blas_info *info);

/* Runs the sgemm self-check in a child process: products of odd shapes through every wrapper
 * the engine uses, against a double-precision reference. Returns 0 when they agree, 1 when they
 * do not, 2 when the child crashed or hung; *max_err gets the worst relative error (or -1).
 * For tests, LUNA_BLAS_SELFCHECK_FAIL_ON=CORE makes it fail on that core (=crash:CORE: the
 * child dies of SIGILL there). Under valgrind it runs in the caller (see blas.c). */
int luna_blas_selfcheck(double *max_err);

/* One line for benchmark headers: "OpenBLAS 0.3.21, core SkylakeX (auto), 2 threads; CPU ..." */
void luna_blas_summary(const luna_blas_info *info, char *out, size_t cap);

#endif
