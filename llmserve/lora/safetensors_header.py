"""Checks a ``.safetensors`` file from its header alone, without torch or numpy.

The format: an 8-byte little-endian header length N, N bytes of JSON (``{name: {dtype,
shape, data_offsets: [begin, end]}, "__metadata__": {...}}``), then the tensors' bytes.
As the ``safetensors`` library validates a file on opening it, the tensors must tile the
data buffer exactly (in order, no gaps or overlaps, to its last byte) and each must span
the bytes its dtype and shape need, so a truncated or garbled file is caught here.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class CorruptSafetensors(ValueError):
    """The file is not a complete, well-formed safetensors file."""


def tensor_names(path: Path) -> list[str]:
    """The names of the tensors in ``path``, after checking its header against its size."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CorruptSafetensors(f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise CorruptSafetensors(f"header of {header_len} bytes does not fit in the "
                                     f"file's {size} bytes")
        raw = file.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptSafetensors(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptSafetensors("the header is not a JSON object")
    header.pop("__metadata__", None)
    spans = sorted((_span(name, info), name) for name, info in header.items())
    at = 0
    for (begin, end), name in spans:
        if begin != at:
            raise CorruptSafetensors(f"tensor {name!r} starts at byte {begin}, expected {at}")
        at = end
    data_bytes = size - 8 - header_len
    if at != data_bytes:
        raise CorruptSafetensors(f"the tensors need {at} bytes of data, the file has "
                                 f"{data_bytes}")
    return [name for _, name in spans]


def _span(name: str, info: object) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise CorruptSafetensors(f"tensor {name!r}: not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    bits = DTYPE_BITS.get(str(dtype))
    if bits is None:
        raise CorruptSafetensors(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_natural(d) for d in shape)):
        raise CorruptSafetensors(f"tensor {name!r}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
            and offsets[0] <= offsets[1]):
        raise CorruptSafetensors(f"tensor {name!r}: bad data_offsets {offsets!r}")
    needed_bits = math.prod(shape) * bits
    if needed_bits % 8 or offsets[1] - offsets[0] != needed_bits // 8:
        raise CorruptSafetensors(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for "
                                 f"{dtype} {shape}")
    return int(offsets[0]), int(offsets[1])


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
