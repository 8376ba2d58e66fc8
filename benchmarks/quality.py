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

from imgsearch.images import decode_rgb8  # noqa: E402
from imgsearch.ingest import CatalogueEntry, scan_folder  # noqa: E402

CACHE = Path(os.environ.get("IMGSEARCH_QUALITY_CACHE", "~/.cache/imgsearch-quality")).expanduser()
WEIGHTS = os.environ.get("IMGSEARCH_VGG16_WEIGHTS", str(REPO.parent / "shared" / "models" / "vgg16_imagenet_notop.h5"))


@dataclass(frozen=True)
class InputVariant:
    """How a photo becomes the network's input: ``<filter>-<fit>-<side>[-flip]``."""

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
        if len(parts) != 3 or parts[1] not in ("squash", "pad"):
            raise SystemExit(f"bad variant {name!r}: expected <filter>-<squash|pad>-<side>[-flip]")
        return cls(parts[0], parts[1], int(parts[2]), flip)

    @property
    def name(self) -> str:
        return f"{self.resample}-{self.fit}-{self.size}" + ("-flip" if self.flip else "")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def labelled_files(root: Path) -> tuple[list[Path], list[str]]:
    """Images and labels of a ``root/<label>/<image>`` tree, in :func:`scan_folder` order."""
    entries = [e for e in scan_folder(root) if isinstance(e, CatalogueEntry)]
    return [e.image for e in entries], [e.category for e in entries]


def decoder(variant: InputVariant) -> Callable[[Path], np.ndarray]:
    """The decoding function of the library for ``variant`` (uint8 RGB, square)."""
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


def conv_maps_model(weights: str, precision: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """VGG16 (the library's network and weights) up to ``block5_conv3``, any input size."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    base.load_weights(weights)
    model = keras.Model(base.input, base.get_layer("block5_conv3").output)
    preprocess = keras.applications.vgg16.preprocess_input

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    def forward(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(preprocess(images), training=False), tf.float32)

    return lambda batch: forward(batch.astype(np.float32)).numpy()


def embed(root: Path, variants: Sequence[str], batch_size: int = 32, precision: str = "float32") -> None:
    """Cache ``block5_conv3`` maps of every image of ``root`` for each input variant (skips cached ones).

    bfloat16 runs are cached as ``<variant>@bf16``: several times faster on this CPU, and scored apart.
    """
    files, labels = labelled_files(root)
    out_dir = CACHE / root.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "labels.json").write_text(json.dumps({"files": [str(f) for f in files], "labels": labels}))
    forward = None
    for name in variants:
        variant = InputVariant.parse(name)
        stem = variant.name + ("@bf16" if precision == "bfloat16" else "")
        target = out_dir / f"{stem}.npy"
        if target.exists():
            log(f"{root.name} {stem}: cached")
            continue
        forward = forward or conv_maps_model(WEIGHTS, precision)
        started = time.perf_counter()
        decode = decoder(variant)
        with ThreadPoolExecutor(max_workers=2) as pool:
            images = np.stack(list(pool.map(decode, files)))
        if variant.flip:
            images = images[:, :, ::-1, :]
        decoded = time.perf_counter() - started
        maps = []
        for start in range(0, len(images), batch_size):
            maps.append(forward(images[start : start + batch_size]).astype(np.float16))
        seconds = time.perf_counter() - started
        np.save(target, np.concatenate(maps))
        timing = {"images": len(files), "decode_seconds": decoded, "total_seconds": seconds}
        (out_dir / f"{stem}.timing.json").write_text(json.dumps(timing))
        log(f"{root.name} {stem}: {len(files)} images in {seconds:.0f} s ({len(files) / seconds:.1f}/s)")


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
        stems = (p.stem for p in folder.glob("*.npy"))
        inputs = sorted(stem for stem in stems if "-flip" not in stem and _wanted(stem, inputs_wanted))
        for name in [*inputs, *(sums or [])]:
            parts = name.split("+")
            all_maps = [np.load(folder / f"{part}.npy").astype(np.float32) for part in parts]
            base, _, tag = name.partition("@")
            flipped_path = folder / (f"{base}-flip" + (f"@{tag}" if tag else "") + ".npy")
            flipped = None
            if len(parts) == 1 and flipped_path.exists():
                flipped = np.load(flipped_path).astype(np.float32)
            for pooling, pool in POOLINGS.items():
                if not _wanted(pooling, poolings_wanted):
                    continue
                if len(all_maps) == 1:
                    pooled = {"": pool(all_maps[0])}
                else:
                    # Multi-scale: the sum of each input's L2-normalised descriptor.
                    pooled = {"": sum(_l2(pool(maps)) for maps in all_maps)}
                if flipped is not None:
                    # Average of the photo's and its mirror image's descriptors.
                    pooled["+flip"] = _l2(pooled[""]) + _l2(pool(flipped))
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
    else:
        table(args.dataset, args.out, args.input, args.pooling, args.post, args.sum)


if __name__ == "__main__":
    main()
