"""The influence job inside a Ray task: fetch the run's checkpoints, run the requested
method, store every variant's matrix in the object store as safetensors.

A failure names its stage (``downloading checkpoint 00000004: ...``, ``computing training
gradients at checkpoint 00000004: ...``); the service puts that text in the failed status
event.

Gradients are reused across the jobs of a run: the process-wide :func:`worker_cache` keeps
per-example gradient matrices keyed by content (adapter bytes, model, token ids), so when a
run asks for TracIn and DataInf, whichever runs second on this Ray worker process takes the
final checkpoint's gradients from the first. Its budgets come from
``INFLAB_INFLUENCE_GRADIENT_CACHE_MB`` (RAM, default 1024) and
``INFLAB_INFLUENCE_GRADIENT_SPILL_MB`` (local disk for larger matrices, default 8192).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inflab.core.influence_methods import ARGS_MODELS, REPRESENTATION_METHODS, describe_errors, stored_model_key
from inflab.core.messages import CheckpointRef, InfluenceRequest
from inflab.ml.function_tokens import add_function_tokens
from inflab.ml.models import load_model, resolve_model
from inflab.core.objectstore import ObjectStore, influence_key
from inflab.influence.checkpoints import ADAPTER_CONFIG, ADAPTER_WEIGHTS, META, LocalCheckpoint
from inflab.influence.gradcache import GradientCache
from inflab.influence.methods import get_method
from inflab.influence.methods.base import Emit, StageFailed, stage
from inflab.influence.results import to_message, to_safetensors_bytes

_CACHE: GradientCache | None = None


def worker_cache() -> GradientCache:
    """The gradient cache of this worker process (created on first use)."""
    global _CACHE
    if _CACHE is None:
        ram = int(os.environ.get("INFLAB_INFLUENCE_GRADIENT_CACHE_MB", "1024")) << 20
        disk = int(os.environ.get("INFLAB_INFLUENCE_GRADIENT_SPILL_MB", "8192")) << 20
        _CACHE = GradientCache(ram_bytes=ram, disk_bytes=disk)
    return _CACHE


def method_arguments(req: InfluenceRequest) -> tuple[dict[str, Any], int]:
    """The method's arguments (the run's ``influence_args[method]`` parsed with the
    contract's model, plus the run's token limits) and the top-k size of the summary;
    checked here, before any download, so a bad value fails fast and names the argument."""
    given = req.spec.influence_args
    user = given.get(req.method) if isinstance(given, dict) else given.of(req.method).model_dump()
    with stage("checking the arguments"):
        try:
            parsed = ARGS_MODELS[req.method].model_validate(user or {})
        except ValidationError as exc:
            raise ValueError(describe_errors(exc.errors(include_url=False), req.method)) from None
    args = {**parsed.model_dump(), "max_length": req.spec.hyperparams.max_seq_length,
            "max_new_tokens": req.spec.max_new_tokens, "benchmark": req.spec.benchmark is not None}
    return args, parsed.top_k


def fetch_checkpoint(store: ObjectStore, ref: CheckpointRef, folder: Path) -> LocalCheckpoint:
    """Download one checkpoint and check it is a readable PEFT adapter."""
    name = f"checkpoint {ref.step:08d}"
    with stage(f"downloading {name} ({ref.key})"):
        store.download_dir(ref.key, folder)
    with stage(f"loading {name}"):
        for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            if not (folder / required).is_file():
                raise FileNotFoundError(f"{ref.key}: no {required} (is it a PEFT adapter folder?)")
        from safetensors import safe_open

        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as weights:
            if not any("lora_" in key for key in weights.keys()):
                raise ValueError(f"{ref.key}: {ADAPTER_WEIGHTS} holds no LoRA weights")
        if (folder / META).is_file():
            return LocalCheckpoint.from_folder(folder)
        # The request carries the same facts as meta.json.
        return LocalCheckpoint(path=folder, step=ref.step, epoch=ref.epoch, learning_rate=ref.learning_rate)


def fetch_stored_model(store: ObjectStore, key: str, folder: Path) -> Path:
    """Download a full model saved under ``key`` (``save_pretrained``'s folder of config,
    weights and tokenizer files) into ``folder``; a clear error when nothing, or no model,
    is stored there (the path is checked by the contract: under ``models/``, no ``..``)."""
    try:
        store.download_dir(key, folder)
    except FileNotFoundError:
        raise FileNotFoundError(f"no model stored under {key!r} in the object store") from None
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{key!r} in the object store holds no config.json (is it a saved model folder?)")
    return folder.resolve()


def influence_job(
    request: dict, store_url: str, models_dir: str, inline_max_cells: int, emit: Emit
) -> list[dict]:
    """The result events' ``InfluenceMatrix`` of every variant (as JSON dicts): the summary,
    and the matrix inline only up to ``inline_max_cells`` cells (the service passes
    ``Settings.influence_inline_max_cells``); the full matrices are in the object store.
    ``emit`` receives the method's typed events (progress) as it runs."""
    req = InfluenceRequest.model_validate(request)
    with stage("choosing the method"):
        method = get_method(req.method)
    args, top_k = method_arguments(req)
    store = ObjectStore(store_url)
    with stage(f"resolving the model {req.spec.model_id}"):
        model_path = resolve_model(req.spec.model_id, Path(models_dir))
    with tempfile.TemporaryDirectory(prefix=f"inflab-influence-{req.run_id}-") as work:
        checkpoints = [fetch_checkpoint(store, ref, Path(work) / f"{ref.step:08d}") for ref in req.checkpoints]
        tokens = req.spec.benchmark.special_tokens if req.spec.benchmark is not None else []

        def load(path: str) -> tuple[Any, Any]:
            # A benchmark run's function tokens, as the trainer added them.
            model, tokenizer = load_model(path, Path(models_dir))
            add_function_tokens(model, tokenizer, tokens)
            return model, tokenizer

        extra: dict[str, Any] = {}
        if req.method in REPRESENTATION_METHODS:
            # old_model/new_model: ids like the run's model_id (the service has checked them
            # against the allow-list), resolved the same way, or object-store paths.
            fetched: list[Path] = []

            def named(name: str) -> tuple[Any, Any]:
                key = stored_model_key(name)
                if key is None:
                    return load(resolve_model(name, Path(models_dir)))
                fetched.append(fetch_stored_model(store, key, Path(work) / f"model-{len(fetched)}"))
                return load(str(fetched[-1]))

            extra["named_loader"] = named
            if req.spec.benchmark is not None:
                extra["ground_truth"] = req.spec.benchmark.relevant
        try:
            matrices = method.compute(
                lambda: load(model_path),
                req.spec.training_data,
                req.spec.eval_data,
                checkpoints,
                args,
                emit,
                cache=worker_cache(),
                run_id=req.run_id,
                **extra,
            )
        except StageFailed:
            raise
        except Exception as exc:
            raise StageFailed(f"computing {req.method}: {type(exc).__name__}: {exc}") from exc
    key = influence_key(req.run_id, method.name)
    with stage("storing the influence matrices"):
        store.put(key, to_safetensors_bytes(matrices))
    return [to_message(m, key, inline_max_cells=inline_max_cells, top_k=top_k) for m in matrices]
