"""Request and response bodies of the HTTP API.

Run inputs reuse the message contract's models (``TrainingPair``, ``EvalQuestion``,
``Hyperparams``, ``RunSpec``), so the API and the bus accept exactly the same things and
share their limits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inflab.common.messages import (
    Answer,
    CheckpointRef,
    EvalQuestion,
    Hyperparams,
    InfluenceMatrix,
    RunSpec,
    RunStatus,
    TrainingPair,
    TrainingSummary,
)
from inflab.common.settings import Settings


class Body(BaseModel):
    # A misspelt field ("learning_rte") is refused, not silently replaced by a default.
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- experiments
def _default_ids(items: Any, prefix: str) -> Any:
    if not isinstance(items, list):
        return items
    return [
        {**item, "id": f"{prefix}{i:02d}"} if isinstance(item, dict) and item.get("id") is None else item
        for i, item in enumerate(items)
    ]


# The contract's id constraint, made optional: the server numbers pairs left without one.
_OptionalId = Annotated[(str, *TrainingPair.model_fields["id"].metadata)] | None


class TrainingPairIn(TrainingPair):
    id: _OptionalId = None


class EvalQuestionIn(EvalQuestion):
    id: _OptionalId = None


class ExperimentCreate(Body):
    """A new experiment. Training pair ids default to ``tr00, tr01, ...`` and evaluation
    question ids to ``ev00, ...``; omitted run settings take the server's defaults."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=10_000)] = ""
    training_data: list[TrainingPairIn] = Field(min_length=1)
    eval_data: list[EvalQuestionIn] = Field(min_length=1)
    model_id: str | None = None
    hyperparams: Hyperparams = Field(default_factory=Hyperparams)
    influence_methods: list[str] | None = None
    few_shot_k: int | None = None
    max_new_tokens: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_ids(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "training_data" in data:
                data["training_data"] = _default_ids(data["training_data"], "tr")
            if "eval_data" in data:
                data["eval_data"] = _default_ids(data["eval_data"], "ev")
        return data

    @field_validator("training_data", "eval_data")
    @classmethod
    def _unique_ids(cls, items: list[TrainingPairIn] | list[EvalQuestionIn]) -> list:
        ids = [item.id for item in items]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"ids must be unique; repeated: {duplicates[:10]}")
        return items

    def spec_fields(self, settings: Settings) -> dict[str, Any]:
        """The run settings with the server's defaults filled in, ready for ``RunSpec``."""
        fields: dict[str, Any] = {
            "model_id": self.model_id or settings.default_model_id,
            "training_data": [pair.model_dump() for pair in self.training_data],
            "eval_data": [question.model_dump() for question in self.eval_data],
            "hyperparams": self.hyperparams.model_dump(),
            "few_shot_k": settings.few_shot_k if self.few_shot_k is None else self.few_shot_k,
            "max_new_tokens": settings.max_new_tokens if self.max_new_tokens is None else self.max_new_tokens,
        }
        if self.influence_methods is not None:
            fields["influence_methods"] = self.influence_methods
        return fields


class ExperimentSummary(BaseModel):
    id: UUID
    name: str
    description: str
    model_id: str
    training_pairs: int
    eval_questions: int
    created_at: datetime
    updated_at: datetime


class ExperimentOut(BaseModel):
    id: UUID
    name: str
    description: str
    model_id: str
    training_data: list[TrainingPair]
    eval_data: list[EvalQuestion]
    hyperparams: Hyperparams
    influence_methods: list[str]
    few_shot_k: int
    max_new_tokens: int
    created_at: datetime
    updated_at: datetime


# --------------------------------------------------------------------------- runs
class RunQueued(BaseModel):
    run_id: UUID
    status: RunStatus


class RunOut(BaseModel):
    id: UUID
    experiment_id: UUID | None
    status: RunStatus
    #: Overall, weighted over stages (train 0.6, inference 0.2, influence 0.2), in [0, 1].
    progress: float
    current_epoch: float | None
    loss: float | None
    eta_s: float | None
    #: Status per stage key: ``train``, ``inference``, ``influence.<method>``.
    stages: dict[str, RunStatus]
    error: str | None
    #: The RunSpec as submitted.
    config: RunSpec
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class LossPoint(BaseModel):
    step: int
    epoch: float
    loss: float
    learning_rate: float


class TrainingResults(BaseModel):
    loss_curve: list[LossPoint]
    checkpoints: list[CheckpointRef]
    #: The trainer's summary, once training has finished.
    summary: TrainingSummary | None


class RunResults(BaseModel):
    run_id: UUID
    status: RunStatus
    #: Base, few-shot and fine-tuned answers per evaluation question.
    answers: list[Answer]
    #: One influence matrix per method and variant.
    influence: list[InfluenceMatrix]
    training: TrainingResults


# --------------------------------------------------------------------------- health
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    #: ``ok`` or the reason, per dependency: postgres, nats, persister.
    checks: dict[str, str]
