#!/usr/bin/env bash
# Sets up a fresh machine and runs Skiff's main job on the bundled example.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p skiff-host
ws=$(mktemp -d)
./target/release/skiff step inspect diag
./target/release/skiff step run diag --with message="hello from the demo" --dir "$ws"
cat "$ws/skiff-diag.txt"
