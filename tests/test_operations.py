"""What operators do (docs/operations.md): URLs with masked passwords, backup and restore of imgsearch's schema."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, embedded_server, indexes, query, schema, urls
from imgsearch.catalogue import ProductRecord
from imgsearch.cli import main
from imgsearch.errors import ConfigurationError, DatabaseUnavailableError

SECRET = "s3cr%40t"  # "s3cr@t", percent-encoded as a URL needs it


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://shop:{SECRET}@localhost:99999/shop",  # port out of range
        f"postgresql://shop:{SECRET}@localhost:12x/shop",  # port not a number
        "postgresql://shop:s3cr@t@localhost:/shop?x",  # unescaped @ in the password
        f"mysql://shop:{SECRET}@localhost/shop",  # not PostgreSQL
    ],
)
def test_bad_urls_are_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        db.create_engine(url)
    assert "s3cr" not in str(caught.value)
    result = CliRunner().invoke(main, ["--database-url", url, "stats"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith("Error: ") and "s3cr" not in result.output


def test_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://shop:{SECRET}@/shop?host={tmp_path}"  # no server listens in an empty folder
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to the database"):
        db.connect(db.Settings(database_url=url))
    result = CliRunner().invoke(main, ["--database-url", url, "stats"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: cannot connect to the database")
    assert len(result.stderr.splitlines()) == 1 and "s3cr" not in result.output


def test_db_url_masks_the_password_unless_asked(tmp_path: Path) -> None:
    url = f"postgresql://shop:{SECRET}@db.internal:5433/shop"
    run = lambda *a: CliRunner().invoke(main, ["--database-url", url, "db", "url", *a]).stdout.strip()  # noqa: E731
    assert run() == "postgresql://shop:***@db.internal:5433/shop"
    assert run("--show-password") == url
    assert run("--sqlalchemy") == "postgresql+psycopg://shop:***@db.internal:5433/shop"
    assert run("--sqlalchemy", "--show-password") == f"postgresql+psycopg://shop:{SECRET}@db.internal:5433/shop"


def _products(n: int) -> list[ProductRecord]:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(4, 512))
    return [
        ProductRecord(
            sku=f"p{i}",
            category=f"c{i % 4}",
            embedding=(centres[i % 4] + rng.normal(scale=0.7, size=512)).astype(np.float32),
            price=i % 40 + 1,
            in_stock=i % 7 != 0,
            name=f"Product {i}",
        )
        for i in range(n)
    ]


def test_backup_and_restore_of_the_schema(engine: Engine, make_database: Callable[..., str], tmp_path: Path) -> None:
    catalogue.upsert_products(engine, _products(1200))
    indexes.create_category_index(engine, "c1")
    source = engine.url.render_as_string(hide_password=False)
    dump = tmp_path / "imgsearch.dump"
    # As docs/operations.md says: the imgsearch schema alone, in pg_dump's custom format.
    subprocess.run(
        [
            embedded_server.binary("pg_dump"),
            "--format=custom",
            "--schema=imgsearch",
            f"--file={dump}",
            urls.libpq_url(source),
        ],
        check=True,
        capture_output=True,
    )
    target = make_database()
    with db.create_engine(target).begin() as conn:  # the extension lives outside the schema: install it first
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    restore = subprocess.run(
        [embedded_server.binary("pg_restore"), "--exit-on-error", f"--dbname={urls.libpq_url(target)}", str(dump)],
        capture_output=True,
        text=True,
    )
    assert restore.returncode == 0, restore.stderr
    restored = db.create_engine(target)
    schema.require_schema(restored)
    for sku in ("p1", "p2", "p777"):
        assert query.similar_to_sku(restored, sku, 10) == query.similar_to_sku(engine, sku, 10)
        assert query.similar_to_sku(restored, sku, 10, categories=["c1"]) == query.similar_to_sku(
            engine, sku, 10, categories=["c1"]
        )
    assert [i.category for i in indexes.list_category_indexes(restored)] == ["c1"]
    assert catalogue.stats(restored).products == 1200
    restored.dispose()
