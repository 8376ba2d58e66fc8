#!/usr/bin/env bash
# Creates .venv (if missing or stale) and installs imgsearch with its development tools into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # pip's build chatter goes to a log; it is shown only if the install fails.
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[dev]'; } \
        >.venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        exit 1
    fi
    touch "$stamp"
fi
# Here the weights cannot be downloaded; use the copy beside the repository when there is one.
if [ -z "${IMGSEARCH_VGG16_WEIGHTS:-}" ] && [ -f ../shared/models/vgg16_imagenet_notop.h5 ]; then
    echo "export IMGSEARCH_VGG16_WEIGHTS=$(cd ../shared/models && pwd)/vgg16_imagenet_notop.h5"
fi
