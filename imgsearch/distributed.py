"""Embedding on a Ray cluster: the one step of ingestion that needs many machines, run as a Ray Data pipeline.

Photos are decoded by Ray tasks and embedded by VGG16 in a pool of actors (``map_batches`` with one
:class:`~imgsearch.embedding.Featurizer` per actor; GPUs are used by the actors when the cluster has them). On
CPUs Ray Data fuses the two steps: the actors decode their own batches.
Everything else stays where it is: listing, the SHA-256 skip of unchanged photos, downloads and the idempotent
binary-COPY upserts run in :func:`imgsearch.ingest.ingest`, which hands each batch's new photos to
:meth:`RayEmbedder.embed_files` instead of the local featurizer. So the guarantees are the same: idempotent,
resumable, every bad photo reported. A model actor that crashes is restarted by Ray and its batch run again; one
killed for good fails the batch in flight (:class:`RayWorkerLostError`), and running again resumes. Needs the
optional extra ``imgsearch[ray]``; imported only on this path.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from imgsearch.embedding import EmbedResult, Featurizer, Pipeline
from imgsearch.errors import ConfigurationError, ImageError, ImgsearchError
from imgsearch.local_features import LocalFeatures

#: Photos per batch of a model actor.
DEFAULT_BATCH_SIZE = 32


class RayWorkerLostError(ImgsearchError):
    """Ray lost, for good, an actor or worker of the batch being embedded: that batch is not written, the ones
    committed before are kept, so running the same ingestion again resumes."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigurationError("--ray needs Ray: pip install 'imgsearch[ray]'") from None
    return ray


def _decode(batch: dict[str, np.ndarray], pipeline: Pipeline, colour: bool, local: bool = False) -> dict[str, Any]:
    """A Ray task: decode a batch of photos (files, or bytes downloaded by the driver) into network input, and
    compute their colour signatures and local features when asked (packed: width, height, points, descriptors)."""
    from imgsearch import local_features
    from imgsearch.colour import colour_signature

    size = pipeline.preprocessing.size
    pixels = np.zeros((len(batch["i"]), size, size, 3), np.uint8)
    colours: list[Any] = []
    features: list[Any] = []
    errors: list[str] = []
    for row, (name, data) in enumerate(zip(batch["name"], batch["data"], strict=True)):
        source: Any = name
        if len(data):
            source = io.BytesIO(bytes(data))
            source.name = name
        packed: tuple[int, int, bytes, bytes] = (0, 0, b"", b"")
        try:
            pixels[row] = pipeline.preprocessing.decode(source)
            colours.append(colour_signature(pixels[row]) if colour else np.zeros(0, np.float32))
            if local:
                if len(data):
                    source.seek(0)
                found = local_features.features_of(source)
                packed = (found.width, found.height, *found.pack())
            errors.append("")
        except ImageError as exc:
            colours.append(np.zeros(0, np.float32))
            errors.append(str(exc))
        features.append(packed)
    return {
        "i": batch["i"],
        "pixels": pixels,
        "colour": colours,
        "local_size": np.array([f[:2] for f in features], dtype=np.int32).reshape(-1, 2),
        "local_points": _objects([f[2] for f in features]),
        "local_descriptors": _objects([f[3] for f in features]),
        "error": np.array(errors, dtype=object),
    }


def _objects(values: list[bytes]) -> np.ndarray:
    # np.array() would make fixed-width byte strings (and drop trailing NULs): keep Python bytes objects.
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class _Model:
    """A Ray actor: one featurizer (the model loaded once), embedding decoded batches."""

    def __init__(self, weights: str, precision: str, pipeline: Pipeline, batch_size: int) -> None:
        self.featurizer = Featurizer(weights=weights, precision=precision, pipeline=pipeline, batch_size=batch_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ok = np.array([not error for error in batch["error"]], dtype=bool)
        vectors = np.zeros((len(ok), 512), np.float32)
        if ok.any():
            vectors[ok] = self.featurizer.embed_arrays(batch["pixels"][ok])
        return {
            "i": batch["i"],
            "vector": vectors,
            "colour": batch["colour"],
            "local_size": batch["local_size"],
            "local_points": batch["local_points"],
            "local_descriptors": batch["local_descriptors"],
            "error": batch["error"],
        }


class RayEmbedder:
    """Embeds photos on a Ray cluster with :class:`~imgsearch.embedding.Featurizer`'s ``embed_files`` contract.

    ``address``: a Ray cluster (``ray://host:10001`` or ``auto``); ``None`` starts a local Ray instance.
    ``concurrency``: model actors (default: one per two CPUs of the cluster). ``batch_size``: photos per actor
    call. ``featurizer`` is the driver's, which says which weights, precision and pipeline the actors load.
    """

    def __init__(
        self,
        featurizer: Featurizer,
        *,
        address: str | None = None,
        concurrency: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        ray = _ray()
        if (concurrency is not None and concurrency < 1) or batch_size < 1:
            raise ConfigurationError("Ray concurrency and batch size must be at least 1")
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.featurizer = featurizer
        self.batch_size = batch_size
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        self.concurrency = concurrency or max(1, cpus // 2)
        self.gpus = 1 if ray.cluster_resources().get("GPU", 0) >= self.concurrency else 0

    def embed_files(
        self, sources: Iterable[Any], *, colour: bool = False, local: bool = False, **_: Any
    ) -> Iterator[EmbedResult]:
        """One :class:`EmbedResult` per source (a path, or a named byte stream), in input order."""
        ray = _ray()
        sources = list(sources)
        if not sources:
            return
        items = []
        for i, source in enumerate(sources):
            if hasattr(source, "read"):
                items.append({"i": i, "name": str(getattr(source, "name", "")), "data": source.read()})
            else:
                items.append({"i": i, "name": os.fspath(source), "data": b""})
        f = self.featurizer
        dataset = (
            ray.data.from_items(items)
            .map_batches(
                _decode,
                fn_kwargs={"pipeline": f.pipeline, "colour": colour, "local": local},
                batch_size=self.batch_size,
            )
            .map_batches(
                _Model,
                fn_constructor_kwargs={
                    "weights": f.weights,
                    "precision": f.precision,
                    "pipeline": f.pipeline,
                    "batch_size": f.batch_size,
                },
                concurrency=self.concurrency,
                batch_size=self.batch_size,
                num_gpus=self.gpus,
                # No max_restarts / max_task_retries: Ray Data's actor pools already restart a crashed actor and
                # run its batch again, without limit (tests/test_ray.py kills one), and passing them to
                # map_batches is deprecated (Ray 2.60, to go in 2.64). One killed for good: RayWorkerLostError.
            )
        )
        lost = (
            ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OutOfMemoryError,
        )
        try:
            rows = {int(row["i"]): row for row in dataset.iter_rows()}
        except lost as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RayWorkerLostError(
                f"Ray lost a worker of the batch being embedded ({type(exc).__name__}: {reason}); every batch "
                "committed before is kept: run the same command again to resume"
            ) from exc
        for i in range(len(sources)):
            row = rows[i]
            if row["error"]:
                yield EmbedResult(items[i]["name"], None, str(row["error"]))
            else:
                signature = np.asarray(row["colour"], np.float32) if colour else None
                features = None
                if local:
                    width, height = (int(v) for v in row["local_size"])
                    points, descriptors = bytes(row["local_points"]), bytes(row["local_descriptors"])
                    features = LocalFeatures.unpack(points, descriptors, width, height) if width else None
                vector = np.asarray(row["vector"], np.float32)
                yield EmbedResult(items[i]["name"], vector, colour=signature, local=features)
