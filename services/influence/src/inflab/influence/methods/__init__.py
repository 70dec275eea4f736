"""The influence methods, by the name a run asks for (``RunSpec.influence_methods``)."""

from __future__ import annotations

from inflab.influence.methods.base import Emit, InfluenceMethod, InfluenceScores, ModelLoader, Progress
from inflab.influence.methods.tracin import TracIn

#: name -> method class. A new method is one module here and one line below (and its name
#: in ``inflab.common.messages.INFLUENCE_METHODS``, so requests may ask for it).
METHODS: dict[str, type[InfluenceMethod]] = {cls.name: cls for cls in (TracIn,)}


class UnknownMethod(KeyError):
    """A request named a method this worker does not have."""


def get_method(name: str) -> InfluenceMethod:
    """A fresh instance of the method called ``name``; :class:`UnknownMethod` otherwise."""
    try:
        return METHODS[name]()
    except KeyError:
        raise UnknownMethod(f"unknown influence method {name!r}; known: {sorted(METHODS)}") from None


__all__ = [
    "METHODS",
    "Emit",
    "InfluenceMethod",
    "InfluenceScores",
    "ModelLoader",
    "Progress",
    "TracIn",
    "UnknownMethod",
    "get_method",
]
