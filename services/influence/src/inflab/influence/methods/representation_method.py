"""What the four representation methods share: getting the pair of models, tokenising,
computing (or reusing) the pooled features, and scoring them.

The pair: in a LoRA run the base model without the adapter (old) and with the fine-tuned
adapter (new; the final checkpoint, or ``checkpoint_step``). With ``old_model`` and
``new_model`` two full checkpoints named by model id (an untrained and a trained model,
say), loaded through the job's resolver; their tokenizers and architectures are compared
before any work and a mismatch is refused naming what differs.

Features are cached by content (the models' identity, the adapter's digest, the token
ids, the pooling, the kinds): a second method of the same run, or a grid of options
(layers, aggregation, normalisation, similarity), re-scores the cached vectors without
another forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint, adapter_digest, pick_checkpoint
from inflab.influence.gradcache import GradientCache, examples_fingerprint
from inflab.influence.methods.base import InfluenceMethod, Job, ModelLoader, Progress, Scored, check_inputs, stage
from inflab.influence.methods.prepare import (
    encode_eval,
    encode_train,
    greedy_answer,
    has_reference,
    prepare,
)
from inflab.influence.methods.representation import (
    Features,
    ModelPair,
    ScoreOptions,
    check_compatible,
    example_features,
    parse_layers,
    score_features,
)

#: Loads a model named by id (``old_model`` / ``new_model``): ``(model, tokenizer)``.
NamedLoader = Callable[[str], tuple[Any, Any]]


class Setup:
    """The pair of models and the tokenised examples of one job."""

    def __init__(self, pair: ModelPair, tokenizer: Any, pad_id: int, train_examples: list, eval_examples: list,
                 identity: tuple, info: dict[str, Any]) -> None:
        self.pair = pair
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.train_examples = train_examples
        self.eval_examples = eval_examples
        self.identity = identity
        self.info = info


def _model_name(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "")) or type(model).__name__


def load_setup(
    model_loader: ModelLoader,
    train: Sequence[TrainingPair],
    evals: Sequence[EvalQuestion],
    checkpoints: Sequence[LocalCheckpoint],
    opts: Any,
    progress: Progress,
    *,
    cache: GradientCache | None,
    named_loader: NamedLoader | None,
) -> Setup:
    """Load the pair, answer the questions without a reference (with the new model) and
    tokenise."""
    if opts.old_model is not None:
        if named_loader is None:
            raise ValueError("old_model/new_model: this job cannot load models by id")
        with stage(f"loading the old model {opts.old_model}"):
            old, old_tok = named_loader(opts.old_model)
        with stage(f"loading the new model {opts.new_model}"):
            new, tokenizer = named_loader(opts.new_model)
        with stage("checking the two models"):
            check_compatible(old, old_tok, new, tokenizer)
        pair = ModelPair(new=new, old=old, description=f"old {opts.old_model} vs new {opts.new_model}")
        identity = ("models", _model_name(old), _model_name(new))
        generated: dict[str, str] = {}
        for q in evals:
            if has_reference(q):
                continue
            with stage(f"generating the answer to evaluation question {q.id}"):
                generated[q.id] = greedy_answer(new, tokenizer, q.question, opts.max_new_tokens)
            progress.advance(f"generated the answer to evaluation question {q.id}")
        info: dict[str, Any] = {"models": pair.description, "generated_answers": generated}
    else:
        check_inputs("the method", train, evals, checkpoints)
        checkpoint = pick_checkpoint("the method", checkpoints, opts.checkpoint_step)
        prep = prepare(model_loader, train, evals, [checkpoint], opts, progress, cache)
        tokenizer = prep.tokenizer
        pair = ModelPair(new=prep.model, description=f"base vs base + adapter of step {checkpoint.step}")
        identity = ("lora", prep.base_name, prep.digests.get(checkpoint.step) or adapter_digest(checkpoint))
        generated = prep.generated
        info = {"models": pair.description, "checkpoint_step": checkpoint.step, "generated_answers": generated}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with stage("tokenising"):
        train_examples = [encode_train(tokenizer, p, opts.max_length, opts.benchmark) for p in train]
        eval_examples = [
            encode_eval(tokenizer, q.question, q.answer if has_reference(q) else generated[q.id], opts.max_length,
                        opts.benchmark)
            for q in evals
        ]
    info["truncated_training_examples"] = sum(e.truncated for e in train_examples)
    info["truncated_eval_questions"] = sum(e.truncated for e in eval_examples)
    return Setup(pair, tokenizer, pad_id, train_examples, eval_examples, identity, info)


def features(setup: Setup, which: str, *, layers: list[int], kinds: set[str], pooling: str, batch_size: int,
             ig_steps: int, cache: GradientCache | None, on_batch: Callable[[int], None]) -> Features:
    """The ``train`` or ``eval`` examples' features, from ``cache`` when the same pair,
    tokens and options were computed before (a superset of the layers counts)."""
    examples = setup.train_examples if which == "train" else setup.eval_examples
    key = ("representation", setup.identity, examples_fingerprint(examples), pooling, tuple(sorted(kinds)), ig_steps)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and set(layers) <= set(hit.layers):
            on_batch(len(examples))
            return hit.select(layers)
    out = example_features(setup.pair, examples, pad_id=setup.pad_id, layers=layers, kinds=kinds, pooling=pooling,
                           batch_size=batch_size, ig_steps=ig_steps, on_batch=on_batch)
    if cache is not None:
        cache.put(key, out)
    return out


def relevance_matrix(eval_ids: Sequence[str], train_ids: Sequence[str],
                     ground_truth: dict[str, Sequence[str]] | None) -> torch.Tensor | None:
    if not ground_truth:
        return None
    column = {t: j for j, t in enumerate(train_ids)}
    out = torch.zeros(len(eval_ids), len(train_ids), dtype=torch.bool)
    for i, q in enumerate(eval_ids):
        for t in ground_truth.get(q, ()):
            if t in column:
                out[i, column[t]] = True
    return out


def validation_rows(n: int) -> list[int]:
    """The queries the ``learned`` aggregation fits its weights on: every other one."""
    return list(range(0, n, 2))


class RepresentationMethod(InfluenceMethod):
    """A method scoring pooled per-layer features of the ``kind`` it names."""

    kind: ClassVar[str]
    variants = ("raw",)
    #: ``named_loader`` loads ``old_model``/``new_model``; ``ground_truth`` (a benchmark
    #: run's relevant training examples per query) lets the ``learned`` aggregation fit.
    context_keys = frozenset({"named_loader", "ground_truth"})

    def kinds(self, opts: Any) -> set[str]:
        return {self.kind}

    def check(self, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> None:
        # The checkpoints are checked once it is known whether the run's adapter is used
        # (``old_model``/``new_model`` name two full models instead): see load_setup.
        with stage("checking the request"):
            if not train or not evals:
                raise ValueError(f"{self.name} needs training examples and evaluation questions")

    def units(self, opts: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> int:
        return (1 + len(opts.grid)) * (len(train) + len(evals) + self.extra_units(opts, evals, train))

    def run(self, job: Job) -> list[Scored]:
        opts, progress = job.opts, job.progress
        setup = load_setup(job.model_loader, job.train, job.evals, job.checkpoints, opts, progress, cache=job.cache,
                           named_loader=job.context.get("named_loader"))
        cache = job.cache if job.cache is not None else GradientCache()  # a grid reuses features within the job
        relevant = relevance_matrix([q.id for q in job.evals], [p.id for p in job.train],
                                    job.context.get("ground_truth"))
        settings = [("raw", opts)] + [
            (f"grid{i}", self.Args.model_validate({**opts.model_dump(exclude={"grid"}), **cell}))
            for i, cell in enumerate(opts.grid, start=1)
        ]
        out = []
        for variant, cell in settings:
            with stage("choosing the layers"):
                layers = parse_layers(cell.layers, setup.pair.num_layers)
            # Features of every layer, so that a grid's layer subsets come from the cache.
            common = dict(layers=list(range(setup.pair.num_layers)) if opts.grid else layers, kinds=self.kinds(cell),
                          pooling=cell.pooling, batch_size=cell.batch_size, ig_steps=self.ig_steps(cell),
                          cache=cache)
            with stage("computing the evaluation questions' features"):
                eval_f = features(setup, "eval", on_batch=lambda n: progress.advance("evaluation-question features", n),
                                  **common).select(layers)
            with stage("computing the training examples' features"):
                train_f = features(setup, "train", on_batch=lambda n: progress.advance("training-example features", n),
                                   **common).select(layers)
            with stage(f"scoring {variant}"):
                scores, extra = self.score(setup, cell, layers, eval_f, train_f, relevant, progress)
            info = {**cell.model_dump(), **setup.info, **extra}
            if variant != "raw":
                info["grid_cell"] = dict(opts.grid[int(variant[4:]) - 1])
            out.append(Scored(variant, scores.numpy(), info))
        return out

    def ig_steps(self, opts: Any) -> int:
        """Integrated-gradient steps of the features (``attr_change``'s argument)."""
        return 0

    def extra_units(self, opts: Any, evals: Sequence[EvalQuestion], train: Sequence[TrainingPair]) -> int:
        return 0

    def score(self, setup: Setup, opts: Any, layers: list[int], eval_f: Features, train_f: Features,
              relevant: torch.Tensor | None, progress: Progress) -> tuple[torch.Tensor, dict[str, Any]]:
        options = ScoreOptions(layers, opts.aggregation, opts.top_layers, opts.normalization, opts.similarity)
        scored = score_features(eval_f, train_f, self.kind, options, relevant,
                                validation_rows(eval_f.of(self.kind).shape[0]) if relevant is not None else ())
        return scored.scores, scored.info
