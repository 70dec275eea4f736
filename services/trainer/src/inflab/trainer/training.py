"""LoRA / QLoRA fine-tuning of a causal LM on a run's training pairs: a plain torch loop.

No NATS, HTTP or object store in here: the caller gives the run spec and a model folder,
receives events through ``emit`` (plain dicts, turned into bus events by the service) and
checkpoints through ``on_checkpoint`` (uploaded by the caller), and gets a
:class:`TrainingOutcome` back.

Choices:
* loss on answer tokens only (``inflab.ml.chat``), logits computed only where the loss
  needs them (the same loss the influence methods use), the batch's shared chat-template
  opening computed once (``shared_prefix.py``);
* one *step* is one optimizer step over ``gradient_accumulation_steps`` micro-batches of
  ``batch_size`` pairs; the accumulated gradient weights each micro-batch by its answer
  tokens, so accumulating equals one larger batch (a token mean), not a mean of means;
  an epoch's last, shorter group is still a step (as in Hugging Face's Trainer);
* AdamW with ``weight_decay`` on the LoRA weights, the learning rate schedule from
  ``transformers.get_scheduler`` with ``ceil(warmup_ratio x total steps)`` warmup steps
  (``constant`` ignores warmup, as in transformers: use ``constant_with_warmup``);
* deterministic given ``hyperparams.seed``: LoRA init and dropout come from the seeded torch
  RNG, each epoch's order from a generator seeded with (seed, epoch); prediction sampling
  is greedy and touches no RNG (in the training thread it runs in a forked one anyway);
  a run resumed from a checkpoint (optimizer, scheduler and RNG state restored)
  continues exactly as the uninterrupted run would have;
* prediction tracking decodes, where it can, from a bfloat16 copy in a background thread
  beside the training (``predictions.py``), so a sampling point costs the loop little.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inflab.ml.chat import EncodedExample, answer_loss, collate, encode_document, encode_pair
from inflab.ml.function_tokens import add_to_tokenizer, grow_embeddings
from inflab.core.messages import CheckpointRef, RunSpec, TrainingSummary
from inflab.ml.models import load_tokenizer
from inflab.trainer.checkpoints import (
    META_FILE,
    STATE_FILE,
    CheckpointInfo,
    load_adapter_weights,
    load_training_state,
    read_meta,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from inflab.trainer.control import ParamUpdate, TrainingCancelled, TrainingControl
from inflab.trainer.model_setup import attach_lora, load_base_model, pick_device, require_quantization_support
from inflab.trainer.predictions import (
    PredictionLimits, PredictionSampler, PredictionTracker, plan_predictions, resolve_precision,
)
from inflab.trainer.shared_prefix import answer_loss_shared_prefix

log = logging.getLogger(__name__)

Emit = Callable[[dict], None]

__all__ = [
    "META_FILE", "STATE_FILE", "CheckpointInfo", "PredictionLimits", "TrainingCancelled", "TrainingControl",
    "TrainingOutcome", "train_lora",
]


@dataclass
class TrainingOutcome:
    steps: int
    epochs: int
    #: Answer tokens the loss was computed on, summed over every step of the run (a resumed
    #: call counts the epochs before its checkpoint too: every epoch sees every pair once).
    tokens: int
    duration_s: float
    #: Training pairs cut to max_seq_length.
    truncated: int
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    #: Loss of each optimizer step run by this call (steps before a resume point are not included).
    losses: list[float] = field(default_factory=list)
    #: Every metric event of the run's training so far (a resumed call's included), in order.
    metrics: list[dict] = field(default_factory=list)
    #: The step this call started from (0, or the resumed checkpoint's step).
    start_step: int = 0
    #: Prediction tracking: seconds the loop waited for it, and seconds spent decoding
    #: (mostly in a background thread, beside the training; see predictions.py).
    prediction_stall_s: float = 0.0
    prediction_decoding_s: float = 0.0
    #: The trained model (PEFT-wrapped), for callers that go on using it (a validation's
    #: retraining measures losses with it); not part of the summary.
    model: Any = field(default=None, repr=False)

    def summary(self, refs: list[CheckpointRef]) -> TrainingSummary:
        return TrainingSummary(
            steps=self.steps,
            epochs=self.epochs,
            tokens=self.tokens,
            duration_s=round(self.duration_s, 3),
            checkpoints=refs,
            truncated=self.truncated,
        )


def _log(emit: Emit, level: str, message: str) -> None:
    getattr(log, "warning" if level == "warning" else "info")(message)
    emit({"kind": "log", "level": level, "message": message})


def encode_training_pairs(spec: RunSpec, tokenizer: Any) -> list[EncodedExample]:
    """Question/answer pairs through the chat template; a benchmark run's documents as
    plain text with the loss on every token."""
    max_length = spec.hyperparams.max_seq_length
    if spec.benchmark is not None:
        return [encode_document(tokenizer, p.answer, max_length) for p in spec.training_data]
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


def _mean(values: list[float]) -> float:
    # Exact when every value is the same (a constant rate stays exactly the rate asked for).
    return values[0] if len(set(values)) == 1 else math.fsum(values) / len(values)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    # One generator per epoch, derived from (seed, epoch): the order does not depend on
    # how many epochs ran in this process, which is what makes resuming exact.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class _MetricWindow:
    """What one metric event reports: the mean loss of the steps since the previous one,
    and throughput over the time spent in those steps (pauses for predictions and
    checkpoints excluded, so tokens/s measures training)."""

    def __init__(self, state: dict | None = None) -> None:
        import psutil

        self._process = psutil.Process()
        self.loss_sum, self.steps = (state["loss_sum"], state["steps"]) if state else (0.0, 0)
        self.tokens = self.samples = 0
        self.seconds = 0.0

    def add(self, loss: float, tokens: int, samples: int, seconds: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens
        self.samples += samples
        self.seconds += seconds

    def state(self) -> dict:
        """Saved in a checkpoint, so a resumed run's first metric averages the same steps."""
        return {"loss_sum": self.loss_sum, "steps": self.steps}

    def flush(self, step: int, epoch: float, learning_rate: float, grad_norm: float | None) -> dict:
        seconds = max(self.seconds, 1e-9)
        metric = {
            "kind": "metric", "step": step, "epoch": epoch, "loss": self.loss_sum / max(self.steps, 1),
            "learning_rate": learning_rate, "grad_norm": grad_norm,
            "tokens_per_s": round(self.tokens / seconds, 2), "samples_per_s": round(self.samples / seconds, 3),
            "memory_mb": round(self._process.memory_info().rss / 2**20, 1),
        }
        if torch.cuda.is_available():
            metric["gpu_memory_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        self.loss_sum, self.steps, self.tokens, self.samples, self.seconds = 0.0, 0, 0, 0, 0.0
        return metric


def _apply_updates(
    updates: list[ParamUpdate], optimizer: torch.optim.Optimizer, scheduler: Any, applied: set[str], step: int, emit: Emit
) -> None:
    """Apply runtime parameter changes before optimizer step ``step + 1``. The learning rate
    named is the schedule's peak: the schedule's shape goes on from the new value."""
    for update in updates:
        if update.request_id is not None and update.request_id in applied:
            continue  # replayed from the control stream after a resume: already in the state
        changes: dict[str, dict[str, float]] = {}
        if update.learning_rate is not None:
            old = float(scheduler.base_lrs[0])
            scheduler.base_lrs = [update.learning_rate for _ in scheduler.base_lrs]
            for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = update.learning_rate
                group["lr"] = update.learning_rate * factor(scheduler.last_epoch)
            changes["learning_rate"] = {"old": old, "new": update.learning_rate}
        if update.weight_decay is not None:
            old = float(optimizer.param_groups[0]["weight_decay"])
            for group in optimizer.param_groups:
                group["weight_decay"] = update.weight_decay
            changes["weight_decay"] = {"old": old, "new": update.weight_decay}
        if update.request_id is not None:
            applied.add(update.request_id)
        described = ", ".join(f"{k} {v['old']:g} -> {v['new']:g}" for k, v in changes.items())
        _log(emit, "info", f"{described} from step {step + 1}")
        emit({"kind": "params", "request_id": update.request_id, "changes": changes, "effective_step": step + 1})


def _optimizer_step(
    model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, group: list[list[EncodedExample]],
    pad_id: int, device: torch.device, trainable: list[torch.Tensor], want_grad_norm: bool, loss_fn: Callable,
) -> tuple[float, float, float | None]:
    """One optimizer step over a group of micro-batches. Returns (loss, learning rate used,
    gradient norm if asked)."""
    group_tokens = sum(e.answer_tokens for chunk in group for e in chunk)
    loss_value = 0.0
    for chunk in group:
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        loss = loss_fn(model, batch)
        tokens = sum(e.answer_tokens for e in chunk)
        weight = tokens / group_tokens if group_tokens else 1.0 / len(group)
        (loss if weight == 1.0 else loss * weight).backward()
        loss_value += float(loss.detach()) * weight
    grad_norm = None
    if want_grad_norm:
        grads = [p.grad for p in trainable if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    learning_rate = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, learning_rate, grad_norm


def train_lora(
    spec: RunSpec,
    model_path: str,
    work_dir: Path,
    emit: Emit,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    *,
    control: TrainingControl | None = None,
    resume_from: Path | None = None,
    prediction_limits: PredictionLimits | None = None,
    final_predictions_elsewhere: bool = False,
    base_model: Any | None = None,
) -> TrainingOutcome:
    """Fine-tune ``model_path`` with LoRA (QLoRA with ``quantization: 4bit``) on
    ``spec.training_data``.

    Checkpoints go to ``work_dir/checkpoints/{step:08d}/`` every ``checkpoint_interval``
    epochs and after the last epoch; each is handed to ``on_checkpoint`` (which uploads it,
    since only the caller knows the object key) before training continues. Events passed to
    ``emit``:

    * ``{"kind": "progress", "fraction", "step", "total", "epoch", "eta_s"}`` every step;
    * ``{"kind": "metric", "step", "epoch", "loss", "learning_rate", "grad_norm",
      "tokens_per_s", "samples_per_s", "memory_mb"[, "gpu_memory_mb"]}`` every
      ``logging_steps`` steps and at the last step;
    * ``{"kind": "status", "status": "checkpointing"}`` while a checkpoint is written and
      uploaded, then ``{"kind": "status", "status": "running"}``;
    * ``{"kind": "prediction", "step", "epoch", "samples", "precision"}`` per
      ``spec.predictions``, except at the end of training when
      ``final_predictions_elsewhere`` (a run's inference stage answers every evaluation
      question with the final adapter right after, so the pipeline takes that row from it
      instead of decoding the same answers twice); where tracking decodes from its own
      bfloat16 copy, the event is emitted from the background thread that decoded it,
      while training goes on (so ``emit`` must be thread-safe), and always before this
      call returns (a sampling point still decoding when the call raises is dropped);
    * ``{"kind": "params", "request_id", "changes", "effective_step"}`` when a runtime
      change from ``control`` is applied;
    * ``{"kind": "log", "level", "message"}`` for notable things (the start, truncation,
      clamped settings, a resume, a failed prediction sampling).

    ``control`` lets another thread change learning rate / weight decay or cancel (raises
    :class:`TrainingCancelled` at the next step; checkpoints written so far stay);
    ``resume_from`` is a checkpoint folder written by an earlier call with the same spec,
    from which training continues with the next epoch. ``prediction_limits`` are the
    server's bounds on prediction tracking (clamped with a warning).

    ``base_model``: the base model already in memory (float32, on the training device),
    used instead of loading ``model_path``'s weights; it is wrapped with LoRA in place, so
    give each call its own (a validation's retrainings build theirs from weights shared
    through Ray's object store). The tokenizer still comes from ``model_path``.

    Raises ``QLoRAUnsupported`` (4-bit where bitsandbytes cannot run it) before loading
    anything, and ``InvalidTargetModules`` before the first step.
    """
    from transformers import get_scheduler

    hp = spec.hyperparams
    started = time.monotonic()
    work_dir = Path(work_dir)
    device = pick_device()
    require_quantization_support(hp.quantization, device)

    tokenizer = load_tokenizer(model_path)
    benchmark = spec.benchmark
    token_ids = add_to_tokenizer(tokenizer, benchmark.special_tokens) if benchmark is not None else []
    examples = encode_training_pairs(spec, tokenizer)
    truncated = _report_truncation(examples, hp.max_seq_length, emit)
    plan, warnings = plan_predictions(spec, prediction_limits)
    if benchmark is not None and plan is not None:
        # Its queries are plain text, not chat turns: the inference stage answers them.
        plan, warnings = None, [*warnings, "prediction tracking is off for a benchmark run"]
    for warning in warnings:
        _log(emit, "warning", warning)
    tracker = None
    if plan is not None:
        sampler = PredictionSampler(plan, tokenizer, resolve_precision(plan.precision, device, hp.quantization == "4bit"))
        tracker = PredictionTracker(sampler, emit, lambda message: _log(emit, "warning", message))

    model = load_base_model(model_path, device, hp.quantization) if base_model is None else base_model
    grow_embeddings(model, tokenizer)  # a benchmark's function tokens: new rows at the mean row
    torch.manual_seed(hp.seed)  # LoRA init and dropout masks
    model = attach_lora(model, hp, trainable_tokens=token_ids)  # validates the target modules; freezes every base weight
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)

    micro_batches_per_epoch = math.ceil(len(examples) / hp.batch_size)
    steps_per_epoch = math.ceil(micro_batches_per_epoch / hp.gradient_accumulation_steps)
    total = steps_per_epoch * hp.num_epochs
    warmup_steps = math.ceil(hp.warmup_ratio * total)
    scheduler = get_scheduler(hp.lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total)
    if hp.lr_scheduler == "constant" and warmup_steps:
        _log(emit, "warning", "warmup_ratio is ignored by the constant scheduler; use constant_with_warmup")

    step, first_epoch = 0, 1
    applied: set[str] = set()
    window_state = None
    #: Every metric emitted so far, saved in each checkpoint (see the resume below).
    metric_history: list[dict] = []
    if resume_from is not None:
        meta = read_meta(resume_from)
        step, first_epoch = int(meta["step"]), int(meta["epoch"]) + 1
        if step != (first_epoch - 1) * steps_per_epoch:
            raise ValueError(f"checkpoint at step {step} (epoch {meta['epoch']}) does not belong to this run's schedule")
        load_adapter_weights(model, resume_from)
        state = load_training_state(resume_from)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"])
            applied = set(state.get("applied_controls", []))
            window_state = state.get("metric_window")
            metric_history = list(state.get("metric_history", []))
        else:
            _log(emit, "warning", "the checkpoint has no optimizer state; the optimizer starts afresh")
        _log(emit, "info", f"resumed from the checkpoint at step {step} (epoch {meta['epoch']})")
        # The metrics up to the checkpoint again: the worker that wrote it ran ahead of what
        # it had published, and died (or lost the run) with those events unsent. The trainer
        # gives metric events ids derived from their step, so those already stored are
        # dropped as duplicates.
        for metric in metric_history:
            emit(dict(metric))
    start_step = step
    n_trainable = sum(p.numel() for p in trainable)
    _log(emit, "info", (
        f"fine-tuning on {len(examples)} training pairs: {hp.num_epochs} epochs, {total} steps "
        f"(batch {hp.batch_size} x {hp.gradient_accumulation_steps} accumulated), {hp.lr_scheduler} schedule, "
        f"{n_trainable:,} trainable LoRA parameters, {'4-bit QLoRA' if hp.quantization == '4bit' else 'float32'} "
        f"on {device.type}"
    ))

    outcome = TrainingOutcome(
        steps=step, epochs=first_epoch - 1, tokens=(first_epoch - 1) * sum(e.answer_tokens for e in examples), duration_s=0.0, truncated=truncated, start_step=start_step
    )
    window = _MetricWindow(window_state)
    interval_losses: list[float] = []
    interval_rates: list[float] = []
    pad_id = tokenizer.pad_token_id
    # The chat template's common opening computed once per batch (shared_prefix.py), where
    # that is exact: no dropout to share, no gradient checkpointing (QLoRA) to disable the cache.
    # Documents share no chat-template opening.
    exact_sharing = hp.lora_dropout == 0 and hp.quantization == "none" and benchmark is None  # 4-bit: checkpointing is on
    loss_fn = answer_loss_shared_prefix if exact_sharing else answer_loss

    def tracking_due(step: int, epoch_end: bool) -> bool:
        # The last step's sampling point is left to the inference stage when it answers it.
        return plan is not None and plan.due(step, epoch_end) and not (final_predictions_elsewhere and step == total)

    model.train()
    if resume_from is not None and tracking_due(step, epoch_end=True) and tracker.sampler.concurrent:
        # The sampling point of the checkpoint resumed from: its decoding overlapped the
        # next steps, so the worker that died may not have sent it. The same weights give
        # the same answers, which replace any already stored.
        tracker.sample(model, step, float(first_epoch - 1))
    try:
        loop_started = time.monotonic()
        for epoch in range(first_epoch, hp.num_epochs + 1):
            # A benchmark reads its documents in their order (reproducible, as its authors trained).
            order = list(range(len(examples))) if benchmark is not None else _epoch_order(len(examples), hp.seed, epoch)
            chunks = [[examples[i] for i in order[j : j + hp.batch_size]] for j in range(0, len(order), hp.batch_size)]
            groups = [chunks[j : j + hp.gradient_accumulation_steps] for j in range(0, len(chunks), hp.gradient_accumulation_steps)]
            for index, group in enumerate(groups):
                if control is not None:
                    if control.cancelled:
                        raise TrainingCancelled(step)
                    updates = control.take_updates()
                    if updates:
                        _apply_updates(updates, optimizer, scheduler, applied, step, emit)

                log_now = (step + 1) % hp.logging_steps == 0 or step + 1 == total
                step_started = time.monotonic()
                value, learning_rate, grad_norm = _optimizer_step(
                    model, optimizer, scheduler, group, pad_id, device, trainable, want_grad_norm=log_now, loss_fn=loss_fn
                )
                step += 1
                tokens = sum(e.answer_tokens for chunk in group for e in chunk)
                window.add(value, tokens, sum(len(chunk) for chunk in group), time.monotonic() - step_started)
                outcome.losses.append(value)
                outcome.tokens += tokens
                interval_losses.append(value)
                interval_rates.append(learning_rate)

                fractional_epoch = round(epoch - 1 + (index + 1) / steps_per_epoch, 4)
                eta = (time.monotonic() - loop_started) / (step - start_step) * (total - step)
                emit({"kind": "progress", "fraction": step / total, "step": step, "total": total,
                      "epoch": fractional_epoch, "eta_s": round(eta, 2)})
                if log_now:
                    metric = window.flush(step, fractional_epoch, learning_rate, grad_norm)
                    metric_history.append(metric)
                    emit(dict(metric))
                if tracking_due(step, epoch_end=index == len(groups) - 1):
                    tracker.sample(model, step, fractional_epoch)  # at an epoch's end, fractional_epoch == epoch

            outcome.steps, outcome.epochs = step, epoch
            if epoch % hp.checkpoint_interval == 0 or epoch == hp.num_epochs:
                emit({"kind": "status", "status": "checkpointing"})
                meta = {
                    "step": step,
                    "epoch": epoch,
                    "loss": _mean(interval_losses),
                    "learning_rate": _mean(interval_rates),
                }
                state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "applied_controls": sorted(applied),
                    "metric_window": window.state(),
                    "metric_history": list(metric_history),
                }
                info = save_checkpoint(model, work_dir, meta, state)
                interval_losses, interval_rates = [], []
                outcome.checkpoints.append(info)
                if on_checkpoint is not None:
                    on_checkpoint(info)
                emit({"kind": "status", "status": "running"})
    except BaseException:
        if tracker is not None:
            tracker.wait(abandon=True)  # a cancel or failure does not wait for a decoding in flight
        raise
    if tracker is not None:
        tracker.wait()  # the last sampling point's event comes before the job ends
        outcome.prediction_stall_s = tracker.stalled_s
        outcome.prediction_decoding_s = tracker.decoding_s

    outcome.duration_s = time.monotonic() - started
    outcome.metrics = list(metric_history)
    outcome.model = model
    return outcome
