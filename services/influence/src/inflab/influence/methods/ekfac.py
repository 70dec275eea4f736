"""EK-FAC influence through kronfluence (Grosse et al. 2023; Bae et al.), on the LoRA
weights only.

kronfluence fits eigenvalue-corrected Kronecker factors of the Fisher on the training set
(covariances of each tracked module's inputs and output gradients, their eigenbases, then
corrected eigenvalues), and scores ``grad L_eval^T (F + damping)^-1 grad L_train``. Here:

* the :class:`LoraTask` tracks only the ``lora_A`` / ``lora_B`` modules (tracking the whole
  model would fit factors for frozen weights, and cost hours) and hands kronfluence the
  attention mask, so padding never enters the covariances;
* a benchmark run's trained function-token embedding rows are left out (TracIn and DataInf
  include them): kronfluence fits factors for ``nn.Linear`` and ``nn.Conv2d`` modules only,
  and the rows live in peft's token layer on the embedding. The stored arguments say so
  (``trainable_token_rows: 0``, ``trainable_token_rows_left_out``);
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inflab.ml.chat import IGNORE_INDEX, collate
from inflab.core.messages import EvalQuestion, TrainingPair
from inflab.core.vocabulary import VARIANTS
from inflab.influence.checkpoints import LocalCheckpoint
from inflab.influence.gradcache import GradientCache, GradientMatrix
from inflab.influence.gradients import coverage, gradient_blocks, length_buckets, lora_blocks
from inflab.influence.methods import kronfluence_adapter as kronfluence
from inflab.influence.methods.base import Job, stage
from inflab.influence.methods.prepare import GradientMethod, Prepared, checkpoint_name

#: A LoRA module in a gradient row: ``(module name, offset, out_features, in_features)``.
Layout = Sequence[tuple[str, int, int, int]]


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
        class _LoraTask(kronfluence.task_base()):  # type: ignore[misc]
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

    def __init__(self, model: nn.Module, layout: Layout, limit: int,
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
        if not kronfluence.hooks_released(self.modules):
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
        parts = [(offset, o, i, *kronfluence.eigenbasis(eigen, name)) for name, offset, o, i in self.layout]
        sums = [torch.zeros(o, i, dtype=lambda_dtype) for _, _, o, i in self.layout]
        for _, rows in self.matrix.chunks():
            for total, (offset, o, i, q_s, q_a) in zip(sums, parts):
                g = rows[:, offset : offset + o * i].reshape(-1, o, i)
                total += (q_s.T @ g @ q_a).square().sum(0).to(lambda_dtype)
        return kronfluence.lambda_factors({name: s for (name, *_), s in zip(self.layout, sums)},
                                          min(self.seen, self.limit))


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Any]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Any:
        return self.examples[index]


def _by_length(examples: Sequence[Any], batch_size: int) -> list[int]:
    return [i for bucket in length_buckets(examples, batch_size) for i in bucket]


@dataclass(frozen=True)
class _Plan:
    """How one EK-FAC job runs (see the module docstring)."""

    #: Scores from our per-example gradients preconditioned with the factors (else
    #: kronfluence's own pairwise and self-influence passes).
    own_scoring: bool
    #: Lambda from per-example gradients on the covariance pass's forward (else
    #: kronfluence's Lambda pass).
    shared: bool
    #: The training pairs' gradients from that forward too (no gradient cache to share with).
    fused: bool


@dataclass
class _Data:
    """The examples as kronfluence sees them: sorted by length (``order[k]``: the run index
    of the k-th), and the tracked LoRA modules."""

    train_order: list[int]
    eval_order: list[int]
    train_set: "_Examples"
    eval_set: "_Examples"
    layout: Layout
    modules: list[str]


class EKFAC(GradientMethod):
    name = "ekfac"
    variants = VARIANTS
    one_checkpoint = True

    def check(self, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> None:
        super().check(train, evals, checkpoints)
        with stage("importing kronfluence"):
            import kronfluence.analyzer  # noqa: F401

    def units(self, opts: Any, train: Sequence[TrainingPair], evals: Sequence[EvalQuestion],
              checkpoints: Sequence[LocalCheckpoint]) -> int:
        if _own_scoring(opts):
            return len(train) + len(evals) + 2
        return 2 + 2 * opts.normalized

    def scores(self, job: Job, prep: Prepared) -> tuple[dict[str, Any], dict[str, Any]]:
        opts, chosen = job.opts, job.checkpoint
        assert chosen is not None
        factor_args = kronfluence.factor_arguments(opts)
        plan = self.plan(opts, factor_args, len(job.train), job.cache)
        eval_grads, train_grads = self.gradients(job, prep, plan)
        data = self.examples(prep, prep.attach(chosen), opts.batch_size)
        trained = coverage(gradient_blocks(prep.model))
        where = checkpoint_name(chosen)
        task = LoraTask(data.modules, torch.Generator().manual_seed(opts.seed))
        with kronfluence.analyzer_session(prep.model, task, lambda items: collate(items, prep.pad_id)) as (
            model, analyzer,
        ):
            with stage(f"fitting EK-FAC factors at {where}"):
                if plan.shared:
                    factors, fused = self.fit_factors_shared(analyzer, model, task, data, opts, factor_args, prep,
                                                             plan.fused)
                    if plan.fused:
                        train_grads = fused
                        job.progress.advance("training-pair gradients", len(data.train_set))
                else:
                    self.fit_factors(analyzer, data, opts, factor_args)
                    factors = None
            job.progress.advance("fitted the factors on the training pairs")
            spectrum = None
            if plan.own_scoring:
                with stage(f"computing EK-FAC scores at {where}"):
                    factors = factors or analyzer.load_all_factors("factors")
                    raw, normalized = self.score_gradients(factors, data, eval_grads, train_grads, opts)
                    spectrum = eigenvalue_range(factors, data.layout, opts.damping_factor)
                job.progress.advance("scored the training pairs")
            else:
                raw, normalized = _kronfluence_scores(analyzer, opts, data.train_set, data.eval_set, data.train_order,
                                                      data.eval_order, where, job.progress)
        info = self.info(opts, chosen, data, plan, factor_args, trained)
        if spectrum is not None:
            info["eigenvalues"] = spectrum
        return {"raw": raw, "normalized": normalized}, info

    @staticmethod
    def plan(opts: Any, factor_args: Any, n: int, cache: GradientCache | None) -> _Plan:
        own_scoring = _own_scoring(opts)
        # Our backwards on kronfluence's forward bypass its AMP gradient scaler: AMP keeps its
        # own passes.
        shared = (own_scoring and opts.lambda_pass == "shared" and factor_args.amp_dtype is None
                  and _covers(factor_args, n))
        # Without a gradient cache to share with (and when kronfluence's covariance pass sees
        # every training pair), the training pairs' gradients come from that pass's forward.
        return _Plan(own_scoring, shared, shared and cache is None and _covers_all(factor_args, n))

    @staticmethod
    def gradients(job: Job, prep: Prepared, plan: _Plan) -> tuple[torch.Tensor | None, GradientMatrix | None]:
        """The evaluation questions' and (unless fused) the training pairs' gradients, for
        our own scoring; taken before kronfluence wraps the LoRA modules (our hooks want
        the plain Linears)."""
        if not plan.own_scoring:
            return None, None
        progress = job.progress
        eval_grads = prep.gradients(job.checkpoint, "eval", job.opts, job.cache,
                                    lambda k: progress.advance("evaluation-question gradients", k)).tensor()
        train_grads = None
        if not plan.fused:
            train_grads = prep.gradients(job.checkpoint, "train", job.opts, job.cache,
                                         lambda k: progress.advance("training-pair gradients", k))
        return eval_grads, train_grads

    @staticmethod
    def examples(prep: Prepared, model: nn.Module, batch_size: int) -> _Data:
        train_order = _by_length(prep.train_examples, batch_size)
        eval_order = _by_length(prep.eval_examples, batch_size)
        return _Data(
            train_order, eval_order,
            _Examples([prep.train_examples[i] for i in train_order]),
            _Examples([prep.eval_examples[i] for i in eval_order]),
            [(b.name.removesuffix(".weight"), b.offset, *b.shape) for b in lora_blocks(model)],
            lora_module_names(model),
        )

    @staticmethod
    def fit_factors(analyzer: Any, data: _Data, opts: Any, factor_args: Any) -> None:
        """kronfluence's ``fit_all_factors``, step by step (for the eigendecomposition's threads)."""
        analyzer.fit_covariance_matrices("factors", data.train_set, per_device_batch_size=opts.batch_size,
                                         factor_args=factor_args)
        with _torch_threads(opts.eigendecomposition_threads):
            analyzer.perform_eigendecomposition("factors", factor_args=factor_args)
        analyzer.fit_lambda_matrices("factors", data.train_set, per_device_batch_size=opts.batch_size,
                                     factor_args=factor_args)

    @staticmethod
    def fit_factors_shared(analyzer: Any, model: nn.Module, task: Any, data: _Data, opts: Any, factor_args: Any,
                           prep: Prepared, fused: bool) -> tuple[dict, GradientMatrix | None]:
        """kronfluence's covariance pass and eigendecomposition; Lambda from per-example
        gradients of a second label draw on that pass's forward (and, ``fused``, the
        training pairs' gradients from it too). Returns ``(factors, training gradients or
        None)``."""
        n = len(data.train_set)
        limit = min(n, factor_args.lambda_max_examples or n)
        store = prep.scratch or GradientCache()
        train_grads = store.new_matrix(n, sum(o * i for _, _, o, i in data.layout)) if fused else None
        capture = _PerExampleCapture(model, data.layout, limit, store, train_grads, data.train_order)
        task.capture = capture
        with capture:
            analyzer.fit_covariance_matrices("factors", data.train_set, per_device_batch_size=opts.batch_size,
                                             factor_args=factor_args)
        task.capture = None
        with _torch_threads(opts.eigendecomposition_threads):
            analyzer.perform_eigendecomposition("factors", factor_args=factor_args)
        eigen = analyzer.load_eigendecomposition("factors")
        return {**eigen, **capture.lambda_matrices(eigen, factor_args.lambda_dtype)}, train_grads

    @staticmethod
    def score_gradients(factors: dict, data: _Data, eval_grads: torch.Tensor, train_grads: GradientMatrix,
                        opts: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw (and normalised) scores from our per-example gradients, preconditioned with
        the fitted factors as kronfluence would."""
        parts = ekfac_preconditioner(factors, data.layout, opts.damping_factor)
        return preconditioned_scores(eval_grads, train_grads, parts, opts.normalized)

    @staticmethod
    def info(opts: Any, chosen: LocalCheckpoint, data: _Data, plan: _Plan, factor_args: Any,
             trained: dict[str, int]) -> dict[str, Any]:
        return {
            "checkpoint_step": chosen.step,
            "tracked_modules": len(data.modules),
            "num_lora_parameters": trained["num_lora_parameters"],
            # kronfluence factors Linear and Conv2d modules only: the token rows stay out.
            "trainable_token_rows": 0,
            "trainable_token_rows_left_out": trained["trainable_token_rows"],
            "lambda": ("kronfluence's formula and eigenbasis, per-example gradients of an independent label draw "
                       "(the empirical Fisher: the answers) on the covariance pass's forward"
                       if plan.shared else "kronfluence's Lambda pass" if opts.strategy == "ekfac" else None),
            "factor_arguments": factor_args.to_dict(),
            "score_arguments": kronfluence.score_arguments(opts).to_dict(),
            "kronfluence_version": kronfluence.version(),
            "normalization": "cosine in the EK-FAC metric (self-influences, RelatIF-style, two-sided)",
        }


#: The argument model: the contract's ``EKFACArgs`` with the run's limits.
EKFACArgs = EKFAC.Args


def _own_scoring(opts: Any) -> bool:
    return opts.scoring == "gradients" and opts.strategy == "ekfac"


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


def _kronfluence_scores(analyzer, opts: Any, train_set, eval_set, train_order, eval_order, where, progress):
    """kronfluence's own pairwise (and self-influence) passes; columns back in run order."""
    with stage(f"computing EK-FAC scores at {where}"):
        analyzer.compute_pairwise_scores(
            "pairwise", "factors", query_dataset=eval_set, train_dataset=train_set,
            per_device_query_batch_size=opts.batch_size, per_device_train_batch_size=opts.batch_size,
            score_args=kronfluence.score_arguments(opts),
        )
        raw = _unsort(kronfluence.all_modules(analyzer.load_pairwise_scores("pairwise")).double().numpy(), eval_order,
                      train_order)
    progress.advance("scored the training pairs")
    if not opts.normalized:
        return raw, None
    with stage(f"computing EK-FAC self-influences at {where}"):
        self_args = kronfluence.score_arguments(opts, use_measurement_for_self_influence=True)
        analyzer.compute_self_scores("self_train", "factors", train_dataset=train_set,
                                     per_device_train_batch_size=opts.batch_size, score_args=self_args)
        progress.advance("self-influence of the training pairs")
        analyzer.compute_self_scores("self_eval", "factors", train_dataset=eval_set,
                                     per_device_train_batch_size=opts.batch_size, score_args=self_args)
        progress.advance("self-influence of the evaluation questions")
        self_train = _unsort1(kronfluence.all_modules(analyzer.load_self_scores("self_train")), train_order)
        self_eval = _unsort1(kronfluence.all_modules(analyzer.load_self_scores("self_eval")), eval_order)
    return raw, _cosine(raw, self_eval, self_train)


def _cosine(raw: np.ndarray, self_eval: np.ndarray, self_train: np.ndarray) -> np.ndarray:
    return raw / np.sqrt(np.clip(self_eval, 1e-30, None)[:, None] * np.clip(self_train, 1e-30, None)[None, :])


def ekfac_preconditioner(factors: dict, layout: Layout, damping_factor: float | None):
    """Per LoRA module ``(offset, out, in, Q_S, Q_A, 1 / (Lambda + damping))`` from kronfluence's
    fitted factors, exactly as kronfluence's ``Ekfac.prepare`` forms them (the corrected
    eigenvalues averaged over the examples seen; damping ``None``: 0.1 x their mean)."""
    return [(offset, out_features, in_features, *kronfluence.eigenbasis(factors, name),
             kronfluence.inverse_lambda(factors, name, damping_factor))
            for name, offset, out_features, in_features in layout]


def eigenvalue_range(factors: dict, layout: Layout, damping_factor: float | None) -> dict[str, float]:
    """The corrected eigenvalues over every module (min, median, max) and the damping each
    module's inverse adds, to read the damping against the curvature's own scale."""
    lams = [kronfluence.mean_lambda(factors, name) for name, *_ in layout]
    values = torch.cat([lam.reshape(-1) for lam in lams])
    damping = [kronfluence.damping_of(lam, damping_factor) for lam in lams]
    return {"min": float(values.min()), "median": float(values.median()), "max": float(values.max()),
            "damping_min": min(damping), "damping_max": max(damping)}


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
