"""Loading a catalogue (folder tree or CSV manifest) into the database, idempotently and in batches."""

from __future__ import annotations

import csv
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imgsearch import catalogue
from imgsearch.catalogue import ProductRecord, UpsertCounts
from imgsearch.db import transaction
from imgsearch.errors import ImageError, ImgsearchError, InvalidProductError, ManifestError
from imgsearch.images import file_sha256, has_supported_extension
from imgsearch.models import SKU_MAX_LENGTH
from imgsearch.validation import check_product_fields, check_text, parse_bool, parse_price

if TYPE_CHECKING:
    from imgsearch.embedding import Featurizer

Bind = Engine | Connection

MANIFEST_COLUMNS = ("sku", "name", "category", "price", "in_stock", "image")
REQUIRED_COLUMNS = ("sku", "category", "image")
STOCK_COLUMNS = ("sku", "in_stock")
#: Columns whose values are one line: a line break inside one means a quote was left open (the name may wrap).
_ONE_LINE_COLUMNS = frozenset({"sku", "category", "price", "in_stock", "image"})


@dataclass(frozen=True)
class CatalogueEntry:
    """One product as a catalogue source describes it, before its image is read."""

    sku: str
    category: str
    image: Path
    image_label: str
    name: str | None = None
    price: Decimal | None = None
    in_stock: bool = True


@dataclass(frozen=True)
class Failure:
    """A product or file that could not be ingested, and why."""

    sku: str | None
    source: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    embedded: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        """How many products or files could not be ingested."""
        return len(self.failures)


@dataclass(frozen=True)
class Progress:
    """Sent after each committed batch: products handled so far out of ``total`` (``None`` if unknown)."""

    done: int
    total: int | None
    embedded: int
    seconds: float


def scan_folder(root: Path | str) -> Iterator[CatalogueEntry | Failure]:
    """Products from a folder tree whose first-level folders are categories (``root/heels/123.jpg``).

    The SKU is the path below ``root`` without its extension (``heels/123``). Files in category folders that
    are not images by their extension, images outside any category folder, and files that would give the same
    SKU (``a.jpg`` beside ``a.png``: which one is the product's photo?) are reported as failures. Hidden files,
    and other files at the top level (a README, a manifest, a licence note), are skipped. Symbolic links to
    folders are not followed (no loops).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"catalogue folder not found: {root}")
    found: list[tuple[Path, str]] = []
    for path in _walk_files(root):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        sku = relative.with_suffix("").as_posix()
        if len(relative.parts) < 2:
            if has_supported_extension(path):
                yield Failure(None, str(path), "not inside a category folder")
        elif not has_supported_extension(path):
            yield Failure(sku, str(path), f"not a supported image type ({path.suffix or 'no extension'})")
        else:
            found.append((path, sku))
    files_by_sku: dict[str, list[str]] = defaultdict(list)
    for path, sku in found:
        files_by_sku[sku].append(path.name)
    for path, sku in found:
        if len(names := files_by_sku[sku]) > 1:
            yield Failure(sku, str(path), f"{len(names)} files give this SKU ({', '.join(names)})")
            continue
        category = path.relative_to(root).parts[0]
        try:
            check_product_fields(sku, category, image=str(path))
        except InvalidProductError as exc:
            yield Failure(_sku_label(sku), str(path), str(exc))
            continue
        yield CatalogueEntry(sku=sku, category=category, image=path, image_label=str(path))


def _walk_files(root: Path) -> list[Path]:
    """Every non-directory entry below ``root``, sorted; symbolic links to directories are not entered."""
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in names:
            files.append(Path(folder) / name)
    return sorted(files)


def _sku_label(sku: str) -> str:
    """A SKU as failures name it: cut if absurdly long, so one bad row cannot flood the report."""
    return sku if len(sku) <= 100 else sku[:97] + "..."


def count_folder(root: Path | str) -> int:
    """How many entries :func:`scan_folder` will produce (for a progress bar)."""
    return sum(1 for _ in scan_folder(root))


def read_manifest(path: Path | str, warn: Callable[[str], None] | None = None) -> Iterator[CatalogueEntry | Failure]:
    """Products from a CSV manifest with columns ``sku,name,category,price,in_stock,image``.

    Image paths are relative to the CSV's folder, or absolute. ``name``, ``price`` and ``in_stock`` may be
    missing or empty (in stock by default). Unknown columns are ignored with a warning. Every row that cannot
    be used is a failure naming its line and what is wrong, and the other rows go on: a missing SKU, category
    or image, a bad price or stock flag, a SKU that appears more than once, a field that is too long, not
    valid UTF-8 or holds a NUL character, a row with more fields than the header, or a quote left open (which
    would otherwise swallow the following rows).

    Raises:
        ManifestError: the file cannot be read at all or lacks a required column.
    """
    path = Path(path)
    header = _csv_header(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    extra = [c for c in header if c not in MANIFEST_COLUMNS]
    if extra and warn:
        warn(f"{path}: ignoring unknown column{'s' if len(extra) > 1 else ''}: {', '.join(extra)}")
    counts: Counter[str] = Counter(
        row.fields.get("sku", "") for row in _csv_rows(path, header) if isinstance(row, _CsvRow)
    )
    base = path.resolve().parent
    for row in _csv_rows(path, header):
        if isinstance(row, Failure):
            yield row
            continue
        fields = row.fields
        sku = fields.get("sku", "")
        try:
            if counts[sku] > 1 and sku:
                raise ValueError(f"duplicate sku (appears {counts[sku]} times in the manifest)")
            for column in REQUIRED_COLUMNS:
                if not fields.get(column):
                    raise ValueError(f"missing {column}")
            check_product_fields(sku, fields["category"], fields.get("name") or None, fields["image"])
            price = parse_price(fields.get("price", ""))
            in_stock = parse_bool(fields["in_stock"]) if fields.get("in_stock") else True
        except ValueError as exc:
            yield Failure(_sku_label(sku) or None, row.where, str(exc))
            continue
        image = Path(fields["image"]).expanduser()
        yield CatalogueEntry(
            sku=sku,
            category=fields["category"],
            image=image if image.is_absolute() else base / image,
            image_label=fields["image"],
            name=fields.get("name") or None,
            price=price,
            in_stock=in_stock,
        )


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


def _csv_header(path: Path) -> list[str]:
    """The lower-case column names, or :class:`ManifestError` if there is no usable header row."""
    with _open_csv(path) as fh:
        try:
            first = next(csv.reader(fh), None)
        except csv.Error as exc:
            raise ManifestError(f"{path}: not a readable CSV file: {exc}") from None
    header = [h.strip().lower() for h in first or []]
    if not any(header):
        raise ManifestError(f"{path}: the file is empty (no header row)")
    bad = [h for h in header if "\x00" in h or any("\udc80" <= ch <= "\udcff" for ch in h)]
    if bad:
        raise ManifestError(f"{path}: the header row is not valid UTF-8 text")
    return header


def _csv_rows(path: Path, header: list[str]) -> Iterator[_CsvRow | Failure]:
    """The data rows of a CSV file, each a :class:`_CsvRow` or, when unusable as CSV, a :class:`Failure`."""
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
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
                    _sku_label(sku) or None,
                    where,
                    f"{len(values)} fields but the header has {len(header)} (an unquoted comma?)",
                )
                continue
            fields = {name: value.strip() for name, value in zip(header, values, strict=False)}
            broken = [name for name in _ONE_LINE_COLUMNS if len(fields.get(name, "").splitlines()) > 1]
            if end > start and (broken or len(values) < len(header)):
                # A quoted field may hold line breaks (a long name), but a row whose one-line fields do, or that
                # lost its last fields in the process, swallowed the rows after an unclosed quote.
                yield Failure(
                    _sku_label(sku.splitlines()[0] if sku else "") or None,
                    where,
                    f"the row runs over lines {start}-{end} and its fields do not fit: a quote is left open",
                )
                continue
            yield _CsvRow(fields, where)


@dataclass(frozen=True)
class StockUpdates:
    """A stock file read: the changes to apply (``sku -> in stock``) and the rows that could not be used."""

    changes: dict[str, bool]
    failures: list[Failure]


def read_stock_csv(path: Path | str) -> StockUpdates:
    """Stock changes from a CSV with columns ``sku,in_stock`` (other columns ignored), for :func:`set_stock`.

    Unusable rows (a bad flag, an empty, repeated, too long or non-UTF-8 SKU, a NUL, an open quote) are
    failures; the other rows are read. A SKU given twice is a failure on both rows: which flag is meant?

    Raises:
        ManifestError: the file cannot be read or lacks a column.
    """
    path = Path(path)
    header = _csv_header(path)
    if not set(STOCK_COLUMNS) <= set(header):
        raise ManifestError(f"{path}: needs columns {','.join(STOCK_COLUMNS)}")
    rows: list[tuple[str, bool, str]] = []
    failures: list[Failure] = []
    for row in _csv_rows(path, header):
        if isinstance(row, Failure):
            failures.append(row)
            continue
        sku = row.fields.get("sku", "")
        try:
            check_text(sku, "sku", SKU_MAX_LENGTH, required=True)
            rows.append((sku, parse_bool(row.fields.get("in_stock", "")), row.where))
        except ValueError as exc:
            failures.append(Failure(_sku_label(sku) or None, row.where, str(exc)))
    counts = Counter(sku for sku, _, _ in rows)
    changes = {}
    for sku, flag, where in rows:
        if counts[sku] > 1:
            failures.append(Failure(sku, where, f"duplicate sku (appears {counts[sku]} times in the file)"))
        else:
            changes[sku] = flag
    return StockUpdates(changes, failures)


def _batches(items: Iterable[CatalogueEntry | Failure], size: int) -> Iterator[list[CatalogueEntry | Failure]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def ingest(
    bind: Bind,
    entries: Iterable[CatalogueEntry | Failure],
    featurizer: Featurizer,
    *,
    total: int | None = None,
    commit_every: int = 256,
    progress: Callable[[Progress], None] | None = None,
) -> IngestReport:
    """Upsert products by SKU, embedding only images that are new or changed.

    Each batch of ``commit_every`` entries is committed on its own, so an interrupted run loses at most the
    batch in flight and the next run resumes: images whose content (SHA-256) is unchanged are not embedded
    again, changed metadata is updated, changed images are re-embedded. Bad entries and images never stop
    the run; they are returned in :attr:`IngestReport.failures`.

    Raises:
        EmbeddingSpaceMismatchError: the catalogue holds vectors from another model or preprocessing.
    """
    started = time.perf_counter()
    catalogue.ensure_space(bind, featurizer.space)
    report = IngestReport()
    counts = UpsertCounts()
    done = 0
    for batch in _batches(entries, commit_every):
        stored = _store(bind, _embed_batch(bind, batch, featurizer, report), report)
        if stored.vanished:
            # Removed by someone else since we read their hashes: their vectors must be computed again.
            gone = set(stored.vanished)
            again = [e for e in batch if isinstance(e, CatalogueEntry) and e.sku in gone]
            stored = replace(stored, vanished=()) + _store(
                bind, _embed_batch(bind, again, featurizer, report, force=True), report
            )
        counts += stored
        done += len(batch)
        if progress:
            progress(Progress(done, total, report.embedded, time.perf_counter() - started))
    try:
        with transaction(bind) as conn:
            # Fresh statistics keep the planner (and the search function's count) right after a bulk load.
            conn.execute(sa.text("ANALYZE products"))
    except (ImgsearchError, sa.exc.DBAPIError):
        pass  # everything is committed; autovacuum analyzes the table soon anyway
    report.added, report.updated, report.unchanged = counts.added, counts.updated, counts.unchanged
    report.seconds = time.perf_counter() - started
    return report


def _store(bind: Bind, records: list[ProductRecord], report: IngestReport) -> UpsertCounts:
    """Upsert ``records``; rows the database refuses become failures and every other row is stored.

    A refused batch is split in halves until the refused rows are alone (a few extra round trips per bad row).
    """
    if not records:
        return UpsertCounts()
    try:
        return catalogue.upsert_products(bind, records)
    except InvalidProductError as exc:
        if len(records) == 1:
            record = records[0]
            reason = str(exc).removeprefix(f"{record.sku}: ")
            report.failures.append(Failure(_sku_label(record.sku), record.image or "", reason))
            return UpsertCounts()
        half = len(records) // 2
        return _store(bind, records[:half], report) + _store(bind, records[half:], report)


def _embed_batch(
    bind: Bind,
    batch: list[CatalogueEntry | Failure],
    featurizer: Featurizer,
    report: IngestReport,
    *,
    force: bool = False,
) -> list[ProductRecord]:
    """Hash the batch's images, embed the new and changed ones (all of them with ``force``), make records."""
    hashed: list[tuple[CatalogueEntry, str]] = []
    for item in batch:
        if isinstance(item, Failure):
            report.failures.append(item)
            continue
        try:
            hashed.append((item, file_sha256(item.image)))
        except ImageError as exc:
            report.failures.append(Failure(item.sku, item.image_label, str(exc)))
    stored = {} if force else catalogue.existing_hashes(bind, [entry.sku for entry, _ in hashed])
    to_embed = [(entry, sha) for entry, sha in hashed if stored.get(entry.sku, "") != sha]
    vectors = {}
    for (entry, _), result in zip(to_embed, featurizer.embed_files([e.image for e, _ in to_embed]), strict=True):
        if result.error is not None:
            report.failures.append(Failure(entry.sku, entry.image_label, result.error))
        else:
            vectors[entry.sku] = result.vector
            report.embedded += 1
    records = []
    for entry, sha in hashed:
        if entry.sku not in stored and entry.sku not in vectors:
            continue  # a new product whose image failed: already reported
        if entry.sku in stored and stored[entry.sku] != sha and entry.sku not in vectors:
            continue  # a changed image that failed: keep the stored product as it was
        records.append(
            ProductRecord(
                sku=entry.sku,
                category=entry.category,
                embedding=vectors.get(entry.sku),
                name=entry.name,
                price=entry.price,
                in_stock=entry.in_stock,
                image=entry.image_label,
                image_sha256=sha,
            )
        )
    return records


def write_failures(failures: Iterable[Failure], path: Path | str) -> None:
    """Write failures as CSV (``sku,source,reason``) for the catalogue team to fix and re-run.

    Bytes of the input that were not UTF-8 are written as ``\\xNN`` escapes, so the report itself is UTF-8.
    """
    with Path(path).open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "source", "reason"])
        for f in failures:
            writer.writerow([f.sku or "", f.source, f.reason])
