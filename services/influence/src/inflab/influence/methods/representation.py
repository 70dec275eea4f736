"""The core of the representation methods: hidden states and activation gradients of an old
and a new model (the base and the fine-tuned one), pooled per layer, and the per-layer
similarities built from them.

Notation (h_l(x): the output of decoder layer l for the tokens of x, ``[T, d]``):

* change ``Δh_l(x) = h_l^new(x) - h_l^old(x)``;
* activation gradient ``g_l(x) = ∂ loss(x) / ∂ h_l^new(x)``, the loss being the mean
  next-token cross-entropy over the tokens that carry a label (an answer; every token of a
  benchmark document), exactly the loss training minimised;
* pooling to ``R^d``: the last position the loss reads (the token before the last), or
  the mean over the labelled tokens;
* attribution-weighted change ``a_l(x) = pool Δh_l(x) ⊙ pool g_l(x)``; with integrated
  gradients, ``g`` is replaced by its mean over K points ``h_old + (k - 1/2)/K · Δh``
  (k = 1..K, a midpoint Riemann sum) of the path from the old to the new states at layer l,
  the new model running from that layer on.

How it is fast: examples go in length buckets (as for the gradient methods); per bucket one
forward of the old model without gradients and one forward of the new model, with gradients
only to the hidden states (no parameter gradients are ever formed); forward hooks on the
decoder layers record their outputs; logits are computed at labelled positions only. The
pooled vectors of every example and layer (``[N, layers, d]``) are all a method keeps, so a
grid of layer subsets, aggregations, normalisations and similarities re-scores them without
another pass (:class:`FeatureCache`).
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from inflab.ml.chat import IGNORE_INDEX, collate
from inflab.influence.gradients import length_buckets
from inflab.influence.methods.shapes import checked

#: What a feature pass can compute: pooled changes, pooled gradients, their product.
KINDS = ("delta", "grad", "attr")


# ----------------------------------------------------------------------------- layers
def parse_layers(spec: str, num_layers: int) -> list[int]:
    """``all``, ``0,3,5`` or ``2-5`` (inclusive) -> sorted distinct layer indices; an index
    outside ``0..num_layers-1`` is refused naming it."""
    if spec.strip() == "all":
        return list(range(num_layers))
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        first, last = int(lo), int(hi or lo)
        if first > last:
            raise ValueError(f"layers: range {part!r} is empty")
        out.update(range(first, last + 1))
    bad = sorted(i for i in out if not 0 <= i < num_layers)
    if bad:
        raise ValueError(f"layers: {bad} outside the model's decoder layers 0-{num_layers - 1}")
    return sorted(out)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer stack of a causal LM (peft-wrapped or not)."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise NotImplementedError(f"{type(decoder).__name__}: no `layers` stack to read hidden states from")
    return layers


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


# ----------------------------------------------------------------------------- the pair
@dataclass
class ModelPair:
    """The old and the new model. A LoRA run: one peft model, old = its adapter disabled,
    new = enabled. Two checkpoints: two models of the same architecture and tokenizer."""

    new: nn.Module
    old: nn.Module | None = None  # None: ``new`` is a peft model, old = without its adapter
    description: str = ""

    @contextlib.contextmanager
    def use(self, which: str) -> Iterator[nn.Module]:
        if which == "new":
            yield self.new
        elif self.old is not None:
            yield self.old
        else:
            with self.new.disable_adapter():
                yield self.new

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.new))


def check_compatible(old: nn.Module, old_tokenizer: Any, new: nn.Module, new_tokenizer: Any) -> None:
    """Refuse (``ValueError`` naming what differs) two checkpoints whose hidden states cannot
    be compared position by position: another tokenizer (vocabulary or special tokens) or
    another architecture (type, width, depth, vocabulary size)."""
    problems = []
    if old_tokenizer.get_vocab() != new_tokenizer.get_vocab():
        problems.append(f"tokenizers differ ({len(old_tokenizer)} vs {len(new_tokenizer)} tokens, "
                        "or the same count with other ids)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(old_tokenizer, name, None) != getattr(new_tokenizer, name, None):
            problems.append(f"tokenizer {name} differs")
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        a, b = getattr(old.config, key, None), getattr(new.config, key, None)
        if a != b:
            problems.append(f"architecture {key} differs ({a!r} vs {b!r})")
    if problems:
        raise ValueError("old_model and new_model cannot be compared: " + "; ".join(problems))


# ----------------------------------------------------------------------------- pooling
@checked
def pooling_weights(labels: Int[Tensor, "B T"], attention_mask: Int[Tensor, "B T"], pooling: str
                    ) -> Float[Tensor, "B T"]:
    """Weights over positions that pool a ``[B, T, d]`` tensor to ``[B, d]``: one-hot on the
    last position the loss reads (the one predicting the last labelled token; the last real
    token when nothing is labelled), or uniform over the labelled tokens (``answer_mean``;
    the last position where nothing is labelled). The very last token predicts nothing, so
    its activation gradient is always zero: ``last`` points one before it."""
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    last_real = attention_mask.sum(1) - 1
    last_scored = torch.where(predicts, positions, -1).max(1).values
    last = F.one_hot(torch.where(last_scored >= 0, last_scored, last_real).clamp(min=0), labels.shape[1]).float()
    if pooling == "last":
        return last
    if pooling != "answer_mean":
        raise ValueError(f"pooling {pooling!r}: expected last or answer_mean")
    span = (labels != IGNORE_INDEX).float()
    count = span.sum(1, keepdim=True)
    return torch.where(count > 0, span / count.clamp(min=1), last)


@checked
def pool(hidden: Float[Tensor, "B T d"], weights: Float[Tensor, "B T"]) -> Float[Tensor, "B d"]:
    return torch.einsum("btd,bt->bd", hidden, weights)


# ----------------------------------------------------------------------------- one bucket
def _labelled_loss(model: nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    """Per-example mean cross-entropy over labelled tokens, from the decoder's last hidden
    state (logits only where a label is)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(labels.shape[0], dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)
    return sums / keep.sum(1).clamp(min=1)


@contextlib.contextmanager
def _recording(model: nn.Module, layers: Sequence[int], *, replace: dict[int, Callable[[Tensor], Tensor]] | None = None
               ) -> Iterator[dict[int, Tensor]]:
    """Record the outputs of ``layers`` (decoder layer index -> ``[B, T, d]``); ``replace``
    maps a layer to a function whose result becomes that layer's output."""
    stack = decoder_layers(model)
    seen: dict[int, Tensor] = {}
    handles = []

    def hook(index: int):
        def run(module: nn.Module, args: tuple, output: Any) -> Any:
            h = _hidden(output)
            if replace and index in replace:
                h = replace[index](h)
                output = (h, *output[1:]) if isinstance(output, tuple) else h
            seen[index] = h
            return output

        return run

    for index in sorted(set(layers) | set(replace or ())):
        handles.append(stack[index].register_forward_hook(hook(index)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _inputs_require_grad(model: nn.Module) -> Iterator[None]:
    """Make the embeddings' output require grad (so hidden states do) without any parameter
    requiring it: backward then forms activation gradients only."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output.detach().requires_grad_(True)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        handle.remove()
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def _states(model: nn.Module, batch: dict[str, Tensor], layers: Sequence[int]) -> dict[int, Tensor]:
    with torch.no_grad(), _recording(model, layers) as seen:
        model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return dict(seen)


def _states_and_grads(model: nn.Module, batch: dict[str, Tensor], layers: Sequence[int],
                      replace: dict[int, Callable[[Tensor], Tensor]] | None = None
                      ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    with _inputs_require_grad(model), _recording(model, layers, replace=replace) as seen:
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                                     ).last_hidden_state
        losses = _labelled_loss(model, hidden, batch["labels"])
        order = sorted(seen)
        if losses.requires_grad:
            grads = torch.autograd.grad(losses.sum(), [seen[i] for i in order], allow_unused=True)
        else:
            grads = (None,) * len(order)
    out = {i: (torch.zeros_like(seen[i]) if g is None else g).detach() for i, g in zip(order, grads)}
    return {i: seen[i].detach() for i in order}, out


@dataclass
class BucketFeatures:
    """Pooled per-layer vectors of one bucket, ``[B, layers, d]`` per computed kind."""

    delta: Tensor | None = None
    grad: Tensor | None = None
    attr: Tensor | None = None


def bucket_features(pair: ModelPair, batch: dict[str, Tensor], layers: Sequence[int], kinds: set[str],
                    pooling: str, ig_steps: int = 0) -> BucketFeatures:
    """One bucket's pooled features: the old model's forward (when a change is asked for)
    and the new model's (with activation gradients when a gradient is asked for)."""
    weights = pooling_weights(batch["labels"], batch["attention_mask"], pooling)
    need_delta = bool(kinds & {"delta", "attr"})
    need_grad = bool(kinds & {"grad", "attr"})
    old = None
    if need_delta:
        with pair.use("old") as model:
            old = _states(model, batch, layers)
    with pair.use("new") as model:
        if need_grad:
            new, grads = _states_and_grads(model, batch, layers)
        else:
            new, grads = _states(model, batch, layers), {}
        if "attr" in kinds and ig_steps > 0:
            grads_attr = {}
            for layer in layers:
                total = torch.zeros_like(new[layer])
                for k in range(ig_steps):
                    alpha = (k + 0.5) / ig_steps
                    point = old[layer] + alpha * (new[layer] - old[layer])
                    _, g = _states_and_grads(model, batch, [layer],
                                             replace={layer: lambda h, p=point: p.clone().requires_grad_(True)})
                    total += g[layer]
                grads_attr[layer] = total / ig_steps
        else:
            grads_attr = grads
    out = BucketFeatures()

    def stacked(per_layer: dict[int, Tensor]) -> Tensor:
        return torch.stack([pool(per_layer[layer].float(), weights) for layer in layers], dim=1)

    if need_delta:
        delta = {layer: new[layer] - old[layer] for layer in layers}
        if "delta" in kinds:
            out.delta = stacked(delta)
    if "grad" in kinds:
        out.grad = stacked(grads)
    if "attr" in kinds:
        out.attr = stacked(delta) * stacked(grads_attr)
    return out


@dataclass
class Features:
    """Pooled per-layer vectors of every example, ``[N, layers, d]`` per computed kind, in
    the examples' order; ``layers`` says which decoder layer each slot is."""

    layers: list[int]
    delta: Tensor | None = None
    grad: Tensor | None = None
    attr: Tensor | None = None

    def of(self, kind: str) -> Tensor:
        value = getattr(self, kind)
        if value is None:
            raise KeyError(f"{kind} was not computed")
        return value

    def select(self, layers: Sequence[int]) -> "Features":
        """The same features restricted to ``layers`` (which must have been computed)."""
        index = [self.layers.index(layer) for layer in layers]
        pick = lambda t: None if t is None else t[:, index]  # noqa: E731
        return Features(list(layers), pick(self.delta), pick(self.grad), pick(self.attr))


def example_features(pair: ModelPair, examples: Sequence[Any], *, pad_id: int, layers: Sequence[int],
                     kinds: set[str], pooling: str, batch_size: int, ig_steps: int = 0,
                     on_batch: Callable[[int], None] | None = None) -> Features:
    """Pooled features of ``examples`` (``EncodedExample``-like: ``input_ids``, ``labels``),
    length-bucketed micro-batches of ``batch_size``."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown feature kinds {sorted(unknown)}")
    device = next(pair.new.parameters()).device
    out = Features(list(layers))
    n = len(examples)
    for indices in length_buckets(examples, batch_size):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
        part = bucket_features(pair, batch, layers, set(kinds), pooling, ig_steps)
        for kind in KINDS:
            value = getattr(part, kind)
            if value is None:
                continue
            if getattr(out, kind) is None:
                setattr(out, kind, torch.zeros(n, len(layers), value.shape[-1], dtype=torch.float32))
            getattr(out, kind)[indices] = value.float().cpu()
        if on_batch is not None:
            on_batch(len(indices))
    return out


# ----------------------------------------------------------------------------- scoring
@checked
def layer_similarities(queries: Float[Tensor, "M layers d"], train: Float[Tensor, "N layers d"], similarity: str
                       ) -> Float[Tensor, "M N layers"]:
    """``s[i, j, l]``: cosine (or dot product) of query i's and training example j's vectors
    at layer slot l. A zero vector has cosine 0 with everything."""
    if similarity == "cosine":
        queries = queries / queries.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        train = train / train.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    elif similarity != "dot":
        raise ValueError(f"similarity {similarity!r}: expected cosine or dot")
    return torch.einsum("mld,nld->mnl", queries.double(), train.double()).float()


@checked
def normalize_layers(scores: Float[Tensor, "M N layers"], normalization: str) -> Float[Tensor, "M N layers"]:
    """``zscore``: each (query, layer)'s similarities standardised over the training
    examples (a constant row becomes 0); ``none``: unchanged."""
    if normalization == "none":
        return scores
    if normalization != "zscore":
        raise ValueError(f"normalization {normalization!r}: expected none or zscore")
    s = scores.double()
    mean = s.mean(1, keepdim=True)
    std = s.std(1, unbiased=False, keepdim=True)
    return ((s - mean) / std.clamp(min=1e-12)).float()


@checked
def aggregate_layers(scores: Float[Tensor, "M N layers"], aggregation: str, *, top_layers: int = 3,
                     weights: Float[Tensor, "layers"] | None = None) -> Float[Tensor, "M N"]:
    """One score per (query, example): the mean over layers, the mean of the ``top_layers``
    largest, or the ``weights``-weighted sum (convex weights; ``learned``)."""
    if aggregation == "mean" or (aggregation == "learned" and weights is None):
        return scores.double().mean(-1).float()
    if aggregation == "topk_mean":
        k = min(top_layers, scores.shape[-1])
        return scores.double().topk(k, dim=-1).values.mean(-1).float()
    if aggregation == "learned":
        return torch.einsum("mnl,l->mn", scores.double(), weights.double()).float()
    raise ValueError(f"aggregation {aggregation!r}: expected mean, topk_mean or learned")


def _auc(scores: Tensor, relevant: Tensor) -> float | None:
    pos, neg = scores[relevant], scores[~relevant]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(greater / (len(pos) * len(neg)))


@checked
def fit_layer_weights(scores: Float[Tensor, "M N layers"], relevant: Bool[Tensor, "M N"]) -> Float[Tensor, "layers"]:
    """Convex weights over layer slots fitted on validation queries: each layer weighs its
    mean ROC-AUC's excess over chance (relevant vs other examples), clipped at 0 and
    normalised to sum 1; uniform when no layer beats chance."""
    layers = scores.shape[-1]
    excess = torch.zeros(layers, dtype=torch.float64)
    for slot in range(layers):
        aucs = [a for a in (_auc(scores[i, :, slot], relevant[i]) for i in range(scores.shape[0])) if a is not None]
        if aucs:
            excess[slot] = max(0.0, sum(aucs) / len(aucs) - 0.5)
    if float(excess.sum()) <= 0:
        return torch.full((layers,), 1.0 / layers)
    return (excess / excess.sum()).float()


@dataclass
class ScoreOptions:
    layers: list[int]
    aggregation: str = "mean"
    top_layers: int = 3
    normalization: str = "none"
    similarity: str = "cosine"


@dataclass
class Scored:
    scores: Tensor  # [M, N]
    info: dict[str, Any] = field(default_factory=dict)


def score_features(queries: Features, train: Features, kind: str, opts: ScoreOptions,
                   relevant: Tensor | None = None, validation: Sequence[int] = ()) -> Scored:
    """The ``[M, N]`` scores of ``kind`` features under ``opts``; with ``learned``
    aggregation the weights are fitted on the ``validation`` query rows of ``relevant``
    (the mean is used, and said, when there are none)."""
    q, t = queries.select(opts.layers).of(kind), train.select(opts.layers).of(kind)
    per_layer = normalize_layers(layer_similarities(q, t, opts.similarity), opts.normalization)
    info: dict[str, Any] = {"layers_used": list(opts.layers)}
    weights = None
    if opts.aggregation == "learned":
        if relevant is None or not validation:
            info["learned_weights"] = "no ground truth: the mean over layers was used"
        else:
            rows = list(validation)
            weights = fit_layer_weights(per_layer[rows], relevant[rows])
            info["learned_weights"] = dict(zip(map(str, opts.layers), [round(float(w), 6) for w in weights]))
            info["validation_queries"] = len(rows)
    scores = aggregate_layers(per_layer, opts.aggregation, top_layers=opts.top_layers, weights=weights)
    return Scored(scores, info)


# ----------------------------------------------------------------------------- patching
def answer_margin(logits: Float[Tensor, "B V"], answer: int) -> Float[Tensor, "B"]:
    """The correct answer token's logit minus the largest other logit."""
    others = logits.clone()
    others[:, answer] = -math.inf
    return logits[:, answer] - others.max(-1).values


def patch_scores(pair: ModelPair, query_prefix: Sequence[int], answer: int, layer: int,
                 attributions: Float[Tensor, "N d"], fraction: float, batch_size: int) -> Float[Tensor, "N"]:
    """Cross-checkpoint patching for one query: for each training example j, the top
    ``fraction`` of dimensions of ``|attributions[j]|`` at ``layer`` are patched from the new
    model's state into the old model's, at the query's last prompt token; the score is the
    answer's logit-margin gain ``m_patched - m_old``, signed toward the new model
    (``m_new - m_old``; positive when that is 0)."""
    device = next(pair.new.parameters()).device
    ids = torch.tensor([list(query_prefix)], device=device)
    mask = torch.ones_like(ids)

    def run(model: nn.Module, replace=None, rows: int = 1) -> tuple[Tensor, dict[int, Tensor]]:
        with torch.no_grad(), _recording(model, [layer], replace=replace) as seen:
            hidden = model.get_decoder()(input_ids=ids.expand(rows, -1), attention_mask=mask.expand(rows, -1)
                                         ).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, -1]).float()
        return answer_margin(logits, answer), dict(seen)

    with pair.use("new") as model:
        m_new, states = run(model)
    h_new = states[layer][0, -1]
    with pair.use("old") as model:
        m_old, _ = run(model)
        direction = 1.0 if float(m_new - m_old) >= 0 else -1.0
        d = attributions.shape[1]
        k = max(1, math.ceil(fraction * d))
        top = attributions.abs().topk(k, dim=1).indices
        out = torch.zeros(attributions.shape[0])
        for start in range(0, attributions.shape[0], batch_size):
            chunk = top[start : start + batch_size]
            chosen = torch.zeros(len(chunk), d, dtype=torch.bool, device=device)
            chosen.scatter_(1, chunk.to(device), True)

            def patch(h: Tensor, chosen=chosen) -> Tensor:
                h = h.clone()
                h[:, -1] = torch.where(chosen, h_new.to(h.dtype), h[:, -1])
                return h

            m_patched, _ = run(model, replace={layer: patch}, rows=len(chunk))
            out[start : start + len(chunk)] = direction * (m_patched - m_old).cpu()
    return out
