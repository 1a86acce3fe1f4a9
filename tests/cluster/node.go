package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	kubeproxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// The bodies of upstream cmd/kubelet/kubelet.go and cmd/kube-proxy/proxy.go: the real node's kubelet
// and Service proxy (see `up --real-node`). Their blank imports are k8s.go's.

func kubeletMain() {
	os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
}

func kubeProxy() {
	os.Exit(cli.Run(kubeproxy.NewProxyCommand()))
}
