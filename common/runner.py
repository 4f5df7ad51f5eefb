"""Starts a service process the same way everywhere: logging, tracing, uvicorn on uvloop."""

import asyncio
from collections.abc import Callable
from typing import TypeVar

import uvicorn
import uvloop
from starlette.types import ASGIApp

from common.settings import ServiceSettings
from common.telemetry import instrument, setup_error_tracking, setup_logging, setup_tracing

S = TypeVar("S", bound=ServiceSettings)


def run_service(settings: S, create_app: Callable[[S], ASGIApp]) -> None:
    """Serve `create_app(settings)` under the common middleware until SIGTERM/SIGINT."""
    run_stack(settings, lambda given: instrument(create_app(given), given))


def run_stack(
    settings: S, build: Callable[[S], ASGIApp], http: type[asyncio.Protocol] | str = "httptools"
) -> None:
    """Serve `build(settings)`, an app that brings its own middleware, then flush traces."""
    setup_logging(settings)
    provider = setup_tracing(settings)
    setup_error_tracking(settings)
    try:
        serve(build(settings), settings, http)
    finally:
        provider.shutdown()


def serve(
    app: ASGIApp, settings: ServiceSettings, http: type[asyncio.Protocol] | str = "httptools"
) -> None:
    """Serve one ASGI app on uvicorn (uvloop, httptools, our logging) until SIGTERM/SIGINT.

    `http`: uvicorn's HTTP protocol (the gateway brings its own, gateway/protocol.py).
    """
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http=http,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=20,
    )
    uvloop.run(uvicorn.Server(config).serve())
