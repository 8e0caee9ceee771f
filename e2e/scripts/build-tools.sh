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
# shellcheck source=../versions.env
source "$here/../versions.env"
source "$here/lib.sh"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
bin=$(cellule_bin_dir)
work="$(dirname "$bin")/work"
mkdir -p "$bin" "$work"

# build NAME MODULE@VERSION -- BUILD-COMMAND...: runs the command in a scratch
# dir whose output dir is $out, then moves $out/* into $bin.
have() { for b in "$@"; do [ -x "$bin/$b" ] || return 1; done; }

build_step() {
  local what=$1; shift
  local started=$SECONDS
  log "building $what"
  local out
  out=$(mktemp -d "$work/out.XXXXXX")
  # A subshell, so that a die inside the step fails the step, not the script.
  if ! (OUT="$out" "$@") >"$work/$what.log" 2>&1; then
    tail -n 40 "$work/$what.log" >&2
    rm -rf "$out"
    die "build of $what failed (full log: $work/$what.log)"
  fi
  mv -f "$out"/* "$bin"/
  rm -rf "$out"
  log "built $what in $((SECONDS - started))s"
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

started_all=$SECONDS
have kube-apiserver kube-controller-manager kube-scheduler kubectl \
  || build_step "kubernetes@$KUBE_VERSION" build_kubernetes
have etcd || build_step "etcd@$ETCD_VERSION" build_etcd
have kwok || build_step "kwok@$KWOK_VERSION" go_install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
have crane || build_step "crane@$CRANE_VERSION" go_install -trimpath -ldflags "-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
have cosign || build_step "cosign@$COSIGN_VERSION" go_install -trimpath -ldflags "-s -w" "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
have helm || build_step "helm@$HELM_VERSION" go_install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
log "tools ready in $((SECONDS - started_all))s: $bin"
echo "$bin"
