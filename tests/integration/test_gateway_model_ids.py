"""Model ids through the running gateway: a refused ``model_id`` is a 422 naming the
field, with the same body whether or not a path like it exists on the server, on
``POST /api/estimates`` and on experiment create and update alike; a model the operator
placed in the models folder is named by its folder name; the allow-list narrows hub ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from inflab.core.settings import Settings
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "models",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}
CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
          "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    (models / "team-llama").mkdir()
    (models / "team-llama" / "config.json").write_text(json.dumps(CONFIG))
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "config.json").write_text(json.dumps(CONFIG))
    return models, elsewhere


@pytest.fixture(scope="module")
def gw_settings(settings: Settings, folders) -> Iterator[Settings]:
    models, _ = folders
    own = isolated_settings(settings, "gwmodels").model_copy(
        update={"model_cache_dir": models, "model_allow_list": ["meta-llama/*", "Qwen/*"]})
    yield own
    asyncio.run(delete_streams(own))


def refused_ids(folders) -> dict[str, str]:
    """Ids that must all be refused alike, and whether what they name exists."""
    models, elsewhere = folders
    return {
        "an existing folder with a model": str(elsewhere),
        "the same, missing": str(elsewhere) + "-missing",
        "a model in the models folder, by path": str(models / "team-llama"),
        "up and back into the models folder": f"../{models.name}/team-llama",
        "a relative path that does not exist": "../nowhere/at-all",
        "an existing system folder": "/etc",
        "a missing system folder": "/etc-not-there",
        "a home folder": "~",
        "a folder name that is not there": "not-a-model",
        "a hub id off the allow-list": "someone/model",
    }


async def test_refused_ids_get_one_answer_everywhere(gw_settings, folders) -> None:
    async with gateway_in_process(gw_settings) as (_, client):
        experiment = (await client.post("/api/experiments", json=EXPERIMENT)).json()
        answers: dict[tuple[str, str], tuple[int, dict]] = {}
        for what, model_id in refused_ids(folders).items():
            for where, response in (
                ("estimate", await client.post("/api/estimates", json={**EXPERIMENT, "model_id": model_id})),
                ("create", await client.post("/api/experiments", json={**EXPERIMENT, "model_id": model_id})),
                ("update", await client.patch(f"/api/experiments/{experiment['id']}", json={"model_id": model_id})),
            ):
                answers[(where, what)] = (response.status_code, response.json())
        bodies = {json.dumps(body, sort_keys=True) for _, body in answers.values()}
        assert {status for status, _ in answers.values()} == {422}
        assert len(bodies) == 1, bodies
        [error] = json.loads(bodies.pop())["detail"]
        assert error["loc"] == ["body", "model_id"] and "INFLAB_MODEL_ALLOW_LIST" in error["msg"]
        # Nothing was saved.
        assert (await client.get(f"/api/experiments/{experiment['id']}")).json()["model_id"] == \
            gw_settings.default_model_id
        assert len((await client.get("/api/experiments")).json()) == 1


async def test_allowed_ids(gw_settings) -> None:
    async with gateway_in_process(gw_settings) as (_, client):
        for model_id in ("team-llama", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B", gw_settings.default_model_id):
            created = await client.post("/api/experiments", json={**EXPERIMENT, "model_id": model_id})
            assert created.status_code == 201, created.text
            assert created.json()["model_id"] == model_id
            estimate = await client.post("/api/estimates", json={**EXPERIMENT, "model_id": model_id})
            assert estimate.status_code == 200, estimate.text
        assert estimate.json()["parameters"] > 0
