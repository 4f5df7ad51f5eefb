"""HTTP routes of the notifier: the user's notification preferences."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from common.openapi import AUTHENTICATED, operation_id, problems
from common.tokens import AccessClaims, Revocations, TokenVerifier, verify_bearer
from services.notifier.domain import Preferences
from services.notifier.storage import Store

MAX_BODY_BYTES = 4096


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier


def _revocations(request: Request) -> Revocations:
    revocations: Revocations = request.app.state.revocations
    return revocations


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def current_user(
    request: Request,
    verifier: Annotated[TokenVerifier, Depends(_verifier)],
    revocations: Annotated[Revocations, Depends(_revocations)],
) -> AccessClaims:
    """The verified caller, session not revoked; one uniform 401 whatever is wrong with it."""
    return await verify_bearer(verifier, revocations, request.headers.get("authorization"))


Caller = Annotated[AccessClaims, Depends(current_user)]
Storage = Annotated[Store, Depends(_store)]
router = APIRouter(
    prefix="/api/notifications", tags=["notifications"], generate_unique_id_function=operation_id
)


@router.get("/preferences", responses=problems(*AUTHENTICATED))
async def get_preferences(caller: Caller, store: Storage) -> Preferences:
    """The caller's notification preferences."""
    return await store.preferences(caller.sub)


@router.put("/preferences", responses=problems(*AUTHENTICATED))
async def put_preferences(body: Preferences, caller: Caller, store: Storage) -> Preferences:
    """Replace the caller's notification preferences (welcome and reset mails always go)."""
    await store.save_preferences(caller.sub, body)
    return body
