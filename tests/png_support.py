"""A small PNG reader for the screenshot tests (8-bit RGB or RGBA,
non-interlaced: what headless Chromium writes), so pixel checks need no
imaging library."""
from __future__ import annotations

import struct
import zlib


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos = 8
    idat = b""
    width = height = 0
    channels = 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth} type {ctype}")
            channels = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        rgb = bytes(line) if channels == 3 else bytes(
            v for k in range(width) for v in line[k * 4:k * 4 + 3])
        rows.append(rgb)
    return width, height, rows


def hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def count_color(rows: list[bytes], rgb: tuple[int, int, int], y0: int = 0,
                y1: int | None = None, tol: int = 6) -> int:
    n = 0
    for row in rows[y0:y1]:
        for k in range(0, len(row), 3):
            if (abs(row[k] - rgb[0]) <= tol and abs(row[k + 1] - rgb[1]) <= tol
                    and abs(row[k + 2] - rgb[2]) <= tol):
                n += 1
    return n


def runs_in_row(row: bytes, rgb: tuple[int, int, int], min_len: int = 1, tol: int = 6) -> int:
    """How many separate horizontal runs of rgb, min_len pixels or longer, one row has."""
    runs = 0
    length = 0
    for k in range(0, len(row) + 3, 3):
        hit = k < len(row) and (abs(row[k] - rgb[0]) <= tol and abs(row[k + 1] - rgb[1]) <= tol
                                and abs(row[k + 2] - rgb[2]) <= tol)
        if hit:
            length += 1
        else:
            if length >= min_len:
                runs += 1
            length = 0
    return runs
