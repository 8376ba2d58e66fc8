"""The featurizer: product photos -> 512-d, L2-normalised VGG16 embeddings.

The network is exactly the original notebooks' one: ``keras.applications.VGG16(include_top=False)`` with the
ImageNet weights on 224x224 inputs prepared by :mod:`imgsearch.images` and
``keras.applications.vgg16.preprocess_input``. A :class:`Pipeline` says how the photo is prepared and how the
512 block5 feature maps are pooled into one vector; the notebooks' pipeline (global average of
``block5_pool``) stays available as ``"notebook"``, and the default is the one that measured best
(docs/quality.md).

The network runs on TensorFlow or, in float32, on ONNX Runtime (:mod:`imgsearch.onnx_runtime`, the optional
extra ``imgsearch[onnx]``): ``runtime="auto"`` picks the faster one for the CPU (:func:`resolve_runtime`).
TensorFlow is imported only when a :class:`Featurizer` that needs it is created, so ``import imgsearch`` stays
fast for the commands that never embed anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch import local_features, onnx_runtime
from imgsearch.colour import colour_signature
from imgsearch.config import PIPELINE_NAMES, PRECISIONS, RUNTIMES
from imgsearch.errors import ConfigurationError, ImageError, WeightsUnavailableError
from imgsearch.images import (
    DEFAULT_PREPROCESSING,
    NOTEBOOK_PREPROCESSING,
    PREPROCESSING_VERSION,
    RMAC_PREPROCESSING,
    Crop,
    ImageSource,
    Preprocessing,
)
from imgsearch.local_features import LocalFeatures
from imgsearch.tables import DIMENSION

if TYPE_CHECKING:
    from imgsearch.config import Settings

#: What a decoding thread hands the network: the pixels, the colour signature and the local features (if asked).
_Prepared = tuple[np.ndarray, "np.ndarray | None", "LocalFeatures | None"]
#: CPU features with native bfloat16 arithmetic (x86: AVX512-BF16, AMX-BF16; Arm: BF16), as /proc/cpuinfo
#: names them. oneDNN then runs the network about 4x faster in bfloat16 than in float32 (docs/performance.md).
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, cpuinfo: str | None = None) -> str:
    """The precision ``auto`` means on this machine: ``bfloat16`` when the CPU has native bfloat16
    arithmetic, else ``float32`` (where bfloat16 is emulated and slower). Others are returned as they are.
    ``cpuinfo`` is the text of /proc/cpuinfo (read when not given)."""
    if precision != "auto":
        return precision
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    flags = {flag for line in text.splitlines() if line.startswith(("flags", "Features")) for flag in line.split()}
    return "bfloat16" if flags & BFLOAT16_CPU_FLAGS else "float32"


def resolve_runtime(runtime: str, precision: str, cpuinfo: str | None = None) -> tuple[str, str]:
    """The ``(runtime, precision)`` that ``runtime`` and ``precision`` mean on this machine.

    ``auto`` picks what measured fastest (docs/performance.md, "Runtimes"): TensorFlow where the CPU has native
    bfloat16 (its bfloat16 is 2-4x float32 there, and its float32 was 1.08x ONNX Runtime's on such a CPU) or
    bfloat16 is asked for (the only runtime that has it); elsewhere ONNX Runtime, when the extra is installed
    (reported 1.38x TensorFlow on a CPU without bfloat16, and it starts without loading TensorFlow), else
    TensorFlow. ONNX Runtime computes in float32 only: ``precision="auto"`` means float32 there. ``cpuinfo`` as
    for :func:`resolve_precision`.

    Raises:
        ConfigurationError: ``onnxruntime`` with ``bfloat16``.
    """
    if runtime == "onnxruntime":
        if precision == "bfloat16":
            raise ConfigurationError("runtime 'onnxruntime' computes in float32 only: use precision float32 or auto")
        return runtime, "float32"
    native_bfloat16 = resolve_precision("auto", cpuinfo) == "bfloat16"
    precision = resolve_precision(precision, cpuinfo)
    if runtime == "auto":
        onnx = precision == "float32" and not native_bfloat16 and onnx_runtime.available()
        runtime = "onnxruntime" if onnx else "tensorflow"
    return runtime, precision


#: ``weights_id`` of the published ImageNet VGG16 "notop" weights (Keras' download and the project's shared
#: copy hold the same arrays, so they share this id).
IMAGENET_WEIGHTS_ID = "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"

KERAS_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: ``weights`` of a featurizer whose network is a deterministic stand-in (:class:`_FakeNetwork`), not VGG16.
FAKE_WEIGHTS = "fake"
_HOW_TO_FIX = (
    f"set IMGSEARCH_VGG16_WEIGHTS=/path/to/{KERAS_WEIGHTS_FILE} (or pass --weights), "
    "or use weights 'imagenet' and allow Keras to download them once (cached in ~/.keras/models)"
)

# XLA (jit_compile=True) was measured slower on CPU: float32 4.2 vs 5.3 images/s, bfloat16 4.7 vs 13-23
# images/s (batches of 32), because the plain graph runs oneDNN kernels that use AMX/AVX-512 for bfloat16.
_JIT_COMPILE = False


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int, int]]:
    """R-MAC's regions of a ``height`` x ``width`` feature map, as ``(top, bottom, left, right)`` slices.

    Tolias et al. (2016), as in Radenovic's cnnimageretrieval: the whole map, then at each level ``l`` squares
    of side ``2 * min(height, width) / (l + 1)``, ``l`` of them along the shorter side and, along the longer
    side, ``l`` plus the number that gives neighbours an overlap closest to ``overlap``.
    """
    short = min(height, width)
    regions = [(0, height, 0, width)]
    extra_h = extra_w = 0
    if height != width:
        steps = np.arange(2, 8)
        spacing = (max(height, width) - short) / (steps - 1)
        extra = int(np.argmin(np.abs((short * short - short * spacing) / (short * short) - overlap))) + 1
        extra_h, extra_w = (0, extra) if height < width else (extra, 0)
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)

        def starts(count: int, extent: int, side: int = side, half: int = half) -> list[int]:
            step = 0.0 if count == 1 else (extent - side) / (count - 1)
            return [math.floor(half + i * step) - half for i in range(count)]

        regions += [
            (y, y + side, x, x + side) for y in starts(level + extra_h, height) for x in starts(level + extra_w, width)
        ]
    return regions


def regional_max_pool(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """R-MAC of feature maps ``(N, h, w, c)``: each region of :func:`rmac_regions` max-pooled and
    L2-normalised, summed: ``(N, c)`` float32 (not normalised)."""
    total = np.zeros((maps.shape[0], maps.shape[3]), np.float32)
    for top, bottom, left, right in rmac_regions(maps.shape[1], maps.shape[2], levels):
        region = maps[:, top:bottom, left:right].max(axis=(1, 2)).astype(np.float32)
        total += region / np.maximum(np.linalg.norm(region, axis=1, keepdims=True), 1e-12)
    return total


@dataclass(frozen=True)
class Pipeline:
    """From photo to vector: how pixels are prepared, which VGG16 layer is pooled and how.

    Attributes:
        preprocessing: decoding and resizing.
        version: recorded as the embedding space's ``preprocessing_version``: it must change whenever
            anything here changes the vectors.
        layer: ``block5_pool`` (the notebooks' output of ``include_top=False``) or ``block5_conv3``.
        pooling: ``avg`` (global average), ``max``, ``gem`` (generalised mean with exponent ``gem_p``) or
            ``rmac`` (regional max-pooling over ``rmac_levels`` levels: :func:`regional_max_pool`).
        power: exponent applied to the pooled features before L2 normalisation (0.5: square root, which
            damps the few channels that dominate a vector; the features are ReLU outputs, never negative).
        model_name: recorded in the embedding space: vectors of another pooling are another space.
    """

    preprocessing: Preprocessing
    version: str
    model_name: str = "vgg16-imagenet-gap"
    layer: str = "block5_pool"
    pooling: str = "avg"
    gem_p: float = 3.0
    power: float = 1.0
    rmac_levels: int = 3


#: The original notebooks: squashed nearest-neighbour pixels, global average of ``block5_pool``.
NOTEBOOK_PIPELINE = Pipeline(NOTEBOOK_PREPROCESSING, version=NOTEBOOK_PREPROCESSING.version)

#: What catalogues get unless told otherwise: the same pixels, the global average of ``block5_conv3`` (the
#: last convolution, before the 2x2 max-pooling that ``block5_pool`` adds) and the square root of each
#: feature. It measured best of the variants that need nothing learnt from the catalogue (docs/quality.md):
#: Myntra macro precision@5 0.679 vs 0.664, and no loss on the phone photos.
DEFAULT_PIPELINE = Pipeline(DEFAULT_PREPROCESSING, version=PREPROCESSING_VERSION, layer="block5_conv3", power=0.5)

#: For a shopper's phone photo against catalogue photos: the photo with its aspect ratio kept (bicubic, longer
#: side 320: :data:`imgsearch.images.RMAC_PREPROCESSING`), R-MAC of ``block5_conv3`` (the whole map and 3
#: levels of regions, each max-pooled and L2-normalised, summed), L2-normalised; still 512-d. No square root:
#: it measured worse with R-MAC on every street-to-shop set. Measured in benchmarks/results/global-descriptor.md.
RMAC_PIPELINE = Pipeline(
    RMAC_PREPROCESSING,
    version=RMAC_PREPROCESSING.version + "-conv3rmac3-l2",
    model_name="vgg16-imagenet-rmac",
    layer="block5_conv3",
    pooling="rmac",
)

#: Named pipelines, for ``Featurizer(pipeline=...)``, ``IMGSEARCH_PIPELINE``, ``imgsearch reembed`` and ``imgsearch
#: eval --pipeline``.
PIPELINES: dict[str, Pipeline] = dict(
    zip(PIPELINE_NAMES, (DEFAULT_PIPELINE, RMAC_PIPELINE, NOTEBOOK_PIPELINE), strict=True)
)


def pipeline_of(space: Any) -> str | None:
    """The name of the pipeline whose vectors make up ``space`` (a catalogue's recorded space), or None."""
    for name, pipeline in PIPELINES.items():
        if (pipeline.model_name, pipeline.version) == (space.model_name, space.preprocessing_version):
            return name
    return None


MODEL_NAME = DEFAULT_PIPELINE.model_name


@dataclass(frozen=True)
class EmbeddingSpace:
    """What makes two vectors comparable: same network, same weights, same pixels in.

    The catalogue records it; vectors from different spaces must never be mixed. The precision and the
    runtime of the forward pass are deliberately not part of it: bfloat16 vectors are close enough to float32
    ones to share a catalogue, and ONNX Runtime's float32 vectors are TensorFlow's to 1e-6 (same weights id).
    """

    model_name: str
    weights_id: str
    preprocessing_version: str
    dimension: int


@dataclass(frozen=True)
class EmbedResult:
    """Outcome for one file of :meth:`Featurizer.embed_files`: a vector (and, when asked, the photo's colour
    signature, :func:`imgsearch.colour.colour_signature`), or the reason there is none."""

    path: str | os.PathLike[str]
    vector: np.ndarray | None
    error: str | None = None
    colour: np.ndarray | None = None
    local: LocalFeatures | None = None

    @property
    def ok(self) -> bool:
        """Whether the file produced a vector."""
        return self.vector is not None


class Featurizer:
    """VGG16 (ImageNet) image embedder; loads the network when created.

    Thread-safe: one instance may serve concurrent :meth:`embed_image` calls (e.g. a web backend).

    Args:
        weights: ``"imagenet"`` for Keras' own download (cached in ``~/.keras/models``), or the path of a local
            ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``-style file, or ``"fake"`` (:data:`FAKE_WEIGHTS`)
            for a deterministic stand-in network without TensorFlow (tests, trying the tool; finds look-alikes
            by colour and layout only).
        batch_size: images per forward pass in :meth:`embed_files` and :meth:`embed_arrays`.
        pipeline: a name of :data:`PIPELINES` (``"default"``, or ``"notebook"`` for the original notebooks'
            vectors) or a :class:`Pipeline`.
        precision: ``"auto"`` (bfloat16 where the CPU has native bfloat16 arithmetic, float32 elsewhere:
            :func:`resolve_precision`), ``"float32"`` or ``"bfloat16"`` (Keras' ``mixed_bfloat16`` policy, for
            this model only: several times faster on CPUs with bfloat16 units; the vectors have a cosine
            similarity above 0.9999 to the float32 ones, so both can share a catalogue).
        runtime: ``"auto"`` (:func:`resolve_runtime`: TensorFlow where the CPU has native bfloat16, elsewhere ONNX
            Runtime when the ``onnx`` extra is installed), ``"tensorflow"`` or ``"onnxruntime"`` (float32; the
            graph is converted from the weights once and cached beside them: :mod:`imgsearch.onnx_runtime`).

    Raises:
        WeightsUnavailableError: the weights file is missing or is not VGG16 "notop" weights, or the ImageNet
            weights can be neither found in Keras' cache nor downloaded.
        ConfigurationError: invalid batch size, precision or runtime, or runtime ``onnxruntime`` without the
            ``onnx`` extra installed.
    """

    def __init__(
        self,
        weights: str = "imagenet",
        batch_size: int = 32,
        precision: str = "auto",
        pipeline: str | Pipeline = "default",
        runtime: str = "auto",
    ) -> None:
        if isinstance(pipeline, str):
            if pipeline not in PIPELINES:
                raise ConfigurationError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
            pipeline = PIPELINES[pipeline]
        poolings = ("avg", "max", "gem", "rmac")
        if pipeline.layer not in ("block5_pool", "block5_conv3") or pipeline.pooling not in poolings:
            raise ConfigurationError(f"unsupported pipeline {pipeline}")
        if batch_size < 1:
            raise ConfigurationError(f"batch size must be at least 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.batch_size = batch_size
        self.runtime, self.precision = resolve_runtime(runtime, precision)
        self.weights = weights
        self.pipeline = pipeline
        size = pipeline.preprocessing.size
        #: Inputs that keep the photo's aspect ratio have any height and width (the longer side ``size``).
        self._keeps_aspect = pipeline.preprocessing.fit == "keep"
        self._input_shape: tuple[int | None, int | None, int] = (
            (None, None, 3) if self._keeps_aspect else (size, size, 3)
        )

        if weights == FAKE_WEIGHTS:
            fake = _FakeNetwork()
            self._forward: Any = fake
            self._pools = True
            self.space = EmbeddingSpace(pipeline.model_name, fake.weights_id, pipeline.version, DIMENSION)
            return
        if self.runtime == "onnxruntime":
            # The graph returns the feature maps; pool_maps pools them as the TensorFlow graph does.
            network = _onnx_network(weights, pipeline.layer)
            self._forward = network
            self._pools = True
            self.space = EmbeddingSpace(pipeline.model_name, network.weights_id, pipeline.version, DIMENSION)
            return
        # R-MAC's regions depend on the map's shape: the graph returns the maps, pooled in NumPy by _run.
        self._pools = pipeline.pooling == "rmac"
        tf, keras = _import_tensorflow()
        self._model = _build_model(keras, weights, self.precision, self._input_shape, pipeline.layer)
        self.space = EmbeddingSpace(
            model_name=pipeline.model_name,
            weights_id=_weights_id(self._model),
            preprocessing_version=pipeline.version,
            dimension=DIMENSION,
        )
        preprocess = keras.applications.vgg16.preprocess_input
        model = self._model

        def forward(images: Any) -> Any:
            # Under mixed_bfloat16 the model outputs bfloat16; pooling and vectors are always float32.
            maps = tf.cast(model(preprocess(images), training=False), tf.float32)
            if pipeline.pooling == "rmac":
                return maps
            if pipeline.pooling == "max":
                features = tf.reduce_max(maps, axis=[1, 2])
            elif pipeline.pooling == "gem":
                # The maps are ReLU outputs (>= 0); the small floor keeps the root's gradient-free graph finite.
                p = pipeline.gem_p
                features = tf.pow(tf.reduce_mean(tf.pow(tf.maximum(maps, 1e-6), p), axis=[1, 2]), 1.0 / p)
            else:
                features = tf.reduce_mean(maps, axis=[1, 2])
            if pipeline.power != 1.0:
                features = tf.pow(tf.maximum(features, 0.0), pipeline.power)
            return tf.math.l2_normalize(features, axis=-1)

        # One graph with a variable batch dimension (and variable height and width for inputs that keep the
        # aspect ratio): it is traced once and then serves single queries and batches of any size alike, so
        # the last partial batch needs no padding. (A separate graph with a static batch of 1 was measured no
        # faster for single images; see benchmarks/results/global-descriptor.md for static input sizes.)
        self._forward = tf.function(
            forward,
            input_signature=[tf.TensorSpec((None, *self._input_shape), tf.float32)],
            jit_compile=_JIT_COMPILE,
        )

    @classmethod
    def from_settings(cls, settings: Settings, pipeline: str | None = None) -> Featurizer:
        """A featurizer configured by :class:`imgsearch.config.Settings` (weights, batch size, precision,
        runtime), with ``pipeline`` (default: the settings' pipeline, for a new catalogue)."""
        return cls(
            weights=settings.weights,
            batch_size=settings.batch_size,
            precision=settings.precision,
            runtime=settings.runtime,
            pipeline=pipeline or settings.pipeline,
        )

    def __repr__(self) -> str:
        return (
            f"Featurizer(weights={self.weights!r}, batch_size={self.batch_size}, precision={self.precision!r}, "
            f"runtime={self.runtime!r}, preprocessing={self.space.preprocessing_version!r})"
        )

    def warm_up(self) -> None:
        """Trace the graph and run one image through it, so that the first real query is not slow (servers)."""
        size = self.pipeline.preprocessing.size
        # A portrait 3:4 photo, the commonest product photo, for inputs that keep the aspect ratio.
        shape = (size, round(size * 3 / 4), 3) if self._keeps_aspect else self._input_shape
        self._run(np.zeros((1, *shape), np.float32))

    def embed_image(self, source: ImageSource, crop: Crop | None = None) -> np.ndarray:
        """Embed one image (a path, its bytes or a binary file object), or only its ``crop`` box
        (:data:`imgsearch.images.Crop`): float32 unit vector of shape (512,).

        Raises:
            ImageError: the image cannot be read or decoded, or ``crop`` lies outside it.
        """
        return self._run(self.pipeline.preprocessing.decode(source, crop=crop)[np.newaxis])[0]

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed decoded images: ``(N, 224, 224, 3)`` RGB in 0..255 -> ``(N, 512)`` float32 unit vectors.

        The images must have been prepared by this featurizer's preprocessing
        (``featurizer.pipeline.preprocessing.decode``): for pipelines that keep the aspect ratio, ``(N, h, w, 3)``
        with a longer side of the preprocessing's size (images of other shapes go in separate calls).
        """
        batch = np.asarray(batch)
        side = self.pipeline.preprocessing.size
        if self._keeps_aspect:
            if batch.ndim != 4 or batch.shape[3] != 3 or max(batch.shape[1:3]) != side:
                raise ValueError(f"expected an array of shape (N, h, w, 3) with max(h, w) = {side}, got {batch.shape}")
        elif batch.ndim != 4 or batch.shape[1:] != self._input_shape:
            raise ValueError(f"expected an array of shape (N, {side}, {side}, 3), got {batch.shape}")
        out = np.empty((len(batch), DIMENSION), np.float32)
        for start in range(0, len(batch), self.batch_size):
            out[start : start + self.batch_size] = self._run(batch[start : start + self.batch_size])
        return out

    def embed_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        batch_size: int | None = None,
        prefetch_batches: int = 2,
        workers: int | None = None,
        colour: bool = False,
        local: bool = False,
    ) -> Iterator[EmbedResult]:
        """Embed many files, yielding one :class:`EmbedResult` per path, in input order, as batches finish.

        ``paths`` is consumed lazily (it may be a generator of any length) and memory stays bounded: at most
        ``prefetch_batches + 1`` batches of decoded images exist at a time. Images are decoded by a thread
        pool while the network runs on the previous batch. A file that cannot be decoded yields a result
        with ``error`` set and does not stop the stream.

        Args:
            paths: image files.
            batch_size: images per forward pass (default: the featurizer's ``batch_size``).
            prefetch_batches: batches decoded ahead of the one the network is working on.
            workers: decoding threads (default: the number of CPUs, at most 4).
            colour: also compute each photo's colour signature (from the same decoded pixels, in the decoding
                threads: about a millisecond each).
            local: also compute each photo's local features (:func:`imgsearch.local_features.features_of`, in the
                decoding threads, from its own decoding at a larger size: about 10-50 ms each).
        """
        batch_size = batch_size or self.batch_size
        if batch_size < 1 or prefetch_batches < 0:
            raise ValueError(f"need batch_size >= 1 and prefetch_batches >= 0, got {batch_size}, {prefetch_batches}")
        workers = workers or min(4, os.cpu_count() or 1)
        chunks = _chunked(paths, batch_size)
        pending: deque[list[tuple[str | os.PathLike[str], Future[_Prepared]]]] = deque()
        decode = self.pipeline.preprocessing.decode

        def prepare(path: str | os.PathLike[str]) -> _Prepared:
            pixels = decode(path)
            features = None
            if local:
                if hasattr(path, "seek"):
                    path.seek(0)  # a stream (a downloaded photo) is read a second time, at another size
                features = local_features.features_of(path)
            return pixels, colour_signature(pixels) if colour else None, features

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgsearch-decode") as pool:

            def submit_next_chunk() -> None:
                # The iterable is only ever advanced here, in the consumer's thread: generators are not
                # thread-safe.
                chunk = next(chunks, None)
                if chunk is not None:
                    pending.append([(path, pool.submit(prepare, path)) for path in chunk])

            try:
                for _ in range(prefetch_batches + 1):
                    submit_next_chunk()
                while pending:
                    batch = pending.popleft()
                    submit_next_chunk()
                    yield from self._embed_decoded(batch)
            finally:
                # Reached early when the consumer stops iterating: do not decode what nobody will read.
                for batch in pending:
                    for _, future in batch:
                        future.cancel()

    def _embed_decoded(self, batch: list[tuple[str | os.PathLike[str], Future[_Prepared]]]) -> Iterator[EmbedResult]:
        images: list[np.ndarray] = []
        extras: list[tuple[np.ndarray | None, LocalFeatures | None]] = []
        errors: list[str | None] = []
        for _, future in batch:
            try:
                pixels, signature, features = future.result()
                images.append(pixels)
                extras.append((signature, features))
                errors.append(None)
            except ImageError as exc:
                errors.append(str(exc))
        vectors = iter(self._run_images(images) if images else ())
        more = iter(extras)
        for (path, _), error in zip(batch, errors, strict=True):
            if error is None:
                signature, features = next(more)
                yield EmbedResult(path, next(vectors), colour=signature, local=features)
            else:
                yield EmbedResult(path, None, error)

    def _run_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Embed decoded images of possibly different shapes: one forward pass per shape, rows in input order."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        if len(by_shape) == 1:
            return self._run(np.stack(images))
        out = np.empty((len(images), DIMENSION), np.float32)
        for index in by_shape.values():
            out[index] = self._run(np.stack([images[i] for i in index]))
        return out

    def _run(self, images: np.ndarray) -> np.ndarray:
        output = np.asarray(self._forward(np.asarray(images, dtype=np.float32)))
        return pool_maps(output, self.pipeline) if self._pools else output


def pool_maps(maps: np.ndarray, pipeline: Pipeline) -> np.ndarray:
    """Feature maps ``(N, h, w, 512)`` -> ``(N, 512)`` unit vectors, pooled as ``pipeline`` says (what the
    graph does for the global poolings, in NumPy: R-MAC's regions depend on the map's shape)."""
    maps = maps.astype(np.float32, copy=False)
    if pipeline.pooling == "rmac":
        features = regional_max_pool(maps, pipeline.rmac_levels)
    elif pipeline.pooling == "max":
        features = maps.max(axis=(1, 2))
    elif pipeline.pooling == "gem":
        p = pipeline.gem_p
        features = np.power(np.power(np.maximum(maps, 1e-6), p).mean(axis=(1, 2)), 1.0 / p)
    else:
        features = maps.mean(axis=(1, 2))
    if pipeline.power != 1.0:
        features = np.power(np.maximum(features, 0.0), pipeline.power)
    return (features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class _FakeNetwork:
    """A deterministic stand-in for VGG16 (``weights="fake"``): feature maps from a fixed random projection of
    each 16x16-pixel cell's colour and its neighbours'. Photos that look alike get close vectors, so searches
    behave like real ones, but nothing is learnt: for tests of everything around the network (database, CLI,
    HTTP) without TensorFlow, and for trying the tool without the weights. Its vectors are their own
    embedding space (its ``weights_id``), so a catalogue never mixes them with VGG16's."""

    CELL = 16
    VERSION = b"imgsearch-fake-network-1"

    def __init__(self) -> None:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(self.VERSION).digest()[:8], "little"))
        # A 3x3 neighbourhood of cells, 3 colours each: edges and colour layout, like a (very) shallow network.
        self.weights = rng.normal(size=(27, DIMENSION)).astype(np.float32)
        # Mostly negative biases: sparse activations, so that unrelated photos are far apart (mean cosine ~0.65).
        self.bias = rng.normal(loc=-2.0, scale=0.5, size=DIMENSION).astype(np.float32)
        self.weights_id = hashlib.sha256(self.VERSION + self.weights.tobytes() + self.bias.tobytes()).hexdigest()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        n, height, width, _ = images.shape
        rows, cols = max(1, height // self.CELL), max(1, width // self.CELL)
        cropped = images[:, : rows * self.CELL, : cols * self.CELL]
        cells = cropped.reshape(n, rows, cropped.shape[1] // rows, cols, cropped.shape[2] // cols, 3)
        cells = cells.mean(axis=(2, 4)) / 255.0 - 0.5
        padded = np.pad(cells, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        around = [padded[:, dy : dy + rows, dx : dx + cols] for dy in range(3) for dx in range(3)]
        return np.maximum(np.concatenate(around, axis=3) @ self.weights + self.bias, 0.0)


def _chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _weights_id(model: Any) -> str:
    """SHA-256 over the weight arrays in layer order: identifies the weights whatever file they came from."""
    digest = hashlib.sha256()
    for variable in model.weights:
        # Little-endian float32 whatever the variable dtype, so the id depends on the values only.
        digest.update(np.ascontiguousarray(variable.numpy(), dtype="<f4").tobytes())
    return digest.hexdigest()


def _onnx_network(weights: str, layer: str) -> onnx_runtime.OnnxNetwork:
    """VGG16 up to ``layer`` on ONNX Runtime; TensorFlow is loaded only to convert the weights the first time."""

    def keras_model() -> tuple[Any, str]:
        _, keras = _import_tensorflow()
        model = _build_model(keras, weights, "float32", (None, None, 3), layer)
        return model, _weights_id(model)

    return onnx_runtime.load(weights, layer, keras_model)


def _build_model(
    keras: Any, weights: str, precision: str, input_shape: tuple[int | None, int | None, int], layer: str
) -> Any:
    """The notebooks' VGG16 with the requested weights, built under the requested dtype policy, up to
    ``layer`` (feature maps, pooled by the caller)."""
    previous = keras.config.dtype_policy()
    if precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        if weights == "imagenet":
            model = _imagenet_model(keras, input_shape)
        else:
            model = keras.applications.VGG16(include_top=False, weights=None, input_shape=input_shape)
            _load_weights_file(model, weights)
    finally:
        # The policy is process-global; other Keras users in the process keep theirs.
        keras.config.set_dtype_policy(previous)
    if layer == "block5_pool":
        return model
    # Same weights (block5_pool has none), so the weights id is the same.
    return keras.Model(model.input, model.get_layer(layer).output)


def _imagenet_model(keras: Any, input_shape: tuple[int | None, int | None, int]) -> Any:
    try:
        # Keras announces the download on stdout, which may be a CLI's machine-readable output.
        with contextlib.redirect_stdout(sys.stderr):
            return keras.applications.VGG16(include_top=False, weights="imagenet", input_shape=input_shape)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise WeightsUnavailableError(
            f"the ImageNet VGG16 weights are not in Keras' cache and could not be downloaded ({reason}): {_HOW_TO_FIX}"
        ) from None


def _load_weights_file(model: Any, weights: str) -> None:
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsUnavailableError(f"VGG16 weights file not found: {path}: {_HOW_TO_FIX}")
    if not path.is_file():
        raise WeightsUnavailableError(f"VGG16 weights path is not a file: {path}: {_HOW_TO_FIX}")
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise WeightsUnavailableError(f"VGG16 weights must be an HDF5 file ending in .h5, got {path}")
    expected = f"expected a file like Keras' {KERAS_WEIGHTS_FILE}"
    initial = [variable.numpy() for variable in model.weights]
    try:
        model.load_weights(str(path))
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise WeightsUnavailableError(
            f"{path} does not hold the VGG16 convolutional ('notop') weights ({reason}); {expected}"
        ) from None
    # Keras' own .weights.h5 format skips what it cannot match with a mere warning, which would leave some
    # layers randomly initialised: every randomly initialised tensor must have been overwritten.
    stale = [
        variable.path
        for variable, before in zip(model.weights, initial, strict=True)
        if before.any() and np.array_equal(variable.numpy(), before)
    ]
    if stale:
        raise WeightsUnavailableError(
            f"{path} does not hold the VGG16 convolutional ('notop') weights: {len(stale)} tensors were not "
            f"loaded (first: {stale[0]}); {expected}"
        )


# --- quiet TensorFlow import -------------------------------------------------------------------------------

# Lines TensorFlow's C++ runtime writes to stderr before its logging is initialised, which
# TF_CPP_MIN_LOG_LEVEL cannot silence: pure noise for a CLI user on a CPU machine.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "cuda_executor.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning",
)
_import_lock = threading.Lock()


def _import_tensorflow() -> tuple[Any, Any]:
    """Import TensorFlow and Keras, keeping the runtime's start-up chatter off the user's terminal."""
    with _import_lock:
        # Must be set before TensorFlow is first imported; a user's own setting wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        quiet = "tensorflow" not in sys.modules and os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("", "0")
        with _filtered_stderr() if quiet else contextlib.nullcontext():
            import keras
            import tensorflow as tf

            # Initialising the devices is what prints the CUDA probe errors; do it while filtered.
            tf.config.list_physical_devices()
        if keras.backend.backend() != "tensorflow":
            raise ConfigurationError(
                f"imgsearch needs the TensorFlow backend of Keras, but KERAS_BACKEND is "
                f"{keras.backend.backend()!r}: unset it or set KERAS_BACKEND=tensorflow"
            )
        return tf, keras


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (where C++ code writes) and replay everything but known start-up noise."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not any(noise in line for noise in _STARTUP_NOISE)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
