/* test_kernels.c - engine/kernels.c: the vectorised exp and GELU against libm, softmax,
 * LayerNorm, the sgemm wrappers against a naive product, and the fixed-order product of the
 * decode steps: its stated order bit for bit, on every instruction set, in any batch. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"

Test(kernels, expf_relative_error_over_the_range)
{
    double worst = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
        double ref = exp((double)x), e = fabs(kn_expf(x) - ref) / ref;
        if (e > worst) worst = e;
    }
    cr_assert_lt(worst, 3e-7, "kn_expf relative error %.3g", worst);
    cr_assert_eq(kn_expf(0.0f), 1.0f);
    cr_assert_lt(kn_expf(-INFINITY), 1e-37f, "exp(-inf) is clamped to ~0");
    cr_assert(isfinite(kn_expf(1000.0f)), "large inputs clamp instead of overflowing");
}

Test(kernels, gelu_matches_erf_form)
{
    enum { N = 4001 };
    float x[N];
    for (int i = 0; i < N; i++) x[i] = -10.0f + 20.0f * (float)i / (N - 1);
    float y[N];
    for (int i = 0; i < N; i++) y[i] = x[i];
    kn_act(LUNA_ACT_GELU, y, N);
    for (int i = 0; i < N; i++) {
        double ref = 0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0)));
        cr_assert_lt(fabs(y[i] - ref), 2e-6 * (1 + fabs(ref)), "gelu(%g) = %g, want %g", x[i], y[i], ref);
    }
}

Test(kernels, log1p_unit_relative_error)
{
    double worst = 0;
    for (double u = 1.0; u > 1e-30; u *= 0.9997) { /* every binade, down to where 1 + u rounds to 1 */
        float f = (float)u;
        double ref = log1p((double)f), e = fabs(kn_log1p_unit(f) - ref) / ref;
        if (e > worst) worst = e;
    }
    cr_assert_lt(worst, 3e-7, "kn_log1p_unit relative error %.3g", worst);
    cr_assert_eq(kn_log1p_unit(0.0f), 0.0f);
}

/* The softplus feature maps against double libm, over the range the projections give and past
 * it: relative error below 5e-7 (a few float ulps); a NaN stays a NaN. */
Test(kernels, phi_softplus_matches_libm)
{
    enum { N = 8001 };
    luna_phi kinds[] = {LUNA_PHI_SOFTPLUS_LN2, LUNA_PHI_SOFTPLUS};
    for (int k = 0; k < 2; k++) {
        float x[N], y[N];
        for (int i = 0; i < N; i++) y[i] = x[i] = -60.0f + 120.0f * (float)i / (N - 1);
        kn_phi(kinds[k], y, N);
        for (int i = 0; i < N; i++) {
            double z = x[i], ref = k == 0 ? log1p(exp2(z)) / log(2.0) : log1p(exp(z));
            cr_assert_lt(fabs(y[i] - ref), 5e-7 * ref + 1e-37, "phi %d (%g) = %.9g, want %.9g", k, z, y[i], ref);
        }
        float nan[1] = {NAN};
        kn_phi(kinds[k], nan, 1);
        cr_assert(isnan(nan[0]), "phi %d (NaN) = %g", k, nan[0]);
    }
}

Test(kernels, relu_and_tanh)
{
    float v[4] = {-2.0f, -0.0f, 0.5f, 3.0f};
    kn_act(LUNA_ACT_RELU, v, 4);
    cr_assert(v[0] == 0.0f && v[1] == 0.0f && v[2] == 0.5f && v[3] == 3.0f);
    float t[2] = {0.3f, -1.2f};
    kn_act(LUNA_ACT_TANH, t, 2);
    cr_assert_float_eq(t[0], tanhf(0.3f), 1e-7);
    cr_assert_float_eq(t[1], tanhf(-1.2f), 1e-7);
}

Test(kernels, softmax_rows_sum_to_one_and_resist_overflow)
{
    float x[2][5] = {{1, 2, 3, 4, 5}, {1000, 1001, 999, -1e30f, 1000}};
    kn_softmax_rows(&x[0][0], 2, 5, 5);
    for (int r = 0; r < 2; r++) {
        double s = 0;
        for (int i = 0; i < 5; i++) s += x[r][i];
        cr_assert_float_eq(s, 1.0, 1e-6);
    }
    cr_assert_float_eq(x[0][4] / x[0][3], exp(1.0), 1e-5);
    cr_assert_lt(x[1][3], 1e-30f);
}

Test(kernels, layernorm_normalises_and_applies_affine)
{
    float w[4] = {1, 2, 1, 1}, b[4] = {0, 0, 0, 1};
    luna_norm N = {w, b};
    float x[4] = {1e4f + 1, 1e4f + 2, 1e4f + 3, 1e4f + 4}, y[4];
    kn_layernorm(&N, x, y, 1, 4);
    /* mean 1e4 + 2.5, var 1.25: a large common offset must not cost digits */
    double inv = 1.0 / sqrt(1.25 + 1e-5);
    cr_assert_float_eq(y[0], -1.5 * inv, 1e-4);
    cr_assert_float_eq(y[1], 2 * -0.5 * inv, 1e-4);
    cr_assert_float_eq(y[3], 1.5 * inv + 1, 1e-4);
}

Test(kernels, gemm_and_linear_match_naive_products)
{
    enum { M = 5, K = 17, N = 9 };
    float a[M * K], bt[N * K], bn[K * N], c[M * N], bias[N];
    for (int i = 0; i < M * K; i++) a[i] = (float)((i * 7) % 11) - 5;
    for (int i = 0; i < N * K; i++) bt[i] = (float)((i * 5) % 13) - 6;
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) bn[k * N + j] = bt[j * K + k];
    for (int j = 0; j < N; j++) bias[j] = (float)j;
    luna_linear L = {bt, bias, N, K, NULL};
    kn_linear(&L, a, M, K, c, N, 0.5f);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += a[i * K + k] * bt[j * K + k];
            cr_assert_float_eq(c[i * N + j], 0.5 * (s + bias[j]), 1e-3);
        }
    kn_linear(&L, a, 1, K, c, N, 1.0f); /* the sgemv path */
    for (int j = 0; j < N; j++) {
        double s = 0;
        for (int k = 0; k < K; k++) s += a[k] * bt[j * K + k];
        cr_assert_float_eq(c[j], s + bias[j], 1e-3);
    }
    kn_gemm_nn(M, N, K, 1.0f, a, K, bn, N, 0.0f, c, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += a[i * K + k] * bn[k * N + j];
            cr_assert_float_eq(c[i * N + j], s, 1e-3);
        }
}

/* Found by fuzz/fuzz_model: weights holding NaN reached kn_expf, whose cast to int32 was then
 * undefined. NaN now takes the lower clamp: a tiny finite value, never undefined behaviour. */
Test(kernels, expf_of_nan_is_defined)
{
    float e = kn_expf(NAN);
    cr_expect(isfinite(e) && e >= 0.0f && e < 1e-37f, "kn_expf(NaN) = %g", e);
    cr_expect(kn_expf(-INFINITY) < 1e-37f && kn_expf(INFINITY) > 1e38f);
}

/* ---- kn_linear_fixed: the batch-invariant product of the decode steps ------------------------ */

static float rnd(uint32_t *s) /* uniform in [-1, 1) */
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 23) - 1.0f;
}

/* kernels.h's order for one output, written out in scalars: the bits every path must give. */
static float fixed_ref(const float *w, const float *x, size_t in, float alpha, const float *b)
{
    float s = 0.0f;
    for (size_t k = 0; k < in; k++) s = fmaf(w[k], x[k], s);
    return b ? fmaf(alpha, s, alpha * *b) : alpha * s;
}

typedef struct {
    size_t out, in;
    int bias;
    float alpha;
} fixed_shape;

/* Shapes of the decode steps (the vocabulary head 260 x 256, fc2 256 x 1024; fc1's 1024 x 256
 * runs as the head does), and ones whose out is no multiple of a panel (16) or of a group of
 * panels (4 on AVX2, 8 on AVX-512, 2 a batch's block on AVX-512): out 1, 3, 7, 21, 37, 38 and
 * 260 leave 1 to 7 outputs in the last panel and a group short of panels; odd in (1, 15, 17,
 * 24, 45, 83). Small enough for valgrind, which runs these on the AVX2 path. */
static const fixed_shape FIXED_SHAPES[] = {
    {260, 256, 0, 1.0f}, {256, 1024, 1, 1.0f}, {64, 64, 0, 0.125f}, {37, 83, 1, 0.3f}, {3, 17, 0, 1.0f},
    {1, 15, 1, -2.5f},   {21, 1, 1, 1.0f},     {38, 24, 1, 0.5f},   {7, 45, 0, 1.0f},
};

/* Random W, b and rows, ldx and ldy wider than the rows (canaries in the gaps); ref: each
 * row's outputs by fixed_ref; y: room for the kernel's. */
typedef struct {
    luna_linear L;
    float *w, *b, *wp, *x, *ref, *y;
    size_t ldx, ldy;
} fixed_case;

static void fixed_case_new(fixed_case *c, const fixed_shape *sh, size_t maxrows, uint32_t seed)
{
    c->ldx = sh->in + 3, c->ldy = sh->out + 5;
    c->w = malloc(sh->out * sh->in * sizeof(float));
    c->b = malloc(sh->out * sizeof(float));
    c->x = malloc(maxrows * c->ldx * sizeof(float));
    c->ref = malloc(maxrows * sh->out * sizeof(float));
    c->y = malloc(maxrows * c->ldy * sizeof(float));
    cr_assert(c->w && c->b && c->x && c->ref && c->y);
    for (size_t i = 0; i < sh->out * sh->in; i++) c->w[i] = rnd(&seed);
    for (size_t i = 0; i < sh->out; i++) c->b[i] = rnd(&seed);
    for (size_t i = 0; i < maxrows * c->ldx; i++) c->x[i] = rnd(&seed);
    c->L = (luna_linear){c->w, sh->bias ? c->b : NULL, (int)sh->out, (int)sh->in, NULL};
    c->wp = malloc(kn_fixed_pack_floats(sh->out, sh->in) * sizeof(float));
    cr_assert(c->wp);
    kn_fixed_pack(&c->L, c->wp);
    c->L.wp = c->wp;
    for (size_t r = 0; r < maxrows; r++)
        for (size_t j = 0; j < sh->out; j++)
            c->ref[r * sh->out + j] = fixed_ref(c->w + j * sh->in, c->x + r * c->ldx, sh->in, sh->alpha,
                                                sh->bias ? c->b + j : NULL);
}

static void fixed_case_free(fixed_case *c)
{
    free(c->w), free(c->b), free(c->wp), free(c->x), free(c->ref), free(c->y);
}

/* The instruction sets this CPU runs: the portable path always, AVX2 and AVX-512 where present
 * (valgrind hides AVX-512: under it, the AVX2 path runs these tests). */
static int fixed_isas(kn_isa isa[3])
{
    static const kn_isa all[3] = {KN_ISA_C, KN_ISA_AVX2, KN_ISA_AVX512};
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (kn_isa_supported(all[i])) isa[n++] = all[i];
    return n;
}

/* Rows 1..40 in one call, every row against its own reference: each position of each batch
 * size, with other rows around it, on every instruction set, bit for bit, and y untouched past
 * out. The portable path (slow: it computes each output on its own) and kn_linear_fixed (one
 * of the others) take a few batch sizes. */
Test(kernels, linear_fixed_gives_every_row_its_own_bits_in_any_batch)
{
    enum { MAXR = 40 };
    kn_isa isa[3];
    int nisa = fixed_isas(isa);
    for (size_t s = 0; s < sizeof FIXED_SHAPES / sizeof *FIXED_SHAPES; s++) {
        const fixed_shape *sh = &FIXED_SHAPES[s];
        fixed_case c;
        fixed_case_new(&c, sh, MAXR, 99 + (uint32_t)s);
        float *y = c.y;
        for (int path = 0; path <= nisa; path++) /* nisa: the dispatching kn_linear_fixed */
            for (size_t rows = 1; rows <= MAXR; rows++) {
                if (path < nisa && isa[path] == KN_ISA_C && rows > 3) continue;
                if (path == nisa && rows > 3 && rows != 17 && rows != MAXR) continue;
                /* a window of the random rows, moved along so rows meet other neighbours */
                size_t r0 = (rows * 7) % (MAXR - rows + 1);
                for (size_t i = 0; i < rows * c.ldy; i++) y[i] = NAN;
                const float *x = c.x + r0 * c.ldx;
                if (path < nisa) kn_linear_fixed_isa(isa[path], &c.L, x, rows, c.ldx, y, c.ldy, sh->alpha);
                else kn_linear_fixed(&c.L, x, rows, c.ldx, y, c.ldy, sh->alpha);
                for (size_t r = 0; r < rows; r++) {
                    cr_assert(!memcmp(y + r * c.ldy, c.ref + (r0 + r) * sh->out, sh->out * sizeof(float)),
                              "%zu x %zu, isa %d: row %zu of %zu differs from its fixed-order reference", sh->out,
                              sh->in, path < nisa ? (int)isa[path] : -1, r, rows);
                    for (size_t j = sh->out; j < c.ldy && r + 1 < rows; j++)
                        cr_assert(isnan(y[r * c.ldy + j]), "%zu x %zu: wrote past out", sh->out, sh->in);
                }
            }
        fixed_case_free(&c);
    }
}

/* One row at every position of every batch of 1..40, the other rows random each time: 260
 * outputs (16 blocks of 16 and 4 more) of 17 inputs (a block and a lane), and 37 of 35.
 * Under memcheck (tools/valgrind.sh sets LUNA_TEST_UNDER_VALGRIND=1) every batch size runs
 * with the row at its first, middle and last position only: the kernel's path depends on the
 * batch size and the shapes, not on where the row sits, so memcheck sees the same code; make
 * check and make asan take every position. */
Test(kernels, linear_fixed_row_is_the_same_at_every_position)
{
    enum { MAXR = 40 };
    static const fixed_shape shapes[] = {{260, 17, 1, 1.0f}, {37, 35, 0, 0.3f}};
    kn_isa isa[3];
    int nisa = fixed_isas(isa);
    uint32_t seed = 7;
    const char *vg = getenv("LUNA_TEST_UNDER_VALGRIND");
    const int ends_only = vg && strcmp(vg, "1") == 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const fixed_shape *sh = &shapes[s];
        fixed_case c;
        fixed_case_new(&c, sh, MAXR, 5 + (uint32_t)s);
        float *y = c.y, *probe = malloc(sh->in * sizeof(float));
        cr_assert(probe);
        memcpy(probe, c.x, sh->in * sizeof(float));
        for (int path = 0; path < nisa; path++)
            for (size_t rows = 1; rows <= MAXR && isa[path] != KN_ISA_C; rows++)
                for (size_t pos = 0; pos < rows; pos++) {
                    if (ends_only && pos != 0 && pos != rows / 2 && pos != rows - 1) continue;
                    for (size_t i = 0; i < rows * c.ldx; i++) c.x[i] = rnd(&seed);
                    memcpy(c.x + pos * c.ldx, probe, sh->in * sizeof(float));
                    kn_linear_fixed_isa(isa[path], &c.L, c.x, rows, c.ldx, y, c.ldy, sh->alpha);
                    cr_assert(!memcmp(y + pos * c.ldy, c.ref, sh->out * sizeof(float)),
                              "%zu x %zu, isa %d: the row at %zu of %zu changed", sh->out, sh->in, (int)isa[path], pos,
                              rows);
                }
        free(probe);
        fixed_case_free(&c);
    }
}

/* kn_linear_fixed_pin: each path the CPU runs, and KN_ISA_BEST, gives the reference bits
 * through kn_linear_fixed; a path the CPU lacks is refused and leaves the pin as it was. */
Test(kernels, linear_fixed_pin_takes_each_path)
{
    enum { ROWS = 6 };
    static const kn_isa all[4] = {KN_ISA_C, KN_ISA_AVX2, KN_ISA_AVX512, KN_ISA_BEST};
    const fixed_shape *sh = &FIXED_SHAPES[3];
    fixed_case c;
    fixed_case_new(&c, sh, ROWS, 11);
    for (int i = 0; i < 4; i++) {
        if (!kn_isa_supported(all[i])) {
            cr_assert_eq(kn_linear_fixed_pin(all[i]), LUNA_EINVAL, "isa %d is not on this CPU", (int)all[i]);
            continue;
        }
        cr_assert_eq(kn_linear_fixed_pin(all[i]), 0);
        kn_linear_fixed(&c.L, c.x, ROWS, c.ldx, c.y, c.ldy, sh->alpha);
        for (size_t r = 0; r < ROWS; r++)
            cr_assert(!memcmp(c.y + r * c.ldy, c.ref + r * sh->out, sh->out * sizeof(float)), "pinned to %d: row %zu",
                      (int)all[i], r);
    }
    cr_assert_eq(kn_linear_fixed_pin(KN_ISA_BEST), 0);
    fixed_case_free(&c);
}

/* kn_fixed_pack's layout: panel p, k, lane i holds w[16 p + i][k], zeros past out; and a part
 * of the layer that starts at a panel (what a step's column block passes) gives, from its
 * offset into the panels, the bits of the whole layer's outputs; without panels (wp NULL),
 * every path still gives them, through the portable one. */
Test(kernels, linear_fixed_panels_and_parts)
{
    enum { ROWS = 7 };
    const fixed_shape *sh = &FIXED_SHAPES[3]; /* 37 x 83: three panels, the last with 5 outputs */
    fixed_case c;
    fixed_case_new(&c, sh, ROWS, 17);
    size_t np = (sh->out + 15) / 16;
    cr_assert_eq(kn_fixed_pack_floats(sh->out, sh->in), np * 16 * sh->in);
    for (size_t p = 0; p < np; p++)
        for (size_t k = 0; k < sh->in; k++)
            for (size_t i = 0; i < 16; i++) {
                size_t j = 16 * p + i;
                float want = j < sh->out ? c.w[j * sh->in + k] : 0.0f, got = c.wp[(p * sh->in + k) * 16 + i];
                cr_assert(!memcmp(&got, &want, sizeof got), "panel %zu, k %zu, lane %zu", p, k, i);
            }
    kn_isa isa[3];
    int nisa = fixed_isas(isa);
    for (int path = 0; path < nisa; path++) {
        for (size_t j0 = 0; j0 < sh->out; j0 += 16) { /* the part of outputs j0 .. out */
            luna_linear part = {c.w + j0 * sh->in, c.b + j0, (int)(sh->out - j0), (int)sh->in, c.wp + j0 * sh->in};
            kn_linear_fixed_isa(isa[path], &part, c.x, ROWS, c.ldx, c.y, c.ldy, sh->alpha);
            for (size_t r = 0; r < ROWS; r++)
                cr_assert(!memcmp(c.y + r * c.ldy, c.ref + r * sh->out + j0, (sh->out - j0) * sizeof(float)),
                          "isa %d: the part from %zu, row %zu", (int)isa[path], j0, r);
        }
        luna_linear bare = c.L;
        bare.wp = NULL;
        kn_linear_fixed_isa(isa[path], &bare, c.x, ROWS, c.ldx, c.y, c.ldy, sh->alpha);
        for (size_t r = 0; r < ROWS; r++)
            cr_assert(!memcmp(c.y + r * c.ldy, c.ref + r * sh->out, sh->out * sizeof(float)),
                      "isa %d without panels, row %zu", (int)isa[path], r);
    }
    fixed_case_free(&c);
}

#if defined(__x86_64__) || defined(__i386__)
/* The AVX-512 path's blocking (8 rows by 2 panels, a lone row 8 panels, groups of 8 panels)
 * on a CPU without AVX-512: kernels_fixed.inc once more, here, with AVX2's vectors and
 * AVX-512's block shapes. Every output of every row written once, in the reference's bits,
 * whatever the rows and outputs; what only the AVX-512 instance has of its own is its vector
 * width. */
#include <assert.h>
#include <immintrin.h>
#define FX_INLINE static inline __attribute__((always_inline))
#define FO_AVX2
#define FO_BLOCKS_512
#define FO_NAME(x) fotest_##x
#include "engine/kernels_fixed.inc"

Test(kernels, linear_fixed_avx512_blocking_on_avx2)
{
    if (!kn_isa_supported(KN_ISA_AVX2)) cr_skip_test("this CPU has no AVX2");
    enum { MAXR = 19 };
    static const fixed_shape shapes[] = {{260, 17, 1, 1.0f}, {37, 35, 0, 0.3f}, {129, 9, 1, -0.5f}, {16, 5, 0, 1.0f}};
    size_t checked = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const fixed_shape *sh = &shapes[s];
        fixed_case c;
        fixed_case_new(&c, sh, MAXR, 41 + (uint32_t)s);
        for (size_t rows = 1; rows <= MAXR; rows++) {
            for (size_t i = 0; i < rows * c.ldy; i++) c.y[i] = NAN;
            fotest_fixed(&c.L, c.x, rows, c.ldx, c.y, c.ldy, sh->alpha);
            for (size_t r = 0; r < rows; r++) {
                cr_assert(!memcmp(c.y + r * c.ldy, c.ref + r * sh->out, sh->out * sizeof(float)),
                          "%zu x %zu: row %zu of %zu", sh->out, sh->in, r, rows);
                for (size_t j = sh->out; j < c.ldy && r + 1 < rows; j++)
                    cr_assert(isnan(c.y[r * c.ldy + j]), "%zu x %zu: wrote past out", sh->out, sh->in);
                checked++;
            }
        }
        fixed_case_free(&c);
    }
    cr_assert_eq(checked, 4 * MAXR * (MAXR + 1) / 2);
}
#endif

/* And the order is a good one: within 1e-5 of the double-precision product, relative to the
 * size of its terms (sum |w x| + |b|, times |alpha|), which cancellation cannot shrink. */
Test(kernels, linear_fixed_is_close_to_double)
{
    enum { ROWS = 5 };
    for (size_t s = 0; s < sizeof FIXED_SHAPES / sizeof *FIXED_SHAPES; s++) {
        const fixed_shape *sh = &FIXED_SHAPES[s];
        fixed_case c;
        fixed_case_new(&c, sh, ROWS, 31 + (uint32_t)s);
        float *y = c.y;
        kn_linear_fixed(&c.L, c.x, ROWS, c.ldx, y, c.ldy, sh->alpha);
        double worst = 0;
        for (size_t r = 0; r < ROWS; r++)
            for (size_t j = 0; j < sh->out; j++) {
                const float *w = c.w + j * sh->in, *x = c.x + r * c.ldx;
                double sum = sh->bias ? c.b[j] : 0.0, mag = sh->bias ? fabs(c.b[j]) : 0.0;
                for (size_t k = 0; k < sh->in; k++) sum += (double)w[k] * x[k], mag += fabs((double)w[k] * x[k]);
                double e = fabs(y[r * c.ldy + j] - sh->alpha * sum) / (fabs(sh->alpha) * mag);
                if (e > worst) worst = e;
            }
        cr_assert_lt(worst, 1e-5, "%zu x %zu: relative error %.3g", sh->out, sh->in, worst);
        fixed_case_free(&c);
    }
}

/* kn_dot: its order written out, whatever the operands' alignment, and within 1e-6 of a double
 * product relative to sum |a b|. */
Test(kernels, dot_keeps_its_order_at_any_alignment)
{
    enum { N = 1000, PAD = 16 };
    static const size_t lengths[] = {1, 15, 16, 17, 32, 64, 100, N};
    float *a = malloc((N + PAD) * sizeof(float)), *b = malloc((N + PAD) * sizeof(float));
    cr_assert(a && b);
    uint32_t seed = 3;
    for (size_t i = 0; i < N + PAD; i++) a[i] = rnd(&seed), b[i] = rnd(&seed);
    for (size_t t = 0; t < sizeof lengths / sizeof *lengths; t++) {
        size_t n = lengths[t];
        float p[16] = {0};
        double exact = 0, mag = 0;
        for (size_t k = 0; k < n; k++) {
            p[k % 16] = p[k % 16] + a[k] * b[k];
            exact += (double)a[k] * b[k], mag += fabs((double)a[k] * b[k]);
        }
        float want = kn_lane_tree(p);
        cr_assert_lt(fabs(want - exact), 1e-6 * mag, "n %zu", n);
        for (size_t off = 0; off < PAD; off++) { /* the same values at another address */
            memmove(a + off, a, n * sizeof(float)), memmove(b + off, b, n * sizeof(float));
            float got = kn_dot(a + off, b + off, n);
            cr_assert(!memcmp(&got, &want, sizeof got), "kn_dot, n %zu at offset %zu", n, off);
            memmove(a, a + off, n * sizeof(float)), memmove(b, b + off, n * sizeof(float));
        }
    }
    free(a), free(b);
}
