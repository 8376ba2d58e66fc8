"""Loading a catalogue (folder tree or CSV manifest, photos as files or URLs) into the database, idempotently and
in batches, and making the catalogue equal to a full feed (prune).

Each batch of products goes through three steps: *prepare* (read the stored photos' hashes, hash the files,
download the URLs, asking the server whether the photo changed since the last run), *embed* (VGG16, only the
photos that are new or changed), and *store* (one transaction). Preparing the next batch runs in a thread while
the network works on the current one, so downloads and file reads overlap the model.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imgsearch import catalogue, local_features, visual_words
from imgsearch.catalogue import (
    PRUNE_MODES,
    ImageRecord,
    ProductRecord,
    PruneResult,
    SpaceLike,
    StoredPhoto,
    UpsertCounts,
)
from imgsearch.colour import colour_signature
from imgsearch.db import transaction
from imgsearch.errors import ImageError, ImgsearchError, InvalidProductError, InvalidQueryError
from imgsearch.fetch import Fetched, Fetcher, Validators, is_url
from imgsearch.images import file_sha256
from imgsearch.local_features import LocalFeatures
from imgsearch.sources import (
    CatalogueEntry,
    Failure,
    StockUpdates,
    count_folder,
    read_manifest,
    read_stock_csv,
    scan_folder,
    sku_label,
)

if TYPE_CHECKING:
    from imgsearch.embedding import EmbedResult, Featurizer
    from imgsearch.scan_index import ScanIndex

__all__ = [
    "PRUNE_MODES",
    "CatalogueEntry",
    "Failure",
    "IngestReport",
    "Progress",
    "PruneResult",
    "StockUpdates",
    "count_folder",
    "ingest",
    "prune",
    "read_manifest",
    "read_stock_csv",
    "scan_folder",
    "stored_reference",
    "write_failures",
]

Bind = Engine | Connection

#: Largest share of the catalogue a full sync may remove (or mark sold out) without ``force``.
DEFAULT_MAX_PRUNE_SHARE = 0.2


@dataclass
class IngestReport:
    """What an ingest did. Counts are products, except ``embedded`` and ``photos_pruned`` (photos)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    embedded: int = 0
    photos_pruned: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    pruned: PruneResult | None = None
    #: The visual vocabulary learnt at the end of the run (the first one, or again after much growth), if any.
    vocabulary: visual_words.BuildResult | None = None
    #: The photos' IVF index built at the end of the run (the first one, or again after much growth), if any.
    scan_index: ScanIndex | None = None

    @property
    def failed(self) -> int:
        """How many products, rows, photos or files could not be ingested."""
        return len(self.failures)


@dataclass(frozen=True)
class Progress:
    """Sent after each photo embedded and each committed batch: products (``done`` of ``total``) and photos
    (``photos`` of ``total_photos``) handled so far, whether embedded, unchanged or failed (``None``: not known);
    ``done`` and ``photos`` never pass their totals."""

    done: int
    total: int | None
    embedded: int
    seconds: float
    photos: int = 0
    total_photos: int | None = None


def stored_reference(image: str, image_root: Path | None) -> str:
    """How a photo's location is stored: a URL as given, a file as its absolute path, or relative to the image
    root when it lies inside it (a backend then prefixes the root's URL to show it)."""
    if is_url(image) or image_root is None:
        return image
    try:
        return Path(image).relative_to(image_root.resolve()).as_posix()
    except ValueError:
        return image


@dataclass
class _Photo:
    """One photo of a batch on its way: where it is, what the catalogue has of it, what it is now."""

    location: str  # absolute path or URL
    reference: str  # as stored
    stored: StoredPhoto | None
    sha256: str | None = None
    validators: Validators = field(default_factory=Validators)
    data: bytes | None = None  # a downloaded photo's bytes
    changed: bool = True
    error: str | None = None

    def source(self) -> Any:
        """What the decoder reads: the file, or the downloaded bytes named by their URL (for error messages)."""
        if self.data is None:
            return self.location
        stream = io.BytesIO(self.data)
        stream.name = self.location  # type: ignore[attr-defined]
        return stream


@dataclass
class _Batch:
    """A batch of entries with their photos prepared, and the failures met so far."""

    items: list[CatalogueEntry | Failure]
    photos: dict[str, list[_Photo]]


def ingest(
    bind: Bind,
    entries: Iterable[CatalogueEntry | Failure],
    featurizer: Featurizer,
    *,
    total: int | None = None,
    total_photos: int | None = None,
    commit_every: int = 256,
    progress: Callable[[Progress], None] | None = None,
    prune_images: bool = False,
    image_root: Path | str | None = None,
    fetcher: Fetcher | None = None,
    embedder: Embedder | None = None,
) -> IngestReport:
    """Upsert products by SKU with their photos, embedding only photos that are new or changed.

    Each batch of ``commit_every`` entries is committed on its own, so an interrupted run loses at most the
    batch in flight and the next run resumes: photos whose content (SHA-256) is unchanged are not embedded
    again (for URLs, the server is asked first with the stored ETag / Last-Modified, and an unchanged photo is
    not even downloaded), changed metadata is updated, changed photos are re-embedded. Photos no longer listed
    are kept unless ``prune_images``. Bad entries, photos and downloads never stop the run; they are returned in
    :attr:`IngestReport.failures`. A product is written with the photos that could be read; a new product none
    of whose photos could be read is not written. ``embedder`` computes the vectors instead of ``featurizer``
    (:class:`imgsearch.distributed.RayEmbedder`: the same vectors, on a cluster).

    Raises:
        EmbeddingSpaceMismatchError: the catalogue holds vectors from another model or preprocessing.
    """
    started = time.perf_counter()
    catalogue.ensure_space(bind, featurizer.space)
    root = Path(image_root) if image_root is not None else None
    report = IngestReport()
    counts = UpsertCounts()
    done = photos = 0

    def tell(extra_photos: int = 0) -> None:
        if progress:
            seen = photos + extra_photos
            progress(
                Progress(
                    min(done, total) if total is not None else done,
                    total,
                    report.embedded,
                    time.perf_counter() - started,
                    min(seen, total_photos) if total_photos is not None else seen,
                    total_photos,
                )
            )

    own_fetcher = fetcher is None
    fetcher = fetcher or Fetcher()
    batches = _batched(entries, commit_every)

    def prepare(items: list[CatalogueEntry | Failure] | None, force: bool = False) -> _Batch | None:
        return None if items is None else _prepare(bind, items, fetcher, root, force=force)

    # Preparing runs one batch ahead in a thread (reading files and downloading while the network works),
    # unless the caller's connection must not be shared with a thread.
    ahead = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-prepare") if isinstance(bind, Engine) else None
    )
    try:
        upcoming = _start(ahead, prepare, next(batches, None))
        while (batch := upcoming.result()) is not None:
            upcoming = _start(ahead, prepare, next(batches, None))
            on_photo = functools.partial(lambda before: tell(report.embedded - before), report.embedded)
            stored = _store(
                bind, _records(batch, featurizer, report, embedder, on_photo), report, prune_images, featurizer.space
            )
            if stored.vanished:
                # Removed by someone else since their hashes were read: their vectors must be computed again.
                gone = set(stored.vanished)
                again = [e for e in batch.items if isinstance(e, CatalogueEntry) and e.sku in gone]
                retry = prepare(again, force=True)
                assert retry is not None
                stored = replace(stored, vanished=()) + _store(
                    bind, _records(retry, featurizer, report, embedder), report, prune_images, featurizer.space
                )
            counts += stored
            entries = [e for e in batch.items if isinstance(e, CatalogueEntry)]
            done += len(entries)  # rows the source could not read were not counted in the total either
            photos += sum(len(e.images) for e in entries)
            tell()
    finally:
        if ahead is not None:
            ahead.shutdown(wait=False, cancel_futures=True)
        if own_fetcher:
            fetcher.close()
    _analyze(bind)
    if isinstance(bind, Engine) and (counts.added or counts.updated):
        # The visual words of a verified photo search: learnt once the catalogue has enough photos, again when it
        # has grown much (photos ingested meanwhile got their words when they were stored).
        report.vocabulary = visual_words.maintain(bind)
    report.added, report.updated, report.unchanged = counts.added, counts.updated, counts.unchanged
    report.photos_pruned = counts.photos_pruned
    report.seconds = time.perf_counter() - started
    return report


def _start(pool: ThreadPoolExecutor | None, work: Callable[..., Any], *args: Any) -> Future[Any]:
    if pool is not None:
        return pool.submit(work, *args)
    future: Future[Any] = Future()
    future.set_result(work(*args))
    return future


def _batched(items: Iterable[CatalogueEntry | Failure], size: int) -> Iterator[list[CatalogueEntry | Failure]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _prepare(
    bind: Bind, items: list[CatalogueEntry | Failure], fetcher: Fetcher, root: Path | None, *, force: bool
) -> _Batch:
    """Read what the catalogue holds of the batch's photos, hash the files, download the URLs (conditionally)."""
    entries = [e for e in items if isinstance(e, CatalogueEntry)]
    stored = {} if force else catalogue.existing_photos(bind, [e.sku for e in entries])
    photos: dict[str, list[_Photo]] = {}
    for entry in entries:
        known = stored.get(entry.sku, {})
        photos[entry.sku] = [
            _Photo(image, reference, known.get(reference))
            for image, reference in ((image, stored_reference(image, root)) for image in entry.images)
        ]
    all_photos = [p for ps in photos.values() for p in ps]
    downloads = [p for p in all_photos if is_url(p.location)]
    requests = ((p.location, _validators(p.stored)) for p in downloads)
    for photo, fetched in zip(downloads, fetcher.fetch_many(requests), strict=True):
        _take_download(photo, fetched)
    for photo in all_photos:
        if photo.error is None and not is_url(photo.location):
            try:
                photo.sha256 = file_sha256(photo.location)
            except ImageError as exc:
                photo.error = str(exc)
                continue
        if photo.error is None and photo.stored is not None and photo.stored.image_sha256 == photo.sha256:
            photo.changed = False
    return _Batch(items, photos)


def _validators(stored: StoredPhoto | None) -> Validators | None:
    # A photo without a colour signature or local features yet is downloaded even if unchanged: its pixels are
    # needed.
    if (
        stored is None
        or not stored.has_colour
        or not stored.has_features
        or (stored.etag is None and stored.last_modified is None)
    ):
        return None
    return Validators(etag=stored.etag, last_modified=stored.last_modified)


def _take_download(photo: _Photo, fetched: Fetched) -> None:
    if fetched.error is not None:
        photo.error = fetched.error
    elif fetched.not_modified:
        assert photo.stored is not None
        photo.sha256, photo.validators = photo.stored.image_sha256, fetched.validators
    else:
        photo.data, photo.sha256, photo.validators = fetched.data, fetched.sha256, fetched.validators


class Embedder(Protocol):
    """What computes a batch's vectors: :class:`~imgsearch.embedding.Featurizer` or a distributed stand-in."""

    def embed_files(self, paths: Any, *, colour: bool = False, local: bool = False) -> Iterator[EmbedResult]: ...


def _records(
    batch: _Batch,
    featurizer: Featurizer,
    report: IngestReport,
    embedder: Embedder | None = None,
    on_photo: Callable[[], None] | None = None,
) -> list[ProductRecord]:
    """Embed the batch's new and changed photos and make the records to store; failures go to the report.
    ``on_photo`` is called after each photo embedded (for progress within a batch)."""
    for item in batch.items:
        if isinstance(item, Failure):
            report.failures.append(item)
    entries = [e for e in batch.items if isinstance(e, CatalogueEntry)]
    to_embed = [p for e in entries for p in batch.photos[e.sku] if p.error is None and p.changed]
    vectors: dict[int, Any] = {}
    colours: dict[int, Any] = {}
    features: dict[int, LocalFeatures] = {}
    sources = [p.source() for p in to_embed]
    results = (embedder or featurizer).embed_files(sources, colour=True, local=True)
    for photo, result in zip(to_embed, results, strict=True):
        if result.error is not None:
            photo.error = result.error
        else:
            vectors[id(photo)], colours[id(photo)] = result.vector, result.colour
            if result.local is not None:
                features[id(photo)] = result.local
            report.embedded += 1
            if on_photo is not None:
                on_photo()
    # Photos stored before colour signatures or local features existed get theirs, and so do photos whose
    # embedder computed no features (decoding only, no network). OpenCV and the decoder release the GIL: a
    # thread per core (a catalogue from before local features gets them all on its next ingest).
    missing = [p for e in entries for p in batch.photos[e.sku] if p.error is None]

    def backfill(photo: _Photo) -> None:
        stored = photo.stored
        try:
            if not photo.changed and stored is not None and not stored.has_colour:
                colours[id(photo)] = colour_signature(featurizer.pipeline.preprocessing.decode(photo.source()))
            if id(photo) not in features and (photo.changed or stored is None or not stored.has_features):
                features[id(photo)] = local_features.features_of(photo.source())
        except ImageError as exc:
            photo.error = str(exc)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(backfill, missing))
    for entry in entries:
        for photo in batch.photos[entry.sku]:
            photo.data = None  # the bytes of a download are not needed any more
    records = []
    for entry in entries:
        images = []
        for photo in batch.photos[entry.sku]:
            if photo.error is not None:
                report.failures.append(Failure(entry.sku, photo.location, photo.error))
                if photo.stored is not None:  # keep the stored version of a photo that could not be read now
                    images.append(_kept(photo.reference, photo.stored))
                continue
            images.append(
                ImageRecord(
                    image=photo.reference,
                    embedding=vectors.get(id(photo)),
                    image_sha256=photo.sha256,
                    etag=photo.validators.etag,
                    last_modified=photo.validators.last_modified,
                    colour=colours.get(id(photo)),
                    features=features.get(id(photo)),
                )
            )
        if not images:
            continue  # a new product none of whose photos could be read: already reported
        records.append(
            ProductRecord(
                sku=entry.sku,
                category=entry.category,
                name=entry.name,
                price=entry.price,
                in_stock=entry.in_stock,
                images=tuple(images),
                shop_product_id=entry.shop_product_id,
                page_url=entry.page_url,
                attributes=entry.attributes,
                description=entry.description,
            )
        )
    return records


def _kept(reference: str, stored: StoredPhoto) -> ImageRecord:
    return ImageRecord(
        image=reference,
        embedding=None,
        image_sha256=stored.image_sha256,
        etag=stored.etag,
        last_modified=stored.last_modified,
    )


def _store(
    bind: Bind, records: list[ProductRecord], report: IngestReport, prune_images: bool, space: SpaceLike | None = None
) -> UpsertCounts:
    """Upsert ``records``; rows the database refuses become failures and every other row is stored.

    A refused batch is split in halves until the refused rows are alone (a few extra round trips per bad row).
    """
    if not records:
        return UpsertCounts()
    try:
        return catalogue.upsert_products(bind, records, prune_images=prune_images, space=space)
    except InvalidProductError as exc:
        if len(records) == 1:
            record = records[0]
            reason = str(exc).removeprefix(f"{record.sku}: ")
            where = record.images[0].image if record.images else ""
            report.failures.append(Failure(sku_label(record.sku), where, reason))
            return UpsertCounts()
        half = len(records) // 2
        return _store(bind, records[:half], report, prune_images, space) + _store(
            bind, records[half:], report, prune_images, space
        )


def _analyze(bind: Bind) -> None:
    try:
        with transaction(bind) as conn:
            # Fresh statistics keep the planner (and the search function's count) right after a bulk load.
            conn.execute(sa.text("ANALYZE products"))
            conn.execute(sa.text("ANALYZE product_images"))
    except (ImgsearchError, sa.exc.DBAPIError):
        pass  # everything is committed; autovacuum analyzes the tables soon anyway


def prune(
    bind: Bind,
    feed_skus: Iterable[str],
    mode: str = "remove",
    *,
    max_share: float = DEFAULT_MAX_PRUNE_SHARE,
    force: bool = False,
    dry_run: bool = False,
) -> PruneResult:
    """Make the catalogue equal to a full feed: products whose SKU is not in ``feed_skus`` are removed (or, with
    ``mode="sold-out"``, marked out of stock), in one transaction.

    Refused (nothing changed, :attr:`PruneResult.refused` says why) when that would touch more than
    ``max_share`` of the catalogue, unless ``force``: a truncated feed must not empty the shop. ``dry_run``
    changes nothing and says what would happen (and whether it would be refused).
    """
    if mode not in PRUNE_MODES:
        raise InvalidQueryError(f"prune mode must be one of {', '.join(PRUNE_MODES)}, got {mode!r}")
    if not 0 <= max_share <= 1:
        raise InvalidQueryError(f"the largest share to prune must be between 0 and 1, got {max_share}")
    return catalogue.prune_to(bind, set(feed_skus), mode, max_share=max_share, force=force, dry_run=dry_run)


def write_failures(failures: Iterable[Failure], path: Path | str) -> None:
    """Write failures as CSV (``sku,source,reason``) for the catalogue team to fix and re-run.

    Bytes of the input that were not UTF-8 are written as ``\\xNN`` escapes, so the report itself is UTF-8.
    """
    import csv

    with Path(path).open("w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "source", "reason"])
        for f in failures:
            writer.writerow([f.sku or "", f.source, f.reason])
