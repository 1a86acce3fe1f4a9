# shellcheck shell=bash
# The real node of `up --real-node`, sourced by `up` (it uses up's start, wait_for, log, fail, k and
# free_port). One per machine: kube-proxy's iptables chains and the bridge are the host's.
#
#   containerd (CRI, native snapshotter, runc) -> kubelet -> kube-proxy (iptables), a CNI bridge `kyb0`
#   with the node's address 198.18.0.1 and pods in 198.18.0.0/24; Services are in 198.19.0.0/16.
#   The node `kyb-real-node` is labelled kyb.io/real-node=true and tainted kyb.io/real-node:NoSchedule,
#   so only pods that tolerate the taint land there; kwok manages only its own fake nodes.
#
# Everything lives under /run/kybctl-node and /var/lib/kybctl-node, so what a killed run left behind
# (containers, network namespaces, iptables chains, mounts, the bridge) is found and removed by the next
# start (node_clean) as well as by a normal stop.

node_name=kyb-real-node
node_ip=198.18.0.1
node_run=/run/kybctl-node
node_lib=/var/lib/kybctl-node
node_bridge=kyb0
pause_image=registry.k8s.io/pause:3.10.2
containerd_sock=$node_run/containerd.sock

node_log() { log "real node: $*"; }

# Removes every trace of a real node, running or left over; safe to call when there is none (so every
# pipeline ends in `|| true`: up runs with errexit and pipefail, and grep finding nothing is status 1).
node_clean() {
	local root id ns m
	if [[ -d $node_run/runc ]]; then
		for root in "$node_run"/runc/*; do
			[[ -d $root ]] || continue
			for id in $(runc --root "$root" list -q 2>/dev/null); do
				runc --root "$root" kill "$id" KILL 2>/dev/null || true
				runc --root "$root" delete -f "$id" 2>/dev/null || true
			done
		done
	fi
	# containerd and its shims (their command lines name the node's socket or state).
	pkill -KILL -f -- "$node_run/" 2>/dev/null || true
	pkill -KILL -f -- "-address $containerd_sock" 2>/dev/null || true
	[[ -x ${bin:-}/kube-proxy ]] && "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
	# Whatever kube-proxy or the CNI plugins left: rules that jump to their chains first, then the chains.
	for t in filter nat mangle raw; do
		iptables -t "$t" -S 2>/dev/null | grep -E -- '-j (KUBE-|CNI-)' | sed 's/^-A /-D /' |
			while read -r rule; do eval "iptables -t $t $rule" 2>/dev/null || true; done || true
		iptables -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ { print $2 }' |
			while read -r chain; do iptables -t "$t" -F "$chain" 2>/dev/null || true; done || true
		iptables -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ { print $2 }' |
			while read -r chain; do iptables -t "$t" -X "$chain" 2>/dev/null || true; done || true
	done
	for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ { print $1 }'); do ip netns delete "$ns" 2>/dev/null || true; done
	ip link delete "$node_bridge" 2>/dev/null || true
	for m in $(awk -v a="$node_run" -v b="$node_lib" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/mounts | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	# The kubelet's links to container logs (their path is fixed; the logs are under $node_lib).
	find /var/log/containers -maxdepth 1 -lname "$node_lib/*" -delete 2>/dev/null || true
	rm -rf "$node_run" "$node_lib"
}

# Deletes the node's pods while the kubelet still runs (so it tears down their sandboxes and network),
# then stops nothing itself: stop_all stops the processes in reverse start order, and node_clean removes
# what remains.
node_drain() {
	k cordon "$node_name" >/dev/null 2>&1 || true
	k delete pods --all-namespaces --field-selector "spec.nodeName=$node_name" --grace-period=1 \
		--wait=false >/dev/null 2>&1 || true
	local deadline=$(($(date +%s) + 20))
	while (($(date +%s) < deadline)); do
		[[ -z $(k get pods --all-namespaces --field-selector "spec.nodeName=$node_name" -o name 2>/dev/null) ]] && break
		sleep 0.5
	done
}

node_start() {
	command -v runc >/dev/null || fail "" "--real-node needs runc (apt-get install runc)"
	[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
		fail "" "--real-node needs the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
	command -v iptables >/dev/null || fail "" "--real-node needs iptables"
	[[ -x $bin/containerd && -x $bin/kubelet && -x $bin/pause ]] || fail "" "the build has no node binaries in $bin"

	node_log "removing what an earlier run left"
	node_clean
	mkdir -p "$node_run/cni" "$node_lib" "$dir/node"
	sysctl -qw net.ipv4.ip_forward=1 || fail "" "cannot enable net.ipv4.ip_forward"
	sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

	# The bridge exists before the kubelet: the node's address is on it (loopback cannot be a node IP).
	ip link add "$node_bridge" type bridge || fail "" "cannot create bridge $node_bridge"
	ip addr add "$node_ip/24" dev "$node_bridge"
	ip link set "$node_bridge" up
	cat >"$node_run/cni/10-kyb.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kyb",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.0.0/24", "gateway": "$node_ip"}]],
               "dataDir": "$node_run/cni-ipam"}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

	node_log "starting containerd"
	cat >"$dir/node/containerd.toml" <<EOF
version = 3
root = "$node_lib/containerd"
state = "$node_run/containerd"
[grpc]
  address = "$containerd_sock"
[ttrpc]
  address = "$containerd_sock.ttrpc"
[debug]
  address = "$node_run/containerd-debug.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$pause_image"
[plugins."io.containerd.cri.v1.runtime"]
  # The pause container asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE this sandbox lacks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$node_run/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "$node_run/runc"
EOF
	# The shim is found on PATH.
	PATH="$bin:$PATH" start containerd --config "$dir/node/containerd.toml"
	wait_for containerd 60 "containerd's socket" "$bin/ctr" --address "$containerd_sock" version

	node_log "importing the pause image"
	python3 "$here/oci-image" "$dir/node/pause.tar" "$pause_image" --entrypoint /pause --user 65535:65535 \
		"$bin/pause=/pause" || fail "" "building the pause image failed"
	"$bin/ctr" --address "$containerd_sock" -n k8s.io images import --no-unpack=false "$dir/node/pause.tar" \
		>>"$logs/containerd.log" 2>&1 || fail containerd "importing the pause image failed"

	node_log "starting the kubelet"
	local kubelet_port kubelet_healthz proxy_metrics proxy_healthz
	kubelet_port=$(free_port)
	kubelet_healthz=$(free_port)
	proxy_metrics=$(free_port)
	proxy_healthz=$(free_port)
	echo "kubelet $kubelet_port" >>"$dir/ports"
	cat >"$dir/node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
# Test only: the apiserver is the kubelet's only client here.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$containerd_sock
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
registerWithTaints:
- {key: kyb.io/real-node, value: "true", effect: NoSchedule}
maxPods: 60
serializeImagePulls: false
# The shared disk is often fuller than the kubelet's defaults allow; tests must not see evictions.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%"}
# Container logs with the rest of the node's state, not in the machine's /var/log/pods.
podLogsDir: $node_lib/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
	start kubelet \
		--config="$dir/node/kubelet.yaml" \
		--kubeconfig="$pki/kubelet.kubeconfig" \
		--hostname-override="$node_name" \
		--node-ip="$node_ip" \
		--node-labels="kyb.io/real-node=true" \
		--root-dir="$node_lib/kubelet" \
		--cert-dir="$node_lib/kubelet-pki" \
		--v=1
	node_log "starting kube-proxy"
	start kube-proxy \
		--kubeconfig="$pki/kube-proxy.kubeconfig" \
		--hostname-override="$node_name" \
		--proxy-mode=iptables \
		--cluster-cidr=198.18.0.0/16 \
		--bind-address=127.0.0.1 \
		--metrics-bind-address="127.0.0.1:$proxy_metrics" \
		--healthz-bind-address="127.0.0.1:$proxy_healthz" \
		--conntrack-max-per-core=0 \
		--v=1
	wait_for kubelet 120 "node $node_name to be Ready" k wait --for=condition=Ready "node/$node_name" --timeout=5s
	wait_for kube-proxy 60 "kube-proxy /healthz" curl -sf "http://127.0.0.1:$proxy_healthz/healthz"
	node_log "ready ($node_ip, pods 198.18.0.0/24, Services 198.19.0.0/16)"
}
