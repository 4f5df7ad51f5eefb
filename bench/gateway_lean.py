"""The gateway without OpenTelemetry's ASGI/Redis/aiohttp instrumentation (RED metrics kept).

Only for bench_gateway.py: it measures what per-request tracing costs the hot path.
Run: `python -m bench.gateway_lean` with the gateway's environment.
"""

import uvicorn
import uvloop

from common.metrics import MetricsMiddleware
from common.telemetry import setup_logging
from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    """Serve the gateway app on uvicorn exactly as common.runner does, minus instrument()."""
    settings = GatewaySettings()
    setup_logging(settings)
    config = uvicorn.Config(
        MetricsMiddleware(create_app(settings), settings.service_name),
        host=settings.host,
        port=settings.port,
        loop="none",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
