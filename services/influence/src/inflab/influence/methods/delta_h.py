"""Concept-change similarity (Δh): influential training examples change the model's
internal states the way the question's states changed.

    s_l(z, q) = cos(pool Δh_l(z), pool Δh_l(q)),   Δh_l = h_l^new - h_l^old

per decoder layer l, aggregated over layers (mean, top-k mean or convex weights fitted on
validation queries), optionally z-scored per layer, or with dot products. Two forward
passes per bucket (old and new model), no gradients at all. See ``representation``.
"""

from __future__ import annotations

from inflab.influence.methods.representation_method import RepresentationMethod


class DeltaH(RepresentationMethod):
    name = "delta_h"
    kind = "delta"


__all__ = ["DeltaH"]
