#!/usr/bin/env bash
# Prints the benchmarks measured against a local control plane and the
# operator (release build), then stops them: image verification (cold,
# cached, many objects on one image, end to end) and tokens (revocation
# latency p50/p99 over 100 revocations, 1,000 grants issued and revoked,
# the revocation store at 100,000 entries, sign/verify cost) and NPU → CPU
# fail-over (latency p50/p95/p99 over 25 trials from an NPU pod's Ready
# turning False to the tier's EndpointSlice and to the routing the pool's
# credentials see, fail-back accuracy, switches under 60 s of flapping).
# CELLULE_BENCH=images, CELLULE_BENCH=tokens or CELLULE_BENCH=failover runs
# one part.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source e2e/scripts/lib.sh
cargo build --locked --release -p cellule-operator --bin cellule-operator
cargo build --locked --release -p cellule-e2e --bin bench
state=$(mktemp -d "${TMPDIR:-/tmp}/cellule-bench.XXXXXX")
trap 'bash e2e/scripts/down.sh "$state" >/dev/null 2>&1 || true' EXIT
bash e2e/scripts/up.sh "$state"
RUST_LOG=info,cellule_operator::reconciles=debug bash e2e/scripts/start-operator.sh "$state" "$root/target/release/cellule-operator"
set -a; source "$state/env"; set +a
"$root/target/release/bench"
