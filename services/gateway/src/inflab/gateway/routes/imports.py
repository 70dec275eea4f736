"""Reading a JSONL or CSV file into rows without storing anything: the editor appends them
to rows it has not saved yet (before an experiment exists). The rows and the per-row
errors are exactly those of an import into a stored experiment (``import_rows``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from inflab.gateway.deps import CurrentUser, SettingsDep
from inflab.gateway.imports import MAX_REPORTED_ERRORS, TooDeep, number_and_dedupe, parse_rows
from inflab.gateway.schemas import ImportParseReport, ImportParseRequest, RowError
from inflab.gateway.specs import body_error

router = APIRouter(prefix="/api/imports", tags=["experiments"])


@router.post(
    "/parse",
    responses={422: {"description": "Invalid request, or a JSONL line nested too deeply (`content`)."}},
)
async def parse_import(body: ImportParseRequest, user: CurrentUser, settings: SettingsDep) -> ImportParseReport:
    """The file's valid rows (ids kept, or numbered after ``existing_ids``) and every bad
    row by its line; 200 whatever the rows (an empty file is one error). Nothing is
    stored. Needs a signed-in user (a session or a ``full`` API token)."""
    try:
        parsed = parse_rows(body.content, body.format, body.target, settings.max_text_chars)
    except TooDeep as exc:
        raise RequestValidationError([body_error(("content",), str(exc), "json_too_deep")]) from None
    existing = [{"id": i} for i in body.existing_ids]
    items = number_and_dedupe(existing, parsed, "tr" if body.target == "training_data" else "ev")
    if not items and not parsed.errors:
        parsed.errors.append(RowError(row=1, field=None, message="the file holds no rows"))
    return ImportParseReport(
        target=body.target,
        rows=parsed.rows,
        training_data=items if body.target == "training_data" else [],
        eval_data=items if body.target == "eval_data" else [],
        errors=parsed.errors[:MAX_REPORTED_ERRORS],
        errors_truncated=len(parsed.errors) > MAX_REPORTED_ERRORS,
    )
