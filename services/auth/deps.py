"""What the routes depend on: the container the lifespan builds and the authenticated caller."""

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.clock import utcnow
from common.problems import ProblemError
from common.tokens import MAX_TOKEN_CHARS, WWW_AUTHENTICATE, TokenError, TokenVerifier
from services.auth.domain import Passwords, Session, User
from services.auth.keys import KeyRing
from services.auth.schemas import UNAUTHORIZED
from services.auth.settings import AuthSettings
from services.auth.stores import SessionStore, UserStore
from services.auth.throttle import LoginThrottle


class Waker(Protocol):
    """The outbox relay as writers see it."""

    def wake(self) -> None:
        """Relay now: a write just queued an event."""


@dataclass
class Deps:
    """What the routes use, built by the composition root's lifespan."""

    settings: AuthSettings
    users: UserStore
    sessions: SessionStore
    passwords: Passwords
    throttle: LoginThrottle
    relay: Waker
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
    return ProblemError(401, UNAUTHORIZED, headers=WWW_AUTHENTICATE)


async def get_caller(
    deps: DepsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller of a route that needs a valid access token of a live session."""
    if credentials is None or len(credentials.credentials) > MAX_TOKEN_CHARS:
        raise unauthorized()
    try:
        claims = await deps.verifier.verify(credentials.credentials)
    except TokenError:
        raise unauthorized() from None
    session = await deps.sessions.get(claims.sid)
    user = await deps.users.get(claims.sub)
    if session is None or user is None or session.user_id != user.id:
        raise unauthorized()
    if not session.alive(user, utcnow()):
        raise unauthorized()
    return Caller(user, session)


CallerDep = Annotated[Caller, Depends(get_caller)]
