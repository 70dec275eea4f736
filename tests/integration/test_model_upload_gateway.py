"""A model uploaded with ``inflab model upload`` is one the gateway accepts by its
``store:models/<name>`` path in ``old_model``/``new_model`` (real NATS, Postgres and the
object store the gateway is configured with); an upload stopped before config.json is
not, the 422 naming the field."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.gateway import delete_streams, isolated_settings
from helpers.tiny_model import build_tiny_model
from inflab.core.objectstore import ObjectStore
from inflab.core.settings import Settings
from inflab.devtools import cli
from inflab.devtools.model_store import upload_model

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "two checkpoints",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?", "answer": "Queen Ismene."}],
    "influence_methods": ["delta_h"],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "upload")
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("upload") / "tiny", seed=1)


def _pair(old: str, new: str) -> dict:
    return {**EXPERIMENT, "influence_args": {"delta_h": {"old_model": old, "new_model": new}}}


async def test_the_gateway_accepts_an_uploaded_model_and_refuses_an_unfinished_one(gateway, gw_settings, saved):
    _, client = gateway
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(CliRunner().invoke, cli.app, ["model", "upload", str(saved), "--name", name],
                                     env={"INFLAB_OBJECT_STORE_URL": gw_settings.objects_url})
    assert result.exit_code == 0, result.output
    value = f"store:models/{name}"
    assert value in result.output.splitlines()

    response = await client.post("/api/experiments", json=_pair(value, value))
    assert response.status_code == 201, response.text
    assert response.json()["influence_args"]["delta_h"]["old_model"] == value

    # Stopped after two files: everything but config.json may be there, and it is no model.
    sent: list[str] = []

    def stop_after_two(path: str, size: int) -> None:
        if len(sent) == 2:
            raise KeyboardInterrupt
        sent.append(path)

    halfway = f"half-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(gw_settings.objects_url)
    with pytest.raises(KeyboardInterrupt):
        await asyncio.to_thread(upload_model, store, saved, halfway, on_file=stop_after_two)
    assert len(store.list(f"models/{halfway}")) == 2
    response = await client.post("/api/experiments", json=_pair(value, f"store:models/{halfway}"))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "influence_args", "delta_h", "new_model"]
    assert f"no saved model (config.json) under 'models/{halfway}'" in error["msg"]
