#!/usr/bin/env bash
# Builds both edge masters from edge-master/core: the Cloudflare Worker
# (edge-master/cloudflare/build/) and the Spin component
# (target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm), and prints
# their compressed sizes; fails if the Worker grows past a third of the free
# plan's limit. Needs `scripts/setup.sh --edge` first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

echo "== Cloudflare Worker (worker-build)"
"$root/edge-master/cloudflare/build.sh"
echo "== Spin component (spin-sdk 7, wasm32-wasip2)"
(cd "$root/edge-master/spin" && cargo build --target wasm32-wasip2 --release)

size() { printf '%-60s %8d bytes, %8d gzip -9\n' "${1#"$root"/}" "$(wc -c <"$1")" "$(gzip -9c "$1" | wc -c)"; }
size "$root/edge-master/cloudflare/build/index_bg.wasm"
size "$root/target/edge-spin/wasm32-wasip2/release/skiff_edge_spin.wasm"

# The Worker as `wrangler deploy` would upload it (bundled, compressed), held well under the
# Workers free plan's 3 MiB: a third of it is this project's ceiling.
upload=$(cd "$root/edge-master/cloudflare" && CI=1 WRANGLER_SEND_METRICS=false \
  node_modules/.bin/wrangler deploy --dry-run --outdir "$root/target/edge-cloudflare/upload" 2>&1) \
  || { echo "$upload" >&2; echo "build-edge.sh: wrangler deploy --dry-run failed" >&2; exit 1; }
line=$(grep -o 'Total Upload: .*' <<<"$upload" || true)
echo "Worker upload (wrangler deploy --dry-run): ${line#Total Upload: }"
gzip_kib=$(sed -n 's/.*gzip: \([0-9.]*\) KiB.*/\1/p' <<<"$line")
if ! awk -v k="$gzip_kib" 'BEGIN { exit !(k != "" && k + 0 < 1024) }'; then
  echo "build-edge.sh: the Worker uploads as '${line:-nothing wrangler reported}', over the 1024 KiB gzip this" \
    "project allows (the free plan's limit is 3 MiB); see docs/BENCHMARKS.md for what takes the space" >&2
  exit 1
fi
