"""When to restart a crashed service, and how to name why it exited.

The supervisor restarts a service whatever happens, forever: a stack whose worker keeps
crashing still serves everything else, and the crash loop is reported (``inflab ps``,
the supervisor's log), not turned into the whole stack stopping. What grows is the wait
before each restart: ``initial_s``, doubling with each crash in a row, never more than
``max_s``. A process that ran ``healthy_after_s`` or longer was healthy: its crash starts
the count again, so a service that crashes once a day is back at once. ``crash_loop_after``
crashes in a row, each sooner than that, make a *crash loop*.

Time is passed in (seconds on any monotonic clock), so the policy is tested with a fake
clock and the supervisor feeds it its event loop's time.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0
    crash_loop_after: int = 3

    def delay(self, crashes_in_a_row: int) -> float:
        """The wait before restarting after the ``crashes_in_a_row``-th crash (1, 2, ...)."""
        if crashes_in_a_row <= 0:
            return 0.0
        # Capped before it can overflow: 2**1000 seconds is not a useful wait.
        return min(self.initial_s * 2 ** min(crashes_in_a_row - 1, 64), self.max_s)


class RestartTracker:
    """One service's crashes in a row, fed with when it started and when it exited."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.crashes_in_a_row = 0
        self._started_at: float | None = None

    def started(self, now: float) -> None:
        self._started_at = now

    def ran_healthy(self, now: float) -> bool:
        """True once the current process has run ``healthy_after_s``: the count starts again."""
        if self._started_at is not None and now - self._started_at >= self.policy.healthy_after_s:
            self.crashes_in_a_row = 0
            return True
        return False

    def exited(self, now: float) -> float:
        """Record an exit; returns how long to wait before the restart."""
        self.ran_healthy(now)
        self.crashes_in_a_row += 1
        self._started_at = None
        return self.policy.delay(self.crashes_in_a_row)

    @property
    def crash_loop(self) -> bool:
        return self.crashes_in_a_row >= self.policy.crash_loop_after


def exit_reason(returncode: int | None) -> str:
    """``exit code 3``, or the signal's name (``SIGKILL``) for a process a signal ended."""
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
