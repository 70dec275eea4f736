"""The gateway as its own OS process (``python -m inflab.gateway``), as ``inflab up`` and a
deployment run it: for tests that kill it, or run several replicas side by side."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from pydantic import SecretStr

from inflab.devtools.embedded._proc import free_port
from inflab.core.settings import Settings


def settings_environment(settings: Settings) -> dict[str, str]:
    """``INFLAB_*`` variables that make a new process read ``settings`` (secrets included;
    unset values left out)."""
    environment = {}
    dumped = settings.model_dump(mode="json")
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(dumped[name])
        elif isinstance(value, bool):
            value = "true" if value else "false"
        environment[f"INFLAB_{name.upper()}"] = str(value)
    return environment


class GatewayProcess:
    """``python -m inflab.gateway`` with the settings given, on a port of its own; ``env``
    adds or overrides ``INFLAB_*`` variables."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            **{key: value for key, value in os.environ.items() if not key.startswith("INFLAB_")},
            **settings_environment(settings),
            "INFLAB_GATEWAY_HOST": "127.0.0.1",
            "INFLAB_GATEWAY_PORT": str(self.port),
            **env,
        }
        self.process = subprocess.Popen([sys.executable, "-m", "inflab.gateway"], env=environment,
                                        stdout=log.open("ab"), stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client, asyncio.timeout(timeout):
            while True:
                assert self.process.poll() is None, "the gateway exited during startup"
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    async def killed(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            while self.process.poll() is None:
                await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
