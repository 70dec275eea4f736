"""A small asynchronous client for the gateway's HTTP API, as a researcher's script (or
``inflab demo``) uses it: create an experiment, start a run, follow the run's live events,
read its results.

The event stream is Server-Sent Events. :class:`SSEDecoder` is a byte-level parser that
follows the WHATWG rules (any line ending, comments, multi-line data, ``id`` and ``retry``);
:meth:`GatewayClient.follow_run` reconnects with ``Last-Event-ID`` when the connection
drops, so a flaky network or a restarted gateway neither loses nor repeats an event.

No torch here: this module is imported by the CLI and the gateway's tests.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# After a terminal status nothing more happens: the gateway then closes the stream.
from inflab.core.vocabulary import TERMINAL_STATUSES

_LINE_END = re.compile(r"\r\n|\r|\n")


class GatewayError(RuntimeError):
    """The gateway refused a request or could not be reached; the message says why."""


# --------------------------------------------------------------------------- SSE parsing
@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the id this event carried itself (None if it had no
    ``id:`` line), which is what duplicate detection must look at."""

    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Incremental Server-Sent Events parser: feed it bytes as they arrive, get whole events.

    Chunks may split lines, CRLF pairs and multi-byte UTF-8 characters anywhere; the decoder
    keeps the unfinished tail for the next :meth:`feed`.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        #: The spec's "last event ID buffer": persists across events.
        self.last_event_id: str | None = None
        #: The server's requested reconnection delay (``retry:``), effective at once.
        self.retry_ms: int | None = None
        #: Comment lines seen (the gateway's heartbeats), handy for tests and diagnostics.
        self.comments = 0

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")  # a byte-order mark may open the stream
        self._buffer += text
        events: list[ServerSentEvent] = []
        pos = 0
        while (match := _LINE_END.search(self._buffer, pos)) is not None:
            # A lone CR at the very end may be the first half of a CRLF still in flight.
            if match.group() == "\r" and match.end() == len(self._buffer):
                break
            event = self._line(self._buffer[pos : match.start()])
            if event is not None:
                events.append(event)
            pos = match.end()
        self._buffer = self._buffer[pos:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:  # the spec ignores ids containing NUL
                self._id = value
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit():
                self.retry_ms = int(value)
        # Unknown field names are ignored, as the spec requires.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event, own_id = self._data, self._event, self._id
        self._data, self._event, self._id = [], "", None
        if not data:
            # A block with no data (e.g. only an id or retry) dispatches nothing.
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=own_id)


# --------------------------------------------------------------------------- run events
@dataclass(frozen=True)
class RunEventMessage:
    """A run event as the gateway streams it: ``kind`` and the event's JSON fields
    (the models in :mod:`inflab.core.messages`). Kept as a dict on purpose: a display
    client should show what it understands and survive fields added later."""

    id: str | None
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str | None:
        return self.data.get("stage")

    @property
    def is_run_finished(self) -> bool:
        """The run-level terminal status, after which the gateway closes the stream."""
        return (
            self.kind == "status"
            and self.data.get("stage") == "run"
            and self.data.get("status") in TERMINAL_STATUSES
        )


def to_run_event(sse: ServerSentEvent) -> RunEventMessage | None:
    """Decode an SSE event's JSON; None for data that is not a JSON object."""
    try:
        data = json.loads(sse.data)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("kind") or sse.event
    return RunEventMessage(id=sse.id, kind=str(kind), data=data)


# --------------------------------------------------------------------------- the client
def _detail(response: httpx.Response) -> str:
    """The most useful one-line reason from an error response (FastAPI puts it in detail)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return json.dumps(body["detail"]) if not isinstance(body["detail"], str) else body["detail"]
    return json.dumps(body)[:500]


class GatewayClient:
    """``async with GatewayClient(url) as client: ...``"""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        stream_read_timeout_s: float = 60.0,
        reconnect_delay_s: float = 1.0,
        max_reconnects: int = 10,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        # A stream that stays silent longer than this is presumed dead and reopened; the
        # gateway sends a heartbeat comment well within it.
        self._stream_timeout = httpx.Timeout(timeout_s, read=stream_read_timeout_s)
        self.reconnect_delay_s = reconnect_delay_s
        self.max_reconnects = max_reconnects
        #: How many times the last follow_run had to reopen its stream.
        self.reconnects = 0

    async def __aenter__(self) -> "GatewayClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, expect: int, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise GatewayError(f"{method} {path}: gateway unreachable ({exc!r})") from exc
        if response.status_code != expect:
            raise GatewayError(f"{method} {path} -> HTTP {response.status_code}: {_detail(response)}")
        return response.json()

    async def sign_in(self, email: str, password: str, register: bool = True) -> dict[str, Any]:
        """Sign in with email and password (registering the account first when it does not
        exist and ``register``), and send its bearer access token from now on."""
        credentials = {"email": email, "password": password}
        try:
            response = await self._http.post("/api/auth/login", json=credentials)
            if response.status_code == 401 and register:
                response = await self._http.post("/api/auth/register", json=credentials)
                if response.status_code == 409:
                    raise GatewayError(f"could not sign in as {email}: the account exists with another password")
                if response.status_code == 202:
                    # This gateway requires verified addresses (the embedded stack does not).
                    raise GatewayError(f"{email} must be verified before it can sign in: follow the link "
                                       "mailed to it, then sign in again")
        except httpx.TransportError as exc:
            raise GatewayError(f"sign-in: gateway unreachable ({exc!r})") from exc
        if response.status_code not in (200, 201):
            raise GatewayError(f"could not sign in as {email}: HTTP {response.status_code}: {_detail(response)}")
        signed_in = response.json()
        self._http.headers["Authorization"] = f"Bearer {signed_in['access_token']}"
        self._http.cookies.clear()  # the bearer token is the credential; no CSRF dance
        return signed_in

    async def create_experiment(self, experiment: dict[str, Any]) -> str:
        body = await self._request("POST", "/api/experiments", 201, json=experiment)
        return str(body["id"])

    async def start_run(self, experiment_id: str) -> str:
        body = await self._request("POST", f"/api/experiments/{experiment_id}/runs", 202)
        return str(body["run_id"])

    async def run_results(self, run_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/runs/{run_id}/results", 200)

    async def estimate_validation(self, run_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", f"/api/runs/{run_id}/validations/estimate", 200, json=settings)

    async def start_validation(self, run_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", f"/api/runs/{run_id}/validations", 202, json=settings)

    async def validation(self, run_id: str, validation_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/runs/{run_id}/validations/{validation_id}", 200)

    async def cancel_validation(self, run_id: str, validation_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/api/runs/{run_id}/validations/{validation_id}/cancel", 202)

    async def benchmark(self, run_id: str) -> dict[str, Any]:
        """A benchmark run's leaderboard (``GET /api/benchmarks/{run_id}``)."""
        return await self._request("GET", f"/api/benchmarks/{run_id}", 200)

    async def follow_run(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[RunEventMessage]:
        """Yield the run's events, in order and each once, until its terminal status.

        A dropped connection, a stream that ends early or a 5xx is retried with
        ``Last-Event-ID``; ``max_reconnects`` failures in a row without a single new event
        raise :class:`GatewayError`. Events the server repeats after a reconnect are skipped.
        """
        path = f"/api/runs/{run_id}/events"
        seen_ids: set[str] = set()
        delay = self.reconnect_delay_s
        failures = 0
        self.reconnects = 0
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            reason = "the stream ended before the run finished"
            try:
                async with self._http.stream("GET", path, headers=headers, timeout=self._stream_timeout) as response:
                    if response.status_code == 204:  # the spec's "stop reconnecting"
                        return
                    if response.status_code >= 500:
                        await response.aread()
                        reason = f"HTTP {response.status_code}: {_detail(response)}"
                    elif response.status_code != 200:
                        await response.aread()
                        raise GatewayError(f"GET {path} -> HTTP {response.status_code}: {_detail(response)}")
                    else:
                        decoder = SSEDecoder()
                        async for chunk in response.aiter_bytes():
                            events = decoder.feed(chunk)
                            if decoder.retry_ms is not None:
                                delay = decoder.retry_ms / 1000
                            for sse in events:
                                if sse.id is not None:
                                    if sse.id in seen_ids:
                                        continue
                                    seen_ids.add(sse.id)
                                    # Only ids of events actually received move the resume
                                    # point, so a drop mid-event replays that event.
                                    last_event_id = sse.id
                                event = to_run_event(sse)
                                if event is None:
                                    continue
                                failures = 0
                                yield event
                                if event.is_run_finished:
                                    return
            except httpx.TransportError as exc:  # connection refused/reset, read timeout, cut chunk
                reason = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures > self.max_reconnects:
                raise GatewayError(f"lost the event stream of run {run_id} ({reason})")
            self.reconnects += 1
            # Back off a little more after each failure in a row, capped, so a gateway that is
            # restarting is not hammered but a single drop costs only one short pause.
            await asyncio.sleep(delay * min(failures, 5))
