"""Silent token refresh: an httpx auth flow that refreshes on 401 and retries once."""

from collections.abc import Generator
from dataclasses import dataclass

import httpx

REFRESH_PATH = "/api/auth/refresh"


@dataclass
class TokenPair:
    """The tokens a login, registration or refresh answers with."""

    access_token: str
    refresh_token: str


class RefreshingAuth(httpx.Auth):
    """Sends the access token; on a 401 spends the refresh token once and retries the request.

    A failed refresh (the session was revoked, or the refresh token was reused) leaves the 401
    for the caller: the user has to log in again, nothing loops.
    """

    requires_response_body = True

    def __init__(self, tokens: TokenPair | None = None) -> None:
        self.tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach the bearer token; refresh and replay once if it was refused."""
        if self.tokens is None or request.url.path == REFRESH_PATH:
            yield request
            return
        request.headers["Authorization"] = f"Bearer {self.tokens.access_token}"
        response = yield request
        if response.status_code != 401:
            return
        refreshed = yield httpx.Request(
            "POST",
            request.url.copy_with(path=REFRESH_PATH, query=None),
            json={"refresh_token": self.tokens.refresh_token},
        )
        if refreshed.status_code != 200:
            return
        body = refreshed.json()
        self.tokens = TokenPair(body["access_token"], body["refresh_token"])
        request.headers["Authorization"] = f"Bearer {self.tokens.access_token}"
        yield request
