"""Integration tests of the prefix state cache (issue 26), on the real lunaserve over HTTP.

A prompt that begins like an earlier one resumes from the stored state of their common prefix
and prefills only the rest. What must hold: the same output bytes as a server without a cache
(at random split points, concurrently, with --max-batch 1 too), chat turns that prefill only
their new messages, an edited earlier message that falls back to what still matches, and the
cache's bytes in the memory ledger, given back when a request needs them.

Run: LUNA_BIN_DIR=build/bin /usr/bin/python3 tests/integration/test_state_cache.py [TEST...]"""
import base64
import hashlib
import json
import os
import random
import struct
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server import LM, LM_MAXPOS, Server, is_error, open_stream, reserved_idle, sse_events, wait_idle  # noqa: E402

CHUNK = 256  # the workers' prefill chunk (server.h SRV_PREFILL_CHUNK): stored states sit on its multiples


def text(rng, n):
    words = ["the", "house", "of", "Norland", "was", "long", "settled", "in", "Sussex", "and", "their", "estate"]
    out = []
    while sum(len(w) + 1 for w in out) < n:
        out.append(rng.choice(words))
    return " ".join(out)[:n]


def generated(b):
    """What must not depend on the cache: the text and the details but the ids."""
    return (b["generated_text"], b["details"]["finish_reason"], b["details"]["generated_tokens"],
            b["details"]["input_length"], b["details"]["seed"])


def cache_state(s):
    m = s.metrics()
    return {k: m[k] for k in ("luna_state_cache_hits_total", "luna_state_cache_misses_total", "luna_state_cache_bytes",
                              "luna_state_cache_states", "luna_prompt_tokens_reused_total", "luna_prompt_tokens_total",
                              "luna_state_cache_evictions_total")}


def test_same_bytes_with_and_without_the_cache():
    # Prompts that share prefixes of random lengths (a document cut anywhere, then a question),
    # some sent twice, give a server with the cache the bytes a server without one gives:
    # sequentially, then 6 clients at once in random order, in the batch and with --max-batch 1.
    rng = random.Random(26)
    doc = text(rng, 9000)
    bodies = []
    for i in range(24):
        k = rng.randrange(0, len(doc))
        tail = rng.choice(["", "?", " Then what?", "Q" * rng.randrange(1, 400)])
        params = {"max_new_tokens": rng.randrange(1, 40), "details": True, "seed": 1000 + i,
                  "do_sample": i % 2 == 0, "repetition_penalty": 1.3 if i % 3 else 1.0}
        if i % 2 == 0:
            params.update(temperature=0.8, top_k=30)
        bodies.append({"inputs": doc[:k] + tail, "parameters": params})
    bodies += [bodies[3], bodies[7], {"inputs": doc, "parameters": {"max_new_tokens": 30, "details": True}}]
    ref = Server("--state-cache-bytes", "0", model="", gen=LM)
    try:
        want = [generated(ref.json("POST", "/generate", b)[2]) for b in bodies]
        m = cache_state(ref)
        assert m["luna_state_cache_hits_total"] == m["luna_state_cache_misses_total"] == 0, m
        assert ref.json("GET", "/info")[2]["state_cache"]["enabled"] is False
    finally:
        assert ref.stop() == 0
    for args in (["--state-cache-interval", "512"], ["--max-batch", "1", "--state-cache-interval", "256"]):
        s = Server(*args, model="", gen=LM)
        try:
            interval = s.json("GET", "/info")[2]["state_cache"]["interval_tokens"]
            assert interval == int(args[-1]), interval
            # the whole document first: its states every `interval` tokens are then there for
            # every prompt cut from it (so these hits do not depend on timing)
            base = {"inputs": doc, "parameters": {"max_new_tokens": 1}}
            assert s.json("POST", "/generate", base)[0] == 200
            got = [None] * len(bodies)
            order = list(range(len(bodies)))
            rng.shuffle(order)
            half = len(order) // 2
            for i in order[:half]:
                got[i] = generated(s.json("POST", "/generate", bodies[i])[2])
            errors, lock = [], threading.Lock()

            def client(mine):
                for i in mine:
                    try:
                        st, _, b = s.json("POST", "/generate", bodies[i])
                        assert st == 200, b
                        got[i] = generated(b)
                    except Exception:
                        with lock:
                            errors.append(traceback.format_exc())
            rest = order[half:]
            ts = [threading.Thread(target=client, args=(rest[j::6],)) for j in range(6)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert not errors, errors[0]
            for i in range(len(bodies)):
                assert got[i] == want[i], (args, i, len(bodies[i]["inputs"]), got[i], want[i])
            # every prompt that shares a stored boundary with the document resumed from it
            m = cache_state(s)
            sure = [b for b in bodies if (len(os.path.commonprefix([b["inputs"], doc])) + 1) // interval > 0]
            assert m["luna_state_cache_hits_total"] >= len(sure), (m, len(sure))
            least = sum((len(os.path.commonprefix([b["inputs"], doc])) + 1) // interval * interval for b in sure)
            assert m["luna_prompt_tokens_reused_total"] >= least, (m, least)
            assert m["luna_state_cache_misses_total"] >= 1, m  # the document itself
            info = s.json("GET", "/info")[2]["state_cache"]
            assert 0 < info["bytes"] == m["luna_state_cache_bytes"] <= info["max_bytes"], (info, m)
            assert info["states"] == m["luna_state_cache_states"] > 0, (info, m)
            assert reserved_idle(wait_idle(s)), "the requests hold nothing; the cache is the server's"
        finally:
            assert s.stop() == 0


def chat(s, messages, **kw):
    st, _, b = s.json("POST", "/v1/chat/completions", dict({"messages": messages, "max_tokens": 24, "temperature": 0}, **kw))
    assert st == 200, b
    return b


def test_chat_turns_prefill_only_their_new_messages():
    # Ten turns over a document: the template is append-only, so turn N finds turn N-1's
    # prompt in the cache (to its last 256-token boundary) and prefills only the reply, the new
    # question and that remainder; usage.prompt_tokens_details.cached_tokens says how many it
    # did not prefill. The answers are the no-cache server's. Then an edited earlier question
    # falls back to the longest prefix still equal (the document), with the right answer.
    rng = random.Random(7)
    doc = text(rng, 12000)
    questions = ["Who lived at Norland?", "Where is Sussex?", "Was the estate large?", "Whose was it?",
                 "How long had they lived there?", "Who inherited?", "What of the sisters?", "And the mother?",
                 "What happened next?", "Summarise it."]
    ref = Server("--state-cache-bytes", "0", model="", gen=LM)
    s = Server("--state-cache-interval", "1024", model="", gen=LM)
    try:
        msgs = [{"role": "system", "content": "Answer from this text.\n" + doc}]
        prev_prompt = None
        total_prefilled = 0
        for n, q in enumerate(questions):
            msgs.append({"role": "user", "content": q})
            a, b = chat(s, msgs), chat(ref, msgs)
            assert a["choices"][0]["message"] == b["choices"][0]["message"], (n, a, b)
            u = a["usage"]
            cached = u["prompt_tokens_details"]["cached_tokens"]
            assert b["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            prefilled = u["prompt_tokens"] - cached
            total_prefilled += prefilled
            if prev_prompt is not None:
                # the previous prompt's last boundary was stored: at most a chunk of it is redone
                assert cached >= (prev_prompt + 1) // CHUNK * CHUNK - 1, (n, u, prev_prompt)
                assert prefilled <= u["prompt_tokens"] - prev_prompt + CHUNK, (n, u, prev_prompt)
            prev_prompt = u["prompt_tokens"]
            msgs.append({"role": "assistant", "content": a["choices"][0]["message"]["content"]})
        # ten turns prefill little more than the final conversation once (without the cache: ten times)
        assert total_prefilled <= 1.2 * prev_prompt, (total_prefilled, prev_prompt)
        # an edited first question: the document (stored every 1024 tokens) is still reused
        edited = [dict(m) for m in msgs[:-1]]
        edited[1]["content"] = "Who did NOT live at Norland?"
        a, b = chat(s, edited), chat(ref, edited)
        assert a["choices"][0]["message"] == b["choices"][0]["message"], (a, b)
        head = len("system: Answer from this text.\n" + doc) + 1  # + bos
        cached = a["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert head // CHUNK * CHUNK - 1 - 1024 <= cached <= head + len("\nuser: Who did "), (cached, head)
    finally:
        assert s.stop() == 0
        assert ref.stop() == 0


def test_cache_gives_way_to_requests():
    # The cache lives in the memory budget and gives it back: with a budget its states fill (4 MiB), a
    # body that needs most of what requests may hold is still taken (the least recently used
    # states are evicted), and --state-cache-bytes bounds the cache on its own.
    s = Server("--memory-budget", "4M", "--state-cache-bytes", "4M", "--state-cache-interval", "256",
               "--max-body-bytes", "1M", "--max-input-bytes", "1M", model="", gen=LM)
    try:
        info = s.json("GET", "/info")[2]
        entry = info["state_cache"]["entry_bytes"]
        rng = random.Random(3)
        # distinct prompts of 20 boundaries each until the states hold most of the budget
        for i in range(200):
            st, _, b = s.json("POST", "/generate", {"inputs": text(rng, 20 * 256) + str(i), "parameters": {"max_new_tokens": 1}})
            assert st == 200, b
            if cache_state(s)["luna_state_cache_bytes"] > 4 * 2**20 - 64 * entry:
                break
        m0 = cache_state(s)
        assert m0["luna_state_cache_bytes"] > 4 * 2**20 - 64 * entry, m0
        # a 900 KB body (and its parse, as much again): the ledger could not hold it beside the
        # cache; it is taken
        st, _, b = s.json("POST", "/generate", {"inputs": "z" * 900000, "parameters": {"max_new_tokens": 1}}, timeout=120)
        assert st == 200, b
        m1 = cache_state(s)
        assert m1["luna_state_cache_evictions_total"] > m0["luna_state_cache_evictions_total"], (m0, m1)
        m = wait_idle(s)
        assert reserved_idle(m), m
        assert m["luna_memory_reserved_bytes"] <= m["luna_memory_budget_bytes"], m
        assert m["luna_memory_reserved_peak_bytes"] <= m["luna_memory_budget_bytes"], m
    finally:
        assert s.stop() == 0
    s = Server("--state-cache-bytes", "64K", "--state-cache-interval", "256", model="", gen=LM)
    try:
        rng = random.Random(4)
        for i in range(8):
            assert s.json("POST", "/generate", {"inputs": text(rng, 8 * 256), "parameters": {"max_new_tokens": 1}})[0] == 200
        m = cache_state(s)
        assert 0 < m["luna_state_cache_bytes"] <= 64 * 1024, m
        assert m["luna_state_cache_evictions_total"] > 0, m
    finally:
        assert s.stop() == 0


def reseal(raw):
    """A state's bytes with the SHA-256 at its end made right again (whoever can edit a state
    can do this: the checks after the checksum must still refuse what it holds)."""
    return raw[:-32] + hashlib.sha256(raw[:-32]).digest()


def test_portable_states():
    # A request may ask for its state back ("return_state"): base64 of the export with the
    # model's id, the tokens of its context (bos, the prompt, every generated token) and the
    # checksum. A later request passes it ("state") to continue from it, on this replica or
    # another one of the same model, with the same bytes on both; TGI, OpenAI (completions,
    # chat, streams) alike. A state that is damaged, truncated, of another model, or holds
    # non-finite values is a 422 naming the fault, and the server goes on serving.
    a = Server(model="", gen=LM)
    b = Server("--max-batch", "1", model="", gen=LM)
    other = Server(model="", gen=LM_MAXPOS)
    try:
        st, _, r = a.json("POST", "/generate", {"inputs": "Elinor said", "parameters": {
            "max_new_tokens": 20, "details": True, "return_state": True}})
        assert st == 200, r
        state = r["state"]
        assert set(state) == {"data", "model_id", "tokens", "sha256"}, state
        raw = base64.b64decode(state["data"])
        assert raw[:8] == b"LUNASTAT" and raw[16:48].hex() == state["model_id"] and raw[-32:].hex() == state["sha256"]
        assert state["tokens"] == 1 + len("Elinor said") + r["details"]["generated_tokens"], (state, r["details"])
        assert struct.unpack("<Q", raw[48:56])[0] == state["tokens"]
        # continued on both replicas (batched and alone): the same bytes
        cont = {"inputs": " and then", "state": state["data"], "parameters": {
            "max_new_tokens": 15, "do_sample": True, "seed": 4, "details": True, "return_state": True}}
        ra, rb = a.json("POST", "/generate", cont)[2], b.json("POST", "/generate", cont)[2]
        assert ra["generated_text"] == rb["generated_text"] and ra["state"] == rb["state"], (ra, rb)
        assert ra["state"]["tokens"] == state["tokens"] + len(" and then") + ra["details"]["generated_tokens"]
        assert ra["details"]["input_length"] == state["tokens"] + len(" and then"), ra["details"]
        # the whole object is accepted too, and an empty prompt continues from the state's logits
        st, _, r2 = a.json("POST", "/generate", {"inputs": "", "state": state, "parameters": {"max_new_tokens": 5}})
        assert st == 200, r2
        # OpenAI shapes: each choice carries its state; a streamed answer's last event/chunk too
        st, _, c = a.json("POST", "/v1/completions", {"prompt": ["Marianne", "Edward"], "max_tokens": 5, "return_state": True})
        assert st == 200 and all(ch["state"]["tokens"] > 1 for ch in c["choices"]), c
        st, _, c = a.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Go on."}],
                                                            "max_tokens": 5, "state": state["data"], "return_state": True})
        assert st == 200 and c["choices"][0]["state"]["tokens"] > state["tokens"], c
        conn, resp = open_stream(a.port, "/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 4, "return_state": True}})
        evs = sse_events(resp.read())
        conn.close()
        assert evs[-1]["state"]["tokens"] == 1 + 2 + evs[-1]["details"]["generated_tokens"], evs[-1]
        assert all("state" not in e for e in evs[:-1])
        conn, resp = open_stream(a.port, "/v1/completions", {"prompt": "Hi", "max_tokens": 4, "stream": True, "return_state": True})
        chunks = [json.loads(l[6:]) for l in resp.read().decode().split("\n") if l.startswith("data: {")]
        conn.close()
        assert [ch["choices"][0].get("state") is not None for ch in chunks if ch["choices"]][-1], chunks
        # what is refused: 422 with the reason, the server unharmed
        other_state = other.json("POST", "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1, "return_state": True}})[2]["state"]
        nan = bytearray(raw)
        nan[72:80] = struct.pack("<d", float("nan"))
        flipped = bytearray(raw)
        flipped[100] ^= 1
        bad = [(raw[:-8], "truncated"), (raw + b"\0", "oversized"), (bytes(flipped), "checksum"),
               (base64.b64decode(other_state["data"]), "another model"), (reseal(bytes(nan)), "non-finite"),
               (b"hello world, not a state", "")]
        for blob, why in bad:
            st, _, e = a.json("POST", "/generate", {"inputs": "x", "state": base64.b64encode(blob).decode()})
            is_error(st, e, 422, "validation_error")
            assert why in e["error"]["message"] and "state" in e["error"]["message"], (why, e)
        for body in ({"inputs": "x", "state": "%%% not base64"}, {"inputs": "x", "state": 7},
                     {"inputs": "x", "state": {"tokens": 3}}):
            st, _, e = a.json("POST", "/generate", body, off_spec=True)
            is_error(st, e, 422)
        st, _, e = a.json("POST", "/v1/completions", {"prompt": ["a", "b"], "state": state["data"]})
        is_error(st, e, 422)
        st, _, e = a.json("POST", "/generate", {"inputs": "x", "parameters": {"return_state": "yes"}}, off_spec=True)
        is_error(st, e, 422)
        assert a.json("POST", "/generate", {"inputs": "still serving", "parameters": {"max_new_tokens": 2}})[0] == 200
        for s in (a, b):
            assert reserved_idle(wait_idle(s))
    finally:
        for s in (a, b, other):
            assert s.stop() == 0


def main():
    tests = [test_same_bytes_with_and_without_the_cache, test_chat_turns_prefill_only_their_new_messages,
             test_cache_gives_way_to_requests, test_portable_states]
    only = sys.argv[1:]
    passed = failed = 0
    for fn in tests:
        if only and fn.__name__ not in only:
            continue
        t0 = time.monotonic()
        try:
            fn()
            passed += 1
            print("ok   %-36s %.2fs" % (fn.__name__, time.monotonic() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s\n%s" % (fn.__name__, traceback.format_exc()), flush=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
