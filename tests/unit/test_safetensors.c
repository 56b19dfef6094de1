/* test_safetensors.c - engine/safetensors.c: valid files, every error class, the dtype
 * conversions (exhaustively for F16 and BF16) and a mutation fuzz test.
 *
 * Files are built in memory with the fixtures' writer (tests/unit/fixtures.c) and parsed from
 * exact-size buffers, so ASan catches any read past the end. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/luna.h"
#include "engine/safetensors.h"
#include "tests/unit/fixtures.h"

static int parse_copy(const uint8_t *img, size_t len, st_file *f, uint8_t **keep, char *err,
                      size_t errlen)
{
    uint8_t *copy = malloc(len > 0 ? len : 1);
    cr_assert_not_null(copy);
    if (len > 0)
        memcpy(copy, img, len);
    int rc = st_parse(copy, len, f, err, errlen);
    if (keep != NULL && rc == 0)
        *keep = copy;
    else
        free(copy);
    return rc;
}

/* Parses a raw header with data_len bytes of data; expects LUNA_EFORMAT mentioning want. */
static void expect_header_err(const char *header, size_t data_len, const char *want)
{
    size_t len;
    uint8_t *img = fx_st_raw(header, data_len, &len);
    cr_assert_not_null(img);
    st_file f;
    char err[256] = "";
    int rc = parse_copy(img, len, &f, NULL, err, sizeof err);
    free(img);
    cr_assert_eq(rc, LUNA_EFORMAT, "header %s: rc %d (%s)", header, rc, err);
    cr_assert(strstr(err, want) != NULL, "header %s: error \"%s\", expected \"%s\"", header, err,
              want);
    cr_assert_eq(f.n_tensors, 0, "out is zeroed on failure");
    cr_assert_null(f.mem);
    st_free(&f);
}

static void expect_header_ok(const char *header, size_t data_len, size_t n_tensors)
{
    size_t len;
    uint8_t *img = fx_st_raw(header, data_len, &len);
    cr_assert_not_null(img);
    st_file f;
    char err[256] = "";
    int rc = parse_copy(img, len, &f, NULL, err, sizeof err);
    free(img);
    cr_assert_eq(rc, 0, "header %s: %s", header, err);
    cr_assert_eq(f.n_tensors, n_tensors);
    st_free(&f);
}

Test(safetensors, valid_file_round_trip)
{
    fx_st *w = fx_st_new();
    float a[6] = {1, -2, 3.5f, 0, -0.0f, 1e-3f};
    float b[3] = {0.5f, 65504, -1};
    float s[1] = {42};
    uint64_t sa[2] = {2, 3}, sb[1] = {3}, sz[2] = {0, 4};
    cr_assert_eq(fx_st_add(w, "b.weight", ST_F32, 2, sa, a), 0);
    cr_assert_eq(fx_st_add(w, "a.bias", ST_F16, 1, sb, b), 0);
    cr_assert_eq(fx_st_add(w, "scalar", ST_F64, 0, NULL, s), 0);
    cr_assert_eq(fx_st_add(w, "empty", ST_BF16, 2, sz, NULL), 0);
    cr_assert_eq(fx_st_meta(w, "format", "pt"), 0);
    cr_assert_eq(fx_st_meta(w, "note", "h\xC3\xA9llo"), 0);
    size_t len;
    uint8_t *img = fx_st_build(w, &len);
    cr_assert_not_null(img);
    fx_st_free(w);

    st_file f;
    uint8_t *buf = NULL;
    char err[256];
    cr_assert_eq(parse_copy(img, len, &f, &buf, err, sizeof err), 0, "%s", err);
    free(img);
    cr_assert_eq(f.n_tensors, 4);
    cr_assert_eq(f.n_meta, 2);
    /* sorted by name */
    cr_assert_str_eq(f.tensors[0].name, "a.bias");
    cr_assert_str_eq(f.tensors[1].name, "b.weight");
    cr_assert_str_eq(f.tensors[2].name, "empty");
    cr_assert_str_eq(f.tensors[3].name, "scalar");
    cr_assert_str_eq(st_meta_get(&f, "format"), "pt");
    cr_assert_str_eq(st_meta_get(&f, "note"), "h\xC3\xA9llo");
    cr_assert_null(st_meta_get(&f, "nope"));

    const st_tensor *t = st_find(&f, "b.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 3);
    cr_assert_eq(t->numel, 6);
    cr_assert_eq(t->nbytes, 24);
    cr_assert_eq(t->data, f.data + t->offset);
    float out[6];
    cr_assert_eq(st_read_f32(t, out), 0);
    cr_assert_eq(memcmp(out, a, sizeof a), 0, "F32 bytes differ");

    t = st_find(&f, "a.bias");
    cr_assert_eq(t->dtype, ST_F16);
    cr_assert_eq(t->nbytes, 6);
    cr_assert_eq(st_read_f32(t, out), 0);
    cr_assert_eq(out[0], 0.5f);
    cr_assert_eq(out[1], 65504.0f);
    cr_assert_eq(out[2], -1.0f);

    t = st_find(&f, "scalar");
    cr_assert_eq(t->ndim, 0);
    cr_assert_eq(t->numel, 1);
    double d;
    cr_assert_eq(st_read_f64(t, &d), 0);
    cr_assert_eq(d, 42.0);

    t = st_find(&f, "empty");
    cr_assert_eq(t->numel, 0);
    cr_assert_eq(t->nbytes, 0);
    cr_assert_eq(st_read_f32(t, out), 0);

    cr_assert_null(st_find(&f, "missing"));
    cr_assert_null(st_find(&f, ""));
    st_free(&f);
    cr_assert_null(f.tensors, "st_free zeroes");
    st_free(&f); /* twice is harmless */
    st_free(NULL);
    free(buf);
}

Test(safetensors, accepted_edge_cases)
{
    expect_header_ok("{}", 0, 0);
    expect_header_ok("{\"__metadata__\":{}}", 0, 0);
    expect_header_ok("{}    ", 0, 0); /* padding, as writers align the data */
    /* zero-sized tensors may share an offset with anything, even inside another tensor */
    expect_header_ok("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                     "\"y\":{\"dtype\":\"U8\",\"shape\":[3,0,1000000],\"data_offsets\":[8,8]}}",
                     8, 3);
    /* adjacent tensors, a hole, and trailing bytes */
    expect_header_ok("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                     "\"c\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[20,21]}}", 30, 3);
    /* members in any order */
    expect_header_ok("{\"a\":{\"data_offsets\":[0,2],\"shape\":[1],\"dtype\":\"F16\"}}", 2, 1);
    const char *dtypes[] = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                            "BF16", "I32", "U32", "F32", "F64", "I64", "U64"};
    size_t sizes[] = {1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char h[160];
        snprintf(h, sizeof h, "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 dtypes[i], 3 * sizes[i]);
        expect_header_ok(h, 3 * sizes[i], 1);
        cr_assert_str_eq(st_dtype_name((st_dtype)i), dtypes[i]);
        cr_assert_eq(st_dtype_size((st_dtype)i), sizes[i]);
    }
    cr_assert_str_eq(st_dtype_name(ST_NDTYPES), "?");
    cr_assert_eq(st_dtype_size(ST_NDTYPES), 0);
}

Test(safetensors, short_files_and_header_length)
{
    st_file f;
    char err[256];
    uint8_t small[8] = {2, 0, 0, 0, 0, 0, 0, 0};
    for (size_t len = 0; len < 8; len++) {
        cr_assert_eq(parse_copy(small, len, &f, NULL, err, sizeof err), LUNA_EFORMAT);
        cr_assert(strstr(err, "too short") != NULL, "%s", err);
    }
    cr_assert_eq(st_parse(NULL, 0, &f, err, sizeof err), LUNA_EFORMAT);

    /* header length beyond the file: by one byte, and by 2^64 - 1 */
    size_t len;
    uint8_t *img = fx_st_raw("{}", 0, &len);
    img[0] = 3;
    cr_assert_eq(parse_copy(img, len, &f, NULL, err, sizeof err), LUNA_EFORMAT);
    cr_assert(strstr(err, "header length 3 goes past the end of the 10-byte file") != NULL,
              "%s", err);
    memset(img, 0xFF, 8);
    cr_assert_eq(parse_copy(img, len, &f, NULL, err, sizeof err), LUNA_EFORMAT);
    cr_assert(strstr(err, "over the 100000000-byte limit") != NULL, "%s", err);
    /* just over the 100 MB limit, with a file that would hold it: still refused */
    uint64_t n = ST_MAX_HEADER + 1ull;
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)(n >> (8 * i));
    cr_assert_eq(st_parse(img, (size_t)n + 8, &f, err, sizeof err), LUNA_EFORMAT,
                 "the length is checked before any byte of the header is read");
    cr_assert(strstr(err, "limit") != NULL, "%s", err);
    /* the header length 0 is not JSON */
    memset(img, 0, 8);
    cr_assert_eq(parse_copy(img, 8, &f, NULL, err, sizeof err), LUNA_EFORMAT);
    cr_assert(strstr(err, "not valid JSON") != NULL, "%s", err);
    free(img);
}

Test(safetensors, truncated_file)
{
    fx_st *w = fx_st_new();
    float v[16] = {0};
    uint64_t s1[2] = {4, 4};
    fx_st_add(w, "x", ST_F32, 2, s1, v);
    size_t len;
    uint8_t *img = fx_st_build(w, &len);
    fx_st_free(w);
    st_file f;
    char err[256];
    cr_assert_eq(parse_copy(img, len, &f, NULL, err, sizeof err), 0, "%s", err);
    st_free(&f);
    for (size_t cut = 0; cut < len; cut++) {
        cr_assert_eq(parse_copy(img, cut, &f, NULL, err, sizeof err), LUNA_EFORMAT,
                     "truncated to %zu bytes", cut);
        if (cut > 8 + 64) /* the whole header is there: only the data is short */
            cr_assert(strstr(err, "go past the") != NULL, "%zu: %s", cut, err);
    }
    free(img);
}

Test(safetensors, header_errors)
{
    const struct {
        const char *header;
        size_t data;
        const char *want;
    } cases[] = {
        {"{\"a\":", 0, "not valid JSON: line 1, column 6"},
        {"not json", 0, "not valid JSON"},
        {"{\"a\":1} x", 0, "not valid JSON"},
        {"{\"a\":{},\"a\":{}}", 0, "duplicate key \"a\""},
        {"[]", 0, "header is an array, expected an object"},
        {"\"x\"", 0, "expected an object"},
        {"{\"t\":[]}", 0, "tensor \"t\": entry is an array, expected an object"},
        {"{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"t\": no \"dtype\""},
        {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor \"t\": no \"shape\""},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "no \"data_offsets\""},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
         "tensor \"t\": unknown key \"x\""},
        {"{\"t\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "tensor \"t\": unknown dtype \"F17\""},
        {"{\"t\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype"},
        {"{\"t\":{\"dtype\":\"F32\\u0000\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "unknown dtype"},
        {"{\"t\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "dtype is a number, expected a string"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4,
         "shape is a number, expected an array"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "shape[0] is not a non-negative integer"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4,
         "shape[1] is not a non-negative integer"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4, "shape[0]"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, "shape[0]"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,4]}}",
         4, "shape[0]"},
        {"{\"t\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
         4, "element count overflows"},
        {"{\"t\":{\"dtype\":\"F64\",\"shape\":[4294967296,536870912],\"data_offsets\":[0,4]}}",
         4, "byte size overflows"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
         "data_offsets must be [begin, end]"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
         "data_offsets must be"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"b\":0}}}", 4,
         "data_offsets must be"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4,
         "data_offsets must be"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4,
         "data_offsets must be"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
         "data_offsets [8, 4] end before they begin"},
        /* offsets outside the data */
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3,
         "tensor \"t\": data_offsets [0, 4] go past the 3-byte data section"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[100,104]}}", 8,
         "go past the 8-byte data section"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[9,9]}}", 8, "go past"},
        /* size mismatch */
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8,
         "data_offsets [0, 4] hold 4 bytes, but F32 x 2 elements need 8"},
        {"{\"t\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
         "hold 16 bytes, but F16 x 4 elements need 8"},
        {"{\"t\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,0]}}", 8,
         "hold 0 bytes, but U8 x 1 elements need 1"},
        /* overlaps */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         "tensors \"a\" [0, 8] and \"b\" [4, 8] overlap"},
        {"{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "overlap"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "overlap"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]}}", 5,
         "tensors \"a\" [0, 4] and \"b\" [3, 5] overlap"}, /* by one byte */
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]},"
         "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]}}", 10, "overlap"},
        /* names and metadata */
        {"{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "tensor name \"a?b\" holds a NUL character"},
        {"{\"__metadata__\":[]}", 0, "\"__metadata__\" is an array, expected an object"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "\"__metadata__\": \"k\" is a number"},
        {"{\"__metadata__\":{\"k\":\"a\\u0000\"}}", 0, "holds a NUL character"},
        {"{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, "duplicate key \"k\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_header_err(cases[i].header, cases[i].data, cases[i].want);
}

Test(safetensors, messages_fit_small_buffers)
{
    size_t len;
    uint8_t *img = fx_st_raw("{\"t\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                             4, &len);
    st_file f;
    char err[10];
    cr_assert_eq(st_parse(img, len, &f, err, sizeof err), LUNA_EFORMAT);
    cr_assert_eq(strlen(err), sizeof err - 1);
    cr_assert_eq(st_parse(img, len, &f, NULL, 0), LUNA_EFORMAT);
    free(img);
}

/* ---- conversions ---------------------------------------------------------------------------- */

/* F16 by the definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m when e = 0. */
static double f16_reference(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -24);
    else
        v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

Test(safetensors, f16_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        double r = f16_reference((uint16_t)h);
        if (isnan(r)) {
            cr_assert(isnan(f), "0x%04X should be NaN", h);
            uint32_t bits;
            memcpy(&bits, &f, 4);
            cr_assert_eq(bits & 0x3FF, 0, "0x%04X: payload lands in the top mantissa bits", h);
            cr_assert_eq((bits >> 13) & 0x3FF, h & 0x3FF, "0x%04X: payload kept", h);
        } else {
            cr_assert_eq((double)f, r, "0x%04X: %.10g, expected %.10g", h, f, r);
        }
        cr_assert_eq(!!signbit(f), h >> 15, "0x%04X: sign", h);
    }
    /* the named cases */
    cr_assert_eq(st_f16_to_f32(0x3C00), 1.0f);
    cr_assert_eq(st_f16_to_f32(0xC000), -2.0f);
    cr_assert_eq(st_f16_to_f32(0x7BFF), 65504.0f);
    cr_assert_eq(st_f16_to_f32(0x0001), 0x1p-24f);   /* smallest subnormal */
    cr_assert_eq(st_f16_to_f32(0x03FF), 0x3FFp-24f); /* largest subnormal */
    cr_assert_eq(st_f16_to_f32(0x0400), 0x1p-14f);   /* smallest normal */
    cr_assert_eq(st_f16_to_f32(0x8001), -0x1p-24f);
    cr_assert(isinf(st_f16_to_f32(0x7C00)) && st_f16_to_f32(0x7C00) > 0);
    cr_assert(isinf(st_f16_to_f32(0xFC00)) && st_f16_to_f32(0xFC00) < 0);
    cr_assert(isnan(st_f16_to_f32(0x7E00)));
    cr_assert(isnan(st_f16_to_f32(0x7C01)));
    cr_assert(st_f16_to_f32(0x8000) == 0 && signbit(st_f16_to_f32(0x8000)));
    cr_assert(st_f16_to_f32(0x0000) == 0 && !signbit(st_f16_to_f32(0x0000)));
}

Test(safetensors, bf16_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        cr_assert_eq(bits, h << 16, "0x%04X", h);
    }
    cr_assert_eq(st_bf16_to_f32(0x3F80), 1.0f);
    cr_assert_eq(st_bf16_to_f32(0x4049), 3.140625f);
    cr_assert_eq(st_bf16_to_f32(0x0001), 0x1p-133f); /* smallest subnormal */
    cr_assert(isinf(st_bf16_to_f32(0x7F80)) && st_bf16_to_f32(0x7F80) > 0);
    cr_assert(isinf(st_bf16_to_f32(0xFF80)) && st_bf16_to_f32(0xFF80) < 0);
    cr_assert(isnan(st_bf16_to_f32(0x7FC0)));
    cr_assert(st_bf16_to_f32(0x8000) == 0 && signbit(st_bf16_to_f32(0x8000)));
}

Test(safetensors, fixture_rounding_matches_hardware_conventions)
{
    /* The writer's rounding, which the model tests rely on. */
    cr_assert_eq(fx_f32_to_f16(1.0f), 0x3C00);
    cr_assert_eq(fx_f32_to_f16(65504.0f), 0x7BFF);
    cr_assert_eq(fx_f32_to_f16(65520.0f), 0x7C00, "rounds up to inf");
    cr_assert_eq(fx_f32_to_f16(0x1p-24f), 0x0001);
    cr_assert_eq(fx_f32_to_f16(0x1p-25f), 0x0000, "ties to even");
    cr_assert_eq(fx_f32_to_f16(0x3p-25f), 0x0002, "ties to even");
    cr_assert_eq(fx_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(fx_f32_to_f16(1.0f + 0x1p-11f), 0x3C00, "tie to even (down)");
    cr_assert_eq(fx_f32_to_f16(1.0f + 0x3p-11f), 0x3C02, "tie to even (up)");
    cr_assert_eq(fx_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80, "tie to even (down)");
    cr_assert_eq(fx_f32_to_bf16(1.0f + 0x3p-8f), 0x3F82, "tie to even (up)");
    for (uint32_t h = 0; h < 0x7C00; h++) /* every finite F16 survives a round trip */
        cr_assert_eq(fx_f32_to_f16(st_f16_to_f32((uint16_t)h)), h, "0x%04X", h);
}

/* A tensor whose data starts at every alignment, in each float dtype. */
Test(safetensors, read_unaligned_data)
{
    const float vals[5] = {1.5f, -0.0f, 0x1p-24f, -65504.0f, 3.0f};
    const st_dtype types[4] = {ST_F32, ST_F64, ST_F16, ST_BF16};
    for (int ti = 0; ti < 4; ti++) {
        for (int mis = 0; mis < 8; mis++) {
            fx_st *w = fx_st_new();
            uint64_t shape[1] = {5};
            fx_st_set_misalign(w, mis);
            fx_st_add(w, "v", types[ti], 1, shape, vals);
            size_t len;
            uint8_t *img = fx_st_build(w, &len);
            fx_st_free(w);
            st_file f;
            uint8_t *buf;
            char err[256];
            cr_assert_eq(parse_copy(img, len, &f, &buf, err, sizeof err), 0, "%s", err);
            free(img);
            const st_tensor *t = st_find(&f, "v");
            cr_assert_eq((size_t)(t->data - buf) % 8, (size_t)mis);
            float out[5];
            double dout[5];
            cr_assert_eq(st_read_f32(t, out), 0);
            cr_assert_eq(st_read_f64(t, dout), 0);
            for (int i = 0; i < 5; i++) {
                float want = fx_round(types[ti], vals[i]);
                cr_assert_eq(out[i], want, "%s[%d] misaligned by %d: %g", st_dtype_name(types[ti]),
                             i, mis, out[i]);
                cr_assert_eq(dout[i], (double)want);
                cr_assert_eq(!!signbit(out[i]), !!signbit(vals[i]));
            }
            st_free(&f);
            free(buf);
        }
    }
}

Test(safetensors, read_rejects_non_float_and_converts_f64)
{
    size_t len;
    uint8_t *img = fx_st_raw("{\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                             "\"d\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[8,32]}}",
                             32, &len);
    double src[3] = {0.1, 1e300, -1e-50};
    memcpy(img + len - 24, src, sizeof src);
    st_file f;
    char err[256];
    cr_assert_eq(st_parse(img, len, &f, err, sizeof err), 0, "%s", err);
    float out[3] = {7, 7, 7};
    double dout[3];
    cr_assert_eq(st_read_f32(st_find(&f, "i"), out), LUNA_EINVAL);
    cr_assert_eq(st_read_f64(st_find(&f, "i"), dout), LUNA_EINVAL);
    cr_assert_eq(out[0], 7, "nothing written");
    cr_assert_eq(st_read_f32(st_find(&f, "d"), out), 0);
    cr_assert_eq(out[0], 0.1f);
    cr_assert(isinf(out[1]), "1e300 overflows a float");
    cr_assert(out[2] == 0 && signbit(out[2]), "-1e-50 underflows to -0");
    cr_assert_eq(st_read_f64(st_find(&f, "d"), dout), 0);
    cr_assert_eq(memcmp(dout, src, sizeof src), 0);
    cr_assert(st_dtype_is_float(ST_F16) && st_dtype_is_float(ST_BF16) &&
              st_dtype_is_float(ST_F32) && st_dtype_is_float(ST_F64));
    cr_assert(!st_dtype_is_float(ST_I64) && !st_dtype_is_float(ST_U8));
    st_free(&f);
    free(img);
}

/* ---- fuzz ----------------------------------------------------------------------------------- */

/* Mutates a valid small file 20,000 times: bit flips, byte writes, inserts, deletes and
 * truncations, aimed at the header most of the time. Every parse must return 0 or an error;
 * every accepted file must satisfy the reader's promises, checked by reading each tensor. */
Test(safetensors, fuzz)
{
    fx_st *w = fx_st_new();
    float v[12];
    for (int i = 0; i < 12; i++)
        v[i] = (float)i - 5.5f;
    uint64_t s2[2] = {2, 3}, s1[1] = {3}, s0[2] = {0, 2};
    fx_st_add(w, "w", ST_F32, 2, s2, v);
    fx_st_add(w, "b", ST_F16, 1, s1, v);
    fx_st_add(w, "h", ST_BF16, 2, s2, v);
    fx_st_add(w, "e", ST_F64, 2, s0, v);
    fx_st_add(w, "s", ST_F64, 0, s0, v);
    fx_st_meta(w, "format", "pt");
    size_t base_len;
    uint8_t *base = fx_st_build(w, &base_len);
    fx_st_free(w);
    size_t header_end = base_len - (24 + 6 + 12 + 0 + 8);
    uint64_t state = 20240601;
    int accepted = 0;
    uint8_t *buf = malloc(base_len + 16);
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, base, base_len);
        size_t len = base_len;
        int muts = 1 + (int)(fx_rand(&state) % 3);
        for (int m = 0; m < muts && len > 0; m++) {
            /* 7 in 8 mutations hit the length or the header */
            size_t span = fx_rand(&state) % 8 ? (header_end < len ? header_end : len) : len;
            size_t at = fx_rand(&state) % span;
            switch (fx_rand(&state) % 6) {
            case 0: buf[at] ^= (uint8_t)(1u << (fx_rand(&state) % 8)); break;
            case 1: buf[at] = (uint8_t)fx_rand(&state); break;
            case 2: buf[at] = (uint8_t)"0123456789,[]{}\":-"[fx_rand(&state) % 18]; break;
            case 3:
                if (len < base_len + 16) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = (uint8_t)fx_rand(&state);
                    len++;
                }
                break;
            case 4: memmove(buf + at, buf + at + 1, len - at - 1); len--; break;
            case 5: len = at + (fx_rand(&state) % 2 ? 0 : (len - at) / 2); break;
            }
        }
        st_file f;
        char err[256];
        uint8_t *copy = NULL;
        int rc = parse_copy(buf, len, &f, &copy, err, sizeof err);
        cr_assert(rc == 0 || rc == LUNA_EFORMAT, "iteration %d: rc %d", it, rc);
        if (rc != 0) {
            cr_assert_neq(err[0], 0, "iteration %d: no message", it);
            continue;
        }
        accepted++;
        for (size_t i = 0; i < f.n_tensors; i++) {
            const st_tensor *t = &f.tensors[i];
            cr_assert(t->data >= f.data && t->nbytes <= f.data_len &&
                      t->offset <= f.data_len - t->nbytes, "iteration %d: bounds", it);
            cr_assert_eq(t->nbytes, t->numel * st_dtype_size(t->dtype));
            if (i > 0)
                cr_assert_lt(strcmp(f.tensors[i - 1].name, t->name), 0);
            if (st_dtype_is_float(t->dtype) && t->numel <= 64) {
                double out[64];
                cr_assert_eq(st_read_f64(t, out), 0);
            }
        }
        st_free(&f);
        free(copy);
    }
    free(buf);
    free(base);
    cr_assert_gt(accepted, 200, "mutations should leave some files valid (%d)", accepted);
}
