/* kernels.c - sgemm wrappers and the element-wise kernels of the forward passes.
 * See kernels.h for the contract of each function. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
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

void kn_linear(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
               float alpha)
{
    size_t out = (size_t)L->out;
    if (rows == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, L->out, L->in, alpha, L->w, L->in, x, 1, 0.0f, y,
                    1);
    } else {
        kn_gemm_nt(rows, out, (size_t)L->in, alpha, x, ldx, L->w, (size_t)L->in, 0.0f, y, ldy);
    }
    if (L->b) {
        for (size_t r = 0; r < rows; r++) {
            float *yr = y + r * ldy;
            for (size_t j = 0; j < out; j++) yr[j] += alpha * L->b[j];
        }
    }
}

/* 8 floats, loaded from any float address. */
typedef float v8f __attribute__((vector_size(32), aligned(4)));

/* Sums the lanes in one fixed order. */
static inline float hsum8(v8f v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* out[r][i] = dot(w[i], x[r]) over n for 4 rows of W and 2 rows of x (a row of either may
 * repeat: each output's arithmetic is its own chain, the same whichever group computes it). */
static inline void dot4x2_fixed(const float *const w[4], const float *const x[2], size_t n, float out[2][4])
{
    v8f a[2][4] = {{{0}}};
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        v8f x0 = *(const v8f *)(x[0] + k), x1 = *(const v8f *)(x[1] + k);
        for (int i = 0; i < 4; i++) {
            v8f wv = *(const v8f *)(w[i] + k);
            a[0][i] += wv * x0;
            a[1][i] += wv * x1;
        }
    }
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 4; i++) {
            float acc = hsum8(a[r][i]);
            for (size_t t = k; t < n; t++) acc += w[i][t] * x[r][t];
            out[r][i] = acc;
        }
    }
}

void kn_linear_fixed(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                     float alpha)
{
    size_t out = (size_t)L->out, in = (size_t)L->in;
    for (size_t j = 0; j < out; j += 4) {
        const float *w[4];
        for (size_t i = 0; i < 4; i++) w[i] = L->w + (j + i < out ? j + i : j) * in;
        for (size_t r = 0; r < rows; r += 2) {
            const float *xr[2] = {x + r * ldx, x + (r + 1 < rows ? r + 1 : r) * ldx};
            float o[2][4];
            dot4x2_fixed(w, xr, in, o);
            for (size_t q = 0; q < 2 && r + q < rows; q++) {
                float *yr = y + (r + q) * ldy;
                for (size_t i = 0; i < 4 && j + i < out; i++)
                    yr[j + i] = alpha * o[q][i] + (L->b ? alpha * L->b[j + i] : 0.0f);
            }
        }
    }
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

void kn_phi(luna_phi phi, float *x, size_t n)
{
    switch (phi) {
    case LUNA_PHI_SOFTPLUS_LN2: /* log2(1 + 2^z), written so that 2^|z| never overflows */
        for (size_t i = 0; i < n; i++) {
            float z = x[i];
            x[i] = (z > 0.0f ? z : 0.0f) + log1pf(exp2f(-fabsf(z))) * 1.44269504088896341f;
        }
        break;
    case LUNA_PHI_ELU_PLUS_1:
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
        break;
    case LUNA_PHI_SOFTPLUS:
        for (size_t i = 0; i < n; i++) {
            float z = x[i];
            x[i] = (z > 0.0f ? z : 0.0f) + log1pf(expf(-fabsf(z)));
        }
        break;
    }
}
