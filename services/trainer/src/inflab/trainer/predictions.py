"""Prediction tracking during training (like W&B prediction tables): a few prompts chosen
once per run (``inflab.ml.predictions``), answered greedily by the model as it is at
each sampling point.

Answers are greedy (no sampling, no RNG), so tracking predictions never changes the loss
curve.

Greedy decoding reads every weight of the model for every token: on a CPU it is bound by
memory traffic and by the per-operation overhead of a small batch, not by arithmetic.
Where the hardware computes bfloat16 natively (``predictions.precision: auto``), the
tracker therefore answers from its own bfloat16 copy of the model, with the LoRA update
merged into the copied weights at each sampling point and every linear layer's weight
packed once into oneDNN's blocked layout (:class:`PackedLinear`), which decodes a token
step in well under the float32 time (docs/measurements.md). Because the
copy is the tracker's own, its decoding also runs in a background thread while training
goes on (:class:`PredictionTracker`); the training loop waits only for the merge. Every
prediction event says which arithmetic answered.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from inflab.ml.chat import prompt_ids
from inflab.ml.generation import greedy_texts
from inflab.ml.predictions import PredictionLimits, PredictionPlan, PredictionPrompt, plan_predictions

__all__ = [
    "PackedLinear", "PredictionLimits", "PredictionPlan", "PredictionPrompt", "PredictionSampler",
    "PredictionTracker", "greedy_answers", "native_bfloat16", "plan_predictions", "resolve_precision",
]


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (not emulated, which is slower than
    float32): AVX512-BF16 or AMX on a CPU, bf16 support on a CUDA GPU."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if check is not None)
    return False


def resolve_precision(requested: str, device: torch.device, quantized: bool) -> str:
    """The arithmetic tracking answers are decoded in: "nf4" for a 4-bit (QLoRA) model,
    which is answered as it trains; otherwise the request, with "auto" meaning bfloat16
    on a CPU that computes it natively and float32 elsewhere. On a GPU "auto" keeps
    float32: decoding there is quick, the copy would take half the model's size in GPU
    memory beside the training, and a background decoding would share the training's
    stream rather than idle cores."""
    if quantized:
        return "nf4"
    if requested == "auto":
        return "bfloat16" if device.type == "cpu" and native_bfloat16(device) else "float32"
    return requested


def greedy_answers(
    model: Any, tokenizer: Any, questions: Sequence[str], max_new_tokens: int, stop: threading.Event | None = None
) -> list[str]:
    """Greedy answers in one batch, prompts built exactly as training and inference build
    them (cut short once ``stop`` is set). A static KV cache: the default one grows by
    concatenation at every token, a measurable share of a CPU decode; the answers are the same."""
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    return greedy_texts(model, tokenizer, prompts, max_new_tokens, cache_implementation="static", stop=stop)


class PackedLinear(torch.nn.Module):
    """A bias-free bfloat16 linear layer whose weight is kept in oneDNN's blocked layout
    for a given batch size (``torch.ops.mkldnn._reorder_linear_weight``, what torch's
    own compiler uses on CPUs). A plain bfloat16 ``F.linear`` re-lays the weight out at
    every call, which on a small decoding batch costs more than the product itself; packed
    once, the layer runs at the speed of its memory traffic. Same products, same float32
    accumulation: only where the weight lies differs."""

    def __init__(self, weight: torch.Tensor, batch_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self.batch_hint = batch_hint
        self.set_weight(weight)

    @staticmethod
    def supported(device: torch.device) -> bool:
        """Whether this torch build can pack bfloat16 weights on ``device`` (x86 CPU builds
        with oneDNN), decided by packing and running a tiny layer."""
        if device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return False
        try:
            layer = PackedLinear(torch.ones(8, 16, dtype=torch.bfloat16), batch_hint=2)
            with torch.inference_mode():
                out = layer(torch.ones(2, 16, dtype=torch.bfloat16))
            return out.shape == (2, 8) and bool((out == 16).all())
        except (AttributeError, RuntimeError):
            return False

    def set_weight(self, weight: torch.Tensor) -> None:
        """Pack ``weight`` (out x in, any float dtype; cast to bfloat16)."""
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(
                weight.detach().to(torch.bfloat16).contiguous(), self.batch_hint
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self._packed, None, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype=bfloat16, packed"


def _lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """(name, layer) of every LoRA-wrapped layer, named as in the base model."""
    from peft.tuners.lora import LoraLayer

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(name, m) for name, m in root.named_modules() if isinstance(m, LoraLayer)]


def _bfloat16_copy(model: torch.nn.Module, pack_batch: int | None) -> torch.nn.Module:
    """A bfloat16 copy of a PEFT model's base model with plain layers where the LoRA
    wrappers were (frozen, eval mode), made without a float32 copy first: every parameter
    is cast into deepcopy's memo, so tied weights stay tied. Buffers (the rotary
    frequencies) stay as they are: they are small, and the model computes the rotation in
    float32. With ``pack_batch``, every bias-free linear layer becomes a
    :class:`PackedLinear`, packed straight from the float32 weight (the memo holds an
    empty placeholder for it, as for the LoRA weights, which the copy drops). The LoRA
    update is merged into the copied layers' weights at every refresh."""
    root = model.get_base_model()
    sources: dict[str, torch.Tensor] = {}  # copied linear layer's name -> float32 weight to pack
    if pack_batch is not None:
        # A weight also used by another kind of module (an output layer tied to the
        # embeddings) is copied as a parameter and packed from that copy.
        elsewhere = {id(p) for m in root.modules() if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False)}
        for name, module in root.named_modules():
            if type(module) is torch.nn.Linear and module.bias is None and id(module.weight) not in elsewhere:
                sources[name.removesuffix(".base_layer")] = module.weight
    skip = {id(w) for w in sources.values()} | {id(p) for p in model.parameters() if p.requires_grad}
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for param in model.parameters():
            if id(param) not in memo:
                value = torch.empty(0, dtype=torch.bfloat16) if id(param) in skip else param.detach().to(torch.bfloat16)
                memo[id(param)] = torch.nn.Parameter(value, requires_grad=False)
    shadow = copy.deepcopy(root, memo)
    for name, layer in _lora_layers(shadow):
        _replace(shadow, name, layer.get_base_layer())
    if pack_batch is not None:
        for name, module in list(shadow.named_modules()):
            if type(module) is torch.nn.Linear and module.bias is None:
                _replace(shadow, name, PackedLinear(sources.get(name, module.weight), pack_batch))
    return shadow.eval()


def _replace(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


class PredictionSampler:
    """Answers a plan's prompts with the model as it is at each sampling point.

    :meth:`prepare` takes what the answers need from the model, in the calling (training)
    thread, and returns the decoding still to do. With ``precision == "bfloat16"`` that
    is a bfloat16 copy of the base model, made at the first call, into which every call
    merges the current LoRA update (peft's own ``get_delta_weight``), ``bf16(W + delta)``:
    a plain model, so decoding pays for no adapter layers, and its rounding is that of any
    bfloat16 model. The copy is the sampler's own, so its decoding may run in another
    thread while training goes on (:attr:`concurrent`). Otherwise the model itself
    answers, in eval mode (no dropout), and is left in the mode it was found in: that
    decoding must run before training goes on.
    """

    def __init__(self, plan: PredictionPlan, tokenizer: Any, precision: str, *, pack: bool | None = None) -> None:
        self.plan = plan
        self.tokenizer = tokenizer
        self.precision = precision
        #: Pack the copy's weights (:class:`PackedLinear`); None: where this torch can.
        self.pack = pack
        self._shadow: torch.nn.Module | None = None
        self._targets: list[tuple[Any, torch.nn.Module]] = []

    @property
    def concurrent(self) -> bool:
        """Whether the decoding :meth:`prepare` returns may run while the model trains."""
        return self.precision == "bfloat16"

    def _refreshed_shadow(self, model: torch.nn.Module) -> torch.nn.Module:
        if self._shadow is None:
            device = next(model.parameters()).device
            pack = PackedLinear.supported(device) if self.pack is None else self.pack
            self._shadow = _bfloat16_copy(model, len(self.plan.prompts) if pack else None)
            self._targets = [(layer, self._shadow.get_submodule(name)) for name, layer in _lora_layers(model)]
        with torch.no_grad():
            for layer, target in self._targets:
                merged = layer.get_base_layer().weight.detach().clone()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged += layer.get_delta_weight(adapter)
                if isinstance(target, PackedLinear):
                    target.set_weight(merged)
                else:
                    target.weight.copy_(merged)
        return self._shadow

    def prepare(self, model: torch.nn.Module, stop: threading.Event | None = None) -> Callable[[], list[dict]]:
        """Snapshot what answering needs now; the returned call decodes (cut short once
        ``stop`` is set) and gives the PredictionSample dicts."""
        questions = [p.prompt for p in self.plan.prompts]
        limit = self.plan.max_new_tokens
        if self.concurrent:
            shadow = self._refreshed_shadow(model)
            return lambda: self.plan.samples(greedy_answers(shadow, self.tokenizer, questions, limit, stop))

        def answer_with_the_model() -> list[dict]:
            was_training = model.training
            model.eval()  # no dropout while answering
            try:
                return self.plan.samples(greedy_answers(model, self.tokenizer, questions, limit))
            finally:
                model.train(was_training)

        return answer_with_the_model

    def __call__(self, model: torch.nn.Module) -> list[dict]:
        """The plan's prompts answered now, as PredictionSample dicts."""
        return self.prepare(model)()


class PredictionTracker:
    """Runs a training loop's sampling points; never fails the training: an error becomes
    a warning (``warn``) and the loop goes on. Each sampling point's answers go to
    ``report(step, epoch, samples, precision)`` (the loop emits them as its ``prediction``
    event).

    Where the sampler has a copy of its own (:attr:`PredictionSampler.concurrent`), a
    sampling point costs the loop only the snapshot; the decoding runs in a background
    thread, overlapping the next training steps, and its answers are reported from that
    thread when it is done. One sampling point at a time: the next one first
    waits for the one before, so events arrive in step order. Call :meth:`wait` before
    the loop returns, so no event comes after the job's end; where the loop ends early
    (a cancel, a failure), ``wait(abandon=True)`` stops the decoding in flight after its
    current token and drops its answers, so a cancel is not held up by a long decode.

    Otherwise the decoding runs in the calling thread, inside a forked RNG, before
    training goes on.
    """

    def __init__(
        self, sampler: PredictionSampler, report: Callable[[int, float, list[dict], str], None],
        warn: Callable[[str], None],
    ) -> None:
        self.sampler = sampler
        self._report = report
        self._warn = warn
        self._thread: threading.Thread | None = None
        self._abandoned = threading.Event()
        #: Seconds the training loop was held up by tracking (snapshots, waits, decoding
        #: that could not run beside it) and seconds spent decoding, wherever it ran.
        self.stalled_s = 0.0
        self.decoding_s = 0.0

    def sample(self, model: torch.nn.Module, step: int, epoch: float) -> None:
        started = time.perf_counter()
        self._join()
        try:
            decode = self.sampler.prepare(model, self._abandoned)
        except Exception as exc:
            self._failed(step, exc)
        else:
            if self.sampler.concurrent:
                self._thread = threading.Thread(
                    target=self._answer, args=(decode, step, epoch), name=f"predictions-step-{step}", daemon=True
                )
                self._thread.start()
            else:
                devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
                with torch.random.fork_rng(devices=devices):  # the loss curve must not depend on sampling
                    self._answer(decode, step, epoch)
        self.stalled_s += time.perf_counter() - started

    def wait(self, abandon: bool = False) -> None:
        """Until the sampling point in flight (if any) has emitted its event; with
        ``abandon``, until it has stopped, without an event."""
        started = time.perf_counter()
        if abandon:
            self._abandoned.set()
        self._join()
        self.stalled_s += time.perf_counter() - started

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _answer(self, decode: Callable[[], list[dict]], step: int, epoch: float) -> None:
        started = time.perf_counter()
        try:
            samples = decode()
        except Exception as exc:
            self._failed(step, exc)
            return
        finally:
            self.decoding_s += time.perf_counter() - started
        if self._abandoned.is_set():
            return  # cut short: not the model's answers
        self._report(step, epoch, samples, self.sampler.precision)

    def _failed(self, step: int, exc: Exception) -> None:
        self._warn(f"prediction sampling failed at step {step} (training goes on): {type(exc).__name__}: {exc}"[:2000])
