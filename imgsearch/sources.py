"""Catalogue sources: what a shop's folder of photos or CSV feed says its products are, before anything is read
from the photos. Every row or file that cannot be used becomes a :class:`Failure` naming where it is and why;
the rest goes on.

A product has one or more photos, each given as a file or an ``http(s)://`` URL:

- a folder tree ``<category>/<image>`` (one photo; the SKU is ``<category>/<file name without extension>``) or
  ``<category>/<sku>/<image>...`` (a folder of photos; the SKU is ``<category>/<folder>``);
- a CSV manifest with columns ``sku,name,category,price,in_stock`` and ``image`` and/or ``images`` (several
  references separated by ``|``), and optionally ``shop_product_id`` (the shop's own id of the product) and
  ``page_url`` (its page on the shop's site); every other column is an attribute of the product (brand, size...,
  :mod:`imgsearch.attributes`); rows repeating a SKU add photos, and must then agree on the other fields.

File photos are stored with their absolute path (or relative to the configured image root), so that a backend
or a contact sheet run from anywhere finds them; URLs are stored as given.
"""

from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from imgsearch.attributes import AttributeValue, attribute_columns, parse_cell
from imgsearch.errors import InvalidProductError, ManifestError
from imgsearch.fetch import is_url
from imgsearch.images import has_supported_extension
from imgsearch.tables import SKU_MAX_LENGTH
from imgsearch.validation import (
    check_description,
    check_product_fields,
    check_shop_fields,
    check_text,
    parse_bool,
    parse_price,
    text_problem,
)

MANIFEST_COLUMNS = (
    "sku",
    "name",
    "category",
    "price",
    "in_stock",
    "image",
    "images",
    "shop_product_id",
    "page_url",
    "description",
)
REQUIRED_COLUMNS = ("sku", "category")
#: Separator of the references in a manifest's ``images`` column.
IMAGES_SEPARATOR = "|"
#: Columns whose values are one line: a line break inside one means a quote was left open (the name may wrap).
_ONE_LINE_COLUMNS = frozenset(
    {"sku", "category", "price", "in_stock", "image", "images", "shop_product_id", "page_url"}
)
#: Product fields that every row of one SKU must repeat identically.
_PRODUCT_FIELDS = ("name", "category", "price", "in_stock", "shop_product_id", "page_url", "attributes", "description")


@dataclass(frozen=True)
class CatalogueEntry:
    """One product as a catalogue source describes it: its fields and where its photos are (absolute paths or
    URLs, main photo first), before any photo is read."""

    sku: str
    category: str
    images: tuple[str, ...]
    name: str | None = None
    price: Decimal | None = None
    in_stock: bool = True
    shop_product_id: str | None = None
    page_url: str | None = None
    #: The product's attributes (a manifest's extra columns); ``None`` when the source has none to say (a folder,
    #: a manifest without extra columns): the stored ones are kept.
    attributes: dict[str, AttributeValue] | None = None
    #: The product's description (a manifest's ``description`` column: an empty cell clears it; no column keeps it).
    description: str | None = None


@dataclass(frozen=True)
class Failure:
    """A product, row, photo or file that could not be ingested, where it is, and why."""

    sku: str | None
    source: str
    reason: str


def sku_label(sku: str) -> str:
    """A SKU as failures name it: cut if absurdly long, so one bad row cannot flood the report."""
    return sku if len(sku) <= 100 else sku[:97] + "..."


# --- folders ---------------------------------------------------------------------------------------------------


def scan_folder(root: Path | str) -> Iterator[CatalogueEntry | Failure]:
    """Products from a folder tree whose first-level folders are categories.

    ``root/heels/123.jpg`` is product ``heels/123`` with one photo; ``root/heels/123/front.jpg``,
    ``.../back.jpg`` is product ``heels/123`` with two (in file name order). Files that are not images by their
    extension, images outside any category folder or deeper than ``<category>/<sku>/``, and files that would
    give the same SKU (``a.jpg`` beside ``a.png``, or beside a folder ``a/``: which is the product?) are
    failures. Hidden files and folders, and other files at the top level (a README, a manifest, a licence
    note), are skipped. Symbolic links to folders are not followed (no loops).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"catalogue folder not found: {root}")
    root = root.resolve()
    photos: dict[str, list[Path]] = defaultdict(list)
    flat: dict[str, list[Path]] = defaultdict(list)
    for path in _walk_files(root):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if len(relative.parts) < 2:
            if has_supported_extension(path):
                yield Failure(None, str(path), "not inside a category folder")
            continue
        sku = (relative.parent if len(relative.parts) == 3 else relative.with_suffix("")).as_posix()
        if not has_supported_extension(path):
            yield Failure(sku, str(path), f"not a supported image type ({path.suffix or 'no extension'})")
        elif len(relative.parts) > 3:
            yield Failure(None, str(path), "too deep: expected <category>/<image> or <category>/<sku>/<image>")
        else:
            photos[sku].append(path)
            if len(relative.parts) == 2:
                flat[sku].append(path)
    for sku in sorted(photos):
        files = sorted(photos[sku])
        if flat[sku] and len(files) > 1:
            names = ", ".join(p.relative_to(root / sku.split("/")[0]).as_posix() for p in files)
            for path in files:
                yield Failure(sku, str(path), f"{len(files)} files give this SKU ({names})")
            continue
        category = sku.split("/")[0]
        try:
            check_product_fields(sku, category)
        except InvalidProductError as exc:
            yield Failure(sku_label(sku), str(files[0]), str(exc))
            continue
        yield CatalogueEntry(sku=sku, category=category, images=tuple(str(p) for p in files))


def _walk_files(root: Path) -> list[Path]:
    """Every non-directory entry below ``root``, sorted; symbolic links to directories are not entered."""
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in names:
            files.append(Path(folder) / name)
    return sorted(files)


def count_folder(root: Path | str) -> int:
    """How many entries :func:`scan_folder` will produce (for a progress bar)."""
    return sum(1 for _ in scan_folder(root))


# --- manifests -------------------------------------------------------------------------------------------------


def read_manifest(
    path: Path | str, warn: Callable[[str], None] | None = None, ignore_columns: Iterable[str] = ()
) -> Iterator[CatalogueEntry | Failure]:
    """Products from a CSV manifest (see the module's description of the columns).

    Image paths are relative to the CSV's folder, or absolute; URLs are kept as given. ``name``, ``price`` and
    ``in_stock`` may be missing or empty (in stock by default). Every other column is an attribute: a product's
    attributes are its non-empty cells of them (so an emptied cell removes that attribute on the next ingest);
    column names are read in lower case, and a column that cannot name one (empty, longer than 64 characters) is
    left out with a ``warn``-ing; so are ``ignore_columns`` (silently: they are not attributes, by choice).
    Every row that cannot be used is a failure naming its line and what is wrong, and the other rows go on:
    a missing SKU, category or image, a bad price or stock flag, a row whose product fields differ from the
    SKU's first row, a photo given twice, a field that is too long, not valid UTF-8 or holds a NUL, a row with
    more fields than the header, or a quote left open (which would otherwise swallow the following rows).
    A product is yielded after its last row.

    Raises:
        ManifestError: the file cannot be read at all, lacks a required column, or has a column that cannot name
            an attribute (or more than 100 of them).
    """
    path = Path(path)
    header = _csv_header(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if "image" not in header and "images" not in header:
        missing.append("image (or images)")
    if missing:
        raise ManifestError(f"{path}: missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    try:
        known = (*MANIFEST_COLUMNS, *(c.strip().lower() for c in ignore_columns))
        attributes, unusable = attribute_columns(header, known)
    except ValueError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if unusable and warn:
        names = ", ".join(repr(name[:40]) for name in unusable)
        warn(f"{path}: ignoring column{'s' if len(unusable) > 1 else ''} that cannot name an attribute: {names}")
    last_row: dict[str, int] = {}
    for number, row in enumerate(_csv_rows(path, header)):
        if isinstance(row, _CsvRow) and row.fields.get("sku"):
            last_row[row.fields["sku"]] = number
    base = path.resolve().parent
    open_products: dict[str, _Building] = {}
    for number, row in enumerate(_csv_rows(path, header)):
        if isinstance(row, Failure):
            yield row
            continue
        sku = row.fields.get("sku", "")
        building = open_products.get(sku)
        try:
            fields = _product_fields(row.fields, attributes or None)
            images = _references(row.fields, base)
            if building is None:
                building = open_products[sku] = _Building(fields, row.where)
            else:
                building.agree(fields)
            building.add(images)
        except ValueError as exc:
            yield Failure(sku_label(sku) or None, row.where, str(exc))
        if sku and last_row.get(sku) == number and sku in open_products:
            done = open_products.pop(sku)
            if done.images:
                yield done.entry(sku)


@dataclass
class _Building:
    """A product whose manifest rows are being read: the first row's fields and place, the photos so far."""

    fields: dict[str, object]
    first: str
    images: list[str] = field(default_factory=list)

    def agree(self, fields: dict[str, object]) -> None:
        """Raise ValueError unless a later row repeats the first row's product fields."""
        for name in _PRODUCT_FIELDS:
            if fields[name] != self.fields[name]:
                raise ValueError(
                    f"the rows of this SKU disagree: {name} {fields[name]!s:.40} here, {self.fields[name]!s:.40} "
                    f"at {self.first}"
                )

    def add(self, images: list[str]) -> None:
        """Add a row's photos; a photo the SKU already has is an error."""
        repeated = [image for image in images if image in self.images]
        if repeated:
            raise ValueError(f"image given twice for this SKU: {repeated[0]}")
        self.images += images

    def entry(self, sku: str) -> CatalogueEntry:
        return CatalogueEntry(sku=sku, images=tuple(self.images), **self.fields)  # type: ignore[arg-type]


def _product_fields(row: dict[str, str], attributes: list[str] | None = None) -> dict[str, object]:
    """The product's own fields of a manifest row, checked, with its ``attributes`` columns' non-empty cells
    (``None``: the manifest has no such columns); ValueError says what is wrong."""
    for column in REQUIRED_COLUMNS:
        if not row.get(column):
            raise ValueError(f"missing {column}")
    check_product_fields(row["sku"], row["category"], row.get("name") or None)
    shop_product_id, page_url = check_shop_fields(row.get("shop_product_id"), row.get("page_url"))
    return {
        "category": row["category"],
        "name": row.get("name") or None,
        "price": parse_price(row.get("price", "")),
        "in_stock": parse_bool(row["in_stock"]) if row.get("in_stock") else True,
        "shop_product_id": shop_product_id,
        "page_url": page_url,
        "attributes": None if attributes is None else _attributes(row, attributes),
        "description": check_description(row["description"]) if "description" in row else None,
    }


def _attributes(row: dict[str, str], columns: list[str]) -> dict[str, AttributeValue]:
    values = {}
    for column in columns:
        value = parse_cell(row.get(column, ""), column)
        if value is not None:
            values[column] = value
    return values


def _references(row: dict[str, str], base: Path) -> list[str]:
    """The photo references of a manifest row: URLs as given, file paths made absolute (relative to ``base``)."""
    given = [row["image"]] if row.get("image") else []
    given += [part.strip() for part in row.get("images", "").split(IMAGES_SEPARATOR) if part.strip()]
    if not given:
        raise ValueError("missing image")
    references = []
    for reference in given:
        check_text(reference, "image", 4096, required=True)
        if is_url(reference):
            references.append(reference)
        elif "://" in reference:
            raise ValueError(f"image must be a file path or an http(s):// URL, got {reference[:60]!r}")
        else:
            image = Path(reference).expanduser()
            references.append(str(image if image.is_absolute() else (base / image).resolve()))
    return references


@dataclass(frozen=True)
class LabelledQuery:
    """One shopper's photo of an evaluation (``imgsearch eval --queries``): the photo, the SKU of the catalogue
    product it shows, and an optional kind for reporting by group (e.g. ``printed``, ``packaged``)."""

    image: str
    sku: str
    kind: str
    where: str


#: Columns of a street-to-shop query file: ``image`` (a path relative to the file's folder, or absolute) and
#: ``sku`` (the product the photo shows) are required; ``kind`` is optional.
QUERY_COLUMNS = ("image", "sku", "kind")


def read_queries(path: Path | str) -> Iterator[LabelledQuery | Failure]:
    """Labelled query photos from a CSV file with the columns of :data:`QUERY_COLUMNS`; unusable rows are
    failures naming their line, the others go on.

    Raises:
        ManifestError: the file cannot be read at all or lacks a required column.
    """
    path = Path(path)
    header = _csv_header(path)
    missing = [c for c in ("image", "sku") if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    base = path.resolve().parent
    for row in _csv_rows(path, header):
        if isinstance(row, Failure):
            yield row
            continue
        image, sku, kind = (row.fields.get(c, "").strip() for c in QUERY_COLUMNS)
        if not sku or not image:
            yield Failure(sku_label(sku) or None, row.where, "a query needs an image and the sku it shows")
        elif "\x00" in sku + image + kind:
            yield Failure(None, row.where, "a field holds a NUL character")
        else:
            yield LabelledQuery(image if is_url(image) else str(base / image), sku, kind or "all", row.where)


@dataclass(frozen=True)
class _CsvRow:
    """One data row of a CSV file: its fields by lower-case column name, and where it is (``file:line``)."""

    fields: dict[str, str]
    where: str


def _open_csv(path: Path) -> TextIO:
    # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise end up in the first header.
    # surrogateescape: a row with bytes that are not UTF-8 is reported on its own instead of ending the file.
    try:
        return path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None


#: The longest line a CSV file may have (characters): a product's row is a few hundred; an endless one (a device,
#: a binary file) is refused at this length instead of being read into memory whole.
MAX_LINE_CHARS = 1 << 20


def _lines(fh: TextIO, path: Path) -> Iterator[str]:
    """The lines of ``fh`` for the csv module, each at most :data:`MAX_LINE_CHARS` long."""
    number = 0
    while line := fh.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise ManifestError(
                f"{path}: line {number} is longer than {MAX_LINE_CHARS} characters: not a CSV file of products"
            )
        yield line


def _csv_header(path: Path) -> list[str]:
    """The lower-case column names, or :class:`ManifestError` if there is no usable header row."""
    with _open_csv(path) as fh:
        try:
            first = next(csv.reader(_lines(fh, path)), None)
        except csv.Error as exc:
            raise ManifestError(f"{path}: not a readable CSV file: {exc}") from None
    header = [h.strip().lower() for h in first or []]
    if not any(header):
        raise ManifestError(f"{path}: the file is empty (no header row)")
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        # Which of two "sku" columns is the SKU? Refused rather than guessed.
        raise ManifestError(f"{path}: the header names a column twice: {', '.join(repeated)}")
    if any(text_problem(h) for h in header):
        raise ManifestError(f"{path}: the header row is not valid UTF-8 text")
    return header


def _csv_rows(path: Path, header: list[str]) -> Iterator[_CsvRow | Failure]:
    """The data rows of a CSV file, each a :class:`_CsvRow` or, when unusable as CSV, a :class:`Failure`."""
    with _open_csv(path) as fh:
        reader = csv.reader(_lines(fh, path))
        previous_end = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Failure(None, f"{path}:{reader.line_num}", f"unreadable CSV row: {exc}")
                previous_end = reader.line_num
                continue
            start, end = previous_end + 1, reader.line_num
            previous_end = end
            where = f"{path}:{start}" if start == end else f"{path}:{start}-{end}"
            if previous_end == 1 or not any(v.strip() for v in values):
                continue  # the header, or a blank line
            sku = values[header.index("sku")].strip() if "sku" in header and len(values) > header.index("sku") else ""
            if len(values) > len(header):
                yield Failure(
                    sku_label(sku) or None,
                    where,
                    f"{len(values)} fields but the header has {len(header)} (an unquoted comma?)",
                )
                continue
            fields = {name: value.strip() for name, value in zip(header, values, strict=False)}
            broken = [name for name in _ONE_LINE_COLUMNS if len(fields.get(name, "").splitlines()) > 1]
            if end > start and len(values) < len(header):
                # A quoted field may hold line breaks (a long name), but a row that lost its last fields in the
                # process swallowed the rows after an unclosed quote.
                yield Failure(
                    sku_label(sku.splitlines()[0] if sku else "") or None,
                    where,
                    f"the row runs over lines {start}-{end} and its fields do not fit: a quote is left open",
                )
                continue
            if broken:
                # A complete row, correctly quoted, but a field that must be one line holds a line break.
                yield Failure(
                    sku_label(sku.splitlines()[0] if sku else "") or None,
                    where,
                    f"{' and '.join(sorted(broken))} contains a line break (only a name may run over lines)",
                )
                continue
            yield _CsvRow(fields, where)


@dataclass(frozen=True)
class StockUpdates:
    """A stock-and-price file read: the flags and prices to apply (``sku -> in stock``, ``sku -> price``; a price
    of ``None`` means "no price") and the rows that could not be used."""

    stock: dict[str, bool]
    prices: dict[str, Decimal | None]
    failures: list[Failure]


def read_stock_csv(path: Path | str) -> StockUpdates:
    """Stock and price changes from a CSV with a ``sku`` column and ``in_stock``, ``price`` or both (other columns
    ignored), as a shop's stock system exports them, for :func:`imgsearch.catalogue.update_offers`.

    Unusable rows (a bad flag or price, an empty, repeated, too long or non-UTF-8 SKU, a NUL, an open quote) are
    failures; the other rows are read. A SKU given twice is a failure on both rows: which value is meant? An
    empty ``in_stock`` leaves the flag as it is; an empty ``price`` leaves the price (``none`` removes it).

    Raises:
        ManifestError: the file cannot be read or lacks the columns.
    """
    path = Path(path)
    header = _csv_header(path)
    if "sku" not in header or not ({"in_stock", "price"} & set(header)):
        raise ManifestError(f"{path}: needs a sku column and in_stock, price or both")
    rows: list[tuple[str, bool | None, tuple[Decimal | None] | None, str]] = []
    failures: list[Failure] = []
    for row in _csv_rows(path, header):
        if isinstance(row, Failure):
            failures.append(row)
            continue
        sku = row.fields.get("sku", "")
        try:
            check_text(sku, "sku", SKU_MAX_LENGTH, required=True)
            flag_text, price_text = row.fields.get("in_stock", ""), row.fields.get("price", "")
            flag = parse_bool(flag_text) if flag_text else None
            price = (None,) if price_text.lower() == "none" else (parse_price(price_text),) if price_text else None
            if flag is None and price is None:
                raise ValueError("nothing to change: in_stock and price are empty")
            rows.append((sku, flag, price, row.where))
        except ValueError as exc:
            failures.append(Failure(sku_label(sku) or None, row.where, str(exc)))
    counts = Counter(sku for sku, _, _, _ in rows)
    stock: dict[str, bool] = {}
    prices: dict[str, Decimal | None] = {}
    for sku, flag, price, where in rows:
        if counts[sku] > 1:
            failures.append(Failure(sku, where, f"duplicate sku (appears {counts[sku]} times in the file)"))
            continue
        if flag is not None:
            stock[sku] = flag
        if price is not None:
            prices[sku] = price[0]
    return StockUpdates(stock, prices, failures)
