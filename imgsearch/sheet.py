"""Pictures of search results for people: a contact sheet of the hits and a histogram of their distances.

The contact sheet is the notebooks' matplotlib grid as a file: the query image first, then one tile per
result in rank order, each captioned with its rank, SKU, price and cosine distance. It is drawn with Pillow
alone (its built-in font), so no plotting library or font file is needed.

Layout (deterministic, so a program can compute where each tile is):

* every tile is ``tile`` x ``tile`` pixels (default 224, the network's input size) for the picture, with a
  caption band of :data:`CAPTION_HEIGHT` pixels below it;
* tiles are laid out row by row in ``min(columns, n)`` columns (default 4), where ``n = 1 + len(results)``
  counts the query tile; the last row may be incomplete;
* :data:`MARGIN` pixels separate the tiles from each other and from the edges.

So the PNG is ``cols * tile + (cols + 1) * MARGIN`` pixels wide and
``rows * (tile + CAPTION_HEIGHT) + (rows + 1) * MARGIN`` high, with ``rows = ceil(n / cols)``;
:func:`sheet_size` computes it. Tile ``i`` (0 = the query) has its top-left corner at
``(MARGIN + (i % cols) * (tile + MARGIN), MARGIN + (i // cols) * (tile + CAPTION_HEIGHT + MARGIN))``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont, ImageOps

from imgsearch.errors import OutputError
from imgsearch.fetch import Fetcher, is_url
from imgsearch.images import _to_rgb_array
from imgsearch.query import SearchResult

if TYPE_CHECKING:
    from imgsearch.duplicates import DuplicateGroup

#: Side of the square picture area of a tile, in pixels.
DEFAULT_TILE = 224
#: Tiles per row (fewer when there are fewer tiles).
DEFAULT_COLUMNS = 4
#: Height of the caption band under each tile's picture: three lines of text.
CAPTION_HEIGHT = 56
#: Space between tiles and around the edge.
MARGIN = 10

#: What a query or result image may be: a path (relative ones are looked up as described in
#: :func:`write_contact_sheet`) or the encoded bytes (a photo read from stdin).
SheetImage = str | os.PathLike[str] | bytes

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_FONT_SIZE = 13
_LINE_HEIGHT = 17
_BACKGROUND = (236, 236, 236)
_CARD = (255, 255, 255)
_BORDER = (205, 205, 205)
_QUERY_BORDER = (37, 99, 235)
_PLACEHOLDER = (222, 222, 222)
_TEXT = (20, 20, 20)
_MUTED = (105, 105, 105)
_SOLD_OUT = (200, 30, 30)


def sheet_size(n_results: int, *, columns: int = DEFAULT_COLUMNS, tile: int = DEFAULT_TILE) -> tuple[int, int]:
    """Width and height in pixels of the contact sheet for ``n_results`` results (plus the query tile)."""
    cols, rows = _grid(1 + n_results, columns)
    return cols * tile + (cols + 1) * MARGIN, rows * (tile + CAPTION_HEIGHT) + (rows + 1) * MARGIN


def tile_origin(index: int, *, columns: int, tile: int = DEFAULT_TILE) -> tuple[int, int]:
    """Top-left corner of tile ``index`` (0 = the query) on a sheet with ``columns`` actual columns."""
    row, col = divmod(index, columns)
    return MARGIN + col * (tile + MARGIN), MARGIN + row * (tile + CAPTION_HEIGHT + MARGIN)


def _grid(n_tiles: int, columns: int) -> tuple[int, int]:
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    cols = min(columns, n_tiles)
    return cols, math.ceil(n_tiles / cols)


def write_contact_sheet(
    results: Sequence[SearchResult],
    path: str | os.PathLike[str],
    *,
    query_image: SheetImage | None = None,
    query_label: str | None = None,
    image_roots: Sequence[str | os.PathLike[str]] = (),
    columns: int = DEFAULT_COLUMNS,
    tile: int = DEFAULT_TILE,
) -> Path:
    """Write a PNG contact sheet: the query image, then one captioned tile per result in rank order.

    Pictures keep their aspect ratio (fitted inside the tile on white), are turned upright by their EXIF
    orientation and have transparency put on white. A query or result image that is missing or cannot be
    decoded becomes a grey placeholder tile that says so; it never stops the sheet. Sold-out results are
    marked in red.

    Args:
        results: search results, best first.
        path: where to write the PNG. Written atomically: a failed write leaves no partial file behind.
        query_image: the photo searched with (path or encoded bytes), or ``None`` if there is none to show.
        query_label: a short description of the query for its caption (file name, SKU, "stdin").
        image_roots: folders that relative image paths may be relative to, tried after the current
            directory. Catalogues ingested from a manifest store image paths relative to the manifest's folder.
        columns: maximum tiles per row.
        tile: side of each tile's picture area in pixels.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the file cannot be written.
        ValueError: ``columns`` is below 1 or ``tile`` below 32 pixels.
    """
    if tile < 32:
        raise ValueError(f"tile must be at least 32 pixels, got {tile}")
    roots = [Path(r) for r in image_roots]
    width, height = sheet_size(len(results), columns=columns, tile=tile)
    cols, _ = _grid(1 + len(results), columns)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(_FONT_SIZE)

    picture = _load_picture(query_image, roots, tile) if query_image is not None else "no query image"
    label = query_label or (_describe(query_image) if query_image is not None else "")
    _draw_tile(sheet, draw, font, tile_origin(0, columns=cols, tile=tile), tile, picture, query=True)
    _draw_caption(
        draw,
        font,
        tile_origin(0, columns=cols, tile=tile),
        tile,
        [("query", _TEXT), (label, _MUTED)],
    )

    for rank, result in enumerate(results, start=1):
        origin = tile_origin(rank, columns=cols, tile=tile)
        picture = _load_picture(result.image, roots, tile) if result.image else "no image in the catalogue"
        _draw_tile(sheet, draw, font, origin, tile, picture, sold_out=not result.in_stock)
        price = "no price" if result.price is None else f"{result.price:.2f}"
        name = result.name or ""
        third = (f"sold out · {name}" if name else "sold out", _SOLD_OUT) if not result.in_stock else (name, _MUTED)
        _draw_caption(
            draw,
            font,
            origin,
            tile,
            [(f"{rank}. {result.sku}", _TEXT), (price, _TEXT), third],
            right_of_second="" if result.distance is None else f"dist {result.distance:.4f}",
        )
    return _save_png(sheet, Path(path))


def write_duplicates_sheet(
    groups: Sequence[DuplicateGroup],
    path: str | os.PathLike[str],
    *,
    image_roots: Sequence[str | os.PathLike[str]] = (),
    columns: int = DEFAULT_COLUMNS,
    tile: int = DEFAULT_TILE,
) -> Path:
    """Write a PNG of near-duplicate groups: one row of tiles per group (wrapping after ``columns``), cheapest
    first, each captioned with the group, SKU and price; sold-out listings are marked in red.

    Raises:
        OutputError: the file cannot be written.
    """
    if tile < 32:
        raise ValueError(f"tile must be at least 32 pixels, got {tile}")
    roots = [Path(r) for r in image_roots]
    cols = max(1, min(columns, max((len(g.listings) for g in groups), default=1)))
    rows_per_group = [math.ceil(len(g.listings) / cols) for g in groups]
    rows = max(1, sum(rows_per_group))
    width = cols * tile + (cols + 1) * MARGIN
    height = rows * (tile + CAPTION_HEIGHT) + (rows + 1) * MARGIN
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(_FONT_SIZE)
    row = 0
    for number, (group, group_rows) in enumerate(zip(groups, rows_per_group, strict=True), start=1):
        spread = "no price spread" if group.spread is None else f"spread {group.spread:.2f}"
        for position, listing in enumerate(group.listings):
            index = (row + position // cols) * cols + position % cols
            origin = tile_origin(index, columns=cols, tile=tile)
            picture = _load_picture(listing.image, roots, tile) if listing.image else "no image in the catalogue"
            _draw_tile(sheet, draw, font, origin, tile, picture, sold_out=not listing.in_stock)
            price = "no price" if listing.price is None else f"{listing.price:.2f}"
            _draw_caption(
                draw,
                font,
                origin,
                tile,
                [(f"group {number} · {listing.sku}", _TEXT), (price, _TEXT), (listing.name or "", _MUTED)],
                right_of_second=spread if position == 0 else None,
            )
        row += group_rows
    return _save_png(sheet, Path(path))


def write_distance_histogram(
    results: Sequence[SearchResult],
    path: str | os.PathLike[str],
    *,
    bins: int = 10,
    size: tuple[int, int] = (640, 360),
) -> Path:
    """Write a PNG histogram of the results' cosine distances (how far the hits are from the query).

    The bins are ``bins`` (at most) equal intervals of a round width covering the distances; the image is
    ``size`` pixels. Written atomically like :func:`write_contact_sheet`.

    Raises:
        OutputError: the file cannot be written.
    """
    width, height = size
    if bins < 1 or width < 200 or height < 120:
        raise ValueError("need at least one bin and a 200x120 image")
    image = Image.new("RGB", size, _CARD)
    draw = ImageDraw.Draw(image)
    font = _font(_FONT_SIZE)
    left, right, top, bottom = 48, width - 16, 30, height - 40
    title = f"{len(results)} result{'s' if len(results) != 1 else ''} by cosine distance (smaller is closer)"
    draw.text((left, 8), title, font=font, fill=_TEXT)
    draw.text((8, 8), "n", font=font, fill=_MUTED)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_TEXT)
    if not any(r.distance is not None for r in results):
        draw.text((left + 10, (top + bottom) // 2), "no results", font=font, fill=_MUTED)
        return _save_png(image, Path(path))

    distances = [r.distance for r in results if r.distance is not None]  # words alone measure none
    start, step, counts = _histogram(distances, bins)
    peak = max(counts)
    bar_width = (right - left) / len(counts)
    for i, count in enumerate(counts):
        x0 = left + i * bar_width
        y0 = bottom - (bottom - top) * count / peak
        if count:
            draw.rectangle([x0 + 1, y0, x0 + bar_width - 1, bottom - 1], fill=_QUERY_BORDER)
    # Tick labels on every edge when there is room, every other one otherwise.
    every = 1 if len(counts) <= 8 else 2
    for i in range(0, len(counts) + 1, every):
        x = left + i * bar_width
        draw.line([(x, bottom), (x, bottom + 4)], fill=_TEXT)
        text = _tick(start + i * step)
        draw.text((x - draw.textlength(text, font=font) / 2, bottom + 6), text, font=font, fill=_TEXT)
    for value in sorted({0, peak // 2, peak}):
        y = bottom - (bottom - top) * value / peak
        draw.line([(left - 4, y), (left, y)], fill=_TEXT)
        text = str(value)
        draw.text((left - 8 - draw.textlength(text, font=font), y - 8), text, font=font, fill=_TEXT)
    axis = "cosine distance"
    draw.text(((left + right - draw.textlength(axis, font=font)) / 2, height - 18), axis, font=font, fill=_MUTED)
    return _save_png(image, Path(path))


def _histogram(values: Sequence[float], bins: int) -> tuple[float, float, list[int]]:
    """Bins of a round width (1, 2, 2.5 or 5 times a power of ten) covering ``values``: start, width, counts."""
    low, high = min(values), max(values)
    span = max(high - low, 1e-3)
    raw = span / bins
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    # The epsilons keep values that sit on an edge (0.3 / 0.1 = 2.9999...) in the bin that starts there.
    start = math.floor(low / step + 1e-9) * step
    count = max(1, math.ceil((high - start) / step - 1e-9))
    # The maximum may sit on the last edge; it belongs to the last bin rather than a new one.
    counts = [0] * count
    for v in values:
        counts[min(int((v - start) / step + 1e-9), count - 1)] += 1
    return start, step, counts


def _tick(value: float) -> str:
    """A bin edge with at least two and at most four decimals: 0.25, 0.30, 0.0125."""
    whole, _, fraction = f"{value:.4f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


# --- drawing --------------------------------------------------------------------------------------------------


@functools.cache
def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        # Pillow < 10.1 has only the fixed-size bitmap font; captions still fit, only smaller.
        return ImageFont.load_default()


def _draw_tile(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: _Font,
    origin: tuple[int, int],
    tile: int,
    picture: Image.Image | str,
    *,
    query: bool = False,
    sold_out: bool = False,
) -> None:
    """A white card with the picture fitted and centred, or a placeholder saying why there is none."""
    x, y = origin
    draw.rectangle([x, y, x + tile - 1, y + tile + CAPTION_HEIGHT - 1], fill=_CARD)
    if isinstance(picture, Image.Image):
        sheet.paste(picture, (x + (tile - picture.width) // 2, y + (tile - picture.height) // 2))
    else:
        draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=_PLACEHOLDER)
        lines = ["query image unavailable" if query else "image unavailable", picture]
        for i, text in enumerate(lines):
            line = _fit(draw, text, font, tile - 8)
            text_width = draw.textlength(line, font=font)
            draw.text(
                (x + (tile - text_width) / 2, y + tile / 2 - _LINE_HEIGHT + i * _LINE_HEIGHT),
                line,
                font=font,
                fill=_MUTED,
            )
    if sold_out:
        badge = "SOLD OUT"
        badge_width = int(draw.textlength(badge, font=font)) + 10
        draw.rectangle([x, y, x + badge_width, y + _LINE_HEIGHT + 2], fill=_SOLD_OUT)
        draw.text((x + 5, y + 2), badge, font=font, fill=_CARD)
    border = _QUERY_BORDER if query else _BORDER
    draw.rectangle([x, y, x + tile - 1, y + tile + CAPTION_HEIGHT - 1], outline=border, width=2 if query else 1)


def _draw_caption(
    draw: ImageDraw.ImageDraw,
    font: _Font,
    origin: tuple[int, int],
    tile: int,
    lines: Sequence[tuple[str, tuple[int, int, int]]],
    *,
    right_of_second: str | None = None,
) -> None:
    """Up to three lines under the picture, each cut with an ellipsis to fit; an optional right-aligned note."""
    x, y = origin
    padding = 6
    available = tile - 2 * padding
    top = y + tile + 3
    for i, (text, colour) in enumerate(lines[:3]):
        width = available
        if i == 1 and right_of_second:
            note_width = draw.textlength(right_of_second, font=font)
            draw.text((x + tile - padding - note_width, top + i * _LINE_HEIGHT), right_of_second, font=font, fill=_TEXT)
            width = int(available - note_width - 8)
        draw.text((x + padding, top + i * _LINE_HEIGHT), _fit(draw, text, font, width), font=font, fill=colour)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: _Font, width: float) -> str:
    """``text`` shortened with an ellipsis so that it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with the ellipsis
        mid = (low + high + 1) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= width:
            low = mid
        else:
            high = mid - 1
    return text[:low] + "…" if low else ""


# --- images ---------------------------------------------------------------------------------------------------


def _describe(source: SheetImage) -> str:
    if isinstance(source, bytes):
        return "stdin"
    return str(source).rstrip("/").rsplit("/", 1)[-1] if is_url(str(source)) else Path(source).name


def _resolve(source: str | os.PathLike[str], roots: Sequence[Path]) -> Path | None:
    """The existing file ``source`` names: as given (absolute or relative to the current directory), else
    relative to each of ``roots`` in turn."""
    path = Path(source).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for candidate in (path, *(root / path for root in roots)):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _fetcher() -> Fetcher:
    # Short waits: a contact sheet shows a placeholder rather than keep its user waiting for a slow CDN.
    return Fetcher(workers=4, timeout=5.0, retries=1)


def _load_picture(source: SheetImage, roots: Sequence[Path], tile: int) -> Image.Image | str:
    """The image fitted inside ``tile`` x ``tile`` (upright, on white), or the reason it cannot be shown."""
    if isinstance(source, bytes):
        fp: io.BytesIO | Path = io.BytesIO(source)
    elif isinstance(source, str) and is_url(source):
        fetched = _fetcher().fetch(source)
        if fetched.data is None:
            return "download failed"
        fp = io.BytesIO(fetched.data)
    else:
        found = _resolve(source, roots)
        if found is None:
            return "file not found"
        fp = found
    try:
        with Image.open(fp) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.width * im.height > limit:
                return "image too large"
            if im.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the tile: much faster for big photos.
                im.draft("RGB", (tile, tile))
            im.load()
            with contextlib.suppress(Exception):
                # A malformed EXIF block should not cost the picture: it is then shown as stored.
                im = ImageOps.exif_transpose(im)
            # The same conversion the featurizer sees: any mode to RGB, transparency composited on white.
            rgb = Image.fromarray(_to_rgb_array(im))
        return ImageOps.contain(rgb, (tile, tile), Image.Resampling.LANCZOS)
    except Exception:
        # Corrupt files make Pillow plugins fail with all sorts of exceptions; a sheet shows a placeholder.
        return "unreadable image"


def _save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as PNG to a temporary file beside ``path``, then rename it into place."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); a picture is meant to be opened by people and tools.
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return path
