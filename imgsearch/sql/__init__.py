"""The SQL imgsearch installs in PostgreSQL, as ``.sql`` files that the migrations, the tests and the benchmarks read.

Every migration revision that creates or changes SQL objects (functions, mostly) has a folder named after it
(``0003/``) with one file per object, named after the object. A folder is frozen once its revision is released:
changing an object means a new revision whose folder holds the object's new version, and whose downgrade puts
back the previous one (Alembic's "replaceable objects" pattern). So a database migrated long ago still receives
every later change, and :func:`current` is exactly what a database at the newest revision holds.

Other files (``commands/``) are statements that administration runs against the current schema, such as the
grants of the reader and writer roles.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

_REVISION = re.compile(r"^\d{4}$")


def _root() -> Traversable:
    return files(__name__)


@cache
def revisions() -> tuple[str, ...]:
    """Revisions that have SQL files, oldest first."""
    return tuple(sorted(d.name for d in _root().iterdir() if d.is_dir() and _REVISION.match(d.name)))


def objects(revision: str) -> tuple[str, ...]:
    """Names of the objects whose version ``revision`` installs."""
    folder = _root() / revision
    return tuple(sorted(f.name.removesuffix(".sql") for f in folder.iterdir() if f.name.endswith(".sql")))


def load(revision: str, name: str) -> str:
    """The text of object ``name`` as revision ``revision`` installs it.

    Raises:
        FileNotFoundError: that revision has no version of ``name``.
    """
    path = _root() / revision / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {revision}/{name}.sql in imgsearch.sql")
    return path.read_text(encoding="utf-8")


def version_before(revision: str, name: str) -> str | None:
    """The newest revision older than ``revision`` that has a version of ``name`` (for downgrades), or None."""
    older = [r for r in revisions() if r < revision and name in objects(r)]
    return older[-1] if older else None


def current(name: str) -> str:
    """The newest version of object ``name``: what a database at the head revision holds."""
    for revision in reversed(revisions()):
        if name in objects(revision):
            return load(revision, name)
    raise FileNotFoundError(f"no SQL file for {name} in imgsearch.sql")


def current_functions() -> dict[str, str]:
    """Every ``imgsearch_*`` function's newest version, by name."""
    names = {n for r in revisions() for n in objects(r) if n.startswith("imgsearch_")}
    return {name: current(name) for name in sorted(names)}


def command(name: str) -> str:
    """An administration statement template from ``commands/`` (identifiers are filled in by the caller)."""
    return (_root() / "commands" / f"{name}.sql").read_text(encoding="utf-8")


def execute(conn: Connection, text: str) -> None:
    """Run a ``.sql`` file's text on ``conn``, inside its transaction.

    Goes straight to psycopg without parameters, so that ``%`` and ``:`` in function bodies (format strings,
    casts, array slices) reach PostgreSQL untouched.
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        raw.execute(text)
    except psycopg.Error as exc:
        # As SQLAlchemy would have raised it, so that callers handle every database error one way.
        raise DBAPIError.instance(text[:200], None, exc, psycopg.Error) from None


def install(conn: Connection, revision: str, names: tuple[str, ...] | list[str]) -> None:
    """Create (or replace) the objects ``names`` in the version of ``revision``, in that order."""
    for name in names:
        execute(conn, load(revision, name))


def restore_previous(conn: Connection, revision: str, names: tuple[str, ...] | list[str]) -> None:
    """Undo :func:`install` of ``revision``: put back each object's previous version (downgrades)."""
    for name in names:
        previous = version_before(revision, name)
        if previous is None:
            raise FileNotFoundError(f"no version of {name} before revision {revision}")
        execute(conn, load(previous, name))
