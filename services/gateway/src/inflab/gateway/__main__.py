"""``python -m inflab.gateway``: serve the gateway with uvicorn, configured from ``INFLAB_*``."""

from __future__ import annotations

import logging

from inflab.common.settings import get_settings
from inflab.gateway.server import GatewayServer, server_config


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s",
    )
    GatewayServer(server_config(settings)).run()


if __name__ == "__main__":
    main()
