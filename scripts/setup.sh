#!/usr/bin/env bash
# Installs what Skiff's build and tests need on a fresh Debian machine; idempotent.
set -euo pipefail

installed_targets=$(rustup target list --installed)
for t in wasm32-wasip2 wasm32-unknown-unknown; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v git >/dev/null || missing+=(git)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# A real S3-compatible server for the upload step's tests (0.14 is the newest that builds on Rust 1.95).
tools="$(cd "$(dirname "$0")/.." && pwd)/target/tools"
if [ ! -x "$tools/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$tools" \
    || cargo install s3s-fs --version 0.14.1 --features binary --root "$tools"
fi
