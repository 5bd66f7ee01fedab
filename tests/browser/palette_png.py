"""Small PNGs for the README: a screenshot reduced to its 256 most frequent colours, stored as a palette PNG.

Chromium writes screenshots as 24-bit PNGs; a figure's antialiased lines and bands give them ten thousand
colours or more, most of them rare, and the file two to three times the size of a palette PNG that looks the
same. Chromium decodes the screenshot (in a blank page, through a canvas), numpy maps every colour to the
nearest of the 256 most frequent ones, and the file is written as PNG colour type 3 (``zlib`` level 9).
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

_DECODE = """async (url) => {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = [img.width, img.height];
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, img.width, img.height).data;
    let text = "";
    for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
    return [img.width, img.height, btoa(text)];
}"""


def decode(page, png: bytes) -> np.ndarray:
    """The RGB pixels ``[height, width, 3]`` of ``png``, decoded by the browser of ``page`` (a blank page)."""
    width, height, rgba = page.evaluate(_DECODE, "data:image/png;base64," + base64.b64encode(png).decode())
    return np.frombuffer(base64.b64decode(rgba), dtype=np.uint8).reshape(height, width, 4)[..., :3]


def quantize(pixels: np.ndarray, colours: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(palette [k, 3], indices [height, width])``: the ``colours`` most frequent colours, every pixel
    mapped to the nearest of them (squared RGB distance)."""
    height, width, _ = pixels.shape
    unique, inverse, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_inverse=True, return_counts=True)
    palette = unique[np.argsort(-counts, kind="stable")[:colours]]
    nearest = np.empty(len(unique), dtype=np.uint8)
    for start in range(0, len(unique), 4096):  # a [4096, 256] distance table at a time
        chunk = unique[start : start + 4096].astype(np.int32)
        nearest[start : start + 4096] = ((chunk[:, None, :] - palette[None].astype(np.int32)) ** 2).sum(-1).argmin(1)
    return palette, nearest[inverse.reshape(-1)].reshape(height, width)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(palette: np.ndarray, indices: np.ndarray) -> bytes:
    """A PNG of colour type 3 (8-bit palette indices, no filter) of ``indices`` into ``palette``."""
    height, width = indices.shape
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), indices.astype(np.uint8)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"PLTE", palette.astype(np.uint8).tobytes()),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)),
            _chunk(b"IEND", b""),
        ]
    )


def compact(page, png: bytes) -> tuple[bytes, float]:
    """``png`` as a palette PNG and the mean absolute difference of its pixels from the original (0-255 levels).
    The result is decoded again by the browser and must give the quantised pixels exactly."""
    pixels = decode(page, png)
    palette, indices = quantize(pixels)
    out = encode(palette, indices)
    if not np.array_equal(decode(page, out), palette[indices]):
        raise AssertionError("the palette PNG does not decode to the quantised pixels")
    return out, float(np.abs(palette[indices].astype(int) - pixels.astype(int)).mean())
