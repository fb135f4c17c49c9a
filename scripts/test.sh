#!/usr/bin/env bash
# The whole test suite, lints included. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== fmt";    cargo fmt --all --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
echo "== edge core builds for the edge targets"
cargo build -q -p skiff-edge-core --target wasm32-unknown-unknown
cargo build -q -p skiff-edge-core --target wasm32-wasip2
export SKIFF_S3S_FS="$PWD/target/tools/bin/s3s-fs"
echo "== tests"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
