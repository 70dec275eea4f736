"""Per-example gradients of the LoRA weights, one batched backward per micro-batch.

Every influence method here starts from the gradient of each example's loss with respect to
the LoRA parameters (the ``lora_A`` / ``lora_B`` weights only; the base model is frozen).

How it is made fast on a CPU: each LoRA factor is a plain ``nn.Linear`` (``y = x W^T``), so
the gradient of one example's loss with respect to ``W`` is ``sum_t g_t x_t^T``, where
``x_t`` is the layer's input and ``g_t`` the loss gradient at its output, at token ``t``.
Forward hooks record ``x`` and the outputs; one ``torch.autograd.grad`` over the whole
micro-batch gives every ``g`` (examples in a batch never mix, so ``g`` of example ``b``
depends on example ``b``'s loss only); one ``bmm`` per layer turns them into per-example
gradients. The weights' own (summed) gradients are never formed.

On a CPU this costs about what one plain batched forward+backward does, while
``torch.func.vmap`` (no batching rule for CPU flash attention) and one backward per
example are much slower; it agrees with per-example ``loss.backward()`` to float rounding
(docs/measurements.md has the figures).

The loss of an example is the mean cross-entropy over its answer tokens (labels != -100),
exactly what training minimises for a batch of one, and the logits are computed at answer
positions only: full-vocabulary logits at every position dominated memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from inflab.ml.chat import answer_loss, collate
# The default micro-batch size (the contract's default of the methods' ``batch_size``):
# faster than one big batch (full logits aside, large padded batches waste work) and than
# single examples (per-call overhead); docs/measurements.md.
from inflab.core.influence_methods import DEFAULT_BATCH_SIZE


class Example(Protocol):
    """What :func:`inflab.ml.chat.encode_pair` returns (only these fields are read)."""

    input_ids: Sequence[int]
    labels: Sequence[int]


@dataclass(frozen=True)
class LoraBlock:
    """One LoRA factor and where its flattened weight sits in a gradient row."""

    name: str  # the parameter's name, e.g. "...layers.0.self_attn.q_proj.lora_A.default.weight"
    module: nn.Linear
    offset: int

    @property
    def shape(self) -> tuple[int, int]:
        out_features, in_features = self.module.weight.shape
        return out_features, in_features

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


def lora_blocks(model: nn.Module) -> list[LoraBlock]:
    """The active adapter's ``lora_A`` / ``lora_B`` Linear layers of a peft model, in
    parameter order. A gradient row is their weights flattened (row-major) and concatenated
    in this order, i.e. the same layout as ``torch.cat([p.grad.flatten() for p in ...])``."""
    blocks: list[LoraBlock] = []
    offset = 0
    for name, module in model.named_modules():
        for factor in ("lora_A", "lora_B"):
            adapters = getattr(module, factor, None)
            if not isinstance(adapters, nn.ModuleDict):
                continue
            if getattr(module, "lora_variant", None):
                # DoRA and friends also use the weights outside the Linear's forward, which
                # the hooks would miss: refuse rather than return wrong gradients.
                raise NotImplementedError(f"{name}: only plain LoRA adapters are supported")
            for adapter in _active_adapters(module):
                if adapter not in adapters:
                    continue
                linear = adapters[adapter]
                if not isinstance(linear, nn.Linear):
                    raise NotImplementedError(f"{name}: LoRA on {type(linear).__name__} is not supported")
                blocks.append(LoraBlock(f"{name}.{factor}.{adapter}.weight", linear, offset))
                offset += linear.weight.numel()
    if not blocks:
        raise ValueError("the model has no LoRA layers: attach an adapter first")
    return blocks


def _active_adapters(module: nn.Module) -> list[str]:
    active = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", "default")
    return [active] if isinstance(active, str) else list(active)


def num_parameters(blocks: Sequence[LoraBlock]) -> int:
    return sum(b.numel for b in blocks)


@contextlib.contextmanager
def _lora_trainable(model: nn.Module, blocks: Sequence[LoraBlock]) -> Iterator[None]:
    """Only the LoRA weights require grad while gradients are taken (a checkpoint loaded for
    inference has them frozen); the previous flags are restored afterwards."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    lora = {id(b.module.weight) for b in blocks}
    try:
        for p in params:
            p.requires_grad_(id(p) in lora)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def length_buckets(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Indices of ``examples`` in micro-batches of similar length (sorted, so padding is
    small); the order is stable, so equal inputs always land in the same place."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def batch_gradients(
    model: nn.Module, batch: dict[str, torch.Tensor], blocks: Sequence[LoraBlock] | None = None
) -> torch.Tensor:
    """Per-example LoRA gradients ``[B, P]`` (float32) for one collated micro-batch."""
    blocks = list(blocks) if blocks is not None else lora_blocks(model)
    device = blocks[0].module.weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs: list[Any] = [None] * len(blocks)
    outputs: list[Any] = [None] * len(blocks)

    def recorder(i: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[i] = args[0].detach()
            outputs[i] = output

        return hook

    handles = [b.module.register_forward_hook(recorder(i)) for i, b in enumerate(blocks)]
    try:
        with _lora_trainable(model, blocks), torch.enable_grad():
            # The per-example mean over answer tokens, computed exactly as training does.
            losses = answer_loss(model, batch, per_example=True)
            used = [i for i, out in enumerate(outputs) if out is not None and out.requires_grad]
            if not used or not losses.requires_grad:  # no answer token in the whole batch
                used = []
            grads = torch.autograd.grad(losses.sum(), [outputs[i] for i in used], allow_unused=True) if used else ()
    finally:
        for h in handles:
            h.remove()

    size = losses.shape[0]
    rows = torch.zeros(size, num_parameters(blocks), dtype=torch.float32, device=device)
    for i, g in zip(used, grads):
        if g is None:  # a layer the loss does not reach
            continue
        block = blocks[i]
        out_features, in_features = block.shape
        x = inputs[i].reshape(size, -1, in_features).float()
        g = g.reshape(size, -1, out_features).float()
        # grad_W[b] = sum_t g[b, t]^T x[b, t]: (B, out, T) @ (B, T, in). Padding positions have
        # g == 0 (nothing counted in the loss depends on them), so they add nothing.
        grad = torch.bmm(g.transpose(1, 2), x)
        rows[:, block.offset : block.offset + block.numel] = grad.reshape(size, -1)
    return rows


def iter_example_gradients(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, gradients[len(indices), P])`` one length-bucketed micro-batch at a
    time, so a caller can consume the gradients of any number of examples in bounded memory.
    ``indices`` point into ``examples``."""
    blocks = lora_blocks(model)
    for indices in length_buckets(examples, batch_size):
        batch = collate([examples[i] for i in indices], pad_id)
        yield indices, batch_gradients(model, batch, blocks)


def example_gradients(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[], None] | None = None,
) -> torch.Tensor:
    """All per-example LoRA gradients as one ``[N, P]`` float32 tensor, in ``examples``
    order (``on_batch`` is called after each micro-batch, for progress). Memory is
    ``N * P * 4`` bytes: use :func:`iter_example_gradients` for many examples."""
    blocks = lora_blocks(model)
    out = torch.zeros(len(examples), num_parameters(blocks), dtype=torch.float32)
    for indices, grads in iter_example_gradients(model, examples, pad_id=pad_id, batch_size=batch_size):
        out[indices] = grads.cpu()
        if on_batch is not None:
            on_batch()
    return out
