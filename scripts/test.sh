#!/usr/bin/env bash
# The whole test suite, lints included. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase says when it starts, so a slow CI run shows where its time went.
phase() { echo "== $1 (at ${SECONDS}s)"; }
phase setup
scripts/setup.sh --edge

# The edge adapters are separate workspaces (their own wasm targets and lockfiles).
cf=(--manifest-path edge-master/cloudflare/Cargo.toml)
spin=(--manifest-path edge-master/spin/Cargo.toml)
# The hostile Spin component `skiff edge up` is tested against; shares target/edge-spin.
hostile=(--manifest-path host/test-guests/spin-hostile/Cargo.toml)

phase fmt
cargo fmt --all --check
cargo fmt "${cf[@]}" --check
cargo fmt "${spin[@]}" --check
cargo fmt "${hostile[@]}" --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
phase clippy
cargo clippy --workspace --all-targets --features skiff/edge-tests -- -D warnings
CARGO_TARGET_DIR=target/edge-cloudflare cargo clippy "${cf[@]}" --target wasm32-unknown-unknown --release -- -D warnings
CARGO_TARGET_DIR=target/edge-spin cargo clippy "${spin[@]}" --target wasm32-wasip2 --release -- -D warnings
CARGO_TARGET_DIR=target/edge-spin cargo clippy "${hostile[@]}" --target wasm32-wasip2 --release -- -D warnings
# Building both adapters also builds the edge core for wasm32-unknown-unknown and wasm32-wasip2.
phase "edge masters: the Worker (worker-build) and the Spin component"
scripts/build-edge.sh
CARGO_TARGET_DIR=target/edge-spin cargo build "${hostile[@]}" --target wasm32-wasip2 --release
export SKIFF_S3S_FS="$PWD/target/tools/bin/s3s-fs"
phase tests
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --features skiff/edge-tests --no-fail-fast
  cargo test --workspace --doc --features skiff/edge-tests
else
  cargo test --workspace --features skiff/edge-tests --no-fail-fast
fi
# The binary exists by now: the integration tests built it.
phase "api check: openapi-spec-validator, schemathesis against skiff serve"
scripts/api-check.sh
phase "fuzz smoke: one build, then every target briefly"
scripts/fuzz.sh smoke
phase done
