#!/usr/bin/env bash
# The whole test suite, lints included. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --edge

# The edge adapters are separate workspaces (their own wasm targets and lockfiles).
cf=(--manifest-path edge-master/cloudflare/Cargo.toml)
spin=(--manifest-path edge-master/spin/Cargo.toml)

echo "== fmt"
cargo fmt --all --check
cargo fmt "${cf[@]}" --check
cargo fmt "${spin[@]}" --check
echo "== clippy"
cargo clippy --workspace --all-targets --features skiff-host/edge-tests -- -D warnings
CARGO_TARGET_DIR=target/edge-cloudflare cargo clippy "${cf[@]}" --target wasm32-unknown-unknown --release -- -D warnings
CARGO_TARGET_DIR=target/edge-spin cargo clippy "${spin[@]}" --target wasm32-wasip2 --release -- -D warnings
# Building both adapters also builds the edge core for wasm32-unknown-unknown and wasm32-wasip2.
echo "== edge masters: the Worker (worker-build) and the Spin component"
scripts/build-edge.sh
export SKIFF_S3S_FS="$PWD/target/tools/bin/s3s-fs"
echo "== tests"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --features skiff-host/edge-tests --no-fail-fast
  cargo test --workspace --doc --features skiff-host/edge-tests
else
  cargo test --workspace --features skiff-host/edge-tests --no-fail-fast
fi
