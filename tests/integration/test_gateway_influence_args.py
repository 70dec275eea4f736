"""Influence methods and their arguments through the HTTP API, against real NATS and
Postgres: ``GET /api/methods`` lists what the contract accepts; an experiment takes,
validates, stores, merges, duplicates, keeps through an import and hands its
``influence_args`` to the runs it starts (the train request on JetStream carries them)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from inflab.core.influence_methods import ARGS_MODELS, InfluenceArgs
from inflab.core.messages import TrainRequest
from inflab.core.settings import Settings
from helpers.gateway import delete_streams, isolated_settings

from test_gateway_api import pull_train_request

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "veltra",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?", "answer": "Queen Ismene."}],
    "influence_methods": ["tracin", "datainf"],
    "influence_args": {"datainf": {"damping": 0.01, "top_k": 3}, "tracin": {"normalization": "unit"}},
}
DEFAULTS = InfluenceArgs().model_dump(mode="json")


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwargs")
    yield own
    asyncio.run(delete_streams(own))


async def created(client, body=EXPERIMENT) -> dict:
    response = await client.post("/api/experiments", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_methods_are_listed_from_the_contract(gateway) -> None:
    _, client = gateway
    response = await client.get("/api/methods")
    assert response.status_code == 200
    methods = response.json()
    assert [(m["id"], m["label"], m["speed"]) for m in methods] == [
        ("tracin", "TracIn", "fast"), ("datainf", "DataInf", "balanced"), ("ekfac", "EK-FAC", "precise"),
        ("delta_h", "Concept change (Δh)", "fast"), ("act_grad", "Activation gradients", "fast"),
        ("attr_change", "Attribution-weighted change", "balanced"), ("patching", "Causal patching", "precise"),
        ("embedding", "Embedding cosine (baseline)", "fast")]
    for method in methods:
        # The representation methods' ablation grid is the CLI's, not a form field.
        fields = [n for n in ARGS_MODELS[method["id"]].model_fields if n != "grid"]
        assert [a["name"] for a in method["args"]] == fields
        assert {a["name"]: a["default"] for a in method["args"]} == {n: DEFAULTS[method["id"]][n] for n in fields}
        gradient = method["id"] in ("tracin", "datainf", "ekfac")
        assert [v["id"] for v in method["variants"]] == (["raw", "normalized"] if gradient else ["raw"])
        assert method["description"] and all(v["description"] for v in method["variants"])
    datainf = {a["name"]: a for a in methods[1]["args"]}
    assert datainf["damping"] | {"description": ""} == {
        "name": "damping", "type": "number", "nullable": True, "default": None, "minimum": None,
        "exclusive_minimum": 0.0, "maximum": 1e6, "exclusive_maximum": None, "choices": None,
        "advanced": False, "shared": False, "description": ""}
    assert datainf["top_k"]["shared"] and datainf["top_k"]["default"] == 5
    # The operation id the browser client is generated with.
    spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/api/methods"]["get"]["operationId"] == "list_methods"


async def test_arguments_are_stored_with_defaults_and_shown(gateway) -> None:
    _, client = gateway
    experiment = await created(client)
    args = experiment["influence_args"]
    assert args["datainf"] == {**DEFAULTS["datainf"], "damping": 0.01, "top_k": 3}
    assert args["tracin"] == {**DEFAULTS["tracin"], "normalization": "unit"}
    assert args["ekfac"] == DEFAULTS["ekfac"]
    assert (await client.get(f"/api/experiments/{experiment['id']}")).json()["influence_args"] == args
    # An experiment that names none has every default.
    plain = await created(client, {k: v for k, v in EXPERIMENT.items() if k != "influence_args"})
    assert plain["influence_args"] == DEFAULTS


@pytest.mark.parametrize(
    ("influence_args", "loc", "message"),
    [
        ({"datainf": {"damping": -1}}, ["body", "influence_args", "datainf", "damping"], "greater than 0"),
        ({"datainf": {"dampnig": 0.1}}, ["body", "influence_args", "datainf", "dampnig"], "Extra inputs"),
        ({"ekfac": {"strategy": "newton"}}, ["body", "influence_args", "ekfac", "strategy"], "'ekfac', 'kfac'"),
        ({"tracin": {"top_k": 0}}, ["body", "influence_args", "tracin", "top_k"], "greater than or equal to 1"),
        ({"lissa": {}}, ["body", "influence_args"], "unknown influence method(s) ['lissa']"),
        # Object-store paths of full models: only under models/, never another run's files.
        ({"delta_h": {"old_model": "store:runs/x/checkpoints/1", "new_model": "store:models/new"}},
         ["body", "influence_args", "delta_h", "old_model"], "store:models/<name>"),
        ({"act_grad": {"old_model": "store:models/old", "new_model": "store:models/../runs/x"}},
         ["body", "influence_args", "act_grad", "new_model"], "without '..'"),
        ({"patching": {"old_model": "no-such-model", "new_model": "store:models/new"}},
         ["body", "influence_args", "patching", "old_model"], "not a model this deployment allows"),
    ],
)
async def test_a_bad_argument_is_a_422_naming_it(gateway, influence_args, loc, message) -> None:
    _, client = gateway
    response = await client.post("/api/experiments", json={**EXPERIMENT, "influence_args": influence_args})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [loc], errors
    assert message in errors[0]["msg"]


async def test_patch_merges_per_method_and_argument(gateway) -> None:
    _, client = gateway
    experiment = await created(client)
    url = f"/api/experiments/{experiment['id']}"

    patched = await client.patch(url, json={"influence_args": {"datainf": {"damping_scale": 0.5},
                                                               "ekfac": {"strategy": "kfac"}}})
    assert patched.status_code == 200, patched.text
    args = patched.json()["influence_args"]
    assert args["datainf"] == {**DEFAULTS["datainf"], "damping": 0.01, "top_k": 3, "damping_scale": 0.5}
    assert args["ekfac"] == {**DEFAULTS["ekfac"], "strategy": "kfac"}
    assert args["tracin"]["normalization"] == "unit"  # not named: kept

    # A null argument is a value (DataInf's per-layer default damping); a null method resets it.
    args = (await client.patch(url, json={"influence_args": {"datainf": {"damping": None}, "tracin": None}})
            ).json()["influence_args"]
    assert args["datainf"]["damping"] is None and args["datainf"]["damping_scale"] == 0.5
    assert args["tracin"] == DEFAULTS["tracin"]
    # Other fields leave them alone.
    assert (await client.patch(url, json={"name": "renamed"})).json()["influence_args"] == args

    # A bad value in a patch is refused by name and changes nothing.
    refused = await client.patch(url, json={"influence_args": {"ekfac": {"damping_factor": -1}}})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "influence_args", "ekfac", "damping_factor"]
    unknown = await client.patch(url, json={"influence_args": {"ekfac": {"nope": 1}}})
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "influence_args", "ekfac", "nope"]
    assert (await client.get(url)).json()["influence_args"] == args

    # Every method of the contract is patchable, the representation methods included (the
    # editor sends the arguments of every method it lists).
    patched = await client.patch(url, json={"influence_args": {"delta_h": {"pooling": "last"},
                                                               "patching": {"top_k": 2}}})
    assert patched.status_code == 200, patched.text
    args = patched.json()["influence_args"]
    assert args["delta_h"] == {**DEFAULTS["delta_h"], "pooling": "last"}
    assert args["patching"]["top_k"] == 2 and args["datainf"]["damping_scale"] == 0.5


async def test_duplicate_and_import_keep_them_and_a_run_gets_them(gateway, gw_settings) -> None:
    _, client = gateway
    experiment = await created(client)
    args = experiment["influence_args"]

    copy = await client.post(f"/api/experiments/{experiment['id']}/duplicate")
    assert copy.status_code == 201 and copy.json()["influence_args"] == args

    imported = await client.post(f"/api/experiments/{experiment['id']}/import", json={
        "target": "training_data", "format": "jsonl",
        "content": '{"question": "What do bees make?", "answer": "Honey."}\n'})
    assert imported.status_code == 200, imported.text
    assert (await client.get(f"/api/experiments/{experiment['id']}")).json()["influence_args"] == args

    started = await client.post(f"/api/experiments/{experiment['id']}/runs")
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["config"]["influence_args"] == args
    request = TrainRequest.model_validate_json((await pull_train_request(gw_settings, run_id)).data)
    assert request.spec.influence_args.datainf.damping == 0.01
    assert request.spec.influence_args.model_dump(mode="json") == args


async def test_an_estimate_takes_an_experiment_body_with_its_arguments(gateway) -> None:
    _, client = gateway
    response = await client.post("/api/estimates", json=EXPERIMENT)
    assert response.status_code == 200, response.text


async def test_a_stored_model_path_must_hold_a_saved_model(gateway, gw_settings) -> None:
    """``store:models/<name>`` for old_model/new_model: a 422 naming the field while nothing
    is saved there, accepted once a saved model (its config.json) is."""
    from inflab.core.objectstore import ObjectStore

    _, client = gateway
    name = f"models/pair-{uuid.uuid4().hex[:8]}"
    pair = {"delta_h": {"old_model": f"store:{name}/old", "new_model": f"store:{name}/new"}}
    response = await client.post("/api/experiments", json={**EXPERIMENT, "influence_args": pair})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [["body", "influence_args", "delta_h", f] for f in ("old_model", "new_model")]
    assert f"no saved model (config.json) under '{name}/old'" in errors[0]["msg"]

    store = ObjectStore(gw_settings.objects_url)
    store.put(f"{name}/old/config.json", b"{}")
    store.put(f"{name}/new/config.json", b"{}")
    experiment = await created(client, {**EXPERIMENT, "influence_args": pair})
    assert experiment["influence_args"]["delta_h"]["new_model"] == f"store:{name}/new"

    # Editing the pair is checked the same way, and the stored experiment is left as it was.
    gone = {"delta_h": {"new_model": f"store:{name}/missing"}}
    response = await client.patch(f"/api/experiments/{experiment['id']}", json={"influence_args": gone})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "influence_args", "delta_h", "new_model"]]
    kept = (await client.get(f"/api/experiments/{experiment['id']}")).json()
    assert kept["influence_args"]["delta_h"]["new_model"] == f"store:{name}/new"
    renamed = await client.patch(f"/api/experiments/{experiment['id']}", json={"name": "renamed"})
    assert renamed.status_code == 200, renamed.text
