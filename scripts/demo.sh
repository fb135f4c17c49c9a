#!/usr/bin/env bash
# Sets up a fresh machine and runs Skiff's main job on the bundled example:
# the `examples/hello` pipeline, every step a sandboxed WebAssembly component.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p skiff
skiff="$PWD/target/release/skiff"
"$skiff" step inspect diag
ws=$(mktemp -d)
cd examples/hello
"$skiff" validate .skiff/pipeline.yaml
"$skiff" run --workspace "$ws" --secret GREETING_TOKEN=demo-token-123
