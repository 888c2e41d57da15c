#!/usr/bin/env python3
"""Faults and hostile input against the release binary, with figures for RELIABILITY.md.

    cargo build --release
    python3 scripts/reliability.py [--only NAME ...] > reliability.json

Starts a hostile fake WBIA (the turtle fixtures of scripts/fake_wbia.py, plus endpoints that
hang, trickle, stall and swallow uploads) and `wbia-lightglue serve` against it, runs each
scenario and prints one JSON object per scenario. Needs `ab` (apache2-utils) for the load
scenario; everything else is the standard library. Takes about 6 minutes (the slow-download
scenario alone lasts 90 s, the half-open one 40 s).
"""
import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_wbia  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BINARY = REPO / "target" / "release" / "wbia-lightglue"
MB = 1 << 20


class Hostile(fake_wbia.Handler):
    """fake_wbia's annotations, plus misbehaviour switched by path or by `MODE`."""

    MODE = {"heartbeat_hangs": False}

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = urllib.parse.urlparse(self.path).path
        if path == "/api/test/heartbeat/" and self.MODE["heartbeat_hangs"]:
            time.sleep(3600)
        if path == "/api/fake/slow/":
            # 10 MB over 90 s, declared up front: a total timeout of 60 s would cut it.
            self.send_response(200)
            self.send_header("Content-Length", str(10 * MB))
            self.end_headers()
            for _ in range(90):
                time.sleep(1)
                self.wfile.write(b"x" * (10 * MB // 90))
            self.wfile.write(b"x" * (10 * MB - 90 * (10 * MB // 90)))
            return
        if path == "/api/fake/stall/":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * MB))
            self.end_headers()
            self.wfile.write(b"y" * MB)
            time.sleep(3600)
            return
        return super().do_GET()

    def do_POST(self):
        if urllib.parse.urlparse(self.path).path == "/api/fake/upload/":
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                left -= len(self.rfile.read(min(left, MB)))
            return self.send_json(fake_wbia.envelope("stored"))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`wbia-lightglue serve` in its own data and config dirs."""

    def __init__(self, wbia_port, data_dir, extra=()):
        self.port = free_port()
        self.data_dir = data_dir
        config_dir = Path(data_dir) / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "config.json").write_text("{}")
        self.log = open(Path(data_dir) / "serve.log", "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BINARY), "serve", "--port", str(self.port), "--wbia-url", f"http://127.0.0.1:{wbia_port}",
             "--config-dir", str(config_dir), "--data-dir", str(Path(data_dir) / "store"),
             "--weights", str(REPO / "weights"), "--device", "cpu", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_listening(self, limit=30):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("service did not listen")

    def wait_ready(self, limit=120):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status, _ = get(self.base + "/health", timeout=10)
            if status == 200:
                return time.monotonic() - self.started
            time.sleep(0.1)
        raise RuntimeError("service not ready")

    def rss_hwm_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def rss_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def peak_rss_during(self, work):
        """Runs `work()` while sampling VmRSS every 20 ms: (its result, peak MiB)."""
        peak, done = [self.rss_mib()], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self.rss_mib())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = work()
        finally:
            done.set()
            sampler.join()
        return result, peak[0]

    def metric(self, name):
        _, text = get(self.base + "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def stop(self, sig=signal.SIGTERM, limit=40):
        self.proc.send_signal(sig)
        t0 = time.monotonic()
        code = self.proc.wait(limit)
        return code, time.monotonic() - t0


def get(url, timeout=120, data=None, method=None):
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        return None, str(e).encode()


def query(service, queries, database):
    form = urllib.parse.urlencode({
        "query_annot_uuid_list": json.dumps(queries),
        "database_annot_uuid_list": json.dumps(database),
        "pipeline_root": "LightGlue",
    }).encode()
    status, body = get(service.base + "/api/review/query/chip/best/", data=form)
    return status, json.loads(body) if status else body


TURTLES = [u for u in fake_wbia.ANNOTS if u.endswith(("a1", "a2", "b3", "b4"))]


def scores_of(answer):
    return {r["qannot_uuid"]["__UUID__"] if isinstance(r["qannot_uuid"], dict) else r["qannot_uuid"]:
            [(d["dannot_uuid"]["__UUID__"] if isinstance(d["dannot_uuid"], dict) else d["dannot_uuid"],
              round(d["score"], 4)) for d in r["ranked"]]
            for r in answer["response"]["query_results"]}


def scenario_hanging_wbia(wbia_port, tmp):
    Hostile.MODE["heartbeat_hangs"] = True
    try:
        s = Service(wbia_port, tmp / "hang")
        s.wait_listening()
        ready_after = s.wait_ready()
        latencies = []
        for _ in range(20):
            t0 = time.monotonic()
            status, body = get(s.base + "/health", timeout=30)
            latencies.append(time.monotonic() - t0)
        report = json.loads(body)
        s.stop()
        return {"ready_after_s": round(ready_after, 2), "health_status": status,
                "health_max_ms": round(max(latencies) * 1e3, 1),
                "wbia_reachable_reported": report["wbia_reachable"]}
    finally:
        Hostile.MODE["heartbeat_hangs"] = False


def scenario_uploads(service):
    """4 concurrent 200 MB uploads through the pass-through."""
    before = service.rss_mib()
    results = []

    def upload():
        size = 200 * MB
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.sendall(f"POST /api/fake/upload/ HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                     "Connection: close\r\n\r\n".encode())
        chunk = b"\0" * MB
        for _ in range(200):
            sock.sendall(chunk)
        answer = b""
        while True:
            got = sock.recv(65536)
            if not got:
                break
            answer += got
        results.append(answer.split(b"\r\n", 1)[0].decode())

    def run():
        threads = [threading.Thread(target=upload) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    t0 = time.monotonic()
    _, peak = service.peak_rss_during(run)
    return {"status_lines": results, "seconds": round(time.monotonic() - t0, 1),
            "rss_before_mib": round(before), "rss_peak_during_mib": round(peak)}


def scenario_slow_and_stalled_downloads(service):
    out = {}

    def slow():
        t0 = time.monotonic()
        status, body = get(service.base + "/api/fake/slow/", timeout=300)
        out["slow"] = {"status": status, "bytes": len(body) if status else 0, "expected": 10 * MB,
                       "seconds": round(time.monotonic() - t0, 1)}

    def stalled():
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(service.base + "/api/fake/stall/", timeout=300) as r:
                body = r.read()
                out["stall"] = {"status": r.status, "bytes": len(body), "error": None}
        except Exception as e:  # the cut must show as an error, never as a whole body
            out["stall"] = {"error": type(e).__name__ + ": " + str(e)[:80]}
        out["stall"]["seconds"] = round(time.monotonic() - t0, 1)

    threads = [threading.Thread(target=slow), threading.Thread(target=stalled)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def scenario_half_open(service, count=3000):
    """`count` connections that never finish their request head (slowloris). Beyond
    --max-connections (1024) and the listen backlog, connects wait in SYN retries."""
    socks, lock = [], threading.Lock()
    refused = [0]

    def open_some(n):
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", service.port), timeout=3)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
                with lock:
                    socks.append(s)
            except OSError:
                with lock:
                    refused[0] += 1

    threads = [threading.Thread(target=open_some, args=(count // 30,)) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t0 = time.monotonic()
    status, _ = get(service.base + "/health/live", timeout=120)
    probe_s = time.monotonic() - t0
    time.sleep(max(0.0, 40 - (time.monotonic() - t0)))
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1024) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except ConnectionError:
            closed += 1
        s.close()
    return {"attempted": count, "connected": len(socks), "connect_timed_out": refused[0],
            "closed_by_server_within_40_s": closed,
            "probe_status_during_flood": status, "probe_seconds_during_flood": round(probe_s, 1),
            "rss_high_water_mib": round(service.rss_hwm_mib())}


def scenario_jobids(service):
    huge = "j" * (1900 * 1000)
    statuses = []
    before = service.rss_mib()

    def run():
        for i in range(100):
            start_one(i)

    def start_one(i):
        form = urllib.parse.urlencode({
            "query_annot_uuid_list": json.dumps([TURTLES[0]]),
            "database_annot_uuid_list": json.dumps(TURTLES[1:]),
            "query_config_dict": json.dumps({"pipeline_root": "LightGlue"}),
            "jobid": huge + str(i),
        }).encode()
        statuses.append(get(service.base + "/api/engine/query/graph/", data=form)[0])

    _, peak = service.peak_rss_during(run)
    _, listing = get(service.base + "/api/engine/job/")
    return {"attempts": 100, "statuses": sorted(set(statuses)), "rss_before_mib": round(before),
            "rss_peak_during_mib": round(peak), "rss_after_mib": round(service.rss_mib()),
            "job_list_bytes": len(listing)}


def scenario_load(service, seconds=10, concurrency=32):
    out = {}
    # /api/annot/json/ is WBIA's (the fake's, a Python server): the pass-through figure is
    # bounded by it, so it says what the proxy costs on top, not what it can do alone.
    for name, path in [("health_live", "/health/live"), ("ours_heartbeat", "/api/test/heartbeat/"),
                       ("pass_through", "/api/annot/json/")]:
        proc = subprocess.run(["ab", "-q", "-k", "-t", str(seconds), "-n", "10000000", "-c", str(concurrency),
                               service.base + path], capture_output=True, text=True)
        fig = {}
        for line in proc.stdout.splitlines():
            if line.startswith("Requests per second:"):
                fig["requests_per_s"] = float(line.split()[3])
            if line.startswith("Failed requests:"):
                fig["failed"] = int(line.split()[2])
            if line.strip().startswith("(Connect:"):
                # ab counts bodies whose length differs from the first as failed; /health's
                # JSON varies in length (seconds since the last check), so that is no error.
                parts = dict(p.split(": ") for p in line.strip(" ()").split(", "))
                fig["failed_not_length"] = sum(int(v) for k, v in parts.items() if k != "Length")
            if line.startswith("Non-2xx responses:"):
                fig["non_2xx"] = int(line.split()[2])
            if line.strip().startswith("99%"):
                fig["p99_ms"] = float(line.split()[1])
            if line.strip().startswith("50%"):
                fig["p50_ms"] = float(line.split()[1])
        out[name] = fig
    out["rss_high_water_mib"] = round(service.rss_hwm_mib())
    out["concurrency"] = concurrency
    return out


def scenario_store(wbia_port, tmp):
    """Scores persisted, then: kill -9 mid-query, a corrupted header, corrupted middle pages."""
    root = tmp / "store"
    store = root / "store" / "features.sqlite3"
    s = Service(wbia_port, root)
    s.wait_listening()
    status, first = query(s, TURTLES, TURTLES)
    reference = scores_of(first)
    code, _ = s.stop()
    out = {"first_query_status": status, "rows": sqlite3.connect(store).execute(
        "SELECT COUNT(*) FROM lightglue_features").fetchone()[0]}

    # kill -9 while a query that needs new scores runs.
    s = Service(wbia_port, root, extra=["--verify-chip-bytes"])
    s.wait_listening()
    t = threading.Thread(target=query, args=(s, TURTLES, TURTLES))
    t.start()
    time.sleep(1.0)
    s.proc.kill()
    s.proc.wait()
    t.join()
    s = Service(wbia_port, root)
    s.wait_listening()
    status, again = query(s, TURTLES, TURTLES)
    out["after_kill9"] = {"status": status, "same_scores": scores_of(again) == reference}
    s.stop()

    # Garbage over the header: the file is set aside, the service starts, scores recomputed.
    with open(store, "r+b") as f:
        f.write(os.urandom(100))
    s = Service(wbia_port, root)
    s.wait_listening()
    status, again = query(s, TURTLES, TURTLES)
    quarantined = sorted(p.name for p in store.parent.iterdir() if ".corrupt-" in p.name)
    out["corrupt_header"] = {"status": status, "same_scores": scores_of(again) == reference,
                             "quarantined_files": len(quarantined),
                             "extractions": s.metric("wbia_lightglue_extractions_total")}
    s.stop()

    # Garbage in the middle pages.
    size = store.stat().st_size
    with open(store, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(min(8192, size // 4)))
    s = Service(wbia_port, root)
    s.wait_listening()
    status, again = query(s, TURTLES, TURTLES)
    quarantined_now = sorted(p.name for p in store.parent.iterdir() if ".corrupt-" in p.name)
    out["corrupt_middle"] = {"status": status, "same_scores": scores_of(again) == reference,
                             "quarantined": len(quarantined_now) > len(quarantined),
                             "corrupt_rows_counted": s.metric("wbia_lightglue_store_corrupt_rows_total"),
                             "extractions": s.metric("wbia_lightglue_extractions_total")}
    code, secs = s.stop()
    out["sigterm"] = {"exit_code": code, "seconds": round(secs, 2)}
    return out


SCENARIOS = ["hanging_wbia", "uploads", "downloads", "half_open", "jobids", "load", "store"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=SCENARIOS, choices=SCENARIOS)
    args = ap.parse_args()
    if not BINARY.exists():
        sys.exit("build first: cargo build --release")
    wbia_port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", wbia_port), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = Path(tempfile.mkdtemp(prefix="wbia-lg-reliability-"))
    shared = None
    for name in args.only:
        if name in ("uploads", "downloads", "half_open", "jobids", "load") and shared is None:
            shared = Service(wbia_port, tmp / "shared")
            shared.wait_listening()
            shared.wait_ready()  # warm-up's own memory is not the scenarios'

        t0 = time.monotonic()
        if name == "hanging_wbia":
            result = scenario_hanging_wbia(wbia_port, tmp)
        elif name == "uploads":
            result = scenario_uploads(shared)
        elif name == "downloads":
            result = scenario_slow_and_stalled_downloads(shared)
        elif name == "half_open":
            result = scenario_half_open(shared)
        elif name == "jobids":
            result = scenario_jobids(shared)
        elif name == "load":
            result = scenario_load(shared)
        else:
            result = scenario_store(wbia_port, tmp)
        print(json.dumps({"scenario": name, "seconds": round(time.monotonic() - t0, 1), **result}), flush=True)
    if shared:
        code, secs = shared.stop()
        print(json.dumps({"scenario": "shutdown", "exit_code": code, "seconds": round(secs, 2)}), flush=True)


if __name__ == "__main__":
    main()
