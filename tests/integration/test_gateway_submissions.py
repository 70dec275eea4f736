"""Runs submitted over NATS by a pipeline, against the real gateway, NATS and Postgres:
with a valid API token the run is its owner's (in their GET /api/runs, its train request
carrying their id); a missing, unknown or revoked token or an invalid experiment is
dead-lettered with the reason. The example script is what submits."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from inflab.core.messages import DeadLetter, RunSubmission, TrainRequest
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings, sign_up

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "submit_run_nats.py"
EXPERIMENT = {
    "name": "from a pipeline",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def sub_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "sub")
    yield own
    asyncio.run(delete_streams(own))


async def run_example(settings: Settings, token: str, experiment_file: Path) -> subprocess.CompletedProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--nats", settings.nats_url, "--token", token,
        "--prefix", settings.subject_prefix, "--timeout", "20", str(experiment_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return subprocess.CompletedProcess([], process.returncode, out.decode(), err.decode())


async def test_a_submission_with_an_api_token_is_its_owners_run(sub_settings, tmp_path) -> None:
    subjects = Subjects.from_settings(sub_settings)
    experiment_file = tmp_path / "experiment.json"
    experiment_file.write_text(json.dumps(EXPERIMENT))
    async with gateway_in_process(sub_settings) as (app, owner):
        token = (await owner.post("/api/tokens", json={"name": "pipeline"})).json()["token"]

        submitted = await run_example(sub_settings, token, experiment_file)
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.split()[1]

        runs = (await owner.get("/api/runs")).json()
        assert [r["id"] for r in runs] == [run_id] and runs[0]["status"] == "queued"
        experiment = (await owner.get(f"/api/experiments/{runs[0]['experiment_id']}")).json()
        assert experiment["name"] == "from a pipeline"
        me = (await owner.get("/api/auth/me")).json()
        nc = await nats.connect(sub_settings.nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe(
                subjects.train_request, durable=subjects.durable("test_trainer"), stream=subjects.jobs_stream
            )
            [msg] = await sub.fetch(1, timeout=10)
            await msg.ack()
            request = TrainRequest.model_validate_json(msg.data)
            assert str(request.run_id) == run_id and str(request.owner_id) == me["id"]
        finally:
            await nc.close()

        # Someone else does not see it.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as other:
            await sign_up(other, f"other-{uuid.uuid4().hex[:8]}@tests.invalid")
            assert (await other.get("/api/runs")).json() == []
            assert (await other.get(f"/api/runs/{run_id}")).status_code == 404

        # A revoked token is refused, and the script says why.
        token_id = (await owner.get("/api/tokens")).json()[0]["id"]
        assert (await owner.delete(f"/api/tokens/{token_id}")).status_code == 204
        refused = await run_example(sub_settings, token, experiment_file)
        assert refused.returncode == 1 and "unknown or revoked API token" in refused.stderr
        assert len((await owner.get("/api/runs")).json()) == 1


async def test_bad_submissions_are_dead_lettered_with_the_reason(sub_settings) -> None:
    subjects = Subjects.from_settings(sub_settings)
    async with gateway_in_process(sub_settings) as (app, owner):
        token = (await owner.post("/api/tokens", json={"name": "pipeline"})).json()["token"]
        runs_before = len((await owner.get("/api/runs")).json())
        experiments_before = len((await owner.get("/api/experiments")).json())
        nc = await nats.connect(sub_settings.nats_url)
        letters: asyncio.Queue[DeadLetter] = asyncio.Queue()

        async def on_letter(msg) -> None:
            letters.put_nowait(DeadLetter.model_validate_json(msg.data))

        try:
            await nc.subscribe(subjects.dead_letter("gateway"), cb=on_letter)
            js = nc.jetstream()
            cases = [
                ({}, EXPERIMENT, "no API token"),
                ({"Authorization": "Bearer ilp_not-a-real-token"}, EXPERIMENT, "unknown or revoked API token"),
                ({"Authorization": f"Bearer {token}"}, {**EXPERIMENT, "training_data": []}, "invalid experiment"),
                ({"Authorization": f"Bearer {token}"}, {**EXPERIMENT, "learning_rte": 1}, "invalid experiment"),
            ]
            for headers, experiment, reason in cases:
                submission = RunSubmission(experiment=experiment)
                await js.publish(subjects.run_submit, submission.model_dump_json().encode(), headers=headers or None)
                letter = await asyncio.wait_for(letters.get(), 10)
                assert letter.service == "gateway" and reason in letter.reason, letter.reason
                assert json.loads(letter.payload)["submission_id"] == str(submission.submission_id)
            # Malformed: not a RunSubmission at all.
            await js.publish(subjects.run_submit, b'{"experiment": 3}', headers={"Authorization": f"Bearer {token}"})
            assert "malformed RunSubmission" in (await asyncio.wait_for(letters.get(), 10)).reason

            # The same submission twice (a pipeline's retry) is one run.
            resubmitted = RunSubmission(experiment=EXPERIMENT)
            submission = resubmitted.model_dump_json().encode()
            for _ in range(2):
                await js.publish(subjects.run_submit, submission, headers={"Authorization": f"Bearer {token}"})
            # The consumer takes one message at a time: once this is dead-lettered, both are handled.
            await js.publish(subjects.run_submit, submission, headers={})
            assert "no API token" in (await asyncio.wait_for(letters.get(), 10)).reason
            runs = (await owner.get("/api/runs")).json()
            assert len(runs) == runs_before + 1 and runs[0]["id"] == str(resubmitted.submission_id)
            assert len((await owner.get("/api/experiments")).json()) == experiments_before + 1
        finally:
            await nc.close()
