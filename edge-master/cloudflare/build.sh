#!/usr/bin/env bash
# Builds the Worker (build/worker/shim.mjs + wasm) with worker-build, offline:
# wasm-bindgen-cli is the one at the version Cargo.lock pins, esbuild comes from
# npm, and wasm-opt is skipped unless binaryen's is on hand (WASM_OPT_BIN).
# `scripts/setup.sh --edge` installs all of it; `npm run build` runs this.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="$root/target/tools/bin"
cd "$here"

export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$tools/wasm-bindgen}"
export ESBUILD_BIN="${ESBUILD_BIN:-$here/node_modules/.bin/esbuild}"
worker_build="${WORKER_BUILD_BIN:-$tools/worker-build}"
for bin in "$WASM_BINDGEN_BIN" "$ESBUILD_BIN" "$worker_build"; do
  [ -x "$bin" ] || { echo "build.sh: $bin is missing; run scripts/setup.sh --edge first" >&2; exit 1; }
done

opt=(--no-opt)
[ -n "${WASM_OPT_BIN:-}" ] && opt=()
# One target dir for the whole repository, so the edge core is compiled once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/edge-cloudflare}"
"$worker_build" --release "${opt[@]}"
