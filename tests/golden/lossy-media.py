#!/usr/bin/env python3
"""Writes the lossy media of the golden script into DIR from the test samples (no image tools
needed): crops of a real photo (PNG decoded here) as a binary PPM, a 24-bit bottom-up BMP and a
big-endian baseline TIFF in strips, and a real WAV's samples as a plain AIFF.

Usage: lossy-media.py DATA DIR   (DATA is tests/data)"""
import struct
import sys
import zlib
from pathlib import Path


def read_png_rgb(path):
    d = Path(path).read_bytes()
    pos, idat = 8, b""
    while pos < len(d):
        n, ty = struct.unpack(">I4s", d[pos:pos + 8])
        body = d[pos + 8:pos + 8 + n]
        if ty == b"IHDR":
            w, h, depth, ct, _, _, il = struct.unpack(">IIBBBBB", body)
            assert (depth, ct, il) == (8, 2, 0), "8-bit RGB, not interlaced"
        elif ty == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, out = zlib.decompress(idat), w * 3, []
    prev = bytearray(stride)
    for y in range(h):
        ft, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            if ft == 1:
                p = a
            elif ft == 2:
                p = b
            elif ft == 3:
                p = (a + b) // 2
            elif ft == 4:
                q = a + b - c
                pa, pb, pc = abs(q - a), abs(q - b), abs(q - c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                p = 0
            line[i] = (line[i] + p) & 255
        out.append(bytes(line))
        prev = line
    return w, h, out


def crop(rows, x, y, w, h):
    return [r[x * 3:(x + w) * 3] for r in rows[y:y + h]]


def ppm(rows, w, h):
    return b"P6\n# idcfs golden\n%d %d\n255\n" % (w, h) + b"".join(rows)


def bmp(rows, w, h):
    stride = (w * 3 + 3) // 4 * 4
    px = b"".join(
        b"".join(bytes((r[i + 2], r[i + 1], r[i])) for i in range(0, w * 3, 3)) + bytes(stride - w * 3)
        for r in reversed(rows))
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(px), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(px), 0, 0, 54) + info + px


def tiff(rows, w, h, rps=16):
    data = b"".join(rows)
    strips = (h + rps - 1) // rps
    n = 10
    extra = 8 + 2 + 12 * n + 4
    offs_at = extra + 6
    counts_at = offs_at + 4 * strips
    data_at = counts_at + 4 * strips
    e = lambda tag, ty, count, val: struct.pack(">HHI", tag, ty, count) + (
        struct.pack(">HH", val, 0) if ty == 3 and count == 1 else struct.pack(">I", val))
    ifd = struct.pack(">H", n) + b"".join([
        e(256, 4, 1, w), e(257, 4, 1, h), e(258, 3, 3, extra), e(259, 3, 1, 1), e(262, 3, 1, 2),
        e(273, 4, strips, offs_at), e(277, 3, 1, 3), e(278, 4, 1, rps),
        e(279, 4, strips, counts_at), e(284, 3, 1, 1)]) + bytes(4)
    offs = b"".join(struct.pack(">I", data_at + i * rps * w * 3) for i in range(strips))
    counts = b"".join(struct.pack(">I", min(rps, h - i * rps) * w * 3) for i in range(strips))
    return b"MM\0*" + struct.pack(">I", 8) + ifd + struct.pack(">HHH", 8, 8, 8) + offs + counts + data


def aiff(wav):
    assert wav[12:16] == b"fmt " and wav[36:40] == b"data"
    ch, rate = struct.unpack("<HI", wav[22:28])
    (n,) = struct.unpack("<I", wav[40:44])
    s = wav[44:44 + n]
    be = b"".join(s[i + 1:i + 2] + s[i:i + 1] for i in range(0, len(s), 2))
    bits = rate.bit_length()
    comm = struct.pack(">HIH", ch, n // 2 // ch, 16) + struct.pack(">HQ", 16383 + bits - 1, rate << (64 - bits))
    chunks = b"COMM" + struct.pack(">I", len(comm)) + comm
    chunks += b"SSND" + struct.pack(">I", 8 + len(be)) + bytes(8) + be
    chunks += b"NAME" + struct.pack(">I", 5) + b"idcfs\0"
    body = b"AIFF" + chunks
    return b"FORM" + struct.pack(">I", len(body)) + body


data, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
w, h, rows = read_png_rgb(next((data / "photo").glob("*chelsea.png")))
c = crop(rows, 160, 60, 128, 96)
(out / "crop.ppm").write_bytes(ppm(c, 128, 96))
(out / "crop.bmp").write_bytes(bmp(c, 128, 96))
(out / "crop.tif").write_bytes(tiff(c, 128, 96))
(out / "front.aiff").write_bytes(aiff(next((data / "wav").glob("*Front_Center.wav")).read_bytes()))
