"""Request and response bodies of the HTTP API.

Run inputs reuse the message contract's models (``TrainingPair``, ``EvalQuestion``,
``Hyperparams``, ``RunSpec``), so the API and the bus accept exactly the same things and
share their limits. Every list has a ``max_length`` (refused while parsing, before any
validator runs), and every validator is linear in its input.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from inflab.core.influence_methods import ARGS_MODELS, InfluenceArgs
from inflab.core.messages import (
    MAX_EVAL_QUESTIONS,
    MAX_INFLUENCE_METHODS,
    MAX_TRAINING_PAIRS,
    Answer,
    BenchmarkSpec,
    CheckpointRef,
    EvalQuestion,
    Hyperparams,
    PredictionSettings,
    RunSpec,
    TrainingPair,
    TrainingSummary,
)
from inflab.core.settings import Settings
from inflab.core.vocabulary import Precision, Quantization, RunStatus
from inflab.gateway.influence import InfluenceMatrixOut


#: Deeper JSON than this is refused: no run input nests beyond a few levels, and walking
#: (or echoing) a pathologically deep document must not exhaust the stack.
MAX_JSON_DEPTH = 32


def _bad_text(text: str) -> bool:
    return "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text)


def _unstorable_text(value: Any) -> tuple[tuple, str] | None:
    """Where in a raw body (and why) something cannot be stored: a string holding what
    Postgres cannot store (NUL) or what is not Unicode at all (a lone surrogate, which
    JSON's ``\\ud800`` escape can smuggle in), or nesting deeper than ``MAX_JSON_DEPTH``.
    Iterative, so no depth can exhaust the interpreter's stack."""
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str):
            if _bad_text(item):
                return loc, "text must be valid Unicode without NUL characters"
        elif isinstance(item, dict | list):
            if len(loc) >= MAX_JSON_DEPTH:
                return loc, f"nested deeper than {MAX_JSON_DEPTH} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str) and _bad_text(key):
                    return loc, "text must be valid Unicode without NUL characters"
                stack.append((child, (*loc, key)))
    return None


class Body(BaseModel):
    # A misspelt field ("learning_rte") is refused, not silently replaced by a default.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        found = _unstorable_text(data)
        if found is not None:
            loc, problem = found
            raise ValueError(f"{'.'.join(map(str, loc)) or 'body'}: {problem}")
        return data


# --------------------------------------------------------------------------- experiments
def _default_ids(items: Any, prefix: str) -> Any:
    """Number the rows sent without an id ``tr00, tr01, ...`` by position, skipping ids
    other rows of the same list already have (a list may mix both: rows imported with
    their ids beside rows typed in the editor)."""
    if not isinstance(items, list):
        return items
    taken = {item.get("id") for item in items if isinstance(item, dict) and item.get("id") is not None}
    numbered = []
    n = 0  # only moves forward, so numbering stays linear in the list's length
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") is None:
            n = max(n, i)
            while f"{prefix}{n:02d}" in taken:
                n += 1
            taken.add(f"{prefix}{n:02d}")
            item = {**item, "id": f"{prefix}{n:02d}"}
        numbered.append(item)
    return numbered


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
    training_data: list[TrainingPairIn] = Field(min_length=1, max_length=MAX_TRAINING_PAIRS)
    eval_data: list[EvalQuestionIn] = Field(min_length=1, max_length=MAX_EVAL_QUESTIONS)
    model_id: Annotated[str, Field(max_length=512)] | None = None
    hyperparams: Hyperparams = Field(default_factory=Hyperparams)
    influence_methods: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=MAX_INFLUENCE_METHODS
    )
    few_shot_k: int | None = None
    max_new_tokens: int | None = None
    #: Prediction tracking during training; limits from settings
    #: (``max_prediction_samples``, ``min_prediction_step_interval``).
    predictions: PredictionSettings = Field(default_factory=PredictionSettings)
    #: Per-method influence arguments (``GET /api/methods`` lists them with their defaults
    #: and ranges), e.g. ``{"datainf": {"damping": 0.01}}``; what is not named takes its
    #: default, and every method's arguments are stored, used or not.
    influence_args: InfluenceArgs = Field(default_factory=InfluenceArgs)
    #: A benchmark experiment (``kind: benchmark``): the training pairs are its documents
    #: (text in ``answer``), the evaluation questions its queries, and this holds the
    #: ground truth and the function tokens. ``inflab bench run`` fills it from a set.
    benchmark: BenchmarkSpec | None = None

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
    def _unique_ids(cls, items: list[TrainingPairIn] | list[EvalQuestionIn] | None) -> list | None:
        if items is None:  # evaluation questions an estimate was not given
            return items
        counts = Counter(item.id for item in items)
        duplicates = sorted(i for i, n in counts.items() if n > 1 and i is not None)
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
            "predictions": self.predictions.model_dump(),
            "influence_args": self.influence_args.model_dump(),
            "benchmark": None if self.benchmark is None else self.benchmark.model_dump(),
        }
        if self.influence_methods is not None:
            fields["influence_methods"] = self.influence_methods
        return fields


def _partial(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field optional and no defaults: a PATCH names what changes,
    the rest is kept (and the merged whole is validated by the contract)."""
    fields = {
        name: ((Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation) | None, None)
        for name, field in model.model_fields.items()
    }
    return create_model(f"{model.__name__}Patch", __config__=ConfigDict(extra="forbid"), **fields)


HyperparamsPatch = _partial(Hyperparams)
PredictionSettingsPatch = _partial(PredictionSettings)


#: Changes to the influence arguments, per method (every method of the contract): the
#: arguments named replace the stored ones (null included: ``{"datainf": {"damping": null}}``
#: goes back to the per-layer default), the rest are kept; a method set to null goes back
#: to its defaults.
InfluenceArgsPatch = create_model(
    "InfluenceArgsPatch",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Changes to the influence arguments, per method: the arguments named replace the stored ones "
            "(null included), the rest are kept; a method set to null goes back to its defaults.",
    **{method: (_partial(model) | None, None) for method, model in ARGS_MODELS.items()},
)


class ExperimentUpdate(Body):
    """Changes to an experiment: only the fields named change. ``training_data`` and
    ``eval_data`` are replaced whole; ``hyperparams`` and ``predictions`` are merged
    key by key, ``influence_args`` method by method and then argument by argument (see
    ``InfluenceArgsPatch``). Runs already started keep the settings they were started with."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    description: Annotated[str, Field(max_length=10_000)] | None = None
    training_data: list[TrainingPairIn] | None = Field(None, min_length=1, max_length=MAX_TRAINING_PAIRS)
    eval_data: list[EvalQuestionIn] | None = Field(None, min_length=1, max_length=MAX_EVAL_QUESTIONS)
    model_id: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    hyperparams: HyperparamsPatch | None = None  # type: ignore[valid-type]
    influence_methods: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=MAX_INFLUENCE_METHODS
    )
    few_shot_k: int | None = None
    max_new_tokens: int | None = None
    predictions: PredictionSettingsPatch | None = None  # type: ignore[valid-type]
    influence_args: InfluenceArgsPatch | None = None

    _fill_ids = model_validator(mode="before")(ExperimentCreate._fill_ids.__func__)
    _unique_ids = field_validator("training_data", "eval_data")(ExperimentCreate._unique_ids.__func__)


#: The rows an import fills: training pairs or evaluation questions.
ImportTarget = Literal["training_data", "eval_data"]
#: The file formats an import reads.
ImportFormat = Literal["jsonl", "csv"]


class ImportRequest(Body):
    """A file of training pairs or evaluation questions, as text. JSONL: one object per
    line with ``question``, ``answer`` and optionally ``id``. CSV: a header row naming
    those columns (an empty ``answer`` cell in evaluation data means no reference)."""

    target: ImportTarget
    format: ImportFormat
    content: str
    #: ``append`` adds the rows after the experiment's own; ``replace`` swaps them in.
    mode: Literal["append", "replace"] = "append"
    #: Import the valid rows even when some are not (they are reported either way).
    skip_invalid: bool = False


class ImportParseRequest(Body):
    """A file to read into rows without storing anything (the editor appends them to rows
    not saved yet). The same formats, rules and per-row errors as an experiment's import."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    target: ImportTarget
    """What the rows are: training pairs or evaluation questions."""
    format: ImportFormat
    """JSONL: one object per line with ``question``, ``answer`` and optionally ``id``. CSV: a
    header row naming those columns (an empty ``answer`` cell in evaluation data means no
    reference)."""
    content: str
    """The file's text."""
    existing_ids: list[str] = Field(default_factory=list, max_length=100_000)
    """Ids of the rows already in the page: a file row that repeats one is reported (as an
    import into a stored experiment would), and rows without an id are numbered after
    them."""


class RowError(BaseModel):
    #: Line of the file the row starts on (1-based; a CSV header is line 1).
    row: int
    #: The column or field at fault, when there is one.
    field: str | None
    message: str


class ImportReport(BaseModel):
    target: ImportTarget
    #: Rows read from the file (blank lines are not rows).
    rows: int
    #: Rows added to the experiment (0 when nothing was applied).
    imported: int
    #: Whether the experiment changed.
    applied: bool
    errors: list[RowError]
    #: More errors than listed (the first ones are).
    errors_truncated: bool = False
    #: The experiment's size after the import.
    training_pairs: int
    eval_questions: int


class ImportParseReport(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    target: ImportTarget
    """What the rows are."""
    rows: int
    """Rows read from the file (blank lines are not rows)."""
    training_data: list[TrainingPair]
    """The valid rows when ``target`` is ``training_data`` (ids given or numbered), in file order."""
    eval_data: list[EvalQuestion]
    """The valid rows when ``target`` is ``eval_data`` (ids given or numbered), in file order."""
    errors: list[RowError]
    """One per problem, by line: the rows named here are not in the lists above."""
    errors_truncated: bool = False
    """More errors than listed (the first ones are)."""


class LastRun(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    id: UUID
    """The run's id (``GET /api/runs/{id}``)."""
    status: RunStatus
    """queued, running, completed, failed or cancelled."""
    progress: float
    """Overall, in [0, 1]."""
    loss: float | None
    """The latest training loss reported."""
    created_at: datetime
    """When it was started."""
    finished_at: datetime | None
    """When it reached its final status."""


class ExperimentSummary(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    id: UUID
    name: str
    description: str
    model_id: str
    training_pairs: int
    """Number of training pairs."""
    eval_questions: int
    """Number of evaluation questions."""
    created_at: datetime
    updated_at: datetime
    run_count: int
    """Runs started from this experiment."""
    last_run: LastRun | None
    """The most recently started run, if any."""


class ExperimentOut(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

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
    predictions: PredictionSettings
    influence_args: InfluenceArgs
    """Every method's arguments, defaults filled in (``GET /api/methods`` describes them)."""
    benchmark: BenchmarkSpec | None = None
    """Set for a benchmark experiment: the ground truth and the function tokens."""
    created_at: datetime
    updated_at: datetime


# --------------------------------------------------------------------------- estimates
class EstimateRequest(ExperimentCreate):
    """The run to estimate, as an experiment's body, so a form can be sent as it is. Only
    the model, the training pairs and the hyperparameters count; the name and the
    evaluation questions may be left out."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    eval_data: list[EvalQuestionIn] | None = Field(None, max_length=MAX_EVAL_QUESTIONS)


class MemoryEstimate(BaseModel):
    """Peak training memory in GiB, per run (over all devices)."""

    lora: float
    qlora: float


class Estimate(BaseModel):
    model_id: str
    tier: Literal["small", "medium", "large", "xl"]
    parameters: int
    #: The device a run of this tier uses (``cpu`` where the deployment has no GPU for it).
    gpu: str
    gpu_count: int
    memory_gb: MemoryEstimate
    #: The requested quantization, which the duration, device count and cost are for.
    quantization: Quantization
    training_tokens: int
    tokens_per_s: float
    estimated_duration_s: float
    price_per_hour_usd: float | None
    estimated_cost_usd: float | None
    assumptions: list[str]


# --------------------------------------------------------------------------- runs
class RunQueued(BaseModel):
    run_id: UUID
    status: RunStatus


class RunOut(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    id: UUID
    experiment_id: UUID | None
    status: RunStatus
    progress: float
    """Overall, weighted over stages (train 0.6, inference 0.2, influence 0.2), in [0, 1]."""
    current_epoch: float | None
    loss: float | None
    eta_s: float | None
    stages: dict[str, RunStatus]
    """Status per stage key: ``train``, ``inference``, ``influence.<method>``. A stage's
    failure shows here at once; the run's own ``status`` is final only once every stage
    has ended (stages that can no longer run, after a failed or cancelled training, end
    ``cancelled``)."""
    stage_errors: dict[str, str]
    """Why a stage failed (or was cancelled, when it said), per stage key, as it happened."""
    error: str | None
    """Once the run has ended failed: each failed stage and its error,
    ``"<stage> failed: <error>"``, joined by ``"; "`` (for a cancelled run, the reasons
    stages gave for their cancellation, if any)."""
    config: RunSpec
    """The RunSpec as submitted."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    estimate: Estimate | None
    """Made at submission; None when the model's size could not be told."""
    actual_duration_s: float | None
    """Once the run has ended: started_at to finished_at, in seconds."""
    actual_training_duration_s: float | None
    """Once training has ended: the part of actual_duration_s spent training."""
    actual_cost_usd: float | None
    """actual_duration_s priced as the estimate priced its devices."""


class LossPoint(BaseModel):
    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    memory_mb: float | None = None
    gpu_memory_mb: float | None = None


class TrainingResults(BaseModel):
    loss_curve: list[LossPoint]
    checkpoints: list[CheckpointRef]
    #: The trainer's summary, once training has finished.
    summary: TrainingSummary | None


class AnswerColumnScores(BaseModel):
    """One column (model) of the answers table, over the evaluation questions with a
    reference answer that were scored for it."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    questions: int
    """Questions counted (with a reference answer and scores for this model)."""
    exact_match_rate: float | None
    """Share of those answers that equal the reference (normalised text); None without any."""
    contains_reference_rate: float | None
    """Share of those answers that contain the reference (normalised text)."""
    mean_token_f1: float | None
    """Mean word F1 against the reference."""
    mean_ref_logprob: float | None
    """Mean over the questions of the reference answer's mean log-probability per token."""


class AnswerAggregates(BaseModel):
    """Per-column aggregates of the answers' scores (see ``Answer.scores``)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    base: AnswerColumnScores
    """The base model's answers."""
    few_shot: AnswerColumnScores
    """The few-shot prompted base model's answers."""
    fine_tuned: AnswerColumnScores
    """The fine-tuned model's answers."""


class BaselineMatrix(BaseModel):
    """A lexical baseline matrix, shaped like an influence matrix: ``scores[i][j]`` is the
    BM25 score of training pair j (question + answer) for evaluation question i's query."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    method: Literal["bm25"]
    """The baseline's name."""
    variant: Literal["question", "question_reference"]
    """The query: the evaluation question, or the question and its reference answer (the
    question alone where it has none)."""
    eval_ids: list[str]
    """Rows: the evaluation questions, in the run's order."""
    train_ids: list[str]
    """Columns: the training pairs, in the run's order."""
    shape: list[int]
    """``[len(eval_ids), len(train_ids)]``."""
    scores: list[list[float]]
    """``scores[i][j]`` >= 0; larger is more word overlap."""
    args: dict[str, Any]
    """How the scores were made (formula, k1, b, tokens, query)."""


class RunResults(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    run_id: UUID
    status: RunStatus
    answers: list[Answer]
    """Base, few-shot and fine-tuned answers per evaluation question, with their scores
    against the reference answer where there is one."""
    answer_scores: AnswerAggregates
    """Per-column aggregates of the answers' scores."""
    influence: list[InfluenceMatrixOut]
    """One influence matrix per method and variant, always with its scores."""
    baselines: list[BaselineMatrix]
    """The lexical baseline beside the attributions: BM25, one matrix per query variant."""
    training: TrainingResults


class PredictionOut(BaseModel):
    step: int
    #: As the trainer reported it: 1.5 is half-way through the second epoch.
    epoch: float
    prompt_id: str
    prompt: str
    ground_truth: str | None
    prediction: str
    #: The arithmetic the answer was decoded in ("float32", "bfloat16", "nf4"). The row at
    #: the end of training is the inference stage's fine-tuned answer, in float32.
    precision: Precision | None = None


class PredictionPage(BaseModel):
    #: Rows matching the filter, over all pages.
    total: int
    limit: int
    offset: int
    items: list[PredictionOut]


class PredictionEpoch(BaseModel):
    #: 1-based epoch the samples were taken in (0: before the first step).
    epoch: int
    count: int


# --------------------------------------------------------------------------- control
class ControlAccepted(BaseModel):
    """A control message is on the run's control subject; its effect comes back as an event
    (``params`` with this ``request_id``, or the training stage's ``cancelled`` status)."""

    request_id: UUID
    run_id: UUID
    action: Literal["update_params", "cancel"]
    #: The run's status after the request (``cancelled`` at once when no trainer had it).
    run_status: RunStatus


# --------------------------------------------------------------------------- health
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    #: ``ok`` or the reason, per dependency: postgres, nats, persister.
    checks: dict[str, str]
