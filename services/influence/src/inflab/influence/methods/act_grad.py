"""Activation-gradient similarity: the parameter gradients of classical influence functions
replaced by the loss gradients at the fine-tuned model's hidden states.

    s_l(z, q) = cos(pool g_l(z), pool g_l(q)),   g_l = ∂ loss / ∂ h_l^new

aggregated over layers like ``delta_h``. One checkpoint, no Hessian: one forward and one
backward to the activations per bucket (no parameter gradient is formed).
"""

from __future__ import annotations

from inflab.influence.methods.representation_method import RepresentationMethod


class ActGrad(RepresentationMethod):
    name = "act_grad"
    kind = "grad"


__all__ = ["ActGrad"]
