#!/usr/bin/env python3
"""Load generator benchmark: `kybctl loadtest` against wrk, in one run, on the same server and routes.

Starts PostgreSQL (primary and replica), Redis and a release `kybctl serve` (as bench_api.py does), then
alternates, REPS times, on each route with the same connection count:

  wrk -t2 -cC                      GET /health                 and POST /v1/classifications (one business)
  kybctl loadtest --users C        --scenario trivial          and --scenario classify-cached

and prints medians (min-max) and the targets: kybctl drives >= 0.5 x wrk's requests per second (closed
loop), and at a fixed rate of half the route's capacity its p50 / p99 agree with those of independent
open-model generators within 20 %: oha (Rust, hyper, like kybctl's client) and vegeta (Go's net/http).
The capacity is what vegeta reaches closed-loop (`-rate=0`, as many workers as connections): wrk reaches
far more than vegeta can send at a fixed rate on two cores shared with the server (vegeta at 20,000/s
here fell behind by hundreds of ms). Both count latency from the send by default, so they are compared
with kybctl's service time; oha with `--latency-correction` counts from when each request was due, as
kybctl's response time does, and is compared with that.

  vegeta attack -rate R/s          GET /health                 and POST /v1/classifications
  oha -q R [--latency-correction]  GET /health                 and POST /v1/classifications
  kybctl loadtest --rate R         --scenario trivial          and --scenario classify-cached

Every generator sends the same request: vegeta (Go's transport adds `Accept-Encoding: gzip`) and oha
(`gzip, compress, deflate, br`) are told `Accept-Encoding: identity`, as wrk and kybctl send no
Accept-Encoding; otherwise the service compresses their answers (the classification's JSON) and not
kybctl's, and the comparison measures gzip.

With --pin, the service, PostgreSQL and Redis run on CPU 0 and every generator on CPU 1 (taskset), so
that a generator's figures are not the service's share of the same cores; the capacity (and so the fixed
rate) is then that of a one-core service.

Usage: python3 loadtests/bench_loadtest.py [--reps 2] [--duration 10] [--conns 64] [--pin] [--json out.json]
Needs: wrk, PostgreSQL, redis-server (Debian: wrk postgresql redis-server), Go and Cargo: vegeta is built
from its module (github.com/tsenart/vegeta/v12) and oha from its crate, once per version, into
~/.cache/kybctl/tools.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import (WRK_LUA, Procs, cpu_model, free_port, pg_bin, psql, release_binary,  # noqa: E402
                       start_postgres, summary, wait_for, wrk)


VEGETA = "v12.13.0"
OHA = "1.16.0"
# What every generator runs under: `taskset -c 1` with --pin.
GENERATOR = []
IDENTITY = "Accept-Encoding: identity"


def vegeta_binary():
    """vegeta built from its Go module, cached by version outside the checkout."""
    bindir = os.path.join(os.path.expanduser("~"), ".cache", "kybctl", "tools", f"vegeta-{VEGETA}")
    path = os.path.join(bindir, "vegeta")
    if not os.path.exists(path):
        print(f"building vegeta {VEGETA} from its Go module ...", file=sys.stderr)
        subprocess.run(["go", "install", f"github.com/tsenart/vegeta/v12@{VEGETA}"], check=True,
                       env=dict(os.environ, GOBIN=bindir, CGO_ENABLED="0"))
    return path


def pin_tree(pid, cpu):
    """Pins a process, all its threads and all its descendants to one CPU."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = open(f"/proc/{pid}/task/{task}/children").read().split()
        except FileNotFoundError:
            continue
        for child in children:
            pin_tree(int(child), cpu)


def oha_binary():
    """oha built from its crate, cached by version outside the checkout (its build directory is removed)."""
    root = os.path.join(os.path.expanduser("~"), ".cache", "kybctl", "tools", f"oha-{OHA}")
    path = os.path.join(root, "bin", "oha")
    if not os.path.exists(path):
        print(f"building oha {OHA} from its crate ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="oha-build-") as build:
            subprocess.run(["cargo", "install", "--locked", "oha", "--version", OHA, "--root", root,
                            "--target-dir", build], check=True)
    return path


def oha(binary, url, rate, duration, conns, corrected, body=None):
    """oha at `rate` requests/s over `conns` connections; latency from the send, or from when each
    request was due with `corrected` (`--latency-correction`)."""
    # `-w`: requests in flight at the end are awaited, not counted as errors ("aborted due to deadline").
    args = [*GENERATOR, binary, "--no-tui", "--output-format", "json", "-q", f"{rate:.0f}", "-z",
            f"{duration}s", "-c", str(conns), "-w", "-H", IDENTITY]
    if corrected:
        args.append("--latency-correction")
    if body:
        args += ["-m", "POST", "-T", "application/json", "-d", body]
    r = json.loads(subprocess.run(args + [url], check=True, capture_output=True).stdout)
    codes = r.get("statusCodeDistribution", {})
    ok = sum(n for code, n in codes.items() if code.startswith("2"))
    errors = sum(r.get("errorDistribution", {}).values()) + sum(codes.values()) - ok
    lat = r["latencyPercentiles"]
    return {"rps": r["summary"]["requestsPerSec"], "p50_ms": lat["p50"] * 1000, "p99_ms": lat["p99"] * 1000,
            "errors": errors}


def vegeta(binary, targets, rate, duration, workers=None):
    """An open-model attack at `rate` requests/s (0: as fast as `workers` go); its JSON report."""
    args = [*GENERATOR, binary, "attack", "-format=http", f"-targets={targets}", f"-rate={rate:.0f}/s" if rate else "-rate=0",
            f"-duration={duration}s", "-timeout=10s", "-keepalive=true"]
    if workers:
        args += [f"-workers={workers}", f"-max-workers={workers}"]
    attack = subprocess.run(args, check=True, capture_output=True)
    out = subprocess.run([binary, "report", "-type=json"], input=attack.stdout, check=True,
                         capture_output=True).stdout
    r = json.loads(out)
    lat = r["latencies"]
    return {"rps": r["throughput"], "p50_ms": lat["50th"] / 1e6, "p99_ms": lat["99th"] / 1e6,
            "errors": r["requests"] - int(round(r["success"] * r["requests"]))}


def loadtest(kybctl, base, scenario, conns, duration, rate=None):
    args = [*GENERATOR, kybctl, "loadtest", "--target", base, "--scenario", scenario, "--users", str(conns),
            "--duration", f"{duration}s", "-o", "json", "--no-progress"]
    if rate:
        args += ["--rate", f"{rate:.0f}"]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    o = r["latency_us"]["overall"]
    svc = (r.get("service_time_us") or r["latency_us"])["overall"]
    return {"rps": r["generator"]["achieved_rps"], "p50_ms": o["p50"] / 1000, "p99_ms": o["p99"] / 1000,
            "service_p50_ms": svc["p50"] / 1000, "service_p99_ms": svc["p99"] / 1000,
            "errors": r["requests"]["errors"], "saturated": r["generator"]["saturated"],
            "warnings": out.stderr.strip()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--json", help="write all raw figures here")
    ap.add_argument("--pin", action="store_true",
                    help="the service, PostgreSQL and Redis on CPU 0, every generator on CPU 1")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found (Debian: apt-get install wrk)")
    if a.pin:
        if os.cpu_count() < 2:
            sys.exit("--pin needs two CPUs")
        GENERATOR[:] = ["taskset", "-c", "1"]

    kybctl = release_binary()
    vegeta_bin = vegeta_binary()
    oha_bin = oha_binary()

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="kyb-bench-lt-")
    os.chmod(tmp, 0o777)
    try:
        port, rport = start_postgres(procs, tmp, pg_bin())
        psql(port, "CREATE DATABASE kyb")
        redis_port = free_port()
        procs.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_for(lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=1), "redis")
        db = f"postgres://postgres@127.0.0.1:{port}/kyb"
        subprocess.run([kybctl, "migrate", "up", "--database-url", db], check=True, capture_output=True)
        api_port = free_port()
        env = dict(os.environ, KYB_LISTEN=f"127.0.0.1:{api_port}", KYB_DATABASE_URL=db,
                   KYB_REPLICA_URLS=f"postgres://postgres@127.0.0.1:{rport}/kyb",
                   KYB_REDIS_URL=f"redis://127.0.0.1:{redis_port}/", RUST_LOG="warn",
                   KYB_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
                   # Both generators are compared on the same requests; neither needs credentials.
                   KYB_INSECURE_NO_AUTH="true")
        procs.start([kybctl, "serve"], env=env)
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/ready", timeout=2).status == 200, "kybctl serve")
        if a.pin:
            # Every thread of every server process, and the processes they forked (PostgreSQL's
            # backends and walsender); backends forked later inherit the postmaster's CPU.
            for p in procs.procs:
                pin_tree(p.pid, 0)
        classify_lua = os.path.join(tmp, "classify.lua")
        with open(classify_lua, "w") as f:
            f.write(WRK_LUA["classify"])

        body = os.path.join(tmp, "classify.json")
        with open(body, "w") as f:
            f.write('{"name":"Sunrise Bakery","description":"artisan bread and pastry bakery","country":"US"}')
        vegeta_targets = {}
        for name, text in (("health", f"GET {base}/health\n{IDENTITY}\n"),
                           ("classify", f"POST {base}/v1/classifications\nContent-Type: application/json\n"
                                        f"{IDENTITY}\n@{body}\n")):
            vegeta_targets[name] = os.path.join(tmp, f"{name}.targets")
            with open(vegeta_targets[name], "w") as f:
                f.write(text)
        routes = {
            "trivial (GET /health)": ((f"{base}/health", None), "trivial"),
            "cached classification": ((f"{base}/v1/classifications", classify_lua), "classify-cached"),
        }
        vegeta_route = {"trivial (GET /health)": "health", "cached classification": "classify"}
        c, d = a.conns, a.duration
        results = {f"{route} / {gen}": [] for route in routes for gen in ("wrk", "kybctl")}
        for rep in range(a.reps):
            for route, ((url, script), scenario) in routes.items():
                wrk(url, c, a.warmup, script, GENERATOR)
                r = wrk(url, c, d, script, GENERATOR)
                results[f"{route} / wrk"].append(r)
                k = loadtest(kybctl, base, scenario, c, d)
                results[f"{route} / kybctl"].append(k)
                print(f"rep {rep + 1} {route}: wrk {r['rps']:.0f} rps p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} | "
                      f"kybctl {k['rps']:.0f} rps p50 {k['p50_ms']:.2f} p99 {k['p99_ms']:.2f}"
                      f"{' SATURATED' if k['saturated'] else ''}", file=sys.stderr)

        # Fixed rate: half of each route's capacity as vegeta reaches it closed-loop.
        fixed_gens = ("vegeta", "oha", "oha --latency-correction", "kybctl --rate")
        fixed = {f"{route} / {gen}": [] for route in routes for gen in fixed_gens}
        oha_target = {"trivial (GET /health)": (f"{base}/health", None),
                      "cached classification": (f"{base}/v1/classifications", body)}
        rates = {}
        for route in routes:
            cap = [vegeta(vegeta_bin, vegeta_targets[vegeta_route[route]], 0, d, c)["rps"] for _ in range(2)]
            rates[route] = 0.5 * max(cap)
            print(f"{route}: vegeta closed-loop {max(cap):.0f} rps; fixed rate {rates[route]:.0f}/s", file=sys.stderr)
        for rep in range(a.reps):
            for route, (_, scenario) in routes.items():
                rate = rates[route]
                v = vegeta(vegeta_bin, vegeta_targets[vegeta_route[route]], rate, d)
                fixed[f"{route} / vegeta"].append(v)
                url, payload = oha_target[route]
                data = open(payload).read() if payload else None
                o = oha(oha_bin, url, rate, d, c, False, data)
                fixed[f"{route} / oha"].append(o)
                oc = oha(oha_bin, url, rate, d, c, True, data)
                fixed[f"{route} / oha --latency-correction"].append(oc)
                k = loadtest(kybctl, base, scenario, c, d, rate)
                fixed[f"{route} / kybctl --rate"].append(k)
                print(f"rep {rep + 1} {route} @ {rate:.0f}/s: vegeta p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} | "
                      f"oha p50 {o['p50_ms']:.2f} p99 {o['p99_ms']:.2f} (corrected {oc['p50_ms']:.2f} / "
                      f"{oc['p99_ms']:.2f}) | "
                      f"kybctl p50 {k['p50_ms']:.2f} p99 {k['p99_ms']:.2f} (service {k['service_p50_ms']:.2f} / "
                      f"{k['service_p99_ms']:.2f}){' SATURATED' if k['saturated'] else ''}", file=sys.stderr)

        where = ("server on CPU 0, generators on CPU 1 (--pin)" if a.pin
                 else "server and generator share the cores (unpinned)")
        print(f"\nmachine: {os.cpu_count()} cores, {cpu_model()}; {where}")
        print(f"{a.reps} reps x {d}s, {c} connections (wrk -t2 -c{c}; kybctl loadtest --users {c}), medians (min-max)\n")
        print(f"{'measurement':40} {'rps':>20} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, runs in results.items():
            m, lo, hi = summary(runs, "rps")
            errs = sum(r.get("errors", 0) + r.get("non2xx", 0) + r.get("socket_errors", 0) for r in runs)
            print(f"{name:40} {m:9.0f} ({lo:.0f}-{hi:.0f}) {summary(runs, 'p50_ms')[0]:8.2f} "
                  f"{summary(runs, 'p99_ms')[0]:8.2f} {errs:7d}")

        print(f"\nfixed rate = 0.5 x vegeta's closed-loop rps per route; vegeta {VEGETA}, oha {OHA} and kybctl "
              f"loadtest --rate, {c} connections\n")
        print(f"{'measurement':48} {'rps':>20} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  (kybctl: service time; "
              f"response time from when due)")
        for name, runs in fixed.items():
            m, lo, hi = summary(runs, "rps")
            errs = sum(r.get("errors", 0) for r in runs)
            p50, p99 = ("service_p50_ms", "service_p99_ms") if "kybctl" in name else ("p50_ms", "p99_ms")
            extra = (f"  ({summary(runs, 'p50_ms')[0]:.2f} / {summary(runs, 'p99_ms')[0]:.2f})"
                     if "kybctl" in name else "")
            print(f"{name:48} {m:9.0f} ({lo:.0f}-{hi:.0f}) {summary(runs, p50)[0]:8.2f} "
                  f"{summary(runs, p99)[0]:8.2f} {errs:7d}{extra}")
        results.update(fixed)

        med = lambda k, f="rps": summary(results[k], f)[0]
        checks = []
        for route in routes:
            w, k = f"{route} / wrk", f"{route} / kybctl"
            ratio = med(k) / med(w)
            checks.append((f"{route}: kybctl rps / wrk rps", ratio, ">= 0.5", ratio >= 0.5))
            # From the send against the send; oha's corrected figures against kybctl's from-when-due ones.
            for ref, theirs in (("vegeta", "service_"), ("oha", "service_"), ("oha --latency-correction", "")):
                for p in ("p50_ms", "p99_ms"):
                    dev = med(f"{route} / kybctl --rate", f"{theirs}{p}") / med(f"{route} / {ref}", p) - 1
                    checks.append((f"{route}: kybctl {p[:3]} vs {ref}", dev * 100, "|x| <= 20%",
                                   abs(dev) <= 0.2))
        print(f"\n{'target':72} {'measured':>9} {'wanted':>11}  result")
        for name, v, want, ok in checks:
            unit = "%" if "%" in want else ""
            print(f"{name:72} {v:8.2f}{unit:1} {want:>11}  {'met' if ok else 'MISSED'}")
        # The two independent generators measured against each other: how closely two references agree
        # on this machine bounds how closely kybctl can be shown to agree with either.
        print(f"\n{'references against each other (not a target)':72} {'oha vs vegeta':>13}")
        for route in routes:
            for p in ("p50_ms", "p99_ms"):
                dev = med(f"{route} / oha", p) / med(f"{route} / vegeta", p) - 1
                print(f"{route + ': ' + p[:3]:72} {dev * 100:12.2f}%")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"results": results,
                           "checks": [{"name": n, "value": v, "wanted": w, "met": ok} for n, v, w, ok in checks]},
                          f, indent=2)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
