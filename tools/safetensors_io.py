"""safetensors_io.py - read and write safetensors files with only the standard library + numpy.

The layout (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 N, then
N bytes of JSON header, then the data section. The header is an object mapping each tensor name
to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section),
plus an optional "__metadata__" object of string -> string. All data is little-endian.

This writer is deterministic, so that `make golden` reproduces files byte for byte:
  - "__metadata__" comes first, then the tensors in sorted name order (Python str order);
  - the JSON is compact (no spaces), and padded with spaces to a multiple of 8 bytes;
  - the tensors are stored contiguously in that same order, with no gaps and no overlap.
Note that offsets are not aligned to the element size: a U8 tensor of odd length shifts every
tensor after it. Readers must copy (memcpy) rather than cast unaligned data.

Supported dtypes: F64, F32, F16, BF16, U8, I64 (and I32 for convenience).
BF16 is the top 16 bits of the float32 value, rounded to nearest even. Floating arrays are
always rounded to float32 first and then to F16/BF16, so a float64 array and its float32
rounding store the same F16/BF16 bits.

Usage:
    from safetensors_io import load_file, save_file
    save_file({"w": np.ones((2, 3), np.float32)}, "m.safetensors", metadata={"format": "pt"})
    tensors, metadata = load_file("m.safetensors")   # BF16 comes back as float32 (exact)
"""

import json
import struct

import numpy as np

# dtype name -> (numpy dtype of the stored little-endian elements, bytes per element)
_DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # raw bits; converted to float32 on read
    "U8": (np.dtype("u1"), 1),
    "I32": (np.dtype("<i4"), 4),
    "I64": (np.dtype("<i8"), 8),
}

_FROM_NUMPY = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("uint8"): "U8",
    np.dtype("int32"): "I32",
    np.dtype("int64"): "I64",
}

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

# A header larger than this is surely not a header (the reference implementation uses 100 MB).
_MAX_HEADER = 100 * 1000 * 1000


def float32_to_bf16_bits(x):
    """float32 array -> uint16 BF16 bits, round to nearest, ties to even. NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    rounded = np.where(nan, (u >> 16) | 0x0040, rounded)  # keep sign, force a quiet NaN
    return (rounded & 0xFFFF).astype("<u2")


def bf16_bits_to_float32(bits):
    """uint16 BF16 bits -> float32 array (exact)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def round_to_dtype(x, dtype):
    """The float64 values that `x` has once stored as `dtype` (F64, F32, F16 or BF16)."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "F64":
        return x.copy()
    x32 = x.astype(np.float32)
    if dtype == "F32":
        return x32.astype(np.float64)
    if dtype == "F16":
        return x32.astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        return bf16_bits_to_float32(float32_to_bf16_bits(x32)).astype(np.float64)
    raise ValueError(f"not a float dtype: {dtype}")


def _encode(arr, dtype):
    """numpy array -> the little-endian bytes of `dtype`."""
    if dtype == "BF16":
        return float32_to_bf16_bits(np.asarray(arr, dtype=np.float64).astype(np.float32)).tobytes()
    np_dtype = _DTYPES[dtype][0]
    if dtype == "F16":
        arr = np.asarray(arr).astype(np.float32)  # round to float32 first, as documented
    if dtype in FLOAT_DTYPES:
        if not np.issubdtype(np.asarray(arr).dtype, np.floating):
            raise TypeError(f"cannot store a {np.asarray(arr).dtype} array as {dtype}")
    return np.ascontiguousarray(np.asarray(arr).astype(np_dtype)).tobytes()


def save_file(tensors, path, metadata=None, dtypes=None, float_dtype=None):
    """Write `tensors` (dict name -> numpy array or anything np.asarray takes) to `path`.

    The stored dtype of a tensor is, in order of precedence: dtypes[name], then float_dtype for
    floating arrays, then the array's own dtype (float64 -> F64, uint8 -> U8, ...).
    metadata, when given, must map str -> str."""
    dtypes = dtypes or {}
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("__metadata__ must map str to str")
        header["__metadata__"] = dict(sorted(metadata.items()))
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a valid tensor name")
        arr = np.asarray(tensors[name])
        if name in dtypes:
            dtype = dtypes[name]
        elif float_dtype is not None and np.issubdtype(arr.dtype, np.floating):
            dtype = float_dtype
        elif arr.dtype in _FROM_NUMPY:
            dtype = _FROM_NUMPY[arr.dtype]
        else:
            raise TypeError(f"{name}: no safetensors dtype for numpy {arr.dtype}")
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype}")
        data = _encode(arr, dtype)
        assert len(data) == arr.size * _DTYPES[dtype][1]
        header[name] = {
            "dtype": dtype,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for c in chunks:
            f.write(c)


def read_header(buf):
    """Parse and validate the header of a safetensors file held in `buf` (bytes).

    Returns (header dict without __metadata__, metadata dict, data section start).
    Raises ValueError on any inconsistency."""
    if len(buf) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > _MAX_HEADER or 8 + n > len(buf):
        raise ValueError(f"header length {n} runs past the end of the file")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("__metadata__ must map str to str")
    data_start = 8 + n
    data_len = len(buf) - data_start
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{name}: entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise ValueError(f"{name}: bad shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1] <= data_len
        ):
            raise ValueError(f"{name}: data_offsets {offs!r} outside the data section")
        count = 1
        for s in shape:
            count *= s
        if offs[1] - offs[0] != count * _DTYPES[dtype][1]:
            raise ValueError(f"{name}: {offs[1] - offs[0]} bytes for {dtype} {shape}")
        spans.append((offs[0], offs[1], name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{n0} and {n1} overlap")
    return header, metadata, data_start


def load_file(path):
    """Read a safetensors file. Returns (tensors, metadata): tensors maps name -> numpy array
    (F64 float64, F32 float32, F16 float16, BF16 float32, U8 uint8, I32 int32, I64 int64), in
    file order of the header; metadata is the __metadata__ dict ({} when absent)."""
    with open(path, "rb") as f:
        buf = f.read()
    header, metadata, start = read_header(buf)
    tensors = {}
    for name, info in header.items():
        dtype, shape = info["dtype"], info["shape"]
        b, e = info["data_offsets"]
        raw = np.frombuffer(buf, dtype=_DTYPES[dtype][0], count=(e - b) // _DTYPES[dtype][1],
                            offset=start + b)
        if dtype == "BF16":
            arr = bf16_bits_to_float32(raw)
        else:
            arr = raw.astype(raw.dtype.newbyteorder("="), copy=True)
        tensors[name] = arr.reshape(shape)
    return tensors, metadata


def dtypes_of(path):
    """name -> stored dtype string, for tests that care how a file was written."""
    with open(path, "rb") as f:
        buf = f.read()
    header, _, _ = read_header(buf)
    return {name: info["dtype"] for name, info in header.items()}
