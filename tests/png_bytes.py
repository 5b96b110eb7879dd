"""PNG files written byte by byte (struct + zlib), so that a test does not depend on Pillow's PNG writer."""

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAY, PALETTE = 0, 3  # the IHDR colour types of one-sample-per-pixel PNGs


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _pack_row(row, bit_depth):
    """One scanline: samples packed from the most significant bit, the last byte padded with zeros."""
    if bit_depth == 16:
        return b"".join(struct.pack(">H", v) for v in row)
    per_byte = 8 // bit_depth
    packed = bytearray()
    for start in range(0, len(row), per_byte):
        byte = 0
        for k, value in enumerate(row[start:start + per_byte]):
            assert 0 <= value < 2 ** bit_depth
            byte |= value << (8 - bit_depth * (k + 1))
        packed.append(byte)
    return bytes(packed)


def png_bytes(rows, bit_depth, colour_type=GRAY, palette=None):
    """A grayscale or palette PNG whose stored samples are `rows` (a list of lists of ints)."""
    height, width = len(rows), len(rows[0])
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    scanlines = b"".join(b"\x00" + _pack_row(row, bit_depth) for row in rows)  # filter type 0: none
    chunks = [_chunk(b"IHDR", header)]
    if colour_type == PALETTE:
        chunks.append(_chunk(b"PLTE", bytes(v for rgb in palette for v in rgb)))
    chunks += [_chunk(b"IDAT", zlib.compress(scanlines)), _chunk(b"IEND", b"")]
    return SIGNATURE + b"".join(chunks)
