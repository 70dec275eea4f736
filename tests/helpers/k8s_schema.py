"""Built-in Kubernetes kinds validated offline with the strict schemas of
``kubernetes-validate`` (Kubernetes 1.25 to 1.37; strict: unknown fields refused).

``kubernetes_validate.validate`` re-reads the large ``_definitions.json`` for every
manifest (~0.5 s each); this does exactly what it does for ``strict=True`` with the
schemas loaded once, so a few hundred manifests validate in seconds. A kind it has no
schema for raises :class:`kubernetes_validate.SchemaNotFoundError` (the library's own CLI
only warns): the chart tests count that as a failure.
"""

from __future__ import annotations

import re
from functools import lru_cache

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from referencing import Registry, Resource

KUBE_VERSION = "1.37.0"


def _schema_dir(version: str) -> str:
    available = [v for v in all_versions() if major_minor(v) <= major_minor(version)]
    if not available or major_minor(version) > all_versions()[-1]:
        raise kubernetes_validate.VersionNotSupportedError(version=major_minor(version))
    return f"v{available[-1]}-local-strict"


@lru_cache
def _definitions(schema_dir: str) -> Resource:
    return Resource.from_contents(schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", schema_dir))


@lru_cache
def _validator(api_version: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    schema_dir = _schema_dir(version)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        raise kubernetes_validate.SchemaNotFoundError(
            version=major_minor(version), kind=kind, api_version=api_version
        ) from None
    registry = _definitions(schema_dir) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(manifest: dict, version: str = KUBE_VERSION) -> None:
    """Raise ``jsonschema.ValidationError`` when the manifest breaks its kind's strict
    schema, ``kubernetes_validate.SchemaNotFoundError`` when no schema knows its kind."""
    _validator(manifest["apiVersion"], manifest["kind"], version).validate(manifest)
