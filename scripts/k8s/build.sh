#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from the k8s.io/kubernetes release pinned in
# scripts/k8s/go.mod into a cache outside the clone, keyed by that release, and provides etcd:
# Debian's etcd-server (3.4; the API server accepts it). Prints the bin directory.
# A second run finds the binaries and does nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")"
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
  # The version is stamped as Kubernetes' own build does: clients (helm's kubeVersion check,
  # kubectl version skew) read it from /version.
  local minor="${version#v1.}"; minor="${minor%%.*}"
  local ldflags="-s"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$3" && nice -n 10 go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "$2")
  mv "$out.tmp" "$out"
  echo "build.sh: $1 built in $((SECONDS - start)) s" >&2
}

build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$here"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$here"
if [ ! -x "$bin/etcd" ]; then
  if [ -x /usr/bin/etcd ]; then
    ln -sf /usr/bin/etcd "$bin/etcd"
  else
    echo "build.sh: no etcd: install the Debian package etcd-server (make system-deps does)" >&2
    exit 1
  fi
fi
echo "$bin"
