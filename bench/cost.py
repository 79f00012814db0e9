#!/usr/bin/env python3
"""What one copy costs the front, side by side with nginx's built-in mirror.

One front nginx (build/nginx with the module, a single process), a backend and a mirror
sink that are Debian's nginx (`return 204`; HTTP/1.1 on one port, h2c on another), 8
keepalive client connections (wrk). Two figures per cell:

- instructions per copy: the front under `valgrind --tool=callgrind --separate-threads=yes`,
  all threads, marginal between a run of 1,000 and one of 5,000 requests (start-up cancels),
  less the no-mirror cell's, divided by the copies per request. Independent of the load.
- system calls per copy (SYSCALLS=1): every thread of the front under `strace -f -c`,
  marginal between 1,000 and 5,000 requests as above.
- CPU µs per copy: the front's utime+stime (runtime threads included) per request in a wrk
  run, less the no-mirror cell's, divided by the copies per request; median of alternating
  rounds.

    python3 bench/cost.py                       # every cell
    CELLS=none,h1,h2 ROUNDS=3 DURATION=5 python3 bench/cost.py
    SKIP_CPU=1 SKIP_CALLGRIND=1 SYSCALLS=1 CELLS=none,h1,h2-25 python3 bench/cost.py
    SKIP_CPU=1 CG_ROUNDS=3 CELLS=none,h1,h1-15 python3 bench/cost.py   # median of three

Cells: none, builtin, h1, h2, h1p (pipeline=8), file, file-full (/dev/full), h1-refused,
kafka and kafka-refused (a module built with FEATURES=kafka; KAFKA=1 starts librdkafka's mock
cluster, target/release/examples/mock_broker), and h1-N, h2-N, h1p-N (sample=N%).
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench import free_port, wait_port  # bench/bench.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX = os.path.join(ROOT, "build", "nginx")
# MODULE=path: another build of the module (an older commit's, for a before/after table).
MODULE = os.environ.get("MODULE") or os.path.join(ROOT, "build", "ngx_http_async_mirror_module.so")
DEBIAN_NGINX = "/usr/sbin/nginx"
# How long a peer or a front (not under a tool) may take to open its port, in seconds.
PORT_WAIT = 30.0

# cell -> (location body, copies per request expected)
CELLS = {
    "none": "",
    "builtin": "mirror /builtin-mirror;",
    "h1": "async_mirror http://127.0.0.1:{h1};",
    "h2": "async_mirror http://127.0.0.1:{h2}; async_mirror_http_version 2;",
    "h1-15": "async_mirror http://127.0.0.1:{h1} sample=15%;",
    "h2-15": "async_mirror http://127.0.0.1:{h2} sample=15%; async_mirror_http_version 2;",
    "h1p": "async_mirror http://127.0.0.1:{h1}; async_mirror_http_version 1.1 pipeline=8;",
    "h1p-15": "async_mirror http://127.0.0.1:{h1} sample=15%; async_mirror_http_version 1.1 pipeline=8;",
    # A capture target: request and answer records appended to a file in the front's prefix.
    "file": "async_mirror file:capture.gor;",
    # A full disk: every write fails (ENOSPC), every copy ends failed{write}.
    "file-full": "async_mirror file:/dev/full;",
    # Kafka (make module FEATURES=kafka; KAFKA=1 starts librdkafka's mock cluster).
    "kafka": "async_mirror kafka://{broker}/copies;",
    # Dead peers: a refused port, as an HTTP mirror and as a Kafka broker.
    "h1-refused": "async_mirror http://127.0.0.1:{refused};",
    "kafka-refused": "async_mirror kafka://127.0.0.1:{refused}/copies;",
}


def cell_body(cell):
    """A cell's location body; `h1-25`, `h2-5`, `h1p-50`: that protocol at sample=N%."""
    if cell in CELLS:
        return CELLS[cell]
    proto, _, pct = cell.rpartition("-")
    if proto in ("h1", "h2", "h1p") and pct.isdigit() and 0 < int(pct) <= 100:
        return CELLS[proto].replace(";", f" sample={pct}%;", 1)
    raise SystemExit(f"unknown cell {cell!r}: one of {', '.join(CELLS)} or h1-N, h2-N, h1p-N")


def start_peers(work):
    """Debian's nginx: the backend (HTTP/1.1) and the mirror sink (HTTP/1.1 and h2c)."""
    ports = {"backend": free_port(), "h1": free_port(), "h2": free_port()}
    d = os.path.join(work, "peers")
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    conf = f"""daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/logs/error.log warn; {"user root;" if os.geteuid() == 0 else ""}
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{ports["backend"]}; listen 127.0.0.1:{ports["h1"]}; location / {{ return 204; }} }}
  server {{ listen 127.0.0.1:{ports["h2"]} http2; location / {{ return 204; }} }}
}}
"""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    p = subprocess.Popen([DEBIAN_NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e", os.path.join(d, "logs/error.log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports.values():
        wait_port(port, PORT_WAIT)
    # Bound but not listening: connects are refused, and no front is given this port.
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    ports["refused"] = refused.getsockname()[1]
    p.refused = refused
    ports["broker"] = "KAFKA=1 starts a broker"
    if os.environ.get("KAFKA", "") not in ("", "0"):
        broker = subprocess.Popen([os.path.join(ROOT, "target", "release", "examples", "mock_broker")],
                                  stdout=subprocess.PIPE, text=True)
        ports["broker"] = broker.stdout.readline().strip()
        p.broker = broker
    return p, ports


def stop_peers(peers):
    os.kill(peers.pid, signal.SIGQUIT)
    peers.wait(timeout=30)
    broker = getattr(peers, "broker", None)
    if broker:
        broker.kill()
        broker.wait(timeout=30)


def front_conf(work, cell, ports, port):
    body = cell_body(cell).format(**ports)
    ours = cell not in ("none", "builtin")
    module = f"load_module {MODULE};" if ours else ""
    zone = "async_mirror_zone cost 1m;" if ours else ""
    status = "location = /cost-status { async_mirror_status; }" if ours else ""
    return f"""{module}
daemon off; master_process off; worker_processes 1; pid {work}/front.pid;
error_log {work}/front-error.log notice;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; {zone}
  upstream backend {{ server 127.0.0.1:{ports["backend"]}; keepalive 32; }}
  upstream sink {{ server 127.0.0.1:{ports["h1"]}; keepalive 32; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ {body} proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location = /builtin-mirror {{ internal; proxy_pass http://sink$request_uri; proxy_http_version 1.1;
                                 proxy_set_header Connection ""; }}
    {status}
  }}
}}
"""


def copies(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cost-status?format=json", timeout=5) as r:
            t = json.load(r)["targets"]
            return sum(x["attempted"] for x in t), t
    except Exception:
        return 0, []


def drive(port, n, conns=8):
    """Exactly `n` GET requests over `conns` keepalive connections (one thread each)."""
    import threading

    def one(k):
        s = socket.create_connection(("127.0.0.1", port))
        f = s.makefile("rb")
        for _ in range(k):
            s.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
            length = 0
            while True:
                line = f.readline()
                if not line:
                    raise SystemExit("connection closed")
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b"\n"):
                    break
            f.read(length)
        s.close()

    threads = [threading.Thread(target=one, args=(n // conns + (1 if i < n % conns else 0),)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def settle(port, limit=30.0):
    """Waits until every copy has ended (attempted == ended)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        _, ts = copies(port)
        if all(sum(x["outcomes"].values()) == x["attempted"] and x["inflight"] == 0 for x in ts):
            return
        time.sleep(0.1)


def callgrind_run(work, tag, ports, n, cell=None):
    d = os.path.join(work, f"cg-{tag}-{n}")
    return traced_run(d, cell or tag, ports, n, ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                                                 f"--callgrind-out-file={d}/cg.out"], summed_instructions)


def summed_instructions(d):
    total = 0
    for name in os.listdir(d):
        if name.startswith("cg.out"):
            with open(os.path.join(d, name)) as f:
                for line in f:
                    if line.startswith("summary:"):
                        total += int(line.split()[1])
    return total


def syscalls_run(work, cell, ports, n):
    """System calls of every thread of the front (`strace -f -c`), for SYSCALLS=1."""
    d = os.path.join(work, f"sc-{cell}-{n}")

    def calls(d):
        with open(os.path.join(d, "strace.txt")) as f:
            total = [line for line in f if line.rstrip().endswith(" total")]
        return int(total[-1].split()[3]) if total else 0
    return traced_run(d, cell, ports, n, ["strace", "-f", "-c", "-o", f"{d}/strace.txt"], calls)


def traced_run(d, cell, ports, n, tool, count):
    """`n` requests to a front run under `tool`; what `count` read from its output, and the copies."""
    port = free_port()
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(front_conf(d, cell, ports, port))
    p = subprocess.Popen(tool + [NGINX, "-p", d, "-c", conf, "-e", f"{d}/front-error.log"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 120)
    drive(port, n)
    settle(port)
    attempted, ts = copies(port)
    # nginx itself, not a tracer around it (strace does not pass the signal on).
    try:
        with open(os.path.join(d, "front.pid")) as f:
            os.kill(int(f.read().split()[0]), signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        os.kill(p.pid, signal.SIGQUIT)
    p.wait(timeout=120)
    # The status requests were served too: each is one request more, no copy.
    return count(d), attempted


def callgrind_cells(work, cells, ports, results):
    """Instructions per request and copies per request of each cell, into `results`.

    CG_ROUNDS=N runs each cell N times and keeps the median: how copies share the runtime's
    wake-ups depends on timing even under callgrind, so single runs of the cells with a
    mirror move by a few hundred instructions per copy (sampled cells by a few thousand)."""
    rounds = int(os.environ.get("CG_ROUNDS", 1))
    for cell in cells:
        runs = []
        for k in range(rounds):
            tag = f"{cell}-r{k}" if rounds > 1 else cell
            (i1, a1), (i5, a5) = callgrind_run(work, tag, ports, 1000, cell), callgrind_run(work, tag, ports, 5000, cell)
            copies_per_req = 1.0 if cell == "builtin" else (a5 - a1) / 4000
            runs.append(((i5 - i1) / 4000, copies_per_req))
        per_req, copies_per_req = sorted(runs)[len(runs) // 2]
        results.setdefault(cell, {}).update(instr_per_req=per_req, copies_per_req=copies_per_req,
                                            instr_runs=[r[0] for r in runs])
        print(f"{cell:8} instructions per request {per_req:9.0f}  copies per request {copies_per_req:.3f}"
              + (f"  (runs: {', '.join(f'{r[0]:.0f}' for r in runs)})" if rounds > 1 else ""),
              file=sys.stderr, flush=True)


def instructions_per_copy(cells):
    """For bench/bench.py: each cell's instructions per copy, the no-mirror cell's subtracted."""
    work = tempfile.mkdtemp(prefix="cost-", dir=os.path.join(ROOT, "build"))
    peers, ports = start_peers(work)
    results = {}
    try:
        callgrind_cells(work, ["none"] + [c for c in cells if c != "none"], ports, results)
    finally:
        stop_peers(peers)
    base = results["none"]["instr_per_req"]
    return {c: (r["instr_per_req"] - base) / max(r["copies_per_req"], 1e-9) for c, r in results.items() if c != "none"}


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_run(work, cell, ports, duration):
    port = free_port()
    d = os.path.join(work, f"cpu-{cell}")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(front_conf(d, cell, ports, port))
    p = subprocess.Popen([NGINX, "-p", d, "-c", conf, "-e", f"{d}/front-error.log"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, PORT_WAIT)
    try:
        # Warm up: connections opened, pools grown.
        subprocess.run(["wrk", "-t2", "-c8", "-d1s", f"http://127.0.0.1:{port}/c"], stdout=subprocess.DEVNULL, check=False)
        settle(port)
        c0, a0 = cpu_of(p.pid), copies(port)[0]
        out = subprocess.run(["wrk", "-t2", "-c8", f"-d{duration}s", f"http://127.0.0.1:{port}/c"],
                             capture_output=True, text=True, check=False).stdout
        settle(port)
        c1, a1 = cpu_of(p.pid), copies(port)[0]
        reqs = next((int(l.split()[0]) for l in out.splitlines() if "requests in" in l), 0)
        rps = next((float(l.split()[1]) for l in out.splitlines() if l.startswith("Requests/sec")), 0.0)
        return (c1 - c0) / max(reqs, 1), (a1 - a0) / max(reqs, 1), rps
    finally:
        os.kill(p.pid, signal.SIGQUIT)
        p.wait(timeout=30)


def main():
    for tool in ("wrk", "valgrind"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (make bench-deps)")
    if not os.path.exists(DEBIAN_NGINX):
        raise SystemExit("Debian's nginx is needed: apt-get install nginx")
    cells = [c for c in os.environ.get("CELLS", ",".join(CELLS)).split(",") if c]
    rounds = int(os.environ.get("ROUNDS", 3))
    duration = int(os.environ.get("DURATION", 5))
    work = tempfile.mkdtemp(prefix="cost-", dir=os.path.join(ROOT, "build"))
    peers, ports = start_peers(work)
    results = {}
    try:
        if os.environ.get("SKIP_CALLGRIND", "") == "":
            callgrind_cells(work, cells, ports, results)
        if os.environ.get("SYSCALLS", "") not in ("", "0"):
            for cell in cells:
                (s1, a1), (s5, a5) = syscalls_run(work, cell, ports, 1000), syscalls_run(work, cell, ports, 5000)
                copies_per_req = 1.0 if cell == "builtin" else (a5 - a1) / 4000
                results.setdefault(cell, {}).update(syscalls_per_req=(s5 - s1) / 4000, sc_copies_per_req=copies_per_req)
                print(f"{cell:8} system calls per request {(s5 - s1) / 4000:6.2f}  copies per request {copies_per_req:.3f}",
                      flush=True)
        if os.environ.get("SKIP_CPU", "") == "":
            samples = {c: [] for c in cells}
            for r in range(rounds):
                for cell in cells:
                    cpu, cpr, rps = cpu_run(work, cell, ports, duration)
                    if cell == "builtin":
                        cpr = 1.0
                    samples[cell].append((cpu, cpr, rps))
                    print(f"round {r} {cell:8} CPU µs per request {cpu * 1e6:6.1f}  copies/req {cpr:.3f}  {rps:8.0f} req/s", flush=True)
            for cell, s in samples.items():
                results.setdefault(cell, {}).update(
                    cpu_per_req=statistics.median(x[0] for x in s),
                    cpu_copies_per_req=statistics.median(x[1] for x in s),
                    rps=statistics.median(x[2] for x in s))
    finally:
        stop_peers(peers)
    base = results.get("none", {})
    print("\n| cell | instructions per copy | CPU µs per copy | req/s (ratio to none) | system calls per copy |")
    print("|---|---|---|---|---|")
    for cell in cells:
        r = results[cell]
        if cell == "none":
            print(f"| none (per whole request) | {r.get('instr_per_req', 0) / 1000:.1f}k per request | "
                  f"{r.get('cpu_per_req', 0) * 1e6:.1f} per request | {r.get('rps', 0):.0f} | "
                  f"{r.get('syscalls_per_req', 0):.2f} per request |")
            continue
        ins = (r.get("instr_per_req", 0) - base.get("instr_per_req", 0)) / max(r.get("copies_per_req", 1), 1e-9)
        cpu = (r.get("cpu_per_req", 0) - base.get("cpu_per_req", 0)) / max(r.get("cpu_copies_per_req", 1), 1e-9)
        ratio = r.get("rps", 0) / max(base.get("rps", 1), 1)
        sc = (r.get("syscalls_per_req", 0) - base.get("syscalls_per_req", 0)) / max(r.get("sc_copies_per_req", 1), 1e-9)
        print(f"| {cell} | {ins / 1000:.1f}k | {cpu * 1e6:.1f} | {r.get('rps', 0):.0f} ({ratio:.2f}×) | {sc:.2f} |")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n(results in {work}/results.json)")


if __name__ == "__main__":
    sys.exit(main())
