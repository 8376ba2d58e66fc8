"""Category indexes: partial HNSW indexes that keep searches filtered to one category fast.

The catalogue-wide HNSW index serves a category filter by walking the graph from the query outwards and
skipping other categories. When the query photo looks nothing like the category (a dress searched among
watches) that walk passes many products before it meets the category, up to ``imgsearch.max_scan_tuples``,
and then falls back to exact search over the whole category: hundreds of milliseconds per query. A category
index holds only that category's products, so the same search walks a graph where every product matches.
The SQL search functions pick it by themselves when the filter is exactly that one category; nothing changes
for callers. Each index costs disk (about the category's share of the catalogue-wide index) and some insert
time for that category's products. Building one locks the catalogue against writes (reads and searches go
on) for as long as it takes. See docs/filtered-search.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql as pgsql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from imgsearch import sql
from imgsearch.catalogue import Bind
from imgsearch.config import DEFAULT_CATEGORY_INDEX_MIN_PRODUCTS
from imgsearch.db import autocommit_session, transaction, translate_error
from imgsearch.errors import InvalidQueryError, UnknownCategoryError
from imgsearch.schema import LOCK_TIMEOUT


@dataclass(frozen=True)
class CategoryIndex:
    """A category index: its category, its name in the database, the category's products and its size."""

    category: str
    index_name: str
    products: int
    size_bytes: int


def _call(bind: Bind, statement: str, params: dict[str, object] | None = None) -> list[sa.Row[Any]]:
    """Run one statement calling the category-index SQL functions, with their errors as library exceptions."""
    try:
        with transaction(bind) as conn:
            # Index DDL waits for writers to finish; while it waits, searches queue behind it: not for long.
            conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true)"), {"t": LOCK_TIMEOUT})
            return list(conn.execute(sa.text(statement), params or {}).all())
    except DBAPIError as exc:
        raise translate_error(exc, not_found=UnknownCategoryError) from None


def _category_indexes(bind: Bind, category: str | None = None) -> list[CategoryIndex]:
    statement = "SELECT * FROM imgsearch_category_indexes()"
    if category is not None:
        statement += " WHERE category = :category"
    rows = _call(bind, statement, {"category": category})
    return [CategoryIndex(r.category, r.index_name, r.products, r.size_bytes) for r in rows]


def list_category_indexes(bind: Bind) -> list[CategoryIndex]:
    """The category indexes of the catalogue, by category."""
    return _category_indexes(bind)


def create_category_index(bind: Bind, category: str) -> CategoryIndex:
    """Build the index of ``category`` (nothing to do if it exists) and return it.

    Raises:
        UnknownCategoryError: no product has this category (nothing is created).
    """
    _call(bind, "SELECT imgsearch_create_category_index(:category)", {"category": category})
    (index,) = _category_indexes(bind, category)
    return index


def drop_category_index(bind: Bind, category: str, *, missing_ok: bool = False) -> bool:
    """Drop the index of ``category``; searches in it go back to the catalogue-wide index.

    Returns whether an index was dropped.

    Raises:
        UnknownCategoryError: ``category`` has no index and ``missing_ok`` is false.
    """
    dropped = _call(bind, "SELECT imgsearch_drop_category_index(:category)", {"category": category})[0][0]
    if not dropped and not missing_ok:
        raise UnknownCategoryError(f"category {category!r} has no category index")
    return bool(dropped)


def create_category_indexes(
    bind: Bind, categories: Iterable[str], on_created: Callable[[CategoryIndex], None] | None = None
) -> list[CategoryIndex]:
    """Build the indexes of ``categories`` (existing ones are kept), after checking that every one has products.

    Each index is committed as soon as it is built, so an interrupted run keeps the ones done; ``on_created``
    is called after each. Returns the indexes, in the order given.

    Raises:
        UnknownCategoryError: a category has no products (nothing is built).
    """
    categories = list(dict.fromkeys(categories))
    missing = _call(
        bind,
        "SELECT c FROM unnest(CAST(:categories AS text[])) c "
        "WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.in_stock IN (true, false) AND p.category = c)",
        {"categories": categories},
    )
    if missing:
        names = ", ".join(repr(c) for (c,) in missing)
        raise UnknownCategoryError(f"no products in category {names}; no index built")
    built = []
    for category in categories:
        index = create_category_index(bind, category)
        built.append(index)
        if on_created is not None:
            on_created(index)
    return built


def index_large_categories(
    bind: Bind, min_products: int, on_created: Callable[[CategoryIndex], None] | None = None
) -> list[CategoryIndex]:
    """Build the missing indexes of every category with at least ``min_products`` products, largest first.

    Each index is committed as soon as it is built, so an interrupted run keeps the ones done; ``on_created``
    is called after each. Returns the indexes built.

    Raises:
        InvalidQueryError: ``min_products`` is below 1.
    """
    if min_products < 1:
        raise InvalidQueryError(f"min_products must be at least 1, got {min_products}")
    indexed = {i.category for i in list_category_indexes(bind)}
    large = _call(
        bind,
        "SELECT category FROM products GROUP BY category HAVING count(*) >= :n ORDER BY count(*) DESC, category",
        {"n": min_products},
    )
    return create_category_indexes(bind, [c for (c,) in large if c not in indexed], on_created)


#: A category gets its own index automatically only while it holds at most this share of the catalogue: a walk of
#: the catalogue-wide index meets a larger one soon enough, and its index would nearly duplicate that one.
AUTO_INDEX_MAX_SHARE = 0.5


def maintain_category_indexes(
    engine: Engine,
    *,
    min_products: int = DEFAULT_CATEGORY_INDEX_MIN_PRODUCTS,
    max_share: float = AUTO_INDEX_MAX_SHARE,
    on_created: Callable[[CategoryIndex], None] | None = None,
) -> list[CategoryIndex]:
    """Keep category indexes where they pay, so that a shop that runs nothing but ``ingest`` gets them.

    Builds the missing index of every category with at least ``min_products`` products and at most
    ``max_share`` of the catalogue, largest first, and drops the indexes of categories that fell below half of
    ``min_products`` (so that a category near the line is not rebuilt at every sync). Indexes are built and
    dropped ``CONCURRENTLY``: writes go on meanwhile. An index that a failed concurrent build left invalid is
    dropped and built again. While a tuned search space is active, its vectors get the same indexes. Needs the
    right to create indexes on the catalogue (the schema's owner). Returns the indexes built.

    Raises:
        InvalidQueryError: ``min_products`` is below 1 or ``max_share`` is not in (0, 1].
        PermissionDeniedError: the connected role may not create indexes on the catalogue.
    """
    if min_products < 1:
        raise InvalidQueryError(f"min_products must be at least 1, got {min_products}")
    if not 0 < max_share <= 1:
        raise InvalidQueryError(f"max_share must be in (0, 1], got {max_share}")
    built: list[CategoryIndex] = []
    with autocommit_session(engine, "maintain category indexes") as driver:  # CONCURRENTLY: no transaction
        driver.execute(pgsql.SQL("SET lock_timeout = {}").format(pgsql.Literal(LOCK_TIMEOUT)))
        rows = driver.execute(sql.command("category_sizes")).fetchall()
        sizes = {category: products for category, products, _ in rows}
        total = int(rows[0][2]) if rows else 0
        tuned = driver.execute("SELECT imgsearch_active_space()").fetchone()[0] is not None
        existing = {
            (table, category): (name, valid)
            for category, name, valid, table in driver.execute(sql.command("category_index_states"))
        }
        for (_table, category), (name, valid) in existing.items():
            if not valid or sizes.get(category, 0) < min_products // 2:
                _run(driver, "drop_category_index_concurrently", index=pgsql.Identifier(name))
        tables = {"product_images": "imgsearch_category_index_name"}
        if tuned:  # the tuned space's vectors get the same indexes
            tables["tuned_images"] = "imgsearch_tuned_category_index_name"
        for category in sorted(sizes, key=lambda c: (-sizes[c], c)):
            if sizes[category] < min_products or sizes[category] > max_share * total:
                continue
            missing = [t for t in tables if not existing.get((t, category), ("", False))[1]]
            if not missing:
                continue
            for table in missing:
                (name,) = driver.execute(
                    pgsql.SQL("SELECT {}(%s)").format(pgsql.Identifier(tables[table])), (category,)
                ).fetchone() or ("",)
                names = {
                    "index": pgsql.Identifier(name),
                    "table": pgsql.Identifier(table),
                    "category": pgsql.Literal(category),
                }
                _run(driver, "create_category_index_concurrently", **names)
                _run(driver, "comment_category_index", **names)
            (index,) = _category_indexes(engine, category)
            built.append(index)
            if on_created is not None:
                on_created(index)
    return built


def _run(driver: psycopg.Connection[Any], command: str, **names: pgsql.Composable) -> None:
    """Run an administration statement from ``imgsearch/sql/commands`` with its identifiers filled in."""
    driver.execute(pgsql.SQL(sql.command(command)).format(**names))
