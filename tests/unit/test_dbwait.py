"""Which database errors mean "Postgres is away" (wait for it) rather than "this work is
wrong" (fail it): a server shutting down or starting up answers with a server error
(SQLSTATE 57P..), which SQLAlchemy wraps as a plain DBAPIError. Seen for real in
tests/faults/test_postgres_stopped.py, where the persister failed an event on it."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from inflab.gateway.dbwait import database_unreachable


def _as_sqlalchemy_raises_it(error: Exception) -> DBAPIError:
    try:
        try:
            raise error
        except Exception as exc:
            raise DBAPIError("SELECT 1", None, exc) from exc
    except DBAPIError as wrapped:
        return wrapped


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ConnectionRefusedError(111, "Connect call failed"),
])
def test_a_server_going_away_is_waited_for(error: Exception) -> None:
    assert database_unreachable(_as_sqlalchemy_raises_it(error))


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.UniqueViolationError("duplicate key value"),
    asyncpg.exceptions.UndefinedColumnError("column does not exist"),
    ValueError("not a database error"),
])
def test_an_error_of_the_work_itself_is_not(error: Exception) -> None:
    assert not database_unreachable(_as_sqlalchemy_raises_it(error))
