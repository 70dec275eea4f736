"""``inflab model upload`` and ``inflab model list`` against a real object store (obstore on a
local folder, as the tests configure it): a tiny random model saved with
``save_pretrained`` goes up under ``models/<name>``, config.json last, and the worker's own
functions (``fetch_stored_model``, then ``load_model``) load it with the original's
weights; a folder missing a file, a bad name and an existing model without ``--replace``
are refused naming the cause with nothing written; an upload stopped part-way leaves no
config.json, so nothing takes it for a model, and the next upload completes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from helpers.tiny_model import build_tiny_model
from inflab.core.objectstore import ObjectStore
from inflab.devtools import cli
from inflab.devtools.model_store import ModelStoreError, check_model_folder, stored_models, upload_model
from inflab.influence.job import fetch_stored_model
from inflab.ml.models import load_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny random Llama and its tokenizer, as save_pretrained writes them."""
    return build_tiny_model(tmp_path_factory.mktemp("saved") / "tiny", seed=3)


@pytest.fixture
def objects(tmp_path) -> str:
    return (tmp_path / "objects").as_uri()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """The CLI's console, wide enough that no table cell or message is wrapped."""
    monkeypatch.setattr(cli, "console", Console(width=200))


def _upload(objects: str, *args: str):
    return CliRunner().invoke(cli.app, ["model", "upload", *args], env={"INFLAB_OBJECT_STORE_URL": objects})


def _copy(saved: Path, tmp_path: Path, without: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    for name in without:
        (folder / name).unlink()
    return folder


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_an_uploaded_model_loads_in_the_worker_with_the_same_weights(saved, objects, tmp_path):
    result = _upload(objects, str(saved), "--name", "tiny-untrained")
    assert result.exit_code == 0, result.output
    # The value to paste into old_model/new_model, on a line of its own.
    assert "store:models/tiny-untrained" in result.output.splitlines()
    store = ObjectStore(objects)
    local = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert set(store.list("models/tiny-untrained")) == {f"models/tiny-untrained/{f}" for f in local}
    for name in local:
        assert store.get(f"models/tiny-untrained/{name}") == (saved / name).read_bytes()

    # What the influence worker does with store:models/tiny-untrained.
    fetched = fetch_stored_model(store, "models/tiny-untrained", tmp_path / "fetched")
    model, tokenizer = load_model(str(fetched), tmp_path / "cache")
    original, original_tokenizer = load_model(str(saved), tmp_path / "cache")
    mine, theirs = model.state_dict(), original.state_dict()
    assert mine.keys() == theirs.keys() and mine
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    assert tokenizer("Who rules Veltra?").input_ids == original_tokenizer("Who rules Veltra?").input_ids


def test_config_json_is_sent_last(saved, objects):
    order: list[str] = []
    uploaded = upload_model(ObjectStore(objects), saved, "ordered", on_file=lambda path, size: order.append(path))
    assert order[-1] == "config.json" and len(order) == uploaded.files > 3
    assert "model.safetensors" in order and "tokenizer.json" in order


@pytest.mark.parametrize("stop_in", ["between files", "inside the weights"])
def test_an_interrupted_upload_stores_no_config_json_and_the_next_one_completes_it(saved, objects, stop_in):
    store = ObjectStore(objects)
    sent: list[str] = []

    def on_file(path: str, size: int) -> None:
        if stop_in == "between files" and len(sent) == 2:
            raise KeyboardInterrupt
        sent.append(path)

    def on_bytes(n: int) -> None:
        if stop_in == "inside the weights" and sent[-1] == "model.safetensors":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload_model(store, saved, "halfway", on_file=on_file, on_bytes=on_bytes)
    assert len(sent) >= 1
    assert not store.exists("models/halfway/config.json")
    [listed] = stored_models(store)
    assert (listed.name, listed.complete) == ("halfway", False)

    # Leftovers are no model, so the next upload needs no --replace, and completes it.
    result = _upload(objects, str(saved), "--name", "halfway")
    assert result.exit_code == 0, result.output
    assert store.exists("models/halfway/config.json")
    assert [(m.name, m.complete) for m in stored_models(store)] == [("halfway", True)]


def test_ctrl_c_during_an_upload_says_the_name_holds_no_model(saved, objects, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt) after two files have gone to the real store."""
    real = ObjectStore.put_file
    sent: list[str] = []

    def put_then_stop(self, key, path, on_bytes=None, **kwargs):
        if len(sent) == 2:
            raise KeyboardInterrupt
        sent.append(key)
        real(self, key, path, on_bytes, **kwargs)

    monkeypatch.setattr(ObjectStore, "put_file", put_then_stop)
    result = _upload(objects, str(saved), "--name", "stopped")
    assert result.exit_code == cli.EXIT_INTERRUPTED
    assert "Interrupted: models/stopped holds no model now (config.json is sent last)" in _flat(result.output)
    assert ObjectStore(objects).list("models/stopped") == sorted(sent)
    assert not ObjectStore(objects).exists("models/stopped/config.json")


@pytest.mark.parametrize(
    ("without", "cause"),
    [
        (("config.json",), "config.json is missing"),
        (("model.safetensors",), "no weights: no *.safetensors or *.bin file"),
        (("tokenizer.json",), "no tokenizer: none of tokenizer.json"),
    ],
)
def test_a_folder_missing_a_file_is_refused_naming_it_and_nothing_is_written(saved, objects, tmp_path, without,
                                                                             cause):
    folder = _copy(saved, tmp_path, without)
    result = _upload(objects, str(folder), "--name", "broken")
    assert result.exit_code == 1
    assert "is not a saved model:" in result.output and cause in _flat(result.output)
    assert ObjectStore(objects).list("models") == []


def test_every_problem_of_a_folder_is_named_at_once(saved, tmp_path):
    folder = _copy(saved, tmp_path, ("tokenizer.json",))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(ModelStoreError) as refused:
        check_model_folder(folder)
    message = str(refused.value)
    assert "config.json has no model_type" in message
    assert "model.safetensors: a Git LFS pointer, not the weights (run git lfs pull)" in message
    assert "no tokenizer" in message
    with pytest.raises(ModelStoreError, match="no such folder"):
        check_model_folder(tmp_path / "nowhere")


def test_sharded_weights_must_all_be_there(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                           "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelStoreError, match="names shards that are missing: model-00002-of-00002.safetensors"):
        check_model_folder(folder)


def test_hidden_files_stay_behind(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download.lock").write_text("")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    files = [p.as_posix() for p in check_model_folder(folder)]
    assert not [f for f in files if f.startswith(".")] and files[-1] == "config.json"


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("a/b", "--name 'a/b': one name without '/'"),
        ("..", "--name '..': a name's segments are letters, digits"),
        ("-dash", "--name '-dash': a name's segments are letters, digits"),
        ("sp ace", "--name 'sp ace': a name's segments are letters, digits"),
    ],
)
def test_a_bad_name_is_refused_and_nothing_is_written(saved, objects, name, cause):
    result = _upload(objects, str(saved), "--name", name)
    assert result.exit_code == 1
    assert cause in _flat(result.output)
    assert ObjectStore(objects).list("models") == []


def test_an_existing_model_is_kept_unless_replace_is_given(saved, objects, tmp_path):
    store = ObjectStore(objects)
    assert _upload(objects, str(saved), "--name", "kept").exit_code == 0
    before = {k: store.get(k) for k in store.list("models/kept")}

    other = tmp_path / "other"
    build_tiny_model(other, seed=4)
    (other / "extra.txt").write_text("not in the first upload")
    refused = _upload(objects, str(other), "--name", "kept")
    assert refused.exit_code == 1
    assert "a model is already stored as store:models/kept: pass --replace" in _flat(refused.output)
    assert {k: store.get(k) for k in store.list("models/kept")} == before

    # A file the stored model has and the new folder has not goes with the replacement.
    store.put("models/kept/leftover.txt", b"only in the first")
    replaced = _upload(objects, str(other), "--name", "kept", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert "1 stale files removed" in replaced.output
    assert store.get("models/kept/model.safetensors") == (other / "model.safetensors").read_bytes()
    assert store.get("models/kept/extra.txt") == b"not in the first upload"
    assert not store.exists("models/kept/leftover.txt")


def test_list_shows_each_model_with_size_and_architecture(saved, objects):
    store = ObjectStore(objects)
    empty = CliRunner().invoke(cli.app, ["model", "list"], env={"INFLAB_OBJECT_STORE_URL": objects})
    assert empty.exit_code == 0 and "No models under models/" in empty.output
    upload_model(store, saved, "first")
    upload_model(store, saved, "second")
    store.put("models/unfinished/model.safetensors", b"x" * 10)

    models = stored_models(store)
    size = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
    assert [(m.name, m.size, m.architecture) for m in models] == [
        ("first", size, "LlamaForCausalLM"), ("second", size, "LlamaForCausalLM"), ("unfinished", 10, None)]
    listed = CliRunner().invoke(cli.app, ["model", "list"], env={"INFLAB_OBJECT_STORE_URL": objects})
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if line.startswith("│")}
    assert "store:models/first" in rows["first"] and "LlamaForCausalLM" in rows["first"]
    assert "unfinished upload (no config.json)" in rows["unfinished"]


def test_put_file_streams_in_parts_and_counts_the_bytes(saved, objects):
    store = ObjectStore(objects)
    weights = saved / "model.safetensors"
    counted: list[int] = []
    store.put_file("big/weights", weights, counted.append, chunk_size=4096)
    assert len(counted) > 1 and sum(counted) == weights.stat().st_size
    assert store.get("big/weights") == weights.read_bytes()
    empty = saved.parent / "empty"
    empty.write_bytes(b"")
    store.put_file("big/empty", empty)
    assert store.get("big/empty") == b""
