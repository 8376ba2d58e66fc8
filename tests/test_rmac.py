"""The ``rmac`` pipeline (aspect ratio kept, R-MAC of ``block5_conv3``), with the real ImageNet VGG16 weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch.embedding import (
    DEFAULT_PIPELINE,
    DIMENSION,
    IMAGENET_WEIGHTS_ID,
    PIPELINES,
    RMAC_PIPELINE,
    Featurizer,
    regional_max_pool,
    rmac_regions,
)
from imgsearch.images import PREPROCESSING_VERSION, RMAC_PREPROCESSING

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted(SAMPLES.glob("*/*.jpg"))


def _mixed_photos(count: int = 6) -> list[Path]:
    """Sample photos of at least two aspect ratios (portrait and landscape), so batches hold several shapes."""
    portrait = [p for p in PHOTOS if _size(p)[0] < _size(p)[1]]
    landscape = [p for p in PHOTOS if _size(p)[0] > _size(p)[1]]
    assert portrait and landscape
    return [*portrait[: count - 2], *landscape[:2]]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.fixture(scope="module")
def rmac_bf16(weights_path: str) -> Featurizer:
    return Featurizer(weights=weights_path, precision="bfloat16", pipeline="rmac", batch_size=4)


@pytest.fixture(scope="module")
def rmac_fp32(weights_path: str) -> Featurizer:
    return Featurizer(weights=weights_path, precision="float32", pipeline="rmac", batch_size=4)


def test_named_pipeline_is_its_own_space_and_default_is_unchanged(rmac_bf16: Featurizer) -> None:
    assert PIPELINES["rmac"] is RMAC_PIPELINE
    assert PIPELINES["default"] is DEFAULT_PIPELINE
    assert DEFAULT_PIPELINE.version == PREPROCESSING_VERSION
    space = rmac_bf16.space
    assert space.preprocessing_version == RMAC_PIPELINE.version != PREPROCESSING_VERSION
    assert space.model_name == "vgg16-imagenet-rmac"
    assert space.dimension == DIMENSION == 512
    assert space.weights_id == IMAGENET_WEIGHTS_ID


def test_aspect_ratio_is_kept() -> None:
    side = RMAC_PREPROCESSING.size
    for path in _mixed_photos():
        width, height = _size(path)
        pixels = RMAC_PREPROCESSING.decode(path)
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
        assert max(pixels.shape[:2]) == side
        # Rounding moves the shorter side by at most one pixel.
        assert abs(pixels.shape[1] / pixels.shape[0] - width / height) <= 1.5 / min(pixels.shape[:2])


def test_wide_and_tall_pictures_keep_their_shape(tmp_path: Path) -> None:
    side = RMAC_PREPROCESSING.size
    for size, expected in (((1000, 250), (side // 4, side)), ((300, 900), (side, round(side / 3)))):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("RGB", size, (200, 30, 30)).save(path)
        assert RMAC_PREPROCESSING.decode(path).shape == (*expected, 3)


def test_vectors_are_unit_512d_and_batches_match_single_photos(rmac_bf16: Featurizer) -> None:
    photos = _mixed_photos()
    results = list(rmac_bf16.embed_files(photos, batch_size=4))
    assert [r.path for r in results] == photos and all(r.ok for r in results)
    batch = np.stack([r.vector for r in results])
    assert batch.shape == (len(photos), 512) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert (batch >= 0).all()  # sums of maxima of ReLU outputs
    # Mixed shapes in one batch are run shape by shape and come back in input order.
    for path, vector in zip(photos, batch, strict=True):
        assert float(np.dot(rmac_bf16.embed_image(path), vector)) > 0.9999
    arrays = RMAC_PREPROCESSING.decode(photos[0])[np.newaxis]
    assert float(np.dot(rmac_bf16.embed_arrays(arrays)[0], batch[0])) > 0.9999
    # Different photos are different vectors.
    similarity = batch @ batch.T
    assert similarity[~np.eye(len(photos), dtype=bool)].max() < 0.99


def test_bfloat16_agrees_with_float32(rmac_bf16: Featurizer, rmac_fp32: Featurizer) -> None:
    photos = _mixed_photos()
    bf16 = np.stack([r.vector for r in rmac_bf16.embed_files(photos)])
    fp32 = np.stack([r.vector for r in rmac_fp32.embed_files(photos)])
    cosines = np.sum(bf16 * fp32, axis=1)
    assert cosines.min() > 0.999, cosines


def test_embed_arrays_checks_the_longer_side(rmac_bf16: Featurizer) -> None:
    side = RMAC_PREPROCESSING.size
    with pytest.raises(ValueError, match="max"):
        rmac_bf16.embed_arrays(np.zeros((1, side - 1, side // 2, 3), np.uint8))
    assert rmac_bf16.embed_arrays(np.zeros((0, side, side // 2, 3), np.uint8)).shape == (0, 512)


def test_regions_cover_the_map_and_pooling_normalises_each_region() -> None:
    regions = rmac_regions(15, 20)
    assert regions[0] == (0, 15, 0, 20)  # the whole map first
    assert all(0 <= top < bottom <= 15 and 0 <= left < right <= 20 for top, bottom, left, right in regions)
    maps = np.random.default_rng(0).random((2, 15, 20, 8)).astype(np.float32)
    pooled = regional_max_pool(maps)
    assert pooled.shape == (2, 8)
    # Every region contributes a unit vector, so the sum's norm is at most the number of regions.
    assert (np.linalg.norm(pooled, axis=1) <= len(regions) + 1e-4).all()
