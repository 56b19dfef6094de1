#!/bin/sh
# bench/load/build_before.sh COMMIT DIR - builds lunaserve as it was at COMMIT, for a benchmark
# that compares the server against an older one (bench/load/gensweep.sh with GEN_BEFORE): a git
# worktree of COMMIT under /tmp, `make -j2 build/bin/lunaserve` there (nice -n 5: the machine is
# shared), the binary copied to DIR/lunaserve, its config/lunaserve.conf to DIR/lunaserve.conf
# and the full commit id to DIR/commit (last), the worktree removed on every exit path. A DIR
# whose commit file already names COMMIT is kept as it is, so that a second run does not build
# again. Prints DIR/lunaserve.
set -eu
[ $# -eq 2 ] || { echo "usage: build_before.sh COMMIT DIR" >&2; exit 2; }
cd "$(dirname "$0")/../.."
full=$(git rev-parse --verify "$1^{commit}")
dir=$2
if [ -x "$dir/lunaserve" ] && [ "$(cat "$dir/commit" 2>/dev/null)" = "$full" ]; then
  echo "$dir/lunaserve"
  exit 0
fi
tree=$(mktemp -d /tmp/lunaserve-before.XXXXXX)
cleanup() {
  git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
  git worktree prune
}
trap cleanup EXIT
trap 'exit 1' INT TERM
git worktree add --detach --quiet "$tree" "$full"
echo "build_before: building $(git log -1 --format='%h %cs' "$full") in $tree" >&2
nice -n 5 make -C "$tree" --no-print-directory -j2 build/bin/lunaserve >&2
mkdir -p "$dir"
rm -f "$dir/commit"
cp "$tree/build/bin/lunaserve" "$dir/lunaserve"
# its own settings file: run from this checkout, it would read today's config/lunaserve.conf,
# whose later settings it does not know
rm -f "$dir/lunaserve.conf"
[ ! -f "$tree/config/lunaserve.conf" ] || cp "$tree/config/lunaserve.conf" "$dir/lunaserve.conf"
echo "$full" >"$dir/commit"
echo "$dir/lunaserve"
