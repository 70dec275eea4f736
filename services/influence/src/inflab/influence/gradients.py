"""Per-example gradients of the trained weights, one batched backward per micro-batch.

Every influence method here starts from the gradient of each example's loss with respect to
what the fine-tune trained: the ``lora_A`` / ``lora_B`` weights and, on a benchmark run, the
function tokens' embedding rows (peft's trainable tokens); the base model is frozen. A
gradient row is the LoRA blocks, then the token rows (:func:`gradient_blocks`).

How it is made fast on a CPU: each LoRA factor is a plain ``nn.Linear`` (``y = x W^T``), so
the gradient of one example's loss with respect to ``W`` is ``sum_t g_t x_t^T``, where
``x_t`` is the layer's input and ``g_t`` the loss gradient at its output, at token ``t``.
Forward hooks record ``x`` and the outputs; one ``torch.autograd.grad`` over the whole
micro-batch gives every ``g`` (examples in a batch never mix, so ``g`` of example ``b``
depends on example ``b``'s loss only); one ``bmm`` per layer turns them into per-example
gradients. The weights' own (summed) gradients are never formed.

The token rows the same way: peft keeps their values in ``trainable_tokens_delta`` and writes
them over the embedding weight in the forward, so a row's gradient is that embedding row's:
the gradient at the embedding output summed over the positions holding the token (a
one-hot ``bmm``), plus, when the output layer is tied to the embeddings (peft then ties a
token layer on the output layer to the input's), the token's logit gradients times the
hidden states the output layer was applied to.

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

from inflab.ml.chat import IGNORE_INDEX, answer_loss, collate
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
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def shape(self) -> tuple[int, int]:
        out_features, in_features = self.module.weight.shape
        return out_features, in_features

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


@dataclass(frozen=True)
class TokenBlock:
    """The trainable embedding rows of one peft ``TrainableTokensLayer`` (a benchmark run's
    function tokens) and where they sit in a gradient row, after every LoRA block."""

    name: str  # the parameter's name, "...embed_tokens.token_adapter.trainable_tokens_delta.default"
    layer: nn.Module  # the TrainableTokensLayer on the input embedding
    adapter: str
    token_ids: tuple[int, ...]
    offset: int
    #: Output layers tied to these rows (a TrainableTokensLayer on the ``lm_head``).
    tied: tuple[nn.Module, ...] = ()

    @property
    def weight(self) -> nn.Parameter:
        return self.layer.trainable_tokens_delta[self.adapter]

    @property
    def shape(self) -> tuple[int, int]:
        rows, dim = self.weight.shape
        return rows, dim

    @property
    def numel(self) -> int:
        return self.weight.numel()


Block = LoraBlock | TokenBlock


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


def token_blocks(model: nn.Module, offset: int = 0) -> list[TokenBlock]:
    """The active adapter's trainable token rows (peft's ``TrainableTokensLayer``), laid out
    from ``offset``; empty for a model without them."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, TrainableTokensLayer)]
    blocks: list[TokenBlock] = []
    for name, layer in layers:
        if layer.merged:  # the rows are then in the base weight, outside the hooks' reach
            raise NotImplementedError(f"{name}: merged trainable tokens are not supported")
        if layer.tied_adapter is not None:  # an output layer: part of the block it is tied to
            continue
        base = layer.get_base_layer()
        if not isinstance(base, nn.Embedding) or base.max_norm is not None or base.scale_grad_by_freq:
            # Other layers, or embeddings whose gradient is not the plain row sum.
            raise NotImplementedError(f"{name}: trainable tokens on this {type(base).__name__} are not supported")
        tied = tuple(m for _, m in layers if m.tied_adapter is layer)
        for adapter in _active_adapters(layer):
            if adapter in layer.trainable_tokens_delta:
                block = TokenBlock(f"{name}.trainable_tokens_delta.{adapter}", layer, adapter,
                                   tuple(layer.token_indices[adapter]), offset, tied)
                blocks.append(block)
                offset += block.numel
    return blocks


def gradient_blocks(model: nn.Module) -> list[Block]:
    """Everything a gradient row holds, in its order: :func:`lora_blocks`, then
    :func:`token_blocks`."""
    lora = lora_blocks(model)
    return [*lora, *token_blocks(model, num_parameters(lora))]


def coverage(blocks: Sequence[Block]) -> dict[str, int]:
    """Which trained parameters gradient rows of ``blocks`` cover, for a method's stored
    arguments."""
    tokens = [b for b in blocks if isinstance(b, TokenBlock)]
    return {"num_lora_parameters": num_parameters([b for b in blocks if isinstance(b, LoraBlock)]),
            "trainable_token_rows": sum(b.shape[0] for b in tokens),
            "trainable_token_parameters": num_parameters(tokens)}


def _active_adapters(module: nn.Module) -> list[str]:
    active = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", "default")
    return [active] if isinstance(active, str) else list(active)


def num_parameters(blocks: Sequence[Block]) -> int:
    return sum(b.numel for b in blocks)


@contextlib.contextmanager
def _trainable(model: nn.Module, blocks: Sequence[Block]) -> Iterator[None]:
    """Only the trained weights require grad while gradients are taken (a checkpoint loaded
    for inference has them frozen); the previous flags are restored afterwards."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    trained = {id(b.weight) for b in blocks}
    try:
        for p in params:
            p.requires_grad_(id(p) in trained)
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
    model: nn.Module, batch: dict[str, torch.Tensor], blocks: Sequence[Block] | None = None
) -> torch.Tensor:
    """Per-example gradients ``[B, P]`` (float32) of ``blocks`` (default: every trained
    weight, :func:`gradient_blocks`) for one collated micro-batch."""
    blocks = list(blocks) if blocks is not None else gradient_blocks(model)
    device = blocks[0].weight.device
    batch = {k: v.to(device) for k, v in batch.items()}
    # The hooked modules: a LoRA factor's Linear; a token block's embedding and tied output layers.
    taps: list[nn.Module] = []
    owned: list[range] = []
    for b in blocks:
        modules = [b.module] if isinstance(b, LoraBlock) else [b.layer, *b.tied]
        owned.append(range(len(taps), len(taps) + len(modules)))
        taps.extend(modules)
    inputs: list[Any] = [None] * len(taps)
    outputs: list[Any] = [None] * len(taps)

    def recorder(i: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[i] = args[0].detach()
            outputs[i] = output

        return hook

    handles = [m.register_forward_hook(recorder(i)) for i, m in enumerate(taps)]
    try:
        with _trainable(model, blocks), torch.enable_grad():
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
    grad_at = {i: g for i, g in zip(used, grads) if g is not None}  # None: a layer the loss does not reach
    rows = torch.zeros(size, num_parameters(blocks), dtype=torch.float32, device=device)
    for block, tap_ids in zip(blocks, owned):
        parts = [(taps[i], inputs[i], grad_at[i]) for i in tap_ids if i in grad_at]
        if not parts:
            continue
        if isinstance(block, LoraBlock):
            _, x, g = parts[0]
            grad = _linear_gradients(x, g, size, *block.shape)
        else:
            grad = sum(_input_row_gradients(block, x, g) if module is block.layer
                       else _output_row_gradients(block, x, g, batch["labels"]) for module, x, g in parts)
        rows[:, block.offset : block.offset + block.numel] = grad.reshape(size, -1)
    return rows


def _linear_gradients(x: torch.Tensor, g: torch.Tensor, size: int, out_features: int,
                      in_features: int) -> torch.Tensor:
    """grad_W[b] = sum_t g[b, t]^T x[b, t]: (B, out, T) @ (B, T, in). Padding positions have
    g == 0 (nothing counted in the loss depends on them), so they add nothing."""
    x = x.reshape(size, -1, in_features).float()
    g = g.reshape(size, -1, out_features).float()
    return torch.bmm(g.transpose(1, 2), x)


def _input_row_gradients(block: TokenBlock, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``[B, K, D]``: the gradient at the embedding output summed over each token's positions."""
    embedding = block.layer.get_base_layer()
    onehot = (ids[..., None] == torch.tensor(block.token_ids, device=ids.device)).float()  # [B, T, K]
    if embedding.padding_idx is not None:  # F.embedding gives the padding row no gradient
        onehot[ids == embedding.padding_idx] = 0.0
    grad = torch.bmm(onehot.transpose(1, 2), g.float())
    scale = block.layer._get_embed_scale()  # embeddings that scale their output (Gemma)
    return grad if scale is None else grad * scale.float()


def _output_row_gradients(block: TokenBlock, h: torch.Tensor, g: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B, K, D]``: a tied output layer's share, each token's logit gradient times the
    hidden state it was computed from, summed per example."""
    g = g[:, list(block.token_ids)].float()  # [N, K]
    # answer_loss applies the output layer to the answer positions only, flattened in order.
    example = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    if h.dim() != 2 or example.shape[0] != h.shape[0]:
        raise RuntimeError(f"the output layer saw positions {tuple(h.shape[:-1])}, the batch has "
                           f"{example.shape[0]} answer tokens")
    owner = (example[None, :] == torch.arange(labels.shape[0], device=labels.device)[:, None]).float()  # [B, N]
    return torch.einsum("bn,nk,nd->bkd", owner, g, h.float())


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
    blocks = gradient_blocks(model)
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
    """All per-example gradients (:func:`gradient_blocks`) as one ``[N, P]`` float32 tensor,
    in ``examples`` order (``on_batch`` is called after each micro-batch, for progress).
    Memory is ``N * P * 4`` bytes: use :func:`iter_example_gradients` for many examples."""
    blocks = gradient_blocks(model)
    out = torch.zeros(len(examples), num_parameters(blocks), dtype=torch.float32)
    for indices, grads in iter_example_gradients(model, examples, pad_id=pad_id, batch_size=batch_size):
        out[indices] = grads.cpu()
        if on_batch is not None:
            on_batch()
    return out
