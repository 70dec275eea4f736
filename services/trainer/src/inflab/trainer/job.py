"""The training job as it runs inside a Ray task: resolve the model, resume from the run's
last checkpoint in the object store if there is one, train with the plain training
library, upload each checkpoint as it is written.

It speaks to the outside only through ``emit`` (typed events of the run's ``train`` stage,
streamed back to the service by :func:`inflab.core.compute.run_streaming`), the object
store, and the control mailbox.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from inflab.core.messages import CheckpointRef, EventBase, TrainingSummary, TrainRequest
from inflab.ml.models import resolve_model
from inflab.core.objectstore import ObjectStore
from inflab.core.store_layout import CheckpointMeta, checkpoint_prefix, checkpoints_prefix
from inflab.core.store_layout import training_metrics_key as metrics_key
from inflab.core.store_layout import training_summary_key as summary_key
from inflab.trainer.checkpoints import META_FILE, CheckpointInfo
from inflab.trainer.core_events import CoreEvents, Emit

log = logging.getLogger(__name__)


def upload_checkpoint(store: ObjectStore, folder: Path, key: str) -> None:
    """Upload a checkpoint folder with ``meta.json`` last: a checkpoint whose meta.json is
    in the store is complete (a job killed mid-upload leaves one that is ignored)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == META_FILE)
    for path in files:
        store.put(f"{key}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def stored_checkpoints(store: ObjectStore, run_id: object) -> list[CheckpointRef]:
    """The run's complete checkpoints in the store, in step order."""
    refs = []
    for key in store.list(checkpoints_prefix(run_id)):
        if key.endswith("/" + META_FILE):
            meta = CheckpointMeta.model_validate_json(store.get(key))
            refs.append(CheckpointRef(step=meta.step, epoch=meta.epoch, key=key[: -len(META_FILE) - 1],
                                      learning_rate=meta.learning_rate, loss=meta.loss))
    return sorted(refs, key=lambda r: r.step)


@dataclass(frozen=True)
class TrainingCompleted:
    """The training ran to its end; ``summary`` is stored beside its metrics."""

    summary: TrainingSummary


@dataclass(frozen=True)
class TrainingStopped:
    """The run was cancelled while it trained: ``step`` optimizer steps were done (the
    checkpoints written so far stay in the store)."""

    step: int


#: What :func:`train_job` returns.
TrainJobResult = TrainingCompleted | TrainingStopped


def train_job(
    request: dict,
    store_url: str,
    models_dir: str,
    prediction_limits: dict,
    mailbox=None,
    *,
    emit: Emit,
) -> TrainJobResult:
    from inflab.trainer.mailbox import MailboxReader
    from inflab.trainer.training import PredictionLimits, TrainingCancelled, TrainingControl, TrainingRun

    req = TrainRequest.model_validate(request)
    events = CoreEvents("train", req.run_id, emit)
    store = ObjectStore(store_url)
    control = TrainingControl()
    reader = MailboxReader(mailbox, str(req.run_id), control).start() if mailbox is not None else None
    try:
        model_path = resolve_model(req.spec.model_id, Path(models_dir))
        refs = stored_checkpoints(store, req.run_id)

        def on_checkpoint(info: CheckpointInfo) -> None:
            key = checkpoint_prefix(req.run_id, info.step)
            upload_checkpoint(store, info.path, key)
            ref = info.ref(key)
            refs.append(ref)
            events.emit(events.checkpoint(ref))

        with tempfile.TemporaryDirectory(prefix=f"inflab-train-{req.run_id}-") as work:
            resume_from = None
            if refs:
                # Redelivered after the previous worker died: go on from its last checkpoint.
                resume_from = store.download_dir(refs[-1].key, Path(work) / "resume")
                # Its checkpoint events may not all have been sent (ids derived from the
                # step: those already stored are dropped as duplicates).
                for ref in refs:
                    events.emit(events.checkpoint(ref))
            try:
                outcome = TrainingRun(
                    req.spec, model_path, Path(work), emit, on_checkpoint,
                    run_id=req.run_id, control=control, resume_from=resume_from,
                    prediction_limits=PredictionLimits(**prediction_limits),
                    # The inference stage's fine-tuned answers are the tracking row at the
                    # end of training (inflab.inference.job), so it is not decoded here too.
                    final_predictions_elsewhere=True,
                ).run()
            except TrainingCancelled as cancelled:
                return TrainingStopped(step=cancelled.step)
    finally:
        if reader is not None:
            reader.stop()

    summary = outcome.summary(refs)
    store.put(metrics_key(req.run_id), json.dumps(outcome.metrics).encode())
    store.put(summary_key(req.run_id), summary.model_dump_json().encode())
    return TrainingCompleted(summary=summary)


def load_summary(store: ObjectStore, run_id: object) -> TrainingSummary | None:
    key = summary_key(run_id)
    if not store.exists(key):
        return None
    return TrainingSummary.model_validate(json.loads(store.get(key)))


def finished_events(store: ObjectStore, run_id: UUID) -> list[EventBase]:
    """The metric and checkpoint events of a finished training, to send again with its
    result: the worker that finished it may have died (or lost the run) before sending
    them all. Their event ids come from the step, so what was stored is not stored twice."""
    train = CoreEvents("train", run_id)
    events: list[EventBase] = []
    if store.exists(metrics_key(run_id)):
        events += [train.metric(record) for record in json.loads(store.get(metrics_key(run_id)))]
    events += [train.checkpoint(ref) for ref in stored_checkpoints(store, run_id)]
    return events
