#!/usr/bin/env bash
# Builds the operator's container image without a container engine, pushes
# it, signs it with cosign and attaches its SBOM as a signed attestation.
#
#   build-image.sh BINARY REPOSITORY TAG COSIGN_KEY
#
# The image is one layer on an empty base: BINARY (stripped) as
# /usr/local/bin/cellule-operator, the shared libraries it loads (as `ldd`
# lists them, from this machine), and the CA bundle for registries reached
# over TLS; it runs as 65532:65532 with `run` as its command. The layer is
# built reproducibly (sorted, owner 0, mtime 0): the same binary on the same
# machine gives the same digest. The SBOM is CycloneDX JSON of the
# operator's Rust dependencies as Cargo.lock pins them (`cargo cyclonedx`),
# attested with `cosign attest --type cyclonedx`. Tools: crane, cosign and
# cargo-cyclonedx on PATH (e2e/scripts/build-tools.sh builds them). Prints
# the image's digest on stdout. The registry is spoken to over plain HTTP
# only when it is on 127.0.0.1 (the e2e one).
#
# For a release: `cargo build --release -p cellule-operator`, then this with
# target/release/cellule-operator; docs/install.md says how to check the
# signature and the SBOM.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/lib.sh"
binary=${1:?usage: build-image.sh BINARY REPOSITORY TAG COSIGN_KEY}
repository=${2:?usage: build-image.sh BINARY REPOSITORY TAG COSIGN_KEY}
tag=${3:?usage: build-image.sh BINARY REPOSITORY TAG COSIGN_KEY}
key=${4:?usage: build-image.sh BINARY REPOSITORY TAG COSIGN_KEY}
for tool in crane cosign cargo-cyclonedx; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH (e2e/scripts/build-tools.sh builds it)"
done
http=()
case "$repository" in 127.0.0.1:*|localhost:*) http=(--allow-http-registry) ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/cellule-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
strip -o "$rootfs/usr/local/bin/cellule-operator" "$binary"
# The dynamic loader and every library, at the paths the binary asks for.
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
[ -n "$libs" ] || die "ldd lists no library for $binary"
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
# Registries are reached over TLS with these roots (or CELLULE_REGISTRY_CA_FILE).
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || die "no CA bundle at $ca on this machine (install ca-certificates)"
cp -L "$ca" "$rootfs$ca"
chmod 1777 "$rootfs/tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .

image="$repository:$tag"
crane append --oci-empty-base -f "$work/layer.tar" -t "$image" >/dev/null
crane mutate "$image" --entrypoint /usr/local/bin/cellule-operator --cmd run --user 65532:65532 \
  --env SSL_CERT_FILE=$ca -l org.opencontainers.image.source=cellule-operator \
  -l "org.opencontainers.image.version=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" \
      | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cellule-operator"))')" \
  -t "$image" >/dev/null
digest=$(crane digest "$image")

# The SBOM: the operator package and everything it links, from Cargo.lock.
# cargo-cyclonedx writes one file into each workspace member's directory:
# keep the operator's, remove the others.
sbom="sbom-cellule-image-$$"
(cd "$root/operator" && cargo cyclonedx --format json --spec-version 1.5 --override-filename "$sbom" >/dev/null)
mv "$root/operator/$sbom.json" "$work/sbom.json"
rm -f "$root"/*/"$sbom.json"
COSIGN_PASSWORD=${COSIGN_PASSWORD:-} cosign sign --key "$key" --tlog-upload=false "${http[@]}" --yes \
  "$repository@$digest" >"$work/sign.log" 2>&1 || { cat "$work/sign.log" >&2; die "cosign sign failed"; }
COSIGN_PASSWORD=${COSIGN_PASSWORD:-} cosign attest --key "$key" --type cyclonedx --predicate "$work/sbom.json" \
  --tlog-upload=false "${http[@]}" --yes "$repository@$digest" >"$work/attest.log" 2>&1 \
  || { cat "$work/attest.log" >&2; die "cosign attest failed"; }
echo "$digest"
