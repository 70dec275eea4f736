"""Custom resources validated offline against their CustomResourceDefinitions.

No Kubernetes API server runs here and no package ships the operators' schemas, so the
upstream CRD manifests (KubeRay, KEDA, prometheus-operator) are read as data, from the
folder CI lays beside the repository (``../shared/k8s-crds``, or ``INFLAB_K8S_CRDS``), and
each served version's ``openAPIV3Schema`` becomes a JSON Schema as strict as an API server
with strict field validation:

* an object with ``properties`` and no ``x-kubernetes-preserve-unknown-fields`` refuses
  unknown fields (``additionalProperties: false``);
* ``x-kubernetes-int-or-string`` accepts an integer or a string;
* ``nullable: true`` accepts null as well.

What this leaves out: CEL rules (``x-kubernetes-validations``; the tests check the ones
that matter by hand), defaulting, and the operators' admission webhooks.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def crds_dir() -> Path | None:
    """The CRD folder, or None where it is not laid out (the tests then skip, saying so)."""
    candidates = [os.environ.get("INFLAB_K8S_CRDS"), ROOT.parent / "shared" / "k8s-crds"]
    for candidate in candidates:
        if candidate and Path(candidate, "ray.io_rayclusters.yaml").exists():
            return Path(candidate)
    return None


def strict(schema: Any) -> Any:
    """The JSON Schema an openAPIV3Schema means under strict field validation."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, (dict, list)):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(sub) for sub in value]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


@lru_cache
def schemas() -> dict[tuple[str, str], dict]:
    """``(apiVersion, kind)`` to its strict JSON Schema, for every served version of every
    CRD in the folder."""
    folder = crds_dir()
    if folder is None:
        return {}
    found: dict[tuple[str, str], dict] = {}
    for path in sorted(folder.glob("*.yaml")):
        # The C loader when PyYAML has it: the KubeRay CRDs are megabytes (seconds in pure Python).
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group = doc["spec"]["group"]
            kind = doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served"):
                    found[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return found


def validate(manifest: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if the custom resource breaks its CRD's schema,
    ``KeyError`` if no CRD in the folder defines its apiVersion and kind."""
    schema = schemas()[(manifest["apiVersion"], manifest["kind"])]
    jsonschema.Draft7Validator(schema).validate(manifest)
