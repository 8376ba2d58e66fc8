#!/usr/bin/env bash
# Proves the package works without the repository: builds the wheel, installs it into a fresh virtualenv
# outside the checkout, and from there runs the main job on a throwaway embedded PostgreSQL: migrate, ingest
# the sample catalogue, search by photo, cheaper look-alikes. Needs .venv (scripts/setup.sh) for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh)"
work="$(mktemp -d /tmp/imgsearch-wheel.XXXXXX)"
cleanup() {
    IMGSEARCH_HOME="$work/home" "$work/venv/bin/imgsearch" db stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
quietly() {  # run a step, showing its output only if it fails
    if ! "$@" >"$work/step.log" 2>&1; then cat "$work/step.log" >&2; exit 1; fi
}

quietly .venv/bin/python -m pip wheel --no-deps --wheel-dir "$work/dist" .
quietly python3 -m venv "$work/venv"
quietly "$work/venv/bin/python" -m pip install "$work"/dist/imgsearch-*.whl
cp -r examples "$work/shop"
cd "$work"
export IMGSEARCH_HOME="$work/home"
imgsearch() { "$work/venv/bin/imgsearch" "$@"; }

# The package found its migrations and SQL in site-packages, not in a checkout.
"$work/venv/bin/python" - <<'PY'
import imgsearch.migrations, imgsearch.sql, sys
for module in (imgsearch.migrations, imgsearch.sql):
    assert "site-packages" in str(module.__path__[0]), module.__path__
print("installed package:", imgsearch.sql.__path__[0].rsplit("/imgsearch/", 1)[0])
PY
imgsearch db upgrade
imgsearch ingest --manifest shop/products.csv --quiet
imgsearch search shop/catalogue/shoes/24535295-abe3-4613-91f6-a7fe87954662.jpg -k 3 --format json > search.json
imgsearch cheaper dress-19e4de0d -k 3 --format json > cheaper.json
"$work/venv/bin/python" - <<'PY'
import json
search = json.load(open("search.json"))
cheaper = json.load(open("cheaper.json"))
assert search[0]["sku"] == "shoes-24535295" and search[0]["distance"] < 1e-4, search
assert len(search) == 3
assert cheaper and all(r["price"] < 79.99 and r["in_stock"] for r in cheaper), cheaper
print(f"search: {[r['sku'] for r in search]}; cheaper than dress-19e4de0d: {[r['sku'] for r in cheaper]}")
PY
echo "wheel check passed: migrate, ingest, search and cheaper from an installed wheel"
