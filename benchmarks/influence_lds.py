"""``python -m benchmarks.influence --lds``: how well each influence method (and BM25)
predicts retraining on the influence workload, and how the retrainings scale over Ray workers.

What it does, all in one run on this machine:

1. the workload's LoRA fine-tune (``benchmarks.workload.trained_checkpoints``, cached) and
   every method's influence matrices over its checkpoints (TracIn over all of them,
   DataInf and EK-FAC on the final one, as the product runs them), both variants; BM25's
   two variants as the product's gateway computes them;
2. the validation plan the product would make (``inflab.analysis.validation``: ``--subsets``
   subsets of ``--alpha`` of the pairs, the removal of each question's top ``--removal-k``
   pairs under every matrix and of ``--removal-k`` random ones), every retraining run as
   a Ray task by the product's own fan-out (``inflab.trainer.validation_job``), each
   question's loss measured on its reference answer;
3. the wall time of the same first ``--timing-retrainings`` subset retrainings (equal in
   size, so neither worker waits on a longer task) on a local Ray with 1 and then 2 workers
   (one CPU and one torch thread per task), then every retraining on 2; with each task's
   seconds, so the busy share of the two workers over the whole run is reported too;
4. per matrix, the LDS (mean Spearman over questions, bootstrap 95% interval over the
   subsets) and the removal test, written to ``--json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.workload import load_workload, model_path, trained_checkpoints, workload_label


def _influence_matrices(wl, path: str, checkpoints: list[Path], batch_size: int, log) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    from inflab.ml.models import load_tokenizer
    from inflab.influence.checkpoints import LocalCheckpoint
    from inflab.influence.methods import get_method

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    ckpts = [LocalCheckpoint.from_folder(p) for p in checkpoints]
    out: dict[str, np.ndarray] = {}
    for name in ("tracin", "datainf", "ekfac"):
        started = time.perf_counter()
        use = ckpts if name == "tracin" else ckpts[-1:]
        scores = get_method(name).compute(lambda: (model, tokenizer), wl.training_pairs(), wl.eval_questions(), use,
                                          {"max_length": wl.max_length, "batch_size": batch_size}, lambda e: None)
        for s in scores:
            out[f"{name}/{s.variant}"] = s.scores.astype(np.float64)
        log(f"{name}: {time.perf_counter() - started:.1f} s, variants {[s.variant for s in scores]}")
    return out


def _bm25(spec) -> dict[str, np.ndarray]:
    from inflab.gateway.baselines import run_baselines

    return {f"{b['method']}/{b['variant']}": np.asarray(b["scores"]) for b in run_baselines(spec)}


def _run_on_ray(workers: int, spec, retrainings, targets, models_dir: str, log) -> tuple[dict[str, Any], float]:
    import ray

    from inflab.trainer.validation_job import TaskResources, run_retrainings

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    try:
        def progress(event) -> None:
            if event.kind == "progress" and event.step:
                log(f"  [{workers} worker(s)] {event.step}/{event.total}: {event.message or ''}")

        started = time.perf_counter()
        records = run_retrainings(spec, retrainings, targets, models_dir, progress, TaskResources(num_cpus=1))
        return records, time.perf_counter() - started
    finally:
        ray.shutdown()


def main_lds(args, log) -> dict[str, Any]:
    from inflab.analysis import validation as maths

    wl = load_workload(args.workload)
    spec = wl.run_spec(args.model)
    path = model_path(args.model, args.cache_dir)
    checkpoints = trained_checkpoints(wl, args.model, args.cache_dir, args.work_dir / "checkpoints", log)
    # The matrices are kept beside the checkpoints: a rerun of the retrainings reuses them.
    cached = args.work_dir / "checkpoints" / wl.digest(args.model) / "lds-matrices.npz"
    if cached.is_file():
        matrices = {k.replace("__", "/"): v for k, v in np.load(cached).items()}
        log(f"influence matrices from {cached}")
    else:
        matrices = _influence_matrices(wl, path, checkpoints, args.batch_size, log)
        np.savez(cached, **{k.replace("/", "__"): v for k, v in matrices.items()})
    matrices.update(_bm25(spec))

    n, m = len(wl.train), len(wl.evals)
    # The removal test costs (matrices x questions) retrainings: on a small machine it can be
    # limited to some matrices (--removal-matrices) and the first questions (--removal-questions).
    removal_names = [k for k in matrices if not args.removal_matrices or k in args.removal_matrices]
    removal_questions = min(args.removal_questions or m, m)
    plan = maths.plan_retrainings(n, removal_questions, {k: matrices[k][:removal_questions] for k in removal_names},
                                  subsets=args.subsets, alpha=args.alpha, removal_k=args.removal_k, seed=args.seed)
    retrainings = [(r.key, list(r.keep)) for r in plan.retrainings]
    targets = [(e["question"], e["answer"]) for e in wl.evals]
    log(f"{len(retrainings)} retrainings: 1 full, {len(plan.subsets)} subsets, "
        f"{len(retrainings) - 1 - len(plan.subsets)} removals")

    # The timed ones are subsets (all the same size) and go first on 2 workers as well.
    kinds = {r.key: r.kind for r in plan.retrainings}
    timing = [r for r in retrainings if kinds[r[0]] == "subset"][: args.timing_retrainings]
    retrainings = timing + [r for r in retrainings if r not in timing]
    _, one_wall = _run_on_ray(1, spec, timing, targets, str(args.cache_dir), log)
    log(f"{len(timing)} retrainings on 1 worker: {one_wall:.1f} s")
    records, all_wall = _run_on_ray(2, spec, retrainings, targets, str(args.cache_dir), log)
    # The 2-worker time of the same first retrainings: when the last of them ended.
    first = [records[key] for key, _ in timing]
    two_wall = max(r.started_at + r.seconds for r in first) - min(r.started_at for r in first)
    log(f"the same {len(timing)} on 2 workers: {two_wall:.1f} s; all {len(retrainings)} on 2: {all_wall:.1f} s")

    losses = {key: record.losses for key, record in records.items()}
    results = maths.analyse(plan, matrices, losses, bootstrap=args.bootstrap, seed=args.seed)
    table = {}
    for name, result in results.items():
        lds, removal = result["lds"], result["removal"]
        table[name] = {
            "lds": lds.mean, "lds_low": lds.low, "lds_high": lds.high, "lds_per_question": lds.per_question,
            "removal_over_random": removal.mean_over_random, "removal_increase_top": removal.mean_increase_top,
            "removal_increase_random": removal.mean_increase_random, "removal_win_rate": removal.win_rate,
            "removal_per_question": removal.per_question,
        }
    ranked = sorted((k for k in table if table[k]["lds"] is not None), key=lambda k: -table[k]["lds"])
    return {
        "benchmark": "influence-lds",
        "workload": {"file": workload_label(args.workload_path), "digest": wl.digest(args.model), "train": n, "eval": m,
                     "model": args.model, "hyperparams": spec.hyperparams.model_dump()},
        "settings": {"subsets": args.subsets, "alpha": args.alpha, "removal_k": args.removal_k, "seed": args.seed,
                     "bootstrap": args.bootstrap, "subset_seeds": [s.seed for s in plan.subsets],
                     "removal_matrices": removal_names, "removal_questions": removal_questions,
                     "loss_target": "each evaluation question's reference answer",
                     "threads_per_retraining": 1},
        "retrainings": len(retrainings),
        "wall_s": {"timing_retrainings": len(timing), "one_worker": round(one_wall, 1),
                   "two_workers": round(two_wall, 1), "speedup": round(one_wall / two_wall, 2) if two_wall else None,
                   "all_on_two_workers": round(all_wall, 1),
                   # Task seconds over 2 x wall: 1.0 when both workers were busy throughout.
                   "busy_share_two_workers": round(sum(r.seconds for r in records.values()) / (2 * all_wall), 3)},
        "per_retraining_s": {"median": float(np.median([r.seconds for r in records.values()])),
                             "by_kind": {kind: float(np.median([r.seconds for k, r in records.items() if kinds[k] == kind]))
                                         for kind in sorted(set(kinds.values()))}},
        "results": table,
        "ranking_by_lds": ranked,
        "removed_pairs": {name: [list(t) for t in tops] for name, tops in plan.removed.items()},
        "full_losses": losses["full"],
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_end": os.getloadavg()},
    }


def print_table(result: dict[str, Any], log) -> None:
    log(f"{'matrix':<28}{'LDS':>8}{'95% interval':>20}{'removal - random':>18}{'win rate':>10}")
    for name in result["ranking_by_lds"] + [k for k in result["results"] if k not in result["ranking_by_lds"]]:
        r = result["results"][name]

        def f(x: float | None, d: int = 3) -> str:
            return "-" if x is None else f"{x:.{d}f}"

        log(f"{name:<28}{f(r['lds']):>8}{'[' + f(r['lds_low']) + ', ' + f(r['lds_high']) + ']':>20}"
            f"{f(r['removal_over_random'], 4):>18}{f(r['removal_win_rate'], 2):>10}")
    w = result["wall_s"]
    log(f"wall time of {w['timing_retrainings']} retrainings: 1 worker {w['one_worker']} s, 2 workers "
        f"{w['two_workers']} s (x{w['speedup']}); all {result['retrainings']} on 2 workers {w['all_on_two_workers']} s")


def run(args, log) -> int:
    result = main_lds(args, log)
    print_table(result, log)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    return 0
