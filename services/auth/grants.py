"""What a successful sign-in hands out: a new session's token pair and the account's view."""

from datetime import datetime, timedelta

from common.tokens import sign_access_token
from services.auth.deps import Deps
from services.auth.domain import Session, User, new_id, new_refresh_token
from services.auth.schemas import TokenPair, UserOut


def user_out(user: User) -> UserOut:
    """The account as its owner sees it (no hash, no internals)."""
    return UserOut(id=user.id, email=user.email, name=user.name, created_at=user.created_at)


def issue_pair(
    deps: Deps, user: User, session: Session, refresh_token: str, now: datetime
) -> TokenPair:
    """A new access token for the session, paired with the refresh token just issued; it names
    when the session began, so a user-wide revocation refuses it however fresh it is."""
    access, _ = sign_access_token(
        deps.keys.current.private_key,
        deps.keys.current.kid,
        issuer=deps.settings.jwt_issuer,
        audience=deps.settings.jwt_audience,
        subject=user.id,
        session_id=session.id,
        ttl_s=deps.settings.access_ttl_s,
        now=now.timestamp(),
        session_started=session.created_at,
    )
    return TokenPair(
        access_token=access,
        expires_in=deps.settings.access_ttl_s,
        refresh_token=refresh_token,
        session_id=session.id,
    )


async def open_session(deps: Deps, user: User, now: datetime) -> TokenPair:
    """Start a new refresh-token family (a login on one device) and its first pair."""
    session_id = new_id()
    token, token_hash = new_refresh_token(session_id)
    expires = now + timedelta(seconds=deps.settings.refresh_ttl_s)
    session = Session(
        id=session_id, user_id=user.id, current_hash=token_hash, created_at=now, expires_at=expires
    )
    await deps.sessions.insert(session)
    return issue_pair(deps, user, session, token, now)
