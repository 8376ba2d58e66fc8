"""Shared fixtures: a real throwaway PostgreSQL + pgvector server, and the real VGG16 weights."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from imgsearch import db, embedded, schema

if TYPE_CHECKING:
    from imgsearch.embedding import Featurizer

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = REPO / "examples" / "catalogue"
SHARED_WEIGHTS = REPO.parent / "shared" / "models" / "vgg16_imagenet_notop.h5"


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An embedded server of its own for the test session, stopped and deleted afterwards."""
    home = tmp_path_factory.mktemp("imgsearch-home")
    embedded.start(home)
    yield home
    embedded.stop(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url(pg_home: Path) -> str:
    """URL of the session server's ``imgsearch`` database."""
    status = embedded.status(pg_home)
    assert status.running and status.url
    return status.url


def _admin(url: str) -> psycopg.Connection:
    parsed = make_url(url)
    return psycopg.connect(host=parsed.query["host"], user="postgres", dbname="postgres", autocommit=True)


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Factory: a new empty database (optionally cloned from a template) on the session server; returns its URL."""
    created: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with _admin(server_url) as conn:
            clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        created.append(name)
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    yield make
    with _admin(server_url) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_template(make_database: Callable[..., str]) -> str:
    """Name of a database migrated to head, used as a template so each test gets a fresh copy quickly."""
    url = make_database()
    engine = db.create_engine(url, poolclass=sa.pool.NullPool)
    schema.upgrade(engine)
    engine.dispose()
    name = make_url(url).database
    assert name
    return name


@pytest.fixture
def engine(make_database: Callable[..., str], migrated_template: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated, empty catalogue database."""
    eng = db.create_engine(make_database(template=migrated_template))
    yield eng
    eng.dispose()


@pytest.fixture
def database_url(engine: Engine) -> str:
    """URL of the fresh catalogue database behind ``engine``."""
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def weights_path() -> str:
    """The real VGG16 ImageNet weights (never random ones: they would pass every test and retrieve nothing)."""
    configured = os.environ.get("IMGSEARCH_VGG16_WEIGHTS")
    if configured:
        return configured
    if SHARED_WEIGHTS.exists():
        return str(SHARED_WEIGHTS)
    pytest.fail(
        "VGG16 weights not found: set IMGSEARCH_VGG16_WEIGHTS to vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


@pytest.fixture(scope="session")
def featurizer(weights_path: str) -> Featurizer:
    """One VGG16 featurizer for the whole session."""
    # Imported here so that tests that need only the database do not load TensorFlow.
    from imgsearch.embedding import Featurizer

    return Featurizer(weights=weights_path)


SAMPLE_PHOTOS = sorted(SAMPLE_CATALOGUE.glob("*/*.jpg"))


@pytest.fixture(scope="session")
def sample_vectors(featurizer: Featurizer) -> np.ndarray:
    """The 120 sample photos (``SAMPLE_PHOTOS`` order) embedded once for the session, through the batch
    pipeline: (120, 512)."""
    results = list(featurizer.embed_files(SAMPLE_PHOTOS))
    assert [result.path for result in results] == SAMPLE_PHOTOS
    assert all(result.ok for result in results), [result.error for result in results if not result.ok]
    return np.stack([result.vector for result in results])
