#!/usr/bin/env bash
# Installs the CRDs and the operator's RBAC (config/) on the control plane
# of STATE_DIR, then runs the operator binary as a local process under its
# own ServiceAccount's token, so it has exactly the permissions of
# config/rbac. Appends CELLULE_E2E_OPERATOR_* to STATE_DIR/env.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/lib.sh"
state=${1:?usage: start-operator.sh STATE_DIR OPERATOR_BINARY}
binary=${2:?usage: start-operator.sh STATE_DIR OPERATOR_BINARY}
set -a; source "$state/env"; set +a
export KUBECONFIG="$CELLULE_E2E_KUBECONFIG" PATH="$CELLULE_E2E_BIN:$PATH"
logs="$state/logs" pids="$state/pids"

kubectl apply --server-side --force-conflicts -k "$root/config/crd" >/dev/null
kubectl kustomize "$root/config/crd" | kubectl wait --for condition=Established --timeout 60s -f - >/dev/null
kubectl apply --server-side -f "$root/config/manager/namespace.yaml" >/dev/null
kubectl apply --server-side --force-conflicts -k "$root/config/rbac" >/dev/null
kubectl apply --server-side --force-conflicts -k "$root/config/admission" >/dev/null

token=$(kubectl -n cellule-system create token cellule-operator --duration 24h)
cat >"$state/operator.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: cellule-e2e
  cluster: {server: "$(kubectl config view -o jsonpath='{.clusters[0].cluster.server}')", certificate-authority: "$state/pki/ca.crt"}
users:
- name: cellule-operator
  user: {token: "$token"}
contexts:
- name: cellule-e2e
  context: {cluster: cellule-e2e, user: cellule-operator}
current-context: cellule-e2e
KC

port=$(free_port)
# POD_NAME and POD_NAMESPACE as the Deployment's downward API sets them: the
# leader Lease is in cellule-system.
start operator env KUBECONFIG="$state/operator.kubeconfig" CELLULE_HEALTH_ADDR="127.0.0.1:$port" \
  POD_NAME=cellule-operator-e2e POD_NAMESPACE=cellule-system \
  RUST_LOG="${RUST_LOG:-info,cellule_operator=debug}" "$binary"
wait_for "the operator" 60 curl -fsS "http://127.0.0.1:$port/readyz"
cat >>"$state/env" <<ENV
CELLULE_E2E_OPERATOR_USER=system:serviceaccount:cellule-system:cellule-operator
CELLULE_E2E_OPERATOR_KUBECONFIG=$state/operator.kubeconfig
CELLULE_E2E_OPERATOR_LOG=$logs/operator.log
CELLULE_E2E_OPERATOR_HEALTH=127.0.0.1:$port
ENV
log "operator running as cellule-system/cellule-operator (log: $logs/operator.log)"
