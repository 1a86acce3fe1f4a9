package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob (as upstream cmd/kube-apiserver and cmd/kube-controller-manager)

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// The three functions below are the bodies of upstream cmd/kube-apiserver/apiserver.go,
// cmd/kube-controller-manager/controller-manager.go and cmd/kube-scheduler/scheduler.go.

func kubeAPIServer() {
	os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
}

func kubeControllerManager() {
	os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
}

func kubeScheduler() {
	os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
}
