#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, CRD drift, unit tests,
# then the end-to-end tests against a local control plane that this script
# builds (cached) and starts on 127.0.0.1, and stops afterwards.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source e2e/scripts/lib.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
started=$SECONDS
step() { log "== $* (t+$((SECONDS - started))s)"; }

# The control-plane build runs alongside the Rust build: both are long on a
# cold machine and they need different things (Go vs cargo).
tools_log=$(mktemp)
bash e2e/scripts/build-tools.sh >"$tools_log" 2>&1 &
tools_pid=$!

step "rustfmt"
cargo fmt --all -- --check
step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "generated CRDs match the API types"
generated=$(mktemp -d)
cargo run --quiet --locked -p cellule-operator --bin crdgen -- "$generated"
diff -ru crds "$generated" || die "crds/ is stale: run 'cargo run -p cellule-operator --bin crdgen -- crds' and commit"
# The Helm chart ships the same CRDs (Helm reads every file of crds/, so the
# kustomization is left out there).
diff -ru --exclude kustomization.yaml "$generated" charts/cellule-operator/crds \
  || die "charts/cellule-operator/crds/ is stale: cp crds/*.yaml (not kustomization.yaml) into it"
step "unit tests"
cargo test --locked -p cellule-operator -p cellule-verifier
step "handshake vectors, rebuilt by another implementation"
if python3 -c 'import cryptography' 2>/dev/null; then
  python3 operator/src/peer_trust/handshake/check_vectors.py operator/src/peer_trust/handshake/vectors.json
else
  log "SKIPPED: python3 has no 'cryptography' module here (pip install cryptography)"
fi
step "build the operator and the e2e tests"
cargo build --locked -p cellule-operator --bin cellule-operator
cargo build --locked -p cellule-verifier --bin cellule-verifier
cargo build --locked -p cellule-plugin --bin kubectl-cellule
cargo test --locked -p cellule-e2e --no-run

step "wait for the control-plane build"
if ! wait "$tools_pid"; then cat "$tools_log" >&2; die "building the control plane failed"; fi
cat "$tools_log" >&2
step "Helm chart: lint, render, bad values refused"
bash e2e/scripts/check-chart.sh "$(cellule_bin_dir)"

state=$(mktemp -d "${TMPDIR:-/tmp}/cellule-e2e.XXXXXX")
on_exit() {
  local rc=$?
  bash e2e/scripts/down.sh "$state" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    log "FAILED; component logs are in $state/logs:"
    for f in "$state"/logs/*.log; do [ -f "$f" ] && { echo "----- $f (last 25 lines)"; tail -n 25 "$f"; }; done >&2
  fi
  exit "$rc"
}
trap on_exit EXIT

step "start the control plane"
bash e2e/scripts/up.sh "$state"
bash e2e/scripts/start-operator.sh "$state" "$root/target/debug/cellule-operator"
set -a; source "$state/env"; set +a
export CELLULE_E2E_OPERATOR_BIN="$root/target/debug/cellule-operator"
export CELLULE_E2E_VERIFIER_BIN="$root/target/debug/cellule-verifier"
step "e2e tests"
cargo test --locked -p cellule-e2e -- --test-threads 4
step "e2e: the operator killed and restarted (its own processes, the shared one stopped)"
bash e2e/scripts/down.sh "$state" operator
cargo test --locked -p cellule-e2e --test restart -- --ignored --test-threads 1
step "e2e: the operator as the Helm chart deploys it (its own process, the shared one stopped)"
cargo test --locked -p cellule-e2e --test packaging -- --ignored --test-threads 1
step "e2e: leader election (three replicas; kill, SIGTERM, a stolen and an unrenewable Lease)"
cargo test --locked -p cellule-e2e --test leader -- --ignored --test-threads 1 --nocapture
step "all tests passed in $((SECONDS - started))s"
