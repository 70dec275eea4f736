"""The JetStream bus every service speaks: streams, typed publish, and the pull-consumer
worker loop with bounded redelivery and a dead-letter subject.

Patterns, named as nats.py names them: a *work-queue* stream for job requests (each
service has one durable pull consumer filtered on its request subject, shared by its
replicas), *limits* streams for run events, control messages and dead letters (their
``max_age`` and ``max_bytes`` from settings), *publish deduplication* through the
``Nats-Msg-Id`` header (nats-py 2.x has no message-id argument), ``in_progress()``
heartbeats for long jobs, ``nak(delay=)`` for retries and ``term()`` for poison messages.

A handler's failure is the message's (naked, dead-lettered after ``max_deliver``), except
:class:`BusUnavailable`: NATS itself could not be reached while the handler published, so
the message is given back at once (nak) for a redelivery to do the work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats import errors as nats_errors
from nats.errors import TimeoutError as NatsTimeout
from nats.js import errors as js_errors
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from inflab.core.deadletters import trim_payload
from inflab.core.job_signing import SIGNATURE_HEADER, BadSignature, JobSigner, JobVerifier
from inflab.core.messages import DeadLetter, EventBase
from inflab.core.nats_permissions import inbox_prefix
from inflab.core.settings import Settings
from inflab.core.subjects import REQUEST_STAGES, Subjects
from inflab.core.vocabulary import RequestStage

log = logging.getLogger(__name__)


class Rejected(Exception):
    """Raised by a handler for a message that no redelivery can make acceptable (a bad
    token, an invalid payload): it is dead-lettered at once with this reason."""


class Deferred(Exception):
    """Raised by a handler for a message that is someone else's for now (another replica
    holds its run's lease): neither acknowledged nor given back, and no heartbeat. If the
    other one stops, the server redelivers the message after the ack wait."""


class BusUnavailable(Exception):
    """NATS could not take a message (disconnected, no JetStream answer in time): an
    infrastructure error, not the job's. The consumer gives the message back (nak)."""


#: Errors of a publish that a later attempt may not meet (the connection, the server).
TRANSIENT_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    nats_errors.TimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionDrainingError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.NoServersError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
)


def stream_configs(subjects: Subjects, settings: Settings) -> list[StreamConfig]:
    """Every stream the services use, with the retention settings ask for."""

    def limits(max_age_s: float, max_bytes: int, window_s: float) -> dict:
        # 0 in settings means no limit: the server's own "unlimited" (max_age 0, max_bytes -1).
        # The server wants the duplicate window within max_age.
        return {"max_age": max_age_s or None, "max_bytes": max_bytes or -1,
                "duplicate_window": min(window_s, max_age_s) if max_age_s else window_s}

    s = subjects
    return [
        StreamConfig(
            name=s.jobs_stream,
            subjects=[s.request(stage) for stage in REQUEST_STAGES],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=3600.0,
        ),
        StreamConfig(
            name=s.submissions_stream,
            subjects=[s.run_submit],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=3600.0,
        ),
        StreamConfig(name=s.events_stream, subjects=[s.all_events],
                     **limits(settings.events_max_age_s, settings.events_max_bytes, 3600.0)),
        StreamConfig(name=s.control_stream, subjects=[s.all_controls],
                     **limits(settings.control_max_age_s, settings.control_max_bytes, 3600.0)),
        StreamConfig(name=s.dead_letter_stream, subjects=[s.all_dead_letters],
                     **limits(settings.deadletter_max_age_s, settings.deadletter_max_bytes, 120.0)),
    ]


#: Room left in a message for its headers (message id, and whatever a deployment adds).
HEADERS_ROOM = 8 * 1024

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[M, Msg], Awaitable[None]]


class Bus:
    def __init__(self, nc: NATS, subjects: Subjects, settings: Settings, service: str):
        self.nc = nc
        self.js = nc.jetstream()
        self.subjects = subjects
        self.settings = settings
        self.service = service
        key = settings.job_signing_key.get_secret_value()
        self._signer = JobSigner(key) if key else None
        self._verifier = JobVerifier(settings.job_verify_key) if settings.job_verify_key else None

    @classmethod
    async def connect(cls, settings: Settings, service: str, *, create_streams: bool = False) -> "Bus":
        """Connect as ``service`` (its credential and inbox prefix, see
        :func:`connect_options`). ``create_streams``: create or update the product's
        streams, the gateway's job at start-up (workers wait for them)."""
        nc = await nats.connect(**connect_options(settings, service))
        bus = cls(nc, Subjects.from_settings(settings), settings, service)
        if create_streams:
            try:
                await bus.ensure_streams()
            except BaseException:
                await bus.close()
                raise
        return bus

    @property
    def max_event_bytes(self) -> int:
        """The largest message body to publish: the server's ``max_payload`` less room for
        headers (1 MB when the server has not said)."""
        return (self.nc.max_payload or 1024 * 1024) - HEADERS_ROOM

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()

    # ------------------------------------------------------------------ streams
    async def ensure_streams(self) -> None:
        """Create the streams if missing, and bring an existing stream's subjects and
        retention (``max_age``, ``max_bytes``) up to date (idempotent; the gateway's job at
        start-up, and the only role allowed to)."""
        from inflab.core.leases import ensure_bucket

        # The trainers' leases on runs (inflab.core.leases) expire after the ack wait.
        await ensure_bucket(self.js, self.subjects.leases_bucket, self.settings.ack_wait_s)
        for config in stream_configs(self.subjects, self.settings):
            try:
                info = await self.js.stream_info(config.name)
            except NotFoundError:
                try:
                    await self.js.add_stream(config)
                except Exception as exc:
                    # A concurrent starter may have won the race; anything else (no room
                    # in the store for max_bytes, say) must not leave us running without it.
                    with contextlib.suppress(NotFoundError):
                        await self.js.stream_info(config.name)
                        continue
                    raise RuntimeError(f"could not create stream {config.name}: {exc!r}") from exc
                continue
            current = info.config
            if sorted(current.subjects or []) != sorted(config.subjects):
                # A stream made by an older version (event subjects gained the stage).
                log.warning("stream %s: subjects %s -> %s", config.name, current.subjects, config.subjects)
                current = current.evolve(subjects=config.subjects)
                await self.js.update_stream(current)
            if (current.max_age or None) != config.max_age or (current.max_bytes or -1) != config.max_bytes:
                try:
                    await self.js.update_stream(current.evolve(max_age=config.max_age, max_bytes=config.max_bytes,
                                                               duplicate_window=config.duplicate_window))
                    log.info("stream %s: retention set to max_age %s s, max_bytes %s",
                             config.name, config.max_age, config.max_bytes)
                except Exception:  # e.g. a shrunk limit the server refuses: keep running
                    log.exception("could not update the retention of stream %s", config.name)

    # ------------------------------------------------------------------ publish
    async def publish(
        self, subject: str, message: BaseModel, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> bool:
        """Publish and await the stream's ack. Returns False when JetStream reports the
        message a duplicate of one with the same id (a retried publish)."""
        return await self._publish_bytes(subject, message.model_dump_json().encode(), msg_id, headers)

    async def _publish_bytes(
        self, subject: str, body: bytes, msg_id: str | None, headers: dict[str, str] | None = None
    ) -> bool:
        headers = dict(headers or {})
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        ack = await self.js.publish(subject, body, headers=headers or None)
        return not ack.duplicate

    async def publish_request(self, stage: RequestStage, request: BaseModel, msg_id: str) -> bool:
        """Queue a job request for ``stage``, signed with the gateway's key (see
        :mod:`inflab.core.job_signing`); only the gateway has one."""
        if self._signer is None:
            raise RuntimeError("INFLAB_JOB_SIGNING_KEY is not set: job requests are signed by the gateway")
        subject = self.subjects.request(stage)
        body = request.model_dump_json().encode()
        return await self._publish_bytes(subject, body, msg_id, {SIGNATURE_HEADER: self._signer.sign(subject, body)})

    async def publish_event(self, event: EventBase) -> None:
        """Publish a run event, retrying (deduplicated by its event id) while NATS is away
        for up to ``bus_publish_retry_s``; then :class:`BusUnavailable`."""
        subject = self.subjects.event(event.run_id, event.stage, event.kind)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.bus_publish_retry_s
        delay = 0.1
        while True:
            try:
                await self.publish(subject, event, msg_id=str(event.event_id))
                return
            except TRANSIENT_ERRORS as exc:
                if loop.time() + delay > give_up:
                    raise BusUnavailable(f"could not publish a {event.kind} event: {exc!r}") from exc
                log.warning("publishing a %s event failed (%r); retrying in %.1f s", event.kind, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        deliveries = 1
        with contextlib.suppress(Exception):
            deliveries = msg.metadata.num_delivered
        trimmed = trim_payload(msg.data, self.settings.deadletter_payload_max_chars)
        letter = DeadLetter(
            service=self.service,
            subject=msg.subject,
            reason=reason[:4000],
            deliveries=deliveries,
            payload=trimmed.text,
            run_id=trimmed.run_id,
            method=trimmed.method,
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
        signed: bool = False,
    ) -> None:
        """Run ``handler`` on every message of a durable pull consumer until ``stop`` is set.

        With ``signed`` (job requests), a message without the gateway's signature is
        dead-lettered at once and never reaches the handler. A message that does not parse
        as ``model`` is dead-lettered at once with the validation error as reason. A
        handler error naks with a delay; after ``max_deliver`` deliveries the message is
        dead-lettered. The loop never raises for a bad message.

        The stream is the gateway's to create: until it exists, this waits for it.
        """
        if signed and self._verifier is None:
            raise RuntimeError("INFLAB_JOB_VERIFY_KEY is not set: workers run only job requests the gateway signed")
        durable = durable or self.subjects.durable(f"{self.service}_{subject.split('.')[-2]}")
        stream = stream or self.subjects.jobs_stream
        sub = await self.pull_subscription(subject, durable, stream, stop)
        if sub is None:
            return
        # aclosing: the subscription ends with the loop, also when the handler is cancelled.
        async with contextlib.aclosing(fetched(sub, stop, fetch_timeout=fetch_timeout)) as batches:
            async for msgs in batches:
                for msg in msgs:
                    await self._handle(msg, model, handler, signed)

    async def pull_subscription(self, subject: str, durable: str, stream: str, stop: asyncio.Event):
        """The durable pull subscription :meth:`consume` would use (same consumer
        settings), for a caller that fetches and settles messages in batches itself;
        waits for the stream like ``consume``. None if ``stop`` is set first."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s,
            # The server-side bound is one above ours, so the last delivery is still ours
            # to dead-letter.
            max_deliver=self.settings.max_deliver + 1,
            filter_subject=subject,
        )
        return await self._subscribe_when_stream_exists(subject, durable, stream, config, stop)

    async def _subscribe_when_stream_exists(self, subject, durable, stream, config, stop: asyncio.Event):
        waiting = False
        while not stop.is_set():
            try:
                with contextlib.suppress(NotFoundError):
                    info = await self.js.consumer_info(stream, durable)
                    if info.config.filter_subject != subject:
                        # A durable made by an older version: creating it again updates it.
                        log.warning("consumer %s: filter %s -> %s", durable, info.config.filter_subject, subject)
                        await self.js.add_consumer(stream, config)
                return await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
            except NotFoundError:
                if not waiting:
                    log.warning("stream %s does not exist yet (the gateway creates it); waiting", stream)
                    waiting = True
                # Polled: JetStream has no notification for a stream being created.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        return None

    async def _handle(self, msg: Msg, model: type[M], handler: Handler, signed: bool = False) -> None:
        if signed:
            try:
                self._verifier.verify(msg.subject, msg.data, (msg.headers or {}).get(SIGNATURE_HEADER))
            except BadSignature as exc:
                await self.dead_letter(msg, str(exc))
                await msg.term()
                return
        deliveries = _deliveries(msg)
        if deliveries > self.settings.max_deliver:
            # Past the limit before the handler even runs: the handler never finished with
            # this message on any earlier delivery (the process died, say, as it does on a
            # poison message), so nothing after it did its nak or its dead letter. The
            # decision has to be taken here, on the delivery after the last one.
            await self.dead_letter(msg, f"delivered {deliveries} times, more than INFLAB_MAX_DELIVER "
                                        f"({self.settings.max_deliver}): its handler never finished with it "
                                        "(the process handling it stopped on every delivery)")
            with contextlib.suppress(Exception):
                await msg.term()
            return
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
        except Deferred as exc:
            heartbeat.cancel()
            log.warning("left a message on %s (delivery %d) to another consumer: %s",
                        msg.subject, _deliveries(msg), exc)
            return
        except Rejected as exc:
            heartbeat.cancel()
            await self.dead_letter(msg, str(exc))
            await msg.term()
            return
        except BusUnavailable as exc:
            heartbeat.cancel()
            deliveries = msg.metadata.num_delivered
            log.warning("NATS unavailable while handling a message (delivery %d): %s", deliveries, exc)
            if deliveries >= self.settings.max_deliver:
                await self.dead_letter(msg, f"NATS unavailable in all {deliveries} deliveries: {exc}")
                with contextlib.suppress(Exception):
                    await msg.term()
            else:
                # The connection may be down: then the server redelivers after ack_wait anyway.
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.settings.nak_delay_s)
            return
        except Exception as exc:
            heartbeat.cancel()
            deliveries = msg.metadata.num_delivered
            log.exception("handler failed (delivery %d)", deliveries)
            with contextlib.suppress(Exception):  # NATS away: redelivered after ack_wait
                if deliveries >= self.settings.max_deliver:
                    await self.dead_letter(msg, f"failed {deliveries} times: {exc!r}")
                    await msg.term()
                else:
                    await msg.nak(delay=self.settings.nak_delay_s)
            return
        heartbeat.cancel()
        try:
            await msg.ack()
        except Exception:  # NATS away: the message comes back after ack_wait; handlers are idempotent
            log.warning("could not acknowledge a message on %s; it will be redelivered", msg.subject, exc_info=True)

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(self.settings.ack_wait_s / 3, 0.5)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            while True:
                await asyncio.sleep(interval)
                await msg.in_progress()


def _deliveries(msg: Msg) -> int:
    """How many times the server has delivered ``msg`` (1 for a message without metadata)."""
    try:
        return msg.metadata.num_delivered or 1
    except Exception:
        return 1


def connect_options(settings: Settings, service: str) -> dict:
    """``nats.connect`` keyword arguments for ``service``: the server (whose URL may hold
    the credential), the credential settings, TLS, and the role's inbox prefix (the
    permissions allow each role replies under its own prefix only)."""
    if not settings.nats_url:
        raise RuntimeError("INFLAB_NATS_URL is not set")
    options: dict = dict(
        servers=[settings.nats_url],
        name=f"inflab-{service}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        inbox_prefix=inbox_prefix(service),
        error_cb=_log_nats_error,
    )
    if settings.nats_user:
        options.update(user=settings.nats_user, password=settings.nats_password.get_secret_value())
    if settings.nats_creds_file:
        options["user_credentials"] = str(settings.nats_creds_file)
    tls = tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return options


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context the NATS TLS settings describe (None: nats-py's default for a
    tls:// URL, the system's CAs)."""
    if not (settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None
    )
    if settings.nats_tls_cert_file:
        context.load_cert_chain(
            str(settings.nats_tls_cert_file),
            str(settings.nats_tls_key_file) if settings.nats_tls_key_file else None,
        )
    return context


async def _log_nats_error(exc: Exception) -> None:
    # A permissions violation arrives here (asynchronously): it means a role's rules and
    # its code disagree, which an operator must see.
    log.error("NATS: %s", exc)


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


#: How long a batch waits for more messages once its first has arrived: only what is already
#: waiting joins it, so a quiet stream's events are never held back.
BURST_WAIT_S = 0.005


async def fetched(sub, stop: asyncio.Event, batch: int = 1, fetch_timeout: float = 1.0) -> AsyncIterator[list[Msg]]:
    """Batches of messages from a pull subscription until ``stop``: each is the first
    message to arrive (a long poll of ``fetch_timeout`` while the stream is quiet) and then
    whatever else is waiting, up to ``batch``. A failed fetch (NATS away) is logged and
    retried. Unsubscribes when done.

    Not one fetch of the whole batch: nats-py's waits for a full batch or its timeout once
    the first message is in, which would hold every quiet message that long."""
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=fetch_timeout)
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except Exception:
                if stop.is_set():
                    break
                log.exception("fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if batch > 1:
                with contextlib.suppress(NatsTimeout, asyncio.TimeoutError):
                    msgs += await sub.fetch(batch - 1, timeout=BURST_WAIT_S)
            yield msgs
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
