#!/usr/bin/env python3
"""Webhook to first step of a repository-driven run, fetch included (issue 12).

Generates (once, reused from target/tmp/bench-fetch) a repository of 1,000 commits whose
checkout is about 50 MB, serves it with `git daemon` on 127.0.0.1 and starts a real
`skiff serve` whose app fetches it over git://. Then, for a GitHub-signed push of the head
commit, measures from just before the webhook is sent to the first step's `started_at`:

- warm: the host's object cache already holds the commit (N runs on one server);
- cold: a fresh data folder and a fresh `skiff serve` for every run (nothing cached);
- baseline, interleaved with the cold runs: `git clone --depth 1 git://...` of the same
  repository into a fresh folder (what a cold fetch and checkout costs without Skiff).

Afterwards it times, by hand and outside Skiff, the local git commands a warm run makes, to
show where a warm run's time goes. Every run must succeed and is waited for (workspace
removed) before the next.

Usage: python3 scripts/bench-fetch.py target/debug/skiff [warm_n] [cold_n]
BENCH_FETCH_DATA=/some/dir puts the servers' data folders (object cache and workspaces), the
baseline's clones and the by-hand checkouts there instead of under target/tmp/bench-fetch
(e.g. /dev/shm, to see the same runs without the disk).
"""
import hashlib, hmac, http.client, json, os, random, shutil, signal, socket, subprocess, sys, threading, time

skiff = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else sys.exit(__doc__)
warm_n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
cold_n = int(sys.argv[3]) if len(sys.argv) > 3 else 5

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "tmp", "bench-fetch")
ROOT = os.path.normpath(ROOT)
GIT_ROOT = os.path.join(ROOT, "git")  # git daemon's base path
BARE = os.path.join(GIT_ROOT, "acme", "web.git")
COMMITS, BIG_FILES, BIG_SIZE = 1000, 200, 256 << 10  # 200 x 256 KiB of random bytes = 50 MiB
DATA_ROOT = os.environ.get("BENCH_FETCH_DATA") or ROOT
SECRET, TOKEN = "bench-secret", "bench-token"
GIT_ENV = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", LC_ALL="C",
               GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.com",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.com")
started = []  # processes this script started (killed by their own id at exit)


def git(*args, cwd=None):
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout.strip()


def generate():
    """1,000 commits: the first 200 each add a 256 KiB file of random bytes; every commit
    changes a changelog and one of 50 small source files. `.skiff/pipeline.yaml` has one cheap
    step, which checks that the last large file was checked out."""
    marker = os.path.join(ROOT, "generated.json")
    if os.path.exists(marker) and os.path.isdir(BARE):
        return json.load(open(marker))
    shutil.rmtree(BARE, ignore_errors=True)
    os.makedirs(BARE)
    git("init", "-q", "--bare", "-b", "main", BARE)
    t = time.perf_counter()
    fi = subprocess.Popen(["git", "fast-import", "--quiet"], cwd=BARE, env=GIT_ENV, stdin=subprocess.PIPE)
    w = fi.stdin.write

    def data(b):
        w(b"data %d\n" % len(b) + b + b"\n")

    rnd = random.Random(12)
    changelog = b""
    when = 1_700_000_000
    for i in range(COMMITS):
        w(b"commit refs/heads/main\n")
        w(b"committer b <b@example.com> %d +0000\n" % (when + i * 60))
        data(b"change %d" % i)  # without `from`, the parent is the branch's tip in this stream
        if i == 0:
            w(b"M 100644 inline .skiff/pipeline.yaml\n")
            # One cheap step that fails unless the checkout is complete.
            data(b'steps:\n  - run: test -s assets/blob-%03d.bin\n' % (BIG_FILES - 1))
            w(b"M 100644 inline README.md\n")
            data(b"# web\n\nA generated repository for scripts/bench-fetch.py.\n")
        if i < BIG_FILES:
            w(b"M 100644 inline assets/blob-%03d.bin\n" % i)
            data(os.urandom(BIG_SIZE))
        changelog += b"- change %d: %x\n" % (i, rnd.getrandbits(64))
        w(b"M 100644 inline CHANGELOG.md\n")
        data(changelog)
        w(b"M 100644 inline src/module-%02d.txt\n" % (i % 50))
        data(b"module %d, revision %d, %x\n" % (i % 50, i, rnd.getrandbits(128)) * 20)
        w(b"\n")
    fi.stdin.close()
    assert fi.wait() == 0, "git fast-import failed"
    git("repack", "-a", "-d", "-q", cwd=BARE)
    git("prune-packed", cwd=BARE)
    head = git("rev-parse", "refs/heads/main", cwd=BARE)
    tree_bytes = sum(int(l.split()[3]) for l in git("ls-tree", "-r", "-l", head, cwd=BARE).splitlines())
    pack_bytes = sum(os.path.getsize(os.path.join(BARE, "objects", "pack", f))
                     for f in os.listdir(os.path.join(BARE, "objects", "pack")))
    info = {"head": head, "commits": int(git("rev-list", "--count", head, cwd=BARE)),
            "checkout_bytes": tree_bytes, "pack_bytes": pack_bytes,
            "files": len(git("ls-tree", "-r", "--name-only", head, cwd=BARE).splitlines()),
            "generated_in_s": round(time.perf_counter() - t, 1)}
    json.dump(info, open(marker, "w"))
    return info


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def git_daemon():
    port = free_port()
    p = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={port}",
                          f"--base-path={GIT_ROOT}", GIT_ROOT], env=GIT_ENV, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    started.append(p)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            assert time.time() < deadline, "git daemon did not start"
            time.sleep(0.02)


class Skiff:
    """A real `skiff serve` with one repository-driven app, on a data folder of its own."""

    def __init__(self, data, git_port):
        os.makedirs(data, exist_ok=True)
        self.data = data
        config = os.path.join(data, "skiff.toml")
        with open(config, "w") as f:
            f.write(f'''listen = "127.0.0.1:0"
data = "{data}"

[[tokens]]
name = "admin"
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
apps = ["*"]

[[apps]]
name = "web"
repository = "acme/web"
provider = "github"
webhook-secret = "{SECRET}"
clone-url = "git://127.0.0.1:{git_port}/acme/web.git"
on = {{ push = {{ branches = ["main"] }} }}
''')
        env = dict(os.environ, SKIFF_CACHE_DIR=os.path.join(ROOT, "component-cache"))
        self.proc = subprocess.Popen([skiff, "serve", "--config", config], stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        started.append(self.proc)
        self.port, self.log = None, []
        for line in self.proc.stderr:
            self.log.append(line)
            if "listening on http://" in line:
                self.port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
                break
        assert self.port, "skiff serve did not start:\n" + "".join(self.log)
        threading.Thread(target=lambda: [self.log.append(l) for l in self.proc.stderr], daemon=True).start()
        self.deliveries = 0

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        out = (r.status, r.read())
        c.close()
        return out

    def push(self, sha):
        """Sends a signed push webhook; (ms since epoch just before sending, run id)."""
        body = json.dumps({
            "ref": "refs/heads/main", "before": "0" * 40, "after": sha,
            "repository": {"full_name": "acme/web", "clone_url": "https://github.com/acme/web.git",
                           "default_branch": "main"},
            "head_commit": {"id": sha, "modified": ["CHANGELOG.md"]},
            "commits": [{"id": sha, "added": [], "removed": [], "modified": ["CHANGELOG.md"]}],
            "sender": {"login": "dev"}}).encode()
        self.deliveries += 1
        headers = {"content-type": "application/json", "x-github-event": "push",
                   "x-github-delivery": f"bench-{os.getpid()}-{time.time_ns()}-{self.deliveries}",
                   "x-hub-signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.connect()
        t0 = time.time() * 1000
        c.request("POST", "/hooks/web", body=body, headers=headers)
        r = c.getresponse()
        answer = r.read()
        c.close()
        assert r.status == 202, f"webhook answered {r.status}: {answer!r}"
        return t0, json.loads(answer)["runs"][0]["id"]

    def finished(self, run_id, timeout=300):
        deadline = time.time() + timeout
        while True:
            status, body = self.request("GET", f"/v1/runs/{run_id}", headers={"authorization": f"Bearer {TOKEN}"})
            run = json.loads(body)
            if status == 200 and run.get("status") not in ("queued", "running"):
                break
            assert time.time() < deadline, f"run {run_id} did not end: {run}"
            time.sleep(0.05)
        assert run["status"] == "success", f"run {run_id}: {json.dumps(run, indent=1)}\n" + "".join(self.log[-20:])
        ws = os.path.join(self.data, "work", str(run_id))
        while os.path.exists(ws) and time.time() < deadline:  # the workspace is removed after the run
            time.sleep(0.02)
        return run

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_run(server, sha):
    """Webhook to first step and its parts, in ms."""
    t0, run_id = server.push(sha)
    run = server.finished(run_id)
    steps = [s["started_at"] for j in run.get("jobs") or [] for s in j.get("steps") or [] if s.get("started_at")]
    assert steps, f"run {run_id} has no started step: {run}"
    first = min(steps)
    return {"total": first - t0, "accept": run["created_at"] - t0,
            "prepare": run["started_at"] - run["created_at"], "execute": first - run["started_at"]}


def stats(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2, \
        xs[min(len(xs) - 1, int(len(xs) * 0.9))]


def by_hand(cache, sha, n_files):
    """The local git work of a warm run (fetch.rs: ensure, checkout, reading the pipeline, which
    the scheduler does twice), timed outside Skiff with the same environment: ms per part."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "none", "LC_ALL": "C"}
    pre = ["git", "-c", "core.hooksPath=/dev/null", "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main"]

    def g(cwd, *a):
        t = time.perf_counter()
        subprocess.run(pre + list(a), cwd=cwd, env=env, check=True, capture_output=True)
        return (time.perf_counter() - t) * 1000

    parts = {}
    # The file system's own floor: creating as many empty files as the checkout has.
    probe = os.path.join(DATA_ROOT, "bench-fetch-probe")
    shutil.rmtree(probe, ignore_errors=True)
    os.makedirs(probe)
    t = time.perf_counter()
    for i in range(n_files):
        open(os.path.join(probe, str(i)), "wb").close()
    create = (time.perf_counter() - t) * 1000
    shutil.rmtree(probe)
    ws = os.path.join(DATA_ROOT, "bench-fetch-by-hand")  # on the data folder's file system
    shutil.rmtree(ws, ignore_errors=True)
    os.makedirs(ws)
    parts["cat-file -e (is it cached?)"] = g(cache, "cat-file", "-e", f"{sha}^{{commit}}")
    parts["git init"] = g(ws, "init", "--quiet", "--template=", ".")
    t = time.perf_counter()
    src, dst = os.path.join(cache, "objects"), os.path.join(ws, ".git", "objects")
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            if not os.path.exists(os.path.join(dst, rel, f)):
                os.link(os.path.join(d, f), os.path.join(dst, rel, f))
    if os.path.exists(os.path.join(cache, "shallow")):
        shutil.copy(os.path.join(cache, "shallow"), os.path.join(ws, ".git", "shallow"))
    parts["hard-link the objects"] = (time.perf_counter() - t) * 1000
    parts["git checkout -B main (the files)"] = g(ws, "checkout", "--quiet", "-B", "main", sha)
    parts["git remote add"] = g(ws, "remote", "add", "origin", "git://127.0.0.1/acme/web.git")
    t = 0.0
    oid = subprocess.run(pre + ["rev-parse", f"{sha}:.skiff/pipeline.yaml"], cwd=cache, env=env,
                         capture_output=True, text=True).stdout.strip()
    for _ in range(2):
        t += g(cache, "ls-tree", "-z", sha, "--", ".skiff/pipeline.yaml")
        t += g(cache, "cat-file", "-s", oid) + g(cache, "cat-file", "blob", oid)
    parts["read the pipeline twice (3 git calls each)"] = t
    t = time.perf_counter()
    shutil.rmtree(ws)
    parts["rm -rf the workspace (after the run)"] = (time.perf_counter() - t) * 1000
    parts[f"fs floor: create {n_files} empty files (not summed)"] = create
    return parts


def main():
    global skiff
    load_before = os.getloadavg()
    os.makedirs(ROOT, exist_ok=True)
    # Others rebuild target/debug while this runs: use a snapshot of the two programs (hard
    # links keep the files even when cargo replaces them), the relay beside `skiff` as it wants.
    snap = os.path.join(ROOT, "bin")
    shutil.rmtree(snap, ignore_errors=True)
    os.makedirs(snap)
    for name, src in (("skiff", skiff), ("skiff-egress-relay", os.path.join(os.path.dirname(skiff), "skiff-egress-relay"))):
        try:
            os.link(src, os.path.join(snap, name))
        except OSError:
            shutil.copy2(src, os.path.join(snap, name))
    skiff = os.path.join(snap, "skiff")
    info = generate()
    sha = info["head"]
    print(f"repository: {info['commits']} commits, {info['files']} files, checkout {info['checkout_bytes'] / 1e6:.1f} MB, "
          f"pack {info['pack_bytes'] / 1e6:.1f} MB (generated in {info.get('generated_in_s', '?')} s, reused if present)")
    _, port = git_daemon()
    url = f"git://127.0.0.1:{port}/acme/web.git"

    def clone():
        dst = os.path.join(DATA_ROOT, "bench-fetch-clone")  # on the same file system as skiff's workspaces
        shutil.rmtree(dst, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", url, dst], env=GIT_ENV, check=True)
        ms = (time.perf_counter() - t) * 1000
        shutil.rmtree(dst)
        return ms

    clone()  # warms the server side (pack in the page cache) for both skiff and the baseline

    # Warm: one server; the first run fills the cache (and the component cache) and is not counted.
    data = os.path.join(DATA_ROOT, "bench-fetch-data-warm")
    shutil.rmtree(data, ignore_errors=True)
    server = Skiff(data, port)
    try:
        first = one_run(server, sha)
        # The object cache itself (`*.git`), not the spare checkout beside it (`*.spare`).
        cached = sum(os.path.getsize(os.path.join(d, f)) for c in os.listdir(os.path.join(data, "repos")) if c.endswith(".git")
                     for d, _, fs in os.walk(os.path.join(data, "repos", c)) for f in fs)
        print(f"first run on an empty cache (not counted): {first['total']:.0f} ms; the cache then holds "
              f"{cached / 1e6:.1f} MB")
        cache = [os.path.join(data, "repos", d) for d in os.listdir(os.path.join(data, "repos")) if d.endswith(".git")][0]
        warm, hand = [], []
        for _ in range(warm_n):  # each warm run followed by the same git work by hand
            warm.append(one_run(server, sha))
            hand.append(by_hand(cache, sha, info["files"]))
    finally:
        server.stop()
    shutil.rmtree(data, ignore_errors=True)

    # Cold, interleaved with the baseline: a fresh data folder and a fresh server every time.
    cold, base = [], []
    for i in range(cold_n):
        data = os.path.join(DATA_ROOT, "bench-fetch-data-cold")
        shutil.rmtree(data, ignore_errors=True)
        server = Skiff(data, port)
        try:
            cold.append(one_run(server, sha))
        finally:
            server.stop()
        shutil.rmtree(data, ignore_errors=True)
        base.append(clone())
    load_after = os.getloadavg()

    print(f"data folders under {DATA_ROOT}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f}"
          f" ({os.cpu_count()} CPUs)")
    print()
    print(f"{'webhook -> first step started (ms)':44} {'n':>3} {'median':>8} {'p90':>8}")
    wm, wp = stats([r["total"] for r in warm])
    cm, cp = stats([r["total"] for r in cold])
    bm, bp = stats(base)
    print(f"{'warm (commit in the cache)':44} {len(warm):3} {wm:8.0f} {wp:8.0f}   target <= 150 ms median: "
          f"{'met' if wm <= 150 else 'MISSED'}")
    print(f"{'cold (fresh data folder and server)':44} {len(cold):3} {cm:8.0f} {cp:8.0f}")
    print(f"{'baseline: git clone --depth 1 (same run)':44} {len(base):3} {bm:8.0f} {bp:8.0f}")
    print(f"{'ratio cold / baseline (median)':44} {'':3} {cm / bm:7.2f}x")
    print()
    print("parts of a run, median ms (webhook->created_at: accepted; created->run started_at: fetch, checkout,")
    print("pipeline read; run started->first step: pipeline read again, engine start):")
    for name, rs in (("warm", warm), ("cold", cold)):
        print(f"  {name}: " + ", ".join(f"{k} {stats([r[k] for r in rs])[0]:.0f}" for k in ("accept", "prepare", "execute")))
    print()
    print(f"a warm run's local git work, timed by hand outside skiff after each warm run (median ms of {len(hand)}):")
    for k in hand[0]:
        print(f"  {k:44} {stats([h[k] for h in hand])[0]:8.1f}")
    sums = [sum(v for k, v in h.items() if not k.startswith(("rm", "fs"))) for h in hand]
    sm, sp = stats(sums)
    print(f"  {'sum (rm -rf and the floor excluded)':44} {sm:8.1f}   p90 {sp:.1f}")
    print(f"  warm run / the same git work by hand (median): {wm / sm:.2f}x; "
          f"/ the checkout alone: {wm / stats([h['git checkout -B main (the files)'] for h in hand])[0]:.2f}x")


try:
    main()
finally:
    for p in started:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # its own group: git daemon's children too
            except ProcessLookupError:
                pass
            p.wait()
    shutil.rmtree(os.path.join(ROOT, "bin"), ignore_errors=True)  # the snapshot would pin an old build's disk space
