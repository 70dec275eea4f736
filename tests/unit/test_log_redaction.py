"""Worker logs are redacted like the gateway's: once a process has set up its logging, a
credential in any record (message, arguments or traceback) never reaches a handler."""

from __future__ import annotations

import io
import logging

from inflab.core.logging import setup_logging


def test_worker_logs_mask_credentials_in_messages_and_tracebacks() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("INFO", rich=False)
        out = io.StringIO()
        root.handlers[0].setStream(out)
        log = logging.getLogger("inflab.trainer.test")
        log.info("connected to %s", "nats://trainer:n4ts-s3cret@127.0.0.1:4222")
        log.info("object store s3://bucket/runs with aws_secret_access_key=AKIAsecretvalue")
        try:
            raise RuntimeError("upload failed: Authorization: Bearer ilp_leakedtoken123")
        except RuntimeError:
            log.exception("checkpoint upload failed")
        log.info("step %d of %d", 3, 10)  # ordinary records keep their arguments
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    text = out.getvalue()
    for secret in ("n4ts-s3cret", "AKIAsecretvalue", "ilp_leakedtoken123"):
        assert secret not in text, text
    assert "nats://trainer:***@127.0.0.1:4222" in text and "step 3 of 10" in text
    assert "Traceback" in text and "RuntimeError" in text
