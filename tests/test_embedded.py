"""The embedded PostgreSQL server's lifecycle through the CLI, and plain Alembic against it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from imgsearch import embedded, schema
from imgsearch.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "home"
    embedded.stop(tmp_path / "home")


def _cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_start_status_url_stop_and_data_survives_a_restart(home: Path) -> None:
    assert "stopped" in _cli(home, "db", "status")
    url = _cli(home, "db", "start").strip()
    assert url.startswith("postgresql://postgres@/imgsearch?host=/")  # libpq's form: psql "$(imgsearch db start)"
    assert _cli(home, "db", "start").strip() == url  # starting twice reuses the running server
    assert _cli(home, "db", "start", "--sqlalchemy").startswith("postgresql+psycopg://postgres@/imgsearch?host=")
    status = _cli(home, "db", "status")
    assert "running (pid" in status and str(home / "pgdata") in status and "schema imgsearch at revision none" in status

    libpq = _cli(home, "db", "url").strip()
    assert libpq == url
    _cli(home, "db", "upgrade")
    with psycopg.connect(libpq, autocommit=True) as conn:  # what psql or a backend would use
        conn.execute(
            "INSERT INTO imgsearch.products (sku, category, embedding) VALUES ('kept', 'c', %s::vector)",
            (str([1.0] * 512),),
        )

    assert _cli(home, "db", "stop").strip() == "stopped"
    assert "stopped" in _cli(home, "db", "status")
    assert _cli(home, "db", "stop").strip() == "not running"

    _cli(home, "db", "start")
    with psycopg.connect(_cli(home, "db", "url").strip()) as conn:
        assert conn.execute("SELECT sku FROM imgsearch.products").fetchall() == [("kept",)]
    assert f"schema imgsearch at revision {schema.head_revision()}" in _cli(home, "db", "status")


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
