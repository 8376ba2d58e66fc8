"""Writing to the catalogue: bulk upserts, stock changes, removals, statistics and the embedding space."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg.vector import register_vector_info
from pgvector.sqlalchemy import Vector
from psycopg.types import TypeInfo
from sqlalchemy.engine import Connection, Engine

from imgsearch.db import transaction
from imgsearch.errors import EmbeddingSpaceMismatchError, InvalidQueryError, UnknownSkuError
from imgsearch.models import DIMENSION

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
class ProductRecord:
    """A product to write. ``embedding=None`` keeps the stored vector (metadata-only update of a known SKU)."""

    sku: str
    category: str
    embedding: np.ndarray | None
    name: str | None = None
    price: Decimal | None = None
    in_stock: bool = True
    image: str | None = None
    image_sha256: str | None = None


@dataclass(frozen=True)
class UpsertCounts:
    """What an upsert did: new SKUs, changed SKUs, SKUs whose stored row already matched."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(self.added + other.added, self.updated + other.updated, self.unchanged + other.unchanged)


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


def stored_space(bind: Bind) -> StoredSpace | None:
    """The embedding space recorded in the catalogue, or ``None`` before the first ingest."""
    with transaction(bind) as conn:
        row = conn.execute(
            sa.text("SELECT model_name, weights_id, preprocessing_version, dimension FROM embedding_space")
        ).one_or_none()
    return StoredSpace(*row) if row else None


_SPACE_FIELDS = ("model", "weights", "preprocessing", "dimension")


def _space_tuple(space: SpaceLike) -> tuple[str, str, str, int]:
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
        + ". Vectors of different spaces cannot be compared: re-ingest the catalogue into a new database "
        "(or after `imgsearch db reset`) with the current settings"
    )


def check_space(bind: Bind, space: SpaceLike) -> None:
    """Raise :class:`EmbeddingSpaceMismatchError` if the catalogue's vectors come from another space.

    Query vectors must be made the way the catalogue's were; an empty catalogue accepts any space.
    """
    stored = stored_space(bind)
    if stored is not None and (error := _mismatch(_space_tuple(stored), _space_tuple(space))):
        raise error


def ensure_space(bind: Bind, space: SpaceLike) -> None:
    """Record ``space`` in an empty catalogue, or check it is the one already recorded.

    Raises:
        EmbeddingSpaceMismatchError: the catalogue holds vectors of another model, weights or preprocessing.
    """
    wanted = _space_tuple(space)
    with transaction(bind) as conn:
        # Locking the table stops two first ingests racing to record different spaces.
        conn.execute(sa.text("LOCK TABLE embedding_space IN SHARE ROW EXCLUSIVE MODE"))
        current = conn.execute(
            sa.text("SELECT model_name, weights_id, preprocessing_version, dimension FROM embedding_space")
        ).one_or_none()
        if current is not None:
            if error := _mismatch(tuple(current), wanted):
                raise error
            return
        if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM products)")).scalar_one():
            raise EmbeddingSpaceMismatchError(
                "the catalogue has products but no recorded embedding space; re-ingest it into a new database"
            )
        conn.execute(
            sa.text(
                "INSERT INTO embedding_space (model_name, weights_id, preprocessing_version, dimension) "
                "VALUES (:m, :w, :p, :d)"
            ),
            dict(zip("mwpd", wanted, strict=True)),
        )


def clear(bind: Bind) -> None:
    """Remove every product and the recorded embedding space (before re-ingesting with another model)."""
    with transaction(bind) as conn:
        conn.execute(sa.text("TRUNCATE products, embedding_space"))


def _validated(record: ProductRecord) -> ProductRecord:
    if record.embedding is not None:
        vector = np.asarray(record.embedding, dtype=np.float32)
        if vector.shape != (DIMENSION,) or not np.all(np.isfinite(vector)) or not np.any(vector):
            raise InvalidQueryError(f"{record.sku}: embedding must be {DIMENSION} finite numbers, not all zero")
    return record


_STAGING_COLUMNS = "sku, name, category, price, in_stock, image, image_sha256, embedding"
_STAGING_TYPES = ["text", "text", "text", "numeric", "bool", "text", "text", "vector"]

_MERGE = sa.text(
    f"""
    WITH merged AS (
        INSERT INTO products AS p ({_STAGING_COLUMNS})
        SELECT s.sku, s.name, s.category, s.price, s.in_stock, s.image, s.image_sha256,
               coalesce(s.embedding, (SELECT e.embedding FROM products e WHERE e.sku = s.sku))
        FROM imgsearch_staging s
        ON CONFLICT (sku) DO UPDATE SET
            name = EXCLUDED.name, category = EXCLUDED.category, price = EXCLUDED.price,
            in_stock = EXCLUDED.in_stock, image = EXCLUDED.image, image_sha256 = EXCLUDED.image_sha256,
            embedding = EXCLUDED.embedding
        WHERE (p.name, p.category, p.price, p.in_stock, p.image, p.image_sha256, p.embedding)
              IS DISTINCT FROM
              (EXCLUDED.name, EXCLUDED.category, EXCLUDED.price, EXCLUDED.in_stock, EXCLUDED.image,
               EXCLUDED.image_sha256, EXCLUDED.embedding)
        RETURNING (xmax = 0) AS inserted
    )
    SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged
    """
)


def upsert_products(bind: Bind, records: Sequence[ProductRecord]) -> UpsertCounts:
    """Insert or update products by SKU in one transaction, with binary COPY into a staging table and one merge.

    Rows whose stored values already match are left untouched (their ``updated_at`` does not move). Either all
    ``records`` are written or, on error, none.

    Raises:
        InvalidQueryError: a record is invalid (bad embedding, duplicate SKU in ``records``, a new SKU
            without an embedding, a constraint violated).
    """
    records = [_validated(r) for r in records]
    if not records:
        return UpsertCounts()
    skus = [r.sku for r in records]
    if len(set(skus)) != len(skus):
        raise InvalidQueryError("duplicate SKUs in one upsert")
    with transaction(bind) as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE IF NOT EXISTS imgsearch_staging (sku text, name text, category text, "
                "price numeric, in_stock boolean, image text, image_sha256 text, embedding vector(512)) "
                "ON COMMIT DELETE ROWS"
            )
        )
        conn.execute(sa.text("TRUNCATE imgsearch_staging"))
        with raw.cursor() as cur:
            register_vector_info(cur, TypeInfo.fetch(raw, "vector"))
            with cur.copy(f"COPY imgsearch_staging ({_STAGING_COLUMNS}) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(_STAGING_TYPES)
                for r in records:
                    vector = None if r.embedding is None else np.asarray(r.embedding, dtype=np.float32)
                    copy.write_row(
                        (r.sku, r.name, r.category, r.price, bool(r.in_stock), r.image, r.image_sha256, vector)
                    )
        try:
            with conn.begin_nested():
                added, updated = conn.execute(_MERGE).one()
        except sa.exc.IntegrityError as exc:
            raise InvalidQueryError(_constraint_message(exc)) from None
    return UpsertCounts(added=added, updated=updated, unchanged=len(records) - added - updated)


def _constraint_message(exc: sa.exc.IntegrityError) -> str:
    diag = getattr(exc.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    column = getattr(diag, "column_name", None)
    if column == "embedding":
        return "a new product needs an image embedding"
    return (
        f"a product violates the catalogue's rule {constraint or column or ''}: {diag.message_primary if diag else exc}"
    )


def existing_hashes(bind: Bind, skus: Iterable[str]) -> dict[str, str | None]:
    """``sku -> image_sha256`` for the given SKUs that are already in the catalogue."""
    with transaction(bind) as conn:
        rows = conn.execute(
            sa.text("SELECT sku, image_sha256 FROM products WHERE sku = ANY(:skus)"), {"skus": list(skus)}
        ).all()
    return {r.sku: r.image_sha256 for r in rows}


def _unknown_skus(missing: list[str]) -> UnknownSkuError:
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return UnknownSkuError(f"unknown SKU{'s' if len(missing) > 1 else ''}: {', '.join(missing[:10])}{more}")


def set_stock(bind: Bind, stock: Mapping[str, bool]) -> int:
    """Mark SKUs in or out of stock, all in one transaction. Returns how many rows changed.

    Raises:
        UnknownSkuError: any SKU is not in the catalogue (then nothing is changed).
    """
    if not stock:
        return 0
    skus = list(stock)
    with transaction(bind) as conn:
        known = set(conn.execute(sa.text("SELECT sku FROM products WHERE sku = ANY(:s)"), {"s": skus}).scalars())
        missing = [s for s in skus if s not in known]
        if missing:
            raise _unknown_skus(missing)
        result = conn.execute(
            sa.text(
                "UPDATE products p SET in_stock = u.in_stock "
                "FROM unnest(CAST(:skus AS text[]), CAST(:flags AS boolean[])) AS u(sku, in_stock) "
                "WHERE p.sku = u.sku AND p.in_stock IS DISTINCT FROM u.in_stock"
            ),
            {"skus": skus, "flags": [bool(stock[s]) for s in skus]},
        )
    return result.rowcount


def remove(bind: Bind, skus: Iterable[str], *, missing_ok: bool = False) -> int:
    """Delete products by SKU in one transaction. Returns how many were deleted.

    Raises:
        UnknownSkuError: a SKU is not in the catalogue and ``missing_ok`` is false (nothing is deleted).
    """
    skus = list(dict.fromkeys(skus))
    with transaction(bind) as conn:
        deleted = set(
            conn.execute(sa.text("DELETE FROM products WHERE sku = ANY(:s) RETURNING sku"), {"s": skus}).scalars()
        )
        missing = [s for s in skus if s not in deleted]
        if missing and not missing_ok:
            raise _unknown_skus(missing)
    return len(deleted)


@dataclass(frozen=True)
class Product:
    """A stored product without its vector."""

    sku: str
    name: str | None
    category: str
    price: Decimal | None
    in_stock: bool
    image: str | None
    image_sha256: str | None


def get_product(bind: Bind, sku: str) -> Product | None:
    """The stored product ``sku``, or ``None`` if it is not in the catalogue."""
    with transaction(bind) as conn:
        row = conn.execute(
            sa.text("SELECT sku, name, category, price, in_stock, image, image_sha256 FROM products WHERE sku = :sku"),
            {"sku": sku},
        ).one_or_none()
    return Product(*row) if row else None


def is_empty(bind: Bind) -> bool:
    """Whether the catalogue has no products (cheap at any size, unlike :func:`stats`)."""
    with transaction(bind) as conn:
        return not conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM products)")).scalar_one()


def get_embedding(bind: Bind, sku: str) -> np.ndarray | None:
    """The stored vector of product ``sku`` (float32, shape (512,)), or ``None`` if it is not in the catalogue."""
    statement = sa.text("SELECT embedding FROM products WHERE sku = :sku").columns(embedding=Vector(DIMENSION))
    with transaction(bind) as conn:
        vector = conn.execute(statement, {"sku": sku}).scalar_one_or_none()
    return None if vector is None else np.asarray(vector, dtype=np.float32)


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
                "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = 'products'::regclass AND a.amname = 'hnsw' "
                "AND i.indpred IS NULL"
            )
        ).one_or_none()
        table_size = conn.execute(sa.text("SELECT pg_table_size('products')")).scalar_one()
    return CatalogueStats(
        products=sum(r.n for r in rows),
        in_stock=sum(r.s for r in rows),
        by_category={r.category: (r.n, r.s) for r in rows},
        space=stored_space(bind),
        index_name=index[0] if index else None,
        index_size_bytes=index[1] if index else None,
        table_size_bytes=table_size,
    )
