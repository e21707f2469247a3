#!/usr/bin/env bash
# `make cluster`: create the kind cluster with nvkind, then make the NVIDIA runtime containerd's default on the
# GPU worker, so that every pod there (the device plugin, the train tasks) gets the GPU without a runtimeClassName.
#
#   k8s/kind/create-cluster.sh NAME CONFIG_TEMPLATE GPU_NODE_SELECTOR
#
# Why (read in NVIDIA/nvkind at HEAD 24c190e):
# - cmd/nvkind/cluster_create.go: `kind create` first, then on each node with GPUs InstallContainerToolkit,
#   ConfigureContainerRuntime, PatchProcDriverNvidia, and at the end RegisterNvidiaRuntimeClass.
# - pkg/nvkind/node.go, ConfigureContainerRuntime: `nvidia-ctk runtime configure --runtime=containerd
#   --config-source=file` and `systemctl restart containerd`: no `--set-as-default` since commit 089defd
#   (2025-02-06), which replaced it by the RuntimeClass `nvidia` (pkg/nvkind/cluster.go, RegisterNvidiaRuntimeClass).
#   The device plugin chart (0.17.1 to 0.20.0) sets no runtimeClassName, so it cannot load NVML and crash-loops, and KFP 2.17
#   cannot set runtimeClassName on task pods. So we add the flag nvkind dropped, with nvkind's own config source.
# - A kind `containerdConfigPatches` entry setting the default runtime is not safe: nvkind installs the toolkit
#   only after the node runs, so containerd would start with a default runtime that does not exist yet.
# - .github/workflows/gpu-e2e.yaml: `nvkind cluster create ... || true` ("can exit non-zero with benign umount
#   errors"), then `kubectl wait --for=condition=Ready node --all`. We tolerate the same, but only when the
#   cluster exists afterwards, and the checks below fail clearly if the GPU setup did not happen.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 NAME CONFIG_TEMPLATE GPU_NODE_SELECTOR" >&2
  exit 2
fi
name=$1 template=$2 selector=$3
context=kind-$name
fail() { echo "make cluster: error: $*" >&2; exit 1; }

if kind get clusters 2>/dev/null | grep -qx "$name"; then
  fail "a kind cluster named $name exists already: \`make down\` first, or CLUSTER=another-name"
fi
if ! nvkind cluster create --name "$name" --config-template "$template"; then
  kind get clusters 2>/dev/null | grep -qx "$name" || fail "nvkind could not create the cluster (see above)"
  echo "make cluster: nvkind exited non-zero but the cluster exists (nvkind's own CI treats its umount errors" \
    "as benign); checking the GPU node" >&2
fi
kubectl --context "$context" wait --for=condition=Ready nodes --all --timeout=300s

gpu_nodes=$(kubectl --context "$context" get nodes -l "$selector" -o jsonpath='{.items[*].metadata.name}')
[[ -n $gpu_nodes ]] || fail "no node carries the label $selector (see $template)"
for node in $gpu_nodes; do
  docker exec "$node" sh -c 'command -v nvidia-ctk >/dev/null' \
    || fail "nvkind did not install the NVIDIA container toolkit in $node (see its output above)"
  echo "make cluster: making the NVIDIA runtime containerd's default on $node"
  docker exec "$node" nvidia-ctk runtime configure --runtime=containerd --set-as-default --config-source=file
  docker exec "$node" systemctl restart containerd
  # containerd 1.x writes "nvidia", 2.x (go-toml v2) 'nvidia'.
  docker exec "$node" containerd config dump | grep -Eq "default_runtime_name = [\"']nvidia[\"']" \
    || fail "containerd on $node does not default to the nvidia runtime after nvidia-ctk"
done
# Restarting containerd can briefly take a node's kubelet out of Ready.
kubectl --context "$context" wait --for=condition=Ready nodes --all --timeout=300s
kubectl --context "$context" get nodes -L "${selector%%=*}"
