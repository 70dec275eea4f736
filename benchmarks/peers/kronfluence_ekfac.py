"""kronfluence's EK-FAC with its default arguments, as a benchmark peer.

Default ``FactorArguments()`` (strategy ``ekfac``, fitted on the training set) and default
``ScoreArguments()``; micro-batches of 8 like every other method here. The Task tracks the
LoRA ``lora_A`` / ``lora_B`` modules only and passes the attention mask, and
its loss is the same per-example mean answer-token cross-entropy as ours, with vocabulary
logits only at answer positions (so the comparison is about the influence machinery, not
about the loss code). For the covariance fit kronfluence asks for ``sample=True``: labels
are then drawn from the model's own predictive distribution (the true Fisher).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from inflab.ml.chat import IGNORE_INDEX, collate
from inflab.influence.checkpoints import LocalCheckpoint, attach_adapter


def available() -> str | None:
    try:
        import kronfluence  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the optional install
        return f"{type(exc).__name__}: {exc}"
    return None


def _answer_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = batch["labels"]
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return logits, targets[keep], keep


def _per_example_mean(token_losses: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(keep.shape[0], dtype=token_losses.dtype).index_add(0, rows, token_losses)
    return sums / keep.sum(dim=1).clamp(min=1)


def make_task(tracked: list[str]) -> Any:
    from kronfluence.task import Task

    class LoraAnswerTask(Task):
        def compute_train_loss(self, batch: Any, model: Any, sample: bool = False) -> torch.Tensor:
            logits, targets, keep = _answer_logits(model, batch)
            if sample:
                with torch.no_grad():
                    targets = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1).squeeze(-1)
            return _per_example_mean(F.cross_entropy(logits, targets, reduction="none"), keep).sum()

        def compute_measurement(self, batch: Any, model: Any) -> torch.Tensor:
            logits, targets, keep = _answer_logits(model, batch)
            return _per_example_mean(F.cross_entropy(logits, targets, reduction="none"), keep).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return tracked

        def get_attention_mask(self, batch: Any) -> torch.Tensor:
            return batch["attention_mask"]

    return LoraAnswerTask()


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Any]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Any:
        return self.examples[i]


def lora_module_names(model: Any) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (".lora_A." in name + "." or ".lora_B." in name + ".")]


def ekfac(model: Any, train: Sequence[Any], evals: Sequence[Any], checkpoint: LocalCheckpoint, *, pad_id: int,
          batch_size: int = 8, workdir: Path | None = None, factor_args: Any = None,
          score_args: Any = None) -> dict[str, Any]:
    """``{"raw"}``: kronfluence's pairwise scores ``[M, N]`` at ``checkpoint``."""
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    logging.getLogger("kronfluence").setLevel(logging.WARNING)
    model = attach_adapter(model, checkpoint)
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    task = make_task(lora_module_names(model))
    model = prepare_model(model, task)
    out = Path(workdir or tempfile.mkdtemp(prefix="kronfluence-"))
    analyzer = Analyzer("bench", model, task, cpu=not torch.cuda.is_available(), disable_tqdm=True,
                        output_dir=str(out), log_level=logging.WARNING)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda xs: collate(xs, pad_id)))
    factor_args = factor_args or FactorArguments()
    score_args = score_args or ScoreArguments()
    analyzer.fit_all_factors("factors", dataset=_Examples(train), per_device_batch_size=batch_size,
                             factor_args=factor_args, overwrite_output_dir=True)
    analyzer.compute_pairwise_scores("scores", "factors", query_dataset=_Examples(evals),
                                     train_dataset=_Examples(train), per_device_query_batch_size=batch_size,
                                     per_device_train_batch_size=batch_size, score_args=score_args,
                                     overwrite_output_dir=True)
    scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return {"raw": scores.double().numpy(),
            "factor_args": {k: str(v) for k, v in factor_args.to_str_dict().items()} if hasattr(factor_args, "to_str_dict") else str(factor_args)}
