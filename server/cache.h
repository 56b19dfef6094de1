/* cache.h - the prefix state cache (issue 26): generation states stored by the token prefix
 * that produced them, so that a prompt which begins like an earlier one is prefilled only
 * from where they part.
 *
 * What is stored. A prompt's tokens are bos then its bytes; the prefix of t tokens is bos and
 * the first t - 1 bytes. While a prompt is prefilled, its state (and the logits of the token
 * after it) is stored at every multiple of the interval (--state-cache-interval, a multiple of
 * the engine's chunk), at the last chunk boundary of the prompt, and at the prompt's end.
 *
 * Exactness. Prefill slices end on multiples of the chunk (engine/generate.h), so a state at a
 * chunk boundary is, bit for bit, what any prefill of a longer prompt with that prefix passes
 * through: a request resumed from it (luna_gen_resume) gives the bytes it gives from nothing.
 * A state at a prompt's end off a chunk boundary is exact only for that very prompt (a longer
 * one cuts the last chunk elsewhere), so it is offered only to a prompt of exactly its tokens.
 *
 * Lookup. The longest stored prefix is found by hash (FNV-1a over the prefix's bytes: it goes
 * on from any position, so a prefix's hash does not depend on where the states before it were
 * stored) at each chunk boundary and at the prompt's end, then checked byte for byte.
 *
 * Keys. An entry keeps only the bytes between its parent (the entry stored before it on the
 * same prompt, or that prompt's hit) and itself, so a prompt's entries keep its bytes once.
 * An entry whose state was evicted stays as a key while entries after it (children) or a
 * running sequence (a pin) need its bytes; the last of them to go takes it along.
 *
 * Memory. Every byte (states, logits, keys, entries) is reserved in the server's ledger and
 * bounded by --state-cache-bytes. The cache gives way to requests: srv_reserve evicts the least
 * recently used states when a request does not fit otherwise. States are copied in and out, so
 * a running request never holds one of the cache's states; eviction cannot touch its work.
 *
 * Threads: every function takes the cache's lock; any thread may call them. */
#ifndef SRV_CACHE_H
#define SRV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/luna.h"

typedef struct srv_cache srv_cache;
typedef struct srv_cnode srv_cnode; /* an entry; a sequence's pin on its last one */

typedef struct {
    uint64_t hits, misses, evictions, tokens_reused;
    uint64_t bytes, entries, states; /* now: bytes reserved, entries (keys too), entries with a state */
} srv_cache_stats;

/* Where the cache reserves its bytes: reserve returns 0 when they fit (and takes them), else
 * non-zero (and takes nothing); release gives them back. It must not call back into the
 * cache (the server's is the ledger's raw reserve, without srv_reserve's reclaim). */
typedef struct {
    int (*reserve)(void *user, uint64_t bytes);
    void (*release)(void *user, uint64_t bytes);
    void *user;
} srv_ledger;

/* A cache of at most max_bytes for model m, storing states every `interval` tokens (rounded up
 * to a multiple of chunk, the prefill's chunk length). NULL when max_bytes is 0 (no cache), m
 * is not a causal LM, or memory is short. */
srv_cache *srv_cache_new(const luna_model *m, uint64_t max_bytes, size_t interval, size_t chunk, srv_ledger ledger);
void srv_cache_free(srv_cache *c);

/* Finds the longest stored prefix of the prompt (bos + len bytes) that a generation may resume
 * from, copies its state into s (fresh, of the model) and its logits into `logits` (vocab
 * floats), and returns its entry, pinned for the sequence; NULL on a miss (s untouched). Counts
 * the hit (and the tokens it saves) or the miss. */
srv_cnode *srv_cache_lookup(srv_cache *c, const uint8_t *prompt, size_t len, luna_gen_state *s, float *logits);

/* The tokens of the prompt that a lookup would find now (0: none), without taking anything or
 * counting a hit: for admission's estimate of the prefill still to run. */
uint64_t srv_cache_peek(srv_cache *c, const uint8_t *prompt, size_t len);

/* The position (in tokens, bos included) where a prefill now at token t should stop next to
 * store a state: the next multiple of the interval, the prompt's last chunk boundary or its
 * end (len + 1), whichever comes first. SIZE_MAX without a cache. */
size_t srv_cache_next_stop(const srv_cache *c, uint64_t t, size_t len);

/* After a prefill slice that ended at a stopping place: stores s (holding bos and the prompt's
 * first t - 1 bytes) and logits (the next token's) as the prefix's entry, unless it is there
 * already. *pin is the sequence's pinned entry (NULL at first: its prefix must be a prefix of
 * this one); it is moved to the new entry. Does nothing off a stopping place, or when the
 * cache cannot make room (the budget is the requests'). */
void srv_cache_put(srv_cache *c, srv_cnode **pin, const uint8_t *prompt, size_t len, const luna_gen_state *s,
                   const float *logits);

/* The sequence is over: its pin is dropped (NULL is a no-op). */
void srv_cache_unpin(srv_cache *c, srv_cnode *pin);

/* Evicts least recently used states until `bytes` were given back to the ledger or none is
 * left; returns what was given back. For srv_reserve, when a request does not fit. */
uint64_t srv_cache_reclaim(srv_cache *c, uint64_t bytes);

void srv_cache_stats_get(srv_cache *c, srv_cache_stats *out);
size_t srv_cache_interval(const srv_cache *c);
uint64_t srv_cache_max_bytes(const srv_cache *c);
/* One entry with a state: the state, the logits and the entry (its key bytes come on top). */
size_t srv_cache_entry_bytes(const srv_cache *c);

#endif
