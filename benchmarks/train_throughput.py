"""Training throughput: our trainer against a plain Hugging Face Trainer with PEFT.

    python -m benchmarks.train_throughput --json benchmarks/results/train-throughput-cpu.json

The same LoRA run both ways, in one process, alternating (ours, reference, ours,
reference, ...), torch threads fixed: SmolLM2-135M-Instruct (the default model's converted
cache folder), the 32 training pairs of the influence workload (``--workload``; by default
``benchmarks/workloads/influence-workload.json``), batch 4, max length
64, 3 epochs, the workload's LoRA settings (r 8, alpha 16, q_proj/v_proj) and optimizer
settings (AdamW, lr 2e-4, constant, no weight decay, seed 0).

* **ours**: ``inflab.trainer.training.train_lora`` exactly as a run's trainer job calls it,
  with events (into a list), prediction tracking and checkpoints at their default settings
  (4 sampled evaluation questions answered greedily after every epoch but the last, whose
  row a run takes from its inference stage's fine-tuned answers; answers decoded from a
  bfloat16 copy where the CPU computes it natively, in a background thread beside the
  training; a checkpoint with optimizer state every epoch; a metric every step).
* **reference**: ``transformers.Trainer`` on a ``peft`` model, fed the same tokenised
  pairs, labels (answer tokens only) and collation, AdamW with the same settings, no
  gradient clipping (we do not clip either), no evaluation, no saving.

Tokens are the answer tokens trained on (the loss's tokens), the same count both ways;
tokens/s is that count over the wall-clock time of the whole call (model load and
tokenisation included on both sides). Each figure is the median over the passes; the
peak memory is the highest resident set size sampled during that side's passes.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import cpu_name
from benchmarks.workload import DEFAULT_WORKLOAD, load_workload, workload_label

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".inflab" / "models"


class PeakRSS:
    """The highest resident set size of this process while the block runs, sampled."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def release_memory() -> None:
    """Between passes: give freed memory back, so one side's leftovers do not count as
    the other's peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def build_spec(workload: dict, epochs: int, batch_size: int, max_length: int):
    from inflab.core.messages import RunSpec

    lora, train = workload["lora"], workload["train"]
    return RunSpec(
        training_data=[{"id": e["id"], "question": e["question"], "answer": e["answer"]}
                       for e in workload["train_examples"]],
        eval_data=[{"id": e["id"], "question": e["question"], "answer": e["answer"]}
                   for e in workload["eval_examples"]],
        hyperparams={
            "learning_rate": train["lr"], "num_epochs": epochs, "batch_size": batch_size,
            "lora_rank": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
            "lora_target_modules": lora["target_modules"], "max_seq_length": max_length,
            "seed": train["seed"], "weight_decay": train["weight_decay"], "lr_scheduler": train["lr_schedule"],
        },
        # predictions, checkpoint_interval, logging_steps, max_new_tokens: the defaults.
    )


def run_ours(spec, model_path: str) -> dict:
    from inflab.trainer.training import train_lora

    events: list[tuple[float, Any]] = []

    def emit(event) -> None:
        events.append((time.perf_counter(), event))

    with tempfile.TemporaryDirectory(prefix="bench-ours-") as work, PeakRSS() as rss:
        started = time.perf_counter()
        # As inflab.trainer.job calls it: the tracking row at the end of training is the
        # inference stage's (it answers every evaluation question with the final adapter).
        outcome = train_lora(spec, model_path, Path(work), emit, final_predictions_elsewhere=True)
        seconds = time.perf_counter() - started
    kinds: dict[str, int] = {}
    for _, event in events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    # Where ours spent its time: the loop's waits for prediction tracking (its decoding
    # runs beside the training where it has its own bfloat16 copy, so most of it is not
    # a wait) and the checkpoints (between their two statuses).
    checkpoints_s = 0.0
    for (t0, _), (t1, event) in zip(events, events[1:]):
        if event.kind == "status" and event.status == "running":
            checkpoints_s += t1 - t0
    first_step = next(t for t, e in events if e.kind == "progress")
    per_epoch = len(outcome.losses) // spec.hyperparams.num_epochs
    return {
        "seconds": seconds, "tokens": outcome.tokens, "peak_rss_mb": rss.peak_mb,
        "first_loss": outcome.losses[0], "last_epoch_loss": statistics.fmean(outcome.losses[-per_epoch:]),
        "events": kinds, "checkpoints": len(outcome.checkpoints),
        "predictions_stall_s": outcome.prediction_stall_s, "predictions_decoding_s": outcome.prediction_decoding_s,
        "checkpoints_s": checkpoints_s,
        "prediction_precision": sorted({e.precision for _, e in events if e.kind == "prediction"}),
        "until_first_step_s": first_step - started,
    }


def run_reference(spec, model_path: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from inflab.ml.chat import collate
    from inflab.ml.models import load_tokenizer
    from inflab.trainer.training import encode_training_pairs

    hp = spec.hyperparams
    losses: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as work, PeakRSS() as rss:
        started = time.perf_counter()
        tokenizer = load_tokenizer(model_path)
        examples = encode_training_pairs(spec, tokenizer)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        torch.manual_seed(hp.seed)
        model = get_peft_model(model, LoraConfig(
            r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
            target_modules=list(hp.lora_target_modules), bias="none", task_type="CAUSAL_LM",
        ))
        args = TrainingArguments(
            output_dir=work, per_device_train_batch_size=hp.batch_size, num_train_epochs=hp.num_epochs,
            learning_rate=hp.learning_rate, weight_decay=hp.weight_decay, lr_scheduler_type=hp.lr_scheduler,
            warmup_steps=0, optim="adamw_torch", max_grad_norm=0.0, seed=hp.seed, data_seed=hp.seed,
            logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
            use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=examples,
                          data_collator=lambda batch: collate(batch, tokenizer.pad_token_id))
        trainer.train()
        seconds = time.perf_counter() - started
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_epoch = len(losses) // hp.num_epochs
    tokens = hp.num_epochs * sum(e.answer_tokens for e in examples)
    return {
        "seconds": seconds, "tokens": tokens, "peak_rss_mb": rss.peak_mb,
        "first_loss": losses[0], "last_epoch_loss": statistics.fmean(losses[-per_epoch:]),
    }


def machine_info(threads: int) -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    cpu = cpu_name()
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
        "cuda": torch.cuda.is_available(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--workload", type=Path, default=DEFAULT_WORKLOAD,
                        help=f"workload JSON (default: {DEFAULT_WORKLOAD.relative_to(ROOT)})")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="the model cache (converted default model)")
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2, help="passes of each side (at least 2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args(argv)
    if args.passes < 2:
        parser.error("--passes must be at least 2")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Before torch loads OpenMP: a fixed thread count, and threads that sleep rather than
    # spin while waiting. On an oversubscribed machine spinning threads slow single steps
    # down at random (docs/measurements.md), which would measure the neighbours rather
    # than the trainers.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from inflab.ml.models import trusted_model_path

    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    workload = json.loads(args.workload.read_text())
    spec = build_spec(workload, args.epochs, args.batch_size, args.max_length)
    model_path = trusted_model_path(args.model, args.cache_dir)

    ours, reference = [], []
    for index in range(args.passes):
        for name, fn, into in (("ours", run_ours, ours), ("reference", run_reference, reference)):
            release_memory()
            result = fn(spec, model_path)
            into.append(result)
            print(f"pass {index + 1} {name:9s}: {result['tokens'] / result['seconds']:7.1f} tokens/s "
                  f"({result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"loss {result['first_loss']:.3f} -> {result['last_epoch_loss']:.3f})", flush=True)
    if ours[0]["tokens"] != reference[0]["tokens"]:
        raise SystemExit(f"token counts differ: {ours[0]['tokens']} vs {reference[0]['tokens']}")

    ours_tps = statistics.median(r["tokens"] / r["seconds"] for r in ours)
    ref_tps = statistics.median(r["tokens"] / r["seconds"] for r in reference)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "ours_tokens_per_s": round(ours_tps, 2),
        "reference_tokens_per_s": round(ref_tps, 2),
        "ratio": round(ours_tps / ref_tps, 3),
        "ours_peak_rss_mb": round(max(r["peak_rss_mb"] for r in ours), 1),
        "reference_peak_rss_mb": round(max(r["peak_rss_mb"] for r in reference), 1),
        # Where ours' time went (medians): prediction tracking's decoding (mostly beside the
        # training) and how long the loop waited for it, the checkpoints, and the
        # training without those waits.
        "ours_predictions_decoding_s": round(statistics.median(r["predictions_decoding_s"] for r in ours), 2),
        "ours_predictions_stall_s": round(statistics.median(r["predictions_stall_s"] for r in ours), 2),
        "ours_checkpoints_s": round(statistics.median(r["checkpoints_s"] for r in ours), 2),
        "ours_without_prediction_stalls_and_checkpoints_tokens_per_s": round(statistics.median(
            r["tokens"] / (r["seconds"] - r["predictions_stall_s"] - r["checkpoints_s"]) for r in ours), 2),
        "passes": {
            "ours": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in ours],
            "reference": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in reference],
        },
        "machine": machine,
        "settings": {
            "model": args.model, "workload": workload_label(args.workload),
            "workload_digest": load_workload(args.workload).digest(args.model), "training_pairs": len(spec.training_data),
            "epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
            "tokens": ours[0]["tokens"], "tokens_counted": "answer tokens trained on (loss tokens), all epochs",
            "timed": "whole call: model load, tokenisation, training (+ for ours: events, predictions, checkpoints)",
            "lora": workload["lora"], "optimizer": {"name": "AdamW", "lr": spec.hyperparams.learning_rate,
                                                     "schedule": spec.hyperparams.lr_scheduler,
                                                     "weight_decay": spec.hyperparams.weight_decay,
                                                     "grad_clipping": None},
            "ours_defaults": {"predictions": spec.predictions.model_dump(), "max_new_tokens": spec.max_new_tokens,
                              "checkpoint_interval": spec.hyperparams.checkpoint_interval,
                              "logging_steps": spec.hyperparams.logging_steps},
        },
    }
    print(f"ours {ours_tps:.1f} tokens/s, reference {ref_tps:.1f} tokens/s, ratio {result['ratio']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
