"""Does finding the object in the shopper's photo help the global descriptor? Query side only.

When a search comes without a crop box, the object could be found automatically from VGG16's own activations
(a saliency map, as in SCDA, Wei et al. 2017) and only that part of the shopper's photo described. This
measures, on the street-to-shop sets (``/work/data/streetshop/<set>``, cached by ``benchmarks/quality.py
embed`` as ``~/.cache/imgsearch-quality/streetshop-<set>/nearest-squash-224@bf16.npy``), whether that ranks the
right product higher, the catalogue's vectors staying today's default ones (global average of ``block5_conv3``
of the squashed 224x224 photo, element-wise square root, L2):

``a`` default        the query embedded like the catalogue.
``b`` crow / sw      CroW weighting of the query's map (spatial x channel; ``sw``: spatial weight only), and
                     SPoC's Gaussian ``centre`` prior, from benchmarks/quality.py.
``c`` mask-<t>       saliency mask: channel-summed activation map (14x14), cells above a threshold ``t``
                     (``mean`` of the map, or ``otsu``'s two-class split), the largest 8-connected component;
                     the map is averaged inside it only; then square root, L2.
``d`` crop-<t>-m<k>  the mask's bounding box, widened by ``k`` cells (of 16 px at 224) on each side, mapped back
                     to the photo's pixels; that crop is decoded like a query's crop box
                     (``imgsearch.images.decode_rgb8(..., crop=box)``: squashed to 224, nearest) and run through
                     VGG16 again (bfloat16, the cached maps' network, benchmarks/quality.py's
                     ``conv_maps_model``), default pooling. A box that is the whole photo keeps the default vector.
``e`` sym:<b or c>   the same pooling on catalogue and queries (a reference, not a query-side change), with the
                     catalogue-to-catalogue check on Myntra (leave-one-out macro P@5).

Metrics as ``benchmarks/quality.py global``: each query against all catalogue photos of its set, a product
scored by its closest photo, R@1 / R@10 / MRR of the query's own product, per query kind. Parameters (mask
threshold; crop threshold and margin) are chosen on ``groceries-val`` only (best MRR over all its queries)
and reported on every set; every candidate's row is printed anyway. Cost: one run over a few query photos,
interleaved photo by photo, each photo's fastest of ``--rounds``: the mask pooling (NumPy, from the map), the
crop's extra decode + network pass, and a plain default embedding (decode + network) for scale.

Crop maps are cached under ``~/.cache/imgsearch-saliency-crop`` (not in quality.py's cache folder, whose
``*.npy`` files it treats as input variants).

    export IMGSEARCH_VGG16_WEIGHTS=/work/shared/models/vgg16_imagenet_notop.h5
    python benchmarks/saliency_crop.py --out benchmarks/results/saliency-crop.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average, machine  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    CACHE,
    WEIGHTS,
    _centre_prior,
    _crow,
    _l2,
    _sqrt,
    conv_maps_model,
    load_maps,
    log,
    pool_cached,
    product_ranks,
    rank_metrics,
    rankings,
)

INPUT = "nearest-squash-224@bf16"
CROP_CACHE = Path(os.environ.get("IMGSEARCH_SALIENCY_CACHE", "~/.cache/imgsearch-saliency-crop")).expanduser()
STREET = (
    "covers",
    "groceries",
    "groceries-val",
    "synthetic-covers",
    "synthetic-groceries",
    "synthetic-fashion",
)
CHOOSE_ON = "groceries-val"
THRESHOLDS = ("mean", "otsu")
MARGINS = (0, 1)

# --- saliency mask ------------------------------------------------------------------------------------------


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a few values: the split (cells above it are the object) that maximises the
    between-class variance."""
    v = np.sort(values.ravel().astype(np.float64))
    n = len(v)
    k = np.arange(1, n)
    cumulative = np.cumsum(v)[:-1]
    mean_low = cumulative / k
    mean_high = (v.sum() - cumulative) / (n - k)
    between = k * (n - k) * (mean_low - mean_high) ** 2
    return float(v[int(np.argmax(between))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean grid (ties: the one found first, row-major)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.ones_like(mask)


def saliency_masks(maps: np.ndarray, threshold: str) -> np.ndarray:
    """``(n, h, w)`` boolean masks of the object: channel-summed activations above the threshold, largest
    connected component."""
    total = maps.sum(axis=3)
    out = np.zeros(total.shape, bool)
    for i, s in enumerate(total):
        t = float(s.mean()) if threshold == "mean" else _otsu(s)
        out[i] = _largest_component(s > t)
    return out


def masked_average(threshold: str) -> Callable[[np.ndarray], np.ndarray]:
    def pool(maps: np.ndarray) -> np.ndarray:
        mask = saliency_masks(maps, threshold).astype(np.float32)
        return np.einsum("nhw,nhwc->nc", mask, maps) / mask.sum(axis=(1, 2))[:, None]

    return pool


POOLINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "default": lambda m: m.mean(axis=(1, 2)),
    "crow": _crow,
    "sw": lambda m: _crow(m, spatial_only=True),
    "centre": _centre_prior,
    **{f"mask-{t}": masked_average(t) for t in THRESHOLDS},
}


# --- crop and re-embed --------------------------------------------------------------------------------------


def upright_size(path: str) -> tuple[int, int]:
    """Width and height of the photo as shown (EXIF orientation applied), as ``imgsearch.images`` sees it."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        with contextlib.suppress(Exception):
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
    return w, h


def crop_box(mask: np.ndarray, margin: int, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The mask's bounding box widened by ``margin`` cells, in the photo's pixels (the map covers the
    squashed photo evenly); None when it is the whole photo."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    if (y0, x0, y1, x1) == (0, 0, h, w):
        return None
    width, height = size
    return (
        float(np.floor(x0 / w * width)),
        float(np.floor(y0 / h * height)),
        float(np.ceil(x1 / w * width)),
        float(np.ceil(y1 / h * height)),
    )


def crop_vectors(
    set_name: str,
    files: Sequence[str],
    maps: np.ndarray,
    threshold: str,
    margin: int,
    forward: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, dict[str, float]]:
    """Default-pooled (not yet square-rooted) vectors of each query's crop (its own map when no crop), cached."""
    from imgsearch.images import decode_rgb8

    path = CROP_CACHE / set_name / f"crop-{threshold}-m{margin}.npz"
    if path.exists():
        with np.load(path) as saved:
            return saved["vectors"], json.loads(str(saved["info"]))
    started = time.perf_counter()
    masks = np.concatenate(
        [saliency_masks(maps[i : i + 256].astype(np.float32), threshold) for i in range(0, len(maps), 256)]
    )
    vectors = maps.astype(np.float32).mean(axis=(1, 2))
    boxes = {}
    for i, f in enumerate(files):
        box = crop_box(masks[i], margin, upright_size(f))
        if box is not None:
            boxes[i] = box
    todo = sorted(boxes)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pixels = list(pool.map(lambda i: decode_rgb8(files[i], 224, crop=boxes[i]), todo))
    for start in range(0, len(todo), 32):
        batch = np.stack(pixels[start : start + 32])
        vectors[todo[start : start + 32]] = forward(batch).mean(axis=(1, 2))
    areas = [(b[2] - b[0]) * (b[3] - b[1]) / np.prod(upright_size(files[i])) for i, b in boxes.items()]
    info = {
        "queries": len(files),
        "cropped": len(todo),
        "median_area_of_cropped": float(np.median(areas)) if areas else 1.0,
        "seconds": time.perf_counter() - started,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, vectors=vectors, info=json.dumps(info))
    log(f"{set_name} crop-{threshold}-m{margin}: {info}")
    return vectors, info


# --- scoring ------------------------------------------------------------------------------------------------


def street_set(name: str) -> dict[str, object]:
    folder = CACHE / f"streetshop-{name}"
    meta = json.loads((folder / "labels.json").read_text())
    buckets = load_maps(folder, INPUT)
    roles = np.asarray(meta["roles"])
    return {
        "meta": meta,
        "buckets": buckets,
        "roles": roles,
        "skus": np.asarray(meta["labels"]),
        "kinds": np.asarray(meta["kinds"])[roles == "query"],
        "query_files": [f for f, r in zip(meta["files"], meta["roles"], strict=True) if r == "query"],
    }


#: Each query's product rank, by (variant, set), for the paired bootstrap.
RANKS: dict[tuple[str, str], np.ndarray] = {}


def scores(
    data: dict[str, object], queries: np.ndarray, catalogue: np.ndarray, key: tuple[str, str]
) -> dict[str, dict[str, float]]:
    """R@1/R@10/MRR per kind (and ``all``); ``queries`` and ``catalogue`` are pooled, not yet square-rooted."""
    roles, skus, kinds = data["roles"], data["skus"], data["kinds"]
    ranks = product_ranks(_sqrt(queries), skus[roles == "query"], _sqrt(catalogue), list(skus[roles == "catalogue"]))
    RANKS[key] = ranks
    out = {"all": rank_metrics(ranks)}
    for kind in sorted(set(kinds)):
        out[str(kind)] = rank_metrics(ranks[kinds == kind])
    return out


def myntra_p5(pool: Callable[[np.ndarray], np.ndarray]) -> float:
    from imgsearch.evaluation import score_rankings

    folder = CACHE / "myntra-fashion-products"
    labels = json.loads((folder / "labels.json").read_text())["labels"]
    x = _sqrt(pool_cached(load_maps(folder, INPUT), pool))
    return float(score_rankings(labels, rankings(x, labels), 10).precision_macro[5])


def catalogue_photo_queries(pool: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """A query-side pooling on photos that are not shoppers' street photos: each Myntra studio photo (macro P@5)
    and each clothing-cc0-sample phone photo (P@1) pooled with ``pool``, searched among the others' default
    vectors (itself excluded), as a search by photo with such a photo would be."""
    from imgsearch.evaluation import score_rankings

    out = {}
    for dataset, key, k in (("myntra-fashion-products", "myntra_p5_macro", 5), ("clothing-cc0-sample", "cc0_p1", 1)):
        folder = CACHE / dataset
        labels = json.loads((folder / "labels.json").read_text())["labels"]
        buckets = load_maps(folder, INPUT)
        catalogue = _l2(_sqrt(pool_cached(buckets, POOLINGS["default"])).astype(np.float64))
        queries = _l2(_sqrt(pool_cached(buckets, pool)).astype(np.float64))
        similarity = queries @ catalogue.T
        np.fill_diagonal(similarity, -np.inf)
        top = np.argsort(-similarity, axis=1)[:, :10]
        ranked = [[labels[j] for j in row] for row in top]
        scored = score_rankings(labels, ranked, 10)
        out[key] = float(scored.precision_macro[k] if k == 5 else scored.precision_micro[k])
    return out


def paired_bootstrap(
    data: dict[str, dict[str, object]], variants: Sequence[str], resamples: int = 2000
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Difference to the default of R@1 and MRR with a 95% interval from resampling the queries (the same
    resample for both rankings), per variant, set and query kind."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for variant in variants:
        for name, d in data.items():
            if (variant, name) not in RANKS:
                continue
            base, other = RANKS[("default", name)], RANKS[(variant, name)]
            kinds = d["kinds"]
            groups = {"all": np.ones(len(base), bool)} | {str(k): kinds == k for k in sorted(set(kinds))}
            for kind, where in groups.items():
                b, o = base[where & (base > 0)], other[where & (base > 0)]
                draws = rng.integers(0, len(b), (resamples, len(b)))
                cell = {}
                for metric, f in (("r1", lambda r: (r <= 1).astype(float)), ("mrr", lambda r: 1.0 / r)):
                    diff = f(o) - f(b)
                    means = diff[draws].mean(axis=1)
                    cell[metric] = [float(diff.mean()), *map(float, np.percentile(means, [2.5, 97.5]))]
                out.setdefault(variant, {}).setdefault(f"{name} {kind}", cell)
    return out


# --- timing -------------------------------------------------------------------------------------------------


def timing(files: Sequence[str], maps: np.ndarray, threshold: str, margin: int, rounds: int) -> dict[str, object]:
    """Per photo, interleaved: the mask pooling from the map; mask + box + crop decode + network + pooling; a
    plain default embedding (decode + network + pooling). Median over photos of each photo's fastest."""
    from imgsearch.images import decode_rgb8

    forward = conv_maps_model(WEIGHTS, "bfloat16")
    pool = masked_average(threshold)

    def mask_pool(i: int) -> None:
        _sqrt(pool(maps[i : i + 1].astype(np.float32)))

    def crop_embed(i: int) -> None:
        m = maps[i : i + 1].astype(np.float32)
        box = crop_box(saliency_masks(m, threshold)[0], margin, upright_size(files[i]))
        if box is not None:
            _sqrt(forward(decode_rgb8(files[i], 224, crop=box)[np.newaxis]).mean(axis=(1, 2)))

    def plain_embed(i: int) -> None:
        _sqrt(forward(decode_rgb8(files[i], 224)[np.newaxis]).mean(axis=(1, 2)))

    runs = {"mask_pool_numpy": mask_pool, "crop_reembed_extra": crop_embed, "default_embed": plain_embed}
    load_before = load_average()
    for run in runs.values():
        for i in range(min(4, len(files))):
            run(i)
    fastest = {name: np.full(len(files), np.inf) for name in runs}
    for _ in range(rounds):
        for i in range(len(files)):
            for name, run in runs.items():
                started = time.perf_counter()
                run(i)
                fastest[name][i] = min(fastest[name][i], time.perf_counter() - started)
    return {
        "photos": len(files),
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load_average(),
        "ms": {name: float(np.median(t) * 1000) for name, t in fastest.items()},
    }


# --- report -------------------------------------------------------------------------------------------------


def markdown(result: dict[str, object]) -> str:
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    columns: list[tuple[str, str]] = []
    for set_name in STREET:
        kinds = next((r["sets"][set_name] for r in rows if set_name in r["sets"]), {})
        kinds_sorted = sorted(kinds, key=lambda k: (k != "all", k))
        columns += [(set_name, k) for k in kinds_sorted if not (k != "all" and len(kinds_sorted) == 2)]

    def cell(m: dict[str, float] | None) -> str:
        return " / ".join(f"{m[x]:.3f}" for x in ("r1", "r10", "mrr")) if m else "-"

    head = "| variant | " + " | ".join(f"{s} {k}" if k != "all" else s for s, k in columns)
    head += " | Myntra P@5 M | cc0 P@1 |"
    lines = [head, "|---|" + "---|" * (len(columns) + 2)]
    for r in rows:
        cells = [str(r["variant"])]
        cells += [cell(r["sets"].get(s, {}).get(k)) for s, k in columns]
        cells.append(f"{r['myntra_p5_macro']:.3f}" if r.get("myntra_p5_macro") is not None else "")
        cells.append(f"{r['cc0_p1']:.3f}" if r.get("cc0_p1") is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write every row and the timings as JSON here")
    parser.add_argument("--timing-photos", type=int, default=32, help="groceries query photos to time")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-crop", action="store_true", help="skip the crop-and-re-embed variants")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = machine()
    load_start = load_average()
    data = {name: street_set(name) for name in STREET}
    rows: list[dict[str, object]] = []

    # a-c: query side only, e: both sides.
    pooled = {name: {p: pool_cached(d["buckets"], f) for p, f in POOLINGS.items()} for name, d in data.items()}
    for p in POOLINGS:
        row = {"variant": p if p == "default" else f"query:{p}", "sets": {}}
        for name, d in data.items():
            roles = d["roles"]
            row["sets"][name] = scores(
                d,
                pooled[name][p][roles == "query"],
                pooled[name]["default"][roles == "catalogue"],
                (row["variant"], name),
            )
        if p in POOLINGS:
            row.update(catalogue_photo_queries(POOLINGS[p]))
        rows.append(row)
        log(f"{row['variant']}: {json.dumps(row['sets'][CHOOSE_ON]['all'])}")
    for p in POOLINGS:
        if p == "default":
            continue
        row = {"variant": f"sym:{p}", "sets": {}, "myntra_p5_macro": myntra_p5(POOLINGS[p])}
        for name, d in data.items():
            roles = d["roles"]
            row["sets"][name] = scores(
                d, pooled[name][p][roles == "query"], pooled[name][p][roles == "catalogue"], (row["variant"], name)
            )
        rows.append(row)
        log(f"{row['variant']}: {json.dumps(row['sets'][CHOOSE_ON]['all'])}")

    def mrr_on_choice(variant: str) -> float:
        return next(r for r in rows if r["variant"] == variant)["sets"][CHOOSE_ON]["all"]["mrr"]

    chosen_mask = max(THRESHOLDS, key=lambda t: mrr_on_choice(f"query:mask-{t}"))
    log(f"mask threshold chosen on {CHOOSE_ON}: {chosen_mask}")
    crop_info: dict[str, dict[str, object]] = {}
    chosen_crop = None
    if not args.no_crop:
        forward = conv_maps_model(WEIGHTS, "bfloat16")

        def crop_row(threshold: str, margin: int, sets: Sequence[str]) -> None:
            variant = f"query:crop-{threshold}-m{margin}"
            row = next((r for r in rows if r["variant"] == variant), None)
            if row is None:
                row = {"variant": variant, "sets": {}}
                rows.append(row)
            for name in sets:
                d = data[name]
                roles = d["roles"]
                query_maps = np.concatenate([m for _, m in d["buckets"]])[roles == "query"]
                vectors, crop_info[f"{name} {variant}"] = crop_vectors(
                    name, d["query_files"], query_maps, threshold, margin, forward
                )
                row["sets"][name] = scores(d, vectors, pooled[name]["default"][roles == "catalogue"], (variant, name))
            log(f"{variant}: {json.dumps({s: row['sets'][s]['all'] for s in sets})}")

        for t in THRESHOLDS:
            for m in MARGINS:
                crop_row(t, m, [CHOOSE_ON])
        chosen_crop = max(
            ((t, m) for t in THRESHOLDS for m in MARGINS), key=lambda c: mrr_on_choice(f"query:crop-{c[0]}-m{c[1]}")
        )
        log(f"crop chosen on {CHOOSE_ON}: {chosen_crop}")
        crop_row(*chosen_crop, [s for s in STREET if s != CHOOSE_ON])

    bootstrap = paired_bootstrap(
        data,
        ["query:centre", "query:sw", f"query:mask-{chosen_mask}"]
        + ([f"query:crop-{chosen_crop[0]}-m{chosen_crop[1]}"] if chosen_crop else []),
    )
    d = data["groceries"]
    query_maps = np.concatenate([m for _, m in d["buckets"]])[d["roles"] == "query"]
    # Groceries queries evenly spread over the file order: packaged and produce photos alike.
    pick = np.arange(0, len(query_maps), max(1, len(query_maps) // args.timing_photos))[: args.timing_photos]
    speed = timing(
        [d["query_files"][i] for i in pick],
        query_maps[pick],
        chosen_mask,
        chosen_crop[1] if chosen_crop else 1,
        args.rounds,
    )
    log(f"timing: {speed}")
    result = {
        "machine": info,
        "load_at_start": load_start,
        "load_at_end": load_average(),
        "input": INPUT,
        "chosen_on": CHOOSE_ON,
        "chosen_mask_threshold": chosen_mask,
        "chosen_crop": list(chosen_crop) if chosen_crop else None,
        "crop_info": crop_info,
        "timing": speed,
        "bootstrap_vs_default": bootstrap,
        "wall_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    table = markdown(result)
    print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
