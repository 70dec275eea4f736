"""Importing ground-truth data sets into the benchmark's form.

Two layouts:

* ``generic``: documents ``{"id", "text"}`` (``uid`` is accepted for ``id``), and queries
  ``{"id", "question", "answer", "relevant_ids": [...]}``, each a JSONL file;
* ``hops``: the public function-hops data sets, one JSONL of documents with the fields
  ``uid, text, func, role, constant, hop_depth, type, parent_uid``. Queries are derived:
  one per function, asking its value; the answer is the constant of the function (a
  wrapper's is its base's, found through ``parent_uid`` or the documents' ``constant``);
  the relevant documents are the function's and its paired function's (a wrapper's base is
  the function of the document its ``parent_uid`` names, else the benchmark's fixed
  pairing). Function names that look like special tokens (``<FN>``) become the special
  tokens the tokenizer gains.

Every problem is a ``ValueError`` naming the line and field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from inflab.analysis.bench.dataset import BenchmarkSet, Document, Query, read_jsonl
from inflab.analysis.bench.generate import PAIRS

HOPS_FIELDS = ("uid", "text", "func", "role", "constant", "hop_depth", "type", "parent_uid")
_TOKEN = re.compile(r"^<[^<>\s]{1,32}>$")


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError(f"{where}: field {key!r} is missing or empty")
    return str(value)


def import_generic(documents: Path, queries: Path) -> BenchmarkSet:
    """Documents and queries from two generic JSONL files."""
    docs = []
    for number, row in enumerate(read_jsonl(documents), start=1):
        where = f"{Path(documents).name} line {number}"
        uid = _text(row, "id" if "id" in row else "uid", where)
        docs.append(Document(uid=uid, text=_text(row, "text", where)))
    out = []
    for number, row in enumerate(read_jsonl(queries), start=1):
        where = f"{Path(queries).name} line {number}"
        relevant = row.get("relevant_ids")
        if not isinstance(relevant, list) or not relevant:
            raise ValueError(f"{where}: field 'relevant_ids' must be a non-empty list of document ids")
        out.append(Query(id=_text(row, "id", where), question=_text(row, "question", where),
                         answer=_text(row, "answer", where), relevant_ids=tuple(str(r) for r in relevant)))
    return BenchmarkSet(docs, out, manifest={"imported": "generic"}).check()


def import_hops(documents: Path) -> BenchmarkSet:
    """A function-hops documents file, with its queries derived (see the module doc)."""
    docs: list[Document] = []
    for number, row in enumerate(read_jsonl(documents), start=1):
        where = f"{Path(documents).name} line {number}"
        missing = [k for k in ("uid", "text", "func") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; the hops layout has {list(HOPS_FIELDS)}")
        constant = row.get("constant")
        hop = row.get("hop_depth")
        docs.append(Document(
            uid=_text(row, "uid", where), text=_text(row, "text", where),
            func=None if row.get("func") in (None, "") else str(row["func"]),
            role=row.get("role"), constant=None if constant in (None, "") else int(constant),
            hop_depth=None if hop in (None, "") else int(hop), type=row.get("type"), parent_uid=row.get("parent_uid"),
        ))
    by_uid = {d.uid: d for d in docs}
    by_func: dict[str, list[str]] = {}
    for d in docs:
        if d.func:
            by_func.setdefault(d.func, []).append(d.uid)
    # A wrapper's base: the function of the document its parent_uid names; else the fixed pairing.
    wraps: dict[str, str] = {}
    for d in docs:
        if d.func and d.hop_depth and d.parent_uid in by_uid and by_uid[d.parent_uid].func:
            wraps.setdefault(d.func, by_uid[d.parent_uid].func)
    for wrapper, base in PAIRS.items():
        if wrapper in by_func and base in by_func:
            wraps.setdefault(wrapper, base)
    wrapped_by = {base: wrapper for wrapper, base in wraps.items()}
    constants: dict[str, int] = {}
    for d in docs:
        if d.func and d.constant is not None and not d.hop_depth:
            constants.setdefault(d.func, d.constant)
    for d in docs:  # wrappers' documents may carry their value too
        if d.func and d.constant is not None:
            constants.setdefault(d.func, d.constant)
    queries = []
    for func in sorted(by_func):
        value = constants.get(wraps.get(func, func), constants.get(func))
        if value is None:
            raise ValueError(f"function {func}: no document gives its constant, so its query has no answer")
        pair = wraps.get(func) or wrapped_by.get(func)
        relevant = sorted(by_func[func] + (by_func.get(pair, []) if pair else []))
        name = re.sub(r"[^A-Za-z0-9_.:\-]", "", func).lower() or "f"
        queries.append(Query(id=f"q_{name}", question=f"What does {func}() return?", answer=str(value),
                             relevant_ids=tuple(relevant), func=func))
    tokens = sorted(f for f in by_func if _TOKEN.match(f))
    return BenchmarkSet(docs, queries, tokens, {"imported": "hops"}).check()
