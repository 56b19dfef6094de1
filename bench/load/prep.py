#!/usr/bin/python3
"""prep.py - request bodies for the load test (bench/load/run.sh), one JSON body per line.

    prep.py bodies --out DIR [--sizes 1k,4k,16k,64k] [--n 48]
        DIR/classify-<size>.txt   {"inputs": "<document of exactly <size> bytes of UTF-8>"}
        DIR/classify-<size>.raw   the same documents' bytes back to back (for engine_tput.c)
        DIR/generate.txt          {"inputs": "<prompt>", "parameters": {max_new_tokens 64, sampling, seed}}
        DIR/source.txt            where the documents came from
    prep.py tokens --port P --out DIR
        DIR/tokens.json           tokens the classifier sees per document, by size (asked of the
                                  server in vLLM's shape, whose usage counts them after the
                                  model's input transform, bos and eos included; every document
                                  up to 4k, a sample of 6 above)

Documents are real emails from the SpamAssassin corpus when data/spamassassin/*.jsonl is present
(lines {"label", "text": latin-1-decoded bytes, "source"}): each document is one email's bytes
cut to the size, or, for an email shorter than the size, that email followed by the next ones
until the size is reached (spam and ham alternate). The bytes are sent as text: decoded as
UTF-8 with U+FFFD for what is not, cut to exactly <size> bytes of UTF-8 at a character
boundary and padded with spaces. Without the corpus the documents are synthetic emails (a
Subject line and pseudo-words from a fixed seed). Standard library only."""
import argparse
import http.client
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data", "spamassassin")


def parse_size(s):
    s = s.strip().lower()
    mult = {"k": 1024, "m": 1 << 20}.get(s[-1], 1)
    return int(s[:-1] if s[-1] in "km" else s) * mult


def emails():
    """Raw bytes of the corpus' emails, ham and spam alternating, in a fixed order; [] if absent."""
    files = ["test.jsonl", "valid.jsonl", "train.jsonl"]
    by_label = {"ham": [], "spam": []}
    for name in files:
        path = os.path.join(DATA, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    by_label.setdefault(r["label"], []).append(r["text"].encode("latin-1"))
                except (ValueError, KeyError, UnicodeEncodeError):
                    continue
    out = []
    for h, s in zip(by_label.get("ham", []), by_label.get("spam", [])):
        out += [h, s]
    return out


def synthetic(rng, n):
    words = ["offer", "meeting", "free", "money", "tomorrow", "click", "here", "report", "price", "now", "team",
             "project", "unsubscribe", "winner", "invoice", "schedule", "the", "and", "of", "to", "you"]
    subject = " ".join(rng.choice(words) for _ in range(5))
    body = []
    size = 0
    while size < n:
        w = rng.choice(words)
        body.append(w + ("\n" if rng.random() < 0.08 else " "))
        size += len(body[-1])
    return ("From: a@example.com\nTo: b@example.com\nSubject: %s\n\n" % subject + "".join(body)).encode()


def cut_text(raw, size):
    """raw as UTF-8 text of exactly `size` bytes."""
    b = raw.decode("utf-8", "replace").encode("utf-8")[:size]
    while b:
        try:
            t = b.decode("utf-8")
            break
        except UnicodeDecodeError:
            b = b[:-1]
    else:
        t = ""
    return t + " " * (size - len(t.encode("utf-8")))


def bodies(a):
    os.makedirs(a.out, exist_ok=True)
    for name in os.listdir(a.out):  # sizes of an earlier run must not linger
        if name.startswith("classify-"):
            os.unlink(os.path.join(a.out, name))
    mails = emails()
    rng = random.Random(1)
    src = ("SpamAssassin corpus (%s): %d emails" % (os.path.relpath(DATA, ROOT), len(mails)) if mails
           else "synthetic emails (data/spamassassin/*.jsonl not found)")
    for s in a.sizes.split(","):
        size = parse_size(s)
        docs = []
        i = (size * 7) % max(1, len(mails))  # each size starts elsewhere in the corpus
        while len(docs) < a.n:
            if mails:
                raw = b""
                while len(raw) < size:
                    raw += mails[i % len(mails)] + b"\n"
                    i += 1
            else:
                raw = synthetic(rng, size)
            docs.append(cut_text(raw, size))
        with open(os.path.join(a.out, "classify-%s.txt" % s), "w") as f:
            for d in docs:
                assert len(d.encode("utf-8")) == size
                f.write(json.dumps({"inputs": d}) + "\n")
        with open(os.path.join(a.out, "classify-%s.raw" % s), "wb") as f:  # the same bytes, for engine_tput
            for d in docs:
                f.write(d.encode("utf-8"))
    prompts = ["It is a truth universally acknowledged", "Elizabeth could not but smile", "The family of Dashwood",
               "Emma Woodhouse, handsome, clever, and rich,", "Sir Walter Elliot, of Kellynch Hall",
               "No one who had ever seen Catherine Morland", "About thirty years ago Miss Maria Ward",
               "She was the youngest of the two daughters"]
    with open(os.path.join(a.out, "generate.txt"), "w") as f:
        for k in range(a.n):
            f.write(json.dumps({"inputs": prompts[k % len(prompts)], "parameters": {
                "max_new_tokens": a.new_tokens, "details": True, "do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
                "seed": k + 1}}) + "\n")
    with open(os.path.join(a.out, "source.txt"), "w") as f:
        f.write(src + "\n")
    print("prep: %s; %d documents per size (%s), %d generation prompts" % (src, a.n, a.sizes, a.n))


def tokens(a):
    out = {}
    for name in sorted(os.listdir(a.out)):
        if not (name.startswith("classify-") and name.endswith(".txt")):
            continue
        size = name[len("classify-"):-4]
        with open(os.path.join(a.out, name)) as f:
            docs = [json.loads(line)["inputs"] for line in f]
        if parse_size(size) > 4096:
            docs = docs[:6]  # a sample: the server runs the model to count (about 1 s per 64 kB)
        counts = []
        for d in docs:  # one at a time: the usage is per request
            c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=120)
            c.request("POST", "/classify", json.dumps({"model": "classify", "input": d}),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            b = json.loads(r.read())
            c.close()
            if r.status != 200:
                sys.exit("prep: /classify answered %d: %s" % (r.status, b))
            counts.append(b["usage"]["prompt_tokens"])
        out[size] = {"bytes": parse_size(size), "docs": len(counts), "mean_tokens": sum(counts) / len(counts),
                     "min_tokens": min(counts), "max_tokens": max(counts)}
    with open(os.path.join(a.out, "tokens.json"), "w") as f:
        json.dump(out, f, indent=1)
    for size, t in out.items():
        print("prep: %-4s documents: %.0f tokens on average (%d to %d)" % (size, t["mean_tokens"], t["min_tokens"],
                                                                          t["max_tokens"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bodies", "tokens"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="1k,4k,16k,64k")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--port", type=int)
    a = ap.parse_args()
    bodies(a) if a.what == "bodies" else tokens(a)


if __name__ == "__main__":
    main()
