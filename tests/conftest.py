"""Shared fixtures: a real throwaway PostgreSQL + pgvector server, the real VGG16 weights, and the fake network.

Tests about the model use ``weights_path`` or ``featurizer`` (the real VGG16 weights) and are marked ``model``
by that alone; tests about the database, the CLI or HTTP use ``fake_weights`` / ``fake_featurizer`` (a
deterministic stand-in network, no TensorFlow) or ``sample_vectors`` (real vectors, stored), and run in
``pytest -m "not model"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from imgsearch import db, embedded_server, local_features, schema, visual_words
from tests.memo import once_per_input
from tests.samples import SampleCatalogue

if TYPE_CHECKING:
    from click.testing import Result

    from imgsearch.embedding import Featurizer

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CATALOGUE = REPO / "examples" / "catalogue"
SAMPLE_MANIFEST = REPO / "examples" / "products.csv"
SHARED_WEIGHTS = REPO.parent / "shared" / "models" / "vgg16_imagenet_notop.h5"
#: Fixtures that load the real network: a test using any of them (directly or through another fixture) is a
#: ``model`` test.
MODEL_FIXTURES = frozenset({"weights_path", "featurizer"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real VGG16 weights ``model`` (from the fixtures it uses)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session", autouse=True)
def _features_computed_once(request: pytest.FixtureRequest) -> Iterator[None]:
    """SIFT of a photo and a vocabulary's k-means, computed once per input (tests/memo.py)."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: memory only
    folder = cache.mkdir("imgsearch-features") if cache is not None else None
    patch = pytest.MonkeyPatch()
    patch.setattr(
        local_features,
        "extract",
        once_per_input(
            local_features.extract,
            lambda f: {"points": f.points, "descriptors": f.descriptors, "size": np.array([f.width, f.height])},
            lambda a: local_features.LocalFeatures(a["points"], a["descriptors"], *map(int, a["size"])),
            folder,
        ),
    )
    patch.setattr(
        visual_words,
        "learn",
        once_per_input(
            visual_words.learn,
            lambda v: {"coarse": v.coarse, "fine": v.fine, "extractor": np.array(v.extractor)},
            lambda a: visual_words.Vocabulary(a["coarse"], a["fine"], str(a["extractor"])),
            None,  # 32 MB each: memory only
        ),
    )
    yield
    patch.undo()


@pytest.fixture(scope="session")
def pg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An embedded server of its own for the test session, stopped and deleted afterwards."""
    home = tmp_path_factory.mktemp("imgsearch-home")
    embedded_server.start(home)
    yield home
    # Its data is deleted next: no shutdown checkpoint of every test database's pages.
    embedded_server.stop(home, immediate=True)
    # Hundreds of test databases, about 100,000 files: deleted by a process of its own, so that the last test of each
    # worker does not wait seconds for it (the home is renamed first, so nothing can find it half deleted).
    doomed = home.with_name(f"{home.name}-deleted")
    home.rename(doomed)
    subprocess.Popen(["rm", "-rf", "--", str(doomed)], start_new_session=True)


@pytest.fixture(scope="session")
def server_url(pg_home: Path) -> str:
    """URL of the session server's ``imgsearch`` database."""
    status = embedded_server.status(pg_home)
    assert status.running and status.url
    return status.url


def _admin(url: str) -> psycopg.Connection:
    parsed = make_url(url)
    return psycopg.connect(host=parsed.query["host"], user="postgres", dbname="postgres", autocommit=True)


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Factory: a new empty database (optionally cloned from a template) on the session server; returns its URL."""

    def make(template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with _admin(server_url) as conn:
            clause = f' TEMPLATE "{template}"' if template else ""
            if template:  # a template must have no sessions: a pool left open by whoever filled it
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (template,))
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    yield make
    # Nothing to drop one by one: the session's server is deleted with its home (pg_home).


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


@pytest.fixture(scope="session")
def sample_catalogue(
    make_database: Callable[..., str],
    migrated_template: str,
    fake_weights: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> SampleCatalogue:
    """The sample catalogue, made once per test process (ingesting 120 photos with local features takes seconds)."""
    from click.testing import CliRunner

    from imgsearch.cli import main

    shop = tmp_path_factory.mktemp("sample-shop") / "examples"
    shutil.copytree(SAMPLE_CATALOGUE.parent, shop)
    url = make_database(template=migrated_template)
    manifest = str(shop / SAMPLE_MANIFEST.name)
    args = ["--database-url", url, "--weights", fake_weights, "ingest", "--quiet", "--manifest", manifest]
    result = CliRunner(env={"IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS": "12"}).invoke(main, args)
    assert result.exit_code == 0, result.output
    name = make_url(url).database
    assert name
    return SampleCatalogue(template=name, shop=shop, ingest_output=result.stdout)


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


@pytest.fixture
def run(database_url: str, fake_weights: str) -> Callable[..., Result]:
    """The ``imgsearch`` command on the fresh catalogue (the fake featurizer), in-process: ``run(*args)`` asserts
    the exit status ``expect`` (0 unless said; ``None``: any)."""

    from click.testing import CliRunner

    from imgsearch.cli import main

    def invoke(*args: str, expect: int | None = 0) -> Result:
        result = CliRunner().invoke(main, ["--database-url", database_url, "--weights", fake_weights, *args])
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    return invoke


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


@pytest.fixture(scope="session")
def fake_weights() -> str:
    """The ``weights`` value of the deterministic stand-in network (for the CLI's ``--weights``)."""
    from imgsearch.embedding import FAKE_WEIGHTS

    return FAKE_WEIGHTS


@pytest.fixture(scope="session")
def fake_featurizer(fake_weights: str) -> Featurizer:
    """A featurizer with the stand-in network: the real decoding, batching and local features, no TensorFlow."""
    from imgsearch.embedding import Featurizer

    return Featurizer(weights=fake_weights)


SAMPLE_PHOTOS = sorted(SAMPLE_CATALOGUE.glob("*/*.jpg"))


#: The sample photos' VGG16 vectors (default pipeline, float32), stored so that the many tests about the database
#: get real vectors without loading the network; tests/test_embedding.py checks the model still makes them.
SAMPLE_VECTORS = REPO / "tests" / "data" / "sample-vectors.npy"


@pytest.fixture(scope="session")
def sample_vectors() -> np.ndarray:
    """The 120 sample photos' real VGG16 vectors (``SAMPLE_PHOTOS`` order): (120, 512)."""
    vectors = np.load(SAMPLE_VECTORS)
    assert vectors.shape == (len(SAMPLE_PHOTOS), 512)
    return vectors


@pytest.fixture(scope="session")
def sample_photo_details(fake_featurizer: Featurizer) -> dict[str, tuple[Any, Any]]:
    """Each sample photo's colour signature and local features by path (``SAMPLE_PHOTOS``), computed once per test
    process, for tests that store the sample catalogue directly and want it as complete as an ingest leaves it."""
    from concurrent.futures import ThreadPoolExecutor

    from imgsearch import local_features
    from imgsearch.colour import colour_signature

    def details(path: Path) -> tuple[Any, Any]:
        colour = colour_signature(fake_featurizer.pipeline.preprocessing.decode(str(path)))
        return colour, local_features.features_of(str(path))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(map(str, SAMPLE_PHOTOS), pool.map(details, SAMPLE_PHOTOS), strict=True))
