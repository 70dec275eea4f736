"""The influence workload, its fine-tune (cached), and generated workloads for --scale.

The workload file (by default ``benchmarks/workloads/influence-workload.json``; any file of
the same format with ``--workload``) holds 32 training and 8 evaluation QA pairs about 8
topics of invented facts, the LoRA and training settings, and for each evaluation pair the
indices of the training pairs that are about the same topic (``related_train``: the ground
truth of recall@k). Its checkpoints are trained once with the trainer's own
``train_lora`` and cached under a folder keyed by a hash of the workload and the model, so
repeated benchmark runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inflab.core.store_layout import CHECKPOINT_META

REPO = Path(__file__).resolve().parents[1]
#: The workload the benchmarks use when --workload is not given.
DEFAULT_WORKLOAD = REPO / "benchmarks" / "workloads" / "influence-workload.json"
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class Workload:
    """Training pairs, evaluation pairs (with reference answers), ground truth, settings."""

    name: str
    train: list[dict[str, Any]]  # {"id", "question", "answer"[, "topic"]}
    evals: list[dict[str, Any]]  # {"id", "question", "answer", "related_train": [indices]}
    lora: dict[str, Any]
    settings: dict[str, Any]  # the workload's "train" object
    max_length: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def related(self) -> list[list[int]]:
        return [list(e.get("related_train", [])) for e in self.evals]

    def digest(self, model_id: str) -> str:
        """A short hash of everything that determines the fine-tune's checkpoints."""
        payload = json.dumps(
            {"train": self.train, "lora": self.lora, "settings": self.settings,
             "max_length": self.max_length, "model": model_id},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def training_pairs(self) -> list[Any]:
        from inflab.core.messages import TrainingPair

        return [TrainingPair(id=t["id"], question=t["question"], answer=t["answer"]) for t in self.train]

    def eval_questions(self) -> list[Any]:
        from inflab.core.messages import EvalQuestion

        return [EvalQuestion(id=e["id"], question=e["question"], answer=e["answer"]) for e in self.evals]

    def run_spec(self, model_id: str) -> Any:
        """The RunSpec that trains this workload exactly as the workload file says."""
        from inflab.core.messages import Hyperparams, RunSpec

        s, lora = self.settings, self.lora
        hp = Hyperparams(
            learning_rate=float(s.get("lr", 2e-4)),
            num_epochs=int(s.get("epochs", 3)),
            batch_size=int(s.get("batch_size", 4)),
            lora_rank=int(lora.get("r", 8)),
            lora_alpha=float(lora.get("alpha", 16)),
            lora_dropout=float(lora.get("dropout", 0.0)),
            lora_target_modules=list(lora.get("target_modules", ["q_proj", "v_proj"])),
            max_seq_length=self.max_length,
            seed=int(s.get("seed", 0)),
            checkpoint_interval=1,
            weight_decay=float(s.get("weight_decay", 0.0)),
            lr_scheduler=s.get("lr_schedule", "constant"),
        )
        return RunSpec(
            model_id=model_id,
            training_data=self.training_pairs(),
            eval_data=self.eval_questions(),
            hyperparams=hp,
        )


def find_workload(path: str | os.PathLike | None = None) -> Path:
    """``path``, or the repository's own workload when it is not given."""
    p = Path(path) if path else DEFAULT_WORKLOAD
    if not p.is_file():
        raise FileNotFoundError(f"influence workload not found: {p}; pass --workload")
    return p


def workload_label(path: str | os.PathLike) -> str:
    """How results name the workload file: its path inside the repository, or only its
    name for a file from elsewhere (the content digest identifies it either way)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return p.name


def load_workload(path: str | os.PathLike | None = None) -> Workload:
    p = find_workload(path)
    raw = json.loads(p.read_text())
    return Workload(
        name=p.stem,
        train=[{k: t[k] for k in ("id", "question", "answer", "topic") if k in t} for t in raw["train_examples"]],
        evals=[{k: e[k] for k in ("id", "question", "answer", "topic", "related_train") if k in e}
               for e in raw["eval_examples"]],
        lora=dict(raw.get("lora", {})),
        settings=dict(raw.get("train", {})),
        max_length=int(raw.get("format", {}).get("max_length", 64)),
        raw=raw,
    )


# --------------------------------------------------------------------------- generated (--scale)
_SUBJECTS = [
    "the river", "the old mill", "the lighthouse", "the glacier", "the library", "the orchard",
    "the harbour", "the observatory", "the bakery", "the bridge", "the forest", "the museum",
    "the train station", "the vineyard", "the market", "the castle", "the island", "the canyon",
    "the school", "the factory",
]
_FACTS = [
    ("How old is {s}?", "{s} is {n} years old."),
    ("Who looks after {s}?", "{s} is looked after by a team of {n} volunteers."),
    ("How far is {s} from the town?", "{s} is {n} kilometres from the town."),
    ("When does {s} open?", "{s} opens at {h} o'clock every morning."),
    ("What colour is the door of {s}?", "The door of {s} is painted {c}."),
    ("How many people visit {s} each day?", "About {n} people visit {s} each day."),
]
_COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"]


def generated_workload(n_train: int, n_eval: int, like: Workload, seed: int = 0) -> Workload:
    """``n_train`` training and ``n_eval`` evaluation pairs from templates, deterministic in
    ``seed``; the LoRA and training settings are ``like``'s. Lengths resemble the
    default workload's (one short question, one sentence of answer)."""
    rng = random.Random(seed)

    def pair(i: int) -> tuple[str, str]:
        s = _SUBJECTS[i % len(_SUBJECTS)]
        q, a = _FACTS[rng.randrange(len(_FACTS))]
        values = {"s": s, "n": rng.randint(2, 900), "h": rng.randint(5, 11), "c": rng.choice(_COLOURS)}
        answer = a.format(**values)
        return q.format(**values), answer[0].upper() + answer[1:]

    train = []
    for i in range(n_train):
        q, a = pair(i)
        train.append({"id": f"g{i:05d}", "question": q, "answer": a})
    evals = []
    for i in range(n_eval):
        q, a = pair(rng.randrange(10_000))
        evals.append({"id": f"q{i:04d}", "question": q, "answer": a, "related_train": []})
    return Workload(f"generated-{n_train}x{n_eval}", train, evals, dict(like.lora), dict(like.settings), like.max_length)


# --------------------------------------------------------------------------- checkpoints
def model_path(model_id: str, cache_dir: Path) -> str:
    from inflab.ml.models import trusted_model_path

    return trusted_model_path(model_id, Path(cache_dir))


def trained_checkpoints(workload: Workload, model_id: str, cache_dir: Path, work_root: Path,
                        log=print) -> list[Path]:
    """The workload's fine-tune checkpoints (one per epoch), trained once and cached under
    ``work_root/<digest>/``; returns the checkpoint folders in step order."""
    from inflab.trainer.training import train_lora

    folder = Path(work_root) / workload.digest(model_id)
    done = folder / "done.json"
    if done.is_file():
        return [folder / p for p in json.loads(done.read_text())["checkpoints"]]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    path = model_path(model_id, cache_dir)
    log(f"training the workload's LoRA once (cached in {folder})")
    outcome = train_lora(workload.run_spec(model_id), path, folder, emit=lambda e: None)
    checkpoints = sorted(c.path for c in outcome.checkpoints)
    done.write_text(json.dumps({
        "checkpoints": [str(Path(c).relative_to(folder)) for c in checkpoints],
        "duration_s": round(outcome.duration_s, 1),
        "tokens": outcome.tokens,
        "losses_first_last": [outcome.losses[0], outcome.losses[-1]] if outcome.losses else None,
    }, indent=2))
    return [Path(c) for c in checkpoints]


def checkpoint_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / CHECKPOINT_META).read_text())
