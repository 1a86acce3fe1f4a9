#!/usr/bin/env python3
"""CPU per request, by process, over a wrk run: where a request's time goes across the service, the
databases and the generator, all on the same cores.

Runs `wrk -t2 -cCONNS` (a 2 s warm-up first), reads every process's user and system time from /proc at
two points inside the run, and divides by the requests wrk counted over that window. Processes are
grouped by program name (all `postgres` backends together), or listed one by one with --by-pid.
Figures are per request, in microseconds.

Usage: python3 loadtests/cpu_per_request.py URL [--script LUA] [--duration 10] [--conns 64]
       python3 loadtests/cpu_per_request.py --command 'pgbench -S -n -c 16 -j 2 -T 10 ...' --duration 10
(with --command, the rate is read from the command's `tps = N` line instead of wrk's output)
"""
import argparse
import collections
import os
import re
import shlex
import subprocess
import sys
import time

TCK = os.sysconf("SC_CLK_TCK")


def snapshot():
    """pid -> (program, user ticks, system ticks) for every process."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                argv = f.read().split("\0")
        except OSError:
            continue
        # Kernel threads have no command line; postgres backends rename theirs ("postgres: ...").
        name = os.path.basename((argv[0].split(":")[0].split() or ["kernel threads"])[0])
        out[pid] = (name, *ticks(stat))
    return out


def ticks(stat):
    """(user, system) clock ticks from the text of a /proc/PID/stat (all the process's threads)."""
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?")
    ap.add_argument("--script", help="wrk Lua script")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--by-pid", action="store_true",
                    help="one line per process rather than per program (two builds of the same program side by side)")
    ap.add_argument("--command", help="measure this command instead of wrk (prints `tps = N`)")
    a = ap.parse_args()
    if a.command:
        args = shlex.split(a.command)
    elif a.url:
        wrk = ["wrk", "-t2", f"-c{a.conns}"] + (["-s", a.script] if a.script else [])
        subprocess.run(wrk + ["-d2s", a.url], capture_output=True, check=True)
        args = wrk + [f"-d{a.duration}s", a.url]
    else:
        sys.exit("a URL or --command is needed")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    # A window inside the run: after its first second, ending a second before it does.
    time.sleep(1)
    before, t0 = snapshot(), time.time()
    time.sleep(a.duration - 2)
    after, t1 = snapshot(), time.time()
    out = proc.communicate()[0]
    rate = re.search(r"Requests/sec:\s+([\d.]+)|tps = ([\d.]+)", out)
    if proc.returncode != 0 or not rate:
        sys.exit(f"no rate in the output of {' '.join(args)}:\n{out}")
    per_s = float(rate.group(1) or rate.group(2))
    requests = per_s * (t1 - t0)
    by_name = collections.defaultdict(lambda: [0, 0])
    for pid, (name, user, system) in after.items():
        if pid in before:
            if a.by_pid:
                name = f"{name}[{pid}]"
            by_name[name][0] += user - before[pid][1]
            by_name[name][1] += system - before[pid][2]
    print(f"{per_s:.0f} per second")
    total = 0.0
    for name, (user, system) in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
        u, s = user / TCK * 1e6 / requests, system / TCK * 1e6 / requests
        if u + s >= 0.05:
            total += u + s
            print(f"  {name:20} user {u:6.1f} us  system {s:6.1f} us")
    print(f"  {'all':20} {total:.1f} us per request")
    if "Non-2xx" in out:
        print("  (wrk counted non-2xx answers: " + re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1) + ")")


if __name__ == "__main__":
    main()
