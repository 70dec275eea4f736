"""Rate limits on sign-in, registration and mailed links, counted in Postgres so that every
gateway replica shares them (Postgres is always there, the embedded stack included;
Redis would be one more server to run for a few rows).

A :class:`Rule` allows ``limit`` attempts per subject (an email and client address, a
client address...) within ``window_s``. An attempt is counted *before* the work it guards
(the password check, the mail), in its own committed transaction with the subject's row
locked, so a burst of concurrent attempts, on one replica or many, gets 429 from the
first one past the limit. Past the limit a subject backs off: attempts get 429 for
``backoff_s``, doubled at each further excess up to ``backoff_max_s``; a quiet
``backoff_max_s`` forgets the excesses. There is no hard lock.

Keys are SHA-256 digests of the rule's name and the subject, so the table holds no
address in the clear.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.core.db.models import AuthThrottle

#: Rows untouched this long are deleted (a few at each attempt): counters are short-lived.
RETENTION = timedelta(days=1)
_SWEEP_BATCH = 100


class RateLimited(Exception):
    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(math.ceil(retry_after_s), 1)
        super().__init__(f"too many attempts; retry in {self.retry_after_s} s")


@dataclass(frozen=True)
class Rule:
    name: str
    limit: int
    window_s: float
    backoff_s: float
    backoff_max_s: float

    def key(self, subject: str) -> str:
        return hashlib.sha256(f"{self.name}\x00{subject}".encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Throttle:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def attempt(self, checks: Sequence[tuple[Rule, str]]) -> None:
        """Count one attempt for every (rule, subject); raise :class:`RateLimited` when any
        is past its limit or still backing off."""
        rules = {rule.key(subject): rule for rule, subject in checks}
        now = _now()
        async with self.sessionmaker() as session:
            await session.execute(
                insert(AuthThrottle)
                .values([dict(key=key, attempts=0, window_started_at=now, strikes=0, updated_at=now) for key in rules])
                .on_conflict_do_nothing(index_elements=[AuthThrottle.key])
            )
            # Locked in key order, so two requests locking the same rows cannot deadlock.
            rows = await session.scalars(
                select(AuthThrottle).where(AuthThrottle.key.in_(rules)).order_by(AuthThrottle.key).with_for_update()
            )
            now = _now()  # after the wait for the lock
            retry_after = 0.0
            for row in rows:
                retry_after = max(retry_after, _count(row, rules[row.key], now))
            await self._sweep(session, now)
            await session.commit()
        if retry_after > 0:
            raise RateLimited(retry_after)

    async def forgive(self, rule: Rule, subject: str, *, whole: bool = True) -> None:
        """After a success: forget the subject's attempts (``whole``), or just this one."""
        async with self.sessionmaker() as session:
            if whole:
                await session.execute(delete(AuthThrottle).where(AuthThrottle.key == rule.key(subject)))
            else:
                row = await session.scalar(
                    select(AuthThrottle).where(AuthThrottle.key == rule.key(subject)).with_for_update()
                )
                if row is not None and row.attempts > 0:
                    row.attempts -= 1
            await session.commit()

    async def _sweep(self, session: AsyncSession, now: datetime) -> None:
        stale = (
            select(AuthThrottle.key)
            .where(AuthThrottle.updated_at < now - RETENTION)
            .limit(_SWEEP_BATCH)
            .with_for_update(skip_locked=True)
        )
        await session.execute(delete(AuthThrottle).where(AuthThrottle.key.in_(stale.scalar_subquery())))


def _count(row: AuthThrottle, rule: Rule, now: datetime) -> float:
    """Count an attempt on the locked ``row``; seconds to wait, 0 when it may go ahead."""
    if row.blocked_until is not None and row.blocked_until > now:
        return (row.blocked_until - now).total_seconds()
    if row.strikes and row.updated_at <= now - timedelta(seconds=rule.backoff_max_s):
        row.strikes = 0
    if row.window_started_at <= now - timedelta(seconds=rule.window_s):
        row.attempts, row.window_started_at = 0, now
    row.attempts += 1
    row.updated_at = now
    if row.attempts <= rule.limit:
        return 0.0
    row.strikes += 1
    delay = min(rule.backoff_s * 2 ** min(row.strikes - 1, 30), rule.backoff_max_s)
    row.blocked_until = now + timedelta(seconds=delay)
    # After the back-off a new window starts: the next excess doubles the wait.
    row.attempts, row.window_started_at = 0, row.blocked_until
    return delay


@dataclass(frozen=True)
class Rules:
    """The gateway's rules, from settings."""

    #: Subject: "email|client address".
    login: Rule
    #: Subject: the client address.
    login_address: Rule
    register: Rule
    #: Verification and reset mails; subjects: the email, and the client address.
    mail: Rule

    @classmethod
    def from_settings(cls, s) -> "Rules":
        backoff = dict(backoff_s=s.login_backoff_s, backoff_max_s=s.login_backoff_max_s)
        return cls(
            login=Rule("login", s.login_max_failures, s.login_window_s, **backoff),
            login_address=Rule("login-address", s.login_max_per_address, s.login_window_s, **backoff),
            # Past these limits the wait is one window (no doubling).
            register=Rule("register", s.register_max_per_window, s.register_window_s,
                          s.register_window_s, s.register_window_s),
            mail=Rule("mail", s.mail_max_per_window, s.mail_window_s, s.mail_window_s, s.mail_window_s),
        )
