// Command kybcluster is ONE multi-call binary holding the real, unmodified upstream components of a
// Kubernetes control plane for kybctl's tests: kube-apiserver, kube-controller-manager, kube-scheduler
// (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and kwok (sigs.k8s.io/kwok), and the kubelet
// and kube-proxy of the real node.
//
// Linking one binary instead of five saves most of the (heavy) link time and memory of a cold build.
// The component is chosen by the name the binary is called by (tests/cluster/build makes one symlink
// per component) or by the first argument:
//
//	kybcluster kube-apiserver --etcd-servers=... ...
//	kube-apiserver --etcd-servers=... ...      (symlink)
//
// Each component runs exactly as its upstream main would run it.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// components maps a component name to the function that runs it with os.Args already rewritten so
// that os.Args[0] is the component name and os.Args[1:] are its own arguments.
var components = map[string]func(){
	"kube-apiserver":          kubeAPIServer,
	"kube-controller-manager": kubeControllerManager,
	"kube-scheduler":          kubeScheduler,
	"etcd":                    etcd,
	"kwok":                    kwok,
	"kubelet":                 kubeletMain,
	"kube-proxy":              kubeProxy,
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := components[name]
	if !ok && len(os.Args) > 1 {
		name = os.Args[1]
		if run, ok = components[name]; ok {
			os.Args = append([]string{name}, os.Args[2:]...)
		}
	}
	if !ok {
		names := make([]string, 0, len(components))
		for n := range components {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [ARGS...]  (or call it through a symlink named COMPONENT)\ncomponents: %s\n",
			filepath.Base(os.Args[0]), strings.Join(names, ", "))
		os.Exit(2)
	}
	run()
}
