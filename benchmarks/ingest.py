"""Ingestion benchmark: VGG16 throughput against this CPU's matrix-multiply ceiling, end to end, bf16 vs fp32.

Measured in one run:

* the ceiling: float32 matrix-multiply rate (GFLOP/s) of this machine, NumPy and TensorFlow, best of both;
  VGG16 at 224x224 costs about 31 GFLOP per image, so ceiling images/s = GFLOP/s / 31;
* model-only images/s (``Featurizer.embed_arrays`` on decoded images) in float32 and bfloat16;
* end to end (``imgsearch.ingest.ingest``, what ``imgsearch ingest`` runs: hash, decode, model, database) on an
  image folder and on large photos generated from it (3000x4000 JPEGs), as a ratio to model-only throughput;
* bfloat16 against float32 on the image folder: mean cosine between the two embeddings of each image, top-10
  overlap of searches (every image as the query) and precision@5 by class;
* query by image end to end on a warm model (``query.search_image``), p50 and p95;
* peak memory (max RSS) of an ingest of 10x and of 100x the batch size, each in a fresh process.

Results go to ``benchmarks/results/ingest.json`` and ``.md``. Run from the repository root::

    .venv/bin/python -m benchmarks.ingest                    # the repo's sample photos
    .venv/bin/python -m benchmarks.ingest --images ../shared/datasets/myntra-fashion-products
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_CACHE,
    EXAMPLES,
    cached_embeddings,
    git_commit,
    image_folder,
    load_average,
    log,
    machine,
    md_table,
    percentiles,
    start_server,
    stop_server,
    subset,
    wait_for_quiet,
    write_results,
)

VGG16_GFLOP = 30.95  # 15.47 GMAC per 224x224 image for the convolutional part (include_top=False)


def matmul_gflops(seconds: float = 3.0, size: int = 2048) -> dict[str, float]:
    """float32 matrix-multiply rate of this machine (GFLOP/s), with NumPy's BLAS and TensorFlow (oneDNN)."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        n += 1
    out["numpy"] = round(2 * size**3 * n / (time.perf_counter() - started) / 1e9, 1)

    from imgsearch.embedding import _import_tensorflow

    tf, _ = _import_tensorflow()
    ta, tb = tf.constant(a), tf.constant(b)
    mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    mm(ta, tb).numpy()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        mm(ta, tb).numpy()
        n += 1
    out["tensorflow"] = round(2 * size**3 * n / (time.perf_counter() - started) / 1e9, 1)
    out["ceiling"] = max(out["numpy"], out["tensorflow"])
    out["ceiling_images_per_s"] = round(out["ceiling"] / VGG16_GFLOP, 2)
    return out


def model_only(featurizer: Any, batch_size: int, seconds: float) -> float:
    """Images/s of the network alone on decoded 224x224 batches (after a warm-up batch)."""
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, size=(batch_size, 224, 224, 3)).astype(np.float32)
    featurizer.embed_arrays(batch)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        featurizer.embed_arrays(batch)
        n += batch_size
    return n / (time.perf_counter() - started)


def make_large_photos(source: list[Path], out_dir: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` JPEGs of ``size`` (width, height) upscaled from ``source``, in ``<class>/<image>`` folders."""
    from PIL import Image

    for i in range(count):
        src = source[i % len(source)]
        target = out_dir / src.parent.name / f"{src.stem}-{i}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(target, quality=90)
    return out_dir


def end_to_end(url: str, featurizer: Any, folder: Path, only: list[Path] | None = None) -> dict[str, Any]:
    """Ingest ``folder`` (``only`` these of its images, if given) into an empty catalogue with
    ``imgsearch.ingest.ingest``, what ``imgsearch ingest FOLDER`` runs; images/s end to end."""
    from imgsearch import catalogue, db, ingest

    engine = db.create_engine(url)
    catalogue.clear(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM embedding_space")
    started = time.perf_counter()
    entries = ingest.scan_folder(folder)
    if only is not None:
        wanted = {str(p) for p in only}
        entries = (e for e in entries if str(getattr(e, "image", "")) in wanted)
    report = ingest.ingest(engine, entries, featurizer)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "images": report.embedded,
        "failed": report.failed,
        "seconds": round(seconds, 2),
        "images_per_s": round(report.embedded / seconds, 2),
    }


def compare_precisions(v32: np.ndarray, v16: np.ndarray, labels: list[str]) -> dict[str, float]:
    """bf16 vs fp32 embeddings of the same images: cosine, top-10 overlap, precision@5 by class (self excluded)."""
    cos = np.sum(v32 * v16, axis=1) / (np.linalg.norm(v32, axis=1) * np.linalg.norm(v16, axis=1))
    lab = np.array(labels)

    def neighbours(v: np.ndarray, k: int) -> np.ndarray:
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        sims = u @ u.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    n32, n16 = neighbours(v32, 10), neighbours(v16, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(n32, n16, strict=True)])
    p5_32 = np.mean(lab[n32[:, :5]] == lab[:, None])
    p5_16 = np.mean(lab[n16[:, :5]] == lab[:, None])
    return {
        "images": len(v32),
        "mean_cosine": round(float(cos.mean()), 5),
        "min_cosine": round(float(cos.min()), 5),
        "top10_overlap": round(float(overlap), 4),
        "precision_at_5_fp32": round(float(p5_32), 4),
        "precision_at_5_bf16": round(float(p5_16), 4),
    }


def query_latency(url: str, featurizer: Any, paths: list[Path], n: int) -> dict[str, float]:
    """query.search_image (decode, embed, search) on a warm model against the catalogue ingested last."""
    from imgsearch import db, query

    engine = db.create_engine(url)
    query.search_image(engine, featurizer, paths[0], k=10)
    lat = []
    for p in paths[:n]:
        t = time.perf_counter()
        query.search_image(engine, featurizer, p, k=10)
        lat.append((time.perf_counter() - t) * 1000)
    engine.dispose()
    return {**percentiles(lat), "queries": len(lat)}


_MEMORY_CHILD = """
import json, resource, sys, time
from pathlib import Path
from imgsearch import catalogue, db, ingest
from imgsearch.embedding import Featurizer
url, folder, weights, batch, precision = sys.argv[1:6]
featurizer = Featurizer(weights=weights, batch_size=int(batch), precision=precision)
featurizer.warm_up()
engine = db.create_engine(url)
catalogue.clear(engine)
with engine.begin() as conn:
    conn.exec_driver_sql("DELETE FROM embedding_space")
after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
report = ingest.ingest(engine, ingest.scan_folder(folder), featurizer, commit_every=int(batch) * 8)
print(json.dumps({"images": report.embedded, "seconds": round(time.perf_counter() - started, 1),
                  "max_rss_after_model_mb": round(after_load / 1024, 1),
                  "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def peak_memory(url: str, source: list[Path], work: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """Max RSS of a fresh process that ingests ``count`` images (links to ``source``, distinct SKUs)."""
    folder = work / f"memory-{count}"
    for i in range(count):
        src = source[i % len(source)]
        target = folder / src.parent.name / f"{src.stem}-{i}{src.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(src.resolve())
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, url, str(folder), args.weights, str(args.memory_batch), args.precision],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=EXAMPLES, help="<class>/<image> folder (labels: folders)")
    parser.add_argument("--limit", type=int, help="use an evenly spaced subset of this many images of --images")
    parser.add_argument("--large", type=int, default=24, help="how many large photos to generate")
    parser.add_argument("--large-size", default="3000x4000", help="large photo size WIDTHxHEIGHT")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--precision", default="float32", help="precision of the end-to-end runs")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per model-only measurement")
    parser.add_argument("--memory-batch", type=int, default=4, help="batch size of the peak-memory runs")
    parser.add_argument("--full", action="store_true", help="peak memory with the default batch size (32)")
    parser.add_argument("--query-images", type=int, default=50, help="queries for query-by-image latency")
    parser.add_argument("--home", type=Path, default=Path("/tmp/imgsearch-bench-ingest"), help="throwaway server")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="embedding cache (outside the repo)")
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--max-wait", type=float, default=900, help="longest wait for a quiet machine (s)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: e2e,large,compare,memory,query")
    parser.add_argument("--name", default="ingest", help="result file name")
    args = parser.parse_args(argv)
    if args.full:
        args.memory_batch = 32
    skip = set(filter(None, args.skip.split(",")))
    width, height = (int(x) for x in args.large_size.lower().split("x"))

    from imgsearch import db, schema
    from imgsearch.embedding import Featurizer

    paths = subset(image_folder(args.images)[0], args.limit)
    url = start_server(args.home)
    engine = db.create_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    work = Path(tempfile.mkdtemp(prefix="imgsearch-bench-ingest-"))

    quiet = {"quiet": None, "load_at_start": load_average()} if args.no_wait else wait_for_quiet(max_wait=args.max_wait)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result: dict[str, Any] = {"benchmark": "ingest", "started": started, "commit": git_commit(), "machine": machine()}
    result["load_before"] = quiet
    ceiling = matmul_gflops()
    log(f"matmul: {ceiling}")
    result["matmul_gflops"] = ceiling
    featurizers = {}
    model: dict[str, Any] = {}
    for precision in ("float32", "bfloat16"):
        f = Featurizer(weights=args.weights, batch_size=args.batch_size, precision=precision)
        featurizers[precision] = f
        ips = model_only(f, args.batch_size, args.seconds)
        model[precision] = {
            "images_per_s": round(ips, 2),
            "gflops": round(ips * VGG16_GFLOP, 1),
            "ratio_to_ceiling": round(ips / ceiling["ceiling_images_per_s"], 3),
        }
        log(f"model only {precision}: {model[precision]}")
    model["bf16_speedup"] = round(model["bfloat16"]["images_per_s"] / model["float32"]["images_per_s"], 2)
    result["model_only"] = model

    featurizer = featurizers[args.precision]
    e2e: dict[str, Any] = {}
    if "e2e" not in skip:
        e2e["images"] = end_to_end(url, featurizer, args.images, paths)
        e2e["images"]["folder"] = str(args.images) + (f" ({len(paths)} evenly spaced)" if args.limit else "")
        log(f"end to end, {args.images}: {e2e['images']}")
    if "large" not in skip:
        large = make_large_photos(paths, work / "large", args.large, (width, height))
        e2e["large"] = end_to_end(url, featurizer, large)
        e2e["large"]["folder"] = f"{args.large} JPEGs {width}x{height} (quality 90) upscaled from {args.images}"
        log(f"end to end, large photos: {e2e['large']}")
    for part in e2e.values():
        part["ratio_to_model_only"] = round(part["images_per_s"] / model[args.precision]["images_per_s"], 3)
    if e2e:
        # The machine may be shared: measure the model and the ceiling again after the end-to-end runs, and
        # compare end to end with the mean of the model-only rates before and after.
        again = model_only(featurizer, args.batch_size, args.seconds)
        after = matmul_gflops()
        mean = (again + model[args.precision]["images_per_s"]) / 2
        model[f"{args.precision}_after_end_to_end"] = {
            "images_per_s": round(again, 2),
            "gflops": round(again * VGG16_GFLOP, 1),
            "ratio_to_ceiling": round(again / after["ceiling_images_per_s"], 3),
        }
        result["matmul_gflops_after_end_to_end"] = after
        for part in e2e.values():
            part["ratio_to_mean_model_only"] = round(part["images_per_s"] / mean, 3)
        log(f"model only again: {again:.2f} images/s; matmul {after}")
    result["end_to_end"] = {"precision": args.precision, "batch_size": args.batch_size, **e2e}
    if "query" not in skip:
        if "e2e" in skip:
            end_to_end(url, featurizer, args.images, paths)
        result["query_by_image"] = {
            p: query_latency(url, featurizers[p], paths, args.query_images) for p in ("float32", "bfloat16")
        }
        log(f"query by image: {result['query_by_image']}")
    # The catalogue of the last end-to-end run stays; the query latency searched it.
    featurizers.clear()
    if "memory" not in skip:
        result["peak_memory"] = {
            "batch_size": args.memory_batch,
            "precision": args.precision,
            **{
                f"{m}x_batch": peak_memory(url, paths, work, m * args.memory_batch, args) | {"factor": m}
                for m in (10, 100)
            },
        }
        log(f"peak memory: {result['peak_memory']}")
    # The bf16/fp32 comparison reuses (or fills) the embedding cache; not timed, so done last.
    comparison = None
    if "compare" not in skip:
        v32, _, labels = cached_embeddings(
            args.images, "float32", args.cache_dir, args.weights, args.batch_size, args.limit
        )
        v16, _, labels16 = cached_embeddings(
            args.images, "bfloat16", args.cache_dir, args.weights, args.batch_size, args.limit
        )
        assert labels == labels16
        comparison = compare_precisions(v32, v16, labels)
        log(f"bf16 vs fp32: {comparison}")

    result["bf16_vs_fp32"] = comparison
    result["load_after"] = load_average()
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result["images"] = {"folder": str(args.images), "used": len(paths)}
    result["command"] = "python -m benchmarks.ingest " + " ".join(argv if argv is not None else sys.argv[1:])
    stop_server(args.home)
    shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = write_results(args.name, result, markdown(result))
    log(f"wrote {json_path} and {md_path}")


def markdown(r: dict[str, Any]) -> str:
    """The result as Markdown tables."""
    m, c = r["machine"], r["matmul_gflops"]
    lines = [
        "# Ingestion benchmark",
        "",
        f"{r['started']} on {m['cpu']}, {m['cores']} cores ({', '.join(m.get('cpu_features', []))}), "
        f"{m.get('memory_gib')} GiB; commit {r['commit']}. Load average before {r['load_before']['load_at_start']}, "
        f"after {r['load_after']}. Command: `{r['command']}`.",
        "",
        "## Model against the CPU's ceiling",
        "",
        f"float32 matmul: NumPy {c['numpy']} GFLOP/s, TensorFlow {c['tensorflow']} GFLOP/s; ceiling "
        f"{c['ceiling']} GFLOP/s / {VGG16_GFLOP} GFLOP per image = {c['ceiling_images_per_s']} images/s"
        + (
            f"; after the end-to-end runs: {r['matmul_gflops_after_end_to_end']['ceiling']} GFLOP/s."
            if "matmul_gflops_after_end_to_end" in r
            else "."
        ),
        "",
    ]
    rows = [
        [p, v["images_per_s"], v["gflops"], f"{v['ratio_to_ceiling']:.2f}"]
        for p, v in r["model_only"].items()
        if isinstance(v, dict)
    ]
    lines += [md_table(["precision", "images/s", "GFLOP/s", "ratio to fp32 ceiling"], rows)]
    lines += ["", f"bf16 / fp32 speed-up: {r['model_only']['bf16_speedup']}x", ""]
    e2e = r["end_to_end"]
    rows = [
        [
            v["folder"],
            v["images"],
            v["seconds"],
            v["images_per_s"],
            f"{v['ratio_to_model_only']:.2f}",
            f"{v['ratio_to_mean_model_only']:.2f}" if "ratio_to_mean_model_only" in v else "-",
        ]
        for k, v in e2e.items()
        if isinstance(v, dict)
    ]
    if rows:
        lines += [f"## End to end ({e2e['precision']}, batch {e2e['batch_size']})", ""]
        lines += [
            md_table(
                ["images", "count", "seconds", "images/s", "ratio to model only", "ratio to mean of before/after"],
                rows,
            ),
            "",
        ]
    if r.get("bf16_vs_fp32"):
        b = r["bf16_vs_fp32"]
        lines += ["## bfloat16 against float32", ""]
        lines += [
            md_table(
                ["images", "mean cosine", "min cosine", "top-10 overlap", "precision@5 fp32", "precision@5 bf16"],
                [
                    [
                        b["images"],
                        b["mean_cosine"],
                        b["min_cosine"],
                        b["top10_overlap"],
                        b["precision_at_5_fp32"],
                        b["precision_at_5_bf16"],
                    ]
                ],
            ),
            "",
        ]
    if r.get("query_by_image"):
        lines += ["## Query by image (warm model, decode + embed + search)", ""]
        rows = [[p, v["p50_ms"], v["p95_ms"], v["queries"]] for p, v in r["query_by_image"].items()]
        lines += [md_table(["precision", "p50 ms", "p95 ms", "queries"], rows), ""]
    if r.get("peak_memory"):
        pm = r["peak_memory"]
        lines += [f"## Peak memory of an ingest (batch {pm['batch_size']}, {pm['precision']}, fresh process)", ""]
        rows = [
            [f"{v['factor']}x batch", v["images"], v["max_rss_after_model_mb"], v["max_rss_mb"], v["seconds"]]
            for v in pm.values()
            if isinstance(v, dict)
        ]
        lines += [md_table(["run", "images", "max RSS after model load MB", "max RSS MB", "seconds"], rows)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
