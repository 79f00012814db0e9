#!/usr/bin/env python3
"""Benchmark: nginx without a mirror, nginx's built-in `mirror`, async_mirror and
Envoy's request_mirror_policies, against a mirror that is up, refusing, black-holed
(connect hangs) or slow (200 ms), all on this machine in one run.

Every figure is reported next to "no mirror" measured in the same run, because
machines here are shared and noisy. Run through `make bench` / `make bench-soak`.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
NGINX = os.path.join(BUILD, "nginx")
MODULE = os.path.join(BUILD, "ngx_http_async_mirror_module.so")
PEERS = os.path.join(ROOT, "target", "release", "examples", "peers")
LUA = os.path.join(ROOT, "bench", "latency.lua")
STATES = ["up", "refused", "blackhole", "slow", "delay"]
MODES = ["none", "builtin", "async", "async-h2", "envoy"]
# Mirrors that answer, whose received copies are counted: a sink, a 200 ms responder, and
# a real service answering after DELAY_MS (HTTP/1.1 and h2c on one port).
LIVE = ["up", "slow", "delay"]
DELAY_MS = int(os.environ.get("DELAY_MS", 20))
# `async-base` (with BASE_MODULE=path/to/an/older/ngx_http_async_mirror_module.so) runs the
# async cells with that build, side by side with the current one in the same run.
BASE_MODULE = os.environ.get("BASE_MODULE", "")
# JSON=1: the backend and the mirror peers answer the same 1 KiB JSON document, so that
# `async-compare` (async_mirror_compare on) compares real JSON; a matching mirror parses it whole.
JSON = os.environ.get("JSON", "") not in ("", "0")


CELLS = [0]


def split_mode(mode):
    """`async-h2:15` is async_mirror over HTTP/2 with sample=15%; no suffix copies everything."""
    name, _, sample = mode.partition(":")
    return name, (float(sample) if sample else None)


def is_async(mode):
    return mode.startswith("async")


def module_for(mode):
    mode = split_mode(mode)[0]
    if mode == "async-base":
        if not BASE_MODULE:
            raise SystemExit("MODES has async-base but BASE_MODULE is not set")
        return BASE_MODULE
    return MODULE if is_async(mode) else None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=10.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def proc_children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pids, main_thread_only=False):
    """utime + stime of the processes (all threads), or of their main (nginx) threads only."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = f"/proc/{pid}/task/{pid}/stat" if main_thread_only else f"/proc/{pid}/stat"
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / tick


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Proc:
    """A process we started, stopped by its PID."""

    def __init__(self, args, **kw):
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

    def stop(self, sig=signal.SIGTERM, limit=20):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(limit)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def peer_stats(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/__peer_stats", timeout=2) as r:
            return {k: int(v) for k, v in (x.split("=") for x in r.read().decode().split())}
    except OSError:
        return {}


def nginx_conf(workdir, name, http, workers=2, module=None):
    prefix = os.path.join(workdir, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write(
            (f"load_module {module};\n" if module else "")
            + f"{user}daemon off;\nworker_processes {workers};\n"
            + f"error_log {prefix}/logs/error.log notice;\npid {prefix}/logs/nginx.pid;\n"
            + "worker_rlimit_nofile 65536;\n"
            + "events { worker_connections 16384; }\n"
            + f"http {{ access_log off; keepalive_requests 1000000;\n"
            + f"client_body_temp_path {prefix}/b; proxy_temp_path {prefix}/p;\n{http}\n}}\n"
        )
    return prefix, conf


def front_http(mode, port, backend, mirror):
    upstream = (
        f"upstream backend {{ server 127.0.0.1:{backend} max_fails=3 fail_timeout=10s; keepalive 32; }}\n"
        f"upstream mirror {{ server 127.0.0.1:{mirror}; }}\n"
    )
    proxy = 'proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";'
    if mode == "none":
        loc = f"location / {{ {proxy} }}"
    elif mode == "builtin":
        loc = (
            f"location / {{ mirror /__mirror; {proxy} }}\n"
            f"location = /__mirror {{ internal; proxy_pass http://mirror$request_uri; }}"
        )
    elif is_async(mode):
        name, sample = split_mode(mode)
        sample = f" sample={sample:g}%" if sample else ""
        version = " async_mirror_http_version 2;" if name == "async-h2" else ""
        compare = " async_mirror_compare on;" if name == "async-compare" else ""
        loc = f"location / {{ async_mirror http://127.0.0.1:{mirror}{sample};{version}{compare} {proxy} }}"
    else:
        raise ValueError(mode)
    limits = "client_max_body_size 64m;" + (" async_mirror_body_max_size 64m;" if is_async(mode) else "")
    if is_async(mode):
        # Summed over both workers, read once after the run (comparison verdicts).
        limits += " async_mirror_zone bench 1m;"
        loc += " location = /__status { async_mirror off; async_mirror_status; }"
    return upstream + f"{limits}\nserver {{ listen 127.0.0.1:{port} backlog=4096; {loc} }}"


def envoy_yaml(port, backend, mirror, sample=None):
    def cluster(name, p):
        return f"""
  - name: {name}
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}]}}]"""

    fraction = "" if sample is None else (
        f", runtime_fraction: {{default_value: {{numerator: {int(sample * 10000)}, denominator: MILLION}}}}")
    return f"""static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: backend
                  request_mirror_policies: [{{cluster: mirror{fraction}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{cluster("backend", backend)}{cluster("mirror", mirror)}
"""


SCRIPT = LUA


def use_upload(body_bytes, workdir):
    """Makes every wrk request a POST with a body of `body_bytes`."""
    global SCRIPT
    SCRIPT = os.path.join(workdir, "upload.lua")
    with open(SCRIPT, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = string.rep("a", {body_bytes})\n' + open(LUA).read())


def run_wrk(port, conns, duration):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", SCRIPT, f"http://127.0.0.1:{port}/bench"],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk produced no result:\n" + out)
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def exit_counters(log_path):
    counters = {}
    try:
        text = open(log_path).read()
    except OSError:
        return counters
    for line in text.splitlines():
        m = re.search(r'async_mirror: worker exiting, target "[^"]*": (.*)$', line)
        if m:
            for kv in m.group(1).split():
                k, v = kv.split("=")
                counters[k] = counters.get(k, 0) + int(v)
    return counters


def measure(args, workdir, mode, state, conns, ports, envoy_bin):
    mirror = ports[state]
    port = free_port()
    if split_mode(mode)[0] == "envoy":
        cfg = os.path.join(workdir, f"envoy-{state}-{conns}.yaml")
        with open(cfg, "w") as f:
            f.write(envoy_yaml(port, ports["backend"], mirror, split_mode(mode)[1]))
        proc = Proc([envoy_bin, "-c", cfg, "--concurrency", "2", "--log-level", "error",
                     "--base-id", str(port)])
        pids = lambda: [proc.p.pid]
    else:
        # A mode listed twice (alternating builds) gets a fresh prefix: its exit counters
        # are read from its own error log.
        CELLS[0] += 1
        prefix, conf = nginx_conf(workdir, f"front-{CELLS[0]}-{mode.replace(':', '-')}-{state}-{conns}",
                                  front_http(mode, port, ports["backend"], mirror), module=module_for(mode))
        proc = Proc([NGINX, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "logs/error.log")])
        pids = lambda: proc_children(proc.p.pid)
    try:
        wait_port(port)
        # The peer's counts cover the whole life of this front, as the module's counters do.
        sink_before = peer_stats(ports[state]) if state in LIVE else {}
        # Warm up pools and caches, then measure.
        run_wrk(port, conns, 1)
        workers = pids()
        rss_before = rss_kib(workers)
        cpu_before = cpu_seconds(workers)
        main_before = cpu_seconds(workers, main_thread_only=True)
        r = run_wrk(port, conns, args.duration)
        cpu = cpu_seconds(workers) - cpu_before
        main_cpu = cpu_seconds(workers, main_thread_only=True) - main_before
        rss_after = rss_kib(workers)
        copies = conns_opened = None
        peer = {}
        if state in LIVE:
            last = None
            for _ in range(60):  # let copies in flight land (bounded: 6 s)
                now = peer_stats(ports[state])
                if now == last:
                    break
                last = now
                time.sleep(0.1)
            peer = {k: v - sink_before.get(k, 0) for k, v in last.items()}
            copies, conns_opened = peer.get("requests", 0), peer.get("connections", 0)
        verdicts = comparison_verdicts(port) if split_mode(mode)[0] == "async-compare" else None
    finally:
        proc.stop(signal.SIGQUIT if not mode.startswith("envoy") else signal.SIGTERM)
    r.update(mode=mode, state=state, conns=conns, cpu_s=cpu, cpu_us_per_req=cpu / max(r["requests"], 1) * 1e6,
             main_us_per_req=main_cpu / max(r["requests"], 1) * 1e6,
             rss_before_kib=rss_before, rss_after_kib=rss_after, copies=copies, mirror_conns=conns_opened, peer=peer,
             verdicts=verdicts)
    if is_async(mode):
        r["counters"] = exit_counters(os.path.join(prefix, "logs/error.log"))
    return r


def comparison_verdicts(port):
    """Verdict counts summed over endpoints, from the front's JSON status page."""
    time.sleep(0.6)  # workers fold their counters into the zone every 250 ms
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__status?format=json", timeout=5) as resp:
        doc = json.load(resp)
    out = {}
    for t in doc["targets"]:
        for e in t.get("comparisons", []):
            for k, v in e["verdicts"].items():
                out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}


def fmt_lat(us):
    return f"{us / 1000:.2f}" if us < 100_000 else f"{us / 1000:.0f}"


def cost_cell(mode):
    """bench/cost.py's cell with this mode's configuration (`async-h2:15` -> `h2-15`), if any."""
    name, sample = split_mode(mode)
    base = {"builtin": "builtin", "async": "h1", "async-h2": "h2"}.get(name)
    if base is None or (sample is not None and (base == "builtin" or sample != int(sample))):
        return None
    return base if sample is None else f"{base}-{int(sample)}"


def instructions(modes):
    """Instructions per copy (callgrind, independent of load) for the modes bench/cost.py has a
    cell for, measured by it after the wrk cells; INSTR=0 skips them."""
    if os.environ.get("INSTR", "1") == "0" or not shutil.which("valgrind"):
        return {}
    cells = {m: cost_cell(m) for m in modes if cost_cell(m)}
    if not cells:
        return {}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cost
    per_copy = cost.instructions_per_copy(sorted(set(cells.values())))
    return {m: per_copy.get(c) for m, c in cells.items()}


def copies_per_request(mode):
    name, sample = split_mode(mode)
    return 0.0 if name == "none" else (sample / 100 if sample else 1.0)


def derive(results):
    """Per cell: front CPU µs per copy, the module's delivered share, the peer's share."""
    cpu_none = {r["conns"]: r["cpu_us_per_req"] for r in results if r["mode"] == "none"}
    main_none = {r["conns"]: r["main_us_per_req"] for r in results if r["mode"] == "none"}
    for r in results:
        per = copies_per_request(r["mode"])
        r["cpu_us_per_copy"] = (r["cpu_us_per_req"] - cpu_none.get(r["conns"], 0)) / per if per else None
        r["main_us_per_copy"] = (r["main_us_per_req"] - main_none.get(r["conns"], 0)) / per if per else None
        c = r.get("counters") or {}
        r["attempted"] = c.get("attempted")
        r["delivered_share"] = c["ok"] / c["attempted"] if c.get("attempted") else None
        expected = r["attempted"] if r["attempted"] is not None else r["requests"] * per
        r["peer_share"] = r["copies"] / expected if r["copies"] is not None and expected else None


def pct(v):
    return "" if v is None else f"{100 * v:.1f} %"


def table(results):
    lines = ["| mode | mirror | conns | req/s | × no-mirror | p50 ms | p99 ms | p99 × | CPU µs/req | CPU µs/copy "
             "| nginx-thread µs/copy | instructions/copy "
             "| copies attempted | delivered (module) | received (peer) | mirror conns (h1/h2) | errors | RSS KiB before→after "
             "| verdicts |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        errs = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
        p = r.get("peer") or {}
        conns = "" if r["mirror_conns"] is None else (
            f'{r["mirror_conns"]} ({p.get("h1_connections", r["mirror_conns"])}/{p.get("h2_connections", 0)})')
        cpc = "" if r.get("cpu_us_per_copy") is None else f'{r["cpu_us_per_copy"]:.1f}'
        mpc = "" if r.get("main_us_per_copy") is None else f'{r["main_us_per_copy"]:.1f}'
        att = "" if r.get("attempted") is None else str(r["attempted"])
        ins = "" if r.get("instr_per_copy") is None else f'{r["instr_per_copy"] / 1000:.1f}k'
        lines.append(
            f'| {r["mode"]} | {r["state"]} | {r["conns"]} | {r["rps"]:.0f} | {r["ratio"]:.2f} | {fmt_lat(r["p50"])} | '
            f'{fmt_lat(r["p99"])} | {r["p99_ratio"]:.2f} | {r["cpu_us_per_req"]:.1f} | {cpc} | {mpc} | {ins} | {att} | '
            f'{pct(r.get("delivered_share"))} | {"" if r["copies"] is None else r["copies"]} {pct(r.get("peer_share"))} | '
            f'{conns} | {errs} | {r["rss_before_kib"]}→{r["rss_after_kib"]} | '
            f'{" ".join(f"{k}={v}" for k, v in sorted((r.get("verdicts") or {}).items()))} |')
    return "\n".join(lines)


def svg_chart(results, path):
    """Grouped bars: throughput ratio and p99 ratio to no-mirror, per mode × mirror state (first conns level)."""
    conns = results[0]["conns"]
    modes = [m for m in ["builtin", "envoy", "async-base", "async", "async-h2"] if any(r["mode"] == m for r in results)]
    colors = {"builtin": "#d62728", "envoy": "#ff7f0e", "async-base": "#98df8a", "async": "#2ca02c", "async-h2": "#1f77b4"}
    cells = {(r["mode"], r["state"]): r for r in results if r["conns"] == conns}
    W, H, pad = 900, 360, 60
    panel_w = (W - 2 * pad) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for pi, (key, title, top) in enumerate([("ratio", f"throughput × no-mirror (wrk -c{conns})", 1.2),
                                             ("p99_ratio_plot", "p99 latency × no-mirror (log scale)", None)]):
        x0 = pad + pi * panel_w
        ph = H - 2 * pad
        out.append(f'<text x="{x0 + panel_w / 2}" y="{pad - 25}" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{pad + ph}" x2="{x0 + panel_w - 20}" y2="{pad + ph}" stroke="black"/>')
        import math
        if key == "ratio":
            scale = lambda v: min(v, top) / top * ph
            for t in [0, 0.25, 0.5, 0.75, 1.0]:
                y = pad + ph - scale(t)
                out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + panel_w - 20}" y2="{y}" stroke="#ddd"/>'
                           f'<text x="{x0 - 5}" y="{y + 4}" text-anchor="end">{t}</text>')
        else:
            lmax = 4  # 10^4 ×
            scale = lambda v: max(0.0, min(math.log10(max(v, 1.0)), lmax)) / lmax * ph
            for t in range(lmax + 1):
                y = pad + ph - t / lmax * ph
                out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + panel_w - 20}" y2="{y}" stroke="#ddd"/>'
                           f'<text x="{x0 - 5}" y="{y + 4}" text-anchor="end">{10 ** t}</text>')
        gw = (panel_w - 20) / len(STATES)
        bw = gw * 0.8 / max(len(modes), 1)
        for si, state in enumerate(STATES):
            gx = x0 + si * gw + gw * 0.1
            out.append(f'<text x="{gx + gw * 0.4}" y="{pad + ph + 16}" text-anchor="middle">{state}</text>')
            for mi, mode in enumerate(modes):
                r = cells.get((mode, state))
                if not r:
                    continue
                v = r["ratio"] if key == "ratio" else r["p99_ratio"]
                h = scale(v)
                out.append(f'<rect x="{gx + mi * bw}" y="{pad + ph - h}" width="{bw - 2}" height="{h}" fill="{colors[mode]}">'
                           f'<title>{mode} {state}: {v:.2f}</title></rect>')
                out.append(f'<text x="{gx + mi * bw + bw / 2}" y="{pad + ph - h - 3}" text-anchor="middle" font-size="9">'
                           f'{v:.2f}</text>' if v < 100 else
                           f'<text x="{gx + mi * bw + bw / 2}" y="{pad + ph - h - 3}" text-anchor="middle" font-size="9">{v:.0f}</text>')
    for mi, mode in enumerate(modes):
        out.append(f'<rect x="{pad + mi * 150}" y="{H - 22}" width="12" height="12" fill="{colors[mode]}"/>'
                   f'<text x="{pad + mi * 150 + 16}" y="{H - 12}">{ {"builtin": "nginx mirror", "envoy": "Envoy shadow", "async-base": "async_mirror (base)", "async": "async_mirror", "async-h2": "async_mirror h2"}[mode]}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def json_document():
    """A 1 KiB JSON answer: nested objects, an array of items, strings and numbers."""
    items = [{"id": i, "sku": f"SKU-{i:05d}", "price": 10 + i, "tags": ["a", "b"]} for i in range(8)]
    doc = {"order": {"id": "o-123", "customer": {"name": "Ada", "tier": "gold"}}, "items": items,
           "total": sum(x["price"] for x in items), "currency": "EUR", "notes": ""}
    text = json.dumps(doc, separators=(",", ":"))
    doc["notes"] = "x" * max(0, 1024 - len(text))
    return json.dumps(doc, separators=(",", ":"))


def start_peers(workdir):
    ports = {"backend": free_port(), "up": free_port(), "slow": free_port(), "blackhole": free_port(),
             "refused": free_port(), "delay": free_port()}
    answer = 'return 200 "hello\\n";'
    if JSON:
        body = json_document()
        path = os.path.join(workdir, "body.json")
        with open(path, "w") as f:
            f.write(body)
        os.environ["PEER_BODY"] = path
        answer = f"default_type application/json; return 200 '{body}';"
    procs = [Proc([PEERS, "sink", str(ports["up"])]),
             Proc([PEERS, "slow", str(ports["slow"]), "200"]),
             Proc([PEERS, "delay", str(ports["delay"]), str(DELAY_MS)]),
             Proc([PEERS, "blackhole", str(ports["blackhole"])])]
    prefix, conf = nginx_conf(workdir, "backend",
                              f'client_max_body_size 64m; server {{ listen 127.0.0.1:{ports["backend"]} backlog=4096; '
                              f'location / {{ {answer} }} }}', workers=1)
    procs.append(Proc([NGINX, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "logs/error.log")]))
    for k in ["backend", "up", "slow", "delay"]:
        wait_port(ports[k])
    time.sleep(0.5)  # the black hole fills its accept queue before printing ready
    return ports, procs


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", 10)))
    ap.add_argument("--conns", default=os.environ.get("CONNS", "10,100"))
    ap.add_argument("--modes", default=os.environ.get("MODES", ",".join(MODES)))
    ap.add_argument("--states", default=os.environ.get("STATES", ",".join(STATES)))
    ap.add_argument("--envoy", default=os.environ.get("ENVOY", os.path.join(BUILD, "pydeps/envoy/_bin/envoy")))
    ap.add_argument("--soak", action="store_true", help="60 s at -c100 against a black hole, then a slow mirror")
    ap.add_argument("--upload", type=int, default=int(os.environ.get("UPLOAD", 0)),
                    help="POST bodies of this many bytes instead of GETs")
    args = ap.parse_args()

    workdir = os.path.join(BUILD, "bench-run")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    if args.upload:
        use_upload(args.upload, workdir)
    ports, peers = start_peers(workdir)
    try:
        if args.soak:
            return soak(args, workdir, ports)
        modes = [m for m in args.modes.split(",") if m]
        if "envoy" in modes and not os.access(args.envoy, os.X_OK):
            print(f"envoy not found at {args.envoy}; skipping Envoy", file=sys.stderr)
            modes.remove("envoy")
        results = []
        for conns in [int(c) for c in args.conns.split(",")]:
            base = measure(args, workdir, "none", "up", conns, ports, args.envoy)
            base["state"] = "-"
            base["copies"] = base["mirror_conns"] = None
            results.append(base)
            print(f"none -c{conns}: {base['rps']:.0f} req/s", file=sys.stderr)
            for mode in [m for m in modes if m != "none"]:
                for state in args.states.split(","):
                    r = measure(args, workdir, mode, state, conns, ports, args.envoy)
                    print(f"{mode} {state} -c{conns}: {r['rps']:.0f} req/s p99 {r['p99']} us", file=sys.stderr)
                    results.append(r)
            for r in results:
                if r["conns"] == conns:
                    r["ratio"] = r["rps"] / base["rps"]
                    r["p99_ratio"] = r["p99"] / max(base["p99"], 1)
        instr = instructions(modes)
        for r in results:
            r["instr_per_copy"] = instr.get(r["mode"]) if r["state"] == "up" else None
        report(args, results)
    finally:
        for p in peers:
            p.stop(signal.SIGQUIT if p.p.args[0] == NGINX else signal.SIGTERM)


def report(args, results):
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    name = stamp + (f"-upload-{args.upload}" if args.upload else "") + os.environ.get("BENCH_TAG", "")
    base = os.path.join(ROOT, "bench", "results", name)
    derive(results)
    md = table(results)
    cpu_none = {r["conns"]: r["cpu_us_per_req"] for r in results if r["mode"] == "none"}
    extra = []
    for r in results:
        if is_async(r["mode"]) and r["state"] in ("up", "delay"):
            extra.append(f'- {r["mode"]} {r["state"]} -c{r["conns"]}: CPU per copy ≈ {r["cpu_us_per_copy"]:.1f} µs '
                         f'(front CPU/request {r["cpu_us_per_req"]:.1f} µs with the mirror vs {cpu_none[r["conns"]]:.1f} µs without)')
    machine = f'{os.cpu_count()} cores, {os.uname().release}'
    cmd = f"make bench DURATION={args.duration} CONNS={args.conns}" + (
        f" MODES={args.modes} STATES={args.states}" if args.modes != ",".join(MODES) or args.states != ",".join(STATES) else ""
    ) + (f" UPLOAD={args.upload}" if args.upload else "") + (f" BASE_MODULE={BASE_MODULE}" if BASE_MODULE else "") + (
        f" DELAY_MS={DELAY_MS}" if "delay" in args.states else "")
    with open(base + ".json", "w") as f:
        json.dump({"date": stamp, "machine": machine, "command": cmd, "results": results}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"# {stamp}: `{cmd}` on {machine}\n\n{md}\n\n" + "\n".join(extra) + "\n")
    svg_chart(results, base + ".svg")
    print(md)
    print("\n".join(extra))
    print(f"\nwrote {base}.json, {base}.md, {base}.svg")


def soak(args, workdir, ports):
    port = free_port()
    out = []
    for state in ["blackhole", "slow"]:
        prefix, conf = nginx_conf(workdir, f"soak-{state}", front_http("async", port, ports["backend"], ports[state]),
                                  module=MODULE)
        proc = Proc([NGINX, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "logs/error.log")])
        try:
            wait_port(port)
            workers = proc_children(proc.p.pid)
            wrk = subprocess.Popen(["wrk", "-t2", "-c100", f"-d{args.duration if args.duration > 10 else 60}s",
                                    "--timeout", "5s", "-s", LUA, f"http://127.0.0.1:{port}/soak"],
                                   stdout=subprocess.PIPE, text=True)
            samples = []
            while wrk.poll() is None:
                samples.append(rss_kib(workers) / max(len(workers), 1))
                time.sleep(1)
            stdout = wrk.stdout.read()
            m = re.search(r"^JSON (.*)$", stdout, re.M)
            r = json.loads(m.group(1)) if m else {}
        finally:
            proc.stop(signal.SIGQUIT)
        counters = exit_counters(os.path.join(prefix, "logs/error.log"))
        line = (f"soak {state}: {r.get('requests', 0)} requests, worker RSS max {max(samples):.0f} KiB, "
                f"first 5 s max {max(samples[:5]):.0f} KiB, last 10 s max {max(samples[-10:]):.0f} KiB "
                f"(async_mirror_queue_bytes 32 MiB); counters {counters}")
        print(line)
        out.append({"state": state, "rss_kib_per_worker": samples, "wrk": r, "counters": counters})
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", datetime.datetime.now().strftime("%Y-%m-%d") + "-soak.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
