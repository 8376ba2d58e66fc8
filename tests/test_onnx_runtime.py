"""The ONNX Runtime float32 runtime: TensorFlow's float32 vectors, converted once per weights file, picked by
``runtime="auto"`` where the CPU has no bfloat16.

These tests need the ``onnx`` extra (``pip install -e '.[dev,onnx]'``): without it they fail, never skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from imgsearch import embedding, onnx_runtime
from imgsearch.config import Settings
from imgsearch.embedding import Featurizer, resolve_runtime
from imgsearch.errors import ConfigurationError

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted(SAMPLES.glob("*/*.jpg"))  # the order of the ``sample_vectors`` fixture
#: A few photos of different classes, for the live comparisons with TensorFlow.
SOME = [PHOTOS[i] for i in (0, 25, 50, 75, 100, 119)]


def embed(featurizer: Featurizer, paths: list[Path]) -> np.ndarray:
    results = list(featurizer.embed_files(paths))
    assert all(result.ok for result in results), [result.error for result in results if not result.ok]
    return np.stack([result.vector for result in results])


@pytest.fixture(scope="module")
def weights_copy(weights_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real weights in a writable folder of their own, so that the graph is converted and cached beside them."""
    copy = tmp_path_factory.mktemp("weights") / "vgg16.h5"
    shutil.copyfile(weights_path, copy)
    return copy


@pytest.fixture(scope="module")
def onnx_featurizer(weights_copy: Path) -> Featurizer:
    return Featurizer(weights=str(weights_copy), runtime="onnxruntime", batch_size=8)


@pytest.fixture(scope="module")
def tf32_featurizer(weights_path: str) -> Featurizer:
    return Featurizer(weights=weights_path, runtime="tensorflow", precision="float32", batch_size=8)


def test_the_extra_is_installed() -> None:
    # CI installs it; a machine without it must fail here rather than quietly test TensorFlow twice.
    assert onnx_runtime.available(), "pip install -e '.[dev,onnx]'"


def test_onnx_vectors_are_tensorflow_float32_vectors(
    onnx_featurizer: Featurizer, tf32_featurizer: Featurizer, sample_vectors: np.ndarray
) -> None:
    assert (onnx_featurizer.runtime, onnx_featurizer.precision) == ("onnxruntime", "float32")
    # Same weights, same pixels, same pooling: one catalogue, whichever runtime embedded a photo.
    assert onnx_featurizer.space == tf32_featurizer.space

    vectors = embed(onnx_featurizer, PHOTOS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The stored vectors are TensorFlow float32's (tests/conftest.py), for all 120 photos.
    assert (vectors * sample_vectors).sum(axis=1).min() >= 0.9999
    # And live, against the TensorFlow float32 graph of this TensorFlow.
    live = embed(tf32_featurizer, SOME)
    assert (vectors[[PHOTOS.index(p) for p in SOME]] * live).sum(axis=1).min() >= 0.9999
    single = onnx_featurizer.embed_image(SOME[1])
    assert float(single @ live[1]) >= 0.9999


@pytest.mark.parametrize("pipeline", ["notebook", "rmac"])
def test_other_layers_and_photo_shapes(pipeline: str, weights_copy: Path, weights_path: str) -> None:
    # block5_pool (the notebooks' layer) is a graph of its own; R-MAC's inputs keep the photo's aspect ratio, so
    # the graph gets photos of several shapes.
    onnx = Featurizer(weights=str(weights_copy), runtime="onnxruntime", pipeline=pipeline)
    tf32 = Featurizer(weights=weights_path, runtime="tensorflow", precision="float32", pipeline=pipeline)
    assert onnx.space == tf32.space
    assert (embed(onnx, SOME) * embed(tf32, SOME)).sum(axis=1).min() >= 0.9999


def test_the_graph_is_converted_once_and_cached_beside_the_weights(
    onnx_featurizer: Featurizer, weights_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = onnx_runtime.cached_path(str(weights_copy), "block5_conv3")
    assert cached is not None and cached.parent == weights_copy.parent and cached.is_file()

    def no(*args: object) -> None:
        raise AssertionError("converted again")

    # A second featurizer reads the cached graph: no conversion, not even TensorFlow.
    monkeypatch.setattr(onnx_runtime, "convert", no)
    monkeypatch.setattr(embedding, "_import_tensorflow", no)
    again = Featurizer(weights=str(weights_copy), runtime="onnxruntime")
    assert again.space == onnx_featurizer.space
    assert float(again.embed_image(PHOTOS[7]) @ onnx_featurizer.embed_image(PHOTOS[7])) > 0.99999
    # Written to a temporary file and renamed: nothing half-written is left behind.
    assert not [p.name for p in weights_copy.parent.iterdir() if p.name.startswith(".")]


def test_changed_weights_are_converted_again(onnx_featurizer: Featurizer, weights_copy: Path, tmp_path: Path) -> None:
    changed = tmp_path / "vgg16.h5"
    shutil.copyfile(weights_copy, changed)
    with h5py.File(changed, "r+") as fh:
        fh["block5_conv3/block5_conv3/bias:0"][0] += 1.0
    featurizer = Featurizer(weights=str(changed), runtime="onnxruntime")
    assert onnx_runtime.cached_path(str(changed), "block5_conv3") != onnx_runtime.cached_path(
        str(weights_copy), "block5_conv3"
    )
    # Other arrays: another embedding space, the one TensorFlow gives them.
    assert featurizer.space.weights_id != onnx_featurizer.space.weights_id
    assert featurizer.space == Featurizer(weights=str(changed), runtime="tensorflow", precision="float32").space


def test_a_read_only_weights_folder_caches_in_the_user_cache(
    weights_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like the shared models folder: no write bits (root could write there anyway, and must not).
    folder = tmp_path / "models"
    folder.mkdir()
    os.link(weights_copy, folder / "vgg16.h5")
    folder.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        cached = onnx_runtime.cached_path(str(folder / "vgg16.h5"), "block5_conv3")
    finally:
        folder.chmod(0o755)
    beside = onnx_runtime.cached_path(str(weights_copy), "block5_conv3")
    assert cached is not None and beside is not None
    assert cached == tmp_path / "cache" / "imgsearch" / beside.name


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_a_missing_extra_is_a_clear_error(
    missing: str, weights_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Weights not converted yet (a folder of their own), so that the converter is needed too.
    weights = tmp_path / "vgg16.h5"
    shutil.copyfile(weights_path, weights)
    monkeypatch.setitem(sys.modules, missing, None)  # what an import of a package that is not installed does
    with pytest.raises(ConfigurationError, match=rf"needs the {missing} package: pip install 'imgsearch\[onnx\]'"):
        Featurizer(weights=str(weights), runtime="onnxruntime")
    # auto falls back to TensorFlow rather than failing.
    assert resolve_runtime("auto", "float32") == ("tensorflow", "float32")


CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 fma avx2 {}\n"


@pytest.mark.parametrize(
    ("runtime", "precision", "flags", "expected"),
    [
        # auto: TensorFlow bfloat16 where the CPU has bfloat16 units, else ONNX Runtime float32.
        ("auto", "auto", "avx512f avx512_bf16", ("tensorflow", "bfloat16")),
        ("auto", "auto", "amx_bf16 amx_tile", ("tensorflow", "bfloat16")),
        ("auto", "auto", "", ("onnxruntime", "float32")),
        ("auto", "auto", "avx512f avx512_vnni", ("onnxruntime", "float32")),
        # An explicit precision: TensorFlow float32 where the CPU has bfloat16 (faster there), bfloat16 anywhere.
        ("auto", "float32", "avx512_bf16", ("tensorflow", "float32")),
        ("auto", "float32", "avx2", ("onnxruntime", "float32")),
        ("auto", "bfloat16", "", ("tensorflow", "bfloat16")),
        # An explicit runtime is kept; ONNX Runtime is float32 whatever the CPU.
        ("tensorflow", "auto", "", ("tensorflow", "float32")),
        ("tensorflow", "auto", "avx512_bf16", ("tensorflow", "bfloat16")),
        ("onnxruntime", "auto", "avx512_bf16", ("onnxruntime", "float32")),
        ("onnxruntime", "float32", "", ("onnxruntime", "float32")),
    ],
)
def test_auto_runtime_follows_the_cpu(runtime: str, precision: str, flags: str, expected: tuple[str, str]) -> None:
    assert resolve_runtime(runtime, precision, CPUINFO.format(flags)) == expected


def test_auto_without_the_extra_is_tensorflow_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_runtime("auto", "auto", CPUINFO.format("")) == ("tensorflow", "float32")
    assert resolve_runtime("auto", "auto", CPUINFO.format("avx512_bf16")) == ("tensorflow", "bfloat16")


def test_onnxruntime_refuses_bfloat16() -> None:
    with pytest.raises(ConfigurationError, match="float32 only"):
        Featurizer(weights="fake", runtime="onnxruntime", precision="bfloat16")
    with pytest.raises(ConfigurationError, match="runtime must be one of"):
        Featurizer(weights="fake", runtime="openvino")


def test_featurizer_from_settings(weights_copy: Path, onnx_featurizer: Featurizer) -> None:
    featurizer = Featurizer.from_settings(Settings(weights=str(weights_copy), runtime="onnxruntime"))
    assert (featurizer.runtime, featurizer.precision) == ("onnxruntime", "float32")
    assert "runtime='onnxruntime'" in repr(featurizer)
    # auto on this machine: what resolve_runtime says for its CPU.
    fake = Featurizer.from_settings(Settings(weights="fake"))
    assert (fake.runtime, fake.precision) == resolve_runtime("auto", "auto")


def test_runtime_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSEARCH_RUNTIME", "onnxruntime")
    assert Settings.from_env().runtime == "onnxruntime"
    assert Settings.from_env(runtime="tensorflow").runtime == "tensorflow"
    monkeypatch.setenv("IMGSEARCH_RUNTIME", "gpu")
    with pytest.raises(ConfigurationError, match="runtime must be one of auto, tensorflow, onnxruntime"):
        Settings.from_env()
