# Slow-client flood against `taskmaster serve` (release build): N connections
# trickling headers and M trickling bodies (60 KB of a 1 MB body each), then
# ten real signed deliveries one after another; prints the resident memory
# before and at the peak, and how the real deliveries were answered.
# Usage (from the repository root): python3 benches/slow_clients.py N M [LENGTH]
# (LENGTH: the Content-Length the slow bodies declare, default 1,000,000)
# (TASKMASTER_BIN picks the binary, default target/release/taskmaster).
import socket, subprocess, time, os, tempfile, hmac, hashlib, json, urllib.request, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
d = tempfile.mkdtemp()
port = 3977
env = dict(os.environ, GITHUB_WEBHOOK_SECRET="s", DATABASE_URL=f"sqlite://{d}/f.db",
           TASKMASTER_WORKSPACES="off", TASKMASTER_DATA_DIR=f"{d}/data", RUST_LOG="error")
p = subprocess.Popen([os.environ.get("TASKMASTER_BIN", "target/release/taskmaster"), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000)))
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health"); break
    except Exception: time.sleep(0.1)
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
base = rss()
socks = []
N_HEAD, N_BODY = int(sys.argv[1]), int(sys.argv[2])
LENGTH = int(sys.argv[3]) if len(sys.argv) > 3 else 1000000
for i in range(N_HEAD):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"POST /api/github/webhooks HTTP/1.1\r\nHost: x\r\n"); socks.append(s)
for i in range(N_BODY):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /api/github/webhooks HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: slow\r\nContent-Length: %d\r\n\r\n" % LENGTH + b"x" * 60000)
    socks.append(s)
time.sleep(1.0)
peak = rss()
body = open("tests/fixtures/webhooks/issues.opened.json", "rb").read()
sig = "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
# How long a bare TCP connect takes now (a full accept queue drops SYNs:
# the client then retries after 1 s).
t = time.time(); c = socket.create_connection(("127.0.0.1", port)); connect_ms = (time.time() - t) * 1000; c.close()
codes, took = [], []
for i in range(10):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/github/webhooks", data=body, method="POST",
        headers={"X-GitHub-Event": "issues", "X-GitHub-Delivery": f"real-{i}", "X-Hub-Signature-256": sig, "Content-Type": "application/json"})
    t = time.time()
    try:
        codes.append(urllib.request.urlopen(req, timeout=20).status)
    except urllib.error.HTTPError as e:
        codes.append(e.code)
    except Exception as e:
        codes.append(type(e).__name__)
    took.append(time.time() - t)
peak = max(peak, rss())
answers = ", ".join(f"{c}" for c in sorted(set(codes), key=str))
print(f"{N_HEAD} slow-header + {N_BODY} slow-body connections (60 KB of {LENGTH} each sent): RSS {base} MB -> {peak} MB; "
      f"10 real deliveries answered {answers}, slowest in {max(took)*1000:.0f} ms", [round(t*1000) for t in took], f"(a bare connect before them: {connect_ms:.0f} ms)")
for s in socks: s.close()
p.terminate(); p.wait()
