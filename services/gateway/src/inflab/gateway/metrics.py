"""Prometheus metrics and the per-request bookkeeping that feeds them.

Each app has its own registry (tests build several apps in one process). Requests are
labelled by route template (``/api/runs/{run_id}``), never by raw path, so label
cardinality stays bounded; paths that match no route count as ``unmatched``.

``GET /metrics`` is behind its own bearer token (``INFLAB_METRICS_TOKEN``) on the
gateway's one port, and off (404) without one. Behind auth rather than on a port of its
own: the runs-by-status gauge counts every user's runs, so it is not for users, and one
listener keeps one thing to expose, probe and secure (Prometheus sends the token with
``authorization: {credentials_file: ...}``); a second port would be one more that must
never reach the Ingress.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from datetime import datetime, timezone
from typing import Annotated, get_args

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inflab.core.db.models import Run
from inflab.core.messages import EventBase
from inflab.core.vocabulary import RunStatus
from inflab.gateway.logs import REQUEST_ID_HEADER, request_id_from, request_id_var

log = logging.getLogger("inflab.gateway.access")

router = APIRouter(tags=["health"])

#: Event lag buckets: persisting is normally milliseconds behind; minutes means a backlog.
#: A scrape must not hang on a slow database.
RUNS_QUERY_TIMEOUT_S = 2.0

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inflab_http_requests", "HTTP requests served, by method, route template and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "inflab_http_request_duration_seconds",
            "Time until the response starts (for an SSE stream: until it opens), by route template.",
            ["method", "route"], registry=self.registry,
        )
        self.runs = Gauge("inflab_runs", "Runs by status (all owners), read at scrape time.", ["status"],
                          registry=self.registry)
        self.runs_errors = Counter("inflab_runs_count_errors", "Scrapes whose runs-by-status query failed.",
                                   registry=self.registry)
        self.sse_clients = Gauge("inflab_sse_clients", "Open SSE event streams on this replica.",
                                 registry=self.registry)
        self.event_lag = Histogram(
            "inflab_event_lag_seconds", "Now minus the event's own time, when the gateway stores it.",
            ["kind"], buckets=LAG_BUCKETS, registry=self.registry,
        )
        self.persister_batch = Histogram(
            "inflab_persister_batch_events", "Run events newly stored per persister transaction (one fetched batch).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=self.registry,
        )
        self.persister_pending = Gauge(
            "inflab_persister_pending_events",
            "Run events in JetStream the persister has not stored yet (all replicas: the shared durable's "
            "undelivered plus unacknowledged messages), read at scrape time.", registry=self.registry,
        )
        self.persister_pending_errors = Counter(
            "inflab_persister_pending_errors", "Scrapes whose persister backlog query to NATS failed.",
            registry=self.registry,
        )
        self.sse_delivery_lag = Histogram(
            "inflab_sse_read_lag_seconds",
            "Now minus the event's own time when this replica's SSE fan-out reads it from Postgres (storing, "
            "the poke and the read; before the frames are written to the streams).",
            buckets=LAG_BUCKETS, registry=self.registry,
        )
        self.registry.register(FanOutCollector(self))
        #: The app's broadcaster once the lifespan has made it (read by FanOutCollector).
        self.broadcaster = None
        self.events_refused = Counter(
            "inflab_events_refused",
            "Run events the persister refused because their stage could not have sent them (by why: "
            "subject, stage, kind, mismatch, content); see docs/security.md.",
            ["reason"], registry=self.registry,
        )

    def sse_read(self, lags: list[float]) -> None:
        for lag in lags:
            self.sse_delivery_lag.observe(max(lag, 0.0))

    def event_refused(self, category: str) -> None:
        self.events_refused.labels(category).inc()

    def event_stored(self, event: EventBase) -> None:
        lag = (datetime.now(timezone.utc) - event.time).total_seconds()
        self.event_lag.labels(event.kind).observe(max(lag, 0.0))


class FanOutCollector:
    """The SSE fan-out's counters, read off the broadcaster at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    #: (family, name, help, the broadcaster's figure): one metric each.
    FIGURES = (
        (GaugeMetricFamily, "inflab_sse_runs_followed",
         "Runs with at least one open SSE stream on this replica (one feed each).", "runs"),
        (CounterMetricFamily, "inflab_sse_feed_reads",
         "Reads of Postgres by this replica's SSE feeds (one per change per followed "
         "run, shared by all of its streams, plus heartbeat re-reads).", "reads"),
        (CounterMetricFamily, "inflab_sse_frames",
         "Event frames handed to SSE streams by the feeds (events x streams).", "delivered"),
        (CounterMetricFamily, "inflab_sse_catch_ups",
         "SSE streams that fell too far behind their feed and caught up from Postgres.", "caught_up"),
        (CounterMetricFamily, "inflab_sse_streams_refused",
         "SSE streams refused (429) because their user had "
         "INFLAB_SSE_MAX_STREAMS_PER_USER open on this replica.", "refused"),
    )

    def collect(self):
        b = self.metrics.broadcaster
        figures = {"runs": len(b.feeds), "reads": b.reads, "delivered": b.delivered, "caught_up": b.caught_up,
                   "refused": b.refused} if b is not None else {}
        for family, name, documentation, key in self.FIGURES:
            yield family(name, documentation, value=figures.get(key, 0))


class RequestMiddleware:
    """Per request: the request id (context for logs, ``X-Request-ID`` on the response),
    the metrics above and one access log line. Plain ASGI, so streams pass untouched."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1"))
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
                self.metrics.latency.labels(scope["method"], _route(scope)).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = _route(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            log.info(
                "%s %s %s", scope["method"], route, status,
                extra={"method": scope["method"], "route": route, "status": status,
                       "duration_ms": round((time.perf_counter() - start) * 1000, 2)},
            )
            request_id_var.reset(token)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path == "/{path:path}":
        # The web app's catch-all: its pages, one label; an /api path it refuses matched nothing.
        return "unmatched" if scope.get("path", "").startswith("/api/") else "web app"
    return path or "unmatched"


def _scraper_only(request: Request) -> None:
    expected = request.app.state.settings.metrics_token.get_secret_value()
    if not expected:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are off: set INFLAB_METRICS_TOKEN")
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send the metrics token as a bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format, for the holder of ``INFLAB_METRICS_TOKEN``."""
    _scraper_only(request)
    state = request.app.state
    gauge: GatewayMetrics = state.metrics
    try:
        async with asyncio.timeout(RUNS_QUERY_TIMEOUT_S), state.sessionmaker() as session:
            counts = dict((await session.execute(select(Run.status, func.count()).group_by(Run.status))).all())
    except Exception as exc:  # Postgres away: the other metrics are still worth scraping
        log.warning("runs by status not counted: %s", type(exc).__name__)
        gauge.runs_errors.inc()
    else:
        for status in get_args(RunStatus):
            gauge.runs.labels(status).set(counts.get(status, 0))
    broadcaster = getattr(state, "broadcaster", None)
    if broadcaster is not None:
        gauge.sse_clients.set(broadcaster.streams)
    persister = getattr(state, "persister", None)
    if persister is not None:
        try:
            async with asyncio.timeout(RUNS_QUERY_TIMEOUT_S):
                gauge.persister_pending.set(await persister.backlog())
        except Exception as exc:  # NATS away: the rest is still worth scraping
            log.warning("persister backlog not read: %s", type(exc).__name__)
            gauge.persister_pending_errors.inc()
    return Response(generate_latest(gauge.registry), media_type=CONTENT_TYPE_LATEST)


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
