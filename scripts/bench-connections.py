#!/usr/bin/env python3
"""Measures /healthz, a webhook and an API call on `skiff serve` while N idle sockets and
slow senders (1 byte/s) are held open, beside the same requests with none held (the baseline,
in the same run). Usage: scripts/bench-connections.py SKIFF_BINARY [IDLE] [SLOW]."""
import hashlib, hmac, json, os, resource, shutil, socket, subprocess, sys, tempfile, threading, time

skiff = sys.argv[1]
idle_n = int(sys.argv[2]) if len(sys.argv) > 2 else 19000
slow_n = int(sys.argv[3]) if len(sys.argv) > 3 else 500
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

data = tempfile.mkdtemp(prefix="skiff-bench-conn-", dir=os.environ.get("TMPDIR"))
secret, token = "bench-secret", "bench-token"
with open(os.path.join(data, "skiff.toml"), "w") as f:
    f.write(f'''listen = "127.0.0.1:0"
data = "{data}/d"
[[tokens]]
name = "admin"
sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"
apps = ["*"]
[[apps]]
name = "web"
webhook-secret = "{secret}"
provider = "github"
on = {{ push = {{ branches = ["nothing-matches"] }} }}
pipeline-yaml = "steps:\\n  - uses: diag\\n"
''')
srv = subprocess.Popen([skiff, "serve", "--config", os.path.join(data, "skiff.toml")], stderr=subprocess.PIPE, text=True)
port = None
for line in srv.stderr:
    if "listening on http://" in line:
        port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
        break
threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()
body = json.dumps({"ref": "refs/heads/main", "after": "1", "repository": {"full_name": "acme/web"}}).encode()
sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
requests = {
    "healthz": b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    "webhook": (f"POST /hooks/web HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: push\r\n"
                f"x-github-delivery: d\r\nx-hub-signature-256: {sig}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body,
    "api": f"GET /v1/runs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n".encode(),
}

def once(raw):
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw)
    status = s.recv(64).split(b"\r\n")[0].decode()
    s.close()
    return (time.perf_counter() - t) * 1000, status

def measure(rounds=30):
    out = {}
    for name, raw in requests.items():
        ms = sorted(once(raw)[0] for _ in range(rounds))
        out[name] = (ms[len(ms) // 2], ms[int(len(ms) * 0.95)])
    return out

base = measure()
held = []
for _ in range(idle_n):
    try:
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        break
slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(slow_n)]
stop = threading.Event()
def trickle():
    msg = b"POST /hooks/web HTTP/1.1\r\n"
    i = 0
    while not stop.is_set():
        for s in slow:
            try: s.send(msg[i % len(msg):i % len(msg) + 1])
            except OSError: pass
        i += 1
        time.sleep(1)
threading.Thread(target=trickle, daemon=True).start()
time.sleep(2)
loaded = measure()
load = os.getloadavg()[0]
stop.set()
srv.terminate(); srv.wait()
shutil.rmtree(data, ignore_errors=True)
print(f"load average {load:.2f}; {len(held)} idle sockets and {slow_n} senders at 1 byte/s held")
print(f"{'request':10} {'baseline p50/p95 ms':>22} {'under attack p50/p95 ms':>26} {'ratio p50':>10}")
for name in requests:
    b, l = base[name], loaded[name]
    print(f"{name:10} {b[0]:10.2f} / {b[1]:7.2f} {l[0]:13.2f} / {l[1]:8.2f} {l[0] / b[0]:10.2f}")
