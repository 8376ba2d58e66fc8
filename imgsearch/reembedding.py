"""Moving a catalogue to another embedding space in place, while the current one keeps serving (``imgsearch reembed``).

A catalogue's vectors all come from one pipeline (its embedding space); a search compares a photo's vector with
them, so a catalogue cannot mix two. Moving it to another pipeline (``rmac`` for shoppers' phone photos, or a
future default) used to mean ingesting everything again into a new database. Here the photos are embedded again
into ``product_images.embedding_next`` (revision 0022) in batches, from the files and URLs they were ingested
from, while every search and write goes on with the current vectors. A photo that changes meanwhile loses its
next vector (a trigger) and is embedded again. Then the indexes over the vectors (the HNSW graph, the category
indexes, the photos' IVF index) are built a second time over the next vectors, ``CONCURRENTLY``. Finally one short
transaction switches: writers wait for it, searches only for its last few milliseconds (column and index renames);
the recorded embedding space becomes the new one, and a tuned search space, learnt from the old vectors, is
retired (``imgsearch tune`` learns one again).

Every step can be interrupted and run again: it resumes where it stopped. ``cancel`` forgets the next vectors.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import sql as pgsql
from sqlalchemy.engine import Engine

from imgsearch.catalogue import SPACE_COLUMNS, Bind, SpaceLike, StoredSpace, space_tuple
from imgsearch.db import autocommit_session, transaction
from imgsearch.errors import BusyError, EmbeddingSpaceMismatchError, ImageError, InvalidQueryError
from imgsearch.fetch import Fetcher, is_url
from imgsearch.images import file_sha256
from imgsearch.schema import LOCK_TIMEOUT
from imgsearch.sources import Failure

#: Photos read, embedded and written per batch.
BATCH = 256
#: How often the switch is tried before giving up when photos keep changing under it.
SWITCH_ATTEMPTS = 5
#: The prefix of an index's copy over the next vectors (renamed to the original's name by the switch): a prefix, so
#: that no copy matches the names by which the category indexes and the scan index are found.
COPY_PREFIX = "next_"
_NAME_LIMIT = 63
_INDEX_DEFINITION = re.compile(r"^CREATE (?:UNIQUE )?INDEX (\S+) ON (.*)$", re.S)
_CURRENT = re.compile(r"\bembedding\b")
_NEXT = re.compile(r"\bembedding_next\b")


@dataclass(frozen=True)
class ReembedStatus:
    """A re-embedding under way: from which space to which, since when, and how far it is."""

    current: StoredSpace
    target: StoredSpace
    started_at: datetime
    photos: int
    embedded: int

    @property
    def pending(self) -> int:
        """Photos still without a vector in the target space."""
        return self.photos - self.embedded


@dataclass
class ReembedReport:
    """What :func:`run` did: photos embedded, the ones that could not be, and whether the catalogue switched."""

    target: StoredSpace
    embedded: int = 0
    failures: list[Failure] = field(default_factory=list)
    switched: bool = False
    pending: int = 0
    seconds: float = 0.0
    #: How long the switch held the catalogue's searches (its renames) and its writers, in seconds.
    held_seconds: float | None = None
    writers_held_seconds: float | None = None


def status(bind: Bind) -> ReembedStatus | None:
    """The re-embedding under way, or None."""
    with transaction(bind) as conn:
        target = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS}, started_at FROM embedding_space_next")).first()
        if target is None:
            return None
        current = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS} FROM embedding_space")).one()
        photos, embedded = conn.execute(sa.text("SELECT count(*), count(embedding_next) FROM product_images")).one()
    return ReembedStatus(StoredSpace(*current), StoredSpace(*target[:4]), target.started_at, photos, embedded)


def start(bind: Bind, space: SpaceLike) -> ReembedStatus:
    """Record ``space`` as the one the catalogue moves to (or find it already recorded: the work resumes).

    Raises:
        InvalidQueryError: the catalogue is empty, already in ``space``, or moving to another space.
    """
    wanted = space_tuple(space)
    with transaction(bind) as conn:
        conn.execute(sa.text("LOCK TABLE embedding_space_next IN SHARE ROW EXCLUSIVE MODE"))
        current = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS} FROM embedding_space")).first()
        if current is None:
            raise InvalidQueryError("the catalogue is empty: ingest it with the pipeline it should have")
        if tuple(current) == wanted:
            raise InvalidQueryError(f"the catalogue's vectors are already {space_label(space)}")
        under_way = conn.execute(sa.text(f"SELECT {SPACE_COLUMNS} FROM embedding_space_next")).first()
        if under_way is not None and tuple(under_way) != wanted:
            raise InvalidQueryError(
                f"a re-embedding to {space_label(StoredSpace(*under_way))} is under way: finish it, or cancel it first "
                "(`imgsearch reembed --cancel`)"
            )
        if under_way is None:
            conn.execute(
                sa.text(f"INSERT INTO embedding_space_next ({SPACE_COLUMNS}) VALUES (:m, :w, :p, :d)"),
                dict(zip("mwpd", wanted, strict=True)),
            )
    found = status(bind)
    assert found is not None
    return found


def embed_pending(
    bind: Bind,
    featurizer: Any,
    *,
    image_root: Path | None = None,
    fetcher: Fetcher | None = None,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, list[Failure]]:
    """Embed every photo that has no vector in the target space yet; returns the photos embedded and the ones that
    could not be (each with its reason; they stay pending). ``progress(done, total)`` is told after every batch.

    Raises:
        EmbeddingSpaceMismatchError: ``featurizer`` does not make vectors of the target space.
        InvalidQueryError: no re-embedding is under way.
    """
    under_way = status(bind)
    if under_way is None:
        raise InvalidQueryError("no re-embedding is under way")
    if space_tuple(featurizer.space) != space_tuple(under_way.target):
        raise EmbeddingSpaceMismatchError(
            f"the re-embedding under way moves the catalogue to {space_label(under_way.target)}, "
            f"not {space_label(featurizer.space)}"
        )
    own_fetcher = fetcher is None
    fetcher = fetcher or Fetcher()
    embedded, failures, after = 0, [], 0
    try:
        while rows := pending(bind, after, batch):
            after = rows[-1].id
            done, failed = _embed_batch(bind, featurizer, rows, image_root, fetcher)
            embedded += done
            failures.extend(failed)
            if progress is not None:
                progress(embedded + len(failures), under_way.pending)
    finally:
        if own_fetcher:
            fetcher.close()
    return embedded, failures


def pending(bind: Bind, after: int, batch: int) -> list[sa.Row]:
    """Up to ``batch`` photos after photo id ``after`` without a next vector: id, image, image_sha256, sku."""
    with transaction(bind) as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT i.id, i.image, i.image_sha256, p.sku FROM product_images i "
                    "JOIN products p ON p.id = i.product_id "
                    "WHERE i.embedding_next IS NULL AND i.id > :after ORDER BY i.id LIMIT :n"
                ),
                {"after": after, "n": batch},
            )
        )


def _embed_batch(
    bind: Bind, featurizer: Any, rows: list[sa.Row], image_root: Path | None, fetcher: Fetcher
) -> tuple[int, list[Failure]]:
    """Read, check and embed one batch of photos; write the vectors of those still as they were read."""
    failures: list[Failure] = []
    taken: list[sa.Row] = []

    def sources() -> Iterator[Any]:
        # Lazily, so that at most a few batches of downloaded photos are held at a time.
        downloads = fetcher.fetch_many((r.image, None) for r in rows if is_url(r.image))
        for row in rows:
            download = next(downloads) if is_url(row.image) else None
            try:
                source = _source(row, image_root, download)
            except ImageError as exc:
                failures.append(Failure(row.sku, row.image or "(a vector given without a photo)", str(exc)))
                continue
            taken.append(row)
            yield source

    written: list[tuple[int, str, str | None, str]] = []
    for position, result in enumerate(featurizer.embed_files(sources())):
        row = taken[position]
        if result.vector is None:
            failures.append(Failure(row.sku, row.image, result.error or "could not be embedded"))
        else:
            written.append((row.id, row.image, row.image_sha256, vector_text(result.vector)))
    return write_vectors(bind, written), failures


def write_vectors(bind: Bind, photos: list[tuple[int, str, str | None, str]]) -> int:
    """Store next vectors: ``(photo id, image, image_sha256, vector as text)`` each, as they were read. Only photos
    still as they were read are written (a photo changed meanwhile is embedded again in the next pass); returns
    how many were."""
    if not photos:
        return 0
    ids, images, shas, vectors = (list(c) for c in zip(*photos, strict=True))
    with transaction(bind) as conn:
        return conn.execute(
            sa.text(
                "UPDATE product_images p SET embedding_next = n.embedding FROM ("
                "SELECT unnest(CAST(:ids AS bigint[])) AS id, unnest(CAST(:images AS text[])) AS image, "
                "unnest(CAST(:shas AS text[])) AS sha, unnest(CAST(:vectors AS vector[])) AS embedding) n "
                "WHERE p.id = n.id AND p.image = n.image AND p.image_sha256 IS NOT DISTINCT FROM n.sha "
                "AND p.embedding_next IS NULL"
            ),
            {"ids": ids, "images": images, "shas": shas, "vectors": vectors},
        ).rowcount


def vector_text(vector: np.ndarray) -> str:
    """A vector as pgvector's text form, exact for float32."""
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(vector, dtype=np.float32)) + "]"


def _source(row: sa.Row, image_root: Path | None, download: Any) -> Any:
    """What the decoder reads for a stored photo, once its bytes are known to be the ones ingested."""
    if not row.image:
        raise ImageError("a vector given without a photo cannot be embedded again: ingest the product with its photo")
    if download is not None:
        if download.error is not None:
            raise ImageError(download.error)
        sha, stream = download.sha256, io.BytesIO(download.data)
        stream.name = row.image  # type: ignore[attr-defined]
        location: Any = stream
    else:
        path = Path(row.image)
        if not path.is_absolute():
            if image_root is None:
                raise ImageError("stored relative to the image root: set IMGSEARCH_IMAGE_ROOT")
            path = image_root / path
        sha, location = file_sha256(path), str(path)
    if row.image_sha256 is not None and sha != row.image_sha256:
        raise ImageError("the photo changed since it was ingested: sync the catalogue first")
    return location


@dataclass(frozen=True)
class _Index:
    name: str
    definition: str
    valid: bool
    #: A category index is found by its comment (its category).
    comment: str | None


def _indexes(driver: psycopg.Connection[Any]) -> tuple[dict[str, _Index], dict[str, _Index]]:
    """The indexes over the current vectors and their copies over the next ones, by name."""
    rows = driver.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid, obj_description(c.oid, 'pg_class') "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'product_images'::regclass"
    ).fetchall()
    originals, copies = {}, {}
    for name, definition, valid, comment in rows:
        match = _INDEX_DEFINITION.match(definition)
        if match is None:
            continue
        over = match.group(2)
        if name.startswith(COPY_PREFIX):
            if _NEXT.search(over):
                copies[name] = _Index(name, definition, valid, comment)
        elif _CURRENT.search(over):
            originals[name] = _Index(name, definition, valid, comment)
    return originals, copies


def copy_name(name: str) -> str:
    """The name of an index's copy over the next vectors."""
    return COPY_PREFIX + name[: _NAME_LIMIT - len(COPY_PREFIX)]


def build_copies(engine: Engine) -> list[str]:
    """Build, ``CONCURRENTLY``, a copy over the next vectors of every index over the current ones that has none
    (and drop copies whose original is gone); returns the copies built. Needs the schema owner."""
    built = []
    with autocommit_session(engine, "index the next vectors") as driver:
        driver.execute(pgsql.SQL("SET lock_timeout = {}").format(pgsql.Literal(LOCK_TIMEOUT)))
        driver.execute("SET maintenance_work_mem = '1GB'")
        originals, copies = _indexes(driver)
        wanted = {copy_name(name): index for name, index in originals.items()}
        for name, copy in copies.items():
            if name not in wanted or not copy.valid:  # an orphan, or what a failed build left
                driver.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(name)))
        _, copies = _indexes(driver)
        for name, original in wanted.items():
            if name in copies:
                continue
            match = _INDEX_DEFINITION.match(original.definition)
            assert match is not None
            over = _CURRENT.sub("embedding_next", match.group(2))
            statement = (
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS " + pgsql.Identifier(name).as_string(driver) + " ON " + over
            )
            driver.execute(statement.encode())
            built.append(name)
    return built


@dataclass(frozen=True)
class Switched:
    """How long a switch held searches (its renames) and writers (its whole transaction), in seconds."""

    searches_held: float
    writers_held: float


class _NotYet(Exception):
    """The switch found photos without a next vector, or an index without its copy: back to work first."""


def switch(engine: Engine) -> Switched:
    """Switch the catalogue to the next vectors in one transaction; returns how long searches and writers waited.

    Raises:
        _NotYet: photos or indexes are not ready (the transaction changed nothing).
        BusyError: the catalogue's tables stayed locked by other work.
    """
    with autocommit_session(engine, "switch to the next embedding space") as driver:
        try:
            with driver.transaction():
                driver.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(pgsql.Literal(LOCK_TIMEOUT)))
                # Writers wait from here (ingestion checks the space it writes in, under this lock); searches go on.
                driver.execute("LOCK TABLE embedding_space, embedding_space_next IN EXCLUSIVE MODE")
                driver.execute("LOCK TABLE product_images IN SHARE ROW EXCLUSIVE MODE")
                locked = time.perf_counter()
                if driver.execute("SELECT 1 FROM embedding_space_next").fetchone() is None:
                    raise InvalidQueryError("no re-embedding is under way (cancelled meanwhile?)")
                if driver.execute("SELECT 1 FROM product_images WHERE embedding_next IS NULL LIMIT 1").fetchone():
                    raise _NotYet("photos without a next vector")
                originals, copies = _indexes(driver)
                if any(not (c := copies.get(copy_name(n))) or not c.valid for n in originals):
                    raise _NotYet("indexes without a copy")
                triggers = driver.execute(
                    "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_attribute a "
                    "ON a.attrelid = t.tgrelid AND a.attname = 'embedding' AND a.attnum = ANY(t.tgattr) "
                    "WHERE t.tgrelid = 'product_images'::regclass AND NOT t.tgisinternal"
                ).fetchall()
                checks = driver.execute(
                    "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_attribute a "
                    "ON a.attrelid = c.conrelid AND a.attname IN ('embedding', 'embedding_next') "
                    "AND a.attnum = ANY(c.conkey) WHERE c.conrelid = 'product_images'::regclass AND c.contype = 'c'"
                ).fetchall()
                column_type = driver.execute(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'product_images'::regclass AND attname = 'embedding'"
                ).fetchone()
                assert column_type is not None
                held = time.perf_counter()
                # Searches wait from here: a few catalogue changes, no data rewritten.
                table = pgsql.Identifier("product_images")
                for name in originals:
                    driver.execute(pgsql.SQL("DROP INDEX {}").format(pgsql.Identifier(name)))
                for name in {c for c in copies if c not in {copy_name(n) for n in originals}}:
                    driver.execute(pgsql.SQL("DROP INDEX {}").format(pgsql.Identifier(name)))
                for name, _ in triggers:
                    driver.execute(pgsql.SQL("DROP TRIGGER {} ON {}").format(pgsql.Identifier(name), table))
                for name, _ in checks:
                    driver.execute(pgsql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, pgsql.Identifier(name)))
                driver.execute("ALTER TABLE product_images RENAME COLUMN embedding TO embedding_previous")
                driver.execute("ALTER TABLE product_images RENAME COLUMN embedding_next TO embedding")
                driver.execute("ALTER TABLE product_images DROP COLUMN embedding_previous")
                driver.execute("ALTER TABLE product_images ALTER COLUMN embedding SET NOT NULL")
                driver.execute(
                    pgsql.SQL("ALTER TABLE product_images ADD COLUMN embedding_next {}").format(
                        pgsql.SQL(column_type[0])
                    )
                )
                driver.execute("ALTER TABLE product_images ALTER COLUMN embedding_next SET STORAGE PLAIN")
                for name, original in originals.items():
                    driver.execute(
                        pgsql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            pgsql.Identifier(copy_name(name)), pgsql.Identifier(name)
                        )
                    )
                    if original.comment is not None:  # the copy that takes a category index's name takes its label
                        driver.execute(
                            pgsql.SQL("COMMENT ON INDEX {} IS {}").format(
                                pgsql.Identifier(name), pgsql.Literal(original.comment)
                            )
                        )
                for name, definition in checks:
                    driver.execute(
                        pgsql.SQL("ALTER TABLE product_images ADD CONSTRAINT {} {} NOT VALID").format(
                            pgsql.Identifier(name), pgsql.SQL(definition)
                        )
                    )
                for _, definition in triggers:
                    driver.execute(definition.encode())
                held = time.perf_counter() - held
                driver.execute(
                    f"UPDATE embedding_space s SET ({SPACE_COLUMNS}, created_at) = "
                    f"(SELECT {SPACE_COLUMNS}, now() FROM embedding_space_next)"
                )
                driver.execute("DELETE FROM embedding_space_next")
                # A tuned space's map was learnt from the old vectors: it means nothing in the new space.
                driver.execute("SELECT imgsearch_retire_space()")
            locked = time.perf_counter() - locked
        except psycopg.errors.LockNotAvailable:
            raise BusyError(
                "the catalogue stayed locked by other work (a long ingest, an index build): try the switch again"
            ) from None
        # Outside the switch: checking the constraints reads every photo, with reads and writes going on.
        for name, _ in checks:
            driver.execute(
                pgsql.SQL("ALTER TABLE product_images VALIDATE CONSTRAINT {}").format(pgsql.Identifier(name))
            )
        driver.execute("ANALYZE product_images")
    return Switched(held, locked)


def run(
    engine: Engine,
    owner: Engine,
    featurizer: Any,
    *,
    image_root: Path | None = None,
    switch_when_done: bool = True,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> ReembedReport:
    """Move the catalogue to ``featurizer``'s space: start (or resume), embed every photo, build the indexes'
    copies and switch (unless ``switch_when_done`` is False, or photos could not be embedded). ``engine`` writes
    the vectors; ``owner`` builds indexes and switches.

    Raises:
        InvalidQueryError: the catalogue is empty or already in that space, or moving to another one.
        BusyError: the switch could not get its locks, or photos kept changing under it.
    """
    began = time.perf_counter()
    under_way = start(engine, featurizer.space)
    report = ReembedReport(target=under_way.target)

    def embed() -> None:
        done, failed = embed_pending(engine, featurizer, image_root=image_root, batch=batch, progress=progress)
        report.embedded += done
        report.failures = failed  # this pass's: a photo that failed before and now succeeds is no failure

    embed()
    if switch_when_done and not report.failures:
        build_copies(owner)
        for _ in range(SWITCH_ATTEMPTS):
            embed()  # the photos added or changed while the indexes were built
            if report.failures:
                break
            try:
                switched = switch(owner)
            except _NotYet:
                build_copies(owner)  # an index created meanwhile (a new category's)
                continue
            report.switched = True
            report.held_seconds, report.writers_held_seconds = switched.searches_held, switched.writers_held
            break
        else:
            raise BusyError(f"photos kept changing during {SWITCH_ATTEMPTS} attempts to switch: try again later")
    after = status(engine)
    report.pending = after.pending if after is not None else 0
    report.seconds = time.perf_counter() - began
    return report


def cancel(engine: Engine) -> bool:
    """Abandon the re-embedding under way: its vectors and index copies are dropped. Whether one was under way."""
    with transaction(engine) as conn:
        existed = conn.execute(sa.text("DELETE FROM embedding_space_next RETURNING 1")).first() is not None
    drop_copies(engine)
    _clear_next_vectors(engine)
    return existed


def drop_copies(engine: Engine) -> None:
    """Drop the indexes built over the next vectors (needs the schema owner)."""
    with autocommit_session(engine, "drop the next vectors' indexes") as driver:
        _, copies = _indexes(driver)
        for name in copies:
            driver.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(pgsql.Identifier(name)))


def _clear_next_vectors(engine: Engine, batch: int = 10_000) -> None:
    """Forget the next vectors, a batch of photos per transaction (no long lock on the catalogue)."""
    cleared = batch
    while cleared:
        with transaction(engine) as conn:
            cleared = conn.execute(
                sa.text(
                    "UPDATE product_images SET embedding_next = NULL WHERE id IN "
                    "(SELECT id FROM product_images WHERE embedding_next IS NOT NULL LIMIT :n)"
                ),
                {"n": batch},
            ).rowcount


def space_label(space: SpaceLike) -> str:
    """A space as messages name it: its model and preprocessing version."""
    return f"{space.model_name} ({space.preprocessing_version})"
