"""The gateway without tracing instrumentation (RED metrics kept).

Only for bench_gateway.py: it measures what per-request tracing costs the hot path.
Run: `python -m bench.gateway_lean` with the gateway's environment.
"""

from common.metrics import MetricsMiddleware
from common.runner import serve
from common.telemetry import setup_logging
from gateway.app import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    """Serve the gateway app exactly as common.runner does, minus instrument()."""
    settings = GatewaySettings()
    setup_logging(settings)
    serve(MetricsMiddleware(create_app(settings), settings.service_name), settings)


if __name__ == "__main__":
    main()
