"""How events move a run: stage keys, overall progress and the run's status.

Pure functions over plain values, so the rules are tested without a database and the
persister only has to load, call and store.
"""

from __future__ import annotations

from collections.abc import Mapping

from inflab.core.messages import EventBase, RunSpec
from inflab.core.vocabulary import TERMINAL_STATUSES, RunStage, RunStatus

#: Share of the run's progress bar each stage fills; the influence share is split evenly
#: over the run's methods. Training dominates wall-clock time on every machine we measured.
STAGE_WEIGHTS: dict[RunStage, float] = {"train": 0.6, "inference": 0.2, "influence": 0.2}


def stage_key(stage: str, method: str | None = None) -> str:
    """``train``, ``inference`` or ``influence.<method>`` (parallel methods are separate stages)."""
    if stage == "influence" and method:
        return f"influence.{method}"
    return stage


def event_stage_key(event: EventBase) -> str:
    return stage_key(event.stage, event.method)


def initial_stages(spec: RunSpec) -> dict[str, RunStatus]:
    stages: dict[str, RunStatus] = {"train": "queued", "inference": "queued"}
    stages.update({f"influence.{method}": "queued" for method in spec.influence_methods})
    return stages


def next_stage_status(current: RunStatus | None, reported: RunStatus) -> RunStatus:
    """A stage that has finished stays finished: a stale ``running`` (a redelivered or
    out-of-order event) must not reopen it."""
    if current in TERMINAL_STATUSES and reported not in TERMINAL_STATUSES:
        return current
    return reported


def stages_after_training(stages: Mapping[str, RunStatus]) -> dict[str, RunStatus]:
    """The stages once training has ended: after a failed or cancelled training the later
    stages will never be asked to run, so every one not yet ended ends ``cancelled`` (the
    run can then reach its final status)."""
    out = dict(stages)
    if out.get("train") in ("failed", "cancelled"):
        out.update({
            key: "cancelled" for key, status in out.items() if key != "train" and status not in TERMINAL_STATUSES
        })
    return out


def run_outcome(stages: Mapping[str, RunStatus]) -> RunStatus | None:
    """The run's final status implied by its stages, or None while any stage is still
    queued or at work: a failed stage shows at once in the stages, but the run waits for
    the others (their results are served). Then: ``failed`` if any stage failed, else
    ``cancelled`` if any was, else ``completed``."""
    values = set(stages.values())
    if not values or not values <= TERMINAL_STATUSES:
        return None
    if "failed" in values:
        return "failed"
    if "cancelled" in values:
        return "cancelled"
    return "completed"


def run_error(stages: Mapping[str, RunStatus], errors: Mapping[str, str], outcome: RunStatus) -> str | None:
    """The ended run's error: each failed stage with its reason (``"inference failed:
    ..."``, joined by ``"; "``, in stage order); for a cancelled run, the reasons of the
    stages cancelled with one (a cancellation is no error without)."""
    wanted = "failed" if outcome == "failed" else "cancelled" if outcome == "cancelled" else None
    if wanted is None:
        return None
    parts = [
        f"{key} {wanted}" + (f": {errors[key]}" if errors.get(key) else "")
        for key, status in stages.items()
        if status == wanted and (wanted == "failed" or errors.get(key))
    ]
    return "; ".join(parts) or None


def overall_progress(stages: Mapping[str, RunStatus], fractions: Mapping[str, float]) -> float:
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
