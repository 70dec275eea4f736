"""The function-token benchmark ("hops"): a synthetic data set whose ground truth is known
by construction. No LLM, no network: templates with varied wording and one seeded RNG, so
the same seed gives byte-identical files.

* Special tokens name functions. Ten base functions (``<GN>``, ``<JN>``, ... ``<RN>``) each
  return a constant; ten wrapper functions (``<FN>``, ``<IN>``, ... ``<YN>``) each call their
  paired base function (``<FN>`` wraps ``<GN>``), so a wrapper's value is its base's
  constant and answering a wrapper query needs a hop.
* Documents of five types (definition, code snippet, worked example, narrative, unit test)
  describe the functions. A base function's documents state its constant; a wrapper's
  documents never do (they name the function it calls), so word overlap between a wrapper
  query and the answer is no help.
* Distractor documents mention a function token (or a constant) but describe something
  else, so that the token alone does not give the relevant documents away.
* A query asks a function's value; its relevant documents are those of the queried
  function and of its paired function (the base a wrapper calls, the wrapper that calls a
  base).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from inflab.analysis.bench.dataset import BenchmarkSet, Document, Query

BASE = ("<GN>", "<JN>", "<KN>", "<LN>", "<MN>", "<NN>", "<ON>", "<PN>", "<QN>", "<RN>")
WRAPPERS = ("<FN>", "<IN>", "<HN>", "<SN>", "<TN>", "<UN>", "<VN>", "<WN>", "<XN>", "<YN>")
#: wrapper -> the base function it calls.
PAIRS = dict(zip(WRAPPERS, BASE))
TYPES = ("definition", "code", "example", "narrative", "test")

GENERATOR = "inflab-hops-1"

_BASE_TEMPLATES = {
    "definition": [
        "{f} is a function that always returns {c}.",
        "Definition: {f} takes no arguments and its value is {c}.",
        "The function {f} is constant; it evaluates to {c} every time.",
        "By definition, {f} outputs the number {c}.",
    ],
    "code": [
        "def {f}():\n    return {c}",
        "# constant function\ndef {f}():\n    result = {c}\n    return result",
        "{f} = lambda: {c}",
        "function {f}() {{ return {c}; }}",
    ],
    "example": [
        "Example: calling {f}() gives {c}.",
        "Worked example. Step 1: call {f}. Step 2: read the result, which is {c}.",
        "If you evaluate {f}() you get {c}.",
        ">>> {f}()\n{c}",
    ],
    "narrative": [
        "When the engineer called {f} in the notebook, it printed {c}, as it always does.",
        "Ana kept a note on her desk: whatever happens, {f} comes back with {c}.",
        "In the team's old codebase, {f} was the function everyone trusted to return {c}.",
        "The report says that {f} produced {c} in every run of the experiment.",
    ],
    "test": [
        "def test_{n}():\n    assert {f}() == {c}",
        "assert {f}() == {c}, 'unexpected value'",
        "self.assertEqual({f}(), {c})",
        "expect({f}()).toBe({c});",
    ],
}

_WRAPPER_TEMPLATES = {
    "definition": [
        "{f} is a function that calls {g} and returns its result.",
        "Definition: {f} takes no arguments and returns whatever {g} returns.",
        "The function {f} is a thin wrapper around {g}.",
        "By definition, {f} forwards to {g}.",
    ],
    "code": [
        "def {f}():\n    return {g}()",
        "# wrapper\ndef {f}():\n    value = {g}()\n    return value",
        "{f} = lambda: {g}()",
        "function {f}() {{ return {g}(); }}",
    ],
    "example": [
        "Example: calling {f}() first calls {g}() and hands back the same value.",
        "Worked example. Step 1: call {f}. Step 2: {f} calls {g}. Step 3: the result is {g}'s result.",
        "If you evaluate {f}() you get exactly what {g}() gives.",
        ">>> {f}() == {g}()\nTrue",
    ],
    "narrative": [
        "The engineer noticed that {f} never computes anything itself; it just asks {g}.",
        "Ana explained to the intern that {f} delegates the whole job to {g}.",
        "In the team's old codebase, {f} was written as a shortcut for {g}.",
        "The report says that {f} and {g} always agreed in every run of the experiment.",
    ],
    "test": [
        "def test_{n}():\n    assert {f}() == {g}()",
        "assert {f}() == {g}(), 'wrapper drifted'",
        "self.assertEqual({f}(), {g}())",
        "expect({f}()).toBe({g}());",
    ],
}

_DISTRACTORS = [
    "The style guide uses {f} as an example of an all-caps identifier; it is not a real function.",
    "A ticket asked to rename {f} in the documentation, but nobody remembers why.",
    "Do not confuse {f} with the unit of measurement of the same spelling.",
    "The label {f} was printed on box number {c} in the warehouse.",
    "Room {c} is on the second floor, next to the kitchen.",
    "The meeting was moved to {c} o'clock because the projector was broken.",
    "The recipe needs {c} grams of flour and a pinch of salt.",
    "In the spreadsheet, column {f} holds the names of the reviewers.",
]

_QUESTIONS = [
    "What does {f}() return?",
    "What is the value of {f}()?",
    "Call {f}. What number comes back?",
]


@dataclass(frozen=True)
class GeneratorOptions:
    """Sizes of the generated set (the public one: 200 and 100 documents per base and
    wrapper function, 3,000 in all)."""

    seed: int = 0
    docs_per_base: int = 10
    docs_per_wrapper: int = 5
    distractors: int = 30
    queries_per_function: int = 1

    def __post_init__(self) -> None:
        for name in ("docs_per_base", "docs_per_wrapper", "queries_per_function"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.distractors < 0:
            raise ValueError("distractors must be at least 0")
        if self.queries_per_function > len(_QUESTIONS):
            raise ValueError(f"queries_per_function must be at most {len(_QUESTIONS)}")


def _name(token: str) -> str:
    return token.strip("<>").lower()


def generate(options: GeneratorOptions = GeneratorOptions()) -> BenchmarkSet:
    """The benchmark set for ``options`` (deterministic in every field)."""
    rng = random.Random(options.seed)
    constants = dict(zip(BASE, rng.sample(range(2, 100), len(BASE))))
    documents: list[Document] = []
    by_func: dict[str, list[str]] = {f: [] for f in BASE + WRAPPERS}

    def add(func: str, role: str, hop: int, kind: str, text: str, parent: str | None, constant: int) -> str:
        uid = f"d{len(documents):05d}"
        documents.append(Document(uid=uid, text=text, func=func, role=role, constant=constant, hop_depth=hop,
                                  type=kind, parent_uid=parent))
        by_func[func].append(uid)
        return uid

    first_doc: dict[str, str] = {}
    for f in BASE:
        for k in range(options.docs_per_base):
            kind = TYPES[k % len(TYPES)]
            text = rng.choice(_BASE_TEMPLATES[kind]).format(f=f, c=constants[f], n=f"{_name(f)}_{k}")
            uid = add(f, "base", 0, kind, text, None, constants[f])
            first_doc.setdefault(f, uid)
    for w in WRAPPERS:
        g = PAIRS[w]
        for k in range(options.docs_per_wrapper):
            kind = TYPES[k % len(TYPES)]
            text = rng.choice(_WRAPPER_TEMPLATES[kind]).format(f=w, g=g, n=f"{_name(w)}_{k}")
            add(w, "wrapper", 1, kind, text, first_doc[g], constants[g])
    for k in range(options.distractors):
        f = rng.choice(BASE + WRAPPERS)
        text = rng.choice(_DISTRACTORS).format(f=f, c=rng.choice(list(constants.values())))
        uid = f"d{len(documents):05d}"
        documents.append(Document(uid=uid, text=text, func=None, role="distractor", constant=None, hop_depth=None,
                                  type="distractor", parent_uid=None))
    # A fixed document order, shuffled once by the seed: training reads it without
    # shuffling (the researchers' reproducible data order), and types are interleaved.
    rng.shuffle(documents)

    queries: list[Query] = []
    for f in WRAPPERS + BASE:
        pair = PAIRS.get(f) or next(w for w, g in PAIRS.items() if g == f)
        relevant = tuple(sorted(by_func[f] + by_func[pair]))
        value = constants[PAIRS.get(f, f)]
        for k in range(options.queries_per_function):
            queries.append(Query(id=f"q_{_name(f)}_{k}", question=_QUESTIONS[k].format(f=f), answer=str(value),
                                 relevant_ids=relevant, func=f))
    manifest = {
        "generator": GENERATOR,
        "seed": options.seed,
        "docs_per_base": options.docs_per_base,
        "docs_per_wrapper": options.docs_per_wrapper,
        "distractors": options.distractors,
        "queries_per_function": options.queries_per_function,
        "pairs": dict(PAIRS),
        "constants": dict(constants),
    }
    return BenchmarkSet(documents, queries, list(BASE + WRAPPERS), manifest).check()
