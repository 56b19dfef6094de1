/* state.c - portable generation states: a Luna state (and the logits after its last token) as
 * bytes that any replica loading the same model can continue from, bit for bit.
 *
 * The format is docs/model-format.md's "Portable generation states"; this file follows it in
 * the same order: header, running sums, recent tokens, logits, SHA-256. Every number is written
 * little-endian byte by byte, so the bytes do not depend on the host, and a state is canonical:
 * import accepts a byte string only if export of the state it makes gives back the same bytes
 * (fuzz/fuzz_state.c checks this), which leaves no room for a field that import would ignore.
 *
 * Import trusts nothing in the buffer. It reads the fixed header, computes the size the header
 * announces (with overflow checks) before touching anything past it, checks the checksum,
 * then the model, then every value, and only then writes the state: an error leaves it as it
 * was. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "luna.h"
#include "model.h"
#include "sha256.h"
#include "state.h"

#define ST_MAGIC "LUNASTAT"
#define ST_VERSION 1u
#define ST_HEADER 72u /* magic 8, version 4, n_logits 4, model id 32, t 8, n_sums 8, n_recent 4, 0 4 */
#define ST_TRAILER LUNA_SHA256_BYTES
/* Without max_positions, a count beyond 2^53 could not be exact in the double that divides the
 * attention (1 / t), and no real context gets near it. */
#define ST_MAX_TOKENS_UNLIMITED (1ull << 53)

/* ---- little-endian fields ---------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static double get_f64(const uint8_t *p)
{
    uint64_t u = get64(p);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static float get_f32(const uint8_t *p)
{
    uint32_t u = get32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* What the decoder can take: finite, and within float range, since every step converts the
 * sums to float (a sum beyond FLT_MAX would become inf there, then NaN logits). */
static int sum_ok(double x) { return isfinite(x) && fabs(x) <= (double)FLT_MAX; }

/* ---- sizes ------------------------------------------------------------------------------- */

/* The bytes of a state with these counts; 0 if it overflows size_t. */
static size_t st_size(uint64_t n_sums, uint64_t n_recent, uint64_t n_logits)
{
    const uint64_t lim = SIZE_MAX;
    if (n_sums > (lim - ST_HEADER - ST_TRAILER) / 8) return 0;
    uint64_t sz = ST_HEADER + ST_TRAILER + 8 * n_sums;
    if (n_recent > (lim - sz) / 4) return 0;
    sz += 4 * n_recent;
    if (n_logits > (lim - sz) / 4) return 0;
    return (size_t)(sz + 4 * n_logits);
}

size_t luna_gen_state_export_bytes(const luna_model *m, int with_logits)
{
    if (!m || m->cfg.task != LUNA_TASK_CAUSAL_LM) return 0;
    const luna_config *c = &m->cfg;
    uint64_t sums = (uint64_t)c->layers * (c->tie_kv ? 1u : 2u) * (uint64_t)c->d * (uint64_t)c->l;
    uint64_t recent = (uint64_t)(c->ngram_embed > c->hash_ngrams ? c->ngram_embed : c->hash_ngrams) - 1;
    return st_size(sums, recent, with_logits ? (uint64_t)c->vocab_size : 0);
}

/* ---- export ------------------------------------------------------------------------------ */

int luna_gen_state_export(const luna_gen_state *s, const float *logits, uint8_t *buf, size_t cap,
                          size_t *len)
{
    if (!s || !len) return LUNA_EINVAL;
    luna__state_fields f;
    luna__gen_state_fields(s, &f);
    if (f.kind != LUNA_ATTN_LUNA) return LUNA_EINVAL; /* a KV cache grows: not what this is for */
    const luna_config *c = &f.m->cfg;
    size_t V = (size_t)c->vocab_size, n_logits = logits ? V : 0;
    size_t need = st_size(f.sum_len, f.recent_len, n_logits);
    *len = need;
    if (need == 0 || !buf || cap < need) return LUNA_EINVAL;
    /* what import would refuse is not exported: a state in hand always goes back in */
    for (size_t i = 0; i < f.sum_len; i++)
        if (!sum_ok(f.sum[i])) return LUNA_EINVAL;
    for (size_t i = 0; i < n_logits; i++)
        if (!isfinite(logits[i])) return LUNA_EINVAL;

    uint8_t *p = buf;
    memcpy(p, ST_MAGIC, 8);
    put32(p + 8, ST_VERSION);
    put32(p + 12, (uint32_t)n_logits);
    memcpy(p + 16, f.m->id, LUNA_MODEL_ID_BYTES);
    put64(p + 48, *f.t);
    put64(p + 56, f.sum_len);
    put32(p + 64, (uint32_t)f.recent_len);
    put32(p + 68, 0);
    p += ST_HEADER;
    for (size_t i = 0; i < f.sum_len; i++, p += 8) {
        uint64_t u;
        memcpy(&u, &f.sum[i], sizeof u);
        put64(p, u);
    }
    /* only the slots that hold tokens: a slot before the first token is 0 in every export */
    uint64_t valid = *f.t < f.recent_len ? *f.t : f.recent_len;
    for (size_t i = 0; i < f.recent_len; i++, p += 4) put32(p, i < valid ? (uint32_t)f.recent[i] : 0);
    for (size_t i = 0; i < n_logits; i++, p += 4) {
        uint32_t u;
        memcpy(&u, &logits[i], sizeof u);
        put32(p, u);
    }
    luna_sha256(buf, (size_t)(p - buf), p);
    return 0;
}

/* ---- import ------------------------------------------------------------------------------ */

static int refuse(const char **why, const char *msg)
{
    if (why) *why = msg;
    return LUNA_EINVAL;
}

int luna_gen_state_import(luna_gen_state *s, const uint8_t *buf, size_t len, float *logits, int *has_logits,
                          const char **why)
{
    if (!s || !buf) return refuse(why, "no state given");
    luna__state_fields f;
    luna__gen_state_fields(s, &f);
    if (f.kind != LUNA_ATTN_LUNA) return refuse(why, "only a Luna state can be imported");
    const luna_config *c = &f.m->cfg;

    /* the header: each field read only once the bytes it sits in are known to exist */
    if (memcmp(buf, ST_MAGIC, len < 8 ? len : 8) != 0) return refuse(why, "not a Luna state (bad magic)");
    if (len < 12) return refuse(why, "truncated state");
    if (get32(buf + 8) != ST_VERSION) return refuse(why, "unsupported state format version");
    if (len < ST_HEADER + ST_TRAILER) return refuse(why, "truncated state");
    uint32_t n_logits = get32(buf + 12);
    uint64_t t = get64(buf + 48), n_sums = get64(buf + 56);
    uint32_t n_recent = get32(buf + 64);
    size_t want = st_size(n_sums, n_recent, n_logits);
    if (want == 0 || len < want) return refuse(why, "truncated state");
    if (len > want) return refuse(why, "oversized state (bytes after its end)");
    if (get32(buf + 68) != 0) return refuse(why, "malformed state header");
    uint8_t sum[LUNA_SHA256_BYTES];
    luna_sha256(buf, want - ST_TRAILER, sum);
    if (memcmp(sum, buf + want - ST_TRAILER, sizeof sum) != 0) return refuse(why, "state checksum mismatch (corrupted)");

    /* the model, then every value */
    if (memcmp(buf + 16, f.m->id, LUNA_MODEL_ID_BYTES) != 0) return refuse(why, "state of another model");
    if (n_sums != f.sum_len || n_recent != f.recent_len || (n_logits != 0 && n_logits != (uint32_t)c->vocab_size))
        return refuse(why, "state layout does not match the model");
    uint64_t max_t = c->max_positions > 0 ? (uint64_t)c->max_positions : ST_MAX_TOKENS_UNLIMITED;
    if (t > max_t) return refuse(why, "state token count beyond the model's max_positions");
    const uint8_t *sums = buf + ST_HEADER, *recent = sums + 8 * n_sums, *lg = recent + 4 * (size_t)n_recent;
    for (size_t i = 0; i < n_sums; i++)
        if (!sum_ok(get_f64(sums + 8 * i))) return refuse(why, "non-finite running sum in state");
    uint64_t valid = t < n_recent ? t : n_recent;
    for (size_t i = 0; i < n_recent; i++) {
        uint32_t id = get32(recent + 4 * i);
        if (i < valid ? id >= (uint32_t)c->vocab_size : id != 0)
            return refuse(why, "recent token out of the vocabulary in state");
    }
    for (size_t i = 0; i < n_logits; i++)
        if (!isfinite(get_f32(lg + 4 * i))) return refuse(why, "non-finite logits in state");

    /* all checked: now the state */
    for (size_t i = 0; i < n_sums; i++) f.sum[i] = get_f64(sums + 8 * i);
    for (size_t i = 0; i < n_recent; i++) f.recent[i] = (int32_t)get32(recent + 4 * i);
    *f.t = t;
    if (logits)
        for (size_t i = 0; i < n_logits; i++) logits[i] = get_f32(lg + 4 * i);
    if (has_logits) *has_logits = n_logits != 0;
    return 0;
}
