"""The supervisor's restart policy on a fake clock: a back-off that doubles with each crash
in a row up to its cap, starts again after a healthy run, and names a crash loop."""

from __future__ import annotations

import signal

from inflab.devtools.embedded.restarts import RestartPolicy, RestartTracker, exit_reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def crash_soon_after_start(tracker: RestartTracker, clock: FakeClock, ran_s: float = 0.5) -> float:
    tracker.started(clock.now)
    delay = tracker.exited(clock.advance(ran_s))
    clock.advance(delay)
    return delay


def test_the_back_off_doubles_up_to_its_cap_and_never_gives_up():
    clock = FakeClock()
    tracker = RestartTracker(RestartPolicy(initial_s=1.0, max_s=30.0, healthy_after_s=60.0))
    delays = [crash_soon_after_start(tracker, clock) for _ in range(12)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30]
    assert tracker.crashes_in_a_row == 12  # still counting, still restarting


def test_the_cap_holds_for_a_very_long_crash_loop():
    clock = FakeClock()
    tracker = RestartTracker(RestartPolicy(initial_s=0.5, max_s=7.0))
    assert max(crash_soon_after_start(tracker, clock) for _ in range(5000)) == 7.0


def test_a_healthy_run_starts_the_back_off_again():
    clock = FakeClock()
    policy = RestartPolicy(initial_s=1.0, max_s=30.0, healthy_after_s=60.0, crash_loop_after=3)
    tracker = RestartTracker(policy)
    for _ in range(4):
        crash_soon_after_start(tracker, clock, ran_s=59.0)  # just short of healthy
    assert tracker.crash_loop and tracker.crashes_in_a_row == 4
    tracker.started(clock.now)
    assert not tracker.ran_healthy(clock.advance(59.9))
    assert tracker.ran_healthy(clock.advance(0.1))  # the supervisor's check while it runs
    assert tracker.crashes_in_a_row == 0 and not tracker.crash_loop
    assert tracker.exited(clock.advance(3600)) == 1.0  # a crash after a long healthy run: at once


def test_an_exit_after_a_healthy_run_counts_as_the_first_crash_even_unchecked():
    clock = FakeClock()
    tracker = RestartTracker(RestartPolicy(initial_s=2.0, healthy_after_s=10.0))
    for _ in range(3):
        crash_soon_after_start(tracker, clock)
    tracker.started(clock.now)
    assert tracker.exited(clock.advance(10.0)) == 2.0
    assert tracker.crashes_in_a_row == 1


def test_a_crash_loop_is_that_many_short_runs_in_a_row():
    clock = FakeClock()
    tracker = RestartTracker(RestartPolicy(crash_loop_after=3))
    seen = []
    for _ in range(4):
        crash_soon_after_start(tracker, clock)
        seen.append(tracker.crash_loop)
    assert seen == [False, False, True, True]


def test_exit_reasons_name_the_code_or_the_signal():
    assert exit_reason(3) == "exit code 3"
    assert exit_reason(0) == "exit code 0"
    assert exit_reason(-signal.SIGKILL) == "SIGKILL"
    assert exit_reason(-signal.SIGSEGV) == "SIGSEGV"
    assert exit_reason(None) == "unknown"
