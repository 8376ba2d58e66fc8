"""The photos' IVF index: the second source of a verified photo search's nearest products.

A shopper's phone photo is unlike the catalogue's studio photos. Among many look-alike products, the catalogue-wide
HNSW graph can lead the walk from such a photo into the dense part of the catalogue and never reach the product
photographed, whatever ``ef_search`` (benchmarks/results/global-candidates-100k.md: at 100,000 products the HNSW
top 50 held the shoppers' product for 0.00-0.08 of their photos, an exact top 50 for 0.32-0.72). An IVF index
(pgvector ``ivfflat``) groups the photos into lists around k-means centroids and reads whole lists near the query,
which an outlying photo does not defeat: with twice the square root of its lists probed it finds the printed
and packaged products an exact scan finds and most of the loose produce (0.31-0.67 of the photos), for 10-11 ms
more per search at 100,000 photos (37 ms more at a million, where produce keeps about half its exact recall).
``imgsearch_scan_candidates`` reads it and ``imgsearch_photo_candidates`` ranks its products with the walk's by
distance.

An IVF index learns its lists from the photos present when it is built, so it is built once the catalogue has
``IMGSEARCH_SCAN_INDEX_MIN_PHOTOS`` photos (10,000; below that the walk finds what a scan finds) with a list per
:data:`PHOTOS_PER_LIST` photos (pgvector's advice; the square root of the photos above a million), and built again,
beside the old one, when the catalogue has grown :data:`REBUILD_GROWTH` times. Ingestion does that by itself
(:func:`maintain`); ``imgsearch index scan`` does it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import sql as pgsql
from sqlalchemy.engine import Engine

from imgsearch import sql
from imgsearch.catalogue import Bind
from imgsearch.config import DEFAULT_SCAN_INDEX_MIN_PHOTOS
from imgsearch.db import autocommit_session, transaction
from imgsearch.errors import InvalidQueryError
from imgsearch.schema import LOCK_TIMEOUT

#: The index's name (imgsearch_scan_candidates reads it by this name).
INDEX = "ix_product_images_scan"
#: Photos per list, up to a million photos.
PHOTOS_PER_LIST = 1000
#: The index is built again when the catalogue holds this many times the photos it was built for.
REBUILD_GROWTH = 2


@dataclass(frozen=True)
class ScanIndex:
    """The photos' IVF index as it stands: its lists, whether searches can use it, its size, the photos now."""

    lists: int
    valid: bool
    size_bytes: int
    photos: int


def lists_for(photos: int) -> int:
    """The lists an index over ``photos`` photos gets (pgvector's advice)."""
    if photos <= 1_000_000:
        return max(1, photos // PHOTOS_PER_LIST)
    return int(math.sqrt(photos))


def photos_for(lists: int) -> int:
    """The catalogue size an index of ``lists`` lists was built for (the inverse of :func:`lists_for`)."""
    return lists * PHOTOS_PER_LIST if lists <= 1000 else lists * lists


def status(bind: Bind) -> ScanIndex | None:
    """The index, or None when the catalogue has none."""
    photos, row = _state(bind)
    return None if row is None else ScanIndex(row.lists, row.valid, row.size_bytes, photos)


def _state(bind: Bind) -> tuple[int, sa.Row | None]:
    """The catalogue's photos and the index's status row (None: no index), read in one transaction."""
    with transaction(bind) as conn:
        photos = conn.execute(sa.text("SELECT count(*) FROM product_images")).scalar_one()
        return photos, conn.execute(sa.text(sql.command("scan_index_status"))).first()


def maintain(engine: Engine, *, min_photos: int = DEFAULT_SCAN_INDEX_MIN_PHOTOS) -> ScanIndex | None:
    """Build the index when the catalogue has ``min_photos`` photos and none (or only a broken one), or has grown
    :data:`REBUILD_GROWTH` times since it was built; else nothing. Returns the index built.

    Raises:
        InvalidQueryError: ``min_photos`` is below 1.
        PermissionDeniedError: the connected role may not create indexes on the catalogue.
    """
    if min_photos < 1:
        raise InvalidQueryError(f"min_photos must be at least 1, got {min_photos}")
    photos, row = _state(engine)
    if photos < min_photos:
        return None
    if row is not None and row.valid and photos < REBUILD_GROWTH * photos_for(row.lists):
        return None
    return build(engine)


def build(engine: Engine, lists: int | None = None) -> ScanIndex:
    """Build the index now (again, if there is one), with ``lists`` lists (default: :func:`lists_for` the photos).

    The new index is built ``CONCURRENTLY`` beside the old one, which serves searches until it is swapped in:
    writes and searches go on meanwhile.

    Raises:
        InvalidQueryError: ``lists`` is not between 1 and 32768 (pgvector's limit).
        PermissionDeniedError: the connected role may not create indexes on the catalogue.
    """
    if lists is not None and not 1 <= lists <= 32768:
        raise InvalidQueryError(f"lists must be between 1 and 32768, got {lists}")
    fresh = pgsql.Identifier(f"{INDEX}_new")
    with autocommit_session(engine, "build the photos' scan index") as driver:  # CONCURRENTLY: no transaction
        driver.execute(pgsql.SQL("SET lock_timeout = {}").format(pgsql.Literal(LOCK_TIMEOUT)))
        # Learning the lists samples the photos in memory: room for a million of them at half precision.
        driver.execute("SET maintenance_work_mem = '1GB'")
        if lists is None:
            (photos,) = driver.execute("SELECT count(*) FROM product_images").fetchone() or (0,)
            lists = lists_for(int(photos))
        driver.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(fresh))  # a failed build's
        driver.execute(
            pgsql.SQL(sql.command("create_scan_index_concurrently")).format(index=fresh, lists=pgsql.Literal(lists))
        )
        driver.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(INDEX)))
        driver.execute(pgsql.SQL("ALTER INDEX {} RENAME TO {}").format(fresh, pgsql.Identifier(INDEX)))
    built = status(engine)
    assert built is not None
    return built


def drop(engine: Engine) -> bool:
    """Drop the index (verified searches go back to the HNSW walk alone); whether there was one."""
    with transaction(engine) as conn:
        existed = conn.execute(sa.text(sql.command("scan_index_status"))).first() is not None
    with autocommit_session(engine, "drop the photos' scan index") as driver:
        driver.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(INDEX)))
    return existed
