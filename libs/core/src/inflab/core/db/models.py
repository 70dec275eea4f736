"""Postgres schema (SQLAlchemy 2 declarative). Changes go through Alembic in ``migrations/``.

Every row belongs to a user, directly (``owner_id``, ``user_id``) or through its run;
``auth_throttles`` (rate-limit counters) belongs to the gateway alone. Row level security
covers every table (migrations 0004 and 0006; a test checks none is left out).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from inflab.core.messages import EventKind
from inflab.core.vocabulary import EventStage, InfluenceMethodId, Precision, RunStatus, ValidationStatus, Variant


class Base(DeclarativeBase):
    pass


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = _uuid_pk()
    #: Stored lower-cased: one account per address however it is typed.
    email: Mapped[str] = mapped_column(String(320), unique=True, nullable=False)
    #: argon2id; None for an account that only signs in through a provider.
    password_hash: Mapped[str | None] = mapped_column(Text)
    #: When the owner followed a verification link (or a provider vouched for the
    #: address); None: not verified.
    email_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: What the app calls them; None: their email.
    display_name: Mapped[str | None] = mapped_column(String(100))
    #: The web app's colour theme: "dark" or "light".
    theme: Mapped[str] = mapped_column(String(8), nullable=False, default="dark", server_default="dark")
    created_at: Mapped[datetime] = _created()


class Identity(Base):
    """A sign-in provider's account linked to a user (``google`` and its ``sub``)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("provider", "subject", name="uq_identities_provider_subject"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    created_at: Mapped[datetime] = _created()


class AuthSession(Base):
    """A signed-in session: the browser's cookie or an API client's bearer access token.
    Only the token's SHA-256 is stored."""

    __tablename__ = "auth_sessions"
    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    #: The double-submit CSRF token a cookie-authenticated request must echo in a header.
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: The session's last request (written at most once a minute); idle sessions end.
    last_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class ApiToken(Base):
    """A personal API token for pipelines: valid until revoked or expired, stored as its
    SHA-256."""

    __tablename__ = "api_tokens"
    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    #: The token's first characters, so a list can tell tokens apart without revealing them.
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _created()
    #: "full", "read" (GET only) or "submit" (submit runs and read those runs only).
    scope: Mapped[str] = mapped_column(String(16), nullable=False, default="full", server_default="full")
    #: None: until revoked.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Written at most once a minute.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EmailToken(Base):
    """A single-use link mailed to an account's address: ``verify_email`` or
    ``reset_password``. Only the token's SHA-256 is stored."""

    __tablename__ = "email_tokens"
    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    #: The address it was sent to: a verification is for that address only.
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthThrottle(Base):
    """Rate-limit counters shared by every gateway replica (sign-in, registration, mails).
    ``key`` is the SHA-256 of the rule and what it counts (an email, a client address), so
    no address is stored in the clear."""

    __tablename__ = "auth_throttles"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    window_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    #: Attempts get 429 until then.
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Times the limit was passed in a row; each doubles the next back-off.
    strikes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    model_id: Mapped[str] = mapped_column(String(512), nullable=False)
    training_data: Mapped[list] = mapped_column(JSONB, nullable=False)
    eval_data: Mapped[list] = mapped_column(JSONB, nullable=False)
    hyperparams: Mapped[dict] = mapped_column(JSONB, nullable=False)
    influence_methods: Mapped[list] = mapped_column(JSONB, nullable=False)
    few_shot_k: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    max_new_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=48)
    #: PredictionSettings. ``{}`` (rows from before the column) means the contract's defaults.
    predictions: Mapped[dict] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    #: The API token that created it, if one did: a ``submit`` token reads only the runs
    #: of the experiments it created.
    api_token_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="SET NULL"), index=True, nullable=True
    )
    #: InfluenceArgs: every method's arguments, resolved. ``{}`` (rows from before the
    #: column) means the contract's defaults.
    influence_args: Mapped[dict] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    #: BenchmarkSpec of a benchmark experiment (ground truth, function tokens); NULL for a
    #: question/answer experiment.
    benchmark: Mapped[dict | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("owner_id", "idempotency_key", name="uq_runs_owner_idempotency_key"),)
    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True, nullable=True
    )
    status: Mapped[RunStatus] = mapped_column(String(16), nullable=False, default="queued")
    #: The RunSpec as submitted (the run's config snapshot).
    config: Mapped[dict] = mapped_column(JSONB, nullable=False)
    #: Status per stage key ("train", "inference", "influence.tracin"); a training stage
    #: may also be "checkpointing" while the run is running.
    stages: Mapped[dict[str, RunStatus]] = mapped_column(JSONB, nullable=False, default=dict)
    #: Why a stage failed (or was cancelled, when it said so), per stage key.
    stage_errors: Mapped[dict] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    #: Each stage key's latest reported fraction and the producer's time of that report
    #: (``{"train": {"fraction": 0.4, "time": "<ISO 8601>"}}``): what ``progress`` is
    #: computed from, kept here so an event never re-reads the run's progress events.
    stage_progress: Mapped[dict] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    current_epoch: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The gateway's estimate at submission (tier, GPU, memory, duration, cost, assumptions);
    #: None when the model's size could not be told.
    estimate: Mapped[dict | None] = mapped_column(JSONB)
    #: Filled in when the run ends: wall-clock from started_at to finished_at, the part of
    #: it spent training, and the duration priced as the estimate priced it.
    actual_duration_s: Mapped[float | None] = mapped_column(Float)
    actual_training_duration_s: Mapped[float | None] = mapped_column(Float)
    actual_cost_usd: Mapped[float | None] = mapped_column(Float)
    #: When the gateway's dispatcher published the train request; None while the run waits
    #: in Postgres (the outbox: see inflab.gateway.dispatch).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The subject prefix whose train requests the run goes to (one per deployment; test
    #: runs sharing a database keep their runs apart by it).
    dispatch_queue: Mapped[str | None] = mapped_column(String(128))
    #: The ``Idempotency-Key`` header the run was started with, unique per owner.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


class RunEventRow(Base):
    """Every event of a run, in arrival order. ``id`` is the SSE event id (monotonic)."""

    __tablename__ = "run_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    #: The publisher's event id: a redelivered event is stored once.
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True, nullable=False)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[EventKind] = mapped_column(String(16), nullable=False)
    stage: Mapped[EventStage] = mapped_column(String(16), nullable=False)
    method: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _created()


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_metrics_run_step"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    epoch: Mapped[float] = mapped_column(Float, nullable=False)
    loss: Mapped[float] = mapped_column(Float, nullable=False)
    learning_rate: Mapped[float] = mapped_column(Float, nullable=False)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    samples_per_s: Mapped[float | None] = mapped_column(Float)
    memory_mb: Mapped[float | None] = mapped_column(Float)
    gpu_memory_mb: Mapped[float | None] = mapped_column(Float)


class Prediction(Base):
    """One sampled prompt's greedy answer at one sampling point of training."""

    __tablename__ = "predictions"
    # Also the index every read uses (run, then step and prompt order), so no separate
    # run_id index.
    __table_args__ = (
        UniqueConstraint("run_id", "step", "prompt_id", name="uq_predictions_run_step_prompt"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    #: As reported: fractional within an epoch (1.5 = half-way through the second).
    epoch: Mapped[float] = mapped_column(Float, nullable=False)
    prompt_id: Mapped[str] = mapped_column(String(128), nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    ground_truth: Mapped[str | None] = mapped_column(Text)
    prediction: Mapped[str] = mapped_column(Text, nullable=False)
    #: "float32", "bfloat16" or "nf4"; null for rows from before it was reported.
    precision: Mapped[Precision | None] = mapped_column(String(16))


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoints_run_step"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float, nullable=False)


class AnswerRow(Base):
    """The three answers to one evaluation question (stored name: ``generations``)."""

    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("run_id", "eval_id", name="uq_generations_run_eval"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    eval_id: Mapped[str] = mapped_column(String(128), nullable=False)
    question: Mapped[str] = mapped_column(Text, nullable=False)
    reference: Mapped[str | None] = mapped_column(Text)
    base: Mapped[str] = mapped_column(Text, nullable=False)
    few_shot: Mapped[str] = mapped_column(Text, nullable=False)
    fine_tuned: Mapped[str] = mapped_column(Text, nullable=False)
    #: AnswerScores (per model: exact_match, contains_reference, token_f1, ref_logprob)
    #: for a question with a reference answer; null otherwise, or for rows stored before.
    scores: Mapped[dict | None] = mapped_column(JSONB)


class InfluenceMatrixRow(Base):
    """One variant of a method's influence matrix (stored name: ``influence_results``)."""

    __tablename__ = "influence_results"
    __table_args__ = (
        UniqueConstraint("run_id", "method", "variant", name="uq_influence_run_method_variant"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    method: Mapped[InfluenceMethodId] = mapped_column(String(64), nullable=False)
    variant: Mapped[Variant] = mapped_column(String(32), nullable=False)
    eval_ids: Mapped[list] = mapped_column(JSONB, nullable=False)
    train_ids: Mapped[list] = mapped_column(JSONB, nullable=False)
    #: The matrix when its result event carried it inline (small ones); ``[]`` when the
    #: event carried it only by key: then it is the ``variant`` tensor of the safetensors
    #: file at ``key`` in the object store (the results API reads it from there).
    scores: Mapped[list] = mapped_column(JSONB, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    args: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    #: Per evaluation question, the strongest positive and negative training pairs
    #: (``TopInfluences`` of the message contract), so lists read without the matrix.
    top_k: Mapped[list | None] = mapped_column(JSONB)


class Validation(Base):
    """A counterfactual validation of a run's attributions (LDS and removal test against
    retraining). The summary lives here; every retraining's losses, the plan and the
    per-question figures are in the object store at ``detail_key``."""

    __tablename__ = "validations"
    id: Mapped[uuid.UUID] = _uuid_pk()
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    status: Mapped[ValidationStatus] = mapped_column(String(32), nullable=False, default="queued")
    #: ValidationSettings as asked (defaults filled in).
    settings: Mapped[dict] = mapped_column(JSONB, nullable=False)
    #: What each retraining keeps and answers (``inflab.analysis.validation.Plan`` as JSON).
    plan: Mapped[dict] = mapped_column(JSONB, nullable=False)
    #: The cost estimate shown before it was started.
    estimate: Mapped[dict | None] = mapped_column(JSONB)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    #: Per matrix (``tracin/raw``, ``bm25/question``...): LDS with its interval and the
    #: removal test, once completed.
    summary: Mapped[dict | None] = mapped_column(JSONB)
    detail_key: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
