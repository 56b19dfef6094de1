/* model_id.h - how model.c computes a model's identity while it loads (engine-internal).
 *
 * luna_model_id (luna.h) is SHA-256 of: the tag "luna model id v1\0", the config as loaded
 * (model_id.c lists the encoding), then every tensor in the order the loader binds them, each
 * as its name, shape and F32 values as loaded (so an F16 file and the F32 file of the same
 * values are one model). model.c calls begin once, tensor for every tensor it binds, then
 * luna_sha256_final into the model. */
#ifndef LUNA_MODEL_ID_H
#define LUNA_MODEL_ID_H

#include <stddef.h>
#include <stdint.h>

#include "luna.h"
#include "sha256.h"

void luna__model_id_begin(luna_sha256_ctx *h, const luna_config *cfg);
/* A tensor of shape (d0) (ndim 1) or (d0, d1), numel floats at data. */
void luna__model_id_tensor(luna_sha256_ctx *h, const char *name, int ndim, uint64_t d0, uint64_t d1,
                           const float *data, size_t numel);

#endif
