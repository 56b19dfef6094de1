/* kernels.h - the numeric building blocks of the forward passes (engine-internal).
 *
 * Every matrix product but the decode steps' (kn_linear_fixed, written out in kernels.c) goes
 * through OpenBLAS sgemm; this file owns the only cblas calls. The element-wise kernels (exp,
 * GELU, LayerNorm, softmax) are written as plain loops over contiguous rows with branch-free
 * bodies so that the compiler vectorises them: at long inputs the exp calls of the two
 * softmaxes would otherwise cost as much as the products. Every function here may be called
 * from any thread. */
#ifndef LUNA_KERNELS_H
#define LUNA_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* y (rows, L->out; row stride ldy) = alpha * x (rows, L->in; stride ldx) W^T + b */
void kn_linear(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
               float alpha);
/* y (rows, L->out; stride ldy) += alpha (x L^T + b): the product straight into y (a residual
 * stream), with no pass of its own over y for the product. */
void kn_linear_add(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy, float alpha);

/* The same as kn_linear, but every element of y is computed in one fixed order, whatever
 * `rows` is and wherever the row sits: a decode step's row gives the same bits alone or in a
 * batch of any size. OpenBLAS's sgemm does not (its per-row results change with M on the
 * Prescott, Haswell, Zen, SkylakeX and Cooperlake kernels of 0.3.21, and sgemv differs from
 * sgemm), so the decode steps use this. The order, for y[r][j] with w = W row j, x = x row r:
 *   s = +0; then for k = 0, 1, .. in - 1 in turn:  s = fma(w[k], x[k], s)
 *   y[r][j] = fma(alpha, s, alpha * b[j]), or alpha * s without a bias
 * (fma rounds once; alpha * b[j] is one rounded float product). It depends on w, x, alpha and
 * b alone, so not on the instruction set either: the AVX-512, AVX2 and portable paths give the
 * same bits, and kn_linear_fixed takes the fastest that the CPU runs. The vector paths read
 * L->wp, W in panels (kn_fixed_pack), and keep a panel in L1 or L2 while every block of rows
 * passes; without L->wp they take the portable path. */
void kn_linear_fixed(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                     float alpha);
/* The instruction sets kn_linear_fixed can run on (tests and benchmarks pick one): portable C
 * (everywhere; slow where fmaf is not an instruction), x86's AVX2 with FMA, AVX-512F, and
 * KN_ISA_BEST, the fastest of them that this CPU runs (what kn_linear_fixed takes). */
typedef enum { KN_ISA_C, KN_ISA_AVX2, KN_ISA_AVX512, KN_ISA_BEST } kn_isa;
/* 1 if this CPU (and OS) runs isa. */
int kn_isa_supported(kn_isa isa);
/* kn_linear_fixed on isa, which must be supported. */
void kn_linear_fixed_isa(kn_isa isa, const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                         size_t ldy, float alpha);
/* Makes every later kn_linear_fixed of the process run on isa (KN_ISA_BEST: back to the
 * default), so that a test or benchmark can run whole decode steps on each path; EINVAL, and
 * nothing pinned, if this CPU does not run isa. Call it only while no thread is in a kernel. */
int kn_linear_fixed_pin(kn_isa isa);

/* Floats of the panels of an (out, in) layer: out rounded up to 16, times in. */
size_t kn_fixed_pack_floats(size_t out, size_t in);
/* dst (kn_fixed_pack_floats) = L->w in panels of 16 outputs, k after k: panel p holds
 * dst[(p in + k) 16 + i] = w[16 p + i][k], zeros past the last output. A part of the layer
 * that starts at output j0, a multiple of 16, has its panels at dst + j0 in. */
void kn_fixed_pack(const luna_linear *L, float *dst);

/* C (m, n; ldc) = alpha * A (m, k; lda) B^T (n, k; ldb) + beta * C */
void kn_gemm_nt(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                const float *b, size_t ldb, float beta, float *c, size_t ldc);
/* C (m, n; ldc) = alpha * A (m, k; lda) B (k, n; ldb) + beta * C */
void kn_gemm_nn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* C (m, n; ldc) = alpha * A^T (A is k x m; lda) B (k, n; ldb) + beta * C */
void kn_gemm_tn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                const float *b, size_t ldb, float beta, float *c, size_t ldc);
/* x = phi(x) in place over n floats: the causal attention's feature map (the softplus ones
 * vectorised: kn_expf or kn_exp2f, and kn_log1p_unit). */
void kn_phi(luna_phi phi, float *x, size_t n);

/* y = LayerNorm(x) row by row (eps 1e-5, weight and bias of length d); y may equal x. */
void kn_layernorm(const luna_norm *N, const float *x, float *y, size_t rows, size_t d);
/* x = x + y, n floats. */
void kn_add(float *x, const float *y, size_t n);
/* In place activation over n floats. */
void kn_act(luna_act act, float *x, size_t n);
/* Each of `rows` rows of length n (stride ld): x = softmax(x). */
void kn_softmax_rows(float *x, size_t rows, size_t n, size_t ld);
/* x[i] = exp(x[i] - shift) for n floats; returns their sum. */
float kn_exp_shift_sum(float *x, size_t n, float shift);
/* Vectorisable expf, relative error < 3e-7 over the finite range. Cephes-style: 2^k * p(r),
 * r = x - k ln2, |r| <= ln2/2, a degree-6 polynomial. Inputs are clamped to the finite range, so
 * exp(-inf) is ~1e-38 rather than 0; callers use it only where that is harmless (softmax weights
 * and rescaling factors). Inline, with compares rather than fminf/fmaxf, so that loops over it
 * vectorise. */
static inline __attribute__((always_inline)) float kn_exp_reduced(float r, float k);
static inline __attribute__((always_inline)) float kn_expf(float x)
{
    x = !(x >= -87.0f) ? -87.0f : x; /* NaN too: a NaN cast to int32 below would be undefined */
    x = x > 88.0f ? 88.0f : x;
    float k = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    return kn_exp_reduced(r, k);
}

/* 2^x the same way, for x in [-126, 127] (clamped there; NaN to -126): x - k is exact, so
 * the result keeps kn_expf's relative error where exp(x ln 2) would add |x| ulps of x. */
static inline __attribute__((always_inline)) float kn_exp2f(float x)
{
    x = !(x >= -126.0f) ? -126.0f : x;
    x = x > 127.0f ? 127.0f : x;
    float k = floorf(x + 0.5f);
    return kn_exp_reduced((x - k) * 0.69314718055994531f, k);
}

/* e^r 2^k for |r| <= ln2 / 2 and k an integer in [-126, 127]: the polynomial of both. */
static inline __attribute__((always_inline)) float kn_exp_reduced(float r, float k)
{
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s = {((int32_t)k + 127) << 23};
    return p * s.f;
}
float kn_max(const float *x, size_t n);
/* log(1 + u) for u in [0, 1], relative error < 3e-7; what kn_phi's softplus runs (exported
 * for its test). */
float kn_log1p_unit(float u);

/* The lane tree of kn_dot's order: p[l] += p[l + 8] for l < 8, then p[l] += p[l + 4]
 * for l < 4, p[l + 2], p[l + 1]; returns p[0] (p is scratch). */
static inline __attribute__((always_inline)) float kn_lane_tree(float p[16])
{
    for (int h = 8; h >= 1; h /= 2)
        for (int l = 0; l < h; l++) p[l] = p[l] + p[l + h];
    return p[0];
}

/* dot(a, b) over n floats in one order that depends on n alone: lane l (of 16) takes
 * p[l] = p[l] + a[k] b[k] for k = l, l + 16, ... in turn, then kn_lane_tree. For one decode
 * row's attention (causal_row), where a serial sum's chain of dependent adds would cost more
 * than the products. Inline and plain C, so that the lanes vectorise at any -march. Unlike
 * kn_linear_fixed's, the order is one build's, not every build's: a compiler that contracts
 * p + a b into an fma (clang by default, gcc with -ffp-contract=fast) gives other bits, the
 * same in every row and batch of that build; the Makefile's -ffp-contract=off keeps them apart
 * under gcc and clang alike. */
static inline __attribute__((always_inline)) float kn_dot(const float *a, const float *b, size_t n)
{
    float p[16] = {0};
    size_t k = 0;
    for (; k + 16 <= n; k += 16)
        for (size_t l = 0; l < 16; l++) p[l] = p[l] + a[k + l] * b[k + l];
    for (size_t l = 0; k + l < n; l++) p[l] = p[l] + a[k + l] * b[k + l];
    return kn_lane_tree(p);
}

#endif
