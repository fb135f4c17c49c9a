#!/usr/bin/env bash
# Checks the HTTP API against docs/openapi.json: the document is a valid OpenAPI document
# (openapi-spec-validator), and schemathesis, run against a throwaway `skiff serve`, finds no
# 5xx and no answer that breaks the document.
#
# Needs the binary: `cargo build -p skiff --bin skiff` (SKIFF_BIN names another one).
# Python tools live in a venv under target/py, installed from PyPI the first time.
# API_CHECK_EXAMPLES (per operation, default 200) and API_CHECK_SEED tune the run; a failure
# prints the seed that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

validator_version=0.9.0
schemathesis_version=4.32.5
venv=$root/target/py/venv
bin=${SKIFF_BIN:-$root/target/debug/skiff}
work=$root/target/api-check
examples=${API_CHECK_EXAMPLES:-200}

[[ -x $bin ]] || { echo "api-check: no $bin: run \`cargo build -p skiff --bin skiff\` first" >&2; exit 2; }

# The venv, and the pinned tools in it unless they are there already.
pinned() {
  "$venv/bin/python" - "$validator_version" "$schemathesis_version" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("openapi-spec-validator"), version("schemathesis")) == tuple(sys.argv[1:]) else 1)
EOF
}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
if ! pinned; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "openapi-spec-validator==$validator_version" "schemathesis==$schemathesis_version"
fi

echo "== openapi-spec-validator docs/openapi.json"
"$venv/bin/openapi-spec-validator" --validation-errors all docs/openapi.json

# A throwaway host: fresh data, random token, webhook secret and dispatch key.
rm -rf "$work"
mkdir -p "$work/data"
random() { "$venv/bin/python" -c "import base64, secrets; print(base64.$1(secrets.token_bytes(24)).decode())"; }
token=$(random b16encode)
token_sha=$(printf '%s' "$token" | "$bin" serve --hash-token)
cat >"$work/skiff.toml" <<EOF
listen = "127.0.0.1:0"
data = "data"
dispatch-key = "whsec_$(random b64encode)"
max-concurrent-runs = 2

[[tokens]]
name = "api-check"
sha256 = "$token_sha"
apps = ["*"]

# Webhooks and manual runs; its one step logs a line made of the run's inputs and ref.
[[apps]]
name = "web"
repository = "acme/web"
provider = "github"
webhook-secret = "$(random b16encode)"
on = { push = { branches = ["main"] } }
run-timeout-secs = 30
pipeline-yaml = """
steps:
  - id: greet
    uses: diag
    with:
      message: "\${{ inputs.message }} on \${{ event.ref }}"
"""

# Manual runs only: no webhook secret.
[[apps]]
name = "manual"
pipeline-yaml = """
steps:
  - uses: diag
    with:
      message: manual
"""
EOF

# Steers some of the generated paths to apps and runs that exist; the rest stay random.
cat >"$work/schemathesis.toml" <<EOF
# Failures found before are tried first on the next run.
[cache]
directory = "$root/target/py/schemathesis-cache"

[dictionaries.apps]
values = ["web", "manual"]

[dictionaries.runs]
values = [1, 2, 3, 4]

[parameters]
"path.app" = { dictionary = "apps", probability = 0.5 }
"path.id" = { dictionary = "runs", probability = 0.5 }
EOF

# The server and schemathesis run in the background, so that a signal reaches the traps at
# once (bash runs a trap only after the foreground command ends) and both are stopped.
server=
tests=
stop_server() {
  if [[ -n $tests ]]; then
    kill -TERM "$tests" 2>/dev/null || true
    wait "$tests" 2>/dev/null || true
    tests=
  fi
  if [[ -n $server ]]; then
    # The first signal drains (up to --drain-timeout); the runs here are seconds long.
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

: >"$work/serve.log"
env -u SKIFF_MASTER_KEY -u SKIFF_MASTER_KEY_FILE -u SKIFF_DATA -u SKIFF_LISTEN \
  "$bin" serve --config "$work/skiff.toml" --drain-timeout 5s >"$work/serve.log" 2>&1 &
server=$!
base=
for _ in $(seq 100); do
  base=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/serve.log" || true)
  [[ -n $base ]] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $base ]]; then
  echo "api-check: skiff serve did not start; its log:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi
echo "== schemathesis against $base ($examples examples per operation)"

status=0
seed=()
[[ -n ${API_CHECK_SEED:-} ]] && seed=(--seed "$API_CHECK_SEED")
# From $work, where hypothesis keeps its .hypothesis folder. One worker: on Python 3.11, threads
# parsing source at once can fail with "AST constructor recursion depth mismatch" (CPython
# gh-106905), an error of the tool, not of the API. Schemathesis warns that POST /v1/dispatch
# answers only 401: it cannot sign with the dispatch key, so that route is checked for its
# rejections only.
(cd "$work" && exec "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$root/docs/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "$examples" \
  --request-timeout 20 \
  --workers 1 \
  --generation-database "$root/target/py/schemathesis-examples" \
  --no-color \
  "${seed[@]}") &
tests=$!
wait "$tests" || status=$?
tests=

stop_server
# A 500 is logged with its cause; a panic may not reach the client as a 5xx at all.
if grep -E "internal error|panicked" "$work/serve.log" >&2; then
  echo "api-check: the host logged the errors above" >&2
  status=1
fi
exit "$status"
