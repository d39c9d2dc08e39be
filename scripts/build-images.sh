#!/usr/bin/env bash
# Builds each component in two shapes, with no daemon:
#   <name>:TAG       FROM scratch, spin.toml + .wasm in a tar layer, platform
#                    wasi/wasm (buildah). For containerd-shim-spin: the
#                    spin.toml carries the component's environment and
#                    allowed_outbound_hosts, which the producer needs.
#   <name>-wasm:TAG  an OCI Wasm artifact: the component itself as an
#                    `application/wasm` layer (wasm-oci). runwasi's shims
#                    precompile it once per node instead of at every start.
# Each is written as an OCI layout under target/images/ too, for inspection
# and `skopeo copy`.
# With BRIDGE=1 it also builds host-bridge's image (that one pulls its base
# images, so it needs a registry).
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:-ghcr.io/example}
TAG=${TAG:-0.1.0}
# Self-contained storage under target/: no daemon, no system-wide state.
bh() { buildah --storage-driver vfs --root target/buildah/root --runroot target/buildah/run "$@"; }

if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
  else
    echo "images: buildah is needed (apt-get install buildah), or use: docker buildx build --platform wasi/wasm --provenance=false -f components/<name>/Containerfile ." >&2
    exit 1
  fi
fi

for c in producer worker; do
  image="$REGISTRY/wasm-jobs-$c:$TAG"
  # A single manifest, not an index: containerd can't pull a wasi/wasm-only index.
  bh build --quiet --isolation chroot --platform wasi/wasm -f "components/$c/Containerfile" -t "$image" . >/dev/null
  rm -rf "target/images/$c" && mkdir -p target/images
  bh push --quiet "$image" "oci:target/images/$c:$TAG"
  echo "images: $image (OCI layout in target/images/$c)"
  # The Wasm artifact, as $REGISTRY/wasm-jobs-$c-wasm:$TAG once pushed (make push).
  cargo run --quiet --release -p wasm-oci -- "target/wasm32-wasip2/release/$c.wasm" "target/images/$c-wasm" --tag "$TAG"
done

if [ "${BRIDGE:-0}" = 1 ]; then
  image="$REGISTRY/wasm-jobs-host-bridge:$TAG"
  bh build --isolation chroot -f host-bridge/Containerfile -t "$image" .
  echo "images: $image"
fi
