#!/usr/bin/env bash
# Starts a local Kubernetes control plane on 127.0.0.1 from the binaries that
# build-tools.sh made: etcd, kube-apiserver (RBAC, admission as in a real
# cluster), kube-controller-manager, kube-scheduler, KWOK with fake CPU and
# NPU nodes, and a local OCI registry.
#
# Usage: up.sh STATE_DIR
# Writes STATE_DIR/kubeconfig (cluster admin), STATE_DIR/env (variables for
# the tests), STATE_DIR/logs/*.log and STATE_DIR/pids/*. Stop with down.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"

state=${1:?usage: up.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
bin=$(bash "$here/build-tools.sh" | tail -n 1)
pki="$state/pki" logs="$state/logs" pids="$state/pids"
mkdir -p "$pki" "$logs" "$pids" "$state/etcd"
export PATH="$bin:$PATH"
started=$SECONDS
trap 'log "control plane failed to start; logs in $logs"; bash "$here/down.sh" "$state" >/dev/null 2>&1 || true' ERR

# --- PKI: one CA; a serving cert; client certs per component; SA key pair.
cert() { # cert NAME SUBJECT [SAN]
  local name=$1 subject=$2 san=${3:-}
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  local ext="$pki/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san"; else echo "extendedKeyUsage=clientAuth"; fi
  } >"$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
}
if [ ! -f "$pki/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -subj "/CN=cellule-e2e-ca" -days 30 2>/dev/null
  cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=cellule-e2e-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kwok "/O=system:masters/CN=kwok"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # Static users for tests that need distinct people (four-eyes approval).
  # They authenticate but hold no permission until a test binds a role.
  { echo "$(openssl rand -hex 16),alice,alice-uid,cellule-e2e-users"
    echo "$(openssl rand -hex 16),bob,bob-uid,cellule-e2e-users"; } >"$pki/tokens.csv"
fi

etcd_port=$(free_port) etcd_peer_port=$(free_port) api_port=$(free_port)
server="https://127.0.0.1:$api_port"

kubeconfig() { # kubeconfig NAME: a kubeconfig with NAME's client cert
  local name=$1 file="$state/$1.kubeconfig"
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: cellule-e2e
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}
contexts:
- name: cellule-e2e
  context: {cluster: cellule-e2e, user: $name}
current-context: cellule-e2e
KC
  echo "$file"
}
for c in admin controller-manager scheduler kwok; do kubeconfig "$c" >/dev/null; done
cp "$state/admin.kubeconfig" "$state/kubeconfig"
export KUBECONFIG="$state/kubeconfig"

log "starting etcd on 127.0.0.1:$etcd_port"
start etcd etcd --name default --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "default=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

log "starting kube-apiserver on $server"
# It listens on loopback only. The advertised address is only written into
# the `kubernetes` Endpoints, which refuse loopback; the pods are simulated
# and nothing dials it.
start kube-apiserver kube-apiserver \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" \
  --advertise-address 10.10.255.1 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --allow-privileged=true \
  --audit-policy-file "$here/../audit-policy.yaml" --audit-log-path "$logs/audit.log" \
  --audit-log-format json --audit-log-maxsize 0 \
  --profiling=false
wait_for kube-apiserver 90 kubectl get --raw /readyz

log "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager kube-controller-manager \
  --kubeconfig "$state/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=true --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port "$(free_port)" \
  --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
  --node-monitor-grace-period 40s
start kube-scheduler kube-scheduler \
  --kubeconfig "$state/scheduler.kubeconfig" \
  --authentication-kubeconfig "$state/scheduler.kubeconfig" \
  --authorization-kubeconfig "$state/scheduler.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port "$(free_port)"

log "starting kwok"
# shellcheck source=../kwok/kwok.sh
source "$here/../kwok/kwok.sh"
start_kwok

registry_port=$(free_port)
log "starting the OCI registry on 127.0.0.1:$registry_port"
mkdir -p "$state/registry"
start registry crane registry serve --address "127.0.0.1:$registry_port" --disk "$state/registry"
wait_for registry 30 curl -fsS "http://127.0.0.1:$registry_port/v2/"

# Ports for registries tests start and stop themselves (an outage, one
# that wants credentials), known to the operator as plain HTTP like the
# first.
spare_registry_port=$(free_port)
auth_registry_port=$(free_port)

# The images config/samples/ names, signed as a release pipeline would:
# a cosign key pair (ECDSA P-256), one small image each, a signature in
# cosign's tag scheme, no transparency log (offline). The samples name
# registry.intra.example.com; what applies them points that at this one.
log "pushing and signing the sample images"
registry="127.0.0.1:$registry_port"
(cd "$state" && COSIGN_PASSWORD='' cosign generate-key-pair --output-key-prefix cosign >/dev/null 2>&1)
for image in pool worker npu-server; do
  mkdir -p "$state/images/$image"
  printf 'cellule %s\n' "$image" >"$state/images/$image/VERSION"
  tar -C "$state/images/$image" -cf "$state/images/$image.tar" VERSION
  crane append --oci-empty-base -f "$state/images/$image.tar" -t "$registry/cellule/$image:1.4.2" >/dev/null 2>&1
  digest=$(crane digest "$registry/cellule/$image:1.4.2")
  COSIGN_PASSWORD='' cosign sign --key "$state/cosign.key" --tlog-upload=false --allow-http-registry \
    --yes "$registry/cellule/$image@$digest" >"$logs/cosign-$image.log" 2>&1
done

# Nodes and the default service account appear asynchronously.
kubectl apply -f "$here/../kwok/nodes.yaml" >/dev/null
wait_for "Ready fake nodes" 60 bash -c '[ "$(kubectl get nodes --no-headers 2>/dev/null | grep -cw Ready)" -ge 4 ]'
wait_for "the default ServiceAccount" 60 kubectl -n default get serviceaccount default
# Cluster DNS pods (simulated), what NetworkPolicies allow DNS to.
kubectl apply -f "$here/../kwok/kube-dns.yaml" >/dev/null

cat >"$state/env" <<ENV
CELLULE_E2E_STATE=$state
CELLULE_E2E_KUBECONFIG=$state/kubeconfig
CELLULE_E2E_REGISTRY=127.0.0.1:$registry_port
CELLULE_E2E_COSIGN_KEY=$state/cosign.key
CELLULE_E2E_COSIGN_PUB=$state/cosign.pub
CELLULE_E2E_SAMPLE_REGISTRY=registry.intra.example.com
CELLULE_E2E_SPARE_REGISTRY=127.0.0.1:$spare_registry_port
CELLULE_E2E_AUTH_REGISTRY=127.0.0.1:$auth_registry_port
CELLULE_INSECURE_REGISTRIES=127.0.0.1:$registry_port,127.0.0.1:$spare_registry_port,127.0.0.1:$auth_registry_port
CELLULE_REGISTRY_TIMEOUT=3s
CELLULE_E2E_BIN=$bin
CELLULE_E2E_LOGS=$logs
CELLULE_E2E_TOKENS=$pki/tokens.csv
ENV
trap - ERR
log "control plane $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') up in $((SECONDS - started))s; kubeconfig: $state/kubeconfig"
