#!/usr/bin/env python3
"""Launcher start-up time and idle RSS, as docs/BENCHMARKS.md reports them.

Starts the release binary N times with a fresh data directory (cold: new
SQLite files, migrations, secret) and N times on the existing one (warm),
measuring wall time from exec to the "ready" line on stdout, then reads the
idle RSS from /proc after the suite has been idle for 3 seconds.

usage: scripts/bench_launcher.py [path/to/loyalty] [runs]
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/loyalty"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10


def start(data_dir):
    env = dict(os.environ, LOYALTY_DATA_DIR=data_dir, LOYALTY_LISTEN="127.0.0.1:0",
               LOYALTY_HTTP_LISTEN="127.0.0.1:0", LOYALTY_LOG="warn")
    t0 = time.perf_counter()
    p = subprocess.Popen([binary], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = p.stdout.readline()
    wall = (time.perf_counter() - t0) * 1000
    m = re.search(r"ready in (\d+) ms", line)
    if not m:
        p.kill()
        sys.exit(f"unexpected first line: {line!r}")
    return p, wall, int(m.group(1))


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


cold, warm, internal = [], [], []
rss = []
for _ in range(runs):
    with tempfile.TemporaryDirectory() as d:
        p, wall, inner = start(d)
        cold.append(wall)
        stop(p)
        p, wall, inner = start(d)
        warm.append(wall)
        internal.append(inner)
        time.sleep(3)
        rss.append(rss_kib(p.pid))
        stop(p)


def fmt(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs):.0f} ms, min {xs[0]:.0f}, max {xs[-1]:.0f}"


print(f"runs: {runs}")
print(f"cold start (new data dir) exec→ready: {fmt(cold)}")
print(f"warm start (existing data)  exec→ready: {fmt(warm)}")
print(f"warm start, as reported by the banner: {fmt(internal)}")
print(f"idle RSS after 3 s: median {statistics.median(rss)/1024:.1f} MiB, max {max(rss)/1024:.1f} MiB")
