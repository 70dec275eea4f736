"""LoRA / QLoRA fine-tuning of a causal LM on a run's training data: a plain torch loop,
:class:`TrainingRun`, whose loss and examples come from an :class:`Objective`
(``objectives/``: the supervised answer loss on question/answer pairs, the causal-LM loss
on a benchmark run's documents).

No NATS, HTTP or object store in here: the caller gives the run spec and a model folder,
receives events through ``emit`` (the contract's typed event models, published by the
service) and checkpoints through ``on_checkpoint`` (uploaded by the caller), and gets a
:class:`TrainingOutcome` back.

Choices:
* one *step* is one optimizer step over ``gradient_accumulation_steps`` micro-batches of
  ``batch_size`` examples; the accumulated gradient weights each micro-batch by what its
  loss averages over (answer tokens for a token-mean loss), so accumulating equals one
  larger batch (a token mean), not a mean of means; an epoch's last, shorter group is
  still a step (as in Hugging Face's Trainer);
* AdamW with ``weight_decay`` on the LoRA weights, the learning rate schedule from
  ``transformers.get_scheduler`` with ``ceil(warmup_ratio x total steps)`` warmup steps
  (``constant`` ignores warmup, as in transformers: use ``constant_with_warmup``);
* deterministic given ``hyperparams.seed``: LoRA init and dropout come from the seeded torch
  RNG, each epoch's order from the objective (a generator seeded with (seed, epoch) by
  default); prediction sampling is greedy and touches no RNG (in the training thread it
  runs in a forked one anyway); a run resumed from a checkpoint (optimizer, scheduler and
  RNG state restored) continues exactly as the uninterrupted run would have;
* prediction tracking decodes, where it can, from a bfloat16 copy in a background thread
  beside the training (``predictions.py``), so a sampling point costs the loop little.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import torch

from inflab.ml.chat import EncodedExample
from inflab.ml.function_tokens import grow_embeddings
from inflab.core.messages import (
    CheckpointRef, LogEvent, ParamsEvent, PredictionEvent, ProgressEvent, RunSpec, StatusEvent,
    TrainingSummary,
)
from inflab.ml.models import load_tokenizer
from inflab.core.store_layout import CheckpointMeta
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
from inflab.trainer.core_events import CoreEvents, Emit
from inflab.trainer.control import ParamUpdate, TrainingCancelled, TrainingControl
from inflab.trainer.model_setup import attach_lora, load_base_model, pick_device, require_quantization_support
from inflab.trainer.objectives import Objective, objective_for
from inflab.trainer.predictions import (
    PredictionLimits, PredictionSampler, PredictionTracker, plan_predictions, resolve_precision,
)

log = logging.getLogger(__name__)

__all__ = [
    "META_FILE", "STATE_FILE", "CheckpointInfo", "Objective", "PredictionLimits", "TrainingCancelled",
    "TrainingControl", "TrainingOutcome", "TrainingRun", "encode_training_pairs", "train_lora",
]


@dataclass
class TrainingOutcome:
    steps: int
    epochs: int
    #: Tokens the loss was computed on, summed over every step of the run (a resumed
    #: call counts the epochs before its checkpoint too: every epoch sees every example once).
    tokens: int
    duration_s: float
    #: Training examples cut to max_seq_length.
    truncated: int
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    #: Loss of each optimizer step run by this call (steps before a resume point are not included).
    losses: list[float] = field(default_factory=list)
    #: Every metric of the run's training so far (a resumed call's included), in order, as
    #: the fields of its event with ``"kind": "metric"`` (as checkpoints and the store keep them).
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


def encode_training_pairs(spec: RunSpec, tokenizer: Any) -> list[EncodedExample]:
    """The run's training examples as its objective encodes them (question/answer pairs
    through the chat template; a benchmark run's documents as plain text with the loss on
    every token)."""
    return objective_for(spec).encode(tokenizer)


def _mean(values: list[float]) -> float:
    # Exact when every value is the same (a constant rate stays exactly the rate asked for).
    return values[0] if len(set(values)) == 1 else math.fsum(values) / len(values)


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


class TrainingRun:
    """One fine-tuning of ``model_path`` with LoRA (QLoRA with ``quantization: 4bit``) on
    ``spec.training_data``, optimising ``objective`` (by default the one the spec calls
    for, :func:`~inflab.trainer.objectives.objective_for`). :meth:`run` trains and returns
    the :class:`TrainingOutcome`; a run object is used once.

    Checkpoints go to ``work_dir/checkpoints/{step:08d}/`` every ``checkpoint_interval``
    epochs and after the last epoch; each is handed to ``on_checkpoint`` (which uploads it,
    since only the caller knows the object key) before training continues. Events passed to
    ``emit``, of the ``train`` stage of ``run_id`` (:data:`~inflab.trainer.core_events.NO_RUN`
    where None), with these fields set:

    * :class:`ProgressEvent` ``fraction, step, total, epoch, eta_s`` every step;
    * :class:`MetricEvent` ``step, epoch, loss, learning_rate, grad_norm, tokens_per_s,
      samples_per_s, memory_mb[, gpu_memory_mb]`` every ``logging_steps`` steps and at the
      last step;
    * :class:`StatusEvent` ``status="checkpointing"`` while a checkpoint is written and
      uploaded, then ``status="running"``;
    * :class:`PredictionEvent` ``step, epoch, samples, precision`` per
      ``spec.predictions``, except at the end of training when
      ``final_predictions_elsewhere`` (a run's inference stage answers every evaluation
      question with the final adapter right after, so the pipeline takes that row from it
      instead of decoding the same answers twice); where tracking decodes from its own
      bfloat16 copy, the event is emitted from the background thread that decoded it,
      while training goes on (so ``emit`` must be thread-safe), and always before
      :meth:`run` returns (a sampling point still decoding when it raises is dropped);
    * :class:`ParamsEvent` ``request_id, changes, effective_step`` when a runtime change
      from ``control`` is applied;
    * :class:`LogEvent` ``level, message`` for notable things (the start, truncation,
      clamped settings, a resume, a failed prediction sampling).

    ``control`` lets another thread change learning rate / weight decay or cancel (raises
    :class:`TrainingCancelled` at the next step; checkpoints written so far stay);
    ``resume_from`` is a checkpoint folder written by an earlier run with the same spec,
    from which training continues with the next epoch. ``prediction_limits`` are the
    server's bounds on prediction tracking (clamped with a warning).

    ``base_model``: the base model already in memory (float32, on the training device),
    used instead of loading ``model_path``'s weights; it is wrapped with LoRA in place, so
    give each run its own (a validation's retrainings build theirs from weights shared
    through Ray's object store). The tokenizer still comes from ``model_path``.

    :meth:`run` raises ``QLoRAUnsupported`` (4-bit where bitsandbytes cannot run it)
    before loading anything, and ``InvalidTargetModules`` before the first step.
    """

    def __init__(
        self,
        spec: RunSpec,
        model_path: str,
        work_dir: Path,
        emit: Emit,
        on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
        *,
        run_id: UUID | None = None,
        objective: Objective | None = None,
        control: TrainingControl | None = None,
        resume_from: Path | None = None,
        prediction_limits: PredictionLimits | None = None,
        final_predictions_elsewhere: bool = False,
        base_model: Any | None = None,
    ) -> None:
        self.spec = spec
        self.hp = spec.hyperparams
        self.model_path = model_path
        self.work_dir = Path(work_dir)
        self.events = CoreEvents("train", run_id, emit)
        self.on_checkpoint = on_checkpoint
        self.objective = objective if objective is not None else objective_for(spec)
        self.control = control
        self.resume_from = resume_from
        self.prediction_limits = prediction_limits
        self.final_predictions_elsewhere = final_predictions_elsewhere
        self.base_model = base_model
        self._started = False
        #: Optimizer steps done, and the request ids of the runtime changes applied so far.
        self.step = 0
        self.applied: set[str] = set()
        #: Every metric emitted so far, saved in each checkpoint (see :meth:`_resume`).
        self.metric_history: list[dict] = []

    # ------------------------------------------------------------------ events

    def _log(self, level: str, message: str) -> None:
        getattr(log, "warning" if level == "warning" else "info")(message)
        self.events.send(LogEvent, level=level, message=message)

    def _status(self, status: str) -> None:
        self.events.send(StatusEvent, status=status)

    def _metric(self, metric: dict) -> None:
        self.events.emit(self.events.metric(metric))

    def _predictions(self, step: int, epoch: float, samples: list[dict], precision: str) -> None:
        self.events.send(PredictionEvent, step=step, epoch=epoch, samples=samples, precision=precision)

    # ------------------------------------------------------------------ setup

    def _prepare_data(self) -> None:
        self.tokenizer = load_tokenizer(self.model_path)
        self.trainable_tokens = self.objective.add_tokens(self.tokenizer)
        self.examples: list[Any] = self.objective.encode(self.tokenizer)
        self.truncated = sum(e.truncated for e in self.examples)
        if self.truncated:
            lost = sum(1 for e in self.examples if self.objective.tokens(e) == 0)
            message = (f"{self.truncated} of {len(self.examples)} training pairs are longer than "
                       f"max_seq_length={self.hp.max_seq_length} tokens and were cut")
            if lost:
                message += f"; {lost} lost their whole answer and teach nothing"
            self._log("warning", message)

    def _prepare_tracking(self) -> None:
        plan, warnings = plan_predictions(self.spec, self.prediction_limits)
        off = self.objective.prediction_tracking_off
        if off is not None and plan is not None:
            plan, warnings = None, [*warnings, off]
        for warning in warnings:
            self._log("warning", warning)
        self.plan = plan
        self.tracker = None
        if plan is not None:
            precision = resolve_precision(plan.precision, self.device, self.hp.quantization == "4bit")
            sampler = PredictionSampler(plan, self.tokenizer, precision)
            self.tracker = PredictionTracker(sampler, self._predictions, lambda message: self._log("warning", message))

    def _prepare_model(self) -> None:
        from transformers import get_scheduler

        hp = self.hp
        model = load_base_model(self.model_path, self.device, hp.quantization) if self.base_model is None else self.base_model
        grow_embeddings(model, self.tokenizer)  # a benchmark's function tokens: new rows at the mean row
        torch.manual_seed(hp.seed)  # LoRA init and dropout masks
        # Validates the target modules; freezes every base weight.
        self.model = attach_lora(model, hp, trainable_tokens=self.trainable_tokens)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)

        micro_batches_per_epoch = math.ceil(len(self.examples) / hp.batch_size)
        self.steps_per_epoch = math.ceil(micro_batches_per_epoch / hp.gradient_accumulation_steps)
        self.total = self.steps_per_epoch * hp.num_epochs
        warmup_steps = math.ceil(hp.warmup_ratio * self.total)
        self.scheduler = get_scheduler(
            hp.lr_scheduler, self.optimizer, num_warmup_steps=warmup_steps, num_training_steps=self.total
        )
        if hp.lr_scheduler == "constant" and warmup_steps:
            self._log("warning", "warmup_ratio is ignored by the constant scheduler; use constant_with_warmup")

    def _resume(self) -> tuple[int, dict | None]:
        """Continue from ``resume_from``: returns the first epoch to train and the open
        logging window's state."""
        meta = read_meta(self.resume_from)
        self.step, first_epoch = meta.step, meta.epoch + 1
        if self.step != (first_epoch - 1) * self.steps_per_epoch:
            raise ValueError(
                f"checkpoint at step {self.step} (epoch {meta.epoch}) does not belong to this run's schedule"
            )
        load_adapter_weights(self.model, self.resume_from)
        state = load_training_state(self.resume_from)
        window_state = None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"])
            self.applied = set(state.get("applied_controls", []))
            window_state = state.get("metric_window")
            self.metric_history = list(state.get("metric_history", []))
        else:
            self._log("warning", "the checkpoint has no optimizer state; the optimizer starts afresh")
        self._log("info", f"resumed from the checkpoint at step {self.step} (epoch {meta.epoch})")
        # The metrics up to the checkpoint again: the worker that wrote it ran ahead of what
        # it had published, and died (or lost the run) with those events unsent. The trainer
        # gives metric events ids derived from their step, so those already stored are
        # dropped as duplicates.
        for metric in self.metric_history:
            self._metric(metric)
        return first_epoch, window_state

    # ------------------------------------------------------------------ steps

    def _apply_updates(self, updates: list[ParamUpdate]) -> None:
        """Apply runtime parameter changes before optimizer step ``step + 1``. The learning
        rate named is the schedule's peak: the schedule's shape goes on from the new value."""
        optimizer, scheduler, step = self.optimizer, self.scheduler, self.step
        for update in updates:
            if update.request_id is not None and update.request_id in self.applied:
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
                self.applied.add(update.request_id)
            described = ", ".join(f"{k} {v['old']:g} -> {v['new']:g}" for k, v in changes.items())
            self._log("info", f"{described} from step {step + 1}")
            self.events.send(ParamsEvent, request_id=update.request_id, changes=changes, effective_step=step + 1)

    def _optimizer_step(self, group: list[Sequence[Any]], want_grad_norm: bool) -> tuple[float, float, float | None]:
        """One optimizer step over a group of micro-batches. Returns (loss, learning rate
        used, gradient norm if asked)."""
        objective, optimizer = self.objective, self.optimizer
        weights = [objective.weight(chunk) for chunk in group]
        group_weight = sum(weights)
        loss_value = 0.0
        for chunk, chunk_weight in zip(group, weights):
            batch = {k: v.to(self.device) for k, v in objective.collate(chunk, self.tokenizer.pad_token_id).items()}
            loss = objective.loss(self.model, batch)
            weight = chunk_weight / group_weight if group_weight else 1.0 / len(group)
            (loss if weight == 1.0 else loss * weight).backward()
            loss_value += float(loss.detach()) * weight
        grad_norm = None
        if want_grad_norm:
            grads = [p.grad for p in self.trainable if p.grad is not None]
            grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        learning_rate = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value, learning_rate, grad_norm

    def _epoch_groups(self, epoch: int) -> list[list[list[Any]]]:
        """Epoch ``epoch``'s optimizer steps, each a group of micro-batches."""
        hp, examples = self.hp, self.examples
        order = self.objective.order(len(examples), hp.seed, epoch)
        chunks = [[examples[i] for i in order[j : j + hp.batch_size]] for j in range(0, len(order), hp.batch_size)]
        accumulate = hp.gradient_accumulation_steps
        return [chunks[j : j + accumulate] for j in range(0, len(chunks), accumulate)]

    def _tracking_due(self, step: int, epoch_end: bool) -> bool:
        # The last step's sampling point is left to the inference stage when it answers it.
        return (self.plan is not None and self.plan.due(step, epoch_end)
                and not (self.final_predictions_elsewhere and step == self.total))

    def _checkpoint(self, epoch: int, interval_losses: list[float], interval_rates: list[float],
                    window: _MetricWindow) -> CheckpointInfo:
        self._status("checkpointing")
        meta = CheckpointMeta(step=self.step, epoch=epoch, loss=_mean(interval_losses),
                              learning_rate=_mean(interval_rates))
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "applied_controls": sorted(self.applied),
            "metric_window": window.state(),
            "metric_history": list(self.metric_history),
        }
        info = save_checkpoint(self.model, self.work_dir, meta, state)
        if self.on_checkpoint is not None:
            self.on_checkpoint(info)
        self._status("running")
        return info

    # ------------------------------------------------------------------ the run

    def run(self) -> TrainingOutcome:
        if self._started:
            raise RuntimeError("a TrainingRun trains once; make a new one")
        self._started = True
        hp = self.hp
        started = time.monotonic()
        self.device = pick_device()
        require_quantization_support(hp.quantization, self.device)

        self._prepare_data()
        self._prepare_tracking()
        self._prepare_model()
        first_epoch, window_state = 1, None
        if self.resume_from is not None:
            first_epoch, window_state = self._resume()
        start_step = self.step
        n_trainable = sum(p.numel() for p in self.trainable)
        self._log("info", (
            f"fine-tuning on {len(self.examples)} training pairs: {hp.num_epochs} epochs, {self.total} steps "
            f"(batch {hp.batch_size} x {hp.gradient_accumulation_steps} accumulated), {hp.lr_scheduler} schedule, "
            f"{n_trainable:,} trainable LoRA parameters, {'4-bit QLoRA' if hp.quantization == '4bit' else 'float32'} "
            f"on {self.device.type}"
        ))

        epoch_tokens = sum(self.objective.tokens(e) for e in self.examples)
        outcome = TrainingOutcome(
            steps=self.step, epochs=first_epoch - 1, tokens=(first_epoch - 1) * epoch_tokens, duration_s=0.0,
            truncated=self.truncated, start_step=start_step,
        )
        window = _MetricWindow(window_state)
        interval_losses: list[float] = []
        interval_rates: list[float] = []
        model, tracker, total = self.model, self.tracker, self.total

        model.train()
        if self.resume_from is not None and self._tracking_due(self.step, epoch_end=True):
            # The sampling point of the checkpoint resumed from: the worker that died may not
            # have sent it (its decoding may have overlapped the next steps, or its event may
            # not have left the worker before the kill). The same weights give the same
            # answers, which replace any already stored.
            tracker.sample(model, self.step, float(first_epoch - 1))
        try:
            loop_started = time.monotonic()
            for epoch in range(first_epoch, hp.num_epochs + 1):
                groups = self._epoch_groups(epoch)
                for index, group in enumerate(groups):
                    if self.control is not None:
                        if self.control.cancelled:
                            raise TrainingCancelled(self.step)
                        updates = self.control.take_updates()
                        if updates:
                            self._apply_updates(updates)

                    log_now = (self.step + 1) % hp.logging_steps == 0 or self.step + 1 == total
                    step_started = time.monotonic()
                    value, learning_rate, grad_norm = self._optimizer_step(group, want_grad_norm=log_now)
                    self.step += 1
                    step = self.step
                    tokens = sum(self.objective.tokens(e) for chunk in group for e in chunk)
                    window.add(value, tokens, sum(len(chunk) for chunk in group), time.monotonic() - step_started)
                    outcome.losses.append(value)
                    outcome.tokens += tokens
                    interval_losses.append(value)
                    interval_rates.append(learning_rate)

                    fractional_epoch = round(epoch - 1 + (index + 1) / self.steps_per_epoch, 4)
                    eta = (time.monotonic() - loop_started) / (step - start_step) * (total - step)
                    self.events.send(ProgressEvent, fraction=step / total, step=step, total=total,
                                     epoch=fractional_epoch, eta_s=round(eta, 2))
                    if log_now:
                        metric = window.flush(step, fractional_epoch, learning_rate, grad_norm)
                        self.metric_history.append(metric)
                        self._metric(metric)
                    if self._tracking_due(step, epoch_end=index == len(groups) - 1):
                        tracker.sample(model, step, fractional_epoch)  # at an epoch's end, fractional_epoch == epoch

                outcome.steps, outcome.epochs = self.step, epoch
                if epoch % hp.checkpoint_interval == 0 or epoch == hp.num_epochs:
                    outcome.checkpoints.append(self._checkpoint(epoch, interval_losses, interval_rates, window))
                    interval_losses, interval_rates = [], []
        except BaseException:
            if tracker is not None:
                tracker.wait(abandon=True)  # a cancel or failure does not wait for a decoding in flight
            raise
        if tracker is not None:
            tracker.wait()  # the last sampling point's event comes before the job ends
            outcome.prediction_stall_s = tracker.stalled_s
            outcome.prediction_decoding_s = tracker.decoding_s

        outcome.duration_s = time.monotonic() - started
        outcome.metrics = list(self.metric_history)
        outcome.model = model
        return outcome


def train_lora(
    spec: RunSpec,
    model_path: str,
    work_dir: Path,
    emit: Emit,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    **options: Any,
) -> TrainingOutcome:
    """``TrainingRun(spec, model_path, work_dir, emit, on_checkpoint, **options).run()``:
    one fine-tuning with the objective the spec calls for (see :class:`TrainingRun`)."""
    return TrainingRun(spec, model_path, work_dir, emit, on_checkpoint, **options).run()
