"""Writing to the catalogue: bulk upserts, stock changes, removals, statistics and the embedding space."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg.vector import register_vector_info
from pgvector.sqlalchemy import Vector
from psycopg.types import TypeInfo
from sqlalchemy.engine import Connection, Engine

from imgsearch.db import run_transaction, transaction
from imgsearch.errors import EmbeddingSpaceMismatchError, InvalidProductError, InvalidQueryError, UnknownSkuError
from imgsearch.models import DIMENSION
from imgsearch.validation import check_product_fields, unit_vector

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
    """What an upsert did: new SKUs, changed SKUs, SKUs whose stored row already matched, and the SKUs of
    metadata-only records whose product had been removed meanwhile (not written)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    vanished: tuple[str, ...] = ()

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(
            self.added + other.added,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.vanished + other.vanished,
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
    """``record`` as it will be stored (a unit vector), or :class:`InvalidProductError` naming the SKU."""
    try:
        check_product_fields(record.sku, record.category, record.name, record.image, record.price)
        if record.embedding is None:
            return record
        return replace(record, embedding=unit_vector(record.embedding, "embedding"))
    except InvalidQueryError as exc:
        label = record.sku if isinstance(record.sku, str) and len(record.sku) <= 80 else "a product"
        raise InvalidProductError(f"{label}: {exc}") from None


_STAGING_COLUMNS = "sku, name, category, price, in_stock, image, image_sha256, embedding"
_STAGING_TYPES = ["text", "text", "text", "numeric", "bool", "text", "text", "vector"]

# Rows are inserted in SKU order, so that concurrent writers lock shared rows in the same order (no deadlock).
# A metadata-only row (no embedding) whose product no longer exists (removed meanwhile) is left out; the
# caller finds it in the staging table afterwards (_VANISHED) and embeds its image again.
_MERGE = sa.text(
    f"""
    WITH merged AS (
        INSERT INTO products AS p ({_STAGING_COLUMNS})
        SELECT s.sku, s.name, s.category, s.price, s.in_stock, s.image, s.image_sha256,
               coalesce(s.embedding, e.embedding)
        FROM imgsearch_staging s LEFT JOIN products e ON e.sku = s.sku
        WHERE s.embedding IS NOT NULL OR e.embedding IS NOT NULL
        ORDER BY s.sku
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
_VANISHED = sa.text(
    "SELECT s.sku FROM imgsearch_staging s WHERE s.embedding IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM products p WHERE p.sku = s.sku) ORDER BY s.sku"
)


def upsert_products(bind: Bind, records: Sequence[ProductRecord]) -> UpsertCounts:
    """Insert or update products by SKU in one transaction, with binary COPY into a staging table and one merge.

    Rows whose stored values already match are left untouched (their ``updated_at`` does not move). Either all
    ``records`` are written or, on error, none. Vectors are stored scaled to length 1. A deadlock with another
    writer is retried. A metadata-only record (``embedding=None``) whose product was removed meanwhile is not
    written; its SKU is returned in :attr:`UpsertCounts.vanished`, for the caller to embed it again.

    Raises:
        InvalidProductError: a record cannot be stored (a field too long or not text, a bad price or vector, a
            duplicate SKU in ``records``, a new SKU without an embedding, or the database refused it).
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
                    copy.write_row(
                        (r.sku, r.name, r.category, r.price, bool(r.in_stock), r.image, r.image_sha256, r.embedding)
                    )
        try:
            with conn.begin_nested():
                added, updated = conn.execute(_MERGE).one()
        except sa.exc.DBAPIError as exc:
            if _is_rejection(exc):
                raise InvalidProductError(_rejection_message(exc)) from None
            raise
        vanished = tuple(conn.execute(_VANISHED).scalars())
        unchanged = len(records) - added - updated - len(vanished)
        return UpsertCounts(added=added, updated=updated, unchanged=unchanged, vanished=vanished)

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


def existing_hashes(bind: Bind, skus: Iterable[str]) -> dict[str, str | None]:
    """``sku -> image_sha256`` for the given SKUs that are already in the catalogue."""
    wanted = list(skus)

    def read(conn: Connection) -> dict[str, str | None]:
        rows = conn.execute(sa.text("SELECT sku, image_sha256 FROM products WHERE sku = ANY(:skus)"), {"skus": wanted})
        return {r.sku: r.image_sha256 for r in rows}

    return run_transaction(bind, read, reconnect=True)


def _unknown_skus(missing: list[str]) -> UnknownSkuError:
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return UnknownSkuError(f"unknown SKU{'s' if len(missing) > 1 else ''}: {', '.join(missing[:10])}{more}")


def set_stock(bind: Bind, stock: Mapping[str, bool], *, missing_ok: bool = False) -> int:
    """Mark SKUs in or out of stock, all in one transaction. Returns how many rows changed.

    Rows are locked in SKU order (like every writer here), and a deadlock is retried.

    Raises:
        UnknownSkuError: a SKU is not in the catalogue and ``missing_ok`` is false (then nothing is changed).
    """
    if not stock:
        return 0
    skus = sorted(stock)

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
            sa.text(
                "UPDATE products p SET in_stock = u.in_stock "
                "FROM unnest(CAST(:skus AS text[]), CAST(:flags AS boolean[])) AS u(sku, in_stock) "
                "WHERE p.sku = u.sku AND p.in_stock IS DISTINCT FROM u.in_stock"
            ),
            {"skus": skus, "flags": [bool(stock[s]) for s in skus]},
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
