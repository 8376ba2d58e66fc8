"""Search quality of preprocessing and pooling variants, measured fast outside the database.

Two steps:

``embed``  runs VGG16 once per *input* variant (resampling filter, squash or pad-to-square on white, input
           side, horizontal flip) over a labelled folder tree and caches the ``block5_conv3`` feature maps
           (float16) under ``~/.cache/imgsearch-quality``. This is the slow part (~3 min per variant for
           Myntra's 2,524 photos at 224 px, fp32, 2 cores).
``table``  derives every *pooling* variant from the cached maps in NumPy (``block5_pool`` is the 2x2 max-pool
           of ``block5_conv3``, so the notebooks' global average of ``block5_pool`` is one of them) and every
           post-processing (power / signed square root, PCA-whitening fitted on the catalogue itself, all
           512-d), ranks with exact cosine and prints precision@1/5/10 (micro and macro) and mAP@10, with the
           metric functions of :mod:`imgsearch.evaluation`.

The database path (HNSW index) is checked separately with ``imgsearch eval``; see docs/quality.md.

    python benchmarks/quality.py embed ../shared/datasets/myntra-fashion-products nearest-squash-224 bicubic-pad-224
    python benchmarks/quality.py table --dataset myntra-fashion-products --dataset clothing-cc0-sample
"""

from __future__ import annotations

import argparse
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


POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "avg(pool5)": lambda m: _max_pool_2x2(m).mean(axis=(1, 2)),
    "avg(conv3)": lambda m: m.mean(axis=(1, 2)),
    "max": lambda m: m.max(axis=(1, 2)),
    "gem3(pool5)": lambda m: _gem(_max_pool_2x2(m), 3.0),
    "gem3(conv3)": lambda m: _gem(m, 3.0),
    "rmac(conv3)": _rmac,
}


def _pca_whiten(x: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    """Centre on the catalogue's mean and rotate onto its principal axes, each divided by its standard
    deviation; all 512 dimensions kept. ``shrink`` adds that fraction of the mean variance to every axis,
    which tames the axes a small catalogue (fewer images than dimensions) cannot estimate."""
    mean = x.mean(axis=0)
    centred = x - mean
    eigval, eigvec = np.linalg.eigh(np.cov(centred, rowvar=False))
    eigval = np.maximum(eigval, eigval.max() * 1e-6) + shrink * eigval.mean()
    return centred @ eigvec / np.sqrt(eigval)


POSTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "l2": _l2,
    "sqrt": lambda x: _l2(np.sign(x) * np.sqrt(np.abs(x))),
    "pcaw": lambda x: _l2(_pca_whiten(_l2(x))),
    "sqrt+pcaw": lambda x: _l2(_pca_whiten(_l2(np.sign(x) * np.sqrt(np.abs(x))))),
    "pcaw-shrink": lambda x: _l2(_pca_whiten(_l2(x), shrink=1.0)),
    # Centring on the catalogue's mean without whitening: what the catalogue-learnt part alone is worth.
    "sqrt+center": lambda x: _l2(_l2(np.sqrt(np.abs(x))) - _l2(np.sqrt(np.abs(x))).mean(axis=0)),
    "pow0.3": lambda x: _l2(np.sign(x) * np.power(np.abs(x), 0.3)),
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


def table(datasets: Sequence[str], out: Path | None) -> None:
    """Score every cached input variant x pooling x post-processing on every dataset; print Markdown."""
    from imgsearch.evaluation import score_rankings

    results: list[dict[str, object]] = []
    for dataset in datasets:
        folder = CACHE / dataset
        labels = json.loads((folder / "labels.json").read_text())["labels"]
        inputs = sorted(p.stem for p in folder.glob("*.npy") if "-flip" not in p.stem)
        for name in inputs:
            maps = np.load(folder / f"{name}.npy").astype(np.float32)
            base, _, tag = name.partition("@")
            flipped_path = folder / (f"{base}-flip" + (f"@{tag}" if tag else "") + ".npy")
            flipped = np.load(flipped_path).astype(np.float32) if flipped_path.exists() else None
            for pooling, pool in POOLINGS.items():
                pooled = {"": pool(maps)}
                if flipped is not None:
                    # Average of the photo's and its mirror image's descriptors.
                    pooled["+flip"] = _l2(pooled[""]) + _l2(pool(flipped))
                for suffix, descriptors in pooled.items():
                    for post_name, post in POSTS.items():
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
    p_speed = sub.add_parser("speed", help="images/s of the notebook vs the default pipeline")
    p_speed.add_argument("root", type=Path)
    p_speed.add_argument("--limit", type=int, default=256)
    p_speed.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "embed":
        embed(args.root, args.variants, precision=args.precision)
    elif args.command == "speed":
        speed(args.root, args.limit, args.rounds)
    else:
        table(args.dataset, args.out)


if __name__ == "__main__":
    main()
