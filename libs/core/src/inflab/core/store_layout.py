"""Where a run's files lie in the object store, and what a checkpoint folder holds: the one
definition the trainer (which writes them), the inference and influence stages and the
gateway (which read them) share.

Everything of run ``{run_id}`` lies under ``runs/{run_id}/`` (messages naming another run's
key are refused, ``inflab.core.messages.run_key_error``)::

    runs/{run_id}/checkpoints/{step:08d}/       a checkpoint folder (below)
    runs/{run_id}/train/metrics.json            every metric of the finished training
    runs/{run_id}/train/summary.json            the training summary, written last
    runs/{run_id}/influence/{method}.safetensors     a method's influence matrices
                                                (one tensor per variant)
    runs/{run_id}/validations/{validation_id}.json   a validation's detail

A checkpoint folder holds peft's adapter files (``adapter_config.json``,
``adapter_model.safetensors``), ``meta.json`` (:class:`CheckpointMeta`: what inference
and influence read) and ``training_state.pt`` (what only the trainer's resume needs). It is
uploaded with ``meta.json`` last, so a folder whose ``meta.json`` is stored is complete.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: The top folder of every run's files.
RUNS_ROOT = "runs"

#: peft's adapter configuration in a checkpoint folder.
ADAPTER_CONFIG = "adapter_config.json"
#: peft's adapter weights in a checkpoint folder.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: The checkpoint's :class:`CheckpointMeta`, uploaded last.
CHECKPOINT_META = "meta.json"
#: Optimizer, scheduler and RNG state: what only resuming the training needs.
TRAINING_STATE = "training_state.pt"
#: The folder, in the store and in a trainer's work directory, holding the checkpoints.
CHECKPOINTS_FOLDER = "checkpoints"


class CheckpointMeta(BaseModel):
    """``meta.json`` of a checkpoint folder.

    ``learning_rate`` is the mean rate the optimizer used over the steps since the
    previous checkpoint: TracIn's weight for the checkpoint (it approximates the sum over
    every step of rate x gradient dot product by checkpoint gradients times the rate over
    the interval leading to the checkpoint, so with a schedule the interval's mean is the
    right stand-in, not the rate at the last step)."""

    model_config = ConfigDict(extra="ignore")

    #: Optimizer steps done.
    step: int = Field(ge=0)
    #: Whole epochs done.
    epoch: int = Field(0, ge=0)
    #: Mean training loss over the steps since the previous checkpoint.
    loss: float | None = None
    learning_rate: float


def checkpoint_folder(step: int) -> str:
    """A checkpoint's folder name: its step, zero-padded so names sort by step."""
    return f"{step:08d}"


def run_prefix(run_id: object) -> str:
    return f"{RUNS_ROOT}/{run_id}"


def checkpoints_prefix(run_id: object) -> str:
    """Every checkpoint folder of a run lies under this prefix (it ends with ``/``)."""
    return f"{run_prefix(run_id)}/{CHECKPOINTS_FOLDER}/"


def checkpoint_prefix(run_id: object, step: int) -> str:
    """The checkpoint folder of ``step`` (the ``key`` of its ``CheckpointRef``)."""
    return f"{checkpoints_prefix(run_id)}{checkpoint_folder(step)}"


def training_summary_key(run_id: object) -> str:
    """Written last: its presence means the run's training finished (idempotency marker)."""
    return f"{run_prefix(run_id)}/train/summary.json"


def training_metrics_key(run_id: object) -> str:
    """Every metric of the finished training, written just before the summary."""
    return f"{run_prefix(run_id)}/train/metrics.json"


def influence_key(run_id: object, method: str) -> str:
    """A method's influence matrix file: safetensors, one tensor per variant
    (``inflab.core.influence_files``)."""
    return f"{run_prefix(run_id)}/influence/{method}.safetensors"


def validation_key(run_id: object, validation_id: object) -> str:
    """A validation's detail: every retraining's losses, the plan, per-question figures."""
    return f"{run_prefix(run_id)}/validations/{validation_id}.json"
