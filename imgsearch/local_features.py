"""Local features and geometric verification: proof that a shopper's photo shows this very product.

A global VGG16 vector says what a photo looks like; it cannot tell two book covers or two cereal boxes of the
same design apart, and a phone photo's clutter, perspective and glare move it further. Local features can: SIFT
keypoints of the catalogue photo found again in the shopper's photo, consistent with one homography (a flat
printed surface seen from another angle), are the classic proof of an exact product (the mobile visual search
literature: Lowe's ratio test, RANSAC). The search proposes candidates with the global vector; this module
verifies them (:func:`verify`) and says where in the photo the product is (:class:`Verification.box`).

Catalogue photos' features are computed once at ingestion and stored compactly (:meth:`LocalFeatures.pack`:
uint8 descriptors, 1/16-pixel coordinates; at most :data:`CATALOGUE_KEYPOINTS` keypoints, about 46 KB a photo).
OpenCV is imported only when features are computed or verified.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch.errors import ConfigurationError
from imgsearch.images import Crop, ImageSource, decode_within

#: Names the way features are made; stored with every photo's features. Features of another extractor are
#: never compared with these (they are computed again at the next ingest).
EXTRACTOR = "sift-640-u8-v1"
#: Longer side of the pixels features are computed on (catalogue and query alike; never enlarged).
MAX_SIDE = 640
#: Keypoints kept per catalogue photo (the strongest): 360 x (128 + 4) bytes = 47,520 bytes at most.
CATALOGUE_KEYPOINTS = 360
#: Keypoints of a shopper's photo (not stored): more, since the product may fill only part of the frame.
QUERY_KEYPOINTS = 1000
#: Lowe's ratio test: a match counts when its nearest descriptor is clearly nearer than the second nearest.
RATIO = 0.8
#: RANSAC's reprojection threshold, in pixels of the query photo as features see it (longer side 640).
RANSAC_PIXELS = 6.0
#: Inliers of one homography from which a candidate is a verified, exact match of the photographed product.
MIN_INLIERS = 12
#: Bytes of one keypoint's coordinates (two uint16, 1/16 pixel).
_POINT_BYTES = 4
_POINT_SCALE = 16.0
DESCRIPTOR_BYTES = 128
#: Candidates compared in one matrix product: bounds the memory of a verification (1000 x 16 x 360 floats).
_CHUNK = 16


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one photo: ``points`` (n, 2) float32 x, y in pixels of the photo scaled to ``width`` x
    ``height`` (longer side at most :data:`MAX_SIDE`), ``descriptors`` (n, 128) uint8 SIFT, strongest first."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.points)

    def pack(self) -> tuple[bytes, bytes]:
        """The compact stored form: (coordinates, descriptors) as bytes."""
        coords = np.clip(np.rint(self.points * _POINT_SCALE), 0, 65535).astype("<u2")
        return coords.tobytes(), np.ascontiguousarray(self.descriptors, dtype=np.uint8).tobytes()

    @classmethod
    def unpack(cls, points: bytes, descriptors: bytes, width: int, height: int) -> LocalFeatures:
        """Features from :meth:`pack`'s bytes (as read from the database).

        Raises:
            ValueError: the two byte strings do not describe the same number of keypoints.
        """
        n = len(descriptors) // DESCRIPTOR_BYTES
        if len(descriptors) % DESCRIPTOR_BYTES or len(points) != n * _POINT_BYTES:
            raise ValueError(f"inconsistent local features: {len(points)} coordinate and {len(descriptors)} bytes")
        xy = np.frombuffer(points, dtype="<u2").reshape(n, 2).astype(np.float32) / _POINT_SCALE
        return cls(xy, np.frombuffer(descriptors, dtype=np.uint8).reshape(n, DESCRIPTOR_BYTES), width, height)

    @property
    def nbytes(self) -> int:
        """Stored size in bytes."""
        return len(self) * (_POINT_BYTES + DESCRIPTOR_BYTES)


@dataclass(frozen=True)
class Verification:
    """How one candidate photo matched the query photo.

    ``inliers``: matched keypoints consistent with one homography (0 when none was found); ``box``: where the
    candidate's photo lies in the query photo, ``(left, top, right, bottom)`` in the query photo's pixels (as
    given: crop and scale undone), or ``None`` without a homography.
    """

    inliers: int
    box: tuple[float, float, float, float] | None = None

    @property
    def exact(self) -> bool:
        """Whether this is a verified match of the photographed product."""
        return self.inliers >= MIN_INLIERS


_local = threading.local()


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ConfigurationError("local features need OpenCV: pip install opencv-python-headless") from None
    return cv2


def _sift(n: int) -> Any:
    # SIFT objects are not documented as thread-safe: one per thread and size.
    cache = getattr(_local, "sift", None)
    if cache is None:
        cache = _local.sift = {}
    if n not in cache:
        cache[n] = _cv2().SIFT_create(nfeatures=n)
    return cache[n]


def extract(rgb: np.ndarray, max_keypoints: int = CATALOGUE_KEYPOINTS) -> LocalFeatures:
    """SIFT keypoints of decoded pixels (``(h, w, 3)`` uint8 RGB, longer side at most :data:`MAX_SIDE`), the
    ``max_keypoints`` strongest."""
    cv2 = _cv2()
    height, width = rgb.shape[:2]
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = _sift(max_keypoints).detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8), width, height)
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:max_keypoints]
    points = np.array([keypoints[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
    desc = np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)
    return LocalFeatures(points, desc, width, height)


def features_of(
    source: ImageSource, max_keypoints: int = CATALOGUE_KEYPOINTS, crop: Crop | None = None
) -> LocalFeatures:
    """Decode a photo (path, bytes or binary file object) and compute its features.

    Raises:
        ImageError: the photo cannot be read.
    """
    return extract(decode_within(source, MAX_SIDE, crop=crop), max_keypoints)


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman): the square root of L1-normalised SIFT, so that Euclidean distance
    compares histograms by the Hellinger kernel; the vectors have unit L2 norm."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(d)


def verify(query: LocalFeatures, candidates: Sequence[LocalFeatures | None]) -> list[Verification]:
    """Match the query photo's features against each candidate photo's: Lowe's ratio test on RootSIFT, then a
    RANSAC homography; one :class:`Verification` per candidate (``inliers`` 0 for ``None`` or no match).

    All candidates' descriptors are compared with the query's in one matrix product, so verifying 100
    candidates costs one multiplication, not 100 matcher calls.
    """
    results = [Verification(0)] * len(candidates)
    usable = [i for i, c in enumerate(candidates) if c is not None and len(c) >= 4]
    if len(query) < 4 or not usable:
        return results
    q = root_sift(query.descriptors)
    for start in range(0, len(usable), _CHUNK):
        chunk = usable[start : start + _CHUNK]
        for i, (q_idx, c_idx) in zip(chunk, _ratio_matches(q, [candidates[i] for i in chunk]), strict=True):  # type: ignore[misc]
            candidate = candidates[i]
            assert candidate is not None
            if len(q_idx) >= MIN_INLIERS:
                results[i] = _homography(query, candidate, q_idx, c_idx)
    return results


def _ratio_matches(q: np.ndarray, candidates: Sequence[LocalFeatures]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each candidate, the (query, candidate) keypoint index pairs that pass the ratio test."""
    width = max(len(c) for c in candidates)
    stacked = np.zeros((len(candidates), width, DESCRIPTOR_BYTES), np.float32)
    for row, c in enumerate(candidates):
        stacked[row, : len(c)] = root_sift(c.descriptors)
    # Cosine similarity of unit vectors; padding rows are zeros (similarity 0, distance sqrt(2)), never nearer
    # than a real descriptor (RootSIFT vectors are non-negative: similarity >= 0).
    sims = (q @ stacked.reshape(-1, DESCRIPTOR_BYTES).T).reshape(len(q), len(candidates), width)
    best = sims.argmax(axis=2)
    first = np.take_along_axis(sims, best[:, :, None], axis=2)[:, :, 0]
    np.put_along_axis(sims, best[:, :, None], -np.inf, axis=2)
    second = sims.max(axis=2)
    # Euclidean distances of unit vectors: sqrt(2 - 2 cos); the test compares squares.
    passed = (2.0 - 2.0 * first) < RATIO**2 * (2.0 - 2.0 * second)
    out = []
    for row, c in enumerate(candidates):
        q_idx = np.flatnonzero(passed[:, row])
        c_idx = best[q_idx, row]
        keep = c_idx < len(c)
        out.append((q_idx[keep], c_idx[keep]))
    return out


def _homography(query: LocalFeatures, candidate: LocalFeatures, q_idx: np.ndarray, c_idx: np.ndarray) -> Verification:
    # MAGSAC++ (OpenCV's USAC): as accurate as plain RANSAC here and about 4x faster on candidates with few
    # true matches, where RANSAC runs all its iterations.
    cv2 = _cv2()
    src = candidate.points[c_idx].reshape(-1, 1, 2)
    dst = query.points[q_idx].reshape(-1, 1, 2)
    homography, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, RANSAC_PIXELS, maxIters=500, confidence=0.995)
    if homography is None or mask is None:
        return Verification(0)
    inliers = _distinct_inliers(q_idx, c_idx, mask.ravel().astype(bool))
    return Verification(inliers, _box(homography, candidate, query) if inliers >= 4 else None)


def _distinct_inliers(q_idx: np.ndarray, c_idx: np.ndarray, mask: np.ndarray) -> int:
    """Inliers counted once per catalogue keypoint and once per query keypoint: a repeated texture that pulls
    many query points onto one catalogue point is one piece of evidence, not many."""
    pairs = np.stack([q_idx[mask], c_idx[mask]], axis=1)
    if not len(pairs):
        return 0
    return int(min(len(np.unique(pairs[:, 0])), len(np.unique(pairs[:, 1]))))


def _box(
    homography: np.ndarray, candidate: LocalFeatures, query: LocalFeatures
) -> tuple[float, float, float, float] | None:
    """The candidate photo's outline mapped into the query's pixels and clipped to it; ``None`` when the
    mapping is degenerate (folded or vanishing outline)."""
    cv2 = _cv2()
    w, h = candidate.width, candidate.height
    corners = np.array([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]], dtype=np.float32)
    projected = cv2.perspectiveTransform(corners, homography).reshape(4, 2)
    if not np.all(np.isfinite(projected)) or not cv2.isContourConvex(projected.astype(np.float32)):
        return None
    left, top = np.clip(projected.min(axis=0), 0, [query.width, query.height])
    right, bottom = np.clip(projected.max(axis=0), 0, [query.width, query.height])
    if right - left < 2 or bottom - top < 2:
        return None
    return float(left), float(top), float(right), float(bottom)


def in_original(
    box: tuple[float, float, float, float], query: LocalFeatures, size: tuple[int, int], crop: Crop | None
) -> tuple[float, float, float, float]:
    """``box`` (in the pixels features were computed on) in pixels of the photo as given: the scale to
    :data:`MAX_SIDE` and the crop undone. ``size`` is the given photo's (width, height)."""
    if crop is not None:
        left, top, right, bottom = (float(v) for v in crop)
        ox, oy, w, h = left, top, right - left, bottom - top
    else:
        ox, oy, (w, h) = 0.0, 0.0, size
    sx, sy = w / query.width, h / query.height
    x0, y0, x1, y1 = box
    return (round(ox + x0 * sx, 1), round(oy + y0 * sy, 1), round(ox + x1 * sx, 1), round(oy + y1 * sy, 1))


__all__ = [
    "CATALOGUE_KEYPOINTS",
    "EXTRACTOR",
    "MAX_SIDE",
    "MIN_INLIERS",
    "QUERY_KEYPOINTS",
    "LocalFeatures",
    "Verification",
    "extract",
    "features_of",
    "in_original",
    "verify",
]
