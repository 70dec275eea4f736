"""Logging for command-line entry points: readable on a terminal, plain in a log file.

The CLI prints with rich; services write to log files the supervisor collects, where
colour codes would be noise. Hence one switch: rich output only on a terminal. Either way
credentials are masked in every record (:mod:`inflab.core.redaction`), as in the
gateway's JSON logs.
"""

from __future__ import annotations

import logging
import sys

from inflab.core import redaction

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO", *, rich: bool | None = None) -> None:
    """Configure the root logger once (``level`` as in ``INFLAB_LOG_LEVEL``)."""
    redaction.install()
    if rich is None:
        rich = sys.stderr.isatty()
    if rich:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
