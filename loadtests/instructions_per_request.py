#!/usr/bin/env python3
"""Instructions per request of an HTTP server, counted by callgrind: a figure that does not move with
the machine's load, for comparing two builds or a server against a reference on a shared machine.

Starts SERVER under `valgrind --tool=callgrind` with counting off until it answers URL, warms it with
wrk, zeroes the counters, drives it with `wrk -t1 -cCONNS` for DURATION seconds, dumps the counters and
divides the instructions executed (user space, all threads, background tasks included) by the
requests wrk counted. Under callgrind a server runs ~50 times slower than natively, so this measures
work, not time: the kernel's share (sockets, scheduling) is not counted at all.

Usage: python3 loadtests/instructions_per_request.py URL [--script LUA] [--top 25] [--cache-sim] -- SERVER ARGS...
Example: python3 loadtests/instructions_per_request.py http://127.0.0.1:8090/ -- target/release/examples/hello 127.0.0.1:8090
Needs: valgrind (callgrind_control, callgrind_annotate) and wrk (Debian: valgrind wrk).
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import wait_for  # noqa: E402


def wrk(url, conns, seconds, script):
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s"] + (["-s", script] if script else []) + [url]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m:
        sys.exit(f"no request count in wrk's output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk saw failed requests:\n{out}")
    return int(m.group(1))


def top_functions(dump, total, requests, n):
    """Self cost per request of the n costliest functions. (callgrind_annotate also lists the threads'
    entry frames, from `clone` down to tokio's task poll, at the whole total after a zeroing: skipped.)"""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", dump],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line and int(m.group(1).replace(",", "")) < 0.9 * total:
            name = re.sub(r" \[.*\]$", "", m.group(2))
            rows.append((int(m.group(1).replace(",", "")) / requests, name.split(":", 1)[-1]))
    return rows[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("server", nargs="+", help="the server's command line (after --)")
    ap.add_argument("--script", help="wrk Lua script")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest functions per request")
    ap.add_argument("--keep", help="copy the callgrind dump here (for callgrind_annotate)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also simulate the caches (this machine kind's: 32 KiB 8-way L1i and L1d, 1 MiB "
                         "L2 as the last level) and print misses per request. One simulated cache for "
                         "all threads, no prefetcher: a count to compare builds by, not a CPU's")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kyb-callgrind-")
    out = os.path.join(tmp, "callgrind.out")
    with open(os.path.join(tmp, "server.log"), "w") as log:
        cache = ["--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"] if a.cache_sim else []
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", *cache, f"--callgrind-out-file={out}"] + a.server,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        # Under callgrind a server takes seconds to start.
        wait_for(lambda: urllib.request.urlopen(a.url, timeout=5), a.url, timeout=180)
        wrk(a.url, a.conns, 3, a.script)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        requests = wrk(a.url, a.conns, a.duration, a.script)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
        if not dumps:
            sys.exit("callgrind wrote no dump")
        with open(dumps[-1]) as f:
            lines = [line.split() for line in f if line.startswith(("events:", "summary:", "totals:"))]
        # `events:` names the columns of the totals line (Ir alone, or Ir and the cache events).
        events = dict(zip(lines[0][1:], (int(v) for v in lines[-1][1:])))
        total = events["Ir"]
        print(f"{a.server[0]}: {requests} requests, {total:,} instructions, {total / requests:,.0f} per request")
        if a.cache_sim:
            # I1mr/D1mr/D1mw: first-level misses (instruction, data read, data write); IL/DL: last level.
            print("  per request: " + ", ".join(f"{name} {value / requests:,.1f}" for name, value in events.items()))
        for per_request, name in top_functions(dumps[-1], total, requests, a.top):
            print(f"  {per_request:9,.0f}  {name[:160]}")
        if a.keep:
            subprocess.run(["cp", dumps[-1], a.keep], check=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
