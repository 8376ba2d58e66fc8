"""Ingestion with the network on Ray (a local Ray instance here): the same catalogue as the local path."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from imgsearch import db
from imgsearch.cli import main

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
