/* safetensors.h - a strict reader of the safetensors layout (engine-internal).
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of a JSON object
 * mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
 * "__metadata__" object of string -> string), then the data section; offsets are relative to
 * the data section. st_parse checks everything that a reader could trip on: N <= ST_MAX_HEADER
 * and 8 + N <= the buffer, the header is strict JSON (engine/json.h) with exactly those keys, the
 * dtype is known, every shape entry is a non-negative integer, numel * dtype size == end - begin
 * without overflow, 0 <= begin <= end <= data length, and no two tensors share a byte. Holes
 * and trailing bytes after the last tensor are allowed. It never reads tensor data.
 *
 * Ownership: st_parse borrows the buffer; every data pointer in the st_file points into it,
 * so the buffer must outlive the st_file. Names, shapes and metadata are copied into one
 * allocation that st_free releases.
 *
 * Data may sit at any alignment: the converters below read it with memcpy. The engine assumes a
 * little-endian host, like the format.
 *
 * Threads: parses are independent, and a parsed st_file is read-only: any thread may read it. */
#ifndef LUNA_SAFETENSORS_H
#define LUNA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_HEADER 100000000u /* bytes of header JSON, as in the reference implementation */

typedef enum {
    ST_BOOL = 0,
    ST_U8,
    ST_I8,
    ST_F8_E5M2,
    ST_F8_E4M3,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_F64,
    ST_I64,
    ST_U64,
    ST_NDTYPES
} st_dtype;

typedef struct {
    const char *name;       /* NUL-terminated (names holding a NUL are rejected) */
    st_dtype dtype;
    int ndim;
    const uint64_t *shape;  /* (ndim); a scalar has ndim 0 and numel 1 */
    uint64_t numel;
    const uint8_t *data;    /* (nbytes) inside the parsed buffer; any alignment */
    size_t nbytes;
    size_t offset;          /* data - the start of the data section (= data_offsets[0]) */
} st_tensor;

typedef struct {
    const char *key, *value; /* NUL-terminated */
} st_meta;

typedef struct {
    st_tensor *tensors;     /* (n_tensors) sorted by name (strcmp order) */
    size_t n_tensors;
    st_meta *meta;          /* (n_meta) "__metadata__" entries, sorted by key */
    size_t n_meta;
    const uint8_t *data;    /* the data section: buf + 8 + header_len */
    size_t data_len;
    size_t header_len;
    void *mem;              /* internal: the one allocation behind tensors, meta and names */
} st_file;

/* Parses buf[0..len). On success returns 0 and fills *out (free it with st_free). On failure
 * returns LUNA_EFORMAT (or LUNA_ENOMEM), writes a one-line reason naming the tensor or field
 * into err (errlen bytes, may be 0) and leaves *out zeroed, so st_free(out) is still safe. */
int st_parse(const uint8_t *buf, size_t len, st_file *out, char *err, size_t errlen);
void st_free(st_file *f); /* zeroes *f; NULL or a zeroed st_file is a no-op */

/* The tensor called name, or NULL. O(log n). */
const st_tensor *st_find(const st_file *f, const char *name);

/* A metadata value, or NULL. */
const char *st_meta_get(const st_file *f, const char *key);

const char *st_dtype_name(st_dtype t); /* "F32"; "?" for an invalid value */
size_t st_dtype_size(st_dtype t);      /* bytes per element; 0 for an invalid value */
int st_dtype_is_float(st_dtype t);     /* F64, F32, F16, BF16: what the converters accept */

/* Exact scalar conversions (subnormals, infinities, NaN payloads and -0 are kept). */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t h); /* bf16 is the upper 16 bits of an f32 */

/* Convert the whole tensor (F64, F32, F16 or BF16) into dst, which has room for t->numel values.
 * F64 narrows to float with IEEE rounding. Return 0, or LUNA_EINVAL for another dtype. */
int st_read_f32(const st_tensor *t, float *dst);
int st_read_f64(const st_tensor *t, double *dst);

#endif
