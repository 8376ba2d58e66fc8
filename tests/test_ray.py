"""Ingestion with the network on Ray (a local Ray instance here): the same catalogue as the local path, and
nothing lost or embedded twice when a model actor is killed mid-run."""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from imgsearch import db, ingest
from imgsearch.cli import main

if TYPE_CHECKING:
    from imgsearch.embedding import Featurizer

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"


@pytest.fixture(scope="module", autouse=True)
def _ray_instance() -> Iterator[None]:
    yield
    import ray

    ray.shutdown()


def _folder(root: Path) -> Path:
    """Four categories of the sample photos, and files no decoder can read."""
    for category in ("dress", "shoes", "hat", "skirt"):
        (root / category).mkdir(parents=True)
        for photo in sorted((SAMPLES / category).glob("*.jpg"))[:5]:
            shutil.copy(photo, root / category / photo.name)
    first_hat = sorted((SAMPLES / "hat").glob("*.jpg"))[0]
    (root / "hat" / "truncated.jpg").write_bytes(first_hat.read_bytes()[:300])
    (root / "shoes" / "notes.jpg").write_text("not a photo")
    return root


def _ingest(url: str, weights: str, folder: Path, errors: Path, *extra: str) -> str:
    result = CliRunner().invoke(
        main,
        ["--database-url", url, "--weights", weights, "ingest", "-q", str(folder), "--errors", str(errors), *extra],
    )
    assert result.exit_code == 1, result.output  # the two unreadable files
    return result.stdout


def _catalogue(engine: Engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.sku, p.category, p.name, p.price, p.in_stock, i.image, i.image_sha256, i.embedding::real[] "
                "FROM products p JOIN product_images i ON i.product_id = p.id ORDER BY p.sku"
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_ray_and_local_ingestion_give_the_same_catalogue(
    make_database: Callable[..., str], migrated_template: str, weights_path: str, tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "photos")
    local_url, ray_url = make_database(template=migrated_template), make_database(template=migrated_template)
    local_out = _ingest(local_url, weights_path, folder, tmp_path / "local-errors.csv")
    ray_out = _ingest(ray_url, weights_path, folder, tmp_path / "ray-errors.csv", "--ray", "--ray-concurrency", "1")
    counts = "added 20, updated 0, unchanged 0, failed 2 (20 images embedded"
    assert local_out.startswith(counts) and ray_out.startswith(counts)

    local, ray = db.create_engine(local_url), db.create_engine(ray_url)
    want, got = _catalogue(local), _catalogue(ray)
    assert sorted(got) == sorted(want) and len(got) == 20
    for sku, row in want.items():
        assert got[sku][:6] == row[:6]  # metadata, the photo and its hash
        np.testing.assert_allclose(np.asarray(got[sku][6]), np.asarray(row[6]), atol=1e-5)
    # Every unreadable file reported the same way.
    read = lambda path: sorted(tuple(r) for r in csv.reader(path.open()))  # noqa: E731
    assert read(tmp_path / "ray-errors.csv") == read(tmp_path / "local-errors.csv")

    # Idempotent on Ray too: nothing is embedded again.
    again = _ingest(ray_url, weights_path, folder, tmp_path / "again.csv", "--ray")
    assert again.startswith("added 0, updated 0, unchanged 20, failed 2 (0 images embedded")
    local.dispose()
    ray.dispose()


# An actor killed mid-run. 64 photos in two commit batches of 32: each batch is one Ray dataset with its own
# model actor, and the actor of the second one is killed while it embeds, once the first batch is committed.
KILL_CATEGORIES = ("dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "skirt")
KILL_BATCH = 32


@pytest.fixture(scope="module")
def kill_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 sample photos of each of 8 categories."""
    root = tmp_path_factory.mktemp("kill") / "photos"
    for category in KILL_CATEGORIES:
        (root / category).mkdir(parents=True)
        for photo in sorted((SAMPLES / category).glob("*.jpg"))[:8]:
            shutil.copy(photo, root / category / photo.name)
    return root


@pytest.fixture(scope="module")
def clean_catalogue(
    kill_folder: Path, make_database: Callable[..., str], migrated_template: str, featurizer: Featurizer
) -> dict[str, tuple]:
    """The same photos ingested on the local path, nothing killed: what every killed run must end with."""
    engine = db.create_engine(make_database(template=migrated_template))
    report = ingest.ingest(engine, ingest.scan_folder(kill_folder), featurizer)
    assert (report.added, report.embedded, report.failures) == (64, 64, [])
    catalogue = _catalogue(engine)
    engine.dispose()
    return catalogue


@dataclass
class _Kill:
    actor_id: str
    committed: int  # products in the catalogue when the actor was killed


def _products(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()


def _kill_second_model_actor(engine: Engine, run: Future[Any], *, no_restart: bool) -> _Kill:
    """Kill the model actor of the second batch a second after it has loaded VGG16 (it is then embedding), and
    fail unless it was found and killed while that batch was still to be written."""
    import ray

    # ray.util.state needs the dashboard, which imgsearch[ray] (ray[data]) does not install; the GCS's actor
    # table says the same. Ray Data's actors are unnamed, so ray.get_actor cannot give their handles; this
    # process created them, so its core worker holds them.
    from ray._private import state

    first: set[str] = set()  # the first batch's actor(s)
    loaded: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while not run.done() and time.monotonic() < deadline:
        if not ray.is_initialized():  # the command starts Ray itself
            time.sleep(0.1)
            continue
        committed = _products(engine)
        for actor in state.actors().values():
            actor_id = actor["ActorID"]
            if "_Model" not in actor["ActorClassName"]:
                continue
            if committed < KILL_BATCH:
                first.add(actor_id)
                continue
            if actor_id in first or actor["State"] != "ALIVE":
                continue
            if time.monotonic() - loaded.setdefault(actor_id, time.monotonic()) < 1.0:
                continue
            handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ray.ActorID.from_hex(actor_id))
            committed = _products(engine)
            assert committed == KILL_BATCH and not run.done()  # its batch is still being embedded
            ray.kill(handle, no_restart=no_restart)
            return _Kill(actor_id, committed)
        time.sleep(0.1)
    pytest.fail(f"no model actor of the second batch found while it was embedding (first batch's: {first})")


def _ray_ingest(url: str, featurizer: Featurizer, folder: Path) -> Callable[[], ingest.IngestReport]:
    from imgsearch.distributed import RayEmbedder

    embedder = RayEmbedder(featurizer, concurrency=1)

    def run() -> ingest.IngestReport:
        engine = db.create_engine(url)
        try:
            return ingest.ingest(
                engine, ingest.scan_folder(folder), featurizer, commit_every=KILL_BATCH, embedder=embedder
            )
        finally:
            engine.dispose()

    return run


def _assert_clean(engine: Engine, clean: dict[str, tuple]) -> None:
    """Every product once, with its one photo, hash and the clean run's vector; no photo stored twice."""
    got = _catalogue(engine)
    assert sorted(got) == sorted(clean) and len(got) == 64
    for sku, row in clean.items():
        assert got[sku][:6] == row[:6]
        np.testing.assert_allclose(np.asarray(got[sku][6]), np.asarray(row[6]), atol=1e-5)
    with engine.connect() as conn:
        images, products, hashes = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT product_id), count(DISTINCT image_sha256) FROM product_images")
        ).one()
    assert (images, products, hashes) == (64, 64, len({row[5] for row in clean.values()}))


def test_a_crashed_model_actor_is_restarted_and_its_batch_embedded_once(
    make_database: Callable[..., str],
    migrated_template: str,
    featurizer: Featurizer,
    kill_folder: Path,
    clean_catalogue: dict[str, tuple],
) -> None:
    """ray.kill with a restart, as when the actor's process or node is lost: the run finishes by itself."""
    from ray._private import state

    url = make_database(template=migrated_template)
    engine = db.create_engine(url)
    run = _ray_ingest(url, featurizer, kill_folder)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run)
        kill = _kill_second_model_actor(engine, future, no_restart=False)
        report = future.result(timeout=300)
    # The very actor that was killed came back (Ray restarted it) and embedded its batch.
    assert state.actors(actor_id=kill.actor_id)["NumRestarts"] == 1
    assert (report.added, report.embedded, report.failures) == (64, 64, [])  # each photo embedded once
    _assert_clean(engine, clean_catalogue)
    again = run()
    assert (again.added, again.unchanged, again.embedded) == (0, 64, 0)
    engine.dispose()


def test_a_model_actor_killed_for_good_fails_the_run_in_one_line_and_a_rerun_resumes(
    make_database: Callable[..., str],
    migrated_template: str,
    weights_path: str,
    kill_folder: Path,
    clean_catalogue: dict[str, tuple],
) -> None:
    """ray.kill for good, through the command: the batch in flight is not written, the committed one is kept,
    running the same command again embeds only the lost batch and the catalogue is the clean run's."""
    url = make_database(template=migrated_template)
    engine = db.create_engine(url)
    args = ["--database-url", url, "--weights", weights_path, "ingest", "-q", str(kill_folder)]
    args += ["--commit-every", str(KILL_BATCH), "--ray", "--ray-concurrency", "1"]
    command = lambda: CliRunner().invoke(main, args)  # noqa: E731
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(command)
        kill = _kill_second_model_actor(engine, future, no_restart=True)
        failed = future.result(timeout=300)
    # A one-line error, not an exception out of the command, and no summary (Ray logs its own account beside it).
    assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit), failed.exception
    assert not any(line.startswith("added ") for line in failed.stdout.splitlines())
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, failed.output
    assert errors[0].startswith("Error: Ray lost a worker of the batch being embedded (ActorDiedError: ")
    assert errors[0].endswith("run the same command again to resume")
    assert kill.committed == _products(engine) == KILL_BATCH  # the first batch kept, nothing of the second
    resumed = command()
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.startswith("added 32, updated 0, unchanged 32, failed 0 (32 images embedded")
    _assert_clean(engine, clean_catalogue)
    again = command()
    assert again.stdout.startswith("added 0, updated 0, unchanged 64, failed 0 (0 images embedded"), again.output
    engine.dispose()
