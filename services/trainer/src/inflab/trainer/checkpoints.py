"""Checkpoint folders as the training loop writes and resumes from them.

A checkpoint folder holds peft's own adapter files (``adapter_config.json``,
``adapter_model.safetensors``), ``meta.json`` (what inference and influence read) and
``training_state.pt`` (what only a resume needs: optimizer, scheduler, RNG, the control
messages already applied, the open logging window).

``meta.json``:

* ``step``, ``epoch``: the optimizer steps and whole epochs done;
* ``loss``: the mean training loss over the steps since the previous checkpoint;
* ``learning_rate``: the mean rate the optimizer used over those same steps. That is
  TracIn's weight for the checkpoint: TracIn approximates the sum over every step of
  rate x gradient dot product by checkpoint gradients times the rate "over the interval
  leading to the checkpoint", so with a schedule (warmup, decay) the interval's mean is the
  right stand-in, not the rate at the last step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inflab.core.messages import CheckpointRef
from inflab.core.store_layout import ADAPTER_WEIGHTS, CHECKPOINTS_FOLDER, checkpoint_folder
from inflab.core.store_layout import CHECKPOINT_META as META_FILE
from inflab.core.store_layout import CheckpointMeta
from inflab.core.store_layout import TRAINING_STATE as STATE_FILE


@dataclass(frozen=True)
class CheckpointInfo:
    """A LoRA adapter saved at the end of an epoch."""

    step: int
    epoch: int
    loss: float | None
    learning_rate: float
    #: Folder holding the adapter files, meta.json and training_state.pt.
    path: Path

    def ref(self, key: str) -> CheckpointRef:
        """The contract's reference to this checkpoint once uploaded under ``key``."""
        return CheckpointRef(step=self.step, epoch=self.epoch, key=key, learning_rate=self.learning_rate, loss=self.loss)


def save_checkpoint(model: Any, work_dir: Path, meta: CheckpointMeta, state: dict) -> CheckpointInfo:
    """Write the checkpoint atomically (a temporary folder, then a rename): whoever uploads
    or resumes from it never sees a half-written one."""
    final = Path(work_dir) / CHECKPOINTS_FOLDER / checkpoint_folder(meta.step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # A benchmark run grows the embeddings for its function tokens; every service regrows
    # them identically (inflab.ml.function_tokens), so only the trained rows are saved.
    model.save_pretrained(tmp, save_embedding_layers=False)
    torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta.model_dump(), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return CheckpointInfo(
        step=meta.step, epoch=meta.epoch, loss=meta.loss, learning_rate=meta.learning_rate, path=final
    )


def read_meta(checkpoint_dir: Path) -> CheckpointMeta:
    return CheckpointMeta.model_validate_json((Path(checkpoint_dir) / META_FILE).read_text())


def load_adapter_weights(model: Any, checkpoint_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(checkpoint_dir) / ADAPTER_WEIGHTS)))


def load_training_state(checkpoint_dir: Path) -> dict | None:
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        return None
    # weights_only: the file holds tensors, numbers, strings and lists only.
    return torch.load(path, weights_only=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
