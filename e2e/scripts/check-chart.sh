#!/usr/bin/env bash
# The Helm chart, before any cluster: `helm lint --strict`; it renders with
# the default values and with a namespaced install's; and every values file
# of e2e/chart/bad/ is refused (by values.schema.json, or the template's own
# checks), with the message its `# expect:` line names. What the rendered
# objects must be is e2e/tests/packaging.rs's business.
# Usage: check-chart.sh [TOOL_BIN_DIR] (default: the tool build's).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/lib.sh"
bin=${1:-$(cellule_bin_dir)}
helm="$bin/helm"
[ -x "$helm" ] || die "no helm in $bin: run e2e/scripts/build-tools.sh"
chart="$root/charts/cellule-operator"
namespaced="$root/e2e/chart/namespaced-values.yaml"

"$helm" lint --strict "$chart" >/dev/null || { "$helm" lint --strict "$chart"; die "helm lint failed"; }
"$helm" lint --strict "$chart" -f "$namespaced" >/dev/null || die "helm lint failed with $namespaced"
"$helm" template cellule-operator "$chart" --namespace cellule-system --include-crds >/dev/null \
  || die "the chart does not render with its default values"
out=$("$helm" template cellule-operator "$chart" --namespace cellule-system -f "$namespaced") \
  || die "the chart does not render with $namespaced"
grep -q 'CELLULE_WATCH_NAMESPACES, value: "team-a,team-b"' <<<"$out" \
  || die "the namespaced install does not set CELLULE_WATCH_NAMESPACES"

count=0
for values in "$root"/e2e/chart/bad/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$values")
  [ -n "$expect" ] || die "$values has no '# expect:' line"
  if out=$("$helm" template cellule-operator "$chart" --namespace cellule-system -f "$values" 2>&1); then
    die "bad values accepted: $values"
  fi
  grep -qF -- "$expect" <<<"$out" || die "$values was refused, but not with '$expect': $out"
  count=$((count + 1))
done
[ "$count" -gt 0 ] || die "no bad values files in e2e/chart/bad"
log "chart: lint, default and namespaced rendering, $count bad values files refused"
