#!/usr/bin/env python3
"""Rollout benchmark on the test control plane (tests/cluster/up), operator as the release binary.

Part 1, abort latency (goal <= 2 s): one KybPlatform with 10 replicas runs a canary to its first pause
(20 %), then `kybctl rollout abort` is run as a user would, and the clock runs from just before the
command to
  * replica ratio: the Service `kyb` selecting only the stable revision, and its EndpointSlice holding
    only stable pods;
  * gatewayAPI: the HTTPRoute's canary weight at 0.
Repeated --aborts times (default 20) for each; median and max are printed. Between runs the spec goes
back to the stable image (undo) and the platform settles.

Part 2, writes per step: one canary through the plan's 8 steps (20/40/60/80 %, a pause after each,
promoted with `kybctl rollout promote`), writes counted by the operator's kyb_operator_writes_total.

Part 3, scale: --platforms (default 100) KybPlatforms of 4 pods each run a canary at once
(25/50/75 %, a 5 s pause after each): per platform, the time from its image change to Healthy on the
new revision, the part of it that is not pause per weight step, and the operator's peak RSS.

Apiserver state is read over its REST API with the admin client certificate (a few ms per read), so the
timing resolution is the polling interval (20 ms), not kubectl's start-up.

Usage: python3 loadtests/bench_rollout.py [--aborts 20] [--platforms 100]
"""
import argparse
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import ROOT, release_binary  # noqa: E402
from bench_operator import metric  # noqa: E402

POLL = 0.02


class Api:
    """GETs against the apiserver with the admin certificate of the test control plane."""

    def __init__(self, kubeconfig):
        pki = os.path.join(os.path.dirname(kubeconfig), "pki")
        with open(kubeconfig) as f:
            self.server = next(l.split("server:", 1)[1].strip() for l in f if "server:" in l)
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def get(self, path):
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=10) as r:
            return json.loads(r.read())

    def merge_patch(self, path, body):
        req = urllib.request.Request(self.server + path, data=json.dumps(body).encode(), method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            r.read()


def kubectl(kc, *args, stdin=None):
    return subprocess.run(["kubectl", f"--kubeconfig={kc}", *args], input=stdin, text=True,
                          capture_output=True, check=True).stdout


def until(what, cond, timeout=120):
    start = time.time()
    while True:
        v = cond()
        if v:
            return time.time() - start
        if time.time() - start > timeout:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(POLL)


def platform_doc(name, image, replicas, steps, route=None, extra=""):
    routing = f"      trafficRouting: {{gatewayAPI: {{httpRoute: {route}}}}}\n" if route else ""
    return (f"apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata: {{name: {name}}}\nspec:\n"
            f"  image: {image}\n  replicas: {replicas}\n  autoscaling: {{enabled: false}}\n"
            f"  migrations: {{enabled: false}}\n  database: {{primary: {{name: kyb-db, key: url}}}}\n{extra}"
            f"  rollout:\n    strategy: Canary\n    canary:\n{routing}      steps:\n{steps}")


class Bench:
    def __init__(self, kc, kybctl, ns):
        self.kc, self.kybctl, self.ns = kc, kybctl, ns
        self.api = Api(kc)

    def kp(self, name):
        return self.api.get(f"/apis/kyb.io/v1alpha1/namespaces/{self.ns}/kybplatforms/{name}")

    def rollout(self, name):
        kp = self.kp(name)
        st = kp.get("status", {})
        if st.get("observedGeneration", 0) < kp["metadata"]["generation"]:
            return {}
        return st.get("rollout", {})

    def cli(self, *args):
        subprocess.run([self.kybctl, "rollout", *args, "-n", self.ns], check=True, capture_output=True,
                       env=dict(os.environ, KUBECONFIG=self.kc))

    def set_image(self, name, image):
        kubectl(self.kc, "patch", "-n", self.ns, f"kyb/{name}", "--type=merge", "-p",
                json.dumps({"spec": {"image": image}}))

    def selector_revision(self, svc):
        s = self.api.get(f"/api/v1/namespaces/{self.ns}/services/{svc}")
        return s["spec"].get("selector", {}).get("kyb.io/revision")

    def endpoint_revisions(self, svc):
        slices = self.api.get(f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices"
                              f"?labelSelector=kubernetes.io/service-name%3D{svc}")
        names = {e["targetRef"]["name"] for s in slices["items"] for e in s.get("endpoints") or []
                 if e.get("targetRef")}
        pods = self.api.get(f"/api/v1/namespaces/{self.ns}/pods?labelSelector=app.kubernetes.io/component%3Dapi")
        return {p["metadata"]["labels"]["kyb.io/revision"] for p in pods["items"]
                if p["metadata"]["name"] in names}

    def route_canary_weight(self, route):
        r = self.api.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{self.ns}/httproutes/{route}")
        return r["spec"]["rules"][0]["backendRefs"][1].get("weight")


def abort_latency(b, name, aborts, route=None):
    stable_image = "registry.example.com/kybctl:1"
    until(f"{name} healthy", lambda: b.rollout(name).get("phase") == "Healthy")
    stable = b.rollout(name)["stableRevision"]
    to_selector, to_endpoints, to_weight = [], [], []
    for i in range(aborts):
        b.set_image(name, f"registry.example.com/kybctl:2-{i}")
        until("first pause", lambda: b.rollout(name).get("phase") == "Paused")
        if route:
            until("route at 20 %", lambda: b.route_canary_weight(route) == 20)
        else:
            until("canary endpoints", lambda: len(b.endpoint_revisions(name)) == 2)
        start = time.time()
        b.cli("abort", name)
        if route:
            until("canary weight 0", lambda: b.route_canary_weight(route) == 0)
            to_weight.append(time.time() - start)
        else:
            until("selector on stable", lambda: b.selector_revision(name) == stable)
            to_selector.append(time.time() - start)
            until("stable endpoints only", lambda: b.endpoint_revisions(name) == {stable})
            to_endpoints.append(time.time() - start)
        b.set_image(name, stable_image)
        until("back to healthy", lambda: b.rollout(name).get("phase") == "Healthy"
              and not b.rollout(name).get("canaryRevision"))
    return to_selector, to_endpoints, to_weight


def fmt(xs):
    return f"median {statistics.median(xs):.3f} s, max {max(xs):.3f} s, min {min(xs):.3f} s (n={len(xs)})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aborts", type=int, default=20)
    ap.add_argument("--platforms", type=int, default=100)
    a = ap.parse_args()
    kybctl = release_binary()
    gateway_crds = subprocess.run([os.path.join(ROOT, "tests/cluster/gateway-api-crds")], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
    tmp = tempfile.mkdtemp(prefix="kyb-rolloutbench-")
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
        kubectl(kc, "apply", "--server-side", "--force-conflicts", "-f", gateway_crds)
        kubectl(kc, "wait", "--for=condition=Established", "crd/kybplatforms.kyb.io",
                "crd/httproutes.gateway.networking.k8s.io")
        ns = "bench"
        kubectl(kc, "create", "namespace", ns)
        kubectl(kc, "create", "secret", "generic", "kyb-db", "-n", ns, "--from-literal=url=postgres://x/y")
        port = 18098
        operator = subprocess.Popen([kybctl, "operator", "--leader-elect=false", "-n", ns,
                                     "--listen", f"127.0.0.1:{port}"],
                                    env=dict(os.environ, KUBECONFIG=kc, RUST_LOG="warn"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        time.sleep(1)
        b = Bench(kc, kybctl, ns)
        print(f"machine: {os.cpu_count()} cores; control plane, kwok, the operator and this script share them")

        pause_steps = "      - setWeight: 20\n      - pause: {}\n"
        kubectl(kc, "apply", "-n", ns, "-f", "-", stdin=platform_doc("ratio", "registry.example.com/kybctl:1", 10, pause_steps))
        sel, eps, _ = abort_latency(b, "ratio", a.aborts)
        print(f"abort -> Service selects stable only (replica ratio):    {fmt(sel)}")
        print(f"abort -> EndpointSlice holds stable pods only:           {fmt(eps)}")
        kubectl(kc, "apply", "-n", ns, "-f", "-", stdin=(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: routed}\nspec:\n"
            "  parentRefs: [{name: public}]\n  rules:\n  - backendRefs:\n"
            "    - {name: routed, port: 80, weight: 100}\n    - {name: routed-canary, port: 80, weight: 0}\n"))
        kubectl(kc, "apply", "-n", ns, "-f", "-",
                stdin=platform_doc("routed", "registry.example.com/kybctl:1", 10, pause_steps, route="routed"))
        _, _, wt = abort_latency(b, "routed", a.aborts, route="routed")
        print(f"abort -> HTTPRoute canary weight 0 (gatewayAPI):         {fmt(wt)}")
        kubectl(kc, "delete", "-n", ns, "kyb/ratio", "kyb/routed", "--wait=true")

        # Part 2: writes per step through the plan's canary.
        plan_steps = "".join(f"      - setWeight: {w}\n      - pause: {{}}\n" for w in (20, 40, 60, 80))
        kubectl(kc, "apply", "-n", ns, "-f", "-", stdin=platform_doc("plan", "registry.example.com/kybctl:1", 10, plan_steps))
        until("plan healthy", lambda: b.rollout("plan").get("phase") == "Healthy", timeout=300)
        time.sleep(2)
        before = metric(metrics(), "kyb_operator_writes_total")
        start = time.time()
        b.set_image("plan", "registry.example.com/kybctl:2")
        for step in (1, 3, 5, 7):
            until(f"pause at step {step}", lambda: b.rollout("plan").get("currentStepIndex") == step
                  and b.rollout("plan").get("phase") == "Paused")
            b.cli("promote", "plan")
        until("plan promoted", lambda: b.rollout("plan").get("phase") == "Healthy"
              and not b.rollout("plan").get("canaryRevision"), timeout=300)
        until("old revision gone", lambda: b.kp("plan")["status"]["replicas"] == 10 and all(
            r["role"] == "stable" or r["replicas"] == 0 for r in b.rollout("plan").get("revisions", [])))
        time.sleep(2)
        writes = metric(metrics(), "kyb_operator_writes_total") - before
        print(f"plan's canary (8 steps, 10 pods): {writes:.0f} writes in {time.time() - start:.1f} s "
              f"-> {writes / 8:.1f} writes per step (Deployments, Services, status, Events)")
        kubectl(kc, "delete", "-n", ns, "kyb/plan", "--wait=true")

        # Part 3: many platforms at once.
        steps = "".join(f"      - setWeight: {w}\n      - pause: {{duration: 5s}}\n" for w in (25, 50, 75))
        n = a.platforms
        docs = "".join("---\n" + platform_doc(f"kyb-{i}", "registry.example.com/kybctl:1", 4, steps) for i in range(n))
        kubectl(kc, "apply", "-n", ns, "-f", "-", stdin=docs)

        def phases():
            items = b.api.get(f"/apis/kyb.io/v1alpha1/namespaces/{ns}/kybplatforms")["items"]
            return [(i["metadata"]["name"], i.get("status", {}).get("rollout", {}), i["metadata"]["generation"],
                     i.get("status", {}).get("observedGeneration", 0), i["spec"]["image"]) for i in items]
        until(f"{n} healthy", lambda: sum(1 for _, r, g, o, _ in phases()
                                          if r.get("phase") == "Healthy" and o >= g) >= n, timeout=900)
        time.sleep(3)
        # One PATCH each over the REST API (a few ms apiece), each platform timed from its own patch.
        patched_at = {}
        for i in range(n):
            b.api.merge_patch(f"/apis/kyb.io/v1alpha1/namespaces/{ns}/kybplatforms/kyb-{i}",
                              {"spec": {"image": "registry.example.com/kybctl:2"}})
            patched_at[f"kyb-{i}"] = time.time()
        start = min(patched_at.values())
        patched = max(patched_at.values()) - start
        done_at = {}
        while len(done_at) < n:
            for name, r, g, o, image in phases():
                if name not in done_at and o >= g and r.get("phase") == "Healthy" and not r.get("canaryRevision") \
                        and image.endswith(":2"):
                    done_at[name] = time.time() - patched_at[name]
            if time.time() - start > 900:
                sys.exit(f"only {len(done_at)}/{n} promoted after 900 s")
            time.sleep(0.5)
        with open(f"/proc/{operator.pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
        # Each rollout is 3 weight steps, 3 pauses of 5 s and the final promotion; what is not pause is
        # the operator and the control plane moving pods: per weight step (promotion counted as one).
        per_step = [(t - 15) / 4 for t in done_at.values()]
        print(f"{n} platforms x 4 pods, each 25/50/75 % with a 5 s pause after each step, patched within {patched:.1f} s:")
        print(f"  patch -> promoted, per platform: median {statistics.median(done_at.values()):.1f} s, "
              f"max {max(done_at.values()):.1f} s (15 s of it is pauses)")
        print(f"  time per weight step (the rest / 4, median over platforms): {statistics.median(per_step):.2f} s, "
              f"max {max(per_step):.2f} s")
        print(f"  operator peak RSS: {hwm / 1024:.1f} MiB")
    finally:
        if operator:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=30)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)


if __name__ == "__main__":
    main()
