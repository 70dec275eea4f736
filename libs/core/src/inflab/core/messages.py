"""The message contract: every message on the bus is one of these pydantic models, JSON on
the wire, carrying ``schema_version``. Unknown fields are refused, so a producer that
drifts from the contract is told so (on the dead-letter subject) instead of being
half-understood.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Literal, Union, get_args
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from inflab.core.influence_methods import InfluenceArgs
from inflab.core.settings import DEFAULT_MODEL_ID
from inflab.core.store_layout import RUNS_ROOT
from inflab.core.vocabulary import (
    INFLUENCE_METHODS,
    EventStage,
    LrScheduler,
    Precision,
    PrecisionSetting,
    Quantization,
    RunStatus,
    Variant,
)

SCHEMA_VERSION = 1

#: The stage an event speaks for (``inflab.core.vocabulary.EventStage``).
Stage = EventStage

_ID = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
_TEXT = Annotated[str, Field(min_length=1, max_length=8000)]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Contract(BaseModel):
    """Base of every model in the contract: strict about unknown fields. In a response's
    schema a field with a default is required (it is always sent), so clients generated
    from /openapi.json can rely on it; in a request it stays optional."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Message(Contract):
    schema_version: Literal[1] = SCHEMA_VERSION


# --------------------------------------------------------------------------- run inputs
class TrainingPair(Contract):
    id: _ID
    question: _TEXT
    answer: _TEXT


class EvalQuestion(Contract):
    id: _ID
    question: _TEXT
    #: The reference answer is optional: a researcher may only want to see what models say.
    answer: Annotated[str, Field(max_length=8000)] | None = None


class Hyperparams(Contract):
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    num_epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(4, ge=1, le=1024)
    lora_rank: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0, le=4096)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, max_length=64
    )
    max_seq_length: int = Field(128, ge=8, le=32768)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    #: Save the adapter every this many epochs (and always at the end).
    checkpoint_interval: int = Field(1, ge=1, le=1000)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    #: ``4bit``: QLoRA (NF4 base weights through bitsandbytes, LoRA in float32).
    quantization: Quantization = "none"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    lr_scheduler: LrScheduler = "constant"
    #: Publish a metric event every this many optimizer steps.
    logging_steps: int = Field(1, ge=1, le=100_000)

    @field_validator("learning_rate", "lora_alpha", "lora_dropout", "warmup_ratio", "weight_decay")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class PredictionSettings(Contract):
    """Prediction tracking during training (like W&B prediction tables): the same sampled
    prompts answered greedily by the current model at each sampling point. The upper bound
    of ``sample_count`` and the lower bound of ``step_interval`` are settings
    (``INFLAB_MAX_PREDICTION_SAMPLES``, ``INFLAB_MIN_PREDICTION_STEP_INTERVAL``), checked
    by the gateway and the trainer."""

    enabled: bool = True
    sample_count: int = Field(4, ge=1)
    frequency: Literal["epoch", "steps"] = "epoch"
    step_interval: int = Field(10, ge=1)
    #: The arithmetic of the tracking answers. ``auto``: bfloat16 on a CPU that computes it
    #: natively (AVX512-BF16 or AMX), else float32 (on a GPU too: decoding there is quick,
    #: and a copy would cost GPU memory). On a CPU greedy decoding is memory-bound, so a
    #: bfloat16 copy answers about twice as fast, in a background thread beside the
    #: training; its answers can drift from float32's after a near-tie between two tokens.
    #: The answers at the end of training are always the inference stage's, in float32.
    precision: PrecisionSetting = "auto"


#: The function tokens a benchmark may add to the tokenizer, e.g. ``<FN>``.
_SPECIAL_TOKEN = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$")]


class BenchmarkSpec(Contract):
    """A benchmark run (``kind: benchmark``): its training pairs are documents, each one's
    ``answer`` the document's text (trained with the causal-LM loss on every token;
    ``question`` only names the document, e.g. its type, and is not trained on); its
    evaluation questions are queries with their expected answer, asked as
    plain text (no chat template); ``relevant`` is the ground truth. Training reads the
    documents in their order (no shuffling), so a run is reproducible."""

    #: Query (evaluation question) id -> the ids of its relevant documents.
    relevant: dict[_ID, list[_ID]] = Field(min_length=1, max_length=10_000)
    #: Tokens the tokenizer gains as special tokens (their embedding rows train with the adapter).
    special_tokens: list[_SPECIAL_TOKEN] = Field(default_factory=list, max_length=1000)


#: Hard ceilings of the contract (a deployment's own limits, in settings, are lower): lists
#: longer than these are refused while they are parsed.
MAX_TRAINING_PAIRS = 100_000
MAX_EVAL_QUESTIONS = 10_000
MAX_INFLUENCE_METHODS = 16
MAX_INFLUENCE_ARGS = 64


class RunSpec(Contract):
    """Everything a run needs, frozen at submission (the run's config snapshot)."""

    model_id: Annotated[str, Field(min_length=1, max_length=512)] = DEFAULT_MODEL_ID
    training_data: list[TrainingPair] = Field(min_length=1, max_length=MAX_TRAINING_PAIRS)
    eval_data: list[EvalQuestion] = Field(min_length=1, max_length=MAX_EVAL_QUESTIONS)
    hyperparams: Hyperparams = Field(default_factory=Hyperparams)
    influence_methods: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=lambda: ["tracin"], min_length=1, max_length=MAX_INFLUENCE_METHODS
    )
    #: Per-method arguments, e.g. ``{"datainf": {"damping": 0.01}, "ekfac": {"top_k": 10}}``
    #: (``inflab.core.influence_methods``: every argument of every method, with its
    #: default when not named). ``top_k`` (default 5) sizes the summary of every result.
    influence_args: InfluenceArgs = Field(default_factory=InfluenceArgs)
    #: How many training pairs the few-shot prompt shows the base model.
    few_shot_k: int = Field(3, ge=0, le=64)
    max_new_tokens: int = Field(48, ge=1, le=2048)
    predictions: PredictionSettings = Field(default_factory=PredictionSettings)
    #: Set for a benchmark run (see :class:`BenchmarkSpec`); null for a question/answer run.
    benchmark: BenchmarkSpec | None = None

    @property
    def kind(self) -> Literal["qa", "benchmark"]:
        return "qa" if self.benchmark is None else "benchmark"

    @field_validator("influence_methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in INFLUENCE_METHODS]
        if unknown:
            raise ValueError(f"unknown influence method(s) {unknown}; known: {list(INFLUENCE_METHODS)}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _unique_ids(self) -> "RunSpec":
        for name, items in (("training_data", self.training_data), ("eval_data", self.eval_data)):
            ids = [x.id for x in items]
            if len(ids) != len(set(ids)):
                raise ValueError(f"{name}: ids must be unique")
        if self.benchmark is not None:
            documents = {p.id for p in self.training_data}
            for q in self.eval_data:
                relevant = self.benchmark.relevant.get(q.id)
                if not relevant:
                    raise ValueError(f"benchmark.relevant.{q.id}: query {q.id} needs at least one relevant document")
                unknown = [r for r in relevant if r not in documents]
                if unknown:
                    raise ValueError(f"benchmark.relevant.{q.id}: {unknown[:3]} are not training document ids")
                if not (q.answer and q.answer.strip()):
                    raise ValueError(f"eval_data: benchmark query {q.id} needs its expected answer")
            extra = sorted(set(self.benchmark.relevant) - {q.id for q in self.eval_data})
            if extra:
                raise ValueError(f"benchmark.relevant: {extra[:3]} are not evaluation question ids")
        return self


def run_key_error(key: str, run_id: UUID) -> str | None:
    """Why ``key`` is not an object-store key of run ``run_id`` (None when it is): every key
    a message names must lie under ``runs/{run_id}/``, so a message about one run can make
    no service read or announce another run's files (nor, through ``..``, anything else)."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != RUNS_ROOT or parts[1] != str(run_id):
        return f"key {key!r} is not under this run's prefix runs/{run_id}/"
    if any(part in ("", ".", "..") or "\\" in part for part in parts[2:]):
        return f"key {key!r} has an empty, '.' or '..' segment"
    return None


def _check_keys(run_id: UUID, keys: dict[str, str]) -> None:
    for where, key in keys.items():
        error = run_key_error(key, run_id)
        if error:
            raise ValueError(f"{where}: {error}")


class CheckpointRef(Contract):
    """A saved LoRA adapter: the PEFT files live under ``key`` in the object store."""

    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    key: str
    learning_rate: float
    loss: float | None = None


# --------------------------------------------------------------------------- job requests
class TrainRequest(Message):
    run_id: UUID
    owner_id: UUID | None = None
    spec: RunSpec


class InferenceRequest(Message):
    run_id: UUID
    owner_id: UUID | None = None
    spec: RunSpec
    #: The fine-tuned adapter (the last checkpoint); its key lies under ``runs/{run_id}/``.
    adapter: CheckpointRef

    @model_validator(mode="after")
    def _key_in_run(self) -> "InferenceRequest":
        _check_keys(self.run_id, {"adapter.key": self.adapter.key})
        return self


class InfluenceRequest(Message):
    run_id: UUID
    owner_id: UUID | None = None
    spec: RunSpec
    #: Validated by the influence service, so an unknown name becomes a failure event
    #: (hence a plain string here and in events, not ``InfluenceMethodId``).
    method: str
    #: Their keys lie under ``runs/{run_id}/``.
    checkpoints: list[CheckpointRef] = Field(min_length=1)

    @model_validator(mode="after")
    def _keys_in_run(self) -> "InfluenceRequest":
        _check_keys(self.run_id, {f"checkpoints.{i}.key": c.key for i, c in enumerate(self.checkpoints)})
        return self


class RuntimeParams(Contract):
    """Hyperparameters that can change safely while a run trains; applied at the next
    optimizer step. (Rank, target modules, batch size or quantization would change the
    model or the data order, so they cannot.)"""

    learning_rate: float | None = Field(None, gt=0, le=1.0)
    weight_decay: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _something(self) -> "RuntimeParams":
        if self.learning_rate is None and self.weight_decay is None:
            raise ValueError("name at least one parameter to change")
        for name in ("learning_rate", "weight_decay"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number")
        return self


class ControlMessage(Message):
    """On ``inflab.v1.run.{run_id}.control`` (kept in the control stream, so a trainer that
    starts or resumes later still sees every instruction, in order)."""

    request_id: UUID = Field(default_factory=uuid4)
    run_id: UUID
    action: Literal["update_params", "cancel", "cancel_validation"]
    params: RuntimeParams | None = None
    #: The validation a ``cancel_validation`` stops.
    validation_id: UUID | None = None
    time: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _params_for_update(self) -> "ControlMessage":
        if self.action == "update_params" and self.params is None:
            raise ValueError("update_params needs params")
        if self.action == "cancel_validation" and self.validation_id is None:
            raise ValueError("cancel_validation needs validation_id")
        return self


# --------------------------------------------------------------------------- validation
class ValidationSettings(Contract):
    """How a run's attributions are checked against retraining (``POST
    /api/runs/{id}/validations``): ``subsets`` random subsets of the training pairs, each a
    fraction ``alpha`` of them, for the linear datamodeling score; per evaluation question
    a retraining without its ``removal_k`` most positive pairs under each method, and one
    without ``removal_k`` random pairs, for the removal test. Subset ``s`` is drawn from
    seed ``seed + s``."""

    subsets: int = Field(32, ge=2, le=1024)
    alpha: float = Field(0.5, gt=0, lt=1)
    removal_k: int = Field(3, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class RetrainingJob(Contract):
    """One retraining of a validation: the run's configuration on its training pairs
    except those at ``drop`` (indices into the run's ``training_data``; what is left out
    is the shorter list for removals, and half of it for LDS subsets)."""

    key: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9\-]+$")]
    drop: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)


class ValidationTarget(Contract):
    """The answer whose loss a retraining measures for one evaluation question: its
    reference answer, or (where it has none) the fine-tuned model's answer."""

    eval_id: str
    answer: _TEXT
    #: ``reference`` or ``fine_tuned``.
    source: Literal["reference", "fine_tuned"]


class TaskResourceRequest(Contract):
    """What each retraining asks Ray for (from the run's model tier)."""

    num_cpus: float = Field(1.0, gt=0, le=1024)
    num_gpus: float = Field(0.0, ge=0, le=64)


class ValidationRequest(Message):
    """On ``inflab.v1.validation.request`` (the trainer takes it): retrain the run's
    configuration as listed and measure each target's loss after each retraining."""

    run_id: UUID
    owner_id: UUID | None = None
    validation_id: UUID
    spec: RunSpec
    retrainings: list[RetrainingJob] = Field(min_length=1, max_length=100_000)
    targets: list[ValidationTarget] = Field(min_length=1)
    resources: TaskResourceRequest = Field(default_factory=TaskResourceRequest)


class RetrainingRecord(Contract):
    """One retraining's measured losses (``targets`` order), and where and how long it ran."""

    key: str
    losses: list[float | None]
    node_id: str
    node_ip: str
    pid: int
    seconds: float
    train_seconds: float | None = None


class ValidationLosses(Contract):
    """A validation's result: every retraining's measured losses."""

    validation_id: UUID
    eval_ids: list[str]
    retrainings: list[RetrainingRecord]
    wall_seconds: float


# --------------------------------------------------------------------------- events
#: The run id of events computed outside a run (a test, a notebook): a stage's service
#: publishes its job's events under its own run id whatever they carry.
NO_RUN = UUID(int=0)


class EventBase(Message):
    event_id: UUID = Field(default_factory=uuid4)
    run_id: UUID
    stage: Stage
    #: Influence events name their method, so parallel methods are told apart (a plain
    #: string: the failure of a request naming an unknown method names it too).
    method: str | None = None
    time: datetime = Field(default_factory=_now)


class StatusEvent(EventBase):
    kind: Literal["status"] = "status"
    status: RunStatus
    error: str | None = None


class ProgressEvent(EventBase):
    kind: Literal["progress"] = "progress"
    fraction: float = Field(ge=0, le=1)
    step: int = 0
    total: int = 0
    epoch: float | None = None
    eta_s: float | None = None
    message: str | None = None


class MetricEvent(EventBase):
    kind: Literal["metric"] = "metric"
    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    #: Resident memory of the training process, MiB.
    memory_mb: float | None = None
    #: Allocated accelerator memory, MiB, where there is one.
    gpu_memory_mb: float | None = None


class PredictionSample(Contract):
    prompt_id: str
    prompt: str
    #: The reference answer where the sampled prompt has one.
    ground_truth: str | None = None
    prediction: str


class PredictionEvent(EventBase):
    """The current model's greedy answers to the run's sampled prompts at one point."""

    kind: Literal["prediction"] = "prediction"
    step: int
    epoch: float
    samples: list[PredictionSample]
    #: The arithmetic the answers were decoded in: "float32", "bfloat16" or "nf4" (QLoRA's
    #: 4-bit base). None from producers that predate the field.
    precision: Precision | None = None


class ParamsEvent(EventBase):
    """A runtime hyperparameter change, and the optimizer step it took effect at."""

    kind: Literal["params"] = "params"
    request_id: UUID | None = None
    changes: dict[str, dict[str, float]]  # name -> {"old": ..., "new": ...}
    effective_step: int


class CheckpointEvent(EventBase):
    kind: Literal["checkpoint"] = "checkpoint"
    #: Its key lies under ``runs/{run_id}/``.
    checkpoint: CheckpointRef

    @model_validator(mode="after")
    def _key_in_run(self) -> "CheckpointEvent":
        _check_keys(self.run_id, {"checkpoint.key": self.checkpoint.key})
        return self


class LogEvent(EventBase):
    kind: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str


class AnswerScore(Contract):
    """One model's answer against the evaluation question's reference answer. The text
    scores compare normalised text (``inflab.analysis.answer_scores``: lower-case, without
    punctuation, the articles a/an/the and extra whitespace, as SQuAD does)."""

    #: The normalised answer equals the normalised reference.
    exact_match: bool
    #: The normalised reference appears in the normalised answer as a run of whole words.
    contains_reference: bool
    #: Harmonic mean of the word precision and recall against the reference (SQuAD's F1).
    token_f1: float = Field(ge=0, le=1)
    #: Mean log-probability per token of the reference answer (its tokens and the end of
    #: the turn) given the prompt this model answered, teacher-forced; rises as a model
    #: learns the answer even while its greedy text misses it. None where not computed.
    ref_logprob: float | None = None


class AnswerScores(Contract):
    """Scores of the three answers to a question that has a reference answer."""

    base: AnswerScore
    few_shot: AnswerScore
    #: None when there is no fine-tuned model (a preview before training).
    fine_tuned: AnswerScore | None = None


class Answer(Contract):
    eval_id: str
    question: str
    reference: str | None = None
    base: str
    few_shot: str
    fine_tuned: str
    #: Only for questions with a reference answer; None from producers before scores.
    scores: AnswerScores | None = None


class TrainingSummary(Contract):
    steps: int
    epochs: int
    tokens: int
    duration_s: float
    checkpoints: list[CheckpointRef]
    #: Sequences cut to max_seq_length (reported, never silent).
    truncated: int = 0


class RankedTrainingPair(Contract):
    train_id: str
    score: float


class TopInfluences(Contract):
    """One evaluation question's most influential training pairs: ``positive`` by score
    descending (only scores > 0), ``negative`` by score ascending (only scores < 0)."""

    eval_id: str
    positive: list[RankedTrainingPair] = Field(default_factory=list)
    negative: list[RankedTrainingPair] = Field(default_factory=list)


class InfluenceStats(Contract):
    """Basic statistics of a whole influence matrix, over its finite cells (None when it
    has none); ``nonfinite`` counts the other cells."""

    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nonfinite: int = Field(0, ge=0)


class InfluenceMatrix(Contract):
    """One variant of a method's influence matrix: its summary, and where the full matrix
    lives. ``scores`` is inline only for small matrices (at most
    ``INFLAB_INFLUENCE_INLINE_MAX_CELLS`` cells, evaluation questions x training pairs), so
    a result event stays far below the NATS payload limit whatever the run's size; without
    it, read the ``variant`` tensor of the safetensors file at ``key`` (or ask the
    gateway's results API, which always returns the full matrix)."""

    method: str
    #: ``raw`` or ``normalized`` (TracIn: unit-normalised gradients; DataInf and EK-FAC:
    #: cosine in the method's inverse-Hessian metric; ``args["normalization"]`` says which).
    variant: Variant = "raw"
    eval_ids: list[str]
    train_ids: list[str]
    #: ``[len(eval_ids), len(train_ids)]`` (filled from the ids when a producer omits it).
    shape: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=2, max_length=2)
    #: ``scores[i][j]``: influence of training pair j on evaluation question i. None when
    #: the matrix is too large to travel inline: it is then only in the object store.
    scores: list[list[float]] | None = None
    #: Where the full matrix lives in the object store (safetensors; tensor ``variant``).
    key: str
    args: dict = Field(default_factory=dict)
    #: Per evaluation question (row order) its top-k positive and negative training pairs;
    #: k is the run's ``influence_args[method]["top_k"]`` (default 5).
    top_k: list[TopInfluences] | None = None
    stats: InfluenceStats | None = None

    @model_validator(mode="after")
    def _consistent_shape(self) -> "InfluenceMatrix":
        expected = [len(self.eval_ids), len(self.train_ids)]
        if self.shape is None:
            self.shape = expected
        elif self.shape != expected:
            raise ValueError(f"shape {self.shape} != [len(eval_ids), len(train_ids)] {expected}")
        if self.scores is not None and (
            len(self.scores) != expected[0] or any(len(row) != expected[1] for row in self.scores)
        ):
            raise ValueError(f"scores must be {expected[0]} rows of {expected[1]} values (eval_ids x train_ids)")
        return self


class ResultEvent(EventBase):
    """A stage's result: the train stage's ``training``, the inference stage's ``answers``,
    an influence method's ``influence``. Every object-store key in it lies under
    ``runs/{run_id}/``. The inference stage's ``answers`` may come in several result
    events (each under the NATS payload limit), every evaluation question in exactly one;
    the stage's ``completed`` status follows the last."""

    kind: Literal["result"] = "result"
    training: TrainingSummary | None = None
    answers: list[Answer] | None = None
    influence: InfluenceMatrix | None = None
    validation: ValidationLosses | None = None

    @model_validator(mode="after")
    def _keys_in_run(self) -> "ResultEvent":
        keys = {}
        if self.training is not None:
            keys |= {f"training.checkpoints.{i}.key": c.key for i, c in enumerate(self.training.checkpoints)}
        if self.influence is not None:
            keys["influence.key"] = self.influence.key
        _check_keys(self.run_id, keys)
        return self


RunEvent = Annotated[
    Union[
        StatusEvent,
        ProgressEvent,
        MetricEvent,
        CheckpointEvent,
        LogEvent,
        ResultEvent,
        PredictionEvent,
        ParamsEvent,
    ],
    Field(discriminator="kind"),
]
run_event_adapter: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)

#: Every event model, in the order of ``RunEvent``.
EVENT_MODELS: tuple[type[EventBase], ...] = get_args(get_args(RunEvent)[0])

#: Every event kind (the discriminator of ``RunEvent``), in its order.
EVENT_KINDS: tuple[str, ...] = tuple(get_args(model.model_fields["kind"].annotation)[0] for model in EVENT_MODELS)
EventKind = Literal[EVENT_KINDS]  # type: ignore[valid-type]
#: Event kind -> its model.
EVENT_MODEL_BY_KIND: dict[str, type[EventBase]] = dict(zip(EVENT_KINDS, EVENT_MODELS))


def parse_event(data: bytes | str) -> RunEvent:
    return run_event_adapter.validate_json(data)


class RunSubmission(Message):
    """A pipeline's run, published on ``inflab.v1.run.submit`` with a personal API token in
    the ``Authorization: Bearer <token>`` header. The gateway creates the experiment and
    the run, owned by the token's user, and queues it; a bad token or experiment ends on
    ``inflab.v1.deadletter.gateway`` with the reason. See docs/pipelines.md."""

    #: Becomes the run's id, so a resubmitted message makes one run, and the submitter
    #: knows the id to follow before the gateway answers.
    submission_id: UUID = Field(default_factory=uuid4)
    #: The experiment, exactly as the body of ``POST /api/experiments`` (ExperimentCreate
    #: in /openapi.json): name, training_data, eval_data and optional run settings.
    experiment: dict


class SubmissionOutcome(Message):
    """The gateway's answer to a ``RunSubmission``, on ``inflab.v1.submission.{submission_id}``
    (core NATS: listen before submitting). It names no token and no experiment text: every
    pipeline credential may read every outcome."""

    submission_id: UUID
    accepted: bool
    #: The run (its id is the submission id) when accepted.
    run_id: UUID | None = None
    #: Why it was refused, as in the dead letter the gateway also writes.
    reason: str | None = None
    time: datetime = Field(default_factory=_now)


class DeadLetter(Message):
    """What a service publishes when it rejects a message it cannot process. A rejected
    job request fails its run's stage with the reason (the gateway consumes the
    dead-letter stream)."""

    letter_id: UUID = Field(default_factory=uuid4)
    service: str
    subject: str
    reason: str
    deliveries: int = 1
    #: The rejected message as JSON with its training and evaluation text left out
    #: (questions, answers, prompts: a note of their size instead), cut to
    #: ``INFLAB_DEADLETTER_PAYLOAD_MAX_CHARS``; a message that is not JSON is only described.
    payload: str
    #: The run the rejected message names (its ``run_id``), if any.
    run_id: UUID | None = None
    #: An influence request's method, so the run's stage can be told.
    method: str | None = None
    time: datetime = Field(default_factory=_now)
