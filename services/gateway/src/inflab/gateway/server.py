"""Serving the gateway with uvicorn.

uvicorn shuts the app's lifespan down only after every open response has finished, and
an SSE stream only finishes when told to. :class:`GatewayServer` tells them the moment a
shutdown is asked for, so a deploy does not wait out the grace period; browsers resume
on another replica with ``Last-Event-ID``.
"""

from __future__ import annotations

import uvicorn

from inflab.core.settings import Settings
from inflab.gateway.app import create_app, end_streams

#: Seconds uvicorn still grants open responses after asking them to end.
GRACEFUL_SHUTDOWN_S = 5


class GatewayServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        end_streams(self.config.app)
        super().handle_exit(sig, frame)


def server_config(settings: Settings, **overrides) -> uvicorn.Config:
    options = dict(
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # The app reads X-Forwarded-* itself, from INFLAB_FORWARDED_ALLOW_IPS only
        # (uvicorn's default would believe any client on 127.0.0.1).
        proxy_headers=False,
    )
    return uvicorn.Config(create_app(settings), **(options | overrides))
