/* kernels.c - sgemm wrappers, the fixed-order product of the decode steps and the element-wise
 * kernels of the forward passes. See kernels.h for the contract of each function. */
#include "kernels.h"

#include <assert.h>
#include <cblas.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void kn_gemm_nt(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, alpha, a,
                (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

void kn_gemm_nn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, alpha, a,
                (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* y = alpha b + beta y (keep: beta 1), then y += alpha x L^T: the bias in the pass that
 * prepares y, and the product added by OpenBLAS itself, so that y is gone over once before the
 * product where zeroing it (sgemm's beta 0), adding the bias and adding to a residual took up
 * to three passes. */
static void linear_into(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                        float alpha, int keep)
{
    size_t out = (size_t)L->out;
    if (L->b)
        for (size_t r = 0; r < rows; r++) {
            float *yr = y + r * ldy;
            if (keep)
                for (size_t j = 0; j < out; j++) yr[j] += alpha * L->b[j];
            else
                for (size_t j = 0; j < out; j++) yr[j] = alpha * L->b[j];
        }
    float beta = keep || L->b ? 1.0f : 0.0f;
    if (rows == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, L->out, L->in, alpha, L->w, L->in, x, 1, beta, y, 1);
    else
        kn_gemm_nt(rows, out, (size_t)L->in, alpha, x, ldx, L->w, (size_t)L->in, beta, y, ldy);
}

void kn_linear(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
               float alpha)
{
    linear_into(L, x, rows, ldx, y, ldy, alpha, 0);
}

void kn_linear_add(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy, float alpha)
{
    linear_into(L, x, rows, ldx, y, ldy, alpha, 1);
}

/* ---- kn_linear_fixed: the batch-invariant product of the decode steps ----------------------
 *
 * Every output is one fma chain over k in turn (kernels.h), so a vector lane holds one output
 * of one row from start to end: the lanes never meet, and no sum crosses them. Which outputs
 * and rows share a register block changes only the speed, so the blocking is free to change
 * with `rows`, and every path gives the bits of the portable one. The vector paths read W in
 * panels of 16 outputs, k after k (kn_fixed_pack): each k of a block loads 16 consecutive
 * weights, broadcasts one x float per row, and takes an fma per vector and row, as a GEMM's
 * microkernel does (kernels_fixed.inc). The arithmetic is written as explicit fma, mul and add,
 * never a * b + c, so no -ffp-contract setting can fuse it one way in one path and another way
 * in another. The vector paths are chosen at run time, so that a build for any x86-64 (the
 * Dockerfile's OPT) still runs them where the CPU has them. */

size_t kn_fixed_pack_floats(size_t out, size_t in) { return (out + 15) / 16 * 16 * in; }

void kn_fixed_pack(const luna_linear *L, float *dst)
{
    size_t out = (size_t)L->out, in = (size_t)L->in, np = (out + 15) / 16;
    for (size_t p = 0; p < np; p++)
        for (size_t i = 0; i < 16; i++) {
            size_t j = 16 * p + i;
            const float *w = L->w + j * in;
            for (size_t k = 0; k < in; k++) dst[(p * in + k) * 16 + i] = j < out ? w[k] : 0.0f;
        }
}

/* The portable path: the order written out in scalars (fmaf is exact wherever it runs), from
 * W itself. */
static void fixed_c(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                    float alpha)
{
    size_t out = (size_t)L->out, in = (size_t)L->in;
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < out; j++) {
            const float *w = L->w + j * in, *xr = x + r * ldx;
            float s = 0.0f;
            for (size_t k = 0; k < in; k++) s = fmaf(w[k], xr[k], s);
            y[r * ldy + j] = L->b ? fmaf(alpha, s, alpha * L->b[j]) : alpha * s;
        }
}

#if defined(__x86_64__) || defined(__i386__)

#define FX_INLINE static inline __attribute__((always_inline))

/* The two vector paths (their blocks: kernels_fixed.inc) */
#define FO_AVX2
#define FO_NAME(x) fo256_##x
#include "kernels_fixed.inc"
#define FO_AVX512
#define FO_NAME(x) fo512_##x
#include "kernels_fixed.inc"

/* Without the panels (a luna_linear built by hand), the portable path: the same bits, slowly. */
static void fixed_avx512(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                         float alpha)
{
    if (L->wp == NULL) fixed_c(L, x, rows, ldx, y, ldy, alpha);
    else if (rows > 0) fo512_fixed(L, x, rows, ldx, y, ldy, alpha);
}

static void fixed_avx2(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                       float alpha)
{
    if (L->wp == NULL) fixed_c(L, x, rows, ldx, y, ldy, alpha);
    else if (rows > 0) fo256_fixed(L, x, rows, ldx, y, ldy, alpha);
}

int kn_isa_supported(kn_isa isa)
{
    switch (isa) {
    case KN_ISA_C: return 1;
    case KN_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KN_ISA_AVX512: return __builtin_cpu_supports("avx512f");
    case KN_ISA_BEST: return 1;
    }
    return 0;
}

/* every path gives the same bits, so the choice is free: the fastest the CPU runs */
static kn_isa best_isa(void)
{
    return kn_isa_supported(KN_ISA_AVX512) ? KN_ISA_AVX512 : kn_isa_supported(KN_ISA_AVX2) ? KN_ISA_AVX2 : KN_ISA_C;
}

void kn_linear_fixed_isa(kn_isa isa, const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                         size_t ldy, float alpha)
{
    switch (isa == KN_ISA_BEST ? best_isa() : isa) {
    case KN_ISA_AVX512: fixed_avx512(L, x, rows, ldx, y, ldy, alpha); break;
    case KN_ISA_AVX2: fixed_avx2(L, x, rows, ldx, y, ldy, alpha); break;
    case KN_ISA_C:
    case KN_ISA_BEST: /* resolved above */ fixed_c(L, x, rows, ldx, y, ldy, alpha); break;
    }
}

#else /* not x86: the portable path alone */

int kn_isa_supported(kn_isa isa) { return isa == KN_ISA_C || isa == KN_ISA_BEST; }

void kn_linear_fixed_isa(kn_isa isa, const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                         size_t ldy, float alpha)
{
    (void)isa;
    fixed_c(L, x, rows, ldx, y, ldy, alpha);
}

#endif

/* The path kn_linear_fixed takes: KN_ISA_BEST but while a test or benchmark pins one. Relaxed
 * atomic: a pin only ever happens before the steps it is meant for. */
static atomic_int fixed_pinned = KN_ISA_BEST;

int kn_linear_fixed_pin(kn_isa isa)
{
    if (!kn_isa_supported(isa)) return LUNA_EINVAL;
    atomic_store_explicit(&fixed_pinned, (int)isa, memory_order_relaxed);
    return 0;
}

void kn_linear_fixed(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                     float alpha)
{
    kn_isa isa = (kn_isa)atomic_load_explicit(&fixed_pinned, memory_order_relaxed);
    kn_linear_fixed_isa(isa, L, x, rows, ldx, y, ldy, alpha);
}

void kn_layernorm(const luna_norm *N, const float *x, float *y, size_t rows, size_t d)
{
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        /* two passes in float, accumulate in double: rows are short, and the variance of a
         * row with a large mean loses digits in float */
        double mean = 0.0, var = 0.0;
#pragma omp simd reduction(+ : mean)
        for (size_t j = 0; j < d; j++) mean += xr[j];
        mean /= (double)d;
#pragma omp simd reduction(+ : var)
        for (size_t j = 0; j < d; j++) {
            double t = xr[j] - mean;
            var += t * t;
        }
        var /= (double)d;
        float inv = (float)(1.0 / sqrt(var + 1e-5));
        float mu = (float)mean;
        for (size_t j = 0; j < d; j++) yr[j] = (xr[j] - mu) * inv * N->w[j] + N->b[j];
    }
}

void kn_add(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

float kn_exp_shift_sum(float *x, size_t n, float shift)
{
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < n; i++) {
        x[i] = kn_expf(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

float kn_max(const float *x, size_t n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (size_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

void kn_softmax_rows(float *x, size_t rows, size_t n, size_t ld)
{
    for (size_t r = 0; r < rows; r++) {
        float *xr = x + r * ld;
        float sum = kn_exp_shift_sum(xr, n, kn_max(xr, n));
        float inv = 1.0f / sum;
        for (size_t i = 0; i < n; i++) xr[i] *= inv;
    }
}

/* erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), branch-free. */
static inline __attribute__((always_inline)) float erf_fast(float x)
{
    float ax = x < 0.0f ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float y = 1.061405429f;
    y = y * t - 1.453152027f;
    y = y * t + 1.421413741f;
    y = y * t - 0.284496736f;
    y = y * t + 0.254829592f;
    y = 1.0f - y * t * kn_expf(-ax * ax);
    return x < 0.0f ? -y : y;
}

void kn_act(luna_act act, float *x, size_t n)
{
    switch (act) {
    case LUNA_ACT_RELU:
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case LUNA_ACT_GELU:
#pragma omp simd
        for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erf_fast(x[i] * 0.70710678118654752f));
        break;
    case LUNA_ACT_TANH:
        for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i]);
        break;
    }
}

void luna_blas_set_threads(int n) { openblas_set_num_threads(n); }
int luna_blas_threads(void) { return openblas_get_num_threads(); }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double luna_sgemm_gflops(int m, int n, int k, double seconds)
{
    float *a = malloc((size_t)m * (size_t)k * sizeof(float));
    float *b = malloc((size_t)k * (size_t)n * sizeof(float));
    float *c = malloc((size_t)m * (size_t)n * sizeof(float));
    double rate = 0.0;
    if (a && b && c) {
        for (size_t i = 0; i < (size_t)m * (size_t)k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (size_t i = 0; i < (size_t)k * (size_t)n; i++) b[i] = (float)(i % 5) * 0.1f;
        kn_gemm_nn((size_t)m, (size_t)n, (size_t)k, 1.0f, a, (size_t)k, b, (size_t)n, 0.0f, c,
                   (size_t)n); /* warm-up */
        long reps = 0;
        double t0 = now_s(), t;
        do {
            kn_gemm_nn((size_t)m, (size_t)n, (size_t)k, 1.0f, a, (size_t)k, b, (size_t)n, 0.0f, c,
                       (size_t)n);
            reps++;
        } while ((t = now_s() - t0) < seconds);
        rate = 2.0 * m * n * (double)k * (double)reps / t * 1e-9;
    }
    free(a);
    free(b);
    free(c);
    return rate;
}

void kn_gemm_tn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)n, (int)k, alpha, a,
                (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* log(1 + u) for u in [0, 1], inline and branch-free so that a loop over it vectorises (libm's
 * log1pf is a call per element: 5% of a prefill). y = 1 + u lies in [1, 2]; log y is Cephes'
 * logf polynomial on y, or on y / 2 plus ln 2, whichever lies in [sqrt(1/2), sqrt(2)]; then
 * (u - (y - 1)) / y puts back what rounding 1 + u dropped, so that a tiny u keeps its bits
 * (log1p(u) = u there). Relative error below 3e-7 over [0, 1] (tests/unit/test_kernels.c). */
static inline __attribute__((always_inline)) float log1p_unit(float u)
{
    float y = 1.0f + u;
    float e = y > 1.41421356237f ? 1.0f : 0.0f;
    float x = (e > 0.0f ? 0.5f * y : y) - 1.0f, z = x * x;
    float p = 7.0376836292e-2f;
    p = p * x - 1.1514610310e-1f;
    p = p * x + 1.1676998740e-1f;
    p = p * x - 1.2420140846e-1f;
    p = p * x + 1.4249322787e-1f;
    p = p * x - 1.6668057665e-1f;
    p = p * x + 2.0000714765e-1f;
    p = p * x - 2.4999993993e-1f;
    p = p * x + 3.3333331174e-1f;
    float r = x * z * p + e * -2.12194440e-4f - 0.5f * z;
    r = x + r + e * 0.693359375f;
    return r + (u - (y - 1.0f)) / y;
}

float kn_log1p_unit(float u) { return log1p_unit(u); }

void kn_phi(luna_phi phi, float *x, size_t n)
{
    switch (phi) {
    case LUNA_PHI_SOFTPLUS_LN2: /* log2(1 + 2^z) = max(z, 0) + log2(1 + 2^-|z|): 2^|z| never overflows */
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float z = x[i], a = z > 0.0f ? z : -z;
            float y = (z > 0.0f ? z : 0.0f) + log1p_unit(kn_exp2f(-a)) * 1.44269504088896341f;
            x[i] = z == z ? y : z; /* a NaN stays one (kn_exp2f would clamp it) */
        }
        break;
    case LUNA_PHI_ELU_PLUS_1:
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
        break;
    case LUNA_PHI_SOFTPLUS:
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float z = x[i], a = z > 0.0f ? z : -z;
            float y = (z > 0.0f ? z : 0.0f) + log1p_unit(kn_expf(-a));
            x[i] = z == z ? y : z;
        }
        break;
    }
}
