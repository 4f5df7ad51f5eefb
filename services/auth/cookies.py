"""The refresh-token cookie: set with every token pair, cleared on logout."""

from fastapi import Response

from services.auth.schemas import COOKIE_PATH, REFRESH_COOKIE, TokenPair
from services.auth.settings import AuthSettings


def set_cookie(response: Response, pair: TokenPair, settings: AuthSettings) -> None:
    """Hand the refresh token over as well in an HttpOnly, Secure, SameSite=Strict cookie."""
    response.set_cookie(
        REFRESH_COOKIE,
        pair.refresh_token,
        max_age=settings.refresh_ttl_s,
        path=COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response) -> None:
    """Tell the browser to forget the refresh cookie."""
    response.delete_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict"
    )
