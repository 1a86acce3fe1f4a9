#!/usr/bin/env python3
"""Operator benchmark on the test control plane (tests/cluster/up).

Creates N KybPlatforms (default 1,000) at once and measures:
  * the time until every one reports Ready,
  * the operator's peak RSS (VmHWM of `kybctl operator`),
  * write requests per no-op resync (every KybPlatform is touched with a label, which makes the operator
    reconcile each once with nothing new to do; writes come from its `kyb_operator_writes_total`),
  * reconcile latency percentiles (from its `kyb_operator_reconcile_duration_seconds` histogram).

Targets (issue 4): <= 60 s, <= 100 MiB, 0 writes.

The platforms are sized for one machine: 1 replica, autoscaling and migrations off, so the figure is the
operator's and the control plane's work rather than kwok scheduling thousands of pods. The
controller-manager and scheduler get higher client QPS than their defaults (20) for the same reason.

Usage: python3 loadtests/bench_operator.py [--count 1000]
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import ROOT, release_binary  # noqa: E402


def kubectl(kubeconfig, *args, stdin=None, check=True):
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=stdin, text=True,
                          capture_output=True, check=check).stdout


def metric(text, name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def histogram_quantile(text, name, q):
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            buckets.append((le, float(m.group(2))))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args()

    kybctl = release_binary()

    tmp = tempfile.mkdtemp(prefix="kyb-opbench-")
    # A /16 service range: the test default (/24) holds only ~250 Services.
    env = dict(os.environ,
               KYB_APISERVER_ARGS="--service-cluster-ip-range=10.0.0.0/16",
               KYB_CONTROLLER_MANAGER_ARGS="--kube-api-qps=500 --kube-api-burst=1000",
               KYB_SCHEDULER_ARGS="--kube-api-qps=500 --kube-api-burst=1000")
    up = subprocess.Popen([os.path.join(ROOT, "tests/cluster/up"), os.path.join(tmp, "k8s"), "--rm"],
                          stdout=subprocess.PIPE, text=True, env=env)
    operator = None
    try:
        line = up.stdout.readline()
        if not line.startswith("KUBECONFIG="):
            sys.exit("control plane did not start")
        kc = line.strip().split("=", 1)[1]
        kubectl(kc, "apply", "--server-side", "-f", os.path.join(ROOT, "crds"))
        kubectl(kc, "wait", "--for=condition=Established", "crd/kybplatforms.kyb.io")
        kubectl(kc, "create", "namespace", "bench")
        kubectl(kc, "create", "secret", "generic", "kyb-db", "-n", "bench", "--from-literal=url=postgres://x/y")
        port = 18099
        operator = subprocess.Popen([kybctl, "operator", "--leader-elect=false", "-n", "bench",
                                     "--listen", f"127.0.0.1:{port}"],
                                    env=dict(os.environ, KUBECONFIG=kc, RUST_LOG="warn"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        time.sleep(2)
        doc = lambda i: (
            f"---\napiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata: {{name: kyb-{i}}}\nspec:\n"
            f"  image: registry.example.com/kybctl:1\n  replicas: 1\n  autoscaling: {{enabled: false}}\n"
            f"  migrations: {{enabled: false}}\n  database: {{primary: {{name: kyb-db, key: url}}}}\n")
        # kubectl sends one request per object, so 8 of them in parallel keep creation from being the
        # bottleneck being measured.
        start = time.time()
        creators = [subprocess.Popen(["kubectl", f"--kubeconfig={kc}", "create", "-n", "bench", "-f", "-"],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
                    for _ in range(8)]
        for k, p in enumerate(creators):
            p.stdin.write("".join(doc(i) for i in range(k, a.count, 8)))
            p.stdin.close()
        for p in creators:
            p.wait()
        created = time.time() - start
        # Also when every Deployment was Available: the control plane's share of the work (ReplicaSets,
        # pods, scheduling, kwok), which bounds how soon the operator can report Ready.
        deployments_available = None
        while True:
            phases = kubectl(kc, "get", "kyb", "-n", "bench", "-o", "jsonpath={.items[*].status.phase}").split()
            ready = phases.count("Ready")
            if deployments_available is None:
                available = kubectl(kc, "get", "deploy", "-n", "bench", "-o",
                                    "jsonpath={.items[*].status.availableReplicas}").split()
                if available.count("1") >= a.count:
                    deployments_available = time.time() - start
            if ready >= a.count:
                break
            if time.time() - start > a.timeout:
                sys.exit(f"only {ready}/{a.count} Ready after {a.timeout}s")
            time.sleep(1)
        all_ready = time.time() - start
        before = urllib.request.urlopen(metrics_url).read().decode()
        # Touch every platform: a watch event each, nothing to change.
        kubectl(kc, "label", "kyb", "--all", "-n", "bench", "touched=yes")
        time.sleep(15)
        after = urllib.request.urlopen(metrics_url).read().decode()
        recon = (metric(after, "kyb_operator_reconciles_total") - metric(before, "kyb_operator_reconciles_total"))
        writes = metric(after, "kyb_operator_writes_total") - metric(before, "kyb_operator_writes_total")
        reads = metric(after, "kyb_operator_reads_total") - metric(before, "kyb_operator_reads_total")
        with open(f"/proc/{operator.pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
        q = lambda p: histogram_quantile(after, "kyb_operator_reconcile_duration_seconds", p) * 1000
        print(f"machine: {os.cpu_count()} cores; control plane, kwok and the operator share them")
        print(f"KybPlatforms: {a.count} (created by 8 parallel kubectl create in {created:.1f} s)")
        if deployments_available is not None:
            print(f"all Deployments Available  {deployments_available:8.1f} s   (the control plane's part)")
        print(f"all Ready after            {all_ready:8.1f} s   (target <= 60 s)")
        print(f"operator peak RSS          {hwm / 1024:8.1f} MiB (target <= 100 MiB)")
        print(f"no-op resync: {recon:.0f} reconciles, {writes:.0f} writes -> {writes / max(recon, 1):.3f} writes per reconcile (target 0)")
        print(f"no-op resync: {reads:.0f} reads (GETs) -> {reads / max(recon, 1):.3f} per reconcile (only the Secret check)")
        print(f"reconcile latency (bucket upper bounds): p50 <= {q(0.5):.0f} ms, p95 <= {q(0.95):.0f} ms, p99 <= {q(0.99):.0f} ms")
    finally:
        if operator:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=30)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)


if __name__ == "__main__":
    main()
