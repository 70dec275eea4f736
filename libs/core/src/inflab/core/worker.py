"""The shell of every worker service: connect the bus, join Ray, consume one request
subject until SIGTERM/SIGINT, stop cleanly, and serve the worker's Prometheus metrics
(:mod:`inflab.core.worker_metrics`). Each service supplies only its handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from inflab.core.bus import Bus, Rejected
from inflab.core.compute import ensure_ray
from inflab.core.logging import setup_logging
from inflab.core.model_ids import ModelIdRefused, check_model_id
from inflab.core.settings import Settings, get_settings
from inflab.core.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)


def require_allowed_model(model_id: str, settings: Settings) -> None:
    """Refuse a job whose model the gateway would have refused (a request that did not come
    through it): dead-lettered with the reason, and the gateway fails the run's stage."""
    try:
        check_model_id(model_id, settings)
    except ModelIdRefused as exc:
        raise Rejected(f"model_id: {exc}") from None


def crash_on(marker: str, handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """The fault hook of the poison-message test (``INFLAB_TEST_FAULT_CRASH_ON``): the
    process dies on every delivery of a request mentioning ``marker``, before handling it,
    as it would on a request that crashes the interpreter or gets it OOM-killed."""

    async def handle(request: BaseModel, msg) -> None:
        if marker.encode() in msg.data:
            log.error("test fault hook: SIGKILL on a request mentioning %r", marker)
            os.kill(os.getpid(), signal.SIGKILL)
        await handler(request, msg)

    return handle


async def serve(
    service: str,
    stage: str,
    model: type[BaseModel],
    make_handler: Callable[[Bus, Settings], Callable[..., Awaitable[None]]],
    settings: Settings,
    stop: asyncio.Event | None = None,
    durable: str | None = None,
    metrics: WorkerMetrics | None = None,
) -> None:
    """Consume ``stage`` requests with the handler ``make_handler(bus, settings)`` returns,
    until ``stop`` is set (or a signal arrives when run as a process). ``durable``: the
    consumer's name when it is not the service's own (a follow-up stage's, see
    :data:`inflab.core.nats_permissions.WORKER_FOLLOW_UPS`). ``metrics``: the process's
    metrics, served by the caller (:func:`main`); without them, this stage's own are
    served on ``INFLAB_METRICS_PORT`` (when set) while it runs."""
    stop = stop or asyncio.Event()
    bus = await Bus.connect(settings, service)
    await asyncio.to_thread(ensure_ray, settings)
    handler = make_handler(bus, settings)
    if settings.test_fault_crash_on:
        handler = crash_on(settings.test_fault_crash_on, handler)
    own_metrics = metrics is None
    metrics = WorkerMetrics(stage) if metrics is None else metrics.for_stage(stage)
    handler = metrics.instrument(bus, handler, settings.max_deliver)
    durable = bus.subjects.durable(durable or service)
    poller: asyncio.Task | None = None
    log.info("%s consuming %s", service, bus.subjects.request(stage))
    try:
        if own_metrics:
            serve_metrics(service, metrics, settings)
        poller = asyncio.create_task(
            metrics.poll_consumer(bus.js, bus.subjects.jobs_stream, durable, stop, settings.metrics_poll_s)
        )
        await bus.consume(
            bus.subjects.request(stage),
            model,
            handler,
            stop,
            durable=durable,
            signed=True,
        )
    finally:
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if own_metrics:
            metrics.close()
        await bus.close()


def serve_metrics(service: str, metrics: WorkerMetrics, settings: Settings) -> None:
    """Serve ``metrics`` on ``INFLAB_METRICS_HOST:INFLAB_METRICS_PORT`` (nothing for port 0)."""
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port, settings.metrics_token.get_secret_value())
        log.info("%s metrics on http://%s:%d/metrics", service, settings.metrics_host, settings.metrics_port)


def main(service: str, stage: str, model: type[BaseModel], make_handler, follow_ups: tuple = ()) -> None:
    """Process entry point (``python -m inflab.<service>``). ``follow_ups``: ``(stage,
    model, make_handler)`` of further request subjects the service takes, each with its
    own durable consumer, side by side with its own stage."""
    from inflab.core.nats_permissions import follow_up_durable

    settings = get_settings()
    setup_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Join Ray before taking the signals: ray.init installs its own SIGTERM handler,
        # which would otherwise replace our clean shutdown with a stack trace.
        await asyncio.to_thread(ensure_ray, settings)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # One port per process, whatever stages it consumes: each is a ``stage`` label.
        metrics = WorkerMetrics(stage)
        serve_metrics(service, metrics, settings)
        tasks = [asyncio.create_task(serve(service, stage, model, make_handler, settings, stop, metrics=metrics))]
        tasks += [
            asyncio.create_task(serve(service, extra, extra_model, extra_handler, settings, stop,
                                      durable=follow_up_durable(service, extra), metrics=metrics))
            for extra, extra_model, extra_handler in follow_ups
        ]
        await asyncio.wait([*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        # A job in flight is cancelled: its message is nak'ed, so a replica (or this
        # service after a restart) takes it up again.
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        metrics.close()

    asyncio.run(run())
