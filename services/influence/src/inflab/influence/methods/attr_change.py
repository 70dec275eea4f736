"""Attribution-weighted change: keep the changes that matter to the loss.

    a_l(x) = pool Δh_l(x) ⊙ pool g_l(x),   s_l(z, q) = cos(a_l(z), a_l(q))

With ``ig_steps`` = K > 0, ``g`` is the integrated gradient: its mean over the midpoints of
K equal steps on the path from h_l^old to h_l^new, the new model running from layer l on
(K more forward and backward passes per layer and bucket).
"""

from __future__ import annotations

from typing import Any

from inflab.influence.methods.representation_method import RepresentationMethod


class AttrChange(RepresentationMethod):
    name = "attr_change"
    kind = "attr"

    def ig_steps(self, opts: Any) -> int:
        return opts.ig_steps


__all__ = ["AttrChange"]
