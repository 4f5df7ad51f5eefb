"""The gateway without tracing instrumentation (RED metrics kept).

Only for bench_gateway.py: it measures what per-request tracing costs the hot path.
Run: `python -m bench.gateway_lean` with the gateway's environment.
"""

from common.asgi import RequestIdMiddleware
from common.metrics import MetricsMiddleware
from common.runner import serve
from common.telemetry import setup_logging
from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    """Serve gateway_stack() minus its tracing: request ids and RED metrics kept."""
    settings = GatewaySettings()
    setup_logging(settings)
    app = MetricsMiddleware(create_app(settings), settings.service_name)
    serve(RequestIdMiddleware(app), settings)


if __name__ == "__main__":
    main()
