#!/usr/bin/env bash
# Installs what the tests run besides RabbitMQ: Prometheus (the live adapter
# query test), buildah, skopeo and docker-registry (the image tests),
# kubectl (kustomize). On Debian/Ubuntu
# as root it installs them; anywhere else it says what is missing.
set -euo pipefail

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v buildah >/dev/null || missing+=(buildah)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v docker-registry >/dev/null || missing+=(docker-registry)
[ ${#missing[@]} -eq 0 ] || {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-tools: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The tests start their own Prometheus on a free port; don't leave the
    # package's service holding :9090 (host-bridge's admin port).
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    # Likewise the registry's service (:5000): the push test starts its own.
    if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  else
    echo "test-tools: missing ${missing[*]}; install them (Debian: apt-get install --no-install-recommends ${missing[*]})" >&2
    exit 1
  fi
}
command -v kubectl >/dev/null || { echo "test-tools: kubectl is needed (kubectl kustomize)" >&2; exit 1; }
echo "test-tools: prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}'), buildah $(buildah --version | awk '{print $3}'), skopeo, docker-registry, kubectl present"
