"""Plumbing of the HTTP layer: dependencies, the authenticated caller, token pairs, cookies."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.events import Payload, SessionsRevoked
from common.problems import ProblemError
from common.telemetry import current_traceparent
from common.tokens import TokenError, TokenVerifier, sign_access_token
from services.auth.domain import (
    Passwords,
    RevokeReason,
    Session,
    User,
    new_id,
    new_refresh_token,
    outbox_entry,
)
from services.auth.events import OutboxRelay
from services.auth.keys import KeyRing
from services.auth.schemas import COOKIE_PATH, REFRESH_COOKIE, UNAUTHORIZED, TokenPair, UserOut
from services.auth.settings import AuthSettings
from services.auth.storage import AuthStore
from services.auth.throttle import LoginThrottle


@dataclass
class Deps:
    """What the routes use, built by the composition root's lifespan."""

    settings: AuthSettings
    store: AuthStore
    passwords: Passwords
    throttle: LoginThrottle
    relay: OutboxRelay
    keys: KeyRing
    verifier: TokenVerifier


@dataclass(frozen=True)
class Caller:
    """An authenticated request: the account and the live session its access token names."""

    user: User
    session: Session


def get_deps(request: Request) -> Deps:
    """The dependencies the lifespan stored on the app."""
    deps: Deps = request.app.state.deps
    return deps


DepsDep = Annotated[Deps, Depends(get_deps)]
bearer = HTTPBearer(auto_error=False)


def unauthorized() -> ProblemError:
    """The one answer to every credential or token that is not accepted."""
    return ProblemError(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def utcnow() -> datetime:
    """Now, at the millisecond precision BSON stores, so what we answer is what we read back."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def user_out(user: User) -> UserOut:
    """The account as its owner sees it (no hash, no internals)."""
    return UserOut(id=user.id, email=user.email, name=user.name, created_at=user.created_at)


async def get_caller(
    deps: DepsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller of a route that needs a valid access token of a live session."""
    if credentials is None or len(credentials.credentials) > 4096:
        raise unauthorized()
    try:
        claims = await deps.verifier.verify(credentials.credentials)
    except TokenError:
        raise unauthorized() from None
    session = await deps.store.session(claims.sid)
    user = await deps.store.user(claims.sub)
    if session is None or user is None or session.user_id != user.id:
        raise unauthorized()
    if not session.alive(user, utcnow()):
        raise unauthorized()
    return Caller(user, session)


CallerDep = Annotated[Caller, Depends(get_caller)]


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


def issue_pair(
    deps: Deps, user: User, session_id: str, refresh_token: str, now: datetime
) -> TokenPair:
    """A new access token for the session, paired with the refresh token just issued."""
    access, _ = sign_access_token(
        deps.keys.current.private_key,
        deps.keys.current.kid,
        issuer=deps.settings.jwt_issuer,
        audience=deps.settings.jwt_audience,
        subject=user.id,
        session_id=session_id,
        ttl_s=deps.settings.access_ttl_s,
        now=now.timestamp(),
    )
    return TokenPair(
        access_token=access,
        expires_in=deps.settings.access_ttl_s,
        refresh_token=refresh_token,
        session_id=session_id,
    )


async def open_session(deps: Deps, user: User, now: datetime) -> TokenPair:
    """Start a new refresh-token family (a login on one device) and its first pair."""
    session_id = new_id()
    token, token_hash = new_refresh_token(session_id)
    expires = now + timedelta(seconds=deps.settings.refresh_ttl_s)
    session = Session(
        id=session_id, user_id=user.id, current_hash=token_hash, created_at=now, expires_at=expires
    )
    await deps.store.insert_session(session)
    return issue_pair(deps, user, session_id, token, now)


def revoked_event(user_id: str, reason: RevokeReason, now: datetime, *sids: str) -> dict[str, Any]:
    """A user.sessions_revoked outbox entry: the named sessions, or all of them when none is named.

    Access tokens carry whole-second `iat`s and the gateway refuses `iat < revoked_before`, so a
    user-wide cut-off is rounded down: a token issued right after it, in the same second (the new
    login after logout-all, the replacement session of a password change), must stay valid.
    """
    before = now if sids else now.replace(microsecond=0)
    payload = SessionsRevoked(
        user_id=user_id, session_ids=sids, revoked_before=before, reason=reason
    )
    return queued(payload, user_id)


def queued(payload: Payload, user_id: str) -> dict[str, Any]:
    """An outbox entry carrying the current request's trace, keyed by the user."""
    return outbox_entry(payload, user_id, current_traceparent())
