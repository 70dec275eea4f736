"""What the embedded stack's children are given: their command lines, settings and environment.

The services are ``python -m inflab.<name>`` each (:func:`default_services`; a test passes
stand-ins). The gateway is probed over HTTP (``/readyz`` for readiness, ``/healthz`` for
``inflab ps``); each worker serves its Prometheus metrics on a loopback port of its own
(``INFLAB_METRICS_HOST`` / ``INFLAB_METRICS_PORT``, set by the supervisor).

The embedded stack serves one person, over plain http on their own machine, so it changes
a few defaults (:func:`embedded_settings`; a setting given explicitly wins): no email
verification before signing in (a newcomer registers and starts at once; mails, written
to ``INFLAB_HOME/mail``, still carry the verification link), a session cookie without
``Secure`` (it would never come back over http), and mail links pointing at its gateway.

Settings reach the children through the environment, the one channel every process already
reads (pydantic-settings). The whole resolved :class:`Settings` object is exported as
``INFLAB_*`` variables (:func:`settings_environment`), so a setting given in code (not the
environment) is seen by the children too, and the URLs of what the stack started replace
the empty ones. The supervisor lays each service's own NATS credential and job key on top;
Ray, whose workers run user-chosen models and data, gets neither. Services also get
:data:`SERVICE_ENV` (``OMP_NUM_THREADS=1``: heavy torch work runs in Ray tasks, which pin
their own threads, and several processes each using every core slow one another down many
times over: docs/measurements.md). Every child gets :data:`COMMON_ENV`. With the embedded
Ray, every child (and the Ray node itself, whose workers inherit its environment) also
gets ``RAY_ADDRESS`` and the node's own auth token (see ``ray.py``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretBytes, SecretStr

from inflab.core.settings import Settings
from inflab.devtools.embedded._proc import LOCALHOST

SERVICE_NAMES = ("gateway", "trainer", "inference", "influence")
#: The database the embedded PostgreSQL serves the services.
DATABASE_NAME = "inflab"
READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
#: Workers serve their metrics on loopback: the embedded stack is one person's machine.
METRICS_HOST = LOCALHOST
#: Environment every service gets, whatever the settings (see the module docstring).
SERVICE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Environment every child gets. Passive OpenMP waits: idle torch threads sleep instead of
#: spinning, so the stages that share the cores (and anything else on a laptop) do not
#: starve each other (docs/measurements.md).
COMMON_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
#: The defaults the embedded stack changes (see the module docstring).
EMBEDDED_DEFAULTS: dict[str, Any] = {"require_email_verification": False, "cookie_secure": False}


@dataclass(frozen=True)
class ServiceSpec:
    """A service process: its command, and (for HTTP services) where to probe it."""

    name: str
    argv: tuple[str, ...]
    url: str | None = None  # public base URL, shown by ``inflab ps``
    ready_path: str | None = None  # GET url+ready_path must answer 200 for wait_ready
    health_path: str | None = None  # GET url+health_path: liveness, for ``inflab ps``
    metrics: bool = False  # serves Prometheus metrics on INFLAB_METRICS_PORT (the workers)

    @property
    def ready_url(self) -> str | None:
        return self.url + self.ready_path if self.url and self.ready_path else None

    @property
    def health_url(self) -> str | None:
        return self.url + self.health_path if self.url and self.health_path else None


def gateway_url(settings: Settings) -> str:
    """Where to reach the gateway from this machine (a wildcard bind is reached on loopback)."""
    host = settings.gateway_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.gateway_port}"


def default_services(settings: Settings, python: str = sys.executable) -> list[ServiceSpec]:
    """The four real services, each ``python -m inflab.<name>``."""
    specs = []
    for name in SERVICE_NAMES:
        http = name == "gateway"
        specs.append(
            ServiceSpec(
                name=name,
                argv=(python, "-m", f"inflab.{name}"),
                url=gateway_url(settings) if http else None,
                ready_path=READY_PATH if http else None,
                health_path=HEALTH_PATH if http else None,
                metrics=not http,
            )
        )
    return specs


def embedded_settings(settings: Settings) -> Settings:
    """``settings`` with the embedded stack's defaults, where not set explicitly."""
    changes = {k: v for k, v in EMBEDDED_DEFAULTS.items() if k not in settings.model_fields_set}
    if "public_url" not in settings.model_fields_set:
        changes["public_url"] = gateway_url(settings)
    return settings.model_copy(update=changes)


def settings_environment(settings: Settings) -> dict[str, str | None]:
    """Every setting as its ``INFLAB_*`` variable; ``None`` means "unset it". Structured
    values (dicts, lists, nested models) go as JSON, which pydantic-settings reads back."""
    prefix = settings.model_config.get("env_prefix", "")
    plain = settings.model_dump(mode="json")
    env: dict[str, str | None] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr | SecretBytes):
            text: str | None = value.get_secret_value()
        elif value is None:
            text = None
        elif isinstance(value, bytes):
            text = value.decode()
        elif isinstance(plain[name], dict | list):
            text = json.dumps(plain[name])
        else:
            text = str(plain[name])
        env[f"{prefix}{name}".upper()] = text
    return env


def child_environment(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the settings (and ``extra``) laid over it."""
    env = dict(os.environ)
    for key, value in settings_environment(settings).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.update(COMMON_ENV)
    if settings.ray_address:
        env["RAY_ADDRESS"] = settings.ray_address
    env.update(extra or {})
    return env
