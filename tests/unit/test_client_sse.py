"""The SSE decoder on raw bytes, and the gateway client's reconnect against a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from inflab.devtools.client import GatewayClient, SSEDecoder

STREAM = (
    b": connected\n\n"
    b"id: 1\nevent: status\ndata: {\"kind\": \"status\",\n"
    b"data:  \"stage\": \"train\"}\n\n"
    b":heartbeat\n\n"
    b"id: 2\r\nevent: progress\r\ndata: {\"kind\":\"progress\",\"fraction\":0.5}\r\n\r\n"
    b"retry: 250\nid: 3\ndata:no-space\n\n"
    b"id: 4\ndata: caf\xc3\xa9\n\n"
    b"data: without id\n\n"
)


def decode_all(chunks: list[bytes]) -> tuple[list, SSEDecoder]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events, decoder


def test_decoder_reads_ids_kinds_multiline_data_and_skips_heartbeats() -> None:
    events, decoder = decode_all([STREAM])
    assert [e.id for e in events] == ["1", "2", "3", "4", None]
    assert [e.event for e in events] == ["status", "progress", "message", "message", "message"]
    # Multi-line data joins with "\n" and keeps the second line's extra space.
    assert events[0].data == '{"kind": "status",\n "stage": "train"}'
    assert json.loads(events[0].data) == {"kind": "status", "stage": "train"}
    assert json.loads(events[1].data)["fraction"] == 0.5  # CRLF line endings
    assert events[2].data == "no-space" and decoder.retry_ms == 250
    assert events[3].data == "café"
    # An event without an id line has no id of its own; the resume point stays at 4.
    assert decoder.last_event_id == "4"
    assert decoder.comments == 2


def test_decoder_survives_any_chunking() -> None:
    expected, _ = decode_all([STREAM])
    # One byte at a time splits every CRLF and the two-byte "é".
    events, _ = decode_all([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == expected
    for size in (2, 3, 7, 64):
        events, _ = decode_all([STREAM[i : i + size] for i in range(0, len(STREAM), size)])
        assert events == expected


def test_decoder_waits_for_the_blank_line_and_ignores_blocks_without_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\nevent: status\ndata: x\n") == []
    assert [e.data for e in decoder.feed(b"\n")] == ["x"]
    assert decoder.feed(b"id: 8\n\nevent: orphan\n\n") == []
    assert decoder.last_event_id == "8"


# --------------------------------------------------------------------------- reconnect
RUN_ID = "00000000-0000-0000-0000-000000000001"


def _event(n: int) -> dict:
    if n == 1:
        return {"kind": "status", "stage": "run", "status": "running"}
    if n < 6:
        return {"kind": "progress", "stage": "train", "fraction": n / 6}
    return {"kind": "status", "stage": "run", "status": "completed"}


class ScriptedGateway:
    """Serves six events; the first connection dies (no clean end of the chunked body)
    right after event 3, as a crashed proxy or gateway would leave it."""

    def __init__(self) -> None:
        self.last_event_ids: list[str | None] = []
        self.app = Starlette(routes=[Route("/api/runs/{run_id}/events", self.events)])

    async def events(self, request: Request) -> StreamingResponse:
        resume = request.headers.get("last-event-id")
        self.last_event_ids.append(resume)
        first_connection = len(self.last_event_ids) == 1
        start = int(resume) + 1 if resume else 1

        async def body():
            yield b"retry: 20\n: heartbeat\n\n"
            for n in range(start, 7):
                yield f"id: {n}\nevent: {_event(n)['kind']}\ndata: {json.dumps(_event(n))}\n\n".encode()
                await asyncio.sleep(0)
                if first_connection and n == 3:
                    raise ConnectionResetError("scripted drop")

        return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
def gateway() -> Iterator[tuple[ScriptedGateway, str]]:
    scripted = ScriptedGateway()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(scripted.app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "test server did not start"
        yield scripted, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


async def test_follow_run_resumes_after_a_drop_and_delivers_each_event_once(gateway) -> None:
    scripted, url = gateway
    async with GatewayClient(url, reconnect_delay_s=0.01, max_reconnects=3) as client:
        events = [event async for event in client.follow_run(RUN_ID)]
        reconnects = client.reconnects

    assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert [e.kind for e in events] == ["status", "progress", "progress", "progress", "progress", "status"]
    assert events[-1].is_run_finished and not events[0].is_run_finished
    # The client asked to resume exactly after the last event it had received.
    assert scripted.last_event_ids == [None, "3"]
    assert reconnects == 1


async def test_follow_run_gives_up_with_a_clear_error_when_the_gateway_is_gone() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    from inflab.devtools.client import GatewayError

    async with GatewayClient(f"http://127.0.0.1:{port}", reconnect_delay_s=0.001, max_reconnects=2) as client:
        with pytest.raises(GatewayError, match="lost the event stream"):
            async for _ in client.follow_run(RUN_ID):
                pass
