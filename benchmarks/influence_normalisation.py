"""Which normalisation makes gradient influence rank the related training pairs first?

A scratch experiment on the influence workload (32 training / 8 evaluation QA pairs with
``related_train`` ground truth). Two stages:

    python -m benchmarks.influence_normalisation grads --out /tmp/inflab-norm
    python -m benchmarks.influence_normalisation table --out /tmp/inflab-norm

``grads`` trains the workload's LoRA exactly as the influence benchmark does (the trainer's
``train_lora``; cached by workload hash under ``--out``), then takes per-example LoRA
gradients (``inflab.influence.gradients``: mean cross-entropy over answer tokens) of every
training pair and evaluation question at the LoRA initialisation (step 0, rebuilt with the
trainer's seed) and at each saved checkpoint, once with the usual labels and once with the
end-of-turn token's label removed; it also reads AdamW's second moments from each
checkpoint's ``training_state.pt``. Everything goes into ``.npy`` files.

``table`` scores every variant from those cached gradients (seconds) and prints recall@4
(the benchmark's metric) plus mean average precision (a finer-grained check on the same
eight questions, so that a variant is not chosen on a one-pair difference in recall@4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.workload import DEFAULT_MODEL, REPO, load_workload
from inflab.core.store_layout import TRAINING_STATE

K = 4


# =========================================================================== stage 1
def compute_gradients(out: Path, workload: str | None, seed: int | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    from benchmarks.workload import model_path, trained_checkpoints
    from inflab.ml.chat import IGNORE_INDEX, EncodedExample, encode_pair
    from inflab.ml.models import load_tokenizer
    from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter
    from inflab.influence.gradients import example_gradients, lora_blocks
    from inflab.trainer.model_setup import attach_lora

    wl = load_workload(workload)
    if seed is not None:  # a replicate fine-tune (another LoRA initialisation and data order)
        wl.settings["seed"] = seed
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    folders = trained_checkpoints(wl, DEFAULT_MODEL, REPO / ".inflab" / "models", out / "checkpoints")
    print(f"checkpoints in {time.perf_counter() - t0:.0f} s: {[str(f) for f in folders]}", flush=True)
    checkpoints = [LocalCheckpoint.from_folder(f) for f in folders]

    path = model_path(DEFAULT_MODEL, REPO / ".inflab" / "models")
    tokenizer = load_tokenizer(path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    spec = wl.run_spec(DEFAULT_MODEL)
    torch.manual_seed(spec.hyperparams.seed)  # exactly the trainer's LoRA initialisation
    model = attach_lora(model, spec.hyperparams)
    model.eval()

    train = [encode_pair(tokenizer, t["question"], t["answer"], wl.max_length) for t in wl.train]
    evals = [encode_pair(tokenizer, e["question"], e["answer"], wl.max_length) for e in wl.evals]

    def without_eos(e: EncodedExample) -> EncodedExample:
        labels = list(e.labels)
        last = max(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
        labels[last] = IGNORE_INDEX
        return EncodedExample(e.input_ids, labels, e.truncated)

    sets = {"mean": (train, evals), "noeos": ([without_eos(e) for e in train], [without_eos(e) for e in evals])}
    np.save(out / "ntok_train.npy", np.array([e.answer_tokens for e in train]))
    np.save(out / "ntok_eval.npy", np.array([e.answer_tokens for e in evals]))

    blocks = lora_blocks(model)
    (out / "blocks.json").write_text(json.dumps([[b.name, b.offset, b.numel] for b in blocks]))
    names = [b.name for b in blocks]
    meta = {"steps": [0] + [c.step for c in checkpoints], "lr": [0.0] + [c.learning_rate for c in checkpoints]}
    (out / "meta.json").write_text(json.dumps(meta))

    for tag, ckpt in [("s0", None)] + [(f"s{c.step}", c) for c in checkpoints]:
        if ckpt is not None:
            model = attach_adapter(model, ckpt)
            # AdamW's second moments, in the gradient rows' layout.
            state = torch.load(Path(ckpt.path) / TRAINING_STATE, weights_only=True)["optimizer"]
            trainable = [n for n, p in model.named_parameters() if "lora_" in n]
            assert [n.replace("base_model.model.", "", 0) for n in trainable] == [
                n.replace("base_model.model.", "", 0) for n in names], "parameter order differs"
            step = float(state["state"][0]["step"])
            v = torch.cat([state["state"][i]["exp_avg_sq"].flatten() for i in range(len(trainable))])
            np.save(out / f"adam_v_{tag}.npy", v.numpy())
            (out / f"adam_step_{tag}.json").write_text(json.dumps({"step": step, **state["param_groups"][0]},
                                                                   default=str))
        for kind, (tr, ev) in sets.items():
            if (out / f"grads_{kind}_{tag}_train.npy").is_file():
                continue
            t = time.perf_counter()
            gt = example_gradients(model, tr, pad_id=pad_id, batch_size=8)
            ge = example_gradients(model, ev, pad_id=pad_id, batch_size=8)
            np.save(out / f"grads_{kind}_{tag}_eval.npy", ge.numpy())
            np.save(out / f"grads_{kind}_{tag}_train.npy", gt.numpy())
            print(f"{tag} {kind}: {time.perf_counter() - t:.1f} s", flush=True)


# =========================================================================== stage 2
def recall_at_k(scores: np.ndarray, related: list[list[int]], k: int = K) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(top[i]) & set(related[i])) / min(k, len(related[i])) for i in range(len(related))]))


def mean_ap(scores: np.ndarray, related: list[list[int]]) -> float:
    aps = []
    for i, rel in enumerate(related):
        order = np.argsort(-scores[i], kind="stable")
        hits, ap = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if j in rel:
                hits += 1
                ap += hits / rank
        aps.append(ap / len(rel))
    return float(np.mean(aps))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def bm25(wl) -> np.ndarray:
    from benchmarks import metrics

    return np.asarray(metrics.bm25_matrix([t["question"] + " " + t["answer"] for t in wl.train],
                                          [e["question"] + " " + e["answer"] for e in wl.evals]))


class Data:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.meta = json.loads((out / "meta.json").read_text())
        self.blocks = [(o, n) for _, o, n in json.loads((out / "blocks.json").read_text())]
        self.names = [n for n, _, _ in json.loads((out / "blocks.json").read_text())]
        self.ntok_train = np.load(out / "ntok_train.npy").astype(np.float64)
        self.ntok_eval = np.load(out / "ntok_eval.npy").astype(np.float64)
        self._cache: dict = {}

    def grads(self, kind: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        key = (kind, step)
        if key not in self._cache:
            t = np.load(self.out / f"grads_{kind}_s{step}_train.npy").astype(np.float64)
            e = np.load(self.out / f"grads_{kind}_s{step}_eval.npy").astype(np.float64)
            self._cache[key] = (t, e)
        return self._cache[key]

    def adam_precond(self, step: int) -> np.ndarray:
        """1 / (sqrt(v_hat) + eps): AdamW's own per-parameter step scaling at ``step``."""
        v = np.load(self.out / f"adam_v_s{step}.npy").astype(np.float64)
        info = json.loads((self.out / f"adam_step_s{step}.json").read_text())
        beta2 = float(str(info["betas"]).strip("()[]").split(",")[1])
        v_hat = v / (1 - beta2 ** info["step"])
        return 1.0 / (np.sqrt(v_hat) + float(info["eps"]))


def whiten(T: np.ndarray, E: np.ndarray, X: np.ndarray, lam_rel: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply R^-1/2 with R = X^T X / k + lam I (a damped Gauss-Newton / gradient covariance
    from the rows of X), lam = lam_rel * the mean nonzero eigenvalue of X^T X / k."""
    k = X.shape[0]
    gram = X @ X.T / k
    s, V = np.linalg.eigh(gram)
    keep = s > s.max() * 1e-10
    s, V = s[keep], V[:, keep]
    lam = lam_rel * s.mean()
    U = X.T @ V / np.sqrt(k * s)  # P x r, orthonormal columns

    def apply(G: np.ndarray) -> np.ndarray:
        c = G @ U
        return (G - c @ U.T) / np.sqrt(lam) + (c / np.sqrt(s + lam)) @ U.T

    return apply(T), apply(E)


def similarity(T: np.ndarray, E: np.ndarray, *, norm: str, centre: str, precond: np.ndarray | None,
               blocks, sumloss: tuple[np.ndarray, np.ndarray] | None = None,
               white: tuple[str, float] | None = None) -> np.ndarray:
    if sumloss is not None:  # gradient of the summed (not mean) token loss
        T, E = T * sumloss[0][:, None], E * sumloss[1][:, None]
    if precond is not None:
        # TrackStar: R^-1/2 g with R the Adam second moment. For a cosine, preconditioning both
        # sides with R^-1/2 is the inner product g_e R^-1 g_t.
        T, E = T * np.sqrt(precond), E * np.sqrt(precond)
    if white is not None:
        src, lam_rel = white
        X = T if src == "train" else np.concatenate([T, E])
        T, E = whiten(T, E, X, lam_rel)
    if centre in ("train", "both"):
        mu = T.mean(0, keepdims=True)
        T = T - mu
        if centre == "both":
            E = E - mu
    if norm == "none":
        return E @ T.T
    if norm == "unit":
        return unit(E) @ unit(T).T
    if norm == "train":  # one-sided (RelatIF-like): divide by the training gradient's norm only
        return E @ unit(T).T
    if norm == "layer":  # mean over layers of the per-layer cosine
        s = np.zeros((E.shape[0], T.shape[0]))
        for off, size in blocks:
            s += unit(E[:, off:off + size]) @ unit(T[:, off:off + size]).T
        return s / len(blocks)
    raise ValueError(norm)


def table(out: Path, workload: str | None) -> None:
    from inflab.influence.gradcache import GradientMatrix
    from inflab.influence.methods.datainf import datainf_scores
    import torch

    torch.set_num_threads(1)
    wl = load_workload(workload)
    related = wl.related
    d = Data(out)
    steps = d.meta["steps"]
    ckpts = steps[1:]
    final = ckpts[-1]
    rows: list[tuple[str, float, float]] = []

    def report(name: str, s: np.ndarray) -> None:
        top = np.argsort(-s, axis=1, kind="stable")[:, :K]
        hits = [len(set(top[i]) & set(related[i])) for i in range(len(related))]
        rows.append((name, recall_at_k(s, related), mean_ap(s, related), len(set(top.ravel())), hits))
        print(f"{name:<78} {rows[-1][1]:.3f}  {rows[-1][2]:.3f}  {rows[-1][3]:>3}  {hits}", flush=True)

    print(f"{'variant':<78} R@4    mAP   distinct-in-top4  hits-per-question")
    try:
        report("BM25 (question+answer)", bm25(wl))
    except Exception as exc:  # pragma: no cover
        print("BM25 failed:", exc)

    a_or_b = {
        "A": [(o, n) for (o, n), name in zip(d.blocks, d.names) if ".lora_A." in name],
        "B": [(o, n) for (o, n), name in zip(d.blocks, d.names) if ".lora_B." in name],
    }

    def combo(steps_used, kind="mean", **kw) -> np.ndarray:
        total = None
        for st in steps_used:
            T, E = d.grads(kind, st)
            kw.pop("_pre", None)
            p = kw.get("precond")
            if isinstance(p, str):
                p = d.adam_precond(st if p == "own" else final)
            s = similarity(T, E, **{**kw, "precond": p}, blocks=d.blocks)
            total = s if total is None else total + s
        return total

    sets = {"all 3 ckpts (TracIn)": ckpts, "final ckpt": [final], f"ckpt 1 (step {ckpts[0]})": [ckpts[0]],
            "init (step 0)": [0]}
    for label, used in sets.items():
        print(f"--- {label}")
        for kind in ("mean", "noeos"):
            tag = "" if kind == "mean" else " [no EOS]"
            report(f"{label}: raw dot{tag}", combo(used, kind, norm="none", centre="no", precond=None))
            report(f"{label}: unit (current){tag}", combo(used, kind, norm="unit", centre="no", precond=None))
            report(f"{label}: one-sided (train norm){tag}", combo(used, kind, norm="train", centre="no", precond=None))
            report(f"{label}: per-layer unit{tag}", combo(used, kind, norm="layer", centre="no", precond=None))
            report(f"{label}: centre train, unit{tag}", combo(used, kind, norm="unit", centre="train", precond=None))
            report(f"{label}: centre both, unit{tag}", combo(used, kind, norm="unit", centre="both", precond=None))
            if 0 not in used:
                report(f"{label}: Adam R^-1/2 (own ckpt), unit [TrackStar]{tag}",
                       combo(used, kind, norm="unit", centre="no", precond="own"))
                report(f"{label}: Adam R^-1/2 (final ckpt), unit{tag}",
                       combo(used, kind, norm="unit", centre="no", precond="final"))
                report(f"{label}: Adam R^-1/2, centre both, unit{tag}",
                       combo(used, kind, norm="unit", centre="both", precond="own"))
            # summed token loss: a cosine is unchanged, but centring is not
            tot = None
            for st in used:
                T, E = d.grads(kind, st)
                s = similarity(T, E, norm="unit", centre="both", precond=None, blocks=d.blocks,
                               sumloss=(d.ntok_train - (kind == "noeos"), d.ntok_eval - (kind == "noeos")))
                tot = s if tot is None else tot + s
            report(f"{label}: summed-token loss, centre both, unit{tag}", tot)
        # layer subsets (diagnostic)
        for which, blks in a_or_b.items():
            tot = None
            for st in used:
                T, E = d.grads("mean", st)
                idx = np.concatenate([np.arange(o, o + n) for o, n in blks])
                s = unit(E[:, idx]) @ unit(T[:, idx]).T
                tot = s if tot is None else tot + s
            if np.any(tot):
                report(f"{label}: unit, lora_{which} only (diagnostic)", tot)
        # DataInf metric cosine at each checkpoint (the current DataInf 'normalized')
        tot_raw, tot_norm = None, None
        for st in used:
            T, E = d.grads("mean", st)
            gm = GradientMatrix(*T.shape)
            gm.write(list(range(T.shape[0])), torch.from_numpy(T.astype(np.float32)))
            raw, nrm, _ = datainf_scores(torch.from_numpy(E.astype(np.float32)), gm, d.blocks)
            tot_raw = raw if tot_raw is None else tot_raw + raw
            tot_norm = nrm if tot_norm is None else tot_norm + nrm
        report(f"{label}: DataInf raw", tot_raw)
        report(f"{label}: DataInf metric cosine (current datainf normalized)", tot_norm)
        if 0 not in used:  # DataInf on Adam-corrected gradients A^1/2 g
            tot_norm = None
            for st in used:
                T, E = d.grads("mean", st)
                a = np.sqrt(d.adam_precond(st))
                gm = GradientMatrix(*T.shape)
                gm.write(list(range(T.shape[0])), torch.from_numpy((T * a).astype(np.float32)))
                _, nrm, _ = datainf_scores(torch.from_numpy((E * a).astype(np.float32)), gm, d.blocks)
                tot_norm = nrm if tot_norm is None else tot_norm + nrm
            report(f"{label}: DataInf metric cosine on Adam-corrected gradients", tot_norm)
        for src in ("train", "train+eval"):
            for lam_rel in (0.1, 1.0, 10.0):
                report(f"{label}: whiten R=GN({src})+{lam_rel:g}*mean eig, unit",
                       combo(used, "mean", norm="unit", centre="no", precond=None, white=(src, lam_rel)))
        if 0 not in used:
            for src in ("train", "train+eval"):
                for lam_rel in (0.1, 1.0):
                    report(f"{label}: TrackStar full: Adam R^-1/2, whiten GN({src})+{lam_rel:g}, unit",
                           combo(used, "mean", norm="unit", centre="no", precond="own", white=(src, lam_rel)))
            report(f"{label}: DDA-style debias: unit minus unit at init",
                   combo(used, "mean", norm="unit", centre="no", precond=None)
                   - len(used) * combo([0], "mean", norm="unit", centre="no", precond=None))

    (out / "table.json").write_text(json.dumps([{"variant": n, "recall_at_4": r, "mAP": m, "distinct_in_top4": dd, "hits": h}
                                                for n, r, m, dd, h in rows],
                                               indent=1))


def loo_table(out: Path, workload: str | None) -> None:
    """A larger check of the same choices: each *training* pair as the query (its own
    gradient), the other 31 ranked, related = the 3 others of its topic (recall@3, mAP over
    32 queries). In-sample for the fine-tune, but not the 8 questions the table was read on."""
    from benchmarks import metrics

    wl = load_workload(workload)
    topics = [t["topic"] for t in wl.train]
    n = len(topics)
    related = [[k for k in range(n) if k != j and topics[k] == topics[j]] for j in range(n)]
    d = Data(out)
    ckpts = d.meta["steps"][1:]

    def scored(s: np.ndarray) -> tuple[float, float]:
        s = s.copy()
        np.fill_diagonal(s, -np.inf)
        return recall_at_k(s, related, 3), mean_ap(s, related)

    texts = [t["question"] + " " + t["answer"] for t in wl.train]
    print(f"{'variant (training pairs as queries, leave one out)':<70} R@3    mAP")
    print(f"{'BM25':<70} " + "  ".join(f"{x:.3f}" for x in scored(np.asarray(metrics.bm25_matrix(texts, texts)))))
    variants = {
        "raw dot": dict(norm="none", centre="no", precond=None),
        "unit (current)": dict(norm="unit", centre="no", precond=None),
        "per-layer unit": dict(norm="layer", centre="no", precond=None),
        "centre both, unit": dict(norm="unit", centre="both", precond=None),
        "Adam R^-1/2, unit": dict(norm="unit", centre="no", precond="own"),
        "whiten GN(train)+0.1, unit": dict(norm="unit", centre="no", precond=None, white=("train", 0.1)),
        "whiten GN(train)+1, unit": dict(norm="unit", centre="no", precond=None, white=("train", 1.0)),
        "TrackStar: Adam + whiten GN(train)+0.1, unit": dict(norm="unit", centre="no", precond="own",
                                                             white=("train", 0.1)),
        "TrackStar: Adam + whiten GN(train)+1, unit": dict(norm="unit", centre="no", precond="own",
                                                           white=("train", 1.0)),
    }
    for label, used in (("all 3 ckpts", ckpts), ("final ckpt", ckpts[-1:])):
        for name, kw in variants.items():
            total = None
            for st in used:
                T, _ = d.grads("mean", st)
                p = d.adam_precond(st) if kw.get("precond") == "own" else None
                sim = similarity(T, T, **{**kw, "precond": p}, blocks=d.blocks)
                total = sim if total is None else total + sim
            print(f"{label + ': ' + name:<70} " + "  ".join(f"{x:.3f}" for x in scored(total)), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("stage", choices=["grads", "table", "loo"])
    p.add_argument("--out", type=Path, default=Path("/tmp/inflab-norm"))
    p.add_argument("--workload", help="workload JSON (default: the repository's benchmarks/workloads/influence-workload.json)")
    p.add_argument("--seed", type=int, help="grads: override the workload's training seed (a replicate)")
    a = p.parse_args(argv)
    if a.stage == "grads":
        compute_gradients(a.out, a.workload, a.seed)
    elif a.stage == "loo":
        loo_table(a.out, a.workload)
    else:
        table(a.out, a.workload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
