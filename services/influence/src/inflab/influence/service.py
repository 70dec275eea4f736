"""The influence service: translates influence requests into influence jobs on Ray and the
resulting matrices into result events. No maths here (see methods/).

A request that cannot be run (a method this worker does not have, no training pairs, no
evaluation questions, no checkpoints, bad method arguments) ends the stage with a failed
status event naming the cause, without touching Ray; a job that fails (missing or
unreadable checkpoint, ...) ends it likewise with the stage it failed in. The worker goes
on with the next request either way.

Requests are parsed with :class:`InfluenceJobRequest`, the contract's ``InfluenceRequest``
with empty lists allowed: a hand-published request without training pairs then gets a
failure event on its run rather than only a dead letter.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from pydantic import Field

from inflab.core.bus import Bus
from inflab.core.compute import describe_error
from inflab.core.events import StageEvents
from inflab.core.influence_methods import stored_model_key
from inflab.core.messages import CheckpointRef, EvalQuestion, InfluenceMatrix, InfluenceRequest, RunSpec, TrainingPair
from inflab.core.settings import Settings
from inflab.core.worker import require_allowed_model
from inflab.influence.job import influence_job, method_arguments
from inflab.influence.methods import METHODS
from inflab.influence.methods.base import StageFailed

log = logging.getLogger(__name__)

SERVICE = "influence"
STAGE = "influence"


class _LenientRunSpec(RunSpec):
    training_data: list[TrainingPair] = Field(default_factory=list, max_length=100_000)
    eval_data: list[EvalQuestion] = Field(default_factory=list, max_length=10_000)
    # Checked per method by ``method_arguments``, so a bad value fails the method's stage
    # naming the argument instead of dead-lettering the request.
    influence_args: dict[str, Any] = Field(default_factory=dict)


class InfluenceJobRequest(InfluenceRequest):
    """``InfluenceRequest`` as this service reads it (same JSON; empty lists reach the
    handler so that they are reported on the run)."""

    spec: _LenientRunSpec
    checkpoints: list[CheckpointRef] = Field(default_factory=list)


#: The model the worker parses requests with (see ``__main__``).
REQUEST_MODEL = InfluenceJobRequest


def named_models(request: InfluenceRequest) -> list[str]:
    """The model ids a representation method's ``old_model``/``new_model`` name (not the
    object-store paths, ``store:models/...``, which the contract checks)."""
    given = request.spec.influence_args
    args = given.get(request.method) if isinstance(given, dict) else None
    if not isinstance(args, dict):
        return []
    return [v for k in ("old_model", "new_model")
            if isinstance(v := args.get(k), str) and stored_model_key(v) is None]


def request_problem(request: InfluenceRequest) -> str | None:
    """Why ``request`` cannot be run, or None."""
    if request.method not in METHODS:
        return f"unknown influence method {request.method!r}; known: {sorted(METHODS)}"
    missing = [what for what, items in (("training pairs", request.spec.training_data),
                                         ("evaluation questions", request.spec.eval_data),
                                         ("checkpoints", request.checkpoints)) if not items]
    if missing:
        return f"checking the request: it has no {' and no '.join(missing)}"
    try:
        method_arguments(request)
    except StageFailed as exc:
        return str(exc)
    return None


class InfluenceService:
    def __init__(self, bus: Bus, settings: Settings):
        self.bus = bus
        self.settings = settings

    async def on_influence_request(self, request: InfluenceRequest, msg: Msg | None = None) -> None:
        require_allowed_model(request.spec.model_id, self.settings)
        for name in named_models(request):
            require_allowed_model(name, self.settings)
        events = StageEvents(self.bus, request.run_id, STAGE, method=request.method)
        problem = request_problem(request)
        if problem is not None:
            log.warning("influence request for run %s refused: %s", request.run_id, problem)
            await events.status("failed", error=problem)
            return
        await events.status("running")
        ok, matrices = await events.run_job(
            influence_job,
            request.model_dump(mode="json"),
            self.settings.objects_url,
            str(self.settings.models_dir),
            self.settings.influence_inline_max_cells,
            num_cpus=self.settings.influence_num_cpus,
            num_gpus=self.settings.influence_num_gpus,
            failure_text=_failure_text,
        )
        if not ok:
            return
        if await publish_results(events, matrices):
            await events.status("completed")


async def publish_results(events: StageEvents, matrices: list[InfluenceMatrix]) -> bool:
    """Publish one result event per variant; False (and the stage failed, saying why) when
    one is over the server's ``max_payload``. Only ids long and many enough get there (the
    matrix itself is inline only when small): a job that cannot succeed is not retried."""
    for result in matrices:
        try:
            await events.publish("result", influence=result)
        except MaxPayloadError:
            size = len(events.build("result", influence=result).model_dump_json().encode())
            error = (f"publishing the {result.variant} result: the event is {size} bytes, over the NATS "
                     f"server's max_payload ({events.bus.nc.max_payload}); the matrix is stored at {result.key}")
            log.error("run %s: %s", events.run_id, error)
            await events.status("failed", error=error)
            return False
    return True


def _failure_text(exc: BaseException) -> str:
    """The stage-named message of a failed job (without the exception class of the
    wrapper), or the innermost error."""
    text = describe_error(exc)
    prefix = f"{StageFailed.__name__}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def make_handler(bus: Bus, settings: Settings):
    return InfluenceService(bus, settings).on_influence_request
