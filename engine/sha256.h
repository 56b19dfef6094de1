/* sha256.h - SHA-256 (FIPS 180-4), the engine's one hash (engine-internal).
 *
 * It names a model (luna_model_id: the config and every weight, hashed once at load) and seals
 * a portable generation state (its checksum). A standard hash rather than a home-made one, so
 * that a tool in another language can check both with its own library (Python's hashlib).
 * The x86 SHA extensions are used when the CPU has them (0.9 GB/s on this Xeon, against 0.12
 * GB/s for the portable code); both paths give the same digest, and the tests compare them.
 *
 * Threads: a context is used by one thread at a time; contexts share nothing. */
#ifndef LUNA_SHA256_H
#define LUNA_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define LUNA_SHA256_BYTES 32

typedef struct {
    uint32_t h[8];       /* the chaining value */
    uint64_t bytes;      /* message bytes so far */
    uint8_t buf[64];     /* a partial block */
    size_t used;         /* bytes of buf in use, < 64 */
    int hw;              /* 1: the SHA extensions compress the blocks */
} luna_sha256_ctx;

void luna_sha256_init(luna_sha256_ctx *c);
void luna_sha256_update(luna_sha256_ctx *c, const void *data, size_t len);
void luna_sha256_final(luna_sha256_ctx *c, uint8_t out[LUNA_SHA256_BYTES]);
/* One call for a whole buffer. */
void luna_sha256(const void *data, size_t len, uint8_t out[LUNA_SHA256_BYTES]);

/* Tests: 0 forces the portable code on contexts initialised afterwards, 1 restores the
 * default (the extensions when the CPU has them). Returns whether the CPU has them. Not for
 * use while other threads hash. */
int luna__sha256_use_hw(int on);

#endif
