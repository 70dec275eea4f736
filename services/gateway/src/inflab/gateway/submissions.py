"""Runs submitted over NATS by pipelines: the gateway's durable work-queue consumer of
``inflab.v1.run.submit``.

A ``RunSubmission`` carries a personal API token in its ``Authorization: Bearer`` header.
The gateway checks the token (system path: it does not know the user yet), then, as that
user under row level security, creates the experiment and the run (the submission id is
the run id) and queues the train request, exactly as ``POST /api/experiments`` and
``POST /api/experiments/{id}/runs`` would (a ``submit`` token then reads the run over HTTP).
A missing, unknown, expired, revoked or read-only token, an invalid experiment, a refused
quota or a submission id another user's run has are dead-lettered at once on
``inflab.v1.deadletter.gateway`` with the reason. Either way the gateway answers on
``inflab.v1.submission.{submission_id}`` (``SubmissionOutcome``: accepted, or the reason),
which the pipeline credential may read: it may read no run event and no dead letter.

A redelivered submission (the gateway died after committing the run, before the ack)
finds its run and answers again that it was accepted; the run itself is in Postgres, where
the dispatcher (:mod:`inflab.gateway.dispatch`) hands it on whether or not the first
delivery got that far. While Postgres is unreachable the consumer waits for it, keeping the
message, rather than spending its redeliveries and dead-lettering it.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi.exceptions import RequestValidationError
from nats.aio.msg import Msg
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.bus import Bus, Rejected
from inflab.core.db.models import Experiment, Run
from inflab.core.messages import RunSubmission, SubmissionOutcome
from inflab.core.settings import Settings
from inflab.gateway.auth.sessions import caller_for_api_token
from inflab.gateway.auth.rls import session_for
from inflab.gateway.consumers import consume_until_stopped
from inflab.gateway.dbwait import until_database_answers
from inflab.gateway.dispatch import Dispatcher
from inflab.gateway.launch import RunRefused, start_run
from inflab.gateway.quotas import QuotaExceeded
from inflab.gateway.schemas import ExperimentCreate
from inflab.gateway.specs import validated_spec

log = logging.getLogger(__name__)


def bearer_token(msg: Msg) -> str | None:
    for name, value in (msg.headers or {}).items():
        if name.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _errors(errors: list[dict]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or '(experiment)'}: {e.get('msg')}"
                     for e in errors[:5])


class RunSubmissions:
    def __init__(
        self,
        bus: Bus,
        sessionmaker: async_sessionmaker[AsyncSession],
        user_sessionmaker: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        settings: Settings,
    ) -> None:
        self.bus = bus
        self.sessionmaker = sessionmaker
        self.user_sessionmaker = user_sessionmaker
        self.dispatcher = dispatcher
        self.settings = settings
        self.durable = bus.subjects.durable("gateway_submissions")

    async def handle(self, submission: RunSubmission, msg: Msg) -> None:
        """Make the submission's run, then answer on its outcome subject (a refusal too,
        before the bus dead-letters it)."""
        try:
            await self.make_run(submission, msg)
        except Rejected as exc:
            await self.answer(SubmissionOutcome(submission_id=submission.submission_id, accepted=False,
                                                reason=str(exc)))
            raise
        await self.answer(SubmissionOutcome(submission_id=submission.submission_id, accepted=True,
                                           run_id=submission.submission_id))

    async def answer(self, outcome: SubmissionOutcome) -> None:
        try:
            await self.bus.nc.publish(self.bus.subjects.submission_outcome(outcome.submission_id),
                                      outcome.model_dump_json().encode())
        except Exception:  # best effort: the run (or the dead letter) is the record
            log.warning("could not answer submission %s", outcome.submission_id, exc_info=True)

    async def make_run(self, submission: RunSubmission, msg: Msg) -> None:
        token = bearer_token(msg)
        if token is None:
            raise Rejected("no API token: send one in the 'Authorization: Bearer <token>' header")

        async def look_up() -> tuple:
            async with self.sessionmaker() as session:
                caller = await caller_for_api_token(session, token)
                existing = await session.get(Run, submission.submission_id) if caller is not None else None
                return caller, existing

        caller, existing = await until_database_answers(look_up, "a run submission")
        if caller is None:
            raise Rejected("unknown or revoked API token, or expired")
        if caller.scope == "read":
            raise Rejected("this API token is read-only (scope 'read'): submitting needs 'submit' or 'full'")
        if existing is not None:
            if existing.owner_id != caller.user.id:
                raise Rejected(f"submission_id {submission.submission_id} is taken: use a new one")
            log.info("submission %s already made its run; answering again", submission.submission_id)
            return
        try:
            body = ExperimentCreate.model_validate(submission.experiment)
            spec = validated_spec(body.spec_fields(self.settings), self.settings, self.bus.max_event_bytes)
        except ValidationError as exc:
            raise Rejected(f"invalid experiment: {_errors(exc.errors())}") from None
        except RequestValidationError as exc:
            raise Rejected(f"invalid experiment: {_errors(list(exc.errors()))}") from None

        async def create() -> Run:
            async with session_for(self.user_sessionmaker, caller.user.id) as session:
                experiment = Experiment(
                    owner_id=caller.user.id,
                    name=body.name,
                    description=body.description,
                    model_id=spec.model_id,
                    training_data=[pair.model_dump(mode="json") for pair in spec.training_data],
                    eval_data=[question.model_dump(mode="json") for question in spec.eval_data],
                    hyperparams=spec.hyperparams.model_dump(mode="json"),
                    influence_methods=spec.influence_methods,
                    few_shot_k=spec.few_shot_k,
                    max_new_tokens=spec.max_new_tokens,
                    predictions=spec.predictions.model_dump(mode="json"),
                    api_token_id=caller.api_token_id,
                )
                session.add(experiment)
                await session.flush()
                started = await start_run(session, self.dispatcher, self.settings, caller.user.id, experiment,
                                           run_id=submission.submission_id)
                return started.run

        try:
            run = await until_database_answers(create, "a run submission")
        except QuotaExceeded as exc:
            raise Rejected(exc.message) from None
        except RunRefused as exc:
            raise Rejected(f"invalid experiment: {exc}") from None
        log.info("run %s submitted over NATS for user %s", run.id, caller.user.id)

    async def run(self, stop: asyncio.Event, retry_s: float = 1.0) -> None:
        """Consume until ``stop``, restarting the consumer if it fails (as the persister does)."""
        await consume_until_stopped(self.bus, self.bus.subjects.run_submit, RunSubmission, self.handle, stop,
                                    durable=self.durable, stream=self.bus.subjects.submissions_stream,
                                    retry_s=retry_s, log=log, what="run submissions consumer")
