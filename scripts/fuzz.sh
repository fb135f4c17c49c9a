#!/usr/bin/env bash
# Coverage-guided fuzzing of Skiff's parsers with cargo-fuzz (the crate in fuzz/).
#
#   scripts/fuzz.sh TARGET SECONDS   fuzz one target (webhook, trigger, pipeline, expr, archive, sse,
#                                    reference, layer)
#   scripts/fuzz.sh smoke            every target for 20 s after one build (what the tests run)
#   scripts/fuzz.sh seed [TARGET]    only (re)write the seed corpora
#
# Each run first writes seeds from the test fixtures into target/fuzz/corpus/TARGET (kept between
# runs, so the corpus grows) and also reads fuzz/seeds/TARGET (small hand-made inputs, and every
# input that once crashed). Crashes land in target/fuzz/artifacts/TARGET; replay one with
# `target/fuzz/x86_64-unknown-linux-gnu/release/TARGET FILE`.
#
# Built without a sanitizer: on stable Rust, AddressSanitizer needs -Z flags (see PITFALLS.md),
# and the code under test is safe Rust, so the fuzzer looks for panics, overflows (debug
# assertions are on), hangs and huge allocations.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
targets=(webhook trigger pipeline expr archive sse reference layer)
out="$root/target/fuzz"
export PATH="$root/target/tools/bin:$PATH"

seed() { # target
  local dir="$out/corpus/$1"
  mkdir -p "$dir"
  python3 - "$1" "$dir" <<'PY'
import glob, io, json, os, re, sys, tarfile, zipfile

target, out = sys.argv[1], sys.argv[2]

def write(name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(out, "seed-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)), "wb") as f:
        f.write(data)

def requests():
    """The recorded webhooks as requests: header lines, a blank line, the body."""
    for headers in sorted(glob.glob("edge-master/core/tests/fixtures/*/*.headers.json")):
        body = open(headers[: -len(".headers.json")] + ".json", "rb").read()
        lines = "".join(f"{k}: {v}\n" for k, v in json.load(open(headers)))
        name = os.path.relpath(headers, "edge-master/core/tests/fixtures")[: -len(".headers.json")]
        yield name, lines.encode() + b"\n" + body

pipelines = sorted(glob.glob("host/tests/pipelines/*/*.yaml") + glob.glob("examples/**/*.yaml", recursive=True)
                   + glob.glob("examples/**/.skiff/*.yaml", recursive=True))

APPS = [
    '[{"name": "web", "on": {"push": {"branches": ["main", "release/**"], "paths-ignore": ["docs/**"]}}}]',
    '[{"name": "all", "on": ["push", "pull_request", "release", "tag", "custom"]}]',
    '[{"name": "s", "environment": "prod", "repository": "acme/*", "trigger": {"push": {"branches": '
    '{"precise": ["master"], "prefix": ["feat-"], "exclude": ["feat-wip*"]}}, "tag": {"tags": "v*"}}}]',
    '[{"name": "f", "on": {"push": {"filter": "body.ref in [\\"refs/heads/master\\"]"}, "pull_request": '
    '{"types": ["opened", "closed"], "filter": "has(body.pull_request) && body.pull_request.draft == false"}, '
    '"filter": "event.sender != \\"bot\\" && headers[\\"x-github-event\\"] == \\"push\\""}}]',
    '[{"name": "c", "on": {"custom": {"types": ["com.example.*"], "sources": ["/registry/**"]}, '
    '"release": {"types": "published", "tags": ["v[0-9]*", "!v0.*"]}}}]',
    'size(body) > 0 && event.kind.type == "push" || body.commits.exists(c, c.id.startsWith("a"))',
]

def tar(entries, gz, fmt=tarfile.GNU_FORMAT):
    """A tar (gzipped with `gz`) of (name, kind, data) entries: kind file, dir, sym or hard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as t:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = data
            else:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()

if target == "webhook":
    for name, req in requests():
        write(name, req)
elif target == "trigger":
    globs = "main\nrelease/**\n!release/old\n**.js\ndocs/**\nv[0-9]*\nfeat-{a,b}\n"
    names = "main\nrelease/1.x/fix\nrelease/old\nsrc/a.js\ndocs/a/b.md\nv1.2.0\nfeat-a\n"
    for i, (name, req) in enumerate(requests()):
        write(name, APPS[i % len(APPS)].encode() + b"\0" + req + b"\0" + globs.encode() + b"\0" + names.encode())
elif target == "pipeline":
    for p in pipelines:
        write(p, open(p, "rb").read())
elif target == "expr":
    contexts = json.dumps({
        "event": {"ref": "refs/heads/main", "labels": ["a", "B"], "commits": [{"id": "1"}], "n": 3.5},
        "steps": {"build": {"outputs": {"v": "1.2", "list": "[1,2]"}, "outcome": "success"}},
        "matrix": {"os": "linux", "n": 2}, "env": {"CI": "true"}, "secrets": {"TOKEN": "t"},
        "inputs": {"name": "x"}, "needs": {"build": {"result": "success", "outputs": {"a": "b"}}},
    })
    seen = set()
    for p in pipelines:
        for line in open(p, encoding="utf-8", errors="replace"):
            m = re.search(r"(?:if:\s*(.+)|(.*\$\{\{.*))$", line.strip())
            text = m and (m.group(1) or m.group(2))
            if text and text not in seen:
                seen.add(text)
                write(f"{p}-{len(seen)}", text.encode() + b"\0" + contexts.encode() + b"\0\x00")
    for i, text in enumerate([
        "format('{0}-{1}{{x}}', 'a', 2)", "join(event.labels, '+') == 'a+B'", "fromJSON(steps.build.outputs.list)[1]",
        "toJSON(event)", "contains(event.labels, 'b') && startsWith(event.ref, 'refs/')", "failure() || cancelled()",
        "hashFiles('**/*.lock')", "event.commits.exists(c, c.id == '1')", "${{ matrix.os }}-${{ matrix.n + 1 }}",
    ]):
        write(f"expr-{i}", text.encode() + b"\0" + contexts.encode() + b"\0" + bytes([i % 4]))
elif target == "archive":
    files = {"README.md": b"hello\n", "src/main.rs": b"fn main() {}\n", "src/lib/a.txt": b"a" * 300}
    def zipped(entries):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, kind, data in entries:
                if kind == "dir":
                    z.writestr(name.rstrip("/") + "/", b"")
                elif kind == "sym":
                    info = zipfile.ZipInfo(name)
                    info.external_attr = (0o120777 << 16)
                    z.writestr(info, data)
                else:
                    z.writestr(name, data)
        return buf.getvalue()
    forge = [("acme-web-0123", "dir", b"")] + [(f"acme-web-0123/{k}", "file", v) for k, v in files.items()]
    flat = [(k, "file", v) for k, v in files.items()]
    links = forge + [("acme-web-0123/link", "sym", "src/main.rs"), ("acme-web-0123/hard", "hard", "acme-web-0123/README.md")]
    hostile = [("ok", "file", b"1"), ("../evil", "file", b"x"), ("a/../../evil", "file", b"x"), ("/abs", "file", b"x"),
               ("esc", "sym", "../../etc/passwd"), ("C:\\evil", "file", b"x")]
    for name, entries in [("forge", forge), ("flat", flat), ("links", links)] + [(f"hostile{i}", [e]) for i, e in enumerate(hostile)]:
        write(name + ".tar.gz", tar(entries, True))
        write(name + ".tar", tar(entries, False))
        write(name + ".pax.tar", tar(entries, False, tarfile.PAX_FORMAT))
        write(name + ".zip", zipped([(n, k, d.encode() if isinstance(d, str) else d) for n, k, d in entries]))
    write("long-name.tar", tar([("d/" + "n" * 200, "file", b"long"), ("x" * 120 + "/y", "file", b"y")], False))
elif target == "sse":
    log = lambda seq, text: 'event: log\nid: %d\ndata: %s\n\n' % (seq, json.dumps({"seq": seq, "job": "build", "step": "test", "text": text}, ensure_ascii=False))
    streams = [
        log(1, "hello") + log(2, "wörld — ✓ 日本") + ':\n\n' + 'event: end\ndata: {"status": "success"}\n\n',
        "data: a\r\ndata: b\r\n\r\nevent: x\n\n: keep-alive\n\ndata:no-space\n\n",
        log(7, "partial") + "event: end\ndata: {\"status\": \"failure\"}",
    ]
    for i, s in enumerate(streams):
        for cut in (0, 3, 6):
            write(f"stream-{i}-{cut}", bytes([cut]) + s.encode())
elif target == "reference":
    hexd = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    lock = "version: 1\ncomponents:\n  127.0.0.1:5000/acme/notify:1.0.0: sha256:%s\n  ghcr.io/a/b/c:v2: sha256:%s\n" % (hexd, hexd)
    for i, ref in enumerate([
        "127.0.0.1:5000/acme/notify:1.0.0", "oci://ghcr.io/acme/tools/notify@sha256:" + hexd,
        "localhost:5000/a/b:v1@sha256:" + hexd.upper(), "[::1]:5000/a/b:1", "ghcr.io/a/b/c:v2",
        "https://steps.example.com/x.wasm#sha256=" + hexd, "http://127.0.0.1:8080/s.wasm#sha256=" + hexd,
        "ghcr.io/acme/notify", "ghcr.io/a__b/c--d.e_f:_x", "steps/hello.wasm", "notify",
    ]):
        write(f"ref-{i}", ref.encode() + b"\0" + lock.encode())
elif target == "layer":
    # Image layers: the first byte picks plain (0), gzip (1) or zstd (2); then the blob.
    import gzip
    layers = {
        "plain": [("usr", "dir", b""), ("usr/bin/tool", "file", b"#!/bin/sh\n"), ("bin", "sym", "usr/bin")],
        "whiteouts": [("etc/.wh.os-release", "file", b""), ("etc/.wh..wh..opq", "file", b""), ("etc/new", "file", b"x")],
        "links": [("etc/os-release2", "hard", "etc/os-release"), ("up/escaped", "file", b"x"), ("etc/back/x", "file", b"y")],
        "climb": [("../../x", "file", b"x"), ("/abs", "file", b"a"), ("bin/sh", "file", b"s")],
    }
    for name, entries in layers.items():
        t = tar(entries, False, tarfile.PAX_FORMAT)
        write(f"layer-{name}", b"\0" + t)
        write(f"layer-{name}-gz", b"\1" + gzip.compress(t))
else:
    sys.exit(f"fuzz.sh: unknown target {target}")
PY
}

run() { # target seconds
  seed "$1"
  mkdir -p "$out/artifacts/$1"
  local seeds=()
  [ -d "fuzz/seeds/$1" ] && seeds=("fuzz/seeds/$1")
  # The archive and expr targets make their scratch folders in TMPDIR: in memory where we can
  # (the archive target runs about three times faster there), and removed afterwards.
  local tmp status=0
  tmp=$(mktemp -d -p "$([ -w /dev/shm ] && echo /dev/shm || echo "$out")" skiff-fuzz-XXXXXX)
  TMPDIR="$tmp" cargo fuzz run --fuzz-dir fuzz --sanitizer none --target-dir "$out" "$1" \
    "$out/corpus/$1" "${seeds[@]}" -- \
    -max_total_time="$2" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/artifacts/$1/" -print_final_stats=1 \
    || status=$?
  rm -rf "$tmp"
  return "$status"
}

case "${1:-}" in
  smoke)
    cargo fuzz build --fuzz-dir fuzz --sanitizer none --target-dir "$out"
    for t in "${targets[@]}"; do
      echo "== fuzz $t (20 s)"
      run "$t" 20
    done
    ;;
  seed)
    if [ -n "${2:-}" ]; then seed "$2"; else for t in "${targets[@]}"; do seed "$t"; done; fi
    ;;
  webhook | trigger | pipeline | expr | archive | sse | reference | layer)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh TARGET SECONDS | smoke | seed [TARGET]" >&2; exit 2; }
    run "$1" "$2"
    ;;
  *)
    echo "usage: scripts/fuzz.sh TARGET SECONDS | smoke | seed [TARGET]" >&2
    echo "targets: ${targets[*]}" >&2
    exit 2
    ;;
esac
