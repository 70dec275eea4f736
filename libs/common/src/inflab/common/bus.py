"""The JetStream bus every service speaks: streams, typed publish, and the pull-consumer
worker loop with bounded redelivery and a dead-letter subject.

Patterns, named as nats.py names them: a *work-queue* stream for job requests (each
service has one durable pull consumer filtered on its request subject, shared by its
replicas), a *limits* stream for run events, *publish deduplication* through the
``Nats-Msg-Id`` header (nats-py 2.x has no message-id argument), ``in_progress()``
heartbeats for long jobs, ``nak(delay=)`` for retries and ``term()`` for poison messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from inflab.common.messages import DeadLetter, EventBase
from inflab.common.settings import Settings
from inflab.common.subjects import STAGES, Subjects

log = logging.getLogger(__name__)


class Rejected(Exception):
    """Raised by a handler for a message that no redelivery can make acceptable (a bad
    token, an invalid payload): it is dead-lettered at once with this reason."""


M = TypeVar("M", bound=BaseModel)
Handler = Callable[[M, Msg], Awaitable[None]]


class Bus:
    def __init__(self, nc: NATS, subjects: Subjects, settings: Settings, service: str):
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects
        self.settings = settings
        self.service = service

    @classmethod
    async def connect(cls, settings: Settings, service: str) -> "Bus":
        if not settings.nats_url:
            raise RuntimeError("INFLAB_NATS_URL is not set")
        nc = await nats.connect(
            settings.nats_url,
            name=f"inflab-{service}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        bus = cls(nc, Subjects.from_settings(settings), settings, service)
        await bus.ensure_streams()
        return bus

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()

    # ------------------------------------------------------------------ streams
    async def ensure_streams(self) -> None:
        """Create the streams if missing (idempotent; every service may call it)."""
        s = self.subjects
        wanted = [
            StreamConfig(
                name=s.jobs_stream,
                subjects=[s.request(stage) for stage in STAGES],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=3600.0,
            ),
            StreamConfig(
                name=s.submissions_stream,
                subjects=[s.run_submit],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=3600.0,
            ),
            StreamConfig(name=s.events_stream, subjects=[s.all_events], duplicate_window=3600.0),
            StreamConfig(name=s.control_stream, subjects=[s.all_controls], duplicate_window=3600.0),
            StreamConfig(name=s.dead_letter_stream, subjects=[s.all_dead_letters]),
        ]
        for config in wanted:
            try:
                await self.js.stream_info(config.name)
            except NotFoundError:
                with contextlib.suppress(Exception):  # a concurrent starter may win the race
                    await self.js.add_stream(config)

    # ------------------------------------------------------------------ publish
    async def publish(self, subject: str, message: BaseModel, msg_id: str | None = None) -> bool:
        """Publish and await the stream's ack. Returns False when JetStream reports the
        message a duplicate of one with the same id (a retried publish)."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.js.publish(subject, message.model_dump_json().encode(), headers=headers)
        return not ack.duplicate

    async def publish_event(self, event: EventBase) -> None:
        await self.publish(
            self.subjects.event(event.run_id, event.kind), event, msg_id=str(event.event_id)
        )

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        deliveries = 1
        with contextlib.suppress(Exception):
            deliveries = msg.metadata.num_delivered
        letter = DeadLetter(
            service=self.service,
            subject=msg.subject,
            reason=reason,
            deliveries=deliveries,
            payload=msg.data.decode("utf-8", errors="replace")[:65536],
        )
        log.error("rejected message on %s: %s", msg.subject, reason)
        try:
            await self.publish(self.subjects.dead_letter(self.service), letter)
        except Exception:  # the dead-letter stream being down must not take the worker down
            log.exception("could not publish dead letter")

    # ------------------------------------------------------------------ consume
    async def consume(
        self,
        subject: str,
        model: type[M],
        handler: Handler,
        stop: asyncio.Event,
        durable: str | None = None,
        stream: str | None = None,
        fetch_timeout: float = 1.0,
    ) -> None:
        """Run ``handler`` on every message of a durable pull consumer until ``stop`` is set.

        A message that does not parse as ``model`` is dead-lettered at once with the
        validation error as reason. A handler error naks with a delay; after
        ``max_deliver`` deliveries the message is dead-lettered. The loop never raises
        for a bad message.
        """
        durable = durable or self.subjects.durable(f"{self.service}_{subject.split('.')[-2]}")
        stream = stream or self.subjects.jobs_stream
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            # The server-side bound is one above ours, so the last delivery is still ours
            # to dead-letter.
            max_deliver=self.settings.max_deliver + 1,
            filter_subject=subject,
        )
        sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(1, timeout=fetch_timeout)
                except NatsTimeout:
                    continue
                except Exception:
                    if stop.is_set():
                        break
                    log.exception("fetch failed; retrying")
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self._handle(msg, model, handler)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg, model: type[M], handler: Handler) -> None:
        try:
            parsed = model.model_validate_json(msg.data)
        except ValidationError as exc:
            await self.dead_letter(msg, f"malformed {model.__name__}: {_short(exc)}")
            await msg.term()
            return
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await handler(parsed, msg)
        except asyncio.CancelledError:
            heartbeat.cancel()
            # Shutting down mid-job: let another replica (or our restart) take it.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Rejected as exc:
            heartbeat.cancel()
            await self.dead_letter(msg, str(exc))
            await msg.term()
            return
        except Exception as exc:
            heartbeat.cancel()
            deliveries = msg.metadata.num_delivered
            log.exception("handler failed (delivery %d)", deliveries)
            if deliveries >= self.settings.max_deliver:
                await self.dead_letter(msg, f"failed {deliveries} times: {exc!r}")
                await msg.term()
            else:
                await msg.nak(delay=self.settings.nak_delay_s)
            return
        heartbeat.cancel()
        await msg.ack()

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(self.settings.ack_wait_s / 3, 0.5)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            while True:
                await asyncio.sleep(interval)
                await msg.in_progress()


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
