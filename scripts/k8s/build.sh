#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from the k8s.io/kubernetes release pinned in
# scripts/k8s/go.mod into a cache outside the clone, keyed by that release, and provides etcd:
# Debian's etcd-server when installed, else built from go.etcd.io/etcd. Prints the bin directory.
# A second run finds the binaries and does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")"
etcd_version="v3.7.0"
cache="${DIFFAR_K8S_CACHE:-$HOME/.cache/diffar-k8s}"
bin="$cache/$version/bin"
export GOPATH="$cache/gopath" GOMODCACHE="$cache/gopath/pkg/mod" GOCACHE="$cache/gocache"
export GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$bin"

build() {  # build <binary> <package> <module dir>
  local out="$bin/$1"
  [ -x "$out" ] && return 0
  command -v go >/dev/null || { echo "build.sh: go is not installed; it is needed once to build $1" >&2; exit 1; }
  echo "build.sh: building $1 ($2), once per release; several minutes on 2 cores" >&2
  local start=$SECONDS
  (cd "$3" && nice -n 10 go build -trimpath -ldflags=-s -o "$out.tmp" "$2")
  mv "$out.tmp" "$out"
  echo "build.sh: $1 built in $((SECONDS - start)) s" >&2
}

build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$here"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$here"
if [ ! -x "$bin/etcd" ]; then
  if [ -x /usr/bin/etcd ] && [ -z "${DIFFAR_K8S_BUILD_ETCD:-}" ]; then
    ln -sf /usr/bin/etcd "$bin/etcd"
  else
    build etcd "go.etcd.io/etcd/server/v3@$etcd_version" "$here"
  fi
fi
echo "$bin"
