#!/usr/bin/env bash
# The operator's main job on a laptop: builds (cached) and starts a local
# control plane, installs the CRDs, runs the operator against it, applies
# config/samples/ and shows what they became. Everything keeps running
# afterwards; the last lines say how to look around and how to stop.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source e2e/scripts/lib.sh
state=${CELLULE_DEMO_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/cellule-demo}
logs="$state/logs" pids="$state/pids"

# A previous demo is stopped and replaced.
[ -d "$state/pids" ] && bash e2e/scripts/down.sh "$state"
rm -rf "$state"
mkdir -p "$state"

log "building the operator"
cargo build --locked --quiet -p cellule-operator --bin cellule-operator
bash e2e/scripts/up.sh "$state"
set -a; source "$state/env"; set +a
export KUBECONFIG="$CELLULE_E2E_KUBECONFIG" PATH="$CELLULE_E2E_BIN:$PATH"

log "installing the CRDs and RBAC, starting the operator under its ServiceAccount"
RUST_LOG=info bash e2e/scripts/start-operator.sh "$state" "$root/target/debug/cellule-operator"

if compgen -G "config/samples/*.yaml" >/dev/null; then
  log "applying config/samples/"
  kubectl create namespace cellule-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl label namespace cellule-demo pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
  # What the samples reference and a platform team brings: the database DSN
  # and the pool's TLS certificate (self-signed here).
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=paris-pool.cellule-demo.svc" \
    -keyout "$state/tls.key" -out "$state/tls.crt" 2>/dev/null
  kubectl -n cellule-demo create secret tls paris-tls --cert "$state/tls.crt" --key "$state/tls.key" >/dev/null
  kubectl -n cellule-demo create secret generic paris-db \
    --from-literal dsn="postgres://cellule@postgresql.cellule-demo.svc:5432/cellule?sslmode=verify-full" >/dev/null
  # The images the samples name were pushed to the local registry and
  # signed by up.sh; the Pool and NpuServer verify them with this key.
  kubectl -n cellule-demo create configmap cellule-signing --from-file cosign.pub="$CELLULE_E2E_COSIGN_PUB" >/dev/null
  for sample in config/samples/*.yaml; do
    sed "s#$CELLULE_E2E_SAMPLE_REGISTRY/#$CELLULE_E2E_REGISTRY/#g" "$sample"; echo ---
  done | kubectl -n cellule-demo apply --server-side -f -
  kubectl -n cellule-demo wait --for condition=Ready --timeout 60s pool/paris npuserver/heavy >/dev/null || true
  # The second site, and the level-3 handshake between the two.
  bash e2e/federation-demo.sh "$state"
  echo
  kubectl -n cellule-demo get cellule -o wide
  echo
  kubectl -n cellule-demo get deployments,services,endpointslices,configmaps,networkpolicies,poddisruptionbudgets,roles,rolebindings -l app.kubernetes.io/managed-by=cellule-operator
  echo
  kubectl -n cellule-demo get cellule -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}:{"\n"}{range .status.conditions[*]}  {.type}={.status} {.reason}: {.message}{"\n"}{end}{end}'
else
  log "config/samples/ is empty: there is nothing to reconcile yet"
fi

cat <<MSG

Pools, NpuServers and WorkerGrants are reconciled (laptop-alice has a token in
Secret laptop-alice-token; laptop-contractor waits for approval). The images
run pinned to the digests whose cosign signatures verified (the Digest column;
the samples' registry is the local one here, signed by up.sh). PeerTrusts are
judged (Effective column): Lyon, a second site in namespace cellule-lyon,
reached level 3 through the handshake above (both admins signed, both pool
keys countersigned); Marseille is at level 1. Each is in the pool's config
and its egress NetworkPolicy paris-peers (its range and port only).

The control plane ($(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')) and the operator keep running.
  export KUBECONFIG=$KUBECONFIG
  kubectl get cellule -A
  tail -f $logs/operator.log
Stop everything with: bash e2e/scripts/down.sh $state
MSG
