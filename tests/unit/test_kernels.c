/* test_kernels.c - engine/kernels.c: the vectorised exp and GELU against libm, softmax,
 * LayerNorm, and the sgemm wrappers against a naive product. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

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
    luna_linear L = {bt, bias, N, K};
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
