"""Settings, read from the environment (``IMGSEARCH_*``) and overridable by CLI options or keyword arguments."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from imgsearch.errors import ConfigurationError

#: How the network computes: ``auto`` (bfloat16 on CPUs with native bfloat16 arithmetic, float32 elsewhere),
#: ``float32`` or ``bfloat16``. Vectors of both are interchangeable (cosine 0.99999): one catalogue may mix them.
PRECISIONS = ("auto", "float32", "bfloat16")
#: What runs the network: ``auto`` (TensorFlow where the CPU has native bfloat16, elsewhere ONNX Runtime when the
#: ``onnx`` extra is installed), ``tensorflow`` or ``onnxruntime`` (float32 only). Their float32 vectors are the
#: same to 1e-6.
RUNTIMES = ("auto", "tensorflow", "onnxruntime")
#: The named pipelines from photo to vector (imgsearch.embedding.PIPELINES defines each).
PIPELINE_NAMES = ("default", "rmac", "notebook")

#: ``imgsearch ingest`` gives a category its own index from this many products on (docs/performance.md): below
#: it, ranking the whole category exactly takes a few milliseconds; above it, a walk of the catalogue-wide index
#: that the photo leads away from the category would cost tens to hundreds.
DEFAULT_CATEGORY_INDEX_MIN_PRODUCTS = 2000
#: Ingestion builds the photos' IVF index (imgsearch/scan_index.py) from this many photos on: below it the HNSW
#: walk finds what a scan finds (docs/quality.md, "Candidates at scale").
DEFAULT_SCAN_INDEX_MIN_PHOTOS = 10_000
#: Days a shopper's event is kept (imgsearch.feedback).
DEFAULT_EVENT_RETENTION_DAYS = 400

#: The PostgreSQL schema that holds imgsearch's tables, indexes, functions and Alembic version table.
DEFAULT_SCHEMA = "imgsearch"
# Lower-case identifiers only: they need no quoting anywhere (psql, backends' SQL, search_path settings).
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imgsearch"


def env_float(name: str, default: float) -> float:
    """A number of seconds (or any non-negative number) from the environment."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigurationError(f"{name} must be a number >= 0, got {raw!r}")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Everything imgsearch needs to know about its environment.

    Attributes:
        database_url: SQLAlchemy/libpq URL of a PostgreSQL server with pgvector. ``None`` means the embedded
            server kept under ``home``.
        read_url: a read replica of that database (``IMGSEARCH_READ_URL``): searches go there, writes never.
        home: directory for the embedded server's data (``IMGSEARCH_HOME``).
        weights: VGG16 weights: ``"imagenet"`` (the Keras download, cached by Keras) or a path to a local
            ``.h5`` file (``IMGSEARCH_VGG16_WEIGHTS``).
        batch_size: images per forward pass of the network (``IMGSEARCH_BATCH_SIZE``).
        precision: ``"auto"`` (default: bfloat16 where the CPU computes it natively), ``"float32"`` or
            ``"bfloat16"`` (``IMGSEARCH_PRECISION``).
        pipeline: how photos become vectors in a new catalogue (``IMGSEARCH_PIPELINE``: ``default``, ``rmac`` or
            ``notebook``, :data:`imgsearch.embedding.PIPELINES`). A catalogue keeps the pipeline it was built with,
            whatever this says, until ``imgsearch reembed`` moves it to another.
        runtime: ``"auto"`` (default: TensorFlow where the CPU has native bfloat16, elsewhere ONNX Runtime when
            installed), ``"tensorflow"`` or ``"onnxruntime"`` (``IMGSEARCH_RUNTIME``).
        image_root: the folder under which photo files are stored by a path relative to it
            (``IMGSEARCH_IMAGE_ROOT``; unset: absolute paths), and relative stored paths are looked up.
        schema: the PostgreSQL schema of imgsearch's objects (``IMGSEARCH_SCHEMA``, default ``imgsearch``), so
            that it can share a database with the shop's own tables.
        category_index_min_products: ``imgsearch ingest`` keeps a category index for every category of at least
            this many products (``IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS``; 0: never on its own).
        scan_index_min_photos: ``imgsearch ingest`` builds the photos' IVF index once the catalogue has this many
            photos, and again after twofold growth (``IMGSEARCH_SCAN_INDEX_MIN_PHOTOS``; 0: never on its own).
        event_retention_days: shoppers' events older than this are deleted by ``imgsearch events forget``
            (``IMGSEARCH_EVENT_RETENTION_DAYS``, default 400: a year of comparisons and some).
    """

    database_url: str | None = None
    read_url: str | None = None
    home: Path = field(default_factory=_default_home)
    weights: str = "imagenet"
    batch_size: int = 32
    precision: str = "auto"
    runtime: str = "auto"
    pipeline: str = "default"
    schema: str = DEFAULT_SCHEMA
    image_root: Path | None = None
    category_index_min_products: int = DEFAULT_CATEGORY_INDEX_MIN_PRODUCTS
    scan_index_min_photos: int = DEFAULT_SCAN_INDEX_MIN_PHOTOS
    event_retention_days: int = DEFAULT_EVENT_RETENTION_DAYS

    def __post_init__(self) -> None:
        check_schema_name(self.schema)
        if self.event_retention_days < 1:
            raise ConfigurationError(
                f"IMGSEARCH_EVENT_RETENTION_DAYS must be at least 1, got {self.event_retention_days}"
            )
        if self.batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {self.batch_size}")
        if self.category_index_min_products < 0:
            raise ConfigurationError(
                f"IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS must be 0 or more, got {self.category_index_min_products}"
            )
        if self.scan_index_min_photos < 0:
            raise ConfigurationError(
                f"IMGSEARCH_SCAN_INDEX_MIN_PHOTOS must be 0 or more, got {self.scan_index_min_photos}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigurationError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.pipeline not in PIPELINE_NAMES:
            raise ConfigurationError(
                f"IMGSEARCH_PIPELINE must be one of {', '.join(PIPELINE_NAMES)}, got {self.pipeline!r}"
            )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from ``IMGSEARCH_*`` variables; keyword arguments that are not ``None`` win."""
        home = os.environ.get("IMGSEARCH_HOME")
        settings = cls(
            database_url=os.environ.get("IMGSEARCH_DATABASE_URL") or None,
            read_url=os.environ.get("IMGSEARCH_READ_URL") or None,
            home=Path(home).expanduser() if home else _default_home(),
            weights=os.environ.get("IMGSEARCH_VGG16_WEIGHTS") or "imagenet",
            batch_size=_env_int("IMGSEARCH_BATCH_SIZE", 32),
            precision=os.environ.get("IMGSEARCH_PRECISION") or "auto",
            runtime=os.environ.get("IMGSEARCH_RUNTIME") or "auto",
            pipeline=os.environ.get("IMGSEARCH_PIPELINE") or "default",
            schema=os.environ.get("IMGSEARCH_SCHEMA") or DEFAULT_SCHEMA,
            image_root=Path(os.environ["IMGSEARCH_IMAGE_ROOT"]).expanduser()
            if os.environ.get("IMGSEARCH_IMAGE_ROOT")
            else None,
            category_index_min_products=_env_int(
                "IMGSEARCH_CATEGORY_INDEX_MIN_PRODUCTS", DEFAULT_CATEGORY_INDEX_MIN_PRODUCTS
            ),
            scan_index_min_photos=_env_int("IMGSEARCH_SCAN_INDEX_MIN_PHOTOS", DEFAULT_SCAN_INDEX_MIN_PHOTOS),
            event_retention_days=_env_int("IMGSEARCH_EVENT_RETENTION_DAYS", DEFAULT_EVENT_RETENTION_DAYS),
        )
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "home" in changes:
            changes["home"] = Path(str(changes["home"])).expanduser()
        return replace(settings, **changes) if changes else settings


def check_schema_name(name: str) -> str:
    """Return ``name`` if it can be imgsearch's schema, else raise :class:`ConfigurationError`."""
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name) or name.startswith("pg_"):
        raise ConfigurationError(
            f"schema must be a lower-case PostgreSQL name (letters, digits, _; not pg_...), got {name!r}"
        )
    return name
