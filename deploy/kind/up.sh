#!/usr/bin/env bash
# Creates a kind cluster, installs the Gateway API CRDs (standard + experimental), builds and loads
# the agent image, and deploys nodegate with `kubectl apply -k deploy/daemonset`.
#
#   deploy/kind/up.sh            # cluster "nodegate"
#   KIND_CLUSTER=x GATEWAY_API_VERSION=v1.5.1 deploy/kind/up.sh
#   deploy/kind/up.sh down       # deletes the cluster
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-nodegate}"
# The version gateway-api 0.22 (the crate nodegate's model is built on) tracks.
gateway_api="${GATEWAY_API_VERSION:-v1.5.1}"
image="nodegate/gateway-agent:dev"

die() { echo "deploy/kind/up.sh: $*" >&2; exit 1; }

# Fail early, naming what is missing.
missing=()
for tool in kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
engine="${KIND_EXPERIMENTAL_PROVIDER:-}"
if [[ -z "$engine" ]]; then
  if command -v docker >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  else missing+=("a container engine (docker or podman)")
  fi
fi
if ((${#missing[@]})); then
  die "missing: ${missing[*]} (install them and retry)"
fi
if ! "$engine" info >/dev/null 2>&1; then
  die "$engine is installed but not running or not reachable by $(id -un)"
fi
[[ -d /sys/fs/bpf ]] || die "the host has no /sys/fs/bpf (a kernel with BPF and bpffs is needed)"

if [[ "${1:-up}" == "down" ]]; then
  kind delete cluster --name "$cluster"
  exit 0
fi

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "kind cluster $cluster exists; reusing it"
else
  kind create cluster --name "$cluster" --config "$here/kind-config.yaml"
fi
kubectl config use-context "kind-$cluster" >/dev/null

echo "installing Gateway API $gateway_api CRDs (standard + experimental)"
# experimental-install.yaml holds the standard CRDs too, plus TCPRoute/UDPRoute/TLSRoute.
kubectl apply --server-side -f \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api/experimental-install.yaml"

echo "building $image"
"$engine" build -t "$image" "$root"
if [[ "$engine" == podman ]]; then
  archive="$(mktemp --suffix .tar)"
  trap 'rm -f "$archive"' EXIT
  podman save -o "$archive" "$image"
  kind load image-archive --name "$cluster" "$archive"
else
  kind load docker-image --name "$cluster" "$image"
fi

echo "deploying nodegate"
kubectl apply -k "$root/deploy/daemonset"
kubectl -n nodegate-system set image daemonset/nodegate agent="$image" mount-bpffs="$image"
kubectl -n nodegate-system rollout status daemonset/nodegate --timeout=180s
kubectl get gatewayclass nodegate
echo "ready: try kubectl apply -f your Gateway and routes (gatewayClassName: nodegate)"
