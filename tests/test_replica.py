"""A read replica of the embedded server: the same searches as the server, no writes, searches routed to it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from imgsearch import catalogue, db, embedded_server, indexes, query, schema
from imgsearch.catalogue import ProductRecord
from imgsearch.cli import main
from imgsearch.config import Settings
from tests.vectors import PHOTO_CLASSES


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    embedded_server.stop_replica(home)
    embedded_server.stop(home)


def _cli(home: Path, *args: str, expect: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    assert result.exit_code == expect, (result.output, result.exception)
    return result.stdout, result.stderr


def _caught_up(home: Path) -> None:
    # The replica has replayed everything the server had written when this was called.
    deadline = time.monotonic() + 30
    while (state := embedded_server.replica_status(home)).lag_bytes is None or state.lag_bytes > 0:
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def test_the_replica_answers_the_servers_searches_and_refuses_writes(home: Path, sample_vectors: np.ndarray) -> None:
    _cli(home, "db", "upgrade")
    settings = Settings(home=home)
    writer = db.connect(settings)
    categories = [PHOTO_CLASSES[i] for i in range(len(sample_vectors))]
    catalogue.upsert_products(
        writer,
        [
            ProductRecord(sku=f"p{i:03d}", category=c, price=10 + i, in_stock=i % 5 != 0, embedding=v)
            for i, (c, v) in enumerate(zip(categories, sample_vectors, strict=True))
        ],
    )
    indexes.create_category_index(db.connect(settings, "admin"), "dress")

    replica_url, _ = _cli(home, "db", "replica", "start", "--show-password")
    assert replica_url.startswith("postgresql://imgsearch_reader@/imgsearch?host=") and "replica" in replica_url
    _caught_up(home)
    replica = db.create_engine(replica_url.strip())
    schema.require_schema(replica)  # the schema, its functions and its roles came with the copy
    assert [i.category for i in indexes.list_category_indexes(replica)] == ["dress"]
    for q in sample_vectors[::15]:
        for options in ({}, {"in_stock_only": False}, {"categories": ["dress"]}, {"max_price": 60}):
            assert query.search(replica, q, 5, **options) == query.search(writer, q, 5, **options)

    # Later writes reach it.
    catalogue.set_stock(writer, {"p001": False})
    catalogue.remove(writer, ["p002"])
    _caught_up(home)
    assert catalogue.get_product(replica, "p001").in_stock is False
    assert catalogue.get_product(replica, "p002") is None

    # Writes through its URL are refused in one line, whatever the role.
    writer_on_replica = embedded_server.url_for(replica_url.strip(), "writer")
    _, err = _cli(home, "--database-url", writer_on_replica, "stock", "--out", "p003", expect=1)
    assert err.count("\n") == 1 and "read-only replica" in err
    assert "stopped" not in _cli(home, "db", "replica", "status")[0]
    replica.dispose()
    writer.dispose()


def test_searches_go_to_the_read_url_and_writes_to_the_server(home: Path, sample_vectors: np.ndarray) -> None:
    _cli(home, "db", "upgrade")
    writer = db.connect(Settings(home=home))
    catalogue.upsert_products(
        writer, [ProductRecord(sku=f"p{i:03d}", category="c", embedding=v) for i, v in enumerate(sample_vectors)]
    )
    writer.dispose()
    replica_url = _cli(home, "db", "replica", "start", "--show-password")[0].strip()
    _caught_up(home)
    routed = ("--read-url", replica_url)
    assert len(json.loads(_cli(home, *routed, "similar", "p011", "-k", "10", "--format", "json")[0])) == 10
    _cli(home, *routed, "stock", "--out", "p011")  # writes go to the server
    _cli(home, "db", "replica", "stop")
    # With the replica stopped, searches fail (they were going there) while writes still succeed.
    _, err = _cli(home, *routed, "similar", "p011", expect=1)
    assert err.count("\n") == 1 and "cannot connect" in err, err
    _cli(home, *routed, "stock", "--in", "p011")
    assert "stopped" in _cli(home, "db", "replica", "status")[0]
