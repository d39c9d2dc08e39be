#!/usr/bin/env python3
"""Strict schema check of the custom resources in built manifests.

kubernetes-validate only warns on CRD kinds it has no schema for. Here each
ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject and TriggerAuthentication is
validated against models generated from the upstream CRDs (cloudcoil), which
check types, enums and patterns; unknown fields, which those models let
through, are caught by a round trip: every key given must come back.

A RabbitmqCluster has no such package (no model, no published schema), so it
is checked against the openAPIV3Schema of the RabbitMQ Cluster Operator's own
CRD, read from the file named by RABBITMQ_CRD. The schema is made strict the
way the API server's strict field validation is: an object schema that lists
`properties` (or lists nothing) and does not set
x-kubernetes-preserve-unknown-fields rejects any other key; int-or-string
takes an integer or a string; null is refused where the schema is not
`nullable` (the API server would drop it: here it is a mistake in our YAML).
Other x-kubernetes-* keys, including CEL rules (x-kubernetes-validations),
are not evaluated. Without the file the RabbitmqCluster is reported SKIP and
counted as skipped, never as passed.

`--self-test FILE...` proves that check can fail: the RabbitmqCluster in
FILE passes, and copies of it with a misspelled field or a wrong type don't.

Any other custom kind is an error, so nothing goes unchecked.
"""
import copy
import os
import sys
from pathlib import Path

import jsonschema
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule, ServiceMonitor

MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
}
BUILTIN_GROUPS = ("v1", "apps/", "autoscaling/", "policy/", "networking.k8s.io/", "node.k8s.io/", "batch/", "rbac.authorization.k8s.io/")

ROOT = Path(__file__).resolve().parent.parent
# Kinds checked against a CRD file: (apiVersion, kind) -> the env var naming
# the file and its default, relative to the repository root. The file is not
# in the repository (it is the operator's, not ours to copy).
CRD_FILES = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): ("RABBITMQ_CRD", "../shared/crds/rabbitmq.com_rabbitmqclusters.yaml"),
}
# The API server validates a custom resource's metadata as ObjectMeta; the
# CRD only says `type: object`. These are the fields a manifest may set.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def strict(schema: dict) -> dict:
    """An OpenAPI v3 schema from a CRD, as a strict JSON Schema (draft 4,
    whose boolean exclusiveMinimum/Maximum match OpenAPI 3.0's)."""
    out = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: strict(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [strict(s) for s in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        # controller-gen writes anyOf [integer, string] beside the flag; the
        # flag alone is what the API server goes by.
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
        if schema.get("x-kubernetes-embedded-resource"):
            out.setdefault("properties", {})
            for name in ("apiVersion", "kind"):
                out["properties"].setdefault(name, {"type": "string"})
            out["properties"].setdefault("metadata", OBJECT_META)
        # With no properties listed either, the API server keeps no field.
        out["additionalProperties"] = False
    if schema.get("nullable"):
        types = out.get("type")
        if isinstance(types, str):
            out["type"] = [types, "null"]
        elif isinstance(types, list):
            out["type"] = types + ["null"]
    return out


def crd_validator(api: str, kind: str, path: Path) -> jsonschema.Draft4Validator:
    """The strict validator for `kind` from the CRD file at `path`."""
    with open(path) as f:
        crd = yaml.safe_load(f)
    group, version = api.split("/")
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
        raise ValueError(f"{path} is not the CRD of {api} {kind}")
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    if not served:
        raise ValueError(f"{path} serves no version {version}")
    schema = strict(served[0]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = strict(OBJECT_META)
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def crd_path(env: str, default: str) -> Path:
    return Path(os.environ.get(env) or ROOT / default)


def crd_errors(validator: jsonschema.Draft4Validator, doc: dict) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


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


def documents(paths: list[str]):
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield path, doc


def main(paths: list[str]) -> int:
    failures, checked, skipped = 0, 0, 0
    validators = {}
    for path, doc in documents(paths):
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        name = f"{path}: {kind}/{doc.get('metadata', {}).get('name')}"
        if (api, kind) in CRD_FILES:
            env, default = CRD_FILES[(api, kind)]
            crd = crd_path(env, default)
            if not crd.is_file():
                print(f"SKIP {name}: operator CRD not available (set {env})")
                skipped += 1
                continue
            if (api, kind) not in validators:
                validators[(api, kind)] = crd_validator(api, kind, crd)
            checked += 1
            errors = crd_errors(validators[(api, kind)], doc)
            if errors:
                print(f"FAIL {name}: " + "; ".join(errors))
                failures += 1
            else:
                print(f"ok   {name} (CRD {crd})")
            continue
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
    print(f"custom resources: {checked} checked, {failures} failed, {skipped} skipped")
    return 1 if failures or not checked else 0


def self_test(paths: list[str]) -> int:
    """The RabbitmqCluster check must pass the real CR and fail broken copies."""
    api, kind = "rabbitmq.com/v1beta1", "RabbitmqCluster"
    env, default = CRD_FILES[(api, kind)]
    crd = crd_path(env, default)
    if not crd.is_file():
        print(f"SKIP self-test: operator CRD not available (set {env})")
        return 0
    validator = crd_validator(api, kind, crd)
    good = next((d for _, d in documents(paths) if (d.get("apiVersion"), d.get("kind")) == (api, kind)), None)
    if good is None:
        print(f"FAIL self-test: no {kind} in {paths}")
        return 1

    def rename(obj, key, new):
        obj[new] = obj.pop(key)

    # (what is changed, how, whether the check must pass it, the error's path)
    cases = [
        ("as built", lambda cr: None, True, None),
        ("misspelled spec field (replica)", lambda cr: rename(cr["spec"], "replicas", "replica"), False, "spec"),
        ("misspelled nested field (persistence.storge)", lambda cr: rename(cr["spec"]["persistence"], "storage", "storge"), False, "spec.persistence"),
        (
            "misspelled deep field (podAntiAffinity ... topologykey)",
            lambda cr: rename(cr["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0], "topologyKey", "topologykey"),
            False,
            "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution.0",
        ),
        ("misspelled metadata field (lables)", lambda cr: rename(cr["metadata"], "labels", "lables") if "labels" in cr["metadata"] else cr["metadata"].update(lables={}), False, "metadata"),
        ("wrong type: replicas as a string", lambda cr: cr["spec"].update(replicas="3"), False, "spec.replicas"),
        ("wrong type: additionalPlugins as a string", lambda cr: cr["spec"]["rabbitmq"].update(additionalPlugins="rabbitmq_prometheus"), False, "spec.rabbitmq.additionalPlugins"),
        ("wrong type: image null", lambda cr: cr["spec"].update(image=None), False, "spec.image"),
        ("out of enum: service.type", lambda cr: cr["spec"]["service"].update(type="Ingress"), False, "spec.service.type"),
        ("out of range: replicas -1", lambda cr: cr["spec"].update(replicas=-1), False, "spec.replicas"),
        ("int-or-string: cpu as an integer", lambda cr: cr["spec"]["resources"]["requests"].update(cpu=1), True, None),
        ("int-or-string: cpu as an object", lambda cr: cr["spec"]["resources"]["requests"].update(cpu={"cores": 1}), False, "spec.resources.requests.cpu"),
    ]
    wrong = 0
    for what, mutate, should_pass, where in cases:
        cr = copy.deepcopy(good)
        mutate(cr)
        errors = crd_errors(validator, cr)
        as_expected = not errors if should_pass else any(e.startswith(f"{where}:") for e in errors)
        verdict = "passes" if not errors else "fails: " + "; ".join(errors)
        print(f"{'ok  ' if as_expected else 'FAIL'} self-test {what}: {verdict}")
        wrong += not as_expected
    print(f"self-test: {len(cases)} cases, {len(cases) - wrong} as expected, {wrong} not")
    return 1 if wrong else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--self-test"]:
        sys.exit(self_test(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
