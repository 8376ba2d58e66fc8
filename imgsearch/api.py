"""One handle on a shop's catalogue: :class:`Catalogue`, what the CLI, the HTTP service and Python programs use.

Everything a front end needs is a method here, including what only the command line used to do around the
library functions (counting a feed for the progress display, refusing a truncated feed before anything
changes, keeping the category indexes after a load, reading a stock file), so that a Python program gets the
same catalogue as ``imgsearch ingest`` does. The network is loaded on first use, once per process for the
same settings; engines are made per role on first use (searches go to the read replica when one is
configured). The module functions it stands on (:mod:`imgsearch.query`, :mod:`imgsearch.catalogue`,
:mod:`imgsearch.ingest`...) remain available for finer control.

    from imgsearch import Catalogue

    with Catalogue() as shop:                      # the embedded server, or IMGSEARCH_DATABASE_URL
        shop.ingest("examples/products.csv")       # a manifest CSV, a folder, or CatalogueEntry objects
        for r in shop.search_image("photo.jpg", k=5, max_price=50):
            print(r.sku, r.match, r.distance)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, embedded_server, indexes, query, scan_index
from imgsearch import schema as imgsearch_schema
from imgsearch.config import Settings
from imgsearch.errors import (
    ConfigurationError,
    EmbeddingSpaceMismatchError,
    ImgsearchError,
    PermissionDeniedError,
    UnknownCategoryError,
)
from imgsearch.sources import CatalogueEntry, Failure, read_manifest, read_stock_csv, scan_folder

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from imgsearch.catalogue import CatalogueStats, Product
    from imgsearch.duplicates import DuplicateGroup
    from imgsearch.embedding import Featurizer
    from imgsearch.evaluation import Evaluation
    from imgsearch.feedback import Event, Recorded, Report
    from imgsearch.images import Crop, ImageSource
    from imgsearch.ingest import IngestReport, Progress
    from imgsearch.keys import ApiKey
    from imgsearch.reembedding import ReembedReport, ReembedStatus
    from imgsearch.street_to_shop import StreetToShop
    from imgsearch.tuning import SearchSpace, SpaceStatus, TuneProgress
    from imgsearch.visual_words import BuildResult

T = TypeVar("T")

#: What :meth:`Catalogue.ingest` takes: a folder, a manifest CSV, or entries already read.
Source = Path | str | Iterable[CatalogueEntry | Failure]


class PruneRefusedError(ImgsearchError):
    """A full sync would remove (or mark sold out) more of the catalogue than allowed: a truncated feed?"""


@dataclass
class StockReport:
    """What a stock file changed (:meth:`Catalogue.apply_stock_file`)."""

    changed: int
    given: int
    unknown: int
    failures: list[Failure] = field(default_factory=list)


@functools.cache
def _shared_featurizer(
    weights: str, batch_size: int, precision: str, runtime: str = "auto", pipeline: str = "default"
) -> Featurizer:
    # One network per process and configuration: a program (or test) that opens many handles loads it once.
    from imgsearch.embedding import Featurizer

    return Featurizer(weights=weights, batch_size=batch_size, precision=precision, runtime=runtime, pipeline=pipeline)


class Catalogue:
    """A shop's catalogue in PostgreSQL, searched and kept by one object.

    Args:
        database: the catalogue's database: ``None`` for the configured one (``IMGSEARCH_DATABASE_URL``, else the
            embedded server, started on demand, with a role per kind of work), a URL, or a SQLAlchemy engine
            (used for everything).
        read: a read replica (URL or engine) for searches; default ``IMGSEARCH_READ_URL``, else ``database``.
        settings: everything else (weights, schema, image root...); default :meth:`Settings.from_env`.
        featurizer: the network to embed photos with; default one made from ``settings`` on first use, with the
            pipeline the catalogue's vectors were made with (``settings.pipeline`` for an empty catalogue).
    """

    def __init__(
        self,
        database: str | Engine | None = None,
        *,
        read: str | Engine | None = None,
        settings: Settings | None = None,
        featurizer: Featurizer | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        if isinstance(database, str):
            settings = replace(settings, database_url=database)
        if isinstance(read, str):
            settings = replace(settings, read_url=read)
        self.settings = settings
        self._given = database if isinstance(database, Engine) else None
        self._given_read = read if isinstance(read, Engine) else None
        self._engines: dict[str, Engine] = {}
        self._checked: set[str] = set()
        self._featurizer = featurizer
        #: Whether the handle makes its network itself (then it follows the catalogue's pipeline when that changes).
        self._owns_featurizer = featurizer is None

    # --- plumbing ---------------------------------------------------------------------------------------------

    def engine(self, access: str = "writer", *, schema: bool = True) -> Engine:
        """The engine for ``access`` (``reader``: searches, ``writer``: the catalogue, ``owner``: indexes and
        tuning, ``admin``: schema changes and grants; on the embedded server each is its own role, and only
        ``admin`` is a superuser); checks once that the schema is migrated."""
        if access == "reader" and self._given_read is not None:
            engine = self._given_read
        elif self._given is not None:
            engine = self._given
        else:
            if access not in self._engines:
                self._engines[access] = db.connect(self.settings, access)
            engine = self._engines[access]
        if schema and access not in self._checked:
            if access == "owner" and self._given is None and not self.settings.database_url:
                _require_embedded_owner(engine)
            imgsearch_schema.require_schema(engine)
            self._checked.add(access)
        return engine

    @property
    def featurizer(self) -> Featurizer:
        """The network (loaded on first use: TensorFlow and the weights take a few seconds), making vectors the way
        the catalogue's were made."""
        if self._featurizer is None:
            self._featurizer = self._featurizer_for(self._catalogue_pipeline())
        return self._featurizer

    def _featurizer_for(self, pipeline: str) -> Featurizer:
        s = self.settings
        return _shared_featurizer(s.weights, s.batch_size, s.precision, s.runtime, pipeline)

    def _evaluation_featurizer(self) -> Featurizer:
        """The network an evaluation (in a throwaway database, not this catalogue) embeds with: the one given, else
        the settings' pipeline's."""
        return self._featurizer if self._featurizer is not None else self._featurizer_for(self.settings.pipeline)

    def _catalogue_pipeline(self) -> str:
        """The pipeline of the catalogue's recorded embedding space; the settings' for an empty catalogue."""
        return catalogue.pipeline_in_use(self.engine("reader"), self.settings.pipeline)

    def close(self) -> None:
        """Close the engines this handle made (not the ones it was given)."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        self._checked.clear()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- searching --------------------------------------------------------------------------------------------

    def search(self, vector: Any, k: int = 10, **filters: Any) -> list[query.SearchResult]:
        """The ``k`` products nearest to a vector (or several: a product's photos); ``filters`` as
        :func:`imgsearch.query.search` (``categories``, ``in_stock_only``, ``max_price``, ``exclude_skus``,
        ``offset`` or ``cursor`` for a page further down, ``search_space="raw"`` for the raw vectors while a tuned
        space is active)."""
        return query.search(self.engine("reader"), vector, k, **filters)

    def search_many(self, vectors: Any, k: int = 10, **filters: Any) -> list[list[query.SearchResult]]:
        """One search per vector in one round trip (:func:`imgsearch.query.search_many`): ``result[i]`` answers
        ``vectors[i]``; ``filters`` as :meth:`search`."""
        return query.search_many(self.engine("reader"), vectors, k, **filters)

    def search_image(
        self,
        image: ImageSource,
        k: int = 10,
        *,
        crop: Crop | None = None,
        verify: bool = True,
        candidates: int = query.VERIFY_CANDIDATES,
        **filters: Any,
    ) -> list[query.SearchResult]:
        """The products a photo shows or looks like (:func:`imgsearch.query.search_image`). The photo is read
        once; before the network's first use it is checked at a small size, so that a bad photo or crop fails in
        milliseconds rather than after seconds of loading."""
        from imgsearch.images import decode_within, read_source

        source = read_source(image)
        if self._featurizer is None:
            decode_within(source, 64, crop=crop)
        engine = self.engine("reader")
        return self._in_catalogue_space(
            lambda featurizer: query.search_image(
                engine, featurizer, source, k, crop=crop, verify=verify, candidates=candidates, **filters
            )
        )

    def search_images(
        self,
        images: Sequence[ImageSource],
        k: int = 10,
        *,
        verify: bool = True,
        candidates: int = query.VERIFY_CANDIDATES,
        **filters: Any,
    ) -> list[query.SearchResult]:
        """The products several photos of one thing show or look like (:func:`imgsearch.query.search_images`):
        the front and the back of a garment, a package and its label."""
        from imgsearch.images import decode_within, read_source

        sources = [read_source(image) for image in images] if isinstance(images, list | tuple) else images
        if self._featurizer is None:  # a bad photo fails before the network is loaded
            for source in sources:
                decode_within(source, 64)
        return self._in_catalogue_space(
            lambda featurizer: query.search_images(
                self.engine("reader"), featurizer, sources, k, verify=verify, candidates=candidates, **filters
            )
        )

    def _in_catalogue_space(self, search: Callable[[Featurizer], T]) -> T:
        """Run a photo search; when the catalogue was moved to another pipeline meanwhile (``imgsearch reembed``,
        by another process) and this handle made its own network, load that pipeline's and search again."""
        try:
            return search(self.featurizer)
        except EmbeddingSpaceMismatchError:
            from imgsearch.embedding import PIPELINES

            pipeline = self._catalogue_pipeline()
            if not self._owns_featurizer or PIPELINES[pipeline] is self.featurizer.pipeline:
                raise
            self._featurizer = self._featurizer_for(pipeline)
            return search(self._featurizer)

    def search_words(self, text: str, k: int = 10, **filters: Any) -> list[query.SearchResult]:
        """Products by words alone, no photo: :func:`imgsearch.query.search_words`."""
        return query.search_words(self.engine("reader"), text, k, **filters)

    def set_text_language(self, language: str) -> int:
        """Read the catalogue's words in another language (a PostgreSQL text search configuration: ``english``,
        ``german``, ``simple``...): every product's words are computed again. Returns the products changed.

        Raises:
            InvalidQueryError: PostgreSQL has no such configuration.
        """
        return query.set_text_language(self.engine("writer"), language)

    def similar(self, sku: str, k: int = 10, **filters: Any) -> list[query.SearchResult]:
        """Products that look like catalogue product ``sku`` (itself excluded; :func:`query.similar_to_sku`)."""
        return query.similar_to_sku(self.engine("reader"), sku, k, **filters)

    def cheaper(self, sku: str, k: int = 10, *, same_category: bool = True, **options: Any) -> list[query.SearchResult]:
        """Look-alikes of ``sku`` in stock and strictly cheaper (:func:`query.cheaper_alternatives`); ``options``:
        ``offset`` or ``cursor``, ``search_space``."""
        return query.cheaper_alternatives(self.engine("reader"), sku, k, same_category=same_category, **options)

    def duplicates(
        self,
        max_distance: float | None = None,
        *,
        max_colour_distance: float | None = None,
        categories: Iterable[str] | None = None,
        min_price_gap: Decimal | float | str | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of near-identical products, the biggest price spread first (:mod:`imgsearch.duplicates`;
        ``None`` thresholds are the measured defaults)."""
        from imgsearch import duplicates as near

        colour = near.DEFAULT_MAX_COLOUR_DISTANCE if max_colour_distance is None else max_colour_distance
        return near.find_duplicate_groups(
            self.engine("reader"),
            near.DEFAULT_MAX_DISTANCE if max_distance is None else max_distance,
            max_colour_distance=colour,
            categories=categories,
            min_price_gap=min_price_gap,
        )

    def get(self, sku: str) -> Product | None:
        """One product, or ``None``."""
        return catalogue.get_product(self.engine("reader"), sku)

    def is_empty(self) -> bool:
        """Whether the catalogue has no product (searches then have nothing to say)."""
        return catalogue.is_empty(self.engine("reader"))

    def stats(self) -> CatalogueStats:
        """Products by category and stock, the embedding space and the vector index."""
        return catalogue.stats(self.engine())

    def tuning_status(self) -> SpaceStatus | None:
        """The tuned search space in use and how much of the catalogue it has not seen (``None``: raw space)."""
        from imgsearch import tuning

        return tuning.status(self.engine())

    # --- what shoppers did -------------------------------------------------------------------------------------

    def record_events(self, events: Iterable[Event | Mapping[str, Any]]) -> Recorded:
        """Store a batch of shoppers' events (at most 1000; each ``event_id`` once) reported by the website
        (:func:`imgsearch.feedback.record`). Goes to the primary database, never a read replica."""
        from imgsearch import feedback

        return feedback.record(self.engine(), events)

    def report(self, since: datetime | None = None, until: datetime | None = None) -> Report:
        """Click-through by rank, mean reciprocal rank, conversion, by category and variant, and the variants
        compared, over ``[since, until)`` (default: the last 30 days; :func:`imgsearch.feedback.report`)."""
        from imgsearch import feedback

        return feedback.report(self.engine("reader"), since, until)

    def forget_events(self, days: int | None = None) -> int:
        """Delete events older than ``days`` (default: the retention setting); returns how many."""
        from imgsearch import feedback

        return feedback.forget(self.engine(), days or self.settings.event_retention_days)

    # --- API keys of the HTTP service ---------------------------------------------------------------------------

    def create_key(self, name: str, scope: str = "search", expires_in: timedelta | None = None) -> tuple[ApiKey, str]:
        """Make an API key for the HTTP service; returns it as listed and the key itself (shown once: only its
        digest is stored). With ``expires_in`` it stops working that long from now. Made as the schema's owner."""
        from imgsearch import keys

        return keys.create(self.engine("owner"), name, scope, expires_in)

    def list_keys(self) -> list[ApiKey]:
        """Every API key (never the keys themselves), revoked ones included."""
        from imgsearch import keys

        return keys.list_keys(self.engine("owner"))

    def revoke_key(self, name: str) -> ApiKey:
        """Revoke an API key: the service refuses it within its key cache's seconds (5 by default)."""
        from imgsearch import keys

        return keys.revoke(self.engine("owner"), name)

    # --- keeping the catalogue --------------------------------------------------------------------------------

    def ingest(
        self,
        source: Source,
        *,
        prune: str | None = None,
        prune_images: bool = False,
        max_prune_share: float | None = None,
        force: bool = False,
        commit_every: int = 256,
        image_root: Path | str | None = None,
        progress: Callable[[Progress], None] | None = None,
        warn: Callable[[str], None] | None = None,
        ray: str | None = None,
        ray_concurrency: int | None = None,
        ignore_columns: Iterable[str] = (),
        index: bool = True,
        on_index: Callable[[indexes.CategoryIndex], None] | None = None,
    ) -> IngestReport:
        """Load or update products from ``source``: a folder (``<category>/<image>`` or
        ``<category>/<sku>/<image>...``), a manifest CSV, or :class:`CatalogueEntry` objects.

        Idempotent and resumable (:func:`imgsearch.ingest.ingest`). With ``prune`` (``"remove"`` or
        ``"sold-out"``) the catalogue becomes the source: a full sync, refused before anything changes when it
        would touch more than ``max_prune_share`` of the catalogue (unless ``force``). ``ray`` embeds on a Ray
        cluster (an address, or ``"local"``). Then, unless ``index`` is false, the category indexes are kept
        where they pay (``IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS``) and the photos' IVF index once the catalogue is
        large enough (``IMGSEARCH_SCAN_INDEX_MIN_PHOTOS``, :func:`imgsearch.scan_index.maintain`); a role that
        may not build them gets a ``warn`` instead of an error. A manifest's ``ignore_columns`` are not attributes
        (internal notes).

        Raises:
            PruneRefusedError: the sync would prune too much (nothing was changed).
            ManifestError: the manifest cannot be used at all.
        """
        from imgsearch import ingest as ingestion

        share = ingestion.DEFAULT_MAX_PRUNE_SHARE if max_prune_share is None else max_prune_share
        read = _reader(source, ignore_columns)
        # A first pass counts the products (for progress) and collects the source's SKUs (for a full sync).
        feed_skus: set[str] = set()
        total = total_photos = 0
        for item in read(None):
            if isinstance(item, CatalogueEntry):
                total += 1
                total_photos += len(item.images)
            if item.sku:
                feed_skus.add(item.sku)
        engine = self.engine()
        if prune is not None:
            plan = ingestion.prune(engine, feed_skus, prune, max_share=share, force=force, dry_run=True)
            if plan.refused:
                raise PruneRefusedError(f"{plan.refused}: nothing was changed")
        embedder = None
        if ray is not None:
            from imgsearch.distributed import RayEmbedder

            address = None if ray == "local" else ray
            embedder = RayEmbedder(self.featurizer, address=address, concurrency=ray_concurrency)
        report = ingestion.ingest(
            engine,
            read(warn),
            self.featurizer,
            total=total,
            total_photos=total_photos,
            commit_every=commit_every,
            progress=progress,
            prune_images=prune_images,
            image_root=image_root or self.settings.image_root,
            embedder=embedder,
        )
        if prune is not None:
            report.pruned = ingestion.prune(engine, feed_skus, prune, max_share=share, force=force)
        if index and self.settings.category_index_min_products:
            try:
                self.maintain_indexes(on_created=on_index)
            except PermissionDeniedError:
                if warn is not None:
                    warn(
                        "category indexes not maintained: this role may not create indexes (run imgsearch index "
                        "auto as the schema's owner, or ingest with --no-index; on the embedded server, "
                        "imgsearch db upgrade once)"
                    )
        if index and self.settings.scan_index_min_photos and (report.added or report.updated):
            try:
                report.scan_index = scan_index.maintain(
                    self.engine("owner"), min_photos=self.settings.scan_index_min_photos
                )
            except PermissionDeniedError:
                if warn is not None:
                    warn(
                        "the photos' scan index not maintained: this role may not create indexes (run imgsearch "
                        "index scan as the schema's owner, or ingest with --no-index)"
                    )
            except ImgsearchError as exc:  # the products are stored: searches go on with the walk alone
                if warn is not None:
                    warn(f"the photos' scan index not built ({exc}); run imgsearch index scan later")
        return report

    def sync(self, source: Source, *, prune: str = "remove", **options: Any) -> IngestReport:
        """:meth:`ingest` as a full sync: products missing from ``source`` are removed (or ``"sold-out"``)."""
        return self.ingest(source, prune=prune, **options)

    def set_stock(self, stock: Mapping[str, bool], *, missing_ok: bool = False) -> int:
        """Mark products in or out of stock, in one transaction; returns how many changed."""
        return catalogue.set_stock(self.engine(), stock, missing_ok=missing_ok)

    def set_prices(self, prices: Mapping[str, Decimal | float | int | None], *, missing_ok: bool = False) -> int:
        """Change prices, in one transaction; returns how many changed."""
        return catalogue.set_prices(self.engine(), prices, missing_ok=missing_ok)

    def apply_stock_file(self, path: Path | str) -> StockReport:
        """Apply a stock system's export (``sku`` and ``in_stock``, ``price`` or both) in one transaction, except
        its unusable rows and unknown SKUs, which are returned as failures."""
        updates = read_stock_csv(path)
        engine = self.engine()
        given = {**dict.fromkeys(updates.stock), **dict.fromkeys(updates.prices)}
        unknown = set(catalogue.missing_skus(engine, given))
        changed = catalogue.update_offers(engine, stock=updates.stock, prices=updates.prices, missing_ok=True)
        failures = [*updates.failures, *(Failure(sku, str(path), "unknown SKU") for sku in given if sku in unknown)]
        return StockReport(changed=changed, given=len(given), unknown=len(unknown), failures=failures)

    def remove(self, skus: Iterable[str], *, missing_ok: bool = False) -> int:
        """Delete products (all or nothing unless ``missing_ok``); returns how many."""
        return catalogue.remove(self.engine(), skus, missing_ok=missing_ok)

    # --- tuning and indexes -----------------------------------------------------------------------------------

    def tune(
        self, *, sample: int | None = None, seed: int = 0, progress: Callable[[TuneProgress], None] | None = None
    ) -> SearchSpace:
        """Learn a search space from the catalogue's categories and search in it from now on
        (:func:`imgsearch.tuning.tune`)."""
        from imgsearch import tuning

        return tuning.tune(
            self.engine("owner"),
            sample=tuning.DEFAULT_SAMPLE if sample is None else sample,
            seed=seed,
            progress=progress,
        )

    def untune(self) -> SearchSpace | None:
        """Go back to the raw VGG16 space; returns the space retired, if any."""
        from imgsearch import tuning

        return tuning.drop(self.engine("owner"))

    def maintain_indexes(
        self,
        min_products: int | None = None,
        *,
        max_share: float = indexes.AUTO_INDEX_MAX_SHARE,
        on_created: Callable[[indexes.CategoryIndex], None] | None = None,
    ) -> list[indexes.CategoryIndex]:
        """Keep category indexes where they pay (:func:`imgsearch.indexes.maintain_category_indexes`);
        ``min_products`` defaults to the setting."""
        threshold = min_products or self.settings.category_index_min_products
        if not threshold:
            raise ConfigurationError(
                "IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS is 0 (automatic category indexes are off): give min_products"
            )
        return indexes.maintain_category_indexes(
            self.engine("owner"), min_products=threshold, max_share=max_share, on_created=on_created
        )

    def create_indexes(
        self,
        categories: Iterable[str] = (),
        *,
        min_products: int | None = None,
        on_created: Callable[[indexes.CategoryIndex], None] | None = None,
    ) -> list[indexes.CategoryIndex]:
        """Build the category indexes of ``categories`` (all must have products, or nothing is built), or of
        every category of ``min_products`` or more that has none; returns those built."""
        engine = self.engine("owner")
        if min_products is not None:
            return indexes.index_large_categories(engine, min_products, on_created=on_created)
        return indexes.create_category_indexes(engine, list(categories), on_created=on_created)

    def drop_indexes(self, categories: Iterable[str], *, missing_ok: bool = False) -> int:
        """Drop category indexes; unless ``missing_ok``, nothing is dropped when one of them has none.

        Raises:
            UnknownCategoryError: a category has no index (and not ``missing_ok``).
        """
        engine = self.engine("owner")
        categories = list(categories)
        if not missing_ok:
            known = {i.category for i in indexes.list_category_indexes(engine)}
            unknown = [c for c in categories if c not in known]
            if unknown:
                raise UnknownCategoryError(f"no category index for {', '.join(map(repr, unknown))}; nothing dropped")
        return sum(indexes.drop_category_index(engine, c, missing_ok=True) for c in categories)

    def reset(self) -> None:
        """Empty the catalogue (:func:`imgsearch.catalogue.clear`: before re-ingesting with another model) and drop
        the photos' IVF index, whose lists were learnt from the vectors removed (and a re-embedding's copies)."""
        from imgsearch import reembedding

        catalogue.clear(self.engine())
        self.drop_scan_index()
        reembedding.drop_copies(self.engine("owner"))
        if self._owns_featurizer:
            self._featurizer = None

    def reembed(
        self,
        pipeline: str,
        *,
        switch: bool = True,
        batch: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReembedReport:
        """Move the catalogue to another pipeline's vectors while searches go on (:func:`imgsearch.reembedding.run`):
        every photo is embedded again from where it was ingested, the indexes are built again beside the current
        ones, and one short transaction switches. Run it again to resume; ``switch=False`` only embeds.

        Raises:
            InvalidQueryError: the catalogue is empty or already in that space, or moving to another one.
            ConfigurationError: no such pipeline.
            BusyError: the switch could not get its locks.
        """
        from imgsearch import reembedding

        featurizer = self._featurizer_for(pipeline)
        report = reembedding.run(
            self.engine(),
            self.engine("owner"),
            featurizer,
            image_root=self.settings.image_root,
            switch_when_done=switch,
            batch=batch or reembedding.BATCH,
            progress=progress,
        )
        if report.switched and self._owns_featurizer:
            self._featurizer = featurizer
        return report

    def reembed_status(self) -> ReembedStatus | None:
        """The re-embedding under way (from which space to which, photos done), or None."""
        from imgsearch import reembedding

        return reembedding.status(self.engine())

    def cancel_reembed(self) -> bool:
        """Abandon the re-embedding under way (its vectors and index copies go); whether one was under way."""
        from imgsearch import reembedding

        return reembedding.cancel(self.engine("owner"))

    def build_scan_index(self, lists: int | None = None) -> scan_index.ScanIndex:
        """Build the photos' IVF index now, or again (:func:`imgsearch.scan_index.build`): after a large change of
        assortment, or on a catalogue smaller than ingestion builds it for."""
        return scan_index.build(self.engine("owner"), lists)

    def scan_index_status(self) -> scan_index.ScanIndex | None:
        """The photos' IVF index, or None when the catalogue has none yet."""
        return scan_index.status(self.engine())

    def drop_scan_index(self) -> bool:
        """Drop the photos' IVF index (verified photo searches use the HNSW walk alone); whether there was one."""
        return scan_index.drop(self.engine("owner"))

    def list_indexes(self) -> list[indexes.CategoryIndex]:
        """The category indexes: category, products, size."""
        return indexes.list_category_indexes(self.engine())

    def build_visual_words(self) -> BuildResult | None:
        """Learn the visual vocabulary again and index every photo's words (``None``: no photo has features)."""
        from imgsearch import visual_words

        return visual_words.build(self.engine())

    # --- measuring --------------------------------------------------------------------------------------------

    def evaluate(
        self,
        folder: Path | str,
        *,
        k: int = 10,
        folds: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> Evaluation:
        """Search quality on a labelled folder, in a throwaway database on this catalogue's server
        (:func:`imgsearch.evaluation.evaluate`; the catalogue itself is not touched)."""
        from imgsearch import evaluation

        url = self._server_url()
        return evaluation.evaluate(url, folder, self._evaluation_featurizer(), k=k, folds=folds, progress=progress)

    def evaluate_queries(
        self,
        catalogues: Iterable[Path | str],
        queries: Iterable[Path | str],
        *,
        k: int = 10,
        candidates: int = query.VERIFY_CANDIDATES,
        limit: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> list[StreetToShop]:
        """Shoppers' photos (CSV ``image,sku,kind``) against catalogues, in a throwaway database
        (:func:`imgsearch.street_to_shop.evaluate_queries`)."""
        from imgsearch import street_to_shop

        url = self._server_url()
        return street_to_shop.evaluate_queries(
            url,
            list(catalogues),
            list(queries),
            self._evaluation_featurizer(),
            k=k,
            candidates=candidates,
            limit=limit,
            progress=progress,
        )

    def _server_url(self) -> str:
        # The throwaway evaluation databases are created on the catalogue's server by a role that may do that: on
        # the embedded server its owner role (CREATEDB, cloning a template that has pgvector), not the superuser.
        return self.engine("owner", schema=False).url.render_as_string(hide_password=False)


def _require_embedded_owner(engine: Engine) -> None:
    """Raise :class:`PermissionDeniedError` with the remedy when the embedded server's schema still belongs to
    the superuser (a catalogue made before the owner role existed), instead of PostgreSQL's bare refusal."""
    schema = db.schema_of(engine)
    with engine.connect() as conn:
        owner = conn.execute(
            sa.text("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        ).scalar_one_or_none()
    if owner is not None and owner != embedded_server.OWNER_ROLE and schema != "public":
        raise PermissionDeniedError(
            f"the schema belongs to {owner}, not {embedded_server.OWNER_ROLE}: run `imgsearch db upgrade` once "
            "to hand it over (index maintenance and tuning run as its owner)"
        )


def _reader(
    source: Source, ignore_columns: Iterable[str] = ()
) -> Callable[[Callable[[str], None] | None], Iterable[CatalogueEntry | Failure]]:
    """A function that reads ``source`` from the start each time it is called (given where to send warnings)."""
    ignored = tuple(ignore_columns)
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_dir():
            return lambda _warn: scan_folder(path)
        return lambda warn: read_manifest(path, warn=warn, ignore_columns=ignored)
    # Entries given in Python are read twice (count, then ingest): kept in memory once.
    entries = list(source)
    return lambda _warn: entries
