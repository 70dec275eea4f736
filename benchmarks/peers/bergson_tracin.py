"""bergson's TracIn as a benchmark peer: its in-memory gradient collector (hooks on the
LoRA modules, exact per-example gradients, no random projection) at each checkpoint, then
the learning-rate-weighted dot products summed over checkpoints.

The examples are the very token ids and labels our methods see (``encode_pair``), batched
in the same length buckets, and the loss is bergson's ``loss_reduction="mean"`` cross-entropy
over the labelled (answer) tokens: the same per-example loss as ours.

Gotcha: bergson writes ``total_processed.pt`` into ``<run_path>.part`` and
does not create that folder itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter
from inflab.influence.gradients import length_buckets


def available() -> str | None:
    """None if bergson imports, else why not."""
    try:
        import bergson  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the optional install
        return f"{type(exc).__name__}: {exc}"
    return None


def _gradients(model: Any, examples: Sequence[Any], run_path: Path, batch_size: int) -> torch.Tensor:
    from datasets import Dataset

    from bergson import CollectorComputer, GradientProcessor, InMemoryCollector, IndexConfig
    from bergson.utils.peft import detect_peft_modules

    data = Dataset.from_dict({
        "input_ids": [list(e.input_ids) for e in examples],
        "labels": [list(e.labels) for e in examples],
    })
    cfg = IndexConfig(run_path=str(run_path), loss_reduction="mean", projection_dim=0)
    Path(cfg.partial_run_path).mkdir(parents=True, exist_ok=True)
    processor = GradientProcessor(projection_dim=None)
    # Only the LoRA weights take gradients (bergson reads dtypes off the trainable ones).
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    collector = InMemoryCollector(
        model=model.base_model,
        cfg=cfg,
        data=data,
        processor=processor,
        target_modules=detect_peft_modules(model),
    )
    computer = CollectorComputer(model=model, data=data, collector=collector,
                                 batches=length_buckets(examples, batch_size), cfg=cfg)
    computer.run_with_collector_hooks(desc="bergson")
    # One row per example: the modules' gradients side by side (the order is irrelevant
    # to dot products, as long as it is the same for training and evaluation examples).
    names = sorted(collector.gradients)
    return torch.cat([collector.gradients[n].reshape(len(examples), -1).float() for n in names], dim=1)


def tracin(model: Any, train: Sequence[Any], evals: Sequence[Any], checkpoints: Sequence[LocalCheckpoint],
           *, batch_size: int = 8, workdir: Path | None = None) -> dict[str, Any]:
    """``{"raw", "normalized"}`` TracIn matrices ``[M, N]`` computed from bergson's gradients."""
    import logging

    logging.getLogger("CollectorComputer").setLevel(logging.WARNING)
    logging.getLogger("HookCollectorBase").setLevel(logging.WARNING)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="bergson-"))
    raw = np.zeros((len(evals), len(train)))
    normalized = np.zeros_like(raw)
    for number, ckpt in enumerate(checkpoints):
        model = attach_adapter(model, ckpt)
        g_train = _gradients(model, train, tmp / f"train{number}", batch_size)
        g_eval = _gradients(model, evals, tmp / f"eval{number}", batch_size)
        raw += ckpt.learning_rate * (g_eval @ g_train.T).double().numpy()
        u_train = g_train / g_train.norm(dim=1, keepdim=True).clamp(min=1e-12)
        u_eval = g_eval / g_eval.norm(dim=1, keepdim=True).clamp(min=1e-12)
        normalized += ckpt.learning_rate * (u_eval @ u_train.T).double().numpy()
    return {"raw": raw, "normalized": normalized}
