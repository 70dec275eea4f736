"""Structured logs: one JSON object per line, each carrying the id of the request it
belongs to, with credentials masked wherever they appear in a message
(:mod:`inflab.core.redaction`, which the workers' logs use too).

The request id comes from the client's ``X-Request-ID`` when it is a sane token (so a
proxy's or pipeline's id follows the request through), otherwise it is made here; the
response returns it either way.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone

from inflab.core import redaction
from inflab.core.redaction import redact

#: The id of the request being served, for every log record made while serving it.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

__all__ = ["JsonFormatter", "redact", "request_id_from", "request_id_var", "setup_json_logging"]


def request_id_from(header: str | None) -> str:
    return header if header and _SANE_ID.match(header) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...extra, "exception"}``."""

    #: Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=True)


def setup_json_logging(level: str | int = "INFO") -> None:
    """The root logger writes JSON lines to stderr (what a log collector reads)."""
    redaction.install()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
    # Requests are logged by the gateway itself, with their route and request id.
    logging.getLogger("uvicorn.access").disabled = True
