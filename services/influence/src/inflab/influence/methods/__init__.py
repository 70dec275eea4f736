"""The influence methods, by the name a run asks for (``RunSpec.influence_methods``)."""

from __future__ import annotations

from inflab.core.influence_methods import MethodArgs
from inflab.influence.methods.base import (
    Emit,
    InfluenceMethod,
    InfluenceScores,
    Job,
    ModelLoader,
    Progress,
    Scored,
    StageFailed,
)
from inflab.influence.methods.act_grad import ActGrad
from inflab.influence.methods.attr_change import AttrChange
from inflab.influence.methods.datainf import DataInf
from inflab.influence.methods.delta_h import DeltaH
from inflab.influence.methods.embedding import Embedding
from inflab.influence.methods.ekfac import EKFAC
from inflab.influence.methods.patching import Patching
from inflab.influence.methods.tracin import TracIn

#: name -> method class. A new method is one module here holding its maths (a subclass of
#: ``InfluenceMethod``, or of ``GradientMethod`` / ``RepresentationMethod`` for what those
#: prepare) and one line below, besides its argument model and catalogue entry in the
#: contract (``inflab.core.influence_methods``) and its name in
#: ``inflab.core.messages.INFLUENCE_METHODS``, so requests may ask for it.
METHODS: dict[str, type[InfluenceMethod]] = {
    cls.name: cls for cls in (TracIn, DataInf, EKFAC, DeltaH, ActGrad, AttrChange, Patching, Embedding)
}


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
    "ActGrad",
    "AttrChange",
    "DeltaH",
    "Embedding",
    "Patching",
    "DataInf",
    "EKFAC",
    "Emit",
    "InfluenceMethod",
    "InfluenceScores",
    "Job",
    "MethodArgs",
    "ModelLoader",
    "Progress",
    "Scored",
    "StageFailed",
    "TracIn",
    "UnknownMethod",
    "get_method",
]
