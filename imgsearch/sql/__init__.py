"""The SQL imgsearch installs in PostgreSQL, as ``.sql`` files that the migrations, the tests and the benchmarks read.

``functions/<name>.sql`` is the single source of each ``imgsearch_*`` function: what a database at the newest
revision holds, and the file whose ``git log`` is the function's history. To change a function, edit it there
and add a migration revision that installs it (``install(conn, revision, [name])`` reads it from ``functions/``
while the revision's folder has no copy of it).

Every released revision that created or changed SQL objects has a folder named after it (``0003/``) with one file
per object as that revision installed it: frozen release copies (like pgvector's ``vector--A--B.sql`` beside its
``vector.sql``), which downgrades put back (Alembic's "replaceable objects" pattern), so that a database migrated
long ago still receives every later change. At release, a revision's copies are written into its folder and
pinned in ``released.sha256``; a test fails if a pinned copy ever changes.

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
    """The text of object ``name`` as revision ``revision`` installs it: its frozen copy, or, for a revision not
    released yet (no copy in its folder), the function's current text from ``functions/``.

    Raises:
        FileNotFoundError: that revision has no version of ``name``.
    """
    path = _root() / revision / f"{name}.sql"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if f"{revision}/{name}.sql" not in released() and (_root() / "functions" / f"{name}.sql").is_file():
        return (_root() / "functions" / f"{name}.sql").read_text(encoding="utf-8")
    raise FileNotFoundError(f"no SQL file {revision}/{name}.sql in imgsearch.sql")


@cache
def released() -> dict[str, str]:
    """The pinned release copies: ``"<revision>/<name>.sql"`` -> SHA-256 of its text (``released.sha256``)."""
    lines = (_root() / "released.sha256").read_text(encoding="utf-8").splitlines()
    return {path: digest for digest, path in (line.split() for line in lines if line.strip())}


def version_before(revision: str, name: str) -> str | None:
    """The newest revision older than ``revision`` that has a version of ``name`` (for downgrades), or None."""
    older = [r for r in revisions() if r < revision and name in objects(r)]
    return older[-1] if older else None


def current(name: str) -> str:
    """The newest version of object ``name``: what a database at the head revision holds (``functions/`` for
    functions, the newest revision's copy for other objects)."""
    path = _root() / "functions" / f"{name}.sql"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    for revision in reversed(revisions()):
        if name in objects(revision):
            return load(revision, name)
    raise FileNotFoundError(f"no SQL file for {name} in imgsearch.sql")


def current_functions() -> dict[str, str]:
    """Every ``imgsearch_*`` function's newest version, by name (the files of ``functions/``)."""
    folder = _root() / "functions"
    names = {f.name.removesuffix(".sql") for f in folder.iterdir() if f.name.endswith(".sql")}
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
