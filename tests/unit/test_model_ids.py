"""Which model ids a run may name (inflab.core.model_ids): the default model, hub ids on
the allow-list, and models the operator placed in the models folder, found by listing it.
A refused id gets one message whatever exists on the machine, and no user string is ever
used as a path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inflab.core import model_ids
from inflab.core.model_ids import ModelIdRefused, check_model_id, local_model_names
from inflab.core.settings import DEFAULT_MODEL_ID, Settings


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    (folder / "my-model").mkdir(parents=True)
    (folder / "my-model" / "config.json").write_text("{}")
    (folder / "no-config").mkdir()
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "config.json").write_text("{}")
    (folder / "a-file").write_text("{}")
    # A model outside the folder, and a link to it from inside: the link must not count.
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    (folder / "linked").symlink_to(tmp_path / "outside")
    return folder


@pytest.fixture
def settings(models: Path) -> Settings:
    return Settings(_env_file=None, model_cache_dir=models)


def test_the_default_model_and_allowed_hub_ids(settings) -> None:
    for model_id in (DEFAULT_MODEL_ID, "smollm2-135m-instruct", "HuggingFaceTB/smollm2-135M-instruct"):
        assert check_model_id(model_id, settings).kind == "default"
    for model_id in ("meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B-Instruct", "a/b", "org_1/model.v2"):
        assert check_model_id(model_id, settings).kind == "hub"


def test_the_allow_list_narrows_hub_ids(settings) -> None:
    narrow = settings.model_copy(update={"model_allow_list": ["meta-llama/*", "Qwen/Qwen2.5-*"]})
    assert check_model_id("meta-llama/Llama-3.1-8B", narrow).kind == "hub"
    assert check_model_id("Qwen/Qwen2.5-7B", narrow).kind == "hub"
    for refused in ("Qwen/Qwen3-8B", "someone/model"):
        with pytest.raises(ModelIdRefused):
            check_model_id(refused, narrow)
    none = settings.model_copy(update={"model_allow_list": []})
    with pytest.raises(ModelIdRefused):
        check_model_id("meta-llama/Llama-3.1-8B", none)
    assert check_model_id(DEFAULT_MODEL_ID, none).kind == "default"
    assert check_model_id("my-model", none).kind == "local"


def test_models_in_the_models_folder_by_name(settings, models) -> None:
    allowed = check_model_id("my-model", settings)
    assert allowed.kind == "local" and allowed.folder == models / "my-model"
    assert local_model_names(models) == ["my-model"]


@pytest.mark.parametrize("model_id", [
    "no-config", ".hidden", "a-file", "linked", "missing", "/etc", "/etc/passwd", "../models/my-model",
    "./my-model", "my-model/", "my-model/..", "~", "~/my-model", "a/b/c", "a/../b", "a/.b", "..", ".", "",
    "org/name/", "/org/name", "org//name", "C:\\models\\x", "my-model\x00", " my-model", "x" * 600,
])
def test_anything_else_is_refused_with_one_message(settings, models, model_id) -> None:
    with pytest.raises(ModelIdRefused) as refused:
        check_model_id(model_id, settings)
    assert str(refused.value) == model_ids.refusal(settings)
    # An absolute path to a real model folder is refused the same way as a missing one.
    with pytest.raises(ModelIdRefused) as real:
        check_model_id(str(models / "my-model"), settings)
    assert str(real.value) == str(refused.value)


def test_no_user_string_is_used_as_a_path(settings, models, monkeypatch) -> None:
    """The only file-system reads are the listing of the models folder and the entry the
    listing returned; a path-shaped id reads nothing at all."""
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path):
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(model_ids.os, "scandir", scandir)
    for model_id in ("/etc", "../models/my-model", str(models / "my-model"), "a/../b", "~/x"):
        with pytest.raises(ModelIdRefused):
            check_model_id(model_id, settings)
    assert listed == []
    check_model_id("my-model", settings)
    with pytest.raises(ModelIdRefused):
        check_model_id("missing", settings)
    assert listed == [os.fspath(models)] * 2
