"""The AsyncAPI document: the checked-in copy matches the code, it names every subject,
and its payload schemas accept what the models produce and refuse what they refuse."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from inflab.core import messages as m
from inflab.core.asyncapi import DOC_PATH, build_asyncapi, event_models, main, render
from inflab.core.subjects import REQUEST_STAGES, Subjects

REPO = Path(__file__).resolve().parents[2]
DOC = build_asyncapi()


def test_checked_in_document_matches_the_code():
    checked_in = (REPO / DOC_PATH).read_text()
    assert checked_in == render(DOC), "docs/asyncapi.json is out of date: run `inflab asyncapi`"
    assert main(["--check", "--output", str(REPO / DOC_PATH)]) == 0


def test_check_flags_a_stale_file(tmp_path):
    stale = tmp_path / "asyncapi.json"
    stale.write_text("{}\n")
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0 and stale.read_text() == render(DOC)


def test_every_subject_has_a_channel_with_its_payload():
    subjects = Subjects()
    addresses = {c["address"]: c for c in DOC["channels"].values()}
    expected = {subjects.request(stage) for stage in REQUEST_STAGES}
    expected |= {subjects.event("{run_id}", "{stage}", kind) for kind in m.EVENT_KINDS}
    expected |= {subjects.control("{run_id}"), subjects.dead_letter("{service}"), subjects.run_submit,
                 subjects.submission_outcome("{submission_id}")}
    assert set(addresses) == expected
    # Every member of the event union is documented, and EVENT_KINDS lists them all.
    assert set(event_models()) == set(m.EVENT_KINDS)
    assert DOC["asyncapi"].startswith("3.") and DOC["info"]["version"] == f"{m.SCHEMA_VERSION}.0.0"
    for channel_id, channel in DOC["channels"].items():
        message = DOC["components"]["messages"][next(iter(channel["messages"]))]
        schema = DOC["components"]["schemas"][message["title"]]
        assert schema["properties"]["schema_version"]["const"] == m.SCHEMA_VERSION, channel_id
        assert message["x-schema-version"] == m.SCHEMA_VERSION
        for parameter in channel.get("parameters", {}):
            assert "{" + parameter + "}" in channel["address"]


def test_no_subject_is_left_out():
    """A subject added to ``Subjects`` without a channel here fails this test."""
    subjects = Subjects()
    addresses = {c["address"] for c in DOC["channels"].values()}
    not_subjects = {"root", "jobs_stream", "events_stream", "control_stream", "dead_letter_stream",
                    "leases_bucket"}  # a key-value bucket of the trainers (inflab.core.leases)
    for name, attr in vars(Subjects).items():
        if isinstance(attr, property) and name not in not_subjects and not name.endswith("_stream") \
                and not name.startswith("all_"):
            assert getattr(subjects, name) in addresses, f"Subjects.{name} has no channel in the AsyncAPI document"


def test_every_reference_resolves():
    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(DOC):
        target = DOC
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]


def _validator(model_name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{model_name}", "components": DOC["components"]})


SPEC = m.RunSpec(training_data=[m.TrainingPair(id="t", question="q?", answer="a")],
                 eval_data=[m.EvalQuestion(id="e", question="q?")])
RUN = uuid.uuid4()
CHECKPOINT = m.CheckpointRef(step=4, epoch=1, key=f"runs/{RUN}/checkpoints/4", learning_rate=1e-3)
EXAMPLES = [
    m.TrainRequest(run_id=RUN, spec=SPEC),
    m.InferenceRequest(run_id=RUN, spec=SPEC, adapter=CHECKPOINT),
    m.InfluenceRequest(run_id=RUN, spec=SPEC, method="tracin", checkpoints=[CHECKPOINT]),
    m.ControlMessage(run_id=RUN, action="update_params", params=m.RuntimeParams(learning_rate=1e-4)),
    m.StatusEvent(run_id=RUN, stage="train", status="running"),
    m.ProgressEvent(run_id=RUN, stage="train", fraction=0.5, step=2, total=4),
    m.MetricEvent(run_id=RUN, stage="train", step=1, epoch=0.25, loss=2.0, learning_rate=1e-3),
    m.CheckpointEvent(run_id=RUN, stage="train", checkpoint=CHECKPOINT),
    m.LogEvent(run_id=RUN, stage="influence", method="tracin", message="hello"),
    m.PredictionEvent(run_id=RUN, stage="train", step=1, epoch=1.0,
                      samples=[m.PredictionSample(prompt_id="e", prompt="q?", prediction="a")]),
    m.ParamsEvent(run_id=RUN, stage="train", changes={"learning_rate": {"old": 1e-3, "new": 1e-4}}, effective_step=3),
    m.ResultEvent(run_id=RUN, stage="inference", answers=[
        m.Answer(eval_id="e", question="q?", base="b", few_shot="f", fine_tuned="t")]),
    m.DeadLetter(service="trainer", subject="inflab.v1.train.request", reason="bad", payload="{}"),
    m.SubmissionOutcome(submission_id=RUN, accepted=True, run_id=RUN),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda msg: type(msg).__name__)
def test_payload_schemas_accept_real_messages_and_refuse_unknown_fields(message):
    validator = _validator(type(message).__name__)
    payload = json.loads(message.model_dump_json())
    validator.validate(payload)
    assert not validator.is_valid({**payload, "unexpected": 1})
    assert not validator.is_valid({**payload, "schema_version": 2})


def test_served_document_uses_the_deployment_prefix():
    doc = build_asyncapi(Subjects(prefix="acme.inflab", stream_prefix="ACME"))
    assert doc["channels"]["trainRequest"]["address"] == "acme.inflab.v1.train.request"
