"""LoRA fine-tuning of a causal LM on a run's training pairs: a plain torch loop.

No NATS, HTTP or object store in here: the service gives the run spec and a model folder,
receives events through ``emit`` (plain dicts, turned into bus events by the service) and
checkpoints through ``on_checkpoint`` (uploaded by the service), and gets a
:class:`TrainingOutcome` back.

Choices:
* loss on answer tokens only (``inflab.common.chat``), logits computed only where the loss
  needs them, the same code the influence methods use;
* AdamW without weight decay, constant learning rate (the request has no schedule yet);
* one step = one optimizer step over one batch; an epoch = one pass over the shuffled pairs;
* deterministic given ``hyperparams.seed``: LoRA init and dropout come from the seeded torch
  RNG, and each epoch's order from a generator seeded with (seed, epoch), so a run resumed
  from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inflab.common.chat import EncodedExample, answer_loss, collate, encode_pair
from inflab.common.messages import CheckpointRef, RunSpec, TrainingSummary
from inflab.common.models import load_tokenizer

log = logging.getLogger(__name__)

Emit = Callable[[dict], None]

#: Written into every checkpoint folder next to the PEFT adapter files.
META_FILE = "meta.json"
#: Optimizer and RNG state, so a killed run resumes where it stopped (not needed to load
#: the adapter; influence and inference ignore it).
STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    """A LoRA adapter saved at the end of an epoch."""

    step: int
    epoch: int
    #: Mean training loss over that epoch's steps.
    loss: float | None
    learning_rate: float
    #: Folder holding the PEFT adapter files (adapter_config.json, adapter_model.safetensors)
    #: plus meta.json and training_state.pt.
    path: Path

    def ref(self, key: str) -> CheckpointRef:
        """The contract's reference to this checkpoint once uploaded under ``key``."""
        return CheckpointRef(step=self.step, epoch=self.epoch, key=key, learning_rate=self.learning_rate, loss=self.loss)


@dataclass
class TrainingOutcome:
    steps: int
    epochs: int
    #: Answer tokens the loss was computed on, summed over every step (tokens/s = this / duration_s).
    tokens: int
    duration_s: float
    #: Training pairs cut to max_seq_length.
    truncated: int
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    #: Mean loss of each step run by this call (steps before a resume point are not included).
    losses: list[float] = field(default_factory=list)
    #: The step this call started from (0, or the resumed checkpoint's step).
    start_step: int = 0

    def summary(self, refs: list[CheckpointRef]) -> TrainingSummary:
        return TrainingSummary(
            steps=self.steps,
            epochs=self.epochs,
            tokens=self.tokens,
            duration_s=round(self.duration_s, 3),
            checkpoints=refs,
            truncated=self.truncated,
        )


class TrainingCancelled(Exception):
    """Raised out of :func:`train_lora` when its :class:`TrainingControl` was cancelled."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training cancelled before step {step + 1}")
        self.step = step


class TrainingControl:
    """Steering a running training from another thread (the service's control-subject
    listener): a new learning rate or a cancel takes effect before the next optimizer step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._learning_rate: float | None = None
        self._cancelled = False

    def set_learning_rate(self, learning_rate: float) -> None:
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError("learning rate must be a positive finite number")
        with self._lock:
            self._learning_rate = learning_rate

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def take_learning_rate(self) -> float | None:
        """The requested learning rate, once (None if nothing new was asked)."""
        with self._lock:
            learning_rate, self._learning_rate = self._learning_rate, None
            return learning_rate


def pick_device() -> torch.device:
    """A GPU where present; nothing assumes one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log(emit: Emit, level: str, message: str) -> None:
    getattr(log, "warning" if level == "warning" else "info")(message)
    emit({"kind": "log", "level": level, "message": message})


def encode_training_pairs(spec: RunSpec, tokenizer: Any) -> list[EncodedExample]:
    max_length = spec.hyperparams.max_seq_length
    return [encode_pair(tokenizer, p.question, p.answer, max_length) for p in spec.training_data]


def _report_truncation(examples: list[EncodedExample], max_length: int, emit: Emit) -> int:
    truncated = sum(e.truncated for e in examples)
    if truncated:
        lost = sum(1 for e in examples if e.answer_tokens == 0)
        message = f"{truncated} of {len(examples)} training pairs are longer than max_seq_length={max_length} tokens and were cut"
        if lost:
            message += f"; {lost} lost their whole answer and teach nothing"
        _log(emit, "warning", message)
    return truncated


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # One generator per epoch, derived from (seed, epoch): the order does not depend on
    # how many epochs ran in this process, which is what makes resuming exact.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _save_checkpoint(
    model: Any, optimizer: torch.optim.Optimizer, work_dir: Path, info: dict, learning_rate: float
) -> Path:
    """Write the adapter atomically (temporary folder, then rename): whoever uploads or
    resumes from it never sees a half-written checkpoint."""
    final = work_dir / "checkpoints" / f"{info['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(info, indent=2))
    torch.save(
        {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "learning_rate": learning_rate},
        tmp / STATE_FILE,
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _resume(model: Any, optimizer: torch.optim.Optimizer, checkpoint_dir: Path) -> tuple[dict, float | None]:
    """Load a checkpoint's adapter weights and (when saved) optimizer and RNG state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = json.loads((checkpoint_dir / META_FILE).read_text())
    set_peft_model_state_dict(model, load_file(str(checkpoint_dir / "adapter_model.safetensors")))
    learning_rate = None
    state_path = checkpoint_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        learning_rate = state.get("learning_rate")
    return meta, learning_rate


def load_base_model(model_path: str, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    # float32: bf16 is ~10x slower on CPUs without bf16 units (GROUND.md).
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)


def train_lora(
    spec: RunSpec,
    model_path: str,
    work_dir: Path,
    emit: Emit,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    *,
    control: TrainingControl | None = None,
    resume_from: Path | None = None,
) -> TrainingOutcome:
    """Fine-tune ``model_path`` with LoRA on ``spec.training_data``.

    Checkpoints go to ``work_dir/checkpoints/{step:08d}/`` every
    ``checkpoint_interval`` epochs and after the last epoch; each is handed to
    ``on_checkpoint`` (which uploads it and emits the checkpoint event, since only the caller
    knows the object key) before training continues. Events passed to ``emit``:

    * ``{"kind": "progress", "fraction", "step", "total", "epoch", "eta_s"}`` every step;
    * ``{"kind": "metric", "step", "epoch", "loss", "learning_rate"}`` every step;
    * ``{"kind": "log", "level", "message"}`` for notable things (the start, truncation, a
      learning rate change, a resume).

    ``control`` lets another thread change the learning rate or cancel (raises
    :class:`TrainingCancelled`); ``resume_from`` is a checkpoint folder written by an earlier
    call with the same spec, from which training continues with the next epoch.
    """
    from peft import LoraConfig, get_peft_model

    hp = spec.hyperparams
    started = time.monotonic()
    work_dir = Path(work_dir)
    device = pick_device()
    torch.manual_seed(hp.seed)  # LoRA init and dropout masks

    tokenizer = load_tokenizer(model_path)
    examples = encode_training_pairs(spec, tokenizer)
    truncated = _report_truncation(examples, hp.max_seq_length, emit)

    model = load_base_model(model_path, device)
    lora = LoraConfig(
        r=hp.lora_rank,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=list(hp.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)  # freezes every base weight
    trainable = [p for p in model.parameters() if p.requires_grad]
    learning_rate = hp.learning_rate
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)

    batches_per_epoch = math.ceil(len(examples) / hp.batch_size)
    total = batches_per_epoch * hp.num_epochs
    step, first_epoch = 0, 1
    if resume_from is not None:
        meta, saved_lr = _resume(model, optimizer, Path(resume_from))
        step, first_epoch = int(meta["step"]), int(meta["epoch"]) + 1
        learning_rate = saved_lr or float(meta.get("learning_rate", learning_rate))
        _log(emit, "info", f"resumed from the checkpoint at step {step} (epoch {meta['epoch']})")
    start_step = step
    n_trainable = sum(p.numel() for p in trainable)
    _log(emit, "info", f"fine-tuning on {len(examples)} training pairs: {hp.num_epochs} epochs, {total} steps, "
                       f"{n_trainable:,} trainable LoRA parameters on {device.type}")
    for group in optimizer.param_groups:
        group["lr"] = learning_rate

    outcome = TrainingOutcome(
        steps=step, epochs=first_epoch - 1, tokens=0, duration_s=0.0, truncated=truncated, start_step=start_step
    )
    model.train()
    loop_started = time.monotonic()
    for epoch in range(first_epoch, hp.num_epochs + 1):
        order = _epoch_order(len(examples), hp.seed, epoch)
        epoch_losses: list[float] = []
        for first in range(0, len(order), hp.batch_size):
            if control is not None:
                if control.cancelled:
                    raise TrainingCancelled(step)
                new_lr = control.take_learning_rate()
                if new_lr is not None and new_lr != learning_rate:
                    learning_rate = new_lr
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate
                    _log(emit, "info", f"learning rate set to {learning_rate:g} from step {step + 1}")

            chunk = [examples[i] for i in order[first : first + hp.batch_size]]
            batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
            loss = answer_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            step += 1
            value = float(loss.detach())
            epoch_losses.append(value)
            outcome.losses.append(value)
            outcome.tokens += sum(c.answer_tokens for c in chunk)
            done = step - start_step
            eta = (time.monotonic() - loop_started) / done * (total - step)
            fractional_epoch = epoch - 1 + (first // hp.batch_size + 1) / batches_per_epoch
            emit({"kind": "progress", "fraction": step / total, "step": step, "total": total,
                  "epoch": round(fractional_epoch, 4), "eta_s": round(eta, 2)})
            emit({"kind": "metric", "step": step, "epoch": round(fractional_epoch, 4), "loss": value,
                  "learning_rate": learning_rate})

        outcome.steps, outcome.epochs = step, epoch
        if epoch % hp.checkpoint_interval == 0 or epoch == hp.num_epochs:
            mean_loss = sum(epoch_losses) / len(epoch_losses)
            meta = {"step": step, "epoch": epoch, "loss": mean_loss, "learning_rate": learning_rate}
            path = _save_checkpoint(model, optimizer, work_dir, meta, learning_rate)
            info = CheckpointInfo(step=step, epoch=epoch, loss=mean_loss, learning_rate=learning_rate, path=path)
            outcome.checkpoints.append(info)
            if on_checkpoint is not None:
                on_checkpoint(info)

    outcome.duration_s = time.monotonic() - started
    return outcome
