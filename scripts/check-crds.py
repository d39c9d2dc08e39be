#!/usr/bin/env python3
"""Strict schema check of the custom resources in built manifests.

kubernetes-validate only warns on CRD kinds it has no schema for. Here each
ServiceMonitor, PodMonitor, ScaledObject and TriggerAuthentication is
validated against models generated from the upstream CRDs (cloudcoil), which
check types, enums and patterns; unknown fields, which those models let
through, are caught by a round trip: every key given must come back.
Any other custom kind is an error, so nothing goes unchecked.
"""
import sys

import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, ServiceMonitor

MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): PodMonitor,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
}
BUILTIN_GROUPS = ("v1", "apps/", "autoscaling/", "policy/", "networking.k8s.io/", "node.k8s.io/", "batch/", "rbac.authorization.k8s.io/")


def unknown_keys(given, echoed, path="") -> list[str]:
    """Keys present in `given` but absent from the model's round trip."""
    missing = []
    if isinstance(given, dict) and isinstance(echoed, dict):
        for key, value in given.items():
            if key not in echoed:
                missing.append(f"{path}.{key}")
            else:
                missing += unknown_keys(value, echoed[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(echoed, list):
        for i, (a, b) in enumerate(zip(given, echoed)):
            missing += unknown_keys(a, b, f"{path}[{i}]")
    return missing


def main(paths: list[str]) -> int:
    failures, checked = 0, 0
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
                name = f"{path}: {kind}/{doc.get('metadata', {}).get('name')}"
                model = MODELS.get((api, kind))
                if model is None:
                    if api == "v1" or api.startswith(BUILTIN_GROUPS):
                        continue
                    print(f"FAIL {name}: no schema for custom kind {api} {kind}")
                    failures += 1
                    continue
                checked += 1
                try:
                    echoed = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
                except Exception as e:  # pydantic.ValidationError, with every error listed
                    print(f"FAIL {name}: {e}")
                    failures += 1
                    continue
                extra = unknown_keys(doc, echoed)
                if extra:
                    print(f"FAIL {name}: unknown fields {extra}")
                    failures += 1
                else:
                    print(f"ok   {name}")
    print(f"custom resources: {checked} checked, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
