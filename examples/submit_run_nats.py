#!/usr/bin/env python3
"""Submit a run to Influence Lab over NATS, as another team's pipeline would.

    python examples/submit_run_nats.py --nats nats://127.0.0.1:4222 --token ilp_... experiment.json

``experiment.json`` is the body of ``POST /api/experiments`` (examples/demo/experiment.json
is one). The run belongs to the API token's owner and shows in their account. The script
publishes a ``RunSubmission`` on ``inflab.v1.run.submit`` (JetStream, so it is kept until
the gateway takes it), then waits for the gateway's answer: the run's ``queued`` status
event (exit 0, the run id printed) or a dead letter naming the reason (exit 1).

It needs only nats-py (``pip install nats-py``); see docs/pipelines.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

import nats


async def submit(nats_url: str, token: str, experiment: dict, prefix: str, timeout_s: float) -> int:
    submission_id = str(uuid.uuid4())  # becomes the run id
    root = f"{prefix}.v1"
    nc = await nats.connect(nats_url)
    try:
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_status(msg) -> None:
            event = json.loads(msg.data)
            if event.get("stage") == "run" and not answer.done():
                answer.set_result(("queued", event))

        async def on_dead_letter(msg) -> None:
            letter = json.loads(msg.data)
            try:
                ours = json.loads(letter.get("payload") or "{}").get("submission_id") == submission_id
            except ValueError:
                ours = False
            if ours and not answer.done():
                answer.set_result(("rejected", letter))

        # Listen before publishing, so the answer cannot be missed.
        await nc.subscribe(f"{root}.run.{submission_id}.event.status", cb=on_status)
        await nc.subscribe(f"{root}.deadletter.gateway", cb=on_dead_letter)
        submission = {"schema_version": 1, "submission_id": submission_id, "experiment": experiment}
        await nc.jetstream().publish(
            f"{root}.run.submit",
            json.dumps(submission).encode(),
            # The message id makes a retried publish one submission.
            headers={"Authorization": f"Bearer {token}", "Nats-Msg-Id": submission_id},
        )
        try:
            outcome, detail = await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            print(f"submitted {submission_id}, but no answer within {timeout_s:.0f} s: is the gateway up?",
                  file=sys.stderr)
            return 2
        if outcome == "rejected":
            print(f"rejected: {detail['reason']}", file=sys.stderr)
            return 1
        print(f"run {submission_id} queued")
        return 0
    finally:
        await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="the experiment, as the body of POST /api/experiments")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--token", required=True, help="a personal API token (POST /api/tokens)")
    parser.add_argument("--prefix", default="inflab", help="subject prefix (INFLAB_SUBJECT_PREFIX)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway's answer")
    args = parser.parse_args()
    experiment = json.loads(args.experiment.read_text())
    return asyncio.run(submit(args.nats, args.token, experiment, args.prefix, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
