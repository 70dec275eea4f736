#!/usr/bin/env python3
"""Submit a run to Influence Lab over NATS, as another team's pipeline would.

    python examples/submit_run_nats.py --nats-url-file .inflab/secrets/nats/pipeline.url \\
        --token ilp_... experiment.json

``experiment.json`` is the body of ``POST /api/experiments`` (examples/demo/experiment.json
is one). The run belongs to the API token's owner and shows in their account.

NATS refuses clients without credentials: connect with the deployment's *pipeline*
credential (``--nats nats://pipeline:<password>@host:4222``, or ``--nats-url-file`` naming
the file that holds that URL: ``inflab ps`` shows where the embedded stack keeps it). That
credential may publish ``inflab.v1.run.submit`` and read the gateway's answers, nothing
else, and takes its replies under the inbox prefix ``_INBOX.pipeline``.

The script listens for the gateway's answer on ``inflab.v1.submission.<submission_id>``,
publishes a ``RunSubmission`` (JetStream, so it is kept until the gateway takes it), and
prints the answer: ``run <id> queued`` (exit 0) or the reason it was refused (exit 1).
Follow the run over HTTP with the same token (``GET /api/runs/<id>/events``).

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

#: The pipeline credential may receive replies only under this prefix.
INBOX_PREFIX = "_INBOX.pipeline"


async def submit(nats_url: str, token: str, experiment: dict, prefix: str, timeout_s: float) -> int:
    submission_id = str(uuid.uuid4())  # becomes the run id
    root = f"{prefix}.v1"
    nc = await nats.connect(nats_url, inbox_prefix=INBOX_PREFIX, allow_reconnect=False)
    try:
        # Listen before publishing, so the answer cannot be missed.
        answers = await nc.subscribe(f"{root}.submission.{submission_id}")
        submission = {"schema_version": 1, "submission_id": submission_id, "experiment": experiment}
        await nc.jetstream().publish(
            f"{root}.run.submit",
            json.dumps(submission).encode(),
            # The message id makes a retried publish one submission.
            headers={"Authorization": f"Bearer {token}", "Nats-Msg-Id": submission_id},
        )
        try:
            answer = json.loads((await answers.next_msg(timeout=timeout_s)).data)
        except nats.errors.TimeoutError:
            print(f"submitted {submission_id}, but no answer within {timeout_s:.0f} s: is the gateway up?",
                  file=sys.stderr)
            return 2
        if not answer["accepted"]:
            print(f"rejected: {answer['reason']}", file=sys.stderr)
            return 1
        print(f"run {answer['run_id']} queued")
        return 0
    finally:
        await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="the experiment, as the body of POST /api/experiments")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--nats", help="NATS URL with the pipeline credential: nats://pipeline:PASSWORD@host:4222")
    where.add_argument("--nats-url-file", type=Path, help="a file holding that URL (see `inflab ps`)")
    parser.add_argument("--token", required=True, help="a personal API token (POST /api/tokens)")
    parser.add_argument("--prefix", default="inflab", help="subject prefix (INFLAB_SUBJECT_PREFIX)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway's answer")
    args = parser.parse_args()
    url = args.nats or args.nats_url_file.read_text().strip()
    experiment = json.loads(args.experiment.read_text())
    return asyncio.run(submit(url, args.token, experiment, args.prefix, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
