/* safetensors.c - parse and check a safetensors buffer (see safetensors.h for the contract).
 *
 * The header is parsed with the engine's strict JSON parser, checked entry by entry, and copied
 * into one allocation (tensor records, shapes, names, metadata) so the JSON tree can be freed at
 * once. Overlaps are found by sorting the non-empty tensors by offset; lookups are a binary
 * search over the tensors sorted by name. */
#include "engine/safetensors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/json.h"
#include "engine/luna.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and the engine uses F32 tensors in place"
#endif

static const struct {
    const char *name;
    size_t size;
} DTYPES[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 1},     [ST_U8] = {"U8", 1},     [ST_I8] = {"I8", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_I16] = {"I16", 2},       [ST_U16] = {"U16", 2},   [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},     [ST_I32] = {"I32", 4},   [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},       [ST_F64] = {"F64", 8},   [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},
};

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_NDTYPES ? DTYPES[t].name : "?";
}

size_t st_dtype_size(st_dtype t)
{
    return (unsigned)t < ST_NDTYPES ? DTYPES[t].size : 0;
}

int st_dtype_is_float(st_dtype t)
{
    return t == ST_F64 || t == ST_F32 || t == ST_F16 || t == ST_BF16;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- checking one header entry ------------------------------------------------------------ */

/* A non-negative integer no larger than 2^53, else -1. */
static int get_u64(const jsn_value *v, uint64_t *out)
{
    int64_t x;
    if (jsn_int64(v, &x) != 0 || x < 0)
        return -1;
    *out = (uint64_t)x;
    return 0;
}

/* Checks the entry for tensor t->name and fills *t; shape_out has room for its dims. */
static int check_tensor(const jsn_value *v, const uint8_t *data, size_t data_len, st_tensor *t,
                        uint64_t *shape_out, char *err, size_t errlen)
{
    const char *nm = t->name;
    char shown[48];
    jsn_show(nm, strlen(nm), shown, sizeof shown);
    if (v->type != JSN_OBJECT) {
        seterr(err, errlen, "tensor \"%s\": entry is %s, expected an object", shown,
               jsn_type_name(v->type));
        return LUNA_EFORMAT;
    }
    for (size_t i = 0; i < v->len; i++) {
        const char *k = v->items[i]->key;
        if (strcmp(k, "dtype") != 0 && strcmp(k, "shape") != 0 &&
            strcmp(k, "data_offsets") != 0) {
            char kshown[48];
            seterr(err, errlen, "tensor \"%s\": unknown key \"%s\"", shown,
                   jsn_show(k, v->items[i]->key_len, kshown, sizeof kshown));
            return LUNA_EFORMAT;
        }
    }
    const jsn_value *dtype = jsn_get(v, "dtype");
    const jsn_value *shape = jsn_get(v, "shape");
    const jsn_value *offs = jsn_get(v, "data_offsets");
    const char *missing = dtype == NULL ? "dtype" : shape == NULL ? "shape"
                        : offs == NULL ? "data_offsets" : NULL;
    if (missing != NULL) {
        seterr(err, errlen, "tensor \"%s\": no \"%s\"", shown, missing);
        return LUNA_EFORMAT;
    }

    if (dtype->type != JSN_STRING) {
        seterr(err, errlen, "tensor \"%s\": dtype is %s, expected a string", shown,
               jsn_type_name(dtype->type));
        return LUNA_EFORMAT;
    }
    int dt = -1;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strlen(DTYPES[i].name) == dtype->len && strcmp(DTYPES[i].name, dtype->str) == 0)
            dt = i;
    if (dt < 0) {
        char dshown[48];
        seterr(err, errlen, "tensor \"%s\": unknown dtype \"%s\"", shown,
               jsn_show(dtype->str, dtype->len, dshown, sizeof dshown));
        return LUNA_EFORMAT;
    }
    t->dtype = (st_dtype)dt;

    if (shape->type != JSN_ARRAY) {
        seterr(err, errlen, "tensor \"%s\": shape is %s, expected an array", shown,
               jsn_type_name(shape->type));
        return LUNA_EFORMAT;
    }
    int has_zero = 0;
    for (size_t i = 0; i < shape->len; i++) {
        if (get_u64(shape->items[i], &shape_out[i]) != 0) {
            seterr(err, errlen, "tensor \"%s\": shape[%zu] is not a non-negative integer",
                   shown, i);
            return LUNA_EFORMAT;
        }
        has_zero |= shape_out[i] == 0;
    }
    uint64_t numel = has_zero ? 0 : 1;
    for (size_t i = 0; i < shape->len && numel != 0; i++) {
        if (numel > UINT64_MAX / shape_out[i]) {
            seterr(err, errlen, "tensor \"%s\": the shape's element count overflows", shown);
            return LUNA_EFORMAT;
        }
        numel *= shape_out[i];
    }
    t->ndim = (int)shape->len;
    t->shape = shape_out;
    t->numel = numel;
    uint64_t elsize = DTYPES[dt].size;
    if (numel > UINT64_MAX / elsize) {
        seterr(err, errlen, "tensor \"%s\": the shape's byte size overflows", shown);
        return LUNA_EFORMAT;
    }
    uint64_t nbytes = numel * elsize;

    uint64_t b, e;
    if (offs->type != JSN_ARRAY || offs->len != 2 || get_u64(offs->items[0], &b) != 0 ||
        get_u64(offs->items[1], &e) != 0) {
        seterr(err, errlen, "tensor \"%s\": data_offsets must be [begin, end], two "
               "non-negative integers", shown);
        return LUNA_EFORMAT;
    }
    if (b > e) {
        seterr(err, errlen, "tensor \"%s\": data_offsets [%llu, %llu] end before they begin",
               shown, (unsigned long long)b, (unsigned long long)e);
        return LUNA_EFORMAT;
    }
    if (e > data_len) {
        seterr(err, errlen,
               "tensor \"%s\": data_offsets [%llu, %llu] go past the %zu-byte data section",
               shown, (unsigned long long)b, (unsigned long long)e, data_len);
        return LUNA_EFORMAT;
    }
    if (e - b != nbytes) {
        seterr(err, errlen,
               "tensor \"%s\": data_offsets [%llu, %llu] hold %llu bytes, but %s x %llu "
               "elements need %llu", shown, (unsigned long long)b, (unsigned long long)e,
               (unsigned long long)(e - b), DTYPES[dt].name, (unsigned long long)numel,
               (unsigned long long)nbytes);
        return LUNA_EFORMAT;
    }
    t->data = data + b;
    t->nbytes = (size_t)nbytes;
    t->offset = (size_t)b;
    return 0;
}

static int check_metadata(const jsn_value *v, char *err, size_t errlen)
{
    if (v->type != JSN_OBJECT) {
        seterr(err, errlen, "\"__metadata__\" is %s, expected an object",
               jsn_type_name(v->type));
        return LUNA_EFORMAT;
    }
    for (size_t i = 0; i < v->len; i++) {
        const jsn_value *m = v->items[i];
        char shown[48];
        jsn_show(m->key, m->key_len, shown, sizeof shown);
        if (m->type != JSN_STRING) {
            seterr(err, errlen, "\"__metadata__\": \"%s\" is %s, expected a string", shown,
                   jsn_type_name(m->type));
            return LUNA_EFORMAT;
        }
        if (strlen(m->key) != m->key_len || strlen(m->str) != m->len) {
            seterr(err, errlen, "\"__metadata__\": \"%s\" holds a NUL character", shown);
            return LUNA_EFORMAT;
        }
    }
    return 0;
}

/* ---- sorting ------------------------------------------------------------------------------- */

static int cmp_by_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_meta(const void *a, const void *b)
{
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* Sorts the tensors that hold bytes by offset; neighbours must not overlap. */
static int check_overlaps(const st_file *f, char *err, size_t errlen)
{
    if (f->n_tensors < 2)
        return 0;
    const st_tensor **by_off = malloc(f->n_tensors * sizeof *by_off);
    if (by_off == NULL) {
        seterr(err, errlen, "out of memory");
        return LUNA_ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].nbytes > 0)
            by_off[n++] = &f->tensors[i];
    int rc = 0;
    if (n > 1)
        qsort(by_off, n, sizeof *by_off, cmp_by_offset);
    for (size_t i = 1; i < n; i++) {
        const st_tensor *a = by_off[i - 1], *b = by_off[i];
        if (b->offset < a->offset + a->nbytes) {
            char sa[48], sb[48];
            seterr(err, errlen, "tensors \"%s\" [%zu, %zu] and \"%s\" [%zu, %zu] overlap",
                   jsn_show(a->name, strlen(a->name), sa, sizeof sa), a->offset,
                   a->offset + a->nbytes, jsn_show(b->name, strlen(b->name), sb, sizeof sb),
                   b->offset, b->offset + b->nbytes);
            rc = LUNA_EFORMAT;
            break;
        }
    }
    free(by_off);
    return rc;
}

/* ---- the public calls --------------------------------------------------------------------- */

int st_parse(const uint8_t *buf, size_t len, st_file *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (err != NULL && errlen > 0)
        err[0] = 0;
    if (buf == NULL || len < 8) {
        seterr(err, errlen, "the file is %zu bytes, too short for the 8-byte header length",
               buf == NULL ? (size_t)0 : len);
        return LUNA_EFORMAT;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen > ST_MAX_HEADER) {
        seterr(err, errlen, "header length %llu is over the %u-byte limit",
               (unsigned long long)hlen, ST_MAX_HEADER);
        return LUNA_EFORMAT;
    }
    if (hlen > len - 8) {
        seterr(err, errlen, "header length %llu goes past the end of the %zu-byte file",
               (unsigned long long)hlen, len);
        return LUNA_EFORMAT;
    }

    /* A real header takes about 8 tree bytes per text byte; the cap stops a hostile one
     * (say 50 million one-digit array items) from asking for gigabytes more. */
    jsn_doc *doc = NULL;
    char jerr[200];
    int jrc = jsn_parse((const char *)buf + 8, (size_t)hlen, 16 * (size_t)hlen + (1u << 20),
                        &doc, jerr, sizeof jerr);
    if (jrc == JSN_ENOMEM) {
        seterr(err, errlen, "header: out of memory");
        return LUNA_ENOMEM;
    }
    if (jrc != 0) {
        seterr(err, errlen, "header is not valid JSON: %s", jerr);
        return LUNA_EFORMAT;
    }
    const jsn_value *root = jsn_root(doc);
    int rc = LUNA_EFORMAT;
    if (root->type != JSN_OBJECT) {
        seterr(err, errlen, "header is %s, expected an object", jsn_type_name(root->type));
        goto fail_doc;
    }

    /* Count what to copy, so one allocation holds it all. */
    size_t n_tensors = 0, n_meta = 0, n_dims = 0, n_chars = 0;
    const jsn_value *meta = NULL;
    for (size_t i = 0; i < root->len; i++) {
        const jsn_value *v = root->items[i];
        if (strcmp(v->key, "__metadata__") == 0 && v->key_len == strlen("__metadata__")) {
            meta = v;
            if ((rc = check_metadata(v, err, errlen)) != 0)
                goto fail_doc;
            n_meta = v->len;
            for (size_t j = 0; j < v->len; j++)
                n_chars += v->items[j]->key_len + 1 + v->items[j]->len + 1;
            continue;
        }
        if (strlen(v->key) != v->key_len) {
            char shown[48];
            seterr(err, errlen, "tensor name \"%s\" holds a NUL character",
                   jsn_show(v->key, v->key_len, shown, sizeof shown));
            goto fail_doc;
        }
        n_tensors++;
        n_chars += v->key_len + 1;
        const jsn_value *shape = jsn_get(v, "shape");
        if (shape != NULL && shape->type == JSN_ARRAY)
            n_dims += shape->len;
    }
    size_t off_meta = n_tensors * sizeof(st_tensor);
    size_t off_dims = off_meta + n_meta * sizeof(st_meta);
    size_t off_chars = off_dims + n_dims * sizeof(uint64_t);
    size_t total = off_chars + n_chars;
    char *mem = malloc(total > 0 ? total : 1);
    if (mem == NULL) {
        seterr(err, errlen, "out of memory");
        rc = LUNA_ENOMEM;
        goto fail_doc;
    }
    st_file f = {
        .tensors = (st_tensor *)mem,
        .n_tensors = n_tensors,
        .meta = (st_meta *)(mem + off_meta),
        .n_meta = n_meta,
        .data = buf + 8 + hlen,
        .data_len = len - 8 - (size_t)hlen,
        .header_len = (size_t)hlen,
        .mem = mem,
    };
    uint64_t *dims = (uint64_t *)(mem + off_dims);
    char *chars = mem + off_chars;

    size_t ti = 0;
    for (size_t i = 0; i < root->len; i++) {
        const jsn_value *v = root->items[i];
        if (v == meta)
            continue;
        st_tensor *t = &f.tensors[ti++];
        memset(t, 0, sizeof *t);
        memcpy(chars, v->key, v->key_len + 1);
        t->name = chars;
        chars += v->key_len + 1;
        if ((rc = check_tensor(v, f.data, f.data_len, t, dims, err, errlen)) != 0)
            goto fail_mem;
        dims += t->ndim;
    }
    for (size_t j = 0; j < n_meta; j++) {
        const jsn_value *m = meta->items[j];
        memcpy(chars, m->key, m->key_len + 1);
        f.meta[j].key = chars;
        chars += m->key_len + 1;
        memcpy(chars, m->str, m->len + 1);
        f.meta[j].value = chars;
        chars += m->len + 1;
    }
    if ((rc = check_overlaps(&f, err, errlen)) != 0)
        goto fail_mem;
    if (n_tensors > 1)
        qsort(f.tensors, n_tensors, sizeof *f.tensors, cmp_by_name);
    if (n_meta > 1)
        qsort(f.meta, n_meta, sizeof *f.meta, cmp_meta);
    jsn_free(doc);
    *out = f;
    return 0;

fail_mem:
    free(mem);
fail_doc:
    jsn_free(doc);
    return rc;
}

void st_free(st_file *f)
{
    if (f == NULL)
        return;
    free(f->mem);
    memset(f, 0, sizeof *f);
}

static int cmp_find(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const st_tensor *)elem)->name);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (f == NULL || name == NULL || f->n_tensors == 0)
        return NULL;
    return bsearch(name, f->tensors, f->n_tensors, sizeof *f->tensors, cmp_find);
}

const char *st_meta_get(const st_file *f, const char *key)
{
    if (f == NULL || key == NULL)
        return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

/* ---- conversions -------------------------------------------------------------------------- */

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    if (exp == 0x1F) /* inf, or NaN with its payload (the quiet bit lands on f32's) */
        return f32_from_bits(sign | 0x7F800000u | mant << 13);
    if (exp != 0)
        return f32_from_bits(sign | (exp + 112) << 23 | mant << 13);
    if (mant == 0)
        return f32_from_bits(sign); /* +-0 */
    /* Subnormal: mant * 2^-24. Shift the leading 1 up to the implicit bit; each shift takes
     * one off the exponent of 2^-14. */
    int shifts = 0;
    while ((mant & 0x400) == 0) {
        mant <<= 1;
        shifts++;
    }
    return f32_from_bits(sign | (uint32_t)(127 - 14 - shifts) << 23 | (mant & 0x3FF) << 13);
}

float st_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

int st_read_f32(const st_tensor *t, float *dst)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        if (t->nbytes > 0)
            memcpy(dst, p, t->nbytes);
        return 0;
    case ST_F64:
        for (uint64_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d; /* Annex F: rounds, and overflows to +-inf */
        }
        return 0;
    case ST_F16:
    case ST_BF16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
        }
        return 0;
    default:
        return LUNA_EINVAL;
    }
}

int st_read_f64(const st_tensor *t, double *dst)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F64:
        if (t->nbytes > 0)
            memcpy(dst, p, t->nbytes);
        return 0;
    case ST_F32:
        for (uint64_t i = 0; i < t->numel; i++) {
            float f;
            memcpy(&f, p + 4 * i, 4);
            dst[i] = f;
        }
        return 0;
    case ST_F16:
    case ST_BF16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
        }
        return 0;
    default:
        return LUNA_EINVAL;
    }
}
