# Starts KWOK against the e2e API server (sourced by scripts/up.sh, which
# provides start, wait_for, free_port, $state, $logs).
# The standalone kwok binary has no built-in stages: stages.yaml carries the
# default node and pod lifecycles plus the readiness toggles the tests use
# (see NOTES.md).
start_kwok() {
  local kwok_dir
  kwok_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  # An empty KWOK_WORKDIR keeps a stray ~/.kwok/kwok.yaml out.
  mkdir -p "$state/kwok-home"
  local port
  port=$(free_port)
  start kwok env KWOK_WORKDIR="$state/kwok-home" kwok \
    --kubeconfig "$state/kwok.kubeconfig" \
    --config "$kwok_dir/stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 \
    --cidr 10.244.0.0/16 \
    --node-ip 10.10.255.254 \
    --server-address "127.0.0.1:$port"
  wait_for kwok 30 curl -fsS "http://127.0.0.1:$port/healthz"
}
