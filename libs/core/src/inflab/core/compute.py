"""Running a worker's ML job on Ray, with its events streamed back as they happen.

A job is a plain function ``fn(*args, emit=callable) -> result`` from a worker's ML
library. :func:`run_streaming` runs it as a Ray *streaming generator* task: the function
runs in a thread inside the Ray worker, every ``emit(obj)`` is yielded to the caller as
soon as it happens, and the return value comes last. The service awaits the events and
turns them into NATS messages, so nothing inside Ray needs a NATS connection.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from inflab.core.settings import Settings

log = logging.getLogger(__name__)

_DONE = object()


def ensure_ray(settings: Settings) -> None:
    """Join the Ray cluster named by ``INFLAB_RAY_ADDRESS``, or start a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=True, logging_level=logging.WARNING)
    else:
        # "local" starts a fresh cluster rather than joining whatever /tmp/ray last recorded.
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)


def set_threads(num_cpus: float) -> int:
    """Pin torch's intra-op threads to the CPUs this task was given: tasks whose threads
    oversubscribe the cores slow each other down many times over (docs/measurements.md).
    Before torch is imported, the environment decides its thread count; once imported (a
    Ray worker reused from an earlier task), its setting is changed in place. No torch
    import here: this is the plumbing every service shares."""
    threads = max(1, int(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def _streaming_body(fn: Callable, num_cpus: float, args: tuple, kwargs: dict):
    from inflab.core import redaction

    # A Ray worker process logs through Ray's handlers, not the service's: mask there too.
    redaction.install()
    set_threads(num_cpus)
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn(*args, emit=events.put, **kwargs)
        except BaseException as exc:  # re-raised in the generator, so Ray reports it
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, name=f"job-{getattr(fn, '__name__', 'fn')}", daemon=True)
    thread.start()
    while True:
        item = events.get()
        if item is _DONE:
            break
        yield ("event", item)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ("result", outcome.get("result"))


_remote = None


def _remote_fn():
    global _remote
    if _remote is None:
        import ray

        _remote = ray.remote(num_returns="streaming", max_retries=0)(_streaming_body)
    return _remote


async def run_streaming(
    fn: Callable,
    *args: Any,
    num_cpus: float,
    on_event: Callable[[Any], Awaitable[None]],
    num_gpus: float = 0,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, emit=..., **kwargs)`` on Ray with ``num_cpus`` CPUs and ``num_gpus``
    GPUs; await ``on_event`` for each emitted object in order; return ``fn``'s result (or
    raise its exception)."""
    import ray

    gen = _remote_fn().options(num_cpus=num_cpus, num_gpus=num_gpus).remote(fn, num_cpus, args, kwargs)
    result: Any = None
    try:
        async for ref in gen:
            kind, payload = await ref
            if kind == "event":
                await on_event(payload)
            else:
                result = payload
    except BaseException:
        try:
            ray.cancel(gen, force=True)
        except Exception:
            pass
        raise
    return result


def describe_error(exc: BaseException) -> str:
    """The innermost error text (Ray wraps task errors), bounded for an event."""
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"[:2000]
