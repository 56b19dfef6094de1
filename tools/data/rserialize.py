"""rserialize.py - a small standard-library reader for R's serialization format and lazy-load DBs.

Enough of R's serialize() (format "X\\n", XDR big-endian, versions 2 and 3) to read the data
that CRAN packages ship: character/integer/double/logical/raw vectors, lists, pairlists with
tags, attributes, symbols, references, environments, closures/language objects (read
structurally) and the common ALTREP classes (compact sequences, wrappers, deferred strings).

    db = LazyLoadDB("pkg/data/Rdata")      # reads Rdata.rdx; .rdb records are read on demand
    db.names()                              # ['emma', ...]
    db["emma"]                              # RVector(type='character', data=[...], attrs={})

Strings come back as Python str (decoded as UTF-8 or latin-1 per the CHARSXP's flags, else
UTF-8 with a latin-1 fallback); NA_character_ is None. Integers / doubles / logicals are lists
of Python numbers, with R's NA as None. Nothing here executes R code.

The lazy-load database: the .rdx file is one compressed serialized R list
  list(variables = list(name = c(offset, length), ...), references = ..., compressed = TRUE|2|3)
and each .rdb record at [offset, offset + length) is a 4-byte big-endian uncompressed length
followed by a zlib stream (compression type 1); types 2/3 (bzip2/xz) add one type byte
('2', '3' or '0' for stored) after the length.
"""

import bz2
import lzma
import struct
import zlib

NA_INTEGER = -(2**31)

# SEXP types
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = \
    16, 17, 19, 20, 21, 22, 23, 24, 25
# serialization pseudo-types
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

_VEC_NAMES = {LGLSXP: "logical", INTSXP: "integer", REALSXP: "double", CPLXSXP: "complex",
              STRSXP: "character", VECSXP: "list", EXPRSXP: "expression", RAWSXP: "raw"}


class RVector:
    """An R vector: type name, Python list (or bytes for raw) and attributes dict."""

    def __init__(self, type, data, attrs=None):
        self.type, self.data, self.attrs = type, data, attrs or {}

    def __repr__(self):
        return f"RVector({self.type}, n={len(self.data)}, attrs={list(self.attrs)})"


class RObject:
    """Anything that is not a vector (symbols, pairlists, environments, closures, ...)."""

    def __init__(self, kind, **fields):
        self.kind = kind
        self.__dict__.update(fields)

    def __repr__(self):
        return f"RObject({self.kind})"


class _Reader:
    def __init__(self, buf):
        self.b = memoryview(buf)
        self.p = 0
        self.refs = []

    def take(self, n):
        if self.p + n > len(self.b):
            raise ValueError("truncated R serialization")
        v = self.b[self.p : self.p + n]
        self.p += n
        return v

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def length(self):
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        return n

    def header(self):
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            raise ValueError(f"only XDR serialization ('X\\n') is supported, got {fmt!r}")
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported serialization version {version}")
        return version

    def charsxp(self, levels):
        n = self.int()
        if n == -1:
            return None
        raw = bytes(self.take(n))
        if levels & (1 << 2):  # LATIN1_MASK
            return raw.decode("latin-1")
        try:
            return raw.decode("utf-8")  # UTF8_MASK, ASCII_MASK or native (UTF-8 on Debian)
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def attributes(self):
        """A pairlist of attributes -> dict."""
        pl = self.item()
        out = {}
        while isinstance(pl, RObject) and pl.kind == "pairlist":
            out[pl.tag if isinstance(pl.tag, str) else str(pl.tag)] = pl.car
            pl = pl.cdr
        return out

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if t == NILVALUE_SXP:
            return None
        if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP,
                 BASENAMESPACE_SXP):
            return RObject({EMPTYENV_SXP: "emptyenv", BASEENV_SXP: "baseenv",
                            GLOBALENV_SXP: "globalenv", UNBOUNDVALUE_SXP: "unbound",
                            MISSINGARG_SXP: "missingarg", BASENAMESPACE_SXP: "basenamespace"}[t])
        if t == REFSXP:
            i = flags >> 8
            if i == 0:
                i = self.int()
            return self.refs[i - 1]
        if t == PERSISTSXP:
            names = self.item()
            obj = RObject("persist", names=names)
            self.refs.append(obj)
            return obj
        if t == SYMSXP:
            name = self.item()  # a CHARSXP
            self.refs.append(name)
            return name  # symbols are returned as their name (str)
        if t in (NAMESPACESXP, PACKAGESXP):
            self.int()  # 0
            info = [self.item() for _ in range(self.int())]
            obj = RObject("namespace" if t == NAMESPACESXP else "package", info=info)
            self.refs.append(obj)
            return obj
        if t == ENVSXP:
            locked = self.int()
            env = RObject("environment", locked=locked)
            self.refs.append(env)
            env.enclos = self.item()
            env.frame = self.item()
            env.hashtab = self.item()
            env.attrs = self.attributes()
            return env
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            # pairlist-like cells; iterate along CDR to avoid deep recursion on long lists
            head = cell = None
            while True:
                attrs = self.attributes() if has_attr else {}
                tag = self.item() if has_tag else None
                kind = {LISTSXP: "pairlist", ATTRLISTSXP: "pairlist", LANGSXP: "language",
                        ATTRLANGSXP: "language", CLOSXP: "closure", PROMSXP: "promise",
                        DOTSXP: "dots"}[t]
                node = RObject(kind, tag=tag, attrs=attrs, car=self.item(), cdr=None)
                if head is None:
                    head = node
                else:
                    cell.cdr = node
                cell = node
                flags = self.int()
                t = flags & 0xFF
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
                if t not in (LISTSXP, LANGSXP, ATTRLANGSXP, ATTRLISTSXP) or kind == "closure":
                    self.p -= 4
                    cell.cdr = self.item()
                    return head
        if t == CHARSXP:
            return self.charsxp(levels)
        if t in (SPECIALSXP, BUILTINSXP):
            return RObject("builtin", name=bytes(self.take(self.int())).decode())
        if t == EXTPTRSXP:
            obj = RObject("externalptr")
            self.refs.append(obj)
            obj.prot, obj.tag = self.item(), self.item()
            obj.attrs = self.attributes() if has_attr else {}
            return obj
        if t == WEAKREFSXP:
            obj = RObject("weakref")
            self.refs.append(obj)
            obj.attrs = self.attributes() if has_attr else {}
            return obj
        if t == S4SXP:
            obj = RObject("S4", attrs=self.attributes() if has_attr else {})
            return obj
        if t == ALTREP_SXP:
            info, state, attr = self.item(), self.item(), self.item()
            return self.altrep(info, state, attr)
        if t == BCODESXP:
            raise ValueError("byte code (BCODESXP) is not supported")
        if t in _VEC_NAMES:
            n = self.length()
            if t in (LGLSXP, INTSXP):
                data = [None if v == NA_INTEGER else v
                        for v in struct.unpack(f">{n}i", self.take(4 * n))]
                if t == LGLSXP:
                    data = [None if v is None else bool(v) for v in data]
            elif t == REALSXP:
                data = list(struct.unpack(f">{n}d", self.take(8 * n)))
            elif t == CPLXSXP:
                v = struct.unpack(f">{2 * n}d", self.take(16 * n))
                data = [complex(v[2 * i], v[2 * i + 1]) for i in range(n)]
            elif t == RAWSXP:
                data = bytes(self.take(n))
            elif t == STRSXP:
                data = []
                for _ in range(n):
                    f = self.int()
                    if f & 0xFF != CHARSXP:
                        raise ValueError(f"STRSXP element of type {f & 0xFF}")
                    data.append(self.charsxp(f >> 12))
            else:  # VECSXP, EXPRSXP
                data = [self.item() for _ in range(n)]
            return RVector(_VEC_NAMES[t], data, self.attributes() if has_attr else {})
        raise ValueError(f"unsupported SEXP type {t} at byte {self.p - 4}")

    def altrep(self, info, state, attr):
        cls = info.car if isinstance(info, RObject) else None
        if cls == "compact_intseq" or cls == "compact_realseq":
            n, start, step = state.data[:3]
            data = [start + i * step for i in range(int(n))]
            if cls == "compact_intseq":
                data = [int(x) for x in data]
            return RVector("integer" if cls == "compact_intseq" else "double", data,
                           _pairlist_dict(attr))
        if cls and cls.startswith("wrap_"):
            v = state.car if isinstance(state, RObject) else state.data[0]
            v.attrs.update(_pairlist_dict(attr))
            return v
        if cls == "deferred_string":
            arg = state.car if isinstance(state, RObject) else state
            v = RVector("character", [_num_to_str(x) for x in arg.data], _pairlist_dict(attr))
            return v
        raise ValueError(f"unsupported ALTREP class {cls!r}")


def _num_to_str(x):
    if x is None:
        return None
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _pairlist_dict(pl):
    out = {}
    while isinstance(pl, RObject) and pl.kind == "pairlist":
        out[pl.tag] = pl.car
        pl = pl.cdr
    return out


def unserialize(buf):
    """An R object from serialize() bytes (XDR format, version 2 or 3)."""
    r = _Reader(buf)
    r.header()
    return r.item()


def _decompress_record(rec):
    """One lazy-load DB record: 4-byte big-endian length + compressed data."""
    n = struct.unpack(">I", rec[:4])[0]
    body = rec[4:]
    if body[:2] in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda"):
        out = zlib.decompress(body)
    elif body[:1] == b"2":
        out = bz2.decompress(body[1:])
    elif body[:1] == b"3":
        out = lzma.decompress(body[1:])
    elif body[:1] == b"0":
        out = body[1:]
    else:
        out = zlib.decompress(body)
    if len(out) != n:
        raise ValueError(f"record decompressed to {len(out)} bytes, header says {n}")
    return out


def read_rds(path):
    """An R object from an .rds file (gzip/bzip2/xz-compressed or plain serialization)."""
    import gzip

    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:3] == b"BZh":
        data = bz2.decompress(data)
    elif data[:6] == b"\xfd7zXZ\x00":
        data = lzma.decompress(data)
    return unserialize(data)


class LazyLoadDB:
    """R's lazy-load database <base>.rdx + <base>.rdb (e.g. a package's data/Rdata)."""

    def __init__(self, base):
        with open(base + ".rdx", "rb") as f:
            rdx = f.read()
        try:
            index = unserialize(_decompress_record(rdx))
        except (zlib.error, ValueError):
            index = read_rds(base + ".rdx")
        fields = dict(zip(index.attrs["names"].data, index.data))
        vars_ = fields["variables"]
        self._index = {name: tuple(int(x) for x in pos.data)
                       for name, pos in zip(vars_.attrs["names"].data, vars_.data)}
        with open(base + ".rdb", "rb") as f:
            self._rdb = f.read()

    def names(self):
        return list(self._index)

    def raw_record(self, name):
        off, n = self._index[name]
        return _decompress_record(self._rdb[off : off + n])

    def __getitem__(self, name):
        return unserialize(self.raw_record(name))
