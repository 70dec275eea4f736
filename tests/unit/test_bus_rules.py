"""The rules of the closed bus, as pure functions: the generated permissions (no wildcard
JetStream API but the operator's, a pipeline that can only submit), the event-origin check
of the persister, object-store keys bound to their run, and job signatures. The same rules
are exercised against a real nats-server in tests/integration/test_bus_permissions.py."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from inflab.core.job_signing import BadSignature, JobSigner, JobVerifier, new_key_pair, verify_key_of
from inflab.core.messages import (
    CheckpointEvent,
    CheckpointRef,
    InfluenceMatrix,
    LogEvent,
    ResultEvent,
    StatusEvent,
    TrainingSummary,
    run_key_error,
)
from inflab.core.nats_permissions import ROLES, RolePermissions, authorization_config, inbox_prefix
from inflab.core.subjects import STAGE_EVENT_KINDS, Subjects
from inflab.gateway.event_origin import origin_refusal

S = Subjects()
RULES = RolePermissions(S)
RUN = uuid.uuid4()


def test_only_the_operator_has_the_whole_jetstream_api():
    for role in ROLES:
        permissions = RULES.for_role(role)
        wide = [p for p in permissions.publish + permissions.subscribe if p in (">", "$JS.API.>", "$JS.>", "_INBOX.>")]
        assert (role == "operator") == bool(wide), (role, wide)
        # Every API subject names one stream (and a consumer where it is about one).
        for subject in permissions.publish:
            if subject.startswith("$JS.API.") and role != "operator":
                assert any(stream in subject for stream in RULES.streams()), subject


def test_the_pipeline_can_only_submit_and_read_answers():
    pipeline = RULES.for_role("pipeline")
    assert pipeline.publish == (S.run_submit,)
    assert set(pipeline.subscribe) == {"_INBOX.pipeline.>", S.submission_outcome("*")}


def test_only_the_gateway_publishes_requests_and_control_and_nobody_subscribes_to_submissions():
    for role in ROLES[:-1]:  # the operator aside
        permissions = RULES.for_role(role)
        requests = [p for p in permissions.publish
                    if not p.startswith("$") and (p.endswith(".request") or p.endswith(".control"))]
        assert bool(requests) == (role == "gateway"), (role, requests)
        assert S.run_submit not in permissions.subscribe
        # Each role's replies come under its own inbox prefix only.
        assert [p for p in permissions.subscribe if p.startswith("_INBOX")] == [f"{inbox_prefix(role)}.>"]


def test_each_worker_publishes_its_own_stage_events_only():
    for role, stages in (("trainer", ("train", "validation")), ("inference", ("inference",)),
                         ("influence", ("influence",))):
        events = {p for p in RULES.for_role(role).publish if ".event." in p and not p.startswith("$")}
        assert events == {S.stage_events(stage, kind) for stage in stages for kind in STAGE_EVENT_KINDS[stage]}
    assert not [p for p in RULES.for_role("gateway").publish if ".event." in p and not p.startswith("$")]


def test_the_server_config_has_a_user_per_role_and_no_anonymous_user():
    text = authorization_config({role: f"pw-{role}" for role in ROLES}, S)
    assert text.startswith("authorization {") and "no_auth_user" not in text
    for role in ROLES:
        assert f'"user": "{role}"' in text and f"pw-{role}" not in text  # bcrypt hashes only
    assert text.count('"password": "$2b$10$') == len(ROLES)


# --------------------------------------------------------------------------- event origin
def test_an_event_must_come_from_a_stage_that_sends_it():
    def refusal(subject, event):
        found = origin_refusal(S, subject, event)
        return found and found.category

    running = StatusEvent(run_id=RUN, stage="train", status="running")
    assert refusal(S.event(RUN, "train", "status"), running) is None
    assert refusal(S.event(RUN, "inference", "status"), running) == "mismatch"
    assert refusal(S.event(uuid.uuid4(), "train", "status"), running) == "mismatch"
    assert refusal(S.event(RUN, "run", "status"), StatusEvent(run_id=RUN, stage="run", status="failed")) == "stage"
    ckpt = CheckpointRef(step=1, epoch=1, key=f"runs/{RUN}/checkpoints/1", learning_rate=1e-3)
    assert refusal(S.event(RUN, "inference", "checkpoint"),
                   CheckpointEvent(run_id=RUN, stage="inference", checkpoint=ckpt)) == "kind"
    summary = TrainingSummary(steps=1, epochs=1, tokens=1, duration_s=1.0, checkpoints=[ckpt])
    assert refusal(S.event(RUN, "influence", "result"),
                   ResultEvent(run_id=RUN, stage="influence", method="tracin", training=summary)) == "content"
    assert refusal(S.event(RUN, "influence", "log"), LogEvent(run_id=RUN, stage="influence", message="x")) == "content"
    matrix = InfluenceMatrix(method="datainf", eval_ids=["e"], train_ids=["t"], key=f"runs/{RUN}/influence/x")
    assert refusal(S.event(RUN, "influence", "result"),
                   ResultEvent(run_id=RUN, stage="influence", method="tracin", influence=matrix)) == "content"
    assert refusal("elsewhere.v1.run.x.event.train.status", running) == "subject"


# --------------------------------------------------------------------------- object-store keys
@pytest.mark.parametrize("key", [
    "runs/other/checkpoints/1", f"runs/{RUN}", f"runs/{RUN}/../other/x", f"/runs/{RUN}/x", f"runs/{RUN}//x",
    f"runs/{RUN}/./x", "checkpoints/1", f"xruns/{RUN}/a",
])
def test_keys_outside_the_run_are_refused(key):
    assert run_key_error(key, RUN)
    with pytest.raises(ValidationError, match="checkpoint.key"):
        CheckpointEvent(run_id=RUN, stage="train",
                        checkpoint=CheckpointRef(step=1, epoch=1, key=key, learning_rate=1e-3))


def test_keys_under_the_run_are_accepted():
    assert run_key_error(f"runs/{RUN}/checkpoints/00000004", RUN) is None
    assert run_key_error(f"runs/{RUN}/influence/tracin.normalized.safetensors", RUN) is None


# --------------------------------------------------------------------------- signatures
def test_a_signature_binds_key_subject_and_bytes():
    signing, verify = new_key_pair()
    assert verify_key_of(signing) == verify
    signer, verifier = JobSigner(signing), JobVerifier(verify)
    header = signer.sign("a.train.request", b"body")
    verifier.verify("a.train.request", b"body", header)
    for subject, body, sig in (("a.inference.request", b"body", header), ("a.train.request", b"bodx", header),
                               ("a.train.request", b"body", JobSigner(new_key_pair()[0]).sign("a.train.request", b"body")),
                               ("a.train.request", b"body", None), ("a.train.request", b"body", "ed25519:!!")):
        with pytest.raises(BadSignature):
            verifier.verify(subject, body, sig)
    with pytest.raises(ValueError, match="INFLAB_JOB_VERIFY_KEY"):
        JobVerifier("not a key")
