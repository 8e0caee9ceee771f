#!/usr/bin/env bash
# Measures the operator's resident memory on a cluster that holds more than
# the operator's own objects: the samples of config/samples/ (Pool Ready),
# plus 1,000 unrelated Secrets in another namespace, 100 of which look like
# what `kubectl apply` of a big Secret leaves behind: a large
# `kubectl.kubernetes.io/last-applied-configuration` annotation (50-200 KiB,
# the whole manifest, data included) and several managedFields entries
# (client-side apply, label, annotate, and one more manager).
# The operator watches every Secret (for their metadata), so what it
# receives and keeps of them shows here.
#
# Usage: bash e2e/bench-rss.sh [OPERATOR_BINARY ...]
#   For each binary (default: a release build of this tree): a fresh local
#   control plane (e2e/scripts/up.sh in a temporary directory), the
#   operator started by e2e/scripts/start-operator.sh, the Secrets and the
#   sample site created, the Pool Ready, then CELLULE_BENCH_SETTLE seconds
#   (default 20) to settle; prints `binary, VmRSS, VmHWM` in MiB (from
#   /proc/PID/status) and tears the control plane down (e2e/scripts/down.sh).
#   A summary of every binary is printed at the end.
# Environment: CELLULE_BENCH_SETTLE (seconds, default 20),
#   CELLULE_BENCH_SECRETS (default 1000), CELLULE_BENCH_BIG_SECRETS
#   (default 100), CELLULE_BENCH_KEEP=1 keeps each state directory (logs).
#   CELLULE_BENCH_SECRETS=0 CELLULE_BENCH_BIG_SECRETS=0 gives the baseline
#   (the samples alone).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/e2e/scripts/lib.sh"
settle=${CELLULE_BENCH_SETTLE:-20}
secrets=${CELLULE_BENCH_SECRETS:-1000}
big=${CELLULE_BENCH_BIG_SECRETS:-100}
other_ns=bench-unrelated site_ns=bench-site

binaries=()
for b in "$@"; do
  [ -x "$b" ] || die "$b is not an executable"
  binaries+=("$(cd "$(dirname "$b")" && pwd)/$(basename "$b")")
done
if [ ${#binaries[@]} -eq 0 ]; then
  (cd "$root" && cargo build --locked --release -p cellule-operator --bin cellule-operator)
  binaries=("$root/target/release/cellule-operator")
fi

# The Secrets, as one multi-document YAML: $big big ones (data and
# last-applied annotation of 50-200 KiB), the rest small.
manifests=$(mktemp -d "${TMPDIR:-/tmp}/cellule-bench-rss-manifests.XXXXXX")
state=""
on_exit() {
  [ -n "$state" ] && bash "$root/e2e/scripts/down.sh" "$state" >/dev/null 2>&1
  rm -rf "$manifests"
}
trap on_exit EXIT
python3 - "$manifests" "$other_ns" "$secrets" "$big" <<'PY'
import base64, json, os, random, sys
out, ns, total, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(42)
with open(os.path.join(out, "secrets.yaml"), "w") as f:
    for i in range(total):
        name = f"unrelated-{i:04d}"
        labels = {"app.kubernetes.io/name": "unrelated", "bench.cellule.ai/size": "big" if i < big else "small"}
        if i < big:
            # base64 of the data is 50-200 KiB, so is the annotation.
            raw = rng.randbytes(rng.randint(50 * 1024, 200 * 1024) * 3 // 4)
            data = {"blob": base64.b64encode(raw).decode()}
        else:
            data = {"password": base64.b64encode(rng.randbytes(24)).decode()}
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": data}
        if i < big:
            applied = json.dumps(secret, separators=(",", ":"), sort_keys=True) + "\n"
            secret["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": applied}
        f.write("---\n" + json.dumps(secret) + "\n")
PY
log "generated $secrets Secrets ($big big ones): $(du -sh "$manifests/secrets.yaml" | cut -f1)"

results=()
for binary in "${binaries[@]}"; do
  state=$(mktemp -d "${TMPDIR:-/tmp}/cellule-bench-rss.XXXXXX")
  log "== $binary (state: $state)"
  bash "$root/e2e/scripts/up.sh" "$state"
  RUST_LOG=info bash "$root/e2e/scripts/start-operator.sh" "$state" "$binary"
  # start (lib.sh) records the pid of `setsid env … BINARY`, which execs the
  # binary; should a wrapper remain, take the process running the binary.
  pid=$(cat "$state/pids/operator.pid")
  if [ "$(readlink -f "/proc/$pid/exe")" != "$(readlink -f "$binary")" ]; then
    pid=$(pgrep -s "$pid" -f "$binary" | head -n 1)
  fi
  [ "$(readlink -f "/proc/$pid/exe")" = "$(readlink -f "$binary")" ] || die "no operator process found for $binary"
  (
    set -a; source "$state/env"; set +a
    export KUBECONFIG="$CELLULE_E2E_KUBECONFIG" PATH="$CELLULE_E2E_BIN:$PATH"
    started=$SECONDS
    kubectl create namespace "$other_ns" >/dev/null
    if [ "$secrets" -gt 0 ]; then
      kubectl create --field-manager kubectl-client-side-apply -f "$manifests/secrets.yaml" >/dev/null
      kubectl -n "$other_ns" label secrets --all bench.cellule.ai/batch=1 >/dev/null
    fi
    if [ "$big" -gt 0 ]; then
      kubectl -n "$other_ns" annotate secrets -l bench.cellule.ai/size=big bench.cellule.ai/rotated=2026-01-01 >/dev/null
      # A fourth manager. (Not `kubectl apply --server-side`: it migrates
      # the object off client-side apply and drops the annotation.)
      kubectl -n "$other_ns" label --field-manager bench-sync secrets -l bench.cellule.ai/size=big bench.cellule.ai/synced=true >/dev/null
      kubectl -n "$other_ns" get secret unrelated-0000 -o json --show-managed-fields | python3 -c '
import json, sys
m = json.load(sys.stdin)["metadata"]
size = len(m["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]) // 1024
managers = ", ".join(f["manager"] for f in m["managedFields"])
print(f"a big one: last-applied {size} KiB, managedFields of {managers}")' >&2
    fi
    log "$(kubectl -n "$other_ns" get secrets --no-headers 2>/dev/null | wc -l) Secrets in $other_ns in $((SECONDS - started))s"

    kubectl create namespace "$site_ns" >/dev/null
    kubectl -n "$site_ns" create secret generic paris-db --from-literal dsn=postgres://cellule@db:5432/cellule >/dev/null
    kubectl -n "$site_ns" create secret generic paris-tls --from-literal tls.crt=cert --from-literal tls.key=key >/dev/null
    kubectl -n "$site_ns" apply --server-side -f "$root/config/samples/" >/dev/null
    kubectl -n "$site_ns" wait pool/paris --for condition=Ready --timeout 180s >/dev/null
    log "Pool paris Ready after $((SECONDS - started))s; settling ${settle}s"
  )
  sleep "$settle"
  kill -0 "$pid" 2>/dev/null || die "the operator exited (log: $state/logs/operator.log)"
  mib() { awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
  line="$binary, VmRSS $(mib VmRSS) MiB, VmHWM $(mib VmHWM) MiB"
  echo "$line"
  results+=("$line")
  bash "$root/e2e/scripts/down.sh" "$state" >/dev/null 2>&1
  if [ "${CELLULE_BENCH_KEEP:-0}" = 1 ]; then log "kept $state"; else rm -rf "$state"; fi
  state=""
done
echo "binary, VmRSS, VmHWM ($secrets unrelated Secrets, $big of them big, samples applied, ${settle}s settled)"
printf '%s\n' "${results[@]}"
