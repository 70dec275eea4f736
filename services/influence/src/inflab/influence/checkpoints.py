"""Checkpoints on local disk, and putting a checkpoint's LoRA adapter into a model.

A checkpoint is the folder the trainer writes with ``model.save_pretrained`` on a peft
model (``adapter_config.json`` + ``adapter_model.safetensors``) plus ``meta.json``
(``{step, epoch, loss, learning_rate}``). The service downloads it from the object store;
from here on it is a local folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inflab.core.store_layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from inflab.core.store_layout import CHECKPOINT_META as META
from inflab.core.store_layout import CheckpointMeta

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "META", "LocalCheckpoint", "adapter_digest", "attach_adapter",
           "pick_checkpoint"]


@dataclass(frozen=True)
class LocalCheckpoint:
    """A LoRA adapter checkpoint in a local folder.

    ``learning_rate`` is TracIn's weight for this checkpoint: the rate the optimizer used in
    the steps leading up to it (what the trainer records in ``meta.json``).
    """

    path: Path
    step: int
    epoch: int
    learning_rate: float

    @classmethod
    def from_folder(cls, path: Path | str) -> "LocalCheckpoint":
        """Read ``meta.json`` of a checkpoint folder."""
        path = Path(path)
        meta = CheckpointMeta.model_validate_json((path / META).read_text())
        return cls(path=path, step=meta.step, epoch=meta.epoch, learning_rate=meta.learning_rate)


def adapter_digest(checkpoint: LocalCheckpoint) -> str:
    """A content hash of the checkpoint's adapter (weights and config): equal digests mean
    equal gradients, whatever folder or job the checkpoint was downloaded into."""
    import hashlib

    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        file = Path(checkpoint.path) / name
        if file.is_file():
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"\x00")
    return digest.hexdigest()


def pick_checkpoint(method: str, checkpoints: Sequence[LocalCheckpoint], step: int | None) -> LocalCheckpoint:
    """The checkpoint a single-checkpoint method (DataInf, EK-FAC) scores at: the one at
    ``step`` when the run's arguments name it, else the final one."""
    if step is None:
        return max(checkpoints, key=lambda c: c.step)
    for checkpoint in checkpoints:
        if checkpoint.step == step:
            return checkpoint
    raise ValueError(f"{method}: no checkpoint at step {step}; steps: {sorted(c.step for c in checkpoints)}")


# The adapter settings that must match for one adapter's weights to be loaded over another's.
_SHAPE_KEYS = ("r", "lora_alpha", "target_modules", "use_dora", "use_rslora")


def attach_adapter(model: Any, checkpoint: LocalCheckpoint) -> Any:
    """Put ``checkpoint``'s adapter into ``model`` and return the peft model (eval mode).

    The first call wraps the base model (``PeftModel.from_pretrained``, which injects the
    LoRA layers in place); later calls only overwrite the LoRA weights, which is much
    cheaper than loading the base model again for every checkpoint of a run.
    """
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(checkpoint.path)
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: no {ADAPTER_WEIGHTS} (is it a PEFT adapter folder?)")
    if not isinstance(model, PeftModel):
        model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        model.eval()
        return model

    wanted = PeftConfig.from_pretrained(str(path))
    current = model.peft_config[model.active_adapter]
    for key in _SHAPE_KEYS:
        a, b = getattr(current, key, None), getattr(wanted, key, None)
        if isinstance(a, (set, list)) or isinstance(b, (set, list)):
            a, b = sorted(a or ()), sorted(b or ())
        if a != b:
            raise ValueError(f"{path}: adapter {key}={b!r} differs from the run's first checkpoint ({a!r})")
    result = set_peft_model_state_dict(model, load_file(str(path / ADAPTER_WEIGHTS)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: adapter weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]})")
    model.eval()
    return model
