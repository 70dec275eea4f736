"""Attribution-weighted change: keep the changes that matter to the loss.

    a_l(x) = pool Δh_l(x) ⊙ pool g_l(x),   s_l(z, q) = cos(a_l(z), a_l(q))

With ``ig_steps`` = K > 0, ``g`` is the integrated gradient: its mean over the midpoints of
K equal steps on the path from h_l^old to h_l^new, the new model running from layer l on
(K more forward and backward passes per layer and bucket).
"""

from __future__ import annotations

from inflab.core import influence_methods as contract
from inflab.influence.methods.representation_method import Limits, RepresentationMethod


class AttrChangeArgs(contract.AttrChangeArgs, Limits):
    """The contract's arguments and the run's token limits."""


class AttrChange(RepresentationMethod):
    name = "attr_change"
    kind = "attr"
    description = contract.METHODS["attr_change"].description
    Args = AttrChangeArgs


__all__ = ["AttrChange", "AttrChangeArgs"]
