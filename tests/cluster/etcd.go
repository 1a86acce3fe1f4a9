package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

// etcd is the body of upstream go.etcd.io/etcd/server/v3/main.go.
func etcd() {
	etcdmain.Main(os.Args)
}
