"""Runtimes benchmark: VGG16 images/s for each precision and runtime against this CPU's FLOP ceiling, and whether
their vectors are interchangeable in one catalogue.

Measured in one run, each configuration in a process of its own (so that TensorFlow's oneDNN can be limited to
AVX2 in one of them, and each start-up is a real one):

* the configurations: TensorFlow float32; TensorFlow float32 with oneDNN limited to AVX2
  (``ONEDNN_MAX_CPU_ISA=AVX2``, only on CPUs with AVX-512: what TensorFlow's kernels do on an AVX2-only CPU);
  TensorFlow bfloat16 (only where the CPU has native bfloat16); ONNX Runtime float32;
* speed: ``Featurizer.embed_arrays`` on batches of 32 of the first ``--speed-images`` photos of ``--images``
  (224x224, decoded once, the default pipeline), after a warm-up pass over them; the configurations take
  turns, one pass over the photos each, for ``--rounds`` rounds, so that the load of a shared machine falls on
  all of them alike; the median images/s of the rounds. NumPy's float32 matrix multiply (2048x2048) takes its
  turn too (``--gemm-seconds``): what a plain GEMM reaches on these cores in the same conditions;
* the FLOP ceiling: VGG16's convolutions up to ``block5_conv3`` cost :data:`GMAC_PER_IMAGE` multiply-adds per
  224x224 image (counted from the layer shapes), 2 FLOPs each; the CPU's peak is cores x GHz x FLOPs per
  cycle for the precision, with the GHz and FLOPs per cycle assumed by :func:`peak` from /proc/cpuinfo and
  lscpu (recorded in the result); each configuration's share of it;
* start-up: seconds from the worker process's start to a ready featurizer (the ONNX graph already converted),
  and its peak RSS after the warm-up pass (batches of 32);
* agreement: every photo of ``--images`` embedded by each configuration but the AVX2 one (the same graph as
  TensorFlow float32, other kernels) and cached in ``--cache-dir``; cosine of
  each configuration's vectors to TensorFlow float32's (min, median), and the top-10 overlap of cosine k-NN
  within the set (each photo's 10 nearest others by TensorFlow float32 vectors against by the other's).

Results go to ``benchmarks/results/runtimes.json`` and ``.md``. Run from the repository root::

    .venv/bin/python -m benchmarks.runtimes --images ../shared/datasets/myntra-fashion-products
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from benchmarks.common import (
    DEFAULT_CACHE,
    git_commit,
    image_folder,
    load_average,
    log,
    machine,
    md_table,
    write_results,
)

#: VGG16's 13 convolutions (3x3, "same" padding) on a 224x224 image: (map side, input channels, output channels).
_CONVOLUTIONS = (
    (224, 3, 64), (224, 64, 64),
    (112, 64, 128), (112, 128, 128),
    (56, 128, 256), (56, 256, 256), (56, 256, 256),
    (28, 256, 512), (28, 512, 512), (28, 512, 512),
    (14, 512, 512), (14, 512, 512), (14, 512, 512),
)  # fmt: skip
#: Multiply-adds per 224x224 image, up to block5_conv3 (the pooling layers have none).
GMAC_PER_IMAGE = sum(side * side * 9 * c_in * c_out for side, c_in, c_out in _CONVOLUTIONS) / 1e9
GFLOP_PER_IMAGE = 2 * GMAC_PER_IMAGE
BATCH = 32

#: name -> (runtime, precision, extra environment of the worker)
CONFIGURATIONS: dict[str, tuple[str, str, dict[str, str]]] = {
    "TensorFlow float32": ("tensorflow", "float32", {}),
    "TensorFlow float32, oneDNN AVX2 only": ("tensorflow", "float32", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "TensorFlow bfloat16": ("tensorflow", "bfloat16", {}),
    "ONNX Runtime float32": ("onnxruntime", "float32", {}),
}
REFERENCE = "TensorFlow float32"


def cpu_flags() -> set[str]:
    """The CPU's feature flags, as /proc/cpuinfo names them."""
    text = Path("/proc/cpuinfo").read_text()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def peak(ghz: float | None = None) -> dict[str, Any]:
    """This CPU's peak GFLOP/s per precision: cores x GHz x FLOPs per cycle, and what that assumes.

    FLOPs per cycle and core (2 per fused multiply-add lane): AMD Zen 2-4 have two 256-bit FMA pipes (Zen 4 runs
    AVX-512 on them in two halves): 32 float32; Zen 4's AVX512-BF16 dot products do twice the lanes: 64. Zen 1
    has two 128-bit pipes: 16. Intel with AVX-512 is assumed to have two 512-bit FMA units (Xeon Gold and
    Platinum; Silver and Bronze have one): 64 float32, 128 with AVX512-BF16, and AMX-BF16 tiles 1024 bfloat16.
    Intel with AVX2 only: 32. The clock is ``ghz`` when given (the CPU's maximum boost, from its vendor), else
    lscpu's "CPU max MHz" when it shows one, else /proc/cpuinfo's "cpu MHz" (under a hypervisor the nominal
    clock, which the cores may boost well above: give ``--ghz`` there).
    """
    info = Path("/proc/cpuinfo").read_text().splitlines()
    field = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in reversed(info) if ":" in line}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    lscpu_field = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lscpu if ":" in line}
    flags, vendor, family = cpu_flags(), field.get("vendor_id", ""), int(field.get("cpu family", "0"))
    if ghz is not None:
        clock = "given (--ghz)"
    elif lscpu_field.get("CPU max MHz"):
        ghz, clock = float(lscpu_field["CPU max MHz"]) / 1000, "lscpu CPU max MHz"
    else:
        ghz, clock = float(field.get("cpu MHz", "0")) / 1000, "/proc/cpuinfo cpu MHz (nominal; no max MHz shown)"
    if vendor == "AuthenticAMD":
        fp32 = 16 if family == 0x17 and int(field.get("model", "0")) < 0x30 else 32
        if family >= 0x1A and "avx512f" in flags:
            fp32 = 64  # Zen 5: full-width AVX-512
        core = f"AMD family {family:#x} model {int(field.get('model', '0')):#x}"
        bf16 = 2 * fp32 if "avx512_bf16" in flags else None
    else:
        fp32 = 64 if "avx512f" in flags else 32
        core = f"{vendor} {'AVX-512, two FMA units assumed' if 'avx512f' in flags else 'AVX2'}"
        bf16 = 1024 if "amx_bf16" in flags else (2 * fp32 if "avx512_bf16" in flags else None)
    cores = os.cpu_count() or 1
    per_precision = {"float32": fp32} | ({"bfloat16": bf16} if bf16 else {})
    return {
        "cores": cores,
        "ghz": round(ghz, 3),
        "clock_from": clock,
        "core": core,
        "flops_per_cycle": per_precision,
        "gflops": {p: round(cores * ghz * f, 1) for p, f in per_precision.items()},
        "images_per_s": {p: round(cores * ghz * f / GFLOP_PER_IMAGE, 2) for p, f in per_precision.items()},
    }


def configurations() -> dict[str, tuple[str, str, dict[str, str]]]:
    """The configurations this CPU can run meaningfully (see the module's docstring)."""
    flags = cpu_flags()
    skip = set()
    if "avx512f" not in flags:
        skip.add("TensorFlow float32, oneDNN AVX2 only")  # the same as TensorFlow float32 there
    if not flags & {"avx512_bf16", "amx_bf16"}:
        skip.add("TensorFlow bfloat16")  # emulated, slower than float32
    return {name: config for name, config in CONFIGURATIONS.items() if name not in skip}


# --- the worker: one featurizer in a process of its own, driven by JSON lines on stdin/stdout ---------------


def worker(runtime: str, precision: str, weights: str, batch_file: str) -> None:
    """Load a featurizer, report the start-up, then answer ``speed`` and ``embed`` requests until stdin closes."""
    # Only the protocol goes to stdout; anything else a library prints goes to stderr.
    protocol: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from imgsearch.embedding import Featurizer

    featurizer = Featurizer(weights=weights, batch_size=BATCH, precision=precision, runtime=runtime)
    startup = time.time() - float(os.environ["RUNTIMES_WORKER_STARTED"])
    assert (featurizer.runtime, featurizer.precision) == (runtime, precision)
    images = np.load(batch_file)
    featurizer.embed_arrays(images)  # warm-up: graph traced, memory allocated
    ready = {
        "startup_s": round(startup, 2),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(ready), file=protocol)
    for line in sys.stdin:
        request = json.loads(line)
        if request["do"] == "speed":
            begun = time.perf_counter()
            featurizer.embed_arrays(images)  # batches of BATCH
            print(json.dumps({"images_per_s": len(images) / (time.perf_counter() - begun)}), file=protocol)
        elif request["do"] == "embed":
            paths = [Path(p) for p in request["paths"]]
            vectors = np.zeros((len(paths), 512), np.float32)
            ok = np.zeros(len(paths), bool)
            for i, result in enumerate(featurizer.embed_files(paths)):
                if result.vector is not None:
                    vectors[i], ok[i] = result.vector, True
            np.savez(request["out"], vectors=vectors, ok=ok)
            print(json.dumps({"done": True}), file=protocol)


class Worker:
    """The driver's handle on a worker process."""

    def __init__(self, name: str, weights: str, batch_file: Path) -> None:
        runtime, precision, environment = CONFIGURATIONS[name]
        self.name = name
        env = {**os.environ, **environment, "RUNTIMES_WORKER_STARTED": repr(time.time())}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.runtimes", "--worker", runtime, precision, weights, str(batch_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.ready = self.answer()

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name!r} died (exit code {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self.process.wait()


def numpy_gemm(seconds: float, size: int = 2048) -> float:
    """float32 GFLOP/s of NumPy's matrix multiply, in this (the driver's) process."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    n, begun = 0, time.perf_counter()
    while time.perf_counter() - begun < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - begun) / 1e9


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosines between two embeddings of the same photos and the overlap of each photo's k nearest others."""
    cosines = (reference * other).sum(axis=1)

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    overlap = [len(set(a) & set(b)) / k for a, b in zip(neighbours(reference), neighbours(other), strict=True)]
    return {
        "photos": len(cosines),
        "min_cosine": round(float(cosines.min()), 7),
        "median_cosine": round(float(np.median(cosines)), 7),
        "top10_overlap": round(float(np.mean(overlap)), 4),
        "top10_overlap_min": round(float(np.min(overlap)), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="<class>/<image> folder (the Myntra photos); required")
    parser.add_argument("--speed-images", type=int, default=256, help="photos in the speed measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every configuration")
    parser.add_argument("--gemm-seconds", type=float, default=10.0, help="seconds per turn of the NumPy GEMM")
    parser.add_argument("--limit", type=int, help="agreement on the first LIMIT photos only (default: all)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="embedding cache (outside the repo)")
    parser.add_argument("--weights", default=os.environ.get("IMGSEARCH_VGG16_WEIGHTS", "imagenet"))
    parser.add_argument("--ghz", type=float, help="the CPU's maximum clock, when lscpu does not show it")
    parser.add_argument("--name", default="runtimes", help="result file name")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    if args.images is None:
        parser.error("--images is required")

    from imgsearch import onnx_runtime
    from imgsearch.embedding import DEFAULT_PIPELINE

    paths = image_folder(args.images)[0][: args.limit]
    names = configurations()
    result: dict[str, Any] = {
        "benchmark": "runtimes",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "machine": machine(),
        "lscpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
                if line.startswith("Model name")
            ),
            "unknown",
        ),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.runtimes", *(argv or sys.argv[1:])]),
        "load_before": load_average(),
        "gmac_per_image": round(GMAC_PER_IMAGE, 3),
        "peak": peak(args.ghz),
    }
    log(f"peak: {result['peak']}")
    cached = onnx_runtime.cached_path(args.weights, DEFAULT_PIPELINE.layer)
    if cached is None or not cached.exists():
        log("converting the weights for ONNX Runtime first, so that its start-up is measured with the cached graph")
        convert = (
            "import sys; from imgsearch.embedding import Featurizer; Featurizer(sys.argv[1], runtime='onnxruntime')"
        )
        subprocess.run([sys.executable, "-c", convert, args.weights], check=True)

    with tempfile.TemporaryDirectory(prefix="imgsearch-runtimes-") as work:
        # The speed photos, decoded once as the default pipeline does, for all the workers.
        batch_file = Path(work) / "batch.npy"
        decode = DEFAULT_PIPELINE.preprocessing.decode
        np.save(batch_file, np.stack([decode(p) for p in paths[: args.speed_images]]).astype(np.float32))
        workers = {}
        for name in names:
            log(f"starting {name}")
            workers[name] = Worker(name, args.weights, batch_file)
            log(f"{name}: {workers[name].ready}")
        speeds: dict[str, list[float]] = {name: [] for name in [*names, "NumPy GEMM"]}
        for round_ in range(args.rounds):
            for name, handle in workers.items():
                speeds[name].append(handle.ask(do="speed")["images_per_s"])
            speeds["NumPy GEMM"].append(numpy_gemm(args.gemm_seconds))
            log(f"round {round_ + 1}: { ({n: round(v[-1], 2) for n, v in speeds.items()}) }, load {load_average()}")
        result["load_after_speed"] = load_average()

        vectors: dict[str, np.ndarray] = {}
        ok = np.ones(len(paths), bool)
        for name, handle in workers.items():
            if CONFIGURATIONS[name][2]:
                continue  # same graph and precision as TensorFlow float32, other kernels: speed only
            cache = _vectors_cache(args.cache_dir, paths, args.weights, name)
            if not cache.exists():
                log(f"embedding {len(paths)} photos with {name} (cached in {cache})")
                handle.ask(do="embed", paths=[str(p) for p in paths], out=str(cache))
            data = np.load(cache)
            vectors[name], ok = data["vectors"], ok & data["ok"]
        for handle in workers.values():
            handle.close()

    peak_ = result["peak"]
    rows = {}
    for name, (_, precision, _) in CONFIGURATIONS.items():
        if name not in names:
            continue
        ips = float(np.median(speeds[name]))
        rows[name] = {
            "images_per_s": round(ips, 2),
            "rounds": [round(v, 2) for v in speeds[name]],
            "gflops": round(ips * GFLOP_PER_IMAGE, 1),
            "share_of_peak": round(ips * GFLOP_PER_IMAGE / peak_["gflops"][precision], 3),
            "share_of_float32_peak": round(ips * GFLOP_PER_IMAGE / peak_["gflops"]["float32"], 3),
            "speed_vs_reference": round(ips / float(np.median(speeds[REFERENCE])), 3),
            **workers[name].ready,
        }
    gemm = float(np.median(speeds["NumPy GEMM"]))
    result["numpy_gemm_gflops"] = {"median": round(gemm, 1), "rounds": [round(v, 1) for v in speeds["NumPy GEMM"]]}
    result["numpy_gemm_share_of_float32_peak"] = round(gemm / peak_["gflops"]["float32"], 3)
    result["configurations"] = rows
    result["agreement"] = {
        name: agreement(vectors[REFERENCE][ok], vectors[name][ok]) for name in vectors if name != REFERENCE
    }
    result["load_after"] = load_average()
    log(json.dumps(result["configurations"], indent=1))
    log(json.dumps(result["agreement"], indent=1))
    write_results(args.name, result, markdown(result))


def _vectors_cache(cache_dir: Path, paths: list[Path], weights: str, name: str) -> Path:
    from imgsearch.embedding import DEFAULT_PIPELINE

    runtime, precision, environment = CONFIGURATIONS[name]
    sizes = [p.stat().st_size for p in paths]
    key = repr(([str(p) for p in paths], sizes, weights, DEFAULT_PIPELINE.version, runtime, precision, environment))
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir / f"runtimes-{runtime}-{precision}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def markdown(r: dict[str, Any]) -> str:
    """The tables docs/performance.md quotes."""
    p = r["peak"]
    lines = [
        "# VGG16 runtimes: speed against the FLOP ceiling, and vector agreement",
        "",
        f"Command: `{r['command']}`; commit {r['commit']}; {r['lscpu_model']} ({r['peak']['core']}), "
        f"{p['cores']} cores shared with other work; load average {r['load_before']} before, "
        f"{r['load_after_speed']} after the speed rounds, {r['load_after']} at the end.",
        "",
        f"Ceiling: VGG16 to block5_conv3 = {r['gmac_per_image']} GMAC = {2 * r['gmac_per_image']:.2f} GFLOP per "
        f"224x224 image. Peak = {p['cores']} cores x {p['ghz']} GHz ({p['clock_from']}) x FLOPs/cycle "
        + ", ".join(f"{k} {v}" for k, v in p["flops_per_cycle"].items())
        + " = "
        + ", ".join(f"{k} {v} GFLOP/s ({p['images_per_s'][k]} images/s)" for k, v in p["gflops"].items())
        + f". NumPy float32 GEMM (2048x2048) in the same rounds: {r['numpy_gemm_gflops']['median']} GFLOP/s = "
        f"{r['numpy_gemm_share_of_float32_peak']:.2f} of the float32 peak.",
        "",
        "## Speed (batch 32, 224x224, median of the rounds)",
        "",
        md_table(
            [
                "configuration",
                "images/s",
                "GFLOP/s",
                "share of its precision's peak",
                "share of the float32 peak",
                "vs TensorFlow float32",
                "start-up s",
                "peak RSS MB",
                "rounds",
            ],
            [
                [
                    name,
                    c["images_per_s"],
                    c["gflops"],
                    f"{c['share_of_peak']:.2f}",
                    f"{c['share_of_float32_peak']:.2f}",
                    f"{c['speed_vs_reference']:.2f}x",
                    c["startup_s"],
                    c["max_rss_mb"],
                    " ".join(str(v) for v in c["rounds"]),
                ]
                for name, c in r["configurations"].items()
            ],
        ),
        "",
        "## Vectors against TensorFlow float32 (every photo)",
        "",
        md_table(
            ["configuration", "photos", "min cosine", "median cosine", "top-10 overlap (mean)", "top-10 overlap (min)"],
            [
                [
                    name,
                    a["photos"],
                    f"{a['min_cosine']:.7f}",
                    f"{a['median_cosine']:.7f}",
                    f"{a['top10_overlap']:.4f}",
                    a["top10_overlap_min"],
                ]
                for name, a in r["agreement"].items()
            ],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
