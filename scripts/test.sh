#!/usr/bin/env bash
# Installs everything and runs the whole test suite (lint, then pytest) against a throwaway embedded PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup.sh)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
