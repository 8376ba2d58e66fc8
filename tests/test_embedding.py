"""The VGG16 featurizer, with the real ImageNet weights, on the CC0 sample catalogue."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgsearch.config import Settings
from imgsearch.embedding import (
    DIMENSION,
    IMAGENET_WEIGHTS_ID,
    MODEL_NAME,
    EmbedResult,
    Featurizer,
    resolve_precision,
)
from imgsearch.errors import ConfigurationError, WeightsUnavailableError
from imgsearch.images import PREPROCESSING_VERSION, load_image

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted(SAMPLES.glob("*/*.jpg"))  # the order of the ``sample_vectors`` fixture
CLASSES = np.array([path.parent.name for path in PHOTOS])


@pytest.fixture(scope="module")
def catalogue(featurizer: Featurizer) -> np.ndarray:
    """The 120 sample photos embedded once, through the batch pipeline: (120, 512)."""
    results = list(featurizer.embed_files(PHOTOS))
    assert [result.path for result in results] == PHOTOS
    assert all(result.ok for result in results), [result.error for result in results if not result.ok]
    return np.stack([result.vector for result in results])


def test_the_stored_sample_vectors_are_the_models(catalogue: np.ndarray, sample_vectors: np.ndarray) -> None:
    # The tests about the database use these stored vectors instead of loading the network: they must stay real.
    cosines = (catalogue * sample_vectors).sum(axis=1)
    assert cosines.min() > 0.9999, f"tests/data/sample-vectors.npy is stale (cosine {cosines.min():.6f})"


@pytest.fixture(scope="module")
def bf16_featurizer(weights_path: str) -> Featurizer:
    return Featurizer.from_settings(Settings(weights=weights_path, precision="bfloat16", batch_size=4))


@pytest.fixture(scope="module")
def fp32_featurizer(weights_path: str) -> Featurizer:
    return Featurizer.from_settings(Settings(weights=weights_path, precision="float32", batch_size=4))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_space_identifies_model_weights_and_preprocessing(featurizer: Featurizer) -> None:
    space = featurizer.space
    assert space.model_name == MODEL_NAME == "vgg16-imagenet-gap"
    assert space.dimension == DIMENSION == 512
    assert space.preprocessing_version == PREPROCESSING_VERSION
    # The published ImageNet weights, whichever file they were loaded from (never random ones).
    assert space.weights_id == IMAGENET_WEIGHTS_ID


def test_vector_is_a_float32_unit_vector(featurizer: Featurizer) -> None:
    vector = featurizer.embed_image(PHOTOS[0])
    assert vector.shape == (512,)
    assert vector.dtype == np.float32
    assert np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # Global-average-pooled ReLU features: never negative.
    assert vector.min() >= 0.0


def test_embedding_is_deterministic(featurizer: Featurizer) -> None:
    first = featurizer.embed_image(PHOTOS[5])
    second = featurizer.embed_image(PHOTOS[5])
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)


def test_query_matches_the_catalogue_vector_of_the_same_photo(featurizer: Featurizer, catalogue: np.ndarray) -> None:
    for index in (0, 37, 119):
        query = featurizer.embed_image(PHOTOS[index])
        assert cosine(query, catalogue[index]) > 0.9999
        # The nearest catalogue photo to a photo is itself.
        assert int(np.argmax(catalogue @ query)) == index


def test_bytes_and_streams_embed_like_the_file(featurizer: Featurizer) -> None:
    expected = featurizer.embed_image(PHOTOS[3])
    data = PHOTOS[3].read_bytes()
    assert cosine(featurizer.embed_image(data), expected) > 0.99999
    assert cosine(featurizer.embed_image(io.BytesIO(data)), expected) > 0.99999


def test_batch_results_do_not_depend_on_batch_composition(featurizer: Featurizer) -> None:
    images = np.stack([load_image(path) for path in PHOTOS[:5]])

    together = featurizer.embed_arrays(images)
    reversed_order = featurizer.embed_arrays(images[::-1])[::-1]
    alone = np.stack([featurizer.embed_arrays(image[np.newaxis])[0] for image in images[:2]])

    assert together.shape == (5, 512)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(reversed_order, together, atol=1e-4)
    np.testing.assert_allclose(alone, together[:2], atol=1e-4)


def test_embed_arrays_checks_its_input(featurizer: Featurizer) -> None:
    assert featurizer.embed_arrays(np.zeros((0, 224, 224, 3), np.float32)).shape == (0, 512)
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        featurizer.embed_arrays(np.zeros((2, 100, 100, 3), np.float32))


def test_same_class_photos_are_closer_than_other_classes(catalogue: np.ndarray) -> None:
    # What makes the product search useful, and what random weights would not give.
    similarity = catalogue @ catalogue.T
    same = CLASSES[:, np.newaxis] == CLASSES[np.newaxis, :]
    off_diagonal = ~np.eye(len(PHOTOS), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.03

    closer_classes = 0
    for name in np.unique(CLASSES):
        members = np.equal(CLASSES, name)
        within = similarity[np.ix_(members, members)][~np.eye(members.sum(), dtype=bool)].mean()
        closer_classes += within > similarity[np.ix_(members, ~members)].mean()
    assert closer_classes >= 8

    # Leave-one-out nearest neighbour finds the right class far more often than chance (10%).
    np.fill_diagonal(similarity, -np.inf)
    accuracy = (CLASSES[similarity.argmax(axis=1)] == CLASSES).mean()
    assert accuracy > 0.3


def test_bad_files_yield_errors_and_the_stream_goes_on(
    featurizer: Featurizer, catalogue: np.ndarray, tmp_path: Path
) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(PHOTOS[2].read_bytes()[:3000])
    missing = tmp_path / "gone.jpg"
    paths = [PHOTOS[0], missing, PHOTOS[1], text, truncated, PHOTOS[2], PHOTOS[3]]

    # Batches of 2 so that good and bad files are spread over several batches, one of them all bad.
    results = list(featurizer.embed_files(iter(paths), batch_size=2, prefetch_batches=1))

    assert [result.path for result in results] == paths
    assert [result.ok for result in results] == [True, False, True, False, False, True, True]
    assert "file not found" in (results[1].error or "")
    assert "not an image" in (results[3].error or "")
    assert "truncated" in (results[4].error or "")
    for result, index in zip([results[0], results[2], results[5], results[6]], range(4), strict=True):
        assert result.error is None
        assert result.vector is not None
        assert cosine(result.vector, catalogue[index]) > 0.9999


def test_embed_files_consumes_its_input_lazily(featurizer: Featurizer) -> None:
    consumed = 0

    def endless() -> Iterator[Path]:
        nonlocal consumed
        for path in itertools.cycle(PHOTOS[:4]):
            consumed += 1
            yield path

    stream = featurizer.embed_files(endless(), batch_size=2, prefetch_batches=1)
    first: list[EmbedResult] = list(itertools.islice(stream, 3))
    stream.close()

    assert [result.path for result in first] == PHOTOS[:3]
    assert all(result.ok for result in first)
    # Two batches being embedded or decoded, one more queued: never the whole (endless) input.
    assert consumed <= 8


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="not found") as excinfo:
        Featurizer(weights=str(tmp_path / "vgg16.h5"))
    assert "IMGSEARCH_VGG16_WEIGHTS" in str(excinfo.value)


def test_weights_file_with_the_wrong_content(tmp_path: Path) -> None:
    bogus = tmp_path / "vgg16.h5"
    bogus.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(WeightsUnavailableError, match="does not hold the VGG16"):
        Featurizer(weights=str(bogus))


def test_weights_that_leave_layers_unloaded_are_refused(weights_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keras' .weights.h5 loader may skip what it cannot match with only a warning: a network left partly
    # random must never be mistaken for VGG16.
    import keras

    monkeypatch.setattr(keras.Model, "load_weights", lambda self, filepath, **kwargs: None)
    with pytest.raises(WeightsUnavailableError, match="tensors were not loaded"):
        # TensorFlow: ONNX Runtime would read its graph converted earlier, without loading the file into Keras.
        Featurizer(weights=weights_path, runtime="tensorflow")


def test_imagenet_weights_that_cannot_be_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # As on a machine without internet and with an empty Keras cache, whatever this machine has.
    import keras.src.utils.file_utils

    def no_network(*args: object, **kwargs: object) -> str:
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", no_network)
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded") as excinfo:
        Featurizer(weights="imagenet")
    assert "IMGSEARCH_VGG16_WEIGHTS" in str(excinfo.value)


def test_invalid_settings_are_refused_before_loading() -> None:
    with pytest.raises(ConfigurationError, match="batch size"):
        Featurizer(batch_size=0)
    with pytest.raises(ConfigurationError, match="precision"):
        Featurizer(precision="float16")


def test_bfloat16_shares_the_space_and_nearly_the_vectors(
    bf16_featurizer: Featurizer, fp32_featurizer: Featurizer
) -> None:
    import keras

    assert bf16_featurizer.space == fp32_featurizer.space  # one catalogue may hold vectors of both
    assert (bf16_featurizer.precision, fp32_featurizer.precision) == ("bfloat16", "float32")
    # The bfloat16 policy is only for that model: the process-wide policy is left as it was.
    assert keras.config.dtype_policy().name == "float32"

    paths = [PHOTOS[i] for i in (0, 40, 80, 119)]
    for half, full in zip(bf16_featurizer.embed_files(paths), fp32_featurizer.embed_files(paths), strict=True):
        assert half.vector is not None and full.vector is not None
        assert half.vector.dtype == np.float32
        assert np.linalg.norm(half.vector) == pytest.approx(1.0, abs=1e-3)
        assert cosine(half.vector, full.vector) > 0.999


CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f {}\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("avx512_bf16", "bfloat16"), ("amx_bf16 amx_tile", "bfloat16"), ("avx512vnni", "float32"), ("", "float32")],
)
def test_auto_precision_follows_the_cpu(flags: str, expected: str) -> None:
    assert resolve_precision("auto", CPUINFO.format(flags)) == expected
    assert resolve_precision("float32", CPUINFO.format(flags)) == "float32"  # an explicit choice is kept
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert resolve_precision("auto", arm) == "bfloat16"


def test_importing_the_package_does_not_load_tensorflow() -> None:
    # CLI commands that never embed must start fast.
    code = "import sys, imgsearch.embedding, imgsearch.images; sys.exit('tensorflow' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
