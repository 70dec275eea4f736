"""The outer loop of the gateway's own JetStream consumers (dead letters, run
submissions): consume until stopped, and after a failure wait a moment and start again,
so one broken connection or handler bug does not end the consumer for the process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from inflab.core.bus import Bus


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set first."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def consume_until_stopped(
    bus: Bus,
    subject: str,
    model: type,
    handler: Callable[[Any, Msg], Awaitable[None]],
    stop: asyncio.Event,
    *,
    durable: str,
    stream: str,
    retry_s: float,
    log: logging.Logger,
    what: str,
) -> None:
    """``bus.consume`` until ``stop``, restarting it ``retry_s`` after a failure (logged
    on ``log`` as ``what`` stopped)."""
    while not stop.is_set():
        try:
            await bus.consume(subject, model, handler, stop, durable=durable, stream=stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped; restarting in %.1fs", what, retry_s)
            await pause(stop, retry_s)
