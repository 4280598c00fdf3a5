"""A minimal PNG writer and the identicons the avatar CDN serves (PROTOCOL.md section 5, "Avatars").

Only `zlib` and `struct`: the lab must not need Pillow, and an avatar is just truecolour
pixels. `identicon` draws the classic 5x5 mirrored pattern so that two users' avatars are
visibly different in a capture viewer, and the same user's avatar is the same image at every
size and on every run (everything is derived from SHA-256 of the seed, nothing is random).
"""

from __future__ import annotations

import colorsys
import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID = 5                  # cells per side of the pattern
BACKGROUND = (240, 240, 240)
MAX_DIMENSION = 8192      # far above any avatar size; stops a typo from allocating gigabytes


def _chunk(kind: bytes, payload: bytes) -> bytes:
    # The CRC covers the chunk type and data but not the length (PNG spec, section 5.3).
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def encode_png(width: int, height: int, rows_rgb: bytes) -> bytes:
    """Encode `rows_rgb` (height rows of width*3 bytes, top row first) as an 8-bit RGB PNG."""
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise ValueError(f"PNG size {width}x{height} out of range 1..{MAX_DIMENSION}")
    stride = width * 3
    if len(rows_rgb) != stride * height:
        raise ValueError(f"{len(rows_rgb)} pixel bytes for {width}x{height} RGB, "
                         f"expected {stride * height}")
    # Every scanline starts with its filter type; 0 (None) keeps the encoder trivial, and the
    # flat colour blocks of an identicon compress well without a predictor anyway.
    raw = bytearray()
    view = memoryview(rows_rgb)
    for y in range(height):
        raw.append(0)
        raw += view[y * stride:(y + 1) * stride]
    # bit depth 8, colour type 2 (truecolour), compression 0, filter 0, interlace 0
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + _chunk(b"IEND", b""))


def _pattern(digest: bytes) -> list[list[bool]]:
    """5x5 cells, mirrored left to right, from 15 bits of the digest."""
    bits = int.from_bytes(digest[:4], "big")
    half = (GRID + 1) // 2  # 3 columns decide the whole row
    cells = [[False] * GRID for _ in range(GRID)]
    for row in range(GRID):
        for col in range(half):
            on = bool(bits >> (row * half + col) & 1)
            cells[row][col] = cells[row][GRID - 1 - col] = on
    if not any(any(r) for r in cells):
        # An all-background avatar would look like a missing image; light the centre instead.
        cells[GRID // 2][GRID // 2] = True
    return cells


def _colour(digest: bytes) -> tuple[int, int, int]:
    """A saturated, mid-light foreground so it always stands out from the grey background."""
    hue = int.from_bytes(digest[4:6], "big") / 65536.0
    light = 0.40 + digest[6] / 255.0 * 0.15
    sat = 0.55 + digest[7] / 255.0 * 0.30
    r, g, b = colorsys.hls_to_rgb(hue, light, sat)
    return round(r * 255), round(g * 255), round(b * 255)


def _cell_index(pos: int, size: int) -> int:
    """The pattern cell under pixel `pos`, or -1 in the margin.

    The picture is 6 cells wide: the 5 pattern cells plus half a cell of margin on each side.
    Integer arithmetic in half-cell units (12 per side) keeps sizes that 6 does not divide,
    such as 46 or 64, exact and identical on every platform.
    """
    half_cell = pos * 2 * (GRID + 1) // size
    if 1 <= half_cell <= 2 * GRID:
        return (half_cell - 1) // 2
    return -1


def _cell_map(size: int) -> list[int]:
    """`_cell_index` for every pixel, mirrored so the picture is exactly symmetric.

    Rounding alone would make a cell one pixel wider on one side when 12 does not divide
    the size (46, 64, 640); mapping the left half and mirroring it keeps both sides equal.
    """
    left = [_cell_index(p, size) for p in range((size + 1) // 2)]
    right = [c if c < 0 else GRID - 1 - c for c in reversed(left[:size // 2])]
    return left + right


def identicon(seed: bytes, size: int) -> bytes:
    """A `size` x `size` PNG identicon for `seed` (the avatar CDN passes the username)."""
    if not 1 <= size <= MAX_DIMENSION:
        raise ValueError(f"identicon size {size} out of range 1..{MAX_DIMENSION}")
    digest = hashlib.sha256(seed).digest()
    cells = _pattern(digest)
    fg = bytes(_colour(digest))
    bg = bytes(BACKGROUND)
    columns = _cell_map(size)
    # Only GRID + 1 distinct scanlines exist (each pattern row, plus the margin); build each
    # once and repeat it, which keeps a 640 px avatar to a few milliseconds.
    margin_line = bg * size
    lines = [b"".join(fg if c >= 0 and cells[row][c] else bg for c in columns)
             for row in range(GRID)]
    rows = b"".join(lines[r] if r >= 0 else margin_line
                    for r in _cell_map(size))
    return encode_png(size, size, rows)
