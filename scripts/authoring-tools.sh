#!/usr/bin/env bash
# Installs the JavaScript and Python step toolchains under target/authoring; idempotent.
#
# - componentize-js (npm), for `skiff step new --lang js` projects: `npm ci` of
#   scripts/authoring/package.json and its lockfile into target/authoring/js/node_modules;
# - componentize-py (PyPI), for `--lang python` projects: a virtual environment
#   target/authoring/venv with scripts/authoring/requirements.txt.
#
# host/tests/all/authoring.rs finds them there. A fresh install takes about 15 s here (npm
# about 7-10 s, pip about 4 s, with the registries reachable); when both are installed at the
# pinned versions, this only checks and returns (well under a second).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/scripts/authoring"
dest="$root/target/authoring"
mkdir -p "$dest"

# componentize-js: reinstalled whenever the lockfile changes (a stamp keeps the lockfile's hash).
js="$dest/js"
stamp="$js/.installed-lock-sha256"
want=$(sha256sum "$src/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
   || [ ! -f "$js/node_modules/@bytecodealliance/componentize-js/package.json" ]; then
  command -v npm >/dev/null || { echo "authoring-tools.sh: npm is missing: install Node.js 20 or newer" >&2; exit 1; }
  start=$SECONDS
  rm -rf "$js"
  mkdir -p "$js"
  cp "$src/package.json" "$src/package-lock.json" "$js/"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
  echo "authoring-tools.sh: componentize-js installed in $((SECONDS - start)) s"
fi

# componentize-py: reinstalled when the venv's version differs from the pinned one.
venv="$dest/venv"
want=$(sed -n 's/^componentize-py==//p' "$src/requirements.txt")
have=$("$venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  command -v python3 >/dev/null || { echo "authoring-tools.sh: python3 is missing" >&2; exit 1; }
  start=$SECONDS
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian's python3 leaves venv support in a package of its own.
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$src/requirements.txt"
  echo "authoring-tools.sh: componentize-py $want installed in $((SECONDS - start)) s"
fi
