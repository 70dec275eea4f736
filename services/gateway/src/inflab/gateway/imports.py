"""Reading training pairs or evaluation questions from a JSONL or CSV file, row by row,
with every bad row reported by its line instead of the whole file refused at the first."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from inflab.gateway.schemas import EvalQuestionIn, RowError, TrainingPairIn

COLUMNS = ("id", "question", "answer")


class TooDeep(ValueError):
    """A JSONL line nests too deeply to be parsed: the file is malformed as a whole."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}: JSON nested too deeply")
        self.line = line
#: Errors listed in a report; a file of a million bad rows does not need a million lines.
MAX_REPORTED_ERRORS = 100


@dataclass
class ParsedRows:
    #: (line, item) of the valid rows, in file order.
    valid: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0


def _jsonl_rows(content: str) -> Iterator[tuple[int, Any, RowError | None]]:
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            # The parser recurses per level: a line of 100 000 "[" exhausts the stack.
            raise TooDeep(line_no) from None
        except ValueError as exc:
            yield line_no, None, RowError(row=line_no, field=None, message=f"not JSON: {exc}")
        else:
            yield line_no, row, None


def _csv_rows(content: str) -> Iterator[tuple[int, Any, RowError | None]]:
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        yield 1, None, RowError(row=1, field=None, message=f"not CSV: {exc}")
        return
    if header is None:
        return
    header = [name.strip().lstrip("\ufeff").lower() for name in header]
    unknown = [name for name in header if name not in COLUMNS]
    if unknown or "question" not in header or len(set(header)) != len(header):
        yield 1, None, RowError(
            row=1, field=None,
            message=f"the header must name the columns question and answer (and optionally id), each once; got {header}",
        )
        return
    line_no = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line_no, None, RowError(row=line_no, field=None, message=f"not CSV: {exc}")
            return
        if cells and any(cell.strip() for cell in cells):
            if len(cells) != len(header):
                yield line_no, None, RowError(
                    row=line_no, field=None, message=f"{len(cells)} cells for {len(header)} columns"
                )
            else:
                # An empty cell is a missing value: no id (numbered), no reference answer.
                yield line_no, {k: v for k, v in zip(header, cells) if v != ""}, None
        line_no = reader.line_num + 1


def parse_rows(content: str, format: str, target: str, max_text_chars: int) -> ParsedRows:
    """Every row of ``content`` validated as ``target`` items (ids may be missing).
    Raises :class:`TooDeep` for a JSONL line nested beyond what can be parsed."""
    model = TrainingPairIn if target == "training_data" else EvalQuestionIn
    parsed = ParsedRows()
    for line_no, raw, error in (_jsonl_rows if format == "jsonl" else _csv_rows)(content):
        parsed.rows += 1
        if error is not None:
            parsed.errors.append(error)
            continue
        if not isinstance(raw, dict):
            parsed.errors.append(RowError(row=line_no, field=None, message="a row must be an object"))
            continue
        try:
            item = model.model_validate(raw).model_dump()
        except ValidationError as exc:
            parsed.errors.extend(
                RowError(row=line_no, field=".".join(map(str, err["loc"])) or None, message=err["msg"])
                for err in exc.errors(include_url=False)
            )
            continue
        too_long = [name for name in ("question", "answer") if item.get(name) and len(item[name]) > max_text_chars]
        if too_long:
            parsed.errors.extend(
                RowError(row=line_no, field=name, message=f"at most {max_text_chars} characters") for name in too_long
            )
            continue
        parsed.valid.append((line_no, item))
    return parsed


def number_and_dedupe(
    existing: list[dict[str, Any]], parsed: ParsedRows, prefix: str
) -> list[dict[str, Any]]:
    """The valid rows with ids: given ones kept (a repeat of an existing or earlier id is
    reported and the row dropped), missing ones numbered after the experiment's own."""
    taken = {item["id"] for item in existing}
    kept: list[tuple[int, dict[str, Any]]] = []
    for line_no, item in parsed.valid:
        if item.get("id") is None:
            kept.append((line_no, item))
        elif item["id"] in taken:
            parsed.errors.append(RowError(row=line_no, field="id", message=f"id {item['id']!r} is already used"))
        else:
            taken.add(item["id"])
            kept.append((line_no, item))
    counter = len(existing)
    items = []
    for _, item in kept:
        if item.get("id") is None:
            while f"{prefix}{counter:02d}" in taken:
                counter += 1
            item = {**item, "id": f"{prefix}{counter:02d}"}
            taken.add(item["id"])
        items.append(item)
    parsed.errors.sort(key=lambda e: e.row)
    return items
