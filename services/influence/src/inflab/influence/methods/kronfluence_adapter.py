"""Everything the EK-FAC method takes from kronfluence, in one place.

Its documented API: ``Analyzer`` and ``prepare_model``, ``Task``, ``FactorArguments`` /
``ScoreArguments`` and ``DataLoaderKwargs``. Beyond it, EK-FAC relies on these internals
(kronfluence 1.0.1), each used only here:

* the names of the fitted factors in the dictionaries ``load_eigendecomposition`` /
  ``load_all_factors`` return, and that a dictionary of the same form (per module: the
  Lambda sums and the number of examples they cover) is what kronfluence's EK-FAC
  preconditioner reads (:func:`lambda_factors`);
* that preconditioner's formula (``Ekfac.prepare``: Lambda averaged over the examples,
  plus the damping, or ``HEURISTIC_DAMPING_SCALE`` x its mean when none is given),
  which :func:`inverse_lambda` repeats to score from our own gradients;
* the wrapped modules' ``_trackers`` / ``current_mode`` and a tracker's ``cached_hooks``:
  the covariance pass's backward hook removes itself after the first backward of a
  forward, so more backwards on that forward (our per-example gradients) do not enter
  the covariances (:func:`hooks_released` checks it at run time);
* that a wrapped module's forward takes the wrapped module's input as its first argument
  (our forward hooks read it there).

:func:`check_internals` checks all of them against the installed kronfluence, by
behaviour where it can; its unit test fails naming what changed after an upgrade.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

#: The version the internals above were read from.
TESTED_VERSION = "1.0.1"


def version() -> str:
    from importlib.metadata import version as installed

    return installed("kronfluence")


def factor_arguments(opts: Any) -> Any:
    """kronfluence's ``FactorArguments`` of the EK-FAC arguments ``opts``."""
    from kronfluence.arguments import FactorArguments

    return FactorArguments(
        strategy=opts.strategy,
        use_empirical_fisher=opts.use_empirical_fisher,
        covariance_max_examples=opts.covariance_max_examples,
        lambda_max_examples=opts.lambda_max_examples,
    )


def score_arguments(opts: Any, **overrides: Any) -> Any:
    """kronfluence's ``ScoreArguments`` of the EK-FAC arguments ``opts``."""
    from kronfluence.arguments import ScoreArguments

    return ScoreArguments(damping_factor=opts.damping_factor, query_gradient_low_rank=opts.query_gradient_low_rank,
                          **overrides)


def task_base() -> type:
    """kronfluence's ``Task``, the base class of a task."""
    from kronfluence.task import Task

    return Task


@contextlib.contextmanager
def analyzer_session(model: nn.Module, task: Any, collate_fn: Callable[[list], Any]) -> Iterator[tuple[nn.Module, Any]]:
    """``(prepared model, Analyzer)`` on the model's device (the workers' one choice,
    :func:`inflab.ml.device.compute_device`: a GPU where there is one), its files in a
    temporary folder removed afterwards, its log quiet below warnings."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.utils.dataset import DataLoaderKwargs

    quiet = logging.getLogger("kronfluence")
    with tempfile.TemporaryDirectory(prefix="inflab-ekfac-") as out, warnings.catch_warnings():
        # kronfluence 1.0.1 builds torch.cuda.amp.GradScaler even on a CPU (deprecated).
        warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
        on_cpu = next(model.parameters()).device.type == "cpu"
        model = prepare_model(model, task)
        analyzer = Analyzer("inflab", model, task, cpu=on_cpu, disable_tqdm=True, output_dir=out,
                            log_level=max(quiet.getEffectiveLevel(), logging.WARNING))
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_fn))
        yield model, analyzer


def all_modules(scores: dict) -> torch.Tensor:
    """The scores summed over the tracked modules, from ``load_pairwise_scores`` /
    ``load_self_scores``."""
    from kronfluence.utils.constants import ALL_MODULE_NAME

    return scores[ALL_MODULE_NAME]


def eigenbasis(factors: dict, module: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q_S, Q_A)``: the eigenvectors of ``module``'s output-gradient and input covariances."""
    from kronfluence.utils.constants import ACTIVATION_EIGENVECTORS_NAME, GRADIENT_EIGENVECTORS_NAME

    return factors[GRADIENT_EIGENVECTORS_NAME][module].float(), factors[ACTIVATION_EIGENVECTORS_NAME][module].float()


def inverse_lambda(factors: dict, module: str, damping_factor: float | None) -> torch.Tensor:
    """``1 / (Lambda + damping)`` of ``module`` exactly as kronfluence's ``Ekfac.prepare``
    forms it: the corrected eigenvalues averaged over the examples seen; damping ``None``:
    ``HEURISTIC_DAMPING_SCALE`` x their mean."""
    lam = mean_lambda(factors, module)
    return (1.0 / (lam + damping_of(lam, damping_factor))).float()


def mean_lambda(factors: dict, module: str) -> torch.Tensor:
    """``module``'s corrected eigenvalues averaged over the examples seen (float64)."""
    from kronfluence.utils.constants import LAMBDA_MATRIX_NAME, NUM_LAMBDA_PROCESSED

    return factors[LAMBDA_MATRIX_NAME][module].double() / factors[NUM_LAMBDA_PROCESSED][module].double()


def damping_of(lam: torch.Tensor, damping_factor: float | None) -> float:
    """The damping kronfluence adds to ``lam``: ``damping_factor``, or for ``None``
    ``HEURISTIC_DAMPING_SCALE`` x their mean."""
    from kronfluence.utils.constants import HEURISTIC_DAMPING_SCALE

    return HEURISTIC_DAMPING_SCALE * float(lam.mean()) if damping_factor is None else float(damping_factor)


def lambda_factors(sums: dict[str, torch.Tensor], count: int) -> dict:
    """Lambda factors in kronfluence's form: per module the sums ``sum_i (Q_S^T G_i Q_A)^2``
    and the number of examples they cover; merged with ``load_eigendecomposition``'s
    dictionary they are what ``load_all_factors`` would return after its Lambda pass."""
    from kronfluence.utils.constants import LAMBDA_MATRIX_NAME, NUM_LAMBDA_PROCESSED

    number = torch.tensor([count], dtype=torch.int64)
    return {LAMBDA_MATRIX_NAME: dict(sums), NUM_LAMBDA_PROCESSED: {name: number.clone() for name in sums}}


def hooks_released(modules: Sequence[nn.Module]) -> bool:
    """Whether the wrapped ``modules`` hold no backward hook of their current mode (after
    the covariance loss's backward, kronfluence 1.0.1's hooks have removed themselves)."""
    for module in modules:
        tracker = getattr(module, "_trackers", {}).get(getattr(module, "current_mode", None))
        if getattr(tracker, "cached_hooks", None):
            return False
    return True


# --------------------------------------------------------------------------- the check
#: The keyword arguments EK-FAC passes to each ``Analyzer`` method and constructor.
_ANALYZER_CALLS = {
    "__init__": ("analysis_name", "model", "task", "cpu", "disable_tqdm", "output_dir", "log_level"),
    "set_dataloader_kwargs": ("dataloader_kwargs",),
    "fit_covariance_matrices": ("factors_name", "dataset", "per_device_batch_size", "factor_args"),
    "perform_eigendecomposition": ("factors_name", "factor_args"),
    "fit_lambda_matrices": ("factors_name", "dataset", "per_device_batch_size", "factor_args"),
    "load_eigendecomposition": ("factors_name",),
    "load_all_factors": ("factors_name",),
    "compute_pairwise_scores": ("scores_name", "factors_name", "query_dataset", "train_dataset",
                                "per_device_query_batch_size", "per_device_train_batch_size", "score_args"),
    "load_pairwise_scores": ("scores_name",),
    "compute_self_scores": ("scores_name", "factors_name", "train_dataset", "per_device_train_batch_size",
                            "score_args"),
    "load_self_scores": ("scores_name",),
}
#: The ``Task`` methods EK-FAC's task overrides, with their parameters.
_TASK_METHODS = {
    "compute_train_loss": ("batch", "model", "sample"),
    "compute_measurement": ("batch", "model"),
    "get_influence_tracked_modules": (),
    "get_attention_mask": ("batch",),
}
_FACTOR_FIELDS = ("strategy", "use_empirical_fisher", "covariance_max_examples", "lambda_max_examples", "amp_dtype",
                  "lambda_dtype")
_SCORE_FIELDS = ("damping_factor", "query_gradient_low_rank", "use_measurement_for_self_influence")


def _missing_parameters(fn: Any, names: Sequence[str]) -> list[str]:
    params = inspect.signature(fn).parameters
    return [n for n in names if n not in params]


def check_internals() -> list[str]:
    """What of the kronfluence behaviour this module relies on the installed kronfluence
    no longer has, one sentence each (empty: all is as in 1.0.1)."""
    problems: list[str] = []

    def check(what: str, fn: Callable[[], str | None]) -> None:
        try:
            problem = fn()
        except Exception as exc:  # an import or attribute that is gone
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            problems.append(f"{what}: {problem}")

    def analyzer_api() -> str | None:
        from kronfluence.analyzer import Analyzer

        gone = {m: _missing_parameters(getattr(Analyzer, m), p) for m, p in _ANALYZER_CALLS.items()}
        gone = {m: p for m, p in gone.items() if p}
        return f"parameters no longer taken: {gone}" if gone else None

    def task_api() -> str | None:
        task = task_base()
        gone = {m: _missing_parameters(getattr(task, m), p) for m, p in _TASK_METHODS.items()}
        gone = {m: p for m, p in gone.items() if p}
        return f"parameters no longer taken: {gone}" if gone else None

    def argument_fields() -> str | None:
        from kronfluence.arguments import FactorArguments, ScoreArguments

        gone = [f for f in _FACTOR_FIELDS if not hasattr(FactorArguments(), f)]
        gone += [f for f in _SCORE_FIELDS if not hasattr(ScoreArguments(), f)]
        if not callable(getattr(FactorArguments(), "to_dict", None)):
            gone.append("to_dict")
        return f"fields gone: {gone}" if gone else None

    def preconditioner() -> str | None:
        from kronfluence.arguments import ScoreArguments
        from kronfluence.factor.config import FactorConfig
        from kronfluence.utils import constants

        generator = torch.Generator().manual_seed(0)
        q_s = torch.linalg.qr(torch.randn(2, 2, generator=generator, dtype=torch.float64))[0]
        q_a = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
        factors = {
            constants.GRADIENT_EIGENVECTORS_NAME: {"m": q_s}, constants.ACTIVATION_EIGENVECTORS_NAME: {"m": q_a},
            **lambda_factors({"m": torch.rand(2, 3, generator=generator, dtype=torch.float64) * 4}, 2),
        }
        gradient = torch.randn(2, 3, generator=generator, dtype=torch.float64)
        for damping in (None, 0.5):
            storage = {name: factors[name]["m"].clone() for name in factors}
            storage[constants.ACTIVATION_EIGENVALUES_NAME] = storage[constants.GRADIENT_EIGENVALUES_NAME] = None
            config = FactorConfig.CONFIGS["ekfac"]
            config.prepare(storage, ScoreArguments(damping_factor=damping, precondition_dtype=torch.float64),
                           torch.device("cpu"))
            theirs = config.precondition_gradient(gradient, storage)
            s_, a_ = (q.double() for q in eigenbasis(factors, "m"))
            ours = s_ @ ((s_.T @ gradient @ a_) * inverse_lambda(factors, "m", damping).double()) @ a_.T
            if not torch.allclose(theirs, ours, rtol=1e-5, atol=1e-6):
                return (f"Ekfac.prepare and precondition_gradient give {theirs.tolist()} where this module's "
                        f"eigenbasis and inverse_lambda give {ours.tolist()} (damping {damping})")
        return None

    def tracked_modules() -> str | None:
        from kronfluence.analyzer import prepare_model
        from kronfluence.module.tracked_module import ModuleMode
        from kronfluence.module.utils import set_mode

        base = task_base()

        class _Probe(base):  # type: ignore[misc, valid-type]
            def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
                return model(batch).sum()

            def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
                return model(batch).sum()

            def get_influence_tracked_modules(self) -> list[str]:
                return ["0"]

        model = prepare_model(nn.Sequential(nn.Linear(3, 2)), _Probe())
        module = model.get_submodule("0")
        for attribute in ("_trackers", "current_mode", "storage"):
            if not hasattr(module, attribute):
                return f"a wrapped module has no {attribute}"
        seen: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        x = torch.randn(4, 3)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
            set_mode(model, ModuleMode.COVARIANCE, tracked_module_names=["0"])
            # The hooks need a parameter that takes a gradient, as LoRA's lora_B does.
            x.requires_grad_(True)
            out = model(x)
        handle.remove()
        if not seen or seen[0] is not x:
            return "a wrapped module's forward does not take the module's input as its first argument"
        tracker = module._trackers.get(module.current_mode)
        if not hasattr(tracker, "cached_hooks"):
            return "a tracker has no cached_hooks"
        if not tracker.cached_hooks:
            return "the covariance tracker's forward registers no backward hook (cached_hooks stays empty)"
        out.sum().backward(retain_graph=True)
        if not hooks_released([module]):
            return "the covariance tracker keeps its backward hook after the first backward"
        return None

    check("Analyzer's API", analyzer_api)
    check("Task's API", task_api)
    check("the argument objects", argument_fields)
    check("the EK-FAC preconditioner", preconditioner)
    check("the wrapped modules", tracked_modules)
    return problems


__all__ = [
    "TESTED_VERSION", "all_modules", "analyzer_session", "check_internals", "eigenbasis", "factor_arguments",
    "hooks_released", "inverse_lambda", "lambda_factors", "score_arguments", "task_base", "version",
]
