/* test_cache.c - server/cache.c, the prefix state cache: where a prefill stops to store, the
 * longest stored prefix found and checked byte for byte, the bytes it saves, LRU eviction within
 * its limit and the ledger's, keys kept for entries after them, and a ledger balanced to zero. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine/generate.h"
#include "engine/luna.h"
#include "golden.h"
#include "server/cache.h"

typedef struct {
    uint64_t used, cap;
} fake_ledger;

static int fl_reserve(void *u, uint64_t b)
{
    fake_ledger *l = u;
    if (b > l->cap - l->used) return -1;
    l->used += b;
    return 0;
}

static void fl_release(void *u, uint64_t b)
{
    fake_ledger *l = u;
    cr_assert_leq(b, l->used, "the cache gives back no more than it took");
    l->used -= b;
}

enum { CHUNK = 64, INTERVAL = 128 };

typedef struct {
    luna_model *m;
    luna_ctx *c;
    size_t V;
    fake_ledger led;
    srv_cache *cache;
} fx;

static void fx_open(fx *f, uint64_t max_bytes, uint64_t ledger_cap)
{
    f->m = golden_model("lm_defaults");
    luna_ctx_opts o = {CHUNK, LUNA_ATTN_LUNA, 1};
    cr_assert_eq(luna_ctx_new(f->m, &o, &f->c), 0);
    f->V = (size_t)luna_model_config(f->m)->vocab_size;
    f->led = (fake_ledger){0, ledger_cap};
    f->cache = srv_cache_new(f->m, max_bytes, INTERVAL - 10, CHUNK, (srv_ledger){fl_reserve, fl_release, &f->led});
    cr_assert_not_null(f->cache);
    cr_assert_eq(srv_cache_interval(f->cache), INTERVAL, "the interval is rounded up to the chunk");
}

static void fx_close(fx *f)
{
    srv_cache_free(f->cache);
    cr_assert_eq(f->led.used, 0, "the ledger is balanced");
    luna_ctx_free(f->c);
    luna_model_free(f->m);
}

/* Prefills the prompt from what s holds, stopping where the cache says, storing at each stop;
 * returns the tokens prefilled. *pin: the sequence's pin (unpinned by the caller). */
static size_t prefill_storing(fx *f, luna_gen_state *s, float *logits_in, const uint8_t *p, size_t len, srv_cnode **pin,
                              float *logits_out)
{
    luna_sampling sp = LUNA_SAMPLING_DEFAULTS;
    luna_sampler *smp;
    luna_gen g;
    luna_gen_params gp = {.max_new_tokens = 0};
    cr_assert_eq(luna_sampler_new((int)f->V, &sp, &smp), 0);
    cr_assert_eq(luna_gen_resume(&g, f->m, s, logits_in, smp, p, len, &gp, NULL, NULL), 0);
    size_t done = 0;
    while (luna_gen_prefilling(&g)) {
        uint64_t t = luna_gen_state_tokens(s);
        size_t stop = srv_cache_next_stop(f->cache, t, len);
        cr_assert_gt(stop, t);
        long n = luna_gen_prefill(&g, f->c, stop - t);
        if (f->cache) cr_assert_eq((size_t)n, stop - t, "a stop is on a chunk boundary or the prompt's end");
        done += (size_t)n;
        srv_cache_put(f->cache, pin, p, len, s, g.logits);
    }
    if (logits_out) memcpy(logits_out, g.logits, f->V * sizeof(float));
    luna_gen_result r;
    cr_assert_eq(luna_gen_end(&g, &r), 0);
    luna_sampler_free(smp);
    return done;
}

static void text(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) seed = seed * 1103515245u + 12345u, p[i] = (uint8_t)('a' + (seed >> 16) % 26);
}

Test(cache, stops_where_it_stores)
{
    fx f;
    fx_open(&f, 64 << 20, UINT64_MAX);
    /* a 700-byte prompt (701 tokens): every 128, the last chunk boundary (640), the end */
    size_t want[] = {128, 256, 384, 512, 640, 701}, k = 0;
    for (uint64_t t = 0; t < 701; t = srv_cache_next_stop(f.cache, t, 700)) {
        size_t s = srv_cache_next_stop(f.cache, t, 700);
        cr_assert_eq(s, want[k], "stop %zu: %zu, want %zu", k, s, want[k]);
        k++;
    }
    cr_assert_eq(k, 6);
    cr_assert_eq(srv_cache_next_stop(f.cache, 0, 100), 64, "101 tokens: the chunk boundary below the interval");
    cr_assert_eq(srv_cache_next_stop(f.cache, 64, 100), 101, "then the end");
    cr_assert_eq(srv_cache_next_stop(f.cache, 0, 30), 31, "a prompt shorter than a chunk: its end");
    cr_assert_eq(srv_cache_next_stop(NULL, 0, 100), SIZE_MAX, "no cache: no stop");
    fx_close(&f);
}

/* The longest stored prefix that may be resumed from: the prompt itself when it was stored
 * whole, else the longest chunk boundary; its state and logits are what the prefill left. */
Test(cache, finds_the_longest_prefix_checked_byte_for_byte)
{
    fx f;
    fx_open(&f, 64 << 20, UINT64_MAX);
    uint8_t p[1000];
    text(p, sizeof p, 3);
    luna_gen_state *s, *got, *ref;
    cr_assert_eq(luna_gen_state_new(f.m, &s), 0);
    cr_assert_eq(luna_gen_state_new(f.m, &got), 0);
    cr_assert_eq(luna_gen_state_new(f.m, &ref), 0);
    float *lg = malloc(f.V * sizeof(float)), *lref = malloc(f.V * sizeof(float));
    srv_cnode *pin = NULL;
    cr_assert_eq(srv_cache_lookup(f.cache, p, 700, s, lg), NULL, "empty: a miss");
    cr_assert_eq(prefill_storing(&f, s, NULL, p, 700, &pin, NULL), 701);
    srv_cache_unpin(f.cache, pin);
    srv_cache_stats st;
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.states, 6, "128, 256, 384, 512, 640 and 701");
    cr_assert_eq(st.entries, 6);
    cr_assert_eq(st.bytes, f.led.used, "the cache's bytes are the ledger's");
    cr_assert_eq(st.misses, 1);

    /* the same prompt: its end, with the prefill's last logits */
    luna_gen_state_reset(got);
    srv_cnode *h = srv_cache_lookup(f.cache, p, 700, got, lg);
    cr_assert_not_null(h);
    cr_assert_eq(luna_gen_state_tokens(got), 701);
    srv_cache_unpin(f.cache, h);
    /* bit for bit what the prompt prefilled without stops leaves (state and logits) */
    luna_gen_state_reset(ref);
    srv_cnode *none = NULL;
    srv_cache *keep = f.cache;
    f.cache = NULL; /* no cache: no stops, nothing stored */
    prefill_storing(&f, ref, NULL, p, 700, &none, lref);
    f.cache = keep;
    size_t eb = luna_gen_state_export_bytes(f.m, 1), na, nb;
    uint8_t *ea = malloc(eb), *ebuf = malloc(eb);
    cr_assert_eq(luna_gen_state_export(got, lg, ea, eb, &na), 0);
    cr_assert_eq(luna_gen_state_export(ref, lref, ebuf, eb, &nb), 0);
    cr_assert(na == nb && !memcmp(ea, ebuf, na), "the cached state and logits are the uncut prefill's");
    free(ea), free(ebuf);
    /* longer prompts resume at the last chunk boundary, 640 (not at 701: that cut is the old prompt's) */
    luna_gen_state_reset(got);
    h = srv_cache_lookup(f.cache, p, 900, got, lg);
    cr_assert_not_null(h);
    cr_assert_eq(luna_gen_state_tokens(got), 640);
    srv_cache_unpin(f.cache, h);
    /* a prompt that parts at byte 300: the longest stored boundary at or before token 301 */
    uint8_t q[700];
    memcpy(q, p, sizeof q);
    q[300] ^= 1;
    luna_gen_state_reset(got);
    h = srv_cache_lookup(f.cache, q, 700, got, lg);
    cr_assert_not_null(h);
    cr_assert_eq(luna_gen_state_tokens(got), 256);
    srv_cache_unpin(f.cache, h);
    /* it parts before the first stored prefix: a miss */
    q[50] ^= 1;
    luna_gen_state_reset(got);
    cr_assert_eq(srv_cache_lookup(f.cache, q, 700, got, lg), NULL);
    cr_assert_eq(luna_gen_state_tokens(got), 0, "a miss leaves the state alone");
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.hits, 3);
    cr_assert_eq(st.misses, 2);
    cr_assert_eq(st.tokens_reused, 701 + 640 + 256);

    /* resuming from 256 and storing again adds the new prompt's own entries after it: 384 (its
     * own bytes), 512, 640 and its end; the shared ones are not stored twice */
    q[50] ^= 1;
    luna_gen_state_reset(got);
    h = srv_cache_lookup(f.cache, q, 700, got, lg);
    cr_assert_eq(prefill_storing(&f, got, lg, q, 700, &h, NULL), 701 - 256);
    srv_cache_unpin(f.cache, h);
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.states, 10);
    free(lg), free(lref);
    luna_gen_state_free(s), luna_gen_state_free(got), luna_gen_state_free(ref);
    fx_close(&f);
}

/* Within max_bytes, the least recently used state goes first; an evicted entry that later
 * entries extend stays as their key, and they are still found. */
Test(cache, evicts_least_recently_used_and_keeps_keys)
{
    fx probe;
    fx_open(&probe, 64 << 20, UINT64_MAX);
    size_t entry = srv_cache_entry_bytes(probe.cache);
    fx_close(&probe);
    fx f;
    fx_open(&f, 4 * (entry + 300), UINT64_MAX); /* four states and their keys */
    uint8_t p[3][600];
    luna_gen_state *s;
    cr_assert_eq(luna_gen_state_new(f.m, &s), 0);
    float *lg = malloc(f.V * sizeof(float));
    for (int i = 0; i < 3; i++) {
        text(p[i], sizeof p[i], 10u + (unsigned)i);
        luna_gen_state_reset(s);
        srv_cnode *pin = NULL;
        prefill_storing(&f, s, NULL, p[i], sizeof p[i], &pin, NULL); /* 128 256 384 512 576 601 */
        srv_cache_unpin(f.cache, pin);
        srv_cache_stats st;
        srv_cache_stats_get(f.cache, &st);
        cr_assert_leq(st.bytes, 4 * (entry + 300), "within max_bytes");
        cr_assert_eq(st.bytes, f.led.used);
        cr_assert_leq(st.states, 4);
    }
    srv_cache_stats st;
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.evictions, 18 - st.states);
    cr_assert_eq(st.states, 4);
    /* the last prompt's last four states are there (384 512 576 601); 128 and 256 were evicted
     * but are the keys of 384, which is still found (its bytes checked through them) */
    luna_gen_state_reset(s);
    srv_cnode *h = srv_cache_lookup(f.cache, p[2], 500, s, lg);
    cr_assert_not_null(h);
    cr_assert_eq(luna_gen_state_tokens(s), 384);
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.entries, 6, "four states and the two keys before them");
    srv_cache_unpin(f.cache, h);
    luna_gen_state_reset(s);
    cr_assert_eq(srv_cache_lookup(f.cache, p[0], 600, s, lg), NULL, "the first prompt's states are gone");
    /* reclaim: a request that needs the memory gets it */
    uint64_t before = f.led.used;
    cr_assert_geq(srv_cache_reclaim(f.cache, 1), entry - 300);
    cr_assert_lt(f.led.used, before);
    srv_cache_reclaim(f.cache, UINT64_MAX);
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.states, 0);
    cr_assert_eq(st.entries, 0, "no state left: no key is needed");
    cr_assert_eq(f.led.used, 0);
    free(lg);
    luna_gen_state_free(s);
    fx_close(&f);
}

/* A pinned entry outlives the eviction of its state; a full ledger stores nothing and leaks
 * nothing. */
Test(cache, pins_and_a_full_ledger)
{
    fx f;
    fx_open(&f, 64 << 20, UINT64_MAX);
    uint8_t p[300];
    text(p, sizeof p, 99);
    luna_gen_state *s;
    cr_assert_eq(luna_gen_state_new(f.m, &s), 0);
    float *lg = malloc(f.V * sizeof(float));
    srv_cnode *pin = NULL;
    prefill_storing(&f, s, NULL, p, sizeof p, &pin, NULL); /* 128 256 301; pin on 301 */
    srv_cache_reclaim(f.cache, UINT64_MAX);
    srv_cache_stats st;
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.states, 0);
    cr_assert_eq(st.entries, 3, "the pinned entry keeps itself and the keys before it");
    srv_cache_unpin(f.cache, pin);
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(f.led.used, 0);
    /* a ledger with no room: nothing stored */
    f.led.cap = 1000;
    pin = NULL;
    luna_gen_state_reset(s);
    prefill_storing(&f, s, NULL, p, sizeof p, &pin, NULL);
    cr_assert_null(pin);
    srv_cache_stats_get(f.cache, &st);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(f.led.used, 0);
    free(lg);
    luna_gen_state_free(s);
    fx_close(&f);
}
