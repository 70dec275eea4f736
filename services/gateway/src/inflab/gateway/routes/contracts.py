"""The message contract, for pipelines that talk to NATS: ``/asyncapi.json``, generated
from the pydantic models with this deployment's subject prefix (``/openapi.json``, the
HTTP contract, is FastAPI's own)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter

from inflab.core.asyncapi import build_asyncapi
from inflab.core.subjects import Subjects
from inflab.gateway.deps import SettingsDep

router = APIRouter(tags=["contracts"])

_document = lru_cache(maxsize=4)(build_asyncapi)


@router.get("/asyncapi.json")
async def asyncapi(settings: SettingsDep) -> dict[str, Any]:
    """The AsyncAPI 3 document: every subject, its payload schema and version."""
    return _document(Subjects.from_settings(settings))
