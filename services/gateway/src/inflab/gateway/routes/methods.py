"""The influence methods for the editor's selector, generated from the contract
(``inflab.core.influence_methods``): the same models validate an experiment's
``influence_args`` and parse a run's arguments in the influence service, so what this
lists is exactly what is accepted."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from inflab.core.influence_methods import ARGS_MODELS, METHODS, MethodArgs, MethodInfo

router = APIRouter(prefix="/api", tags=["methods"])

ArgType = Literal["integer", "number", "boolean", "string"]


class MethodArgument(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    name: str
    """The key in ``influence_args.<method>``."""
    type: ArgType
    """The JSON type of a value (besides null where ``nullable``)."""
    nullable: bool
    """Whether null is a value (it then means what ``description`` says)."""
    default: Any
    """The value when the argument is not given."""
    minimum: float | None = None
    """The smallest value allowed, itself included."""
    exclusive_minimum: float | None = None
    """Values must be larger than this."""
    maximum: float | None = None
    """The largest value allowed, itself included."""
    exclusive_maximum: float | None = None
    """Values must be smaller than this."""
    choices: list[str] | None = None
    """The values allowed, for a string argument."""
    advanced: bool = False
    """Rarely changed: an editor may fold it away."""
    shared: bool = False
    """Taken by every method (``top_k``, ``batch_size``)."""
    description: str
    """What it does."""


class InfluenceMethodOut(MethodInfo):
    args: list[MethodArgument]
    """Every argument the method takes, the shared ones first."""


def _argument(name: str, schema: dict[str, Any], required_shared: set[str]) -> MethodArgument:
    options = schema.get("anyOf", [schema])
    kinds = [o for o in options if o.get("type") != "null"]
    if len(kinds) != 1:
        raise TypeError(f"argument {name}: one JSON type (and null) expected, got {options}")
    kind = kinds[0]
    return MethodArgument(
        name=name,
        type="string" if "enum" in kind else kind["type"],
        nullable=len(options) > 1,
        default=schema.get("default"),
        minimum=kind.get("minimum"),
        exclusive_minimum=kind.get("exclusiveMinimum"),
        maximum=kind.get("maximum"),
        exclusive_maximum=kind.get("exclusiveMaximum"),
        choices=kind.get("enum"),
        advanced=bool(schema.get("advanced")),
        shared=name in required_shared,
        description=" ".join(schema.get("description", "").split()),
    )


def method_arguments(model: type[MethodArgs]) -> list[MethodArgument]:
    """The arguments of ``model`` from its JSON schema (pydantic's own: bounds, choices,
    defaults and the field docstrings), in declaration order (the shared ones first)."""
    schema = model.model_json_schema()
    shared = set(MethodArgs.model_fields)
    # Arguments for scripts only (a representation method's ablation ``grid``) are not
    # form fields; the CLI sets them (``inflab bench run --grid``).
    return [_argument(name, prop, shared) for name, prop in schema["properties"].items() if not prop.get("cli_only")]


@lru_cache(maxsize=1)
def method_catalogue() -> tuple[InfluenceMethodOut, ...]:
    return tuple(
        InfluenceMethodOut(**info.model_dump(), args=method_arguments(ARGS_MODELS[method_id]))
        for method_id, info in METHODS.items()
    )


@router.get("/methods")
async def list_methods() -> list[InfluenceMethodOut]:
    """The influence methods a run can compute, in the editor's order: label, speed, what
    each is good at, its variants and every argument with its default, bounds or choices.
    Public, like ``/api/limits``: it describes the deployment, not anyone's data."""
    return list(method_catalogue())
