/* kernels.c - sgemm wrappers, the fixed-order product of the decode steps and the element-wise
 * kernels of the forward passes. See kernels.h for the contract of each function. */
#include "kernels.h"

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
 * Every output is one dot product in the order that kernels.h spells out: 16 lanes of fma
 * chains over blocks of 16 (the last one padded with zeros), a fixed tree over the lanes, then
 * fma(alpha, s, alpha b). Nothing in that order depends on which other rows or outputs share
 * a register block, so the blocking is free to change with `rows` (a lone row takes 8 outputs
 * at a time, a batch 4 outputs by 4 rows): only the speed does. Three paths give the same bits:
 * AVX-512 holds an output's 16 lanes in one register, AVX2 in two (lanes 0-7 and 8-15, whose
 * chains never meet before the tree), and portable C in an array; each runs the same fma per
 * lane and the same adds in the tree. The arithmetic is written as explicit fma, mul and add,
 * never a * b + c, so no -ffp-contract setting can fuse it one way in one path and another way
 * in another. The vector paths are chosen at run time, so that a build for any x86-64 (the
 * Dockerfile's OPT) still runs them where the CPU has them. */

/* Past the last block of outputs, the weight rows read the last one: computed, never stored. */
static inline const float *fx_wrow(const luna_linear *L, size_t j)
{
    size_t out = (size_t)L->out;
    return L->w + (j < out ? j : out - 1) * (size_t)L->in;
}

/* The first block of rows of each group of outputs prefetches the next group's weight rows
 * (pf floats on from each row): they arrive in L1 while this group's rows go by, instead of
 * being waited for in L3. It made the batched kernel ~25% faster here (AMD EPYC, 12 MB of
 * weights per step), where a lone row is bound by L3's bandwidth either way. */
static inline size_t fx_prefetch(size_t j, size_t rw, size_t out, size_t in)
{
    return j + 2 * rw <= out ? rw * in : 0;
}

/* The portable path: the order written out in scalars (fmaf is exact wherever it runs). */
static void fixed_c(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y, size_t ldy,
                    float alpha)
{
    size_t out = (size_t)L->out, in = (size_t)L->in;
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < out; j++) {
            const float *w = L->w + j * in, *xr = x + r * ldx;
            float p[16] = {0};
            for (size_t t = 0; t < (in + 15) / 16; t++)
                for (size_t l = 0; l < 16; l++) {
                    size_t k = 16 * t + l;
                    p[l] = fmaf(k < in ? w[k] : 0.0f, k < in ? xr[k] : 0.0f, p[l]);
                }
            float s = kn_lane_tree(p);
            y[r * ldy + j] = L->b ? fmaf(alpha, s, alpha * L->b[j]) : alpha * s;
        }
}

#if defined(__x86_64__) || defined(__i386__)

#define FX_AVX512 __attribute__((target("avx512f")))
#define FX_AVX2 __attribute__((target("avx2,fma")))
#define FX_INLINE static inline __attribute__((always_inline))

/* acc[i * rx + r] = the 16 lane sums of weight row w[i] times x row x[r], over in floats; with
 * pf, each line of w is followed by a prefetch of the line pf floats on. */
FX_AVX512 FX_INLINE void fx512_dots(const float *const *w, int rw, const float *const *x, int rx, size_t in,
                                    size_t pf, __m512 *acc)
{
    for (int a = 0; a < rw * rx; a++) acc[a] = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= in; k += 16) {
        __m512 xv[4];
        for (int r = 0; r < rx; r++) xv[r] = _mm512_loadu_ps(x[r] + k);
        for (int i = 0; i < rw; i++) {
            if (pf) _mm_prefetch((const char *)(w[i] + k + pf), _MM_HINT_T0);
            __m512 wv = _mm512_loadu_ps(w[i] + k);
            for (int r = 0; r < rx; r++) acc[i * rx + r] = _mm512_fmadd_ps(wv, xv[r], acc[i * rx + r]);
        }
    }
    if (k < in) { /* the padded block: every lane takes its fma, on zeros past the end */
        __mmask16 m = (__mmask16)((1u << (in - k)) - 1);
        __m512 xv[4];
        for (int r = 0; r < rx; r++) xv[r] = _mm512_maskz_loadu_ps(m, x[r] + k);
        for (int i = 0; i < rw; i++) {
            __m512 wv = _mm512_maskz_loadu_ps(m, w[i] + k);
            for (int r = 0; r < rx; r++) acc[i * rx + r] = _mm512_fmadd_ps(wv, xv[r], acc[i * rx + r]);
        }
    }
}

/* The lane tree of 16 outputs at once: lane 4c + e of the result is the sum of p[4e + c]. Each
 * level adds lane l to lane l + 8, then l + 4, l + 2, l + 1 of the same output. */
FX_AVX512 FX_INLINE __m512 fx512_tree(const __m512 p[16])
{
    __m512 t[8], u[4], v[2];
    for (int m = 0; m < 8; m++) /* [p0 lanes 0-7 | p1 0-7] + [p0 8-15 | p1 8-15] */
        t[m] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * m], p[2 * m + 1], 0x44),
                             _mm512_shuffle_f32x4(p[2 * m], p[2 * m + 1], 0xEE));
    for (int n = 0; n < 4; n++) /* quarters 0, 2 of two such + quarters 1, 3 */
        u[n] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * n], t[2 * n + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * n], t[2 * n + 1], 0xDD));
    for (int n = 0; n < 2; n++)
        v[n] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * n], u[2 * n + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(u[2 * n], u[2 * n + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Outputs j .. j + rw - 1 (the first nw of them real) of the x rows x[0 .. rx - 1], into
 * yr[r][0 .. nw - 1]: rw x rx <= 16 outputs, row r's output i in lane r rw + i. bias (lane L:
 * alpha b[j + L % rw]) is NULL without a bias. */
FX_AVX512 FX_INLINE void fx512_block(const float *const *w, int rw, size_t nw, const float *const *x, int rx,
                                     size_t in, size_t pf, float alpha, const __m512 *bias, float *const *yr)
{
    __m512 acc[16], p[16];
    fx512_dots(w, rw, x, rx, in, pf, acc);
    for (int a = 0; a < 16; a++) {
        int lane = 4 * (a % 4) + a / 4, r = lane / rw, i = lane % rw;
        p[a] = r < rx ? acc[i * rx + r] : _mm512_setzero_ps();
    }
    __m512 av = _mm512_set1_ps(alpha), s = fx512_tree(p);
    s = bias ? _mm512_fmadd_ps(av, s, *bias) : _mm512_mul_ps(av, s);
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int r = 0; r < rx; r++) /* row r's lanes down to 0 */
        _mm512_mask_storeu_ps(yr[r], (__mmask16)((1u << nw) - 1),
                              _mm512_permutexvar_ps(_mm512_add_epi32(lanes, _mm512_set1_epi32(r * rw)), s));
}

/* All outputs rw at a time; for each group, the rows in blocks of rx = 16 / rw (the last one
 * smaller). The group's rw weight rows stay in L1 while every x row passes. */
FX_AVX512 FX_INLINE void fx512_pass(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                                    size_t ldy, float alpha, int rw)
{
    size_t out = (size_t)L->out, in = (size_t)L->in;
    int rx = 16 / rw;
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (size_t j = 0; j < out; j += (size_t)rw) {
        const float *w[16];
        for (int i = 0; i < rw; i++) w[i] = fx_wrow(L, j + (size_t)i);
        size_t nw = out - j < (size_t)rw ? out - j : (size_t)rw;
        __m512 bias = _mm512_setzero_ps();
        if (L->b) { /* lane L: alpha b[j + L % rw] */
            __m512 b = _mm512_maskz_loadu_ps((__mmask16)((1u << nw) - 1), L->b + j);
            __m512i i = _mm512_and_si512(lanes, _mm512_set1_epi32(rw - 1));
            bias = _mm512_mul_ps(_mm512_set1_ps(alpha), _mm512_permutexvar_ps(i, b));
        }
        const __m512 *bp = L->b ? &bias : NULL;
        size_t pf = fx_prefetch(j, (size_t)rw, out, in), r = 0;
        for (; r + (size_t)rx <= rows; r += (size_t)rx, pf = 0) {
            const float *xr[4];
            float *yr[4];
            for (int q = 0; q < rx; q++) xr[q] = x + (r + (size_t)q) * ldx, yr[q] = y + (r + (size_t)q) * ldy + j;
            fx512_block(w, rw, nw, xr, rx, in, pf, alpha, bp, yr);
        }
        if (r < rows) { /* 1 .. rx - 1 rows left */
            const float *xr[4] = {x + r * ldx, NULL, NULL, NULL};
            float *yr[4] = {y + r * ldy + j, NULL, NULL, NULL};
            for (size_t q = 1; r + q < rows; q++) xr[q] = x + (r + q) * ldx, yr[q] = y + (r + q) * ldy + j;
            /* (the tests of rw keep blocks of more than 16 outputs from being compiled) */
            if (rows - r == 1) fx512_block(w, rw, nw, xr, 1, in, pf, alpha, bp, yr);
            else if (rw <= 8 && rows - r == 2) fx512_block(w, rw, nw, xr, 2, in, pf, alpha, bp, yr);
            else if (rw <= 4) fx512_block(w, rw, nw, xr, 3, in, pf, alpha, bp, yr);
        }
    }
}

FX_AVX512 static void fixed_avx512(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                                   size_t ldy, float alpha)
{
    /* A batch takes 4 outputs by 4 rows: 16 chains in flight, enough for both FMA pipes, for 8
     * loads (8 x 2 loaded 16 registers: the compiler read each weight twice). A lone row is
     * bound by L3's bandwidth: 8 outputs at a time streamed 15% faster than 16 (whose 17
     * pointers spill) or 4. */
    if (rows <= 2) fx512_pass(L, x, rows, ldx, y, ldy, alpha, 8);
    else fx512_pass(L, x, rows, ldx, y, ldy, alpha, 4);
}

/* The AVX2 path: lanes 0-7 of every output in one pass over k, lanes 8-15 in a second, so that
 * 8 outputs' chains fit in the 16 registers. acc[i * rx + r] = half `half` of the lane sums. */
FX_AVX2 FX_INLINE void fx256_dots(const float *const *w, int rw, const float *const *x, int rx, size_t in,
                                  int half, size_t pf, __m256 *acc)
{
    for (int a = 0; a < rw * rx; a++) acc[a] = _mm256_setzero_ps();
    size_t k = 0, h = 8 * (size_t)half;
    for (; k + 16 <= in; k += 16) {
        __m256 xv[2];
        for (int r = 0; r < rx; r++) xv[r] = _mm256_loadu_ps(x[r] + k + h);
        for (int i = 0; i < rw; i++) {
            if (pf) _mm_prefetch((const char *)(w[i] + k + pf), _MM_HINT_T0);
            __m256 wv = _mm256_loadu_ps(w[i] + k + h);
            for (int r = 0; r < rx; r++) acc[i * rx + r] = _mm256_fmadd_ps(wv, xv[r], acc[i * rx + r]);
        }
    }
    if (k < in) { /* as fx512_dots: both halves take the padded block's fma, even all zeros */
        int n = (int)(in - k) - 8 * half;
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        size_t at = n > 0 ? k + h : 0; /* a half wholly past the end loads nothing from anywhere */
        __m256 xv[2];
        for (int r = 0; r < rx; r++) xv[r] = _mm256_maskload_ps(x[r] + at, m);
        for (int i = 0; i < rw; i++) {
            __m256 wv = _mm256_maskload_ps(w[i] + at, m);
            for (int r = 0; r < rx; r++) acc[i * rx + r] = _mm256_fmadd_ps(wv, xv[r], acc[i * rx + r]);
        }
    }
}

/* The lane tree of 8 outputs from their halves: lane 4c + e of the result is the sum of output
 * 2e + c (lanes l + 8, then l + 4, l + 2, l + 1, as fx512_tree). */
FX_AVX2 FX_INLINE __m256 fx256_tree(const __m256 lo[8], const __m256 hi[8])
{
    __m256 s[8], t[4], v[2];
    for (int a = 0; a < 8; a++) s[a] = _mm256_add_ps(lo[a], hi[a]);
    for (int m = 0; m < 4; m++)
        t[m] = _mm256_add_ps(_mm256_permute2f128_ps(s[2 * m], s[2 * m + 1], 0x20),
                             _mm256_permute2f128_ps(s[2 * m], s[2 * m + 1], 0x31));
    for (int n = 0; n < 2; n++)
        v[n] = _mm256_add_ps(_mm256_shuffle_ps(t[2 * n], t[2 * n + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(t[2 * n], t[2 * n + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* As fx512_block for rw x rx <= 8 outputs (row r's output i in lane r rw + i); bias holds
 * alpha b[j + L % rw] in lane L, or is NULL. */
FX_AVX2 FX_INLINE void fx256_block(const float *const *w, int rw, size_t nw, const float *const *x, int rx,
                                   size_t in, size_t pf, float alpha, const float *bias, float *const *yr)
{
    __m256 acc[2][8], lo[8], hi[8];
    fx256_dots(w, rw, x, rx, in, 0, pf, acc[0]);
    fx256_dots(w, rw, x, rx, in, 1, 0, acc[1]);
    for (int a = 0; a < 8; a++) {
        int lane = 4 * (a % 2) + a / 2, r = lane / rw, i = lane % rw;
        lo[a] = r < rx ? acc[0][i * rx + r] : _mm256_setzero_ps();
        hi[a] = r < rx ? acc[1][i * rx + r] : _mm256_setzero_ps();
    }
    __m256 av = _mm256_set1_ps(alpha), s = fx256_tree(lo, hi);
    s = bias ? _mm256_fmadd_ps(av, s, _mm256_loadu_ps(bias)) : _mm256_mul_ps(av, s);
    float o[8];
    _mm256_storeu_ps(o, s);
    for (int r = 0; r < rx; r++)
        for (size_t i = 0; i < nw; i++) yr[r][i] = o[(size_t)(r * rw) + i];
}

FX_AVX2 FX_INLINE void fx256_pass(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                                  size_t ldy, float alpha, int rw)
{
    size_t out = (size_t)L->out, in = (size_t)L->in;
    int rx = 8 / rw;
    for (size_t j = 0; j < out; j += (size_t)rw) {
        const float *w[8];
        for (int i = 0; i < rw; i++) w[i] = fx_wrow(L, j + (size_t)i);
        size_t nw = out - j < (size_t)rw ? out - j : (size_t)rw;
        float bias[8] = {0};
        for (int lane = 0; lane < 8 && L->b; lane++)
            if ((size_t)(lane % rw) < nw) bias[lane] = alpha * L->b[j + (size_t)(lane % rw)];
        const float *bp = L->b ? bias : NULL;
        size_t pf = fx_prefetch(j, (size_t)rw, out, in), r = 0;
        for (; r + (size_t)rx <= rows; r += (size_t)rx, pf = 0) {
            const float *xr[2];
            float *yr[2];
            for (int q = 0; q < rx; q++) xr[q] = x + (r + (size_t)q) * ldx, yr[q] = y + (r + (size_t)q) * ldy + j;
            fx256_block(w, rw, nw, xr, rx, in, pf, alpha, bp, yr);
        }
        if (r < rows) { /* one row left (rx is 2 here) */
            const float *xr[2] = {x + r * ldx, NULL};
            float *yr[2] = {y + r * ldy + j, NULL};
            fx256_block(w, rw, nw, xr, 1, in, pf, alpha, bp, yr);
        }
    }
}

FX_AVX2 static void fixed_avx2(const luna_linear *L, const float *x, size_t rows, size_t ldx, float *y,
                               size_t ldy, float alpha)
{
    if (rows == 1) fx256_pass(L, x, rows, ldx, y, ldy, alpha, 8);
    else fx256_pass(L, x, rows, ldx, y, ldy, alpha, 4);
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
