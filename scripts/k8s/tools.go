//go:build tools

// Package testbin names the commands scripts/k8s/build.sh compiles, so the module graph keeps them.
package testbin

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
