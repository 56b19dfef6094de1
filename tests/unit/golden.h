/* golden.h - the golden cases of tests/golden: a model directory with golden.safetensors, the
 * outputs of the float64 PyTorch reference (tools/make_golden.py), shared by the encoder and the
 * decoder tests. Every helper asserts (Criterion) instead of returning an error. */
#ifndef LUNA_TEST_GOLDEN_H
#define LUNA_TEST_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

#include "engine/luna.h"
#include "engine/safetensors.h"

#define GOLDEN_DIR "tests/golden"

typedef struct {
    luna_model *m;
    uint8_t *buf; /* golden.safetensors, read whole; st points into it */
    size_t len;
    st_file st;
    int count;    /* inputs in the case (metadata "inputs") */
} golden;

void golden_open(golden *g, const char *name);
void golden_close(golden *g);
/* Just the model of case `name` (free it with luna_model_free). */
luna_model *golden_model(const char *name);
/* The reference tensor `what.i` as doubles (caller frees); *numel receives its size. */
double *golden_tensor(const golden *g, const char *what, int i, size_t *numel);
/* The I32 tensor `what.i` (caller frees); *numel receives its size. */
int32_t *golden_i32(const golden *g, const char *what, int i, size_t *numel);
/* ||out - ref|| / ||ref|| (the absolute norm when ref is zero), over n values. */
double golden_rel_err(const float *out, const double *ref, size_t n);
/* Every case directory under GOLDEN_DIR whose name starts with `prefix` ("" for all) and not
 * with `exclude` (may be NULL) is in names[0..count): a new case cannot go untested. */
void golden_expect_listed(const char *const *names, size_t count, const char *prefix,
                          const char *exclude);

#endif
