"""Full models in the object store under ``models/<name>``, for the representation methods'
``old_model``/``new_model`` = ``store:models/<name>`` (``inflab model upload`` and
``inflab model list``).

These talk to the object store directly, on the operator's side, with the settings the
services use (``INFLAB_OBJECT_STORE_URL`` and the store's own variables, such as
``AWS_ENDPOINT_URL`` and the access keys), not through the gateway: a model is hundreds of
MB to GB, which the gateway would have to take in and pass on beside its API (its body
limits are sized for experiments), and whoever can write to the store needs no account
of the API's for it. The gateway and the worker only read what is uploaded here: the
gateway checks ``config.json`` is there, the worker downloads the folder.

An upload writes ``config.json`` last and, when it replaces a model, removes it first:
the gateway and the worker take a prefix holding ``config.json`` for a complete model,
so a half-finished or half-replaced upload is never used as one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inflab.core.influence_methods import STORED_MODEL_ROOT, STORED_MODEL_SCHEME, stored_model_problem
from inflab.core.objectstore import ObjectStore

CONFIG = "config.json"
#: Weight files ``from_pretrained`` reads (safetensors first, as it does).
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: Files any one of which lets ``AutoTokenizer`` build the tokenizer (fast, then the slow
#: tokenizers' vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


class ModelStoreError(Exception):
    """A refusal whose message names what to fix (the CLI prints it as it is)."""


@dataclass(frozen=True)
class Uploaded:
    key: str
    files: int
    size: int
    #: Keys removed that the new folder has not (a replaced model's, or an unfinished
    #: upload's leftovers).
    removed: int

    @property
    def value(self) -> str:
        """What to put in ``old_model``/``new_model``."""
        return f"{STORED_MODEL_SCHEME}{self.key}"


@dataclass(frozen=True)
class StoredModel:
    name: str
    size: int
    files: int
    #: ``architectures[0]`` of config.json, else its ``model_type``; None while the upload
    #: is unfinished (no config.json).
    architecture: str | None

    @property
    def complete(self) -> bool:
        return self.architecture is not None

    @property
    def value(self) -> str:
        return f"{STORED_MODEL_SCHEME}{STORED_MODEL_ROOT}/{self.name}"


def model_key(name: str) -> str:
    """``models/<name>``, or a refusal naming ``--name``: one key segment, as the contract
    accepts in ``store:models/<name>`` (letters, digits, ``_ . -``, no ``..``)."""
    if "/" in name:
        raise ModelStoreError(f"--name {name!r}: one name without '/' (it becomes {STORED_MODEL_ROOT}/<name>)")
    if (problem := stored_model_problem(f"{STORED_MODEL_SCHEME}{STORED_MODEL_ROOT}/{name}")) is not None:
        raise ModelStoreError(f"--name {name!r}: {problem.replace('an object-store path', 'a name')}")
    return f"{STORED_MODEL_ROOT}/{name}"


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file (an 8-byte header length, then a JSON header),
    read without torch: a Git LFS pointer left by a clone without ``git lfs pull`` is the
    usual culprit, and would otherwise fail only in the worker."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head.startswith(b"version "):
            return "a Git LFS pointer, not the weights (run git lfs pull)"
        if len(head) < 8:
            return "not a safetensors file (too short)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "not a safetensors file (its header is longer than the file)"
        try:
            json.loads(fh.read(length))
        except ValueError:
            return "not a safetensors file (its header is not JSON)"
    return None


def check_model_folder(folder: Path) -> list[Path]:
    """The files to upload (relative to ``folder``, ``config.json`` last) of a folder
    ``save_pretrained`` wrote, or a refusal listing everything missing: checked before
    anything is sent, so a folder the worker could not load is never stored. Hidden files
    and folders (``.git``, a hub download's ``.cache``) are not part of the model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelStoreError(f"{folder}: no such folder")
    files = sorted(p.relative_to(folder) for p in folder.rglob("*")
                   if p.is_file() and not _is_hidden(p.relative_to(folder)))
    names = {p.as_posix() for p in files}
    problems: list[str] = []

    config = folder / CONFIG
    if CONFIG not in names:
        problems.append(f"{CONFIG} is missing (the model's configuration, written by save_pretrained)")
    else:
        try:
            parsed = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{CONFIG} is not readable JSON ({exc})")
        else:
            if not isinstance(parsed, dict) or not isinstance(parsed.get("model_type"), str):
                problems.append(f"{CONFIG} has no model_type (transformers cannot tell the architecture)")

    weights = [p for p in files if len(p.parts) == 1 and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        problems.append("no weights: no *.safetensors or *.bin file (model.safetensors, as save_pretrained "
                        "writes them)")
    for p in weights:
        if p.suffix == ".safetensors" and (problem := _safetensors_problem(folder / p)) is not None:
            problems.append(f"{p}: {problem}")
    for index in WEIGHT_INDEXES:
        if index in names:
            try:
                shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{index} is not a readable weight index ({exc})")
                continue
            if missing := sorted(str(s) for s in shards if s not in names):
                problems.append(f"{index} names shards that are missing: {', '.join(missing)}")

    if not names.intersection(TOKENIZER_FILES):
        problems.append(f"no tokenizer: none of {', '.join(TOKENIZER_FILES)} (save the tokenizer into the same "
                        "folder: tokenizer.save_pretrained)")

    if problems:
        raise ModelStoreError(f"{folder} is not a saved model:\n" + "\n".join(f"  - {p}" for p in problems))
    return [p for p in files if p.as_posix() != CONFIG] + [Path(CONFIG)]


def check_replaceable(store: ObjectStore, name: str, replace: bool) -> bool:
    """Whether a model is stored as ``name`` (to be replaced); a refusal when one is and
    ``replace`` is not given."""
    key = model_key(name)
    if not store.exists(f"{key}/{CONFIG}"):
        return False
    if not replace:
        raise ModelStoreError(f"a model is already stored as {STORED_MODEL_SCHEME}{key}: pass --replace to "
                              "overwrite it (experiments naming it will use the new one)")
    return True


def upload_model(
    store: ObjectStore,
    folder: Path,
    name: str,
    *,
    replace: bool = False,
    on_file: Callable[[str, int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Uploaded:
    """Upload ``folder`` under ``models/<name>``, ``config.json`` last. An existing model
    (its config.json) is refused unless ``replace``; files of an unfinished upload are
    not a model and are overwritten. Files under the prefix the folder has not are removed
    before config.json is written, so the stored model is exactly the folder.
    ``on_file(relative_path, size)`` is called before each file is sent, ``on_bytes`` as
    its bytes are read."""
    key = model_key(name)
    files = check_model_folder(folder)
    config_key = f"{key}/{CONFIG}"
    if check_replaceable(store, name, replace):
        # From here on the prefix is no model: a run starting now is refused, not mixed.
        store.delete(config_key)
    before = set(store.list(key))
    wanted = {f"{key}/{p.as_posix()}" for p in files}
    total, stale = 0, []
    for relative in files:
        path = Path(folder) / relative
        if relative.as_posix() == CONFIG:
            stale = sorted(before - wanted)
            for old in stale:
                store.delete(old)
        size = path.stat().st_size
        if on_file is not None:
            on_file(relative.as_posix(), size)
        store.put_file(f"{key}/{relative.as_posix()}", path, on_bytes)
        total += size
    return Uploaded(key=key, files=len(files), size=total, removed=len(stale))


def stored_models(store: ObjectStore) -> list[StoredModel]:
    """Every model under ``models/`` (a prefix holding config.json), and every unfinished
    upload (files, no config.json) under its first segment, by name."""
    sizes = store.sizes(STORED_MODEL_ROOT)
    root = f"{STORED_MODEL_ROOT}/"
    prefixes = sorted((k[: -len(CONFIG)].rstrip("/") for k in sizes if k.endswith(f"/{CONFIG}")),
                      key=len, reverse=True)
    groups: dict[str, list[str]] = {}
    for k in sizes:
        owner = next((p for p in prefixes if k.startswith(f"{p}/")), None)
        if owner is None:  # an unfinished upload: grouped by the name it was given
            owner = root + k[len(root):].split("/", 1)[0]
        groups.setdefault(owner, []).append(k)
    models = []
    for prefix, keys in sorted(groups.items()):
        architecture = None
        if prefix in prefixes:
            try:
                config = json.loads(store.get(f"{prefix}/{CONFIG}"))
                architecture = (config.get("architectures") or [None])[0] or config.get("model_type") or "?"
            except (ValueError, AttributeError):
                architecture = "? (config.json unreadable)"
        models.append(StoredModel(name=prefix[len(root):], size=sum(sizes[k] for k in keys), files=len(keys),
                                  architecture=architecture))
    return models
