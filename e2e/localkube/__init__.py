"""A real Kubernetes cluster on this machine for the end-to-end tests, without a container engine.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) is built from
Go modules by e2e/controlplane/build.sh and runs as plain processes on 127.0.0.1, each with its
own log file; `controlplane.start_control_plane` starts it and waits until it serves.
"""
