"""austen.py - Jane Austen's six novels (and Moby-Dick as an out-of-domain test) from Debian's
r-cran-janeaustenr / r-cran-tokenizers packages, and the byte-level LM splits.

    /usr/bin/python3 tools/data/austen.py            # from any directory; --force to redo

Standard library only (plus the apt-get and dpkg-deb commands). The packages are NOT installed
(that would pull in R): `apt-get download` fetches the .deb into a temporary directory, its
sha256 is checked against the constants below, `dpkg-deb -x` unpacks it there, and the R lazy-load
database data/Rdata.{rdx,rdb} is decoded by tools/data/rserialize.py.

Outputs in data/austen/ (UTF-8, LF line ends; all ASCII except one "£" in Mansfield Park):
  <novel>.txt     the novel's character vector of lines joined by "\\n", plus a final "\\n"
  train.txt       emma, mansfieldpark, northangerabbey, prideprejudice, sensesensibility (in that
                  order), each minus its last ceil(5%) chapters
  valid.txt       those last chapters (each novel's from its chapter heading line to the end)
  test.txt        persuasion.txt, whole
  ood_mobydick.txt  Moby-Dick (tokenizers' `mobydick`): the text between the Project Gutenberg
                  START/END markers, CRLF -> LF, BOM dropped, stripped, plus a final "\\n"
  manifest.json   package versions, sha256s, chapter counts and the split points
A chapter starts at a line matching CHAPTER_RE; the text before chapter 1 (title page) stays
with the novel's first chapter. The pieces are concatenated as is (each ends with "\\n").
"""

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rserialize  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "data", "austen")

# Debian 12 (bookworm) main; `apt-get download` gets the candidate version. Pinned by sha256.
PACKAGES = {
    "r-cran-janeaustenr": ("1.0.0-1",
                           "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"),
    "r-cran-tokenizers": ("0.3.0-1",
                          "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7"),
}
NOVELS = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
          "sensesensibility"]
TEST_NOVEL = "persuasion"
EXPECTED_CHAPTERS = {"emma": 55, "mansfieldpark": 48, "northangerabbey": 31, "persuasion": 24,
                     "prideprejudice": 61, "sensesensibility": 50}
CHAPTER_RE = re.compile(r"^(CHAPTER|Chapter) [IVXLC0-9]+$")
VALID_FRACTION = 0.05


def fetch_deb(pkg, tmp):
    """apt-get download pkg into tmp, check version and sha256, unpack; returns the unpack dir."""
    want_version, want_sha = PACKAGES[pkg]
    subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg],
                   cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    debs = [f for f in os.listdir(tmp) if f.startswith(pkg + "_") and f.endswith(".deb")]
    if len(debs) != 1:
        sys.exit(f"austen: apt-get download {pkg} gave {debs}")
    deb = os.path.join(tmp, debs[0])
    version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout.strip()
    with open(deb, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    print(f"austen: {debs[0]}  version {version}  sha256 {sha}")
    if sha != want_sha:
        sys.exit(f"austen: SHA256 MISMATCH for {pkg} {version}: expected {want_sha} "
                 f"(version {want_version}), got {sha}. Review the new package, then update "
                 f"PACKAGES in {__file__}.")
    dest = os.path.join(tmp, pkg)
    subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
    return dest, version, sha


def write(path, text):
    with open(path + ".part", "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(path + ".part", path)
    return len(text.encode("utf-8"))


def chapter_starts(lines):
    return [i for i, s in enumerate(lines) if CHAPTER_RE.match(s)]


def main():
    force = "--force" in sys.argv[1:]
    manifest_path = os.path.join(OUT, "manifest.json")
    if not force and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            m = json.load(f)
        if {k: (v["version"], v["sha256"]) for k, v in m["packages"].items()} == PACKAGES and \
                all(os.path.exists(os.path.join(OUT, n)) for n in m["files"]):
            print(f"austen: {os.path.relpath(OUT, ROOT)}/ is up to date (--force to redo)")
            for n, b in m["files"].items():
                print(f"  {n:<24}{b:>10} bytes")
            return

    os.makedirs(OUT, exist_ok=True)
    manifest = {"packages": {}, "novels": {}, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        pkgdir, version, sha = fetch_deb("r-cran-janeaustenr", tmp)
        manifest["packages"]["r-cran-janeaustenr"] = {"version": version, "sha256": sha}
        db = rserialize.LazyLoadDB(
            os.path.join(pkgdir, "usr/lib/R/site-library/janeaustenr/data/Rdata"))
        if sorted(db.names()) != NOVELS:
            sys.exit(f"austen: unexpected datasets {db.names()}")
        novels = {}
        for name in NOVELS:
            v = db[name]
            if v.type != "character" or any(s is None for s in v.data):
                sys.exit(f"austen: {name} is not a character vector without NA")
            novels[name] = v.data

        moby = None
        pkgdir, version, sha = fetch_deb("r-cran-tokenizers", tmp)
        manifest["packages"]["r-cran-tokenizers"] = {"version": version, "sha256": sha}
        tk = rserialize.LazyLoadDB(
            os.path.join(pkgdir, "usr/lib/R/site-library/tokenizers/data/Rdata"))
        moby = tk["mobydick"].data[0]

    sizes = manifest["files"]
    train, valid = [], []
    for name in NOVELS:
        lines = novels[name]
        sizes[f"{name}.txt"] = write(os.path.join(OUT, f"{name}.txt"), "\n".join(lines) + "\n")
        starts = chapter_starts(lines)
        if len(starts) != EXPECTED_CHAPTERS[name]:
            sys.exit(f"austen: {name}: {len(starts)} chapter headings, expected "
                     f"{EXPECTED_CHAPTERS[name]}")
        info = {"lines": len(lines), "chapters": len(starts)}
        if name != TEST_NOVEL:
            n_valid = math.ceil(VALID_FRACTION * len(starts))
            cut = starts[-n_valid]
            train.append("\n".join(lines[:cut]) + "\n")
            valid.append("\n".join(lines[cut:]) + "\n")
            info.update(valid_chapters=n_valid, valid_from_line=cut, valid_first=lines[cut])
        manifest["novels"][name] = info

    sizes["train.txt"] = write(os.path.join(OUT, "train.txt"), "".join(train))
    sizes["valid.txt"] = write(os.path.join(OUT, "valid.txt"), "".join(valid))
    sizes["test.txt"] = write(os.path.join(OUT, "test.txt"), "\n".join(novels[TEST_NOVEL]) + "\n")

    i = moby.index("*** START OF")
    i = moby.index("\n", i) + 1
    j = moby.index("End of Project Gutenberg's Moby Dick")
    text = moby[i:j].replace("\r\n", "\n").replace("\ufeff", "").strip("\n") + "\n"
    sizes["ood_mobydick.txt"] = write(os.path.join(OUT, "ood_mobydick.txt"), text)

    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")

    print(f"\n{'novel':<18}{'lines':>7}{'chapters':>9}{'valid ch.':>10}  valid starts at")
    for name, info in manifest["novels"].items():
        print(f"{name:<18}{info['lines']:>7}{info['chapters']:>9}"
              f"{info.get('valid_chapters', '-'):>10}  {info.get('valid_first', '(test)')}")
    total = 0
    print()
    for n, b in sizes.items():
        with open(os.path.join(OUT, n), "rb") as f:
            non_ascii = sum(c > 127 for c in f.read())
        print(f"  {n:<24}{b:>10} bytes  ({non_ascii} non-ASCII bytes)")
        if n in ("train.txt", "valid.txt", "test.txt"):
            total += b
    print(f"  {'train+valid+test':<24}{total:>10} bytes")


if __name__ == "__main__":
    main()
