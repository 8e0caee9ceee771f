#!/usr/bin/env bash
# The level-3 handshake between the two sample sites, as their admins run
# it (docs/federation.md): Paris (namespace cellule-demo, from
# config/samples/) and Lyon (namespace cellule-lyon, from
# config/samples/federation/). Each site's steps use only its own objects
# and `cellule-operator handshake`; what crosses between the sites is
# printed as it goes (in real life: a ticket, a call, a signed mail).
# Called by e2e/demo.sh, with KUBECONFIG set and the operator running.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source e2e/scripts/lib.sh
state=$1
cli="$root/target/debug/cellule-operator"
work="$state/federation"
mkdir -p "$work"
paris=(-n cellule-demo) lyon=(-n cellule-lyon)

log "federation: the Lyon site (namespace cellule-lyon)"
kubectl create namespace cellule-lyon --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl "${lyon[@]}" create secret tls lyon-tls --cert "$state/tls.crt" --key "$state/tls.key" >/dev/null
kubectl "${lyon[@]}" create secret generic lyon-db --from-literal dsn="postgres://cellule@db.lyon:5432/cellule" >/dev/null
kubectl "${lyon[@]}" create configmap cellule-signing --from-file cosign.pub="$CELLULE_E2E_COSIGN_PUB" >/dev/null
sed "s#$CELLULE_E2E_SAMPLE_REGISTRY/#$CELLULE_E2E_REGISTRY/#g" config/samples/federation/lyon.yaml |
  kubectl "${lyon[@]}" apply --server-side -f - >/dev/null

# Each site's admin key; the public half goes in their own Pool.
for site in paris lyon; do
  "$cli" handshake keygen --out "$work/$site-admin.key" >"$work/$site-admin.pub"
done
kubectl "${paris[@]}" patch pool paris --type merge \
  -p "{\"spec\":{\"federation\":{\"adminPublicKeys\":[\"$(cat "$work/paris-admin.pub")\"]}}}" >/dev/null
kubectl "${lyon[@]}" patch pool lyon --type merge \
  -p "{\"spec\":{\"federation\":{\"adminPublicKeys\":[\"$(cat "$work/lyon-admin.pub")\"]}}}" >/dev/null

key_of() { # ns pool
  local key=""
  for _ in $(seq 1 60); do
    key=$(kubectl -n "$1" get pool "$2" -o jsonpath='{.status.federation.publicKey}')
    [ -n "$key" ] && break
    sleep 0.5
  done
  [ -n "$key" ] || die "Pool $1/$2 has no status.federation.publicKey"
  echo "$key"
}
paris_key=$(key_of cellule-demo paris) lyon_key=$(key_of cellule-lyon lyon)
log "pool keys exchanged (each admin compares the fingerprints by phone):"
log "  paris $(kubectl "${paris[@]}" get pool paris -o jsonpath='{.status.federation.fingerprint}')"
log "  lyon  $(kubectl "${lyon[@]}" get pool lyon -o jsonpath='{.status.federation.fingerprint}')"

# One nonce and window for both sites; each pins the other's pool key.
nonce=$("$cli" handshake nonce)
not_before=$(date -u -d '-1 minute' +%FT%TZ) not_after=$(date -u -d '+30 days' +%FT%TZ)
handshake="\"handshake\":{\"nonce\":\"$nonce\",\"notBefore\":\"$not_before\",\"notAfter\":\"$not_after\"}"

sign() { # ns pool peertrust admin-key-file → signature (and the statement in $work)
  kubectl -n "$1" get pool "$2" -o yaml >"$work/$2-pool.yaml"
  kubectl -n "$1" get peertrust "$3" -o yaml >"$work/$2-peertrust.yaml"
  "$cli" handshake statement --pool "$work/$2-pool.yaml" --peer-trust "$work/$2-peertrust.yaml" >"$work/$2.statement"
  "$cli" handshake sign --pool "$work/$2-pool.yaml" --peer-trust "$work/$2-peertrust.yaml" --key "$4"
}
# The pinned key, the nonce and the window first; the statement is printed
# from what is stored.
kubectl "${paris[@]}" patch peertrust lyon --type merge -p "{\"spec\":{\"publicKey\":\"$lyon_key\",$handshake}}" >/dev/null
kubectl "${lyon[@]}" patch peertrust paris --type merge -p "{\"spec\":{\"publicKey\":\"$paris_key\",$handshake}}" >/dev/null
paris_sig=$(sign cellule-demo paris lyon "$work/paris-admin.key")
lyon_sig=$(sign cellule-lyon lyon paris "$work/lyon-admin.key")
cmp -s "$work/paris.statement" "$work/lyon.statement" || die "the two sites' statements differ: $(diff "$work/paris.statement" "$work/lyon.statement")"
log "both sites print the same statement ($work/paris.statement):"
sed 's/^/    /' "$work/paris.statement" >&2

log "each admin signs; the signatures are exchanged"
kubectl "${paris[@]}" patch peertrust lyon --type merge -p "{\"spec\":{\"handshake\":{\"localSignature\":\"$paris_sig\",\"peerSignature\":\"$lyon_sig\"}}}" >/dev/null
kubectl "${lyon[@]}" patch peertrust paris --type merge -p "{\"spec\":{\"handshake\":{\"localSignature\":\"$lyon_sig\",\"peerSignature\":\"$paris_sig\"}}}" >/dev/null

countersignature() { # ns peertrust → JSON
  local c=""
  for _ in $(seq 1 60); do
    c=$(kubectl -n "$1" get peertrust "$2" -o jsonpath='{.status.countersignature}')
    [ -n "$c" ] && break
    sleep 0.5
  done
  [ -n "$c" ] || die "PeerTrust $1/$2 has no status.countersignature"
  echo "$c"
}
log "each operator countersigns with its pool key; the countersignatures are exchanged"
paris_counter=$(countersignature cellule-demo lyon) lyon_counter=$(countersignature cellule-lyon paris)
kubectl "${paris[@]}" patch peertrust lyon --type merge -p "{\"spec\":{\"handshake\":{\"peerCountersignature\":$lyon_counter}}}" >/dev/null
kubectl "${lyon[@]}" patch peertrust paris --type merge -p "{\"spec\":{\"handshake\":{\"peerCountersignature\":$paris_counter}}}" >/dev/null

log "verified at level 2 on both sides; raising both to level 3"
kubectl "${paris[@]}" wait --for condition=HandshakeVerified --timeout 30s peertrust/lyon >/dev/null
kubectl "${lyon[@]}" wait --for condition=HandshakeVerified --timeout 30s peertrust/paris >/dev/null
kubectl "${paris[@]}" patch peertrust lyon --type merge -p '{"spec":{"trustLevel":3}}' >/dev/null
kubectl "${lyon[@]}" patch peertrust paris --type merge -p '{"spec":{"trustLevel":3}}' >/dev/null
kubectl "${paris[@]}" wait --for jsonpath='{.status.effectiveTrustLevel}'=3 --timeout 30s peertrust/lyon >/dev/null
kubectl "${lyon[@]}" wait --for jsonpath='{.status.effectiveTrustLevel}'=3 --timeout 30s peertrust/paris >/dev/null
echo
kubectl get peertrusts -A -o wide
