"""Password hashing (argon2id through argon2-cffi) and the rules a new password must meet.

argon2 is slow and memory-hard on purpose (tens of milliseconds and 64 MiB a hash at the
defaults),
so it never runs on the event loop: :class:`PasswordHasher` hands every hash and check
to a small thread pool (argon2-cffi releases the GIL while it works) and refuses work
beyond a bounded queue with :class:`HasherBusy`, so a burst of sign-ins costs at most
``password_hash_threads`` cores and never stalls the gateway's other requests.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from inflab.core.settings import Settings


class HasherBusy(Exception):
    """More hash jobs are waiting than ``password_hash_queue`` allows."""


@dataclass(frozen=True)
class Verified:
    ok: bool
    #: The stored hash was made with other parameters than today's: store a new one.
    needs_rehash: bool = False


class PasswordHasher:
    """argon2id with the settings' parameters, in a bounded thread pool."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self._threads = settings.password_hash_threads
        self._queue = settings.password_hash_queue
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0
        #: Checked when an account has no password or does not exist, so a sign-in takes
        #: as long whether the email is known or not. Made on first use, in the pool.
        self._dummy_hash: str | None = None

    async def _run(self, fn, *args):
        if self._in_flight >= self._threads + self._queue:
            raise HasherBusy()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="argon2")
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._in_flight -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> Verified:
        if password_hash is None and self._dummy_hash is None:
            self._dummy_hash = await self.hash("not a password anyone has")
        return await self._run(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> Verified:
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return Verified(False)
        if password_hash is None:
            return Verified(False)
        return Verified(True, self._hasher.check_needs_rehash(password_hash))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def password_problems(password: str, email: str, settings: Settings) -> list[str]:
    """What is wrong with a new password (empty when it is acceptable)."""
    problems = []
    if len(password) < settings.password_min_length:
        problems.append(f"at least {settings.password_min_length} characters")
    if len(password) > settings.password_max_length:
        problems.append(f"at most {settings.password_max_length} characters")
    if len(set(password)) < 4:
        problems.append("at least 4 different characters")
    if password.strip().lower() == email.strip().lower() or password.lower() in email.lower().split("@"):
        problems.append("not your email address")
    return problems
