/* golden.c - reading the golden cases (golden.h). */
#include "golden.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void golden_open(golden *g, const char *name)
{
    char path[512], err[512];
    memset(g, 0, sizeof *g);
    snprintf(path, sizeof path, GOLDEN_DIR "/%s", name);
    int rc = luna_model_load(path, &g->m, err, sizeof err);
    cr_assert_eq(rc, 0, "load %s: %s", path, err);
    snprintf(path, sizeof path, GOLDEN_DIR "/%s/golden.safetensors", name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    g->len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = malloc(g->len);
    cr_assert_eq(fread(g->buf, 1, g->len, f), g->len);
    fclose(f);
    cr_assert_eq(st_parse(g->buf, g->len, &g->st, err, sizeof err), 0, "%s: %s", path, err);
    const char *count = st_meta_get(&g->st, "inputs");
    cr_assert_not_null(count);
    g->count = atoi(count);
    cr_assert_gt(g->count, 0);
}

void golden_close(golden *g)
{
    st_free(&g->st);
    free(g->buf);
    luna_model_free(g->m);
}

luna_model *golden_model(const char *name)
{
    char path[256], err[256];
    luna_model *m;
    snprintf(path, sizeof path, GOLDEN_DIR "/%s", name);
    cr_assert_eq(luna_model_load(path, &m, err, sizeof err), 0, "load %s: %s", path, err);
    return m;
}

static const st_tensor *find(const golden *g, const char *what, int i)
{
    char name[64];
    snprintf(name, sizeof name, "%s.%d", what, i);
    const st_tensor *t = st_find(&g->st, name);
    cr_assert_not_null(t, "golden tensor %s missing", name);
    return t;
}

double *golden_tensor(const golden *g, const char *what, int i, size_t *numel)
{
    const st_tensor *t = find(g, what, i);
    double *v = malloc((t->numel ? t->numel : 1) * sizeof *v);
    cr_assert_eq(st_read_f64(t, v), 0);
    *numel = (size_t)t->numel;
    return v;
}

int32_t *golden_i32(const golden *g, const char *what, int i, size_t *numel)
{
    const st_tensor *t = find(g, what, i);
    cr_assert_eq(t->dtype, ST_I32, "%s.%d is %s, not I32", what, i, st_dtype_name(t->dtype));
    int32_t *v = malloc(t->nbytes ? t->nbytes : 1); /* the data may sit at any alignment */
    memcpy(v, t->data, t->nbytes);
    *numel = (size_t)t->numel;
    return v;
}

double golden_rel_err(const float *out, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)out[i] - ref[i];
        num += e * e;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void golden_expect_listed(const char *const *names, size_t count, const char *prefix,
                          const char *exclude)
{
    DIR *dir = opendir(GOLDEN_DIR);
    cr_assert_not_null(dir);
    struct dirent *e;
    size_t seen = 0;
    while ((e = readdir(dir))) {
        char p[512];
        struct stat st;
        snprintf(p, sizeof p, GOLDEN_DIR "/%s/config.json", e->d_name);
        if (stat(p, &st) != 0 || strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        if (exclude && strncmp(e->d_name, exclude, strlen(exclude)) == 0) continue;
        int listed = 0;
        for (size_t i = 0; i < count; i++) listed |= strcmp(names[i], e->d_name) == 0;
        cr_expect(listed, "golden case %s has no test", e->d_name);
        seen++;
    }
    closedir(dir);
    cr_expect_eq(seen, count);
}
