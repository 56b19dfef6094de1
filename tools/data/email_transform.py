"""email_transform.py - the spam model's input transform, for the data tools and baselines.

subject_body(raw) is the config's input_transform "email_subject_body" (docs/model-format.md):
the unfolded Subject (cut to 998 bytes), b"\\n", then the raw body. It is NOT re-implemented
here: it is tools/luna_ref.py's email_subject_body, the Python twin of engine/input.c's
email_subject_body()/seq_init(), so the data pipeline, the reference model and the C engine
share one definition. (Importing luna_ref imports torch, about 1 s; nothing here uses it.)

body(raw) is the body part of that transform (every byte after the first empty header line,
b"" when there is none). The unfolded subject never contains b"\\n" (LFs end header lines), so
the body is simply what follows the first b"\\n" of subject_body(raw).

Self-check against the C code:  /usr/bin/python3 tools/data/email_transform.py --check-c
compiles engine/input.c into a small helper (in a temp dir) and compares every message under
data/spamassassin/raw plus edge cases, byte for byte.
"""

import os
import sys

_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

from luna_ref import SUBJECT_MAX, email_subject_body  # noqa: E402

__all__ = ["subject_body", "body", "SUBJECT_MAX"]


def subject_body(raw: bytes) -> bytes:
    """The bytes the spam model reads for the raw RFC 822 message `raw`."""
    return email_subject_body(bytes(raw))


def body(raw: bytes) -> bytes:
    """The raw body of the message as the transform defines it (after the first empty line)."""
    return subject_body(raw).split(b"\n", 1)[1]


# ---- self-check against engine/input.c -------------------------------------------------------

_C_HELPER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include "input.h"
/* reads a message on stdin, writes subject "\n" body (seq_init's two runs) to stdout */
int main(void) {
    size_t cap = 1 << 16, len = 0, n;
    uint8_t *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    uint8_t subject[LUNA_SUBJECT_MAX + 1];
    size_t slen, off;
    email_subject_body(buf, len, subject, &slen, &off);
    fwrite(subject, 1, slen, stdout);
    fputc('\n', stdout);
    fwrite(buf + off, 1, len - off, stdout);
    return 0;
}
"""

_EDGE_CASES = [
    b"",
    b"\n",
    b"\r\n",
    b"\r",
    b"Subject: x\r",
    b"Subject: x",
    b"Subject:x\n\nbody",
    b"subject:\t  a\r\n b\r\n\tc \r\n\r\nbody\r\n",
    b"SUBJECT: one\nSubject: two\n\nb",
    b"Subject : no\n\nb",
    b"X: y\n folded\nSubject: s\n  t\nY: z\n  notsubject\n\nbody\n\nmore",
    b"\nSubject: in body\n",
    b" \nSubject: a\n\nb",
    b"Subject: a\n \n\nb",
    b"Subject: a\n \r\n\r\nb",
    b"Subject: a\r\r\n\nb",
    b"Subject: \xff\xfe\x00z\n\nb\x00",
    b"Subject: " + b"x" * 1500 + b"\n\nbody",
    b"Subject: " + b"x" * 990 + b"\n" + b"\t" + b"y" * 30 + b"\n\nbody",
    b"Subject: " + b"x" * 997 + b"\n" + b" y\n\nbody",
    b"Subject: " + b"x" * 998 + b"\n" + b" y\n\nbody",
    b"Subjec\nt: x\n\nb",
    b"Subject:",
    b"Subject:\n\n",
]


def _check_c(root):
    import glob
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "helper.c")
        exe = os.path.join(tmp, "helper")
        with open(src, "w") as f:
            f.write(_C_HELPER)
        eng = os.path.join(root, "engine")
        # input.c also holds seq_init etc., which need no other object file for this helper
        # beyond luna_model_config (used by luna_input_tokens); stub it.
        stub = os.path.join(tmp, "stub.c")
        with open(stub, "w") as f:
            f.write('#include "luna.h"\n'
                    "const luna_config *luna_model_config(const luna_model *m)"
                    " { (void)m; return 0; }\n")
        subprocess.run(["cc", "-O1", "-std=c11", "-D_DEFAULT_SOURCE", "-I", eng, "-o", exe, src,
                        os.path.join(eng, "input.c"), stub], check=True)
        paths = sorted(glob.glob(os.path.join(root, "data", "spamassassin", "raw", "*", "*.txt")))
        cases = [(f"edge{i}", m) for i, m in enumerate(_EDGE_CASES)]
        cases += [(os.path.relpath(p, root), open(p, "rb").read()) for p in paths]
        bad = 0
        for name, msg in cases:
            got = subprocess.run([exe], input=msg, stdout=subprocess.PIPE, check=True).stdout
            if got != subject_body(msg):
                bad += 1
                print(f"MISMATCH {name}: C {got[:80]!r} vs Python {subject_body(msg)[:80]!r}")
        print(f"email_subject_body: C vs Python on {len(cases)} inputs "
              f"({len(_EDGE_CASES)} edge cases, {len(paths)} corpus messages): {bad} mismatches")
        return bad == 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--check-c"]:
        sys.exit(0 if _check_c(os.path.abspath(os.path.join(_TOOLS, ".."))) else 1)
    print(__doc__)
