"""``python -m inflab.gateway``: serve the gateway with uvicorn, configured from ``INFLAB_*``."""

from __future__ import annotations

from inflab.common.settings import get_settings
from inflab.gateway.logs import setup_json_logging
from inflab.gateway.server import GatewayServer, server_config


def main() -> None:
    settings = get_settings()
    setup_json_logging(settings.log_level)
    GatewayServer(server_config(settings)).run()


if __name__ == "__main__":
    main()
