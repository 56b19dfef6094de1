/* state.h - a Luna generation state's fields, for state.c's export and import (engine-internal).
 *
 * The struct stays private to decoder.c, which owns its layout and every update to it; state.c
 * reads and writes the fields only through this view, filled by the accessor at the end of
 * decoder.c. */
#ifndef LUNA_STATE_H
#define LUNA_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "luna.h"

typedef struct {
    const luna_model *m;
    luna_attn kind;       /* only LUNA_ATTN_LUNA states have the fields below */
    uint64_t *t;          /* tokens consumed */
    double *sum;          /* (sum_len): per layer S_K (H, k, l), then S_V (H, l, k) when untied */
    size_t sum_len;
    int32_t *recent;      /* (recent_len): the tokens the embeddings read, the last consumed first;
                             slots at and past t hold 0 */
    size_t recent_len;    /* max(ngram_embed, hash_ngrams) - 1 */
} luna__state_fields;

/* The fields of s, writable: import writes a state through them (the caller owns s and holds
 * it alone, as for any call that advances it). */
void luna__gen_state_fields(const luna_gen_state *s, luna__state_fields *f);

#endif
