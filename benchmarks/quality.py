"""Search quality of preprocessing and pooling variants, measured fast outside the database.

Two steps:

``embed``  runs VGG16 once per *input* variant (resampling filter, squash or pad-to-square on white, input
           side, horizontal flip) over a labelled folder tree and caches the ``block5_conv3`` feature maps
           (float16) under ``~/.cache/imgsearch-quality``. This is the slow part: for Myntra's 2,524 photos
           at 224 px about 7.5 min in float32 and 2.5 min in bfloat16 (``--precision bfloat16``) on 2 cores;
           320 px takes twice as long.
``table``  derives every *pooling* variant from the cached maps in NumPy (``block5_pool`` is the 2x2 max-pool
           of ``block5_conv3``, so the notebooks' global average of ``block5_pool`` is one of them) and every
           post-processing (power / signed square root, centring, full or partial PCA-whitening fitted on the
           catalogue itself, database-side augmentation; all 512-d), ranks with exact cosine and prints
           precision@1/5/10 (micro and macro) and mAP@10, with the metric functions of
           :mod:`imgsearch.evaluation`. A cached ``<input>-flip`` adds flip averaging, and ``--sum a+b``
           multi-scale descriptors (the sum of each input's normalised descriptor).

``global`` scores every cached input x pooling x post-processing on the labelled sets (leave-one-out P@k) and
           on street-to-shop sets (``embed`` of a folder with ``catalogue.csv`` and ``queries.csv``, cached as
           ``streetshop-<name>``): R@1, R@10 and MRR of each query's product per query kind, without and with
           the photos of a distractor set (Myntra) added to the catalogue. Inputs ``<filter>-keep-<side>`` keep
           the aspect ratio (longer side ``side``); their maps are cached in buckets of one shape.
``speed-sizes`` times each input variant (ms per single photo, batched photos/s, bfloat16) in one run with the
           library's default pipeline; results for the report: benchmarks/results/global-descriptor.md.

The database path (HNSW index) is checked separately with ``imgsearch eval``; see docs/quality.md.

    python benchmarks/quality.py embed ../shared/datasets/myntra-fashion-products nearest-squash-224 bicubic-pad-224
    python benchmarks/quality.py table --dataset myntra-fashion-products --dataset clothing-cc0-sample
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgsearch.embedding import regional_max_pool  # noqa: E402
from imgsearch.images import decode_rgb8  # noqa: E402
from imgsearch.ingest import CatalogueEntry, scan_folder  # noqa: E402

CACHE = Path(os.environ.get("IMGSEARCH_QUALITY_CACHE", "~/.cache/imgsearch-quality")).expanduser()
WEIGHTS = os.environ.get("IMGSEARCH_VGG16_WEIGHTS", str(REPO.parent / "shared" / "models" / "vgg16_imagenet_notop.h5"))


@dataclass(frozen=True)
class InputVariant:
    """How a photo becomes the network's input: ``<filter>-<fit>-<side>[-flip]``; ``fit`` ``squash`` or ``pad``
    (a ``side`` square) or ``keep`` (aspect ratio kept, longer side ``side``)."""

    resample: str
    fit: str
    size: int
    flip: bool = False

    @classmethod
    def parse(cls, name: str) -> InputVariant:
        parts = name.split("-")
        flip = parts[-1] == "flip"
        if flip:
            parts = parts[:-1]
        if len(parts) != 3 or parts[1] not in ("squash", "pad", "keep"):
            raise SystemExit(f"bad variant {name!r}: expected <filter>-<squash|pad|keep>-<side>[-flip]")
        return cls(parts[0], parts[1], int(parts[2]), flip)

    @property
    def name(self) -> str:
        return f"{self.resample}-{self.fit}-{self.size}" + ("-flip" if self.flip else "")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def labelled_files(root: Path) -> tuple[list[Path], list[str]]:
    """Images and labels of a ``root/<label>/<image>`` tree, in :func:`scan_folder` order."""
    entries = [e for e in scan_folder(root) if isinstance(e, CatalogueEntry)]
    return [Path(e.images[0]) for e in entries], [e.category for e in entries]


def decoder(variant: InputVariant) -> Callable[[Path], np.ndarray]:
    """The decoding function of the library for ``variant`` (uint8 RGB; square unless ``keep``)."""
    import inspect

    params = inspect.signature(decode_rgb8).parameters
    if "resample" not in params:
        if (variant.resample, variant.fit) != ("nearest", "squash"):
            raise SystemExit("this imgsearch.images only knows the notebooks' nearest-squash decoding")

        def decode_old(path: Path) -> np.ndarray:
            return decode_rgb8(path, variant.size)

        return decode_old

    def decode(path: Path) -> np.ndarray:
        return decode_rgb8(path, variant.size, resample=variant.resample, fit=variant.fit)  # type: ignore[call-arg]

    return decode


def conv_maps_model(
    weights: str, precision: str = "float32", static: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """VGG16 (the library's network and weights) up to ``block5_conv3``, any input size: one graph with an input
    signature of ``(None, None, None, 3)``, or (``static``) one graph per input height and width."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    base.load_weights(weights)
    model = keras.Model(base.input, base.get_layer("block5_conv3").output)
    preprocess = keras.applications.vgg16.preprocess_input

    def maps(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(preprocess(images), training=False), tf.float32)

    if not static:
        forward = tf.function(maps, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        return lambda batch: forward(batch.astype(np.float32)).numpy()
    graphs: dict[tuple[int, int], Callable[[tf.Tensor], tf.Tensor]] = {}

    def forward_static(batch: np.ndarray) -> np.ndarray:
        shape = (batch.shape[1], batch.shape[2])
        if shape not in graphs:
            graphs[shape] = tf.function(maps, input_signature=[tf.TensorSpec((None, *shape, 3), tf.float32)])
        return graphs[shape](batch.astype(np.float32)).numpy()

    return forward_static


def collection(root: Path) -> tuple[str, list[Path], dict[str, list[str]]]:
    """Cache name, images and metadata of ``root``: a labelled folder tree (``labels``), or a street-to-shop
    set with ``catalogue.csv`` (sku,...,image) and ``queries.csv`` (image,sku,kind), cached as
    ``streetshop-<name>`` with the catalogue photos first, then the queries (``labels`` = SKUs, ``roles``,
    ``kinds``)."""
    if not (root / "catalogue.csv").exists():
        files, labels = labelled_files(root)
        return root.name, files, {"labels": labels}
    import csv

    meta: dict[str, list[str]] = {"labels": [], "roles": [], "kinds": []}
    files = []
    for role, manifest in (("catalogue", "catalogue.csv"), ("query", "queries.csv")):
        with (root / manifest).open(newline="") as f:
            for row in csv.DictReader(f):
                images = [row.get("image") or "", *(row.get("images") or "").split("|")]
                for image in filter(None, (i.strip() for i in images)):
                    files.append(root / image)
                    meta["labels"].append(row["sku"])
                    meta["roles"].append(role)
                    meta["kinds"].append(row.get("kind", "") if role == "query" else "")
    return f"streetshop-{root.name}", files, meta


def embed(root: Path, variants: Sequence[str], batch_size: int = 32, precision: str = "float32") -> None:
    """Cache ``block5_conv3`` maps of every image of ``root`` (:func:`collection`) for each input variant (skips
    cached ones). Square inputs are one ``.npy``; ``keep`` inputs differ in shape, so their images are run in
    buckets of one shape and saved as ``.npz`` (``maps<k>`` with the images' positions in ``index<k>``). Maps
    of the same files already cached for the same variant in another cache folder (a street-to-shop set whose
    catalogue is a labelled set) are reused, not computed again.

    bfloat16 runs are cached as ``<variant>@bf16``: several times faster on this CPU, and scored apart.
    """
    name, files, meta = collection(root)
    out_dir = CACHE / name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "labels.json").write_text(json.dumps({"files": [str(f) for f in files], **meta}))
    forward = None
    for variant_name in variants:
        variant = InputVariant.parse(variant_name)
        stem = variant.name + ("@bf16" if precision == "bfloat16" else "")
        if (out_dir / f"{stem}.npy").exists() or (out_dir / f"{stem}.npz").exists():
            log(f"{name} {stem}: cached")
            continue
        forward = forward or conv_maps_model(WEIGHTS, precision)
        started = time.perf_counter()
        maps: list[np.ndarray | None] = [None] * len(files)
        reused = _cached_elsewhere(out_dir, stem, [str(f) for f in files])
        todo = [i for i, f in enumerate(files) if str(f) not in reused]
        for i, f in enumerate(files):
            maps[i] = reused.get(str(f))
        decode = decoder(variant)
        with ThreadPoolExecutor(max_workers=2) as pool:
            images = dict(zip(todo, pool.map(decode, [files[i] for i in todo]), strict=True))
        if variant.flip:
            images = {i: image[:, ::-1, :] for i, image in images.items()}
        decoded = time.perf_counter() - started
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, image in images.items():
            shapes.setdefault(image.shape, []).append(i)
        for index in shapes.values():
            for start in range(0, len(index), batch_size):
                chunk = index[start : start + batch_size]
                for i, row in zip(chunk, forward(np.stack([images[i] for i in chunk])), strict=True):
                    maps[i] = row.astype(np.float16)
        seconds = time.perf_counter() - started
        buckets: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(maps):
            buckets.setdefault(row.shape, []).append(i)  # type: ignore[union-attr]
        if variant.fit == "keep":
            saved: dict[str, np.ndarray] = {}
            for k, index in enumerate(buckets.values()):
                saved[f"maps{k}"], saved[f"index{k}"] = np.stack([maps[i] for i in index]), np.asarray(index)
            np.savez(out_dir / f"{stem}.npz", **saved)
        else:
            np.save(out_dir / f"{stem}.npy", np.stack(maps))  # type: ignore[arg-type]
        timing = {
            "images": len(files),
            "computed": len(todo),
            "shapes": len(shapes),
            "decode_seconds": decoded,
            "total_seconds": seconds,
        }
        (out_dir / f"{stem}.timing.json").write_text(json.dumps(timing))
        rate = len(todo) / seconds
        log(
            f"{name} {stem}: {len(todo)} of {len(files)} images run, {len(shapes)} shapes, "
            f"{seconds:.0f} s ({rate:.1f}/s)"
        )


def _cached_elsewhere(out_dir: Path, stem: str, files: Sequence[str]) -> dict[str, np.ndarray]:
    """Maps of ``files`` that other cache folders hold for the input ``stem``, by file."""
    wanted = set(files)
    found: dict[str, np.ndarray] = {}
    for folder in sorted(CACHE.iterdir()):
        if folder == out_dir or not (folder / "labels.json").exists() or stem not in cached_inputs(folder):
            continue
        other = json.loads((folder / "labels.json").read_text())["files"]
        if wanted.isdisjoint(other):
            continue
        for index, maps in load_maps(folder, stem):
            for i, row in zip(index, maps, strict=True):
                if other[i] in wanted:
                    found.setdefault(other[i], row)
    return found


def cached_inputs(folder: Path) -> list[str]:
    """Names of the input variants cached in ``folder``."""
    return sorted({p.stem for p in folder.glob("*.np[yz]")})


def load_maps(folder: Path, stem: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cached maps of one input as ``(positions, maps)`` buckets of one shape each."""
    if (folder / f"{stem}.npy").exists():
        maps = np.load(folder / f"{stem}.npy")
        return [(np.arange(len(maps)), maps)]
    with np.load(folder / f"{stem}.npz") as saved:
        return [(saved[f"index{k}"], saved[f"maps{k}"]) for k in range(len(saved.files) // 2)]


def pool_cached(
    buckets: list[tuple[np.ndarray, np.ndarray]], pool: Callable[[np.ndarray], np.ndarray], chunk: int = 256
) -> np.ndarray:
    """``pool`` applied to every bucket of :func:`load_maps` in float32 chunks; rows in image order."""
    count = sum(len(index) for index, _ in buckets)
    out = np.zeros((count, buckets[0][1].shape[-1]), np.float32)
    for index, maps in buckets:
        for start in range(0, len(index), chunk):
            out[index[start : start + chunk]] = pool(maps[start : start + chunk].astype(np.float32))
    return out


# --- pooling, post-processing and exact-cosine metrics ------------------------------------------------------


def _max_pool_2x2(maps: np.ndarray) -> np.ndarray:
    """``block5_pool`` from ``block5_conv3``: 2x2 max-pooling, stride 2, 'valid' like VGG16's layer."""
    n, h, w, c = maps.shape
    h2, w2 = h // 2, w // 2
    return maps[:, : h2 * 2, : w2 * 2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def _gem(maps: np.ndarray, p: float) -> np.ndarray:
    # The maps are ReLU outputs (>= 0), so the p-th root is defined.
    return np.power(np.mean(np.power(maps, p), axis=(1, 2)), 1.0 / p)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _rmac(maps: np.ndarray, levels: int = 3) -> np.ndarray:
    """Regional max-pooling (R-MAC without the learnt per-region whitening): square regions at ``levels``
    scales with ~40% overlap, each max-pooled and L2-normalised, summed."""
    _, h, w, _ = maps.shape
    total = np.zeros((maps.shape[0], maps.shape[3]), np.float32)
    for level in range(1, levels + 1):
        side = max(1, int(2 * min(h, w) / (level + 1)))
        ys = np.linspace(0, h - side, level).round().astype(int) if level > 1 else [(h - side) // 2]
        xs = np.linspace(0, w - side, level).round().astype(int) if level > 1 else [(w - side) // 2]
        for y in ys:
            for x in xs:
                total += _l2(maps[:, y : y + side, x : x + side].max(axis=(1, 2)))
    return total


def _crow(maps: np.ndarray, spatial_only: bool = False) -> np.ndarray:
    """CroW (Kalantidis et al., 2016): sum-pooling weighted per location by the (L2-normalised, square-rooted)
    total activation there, and per channel by an IDF-like weight of the image's own channel sparsity."""
    total = maps.sum(axis=3)
    norm = np.linalg.norm(total.reshape(len(maps), -1), axis=1).reshape(-1, 1, 1)
    spatial = np.sqrt(total / np.maximum(norm, 1e-12))
    pooled = np.einsum("nhw,nhwc->nc", spatial, maps)
    if spatial_only:
        return pooled
    nonzero = (maps > 0).mean(axis=(1, 2))
    eps = 1e-6
    channel = np.log((maps.shape[3] * eps + nonzero.sum(axis=1, keepdims=True)) / (eps + nonzero))
    return pooled * channel


def _centre_prior(maps: np.ndarray) -> np.ndarray:
    """SPoC's Gaussian centre prior: sum-pooling weighted towards the middle of the picture (sigma = 1/3 of
    the distance from the centre to the nearest border), where catalogue photos put the product."""
    _, h, w, _ = maps.shape
    ys = (np.arange(h) - (h - 1) / 2) / (h / 2)
    xs = (np.arange(w) - (w - 1) / 2) / (w / 2)
    weight = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * (1 / 3) ** 2))
    return np.einsum("hw,nhwc->nc", weight, maps)


POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "avg(pool5)": lambda m: _max_pool_2x2(m).mean(axis=(1, 2)),
    "avg(conv3)": lambda m: m.mean(axis=(1, 2)),
    "max": lambda m: m.max(axis=(1, 2)),
    "gem3(pool5)": lambda m: _gem(_max_pool_2x2(m), 3.0),
    "gem3(conv3)": lambda m: _gem(m, 3.0),
    "rmac(conv3)": _rmac,
    # R-MAC's own regions (the whole map, then 3 levels of squares, more of them along the longer side).
    "rmac3(conv3)": regional_max_pool,
    "crow(conv3)": _crow,
    "sw(conv3)": lambda m: _crow(m, spatial_only=True),
    "centre(conv3)": _centre_prior,
}


def _pca_whiten(x: np.ndarray, shrink: float = 0.0, power: float = 1.0) -> np.ndarray:
    """Centre on the catalogue's mean and rotate onto its principal axes, each divided by its standard
    deviation; all 512 dimensions kept. ``shrink`` adds that fraction of the mean variance to every axis,
    which tames the axes a small catalogue (fewer images than dimensions) cannot estimate; ``power`` < 1
    whitens partially (each axis divided by its standard deviation to that power)."""
    mean = x.mean(axis=0)
    centred = x - mean
    eigval, eigvec = np.linalg.eigh(np.cov(centred, rowvar=False))
    eigval = np.maximum(eigval, eigval.max() * 1e-6) + shrink * eigval.mean()
    return centred @ eigvec / np.power(eigval, power / 2)


def _dba(x: np.ndarray, neighbours: int = 5, alpha: float = 3.0) -> np.ndarray:
    """Database-side augmentation (alpha-DBA, Radenovic et al.): every vector is replaced by itself plus its
    ``neighbours`` nearest catalogue vectors weighted by similarity**alpha. It rewrites stored vectors from
    the catalogue's own contents, so it is measured here only as an upper bound."""
    x = _l2(x)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argsort(-similarity, axis=1)[:, :neighbours]
    weights = np.power(np.clip(np.take_along_axis(similarity, top, axis=1), 0.0, None), alpha)
    return _l2(x + np.einsum("nk,nkd->nd", weights, x[top]))


def _centred(x: np.ndarray) -> np.ndarray:
    return _l2(x - x.mean(axis=0))


def _sqrt(x: np.ndarray) -> np.ndarray:
    return _l2(np.sign(x) * np.sqrt(np.abs(x)))


POSTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "l2": _l2,
    "sqrt": _sqrt,
    "pcaw": lambda x: _l2(_pca_whiten(_l2(x))),
    "sqrt+pcaw": lambda x: _l2(_pca_whiten(_sqrt(x))),
    "pcaw-shrink": lambda x: _l2(_pca_whiten(_l2(x), shrink=1.0)),
    # Centring on the catalogue's mean without whitening: what the catalogue-learnt part alone is worth.
    "sqrt+center": lambda x: _centred(_l2(np.sqrt(np.abs(x)))),
    "pow0.3": lambda x: _l2(np.sign(x) * np.power(np.abs(x), 0.3)),
    "sqrt+pcaw^0.3": lambda x: _l2(_pca_whiten(_sqrt(x), power=0.3)),
    "sqrt+dba5": lambda x: _dba(_sqrt(x)),
}


def rankings(vectors: np.ndarray, labels: Sequence[str], k: int = 10) -> list[list[str]]:
    """Exact cosine top ``k`` of every vector among the others (itself excluded), as label lists."""
    x = _l2(vectors.astype(np.float64))
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argpartition(-similarity, k, axis=1)[:, :k]
    order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    return [[labels[j] for j in row] for row in top]


def _wanted(name: str, patterns: Sequence[str] | None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def table(
    datasets: Sequence[str],
    out: Path | None,
    inputs_wanted: Sequence[str] | None = None,
    poolings_wanted: Sequence[str] | None = None,
    posts_wanted: Sequence[str] | None = None,
    sums: Sequence[str] | None = None,
) -> None:
    """Score every cached input variant x pooling x post-processing on every dataset (or those matching the
    shell-style patterns given), and the multi-scale sums ``a+b`` of cached inputs; print Markdown."""
    from imgsearch.evaluation import score_rankings

    results: list[dict[str, object]] = []
    for dataset in datasets:
        folder = CACHE / dataset
        labels = json.loads((folder / "labels.json").read_text())["labels"]
        stems = cached_inputs(folder)
        inputs = sorted(stem for stem in stems if "-flip" not in stem and _wanted(stem, inputs_wanted))
        for name in [*inputs, *(sums or [])]:
            parts = name.split("+")
            all_maps = [load_maps(folder, part) for part in parts]
            base, _, tag = name.partition("@")
            flipped_stem = f"{base}-flip" + (f"@{tag}" if tag else "")
            flipped = None
            if len(parts) == 1 and flipped_stem in stems:
                flipped = load_maps(folder, flipped_stem)
            for pooling, pool in POOLINGS.items():
                if not _wanted(pooling, poolings_wanted):
                    continue
                if len(all_maps) == 1:
                    pooled = {"": pool_cached(all_maps[0], pool)}
                else:
                    # Multi-scale: the sum of each input's L2-normalised descriptor.
                    pooled = {"": sum(_l2(pool_cached(maps, pool)) for maps in all_maps)}
                if flipped is not None:
                    # Average of the photo's and its mirror image's descriptors.
                    pooled["+flip"] = _l2(pooled[""]) + _l2(pool_cached(flipped, pool))
                for suffix, descriptors in pooled.items():
                    for post_name, post in POSTS.items():
                        if not _wanted(post_name, posts_wanted):
                            continue
                        scores = score_rankings(labels, rankings(post(descriptors), labels), 10)
                        row = {
                            "dataset": dataset,
                            "input": name + suffix,
                            "pooling": pooling,
                            "post": post_name,
                            "p1_micro": scores.precision_micro[1],
                            "p5_micro": scores.precision_micro[5],
                            "p5_macro": scores.precision_macro[5],
                            "p10_micro": scores.precision_micro[10],
                            "p10_macro": scores.precision_macro[10],
                            "map_micro": scores.map_micro,
                            "map_macro": scores.map_macro,
                        }
                        results.append(row)
                        log(" ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    if out:
        out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: Sequence[dict[str, object]]) -> str:
    """One row per variant; Myntra's (or the first dataset's) columns, then the others' P@1/P@5/mAP."""
    datasets = list(dict.fromkeys(str(r["dataset"]) for r in results))
    by_key = {(r["dataset"], r["input"], r["pooling"], r["post"]): r for r in results}
    first, others = datasets[0], datasets[1:]
    head = "| input | pooling | post | P@1 µ | P@5 µ | P@5 M | P@10 µ | P@10 M | mAP@10 µ | mAP@10 M |"
    head += "".join(f" {d}: P@1 µ | P@5 µ | P@5 M | mAP@10 M |" for d in others)
    lines = [head, "|" + "---|" * (10 + 4 * len(others))]
    for r in sorted(
        (r for r in results if r["dataset"] == first),
        key=lambda r: -float(r["p5_macro"]),  # type: ignore[arg-type]
    ):
        cells = [str(r["input"]), str(r["pooling"]), str(r["post"])]
        cells += [f"{r[key]:.3f}" for key in ("p1_micro", "p5_micro", "p5_macro", "p10_micro", "p10_macro")]
        cells += [f"{r['map_micro']:.3f}", f"{r['map_macro']:.3f}"]
        for d in others:
            o = by_key.get((d, r["input"], r["pooling"], r["post"]))
            keys = ("p1_micro", "p5_micro", "p5_macro", "map_macro")
            cells += [f"{o[key]:.3f}" for key in keys] if o else ["-"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed(root: Path, limit: int, rounds: int) -> None:
    """Images/s of ``Featurizer.embed_files`` (decode + network) for the notebook and default pipelines,
    alternated on the same files so that a busy machine slows both alike."""
    from imgsearch.embedding import Featurizer

    files, _ = labelled_files(root)
    files = files[:limit]
    featurizers = {name: Featurizer(weights=WEIGHTS, pipeline=name) for name in ("notebook", "default")}
    for featurizer in featurizers.values():
        featurizer.warm_up()
    timings: dict[str, list[float]] = {name: [] for name in featurizers}
    for _ in range(rounds):
        for name, featurizer in featurizers.items():
            started = time.perf_counter()
            done = sum(1 for result in featurizer.embed_files(files) if result.ok)
            timings[name].append(done / (time.perf_counter() - started))
            log(f"{name}: {timings[name][-1]:.2f} images/s")
    for name, rates in timings.items():
        print(f"{name} ({featurizers[name].space.preprocessing_version}): best {max(rates):.2f} images/s, runs {rates}")


def dba_check(datasets: Sequence[str], input_name: str = "nearest-squash-224@bf16") -> None:
    """What database-side augmentation costs and gives beyond leave-one-out, with the default descriptor
    (``avg(conv3)`` + square root) of ``input_name`` and of its cached ``-flip`` twin.

    - *mirror R@1*: the mirror image of every catalogue photo is the query (a near-identical photo of the
      same product); how often that product comes first.
    - *photo queries*: a random half of the images is the catalogue, the other half queries that are not in
      it (a shopper's photo), so the augmentation cannot use the query; precision against the labels.
    """
    from imgsearch.evaluation import score_rankings

    for dataset in datasets:
        folder = CACHE / dataset
        labels = json.loads((folder / "labels.json").read_text())["labels"]
        base, _, tag = input_name.partition("@")
        x = _sqrt(np.load(folder / f"{input_name}.npy").astype(np.float32).mean(axis=(1, 2)))
        mirrored = _sqrt(np.load(folder / f"{base}-flip@{tag}.npy").astype(np.float32).mean(axis=(1, 2)))
        order = np.random.default_rng(0).permutation(len(x))
        catalogue, queries = order[: len(x) // 2], order[len(x) // 2 :]
        for name, transform in (("plain", _l2), ("dba5", _dba)):
            similarity = mirrored @ transform(x).T
            own = similarity[np.arange(len(x)), np.arange(len(x))]
            mirror_r1 = float(np.mean((similarity > own[:, None]).sum(axis=1) == 0))
            similarity = x[queries] @ transform(x[catalogue]).T
            top = np.argsort(-similarity, axis=1)[:, :10]
            scores = score_rankings(
                [labels[i] for i in queries], [[labels[catalogue[j]] for j in row] for row in top], 10
            )
            print(
                f"{dataset} {input_name} {name}: mirror R@1 {mirror_r1:.3f}; photo queries "
                f"P@1 {scores.precision_micro[1]:.3f} P@5 {scores.precision_micro[5]:.3f} "
                f"P@5 macro {scores.precision_macro[5]:.3f}"
            )


# --- street-to-shop: a shopper's photo against the catalogue's photos ---------------------------------------


def _whitening(shrink: float = 0.0, power: float = 1.0) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """Square root, then PCA-whitening (:func:`_pca_whiten`'s ``shrink`` and ``power``) learnt from the vectors
    given to the returned function, which returns the transformation for any vectors (e.g. queries)."""

    def fit(catalogue: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        x = _sqrt(catalogue)
        mean = x.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(np.cov(x - mean, rowvar=False))
        eigval = np.maximum(eigval, eigval.max() * 1e-6) + shrink * eigval.mean()
        projection = eigvec / np.power(eigval, power / 2)
        return lambda y: _l2((_sqrt(y) - mean) @ projection)

    return fit


#: Post-processings as learn-then-apply steps: learnt from catalogue photos only, applied to the catalogue and
#: to the queries alike (the first two learn nothing).
FITTED_POSTS: dict[str, Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "l2": lambda _: _l2,
    "sqrt": lambda _: _sqrt,
    "sqrt+pcaw^0.5": _whitening(power=0.5),
    "sqrt+pcaw-shrink": _whitening(shrink=1.0),
}


def product_ranks(
    queries: np.ndarray, query_skus: Sequence[str], catalogue: np.ndarray, catalogue_skus: Sequence[str]
) -> np.ndarray:
    """Rank (1 = first) of each query's own product among the catalogue's products by exact cosine, a product
    scored by its closest photo (as the search does); 0 when the product has no photo in the catalogue."""
    products, inverse = np.unique(np.asarray(catalogue_skus), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(products)))
    similarity = _l2(queries.astype(np.float64)) @ _l2(catalogue.astype(np.float64))[order].T
    best = np.maximum.reduceat(similarity, starts, axis=1)
    where = {sku: i for i, sku in enumerate(products)}
    ranks = np.zeros(len(queries), int)
    for q, sku in enumerate(query_skus):
        if sku in where:
            ranks[q] = 1 + int((best[q] > best[q, where[sku]]).sum())
    return ranks


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """R@1, R@10 and MRR of product ranks (queries whose product is missing are left out)."""
    found = ranks[ranks > 0]
    if not len(found):
        return {"n": 0, "r1": float("nan"), "r10": float("nan"), "mrr": float("nan")}
    return {
        "n": len(found),
        "r1": float(np.mean(found <= 1)),
        "r10": float(np.mean(found <= 10)),
        "mrr": float(np.mean(1.0 / found)),
    }


def street_scores(
    descriptors: np.ndarray,
    meta: dict[str, list[str]],
    post: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]],
    distractors: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per query kind (and ``all``) of one street-to-shop set, its catalogue optionally enlarged by
    ``distractors`` (photos of no product of the set); the post-processing is learnt from the catalogue."""
    roles = np.asarray(meta["roles"])
    skus = np.asarray(meta["labels"])
    kinds = np.asarray(meta["kinds"])[roles == "query"]
    catalogue, catalogue_skus = descriptors[roles == "catalogue"], list(skus[roles == "catalogue"])
    if distractors is not None:
        catalogue = np.concatenate([catalogue, distractors])
        catalogue_skus += [f"\0distractor-{i}" for i in range(len(distractors))]
    transform = post(catalogue)
    ranks = product_ranks(
        transform(descriptors[roles == "query"]), skus[roles == "query"], transform(catalogue), catalogue_skus
    )
    scores = {"all": rank_metrics(ranks)}
    for kind in sorted(set(kinds)):
        scores[kind] = rank_metrics(ranks[kinds == kind])
    return scores


def global_report(
    datasets: Sequence[str],
    street: Sequence[str],
    distractors: str | None,
    inputs_wanted: Sequence[str] | None,
    poolings_wanted: Sequence[str] | None,
    posts_wanted: Sequence[str] | None,
    out: Path | None,
    markdown_out: Path | None,
    speed_file: Path | None,
) -> None:
    """Every cached input x pooling x post-processing on the labelled sets (leave-one-out P@k) and the
    street-to-shop sets (R@1, R@10, MRR per query kind, without and with the distractor set's photos added to
    the catalogue); an input not cached for a set leaves its cells empty. Prints (and writes) Markdown."""
    from imgsearch.evaluation import score_rankings

    names = [*datasets, *street, *([distractors] if distractors else [])]
    metas = {name: json.loads((CACHE / name / "labels.json").read_text()) for name in dict.fromkeys(names)}
    cached = sorted({i for name in metas for i in cached_inputs(CACHE / name)})
    inputs = [i for i in cached if "-flip" not in i and _wanted(i, inputs_wanted)]
    results: list[dict[str, object]] = []
    for input_name in inputs:
        maps = {
            name: load_maps(CACHE / name, input_name) for name in metas if input_name in cached_inputs(CACHE / name)
        }
        for pooling, pool in POOLINGS.items():
            if not _wanted(pooling, poolings_wanted):
                continue
            pooled = {name: pool_cached(buckets, pool) for name, buckets in maps.items()}
            for post_name, post in FITTED_POSTS.items():
                if not _wanted(post_name, posts_wanted):
                    continue
                row: dict[str, object] = {"input": input_name, "pooling": pooling, "post": post_name}
                for name in datasets:
                    if name in pooled:
                        labels = metas[name]["labels"]
                        scores = score_rankings(labels, rankings(post(pooled[name])(pooled[name]), labels), 10)
                        row[name] = {
                            "p1_micro": scores.precision_micro[1],
                            "p5_micro": scores.precision_micro[5],
                            "p5_macro": scores.precision_macro[5],
                        }
                for name in street:
                    if name in pooled:
                        extra = pooled.get(distractors) if distractors else None
                        if extra is not None:
                            # A distractor that is one of the set's own catalogue photos would be a duplicate.
                            own = {
                                f
                                for f, r in zip(metas[name]["files"], metas[name]["roles"], strict=True)
                                if r == "catalogue"
                            }
                            extra = extra[[f not in own for f in metas[distractors]["files"]]]
                        row[name] = {"plain": street_scores(pooled[name], metas[name], post)}
                        if extra is not None:
                            row[name]["distractors"] = street_scores(pooled[name], metas[name], post, extra)
                results.append(row)
                log(f"{input_name} {pooling} {post_name}: {json.dumps(row, default=str)[:300]}")
    speeds = json.loads(speed_file.read_text()) if speed_file and speed_file.exists() else None
    text = report_markdown(results, datasets, street, speeds)
    if out:
        out.write_text(json.dumps({"results": results, "speed": speeds}, indent=1))
    if markdown_out:
        markdown_out.write_text(text)
    print(text)


def report_markdown(
    results: Sequence[dict[str, object]],
    datasets: Sequence[str],
    street: Sequence[str],
    speeds: dict[str, object] | None,
) -> str:
    """The catalogue table (P@5 of the labelled sets, ms per photo), then one table per street-to-shop set."""

    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) and value == value else "-"

    def ms(input_name: str) -> str:
        entry = ((speeds or {}).get("inputs") or {}).get(input_name.partition("@")[0])  # type: ignore[union-attr]
        return f"{entry['single_ms']:.0f} / {entry['batch_per_s']:.1f}" if entry else "-"

    def name(r: dict[str, object]) -> str:
        return f"{r['input']} · {r['pooling']} · {r['post']}"

    lines = ["| variant | " + " | ".join(f"{d}: P@5 M | P@5 µ | P@1 µ" for d in datasets) + " | ms/photo, photos/s |"]
    lines.append("|---|" + "---|" * (3 * len(datasets) + 1))
    for r in results:
        cells = [name(r)]
        for d in datasets:
            s = r.get(d) or {}
            cells += [cell(s.get(k)) for k in ("p5_macro", "p5_micro", "p1_micro")]  # type: ignore[union-attr]
        lines.append("| " + " | ".join([*cells, ms(str(r["input"]))]) + " |")
    for set_name in street:
        kinds = sorted(
            {k for r in results for k in ((r.get(set_name) or {}).get("plain") or {})},  # type: ignore[union-attr]
            key=lambda k: (k != "all", k),
        )
        if not kinds:
            continue
        first = next(r[set_name] for r in results if r.get(set_name))
        counts = ", ".join(f"{k} {first['plain'][k]['n']}" for k in kinds)  # type: ignore[index]
        lines += ["", f"**{set_name}** (queries: {counts}); R@1 / R@10 / MRR, catalogue alone | + distractors", ""]
        lines.append("| variant | " + " | ".join(f"{k} | {k} +D" for k in kinds) + " |")
        lines.append("|---|" + "---|" * (2 * len(kinds)))
        for r in results:
            s = r.get(set_name)
            if not s:
                continue
            cells = [name(r)]
            for k in kinds:
                for condition in ("plain", "distractors"):
                    m = (s.get(condition) or {}).get(k)  # type: ignore[union-attr]
                    cells.append(" / ".join(cell(m[x]) for x in ("r1", "r10", "mrr")) if m else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def speed_sizes(
    root: Path, variants: Sequence[str], limit: int, rounds: int, out: Path | None, static: bool = False
) -> None:
    """Cost of each input variant in bfloat16 on this machine, in one run with the library's default pipeline
    (and its ``rmac`` pipeline when it has one): milliseconds per single photo (batch 1, warm; network +
    R-MAC pooling on decoded pixels; the library pipelines from the file, decoding included) and photos/s in
    batches of ``limit`` photos of one shape. The machine may be shared, so everything is interleaved at the
    finest grain (each photo goes through every variant in turn, each batch likewise) and each photo's time is
    its fastest of ``rounds``: the median over photos of that minimum is reported, and the best batch rate.
    ``static`` also times one graph per input shape (``static:<variant>``) against the one graph of variable
    shape."""
    from imgsearch import embedding

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    load_before = os.getloadavg()
    files, _ = labelled_files(root)
    files = files[:limit]
    forwards = {"": conv_maps_model(WEIGHTS, "bfloat16")}
    if static:
        forwards["static:"] = conv_maps_model(WEIGHTS, "bfloat16", static=True)
    pixels = {name: [decoder(InputVariant.parse(name))(f) for f in files] for name in variants}
    featurizers = {
        name: embedding.Featurizer(weights=WEIGHTS, precision="bfloat16", pipeline=name)
        for name in ("default", "rmac")
        if name in embedding.PIPELINES
    }
    singles: dict[str, Callable[[int], None]] = {}
    batches: dict[str, Callable[[], None]] = {}
    for name in variants:
        for graph, forward in forwards.items():

            def one(i: int, forward: Callable[[np.ndarray], np.ndarray] = forward, name: str = name) -> None:
                _sqrt(regional_max_pool(forward(pixels[name][i][np.newaxis])))

            def many(forward: Callable[[np.ndarray], np.ndarray] = forward, name: str = name) -> None:
                buckets: dict[tuple[int, ...], list[np.ndarray]] = {}
                for image in pixels[name]:
                    buckets.setdefault(image.shape, []).append(image)
                for images in buckets.values():
                    _sqrt(regional_max_pool(forward(np.stack(images))))

            singles[graph + name], batches[graph + name] = one, many
    for name, featurizer in featurizers.items():

        def lib_one(i: int, featurizer: embedding.Featurizer = featurizer) -> None:
            featurizer.embed_image(files[i])

        def lib_many(featurizer: embedding.Featurizer = featurizer) -> None:
            for _ in featurizer.embed_files(files, batch_size=len(files)):
                pass

        singles[f"library:{name}"], batches[f"library:{name}"] = lib_one, lib_many
    for run in singles.values():  # warm: trace, and let oneDNN prepare every shape
        for i in range(len(files)):
            run(i)
    fastest = {name: np.full(len(files), np.inf) for name in singles}
    rates: dict[str, list[float]] = {name: [] for name in batches}
    for round_ in range(rounds):
        for i in range(len(files)):
            for name, run in singles.items():
                started = time.perf_counter()
                run(i)
                fastest[name][i] = min(fastest[name][i], time.perf_counter() - started)
        for name, run_batch in batches.items():
            started = time.perf_counter()
            run_batch()
            rates[name].append(len(files) / (time.perf_counter() - started))
        log(f"round {round_ + 1}: " + ", ".join(f"{n} {np.median(t) * 1000:.0f} ms" for n, t in fastest.items()))
    result = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "photos": len(files),
        "rounds": rounds,
        "inputs": {
            name: {"single_ms": float(np.median(fastest[name])) * 1000, "batch_per_s": max(rates[name])}
            for name in singles
        },
    }
    if out:
        out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_embed = sub.add_parser("embed", help="cache block5_conv3 maps for input variants")
    p_embed.add_argument("root", type=Path)
    p_embed.add_argument("variants", nargs="+")
    p_embed.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p_table = sub.add_parser("table", help="score pooling and post-processing variants of the cached maps")
    p_table.add_argument("--dataset", action="append", required=True, help="cache folder name (repeatable)")
    p_table.add_argument("--out", type=Path, help="also write every row as JSON here")
    for option in ("input", "pooling", "post"):
        p_table.add_argument(f"--{option}", action="append", help=f"only {option}s matching this pattern (repeatable)")
    p_table.add_argument("--sum", action="append", help="also score inputs a+b (summed descriptors; repeatable)")
    p_dba = sub.add_parser("dba", help="mirror-image and photo-query checks of database-side augmentation")
    p_dba.add_argument("--dataset", action="append", required=True, help="cache folder name (repeatable)")
    p_report = sub.add_parser("global", help="catalogue and street-to-shop scores of every cached variant")
    p_report.add_argument("--dataset", action="append", required=True, help="labelled cache folder (repeatable)")
    p_report.add_argument("--street", action="append", default=[], help="streetshop-<set> cache folder (repeatable)")
    p_report.add_argument("--distractors", help="cache folder whose photos are added to each street catalogue")
    for option in ("input", "pooling", "post"):
        p_report.add_argument(f"--{option}", action="append", help=f"only {option}s matching this pattern (repeatable)")
    p_report.add_argument("--out", type=Path, help="every row as JSON")
    p_report.add_argument("--markdown", type=Path, help="the tables as Markdown")
    p_report.add_argument("--speed", type=Path, help="JSON written by speed-sizes, for the cost column")
    p_sizes = sub.add_parser("speed-sizes", help="ms per photo and photos/s of input variants (bfloat16)")
    p_sizes.add_argument("root", type=Path)
    p_sizes.add_argument("variants", nargs="+")
    p_sizes.add_argument("--limit", type=int, default=64)
    p_sizes.add_argument("--rounds", type=int, default=2)
    p_sizes.add_argument("--out", type=Path)
    p_sizes.add_argument("--static", action="store_true", help="also time one graph per input shape")
    p_speed = sub.add_parser("speed", help="images/s of the notebook vs the default pipeline")
    p_speed.add_argument("root", type=Path)
    p_speed.add_argument("--limit", type=int, default=256)
    p_speed.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "embed":
        embed(args.root, args.variants, precision=args.precision)
    elif args.command == "dba":
        dba_check(args.dataset)
    elif args.command == "speed":
        speed(args.root, args.limit, args.rounds)
    elif args.command == "speed-sizes":
        speed_sizes(args.root, args.variants, args.limit, args.rounds, args.out, args.static)
    elif args.command == "global":
        global_report(
            args.dataset,
            args.street,
            args.distractors,
            args.input,
            args.pooling,
            args.post,
            args.out,
            args.markdown,
            args.speed,
        )
    else:
        table(args.dataset, args.out, args.input, args.pooling, args.post, args.sum)


if __name__ == "__main__":
    main()
