"""Loading a catalogue (folder tree or CSV manifest) into the database, idempotently and in batches."""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imgsearch import catalogue
from imgsearch.catalogue import ProductRecord, UpsertCounts
from imgsearch.db import transaction
from imgsearch.errors import ImageError, ManifestError
from imgsearch.images import file_sha256, has_supported_extension

if TYPE_CHECKING:
    from imgsearch.embedding import Featurizer

Bind = Engine | Connection

MANIFEST_COLUMNS = ("sku", "name", "category", "price", "in_stock", "image")
REQUIRED_COLUMNS = ("sku", "category", "image")
MAX_PRICE = Decimal("9999999999.99")  # numeric(12, 2)
_TRUE = {"true", "t", "yes", "y", "1", "in", "in stock", "in_stock"}
_FALSE = {"false", "f", "no", "n", "0", "out", "out of stock", "out_of_stock", "sold out"}


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


def parse_bool(value: str) -> bool:
    """Read an in-stock flag as shops write them (true/false, yes/no, 1/0, in/out of stock)."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"in_stock must be true or false, got {value!r}")


def parse_price(value: str) -> Decimal | None:
    """Read a price: empty means unknown; otherwise a non-negative number with at most 2 decimals' meaning."""
    text = value.strip()
    if not text:
        return None
    try:
        price = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"price must be a number, got {value!r}") from None
    if not price.is_finite() or price < 0 or price > MAX_PRICE:
        raise ValueError(f"price must be between 0 and {MAX_PRICE}, got {value!r}")
    return price.quantize(Decimal("0.01"))


def scan_folder(root: Path | str) -> Iterator[CatalogueEntry | Failure]:
    """Products from a folder tree whose first-level folders are categories (``root/heels/123.jpg``).

    The SKU is the path below ``root`` without its extension (``heels/123``). Files in category folders that
    are not images by their extension, and images outside any category folder, are reported as failures.
    Hidden files, and other files at the top level (a README, a manifest, a licence note), are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"catalogue folder not found: {root}")
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        sku = relative.with_suffix("").as_posix()
        if len(relative.parts) < 2:
            if has_supported_extension(path):
                yield Failure(None, str(path), "not inside a category folder")
        elif not has_supported_extension(path):
            yield Failure(sku, str(path), f"not a supported image type ({path.suffix or 'no extension'})")
        else:
            yield CatalogueEntry(sku=sku, category=relative.parts[0], image=path, image_label=str(path))


def count_folder(root: Path | str) -> int:
    """How many entries :func:`scan_folder` will produce (for a progress bar)."""
    return sum(1 for _ in scan_folder(root))


def read_manifest(path: Path | str, warn: Callable[[str], None] | None = None) -> Iterator[CatalogueEntry | Failure]:
    """Products from a CSV manifest with columns ``sku,name,category,price,in_stock,image``.

    Image paths are relative to the CSV's folder, or absolute. ``name``, ``price`` and ``in_stock`` may be
    missing or empty (in stock by default). Unknown columns are ignored with a warning. A row with a missing
    SKU, category or image, a bad price or stock flag, or a SKU that appears more than once is a failure.

    Raises:
        ManifestError: the file cannot be read or lacks a required column.
    """
    path = Path(path)
    header, counts = _manifest_header_and_sku_counts(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    extra = [c for c in header if c not in MANIFEST_COLUMNS]
    if extra and warn:
        warn(f"{path}: ignoring unknown column{'s' if len(extra) > 1 else ''}: {', '.join(extra)}")
    base = path.resolve().parent
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            fields = {k.strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            sku = fields.get("sku", "")
            problem = None
            if not sku:
                problem = "missing sku"
            elif counts[sku] > 1:
                problem = f"duplicate sku (appears {counts[sku]} times in the manifest)"
            elif not fields.get("category"):
                problem = "missing category"
            elif not fields.get("image"):
                problem = "missing image"
            if problem:
                yield Failure(sku or None, where, problem)
                continue
            try:
                price = parse_price(fields.get("price", ""))
                in_stock = parse_bool(fields["in_stock"]) if fields.get("in_stock") else True
            except ValueError as exc:
                yield Failure(sku, where, str(exc))
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


def _open_csv(path: Path) -> TextIO:
    # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise end up in the first header.
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None


def _manifest_header_and_sku_counts(path: Path) -> tuple[list[str], Counter[str]]:
    try:
        with _open_csv(path) as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if not header:
                raise ManifestError(f"{path}: the manifest is empty (no header row)")
            sku_key = next((k for k in reader.fieldnames or [] if k.strip().lower() == "sku"), None)
            counts: Counter[str] = Counter()
            if sku_key is not None:
                for row in reader:
                    sku = (row.get(sku_key) or "").strip()
                    if sku:
                        counts[sku] += 1
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a readable CSV file: {exc}") from None
    return header, counts


def read_stock_csv(path: Path | str) -> dict[str, bool]:
    """Stock changes from a CSV with columns ``sku,in_stock`` (other columns ignored), for :func:`set_stock`.

    Raises:
        ManifestError: the file cannot be read, lacks a column, or has a bad flag, an empty or a repeated SKU.
    """
    path = Path(path)
    stock: dict[str, bool] = {}
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"sku", "in_stock"} <= {f.strip().lower() for f in reader.fieldnames}:
            raise ManifestError(f"{path}: needs columns sku,in_stock")
        for raw in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(k, str)}
            where = f"{path}:{reader.line_num}"
            try:
                flag = parse_bool(row["in_stock"])
            except ValueError as exc:
                raise ManifestError(f"{where}: {exc}") from None
            if not row["sku"]:
                raise ManifestError(f"{where}: missing sku")
            if row["sku"] in stock:
                raise ManifestError(f"{where}: duplicate sku {row['sku']}")
            stock[row["sku"]] = flag
    return stock


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
        records = _embed_batch(bind, batch, featurizer, report)
        if records:
            counts += catalogue.upsert_products(bind, records)
        done += len(batch)
        if progress:
            progress(Progress(done, total, report.embedded, time.perf_counter() - started))
    with transaction(bind) as conn:
        # Fresh statistics keep the planner (and the search function's count) right after a bulk load.
        conn.execute(sa.text("ANALYZE products"))
    report.added, report.updated, report.unchanged = counts.added, counts.updated, counts.unchanged
    report.seconds = time.perf_counter() - started
    return report


def _embed_batch(
    bind: Bind, batch: list[CatalogueEntry | Failure], featurizer: Featurizer, report: IngestReport
) -> list[ProductRecord]:
    hashed: list[tuple[CatalogueEntry, str]] = []
    for item in batch:
        if isinstance(item, Failure):
            report.failures.append(item)
            continue
        try:
            hashed.append((item, file_sha256(item.image)))
        except ImageError as exc:
            report.failures.append(Failure(item.sku, item.image_label, str(exc)))
    stored = catalogue.existing_hashes(bind, [entry.sku for entry, _ in hashed])
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
    """Write failures as CSV (``sku,source,reason``) for the catalogue team to fix and re-run."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "source", "reason"])
        for f in failures:
            writer.writerow([f.sku or "", f.source, f.reason])
