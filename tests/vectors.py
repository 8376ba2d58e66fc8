"""Synthetic catalogue vectors made from the sample photos' real VGG16 vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTO_CLASSES = [path.parent.name for path in sorted(SAMPLES.glob("*/*.jpg"))]  # ``sample_vectors`` order


def mixes(real: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """``n`` vectors like photos of similar products: convex mixes of 3 real ones plus noise of about length
    ``noise``. A small noise gives tight clumps of near-copies, a larger one distinct products of one kind."""
    picks = real[rng.integers(len(real), size=(n, 3))]
    mixed = np.einsum("nj,njd->nd", rng.dirichlet(np.ones(3), size=n), picks)
    return (mixed + rng.normal(scale=noise / np.sqrt(real.shape[1]), size=mixed.shape)).astype(np.float32)
