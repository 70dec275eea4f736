"""What a dead letter keeps of the message it rejects: enough to tell which run and what
kind of message it was, never the researcher's training or evaluation text.

The dead-letter stream is read by operators and kept for weeks (``INFLAB_DEADLETTER_MAX_AGE_S``),
while a job request carries a run's whole data set. So the payload is kept as JSON with
every text-bearing field (questions, answers, prompts, the data sets themselves) replaced
by a note of its size, then cut to ``INFLAB_DEADLETTER_PAYLOAD_MAX_CHARS``; a payload that
is not JSON is described, not copied. The run it names (``run_id``) and an influence
request's ``method`` travel as fields of their own, so they survive the cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

#: Fields whose values are a researcher's text (or lists of it), wherever they appear.
TEXT_FIELDS = frozenset({
    "training_data", "eval_data", "question", "answer", "reference", "prompt", "prediction",
    "ground_truth", "samples", "answers", "base", "few_shot", "fine_tuned", "message",
})


@dataclass(frozen=True)
class TrimmedPayload:
    text: str
    run_id: UUID | None = None
    method: str | None = None


def _without_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _note(item) if key in TEXT_FIELDS else _without_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_text(item) for item in value]
    return value


def _note(value: Any) -> Any:
    if isinstance(value, list):
        return f"<{len(value)} items left out>"
    if isinstance(value, str):
        return f"<{len(value)} characters left out>"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return "<left out>"


def trim_payload(data: bytes, max_chars: int) -> TrimmedPayload:
    """The part of a rejected message a dead letter may keep (see the module doc)."""
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return TrimmedPayload(f"<{len(data)} bytes, not JSON; left out>")
    run_id = method = None
    if isinstance(parsed, dict):
        try:
            run_id = UUID(str(parsed.get("run_id"))) if parsed.get("run_id") is not None else None
        except ValueError:
            run_id = None
        if isinstance(parsed.get("method"), str):
            method = parsed["method"][:64]
    try:
        text = json.dumps(_without_text(parsed), ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        text = f"<{len(data)} bytes of deeply nested JSON; left out>"
    if len(text) > max_chars:
        text = text[:max_chars] + f"...<{len(text) - max_chars} more characters cut>"
    return TrimmedPayload(text, run_id, method)
