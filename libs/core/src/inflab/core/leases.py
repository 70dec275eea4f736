"""A lease on a run: which trainer replica trains it right now (also: which gateway
replica persists the run events, :data:`PERSISTER_KEY`).

Delivery is at-least-once. After a NATS outage longer than the ack wait, JetStream
redelivers a train request whose first trainer may still be training (its heartbeats
could not reach the server), and perhaps to another replica: two trainings of one run at
once would write the same checkpoints and interleave their events. The lease prevents it.

It is an entry per run in a JetStream key-value bucket (``Subjects.leases_bucket``, made by
the gateway with the other streams), whose time-to-live is the ack wait:

* **acquire**: create the run's key; that fails while another replica holds it (and
  renews it: an entry left by a dead holder is waited out for up to half the TTL), and the
  request is then deferred (:class:`LeaseHeld`: neither acknowledged nor given back; if
  the holder dies, its heartbeats stop and the server redelivers the request).
* **keep**: every third of the TTL, update the entry with the revision last written (a
  compare-and-set). A failed compare means the entry expired and someone else may hold
  it now; no successful renewal for :data:`FENCE` of the TTL (NATS unreachable: the entry
  may expire on the server meanwhile) is treated the same. Either way the lease is lost,
  and the holder's job is cancelled at once (:class:`LeaseLost`), before the entry can
  have expired on the server, so before anyone else can acquire it.
* **release**: delete the entry (at the revision last written) when the job has ended.

Why JetStream KV rather than a Postgres advisory lock: the workers do not connect to
Postgres (only the gateway does), and an advisory lock lives as long as the holder's
database connection, so a database outage would be one more way to lose a lease or hold
one after death. The KV entry lives on the server that holds the request it guards, and
it expires there (no clocks of ours are compared across machines); the holder measures
its own deadline from when it *sent* its last successful renewal, which is before the
server wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from inflab.core.bus import Bus, Deferred

log = logging.getLogger(__name__)

#: The share of the TTL after the last successful renewal's send at which a holder that
#: could not renew gives the lease up (stops its job): before the entry can expire.
FENCE = 0.8
#: The key of the gateway replicas' lease on persisting run events: one replica stores
#: them at a time, in the order JetStream delivers them (inflab.gateway.persister).
PERSISTER_KEY = "gateway-event-persister"
#: One process's identity as a lease holder.
HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseHeld(Deferred):
    """Another replica holds the run's lease: the request is left to it."""


class LeaseLost(Deferred):
    """This replica's lease ended while it held the job (the job was stopped)."""


class RunLease:
    """The lease on one run (see the module docstring). Use::

        lease = await RunLease.acquire(bus, run_id)   # raises LeaseHeld
        async with lease.kept():                      # raises LeaseLost
            ...                                       # the job
    """

    def __init__(self, kv, key: str, value: bytes, ttl_s: float, revision: int) -> None:
        self.kv = kv
        self.key = key
        self.value = value
        self.ttl_s = ttl_s
        self.revision = revision
        self.lost: str | None = None
        self._valid_until = asyncio.get_running_loop().time() + ttl_s * FENCE

    @classmethod
    async def acquire(cls, bus: Bus, run_id: object, what: str | None = None,
                      doing: str = "trained", wait: bool = True) -> RunLease:
        """The lease on ``run_id`` (or on any other key of the bucket); :class:`LeaseHeld`
        when another holder has it, with ``what`` (default: the run) ``doing`` in its message.
        ``wait=False``: raise at once rather than wait out a dead holder's entry (for a
        standby that tries again on its own schedule)."""
        loop = asyncio.get_running_loop()
        kv = await bus.js.key_value(bus.subjects.leases_bucket)
        key = str(run_id)
        value = json.dumps({"holder": HOLDER}).encode()
        # The bucket's TTL (the gateway's ack wait when it made it), not ours: it is the
        # server that expires the entry.
        ttl_s = (await kv.status()).ttl or bus.settings.ack_wait_s
        # A holder that died renewed its entry up to a third of the TTL after its last
        # heartbeat, so its request may come back a little before the entry expires: an
        # entry not renewed within half the TTL is a dead holder's, and is taken then,
        # rather than the request spending a delivery on being left.
        give_up = loop.time() + (ttl_s / 2 if wait else 0.0)
        while True:
            sent = loop.time()
            try:
                revision = await kv.create(key, value)
                break
            except KeyWrongLastSequenceError:
                if loop.time() < give_up:
                    await asyncio.sleep(0.2)  # polled: an expiry sends no watch update
                    continue
            holder = "another process"
            with contextlib.suppress(Exception):
                holder = json.loads((await kv.get(key)).value)["holder"]
            raise LeaseHeld(f"{what or f'run {key}'} is being {doing} by {holder}; left to it")
        lease = cls(kv, key, value, ttl_s, revision)
        lease._valid_until = sent + lease.ttl_s * FENCE
        return lease

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            try:
                async with asyncio.timeout_at(self._valid_until):
                    self.revision = await self.kv.update(self.key, self.value, last=self.revision)
                self._valid_until = sent + self.ttl_s * FENCE
                return
            except KeyWrongLastSequenceError:
                self.lost = "its entry expired and was taken, or removed"
                return
            except TimeoutError:
                self.lost = f"it could not be renewed for {self.ttl_s * FENCE:g} s (NATS unreachable)"
                return
            except Exception as exc:  # NATS away: try again until the deadline
                log.warning("renewing the lease on run %s failed (%r); retrying", self.key, exc)
                await asyncio.sleep(min(0.2, max(0.0, self._valid_until - loop.time())))

    async def _keep(self, holder: asyncio.Task) -> None:
        while self.lost is None:
            await asyncio.sleep(self.ttl_s / 3)
            await self._renew()
        log.error("lost the lease on run %s: %s; stopping its job", self.key, self.lost)
        holder.cancel()

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[RunLease]:
        """Renew the lease while the body runs; if it is lost, the body is cancelled and
        :class:`LeaseLost` raised. The lease is released when the body ends otherwise."""
        task = asyncio.current_task()
        keeper = asyncio.create_task(self._keep(task), name=f"lease-{self.key}")
        try:
            yield self
        except asyncio.CancelledError:
            if self.lost is not None and task.uncancel() == 0:
                raise LeaseLost(f"the lease on run {self.key} was lost: {self.lost}") from None
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if self.lost is None:
                await self.release()

    async def release(self) -> None:
        """Delete the entry at our revision (best effort: otherwise it expires)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.kv.delete(self.key, last=self.revision)


async def ensure_bucket(js, bucket: str, ttl_s: float) -> None:
    """Create the leases bucket (TTL ``ttl_s``) or bring an existing one's TTL up to date."""
    from nats.js.api import KeyValueConfig

    try:
        info = await js.stream_info(f"KV_{bucket}")
    except NotFoundError:
        await js.create_key_value(KeyValueConfig(bucket=bucket, ttl=ttl_s, history=1))
        return
    if info.config.max_age != ttl_s:
        await js.update_stream(info.config.evolve(max_age=ttl_s, duplicate_window=min(ttl_s, 120.0)))
