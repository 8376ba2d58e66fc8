"""Printed products and shoppers' photos of them, drawn for the tests: a cover (shapes, stripes and text, as
on a book, a DVD or a cereal box) and the same cover photographed at an angle on a cluttered table, relit, a
little blurred and recompressed, with where it lies in that photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"


def cover(seed: int, size: tuple[int, int] = (400, 560)) -> Image.Image:
    """A printed cover: every seed a different design."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    w, h = size
    for _ in range(40):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 8)))
    for line in range(8):
        text = "".join(chr(int(c)) for c in rng.integers(65, 91, 12))
        draw.text((int(rng.integers(0, w // 3)), 20 + line * (h // 9)), text, fill=(0, 0, 0), font_size=28)
    return im


def shopper_photo(
    product: Image.Image, background_seed: int = 0, quality: int = 70
) -> tuple[bytes, tuple[float, float, float, float]]:
    """``product`` photographed at an angle, smaller than the frame, on a cluttered background: the JPEG bytes
    and the box ``(left, top, right, bottom)`` the product occupies in the photo."""
    rng = np.random.default_rng(background_seed)
    backgrounds = sorted(EXAMPLES.glob("*/*.jpg"))
    background = Image.open(backgrounds[int(rng.integers(0, len(backgrounds)))]).convert("RGB").resize((1000, 800))
    background = background.filter(ImageFilter.GaussianBlur(2))
    w, h = product.size
    # Perspective: the cover's corners moved inwards unevenly, then scaled into the frame at (220, 140).
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    moved = corners + rng.uniform(-0.12, 0.12, size=(4, 2)) * [w, h] * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    moved = np.abs(moved) * 0.9 + [220, 140]
    coefficients = _perspective(moved, corners)
    warped = product.transform((1000, 800), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR)
    mask = Image.new("L", product.size, 255).transform(
        (1000, 800), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
    )
    photo = background.copy()
    photo.paste(warped, (0, 0), mask)
    photo = ImageEnhance.Brightness(photo).enhance(0.8)
    photo = ImageEnhance.Contrast(photo).enhance(1.15).filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=quality)
    left, top = moved.min(axis=0)
    right, bottom = moved.max(axis=0)
    return buffer.getvalue(), (float(left), float(top), float(right), float(bottom))


def _perspective(target: np.ndarray, source: np.ndarray) -> list[float]:
    """Pillow's perspective coefficients mapping output pixels (``target`` corners) back to input pixels."""
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows), source.reshape(8))
    return [float(c) for c in solution]
