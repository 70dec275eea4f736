"""EK-FAC influence through kronfluence (Grosse et al. 2023; Bae et al.), on the LoRA
weights only.

kronfluence fits eigenvalue-corrected Kronecker factors of the Fisher on the training set
(covariances of each tracked module's inputs and output gradients, their eigenbases, then
corrected eigenvalues), and scores ``grad L_eval^T (F + damping)^-1 grad L_train``. Here:

* the :class:`LoraTask` tracks only the ``lora_A`` / ``lora_B`` modules (tracking the whole
  model would fit factors for frozen weights, and cost hours) and hands kronfluence the
  attention mask, so padding never enters the covariances;
* the loss of a pair is the mean cross-entropy over its answer tokens, computed with
  vocabulary logits at those positions only (as for TracIn and DataInf); for the true Fisher
  (kronfluence's default) the targets are sampled from the model's own predictions there;
* the examples are given to kronfluence sorted by length, so its micro-batches need little
  padding, and the columns are put back in the run's order afterwards;
* kronfluence fits the covariances (its covariance pass over the training set) and their
  eigenbases; the scores are then formed here from our per-example LoRA gradients (reused
  from the gradient cache when TracIn or DataInf already took them at that checkpoint)
  rotated into the factors' eigenbasis:
  ``<P(v), g> = sum (Q_S^T v Q_A) (Q_S^T g Q_A) / (Lambda + damping)``, exactly kronfluence's
  preconditioning. That replaces kronfluence's pairwise and self-influence passes (two more
  forward+backward passes over the training set). ``scoring="kronfluence"`` uses its own
  passes instead; the tests check both agree with a direct kronfluence call;
* one forward per training micro-batch serves everything: after the covariance loss's
  backward (kronfluence's hooks, as in its own pass), more backwards on the same forward give
  the per-example gradients for Lambda (kronfluence's formula ``sum_i (Q_S^T G_i Q_A)^2``;
  for the true Fisher on a second, independent label draw, as kronfluence's Lambda pass makes
  on its identical forward) and, without a gradient cache, the training pairs' own
  gradients. That saves kronfluence's Lambda pass and our own gradient pass over the training
  set; ``lambda_pass="kronfluence"`` keeps kronfluence's Lambda pass.

Every knob of kronfluence's ``FactorArguments`` / ``ScoreArguments`` that matters on one
machine is an argument here (names as in kronfluence); the full argument objects are stored
with the scores. A positive score means the pair helped the model towards that answer.

``normalized``: the score divided by ``sqrt(self(eval) * self(train))``, the self-influences
under the same preconditioner: a cosine in the EK-FAC metric (RelatIF-style), 1 for an
evaluation question identical to a training pair (nearly free with our scoring; one more
kronfluence pass with ``scoring="kronfluence"``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inflab.core import influence_methods as contract
from inflab.ml.chat import IGNORE_INDEX, collate
from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.influence.checkpoints import LocalCheckpoint, pick_checkpoint
from inflab.influence.gradcache import GradientCache, GradientMatrix
from inflab.influence.gradients import length_buckets, lora_blocks
from inflab.influence.methods.base import Emit, InfluenceMethod, InfluenceScores, ModelLoader, Progress, stage
from inflab.influence.methods.prepare import GradientArgs, check_inputs, checkpoint_name, generation_units, prepare


class EKFACArgs(contract.EKFACArgs, GradientArgs):
    """The contract's arguments (strategy, damping_factor, scoring, ...; names as in
    kronfluence) and the run's token limits, turned into kronfluence's argument objects."""

    def factor_arguments(self) -> Any:
        from kronfluence.arguments import FactorArguments

        return FactorArguments(
            strategy=self.strategy,
            use_empirical_fisher=self.use_empirical_fisher,
            covariance_max_examples=self.covariance_max_examples,
            lambda_max_examples=self.lambda_max_examples,
        )

    def score_arguments(self, **overrides: Any) -> Any:
        from kronfluence.arguments import ScoreArguments

        return ScoreArguments(
            damping_factor=self.damping_factor,
            query_gradient_low_rank=self.query_gradient_low_rank,
            **overrides,
        )


def lora_module_names(model: nn.Module) -> list[str]:
    """The names of the active adapter's ``lora_A`` / ``lora_B`` Linear modules."""
    return [b.name.removesuffix(".weight") for b in lora_blocks(model)]


def _answer_logits(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Vocabulary logits at the positions that predict an answer token, their targets, and
    which example each belongs to (as ``inflab.ml.chat.answer_loss``)."""
    labels = batch["labels"]
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    rows = keep.nonzero(as_tuple=True)[0]
    counts = keep.sum(dim=1).clamp(min=1)
    return logits, targets[keep], rows, counts


def _per_example_sum(token_losses: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # Sum over examples of each example's mean over its answer tokens: kronfluence wants a
    # summed loss, and each example's term is exactly the loss TracIn and DataInf use.
    return (token_losses / counts[rows].to(token_losses.dtype)).sum()


class LoraTask:
    """kronfluence ``Task`` for answer-token cross-entropy on a peft LoRA model."""

    def __new__(cls, module_names: Sequence[str], generator: torch.Generator | None = None):
        from kronfluence.task import Task

        class _LoraTask(Task):
            def __init__(self) -> None:
                super().__init__()
                self.module_names = list(module_names)
                self.generator = generator
                #: A :class:`_PerExampleCapture` while kronfluence's covariance pass runs.
                self.capture: _PerExampleCapture | None = None

            def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
                capture = self.capture
                if capture is not None:
                    capture.begin(batch["input_ids"].shape[0])
                logits, answers, rows, counts = _answer_logits(model, batch)

                def loss_of(targets: torch.Tensor) -> torch.Tensor:
                    return _per_example_sum(F.cross_entropy(logits, targets, reduction="none"), rows, counts)

                def draw() -> torch.Tensor:
                    with torch.no_grad():
                        probs = torch.softmax(logits.detach(), dim=-1)
                        return torch.multinomial(probs, num_samples=1, generator=self.generator).flatten()

                loss = loss_of(draw() if sample else answers)
                if capture is None:
                    return loss
                lambda_loss = loss_of(draw()) if sample and capture.lambda_rows else None
                answer_loss = loss_of(answers) if sample and capture.train is not None else None
                return capture.backward(loss, lambda_loss, answer_loss)

            def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
                logits, targets, rows, counts = _answer_logits(model, batch)
                return _per_example_sum(F.cross_entropy(logits, targets, reduction="none"), rows, counts)

            def get_influence_tracked_modules(self) -> list[str]:
                return self.module_names

            def get_attention_mask(self, batch: Any) -> torch.Tensor:
                return batch["attention_mask"]

        return _LoraTask()


class _PerExampleCapture:
    """Per-example LoRA gradients from kronfluence's covariance pass, sharing its forward.

    A forward hook on each tracked module keeps its input ``x`` and output. The Task calls
    :meth:`begin` before each micro-batch's forward and hands its losses to :meth:`backward`,
    which runs the covariance loss's backward itself (kronfluence's covariance hooks see it, as
    in kronfluence's own pass, and then remove themselves: they fire once per forward), then
    takes ``torch.autograd.grad`` of the other losses at the LoRA outputs, whose gradients ``g``
    give ``sum_t g_t x_t^T`` per example (as kronfluence's ``compute_per_sample_gradient``;
    padding has ``g == 0``). kronfluence gets the loss back detached: its own ``backward()``
    then has nothing left to do. Examples come in loader order.

    * Lambda (the first ``limit`` examples): for the true Fisher the gradients of a second,
      independent draw of labels from the same predictive distribution (what kronfluence's
      Lambda pass draws on its identical forward; reusing the covariance's own draw would
      underestimate the directions it fitted worst), for the empirical Fisher the answers'.
    * With ``train`` (a matrix in the run's order; ``order[k]``: the run index of the loader's
      k-th example): the answers' gradients, what the scores use."""

    def __init__(self, model: nn.Module, layout: Sequence[tuple[str, int, int, int]], limit: int,
                 store: GradientCache, train: GradientMatrix | None = None,
                 order: Sequence[int] | None = None) -> None:
        self.model, self.layout, self.limit = model, list(layout), limit
        self.width = sum(o * i for _, _, o, i in layout)
        self.matrix = store.new_matrix(limit, self.width) if limit else None
        self.train, self.order = train, list(order or [])
        self.seen = 0
        self.start, self.size = 0, 0
        self.outputs: list[tuple[int, int, int, torch.Tensor, torch.Tensor]] = []
        self.handles: list[Any] = []
        self.modules: list[nn.Module] = []

    def begin(self, batch_size: int) -> None:
        self.start, self.size = self.seen, batch_size
        self.seen += batch_size
        self.outputs = []

    @property
    def lambda_rows(self) -> int:
        return max(0, min(self.size, self.limit - self.start))

    def _hook(self, offset: int, out_features: int, in_features: int):
        def forward_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if output.requires_grad:
                self.outputs.append((offset, out_features, in_features, args[0].detach(), output))

        return forward_hook

    def _gradients(self, loss: torch.Tensor, retain: bool) -> torch.Tensor:
        outputs = self.outputs
        grads = torch.autograd.grad(loss, [out for *_, out in outputs], retain_graph=retain, allow_unused=True)
        rows = torch.zeros(self.size, self.width)
        for (offset, out_features, in_features, x, _), g in zip(outputs, grads):
            if g is None:  # a module the loss does not reach
                continue
            grad = torch.bmm(g.reshape(self.size, -1, out_features).transpose(1, 2).float(),
                             x.reshape(self.size, -1, in_features).float())
            rows[:, offset : offset + out_features * in_features] += grad.reshape(self.size, -1)
        return rows

    def backward(self, loss: torch.Tensor, lambda_loss: torch.Tensor | None,
                 answer_loss: torch.Tensor | None) -> torch.Tensor:
        """``loss``: the covariance's; ``lambda_loss``: Lambda's (None: ``loss``'s own, the
        empirical Fisher); ``answer_loss``: the answers' (None: the empirical Fisher's ``loss``)."""
        lam, train = self.lambda_rows > 0, self.train is not None
        loss.backward(retain_graph=lam or train)
        if lam or train:
            self._check_hooks_released()
        if lam or train:
            empirical = lambda_loss is None
            first = loss if empirical else (lambda_loss if lam else answer_loss)
            rows = self._gradients(first, retain=train and not empirical and lam)
            if lam:
                self.matrix.write(range(self.start, self.start + self.lambda_rows), rows[: self.lambda_rows])
            if train:
                if not empirical and lam:
                    rows = self._gradients(answer_loss, retain=False)
                self.train.write([self.order[k] for k in range(self.start, self.start + self.size)], rows)
        self.outputs = []
        return loss.detach().requires_grad_()

    def _check_hooks_released(self) -> None:
        """kronfluence 1.0.1's covariance hooks remove themselves after the first backward; if a
        version kept them, our next backwards would enter its covariances: fail instead."""
        for module in self.modules:
            tracker = getattr(module, "_trackers", {}).get(getattr(module, "current_mode", None))
            if getattr(tracker, "cached_hooks", None):
                raise RuntimeError("kronfluence kept its backward hooks after the covariance backward; "
                                   "run EK-FAC with lambda_pass='kronfluence'")

    def __enter__(self) -> "_PerExampleCapture":
        self.modules = [self.model.get_submodule(name) for name, *_ in self.layout]
        self.handles = [self.model.get_submodule(name).register_forward_hook(self._hook(offset, o, i))
                        for name, offset, o, i in self.layout]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.outputs = []

    def lambda_matrices(self, eigen: dict, lambda_dtype: torch.dtype) -> dict:
        """kronfluence's Lambda factors from the captured gradients: per module
        ``sum_i (Q_S^T G_i Q_A)^2`` (``lambda_dtype``) and how many examples went in."""
        from kronfluence.utils.constants import (
            ACTIVATION_EIGENVECTORS_NAME,
            GRADIENT_EIGENVECTORS_NAME,
            LAMBDA_MATRIX_NAME,
            NUM_LAMBDA_PROCESSED,
        )

        parts = [(offset, o, i, eigen[GRADIENT_EIGENVECTORS_NAME][name].float(),
                  eigen[ACTIVATION_EIGENVECTORS_NAME][name].float()) for name, offset, o, i in self.layout]
        sums = [torch.zeros(o, i, dtype=lambda_dtype) for _, _, o, i in self.layout]
        for _, rows in self.matrix.chunks():
            for total, (offset, o, i, q_s, q_a) in zip(sums, parts):
                g = rows[:, offset : offset + o * i].reshape(-1, o, i)
                total += (q_s.T @ g @ q_a).square().sum(0).to(lambda_dtype)
        count = torch.tensor([min(self.seen, self.limit)], dtype=torch.int64)
        return {
            LAMBDA_MATRIX_NAME: {name: s for (name, *_), s in zip(self.layout, sums)},
            NUM_LAMBDA_PROCESSED: {name: count.clone() for name, *_ in self.layout},
        }


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Any]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Any:
        return self.examples[index]


def _by_length(examples: Sequence[Any], batch_size: int) -> list[int]:
    return [i for bucket in length_buckets(examples, batch_size) for i in bucket]


class EKFAC(InfluenceMethod):
    name = "ekfac"
    description = contract.METHODS["ekfac"].description
    variants = ("raw", "normalized")
    Args = EKFACArgs

    def compute(
        self,
        model_loader: ModelLoader,
        train: Sequence[TrainingPair],
        evals: Sequence[EvalQuestion],
        checkpoints: Sequence[LocalCheckpoint],
        args: dict[str, Any],
        emit: Emit,
        *,
        cache: GradientCache | None = None,
    ) -> list[InfluenceScores]:
        opts = EKFACArgs.model_validate(args)
        check_inputs(self.name, train, evals, checkpoints)
        with stage("importing kronfluence"):
            from kronfluence.analyzer import Analyzer, prepare_model
            from kronfluence.utils.dataset import DataLoaderKwargs
        chosen = pick_checkpoint(self.name, checkpoints, opts.checkpoint_step)
        own_scoring = opts.scoring == "gradients" and opts.strategy == "ekfac"
        units = len(train) + len(evals) + 2 if own_scoring else 2 + 2 * opts.normalized
        progress = Progress(emit, generation_units(evals) + units)
        prep = prepare(model_loader, train, evals, checkpoints, opts, progress, cache)
        factor_args, score_args = opts.factor_arguments(), opts.score_arguments()
        # Our backwards on kronfluence's forward bypass its AMP gradient scaler: AMP keeps its
        # own passes.
        shared = (own_scoring and opts.lambda_pass == "shared" and factor_args.amp_dtype is None
                  and _covers(factor_args, len(train)))
        # Without a gradient cache to share with (and when kronfluence's covariance pass sees
        # every training pair), the training pairs' gradients come from that pass's forward.
        fused = shared and cache is None and _covers_all(factor_args, len(train))
        train_grads = None
        if own_scoring:
            # Before kronfluence wraps the LoRA modules (our hooks want the plain Linears).
            eval_grads = prep.gradients(chosen, "eval", opts, cache,
                                        lambda k: progress.advance("evaluation-question gradients", k)).tensor()
            if not fused:
                train_grads = prep.gradients(chosen, "train", opts, cache,
                                             lambda k: progress.advance("training-pair gradients", k))
        model = prep.attach(chosen)
        modules = lora_module_names(model)
        layout = [(b.name.removesuffix(".weight"), b.offset, *b.shape) for b in lora_blocks(model)]
        generator = torch.Generator().manual_seed(opts.seed)
        task = LoraTask(modules, generator)

        train_order = _by_length(prep.train_examples, opts.batch_size)
        eval_order = _by_length(prep.eval_examples, opts.batch_size)
        train_set = _Examples([prep.train_examples[i] for i in train_order])
        eval_set = _Examples([prep.eval_examples[i] for i in eval_order])
        loader = DataLoaderKwargs(collate_fn=lambda items: collate(items, prep.pad_id))
        where = checkpoint_name(chosen)

        quiet = logging.getLogger("kronfluence")
        with tempfile.TemporaryDirectory(prefix="inflab-ekfac-") as out, warnings.catch_warnings():
            # kronfluence 1.0.1 builds torch.cuda.amp.GradScaler even on a CPU (deprecated).
            warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
            model = prepare_model(model, task)
            analyzer = Analyzer("inflab", model, task, cpu=True, disable_tqdm=True, output_dir=out,
                                log_level=max(quiet.getEffectiveLevel(), logging.WARNING))
            analyzer.set_dataloader_kwargs(loader)
            with stage(f"fitting EK-FAC factors at {where}"):
                if shared:
                    # kronfluence's covariance pass and eigendecomposition; Lambda from
                    # per-example gradients of a second label draw on that pass's forward.
                    limit = min(len(train_set), factor_args.lambda_max_examples or len(train_set))
                    store = prep.scratch or GradientCache()
                    if fused:
                        train_grads = store.new_matrix(len(train_set), sum(o * i for _, _, o, i in layout))
                    capture = _PerExampleCapture(model, layout, limit, store, train_grads if fused else None,
                                                 train_order)
                    task.capture = capture
                    with capture:
                        analyzer.fit_covariance_matrices("factors", train_set, per_device_batch_size=opts.batch_size,
                                                         factor_args=factor_args)
                    task.capture = None
                    with _torch_threads(opts.eigendecomposition_threads):
                        analyzer.perform_eigendecomposition("factors", factor_args=factor_args)
                    eigen = analyzer.load_eigendecomposition("factors")
                    factors = {**eigen, **capture.lambda_matrices(eigen, factor_args.lambda_dtype)}
                    del capture
                    if fused:
                        progress.advance("training-pair gradients", len(train_set))
                else:
                    # kronfluence's fit_all_factors, step by step (for the threads).
                    analyzer.fit_covariance_matrices("factors", train_set, per_device_batch_size=opts.batch_size,
                                                     factor_args=factor_args)
                    with _torch_threads(opts.eigendecomposition_threads):
                        analyzer.perform_eigendecomposition("factors", factor_args=factor_args)
                    analyzer.fit_lambda_matrices("factors", train_set, per_device_batch_size=opts.batch_size,
                                                 factor_args=factor_args)
            progress.advance("fitted the factors on the training pairs")
            if own_scoring:
                with stage(f"computing EK-FAC scores at {where}"):
                    if not shared:
                        factors = analyzer.load_all_factors("factors")
                    parts = ekfac_preconditioner(factors, layout, opts.damping_factor)
                    raw, normalized = preconditioned_scores(eval_grads, train_grads, parts, opts.normalized)
                progress.advance("scored the training pairs")
            else:
                raw, normalized = _kronfluence_scores(analyzer, opts, train_set, eval_set, train_order, eval_order,
                                                      where, progress)
        info = {
            **opts.model_dump(),
            **prep.info(),
            "checkpoint_step": chosen.step,
            "tracked_modules": len(modules),
            "lambda": ("kronfluence's formula and eigenbasis, per-example gradients of an independent label draw "
                       "(the empirical Fisher: the answers) on the covariance pass's forward"
                       if shared else "kronfluence's Lambda pass" if opts.strategy == "ekfac" else None),
            "factor_arguments": factor_args.to_dict(),
            "score_arguments": score_args.to_dict(),
            "kronfluence_version": _kronfluence_version(),
            "normalization": "cosine in the EK-FAC metric (self-influences, RelatIF-style, two-sided)",
        }
        eval_ids, train_ids = [q.id for q in evals], [p.id for p in train]
        out = [InfluenceScores(self.name, "raw", raw.astype(np.float32), eval_ids, train_ids, dict(info))]
        if normalized is not None:
            out.append(InfluenceScores(self.name, "normalized", normalized.astype(np.float32), eval_ids, train_ids,
                                       dict(info)))
        return out

@contextlib.contextmanager
def _torch_threads(threads: int):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _covers_all(factor_args: Any, n: int) -> bool:
    return factor_args.covariance_max_examples is None or factor_args.covariance_max_examples >= n


def _covers(factor_args: Any, n: int) -> bool:
    """Whether the covariance pass sees every example the Lambda pass would (both take the
    first ``*_max_examples``), so Lambda can be formed from it."""
    cov = min(n, factor_args.covariance_max_examples or n)
    return cov >= min(n, factor_args.lambda_max_examples or n)


def _kronfluence_scores(analyzer, opts: EKFACArgs, train_set, eval_set, train_order, eval_order, where, progress):
    """kronfluence's own pairwise (and self-influence) passes; columns back in run order."""
    with stage(f"computing EK-FAC scores at {where}"):
        analyzer.compute_pairwise_scores(
            "pairwise", "factors", query_dataset=eval_set, train_dataset=train_set,
            per_device_query_batch_size=opts.batch_size, per_device_train_batch_size=opts.batch_size,
            score_args=opts.score_arguments(),
        )
        raw = _unsort(analyzer.load_pairwise_scores("pairwise")["all_modules"].double().numpy(), eval_order, train_order)
    progress.advance("scored the training pairs")
    if not opts.normalized:
        return raw, None
    with stage(f"computing EK-FAC self-influences at {where}"):
        self_args = opts.score_arguments(use_measurement_for_self_influence=True)
        analyzer.compute_self_scores("self_train", "factors", train_dataset=train_set,
                                     per_device_train_batch_size=opts.batch_size, score_args=self_args)
        progress.advance("self-influence of the training pairs")
        analyzer.compute_self_scores("self_eval", "factors", train_dataset=eval_set,
                                     per_device_train_batch_size=opts.batch_size, score_args=self_args)
        progress.advance("self-influence of the evaluation questions")
        self_train = _unsort1(analyzer.load_self_scores("self_train")["all_modules"], train_order)
        self_eval = _unsort1(analyzer.load_self_scores("self_eval")["all_modules"], eval_order)
    return raw, _cosine(raw, self_eval, self_train)


def _cosine(raw: np.ndarray, self_eval: np.ndarray, self_train: np.ndarray) -> np.ndarray:
    return raw / np.sqrt(np.clip(self_eval, 1e-30, None)[:, None] * np.clip(self_train, 1e-30, None)[None, :])


def ekfac_preconditioner(factors: dict, layout: Sequence[tuple[str, int, int, int]], damping_factor: float | None):
    """Per LoRA module ``(offset, out, in, Q_S, Q_A, 1 / (Lambda + damping))`` from kronfluence's
    fitted factors, exactly as kronfluence's ``Ekfac.prepare`` forms them (the corrected
    eigenvalues averaged over the examples seen; damping ``None``: 0.1 x their mean)."""
    from kronfluence.utils.constants import (
        ACTIVATION_EIGENVECTORS_NAME,
        GRADIENT_EIGENVECTORS_NAME,
        LAMBDA_MATRIX_NAME,
        NUM_LAMBDA_PROCESSED,
    )

    parts = []
    for name, offset, out_features, in_features in layout:
        lam = factors[LAMBDA_MATRIX_NAME][name].double() / factors[NUM_LAMBDA_PROCESSED][name].double()
        damping = 0.1 * float(lam.mean()) if damping_factor is None else damping_factor
        parts.append((
            offset, out_features, in_features,
            factors[GRADIENT_EIGENVECTORS_NAME][name].float(),
            factors[ACTIVATION_EIGENVECTORS_NAME][name].float(),
            (1.0 / (lam + damping)).float(),
        ))
    return parts


def _rotate(rows: torch.Tensor, part) -> torch.Tensor:
    """Per-example gradients of one module in the factors' eigenbasis: ``Q_S^T G Q_A``."""
    offset, out_features, in_features, q_s, q_a, _ = part
    g = rows[:, offset : offset + out_features * in_features].reshape(-1, out_features, in_features)
    return (q_s.T @ g @ q_a).reshape(rows.shape[0], -1)


def preconditioned_scores(eval_grads: torch.Tensor, train_grads: GradientMatrix, parts, normalized: bool):
    """``raw[i, k] = sum_modules <P(v_i), g_k>`` with ``P(G) = Q_S ((Q_S^T G Q_A) / (Lambda +
    damping)) Q_A^T``, computed in the eigenbasis (``P`` is orthogonal there, so
    ``<P(v), g> = sum rot(v) * inv * rot(g)``); self-influences likewise. Training
    gradients are consumed in row chunks."""
    m, n = eval_grads.shape[0], train_grads.shape[0]
    eval_rot = [(_rotate(eval_grads, part), part[5].reshape(-1)) for part in parts]
    raw = np.zeros((m, n), dtype=np.float64)
    self_train = np.zeros(n, dtype=np.float64)
    for rows, g in train_grads.chunks():
        for (v_rot, inv), part in zip(eval_rot, parts):
            g_rot = _rotate(g, part)
            raw[:, rows] += ((v_rot * inv) @ g_rot.T).double().numpy()
            if normalized:
                self_train[rows] += (g_rot * g_rot * inv).sum(1, dtype=torch.float64).numpy()
    if not normalized:
        return raw, None
    self_eval = sum((v_rot * v_rot * inv).sum(1, dtype=torch.float64) for v_rot, inv in eval_rot).numpy()
    return raw, _cosine(raw, self_eval, self_train)


def _unsort(scores: np.ndarray, rows: list[int], cols: list[int]) -> np.ndarray:
    out = np.empty_like(scores)
    out[np.ix_(rows, cols)] = scores
    return out


def _unsort1(values: torch.Tensor, order: list[int]) -> np.ndarray:
    out = np.empty(len(order), dtype=np.float64)
    out[order] = values.double().numpy()
    return out


def _kronfluence_version() -> str:
    from importlib.metadata import version

    return version("kronfluence")
