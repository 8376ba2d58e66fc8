"""VGG16's convolutional part on ONNX Runtime: the float32 runtime, for CPUs without native bfloat16.

Where the CPU has no bfloat16 units, float32 is the only precision, and ONNX Runtime's convolutions were reported
1.38x TensorFlow's on such a CPU, with the same vectors; where TensorFlow's kernels are already near the FLOP
ceiling (AVX-512) they are about even. Either way it starts in under a second, without loading TensorFlow, in
less memory (docs/performance.md, "Runtimes").

The graph is written directly from the Keras model's weights (Conv + Relu + MaxPool; no converter, none
supports Keras 3 reliably) once per weights file and cached beside it, or in ``~/.cache/imgsearch`` when that
folder is read-only (and for Keras' own ImageNet download). It takes what :class:`imgsearch.embedding.Featurizer`
feeds the Keras model, ``(N, h, w, 3)`` RGB pixels in 0..255, applies the same preprocessing
(``keras.applications.vgg16.preprocess_input``: BGR, ImageNet means subtracted) and returns the feature maps of
the pipeline's layer, ``(N, h', w', 512)``, which :func:`imgsearch.embedding.pool_maps` pools.

``onnx`` and ``onnxruntime`` are the optional extra ``imgsearch[onnx]``, imported only here. Once a weights file
is converted, loading it needs neither TensorFlow nor ``onnx``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch.errors import ConfigurationError

#: Part of the cached file's name: bump it whenever :func:`convert` would write another graph.
GRAPH_VERSION = 1
#: ``keras.applications.vgg16.preprocess_input`` ("caffe" mode) subtracts these from the B, G, R channels.
_BGR_MEANS = (103.939, 116.779, 123.68)
_INPUT, _OUTPUT = "images", "maps"
_INSTALL = "pip install 'imgsearch[onnx]'"


def available() -> bool:
    """Whether the extra is installed (without importing it: ``onnxruntime`` takes a while to import)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


class OnnxNetwork:
    """A loaded graph: pixels ``(N, h, w, 3)`` float32 -> feature maps ``(N, h', w', 512)`` float32.

    Thread-safe (``InferenceSession.run`` is), like the TensorFlow graph it replaces.

    Attributes:
        weights_id: the converted Keras model's ``_weights_id`` (recorded in the file at conversion), for the
            embedding space: the same as TensorFlow's for the same weights.
        path: the cached ``.onnx`` file.
    """

    def __init__(self, path: Path) -> None:
        ort = _import("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        # ONNX Runtime's memory arena keeps the largest activations of every batch: without it a batch of 32
        # peaked at 1.1 GB instead of 2.0 GB, and ran no slower.
        options.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.weights_id: str = self._session.get_modelmeta().custom_metadata_map["weights_id"]
        self.path = path

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(images, dtype=np.float32)})[0]


def load(weights: str, layer: str, keras_model: Callable[[], tuple[Any, str]]) -> OnnxNetwork:
    """The network for ``weights`` (a ``.h5`` path or ``"imagenet"``) up to ``layer``, converted on first use.

    ``keras_model`` builds the float32 Keras model up to ``layer`` and returns it with its ``_weights_id``; it is
    called only when nothing is cached yet, and it is what checks the weights file and reports a bad one.

    Raises:
        ConfigurationError: the ``onnx`` extra is not installed.
    """
    _import("onnxruntime")  # before converting anything: the clear error first
    path = cached_path(weights, layer)
    if path is None or not path.exists():
        model, weights_id = keras_model()  # raises for a missing or wrong weights file
        path = cached_path(weights, layer)
        assert path is not None, "the model was loaded from this file"
        _write(convert(model, weights_id), path)
    return OnnxNetwork(path)


def cached_path(weights: str, layer: str) -> Path | None:
    """Where the converted graph of ``weights`` up to ``layer`` is (or goes); ``None`` if the file is not there.

    The name holds a digest of the weights file's bytes, so a changed file is converted again, and
    :data:`GRAPH_VERSION`, so a changed converter is too.
    """
    if weights == "imagenet":
        # Keras checks its download against the published file's hash: "imagenet" always means the same arrays.
        return _cache_folder() / f"vgg16-imagenet.{layer}.v{GRAPH_VERSION}.onnx"
    source = Path(weights).expanduser()
    if not source.is_file():
        return None
    digest = hashlib.sha256()
    with source.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    name = f"{source.stem}.{layer}.{digest.hexdigest()[:16]}.v{GRAPH_VERSION}.onnx"
    return (source.parent if _writable(source.parent) else _cache_folder()) / name


def convert(model: Any, weights_id: str) -> Any:
    """An ONNX model (``onnx.ModelProto``) of a float32 Keras VGG16 up to its last layer, with its preprocessing.

    Input ``images``: ``(N, h, w, 3)`` RGB in 0..255 (any N, h, w); output ``maps``: ``(N, h', w', c)``.
    """
    onnx = _import("onnx")
    from onnx import TensorProto, helper, numpy_helper

    # Keras: RGB -> BGR, minus the BGR means. The means are subtracted here (before the first convolution's
    # zero padding, as Keras does); the flip is folded into the first convolution's kernel instead.
    means = np.array(_BGR_MEANS[::-1], np.float32).reshape(1, 1, 1, 3)
    initializers = [numpy_helper.from_array(means, "rgb_means")]
    nodes = [
        helper.make_node("Sub", [_INPUT, "rgb_means"], ["centred"]),
        helper.make_node("Transpose", ["centred"], ["x0"], perm=[0, 3, 1, 2]),  # NHWC -> NCHW
    ]
    current, first = "x0", True
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        out = f"{layer.name}_out"
        if kind == "Conv2D":
            config = layer.get_config()
            if config["padding"] != "same" or tuple(config["strides"]) != (1, 1) or config["activation"] != "relu":
                raise ValueError(f"unsupported convolution {layer.name}: {config}")
            kernel, bias = (np.asarray(w.numpy(), np.float32) for w in layer.weights)
            if first:
                kernel = kernel[:, :, ::-1, :]  # the model reads BGR; the graph gets RGB
                first = False
            height, width = kernel.shape[:2]
            initializers += [
                numpy_helper.from_array(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), f"{layer.name}_W"),
                numpy_helper.from_array(bias, f"{layer.name}_B"),
            ]
            pads = [(height - 1) // 2, (width - 1) // 2, height // 2, width // 2]  # Keras' "same"
            nodes += [
                helper.make_node(
                    "Conv",
                    [current, f"{layer.name}_W", f"{layer.name}_B"],
                    [f"{layer.name}_conv"],
                    kernel_shape=[height, width],
                    pads=pads,
                ),
                helper.make_node("Relu", [f"{layer.name}_conv"], [out]),
            ]
        elif kind == "MaxPooling2D":
            config = layer.get_config()
            if config["padding"] != "valid":
                raise ValueError(f"unsupported pooling {layer.name}: {config}")
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [out], kernel_shape=list(config["pool_size"]), strides=list(config["strides"])
                )
            )
        else:
            raise ValueError(f"unsupported layer {layer.name} ({kind}): the ONNX graph covers VGG16's convolutions")
        current = out
    nodes.append(helper.make_node("Transpose", [current], [_OUTPUT], perm=[0, 2, 3, 1]))  # back to NHWC
    channels = int(model.output.shape[-1])
    graph = helper.make_graph(
        nodes,
        "vgg16",
        [helper.make_tensor_value_info(_INPUT, TensorProto.FLOAT, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info(_OUTPUT, TensorProto.FLOAT, ["batch", "map_height", "map_width", channels])],
        initializers,
    )
    # Opset 17 and IR version 8: what every onnxruntime since 1.14 reads.
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(proto, {"weights_id": weights_id, "graph_version": str(GRAPH_VERSION)})
    onnx.checker.check_model(proto)
    return proto


def _write(proto: Any, path: Path) -> None:
    """Write atomically: workers starting together may convert at once, and none may read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _writable(folder: Path) -> bool:
    """Whether to cache beside the weights: a folder without write bits is read-only by intent, even for root
    (who could write there anyway), e.g. shared model folders."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK)


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "imgsearch"


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigurationError(f"runtime 'onnxruntime' needs the {name} package: {_INSTALL}") from None
