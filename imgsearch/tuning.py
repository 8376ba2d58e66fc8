"""A search space tuned to the shop's own catalogue: a linear map learnt from the products' categories.

Every product already has a category: free supervision. :func:`tune` learns a map from a sample of the
catalogue's photos and their categories (:mod:`imgsearch.projection`), stores it in the database (table
``search_spaces``, one row per map learnt, and ``search_space_rows``, the map as rows of ``vector(512)``),
projects every photo into it (``tuned_images``, with its own HNSW index and category indexes) and makes it
active. From then on the search functions project their query vectors themselves (``imgsearch_project``: 512
inner products) and search the tuned vectors, so a backend that passes a raw VGG16 vector to
``imgsearch_similar`` gets what the Python API and the CLI get. Photos ingested later are projected by a
trigger. The raw vectors are never changed: :func:`drop` goes back to them at once.

Tuning never blocks searches: the new vectors are written to a table nobody searches yet and indexed there;
only the final swap takes a moment, during which writers to the catalogue wait and photos changed meanwhile
are caught up. See docs/quality.md for what it buys and how the map was chosen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from psycopg import sql as pgsql
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from imgsearch import projection, sql
from imgsearch.catalogue import Bind
from imgsearch.db import retrying, schema_of, transaction, translate_error
from imgsearch.errors import BusyError, TuningError
from imgsearch.schema import LOCK_RETRY_WAITS, LOCK_TIMEOUT
from imgsearch.tables import DIMENSION

#: Products a map is learnt from by default: beyond this the statistics it needs no longer change, and
#: learning stays a matter of seconds at any catalogue size.
DEFAULT_SAMPLE = 100_000
#: ``imgsearch stats`` suggests tuning again once this share of the products is unseen by the active map
#: (added since it was learnt, or in categories it did not learn).
RETUNE_UNSEEN_SHARE = 0.2
#: Photos projected and written per batch.
BATCH = 20_000


@dataclass(frozen=True)
class SearchSpace:
    """A map learnt by :func:`tune`: when, by which method and parameters, and from how much of the catalogue."""

    id: int
    created_at: datetime
    method: str
    parameters: dict[str, Any]
    products: int
    photos: int
    categories: int


@dataclass(frozen=True)
class SpaceStatus:
    """The active space and how much of today's catalogue it has not seen."""

    space: SearchSpace
    catalogue_products: int
    unseen_products: int
    unseen_categories: tuple[str, ...] = field(default_factory=tuple)

    @property
    def unseen_share(self) -> float:
        """Share of the catalogue's products the map has not seen."""
        return self.unseen_products / self.catalogue_products if self.catalogue_products else 0.0

    @property
    def retune_suggested(self) -> bool:
        """Whether enough of the catalogue is new to the map to make tuning again worth it."""
        return self.unseen_share > RETUNE_UNSEEN_SHARE


@dataclass(frozen=True)
class TuneProgress:
    """Where :func:`tune` is: ``step`` is ``learn``, ``project``, ``index`` or ``activate``; ``done`` of ``total``
    photos for ``project``."""

    step: str
    done: int = 0
    total: int = 0


def status(bind: Bind) -> SpaceStatus | None:
    """The active tuned space and what it has not seen, or ``None`` when searches use the raw VGG16 space."""
    with transaction(bind) as conn:
        row = conn.execute(sa.text("SELECT * FROM imgsearch_space_status()")).one_or_none()
    if row is None:
        return None
    space = SearchSpace(
        id=row.space,
        created_at=row.created_at,
        method=row.method,
        parameters=dict(row.parameters),
        products=row.learnt_products,
        photos=row.learnt_photos,
        categories=row.learnt_categories,
    )
    return SpaceStatus(space, row.products, row.unseen_products, tuple(row.unseen_categories))


def tune(
    engine: Engine,
    *,
    sample: int | None = DEFAULT_SAMPLE,
    exclude_skus: Collection[str] = (),
    seed: int = 0,
    parameters: dict[str, Any] | None = None,
    progress: Callable[[TuneProgress], None] | None = None,
) -> SearchSpace:
    """Learn a map from the catalogue's categories, project every photo, and make it the space searches use.

    Args:
        engine: a connection with the right to create tables and indexes in imgsearch's schema (its owner).
        sample: learn from at most this many products, drawn by a seeded hash of their SKUs (``None``: all).
        exclude_skus: products not to learn from (cross-validation holds out the queries' products this way);
            they are projected and searchable like the others.
        seed: the draw of the sample.
        parameters: the map's family and parameters (:data:`imgsearch.projection.DEFAULT_PARAMS` and any
            override).
        progress: called at each step and after each batch of photos projected.

    Raises:
        TuningError: fewer than two categories with photos to learn from.
        BusyError: another ``imgsearch tune`` is running on this catalogue, or writers held the catalogue for
            longer than the swap may wait.
        PermissionDeniedError: the role may not create tables in imgsearch's schema.
    """
    if sample is not None and sample < 2:
        raise TuningError(f"sample must be at least 2 products, got {sample}")
    say = progress or (lambda _p: None)
    chosen = {**projection.DEFAULT_PARAMS, **(parameters or {})}
    raw = engine.raw_connection()
    driver: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
    try:
        driver.autocommit = True
        register_vector(driver)
        _lock(driver, schema_of(engine))
        driver.execute("SELECT imgsearch_discard_space_table()")
        say(TuneProgress("learn"))
        vectors, labels, products = _sample(driver, sample, exclude_skus, seed)
        categories = sorted(set(labels))
        if len([c for c in categories if labels.count(c) >= 2]) < 2:
            raise TuningError(
                "nothing to learn: tuning needs at least two categories with two photos or more "
                f"(found {len(categories)} categories in {len(labels)} photos)"
            )
        learnt = projection.fit(vectors, labels, **chosen)
        space_id = _store_map(driver, learnt, chosen, sample, seed, products, labels)
        try:
            driver.execute("SELECT imgsearch_prepare_space_table()")
            _fill(driver, learnt, say)
            say(TuneProgress("index"))
            driver.execute("SELECT imgsearch_index_space_table()")
            say(TuneProgress("activate"))
            _with_lock_retries(driver, "SELECT imgsearch_activate_space(%s)", (space_id,))
        except BaseException:
            _discard(driver)
            raise
        # Checked now that the swap is done, without blocking searches or writers.
        driver.execute("ALTER TABLE tuned_images VALIDATE CONSTRAINT tuned_images_image_id_fkey")
        driver.execute("ANALYZE tuned_images")
    except psycopg.Error as exc:
        raise translate_error(DBAPIError.instance("imgsearch tune", None, exc, psycopg.Error)) from None
    finally:
        if not driver.closed:
            driver.autocommit = False  # as the pool expects its connections back
        raw.invalidate()  # the session's advisory lock and settings go with it
    current = status(engine)
    assert current is not None and current.space.id == space_id
    return current.space


def drop(engine: Engine) -> SearchSpace | None:
    """Go back to the raw VGG16 space: the active map is retired (its record kept) and the tuned vectors
    removed. Returns the space retired, or ``None`` if none was active.

    Raises:
        BusyError: searches or a tune held the tuned vectors for longer than it may wait.
    """
    current = status(engine)
    if current is None:
        return None
    raw = engine.raw_connection()
    driver: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
    try:
        driver.autocommit = True
        _lock(driver, schema_of(engine))
        _with_lock_retries(driver, "SELECT imgsearch_retire_space()", ())
    except psycopg.Error as exc:
        raise translate_error(DBAPIError.instance("imgsearch tune --drop", None, exc, psycopg.Error)) from None
    finally:
        if not driver.closed:
            driver.autocommit = False
        raw.invalidate()
    return current.space


def _lock(driver: psycopg.Connection[Any], schema: str) -> None:
    """One tune (or drop) at a time per catalogue: a session advisory lock, released with the connection."""
    got = driver.execute("SELECT pg_try_advisory_lock(hashtext('imgsearch tune ' || %s))", (schema,)).fetchone()
    if not got or not got[0]:
        raise BusyError("another imgsearch tune is running on this catalogue; try again when it has finished")


def _sample(
    driver: psycopg.Connection[Any], sample: int | None, exclude: Collection[str], seed: int
) -> tuple[np.ndarray, list[str], int]:
    """The training photos' vectors and categories, and how many products they belong to."""
    params = {"excluded": list(exclude), "seed": seed, "n": sample}
    with driver.cursor(binary=True) as cur:
        rows = cur.execute(sql.command("tune_sample"), params).fetchall()
    if not rows:
        return np.zeros((0, DIMENSION), np.float32), [], 0
    vectors = np.stack([_array(r[0]) for r in rows])
    return vectors, [r[1] for r in rows], len({r[2] for r in rows})


def _array(value: Any) -> np.ndarray:
    """A vector as pgvector's binary loader gives it, as float32 NumPy."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def _store_map(
    driver: psycopg.Connection[Any],
    learnt: projection.Projection,
    parameters: dict[str, Any],
    sample: int | None,
    seed: int,
    products: int,
    labels: list[str],
) -> int:
    """The map as a new, inactive space: its record and its rows, in one transaction."""
    with driver.transaction():
        catalogue_products = driver.execute("SELECT count(*) FROM products").fetchone()[0]  # type: ignore[index]
        record = {**parameters, "sample": sample, "seed": seed}
        row = driver.execute(
            "INSERT INTO search_spaces (method, parameters, products, photos, categories, catalogue_products, shift) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                str(parameters.get("family", "")),
                json.dumps(record),
                products,
                len(labels),
                sorted(set(labels)),
                catalogue_products,
                learnt.shift,
            ),
        ).fetchone()
        assert row is not None
        space_id = int(row[0])
        with (
            driver.cursor() as cur,
            cur.copy("COPY search_space_rows (space_id, position, direction) FROM STDIN WITH (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int4", "int2", "vector"])
            for position, direction in enumerate(learnt.matrix):
                copy.write_row((space_id, position, direction))
    return space_id


def _fill(driver: psycopg.Connection[Any], learnt: projection.Projection, say: Callable[[TuneProgress], None]) -> None:
    """Every photo projected in NumPy, batch by batch, into tuned_images_next (with its row's version)."""
    total = driver.execute("SELECT count(*) FROM product_images").fetchone()[0]  # type: ignore[index]
    done, after = 0, 0
    say(TuneProgress("project", 0, total))
    statement = sql.command("tune_read_photos")
    while True:
        with driver.cursor(binary=True) as cur:
            rows = cur.execute(statement, {"after": after, "n": BATCH}).fetchall()
        if not rows:
            break
        tuned = learnt.apply(np.stack([_array(r[3]) for r in rows]))
        with (
            driver.cursor() as cur,
            cur.copy(
                "COPY tuned_images_next (image_id, product_id, category, embedding, source_xmin) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int8", "int8", "text", "vector", "int8"])
            for r, vector in zip(rows, tuned, strict=True):
                copy.write_row((r[0], r[1], r[2], vector, r[4]))
        done += len(rows)
        after = rows[-1][0]
        say(TuneProgress("project", done, max(total, done)))


def _with_lock_retries(driver: psycopg.Connection[Any], statement: str, params: tuple[Any, ...]) -> None:
    """Run a statement that needs a moment of exclusive access: it waits at most LOCK_TIMEOUT each time (searches
    queue behind a waiting lock), and gives way between attempts."""

    def attempt() -> None:
        with driver.transaction():
            driver.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(pgsql.Literal(LOCK_TIMEOUT)))
            driver.execute(statement, params)

    try:
        retrying(attempt, LOCK_RETRY_WAITS, lambda exc: isinstance(exc, psycopg.errors.LockNotAvailable))
    except psycopg.errors.LockNotAvailable:
        raise BusyError(
            "the catalogue stayed busy (writers or long searches held it): nothing changed; try again"
        ) from None


def _discard(driver: psycopg.Connection[Any]) -> None:
    """Leave nothing of an unfinished tune behind (best effort: the next tune cleans up too)."""
    try:
        if not driver.closed and not driver.broken:
            driver.execute("SELECT imgsearch_discard_space_table()")
    except psycopg.Error:
        pass
