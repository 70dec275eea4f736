"""The AsyncAPI 3 document of the message contract, generated from the pydantic models
(:mod:`inflab.core.messages`) and the subject names (:mod:`inflab.core.subjects`).

It is checked in as ``docs/asyncapi.json`` (a test fails when it drifts from the code) and
served by the gateway at ``/asyncapi.json`` with the deployment's own subject prefix.
Regenerate with ``inflab asyncapi`` or ``python -m inflab.core.asyncapi``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from inflab.core import messages as m
from inflab.core.job_signing import SCHEME, SIGNATURE_HEADER
from inflab.core.subjects import REQUEST_STAGES, STAGE_EVENT_KINDS, VERSION, Subjects
from inflab.core.vocabulary import RequestStage

#: Where the checked-in copy lives, relative to the repository root.
DOC_PATH = Path("docs/asyncapi.json")

_REQUESTS: dict[RequestStage, type[BaseModel]] = {
    "train": m.TrainRequest,
    "inference": m.InferenceRequest,
    "influence": m.InfluenceRequest,
    "validation": m.ValidationRequest,
}

_MSG_ID = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "JetStream deduplication id: a retried publish with the same id is stored once.",
        }
    },
}

_SIGNED = {
    "type": "object",
    "required": [SIGNATURE_HEADER, "Nats-Msg-Id"],
    "properties": {
        SIGNATURE_HEADER: {
            "type": "string",
            "pattern": f"^{SCHEME}:",
            "description": "ed25519:<URL-safe base64 signature> by the gateway's job-signing key over the "
                           "subject, a newline and the exact payload bytes (inflab.core.job_signing).",
        },
        **_MSG_ID["properties"],
    },
}

_RUN_ID = {"description": "The run's id (a UUID)."}


def event_models() -> dict[str, type[m.EventBase]]:
    """Every run event model by its ``kind``, from the ``RunEvent`` union itself."""
    union = get_args(get_args(m.RunEvent)[0])
    return {model.model_fields["kind"].default: model for model in union}


def _message(name: str, model: type[BaseModel], summary: str, headers: bool = True) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": model.__name__,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        "x-schema-version": m.SCHEMA_VERSION,
    }
    if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
        message["description"] = " ".join(model.__doc__.split())
    if headers:
        message["headers"] = _MSG_ID
    return message


def _channel(address: str, message: str, description: str, parameters: dict | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }
    if parameters:
        channel["parameters"] = parameters
    return channel


def build_asyncapi(subjects: Subjects | None = None) -> dict[str, Any]:
    """The document for ``subjects`` (the default prefix unless given)."""
    subjects = subjects or Subjects()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    models: list[type[BaseModel]] = []

    def add(channel_id: str, channel: dict, message_id: str, model: type[BaseModel], message: dict,
            action: str, summary: str) -> None:
        channels[channel_id] = channel
        messages[message_id] = message
        models.append(model)
        operations[f"{action}_{channel_id}"] = {
            "action": action,
            "summary": summary,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
        }

    for stage in REQUEST_STAGES:
        model = _REQUESTS[stage]
        cid = f"{stage}Request"
        request = _message(cid, model, f"Start the {stage} stage of a run.")
        request["headers"] = _SIGNED
        add(cid, _channel(subjects.request(stage), cid,
                          f"Work queue of {stage} jobs (stream {subjects.jobs_stream}); one worker takes each. "
                          "Only the gateway publishes here, and signs each request; a worker dead-letters one "
                          "without a valid signature."),
            cid, model, request,
            "receive", f"The {stage} service takes a job.")

    for kind, model in event_models().items():
        cid = f"{kind}Event"
        senders = [stage for stage, kinds in STAGE_EVENT_KINDS.items() if kind in kinds]
        stage = {"description": "The stage that sends it; the payload's stage must be the same.", "enum": senders}
        add(cid, _channel(subjects.event("{run_id}", "{stage}", kind), cid,
                          f"A run's {kind} events (stream {subjects.events_stream}), sent by the "
                          f"{', '.join(senders)} stage{'s' if len(senders) > 1 else ''}; each worker's credential "
                          "may publish only its own stage's subjects. The gateway stores and streams every one, "
                          "and refuses (dead-letters) one whose payload disagrees with its subject or whose "
                          "stage does not send that kind.",
                          {"run_id": _RUN_ID, "stage": stage}),
            cid, model, _message(cid, model, f"A run's {kind} event."),
            "send", f"A worker reports a {kind} event.")

    add("runControl", _channel(subjects.control("{run_id}"), "runControl",
                               f"Instructions to a running job (stream {subjects.control_stream}, kept for replay).",
                               {"run_id": _RUN_ID}),
        "runControl", m.ControlMessage, _message("runControl", m.ControlMessage, "Cancel a run or change its parameters."),
        "receive", "The trainer applies a control message at its next optimizer step.")

    submission = _message("runSubmission", m.RunSubmission, "A pipeline submits a run.")
    submission["description"] += (
        " Publish with the pipeline credential (it may publish this subject only, and take replies under the "
        "inbox prefix _INBOX.pipeline); follow the run over HTTP with the API token (docs/pipelines.md).")
    submission["headers"] = {
        "type": "object",
        "required": ["Authorization"],
        "properties": {
            "Authorization": {"type": "string",
                              "description": "Bearer <personal API token>: the run belongs to the token's user."},
            **_MSG_ID["properties"],
        },
    }
    add("runSubmission", _channel(subjects.run_submit, "runSubmission",
                                  f"Pipelines' runs (work-queue stream {subjects.submissions_stream}): the gateway "
                                  "checks the API token, creates the experiment and the run as the token's user "
                                  "and queues it, or dead-letters the submission with the reason (docs/pipelines.md)."),
        "runSubmission", m.RunSubmission, submission,
        "receive", "The gateway creates and queues the submitted run.")

    add("submissionOutcome", _channel(subjects.submission_outcome("{submission_id}"), "submissionOutcome",
                                      "The gateway's answer to one submission (core NATS, not kept: subscribe "
                                      "before publishing the submission). The pipeline credential may read it.",
                                      {"submission_id": {"description": "The submission's id (a UUID)."}}),
        "submissionOutcome", m.SubmissionOutcome,
        _message("submissionOutcome", m.SubmissionOutcome, "A submission was accepted, or refused and why.",
                 headers=False),
        "send", "The gateway answers a pipeline's submission.")

    add("deadLetter", _channel(subjects.dead_letter("{service}"), "deadLetter",
                               f"Messages a service rejected, with the reason (stream {subjects.dead_letter_stream}).",
                               {"service": {"description": "The rejecting service: gateway, trainer, inference or influence."}}),
        "deadLetter", m.DeadLetter, _message("deadLetter", m.DeadLetter, "A rejected message and why.", headers=False),
        "send", "A service rejects a malformed message or one that failed too often.")

    _, defs = models_json_schema([(model, "validation") for model in models],
                                 ref_template="#/components/schemas/{model}")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Influence Lab message contract",
            "version": f"{m.SCHEMA_VERSION}.0.0",
            "description": (
                f"Every subject of Influence Lab on NATS JetStream, subject version {VERSION}, payload "
                f"schema_version {m.SCHEMA_VERSION}. Payloads are JSON; unknown fields are refused "
                "and the message ends on the dead-letter subject. Delivery is at-least-once; every "
                "handler is idempotent. Generated from inflab.core.messages; do not edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs["$defs"]},
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inflab.core.asyncapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", "-o", type=Path, default=DOC_PATH, help="file to write ('-' for stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the code")
    args = parser.parse_args(argv)
    text = render(build_asyncapi())
    if str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run `inflab asyncapi`", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
