"""``python -m inflab.gateway``: serve the gateway with uvicorn, configured from ``INFLAB_*``."""

from __future__ import annotations

from inflab.core.settings import get_settings
from inflab.gateway.logs import setup_json_logging
from inflab.gateway.server import GatewayServer, server_config


def main() -> None:
    settings = get_settings()
    setup_json_logging(settings.log_level)
    # uvicorn's own loggers propagate to the JSON handler; requests are logged by the app.
    GatewayServer(server_config(settings, log_config=None, access_log=False)).run()


if __name__ == "__main__":
    main()
