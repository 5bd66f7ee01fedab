"""The README images' palette PNGs (``palette_png``), decoded by Chromium as a reader's browser decodes them."""

from __future__ import annotations

import base64

import numpy as np
import palette_png  # tests/browser/palette_png.py (pytest puts this folder on sys.path)
import pytest

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def test_an_image_of_few_colours_is_stored_exactly(page):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(200, 3), dtype=np.uint8)
    pixels = colours[rng.integers(0, 200, size=(37, 53))]  # odd sizes: no row padding assumed
    palette, indices = palette_png.quantize(pixels)
    assert len(palette) == 200
    np.testing.assert_array_equal(palette_png.decode(page, palette_png.encode(palette, indices)), pixels)


def test_rare_colours_go_to_the_nearest_frequent_one(page):
    pixels = np.full((20, 30, 3), (10, 20, 30), dtype=np.uint8)  # the frequent colour: the lower half
    grid = np.stack(np.meshgrid(np.arange(15), np.arange(20), indexing="ij"), -1).reshape(-1, 2)
    rare = np.column_stack([grid[:, 0] * 17, grid[:, 1] * 13, np.full(300, 128)])  # 300 colours, one pixel each
    pixels[:10] = rare.reshape(10, 30, 3)  # 301 colours in all: 45 rare ones must borrow a palette colour
    compact, error = palette_png.compact(page, _png(page, pixels))
    decoded = palette_png.decode(page, compact)
    colours = np.unique(decoded.reshape(-1, 3), axis=0)
    assert len(colours) <= 256 and error > 0
    assert (decoded[10:] == (10, 20, 30)).all()  # the frequent colours are kept as they were
    # every pixel became a palette colour at least as near to it as any other palette colour
    distance = ((decoded.astype(int) - pixels.astype(int)) ** 2).sum(-1)
    best = ((pixels.reshape(-1, 1, 3).astype(int) - colours[None].astype(int)) ** 2).sum(-1).min(1)
    np.testing.assert_array_equal(distance.reshape(-1), best)


def _png(page, pixels: np.ndarray) -> bytes:
    """``pixels`` as an RGB PNG written by Chromium (a canvas's ``toDataURL``), like a screenshot."""
    height, width, _ = pixels.shape
    rgba = np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], -1).reshape(-1).tolist()
    url = page.evaluate(
        """([w, h, data]) => {
            const c = document.createElement("canvas");
            [c.width, c.height] = [w, h];
            const ctx = c.getContext("2d");
            ctx.putImageData(new ImageData(new Uint8ClampedArray(data), w, h), 0, 0);
            return c.toDataURL("image/png");
        }""",
        [width, height, rgba],
    )
    return base64.b64decode(url.split(",", 1)[1])
