"""Which ``model_id`` a run may name: the one check the gateway and every worker apply.

A model id is accepted when it is

* the default model (any of its aliases);
* a hub id, ``organisation/name`` in the hub's own alphabet, that matches one of the
  operator's patterns in ``INFLAB_MODEL_ALLOW_LIST`` (default ``*/*``: any hub id);
* the name of a folder the operator placed in the models folder (``INFLAB_MODEL_CACHE_DIR``,
  by default ``<INFLAB_HOME>/models``) holding a ``config.json``.

Anything else is refused with one message, whatever the id is. No user string reaches the
file system as a path: an id is first held against the shapes above by pattern alone (no
slash but the hub's one, no ``..``, nothing absolute), and a folder name is looked up by
listing the models folder and comparing names, so the folder used is an entry of that
listing. Only real folders count (a symlink could lead out of the models folder), and
hidden entries (the conversion's locks and temporary folders) never match. The answer for
a refused id therefore says nothing about what exists on the machine.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inflab.core.settings import DEFAULT_MODEL_ID, Settings

#: Ids accepted for the default model, compared case-insensitively.
DEFAULT_MODEL_ALIASES = (DEFAULT_MODEL_ID.lower(), "smollm2-135m-instruct")

# The hub's rules for an organisation or repository name: letters, digits, '_', '.', '-',
# starting and ending with a letter or digit, at most 96 characters.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
# A folder name in the models folder: no separator, not hidden, never '.' or '..'.
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


class ModelIdRefused(ValueError):
    """The id is none of the models this deployment allows."""


@dataclass(frozen=True)
class AllowedModel:
    model_id: str
    kind: Literal["default", "hub", "local"]
    #: The model's folder, for a model in the models folder.
    folder: Path | None = None


def is_default_model(model_id: str) -> bool:
    return model_id.strip().lower() in DEFAULT_MODEL_ALIASES


def is_hub_id(model_id: str) -> bool:
    return _HUB_ID.fullmatch(model_id) is not None and ".." not in model_id


def local_model_folder(name: str, models_dir: Path) -> Path | None:
    """The folder called ``name`` in ``models_dir`` holding a ``config.json``, or None.

    ``name`` is only compared with the names the listing returns; the path returned is
    built from the listing's entry, never from ``name``."""
    if _FOLDER_NAME.fullmatch(name) is None or ".." in name:
        return None
    try:
        with os.scandir(models_dir) as entries:
            for entry in entries:
                if entry.name != name:
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    return None
                config = os.path.join(entry.path, "config.json")
                return Path(entry.path) if os.path.isfile(config) and not os.path.islink(config) else None
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return None


def local_model_names(models_dir: Path) -> list[str]:
    """The models the operator placed in the models folder, by name."""
    try:
        with os.scandir(models_dir) as entries:
            names = [entry.name for entry in entries if _FOLDER_NAME.fullmatch(entry.name)]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return sorted(name for name in names if local_model_folder(name, models_dir) is not None)


def refusal(settings: Settings) -> str:
    patterns = ", ".join(settings.model_allow_list) or "none"
    return (
        f"not a model this deployment allows: use the default model ({settings.default_model_id}), "
        f"a hub id 'organisation/name' matching INFLAB_MODEL_ALLOW_LIST ({patterns}), "
        "or the name of a model in the operator's models folder"
    )


def check_model_id(model_id: str, settings: Settings) -> AllowedModel:
    """The model ``model_id`` names, or :class:`ModelIdRefused` (the same message for every
    refused id)."""
    if is_default_model(model_id) or model_id == settings.default_model_id:
        return AllowedModel(model_id, "default")
    if is_hub_id(model_id):
        if any(fnmatch.fnmatchcase(model_id, pattern) for pattern in settings.model_allow_list):
            return AllowedModel(model_id, "hub")
        raise ModelIdRefused(refusal(settings))
    folder = local_model_folder(model_id, settings.models_dir)
    if folder is not None:
        return AllowedModel(model_id, "local", folder)
    raise ModelIdRefused(refusal(settings))
