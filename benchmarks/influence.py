"""Influence benchmark: speed, memory and quality of our influence methods against the
lower bound and the peer libraries, on the influence workload, all in one run.

    python -m benchmarks.influence --json benchmarks/results/influence-cpu.json
    python -m benchmarks.influence --json benchmarks/results/influence-cpu.json --scale

What one run does (see README "Influence benchmark"):

* trains the workload's LoRA with the trainer's ``train_lora`` (cached by workload hash);
* measures, each in a fresh subprocess (so peak RSS is that method's own, model included,
  and no method inherits another's allocator state), with the thread count fixed:
  the lower bound (plain forward+backward over all examples, per checkpoint), bergson's
  TracIn, kronfluence's EK-FAC with default arguments, a per-example-loop TracIn, and ours
  (TracIn, DataInf, EK-FAC from ``inflab.influence.methods``, when registered);
* repeats that ``--passes`` times, alternating ours and peers (the second pass runs in the
  reverse order, so a drift in machine load hits both sides alike), and takes medians;
* reports ratios, Spearman's rho against the matching reference, recall@4 against the
  workload's ground truth (and BM25's), the machine, and the ``targets``.

``--ekfac-only`` runs only kronfluence-default and ours:ekfac (alternating, for iterating on
EK-FAC); ``--ekfac-noise N`` adds kronfluence-default under global seeds 1..N, whose rho
against seed 0 is the agreement its own label sampling leaves any estimator.

``--representation`` times the representation methods (delta_h, act_grad, attr_change)
against the final-checkpoint lower bound measured in the same run and updates the
``representation`` part of the JSON (targets ``delta_h_vs_floor``, ``act_grad_vs_floor``),
with their recall@4 beside the others'.

``--scale`` times ours at generated workloads (N=250/M=25 and N=1000/M=100 by default) and
updates the ``scale`` part of the same JSON file (the targets are recomputed).

The model load is excluded from every wall time (it is the same for all methods); it is
included in peak RSS (ru_maxrss of the subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.machine import cpu_name
from benchmarks.workload import (DEFAULT_MODEL, DEFAULT_WORKLOAD, REPO, Workload, generated_workload, load_workload,
                                 workload_label)

#: Methods of ours the benchmark knows how to run; each is skipped with a note if the
#: registry does not have it (yet).
OURS = ("tracin", "datainf", "ekfac")
#: The representation methods, timed by ``--representation`` against the final-checkpoint
#: lower bound measured in the same run.
REPRESENTATION = ("delta_h", "act_grad", "attr_change")
#: Which of ours use only the final checkpoint.
FINAL_ONLY = {"datainf", "ekfac", *REPRESENTATION}
K = 4


# =========================================================================== worker side
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def _workload_from_task(task: dict[str, Any]) -> Workload:
    base = load_workload(task["workload"])
    if task.get("generated"):
        n, m = task["generated"]
        return generated_workload(n, m, base, seed=task.get("seed", 0))
    return base


def run_worker(job: str, task_path: Path, out_path: Path) -> None:
    """Runs one measurement in this (fresh) process and writes ``out_path`` (.npz + .json)."""
    import torch

    from inflab.ml.chat import encode_pair
    from inflab.ml.models import load_tokenizer
    from inflab.influence.checkpoints import LocalCheckpoint
    from transformers import AutoModelForCausalLM

    task = json.loads(Path(task_path).read_text())
    _set_threads(task["threads"])
    # "kronfluence@1": the same job with another global seed (kronfluence-default samples
    # the true Fisher's labels from torch's global generator): its sampling noise.
    job, _, seed = job.partition("@")
    torch.manual_seed(int(seed or 0))
    wl = _workload_from_task(task)
    checkpoints = [LocalCheckpoint.from_folder(p) for p in task["checkpoints"]]
    batch_size, max_length = task["batch_size"], wl.max_length

    tokenizer = load_tokenizer(task["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(task["model_path"], dtype=torch.float32)
    model.eval()
    train = [encode_pair(tokenizer, t["question"], t["answer"], max_length) for t in wl.train]
    evals = [encode_pair(tokenizer, e["question"], e["answer"], max_length) for e in wl.evals]
    rss_loaded = _rss_gb()
    result: dict[str, Any] = {"job": job, "rss_after_load_gb": rss_loaded}
    arrays: dict[str, np.ndarray] = {}
    workdir = Path(tempfile.mkdtemp(prefix=f"inflab-bench-{job}-", dir=task.get("tmp")))

    started = time.perf_counter()
    if job in ("floor3", "floor1"):
        from benchmarks.peers.reference import floor

        ckpts = checkpoints if job == "floor3" else checkpoints[-1:]
        result.update(floor(model, train, evals, ckpts, pad_id=pad_id, batch_size=batch_size))
    elif job == "forward1":
        from benchmarks.peers.reference import forward_only

        result.update(forward_only(model, train, evals, checkpoints[-1], pad_id=pad_id, batch_size=batch_size))
    elif job == "loop":
        from benchmarks.peers.reference import per_example_tracin

        out = per_example_tracin(model, train, evals, checkpoints, pad_id=pad_id, keep_final=True)
        arrays["raw"], arrays["normalized"] = out["raw"], out["normalized"]
    elif job == "bergson":
        from benchmarks.peers.bergson_tracin import tracin

        out = tracin(model, train, evals, checkpoints, batch_size=batch_size, workdir=workdir)
        arrays["raw"], arrays["normalized"] = out["raw"], out["normalized"]
    elif job == "kronfluence":
        from benchmarks.peers.kronfluence_ekfac import ekfac

        out = ekfac(model, train, evals, checkpoints[-1], pad_id=pad_id, batch_size=batch_size, workdir=workdir)
        arrays["raw"] = out["raw"]
        result["args"] = out.get("factor_args")
    elif job.startswith("ours:"):
        from inflab.influence.methods import get_method

        name = job.split(":", 1)[1]
        ckpts = checkpoints[-1:] if name in FINAL_ONLY else checkpoints
        method = get_method(name)
        args = {"max_length": max_length, "batch_size": batch_size}
        loader = lambda: (model, tokenizer)  # noqa: E731 - the model load is not timed
        try:
            scores = method.compute(loader, wl.training_pairs(), wl.eval_questions(), ckpts, args, lambda e: None)
        except ValueError as exc:
            if "unknown" not in str(exc).lower():
                raise
            started = time.perf_counter()
            scores = method.compute(loader, wl.training_pairs(), wl.eval_questions(), ckpts, {}, lambda e: None)
            result["note"] = f"ran with default args: {exc}"
        for s in scores:
            arrays[s.variant] = s.scores.astype(np.float64)
        result["args"] = json.loads(json.dumps(scores[0].args if scores else {}, default=str))
        result["args"].pop("generated_answers", None)
    else:
        raise SystemExit(f"unknown job {job!r}")
    result["wall_s"] = time.perf_counter() - started
    result["peak_rss_gb"] = _rss_gb()

    if job == "loop":
        # The DataInf reference from the loop's explicit final-checkpoint gradients
        # (after the timing: it is a reference, not a contender).
        from benchmarks.peers.reference import datainf_reference, datainf_reference_normalized

        t = time.perf_counter()
        arrays["datainf_raw"] = datainf_reference(out["final_train_grads"], out["final_eval_grads"], out["block_sizes"])
        arrays["datainf_normalized"] = datainf_reference_normalized(
            out["final_train_grads"], out["final_eval_grads"], out["block_sizes"])
        result["datainf_reference_s"] = time.perf_counter() - t

    np.savez(out_path.with_suffix(".npz"), **arrays)
    out_path.with_suffix(".json").write_text(json.dumps(result, default=str))


# =========================================================================== parent side
def machine(threads: int) -> dict[str, Any]:
    import torch

    cpu = cpu_name()
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:  # pragma: no cover
        mem_gb = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "bergson", "kronfluence"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _code_state() -> dict[str, Any]:
    """The commit measured, and whether the influence code had uncommitted changes."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "services/influence", "benchmarks")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_files": dirty.splitlines()}


def registered_methods() -> set[str]:
    try:
        from inflab.influence.methods import METHODS
    except Exception:  # pragma: no cover
        return set()
    return set(METHODS)


def _peer_available(name: str) -> str | None:
    """None if the peer library imports in a subprocess (so the parent stays clean)."""
    code = {"bergson": "import bergson", "kronfluence": "import kronfluence.analyzer"}[name]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["import failed"])[-1]


class Runner:
    def __init__(self, args: argparse.Namespace, task: dict[str, Any], outdir: Path, log) -> None:
        self.args, self.task, self.outdir, self.log = args, task, outdir, log

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        t = str(self.args.threads)
        env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
                   OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
        root = str(REPO)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def run(self, job: str, tag: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        task_path = self.outdir / f"{tag}.task.json"
        task_path.write_text(json.dumps(self.task))
        out = self.outdir / f"{tag}-{job.replace(':', '_')}"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.influence", "--worker", job, "--task", str(task_path), "--out", str(out)],
            env=self.env(), cwd=str(REPO), capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
            self.log(f"  {job}: FAILED ({proc.returncode})\n{tail}")
            return {"job": job, "error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}, {}
        result = json.loads(out.with_suffix(".json").read_text())
        result["process_s"] = time.perf_counter() - t0
        with np.load(out.with_suffix(".npz")) as z:
            arrays = {k: z[k] for k in z.files}
        self.log(f"  {job}: {result['wall_s']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB")
        return result, arrays


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _r(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(float(x), n)


def main_benchmark(args: argparse.Namespace, log) -> dict[str, Any]:
    from benchmarks.workload import model_path, trained_checkpoints

    wl = load_workload(args.workload)
    path = model_path(args.model, args.cache_dir)
    started = time.perf_counter()
    ckpts = trained_checkpoints(wl, args.model, args.cache_dir, args.work_dir / "checkpoints", log=log)
    log(f"checkpoints ready in {time.perf_counter() - started:.0f} s: {[c.name for c in ckpts]}")
    outdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    task = {"workload": str(args.workload_path), "model_path": path, "checkpoints": [str(c) for c in ckpts],
            "threads": args.threads, "batch_size": args.batch_size, "tmp": str(outdir)}
    runner = Runner(args, task, outdir, log)

    have = registered_methods()
    notes: list[str] = []
    ours = [m for m in OURS if m in have and m in args.methods]
    for m in OURS:
        if m not in have:
            notes.append(f"ours:{m} skipped: not registered in inflab.influence.methods (yet)")
    peers = {}
    for peer in ("bergson", "kronfluence"):
        why = None if peer in args.peers else "not requested"
        why = why or _peer_available(peer)
        if why:
            notes.append(f"{peer} skipped: {why} (install with `make bench-peers`)")
        else:
            peers[peer] = True

    # One pass: ours and the peers alternate; three-checkpoint jobs first, then final-only.
    order: list[str] = ["floor3"]
    if "tracin" in ours:
        order.append("ours:tracin")
    if "bergson" in peers:
        order.append("bergson")
    order += ["loop", "floor1"]
    if "datainf" in ours:
        order.append("ours:datainf")
    if "kronfluence" in peers:
        order.append("kronfluence")
    if "ekfac" in ours:
        order.append("ours:ekfac")
    if args.ekfac_only:
        # Iterating on EK-FAC: only kronfluence-default and ours, alternating.
        order = [j for j in order if j in ("kronfluence", "ours:ekfac")]
    if "kronfluence" in peers:
        # --ekfac-noise N: kronfluence-default also under global seeds 1..N (its own sampling noise).
        order += [f"kronfluence@{s}" for s in range(1, args.ekfac_noise + 1)]

    runs: dict[str, list[dict[str, Any]]] = {j: [] for j in order}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for number in range(args.passes):
        jobs = order if number % 2 == 0 else list(reversed(order))
        log(f"pass {number + 1}/{args.passes}: {jobs}")
        for job in jobs:
            result, arrays = runner.run(job, f"p{number}")
            runs[job].append(result)
            if arrays:
                scores[job] = arrays

    # ----------------------------------------------------------------- summarise
    related = wl.related
    methods: dict[str, Any] = {}
    for job, results in runs.items():
        ok = [r for r in results if "wall_s" in r]
        entry: dict[str, Any] = {
            "wall_s": _r(_median([r["wall_s"] for r in ok])),
            "wall_s_passes": [_r(r["wall_s"]) for r in ok],
            "peak_rss_gb": _r(max((r["peak_rss_gb"] for r in ok), default=None)),
            "rss_after_model_load_gb": _r(max((r["rss_after_load_gb"] for r in ok), default=None)),
            "checkpoints": 1 if job.partition("@")[0] in ("floor1", "kronfluence") or job.split(":")[-1] in FINAL_ONLY else len(ckpts),
        }
        if len(ok) < len(results):
            entry["errors"] = [r.get("error") for r in results if "wall_s" not in r]
        if ok and "args" in ok[-1]:
            entry["args"] = ok[-1]["args"]
        if ok and "note" in ok[-1]:
            entry["note"] = ok[-1]["note"]
        if job.startswith("floor"):
            entry["per_checkpoint_s"] = [_r(x) for x in ok[-1]["per_checkpoint_s"]] if ok else None
        if job == "loop" and ok:
            entry["datainf_reference_s"] = _r(ok[-1].get("datainf_reference_s"))
        for variant in ("raw", "normalized"):
            if variant in scores.get(job, {}):
                entry.setdefault("recall_at_4", {})[variant] = _r(metrics.recall_at_k(scores[job][variant], related, K))
        methods[job] = entry

    bm25 = metrics.bm25_matrix([t["question"] + " " + t["answer"] for t in wl.train],
                               [e["question"] + " " + e["answer"] for e in wl.evals])
    bm25_q = metrics.bm25_matrix([t["question"] + " " + t["answer"] for t in wl.train], [e["question"] for e in wl.evals])
    baselines = {
        "bm25": {"recall_at_4": _r(metrics.recall_at_k(bm25, related, K)),
                 "query": "evaluation question + reference answer", "documents": "training question + answer"},
        "bm25_question_only": {"recall_at_4": _r(metrics.recall_at_k(bm25_q, related, K))},
        "random": {"recall_at_4": K / len(wl.train)},
    }

    def wall(job: str) -> float | None:
        return methods.get(job, {}).get("wall_s")

    # Ratios and agreement with the matching reference.
    comparisons: dict[str, Any] = {}
    reference = {"tracin": ["loop", "bergson"], "datainf": ["loop:datainf"], "ekfac": ["kronfluence"]}
    for job in [j for j in order if j.startswith("ours:")]:
        name = job.split(":")[1]
        floor_job = "floor1" if name in FINAL_ONLY else "floor3"
        c: dict[str, Any] = {"vs_lower_bound": _ratio(wall(job), wall(floor_job))}
        if name == "tracin":
            c["vs_bergson"] = _ratio(wall(job), wall("bergson"))
            c["vs_per_example_loop"] = _ratio(wall(job), wall("loop"))
        if name == "ekfac":
            c["vs_kronfluence"] = _ratio(wall(job), wall("kronfluence"))
        c["spearman"] = {}
        for ref in reference[name]:
            ref_job, _, prefix = ref.partition(":")
            # Our normalised DataInf is RelatIF-style (cosine in the inverse-Hessian metric), not
            # DataInf on unit gradients, and our normalised TracIn is TrackStar's cosine (Adam
            # correction, Gauss-Newton preconditioner), not the peers' plain cosine: only their
            # raw variants have a like-for-like reference.
            for variant in (("raw",) if name in ("datainf", "tracin") else ("raw", "normalized")):
                ours_m = scores.get(job, {}).get(variant)
                key = f"{prefix}_{variant}" if prefix else variant
                ref_m = scores.get(ref_job, {}).get(key)
                if ours_m is not None and ref_m is not None:
                    c["spearman"][f"{variant} vs {ref_job}{' ' + prefix if prefix else ''}"] = {
                        "all_entries": _r(metrics.spearman(ours_m, ref_m), 5),
                        "mean_per_question": _r(metrics.spearman_rows(ours_m, ref_m), 5),
                    }
        comparisons[job] = c
    # The DataInf reference's own recall (it is a method in its own right).
    if "datainf_raw" in scores.get("loop", {}):
        methods["loop"]["datainf_reference_recall_at_4"] = {
            v: _r(metrics.recall_at_k(scores["loop"][f"datainf_{v}"], related, K)) for v in ("raw", "normalized")}
    # kronfluence-default against itself under another seed: the ceiling on any rho against it.
    for job in [j for j in order if j.startswith("kronfluence@")]:
        if "raw" in scores.get(job, {}) and "raw" in scores.get("kronfluence", {}):
            comparisons[job] = {"spearman": {"raw vs kronfluence": {
                "all_entries": _r(metrics.spearman(scores[job]["raw"], scores["kronfluence"]["raw"]), 5),
                "mean_per_question": _r(metrics.spearman_rows(scores[job]["raw"], scores["kronfluence"]["raw"]), 5)}}}
    # Peer-vs-reference sanity: bergson and the loop compute the same TracIn.
    if "bergson" in scores and "loop" in scores:
        comparisons["bergson"] = {"spearman": {"raw vs loop": {"all_entries": _r(metrics.spearman(scores["bergson"]["raw"], scores["loop"]["raw"]), 5)}}}

    return {
        "benchmark": "influence",
        "workload": {"file": workload_label(args.workload_path), "name": wl.name, "train": len(wl.train), "eval": len(wl.evals),
                     "digest": wl.digest(args.model), "max_length": wl.max_length, "lora": wl.lora, "train_settings": wl.settings},
        "model": args.model,
        "settings": {"threads": args.threads, "passes": args.passes, "batch_size": args.batch_size,
                     "timing": "median wall seconds over passes, model load excluded; each method in a fresh "
                               "subprocess, passes alternate ours and peers (even passes reversed)",
                     "peak_rss": "ru_maxrss of the method's own subprocess (model, imports and method included)",
                     "lower_bound": "plain mean answer-token loss forward+backward over all train+eval examples "
                                    "in length-bucketed micro-batches (floor3: 3 checkpoints, floor1: final)"},
        "versions": _versions(),
        "code": _code_state(),
        "methods": methods,
        "baselines": baselines,
        "comparisons": comparisons,
        "notes": notes,
    }


#: What each representation method must compute, against the lower bound's one forward and
#: one activation backward (cheap: the frozen base forms no weight gradients).
REPRESENTATION_COST = {
    "delta_h": "a forward of the base and one of the fine-tuned model",
    "act_grad": "the bound's own passes (a forward and the loss gradient at every layer's output, which "
                "is a backward through the whole decoder) without its LoRA weight products",
}
#: How many plain forward passes over the examples a method needs at least, where that is
#: its whole cost: delta_h one per model. act_grad and attr_change also need a backward.
MIN_FORWARDS = {"delta_h": 2.0}


def cost_model(methods: dict[str, Any]) -> dict[str, Any]:
    """The lower bound and each method in units of one measured plain forward pass
    (``forward1``), and the smallest ratio to the bound a method can reach by what it must
    compute: the why of a missed speed target, measured rather than argued."""
    forward, floor = methods.get("forward1", {}).get("wall_s"), methods.get("floor1", {}).get("wall_s")
    if not forward or not floor:
        return {}
    out: dict[str, Any] = {"forward1_s": forward, "floor1_in_forwards": _r(floor / forward), "methods": {}}
    for job, entry in methods.items():
        name = job.split(":", 1)[1] if job.startswith("ours:") else None
        if name is None or not entry.get("wall_s"):
            continue
        least = MIN_FORWARDS.get(name)
        out["methods"][name] = {"in_forwards": _r(entry["wall_s"] / forward),
                                "least_vs_floor": None if least is None else _r(least * forward / floor)}
    return out


def representation_benchmark(args: argparse.Namespace, log) -> dict[str, Any]:
    """The representation methods (forward passes and activation gradients only) against
    the gradient lower bound at the final checkpoint, measured in the same run (passes
    alternate, even ones reversed), with their recall@4 beside BM25's."""
    from benchmarks.workload import model_path, trained_checkpoints

    wl = load_workload(args.workload)
    path = model_path(args.model, args.cache_dir)
    ckpts = trained_checkpoints(wl, args.model, args.cache_dir, args.work_dir / "checkpoints", log=log)
    outdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    task = {"workload": str(args.workload_path), "model_path": path, "checkpoints": [str(c) for c in ckpts],
            "threads": args.threads, "batch_size": args.batch_size, "tmp": str(outdir)}
    runner = Runner(args, task, outdir, log)
    have = registered_methods()
    order = ["floor1", "forward1"] + [f"ours:{m}" for m in REPRESENTATION if m in have]
    runs: dict[str, list[dict[str, Any]]] = {j: [] for j in order}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for number in range(args.passes):
        jobs = order if number % 2 == 0 else list(reversed(order))
        log(f"representation pass {number + 1}/{args.passes}: {jobs}")
        for job in jobs:
            result, arrays = runner.run(job, f"r{number}")
            runs[job].append(result)
            if arrays:
                scores[job] = arrays
    methods: dict[str, Any] = {}
    for job, results in runs.items():
        ok = [r for r in results if "wall_s" in r]
        entry: dict[str, Any] = {"wall_s": _r(_median([r["wall_s"] for r in ok])),
                                 "wall_s_passes": [_r(r["wall_s"]) for r in ok],
                                 "peak_rss_gb": _r(max((r["peak_rss_gb"] for r in ok), default=None))}
        if len(ok) < len(results):
            entry["errors"] = [r.get("error") for r in results if "wall_s" not in r]
        if ok and "args" in ok[-1]:
            entry["args"] = ok[-1]["args"]
        if "raw" in scores.get(job, {}):
            entry["recall_at_4"] = {"raw": _r(metrics.recall_at_k(scores[job]["raw"], wl.related, K))}
        if job != "floor1":
            entry["vs_floor"] = _ratio(entry["wall_s"], _median([r["wall_s"] for r in runs["floor1"] if "wall_s" in r]))
        methods[job] = entry
    train_text = [t["question"] + " " + t["answer"] for t in wl.train]
    bm25 = metrics.bm25_matrix(train_text, [e["question"] + " " + e["answer"] for e in wl.evals])
    return {"workload": {"file": workload_label(args.workload_path), "name": wl.name, "digest": wl.digest(args.model)},
            "baselines": {"bm25": {"recall_at_4": _r(metrics.recall_at_k(bm25, wl.related, K))}},
            "methods": methods, "cost_model": cost_model(methods),
            "settings": {"threads": args.threads, "passes": args.passes, "batch_size": args.batch_size,
                         "lower_bound": "floor1: plain answer-token loss forward+backward over all train+eval "
                                        "examples at the final checkpoint, in this run",
                         "forward_unit": "forward1: the same examples, one forward without a graph"}}


def scale_benchmark(args: argparse.Namespace, log, save=None) -> dict[str, Any]:
    from benchmarks.workload import model_path, trained_checkpoints

    wl = load_workload(args.workload)
    path = model_path(args.model, args.cache_dir)
    ckpts = trained_checkpoints(wl, args.model, args.cache_dir, args.work_dir / "checkpoints", log=log)
    if args.scale_checkpoints:
        # TracIn's time is one gradient pass per checkpoint and its memory does not depend on
        # how many there are (scores accumulate): fewer checkpoints keep a long run short.
        ckpts = ckpts[-args.scale_checkpoints:]
    outdir = Path(tempfile.mkdtemp(prefix="scale-", dir=args.work_dir))
    have = registered_methods()
    ours = [m for m in OURS if m in have and m in args.methods]
    points = []
    for size in args.scale_sizes:
        n, m = (int(x) for x in size.lower().split("x"))
        task = {"workload": str(args.workload_path), "generated": [n, m], "model_path": path,
                "checkpoints": [str(c) for c in ckpts], "threads": args.threads, "batch_size": args.batch_size,
                "tmp": str(outdir)}
        runner = Runner(args, task, outdir, log)
        log(f"scale N={n}, M={m}")
        point: dict[str, Any] = {"n_train": n, "n_eval": m, "methods": {}}
        for name in ours:
            result, _ = runner.run(f"ours:{name}", f"n{n}m{m}")
            point["methods"][name] = ({"wall_s": _r(result["wall_s"]), "peak_rss_gb": _r(result["peak_rss_gb"]),
                                       "checkpoints": 1 if name in FINAL_ONLY else len(ckpts)}
                                      if "wall_s" in result else {"error": result.get("error")})
            if save is not None:  # written after every measurement: a cut-short run keeps what it has
                save({"points": points + ([point] if point not in points else []), "partial": True})
        if point not in points:
            points.append(point)
    out: dict[str, Any] = {"points": points, "skipped": [m for m in OURS if m not in have],
                           "tracin_checkpoints": len(ckpts), "threads": args.threads,
                           "examples": "generated from templates (benchmarks.workload.generated_workload), "
                                       "one short question and one-sentence answer each, seed 0"}
    if len(points) >= 2:
        small, big = points[0], points[-1]
        expected = (big["n_train"] + big["n_eval"]) / (small["n_train"] + small["n_eval"])
        growth = {}
        for name in ours:
            a, b = small["methods"].get(name, {}).get("wall_s"), big["methods"].get(name, {}).get("wall_s")
            if a and b:
                growth[name] = {"time_ratio": _r(b / a), "size_ratio": _r(expected),
                                "per_example_ms_small": _r(1000 * a / (small["n_train"] + small["n_eval"]), 1),
                                "per_example_ms_big": _r(1000 * b / (big["n_train"] + big["n_eval"]), 1)}
        out["growth"] = growth
    return out


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """One entry per issue-4 target: {"goal", "value", "met"} (met is None when unmeasured)."""
    comp = result.get("comparisons", {})
    methods = result.get("methods", {})
    out: dict[str, Any] = {}

    v = comp.get("ours:tracin", {}).get("vs_bergson")
    out["tracin_vs_bergson"] = {"goal": "TracIn wall time <= 0.8x bergson's (3 checkpoints)", "value": v,
                                "met": None if v is None else v <= 0.8}
    v = comp.get("ours:datainf", {}).get("vs_lower_bound")
    out["datainf_vs_lower_bound"] = {"goal": "DataInf wall time <= 1.0x the lower bound (final checkpoint)", "value": v,
                                     "met": None if v is None else v <= 1.0}
    ek = comp.get("ours:ekfac", {})
    v = ek.get("vs_kronfluence")
    rho = (ek.get("spearman", {}).get("raw vs kronfluence") or {}).get("all_entries")
    # kronfluence-default against itself under other seeds (--ekfac-noise): the rho any
    # estimator of the same true-Fisher factors can expect against it.
    self_rho = [c["spearman"]["raw vs kronfluence"]["all_entries"] for job, c in comp.items()
                if job.startswith("kronfluence@")]
    out["ekfac_vs_kronfluence"] = {"goal": "EK-FAC wall time <= 0.7x kronfluence-default, Spearman rho >= 0.99 against it",
                                   "value": {"time_ratio": v, "spearman": rho,
                                             **({"kronfluence_other_seeds_spearman": self_rho} if self_rho else {})},
                                   "met": None if v is None or rho is None else (v <= 0.7 and rho >= 0.99)}
    scale = result.get("scale")
    if scale and scale.get("points"):
        big = scale["points"][-1]
        rss = [x.get("peak_rss_gb") for x in big["methods"].values() if x.get("peak_rss_gb")]
        growth = scale.get("growth", {})
        # Linear: the time ratio between the two sizes is no more than 20% above the size ratio.
        linear = {k: g["time_ratio"] <= 1.2 * g["size_ratio"] for k, g in growth.items()}
        out["scale_rss_and_linear_time"] = {
            "goal": f"peak RSS < 8 GB at N={big['n_train']}, M={big['n_eval']}, time linear in N+M",
            "value": {"max_peak_rss_gb": max(rss) if rss else None,
                      "time_ratio_vs_size_ratio": {k: [g["time_ratio"], g["size_ratio"]] for k, g in growth.items()}},
            "met": None if scale.get("partial") or not rss else (max(rss) < 8 and bool(linear) and all(linear.values())),
        }
    else:
        out["scale_rss_and_linear_time"] = {"goal": "peak RSS < 8 GB at N=1000, M=100, time linear in N+M",
                                            "value": None, "met": None}
    rep = (result.get("representation") or {}).get("methods", {})
    costs = (result.get("representation") or {}).get("cost_model", {}).get("methods", {})
    for name in ("delta_h", "act_grad"):
        v = rep.get(f"ours:{name}", {}).get("vs_floor")
        out[f"{name}_vs_floor"] = {"goal": f"{name} wall time <= 0.5x the gradient lower bound (final checkpoint)",
                                   "value": v, "met": None if v is None else v <= 0.5}
        cost = costs.get(name, {})
        if v is not None and v > 0.5 and cost:
            # Why it is missed, in the same run's forward-pass unit (see cost_model).
            floor_f = (result.get("representation") or {}).get("cost_model", {}).get("floor1_in_forwards")
            why = (f"{name} needs {REPRESENTATION_COST[name]}; measured {cost['in_forwards']} forwards against "
                   f"the bound's {floor_f}")
            if cost.get("least_vs_floor") is not None:
                out[f"{name}_vs_floor"]["least_possible"] = cost["least_vs_floor"]
                why += f", so it cannot cost less than {cost['least_vs_floor']}x the bound"
            out[f"{name}_vs_floor"]["why_missed"] = why
    bm25 = result.get("baselines", {}).get("bm25", {}).get("recall_at_4")
    normalized = {job: m["recall_at_4"]["normalized"] for job, m in methods.items()
                  if job.startswith("ours:") and "normalized" in m.get("recall_at_4", {})}
    best = max(normalized.items(), key=lambda kv: kv[1]) if normalized else None
    out["normalized_recall_vs_bm25"] = {
        "goal": "best normalised method's recall@4 >= BM25's",
        "value": {"best": best[0] if best else None, "recall_at_4": best[1] if best else None, "bm25": bm25},
        "met": None if best is None or bm25 is None else best[1] >= bm25,
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.influence", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here (a --scale run updates its 'scale' part)")
    p.add_argument("--workload", help=f"workload JSON (default: {DEFAULT_WORKLOAD.relative_to(REPO)})")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--cache-dir", type=Path, default=REPO / ".inflab" / "models")
    p.add_argument("--work-dir", type=Path, default=REPO / ".inflab" / "bench" / "influence",
                   help="cached checkpoints and per-run scratch files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--methods", default=",".join(OURS), help="ours to run (comma-separated)")
    p.add_argument("--peers", default="bergson,kronfluence", help="peers to run (comma-separated; '' for none)")
    p.add_argument("--ekfac-only", action="store_true",
                   help="run only kronfluence-default and ours:ekfac (alternating), to iterate on EK-FAC")
    p.add_argument("--ekfac-noise", type=int, default=0,
                   help="also run kronfluence-default with global seeds 1..N (its rho against itself)")
    p.add_argument("--scale", action="store_true", help="time ours on generated workloads instead")
    p.add_argument("--representation", action="store_true",
                   help="time the representation methods against the lower bound instead (updates the "
                        "'representation' part of the JSON)")
    p.add_argument("--scale-checkpoints", type=int, default=0,
                   help="--scale: TracIn over only the last N checkpoints (0: all)")
    p.add_argument("--scale-sizes", default="250x25,1000x100", help="NxM points for --scale, smallest first")
    # Counterfactual validation (benchmarks/influence_lds.py).
    p.add_argument("--lds", action="store_true",
                   help="each method's LDS and removal test against retraining on Ray (1 and 2 workers)")
    p.add_argument("--subsets", type=int, default=32, help="--lds: LDS subsets")
    p.add_argument("--alpha", type=float, default=0.5, help="--lds: share of the pairs each subset keeps")
    p.add_argument("--removal-k", type=int, default=3, help="--lds: pairs each removal takes out")
    p.add_argument("--seed", type=int, default=0, help="--lds: subset s is drawn from seed + s")
    p.add_argument("--bootstrap", type=int, default=1000, help="--lds: bootstrap resamples of the interval")
    p.add_argument("--removal-matrices", default="",
                   help="--lds: the matrices (method/variant, comma-separated) the removal test retrains for (all)")
    p.add_argument("--removal-questions", type=int, default=0,
                   help="--lds: removal test on the first N evaluation questions only (0: all)")
    p.add_argument("--timing-retrainings", type=int, default=2,
                   help="--lds: retrainings timed on 1 and on 2 Ray workers")
    # Internal: one measurement in a fresh process.
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--task", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.peers = [m for m in args.peers.split(",") if m]
    args.scale_sizes = [s for s in args.scale_sizes.split(",") if s]
    args.removal_matrices = [m for m in args.removal_matrices.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.task, args.out)
        return 0

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    t = str(args.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = t
    # Waiting OpenMP workers sleep rather than spin: on a busy machine spinning ones slow
    # torch down many times over (docs/measurements.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.workload import find_workload

    args.workload_path = find_workload(args.workload)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.lds:
        from benchmarks.influence_lds import run as run_lds

        return run_lds(args, log)
    mach = machine(args.threads)
    existing: dict[str, Any] = {}
    if args.json and args.json.is_file():
        try:
            existing = json.loads(args.json.read_text())
        except json.JSONDecodeError:
            existing = {}
    started = time.perf_counter()
    if args.representation:
        result = existing or {"benchmark": "influence"}
        result["representation"] = representation_benchmark(args, log)
        result["representation"]["machine"] = mach
        result["representation"]["total_s"] = round(time.perf_counter() - started, 1)
    elif args.scale:
        result = existing or {"benchmark": "influence"}

        def save(partial: dict[str, Any]) -> None:
            if args.json:
                result["scale"] = {**partial, "machine": mach}
                result.pop("targets", None)
                result["targets"] = targets(result)
                args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")

        result["scale"] = scale_benchmark(args, log, save)
        result["scale"]["machine"] = mach
        result["scale"]["total_s"] = round(time.perf_counter() - started, 1)
    else:
        result = main_benchmark(args, log)
        result["machine"] = mach
        result["total_s"] = round(time.perf_counter() - started, 1)
        for part in ("scale", "representation"):
            if part in existing:
                result[part] = existing[part]
    # "targets" last, as the issue asks.
    result.pop("targets", None)
    result["targets"] = targets(result)
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
        log(f"wrote {args.json}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
