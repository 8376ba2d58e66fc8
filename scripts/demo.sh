#!/usr/bin/env bash
# Installs everything and runs the main job end to end on the embedded database: migrate, ingest the sample
# catalogue, search with one of its photos (writing a contact sheet), then ask for cheaper look-alikes.
# The demo keeps its own embedded server in out/demo-home, so it never touches your catalogue.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh)"
export IMGSEARCH_HOME="$PWD/out/demo-home"
imgsearch() { .venv/bin/imgsearch "$@"; }

imgsearch db upgrade
imgsearch ingest --manifest examples/products.csv
imgsearch stats
photo=examples/catalogue/shoes/24535295-abe3-4613-91f6-a7fe87954662.jpg
echo
echo "Products that look like $photo:"
imgsearch search "$photo" -k 5 --sheet out/demo-results.png
echo
echo "Cheaper look-alikes of dress-19e4de0d (79.99), in stock:"
imgsearch cheaper dress-19e4de0d -k 3
echo
echo "The demo's server keeps running for psql or a backend:"
echo "  IMGSEARCH_HOME=out/demo-home .venv/bin/imgsearch db url    # its URL"
echo "  IMGSEARCH_HOME=out/demo-home .venv/bin/imgsearch db stop   # stop it"
