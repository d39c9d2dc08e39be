#!/usr/bin/env bash
# Offline proof of the Kubernetes side: every kustomization builds, every
# built object passes strict schema validation for a pinned Kubernetes
# version, and every custom resource passes its CRD's schema. The
# RabbitmqCluster's CRD is the operator's file, not in this repository: set
# RABBITMQ_CRD to it (check-crds.py says SKIP, and counts it, without it).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.33.0}
venv=.tools/venv
out=target/manifests

if [ ! -x "$venv/bin/kubernetes-validate" ] || ! cmp -s scripts/requirements-manifests.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-manifests.txt
  cp scripts/requirements-manifests.txt "$venv/requirements.txt"
fi
command -v kubectl >/dev/null || { echo "check-manifests: kubectl is needed (for kustomize)" >&2; exit 1; }

mkdir -p "$out"
kubectl kustomize manifests > "$out/app.yaml"
kubectl kustomize manifests/overlays/keda > "$out/keda.yaml"
kubectl kustomize manifests/overlays/ha > "$out/ha.yaml"
kubectl kustomize runtime-class > "$out/runtime-class.yaml"
echo "kustomize: manifests, overlays/keda, overlays/ha and runtime-class build"

for f in "$out"/app.yaml "$out"/keda.yaml "$out"/ha.yaml "$out"/runtime-class.yaml; do
  # --no-warn: custom kinds have no schema here; check-crds.py covers them.
  "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$K8S_VERSION" "$f"
done
echo "kubernetes-validate --strict -k $K8S_VERSION: every built object passes"
"$venv/bin/python" scripts/check-crds.py "$out/app.yaml" "$out/keda.yaml" "$out/ha.yaml"
# A check that cannot fail proves nothing: broken copies of the
# RabbitmqCluster must fail it (a no-op SKIP without the CRD).
"$venv/bin/python" scripts/check-crds.py --self-test "$out/ha.yaml"
