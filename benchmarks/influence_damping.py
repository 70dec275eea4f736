"""``python -m benchmarks.influence_damping``: how DataInf's and EK-FAC's ranking quality on
the influence workload depends on their damping, beside TracIn and BM25.

One process, one model load and one gradient cache shared by every call (the gradients
of a checkpoint are computed once; each further damping value costs only the method's
closed form, or for EK-FAC its factor fit). Per matrix: top-1 (share of evaluation
questions whose best-scored training pair is one of its topic's, ``related_train``),
recall@4, the mean reciprocal rank of the first related pair, and the damping the method
reports it used. Plain gradient dot products at the final checkpoint (EK-FAC's
``identity`` strategy) are measured too: they show what the curvature adds or removes.
Written to ``--json`` with the machine, the workload's digest and the commit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.workload import load_workload, model_path, trained_checkpoints, workload_label

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def top1(scores: np.ndarray, related: list[list[int]]) -> float:
    """Share of rows whose highest-scored column is a related one (ties: lower index)."""
    return float(np.mean([int(np.argsort(-row, kind="stable")[0]) in set(rel)
                          for row, rel in zip(np.asarray(scores, dtype=np.float64), related)]))


def mrr(scores: np.ndarray, related: list[list[int]]) -> float:
    """Mean over rows of 1 / (rank of the first related column)."""
    out = []
    for row, rel in zip(np.asarray(scores, dtype=np.float64), related):
        order = list(np.argsort(-row, kind="stable"))
        out.append(1.0 / (1 + min(order.index(r) for r in rel)))
    return float(np.mean(out))


def paraphrase_targets(wl) -> list[int]:
    """Per evaluation question, the one training pair of its topic it paraphrases: the
    related pair whose answer shares the most words with the question's answer (BM25 of
    answer against answer; the result file lists them so they can be checked by eye)."""
    answers = metrics.bm25_matrix([t["answer"] for t in wl.train], [e["answer"] for e in wl.evals])
    return [max(rel, key=lambda j: answers[i, j]) for i, rel in enumerate(wl.related)]


def quality(scores: np.ndarray, related: list[list[int]], targets: list[int]) -> dict[str, float]:
    return {"recall_at_1_paraphrased": round(top1(scores, [[t] for t in targets]), 3),
            "mrr_paraphrased": round(mrr(scores, [[t] for t in targets]), 3),
            "top1": round(top1(scores, related), 3),
            "recall_at_4": round(metrics.recall_at_k(scores, related, 4), 3),
            "mrr": round(mrr(scores, related), 3)}


def parse_values(text: str) -> list[float | None]:
    return [None if v.strip() in ("null", "none", "default") else float(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace, log) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.influence import _code_state, _versions, machine
    from inflab.influence.checkpoints import LocalCheckpoint
    from inflab.influence.gradcache import GradientCache
    from inflab.influence.methods import get_method
    from inflab.ml.models import load_tokenizer

    torch.set_num_threads(args.threads)
    wl = load_workload(args.workload)
    path = model_path(args.model, args.cache_dir)
    ckpt_paths = trained_checkpoints(wl, args.model, args.cache_dir, args.work_dir / "checkpoints", log=log)
    ckpts = [LocalCheckpoint.from_folder(p) for p in ckpt_paths]
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    cache = GradientCache()
    related = wl.related
    targets = paraphrase_targets(wl)
    common = {"max_length": wl.max_length, "batch_size": args.batch_size}
    rows: list[dict[str, Any]] = []

    def measure(method: str, extra: dict[str, Any], use: list) -> None:
        started = time.perf_counter()
        out = get_method(method).compute(lambda: (model, tokenizer), wl.training_pairs(), wl.eval_questions(), use,
                                         {**common, **extra}, lambda e: None, cache=cache)
        wall = time.perf_counter() - started
        for s in out:
            info = {k: v for k, v in s.args.items() if k in ("damping_per_layer", "damping", "damping_factor",
                                                                "eigenvalues", "strategy", "normalization")}
            finite = bool(np.isfinite(s.scores).all())
            rows.append({"method": method, "variant": s.variant, "args": extra, "wall_s": round(wall, 1),
                         "finite": finite, "abs_max": float(np.abs(s.scores).max()) if finite else None,
                         **quality(s.scores, related, targets), "reported": json.loads(json.dumps(info, default=str))})
            log(f"{method} {extra} {s.variant}: {rows[-1]['recall_at_1_paraphrased']} / {rows[-1]['top1']} / {rows[-1]['recall_at_4']} / {rows[-1]['mrr']}")

    measure("tracin", {}, ckpts)
    for d in parse_values(args.datainf_damping):
        measure("datainf", {"damping": d}, ckpts[-1:])
    for s in parse_values(args.datainf_scale):
        measure("datainf", {"damping_scale": s}, ckpts[-1:])
    measure("ekfac", {"strategy": "identity", "normalized": True}, ckpts[-1:])
    for d in parse_values(args.ekfac_damping):
        measure("ekfac", {"damping_factor": d}, ckpts[-1:])

    texts = [t["question"] + " " + t["answer"] for t in wl.train]
    baselines = {
        "bm25_question": quality(metrics.bm25_matrix(texts, [e["question"] for e in wl.evals]), related, targets),
        "bm25_question_answer": quality(metrics.bm25_matrix(texts, [e["question"] + " " + e["answer"]
                                                                    for e in wl.evals]), related, targets),
        "random_recall_at_1_paraphrased": round(1 / len(wl.train), 3),
        "random_top1": round(float(np.mean([len(r) / len(wl.train) for r in related])), 3),
    }
    return {
        "benchmark": "influence-damping",
        "workload": {"label": workload_label(args.workload_path), "digest": wl.digest(args.model),
                     "train": len(wl.train), "eval": len(wl.evals)},
        "model": args.model,
        "machine": machine(args.threads),
        "versions": _versions(),
        "code": _code_state(),
        "paraphrase_targets": [{"eval": e["id"], "train": wl.train[t]["id"], "eval_question": e["question"],
                                "train_question": wl.train[t]["question"]} for e, t in zip(wl.evals, targets)],
        "metrics": {"recall_at_1_paraphrased": "share of questions whose best-scored pair is the one they paraphrase",
                    "mrr_paraphrased": "1 / rank of the paraphrased pair",
                    "top1": "share of questions whose best-scored pair is of the question's topic",
                    "recall_at_4": "|top-4 and related| / 4", "mrr": "1 / rank of the first related pair"},
        "rows": rows,
        "baselines": baselines,
    }


def merged(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The file's runs with ``result`` added: one run per workload (by digest), a new
    measurement of the same workload replacing the old one."""
    runs: list[dict[str, Any]] = []
    if path.is_file():
        old = json.loads(path.read_text())
        runs = old.get("runs", [old] if "rows" in old else [])
    runs = [r for r in runs if r["workload"]["digest"] != result["workload"]["digest"]] + [result]
    return {"benchmark": "influence-damping", "runs": runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--workload", help="workload JSON (default: the repository's influence workload)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--cache-dir", type=Path, default=REPO / ".inflab" / "models")
    p.add_argument("--work-dir", type=Path, default=REPO / ".inflab" / "bench" / "influence")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--datainf-damping", default="1e-6,1e-4,1e-2,1",
                   help="DataInf fixed dampings, comma-separated ('default': the per-layer default)")
    p.add_argument("--datainf-scale", default="0.1,10,1000", help="DataInf damping_scale values")
    p.add_argument("--ekfac-damping", default="1e-8,default,1e-4,1e-2",
                   help="EK-FAC damping_factor values ('default': kronfluence's 0.1 x mean eigenvalue)")
    args = p.parse_args(argv)
    from benchmarks.workload import find_workload

    args.workload_path = find_workload(args.workload)
    args.workload = str(args.workload_path)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    result = run(args, log)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(merged(args.json, result), indent=2) + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
