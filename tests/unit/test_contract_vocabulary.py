"""The contract's closed sets and the object-store layout, each defined once: what is
derived from them agrees with them, and every key the layout makes is one a message may
carry."""

from __future__ import annotations

import uuid
from typing import get_args

import pytest

from inflab.core import messages as m
from inflab.core import store_layout as layout
from inflab.core.influence_methods import ARGS_MODELS, METHODS
from inflab.core.subjects import REQUEST_STAGES, STAGE_EVENT_KINDS
from inflab.core.vocabulary import (
    ACTIVE_STATUSES,
    INFLUENCE_METHODS,
    TERMINAL_STATUSES,
    EventStage,
    RunStatus,
    ValidationStatus,
    values,
)


def test_event_kinds_are_the_discriminators_of_the_event_union():
    union = get_args(get_args(m.RunEvent)[0])
    assert m.EVENT_MODELS == union
    assert m.EVENT_KINDS == tuple(model.model_fields["kind"].default for model in union)
    assert values(m.EventKind) == m.EVENT_KINDS
    run_id = uuid.uuid4()
    checkpoint = {"step": 1, "epoch": 1, "key": layout.checkpoint_prefix(run_id, 1), "learning_rate": 0.1}
    required = {
        "status": {"status": "running"},
        "progress": {"fraction": 0.5},
        "metric": {"step": 1, "epoch": 1.0, "loss": 1.0, "learning_rate": 0.1},
        "checkpoint": {"checkpoint": checkpoint},
        "log": {"message": "x"},
        "result": {},
        "prediction": {"step": 1, "epoch": 1.0, "samples": []},
        "params": {"changes": {}, "effective_step": 1},
    }
    assert set(required) == set(m.EVENT_KINDS)
    for kind, model in m.EVENT_MODEL_BY_KIND.items():
        event = m.parse_event(model(run_id=run_id, stage="train", **required[kind]).model_dump_json())
        assert type(event) is model and event.kind == kind


def test_every_stage_sends_kinds_of_the_union_only():
    assert set(STAGE_EVENT_KINDS) == set(REQUEST_STAGES)
    assert STAGE_EVENT_KINDS["train"] == m.EVENT_KINDS
    for kinds in STAGE_EVENT_KINDS.values():
        assert set(kinds) <= set(m.EVENT_KINDS)
    assert set(REQUEST_STAGES) | {"run"} == set(values(EventStage))


def test_statuses_partition():
    statuses = set(values(RunStatus))
    assert TERMINAL_STATUSES <= statuses and ACTIVE_STATUSES <= statuses
    assert not TERMINAL_STATUSES & ACTIVE_STATUSES
    assert statuses - TERMINAL_STATUSES - ACTIVE_STATUSES == {"queued"}
    assert set(values(ValidationStatus)) == statuses - {"checkpointing"}


def test_influence_methods_have_their_arguments_and_catalogue_entry():
    assert tuple(ARGS_MODELS) == tuple(METHODS) == INFLUENCE_METHODS
    with pytest.raises(ValueError, match="unknown influence method"):
        m.RunSpec(training_data=[{"id": "t", "question": "q", "answer": "a"}],
                  eval_data=[{"id": "e", "question": "q"}], influence_methods=["nope"])


def test_layout_keys_lie_under_their_run():
    run_id = uuid.uuid4()
    keys = [
        layout.checkpoint_prefix(run_id, 12),
        layout.training_summary_key(run_id),
        layout.training_metrics_key(run_id),
        layout.influence_key(run_id, "tracin"),
        layout.validation_key(run_id, uuid.uuid4()),
    ]
    for key in keys:
        assert m.run_key_error(key, run_id) is None, key
        assert m.run_key_error(key, uuid.uuid4()) is not None
    assert layout.checkpoint_prefix(run_id, 12) == f"runs/{run_id}/checkpoints/00000012"
    assert layout.checkpoint_prefix(run_id, 12).startswith(layout.checkpoints_prefix(run_id))
    assert layout.influence_key(run_id, "tracin") == f"runs/{run_id}/influence/tracin.safetensors"


def test_checkpoint_meta_reads_what_the_trainer_writes():
    written = {"step": 40, "epoch": 2, "loss": 0.25, "learning_rate": 0.001}
    meta = layout.CheckpointMeta.model_validate(written)
    assert meta.model_dump() == written
    # A meta.json without a loss (a checkpoint before any logged step) still reads.
    assert layout.CheckpointMeta.model_validate({"step": 0, "learning_rate": 0.1}).loss is None
