#!/usr/bin/env bash
# Installs what Skiff's build and tests need on a fresh Debian machine; idempotent.
# `--edge` also installs the edge adapters' toolchain (wrangler, worker-build, wasm-bindgen-cli).
set -euo pipefail
edge=0
for arg in "$@"; do
  case "$arg" in
    --edge) edge=1 ;;
    *) echo "setup.sh: unknown option $arg (the only one is --edge)" >&2; exit 2 ;;
  esac
done

installed_targets=$(rustup target list --installed)
for t in wasm32-wasip2 wasm32-unknown-unknown; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v git >/dev/null || missing+=(git)
command -v python3 >/dev/null || missing+=(python3)
# sshd: the tests' SSH git server (a repository fetched with a deploy key).
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# The CNCF Distribution registry (published steps) and htpasswd (its authentication).
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
# A static busybox: the root filesystem of the container images the build-environment tests make.
[ -x /bin/busybox ] || missing+=(busybox-static)
# Headless Chromium and its WebDriver: the web console's browser tests (host/tests/all/console.rs).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# PostgreSQL's initdb and pg_ctl: the run store's tests start a throwaway cluster (host/server/src/store/tests.rs).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Tools build under target/ (not /tmp, which may be small or shared), in debug: they serve tests.
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/target/tools"
tool_build=(--debug --root "$tools" --target-dir "$root/target/tools-build")

# A real S3-compatible server for the upload step's tests (0.14 is the newest that builds on Rust 1.95).
if [ ! -x "$tools/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --features binary --locked "${tool_build[@]}" \
    || cargo install s3s-fs --version 0.14.1 --features binary "${tool_build[@]}"
fi

# wkg (Wasm package tools): components move between it and Skiff in the registry tests.
if [ ! -x "$tools/bin/wkg" ]; then
  cargo install wkg --version 0.16.1 --locked "${tool_build[@]}"
fi

# Coverage-guided fuzzing of the parsers (fuzz/, run by scripts/fuzz.sh).
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --version 0.13.2 --locked "${tool_build[@]}"
fi

# componentize-js and componentize-py for step authors' JavaScript and Python projects.
"$root/scripts/authoring-tools.sh"

[ "$edge" -eq 1 ] || exit 0

# The Cloudflare Worker's toolchain, pinned and offline:
# - wrangler 4.86.0 (the last on Node.js 20) and esbuild, from edge-master/cloudflare's lockfile;
# - worker-build and wasm-bindgen-cli at exactly the versions its Cargo.lock pins, built in debug
#   (about 2 minutes each instead of 10-12; they run in seconds on our small module either way).
worker="$root/edge-master/cloudflare"
command -v node >/dev/null || { echo "setup.sh: Node.js 20 or newer is needed for wrangler; install it first" >&2; exit 1; }
if [ ! -x "$worker/node_modules/.bin/wrangler" ] || [ "$("$worker/node_modules/.bin/wrangler" --version 2>/dev/null | tail -1)" != "4.86.0" ]; then
  (cd "$worker" && npm ci --no-audit --no-fund)
fi

locked() { grep -A1 "^name = \"$1\"\$" "$worker/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p'; }
install_tool() { # crate, binary, version
  local have
  have=$("$tools/bin/$2" --version 2>/dev/null | awk '{print $NF}' || true)
  if [ "$have" != "$3" ]; then
    cargo install "$1" --version "$3" --force "${tool_build[@]}"
  fi
}
install_tool wasm-bindgen-cli wasm-bindgen "$(locked wasm-bindgen)"
install_tool worker-build worker-build "$(locked worker)"
