// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 at the
// version pinned in ../versions.env, for `secret-canary-lab up --cluster real`.
// It is upstream's own main (go.etcd.io/etcd/v3's main.go) and nothing more.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
