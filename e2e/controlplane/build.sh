#!/usr/bin/env bash
# Builds the Kubernetes control plane that the end-to-end tests run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, and the kubectl of the same release) from the Go
# modules pinned in kubernetes/go.mod and etcd/go.mod, into e2e/.bin/. No release binary or
# container image is downloaded: only Go modules, through the module proxy.
#
# A stamp file in e2e/.bin holds a hash of the pins, of this script and of the Go toolchain;
# when it matches and every binary is there, nothing is built and the script exits at once.
#
# Usage: e2e/controlplane/build.sh   (from anywhere; the first build takes a while on 2 cores)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$(cd "$here/.." && pwd)/.bin"
stamp="$bin/controlplane.stamp"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)

export GOFLAGS=-buildvcs=false

mkdir -p "$bin"
# One build at a time: a second caller waits for the first, then finds the stamp current.
exec 9>"$bin/controlplane.lock"
flock 9

fingerprint="$(
    cd "$here"
    {
        sha256sum kubernetes/go.mod kubernetes/go.sum etcd/go.mod etcd/go.sum build.sh
        go version
    } | sha256sum | cut -d' ' -f1
)"

all_present=true
for name in "${binaries[@]}"; do
    [[ -x "$bin/$name" ]] || all_present=false
done
if $all_present && [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$fingerprint" ]]; then
    echo "control plane binaries in $bin are current"
    exit 0
fi

rm -f "$stamp"
started=$SECONDS

# The version the binaries report comes from the pin, so that clients see e.g. v1.36.3
# rather than v0.0.0.
kubernetes_version="$(cd "$here/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
major="${kubernetes_version#v}"
major="${major%%.*}"
minor="${kubernetes_version#v*.}"
minor="${minor%%.*}"
ldflags="-s -w"
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $package.gitVersion=$kubernetes_version"
    ldflags+=" -X $package.gitMajor=$major -X $package.gitMinor=$minor"
    ldflags+=" -X $package.gitTreeState=clean"
done

echo "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $kubernetes_version into $bin"
(
    cd "$here/kubernetes"
    nice -n 19 go build -ldflags "$ldflags" -o "$bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl
)

etcd_version="$(cd "$here/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
echo "building etcd $etcd_version into $bin"
(
    cd "$here/etcd"
    nice -n 19 go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
)

echo "$fingerprint" >"$stamp"
echo "built the control plane in $((SECONDS - started)) s"
