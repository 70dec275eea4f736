"""The gateway application: ``create_app(settings)`` builds it, the lifespan owns its
connections (Postgres, NATS) and its background tasks: the event persister, the run
dispatcher (the outbox relay that hands queued runs to the trainers), the run-submission
consumer and the dead-letter consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from inflab.core.bus import Bus
from inflab.core.db.session import make_engine, make_sessionmaker
from inflab.core.messages import RunEvent
from inflab.core.settings import Settings, get_settings
from inflab.gateway.auth.google import make_oauth
from inflab.gateway.auth.passwords import HasherBusy, PasswordHasher
from inflab.gateway.auth.rls import user_sessionmaker
from inflab.gateway.auth.throttle import Rules, Throttle
from inflab.gateway import errors, metrics
from inflab.gateway.broadcast import Broadcaster
from inflab.gateway.deadletters import DeadLetterConsumer
from inflab.gateway.dispatch import Dispatcher
from inflab.gateway.auth.gate import CredentialGateMiddleware
from inflab.gateway.limits import BodyLimitMiddleware
from inflab.gateway.mail import Mailer
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.persister import EventPersister
from inflab.gateway import limits
from inflab.gateway.routes import contracts, control, estimates, experiments, health, imports, methods
from inflab.gateway.routes import benchmarks, predictions, runs, validations
from inflab.gateway.routes import account, auth, tokens
from inflab.gateway.submissions import RunSubmissions
from inflab.gateway.webapp import mount_web_app

log = logging.getLogger(__name__)


def _operation_id(route: APIRoute) -> str:
    # The route function's name (create_experiment, stream_run_events...): stable and
    # readable in the client generated from /openapi.json.
    return route.name


def _version() -> str:
    try:
        return version("inflab-gateway")
    except PackageNotFoundError:
        return "0.0.0"


def end_streams(app: FastAPI) -> None:
    """Ask every open SSE stream to end. Safe from a signal handler or another thread."""
    notifier, loop = getattr(app.state, "notifier", None), getattr(app.state, "loop", None)
    if notifier is not None and loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(notifier.close)


async def _database_busy(request: Request, exc: PoolTimeout) -> JSONResponse:
    # Every pooled connection stayed taken for INFLAB_DB_POOL_TIMEOUT_S: overloaded, not broken.
    log.warning("no database connection within the pool timeout: answering 503")
    return JSONResponse({"detail": "the server is busy (no database connection free); retry in a moment"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"})


async def _hasher_busy(request: Request, exc: HasherBusy) -> JSONResponse:
    return JSONResponse({"detail": "too many sign-ins at once; retry in a moment"},
                        status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.database_url:
            raise RuntimeError("INFLAB_DATABASE_URL is not set")
        if not settings.job_signing_key.get_secret_value():
            raise RuntimeError("INFLAB_JOB_SIGNING_KEY is not set: the gateway signs every job request "
                               "(`inflab job-keys` makes a key pair; see docs/security.md)")
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                             max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout_s)
        notifier = RunNotifier()
        stop = asyncio.Event()
        bus: Bus | None = None
        tasks: list[asyncio.Task] = []
        try:
            sessionmaker = make_sessionmaker(engine)
            app.state.sessionmaker = sessionmaker
            app.state.user_sessionmaker = user_sessionmaker(engine)
            app.state.throttle = Throttle(sessionmaker)
            app.state.notifier = notifier
            broadcaster = app.state.broadcaster = Broadcaster(sessionmaker, notifier, settings.sse_heartbeat_s,
                                                              settings.sse_max_streams_per_user)
            broadcaster.on_read = app.state.metrics.sse_read
            app.state.metrics.broadcaster = broadcaster
            app.state.loop = asyncio.get_running_loop()
            # The gateway creates the streams (and only its credential may).
            bus = app.state.bus = await Bus.connect(settings, "gateway", create_streams=True)
            dispatcher = app.state.dispatcher = Dispatcher(bus, sessionmaker, notifier, settings)

            def stored(event: RunEvent) -> None:
                app.state.metrics.event_stored(event)
                if event.kind == "status":  # a training started or a run ended: a place may have freed
                    dispatcher.poke()

            persister = app.state.persister = EventPersister(
                bus, sessionmaker, notifier, on_stored=stored, on_refused=app.state.metrics.event_refused,
                on_batch=app.state.metrics.persister_batch.observe)
            await persister.listen_for_pokes()
            tasks.append(asyncio.create_task(persister.run(stop), name="event-persister"))
            app.state.persister_task = tasks[0]
            tasks.append(asyncio.create_task(dispatcher.run(stop), name="run-dispatcher"))
            submissions = RunSubmissions(bus, sessionmaker, app.state.user_sessionmaker, dispatcher, settings)
            tasks.append(asyncio.create_task(submissions.run(stop), name="run-submissions"))
            dead_letters = DeadLetterConsumer(bus, sessionmaker, notifier, dispatcher)
            tasks.append(asyncio.create_task(dead_letters.run(stop), name="dead-letters"))
            log.info("gateway ready; persisting %s as %s", bus.subjects.all_events, persister.durable)
            yield
        finally:
            notifier.close()  # open SSE streams end; clients resume with Last-Event-ID
            stop.set()
            for task in tasks:
                # Safe mid-event: an unacked event is redelivered and stored once.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if bus is not None:
                await bus.close()
            await engine.dispose()
            app.state.hasher.close()

    app = FastAPI(
        title="Influence Lab",
        version=_version(),
        summary="Fine-tune a language model on question/answer pairs and see which pairs drove which answers.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.oauth = make_oauth(settings)
    app.state.hasher = PasswordHasher(settings)
    app.state.rules = Rules.from_settings(settings)
    app.state.mailer = Mailer(settings)
    if settings.require_email_verification and app.state.mailer.folder is not None:
        log.warning("email verification is required but INFLAB_SMTP_HOST is not set: verification and "
                    "reset mails are only written to %s", app.state.mailer.folder)
    # Holds only the OpenID Connect state and nonce between the redirect and the callback.
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key.get_secret_value() or secrets.token_urlsafe(32),
        session_cookie="inflab_oauth",
        max_age=600,
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    app.state.metrics = metrics.GatewayMetrics()
    app.add_exception_handler(RequestValidationError, errors.validation_error)
    app.add_exception_handler(StarletteHTTPException, errors.http_error)
    app.add_exception_handler(HasherBusy, _hasher_busy)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    # Outside the body limit: an anonymous body is refused before a byte of it is read.
    app.add_middleware(CredentialGateMiddleware, settings=settings)
    # Outermost: a refused body still gets its request id, metrics and log line.
    app.add_middleware(metrics.RequestMiddleware, metrics=app.state.metrics)
    # Before everything: the client address (rate limits, logs) and scheme are the
    # forwarded ones only behind a listed proxy. uvicorn's own copy of this middleware is
    # off (server.py), since it trusts 127.0.0.1 by default.
    proxies = [entry.strip() for entry in settings.forwarded_allow_ips.split(",") if entry.strip()]
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(auth.router)
    app.include_router(account.router)
    app.include_router(tokens.router)
    app.include_router(experiments.router)
    app.include_router(imports.router)
    app.include_router(methods.router)
    app.include_router(runs.router)
    app.include_router(validations.router)
    app.include_router(benchmarks.router)
    app.include_router(control.router)
    app.include_router(predictions.router)
    app.include_router(estimates.router)
    app.include_router(limits.router)
    app.include_router(contracts.router)
    add_event_schemas(app)
    # Last: the app's pages answer every path the routes above leave.
    mount_web_app(app, settings.web_dir)
    return app


def add_event_schemas(app: FastAPI) -> None:
    """Put the run events' schemas (what ``GET /api/runs/{id}/events`` streams) into the
    OpenAPI document, so the browser app's generated types cover the stream too."""
    from pydantic.json_schema import models_json_schema

    from inflab.core.messages import EVENT_MODELS

    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        _, schema = models_json_schema(
            [(model, "serialization") for model in EVENT_MODELS], ref_template="#/components/schemas/{model}"
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in schema.get("$defs", {}).items():
            schemas.setdefault(name, definition)
        stream = document["paths"]["/api/runs/{run_id}/events"]["get"]["responses"]["200"]
        stream["content"]["text/event-stream"]["schema"] = {
            "oneOf": [{"$ref": f"#/components/schemas/{model.__name__}"} for model in EVENT_MODELS]
        }
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
