"""What a run will need before it starts: the model's size tier, the device and memory
(LoRA and QLoRA), the training time and its price.

No torch and no hub: the parameter count comes from the ``config.json`` of a model in the
operator's models folder, a small table of known models, or the size in the model id
("7B", "135M"). Which ids may be estimated at all is :mod:`inflab.core.model_ids`' call. Every figure is
a rough planning number; the estimate lists the assumptions it rests on, and the run
stores its actual duration and cost beside it when it ends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inflab.core.messages import Hyperparams, TrainingPair
from inflab.core.model_ids import check_model_id
from inflab.core.settings import Settings
from inflab.gateway.schemas import Estimate, MemoryEstimate

#: Upper bounds of the tiers (the issue's small ≤3B, medium 7-12B, large 13-34B, XL 70B+),
#: with the gaps closed where models are named: "3B" models have up to ~3.2B parameters,
#: "12B" ones up to ~12.2B, and 35-50B models (Mixtral's 46.7B) fit the large tier's GPUs.
TIER_BOUNDS = (("small", 4e9), ("medium", 13e9), ("large", 50e9))
TIERS = ("small", "medium", "large", "xl")

#: English text in a ~50k-entry BPE vocabulary runs about four characters per token.
CHARS_PER_TOKEN = 4.0
#: Chat-template markers and a default system prompt around each pair.
TEMPLATE_TOKENS = 32
#: NF4 weights with double-quantised constants: ~4.13 bits per parameter.
NF4_BYTES = 0.52
#: The CUDA context (or the Python process with torch and transformers).
RUNTIME_GIB = 1.0
GIB = 2**30

#: Architectures whose MLP has three matrices (gate, up, down) rather than two.
GATED_MLP = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2", "gemma3",
             "phi3", "olmo", "olmo2", "granite", "cohere", "starcoder2"}


class UnknownModelSize(ValueError):
    """The model's parameter count cannot be told without downloading it."""


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    vocab_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    tied_embeddings: bool = False
    gated_mlp: bool = True
    experts: int = 1
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv + (h + 2 * kv if self.qkv_bias else 0)
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size * self.experts
        norms = 2 * h
        return self.embedding_parameters + self.num_layers * (attention + mlp + norms) + h

    def module_dims(self, name: str) -> tuple[int, int]:
        """(in, out) features of a LoRA target module, by the usual (Llama) names."""
        h, kv, inter = self.hidden_size, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {
            "q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
        }.get(name, (h, h))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelShape":
        """From a Hugging Face ``config.json`` (Llama-, GPT-2- and NeoX-style names)."""

        def first(*names: str, default: Any = None) -> Any:
            return next((config[n] for n in names if config.get(n) is not None), default)

        hidden = int(first("hidden_size", "n_embd", "d_model"))
        heads = int(first("num_attention_heads", "n_head", "num_heads"))
        return cls(
            hidden_size=hidden,
            num_layers=int(first("num_hidden_layers", "n_layer", "num_layers")),
            vocab_size=int(first("vocab_size")),
            intermediate_size=int(first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            num_heads=heads,
            num_kv_heads=int(first("num_key_value_heads", default=heads)),
            # transformers' own default is tied.
            tied_embeddings=bool(first("tie_word_embeddings", default=True)),
            gated_mlp=config.get("model_type") in GATED_MLP,
            experts=int(first("num_local_experts", "num_experts", default=1)),
            qkv_bias=bool(config.get("attention_bias") or config.get("model_type") == "qwen2"),
        )

    @classmethod
    def guess(cls, parameters: float) -> "ModelShape":
        """A Llama-proportioned shape of about this size (12·L·h² with h = 128·L), for
        models known only by the size in their name."""
        layers = max(2, round((parameters / (12 * 128**2)) ** (1 / 3)))
        hidden = 128 * layers
        return cls(hidden_size=hidden, num_layers=layers, vocab_size=32_000,
                   intermediate_size=hidden * 8 // 3, num_heads=layers, num_kv_heads=layers)


def _llama(h: int, layers: int, vocab: int, inter: int, heads: int, kv: int, tied: bool = False) -> ModelShape:
    return ModelShape(h, layers, vocab, inter, heads, kv, tied_embeddings=tied)


def _qwen(h: int, layers: int, vocab: int, inter: int, heads: int, kv: int, tied: bool = False) -> ModelShape:
    return ModelShape(h, layers, vocab, inter, heads, kv, tied_embeddings=tied, qkv_bias=True)


#: Shapes from the models' published config.json, keyed by the lower-case name after the
#: organisation (suffixes such as ``-Instruct`` are matched too).
KNOWN_MODELS: dict[str, ModelShape] = {
    "smollm2-135m": _llama(576, 30, 49152, 1536, 9, 3, tied=True),
    "smollm2-360m": _llama(960, 32, 49152, 2560, 15, 5, tied=True),
    "smollm2-1.7b": _llama(2048, 24, 49152, 8192, 32, 32, tied=True),
    "llama-3.2-1b": _llama(2048, 16, 128256, 8192, 32, 8, tied=True),
    "llama-3.2-3b": _llama(3072, 28, 128256, 8192, 24, 8, tied=True),
    **{f"llama-3{v}-8b": _llama(4096, 32, 128256, 14336, 32, 8) for v in ("", ".1")},
    **{f"llama-3{v}-70b": _llama(8192, 80, 128256, 28672, 64, 8) for v in ("", ".1", ".3")},
    "mistral-7b": _llama(4096, 32, 32000, 14336, 32, 8),
    "mixtral-8x7b": ModelShape(4096, 32, 32000, 14336, 32, 8, experts=8),
    "qwen2.5-0.5b": _qwen(896, 24, 151936, 4864, 14, 2, tied=True),
    "qwen2.5-1.5b": _qwen(1536, 28, 151936, 8960, 12, 2, tied=True),
    "qwen2.5-3b": _qwen(2048, 36, 151936, 11008, 16, 2, tied=True),
    "qwen2.5-7b": _qwen(3584, 28, 152064, 18944, 28, 4),
    "qwen2.5-14b": _qwen(5120, 48, 152064, 13824, 40, 8),
    "qwen2.5-32b": _qwen(5120, 64, 152064, 27648, 40, 8),
    "qwen2.5-72b": _qwen(8192, 80, 152064, 29568, 64, 8),
}

# "7B", "1.7b", "135M", "8x7B" between separators.
_SIZE = re.compile(r"(?:^|[-_.])(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?=$|[-_.])")


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    shape: ModelShape
    source: str  # said in the estimate's assumptions


def model_size(model_id: str, folder: Path | None = None) -> ModelSize:
    """The config.json of ``folder`` (a model in the models folder, as
    :func:`~inflab.core.model_ids.check_model_id` found it), else the table of known
    models, else the id's size."""
    if folder is not None:
        try:
            shape = ModelShape.from_config(json.loads((folder / "config.json").read_text()))
        except (OSError, ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
            raise UnknownModelSize(
                f"the config.json of {model_id!r} does not describe a transformer this estimate knows: {exc}"
            ) from None
        return ModelSize(shape.parameters, shape, f"counted from the config.json of {model_id!r} in the models folder")
    name = model_id.rstrip("/").rsplit("/", 1)[-1].lower().removeprefix("meta-")
    for key in sorted(KNOWN_MODELS, key=len, reverse=True):
        if name == key or name.startswith(key + "-"):
            shape = KNOWN_MODELS[key]
            return ModelSize(shape.parameters, shape, f"counted from {key}'s published configuration")
    match = _SIZE.search(name)
    if match:
        experts, size, unit = match.groups()
        parameters = int(float(size) * (1e9 if unit == "b" else 1e6) * int(experts or 1))
        source = f"read from the model id ({match.group().strip('-_.')})"
        if experts:
            source += "; a mixture of experts counted as experts × expert size, an overestimate"
        return ModelSize(parameters, ModelShape.guess(parameters), source + ", shape guessed from it")
    raise UnknownModelSize(
        f"cannot tell the size of {model_id!r}: use a known model, a model id that names its size "
        "(such as '-7B'), or a local folder holding config.json"
    )


def tier_of(parameters: float) -> str:
    return next((tier for tier, bound in TIER_BOUNDS if parameters < bound), "xl")


def pair_tokens(question: str, answer: str, max_seq_length: int) -> int:
    return min(max_seq_length, math.ceil((len(question) + len(answer)) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS)


def lora_parameters(shape: ModelShape, hp: Hyperparams) -> int:
    per_layer = sum(hp.lora_rank * sum(shape.module_dims(name)) for name in hp.lora_target_modules)
    return per_layer * shape.num_layers


def memory_gib(size: ModelSize, hp: Hyperparams, seq_len: int, on_cpu: bool, quantized: bool) -> float:
    """Peak training memory: base weights, LoRA weights with their gradient and Adam
    moments (fp32), activations kept for the backward pass, full-vocabulary logits."""
    shape = size.shape
    # On a CPU everything stays fp32 (bf16 there is far slower, docs/measurements.md); GPUs use bf16.
    element = 4 if on_cpu else 2
    embedding = min(shape.embedding_parameters, size.parameters)
    weights = ((size.parameters - embedding) * NF4_BYTES + embedding * element if quantized
               else size.parameters * element)
    lora = lora_parameters(shape, hp) * 16
    b, s = hp.batch_size, seq_len
    # Per layer, ~17·s·b·h values plus 2.5·heads·s²·b for attention (Korthikanti et al. 2022).
    activations = shape.num_layers * b * s * (17 * shape.hidden_size + 2.5 * shape.num_heads * s) * element
    logits = b * s * shape.vocab_size * 4 * 2  # fp32 logits and their gradient
    return (weights + lora + activations + logits) / GIB + RUNTIME_GIB


def estimate(model_id: str, training_data: Sequence[TrainingPair], hp: Hyperparams, settings: Settings) -> Estimate:
    """The estimate for fine-tuning ``model_id`` on the training pairs. Raises
    :class:`~inflab.core.model_ids.ModelIdRefused` for a model this deployment does
    not allow, :class:`UnknownModelSize` for one whose size cannot be told."""
    size = model_size(model_id, check_model_id(model_id, settings).folder)
    tier = tier_of(size.parameters)
    compute = settings.estimate_tiers[tier]
    on_cpu = compute.gpu_memory_gb is None
    quantized = hp.quantization == "4bit"

    lengths = [pair_tokens(pair.question, pair.answer, hp.max_seq_length) for pair in training_data]
    tokens = sum(lengths) * hp.num_epochs
    seq_len = max(lengths, default=hp.max_seq_length)
    memory = MemoryEstimate(
        lora=round(memory_gib(size, hp, seq_len, on_cpu, quantized=False), 2),
        qlora=round(memory_gib(size, hp, seq_len, on_cpu, quantized=True), 2),
    )
    needed = memory.qlora if quantized else memory.lora
    gpu_count = 1 if on_cpu else max(1, math.ceil(needed / compute.gpu_memory_gb))

    tokens_per_s = compute.tokens_per_s * compute.reference_params / size.parameters
    if quantized:
        tokens_per_s /= settings.qlora_slowdown
    duration = tokens / tokens_per_s
    price = settings.gpu_prices.get(compute.gpu)
    cost = None if price is None else duration / 3600 * price * gpu_count

    device = "the CPU" if on_cpu else f"one {compute.gpu}"
    assumptions = [
        f"parameters: {size.parameters:,}, {size.source}",
        f"training tokens: ~{CHARS_PER_TOKEN:g} characters per token plus {TEMPLATE_TOKENS} for the chat "
        f"template per pair, each cut to max_seq_length {hp.max_seq_length}; {len(lengths)} pairs "
        f"× {hp.num_epochs} epochs",
        f"throughput: {compute.tokens_per_s:g} tokens/s on {device} for a {compute.reference_params:,.0f}-parameter "
        f"model, scaled to this model's size"
        + (f", and {settings.qlora_slowdown:g}× slower with 4-bit weights" if quantized else ""),
        f"memory: base weights in {'fp32' if on_cpu else 'bf16'} (LoRA) or NF4 with "
        f"{'fp32' if on_cpu else 'bf16'} embeddings (QLoRA), LoRA weights and Adam states in fp32, "
        f"activations for batch {hp.batch_size} at {seq_len} tokens, full-vocabulary logits, "
        f"{RUNTIME_GIB:g} GiB runtime",
        "duration: training only; model loading, prediction sampling, inference and influence add to it",
    ]
    if on_cpu:
        assumptions.append(f"the {tier} tier runs on the CPU in this deployment (INFLAB_ESTIMATE_TIERS)")
    if gpu_count > 1:
        assumptions.append(f"{gpu_count} × {compute.gpu}: the model is split layer by layer, "
                           "which adds memory, not speed")
    assumptions.append(
        f"cost: {price:g} US$ per {compute.gpu} hour (INFLAB_GPU_PRICES)" if price is not None
        else f"cost: no price for {compute.gpu!r} in INFLAB_GPU_PRICES"
    )
    return Estimate(
        model_id=model_id,
        tier=tier,
        parameters=size.parameters,
        gpu=compute.gpu,
        gpu_count=gpu_count,
        memory_gb=memory,
        quantization=hp.quantization,
        training_tokens=tokens,
        tokens_per_s=round(tokens_per_s, 2),
        estimated_duration_s=round(duration, 1),
        price_per_hour_usd=price,
        estimated_cost_usd=cost,
        assumptions=assumptions,
    )
