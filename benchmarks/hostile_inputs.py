"""The hostile inputs of the least-privilege/robustness review, re-run as a user would: exit status, the first line
said, whether a traceback appeared, peak memory and time of each command; HTTP status of each hostile request; and
which database roles every everyday command connected as (``log_connections``).

Each probe runs the installed ``imgsearch`` command in its own process (``--weights fake``: no model, so the
memory is the command's own) against a throwaway embedded server. The test suite asserts the same behaviours
(tests/test_hostile.py, tests/test_service.py, tests/test_embedded.py); this script records the measurements.
Results in ``benchmarks/results/hostile-inputs.{json,md}``.

    .venv/bin/python -m benchmarks.hostile_inputs
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.common import EXAMPLES, git_commit, load_average, log, machine, md_table, write_results
from imgsearch import embedded_server, urls

IMGSEARCH = [sys.executable, "-m", "imgsearch"]
#: A probe that runs longer than this is a hang.
TIMEOUT = 120


#: Runs a command and reports its peak resident memory on the last stderr line: a process of its own per probe,
#: so that the children's peak is that command's alone.
_MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('__peak_kb=%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(r.returncode)"
)


def _run(env: dict[str, str], args: list[str], stdin: Any = None) -> dict[str, Any]:
    """Run one command in its own process: status, first stderr line, traceback, peak memory (MB), seconds."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, *IMGSEARCH, *args],
            env=env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        status, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        status, stderr = "hang", (exc.stderr or b"").decode(errors="replace") if exc.stderr else ""
    seconds = time.perf_counter() - started
    lines = [line for line in stderr.splitlines() if line.strip()]
    peak = [line for line in lines if line.startswith("__peak_kb=")]
    lines = [line for line in lines if not line.startswith("__peak_kb=")]
    return {
        "args": " ".join(args),
        "status": status,
        "first_line": lines[0][:140] if lines else "",
        "stderr_lines": len(lines),
        "traceback": "Traceback" in stderr,
        "peak_mb": round(int(peak[-1].split("=")[1]) / 1024, 1) if peak else None,
        "seconds": round(seconds, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="imgsearch-hostile-"))
    work = Path(tempfile.mkdtemp(prefix="imgsearch-hostile-files-"))
    env = {**os.environ, "IMGSEARCH_HOME": str(home), "IMGSEARCH_VGG16_WEIGHTS": "fake"}
    env.pop("IMGSEARCH_DATABASE_URL", None)
    before = load_average()
    probes: list[dict[str, Any]] = []
    http: list[dict[str, Any]] = []
    try:
        subprocess.run([*IMGSEARCH, "db", "upgrade"], env=env, check=True, capture_output=True)
        url = embedded_server.start(home)
        with psycopg.connect(urls.libpq_url(url, show_password=True), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_connections = 'authorization'")
            conn.execute("SELECT pg_reload_conf()")
        log_file = embedded_server.data_dir(home) / "log"
        seen = log_file.stat().st_size
        shop = work / "shop"
        for category in ("dress", "hat", "shoes"):
            shutil.copytree(EXAMPLES / category, shop / category)
        hat = "hat/" + sorted((shop / "hat").glob("*.jpg"))[0].stem
        photo = sorted((shop / "hat").glob("*.jpg"))[0]
        hats = sorted((shop / "hat").glob("*.jpg"))
        (work / "hat-price.csv").write_text(
            "sku,price\n" + "".join(f"hat/{p.stem},{10 + i}\n" for i, p in enumerate(hats))
        )

        log("everyday commands")
        everyday = [
            ["ingest", "--quiet", str(shop)],
            ["stats"],
            ["stock", "--out", hat],
            ["stock", "--csv", str(work / "hat-price.csv")],
            ["search", str(photo), "-k", "3"],
            ["similar", hat, "-k", "3"],
            ["cheaper", f"hat/{hats[-1].stem}", "-k", "3"],
            ["duplicates"],
            ["index", "auto", "--min-products", "12"],
            ["tune", "--quiet"],
            ["tune", "--drop"],
            ["eval", str(shop), "-k", "3"],
        ]
        for args in everyday:
            probes.append({"kind": "everyday", **_run(env, args)})
        with log_file.open(errors="replace") as fh:
            fh.seek(seen)
            sessions = [line for line in fh if "connection authorized" in line]
        roles = sorted({line.split("user=")[1].split()[0] for line in sessions})
        superuser_sessions = sum("user=postgres" in line for line in sessions)

        log("endless and oversized inputs")
        twice = work / "twice.csv"
        twice.write_text(f"sku,sku,category,image\na,b,hat,{photo}\n")
        prices = work / "prices.csv"
        full_width_twelve = "\uff11\uff12"
        prices.write_text(f"sku,category,price,image\nu,hat,1_000,{photo}\nw,hat,{full_width_twelve},{photo}\n")
        quoted = work / "quoted.csv"
        quoted.write_text(f'sku,category,image\n"two\nlines",hat,{photo}\n')
        big = work / "big.png"
        from PIL import Image

        Image.new("1", (10_000, 10_000)).save(big)
        with open("/dev/zero", "rb") as zero:
            probes.append({"kind": "hostile", **_run(env, ["ingest", "-q", "--manifest", "/dev/zero"])})
            probes.append({"kind": "hostile", **_run(env, ["stock", "--csv", "/dev/zero"])})
            probes.append({"kind": "hostile", **_run(env, ["search", "-"], stdin=zero)})
        for args in (
            ["ingest", "-q", "--manifest", str(twice)],
            ["ingest", "-q", "--manifest", str(prices)],
            ["ingest", "-q", "--manifest", str(quoted)],
            ["search", str(big)],
        ):
            probes.append({"kind": "hostile", **_run(env, args)})

        log("hostile HTTP requests")
        port = _free_port()
        server = subprocess.Popen(
            [*IMGSEARCH, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            requests = [
                ("GET", "/products/a%00b/similar", None),
                ("GET", f"/products/{hat}/similar?category=%00", None),
                ("POST", "/search", {"vector": [0.1] * 512, "category": "x\x00y"}),
                ("POST", "/search", b"[" * 100_000 + b"]" * 100_000),
                ("POST", "/events", {"events": [{"event_id": "a\x00", "kind": "click", "search_id": "s"}]}),
                ("POST", "/search", {"vector": [float("nan")] * 512}),
            ]
            for method, path, body in requests:
                if isinstance(body, bytes):
                    response = httpx.request(
                        method, base + path, content=body, headers={"content-type": "application/json"}, timeout=30
                    )
                elif body is None:
                    response = httpx.request(method, base + path, timeout=30)
                else:
                    data = json.dumps(body, allow_nan=True)
                    response = httpx.request(
                        method, base + path, content=data, headers={"content-type": "application/json"}, timeout=30
                    )
                text = response.text
                http.append(
                    {
                        "request": f"{method} {path}" + (f" ({len(body)} bytes)" if isinstance(body, bytes) else ""),
                        "status": response.status_code,
                        "body": text[:100],
                        "traceback": "Traceback" in text,
                    }
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        home_mode = oct(home.stat().st_mode & 0o777)
    finally:
        embedded_server.stop(home)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    after = load_average()
    result = {
        "commit": git_commit(),
        "machine": machine(),
        "load_before": before,
        "load_after": after,
        "probes": probes,
        "http": http,
        "roles_seen": roles,
        "superuser_sessions": superuser_sessions,
        "home_mode": home_mode,
    }
    rows = [
        [
            f"`imgsearch {p['args'].replace(str(work) + '/', '')}`"[:90],
            p["status"],
            p["first_line"].replace("|", "/")[:90],
            "yes" if p["traceback"] else "no",
            p["peak_mb"],
            p["seconds"],
        ]
        for p in probes
    ]
    http_rows = [
        [h["request"], h["status"], h["body"].replace("|", "/"), "yes" if h["traceback"] else "no"] for h in http
    ]
    m = result["machine"]
    markdown = "\n\n".join(
        [
            "# Hostile inputs and least privilege, re-run",
            f"Commit {result['commit']}, {m.get('cpu', '?')}, {m.get('cores', '?')} cores, load {before} before, "
            f"{after} after. Every command in its own process with `--weights fake` (no model); peak MB is its largest "
            "resident size.",
            md_table(["command", "exit", "first line on stderr", "traceback", "peak MB", "s"], rows),
            md_table(["request", "status", "body", "traceback"], http_rows),
            f"Roles the everyday commands connected as (log_connections): {', '.join(roles)}; superuser sessions: "
            f"{superuser_sessions}. The home folder's mode after the server's start as {getpass.getuser()}: "
            f"{home_mode}.",
            "Command: `python -m benchmarks.hostile_inputs`",
        ]
    )
    json_path, md_path = write_results("hostile-inputs", result, markdown)
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
