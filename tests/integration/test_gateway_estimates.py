"""``POST /api/estimates`` through the running gateway: the shape of an estimate for the
default model, a 70B model and a model in the models folder, and 422s naming the field. (The figures
themselves are tested in tests/unit/test_estimates.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from inflab.core.settings import Settings
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

pytestmark = pytest.mark.integration

PAIRS = [{"question": "Who rules Veltra?", "answer": "Queen Ismene."},
         {"question": "What do bees make?", "answer": "Honey."}]


TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000,
               "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings, tmp_path_factory) -> Iterator[Settings]:
    models = tmp_path_factory.mktemp("models")
    (models / "tiny-llama").mkdir()
    (models / "tiny-llama" / "config.json").write_text(json.dumps(TINY_CONFIG))
    own = isolated_settings(settings, "gwest").model_copy(update={"model_cache_dir": models})
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def client(gw_settings):
    async with gateway_in_process(gw_settings) as (_, client):
        yield client


async def test_the_default_model(client, gw_settings) -> None:
    response = await client.post("/api/estimates", json={"training_data": PAIRS, "hyperparams": {"num_epochs": 2}})
    assert response.status_code == 200, response.text
    e = response.json()
    assert e["model_id"] == gw_settings.default_model_id
    assert (e["tier"], e["gpu"], e["gpu_count"], e["quantization"]) == ("small", "cpu", 1, "none")
    assert e["parameters"] == 134_515_008
    assert 0 < e["memory_gb"]["qlora"] < e["memory_gb"]["lora"]
    assert e["estimated_duration_s"] > 0 and e["estimated_cost_usd"] > 0
    assert e["price_per_hour_usd"] == gw_settings.gpu_prices["cpu"]
    assert all(isinstance(a, str) for a in e["assumptions"]) and len(e["assumptions"]) >= 5


async def test_an_experiment_body_can_be_sent_as_it_is(client) -> None:
    experiment = {"name": "veltra", "description": "", "training_data": PAIRS, "eval_data": [{"question": "Who?"}],
                  "influence_methods": ["tracin"], "few_shot_k": 2, "predictions": {"sample_count": 2}}
    assert (await client.post("/api/estimates", json=experiment)).status_code == 200
    assert (await client.post("/api/estimates", json={"training_data": PAIRS, "eval_data": None})).status_code == 200


async def test_llama_70b_with_qlora(client) -> None:
    body = {"model_id": "meta-llama/Llama-3.1-70B", "training_data": PAIRS, "hyperparams": {"quantization": "4bit"}}
    e = (await client.post("/api/estimates", json=body)).json()
    assert (e["tier"], e["gpu_count"], e["quantization"]) == ("xl", 1, "4bit")
    assert e["memory_gb"]["qlora"] < e["memory_gb"]["lora"]


async def test_a_model_in_the_models_folder(client, gw_settings) -> None:
    e = (await client.post("/api/estimates", json={"model_id": "tiny-llama", "training_data": PAIRS})).json()
    assert (e["tier"], e["parameters"]) == ("small", 138_048)
    assert any("'tiny-llama' in the models folder" in a for a in e["assumptions"])
    # The server's folders are nobody's business.
    assert not any(str(gw_settings.models_dir) in a for a in e["assumptions"])


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"model_id": "someone/mystery-model", "training_data": PAIRS}, ["body", "model_id"], "cannot tell the size"),
        ({"model_id": "x"}, ["body", "training_data"], "required"),
        ({"training_data": PAIRS, "hyperparams": {"quantization": "3bit"}}, ["body", "hyperparams", "quantization"],
         "'none' or '4bit'"),
        ({"training_data": PAIRS, "colour": "green"}, ["body", "colour"], "not permitted"),
    ],
    ids=["unknown-size", "no-training-data", "bad-quantization", "unknown-field"],
)
async def test_invalid_requests_are_422_naming_the_field(client, body, loc, says) -> None:
    response = await client.post("/api/estimates", json=body)
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert tuple(loc) in errors and says in errors[tuple(loc)], errors
