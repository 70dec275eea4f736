"""Waiting for Postgres instead of failing: the gateway's consumers (events, submissions,
dead letters) and the run dispatcher keep a message, or their turn, while the database is
away, rather than spending the message's redeliveries on an outage that is nobody's fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")


#: SQLSTATEs of a server that is going away or not there yet: class 08 (connection
#: exceptions) and 57P (shutting down, terminated by the administrator, crashed, starting
#: up). asyncpg raises these as server errors, which SQLAlchemy wraps as a plain DBAPIError.
UNREACHABLE_SQLSTATES = ("08", "57P")


def _chain(exc: BaseException):
    """``exc`` and what it wraps (``orig``, and its explicit cause)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        todo += [getattr(err, "orig", None), err.__cause__]


def _away(err: BaseException) -> bool:
    if isinstance(err, (OSError, OperationalError, InterfaceError, PoolTimeout)):
        return True
    if getattr(err, "connection_invalidated", False):
        return True
    code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
    return isinstance(code, str) and code.startswith(UNREACHABLE_SQLSTATES)


def database_unreachable(exc: BaseException) -> bool:
    """Postgres is away (not the work's own fault)."""
    return any(_away(err) for err in _chain(exc))


async def until_database_answers(
    work: Callable[[], Awaitable[T]], what: str, max_backoff_s: float = 5.0,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """``await work()``, again and again with a growing pause while Postgres is
    unreachable; any other error is raised at once. A JetStream handler calling this keeps
    its message meanwhile through the bus's ``in_progress()`` heartbeats."""
    backoff = 0.2
    while True:
        try:
            return await work()
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            if on_retry is not None:
                on_retry(exc)
            log.warning("%s: Postgres unreachable (%s); retrying in %.1fs", what, type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
