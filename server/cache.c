/* cache.c - the prefix state cache (see cache.h). */
#include "server/cache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct srv_cnode {
    uint64_t hash;              /* FNV-1a of the prefix's bytes */
    uint64_t pos;               /* tokens: bos and pos - 1 bytes */
    srv_cnode *parent;          /* the entry whose prefix precedes this one's bytes; NULL: none */
    luna_gen_state *state;      /* NULL: evicted (the entry is a key for its children or a pin) */
    float *logits;              /* with the state: the next token's */
    int children, pins;
    srv_cnode *lru_prev, *lru_next; /* while it has a state: the LRU list, most recent first */
    srv_cnode *hnext;           /* the hash bucket's chain */
    size_t seg_len;             /* the bytes from the parent's prefix to this one's */
    uint8_t seg[];
};

struct srv_cache {
    pthread_mutex_t lock;
    const luna_model *m;
    srv_ledger ledger;
    uint64_t max_bytes;
    size_t interval, chunk, V, state_bytes;
    srv_cnode **buckets;
    size_t n_buckets; /* a power of two */
    srv_cnode *lru_head, *lru_tail;
    srv_cache_stats st;
};

#define FNV_BASIS 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv(uint64_t h, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * FNV_PRIME;
    return h;
}

static srv_cnode **bucket(const srv_cache *c, uint64_t pos, uint64_t hash)
{
    return &c->buckets[(hash ^ (pos * 0x9e3779b97f4a7c15ull)) & (c->n_buckets - 1)];
}

static uint64_t key_bytes(const srv_cnode *n) { return sizeof *n + n->seg_len; }
static uint64_t state_part(const srv_cache *c) { return c->state_bytes + c->V * sizeof(float); }

srv_cache *srv_cache_new(const luna_model *m, uint64_t max_bytes, size_t interval, size_t chunk, srv_ledger ledger)
{
    size_t sb = m ? luna_gen_state_bytes(m) : 0;
    if (!max_bytes || !sb || !chunk || !ledger.reserve || !ledger.release) return NULL;
    srv_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->m = m;
    c->ledger = ledger;
    c->max_bytes = max_bytes;
    c->chunk = chunk;
    c->interval = interval < chunk ? chunk : (interval + chunk - 1) / chunk * chunk;
    c->V = (size_t)luna_model_config(m)->vocab_size;
    c->state_bytes = sb;
    /* about two buckets per state that fits (keys without a state are rarer) */
    uint64_t states = max_bytes / (state_part(c) + sizeof(srv_cnode)) + 1;
    c->n_buckets = 256;
    while (c->n_buckets < 2 * states && c->n_buckets < (1u << 24)) c->n_buckets *= 2;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
    if (!c->buckets || pthread_mutex_init(&c->lock, NULL)) {
        free(c->buckets);
        free(c);
        return NULL;
    }
    return c;
}

void srv_cache_free(srv_cache *c)
{
    if (!c) return;
    uint64_t bytes = 0;
    for (size_t i = 0; i < c->n_buckets; i++)
        for (srv_cnode *n = c->buckets[i], *next; n; n = next) {
            next = n->hnext;
            bytes += key_bytes(n) + (n->state ? state_part(c) : 0);
            luna_gen_state_free(n->state);
            free(n->logits);
            free(n);
        }
    c->ledger.release(c->ledger.user, bytes);
    free(c->buckets);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- the LRU list of the entries with a state --------------------------------------------- */

static void lru_unlink(srv_cache *c, srv_cnode *n)
{
    if (n->lru_prev) n->lru_prev->lru_next = n->lru_next;
    else c->lru_head = n->lru_next;
    if (n->lru_next) n->lru_next->lru_prev = n->lru_prev;
    else c->lru_tail = n->lru_prev;
    n->lru_prev = n->lru_next = NULL;
}

static void lru_front(srv_cache *c, srv_cnode *n)
{
    n->lru_prev = NULL;
    n->lru_next = c->lru_head;
    if (c->lru_head) c->lru_head->lru_prev = n;
    else c->lru_tail = n;
    c->lru_head = n;
}

static void touch(srv_cache *c, srv_cnode *n)
{
    if (c->lru_head == n) return;
    lru_unlink(c, n);
    lru_front(c, n);
}

/* ---- entries -------------------------------------------------------------------------------- */

/* Whether n's prefix is the prompt's first n->pos tokens: each entry's bytes, back to the root. */
static int matches(const srv_cnode *n, const uint8_t *prompt, size_t len)
{
    if (n->pos == 0 || n->pos - 1 > len) return 0;
    for (size_t end = (size_t)n->pos - 1; n; n = n->parent) {
        size_t start = n->parent ? (size_t)n->parent->pos - 1 : 0;
        if (end - start != n->seg_len || memcmp(n->seg, prompt + start, n->seg_len)) return 0;
        end = start;
    }
    return 1;
}

static srv_cnode *find(srv_cache *c, uint64_t pos, uint64_t hash, const uint8_t *prompt, size_t len)
{
    for (srv_cnode *n = *bucket(c, pos, hash); n; n = n->hnext)
        if (n->pos == pos && n->hash == hash && matches(n, prompt, len)) return n;
    return NULL;
}

/* Frees n, and the entries before it that it alone kept, while they have no state, children
 * or pins. Returns the bytes given back (the caller releases them). */
static uint64_t prune(srv_cache *c, srv_cnode *n)
{
    uint64_t freed = 0;
    while (n && !n->state && !n->children && !n->pins) {
        for (srv_cnode **pp = bucket(c, n->pos, n->hash); *pp; pp = &(*pp)->hnext)
            if (*pp == n) {
                *pp = n->hnext;
                break;
            }
        srv_cnode *parent = n->parent;
        freed += key_bytes(n);
        c->st.entries--;
        free(n);
        if (parent) parent->children--;
        n = parent;
    }
    c->st.bytes -= freed;
    return freed;
}

/* Evicts the least recently used state; returns the bytes given back, 0 when there is none. */
static uint64_t evict_one(srv_cache *c)
{
    srv_cnode *n = c->lru_tail;
    if (!n) return 0;
    lru_unlink(c, n);
    luna_gen_state_free(n->state);
    free(n->logits);
    n->state = NULL;
    n->logits = NULL;
    c->st.bytes -= state_part(c);
    c->st.states--;
    c->st.evictions++;
    uint64_t freed = state_part(c) + prune(c, n);
    c->ledger.release(c->ledger.user, freed);
    return freed;
}

/* Makes room for `need` more bytes: within max_bytes, then in the ledger. 0, or -1 (nothing
 * reserved). */
static int make_room(srv_cache *c, uint64_t need)
{
    if (need > c->max_bytes) return -1;
    while (c->st.bytes + need > c->max_bytes)
        if (!evict_one(c)) return -1;
    while (c->ledger.reserve(c->ledger.user, need))
        if (!evict_one(c)) return -1;
    c->st.bytes += need;
    return 0;
}

/* Gives n a copy of s and logits, in bytes make_room reserved. 0, or -1 (memory). */
static int fill(srv_cache *c, srv_cnode *n, const luna_gen_state *s, const float *logits)
{
    n->logits = malloc(c->V * sizeof(float));
    if (!n->logits || luna_gen_state_new(c->m, &n->state) || luna_gen_state_copy(n->state, s)) {
        luna_gen_state_free(n->state);
        free(n->logits);
        n->state = NULL;
        n->logits = NULL;
        return -1;
    }
    memcpy(n->logits, logits, c->V * sizeof(float));
    lru_front(c, n);
    c->st.states++;
    return 0;
}

/* ---- the interface ------------------------------------------------------------------------- */

/* The longest stored prefix with a state that a generation of the prompt may resume from, or
 * NULL; under the lock. h: the candidates' hashes (longest_hashes). */
static srv_cnode *longest(srv_cache *c, const uint8_t *prompt, size_t len, const uint64_t *h)
{
    size_t T = len + 1, n_aligned = T / c->chunk;
    if (T < c->chunk) return NULL;
    srv_cnode *hit = find(c, T, h[n_aligned], prompt, len);
    if (hit && hit->state) return hit;
    for (size_t k = n_aligned; k >= 1; k--) {
        if (k * c->chunk == T) continue; /* the whole prompt: looked up above */
        hit = find(c, k * c->chunk, h[k - 1], prompt, len);
        if (hit && hit->state) return hit;
    }
    return NULL;
}

/* The candidates, longest first: the whole prompt, then each chunk boundary below it. Their
 * hashes in one pass over the bytes (outside the lock): h[k - 1] is the prefix of k chunks',
 * h[T / chunk] the whole prompt's. malloc'd; NULL when out of memory. */
static uint64_t *longest_hashes(const srv_cache *c, const uint8_t *prompt, size_t len)
{
    size_t T = len + 1, n_aligned = T / c->chunk;
    uint64_t *h = malloc((n_aligned + 1) * sizeof *h);
    if (!h) return NULL;
    uint64_t x = FNV_BASIS;
    size_t done = 0;
    for (size_t k = 1; k <= n_aligned; k++) {
        size_t bytes = k * c->chunk - 1;
        x = fnv(x, prompt + done, bytes - done);
        done = bytes;
        h[k - 1] = x;
    }
    h[n_aligned] = fnv(x, prompt + done, len - done);
    return h;
}

srv_cnode *srv_cache_lookup(srv_cache *c, const uint8_t *prompt, size_t len, luna_gen_state *s, float *logits)
{
    if (!c) return NULL;
    uint64_t *h = longest_hashes(c, prompt, len);
    pthread_mutex_lock(&c->lock);
    srv_cnode *hit = h ? longest(c, prompt, len, h) : NULL;
    if (hit && luna_gen_state_copy(s, hit->state) == 0) {
        memcpy(logits, hit->logits, c->V * sizeof(float));
        touch(c, hit);
        hit->pins++;
        c->st.hits++;
        c->st.tokens_reused += hit->pos;
    } else {
        hit = NULL;
        c->st.misses++;
    }
    pthread_mutex_unlock(&c->lock);
    free(h);
    return hit;
}

uint64_t srv_cache_peek(srv_cache *c, const uint8_t *prompt, size_t len)
{
    if (!c) return 0;
    uint64_t *h = longest_hashes(c, prompt, len);
    if (!h) return 0;
    pthread_mutex_lock(&c->lock);
    srv_cnode *hit = longest(c, prompt, len, h);
    uint64_t pos = hit ? hit->pos : 0;
    pthread_mutex_unlock(&c->lock);
    free(h);
    return pos;
}

size_t srv_cache_next_stop(const srv_cache *c, uint64_t t, size_t len)
{
    if (!c) return SIZE_MAX;
    size_t T = len + 1, stop = ((size_t)t / c->interval + 1) * c->interval;
    size_t aligned_end = T / c->chunk * c->chunk;
    if (aligned_end > t && aligned_end < stop) stop = aligned_end;
    return T < stop ? T : stop;
}

void srv_cache_put(srv_cache *c, srv_cnode **pin, const uint8_t *prompt, size_t len, const luna_gen_state *s,
                   const float *logits)
{
    if (!c) return;
    uint64_t t = luna_gen_state_tokens(s);
    size_t T = len + 1;
    /* a stopping place, of at least one chunk (a shorter prefix prefills in about a millisecond) */
    if (t < c->chunk || t > T || (t % c->interval && t != T / c->chunk * c->chunk && t != T)) return;
    srv_cnode *parent = *pin;
    if (parent && parent->pos >= t) return; /* (a prefill goes forward) */
    size_t from = parent ? (size_t)parent->pos - 1 : 0, to = (size_t)t - 1;
    /* (outside the lock: the pinned parent's hash does not change) */
    uint64_t hash = fnv(parent ? parent->hash : FNV_BASIS, prompt + from, to - from);
    pthread_mutex_lock(&c->lock);
    srv_cnode *n = find(c, t, hash, prompt, len);
    if (n) {
        n->pins++; /* held while room is made: pruning must not free it */
        if (n->state) touch(c, n);
        else if (!make_room(c, state_part(c)) && fill(c, n, s, logits)) {
            c->st.bytes -= state_part(c);
            c->ledger.release(c->ledger.user, state_part(c));
        }
    } else {
        uint64_t need = sizeof *n + (to - from) + state_part(c);
        if (!make_room(c, need)) {
            n = malloc(sizeof *n + (to - from));
            if (n) {
                *n = (srv_cnode){.hash = hash, .pos = t, .parent = parent, .pins = 1, .seg_len = to - from};
                memcpy(n->seg, prompt + from, to - from);
            }
            if (!n || fill(c, n, s, logits)) {
                free(n);
                n = NULL;
                c->st.bytes -= need;
                c->ledger.release(c->ledger.user, need);
            } else {
                srv_cnode **b = bucket(c, t, hash);
                n->hnext = *b;
                *b = n;
                if (parent) parent->children++;
                c->st.entries++;
            }
        }
    }
    if (n) { /* the pin moves on */
        if (parent) {
            parent->pins--;
            c->ledger.release(c->ledger.user, prune(c, parent));
        }
        *pin = n;
    }
    pthread_mutex_unlock(&c->lock);
}

void srv_cache_unpin(srv_cache *c, srv_cnode *pin)
{
    if (!c || !pin) return;
    pthread_mutex_lock(&c->lock);
    pin->pins--;
    c->ledger.release(c->ledger.user, prune(c, pin));
    pthread_mutex_unlock(&c->lock);
}

uint64_t srv_cache_reclaim(srv_cache *c, uint64_t bytes)
{
    if (!c) return 0;
    pthread_mutex_lock(&c->lock);
    uint64_t freed = 0, f;
    while (freed < bytes && (f = evict_one(c))) freed += f;
    pthread_mutex_unlock(&c->lock);
    return freed;
}

void srv_cache_stats_get(srv_cache *c, srv_cache_stats *out)
{
    if (!c) {
        memset(out, 0, sizeof *out);
        return;
    }
    pthread_mutex_lock(&c->lock);
    *out = c->st;
    pthread_mutex_unlock(&c->lock);
}

size_t srv_cache_interval(const srv_cache *c) { return c ? c->interval : 0; }
uint64_t srv_cache_max_bytes(const srv_cache *c) { return c ? c->max_bytes : 0; }
size_t srv_cache_entry_bytes(const srv_cache *c) { return c ? state_part(c) + sizeof(srv_cnode) : 0; }
