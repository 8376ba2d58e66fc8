"""Writing to the catalogue: bulk upserts, stock changes, removals, statistics and the embedding space."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cache
from typing import Protocol

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg.vector import register_vector_info
from pgvector.sqlalchemy import Vector
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from sqlalchemy.engine import Connection, Engine

from imgsearch import sql, visual_words
from imgsearch.attributes import AttributeValue, check_attributes
from imgsearch.colour import COLOUR_BINS
from imgsearch.db import run_transaction, transaction
from imgsearch.errors import EmbeddingSpaceMismatchError, InvalidProductError, InvalidQueryError, UnknownSkuError
from imgsearch.local_features import EXTRACTOR, LocalFeatures
from imgsearch.tables import DIMENSION, IMAGE_MAX_LENGTH
from imgsearch.validation import (
    check_description,
    check_product_fields,
    check_shop_fields,
    check_text,
    unit_vector,
)

Bind = Engine | Connection


class SpaceLike(Protocol):
    """What identifies an embedding space (see :class:`imgsearch.embedding.EmbeddingSpace`)."""

    model_name: str
    weights_id: str
    preprocessing_version: str
    dimension: int


@dataclass(frozen=True)
class StoredSpace:
    """The embedding space recorded in a catalogue."""

    model_name: str
    weights_id: str
    preprocessing_version: str
    dimension: int


@dataclass(frozen=True)
class ImageRecord:
    """One photo of a product to write.

    ``image`` is where the photo is (an absolute path, a URL, or "" for a vector given without a picture) and
    identifies the photo within its product. ``embedding=None`` keeps the stored vector of that photo (the
    file is unchanged); ``position`` orders the photos (0 is the main one). ``colour`` is its colour signature
    (:func:`imgsearch.colour.colour_signature`); ``None`` keeps the stored one. ``features`` are its local
    features (:mod:`imgsearch.local_features`), which let a search verify that a shopper's photo shows it;
    ``None`` keeps the stored ones, unless a new ``embedding`` is given (a new photo: the old ones are dropped).
    """

    image: str
    embedding: np.ndarray | None
    image_sha256: str | None = None
    position: int = 0
    etag: str | None = None
    last_modified: str | None = None
    colour: np.ndarray | None = None
    features: LocalFeatures | None = None


@dataclass(frozen=True)
class ProductRecord:
    """A product to write, with its photos.

    Give the photos as ``images``, or one photo through the shorthand ``embedding`` / ``image`` /
    ``image_sha256``. A record with neither is a metadata-only update of a product already in the catalogue
    (its photos are left as they are).
    """

    sku: str
    category: str
    embedding: np.ndarray | None = None
    name: str | None = None
    price: Decimal | None = None
    in_stock: bool = True
    image: str | None = None
    image_sha256: str | None = None
    images: tuple[ImageRecord, ...] = ()
    #: The shop's own id of the product and its page on the shop's site: carried into every result, so that a
    #: result joins back to the shop's database. ``None`` keeps what is stored; ``""`` clears it.
    shop_product_id: str | None = None
    page_url: str | None = None
    #: The shop's attributes of the product (:mod:`imgsearch.attributes`): replace the stored ones whole; ``None``
    #: keeps them, ``{}`` clears them.
    attributes: Mapping[str, AttributeValue] | None = None
    #: The shop's description of the product (its words are searched, revision 0019); ``None`` keeps the stored
    #: one, ``""`` clears it.
    description: str | None = None

    def photos(self) -> tuple[ImageRecord, ...]:
        """The record's photos, the shorthand included."""
        if self.images:
            return self.images
        if self.embedding is None and self.image is None:
            return ()
        return (ImageRecord(self.image or "", self.embedding, self.image_sha256),)


@dataclass(frozen=True)
class UpsertCounts:
    """What an upsert did, in products: new ones, changed ones (fields or photos), ones already as given; the
    SKUs not written because a photo meant to be kept (or the product itself) had been removed meanwhile, for
    the caller to embed again; and the photos pruned (left out of a record with ``prune_images``)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    vanished: tuple[str, ...] = ()
    photos_pruned: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(
            self.added + other.added,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.vanished + other.vanished,
            self.photos_pruned + other.photos_pruned,
        )


@dataclass(frozen=True)
class CatalogueStats:
    """Summary of a catalogue for `imgsearch stats`."""

    products: int
    in_stock: int
    by_category: dict[str, tuple[int, int]]  # category -> (products, in stock)
    space: StoredSpace | None
    index_name: str | None
    index_size_bytes: int | None
    table_size_bytes: int
    photos: int = 0
    #: The photos' IVF index (imgsearch/scan_index.py): its lists and size, None when there is none.
    scan_lists: int | None = None
    scan_size_bytes: int | None = None


def stored_space(bind: Bind) -> StoredSpace | None:
    """The embedding space recorded in the catalogue, or ``None`` before the first ingest."""
    with transaction(bind) as conn:
        row = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS} FROM embedding_space")).one_or_none()
    return StoredSpace(*row) if row else None


def pipeline_in_use(bind: Bind, default: str) -> str:
    """The name of the pipeline the catalogue's vectors were made with (what a photo search must use), or
    ``default`` for an empty catalogue (or one of a pipeline this version does not know)."""
    from imgsearch.embedding import pipeline_of

    stored = stored_space(bind)
    return (pipeline_of(stored) if stored is not None else None) or default


_SPACE_FIELDS = ("model", "weights", "preprocessing", "dimension")
#: The columns of a recorded embedding space (embedding_space, and embedding_space_next while re-embedding).
SPACE_COLUMNS = "model_name, weights_id, preprocessing_version, dimension"


def space_tuple(space: SpaceLike) -> tuple[str, str, str, int]:
    """A space's model, weights, preprocessing and dimension, as the recorded space's columns hold them."""
    return (space.model_name, space.weights_id, space.preprocessing_version, space.dimension)


def _mismatch(stored: tuple[object, ...], wanted: tuple[object, ...]) -> EmbeddingSpaceMismatchError | None:
    if tuple(stored) == wanted:
        return None
    diffs = [
        f"{name} {have!s:.16} (catalogue) vs {want!s:.16} (now)"
        for name, have, want in zip(_SPACE_FIELDS, stored, wanted, strict=True)
        if have != want
    ]
    return EmbeddingSpaceMismatchError(
        "the catalogue was built with a different embedding space: "
        + "; ".join(diffs)
        + ". Vectors of different spaces cannot be compared: use the catalogue's pipeline, move the catalogue to "
        "this one (`imgsearch reembed --pipeline NAME`), or re-ingest it into a new database (or after "
        "`imgsearch db reset`) with the current settings"
    )


def check_space(bind: Bind, space: SpaceLike) -> None:
    """Raise :class:`EmbeddingSpaceMismatchError` if the catalogue's vectors come from another space.

    Query vectors must be made the way the catalogue's were; an empty catalogue accepts any space.
    """
    stored = stored_space(bind)
    if stored is not None and (error := _mismatch(space_tuple(stored), space_tuple(space))):
        raise error


def ensure_space(bind: Bind, space: SpaceLike) -> None:
    """Record ``space`` in an empty catalogue, or check it is the one already recorded.

    Raises:
        EmbeddingSpaceMismatchError: the catalogue holds vectors of another model, weights or preprocessing.
    """
    wanted = space_tuple(space)
    with transaction(bind) as conn:
        # Locking the table stops two first ingests racing to record different spaces.
        conn.execute(sa.text("LOCK TABLE embedding_space IN SHARE ROW EXCLUSIVE MODE"))
        current = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS} FROM embedding_space")).one_or_none()
        if current is not None:
            if error := _mismatch(tuple(current), wanted):
                raise error
            return
        if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM products)")).scalar_one():
            raise EmbeddingSpaceMismatchError(
                "the catalogue has products but no recorded embedding space; re-ingest it into a new database"
            )
        conn.execute(
            sa.text(f"INSERT INTO embedding_space ({SPACE_COLUMNS}) VALUES (:m, :w, :p, :d)"),
            dict(zip("mwpd", wanted, strict=True)),
        )


def clear(bind: Bind) -> None:
    """Remove every product, the recorded embedding space and the tuned search spaces learnt from them (before
    re-ingesting with another model: a map learnt from other vectors would be meaningless)."""
    with transaction(bind) as conn:
        conn.execute(
            sa.text(
                "TRUNCATE products, product_images, photo_features, visual_word_postings, visual_word_photos, "
                "visual_word_frequencies, visual_vocabularies, embedding_space, embedding_space_next, tuned_images, "
                "search_space_rows, search_spaces"
            )
        )


def _validated(record: ProductRecord) -> ProductRecord:
    """``record`` as it will be stored (unit vectors, photos numbered), or :class:`InvalidProductError`."""
    label = record.sku if isinstance(record.sku, str) and len(record.sku) <= 80 else "a product"
    try:
        check_product_fields(record.sku, record.category, record.name, None, record.price)
        shop_product_id, page_url = check_shop_fields(record.shop_product_id, record.page_url)
        attributes = check_attributes(record.attributes)
        description = check_description(record.description)
        photos = []
        for position, photo in enumerate(record.photos()):
            check_text(photo.image, "image", IMAGE_MAX_LENGTH, required=False)
            if photo.image_sha256 is not None and not _SHA256.match(photo.image_sha256):
                raise InvalidProductError(f"image_sha256 must be 64 hex digits, got {photo.image_sha256!r}")
            embedding = None if photo.embedding is None else unit_vector(photo.embedding, "embedding")
            colour = None if photo.colour is None else np.asarray(photo.colour, dtype=np.float32)
            if colour is not None and (colour.shape != (COLOUR_BINS,) or not np.all(np.isfinite(colour))):
                raise InvalidProductError(f"a colour signature must be {COLOUR_BINS} finite numbers")
            photos.append(
                replace(photo, image=photo.image or "", embedding=embedding, colour=colour, position=position)
            )
        if len({p.image for p in photos}) != len(photos):
            raise InvalidProductError("the same image is given twice")
    except InvalidQueryError as exc:
        raise InvalidProductError(f"{label}: {exc}") from None
    return replace(
        record,
        embedding=None,
        image=None,
        image_sha256=None,
        images=tuple(photos),
        shop_product_id=shop_product_id,
        page_url=page_url,
        attributes=attributes,
        description=description,
    )


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def shop_fields_sql(row: str) -> str:
    """The shop's own product id, page address and attributes, as columns ``shop_product_id``, ``page_url`` and
    ``attributes``, from ``row``: a products row as JSON. Read by name, so that the statements reading them also
    run on a catalogue an older revision left (NULL, ``{}`` there): migrations are tested on catalogues filled
    before them."""
    return (
        f"{row} ->> 'shop_product_id' AS shop_product_id, {row} ->> 'page_url' AS page_url, "
        f"coalesce({row} -> 'attributes', '{{}}'::jsonb) AS attributes"
    )


#: :func:`shop_fields_sql` of product row ``p``.
SHOP_FIELDS_SQL = shop_fields_sql("to_jsonb(p)")

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS imgsearch_staging_products (sku text, name text, category text, "
    "price numeric, in_stock boolean, shop_product_id text, page_url text, attributes jsonb, description text) "
    "ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS imgsearch_staging_images (sku text, image text, position integer, "
    "image_sha256 text, etag text, last_modified text, embedding vector(512), colour vector(44), extractor text, "
    "feature_width integer, feature_height integer, points bytea, descriptors bytea) ON COMMIT DELETE ROWS",
    "TRUNCATE imgsearch_staging_products, imgsearch_staging_images",
)
_PRODUCT_COLUMNS = "sku, name, category, price, in_stock"
_STAGING_PRODUCT_COLUMNS = _PRODUCT_COLUMNS + ", shop_product_id, page_url, attributes, description"
_PRODUCT_TYPES = ["text", "text", "text", "numeric", "bool", "text", "text", "jsonb", "text"]
_IMAGE_COLUMNS = (
    "sku, image, position, image_sha256, etag, last_modified, embedding, colour, extractor, feature_width, "
    "feature_height, points, descriptors"
)
_IMAGE_TYPES = ["text", "text", "int4", "text", "text", "text", "vector", "vector", "text", "int4", "int4"]
_IMAGE_TYPES += ["bytea", "bytea"]

# Products first, then photos, both in SKU order, so that concurrent writers lock shared rows in the same order
# (no deadlock). A product is written only if it is already in the catalogue or comes with a photo vector.
_MERGE_PRODUCTS = sa.text(
    f"""
    INSERT INTO products AS p ({_PRODUCT_COLUMNS})
    SELECT s.sku, s.name, s.category, s.price, s.in_stock FROM imgsearch_staging_products s
    WHERE EXISTS (SELECT 1 FROM products e WHERE e.sku = s.sku)
       OR EXISTS (SELECT 1 FROM imgsearch_staging_images si WHERE si.sku = s.sku AND si.embedding IS NOT NULL)
    ORDER BY s.sku
    ON CONFLICT (sku) DO UPDATE SET
        name = EXCLUDED.name, category = EXCLUDED.category, price = EXCLUDED.price, in_stock = EXCLUDED.in_stock
    WHERE (p.name, p.category, p.price, p.in_stock)
          IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.category, EXCLUDED.price, EXCLUDED.in_stock)
    RETURNING p.sku, (xmax = 0) AS inserted
    """
)
# The shop's optional fields of a product (revisions 0017-0019), each as a staged value replaces the stored one: ''
# clears the text fields, attributes are replaced whole; a staged NULL keeps what is stored.
_SHOP_FIELDS = {
    "shop_product_id": "nullif(s.shop_product_id, '')",
    "page_url": "nullif(s.page_url, '')",
    "attributes": "s.attributes",
    "description": "nullif(s.description, '')",
}


@cache
def _merge_shop_fields(columns: tuple[str, ...]) -> sa.TextClause:
    """The update of the shop's fields ``columns`` on the rows the product merge wrote (already locked, in SKU
    order), returning the SKUs it changed. Only the fields some record gives, so that writing a catalogue an older
    revision left (without the newer columns) works as it did."""
    sets = ", ".join(f"{c} = CASE WHEN s.{c} IS NULL THEN p.{c} ELSE {_SHOP_FIELDS[c]} END" for c in columns)
    changed = " OR ".join(f"s.{c} IS NOT NULL AND p.{c} IS DISTINCT FROM {_SHOP_FIELDS[c]}" for c in columns)
    return sa.text(
        f"UPDATE products p SET {sets} FROM imgsearch_staging_products s WHERE p.sku = s.sku AND ({changed}) "
        "RETURNING p.sku"
    )


# A photo without a vector keeps the stored one; if that is gone (removed meanwhile), it is left out here and
# found by _VANISHED.
_MERGE_IMAGES = sa.text(
    """
    INSERT INTO product_images AS i
        (product_id, image, position, image_sha256, etag, last_modified, embedding, colour)
    SELECT p.id, s.image, s.position, s.image_sha256, s.etag, s.last_modified, coalesce(s.embedding, e.embedding),
           CASE WHEN s.embedding IS NOT NULL OR s.colour IS NOT NULL THEN s.colour ELSE e.colour END
    FROM imgsearch_staging_images s
    JOIN products p ON p.sku = s.sku
    LEFT JOIN product_images e ON e.product_id = p.id AND e.image = s.image
    WHERE s.embedding IS NOT NULL OR e.id IS NOT NULL
    ORDER BY s.sku, s.image
    ON CONFLICT (product_id, image) DO UPDATE SET
        position = EXCLUDED.position, image_sha256 = EXCLUDED.image_sha256, etag = EXCLUDED.etag,
        last_modified = EXCLUDED.last_modified, embedding = EXCLUDED.embedding, colour = EXCLUDED.colour
    WHERE (i.position, i.image_sha256, i.etag, i.last_modified, i.embedding, i.colour)
          IS DISTINCT FROM
          (EXCLUDED.position, EXCLUDED.image_sha256, EXCLUDED.etag, EXCLUDED.last_modified, EXCLUDED.embedding,
           EXCLUDED.colour)
    RETURNING (SELECT p2.sku FROM products p2 WHERE p2.id = i.product_id)
    """
)
# Local features, in photo id order (the order every writer locks them in). A photo whose vector changed has
# already lost its old features (a trigger of revision 0009): a new picture without features has none.
_MERGE_FEATURES = sa.text(
    """
    INSERT INTO photo_features AS f (image_id, extractor, width, height, points, descriptors)
    SELECT i.id, s.extractor, s.feature_width, s.feature_height, s.points, s.descriptors
    FROM imgsearch_staging_images s
    JOIN products p ON p.sku = s.sku
    JOIN product_images i ON i.product_id = p.id AND i.image = s.image
    WHERE s.descriptors IS NOT NULL
    ORDER BY i.id
    ON CONFLICT (image_id) DO UPDATE SET
        extractor = EXCLUDED.extractor, width = EXCLUDED.width, height = EXCLUDED.height, points = EXCLUDED.points,
        descriptors = EXCLUDED.descriptors
    WHERE (f.extractor, f.width, f.height, f.points, f.descriptors)
          IS DISTINCT FROM (EXCLUDED.extractor, EXCLUDED.width, EXCLUDED.height, EXCLUDED.points, EXCLUDED.descriptors)
    RETURNING f.image_id, f.width, f.height, f.points, f.descriptors
    """
)
_VANISHED = sa.text(
    """
    SELECT s.sku FROM imgsearch_staging_products s
    WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.sku = s.sku)
    UNION
    SELECT s.sku FROM imgsearch_staging_images s JOIN products p ON p.sku = s.sku
    WHERE s.embedding IS NULL
      AND NOT EXISTS (SELECT 1 FROM product_images i WHERE i.product_id = p.id AND i.image = s.image)
    ORDER BY 1
    """
)
# A product this call inserted whose photos could not all be written is taken back out (it would have none).
_UNDO_PHOTOLESS = sa.text(
    "DELETE FROM products p WHERE p.sku = ANY(:skus) "
    "AND NOT EXISTS (SELECT 1 FROM product_images i WHERE i.product_id = p.id)"
)
_PRUNE = sa.text(
    """
    DELETE FROM product_images i USING products p
    WHERE i.product_id = p.id AND p.sku = ANY(:skus)
      AND NOT EXISTS (SELECT 1 FROM imgsearch_staging_images s WHERE s.sku = p.sku AND s.image = i.image)
    RETURNING p.sku
    """
)


def upsert_products(
    bind: Bind, records: Sequence[ProductRecord], *, prune_images: bool = False, space: SpaceLike | None = None
) -> UpsertCounts:
    """Insert or update products and their photos by SKU in one transaction (binary COPY into staging tables,
    then one merge for products and one for photos).

    A photo is identified within its product by its reference (``ImageRecord.image``). Rows whose stored values
    already match are left untouched (their ``updated_at`` does not move). Photos a record does not mention are
    kept, unless ``prune_images``: then they are deleted (a record with no photos at all never prunes). Either
    all ``records`` are written or, on error, none. Vectors are stored scaled to length 1. A deadlock with
    another writer is retried. A record whose photo was meant to be kept (``embedding=None``) but had been
    removed meanwhile, or a metadata-only record of a product that is not in the catalogue, is not written: its
    SKU is returned in :attr:`UpsertCounts.vanished`, for the caller to embed it again.

    ``space``, when given, is the embedding space the records' vectors come from, checked in the same transaction
    (a catalogue moved to another space by ``imgsearch reembed`` meanwhile refuses them).

    Raises:
        InvalidProductError: a record cannot be stored (a field too long or not text, a bad price or vector, a
            duplicate SKU in ``records``, a photo given twice, or the database refused it).
        EmbeddingSpaceMismatchError: ``space`` is not the catalogue's.
    """
    records = sorted((_validated(r) for r in records), key=lambda r: r.sku)
    if not records:
        return UpsertCounts()
    skus = [r.sku for r in records]
    if len(set(skus)) != len(skus):
        raise InvalidProductError("duplicate SKUs in one upsert")

    def write(conn: Connection) -> UpsertCounts:
        raw = conn.connection.driver_connection
        assert raw is not None
        if space is not None:
            # Held to the commit: a switch to another space (imgsearch.reembedding) waits for this write or
            # comes first.
            stored = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS} FROM embedding_space FOR SHARE")).first()
            if stored is not None and (error := _mismatch(tuple(stored), space_tuple(space))):
                raise error
        for statement in _STAGING:
            conn.execute(sa.text(statement))
        with raw.cursor() as cur:
            register_vector_info(cur, TypeInfo.fetch(raw, "vector"))
            copy_products = f"COPY imgsearch_staging_products ({_STAGING_PRODUCT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            with cur.copy(copy_products) as copy:
                copy.set_types(_PRODUCT_TYPES)
                for r in records:
                    copy.write_row(
                        (
                            r.sku,
                            r.name,
                            r.category,
                            r.price,
                            bool(r.in_stock),
                            r.shop_product_id,
                            r.page_url,
                            None if r.attributes is None else Jsonb(r.attributes),
                            r.description,
                        )
                    )
            with cur.copy(f"COPY imgsearch_staging_images ({_IMAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_IMAGE_TYPES)
                for r in records:
                    for photo in r.images:
                        features = photo.features
                        packed = features.pack() if features is not None else (None, None)
                        copy.write_row(
                            (
                                r.sku,
                                photo.image,
                                photo.position,
                                photo.image_sha256,
                                photo.etag,
                                photo.last_modified,
                                photo.embedding,
                                photo.colour,
                                EXTRACTOR if features is not None else None,
                                features.width if features is not None else None,
                                features.height if features is not None else None,
                                *packed,
                            )
                        )
        try:
            with conn.begin_nested():
                products = conn.execute(_MERGE_PRODUCTS).all()
                given = tuple(c for c in _SHOP_FIELDS if any(getattr(r, c) is not None for r in records))
                shop_changed = set(conn.execute(_merge_shop_fields(given)).scalars()) if given else set()
                changed_photos = set(conn.execute(_MERGE_IMAGES).scalars())
                if any(photo.features is not None for r in records for photo in r.images):
                    written = conn.execute(_MERGE_FEATURES).all()
                    # Their visual words under the active vocabulary (none yet: nothing to do), so that searches
                    # can propose them by shared words as soon as they are committed.
                    visual_words.assign_and_store(
                        conn,
                        [row.image_id for row in written],
                        [LocalFeatures.unpack(row.points, row.descriptors, row.width, row.height) for row in written],
                    )
        except sa.exc.DBAPIError as exc:
            if _is_rejection(exc):
                raise InvalidProductError(_rejection_message(exc)) from None
            raise
        added = {sku for sku, inserted in products if inserted}
        updated = {sku for sku, inserted in products if not inserted}
        vanished = set(conn.execute(_VANISHED).scalars())
        if vanished:
            conn.execute(_UNDO_PHOTOLESS, {"skus": sorted(vanished & added)})
            added -= vanished
        pruned: list[str] = []
        if prune_images:
            with_photos = [r.sku for r in records if r.images and r.sku not in vanished]
            pruned = list(conn.execute(_PRUNE, {"skus": with_photos}).scalars())
        updated = (updated | shop_changed | changed_photos | set(pruned)) - added - vanished
        return UpsertCounts(
            added=len(added),
            updated=len(updated),
            unchanged=len(records) - len(added) - len(updated) - len(vanished),
            vanished=tuple(sorted(vanished)),
            photos_pruned=len(pruned),
        )

    return run_transaction(bind, write, reconnect=True)


def _is_rejection(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database refused the data itself (class 22 data exception, 23 constraint, 54 too large)."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate[:2] in ("22", "23", "54")


def _rejection_message(exc: sa.exc.DBAPIError) -> str:
    diag = getattr(exc.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    column = getattr(diag, "column_name", None)
    primary = getattr(diag, "message_primary", None) or " ".join(str(exc.orig).split())
    if column == "embedding":
        return "a new product needs an image embedding"
    rule = f" {constraint or column}" if constraint or column else ""
    return f"the database refused a product (rule{rule}): {primary[:200]}"


@dataclass(frozen=True)
class StoredPhoto:
    """What the catalogue holds of one photo, to tell whether it changed: its content hash, HTTP validators."""

    image_sha256: str | None
    etag: str | None = None
    last_modified: str | None = None
    has_colour: bool = True
    has_features: bool = True


def existing_photos(bind: Bind, skus: Iterable[str]) -> dict[str, dict[str, StoredPhoto]]:
    """``sku -> {image reference -> StoredPhoto}`` for the given SKUs that are in the catalogue."""
    wanted = list(skus)

    def read(conn: Connection) -> dict[str, dict[str, StoredPhoto]]:
        rows = conn.execute(
            sa.text(
                "SELECT p.sku, i.image, i.image_sha256, i.etag, i.last_modified, i.colour IS NOT NULL, "
                "EXISTS (SELECT 1 FROM photo_features f WHERE f.image_id = i.id AND f.extractor = :extractor) "
                "FROM products p LEFT JOIN product_images i ON i.product_id = p.id WHERE p.sku = ANY(:skus)"
            ),
            {"skus": wanted, "extractor": EXTRACTOR},
        )
        found: dict[str, dict[str, StoredPhoto]] = {}
        for sku, image, sha, etag, last_modified, has_colour, has_features in rows:
            photos = found.setdefault(sku, {})
            if image is not None:
                photos[image] = StoredPhoto(sha, etag, last_modified, has_colour, has_features)
        return found

    return run_transaction(bind, read, reconnect=True)


#: What a full sync does to products missing from the feed: remove them, or mark them sold out.
PRUNE_MODES = ("remove", "sold-out")


@dataclass(frozen=True)
class PruneResult:
    """What a full sync did to the products missing from the feed (or would have done, when refused)."""

    mode: str
    missing: int
    catalogue: int
    changed: int = 0
    refused: str | None = None


def prune_to(
    bind: Bind, feed_skus: set[str], mode: str, *, max_share: float, force: bool, dry_run: bool = False
) -> PruneResult:
    """Remove (or mark sold out, ``mode="sold-out"``) the products not in ``feed_skus``, in one transaction;
    refused when more than ``max_share`` of the catalogue would change, unless ``force``
    (see :func:`imgsearch.ingest.prune`). ``dry_run`` only says what would happen."""
    not_in_feed = "NOT EXISTS (SELECT 1 FROM imgsearch_feed f WHERE f.sku = p.sku)"
    if mode == "sold-out":
        not_in_feed += " AND p.in_stock"
    skus = sorted(feed_skus)

    def work(conn: Connection) -> PruneResult:
        raw = conn.connection.driver_connection
        assert raw is not None
        conn.execute(sa.text("CREATE TEMP TABLE IF NOT EXISTS imgsearch_feed (sku text) ON COMMIT DELETE ROWS"))
        conn.execute(sa.text("TRUNCATE imgsearch_feed"))
        with raw.cursor() as cur, cur.copy("COPY imgsearch_feed (sku) FROM STDIN") as copy:
            for sku in skus:
                copy.write_row((sku,))
        conn.execute(sa.text("ANALYZE imgsearch_feed"))
        size = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        # Locked in SKU order, like every writer here.
        missing = len(
            conn.execute(sa.text(f"SELECT 1 FROM products p WHERE {not_in_feed} ORDER BY p.sku FOR UPDATE")).all()
        )
        share = missing / size if size else 0.0
        if missing and share > max_share and not force:
            verb = "remove" if mode == "remove" else "mark sold out"
            return PruneResult(
                mode,
                missing,
                size,
                refused=f"the feed would {verb} {missing} of {size} products ({share:.0%}), more than the "
                f"{max_share:.0%} allowed: a truncated feed? Check it, or force it",
            )
        if dry_run:
            return PruneResult(mode, missing, size)
        if mode == "remove":
            changed = conn.execute(sa.text(f"DELETE FROM products p WHERE {not_in_feed}")).rowcount
        else:
            changed = conn.execute(sa.text(f"UPDATE products p SET in_stock = false WHERE {not_in_feed}")).rowcount
        return PruneResult(mode, missing, size, changed=changed)

    return run_transaction(bind, work, reconnect=True)


def _unknown_skus(missing: list[str]) -> UnknownSkuError:
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return UnknownSkuError(f"unknown SKU{'s' if len(missing) > 1 else ''}: {', '.join(missing[:10])}{more}")


def set_stock(bind: Bind, stock: Mapping[str, bool], *, missing_ok: bool = False) -> int:
    """Mark SKUs in or out of stock, all in one transaction. Returns how many rows changed.

    Rows are locked in SKU order (like every writer here), and a deadlock is retried. Only the small products
    rows change (no vector, no vector index: the updates are HOT).

    Raises:
        UnknownSkuError: a SKU is not in the catalogue and ``missing_ok`` is false (then nothing is changed).
    """
    return update_offers(bind, stock=stock, missing_ok=missing_ok)


def set_prices(bind: Bind, prices: Mapping[str, Decimal | float | int | None], *, missing_ok: bool = False) -> int:
    """Change prices (``None``: no price), all in one transaction. Returns how many rows changed.

    Raises:
        UnknownSkuError: a SKU is not in the catalogue and ``missing_ok`` is false (then nothing is changed).
        InvalidProductError: a price is not a number from 0 to 9,999,999,999.99 with at most 2 decimals.
    """
    return update_offers(bind, prices=prices, missing_ok=missing_ok)


_OFFERS = sa.text(
    """
    UPDATE products p SET
        in_stock = CASE WHEN u.set_stock THEN u.in_stock ELSE p.in_stock END,
        price = CASE WHEN u.set_price THEN u.price ELSE p.price END
    FROM unnest(CAST(:skus AS text[]), CAST(:set_stock AS boolean[]), CAST(:flags AS boolean[]),
                CAST(:set_price AS boolean[]), CAST(:prices AS numeric[]))
         AS u(sku, set_stock, in_stock, set_price, price)
    WHERE p.sku = u.sku
      AND (CASE WHEN u.set_stock THEN u.in_stock ELSE p.in_stock END,
           CASE WHEN u.set_price THEN u.price ELSE p.price END) IS DISTINCT FROM (p.in_stock, p.price)
    """
)


def update_offers(
    bind: Bind,
    *,
    stock: Mapping[str, bool] | None = None,
    prices: Mapping[str, Decimal | float | int | None] | None = None,
    missing_ok: bool = False,
) -> int:
    """Stock flags and prices of many products in one statement and one transaction (a stock system's sync).
    Returns how many products changed. See :func:`set_stock` and :func:`set_prices`."""
    stock, prices = dict(stock or {}), dict(prices or {})
    checked: dict[str, Decimal | None] = {}
    for sku, price in prices.items():
        if price is not None:
            try:
                check_product_fields(sku, "-", price=price)
            except InvalidProductError as exc:
                raise InvalidProductError(f"{sku}: {exc}") from None
        checked[sku] = None if price is None else Decimal(str(price))
    skus = sorted(set(stock) | set(checked))
    if not skus:
        return 0

    def write(conn: Connection) -> int:
        known = set(
            conn.execute(
                sa.text("SELECT sku FROM products WHERE sku = ANY(:s) ORDER BY sku FOR UPDATE"), {"s": skus}
            ).scalars()
        )
        missing = [s for s in skus if s not in known]
        if missing and not missing_ok:
            raise _unknown_skus(missing)
        result = conn.execute(
            _OFFERS,
            {
                "skus": skus,
                "set_stock": [s in stock for s in skus],
                "flags": [bool(stock.get(s, False)) for s in skus],
                "set_price": [s in checked for s in skus],
                "prices": [checked.get(s) for s in skus],
            },
        )
        return result.rowcount

    return run_transaction(bind, write, reconnect=True)


def missing_skus(bind: Bind, skus: Iterable[str]) -> list[str]:
    """The SKUs of ``skus`` that are not in the catalogue, in the order given."""
    wanted = list(dict.fromkeys(skus))
    with transaction(bind) as conn:
        known = set(conn.execute(sa.text("SELECT sku FROM products WHERE sku = ANY(:s)"), {"s": wanted}).scalars())
    return [s for s in wanted if s not in known]


def remove(bind: Bind, skus: Iterable[str], *, missing_ok: bool = False) -> int:
    """Delete products by SKU in one transaction. Returns how many were deleted.

    Raises:
        UnknownSkuError: a SKU is not in the catalogue and ``missing_ok`` is false (nothing is deleted).
    """
    skus = sorted(set(skus))

    def delete(conn: Connection) -> int:
        conn.execute(sa.text("SELECT 1 FROM products WHERE sku = ANY(:s) ORDER BY sku FOR UPDATE"), {"s": skus})
        deleted = set(
            conn.execute(sa.text("DELETE FROM products WHERE sku = ANY(:s) RETURNING sku"), {"s": skus}).scalars()
        )
        missing = [s for s in skus if s not in deleted]
        if missing and not missing_ok:
            raise _unknown_skus(missing)
        return len(deleted)

    return run_transaction(bind, delete)


@dataclass(frozen=True)
class Listing:
    """A product as every answer shows it (searches, duplicate groups, look-ups): one definition of these fields.
    ``image`` is the photo that matters for the answer (the closest to the query; the main photo of a look-up)."""

    sku: str
    name: str | None
    category: str
    price: Decimal | None
    in_stock: bool
    image: str | None
    #: The shop's own id of the product and its page on the shop's site, when the catalogue has them.
    shop_product_id: str | None = field(default=None, kw_only=True)
    page_url: str | None = field(default=None, kw_only=True)
    #: The shop's attributes of the product (:mod:`imgsearch.attributes`): brand, size, colour...
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict, kw_only=True, hash=False)


@dataclass(frozen=True)
class Product(Listing):
    """A stored product without its vectors. ``image`` is its main photo (the first), ``images`` all of them."""

    image_sha256: str | None
    images: tuple[str, ...] = ()


def get_product(bind: Bind, sku: str) -> Product | None:
    """The stored product ``sku``, or ``None`` if it is not in the catalogue."""
    with transaction(bind) as conn:
        row = conn.execute(
            sa.text(
                f"SELECT p.sku, p.name, p.category, p.price, p.in_stock, {SHOP_FIELDS_SQL}, "
                "array_agg(nullif(i.image, '') ORDER BY i.position, i.id) AS images, "
                "(array_agg(i.image_sha256 ORDER BY i.position, i.id))[1] AS sha "
                "FROM products p LEFT JOIN product_images i ON i.product_id = p.id WHERE p.sku = :sku "
                "GROUP BY p.id"
            ),
            {"sku": sku},
        ).one_or_none()
    if row is None:
        return None
    images = tuple(image for image in row.images if image is not None)
    return Product(
        row.sku,
        row.name,
        row.category,
        row.price,
        row.in_stock,
        images[0] if images else None,
        row.sha,
        images,
        shop_product_id=row.shop_product_id,
        page_url=row.page_url,
        attributes=row.attributes,
    )


def is_empty(bind: Bind) -> bool:
    """Whether the catalogue has no products (cheap at any size, unlike :func:`stats`)."""
    with transaction(bind) as conn:
        return not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM products)")).scalar_one()


def get_photo_vectors(bind: Bind, sku: str) -> np.ndarray | None:
    """The stored vectors of product ``sku``'s photos, in their order ((n, 512) float32), or ``None``."""
    statement = sa.text(
        "SELECT i.embedding FROM products p JOIN product_images i ON i.product_id = p.id WHERE p.sku = :sku "
        "ORDER BY i.position, i.id"
    ).columns(embedding=Vector(DIMENSION))
    with transaction(bind) as conn:
        vectors = conn.execute(statement, {"sku": sku}).scalars().all()
    return np.asarray(vectors, dtype=np.float32) if vectors else None


def get_embedding(bind: Bind, sku: str) -> np.ndarray | None:
    """The stored vector of product ``sku``'s main photo (float32, shape (512,)), or ``None`` if unknown."""
    vectors = get_photo_vectors(bind, sku)
    return None if vectors is None else vectors[0]


def stats(bind: Bind) -> CatalogueStats:
    """Products by category and stock, the embedding space, and the state of the vector index."""
    with transaction(bind) as conn:
        rows = conn.execute(
            sa.text(
                "SELECT category, count(*) AS n, count(*) FILTER (WHERE in_stock) AS s "
                "FROM products GROUP BY category ORDER BY n DESC, category"
            )
        ).all()
        index = conn.execute(
            sa.text(
                "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = 'product_images'::regclass "
                "AND a.amname = 'hnsw' AND i.indpred IS NULL AND c.relname NOT LIKE 'next\\_%'"
            )
        ).one_or_none()
        scan = conn.execute(sa.text(sql.command("scan_index_status"))).first()
        photos, table_size = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM product_images), "
                "pg_table_size('products') + pg_table_size('product_images')"
            )
        ).one()
    return CatalogueStats(
        products=sum(r.n for r in rows),
        in_stock=sum(r.s for r in rows),
        by_category={r.category: (r.n, r.s) for r in rows},
        space=stored_space(bind),
        index_name=index[0] if index else None,
        index_size_bytes=index[1] if index else None,
        table_size_bytes=table_size,
        photos=photos,
        scan_lists=scan.lists if scan is not None and scan.valid else None,
        scan_size_bytes=scan.size_bytes if scan is not None and scan.valid else None,
    )
