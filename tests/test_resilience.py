"""Nothing lost, nothing duplicated, nothing stuck: ingestion killed at any point, the database stopped or
restarted under it, concurrent writers in opposite orders, products removed while an ingest runs, and searches
meanwhile. Real subprocesses, real signals, a real server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pgvector.sqlalchemy import Vector
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, embedded_server, ingest, query, schema
from imgsearch.catalogue import ImageRecord, ProductRecord
from imgsearch.cli import main
from imgsearch.embedding import Featurizer
from imgsearch.images import file_sha256
from imgsearch.tables import Base

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
# Enough photos that, on a CPU with bfloat16 units (about 25 photos/s), a signal sent after the first commits
# still lands well before the ingest ends (with 24 photos one CI run saw the run finish first).
CATEGORIES = ("dress", "shoes", "hat", "skirt", "pants", "shirt")
PER_CATEGORY = 12
COMMIT_EVERY = "4"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resilience") / "catalogue"
    for category in CATEGORIES:
        (root / category).mkdir(parents=True)
        for photo in sorted((SAMPLE / category).glob("*.jpg"))[:PER_CATEGORY]:
            shutil.copy(photo, root / category / photo.name)
    return root


def snapshot(engine: Engine) -> dict[str, tuple]:
    """Every stored product: its fields, its photos (reference, hash) and their vectors, stacked."""
    statement = sa.text(
        "SELECT p.sku, p.name, p.category, p.price, p.in_stock, i.image, i.image_sha256, i.embedding "
        "FROM products p JOIN product_images i ON i.product_id = p.id ORDER BY p.sku, i.position, i.image"
    ).columns(embedding=Vector(512))
    with engine.connect() as conn:
        rows = conn.execute(statement).all()
    products: dict[str, tuple] = {}
    for sku, name, category, price, in_stock, image, sha, vector in rows:
        fields, photos, vectors = products.get(sku, ((name, category, price, in_stock), (), ()))
        products[sku] = (fields, (*photos, (image, sha)), (*vectors, np.asarray(vector, dtype=np.float32)))
    return {sku: (fields, photos, np.stack(vectors)) for sku, (fields, photos, vectors) in products.items()}


def assert_same_catalogue(got: dict[str, tuple], want: dict[str, tuple]) -> None:
    assert sorted(got) == sorted(want)
    for sku, row in want.items():
        assert got[sku][:-1] == row[:-1], sku
        assert np.allclose(got[sku][-1], row[-1], atol=1e-5), sku


@pytest.fixture(scope="module")
def clean_run(
    folder: Path, make_database: Callable[..., str], migrated_template: str, featurizer: Featurizer
) -> dict[str, tuple]:
    """The catalogue an uninterrupted ingest of ``folder`` makes. The interruption tests run the real network: with
    it an ingest lasts long enough for a signal to land in the middle of it, where it matters."""
    engine = db.create_engine(make_database(template=migrated_template))
    report = ingest.ingest(engine, ingest.scan_folder(folder), featurizer)
    assert report.added == len(CATEGORIES) * PER_CATEGORY and not report.failures
    result = snapshot(engine)
    engine.dispose()
    return result


def _ingest_process(options: list[str], folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``imgsearch [options] ingest`` of ``folder`` in its own process, committing every few products."""
    command = [sys.executable, "-m", "imgsearch", *options, "ingest", "--quiet", "--commit-every", COMMIT_EVERY]
    command.append(str(folder))
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        # Ctrl-C as at a terminal, even when the tests themselves run in the background (where a shell starts
        # them with SIGINT ignored, and that would be inherited).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()


def _sessions(engine: Engine) -> int:
    """Other sessions on the test's database (the ingest's connections)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()


def _leftovers(engine: Engine) -> list[str]:
    """Anything an interrupted run could leave: tables beside the catalogue's, open transactions."""
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT relname FROM pg_class WHERE relnamespace = 'imgsearch'::regnamespace AND relkind = 'r' "
                "AND relname <> ALL(:schema_tables)"
            ),
            {"schema_tables": [*Base.metadata.tables, "alembic_version"]},
        ).scalars()
        prepared = conn.execute(sa.text("SELECT gid FROM pg_prepared_xacts")).scalars()
        return [*tables, *prepared]


@pytest.mark.parametrize(
    ("signal_number", "after"),
    [
        (signal.SIGKILL, 0),  # before the first commit (loading the model, or embedding the first batch)
        (signal.SIGKILL, 4),  # just after a commit
        (signal.SIGKILL, 36),  # half way
        (signal.SIGINT, 8),  # Ctrl-C
        (signal.SIGTERM, 8),  # a service manager stopping it
    ],
    ids=["kill-before-first-commit", "kill-after-a-commit", "kill-half-way", "sigint", "sigterm"],
)
def test_an_interrupted_ingest_resumes_to_the_clean_result(
    signal_number: int,
    after: int,
    folder: Path,
    clean_run: dict[str, tuple],
    engine: Engine,
    database_url: str,
    weights_path: str,
) -> None:
    process = _ingest_process(["--database-url", database_url, "--weights", weights_path], folder)
    if after == 0:
        _wait_until(lambda: _sessions(engine) > 0, process)
    else:
        _wait_until(lambda: _count(engine) >= after, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    if signal_number == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # a clean stop: one line, the committed batches kept
        assert process.returncode == (130 if signal_number == signal.SIGINT else 143), stderr
        assert "interrupted: batches already committed are kept" in stderr and "Traceback" not in stderr
    committed = _count(engine)
    assert committed < len(clean_run)

    rerun = CliRunner().invoke(
        main, ["--database-url", database_url, "--weights", weights_path, "ingest", "--quiet", str(folder)]
    )
    assert rerun.exit_code == 0, rerun.output
    assert f"added {len(clean_run) - committed}," in rerun.stdout  # resumed: only what was missing
    assert_same_catalogue(snapshot(engine), clean_run)
    assert _leftovers(engine) == []


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[Path, Engine]]:
    """An embedded server of the test's own, to stop and start."""
    home = tmp_path / "home"
    url = embedded_server.start(home)
    admin = db.create_engine(url, poolclass=sa.pool.NullPool)
    schema.upgrade(admin)
    yield home, admin
    admin.dispose()
    embedded_server.stop(home)


def test_the_database_stopped_mid_ingest_is_one_line_then_a_rerun_completes(
    own_server: tuple[Path, Engine], folder: Path, clean_run: dict[str, tuple], weights_path: str
) -> None:
    home, admin = own_server
    process = _ingest_process(
        ["--home", str(home), "--weights", weights_path], folder, env={"IMGSEARCH_RECONNECT_SECONDS": "2"}
    )
    _wait_until(lambda: _count(admin) >= 4, process)
    embedded_server.stop(home)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert stderr.startswith("Error: lost the connection to the database or cannot reach it"), stderr
    assert stderr.rstrip().endswith("run the same command again when the database is back"), stderr
    assert len(stderr.splitlines()) == 1, stderr

    embedded_server.start(home)
    rerun = CliRunner().invoke(main, ["--home", str(home), "--weights", weights_path, "ingest", "--quiet", str(folder)])
    assert rerun.exit_code == 0, rerun.output
    assert_same_catalogue(snapshot(admin), clean_run)


def test_a_database_restart_during_an_ingest_is_ridden_out(
    own_server: tuple[Path, Engine], folder: Path, clean_run: dict[str, tuple], weights_path: str
) -> None:
    home, admin = own_server
    process = _ingest_process(["--home", str(home), "--weights", weights_path], folder)
    _wait_until(lambda: _count(admin) >= 4, process)
    embedded_server.stop(home)
    time.sleep(1)
    embedded_server.start(home)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert_same_catalogue(snapshot(admin), clean_run)


# --- concurrency ----------------------------------------------------------------------------------------------

PHOTOS = sorted(SAMPLE.glob("*/*.jpg"))


@pytest.fixture(scope="module")
def photo_vectors(fake_featurizer: Featurizer) -> np.ndarray:
    """The sample photos' vectors as the test's featurizer makes them."""
    return np.stack([r.vector for r in fake_featurizer.embed_files(PHOTOS)])


@pytest.fixture
def stored(
    engine: Engine,
    photo_vectors: np.ndarray,
    fake_featurizer: Featurizer,
    sample_photo_details: dict[str, tuple[Any, Any]],
) -> list[ingest.CatalogueEntry]:
    """The 120 sample photos as a stored catalogue (their vectors, colours and local features, as an ingest leaves
    them), and entries to ingest them again."""
    catalogue.ensure_space(engine, fake_featurizer.space)
    entries = [
        ingest.CatalogueEntry(sku=f"p{i:03d}", category=p.parent.name, images=(str(p),), name="v0")
        for i, p in enumerate(PHOTOS)
    ]
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(
                sku=e.sku,
                category=e.category,
                name="v0",
                images=(
                    ImageRecord(
                        e.images[0],
                        v,
                        file_sha256(e.images[0]),
                        colour=sample_photo_details[e.images[0]][0],
                        features=sample_photo_details[e.images[0]][1],
                    ),
                ),
            )
            for e, v in zip(entries, photo_vectors, strict=True)
        ],
    )
    return entries


def test_opposite_ingests_stock_syncs_and_searches_at_once(
    engine: Engine, stored: list[ingest.CatalogueEntry], fake_featurizer: Featurizer, photo_vectors: np.ndarray
) -> None:
    errors: list[BaseException] = []
    searches = [0]
    stop = threading.Event()

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # reported by the test below
                errors.append(exc)
                stop.set()

        return run

    def ingest_rounds(order: list[ingest.CatalogueEntry], tag: str) -> None:
        # Metadata-only ingests of the same products, in opposite orders, each one transaction (no new images).
        for round_ in range(6):
            entries = [replace(e, name=f"{tag}{round_}") for e in order]
            report = ingest.ingest(engine, entries, fake_featurizer, commit_every=len(entries))
            assert report.failures == [] and report.embedded == 0

    def stock_rounds() -> None:
        rng = np.random.default_rng(1)
        for _ in range(30):
            picked = rng.choice(len(stored), size=40, replace=False)
            catalogue.set_stock(engine, {stored[i].sku: bool(rng.integers(2)) for i in picked[::-1]})

    def search_loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            results = query.search(engine, photo_vectors[rng.integers(len(photo_vectors))], 10, in_stock_only=True)
            assert all(np.isfinite(r.distance) for r in results)  # never a product without its vector
            searches[0] += 1

    writers = [
        threading.Thread(target=guarded(lambda: ingest_rounds(stored, "A"))),
        threading.Thread(target=guarded(lambda: ingest_rounds(stored[::-1], "B"))),
        threading.Thread(target=guarded(stock_rounds)),
    ]
    readers = [threading.Thread(target=guarded(lambda s=s: search_loop(s))) for s in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(timeout=300)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert errors == []
    assert searches[0] > 0
    final = snapshot(engine)
    assert sorted(final) == sorted(e.sku for e in stored)
    assert {row[0][0] for row in final.values()} <= {"A5", "B5"}  # each product's last write won, whole


def test_products_removed_during_an_ingest_are_embedded_again(
    engine: Engine, stored: list[ingest.CatalogueEntry], fake_featurizer: Featurizer, photo_vectors: np.ndarray
) -> None:
    # Between the ingest reading the stored image hashes (so it plans a metadata-only update) and writing,
    # someone removes some of those products. Before, the run aborted ("a new product needs an image
    # embedding"); now they are embedded again and stored.
    victims = [e.sku for e in stored[::10]]

    class RemovingFeaturizer:
        """The featurizer; the first time the ingest asks it for vectors, the victims are removed."""

        space = fake_featurizer.space
        pipeline = fake_featurizer.pipeline

        def __init__(self) -> None:
            self.removed = False

        def embed_files(self, paths: list[Path], **options: bool):
            if not self.removed:
                self.removed = True
                assert catalogue.remove(engine, victims) == len(victims)
            return fake_featurizer.embed_files(paths, **options)

    entries = [replace(e, name="v1") for e in stored]
    report = ingest.ingest(engine, entries, RemovingFeaturizer(), commit_every=len(entries))  # type: ignore[arg-type]
    assert report.failures == []
    assert report.embedded == len(victims)
    final = snapshot(engine)
    assert sorted(final) == sorted(e.sku for e in stored) and {row[0][0] for row in final.values()} == {"v1"}
    for sku in victims:
        i = int(sku[1:])
        assert np.allclose(final[sku][-1][0], photo_vectors[i], atol=1e-5)


def test_rows_the_database_refuses_are_reported_and_the_rest_stored(
    engine: Engine, folder: Path, fake_featurizer: Featurizer
) -> None:
    # A rule the Python checks do not know (a shop's own constraint, or a later revision's): the database is
    # the last line, and a row it refuses must cost only that row, in any batch, on every run.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE products ADD CONSTRAINT shop_rule CHECK (name IS DISTINCT FROM 'refuse me')"))
    entries = [
        replace(e, name="refuse me" if i % 7 == 3 else f"fine {i}")
        for i, e in enumerate(x for x in ingest.scan_folder(folder) if isinstance(x, ingest.CatalogueEntry))
    ]
    refused = {e.sku for e in entries if e.name == "refuse me"}
    for _ in range(2):  # and again: the bad rows fail the same way, the good ones are unchanged
        report = ingest.ingest(engine, entries, fake_featurizer, commit_every=8)
        assert {f.sku for f in report.failures} == refused
        assert all("the database refused a product (rule shop_rule)" in f.reason for f in report.failures)
        assert sorted(snapshot(engine)) == sorted(e.sku for e in entries if e.sku not in refused)
