"""How events move a run: stage keys, overall progress and the run's status.

Pure functions over plain values, so the rules are tested without a database and the
persister only has to load, call and store.
"""

from __future__ import annotations

from collections.abc import Mapping

from inflab.common.messages import EventBase, RunSpec

TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: A stage at work ("checkpointing": training, saving an adapter).
ACTIVE = frozenset({"running", "checkpointing"})

#: Share of the run's progress bar each stage fills; the influence share is split evenly
#: over the run's methods. Training dominates wall-clock time on every machine we measured.
STAGE_WEIGHTS = {"train": 0.6, "inference": 0.2, "influence": 0.2}


def stage_key(stage: str, method: str | None = None) -> str:
    """``train``, ``inference`` or ``influence.<method>`` (parallel methods are separate stages)."""
    if stage == "influence" and method:
        return f"influence.{method}"
    return stage


def event_stage_key(event: EventBase) -> str:
    return stage_key(event.stage, event.method)


def initial_stages(spec: RunSpec) -> dict[str, str]:
    stages = {"train": "queued", "inference": "queued"}
    stages.update({f"influence.{method}": "queued" for method in spec.influence_methods})
    return stages


def next_stage_status(current: str | None, reported: str) -> str:
    """A stage that has finished stays finished: a stale ``running`` (a redelivered or
    out-of-order event) must not reopen it."""
    if current in TERMINAL and reported not in TERMINAL:
        return current
    return reported


def run_outcome(stages: Mapping[str, str]) -> str | None:
    """The run's terminal status implied by its stages, or None while it is still going.
    Any failed stage fails the run at once (the researcher learns early); any cancelled one
    cancels it; otherwise the run completes when every stage has."""
    values = set(stages.values())
    if "failed" in values:
        return "failed"
    if "cancelled" in values:
        return "cancelled"
    if values and values == {"completed"}:
        return "completed"
    return None


def overall_progress(stages: Mapping[str, str], fractions: Mapping[str, float]) -> float:
    """Weighted progress over the run's stages, in [0, 1]. A completed stage counts as done
    whatever its last progress event said; others count their latest reported fraction."""
    influence_keys = [k for k in stages if k.startswith("influence")]
    total = done = 0.0
    for key, status in stages.items():
        if key.startswith("influence"):
            weight = STAGE_WEIGHTS["influence"] / len(influence_keys)
        else:
            weight = STAGE_WEIGHTS.get(key, 0.0)
        fraction = 1.0 if status == "completed" else min(max(fractions.get(key, 0.0), 0.0), 1.0)
        total += weight
        done += weight * fraction
    return done / total if total else 0.0
