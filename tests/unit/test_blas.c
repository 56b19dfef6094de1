/* test_blas.c - engine/blas.c: the kernel decision table on made-up CPUs, core names and
 * libraries; core classes; the setting check; the sgemm self-check on this machine. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/blas.h"

/* A made-up library: a comma-separated list of the cores it has. */
static int has_listed(const char *name, void *user)
{
    const char *list = user;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && !strncasecmp(p, name, n)) return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

#define ALL_CORES "Prescott,Core2,Nehalem,Sandybridge,Bulldozer,Piledriver,Haswell,Zen,SkylakeX,Cooperlake"

static const luna_cpu EMERALD_RAPIDS = {1, 1, 1, 1, "GenuineIntel", 6, 207, "Intel(R) Xeon(R) Platinum 8573C"};
static const luna_cpu SKYLAKE_SP = {1, 1, 1, 0, "GenuineIntel", 6, 85, "Intel(R) Xeon(R) Gold 6148"};
static const luna_cpu ZEN3 = {1, 1, 0, 0, "AuthenticAMD", 25, 1, "AMD EPYC 7763"};
static const luna_cpu SANDY = {1, 0, 0, 0, "GenuineIntel", 6, 45, "Intel(R) Xeon(R) E5-2670"};
static const luna_cpu OLD = {0, 0, 0, 0, "GenuineIntel", 6, 23, "Intel(R) Core(TM)2 Duo"};

static luna_blas_action decide(const char *setting, const char *env, const char *current, const luna_cpu *cpu,
                               const char *lib, char *target, char *why)
{
    luna_blas_facts f = {.setting = setting, .env_coretype = env, .current = current, .dynamic = 1, .cpu = *cpu,
                         .has_core = has_listed, .user = (void *)lib};
    return luna_blas_decide(&f, target, 32, why, 320);
}

Test(blas, an_unknown_new_intel_gets_avx512_kernels)
{
    char t[32], why[320];
    /* the machine: OpenBLAS 0.3.21 falls back to Prescott on Emerald Rapids */
    cr_assert_eq(decide("auto", NULL, "Prescott", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Cooperlake", "%s", why);
    cr_assert(strstr(why, "Prescott") && strstr(why, "AVX-512"), "%s", why);
    /* a library without Cooperlake: SkylakeX; without either: the best below, Haswell */
    cr_assert_eq(decide("auto", NULL, "Prescott", &EMERALD_RAPIDS, "Prescott,Haswell,SkylakeX", t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "SkylakeX");
    cr_assert_eq(decide("auto", NULL, "Prescott", &EMERALD_RAPIDS, "Prescott,Sandybridge,Haswell", t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Haswell");
    cr_assert_eq(decide("auto", NULL, "Prescott", &EMERALD_RAPIDS, "Prescott,Zen", t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Zen");
    /* nothing better in the library: keep, and say so */
    cr_assert_eq(decide("auto", NULL, "Prescott", &EMERALD_RAPIDS, "Prescott,Core2", t, why), LUNA_BLAS_KEEP);
    cr_assert(strstr(why, "none better"), "%s", why);
    cr_assert_str_eq(t, "");
}

Test(blas, avx512_without_bf16_gets_skylakex)
{
    char t[32], why[320];
    cr_assert_eq(decide("auto", NULL, "Haswell", &SKYLAKE_SP, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "SkylakeX");
}

Test(blas, a_core_of_the_best_class_is_kept)
{
    char t[32], why[320];
    cr_assert_eq(decide("auto", NULL, "Cooperlake", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert(strstr(why, "best this CPU supports"), "%s", why);
    /* SkylakeX and Cooperlake share their sgemm kernel: no switch between them */
    cr_assert_eq(decide("auto", NULL, "SkylakeX", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert_eq(decide("auto", NULL, "Zen", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert_eq(decide("auto", NULL, "Haswell", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert_eq(decide("auto", NULL, "Sandybridge", &SANDY, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert_eq(decide("auto", NULL, "Core2", &OLD, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    /* a core above what cpuid shows (an OS that disabled AVX-512 state, say) is not touched */
    cr_assert_eq(decide("auto", NULL, "SkylakeX", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_KEEP);
}

Test(blas, lower_classes_are_raised_to_the_cpus)
{
    char t[32], why[320];
    cr_assert_eq(decide("auto", NULL, "Sandybridge", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Haswell");
    cr_assert_eq(decide("auto", NULL, "Prescott", &SANDY, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Sandybridge");
    /* Excavator runs Piledriver's AVX kernels: an AVX2 CPU is raised to Haswell */
    cr_assert_eq(decide("auto", NULL, "Excavator", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Haswell");
    /* a name the table does not know counts as the lowest class */
    cr_assert_eq(decide("auto", NULL, "Unknown", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Haswell");
    /* an SSE-only CPU is never switched */
    cr_assert_eq(decide("auto", NULL, "Prescott", &OLD, ALL_CORES, t, why), LUNA_BLAS_KEEP);
}

Test(blas, the_environment_wins_over_auto)
{
    char t[32], why[320];
    cr_assert_eq(decide("auto", "Prescott", "Prescott", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert(strstr(why, "OPENBLAS_CORETYPE=Prescott") && strstr(why, "could run Cooperlake"), "%s", why);
    cr_assert_eq(decide(NULL, "Haswell", "Haswell", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert_null(strstr(why, "could run"), "%s", why);
}

Test(blas, default_keeps_whatever_openblas_chose)
{
    char t[32], why[320];
    cr_assert_eq(decide("default", NULL, "Prescott", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert(strstr(why, "OpenBLAS chose Prescott"), "%s", why);
    cr_assert_eq(decide("DEFAULT", "Zen", "Zen", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert(strstr(why, "OPENBLAS_CORETYPE=Zen"), "%s", why);
}

Test(blas, a_named_core_is_switched_to_if_the_library_has_it)
{
    char t[32], why[320];
    cr_assert_eq(decide("skylakex", NULL, "Prescott", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "skylakex");
    /* also over the environment, and also to a lower class (a user's choice) */
    cr_assert_eq(decide("Prescott", "Haswell", "Haswell", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_SWITCH);
    cr_assert_str_eq(t, "Prescott");
    cr_assert_eq(decide("Haswell", NULL, "haswell", &ZEN3, ALL_CORES, t, why), LUNA_BLAS_KEEP);
    cr_assert_eq(decide("Sapphirerapids", NULL, "Prescott", &EMERALD_RAPIDS, ALL_CORES, t, why), LUNA_BLAS_BADNAME);
    cr_assert(strstr(why, "no such core"), "%s", why);
}

Test(blas, a_library_built_for_one_cpu_is_left_alone)
{
    char t[32], why[320];
    luna_blas_facts f = {.setting = "auto", .current = "Haswell", .dynamic = 0, .cpu = EMERALD_RAPIDS,
                         .has_core = has_listed, .user = (void *)ALL_CORES};
    cr_assert_eq(luna_blas_decide(&f, t, sizeof t, why, sizeof why), LUNA_BLAS_KEEP);
    cr_assert(strstr(why, "DYNAMIC_ARCH"), "%s", why);
    f.setting = "SkylakeX";
    cr_assert_eq(luna_blas_decide(&f, t, sizeof t, why, sizeof why), LUNA_BLAS_BADNAME);
}

Test(blas, core_classes_and_settings)
{
    cr_assert_eq(luna_blas_core_class("Prescott"), 1);
    cr_assert_eq(luna_blas_core_class("sandybridge"), 2);
    cr_assert_eq(luna_blas_core_class("Steamroller"), 2);
    cr_assert_eq(luna_blas_core_class("ZEN"), 3);
    cr_assert_eq(luna_blas_core_class("Haswell"), 3);
    cr_assert_eq(luna_blas_core_class("SkylakeX"), 4);
    cr_assert_eq(luna_blas_core_class("Cooperlake"), 4);
    cr_assert_eq(luna_blas_core_class("Bogus"), 0);
    cr_assert_eq(luna_blas_core_class(NULL), 0);
    cr_assert_eq(luna_cpu_class(&EMERALD_RAPIDS), 4);
    cr_assert_eq(luna_cpu_class(&ZEN3), 3);
    cr_assert_eq(luna_cpu_class(&SANDY), 2);
    cr_assert_eq(luna_cpu_class(&OLD), 1);
    char err[256];
    cr_assert_eq(luna_blas_check_setting("auto", err, sizeof err), 0);
    cr_assert_eq(luna_blas_check_setting("Default", err, sizeof err), 0);
    cr_assert_eq(luna_blas_check_setting("haswell", err, sizeof err), 0);
    cr_assert_eq(luna_blas_check_setting(NULL, err, sizeof err), 0);
    cr_assert_eq(luna_blas_check_setting("fast", err, sizeof err), -1);
    cr_assert(strstr(err, "'fast'"), "%s", err);
}

Test(blas, this_machine)
{
    luna_cpu cpu;
    luna_cpu_detect(&cpu);
    /* x86-64 has SSE2 at least; what cpuid says about AVX must be consistent */
    cr_assert(!cpu.avx512_bf16 || cpu.avx512);
    cr_assert(!cpu.avx512 || cpu.avx2_fma);
    cr_assert(!cpu.avx2_fma || cpu.avx);
    cr_assert(cpu.vendor[0], "cpuid gives a vendor");
    luna_blas_info info;
    luna_blas_describe(&info);
    cr_assert_str_eq(info.library, "OpenBLAS");
    cr_assert(info.version[0] >= '0' && info.version[0] <= '9', "version '%s'", info.version);
    cr_assert(info.core[0], "a core name");
    double err;
    cr_assert_eq(luna_blas_selfcheck(&err), 0, "the self-check passes on %s (error %g)", info.core, err);
    cr_assert(err >= 0 && err < 1e-5, "error %g", err);
}

Test(blas, the_selfcheck_reports_a_wrong_or_crashing_kernel)
{
    luna_blas_info info;
    luna_blas_describe(&info);
    double err;
    setenv("LUNA_BLAS_SELFCHECK_FAIL_ON", info.core, 1);
    cr_assert_eq(luna_blas_selfcheck(&err), 1);
    cr_assert_eq(err, 1.0);
    char crash[64] = "crash:";
    strcat(crash, info.core);
    setenv("LUNA_BLAS_SELFCHECK_FAIL_ON", crash, 1);
    cr_assert_eq(luna_blas_selfcheck(&err), 2, "a child killed by SIGILL is a failure, not a crash of the caller");
    cr_assert_eq(err, -1.0);
    unsetenv("LUNA_BLAS_SELFCHECK_FAIL_ON");
}
