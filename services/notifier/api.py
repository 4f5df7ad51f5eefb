"""HTTP routes of the notifier: the user's notification preferences."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from common.problems import ProblemError
from common.tokens import AccessClaims, KeysUnavailableError, TokenError, TokenVerifier
from services.notifier.domain import Preferences
from services.notifier.storage import Store

MAX_BODY_BYTES = 4096
_UNAUTHORIZED = ProblemError(
    401, "missing or invalid access token", headers={"WWW-Authenticate": 'Bearer realm="taskbus"'}
)


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def current_user(
    request: Request, verifier: Annotated[TokenVerifier, Depends(_verifier)]
) -> AccessClaims:
    """The verified caller; one uniform 401 whatever is wrong with the token."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 8192:
        raise _UNAUTHORIZED
    try:
        return await verifier.verify(token.strip())
    except TokenError:
        raise _UNAUTHORIZED from None
    except KeysUnavailableError:
        raise ProblemError(
            503, "cannot verify access tokens right now", headers={"Retry-After": "5"}
        ) from None


Caller = Annotated[AccessClaims, Depends(current_user)]
Storage = Annotated[Store, Depends(_store)]
router = APIRouter(prefix="/api/notifications", tags=["notifications"])


@router.get("/preferences")
async def get_preferences(caller: Caller, store: Storage) -> Preferences:
    """The caller's notification preferences."""
    return await store.preferences(caller.sub)


@router.put("/preferences")
async def put_preferences(body: Preferences, caller: Caller, store: Storage) -> Preferences:
    """Replace the caller's notification preferences (welcome and reset mails always go)."""
    await store.save_preferences(caller.sub, body)
    return body
