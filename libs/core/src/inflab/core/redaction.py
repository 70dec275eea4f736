"""Credentials kept out of every log line: ``user:password@`` in URLs (a NATS or database
URL with its credential), ``key=value`` and ``"key": "value"`` for credential-like keys,
and bearer tokens, wherever they appear in a message or a traceback.

:func:`install` makes every log record of the process redacted as it is made (a log
record factory), whatever handler later writes it: the gateway's JSON lines, a worker's
plain log file, or the stderr of a Ray task that Ray collects.
"""

from __future__ import annotations

import logging
import re

_URL_CREDENTIALS = re.compile(r"(?P<keep>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"(?P<keep>[\"']?\b[\w\-]*(?:password|passwd|secret|token|api[_\-]?key|authorization|cookie)[\w\-]*[\"']?"
    r"\s*[=:]\s*[\"']?)(?:bearer\s+)?[^\s\"',;&]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<keep>\bbearer\s+)[A-Za-z0-9._~+/\-]+=*", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with credentials it may hold replaced by ``***``."""
    for pattern in (_URL_CREDENTIALS, _BEARER, _KEY_VALUE):
        text = pattern.sub(lambda m: f"{m.group('keep')}{MASK}" + ("@" if pattern is _URL_CREDENTIALS else ""), text)
    return text


_installed = False


def install() -> None:
    """Redact every log record this process makes from now on (idempotent)."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports that itself, later
            return record
        cleaned = redact(message)
        if cleaned != message:  # else keep msg and args as they are (some formatters read args)
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Handlers print exc_text when it is set, instead of formatting exc_info anew.
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacted_record)
    _installed = True
