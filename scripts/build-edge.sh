#!/usr/bin/env bash
# Builds both edge masters from edge-master/core: the Cloudflare Worker
# (edge-master/cloudflare/build/) and the Spin component
# (target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm), and prints
# their compressed sizes. Needs `scripts/setup.sh --edge` first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

echo "== Cloudflare Worker (worker-build)"
"$root/edge-master/cloudflare/build.sh"
echo "== Spin component (spin-sdk 7, wasm32-wasip2)"
(cd "$root/edge-master/spin" && cargo build --target wasm32-wasip2 --release)

size() { printf '%-60s %8d bytes, %8d gzip -9\n' "${1#"$root"/}" "$(wc -c <"$1")" "$(gzip -9c "$1" | wc -c)"; }
size "$root/edge-master/cloudflare/build/index_bg.wasm"
size "$root/target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm"
