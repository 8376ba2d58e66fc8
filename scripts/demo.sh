#!/usr/bin/env bash
# Installs everything and runs the main job end to end on the embedded database: migrate, ingest the sample
# catalogue, then search with one of its photos and write a contact sheet of the matches.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh)"
imgsearch=.venv/bin/imgsearch
$imgsearch db upgrade
$imgsearch ingest examples/catalogue
$imgsearch stats
query=examples/catalogue/shoes/1b0f0b6a-7b32-4a57-a4d5-22e7b70e1c27.jpg
echo "Products that look like $query:"
$imgsearch search "$query" -k 5 --sheet demo-results.png
sku=$(.venv/bin/python - <<'PY'
import json, subprocess
rows = json.loads(subprocess.check_output([".venv/bin/imgsearch", "stats", "--format", "json"]))
PY
)
echo "The embedded server keeps running for psql or a backend: '$imgsearch db url' prints its URL,"
echo "'$imgsearch db stop' stops it."
