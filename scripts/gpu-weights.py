#!/usr/bin/env python3
"""Packs safetensors weights small enough to travel, and unpacks them, losslessly.

    gpu-weights.py pack weights/X.safetensors OUT/X.safetensors.planes.xz
    gpu-weights.py unpack OUT/X.safetensors.planes.xz weights/X.safetensors

xz alone saves almost nothing on f32 weights: their low mantissa bytes are noise. Stored as
four byte planes (every tensor byte 0, then every byte 1, ...) the sign-and-exponent plane
compresses to about a third, the whole file to about 84% of its size. The safetensors header
is kept as it is; the tensor data must be a whole number of 4-byte words (f32, i64, i32).
Standard library only, so it runs under any python3 on the GPU machine.
"""
import hashlib
import lzma
import struct
import sys

MAGIC = b"WLGPLANES1"


def pack(src: str, dst: str) -> None:
    raw = open(src, "rb").read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    head, data = raw[: 8 + header_len], raw[8 + header_len :]
    if len(data) % 4:
        sys.exit(f"{src}: tensor data of {len(data)} bytes is not whole 4-byte words")
    planes = b"".join(data[i::4] for i in range(4))
    body = struct.pack("<QQ", len(head), len(data)) + head + planes
    digest = hashlib.sha256(raw).digest()
    with open(dst, "wb") as f:
        f.write(MAGIC + digest + lzma.compress(body, preset=6))


def unpack(src: str, dst: str) -> None:
    blob = open(src, "rb").read()
    if not blob.startswith(MAGIC):
        sys.exit(f"{src}: not a packed weights file")
    digest, body = blob[len(MAGIC) : len(MAGIC) + 32], lzma.decompress(blob[len(MAGIC) + 32 :])
    head_len, data_len = struct.unpack("<QQ", body[:16])
    head, planes = body[16 : 16 + head_len], body[16 + head_len :]
    if len(planes) != data_len:
        sys.exit(f"{src}: truncated ({len(planes)} of {data_len} bytes)")
    n = data_len // 4
    data = bytearray(data_len)
    for i in range(4):
        data[i::4] = planes[i * n : (i + 1) * n]
    raw = head + bytes(data)
    if hashlib.sha256(raw).digest() != digest:
        sys.exit(f"{src}: unpacked bytes differ from the packed file's checksum")
    with open(dst, "wb") as f:
        f.write(raw)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3])
