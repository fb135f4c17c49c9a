#!/bin/sh
# Builds step.wasm from app.py (and the modules beside it) for the world in wit/python.wit.
# Needs componentize-py on PATH: `pip install -r requirements.txt`, in a virtual environment.
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null 2>&1; then
  echo "componentize-py is not on PATH: run \`pip install -r requirements.txt\` (in a virtual environment), then ./build.sh" >&2
  exit 1
fi
exec componentize-py -d wit -w step-python componentize app -o step.wasm
