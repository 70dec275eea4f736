"""A benchmark data set: training documents, queries with their expected answer, and the
ground truth (the documents relevant to each query), as the benchmark mode reads them.

On disk (what ``inflab bench generate`` writes and ``inflab bench run`` reads) a folder of
three JSONL files and a manifest:

* ``documents.jsonl``: one document a line, in the function-hops field layout
  (``uid, text, func, role, constant, hop_depth, type, parent_uid``; only ``uid`` and
  ``text`` are needed by the pipeline);
* ``queries.jsonl``: ``{"id", "question", "answer", "func"}``;
* ``ground_truth.jsonl``: ``{"query_id", "relevant_ids": [...]}``;
* ``manifest.json``: how it was made (generator, seed, sizes) and the special tokens the
  tokenizer must gain (``special_tokens``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DOCUMENTS = "documents.jsonl"
QUERIES = "queries.jsonl"
GROUND_TRUTH = "ground_truth.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Document:
    uid: str
    text: str
    func: str | None = None
    role: str | None = None
    constant: int | None = None
    hop_depth: int | None = None
    type: str | None = None
    parent_uid: str | None = None


@dataclass(frozen=True)
class Query:
    id: str
    question: str
    answer: str
    relevant_ids: tuple[str, ...]
    func: str | None = None


@dataclass
class BenchmarkSet:
    documents: list[Document]
    queries: list[Query]
    special_tokens: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def check(self) -> "BenchmarkSet":
        """Refuse what the benchmark cannot score (``ValueError`` naming the item): duplicate
        ids, a query without relevant ids, a relevant id that is no document."""
        uids = [d.uid for d in self.documents]
        if not uids:
            raise ValueError("documents: the set has none")
        if len(set(uids)) != len(uids):
            raise ValueError("documents: uids must be unique")
        if not self.queries:
            raise ValueError("queries: the set has none")
        qids = [q.id for q in self.queries]
        if len(set(qids)) != len(qids):
            raise ValueError("queries: ids must be unique")
        known = set(uids)
        for q in self.queries:
            if not q.relevant_ids:
                raise ValueError(f"queries.{q.id}.relevant_ids: a query needs at least one relevant document")
            missing = [r for r in q.relevant_ids if r not in known]
            if missing:
                raise ValueError(f"queries.{q.id}.relevant_ids: {missing[:3]} are not document uids")
            if not q.answer.strip():
                raise ValueError(f"queries.{q.id}.answer: a query needs its expected answer")
        return self

    @property
    def ground_truth(self) -> dict[str, list[str]]:
        return {q.id: list(q.relevant_ids) for q in self.queries}


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"


def write_set(bench: BenchmarkSet, out: Path) -> list[Path]:
    """Write ``bench`` to the folder ``out`` (created); byte-identical for equal sets."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        DOCUMENTS: "".join(_line(asdict(d)) for d in bench.documents),
        QUERIES: "".join(_line({"id": q.id, "question": q.question, "answer": q.answer, "func": q.func})
                         for q in bench.queries),
        GROUND_TRUTH: "".join(_line({"query_id": q.id, "relevant_ids": list(q.relevant_ids)}) for q in bench.queries),
        MANIFEST: json.dumps({**bench.manifest, "special_tokens": bench.special_tokens}, indent=2, sort_keys=True) + "\n",
    }
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{Path(path).name} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{Path(path).name} line {number}: expected an object")
        rows.append(row)
    return rows


def read_set(folder: Path) -> BenchmarkSet:
    """Read a folder written by :func:`write_set` (checked)."""
    folder = Path(folder)
    documents = [Document(**{k: row.get(k) for k in Document.__dataclass_fields__}) for row in read_jsonl(folder / DOCUMENTS)]
    truth = {row["query_id"]: tuple(row["relevant_ids"]) for row in read_jsonl(folder / GROUND_TRUTH)}
    queries = [Query(str(r["id"]), str(r["question"]), str(r["answer"]), truth.get(str(r["id"]), ()), r.get("func"))
               for r in read_jsonl(folder / QUERIES)]
    manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    return BenchmarkSet(documents, queries, list(manifest.pop("special_tokens", [])), manifest).check()
