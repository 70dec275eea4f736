"""Getting the model ready for fine-tuning: the base weights (float32, or NF4 4-bit for
QLoRA), the check that the run's LoRA target modules exist, and the LoRA wrapping.

No NATS here; errors are exceptions whose text is what the researcher reads in the run's
``failed`` status, so they say what to change.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import torch

from inflab.core.messages import Hyperparams
from inflab.ml.device import compute_device

log = logging.getLogger(__name__)

#: peft's own shorthand for "every linear layer but the output layer".
ALL_LINEAR = "all-linear"


class QLoRAUnsupported(RuntimeError):
    """4-bit was asked for where the installed bitsandbytes cannot run it."""


class InvalidTargetModules(ValueError):
    """``lora_target_modules`` names modules the model does not have."""


def pick_device() -> torch.device:
    """The workers' one device choice (:func:`inflab.ml.device.compute_device`)."""
    return compute_device()


@lru_cache(maxsize=4)
def qlora_support(device_type: str | None = None) -> tuple[bool, str]:
    """Whether NF4 4-bit layers run on ``device_type`` (default: the training device) with
    the installed bitsandbytes, and why not. Decided by running one tiny ``Linear4bit``
    rather than by version numbers: CPU support arrived in bitsandbytes 0.45-0.47 through
    optional backends, and only running it tells whether this install has them."""
    device_type = device_type or pick_device().type
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a broken native library
        return False, f"QLoRA (quantization 4bit) needs bitsandbytes>=0.45, which is not usable here: {exc}"
    version = getattr(bnb, "__version__", "?")
    try:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to(device_type)  # quantises the weight on the device
        with torch.no_grad():
            out = layer(torch.ones(1, 64, device=device_type))
        if not bool(torch.isfinite(out).all()):
            return False, f"bitsandbytes {version} 4-bit layers give non-finite output on {device_type}"
    except Exception as exc:
        return False, (
            f"bitsandbytes {version} cannot run 4-bit (NF4) layers on {device_type}: "
            f"{type(exc).__name__}: {exc}"[:500]
        )
    return True, f"bitsandbytes {version} runs NF4 4-bit layers on {device_type}"


def require_quantization_support(quantization: str, device: torch.device) -> None:
    """Raise :class:`QLoRAUnsupported` (before any model is loaded) where the run asks for
    4-bit and this machine cannot do it."""
    if quantization == "4bit":
        ok, reason = qlora_support(device.type)
        if not ok:
            raise QLoRAUnsupported(reason)


def load_base_model(model_path: str, device: torch.device, quantization: str = "none") -> Any:
    """The base model for training: float32 (bf16 is far slower on CPUs without bf16
    units, docs/measurements.md), or with ``4bit`` its linear layers as NF4 ``Linear4bit`` computing in
    float32. 4-bit loads from a saved folder (a GGUF file cannot be combined with a
    quantization config; the default model's converted cache folder is one)."""
    from transformers import AutoModelForCausalLM

    if quantization == "none":
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    if quantization != "4bit":
        raise ValueError(f"unknown quantization {quantization!r}")
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
    )
    # device_map places the weights (and so quantises them) on the training device.
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, quantization_config=config, device_map={"": str(device)}
    )
    # On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight for a
    # faster inference kernel the first time it runs in eval mode, and that kernel has no
    # backward: after one round of prediction sampling the LoRA weights would stop learning
    # (seen here: the loss froze until the next checkpoint save unpacked the weights).
    # A model being trained keeps the trainable layout.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _lora_capable(module: torch.nn.Module) -> bool:
    # nn.Linear covers bitsandbytes' Linear4bit (a subclass); GPT-2-style models use
    # transformers' Conv1D; peft also adapts embeddings.
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        return True
    return type(module).__name__ == "Conv1D"


def lora_target_names(model: Any) -> list[str]:
    """The distinct leaf names of the modules LoRA can adapt (``q_proj``, ``v_proj``,
    ``lm_head``...), which is what ``lora_target_modules`` lists."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and _lora_capable(module)})


def validate_target_modules(model: Any, targets: list[str]) -> None:
    """Refuse target names that match no module (peft would fail later with a less helpful
    message, or, for a typo among several names, silently adapt fewer layers than asked).
    A target matches a leaf name, or a dotted suffix of a module path (``self_attn.q_proj``),
    as peft matches them; ``all-linear`` is peft's shorthand and always valid."""
    paths = [name for name, module in model.named_modules() if name and _lora_capable(module)]
    missing = [
        t for t in targets
        if t != ALL_LINEAR and not any(p == t or p.endswith("." + t) for p in paths)
    ]
    if missing:
        valid = lora_target_names(model)
        raise InvalidTargetModules(
            f"lora_target_modules {missing} match no module of this model; valid names: {valid} (or {ALL_LINEAR!r})"
        )


def attach_lora(model: Any, hp: Hyperparams, trainable_tokens: list[int] | None = None) -> Any:
    """Wrap ``model`` with LoRA adapters (every base weight frozen). For a 4-bit model peft's
    k-bit preparation comes first: it casts the non-quantised weights (norms, embeddings)
    to float32 and turns on gradient checkpointing, QLoRA's memory recipe.
    ``trainable_tokens``: token ids whose embedding rows train too (a benchmark's function
    tokens; peft's ``trainable_token_indices``, saved with the adapter)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    validate_target_modules(model, list(hp.lora_target_modules))
    if hp.quantization == "4bit":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    targets: Any = ALL_LINEAR if ALL_LINEAR in hp.lora_target_modules else list(hp.lora_target_modules)
    config = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        **({"trainable_token_indices": list(trainable_tokens)} if trainable_tokens else {}),
    )
    return get_peft_model(model, config)
