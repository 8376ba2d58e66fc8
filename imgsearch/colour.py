"""Colour signature of a product photo, for telling apart colour variants that VGG16 finds nearly identical.

VGG16 features describe shape and texture more than colour, so the black and the brown version of one shoe,
photographed the same way, are closer than a photo and its own cropped copy. The near-duplicate report
(:mod:`imgsearch.duplicates`) therefore also compares the photos' colours. The signature is computed from the
pixels the featurizer decodes anyway (224x224x3 uint8 RGB) and stored with each photo (``vector(44)``).

* Background: the pixels connected (4-neighbourhood) to the picture's border whose three channels are all
  within :data:`BACKGROUND_TOLERANCE` levels of the border's dominant colour (a studio backdrop, white or
  pale). Everything else is the foreground; when it is (nearly) empty the whole picture is described.
* Histogram of the foreground, one unit of weight per pixel: a pixel with chroma ``c`` (max - min channel,
  0..1) puts ``w = min(1, CHROMA_GAIN * c)`` of its weight on :data:`COLOUR_HUES` hue sectors x
  :data:`COLOUR_VALUES` value levels and ``1 - w`` on :data:`COLOUR_GREYS` grey levels (value = max channel),
  with linear soft assignment between neighbouring bins (hue circularly), so that JPEG noise and small
  shifts move weight gradually instead of across a bin edge.
* Signature: the square root of the normalised histogram, :data:`COLOUR_BINS` float32 values of unit L2
  norm. The L2 distance between two signatures (pgvector ``<->`` on ``vector(44)``) is sqrt(2) times the
  Hellinger distance of the histograms, between 0 (same colours) and sqrt(2) (no colour in common); the
  cosine distance (``<=>``) is half its square, so either operator ranks pairs the same way.
"""

from __future__ import annotations

import numpy as np

#: Hue sectors of 30 degrees (red, orange, yellow, ..., magenta), centred on red = 0 degrees.
COLOUR_HUES = 12
#: Value levels (max channel: dark, mid, bright) of the coloured part of a pixel.
COLOUR_VALUES = 3
#: Grey levels (black to white) of the achromatic part of a pixel.
COLOUR_GREYS = 8
#: Length of :func:`colour_signature`: grey levels first, then hue-major (hue, value) bins.
COLOUR_BINS = COLOUR_GREYS + COLOUR_HUES * COLOUR_VALUES
#: Chroma times this is the coloured share of a pixel (capped at 1): chroma 0.5 and above counts as colour only.
CHROMA_GAIN = 2.0
#: Largest per-channel difference (0..255) from the border's dominant colour of a background pixel.
BACKGROUND_TOLERANCE = 12
#: Below this share of foreground pixels the whole picture is described (a blank or all-backdrop picture).
MIN_FOREGROUND = 0.001
#: Pixels are binned through a table indexed by their colour quantised to 2**4 levels per channel.
_QUANT_BITS = 4


def _tent(x: np.ndarray, nodes: int, circular: bool = False) -> np.ndarray:
    """Linear soft assignment ``(len(x), nodes)`` of ``x`` in 0..1 to evenly spaced nodes (0 and 1 included,
    or, ``circular``, ``k / nodes`` with 1 wrapping to 0); each row sums to 1."""
    pos = x * (nodes if circular else nodes - 1)
    gap = np.abs(pos[:, None] - np.arange(nodes)[None, :])
    if circular:
        gap = np.minimum(gap, nodes - gap)
    return np.maximum(0.0, 1.0 - gap)


def _colour_table() -> np.ndarray:
    """Histogram weights ``(2**(3*_QUANT_BITS), COLOUR_BINS)`` of each quantised colour, taken at its cell's
    centre; each row sums to 1."""
    levels = 1 << _QUANT_BITS
    centre = (np.arange(levels) * (256 // levels) + 128 // levels) / 255.0
    r, g, b = (c.ravel() for c in np.meshgrid(centre, centre, centre, indexing="ij"))
    top, bottom = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = top - bottom
    safe = np.where(chroma > 0, chroma, 1.0)
    sector = np.where(top == r, ((g - b) / safe) % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4))
    coloured = np.minimum(1.0, CHROMA_GAIN * chroma)[:, None]
    grey = _tent(top, COLOUR_GREYS) * (1.0 - coloured)
    hue = _tent(sector / 6.0, COLOUR_HUES, circular=True)
    colour = (hue[:, :, None] * _tent(top, COLOUR_VALUES)[:, None, :]).reshape(len(top), -1) * coloured
    return np.concatenate([grey, colour], axis=1)


_COLOUR_TABLE = _colour_table()


def _border_colour(rgb: np.ndarray) -> np.ndarray:
    """The border's dominant colour: the per-channel median of the border pixels in the most common cell of
    16 levels per channel (robust to a product touching the border)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    coarse = border.astype(np.int32) >> 4
    cell = (coarse[:, 0] << 8) | (coarse[:, 1] << 4) | coarse[:, 2]
    return np.median(border[cell == np.bincount(cell, minlength=4096).argmax()], axis=0)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major runs of equal values of a 2-D boolean ``mask`` (split at row starts): flat start, length, value."""
    change = np.empty(mask.shape, bool)
    change[:, 0] = True
    np.not_equal(mask[:, 1:], mask[:, :-1], out=change[:, 1:])
    starts = np.flatnonzero(change)
    return starts, np.diff(starts, append=mask.size), mask.ravel()[starts]


def background_mask(rgb: np.ndarray, tolerance: int = BACKGROUND_TOLERANCE) -> np.ndarray:
    """Boolean ``(h, w)``: the pixels of ``rgb`` (``(h, w, 3)`` uint8) connected to the border whose channels
    are all within ``tolerance`` of the border's dominant colour.

    Exact 4-connected flood fill, vectorised as alternating row and column passes: a pass marks every run of
    near-background pixels along a row (column) that holds a marked pixel; it stops when a pass adds nothing
    (median 4 passes, 99% <= 14, at most 44 on these photos, each a few array operations on the ~1,000
    runs)."""
    reference = _border_colour(rgb)
    levels = np.arange(256)
    near = np.ones(rgb.shape[:2], bool)
    for channel in range(3):
        near &= (np.abs(levels - reference[channel]) <= tolerance)[rgb[..., channel]]
    runs = (_runs(near), _runs(near.T))
    reach = np.zeros_like(near)
    reach[[0, -1], :] = near[[0, -1], :]
    reach[:, [0, -1]] = near[:, [0, -1]]
    reached, layout = -1, 0  # layout 1: ``reach`` is transposed
    while True:
        starts, lengths, is_near = runs[layout]
        hit = np.logical_or.reduceat(reach.ravel(), starts) & is_near
        reach = np.repeat(hit, lengths).reshape(reach.shape).T  # the next pass runs along the other axis
        layout = 1 - layout
        count = int(lengths[hit].sum())
        if count == reached:
            break
        reached = count
    return reach.T if layout else reach


def colour_signature(rgb: np.ndarray) -> np.ndarray:
    """Colour signature of a product photo's foreground: ``COLOUR_BINS`` float32 values of unit L2 norm.

    Args:
        rgb: ``(h, w, 3)`` uint8 RGB pixels, e.g. ``decode_rgb8(source)`` (any size of at least 1x1).

    Two signatures are compared with :func:`colour_distance` (pgvector ``<->``). Deterministic; about 1 ms
    for 224x224 pixels (up to ~5 ms when the backdrop's flood fill leaks into a pale patterned product).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected (h, w, 3) uint8 RGB pixels, got {rgb.dtype} {rgb.shape}")
    foreground = ~background_mask(rgb)
    coarse = rgb >> (8 - _QUANT_BITS)
    cell = (coarse[..., 0].astype(np.uint16) << 2 * _QUANT_BITS) | (coarse[..., 1].astype(np.uint16) << _QUANT_BITS)
    cell |= coarse[..., 2]
    if np.count_nonzero(foreground) >= max(1.0, MIN_FOREGROUND * foreground.size):
        cell = cell[foreground]
    histogram = np.bincount(cell.ravel(), minlength=len(_COLOUR_TABLE)) @ _COLOUR_TABLE
    return np.sqrt(histogram / histogram.sum()).astype(np.float32)


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two colour signatures (pgvector ``a <-> b``): 0 for the same colours,
    sqrt(2) for no colour in common."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
