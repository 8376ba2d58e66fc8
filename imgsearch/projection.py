"""A linear map learnt from a shop's labelled catalogue that makes cosine search favour the product type.

Pure NumPy and deterministic. The raw embedding stays the stored truth; the tuned
vector is derived from it by one centring and one linear map, then L2-normalised::

    tuned = normalize((x - mu) @ M.T)          # M: (d, d), mu: (d,)

so it can be applied inside PostgreSQL (one row of ``vector`` per output dimension, inner products) and
searched by cosine distance. :func:`fit_projection` learns ``(M, mu)``; :func:`project` applies them.

Why a square ``M``: any linear map ``x -> A x`` (any number of output rows, e.g. a concatenation
``[x; B x]``) ranks by cosine exactly like the symmetric square root of its Gram matrix ``A.T @ A``, because
cosine only sees inner products and norms, and ``<A x, A y> = x.T (A.T A) y``. A map wider than ``d``
therefore never ranks differently from a ``d x d`` one; the maps here are ``d x d`` (512 for VGG16: the
existing ``vector(512)`` index shape).

The families (the ``family`` argument):

``lda`` (the default)
    The identity plus a boost of the discriminant directions, ``M = (I + B B.T)^(1/2)``, ``B = alpha U diag(w)``.
    ``U`` are the top ``rank`` directions of Fisher's discriminant (between-class scatter against the
    within-class scatter shrunk toward the identity). The identity part keeps everything the categories do not
    explain (colour, pattern, shape within a type, the exact product) and keeps unseen categories searchable;
    the boost only stretches the few directions (at most classes - 1) along which the known categories differ.
    Equivalent to the concatenation ``[x; B.T x]``. With ``weighting="kissme"`` it is KISSME metric learning
    with shrunk covariances, added to the identity.
``whiten``
    A blend of the identity and regularised within-class whitening,
    ``M = (1 - blend) I + blend * s (S_w + shrink I)^(-1/2)``, with ``s`` giving both parts the same
    within-class energy. Whitening damps the directions in which products of one type vary the most.

Scatters are estimated in float64 and expressed in units of the mean within-class variance per dimension
(``trace(S_w) / d``), so the parameters do not depend on the embedding's scale. The shrinkage follows the
Ledoit-Wolf estimate (more shrinkage when there are fewer photos per dimension), so one setting serves a
120-photo and a 1M-photo catalogue. Classes with one member contribute nothing to the within-class scatter
(no spread to estimate) but still count as a class mean; ``class_weight="balanced"`` gives every class the same
weight, so that one huge category does not define the scatters alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

#: What :func:`imgsearch.tuning.tune` learns by default: the family and parameters chosen by cross-validation on
#: Myntra (``benchmarks/tuning.py``, benchmarks/results/tuning.md, docs/quality.md).
DEFAULT_PARAMS: dict[str, Any] = {
    "family": "lda",
    "shrinkage": 4.0,
    "lam": 0.0,
    "rank": 512,
    "alpha": 2.5,
    "weighting": "flat",
    "class_weight": "samples",
    "centre": 1.0,
}

_EPS = 1e-12


@dataclass(frozen=True)
class ClassStatistics:
    """Second-order statistics of labelled vectors (float64), what every family is built from."""

    mu: np.ndarray  # (d,) weighted mean of the class means
    within: np.ndarray  # (d, d) weighted mean of the per-class covariances
    means: np.ndarray  # (classes, d)
    weights: np.ndarray  # (classes,) class weights, summing to 1
    lw_lambda: float  # Ledoit-Wolf shrinkage of ``within`` toward the identity, in units of its mean eigenvalue

    @cached_property
    def unit(self) -> float:
        """The mean eigenvalue of ``within`` (the unit the shrinkage and the boost are expressed in)."""
        return max(float(np.trace(self.within)) / self.within.shape[0], _EPS)

    @cached_property
    def within_eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (floored at 0) and eigenvectors of ``within / unit``; computed once, shared by all maps."""
        values, axes = np.linalg.eigh(self.within / self.unit)
        return np.maximum(values, 0.0), axes


def class_statistics(
    vectors: np.ndarray, labels: Sequence[str], class_weight: str = "balanced", chunk: int = 65_536
) -> ClassStatistics:
    """The statistics of the labelled vectors; ``vectors`` may be float32 and large (read in chunks).

    ``mu`` is the weighted mean of the class means (the centre of the categories rather than of the photos
    when ``balanced``, so one huge category does not pull it). ``within`` is the weighted mean of the
    per-class covariance matrices; classes with one member are left out of it (no spread to estimate) but
    keep their class mean. ``class_weight``: ``balanced`` (every class the same), ``sqrt`` (proportional to
    the square root of its size) or ``samples`` (to its size, the pooled estimate).

    ``lw_lambda`` is the Ledoit-Wolf estimate (2004) of how much ``within`` should be shrunk toward a multiple of
    the identity given how many photos estimated it: ``delta / (1 - delta)`` with ``delta`` their shrinkage
    intensity, each residual weighted as in ``within``. It grows as photos per dimension get fewer, which
    makes one regularisation setting work for a 100-photo and a 1M-photo catalogue alike.
    """
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise ValueError("vectors must be (n, d) with one label per row")
    n, d = vectors.shape
    names, index = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    sums = np.zeros((len(names), d))
    for start in range(0, n, chunk):
        np.add.at(sums, index[start : start + chunk], vectors[start : start + chunk].astype(np.float64))
    means = sums / counts[:, None]
    raw = {"balanced": np.ones_like(counts), "sqrt": np.sqrt(counts), "samples": counts}.get(class_weight)
    if raw is None:
        raise ValueError(f"unknown class_weight {class_weight!r}")
    weights = raw / raw.sum()
    mu = weights @ means
    w_within = np.where(counts > 1, raw, 0.0)
    if w_within.sum() == 0:  # every class a single photo: take the spread of the photos themselves
        centred = means - mu
        return ClassStatistics(mu, (centred * weights[:, None]).T @ centred, means, weights, 1.0)
    w_within /= w_within.sum()
    row_weight = (w_within / counts)[index]
    # sum_c w_c Cov_c = sum_k (w_c / n_c) r_k r_k.T with r_k the residual from the photo's class mean.
    within = np.zeros((d, d))
    for start in range(0, n, chunk):
        r = vectors[start : start + chunk].astype(np.float64) - means[index[start : start + chunk]]
        within += (r * row_weight[start : start + chunk, None]).T @ r
    within = (within + within.T) / 2
    # Ledoit-Wolf with weighted residuals: the estimator's variance is sum_k w_k^2 ||r_k r_k.T - S||_F^2.
    unit = np.trace(within) / d
    frob = float(np.sum(within * within))
    dispersion = (frob - 2 * unit * np.trace(within) + unit * unit * d) / d
    variance = 0.0
    for start in range(0, n, chunk):
        r = vectors[start : start + chunk].astype(np.float64) - means[index[start : start + chunk]]
        norms = np.einsum("ij,ij->i", r, r)
        quad = np.einsum("ij,ij->i", r @ within, r)
        variance += float(np.sum(row_weight[start : start + chunk] ** 2 * (norms**2 - 2 * quad + frob)))
    variance = min(variance / d, dispersion)
    delta = variance / dispersion if dispersion > 0 else 1.0
    lw_lambda = delta / max(1.0 - delta, 1e-6)
    return ClassStatistics(mu, within, means, weights, float(lw_lambda))


def fit_projection(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    family: str = DEFAULT_PARAMS["family"],
    shrinkage: float = DEFAULT_PARAMS["shrinkage"],
    lam: float = DEFAULT_PARAMS["lam"],
    rank: int = DEFAULT_PARAMS["rank"],
    alpha: float = DEFAULT_PARAMS["alpha"],
    weighting: str = DEFAULT_PARAMS["weighting"],
    blend: float = 0.5,
    class_weight: str = DEFAULT_PARAMS["class_weight"],
    centre: float = DEFAULT_PARAMS["centre"],
) -> tuple[np.ndarray, np.ndarray]:
    """Learn ``(M, mu)`` from raw embeddings and their category labels; tuned = normalize((x - mu) @ M.T).

    Args:
        vectors: ``(n, d)`` raw embeddings (the stored L2-normalised ones in imgsearch; float32 is fine).
        labels: the category of each row.
        family: ``lda`` (identity + boosted discriminant directions; the default) or ``whiten`` (identity
            blended with regularised within-class whitening).
        shrinkage, lam: the within-class scatter ``S_w`` (scaled to mean eigenvalue 1) is shrunk toward the
            identity, ``S_w + (shrinkage * lw + lam) I``. ``lw`` is the Ledoit-Wolf amount
            (:class:`ClassStatistics`), which fights estimation noise and fades as photos per dimension grow;
            ``lam`` is a fixed part that does not fade, so that a huge catalogue does not drift to full
            Fisher whitening, which overfits the known categories (unseen ones and colour suffer). A very large
            total makes the discriminant directions the principal axes of the class means; a small one, Fisher's.
        rank: ``lda``: the number of discriminant directions boosted (only classes - 1 carry information).
        alpha: ``lda``: the boost of those directions (0 = no change).
        weighting: ``lda``: ``flat`` (every kept direction boosted by ``alpha``), ``fisher`` (by
            ``alpha * sqrt(f / (1 + f))`` of its Fisher ratio ``f``) or ``kissme`` (by ``alpha * f / (1 + f)``:
            KISSME with shrunk covariances, ``(S_w + shrink I)^-1 - (S_w + S_b + shrink I)^-1``, is exactly this).
        blend: ``whiten``: share of the whitening (0 = identity, 1 = full whitening).
        class_weight: see :func:`class_statistics`.
        centre: the share of the class-mean centre ``mu`` subtracted (1 = centred, 0 = not centred).

    Returns:
        ``M`` of shape ``(d, d)`` (float32, symmetric) and ``mu`` of shape ``(d,)`` (float32).

    Deterministic (no randomness; ``M`` depends only on eigenvalues and spanned subspaces, not on the signs
    an eigensolver picks). With fewer than two classes there is nothing to learn and ``M`` is the identity.
    """
    stats = class_statistics(np.asarray(vectors), labels, class_weight)
    return map_from_statistics(
        stats,
        family=family,
        shrinkage=shrinkage,
        lam=lam,
        rank=rank,
        alpha=alpha,
        weighting=weighting,
        blend=blend,
        centre=centre,
    )


def map_from_statistics(
    stats: ClassStatistics,
    *,
    family: str = DEFAULT_PARAMS["family"],
    shrinkage: float = DEFAULT_PARAMS["shrinkage"],
    lam: float = DEFAULT_PARAMS["lam"],
    rank: int = DEFAULT_PARAMS["rank"],
    alpha: float = DEFAULT_PARAMS["alpha"],
    weighting: str = DEFAULT_PARAMS["weighting"],
    blend: float = 0.5,
    centre: float = DEFAULT_PARAMS["centre"],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_projection` from precomputed :func:`class_statistics` (which hold the expensive part, the
    eigen-decomposition of the within-class scatter, so that many parameter settings can share it)."""
    d = stats.within.shape[0]
    mu = (centre * stats.mu).astype(np.float32)
    if len(stats.means) < 2 or (family == "lda" and (alpha <= 0 or rank <= 0)) or (family == "whiten" and blend == 0):
        return np.eye(d, dtype=np.float32), mu
    unit = stats.unit
    shrink = shrinkage * stats.lw_lambda + lam
    if shrink <= 0:
        raise ValueError("the within-class scatter needs some shrinkage (shrinkage * lw + lam > 0)")
    values, axes = stats.within_eigen
    inverse_root = 1.0 / np.sqrt(values + shrink)  # the whitener W = (S_w + shrink I)^(-1/2) = axes diag() axes.T
    if family == "whiten":
        # s gives the whitening part the identity's within-class energy: trace(s^2 W S_w W) = trace(S_w) = d.
        s = np.sqrt(d / max(float(np.sum(values * inverse_root**2)), _EPS))
        whitener = (axes * inverse_root) @ axes.T
        return ((1.0 - blend) * np.eye(d) + blend * s * whitener).astype(np.float32), mu
    if family != "lda":
        raise ValueError(f"unknown family {family!r}")
    # Fisher's discriminant in the whitened space: the right singular vectors of the weighted, whitened class
    # means (their squared singular values are the Fisher ratios, the eigenvalues of W S_b W).
    centred_means = np.sqrt(stats.weights)[:, None] * (stats.means - stats.mu) / np.sqrt(unit)
    _, singular, basis_t = np.linalg.svd(((centred_means @ axes) * inverse_root) @ axes.T, full_matrices=False)
    ratios = singular**2
    keep = min(rank, int(np.sum(ratios > 1e-9 * max(float(ratios[0]), _EPS))))
    ratios = ratios[:keep]
    weights = {
        "flat": np.ones(keep),
        "fisher": np.sqrt(ratios / (1.0 + ratios)),
        "kissme": ratios / (1.0 + ratios),
    }.get(weighting)
    if weights is None:
        raise ValueError(f"unknown weighting {weighting!r}")
    # Raw-space directions with unit spread under S_w + shrink I, times sqrt(1 + shrink): they tend to the
    # unit principal axes of the class means as the shrinkage grows, and a direction along which the photos
    # barely vary (few photos, d > n) cannot be blown up.
    directions = axes @ (inverse_root[:, None] * (axes.T @ basis_t[:keep].T))  # W @ basis, never forming W
    boost = alpha * np.sqrt(1.0 + shrink) * directions * weights
    # M = (I + B B.T)^(1/2), from the thin SVD B = Q S R.T: I + Q (sqrt(1 + S^2) - 1) Q.T.
    q, s_boost, _ = np.linalg.svd(boost, full_matrices=False)
    m = np.eye(d) + (q * (np.sqrt(1.0 + s_boost**2) - 1.0)) @ q.T
    return ((m + m.T) / 2).astype(np.float32), mu


def project(vectors: np.ndarray, m: np.ndarray, mu: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """The tuned vectors ``normalize((x - mu) @ M.T)`` (float32), in batches of ``batch`` rows."""
    x = np.asarray(vectors, dtype=np.float32)
    out = np.empty((len(x), m.shape[0]), np.float32)
    mt = np.ascontiguousarray(m.T, dtype=np.float32)
    for start in range(0, len(x), batch):
        y = (x[start : start + batch] - mu) @ mt
        out[start : start + batch] = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), _EPS)
    return out


@dataclass(frozen=True)
class Projection:
    """A learnt map as imgsearch stores and applies it: ``tuned = normalize(matrix @ x - shift)``.

    ``matrix`` is ``(d, d)`` float32 (row ``j`` gives output dimension ``j`` by an inner product, which is how
    the database applies it); ``shift`` is the map applied to the centre it learnt, or ``None``.
    """

    matrix: np.ndarray
    shift: np.ndarray | None

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """The tuned, unit-length vectors of raw ``(n, d)`` vectors (float32)."""
        y = np.asarray(vectors, dtype=np.float32) @ self.matrix.T
        if self.shift is not None:
            y -= self.shift
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), _EPS)).astype(np.float32)


def fit(vectors: np.ndarray, labels: Sequence[str], **parameters: Any) -> Projection:
    """Learn a :class:`Projection` from raw vectors and their categories (:func:`fit_projection`'s parameters).

    Raises:
        ValueError: an unknown family, weighting or class weighting, or no shrinkage.
    """
    m, mu = fit_projection(vectors, labels, **parameters)
    shift = m.astype(np.float64) @ mu.astype(np.float64)
    return Projection(m, shift.astype(np.float32) if np.any(mu) else None)
