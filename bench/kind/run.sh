#!/usr/bin/env bash
# nodegate benchmarks on a kind cluster (one control plane, two workers, kube-proxy on as the
# baseline). For a developer machine with docker (or podman), kind and kubectl; it does not run in
# the project's CI. Usage, from anywhere in the repository:
#
#   bench/kind/run.sh                  # build, create the cluster, measure, delete the cluster
#   KEEP_CLUSTER=1 bench/kind/run.sh   # leave the cluster up afterwards
#   DURATION=10 RUNS=3 GATEWAY_API_VERSION=v1.5.1 OUT=bench/results/kind bench/kind/run.sh
#
# Rows: kube-proxy (ClusterIP, iptables) vs nodegate (the Gateway's address) for HTTP (wrk),
# TCP and UDP (iperf3), from a client pod on the other worker than the backends. Flame graphs:
# perf runs inside the gateway node's container (`docker exec`), `perf script` output is copied
# out and rendered by the same code as `cargo xtask bench --flamegraph`
# (`cargo xtask bench render --perf-script FILE`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${CLUSTER:-nodegate-bench}"
duration="${DURATION:-10}"
runs="${RUNS:-3}"
gateway_api_version="${GATEWAY_API_VERSION:-v1.5.1}"
out="${OUT:-$repo/bench/results/kind}"
image="nodegate/gateway-agent:latest"
ns="nodegate-bench"

die() { echo "bench/kind: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# --- Tools, checked before anything is created.
engine=""
if command -v docker >/dev/null 2>&1; then
  engine=docker
elif command -v podman >/dev/null 2>&1; then
  engine=podman
  export KIND_EXPERIMENTAL_PROVIDER=podman
fi
missing=()
[ -n "$engine" ] || missing+=("docker or podman")
command -v kind >/dev/null 2>&1 || missing+=("kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)")
command -v kubectl >/dev/null 2>&1 || missing+=("kubectl (https://kubernetes.io/docs/tasks/tools/)")
command -v cargo >/dev/null 2>&1 || missing+=("cargo (to render flame graphs with cargo xtask)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'bench/kind: missing: %s\n' "${missing[@]}" >&2
  exit 1
fi
"$engine" info >/dev/null 2>&1 || die "$engine is installed but not usable (is the daemon running, may this user use it?)"
mkdir -p "$out/raw" "$out/perf"

cleanup() {
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting the kind cluster $cluster (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# --- Image and cluster.
log "building $image from the repository's Dockerfile"
"$engine" build -t "$image" -f "$repo/Dockerfile" "$repo"

if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "creating the kind cluster $cluster"
  kind create cluster --name "$cluster" --config "$here/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-$cluster" >/dev/null

log "loading the image into the nodes"
if [ "$engine" = docker ]; then
  kind load docker-image "$image" --name "$cluster"
else
  archive="$(mktemp --suffix=.tar)"
  podman save -o "$archive" "$image"
  kind load image-archive "$archive" --name "$cluster"
  rm -f "$archive"
fi

log "Gateway API CRDs $gateway_api_version (standard + experimental channel)"
kubectl apply --server-side -f \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/${gateway_api_version}/experimental-install.yaml"
kubectl wait --for=condition=Established --timeout=60s \
  crd/gateways.gateway.networking.k8s.io crd/tcproutes.gateway.networking.k8s.io \
  crd/udproutes.gateway.networking.k8s.io

log "nodegate DaemonSet (kubectl apply -k deploy/daemonset)"
kubectl apply -k "$repo/deploy/daemonset"
nodegate_ready=1
if ! kubectl -n nodegate-system rollout status daemonset/nodegate --timeout=120s; then
  nodegate_ready=0
  echo "bench/kind: the nodegate DaemonSet is not ready; its log:" >&2
  kubectl -n nodegate-system logs daemonset/nodegate --tail=20 >&2 || true
  echo "bench/kind: measuring the kube-proxy baseline only" >&2
fi

log "benchmark backends, client, Gateway and routes"
kubectl apply -f "$here/backends.yaml"
kubectl apply -f "$here/routes.yaml"
kubectl -n "$ns" rollout status deployment/http-backend --timeout=180s
kubectl -n "$ns" rollout status deployment/iperf-backend --timeout=180s
kubectl -n "$ns" wait --for=condition=Ready pod/client --timeout=300s

client() { kubectl -n "$ns" exec client -- "$@"; }
http_ip="$(kubectl -n "$ns" get service http-backend -o jsonpath='{.spec.clusterIP}')"
iperf_ip="$(kubectl -n "$ns" get service iperf-backend -o jsonpath='{.spec.clusterIP}')"

gateway_node="$(kubectl get nodes -l nodegate.io/bench=gateway -o jsonpath='{.items[0].metadata.name}')"
gateway_ip=""
if [ "$nodegate_ready" = 1 ]; then
  for _ in $(seq 1 30); do
    gateway_ip="$(kubectl -n "$ns" get gateway bench -o jsonpath='{.status.addresses[0].value}' 2>/dev/null || true)"
    [ -n "$gateway_ip" ] && break
    sleep 2
  done
  if [ -z "$gateway_ip" ]; then
    # hostNetwork agents serve on every node: fall back to the gateway worker's address.
    gateway_ip="$(kubectl get node "$gateway_node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
  fi
fi

# --- Load. Each measurement: a short warm-up, then $runs runs; the raw output is kept.
measure() { # name, then the command run in the client pod
  local name="$1"
  shift
  client "$@" >/dev/null 2>&1 || true # warm-up
  for run in $(seq 1 "$runs"); do
    client "$@" >"$out/raw/$name.$run.txt" 2>&1 || echo "bench/kind: $name run $run failed" >&2
  done
}
wrk_cmd() { echo wrk -t2 -c64 -d"${duration}s" --latency "http://$1/"; }

log "kube-proxy baseline"
# shellcheck disable=SC2046 # word splitting of the generated command is intended
measure kube-proxy-http $(wrk_cmd "$http_ip:80")
measure kube-proxy-tcp iperf3 -c "$iperf_ip" -p 5201 -t "$duration" -J
measure kube-proxy-udp iperf3 -c "$iperf_ip" -p 5201 -u -b 0 -l 64 -t "$duration" -J

if [ "$nodegate_ready" = 1 ]; then
  log "nodegate via $gateway_ip (flame graphs on $gateway_node)"
  node_exec() { "$engine" exec "$gateway_node" "$@"; }
  node_exec sh -c 'command -v perf >/dev/null || (apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null)' ||
    echo "bench/kind: could not install perf in $gateway_node; no flame graphs" >&2
  node_exec sh -c 'echo 1 > /proc/sys/net/core/bpf_jit_kallsyms' || true
  agent_pid="$(node_exec pgrep -o gateway-agent || true)"
  profile() { # name: records the agent and the whole node for $duration seconds in the background
    local name="$1"
    [ -n "$agent_pid" ] || return 0
    node_exec perf record -F 999 -g -e cpu-clock -q -o "/tmp/$name-agent.perf.data" -p "$agent_pid" -- sleep "$duration" &
    node_exec perf record -F 999 -g -e cpu-clock -q -a -o "/tmp/$name-system.perf.data" -- sleep "$duration" &
  }
  collect() { # name: perf script inside the node (its binaries and kallsyms), copied out
    local name="$1" kind
    for kind in agent system; do
      node_exec sh -c "perf script -i /tmp/$name-$kind.perf.data > /tmp/$name-$kind.perf.txt 2>/dev/null" || continue
      "$engine" cp "$gateway_node:/tmp/$name-$kind.perf.txt" "$out/perf/$name-$kind.perf.txt"
    done
  }
  client sh -c "$(wrk_cmd "$gateway_ip:8080")" >/dev/null 2>&1 || true # warm-up
  profile kind-l7-nodegate
  # shellcheck disable=SC2046
  client $(wrk_cmd "$gateway_ip:8080") >"$out/raw/nodegate-http.1.txt" 2>&1 || true
  wait
  collect kind-l7-nodegate
  for run in $(seq 2 "$runs"); do
    # shellcheck disable=SC2046
    client $(wrk_cmd "$gateway_ip:8080") >"$out/raw/nodegate-http.$run.txt" 2>&1 || true
  done
  profile kind-l4-nodegate
  measure nodegate-tcp iperf3 -c "$gateway_ip" -p 5201 -t "$duration" -J
  wait
  collect kind-l4-nodegate
  measure nodegate-udp iperf3 -c "$gateway_ip" -p 5201 -u -b 0 -l 64 -t "$duration" -J

  shopt -s nullglob
  scripts=("$out"/perf/*.perf.txt)
  if [ "${#scripts[@]}" -gt 0 ]; then
    render_args=()
    for s in "${scripts[@]}"; do render_args+=(--perf-script "$s"); done
    (cd "$repo" && cargo xtask bench render "${render_args[@]}" --out "$out")
  fi
fi

# --- Summary: the figures of each run, from the raw outputs.
log "summary (raw outputs in $out/raw)"
{
  echo "# kind benchmark ($(date -u +%FT%TZ)), duration ${duration}s, $runs runs"
  for f in "$out"/raw/*.txt; do
    name="$(basename "$f" .txt)"
    case "$name" in
      *-http.*) echo "$name: $(grep -E 'Requests/sec|99%' "$f" | tr -s ' ' | tr '\n' ' ')" ;;
      *) echo "$name: $(grep -oE '"bits_per_second":[[:space:]]*[0-9.e+]+' "$f" | tail -1)" ;;
    esac
  done
} | tee "$out/summary.txt"
