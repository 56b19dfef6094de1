/* blas.c - the BLAS kernel at startup: the CPU's features, OpenBLAS's choice, the decision
 * (a pure function), the re-execution with OPENBLAS_CORETYPE, and the sgemm self-check.
 * See blas.h for the why. */
#include "blas.h"

#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define LUNA_X86 1
#endif

/* snprintf that may truncate on purpose: every text here is a bounded field of luna_blas_info. */
static void __attribute__((format(printf, 3, 4))) say(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    say(dst, cap, "%s", src ? src : "");
}

/* ---- the CPU ---------------------------------------------------------------------------- */

#ifdef LUNA_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

void luna_cpu_detect(luna_cpu *cpu)
{
    memset(cpu, 0, sizeof *cpu);
#ifdef LUNA_X86
    unsigned a = 0, b = 0, c = 0, d = 0, max = 0;
    if (!__get_cpuid(0, &max, &b, &c, &d)) return;
    memcpy(cpu->vendor, &b, 4);
    memcpy(cpu->vendor + 4, &d, 4);
    memcpy(cpu->vendor + 8, &c, 4);
    __get_cpuid(1, &a, &b, &c, &d);
    unsigned base_family = (a >> 8) & 0xf;
    cpu->family = (int)(base_family + (base_family == 0xf ? (a >> 20) & 0xff : 0));
    cpu->model = (int)(((a >> 4) & 0xf) | (base_family == 0x6 || base_family == 0xf ? ((a >> 16) & 0xf) << 4 : 0));
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
    cpu->avx = ((c >> 28) & 1) && ymm;
    if (max >= 7) {
        unsigned a7, b7, c7, d7;
        __cpuid_count(7, 0, a7, b7, c7, d7);
        cpu->avx2_fma = cpu->avx && ((b7 >> 5) & 1) && fma;
        cpu->avx512 = cpu->avx2_fma && zmm && ((b7 >> 16) & 1) && ((b7 >> 17) & 1) && ((b7 >> 30) & 1) && ((b7 >> 31) & 1);
        if (a7 >= 1) {
            __cpuid_count(7, 1, a7, b7, c7, d7);
            cpu->avx512_bf16 = cpu->avx512 && ((a7 >> 5) & 1);
        }
    }
    unsigned ext = 0;
    __get_cpuid(0x80000000, &ext, &b, &c, &d);
    if (ext >= 0x80000004) {
        unsigned r[12];
        for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        char raw[49];
        memcpy(raw, r, 48);
        raw[48] = 0;
        const char *s = raw;
        while (*s == ' ') s++;
        say(cpu->brand, sizeof cpu->brand, "%s", s);
        for (size_t n = strlen(cpu->brand); n && cpu->brand[n - 1] == ' ';) cpu->brand[--n] = 0;
    }
#endif
}

/* ---- core names ----------------------------------------------------------------------------
 * OpenBLAS's x86-64 cores, by the class of their sgemm kernel. Excavator and Steamroller run
 * Piledriver's AVX kernels; Zen runs Haswell's. */
static const struct { const char *name; int cls; } CORES[] = {
    {"Prescott", 1},   {"Core2", 1},      {"Penryn", 1},      {"Dunnington", 1}, {"Nehalem", 1},
    {"Atom", 1},       {"Nano", 1},       {"Barcelona", 1},   {"Bobcat", 1},     {"Opteron", 1},
    {"Opteron_SSE3", 1}, {"Katmai", 1},   {"Coppermine", 1},  {"Northwood", 1},  {"Banias", 1},
    {"Athlon", 1},     {"Sandybridge", 2}, {"Bulldozer", 2},  {"Piledriver", 2}, {"Steamroller", 2},
    {"Excavator", 2},  {"Haswell", 3},    {"Zen", 3},         {"SkylakeX", 4},   {"Cooperlake", 4},
    {"Sapphirerapids", 4},
};

int luna_blas_core_class(const char *core)
{
    for (size_t i = 0; core && i < sizeof CORES / sizeof CORES[0]; i++)
        if (!strcasecmp(core, CORES[i].name)) return CORES[i].cls;
    return 0;
}

int luna_cpu_class(const luna_cpu *cpu)
{
    return cpu->avx512 ? 4 : cpu->avx2_fma ? 3 : cpu->avx ? 2 : 1;
}

static const char *CLASS_NAME[] = {"unknown", "SSE", "AVX", "AVX2+FMA", "AVX-512"};

int luna_blas_check_setting(const char *setting, char *err, size_t cap)
{
    if (!setting || !strcasecmp(setting, "auto") || !strcasecmp(setting, "default") || luna_blas_core_class(setting))
        return 0;
    say(err, cap, "blas-core must be auto, default or an OpenBLAS core name (Prescott, Sandybridge, Haswell, "
                       "Zen, SkylakeX, Cooperlake, ...), got '%s'", setting);
    return -1;
}

/* ---- the decision ---------------------------------------------------------------------- */

/* The best core of a class that the library has, in order of preference. */
static const char *best_of_class(const luna_blas_facts *f, int cls)
{
    static const char *const C4_BF16[] = {"Cooperlake", "SkylakeX", NULL}, *const C4[] = {"SkylakeX", NULL},
                             *const C3[] = {"Haswell", "Zen", NULL}, *const C2[] = {"Sandybridge", NULL};
    const char *const *list = cls == 4 ? (f->cpu.avx512_bf16 ? C4_BF16 : C4) : cls == 3 ? C3 : cls == 2 ? C2 : NULL;
    for (; list && *list; list++)
        if (f->has_core(*list, f->user)) return *list;
    return NULL;
}

luna_blas_action luna_blas_decide(const luna_blas_facts *f, char *target, size_t cap, char *why, size_t why_cap)
{
    const char *setting = f->setting ? f->setting : "auto";
    int cur = luna_blas_core_class(f->current), cpu = luna_cpu_class(&f->cpu);
    target[0] = 0;
    if (!strcasecmp(setting, "default")) {
        if (f->env_coretype)
            say(why, why_cap, "blas-core=default: OPENBLAS_CORETYPE=%s from the environment gives %s", f->env_coretype, f->current);
        else
            say(why, why_cap, "blas-core=default: OpenBLAS chose %s itself", f->current);
        return LUNA_BLAS_KEEP;
    }
    if (strcasecmp(setting, "auto")) { /* a core name */
        if (!f->dynamic || !luna_blas_core_class(setting) || !f->has_core(setting, f->user)) {
            say(why, why_cap, "blas-core=%s: this OpenBLAS has no such core%s", setting,
                     f->dynamic ? "" : " (it is built for one CPU, without DYNAMIC_ARCH)");
            return LUNA_BLAS_BADNAME;
        }
        if (!strcasecmp(setting, f->current)) {
            say(why, why_cap, "blas-core=%s", setting);
            return LUNA_BLAS_KEEP;
        }
        say(target, cap, "%s", setting);
        say(why, why_cap, "blas-core=%s (OpenBLAS chose %s)", setting, f->current);
        return LUNA_BLAS_SWITCH;
    }
    /* auto */
    const char *best = NULL;
    int best_cls = 0;
    for (int c = cpu; c > cur && c >= 2 && !best; c--)
        if ((best = best_of_class(f, c))) best_cls = c;
    if (f->env_coretype) {
        say(why, why_cap, "OPENBLAS_CORETYPE=%s is set in the environment, which auto keeps%s%s%s", f->env_coretype,
                 best ? " (this CPU could run " : "", best ? best : "", best ? ")" : "");
        return LUNA_BLAS_KEEP;
    }
    if (!f->dynamic) {
        say(why, why_cap, "OpenBLAS is built for one CPU (no DYNAMIC_ARCH): %s", f->current);
        return LUNA_BLAS_KEEP;
    }
    if (!best) {
        if (cur >= cpu)
            say(why, why_cap, "OpenBLAS chose %s (%s), the best this CPU supports", f->current, CLASS_NAME[cur]);
        else
            say(why, why_cap, "OpenBLAS chose %s (%s); this CPU runs %s kernels, but this OpenBLAS has none better",
                f->current, CLASS_NAME[cur], CLASS_NAME[cpu]);
        return LUNA_BLAS_KEEP;
    }
    say(target, cap, "%s", best);
    say(why, why_cap, "OpenBLAS chose %s (%s) for a CPU that runs %s kernels: switched to %s", f->current,
             CLASS_NAME[cur], CLASS_NAME[best_cls], best);
    return LUNA_BLAS_SWITCH;
}

/* ---- the library -------------------------------------------------------------------------- */

/* A DYNAMIC_ARCH OpenBLAS exports one kernel table per core it was built with: gotoblas_HASWELL. */
static int lib_has_core(const char *name, void *user)
{
    (void)user;
    char sym[64] = "gotoblas_";
    size_t n = strlen(sym);
    for (const char *p = name; *p && n + 1 < sizeof sym; p++) sym[n++] = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    sym[n] = 0;
    return dlsym(RTLD_DEFAULT, sym) != NULL;
}


void luna_blas_describe(luna_blas_info *info)
{
    memset(info, 0, sizeof *info);
    copy_str(info->library, sizeof info->library, "OpenBLAS");
    const char *config = openblas_get_config(); /* "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64" */
    const char *v = config ? strchr(config, ' ') : NULL;
    if (v) {
        v++;
        size_t len = strcspn(v, " ");
        if (len >= sizeof info->version) len = sizeof info->version - 1;
        memcpy(info->version, v, len);
    }
    copy_str(info->core, sizeof info->core, openblas_get_corename());
    copy_str(info->default_core, sizeof info->default_core, info->core);
    copy_str(info->selection, sizeof info->selection, "default");
    luna_cpu cpu;
    luna_cpu_detect(&cpu);
    say(info->cpu, sizeof info->cpu, "%s family %d model %d%s%s", cpu.vendor[0] ? cpu.vendor : "unknown", cpu.family,
             cpu.model, cpu.brand[0] ? ": " : "", cpu.brand);
    info->selfcheck_err = -1;
}

void luna_blas_summary(const luna_blas_info *info, char *out, size_t cap)
{
    snprintf(out, cap, "%s %s, core %s (%s), %d thread%s; CPU %s", info->library, info->version, info->core,
             info->selection, openblas_get_num_threads(), openblas_get_num_threads() == 1 ? "" : "s", info->cpu);
}

/* ---- the self-check ------------------------------------------------------------------------ */

static float lcg(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* C (m, n) = alpha op(A) op(B) + beta C, row-major, against a double reference; returns the
 * worst error relative to sum |alpha a b| + |beta c| of its element (the scale of the rounding). */
static double check_gemm(int ta, int tb, int m, int n, int k, uint32_t seed)
{
    int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 2;
    size_t na = (size_t)(ta ? k : m) * (size_t)lda, nb = (size_t)(tb ? n : k) * (size_t)ldb, nc = (size_t)m * (size_t)ldc;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c = malloc(nc * sizeof *c), *c0 = malloc(nc * sizeof *c0);
    double worst = INFINITY;
    if (a && b && c && c0) {
        for (size_t i = 0; i < na; i++) a[i] = lcg(&seed);
        for (size_t i = 0; i < nb; i++) b[i] = lcg(&seed);
        for (size_t i = 0; i < nc; i++) c[i] = c0[i] = lcg(&seed);
        const float alpha = 0.75f, beta = 0.5f;
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda,
                    b, ldb, beta, c, ldc);
        worst = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double ref = beta * (double)c0[(size_t)i * ldc + j], scale = fabs(ref);
                for (int p = 0; p < k; p++) {
                    double x = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                    double y = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                    ref += alpha * x * y;
                    scale += fabs(alpha * x * y);
                }
                double e = fabs((double)c[(size_t)i * ldc + j] - ref) / (scale + 1e-30);
                if (!(e <= worst)) worst = isnan(e) ? INFINITY : e; /* NaN counts as the worst */
            }
    }
    free(a);
    free(b);
    free(c);
    free(c0);
    return worst;
}

static double check_gemv(int m, int n, uint32_t seed)
{
    int lda = n + 1;
    float *a = malloc((size_t)m * lda * sizeof *a), *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)m * sizeof *y);
    double worst = INFINITY;
    if (a && x && y) {
        for (int i = 0; i < m * lda; i++) a[i] = lcg(&seed);
        for (int i = 0; i < n; i++) x[i] = lcg(&seed);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, m, n, 1.0f, a, lda, x, 1, 0.0f, y, 1);
        worst = 0;
        for (int i = 0; i < m; i++) {
            double ref = 0, scale = 0;
            for (int j = 0; j < n; j++) {
                ref += (double)a[(size_t)i * lda + j] * x[j];
                scale += fabs((double)a[(size_t)i * lda + j] * x[j]);
            }
            double e = fabs((double)y[i] - ref) / (scale + 1e-30);
            if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
        }
    }
    free(a);
    free(x);
    free(y);
    return worst;
}

/* Small odd shapes reach the kernels' edge cases; the larger one the packed main loop. Every
 * transpose the engine's wrappers use. All stay under OpenBLAS's threading threshold (m n k <
 * 262,144 in 0.3.21), so the check starts no BLAS thread: the kernels are the same per thread. */
static double selfcheck_run(void)
{
    double w = 0, e;
    if ((e = check_gemm(0, 1, 37, 29, 45, 1)) > w) w = e;
    if ((e = check_gemm(0, 0, 33, 70, 19, 2)) > w) w = e;
    if ((e = check_gemm(1, 0, 41, 23, 57, 3)) > w) w = e;
    if ((e = check_gemm(0, 1, 1, 96, 64, 4)) > w) w = e;
    if ((e = check_gemm(0, 1, 96, 64, 40, 5)) > w) w = e;
    if ((e = check_gemv(57, 129, 6)) > w) w = e; /* m n < 9,216: sgemv's threshold */
    return w;
}

static int under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p && strstr(p, "vgpreload") != NULL;
}

/* A correct float sgemm stays within k * 2^-24 of the reference's scale (about 1e-5 at k 200,
 * far less in practice); a wrong kernel is off by the size of the numbers themselves. */
#define SELFCHECK_TOL 1e-4

/* The fault injection of the tests (blas.h): 1.0 for "fail on this core", -1 for "crash on it". */
static double injected(void)
{
    const char *inj = getenv("LUNA_BLAS_SELFCHECK_FAIL_ON"), *core = openblas_get_corename();
    if (!inj || !core) return 0;
    if (!strcasecmp(inj, core)) return 1.0;
    if (!strncmp(inj, "crash:", 6) && !strcasecmp(inj + 6, core)) return -1;
    return 0;
}

int luna_blas_selfcheck(double *max_err)
{
    *max_err = -1;
    if (under_valgrind()) {
        /* valgrind follows a fork but counts the heap the child inherits as its leaks, and it
         * runs none of the AVX-512 kernels whose crash the child guards against: check here */
        double w = selfcheck_run(), inj = injected();
        if (inj < 0) return 2;
        if (inj > 0) w = inj;
        *max_err = w;
        return w <= SELFCHECK_TOL ? 0 : 1;
    }
    int fd[2];
    if (pipe(fd)) return 2;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return 2;
    }
    if (pid == 0) { /* the child: a crash or a hang here costs only the child */
        close(fd[0]);
        alarm(60);
        double w = selfcheck_run(), inj = injected();
        if (inj < 0) raise(SIGILL);
        if (inj > 0) w = inj;
        ssize_t wr = write(fd[1], &w, sizeof w);
        _exit(wr == (ssize_t)sizeof w ? 0 : 3);
    }
    close(fd[1]);
    double w = -1;
    ssize_t got;
    do got = read(fd[0], &w, sizeof w);
    while (got < 0 && errno == EINTR);
    close(fd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (got != (ssize_t)sizeof w || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 2;
    *max_err = w;
    return w <= SELFCHECK_TOL ? 0 : 1;
}

/* ---- selection, across one or two re-executions ------------------------------------------
 * The marker LUNA_BLAS_REEXEC carries what the earlier image decided:
 *   "switch;TARGET;DEFAULT;SELECTION;ORIG"    ORIG: "-" (OPENBLAS_CORETYPE was unset) or "=value"
 *   "fallback;FAILED;WHAT;SELECTION"  */
#define MARKER "LUNA_BLAS_REEXEC"


/* execv's argv is not const; nothing here writes to it. Returns only on failure. */
static void reexec(char **argv)
{
    fflush(NULL);
    execv("/proc/self/exe", argv);
}

static int run_selfcheck(luna_blas_info *info)
{
    int rc = luna_blas_selfcheck(&info->selfcheck_err);
    info->selfcheck_ok = rc == 0;
    return rc;
}

static void split(char *s, char **f, int n)
{
    for (int i = 0; i < n; i++) {
        f[i] = s;
        char *semi = s ? strchr(s, ';') : NULL;
        if (semi) *semi = 0;
        s = semi ? semi + 1 : NULL;
    }
}

int luna_blas_select(const char *setting, char **argv, luna_blas_info *info)
{
    luna_blas_describe(info);
    char err[256];
    if (luna_blas_check_setting(setting, err, sizeof err)) {
        copy_str(info->reason, sizeof info->reason, err);
        return -1;
    }
    if (!setting) setting = "auto";
    luna_blas_facts f = {.setting = setting, .current = info->core, .has_core = lib_has_core};
    const char *config = openblas_get_config();
    f.dynamic = config && strstr(config, "DYNAMIC_ARCH") != NULL;
    luna_cpu_detect(&f.cpu);

    char marker[256] = "", *m[5] = {0};
    const char *mk = getenv(MARKER);
    if (mk) {
        copy_str(marker, sizeof marker, mk);
        unsetenv(MARKER);
        split(marker, m, 5);
    }
    char target[32], why[sizeof info->reason];

    if (m[0] && !strcmp(m[0], "fallback") && m[3]) {
        copy_str(info->selection, sizeof info->selection, "fallback");
        say(info->reason, sizeof info->reason,
                 "the sgemm self-check failed on %s (%s), so this runs OpenBLAS's default core %s", m[1], m[2], info->core);
        if (run_selfcheck(info)) {
            say(info->reason, sizeof info->reason, "the sgemm self-check failed on %s and on the default core %s too",
                     m[1], info->core);
            return -2;
        }
        return 0;
    }

    const char *orig_env = getenv("OPENBLAS_CORETYPE");
    char orig_copy[64];
    if (m[0] && !strcmp(m[0], "switch") && m[4]) {
        /* the earlier image switched: decide again from what it saw, to say why */
        orig_env = m[4][0] == '=' ? m[4] + 1 : NULL;
        copy_str(info->default_core, sizeof info->default_core, m[2]);
        copy_str(info->selection, sizeof info->selection, m[3]);
        f.current = info->default_core;
        f.env_coretype = orig_env;
        luna_blas_decide(&f, target, sizeof target, why, sizeof why);
        if (strcasecmp(info->core, m[1]))
            say(info->reason, sizeof info->reason, "%s; but OpenBLAS, asked for %s, runs %s", why, m[1], info->core);
        else
            copy_str(info->reason, sizeof info->reason, why);
    } else {
        f.env_coretype = orig_env;
        luna_blas_action act = luna_blas_decide(&f, target, sizeof target, why, sizeof why);
        copy_str(info->reason, sizeof info->reason, why);
        copy_str(info->selection, sizeof info->selection,
                 !strcasecmp(setting, "default") ? "default"
                 : strcasecmp(setting, "auto") ? "setting"
                 : orig_env                    ? "environment"
                                               : "auto");
        if (act == LUNA_BLAS_BADNAME) return -1;
        if (act == LUNA_BLAS_SWITCH) {
            if (under_valgrind()) {
                say(info->reason, sizeof info->reason, "%s; not switched to %s under valgrind, which would not follow",
                         why, target);
            } else {
                char mark[256];
                say(mark, sizeof mark, "switch;%s;%s;%s;%s%s", target, info->core, info->selection, orig_env ? "=" : "-",
                         orig_env ? orig_env : "");
                copy_str(orig_copy, sizeof orig_copy, orig_env);
                setenv("OPENBLAS_CORETYPE", target, 1);
                setenv(MARKER, mark, 1);
                reexec(argv);
                /* still here: the exec failed; undo and run on what we have */
                int e = errno;
                if (orig_env) setenv("OPENBLAS_CORETYPE", orig_copy, 1);
                else unsetenv("OPENBLAS_CORETYPE");
                unsetenv(MARKER);
                say(info->reason, sizeof info->reason, "%s; but re-executing to switch failed (%s)", why, strerror(e));
            }
        }
    }

    if (run_selfcheck(info) == 0) return 0;
    /* the kernel in use is wrong or crashes: back to OpenBLAS's own choice, once */
    if (under_valgrind() || (!m[0] && !orig_env)) {
        say(info->reason, sizeof info->reason, "the sgemm self-check failed on OpenBLAS's own core %s (%s)",
                 info->core, info->selfcheck_err < 0 ? "it crashed or hung" : "error too large");
        return -2;
    }
    /* after a switch, OPENBLAS_CORETYPE goes back to what the user had; a core the user set
     * in the environment that fails goes back to OpenBLAS's own detection */
    char mark[256];
    say(mark, sizeof mark, "fallback;%s;%s;%s", info->core, info->selfcheck_err < 0 ? "it crashed or hung" : "error too large",
             info->selection);
    if (m[0] && orig_env) setenv("OPENBLAS_CORETYPE", orig_env, 1);
    else unsetenv("OPENBLAS_CORETYPE");
    setenv(MARKER, mark, 1);
    reexec(argv);
    say(info->reason, sizeof info->reason, "the sgemm self-check failed on %s and re-executing to fall back failed (%s)",
             info->core, strerror(errno));
    return -2;
}
