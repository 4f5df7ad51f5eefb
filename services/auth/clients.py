"""The client address auth counts failures and requests under (the gateway forwards it)."""

from functools import lru_cache

from fastapi import Request

from common.forwarding import TrustedProxies
from services.auth.deps import Deps


@lru_cache(maxsize=8)
def _proxies(trusted: tuple[str, ...]) -> TrustedProxies:
    return TrustedProxies(trusted)


def client_ip(request: Request, deps: Deps) -> str:
    """The client's address: X-Forwarded-For counts only when a trusted proxy (gateway) sent it."""
    peer = request.client.host if request.client else "0.0.0.0"
    forwarded = request.headers.get("x-forwarded-for")
    return _proxies(deps.settings.trusted_proxies).client_ip(
        peer, forwarded.encode("latin-1") if forwarded else None
    )
