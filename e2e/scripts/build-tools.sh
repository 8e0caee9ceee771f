#!/usr/bin/env bash
# Builds the e2e control plane and its tools from Go modules into a cache
# directory keyed by e2e/versions.env, skipping what is already there.
# Prints the bin directory on the last line of stdout.
#
# Each binary is built into a scratch directory and moved into place only when
# the build succeeded, so an interrupted or failed build never leaves a binary
# that a later run would take as complete.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"
# shellcheck source=../versions.env
source "$(cellule_versions_file)"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
cache=$(cellule_cache_root)
bin=$(cellule_bin_dir)
work="$cache/work"
mkdir -p "$bin" "$work"

# build_step TOOL@VERSION BINARIES -- COMMAND...: each tool is cached in its
# own directory keyed by its version (and BUILD_RECIPE), so changing one
# version rebuilds only that tool. COMMAND builds into $OUT, a scratch
# directory that becomes the tool's directory only when the build
# succeeded. $bin (the directory the scripts use) links to every tool.
build_step() {
  local what=$1 binaries=$2; shift 3
  local dir="$cache/tools/$what-r$BUILD_RECIPE"
  local missing=0 b
  for b in $binaries; do [ -x "$dir/$b" ] || missing=1; done
  if [ $missing = 1 ]; then
    local started=$SECONDS out
    log "building $what"
    out=$(mktemp -d "$work/out.XXXXXX")
    # A subshell, so that a die inside the step fails the step, not the script.
    if ! (OUT="$out" "$@") >"$work/$what.log" 2>&1; then
      tail -n 40 "$work/$what.log" >&2
      rm -rf "$out"
      die "build of $what failed (full log: $work/$what.log)"
    fi
    for b in $binaries; do [ -x "$out/$b" ] || die "build of $what made no $b"; done
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    mv "$out" "$dir"
    log "built $what in $((SECONDS - started))s"
  fi
  for b in $binaries; do ln -sfn "$dir/$b" "$bin/$b"; done
}

# A module whose go.mod has no replace directives: plain go install into $OUT.
go_install() { GOBIN="$OUT" go install "$@"; }

# k8s.io/kubernetes replaces its staging modules with local paths, which a
# dependent module ignores; a wrapper module replaces each of them with the
# published v0.X.Y of the same release instead.
build_kubernetes() {
  local dir="$work/kubernetes-$KUBE_VERSION" staging_version="v0${KUBE_VERSION#v1}"
  mkdir -p "$dir"
  local mod
  mod=$(curl_proxy "k8s.io/kubernetes/@v/$KUBE_VERSION.mod")
  {
    echo "module cellule.local/kubebuild"
    echo "go $(awk '$1=="go"{print $2; exit}' <<<"$mod")"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    # Every staging module the release replaces with ./staging/src/...
    awk '$2=="=>" && $3 ~ /^\.\/staging/ {print "replace " $1 " => " $1 " '"$staging_version"'"}' <<<"$mod"
  } >"$dir/go.mod"
  [ -s "$dir/go.mod" ] && grep -q '^replace k8s.io/api ' "$dir/go.mod" \
    || die "could not read the staging modules of k8s.io/kubernetes@$KUBE_VERSION"
  : >"$dir/go.sum"
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local ld="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=cellule-e2e-build -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ld" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
}

# etcd's server module is its main package and replaces its sibling modules
# with relative paths: same wrapper trick, with -o naming the binary etcd.
build_etcd() {
  local dir="$work/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<MOD
module cellule.local/etcdbuild
go 1.26.0
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
replace go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
replace go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
replace go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
replace go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
MOD
  : >"$dir/go.sum"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3)
}

# The NetworkPolicy analyzer (np-guard): the proxy refuses its version list,
# so `go install …@v` fails its deprecation check; and one of its
# dependencies is missing from the checksum database. Build it in a
# wrapper module that takes the analyzer's own go.sum.
build_netpol_analyzer() {
  local dir="$work/netpol-analyzer-$NETPOL_ANALYZER_VERSION" module=github.com/np-guard/netpol-analyzer
  mkdir -p "$dir"
  printf 'module cellule.local/npabuild\n\ngo 1.23.0\n\nrequire %s %s\n' "$module" "$NETPOL_ANALYZER_VERSION" >"$dir/go.mod"
  curl_proxy "$module/@v/$NETPOL_ANALYZER_VERSION.zip" >"$dir/module.zip"
  python3 -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" \
    "$dir/module.zip" "$module@$NETPOL_ANALYZER_VERSION/go.sum" >"$dir/go.sum"
  (cd "$dir" && GOBIN="$OUT" go install -trimpath -ldflags "-s -w" "$module/cmd/netpolicy")
}

# Argo CD's own health assessment (e2e/argocd-health/main.go: its settings
# manager reads argocd-cm, its Lua VM runs the health checks). argo-cd's
# go.mod replaces many modules (the Kubernetes ones with one release, and
# gitops-engine with its own ./gitops-engine directory, which the module
# zip leaves out): a wrapper module repeats every replace that names a
# published module and points gitops-engine at a published pseudo-version
# of the same release line (ARGOCD_GITOPS_ENGINE_VERSION).
build_argocd_health() {
  local dir="$work/argocd-health-$ARGOCD_VERSION" mod
  rm -rf "$dir"; mkdir -p "$dir"
  mod=$(curl_proxy "github.com/argoproj/argo-cd/v3/@v/$ARGOCD_VERSION.mod")
  {
    echo "module cellule.local/argocdhealth"
    echo "go $(awk '$1=="go"{print $2; exit}' <<<"$mod")"
    echo "require github.com/argoproj/argo-cd/v3 $ARGOCD_VERSION"
    # replace lines, in a block or one by one, except those to local paths
    awk '/^replace \($/ {inblock=1; next} inblock && /^\)/ {inblock=0; next}
         inblock && $2=="=>" && $3 !~ /^\.\.?\// {print "replace " $1, $2, $3, $4; next}
         $1=="replace" && $3=="=>" && $4 !~ /^\.\.?\// {print}' <<<"$mod"
    echo "replace github.com/argoproj/argo-cd/gitops-engine => github.com/argoproj/argo-cd/gitops-engine $ARGOCD_GITOPS_ENGINE_VERSION"
  } >"$dir/go.mod"
  grep -q '^replace k8s.io/api ' "$dir/go.mod" || die "could not read the replace lines of argo-cd@$ARGOCD_VERSION"
  : >"$dir/go.sum"
  cp "$here/../argocd-health/main.go" "$dir/main.go"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$OUT/argocd-health" .)
}

# PyJWT with cryptography, an independent JOSE implementation for the
# token interop test: installed into the tool's directory, run through a
# wrapper that puts it on PYTHONPATH.
build_python_jose() {
  python3 -m pip install --quiet --disable-pip-version-check --no-input --target "$OUT/site" \
    "pyjwt==$PYJWT_VERSION" "cryptography==$CRYPTOGRAPHY_VERSION"
  printf '#!/bin/sh\nPYTHONPATH="$(dirname "$(readlink -f "$0")")/site" exec python3 "$@"\n' >"$OUT/interop-python"
  chmod +x "$OUT/interop-python"
}

started_all=$SECONDS
build_step "kubernetes@$KUBE_VERSION" "kube-apiserver kube-controller-manager kube-scheduler kubectl" -- build_kubernetes
build_step "etcd@$ETCD_VERSION" etcd -- build_etcd
build_step "kwok@$KWOK_VERSION" kwok -- go_install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
build_step "crane@$CRANE_VERSION" crane -- go_install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
build_step "cosign@$COSIGN_VERSION" cosign -- go_install -trimpath -ldflags "-s -w" "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
build_step "helm@$HELM_VERSION" helm -- go_install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
build_step "netpol-analyzer@$NETPOL_ANALYZER_VERSION" netpolicy -- build_netpol_analyzer
build_step "pyjwt@$PYJWT_VERSION-cryptography@$CRYPTOGRAPHY_VERSION" interop-python -- build_python_jose
# The health tool is keyed by its source too: editing main.go rebuilds it.
argocd_health_src=$(sha256sum <"$here/../argocd-health/main.go" | cut -c1-12)
build_step "argocd-health@$ARGOCD_VERSION-$argocd_health_src" argocd-health -- build_argocd_health
# promtool (`check metrics`): the prometheus module has no replace or
# exclude lines. Built without the service-discovery plugins (Prometheus'
# own remove_all_sd tag: no cloud SDKs), which `check metrics` does not use:
# 7 minutes cold instead of 10 here.
build_step "promtool@$PROMETHEUS_VERSION-nosd" promtool -- go_install -trimpath -tags remove_all_sd \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
  "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
# cargo-cyclonedx (the operator image's SBOM): a Rust tool, from crates.io
# at a pinned version with its own Cargo.lock.
build_cargo_cyclonedx() {
  cargo install --quiet --locked --root "$work/cargo-cyclonedx" --version "$CARGO_CYCLONEDX_VERSION" cargo-cyclonedx
  mv "$work/cargo-cyclonedx/bin/cargo-cyclonedx" "$OUT/"
}
build_step "cargo-cyclonedx@$CARGO_CYCLONEDX_VERSION" cargo-cyclonedx -- build_cargo_cyclonedx
log "tools ready in $((SECONDS - started_all))s: $bin"
echo "$bin"
