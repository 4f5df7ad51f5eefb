"""HTTP routes of the auth service; domain errors become problem+json here and nowhere else."""

from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from common.clock import utcnow
from common.events import UserRegistered
from common.openapi import operation_id
from common.problems import ProblemError
from services.auth import responses
from services.auth.clients import client_ip
from services.auth.cookies import clear_cookie, set_cookie
from services.auth.deps import CallerDep, Deps, DepsDep, bearer, get_caller, unauthorized
from services.auth.domain import (
    AuthFailedError,
    EmailTakenError,
    PolicyError,
    RefreshVerdict,
    ThrottledError,
    User,
    check_password,
    hash_secret,
    judge_refresh,
    new_id,
    new_refresh_token,
    normalize_email,
    parse_refresh_token,
)
from services.auth.events import queued, revoked_event
from services.auth.grants import issue_pair, open_session, user_out
from services.auth.reset_requests import start_reset
from services.auth.schemas import (
    REFRESH_COOKIE,
    Accepted,
    AuthOut,
    LoginIn,
    MePatch,
    MeUpdated,
    RefreshIn,
    RegisterIn,
    ResetConfirmIn,
    ResetIn,
    UserOut,
)

router = APIRouter(prefix="/api/auth", tags=["auth"], generate_unique_id_function=operation_id)

log = structlog.get_logger(__name__)


@router.post(
    "/register",
    status_code=201,
    responses=responses.REGISTER,
)
async def register(body: RegisterIn, response: Response, deps: DepsDep) -> AuthOut:
    """Create an account and sign it in."""
    now = utcnow()
    email = normalize_email(body.email)
    user = User(
        id=new_id(),
        email=email,
        name=body.name,
        password_hash=await deps.passwords.hash(body.password),
        created_at=now,
    )
    event = queued(UserRegistered(user_id=user.id, email=email, name=user.name), user.id)
    try:
        await deps.users.insert(user, event)
    except EmailTakenError:
        raise ProblemError(409, "email is already registered", extra=_field("email")) from None
    deps.relay.wake()
    pair = await open_session(deps, user, now)
    set_cookie(response, pair, deps.settings)
    return AuthOut(**pair.model_dump(), user=user_out(user))


def _field(name: str, msg: str = "") -> dict[str, Any]:
    return {"errors": [{"loc": ["body", name], "msg": msg or "conflict", "type": "value_error"}]}


@router.post(
    "/login",
    responses=responses.LOGIN,
)
async def login(body: LoginIn, request: Request, response: Response, deps: DepsDep) -> AuthOut:
    """Exchange email and password for a token pair."""
    email = normalize_email(body.email)
    try:
        user = await _check_login(deps, email, body.password, client_ip(request, deps))
    except ThrottledError as exc:
        raise _throttled(exc.retry_after_s) from None
    except AuthFailedError:
        # The audit trail of failed logins: which account (hashed: no address in logs), never
        # the password.
        log.warning("login failed", account=hash_secret(email)[:16])
        raise unauthorized() from None
    pair = await open_session(deps, user, utcnow())
    set_cookie(response, pair, deps.settings)
    return AuthOut(**pair.model_dump(), user=user_out(user))


async def _check_login(deps: Deps, email: str, password: str, ip: str) -> User:
    """The account if the password matches; the same work whether or not the account exists.

    The back-off is per address (services/auth/throttle.py): misses from one address never
    refuse the owner's correct password from another.
    """
    retry_after = await deps.throttle.retry_after(email, ip)
    if retry_after:
        raise ThrottledError(retry_after)
    user = await deps.users.by_email(email)
    matched = await deps.passwords.verify(user.password_hash if user else None, password)
    if not matched or user is None:
        await deps.throttle.failed(email, ip)
        raise AuthFailedError
    await deps.throttle.succeeded(email, ip)
    if deps.passwords.needs_rehash(user.password_hash):
        new_hash = await deps.passwords.hash(password)
        await deps.users.replace_hash(user.id, user.password_hash, new_hash)
    return user


def _presented_refresh(body: RefreshIn | None, request: Request) -> str:
    token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if not token or len(token) > 200:
        raise unauthorized()
    return token


@router.post("/refresh", responses=responses.REFRESH)
async def refresh(
    request: Request, response: Response, deps: DepsDep, body: RefreshIn | None = None
) -> AuthOut:
    """Spend a refresh token for a new pair; a replayed spent token ends its whole family."""
    try:
        session_id, presented = parse_refresh_token(_presented_refresh(body, request))
    except AuthFailedError:
        raise unauthorized() from None
    for _ in range(3):  # a lost compare-and-set race re-reads the family and judges again
        now = utcnow()
        session = await deps.sessions.get(session_id)
        user = await deps.users.get(session.user_id) if session else None
        if session is None or user is None:
            raise unauthorized()
        verdict = judge_refresh(session, presented, user, now, deps.settings.refresh_grace_s)
        if verdict is RefreshVerdict.REUSE:
            event = revoked_event(user.id, "refresh_reuse", now, session.id)
            if await deps.sessions.revoke(session.id, "refresh_reuse", now, event):
                deps.relay.wake()
            raise unauthorized()
        if verdict is RefreshVerdict.REJECT:
            raise unauthorized()
        token, token_hash = new_refresh_token(session.id)
        if verdict is RefreshVerdict.ROTATE:
            done = await deps.sessions.rotate(session, token_hash, now)
        else:
            done = await deps.sessions.regrant(session, token_hash)
        if done:
            pair = issue_pair(deps, user, session, token, now)
            set_cookie(response, pair, deps.settings)
            return AuthOut(**pair.model_dump(), user=user_out(user))
    raise unauthorized()


@router.post(
    "/logout",
    status_code=204,
    responses=responses.LOGOUT,
)
async def logout(
    request: Request,
    deps: DepsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    body: RefreshIn | None = None,
) -> Response:
    """End this session (named by the access token, or by the refresh token when that expired)."""
    if credentials is not None:
        caller = await get_caller(deps, credentials)
        user_id, session_id = caller.user.id, caller.session.id
    else:
        user_id, session_id = await _refresh_owner(deps, _presented_refresh(body, request))
    now = utcnow()
    if await deps.sessions.revoke(
        session_id, "logout", now, revoked_event(user_id, "logout", now, session_id)
    ):
        deps.relay.wake()
    response = Response(status_code=204)
    clear_cookie(response)
    return response


async def _refresh_owner(deps: Deps, token: str) -> tuple[str, str]:
    """The user and session of a live family's current refresh token."""
    try:
        session_id, presented = parse_refresh_token(token)
    except AuthFailedError:
        raise unauthorized() from None
    session = await deps.sessions.get(session_id)
    user = await deps.users.get(session.user_id) if session else None
    if session is None or user is None:
        raise unauthorized()
    verdict = judge_refresh(session, presented, user, utcnow(), deps.settings.refresh_grace_s)
    if verdict not in (RefreshVerdict.ROTATE, RefreshVerdict.GRACE):
        raise unauthorized()
    return user.id, session.id


@router.post("/logout-all", status_code=204, responses=responses.SIGNED_IN)
async def logout_all(caller: CallerDep, deps: DepsDep) -> Response:
    """End every session of the caller, on every device."""
    now = utcnow()
    event = revoked_event(caller.user.id, "logout_all", now)
    await deps.users.revoke_sessions(caller.user.id, now, event)
    deps.relay.wake()
    await deps.sessions.mark_revoked_before(caller.user.id, now)
    response = Response(status_code=204)
    clear_cookie(response)
    return response


@router.get("/me", responses=responses.SIGNED_IN)
async def me(caller: CallerDep) -> UserOut:
    """The caller's account."""
    return user_out(caller.user)


@router.patch(
    "/me",
    responses=responses.UPDATE_ME,
)
async def update_me(
    body: MePatch, request: Request, response: Response, caller: CallerDep, deps: DepsDep
) -> MeUpdated:
    """Rename, and/or change the password: that revokes every session and opens a new one."""
    user = caller.user
    if body.new_password is not None and body.current_password is not None:
        await _confirm_current_password(deps, user, body.current_password, client_ip(request, deps))
        _policy(body.new_password, user.email, "new_password")
        new_hash = await deps.passwords.hash(body.new_password)
        now = utcnow()
        event = revoked_event(user.id, "password_changed", now)
        changed = await deps.users.change_password(user.id, new_hash, now, event)
        if changed is None:
            raise unauthorized()
        deps.relay.wake()
        user = changed
    if body.name is not None:
        user = await deps.users.rename(user.id, body.name) or user
    tokens = None
    if body.new_password is not None:
        tokens = await open_session(deps, user, utcnow())
        set_cookie(response, tokens, deps.settings)
    return MeUpdated(user=user_out(user), tokens=tokens)


async def _confirm_current_password(deps: Deps, user: User, password: str, ip: str) -> None:
    """Re-check the password under the login back-off, so a stolen access token cannot guess it."""
    retry_after = await deps.throttle.retry_after(user.email, ip)
    if retry_after:
        raise _throttled(retry_after)
    if not await deps.passwords.verify(user.password_hash, password):
        await deps.throttle.failed(user.email, ip)
        raise unauthorized()


def _throttled(retry_after_s: int) -> ProblemError:
    return ProblemError(
        429, "too many failed attempts; retry later", headers={"Retry-After": str(retry_after_s)}
    )


def _policy(password: str, email: str, field: str) -> None:
    try:
        check_password(password, email)
    except PolicyError as exc:
        raise ProblemError(
            422, f"invalid input: body.{field}", extra=_field(field, exc.message)
        ) from None


@router.post(
    "/password-reset",
    status_code=202,
    responses=responses.RESET,
)
async def request_reset(body: ResetIn, request: Request, deps: DepsDep) -> Accepted:
    """Mail a reset link if the account exists; neither the answer nor its timing says whether.

    The lookup and the write happen after the 202 (a known account costs a database write an
    unknown one does not: ~8 ms to time), so the response does the same work for every address.
    """
    wait = await deps.throttle.reset_request_wait(client_ip(request, deps))
    if wait:
        raise ProblemError(429, "too many reset requests; retry later", headers=_retry(wait))
    if not start_reset(deps, normalize_email(body.email)):
        raise ProblemError(503, "too many reset requests in flight", headers=_retry(1))
    return Accepted()


def _retry(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


@router.post(
    "/password-reset/confirm",
    status_code=204,
    responses=responses.CONFIRM_RESET,
)
async def confirm_reset(body: ResetConfirmIn, deps: DepsDep) -> Response:
    """Set a new password with a single-use reset token; every session is revoked."""
    now = utcnow()
    token_hash = hash_secret(body.token)
    user = await deps.users.by_reset(token_hash, now)
    if user is None:
        raise unauthorized()
    _policy(body.new_password, user.email, "new_password")
    new_hash = await deps.passwords.hash(body.new_password)
    event = revoked_event(user.id, "password_reset", now)
    if not await deps.users.consume_reset(user.id, token_hash, new_hash, now, event):
        raise unauthorized()
    deps.relay.wake()
    await deps.throttle.forget_account(user.email)
    return Response(status_code=204)


jwks_router = APIRouter(generate_unique_id_function=operation_id)


@jwks_router.get("/.well-known/jwks.json")
async def jwks(deps: DepsDep) -> Response:
    """The public keys access tokens are verified with (current and not yet retired)."""
    body = deps.keys.jwks(utcnow())
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )
