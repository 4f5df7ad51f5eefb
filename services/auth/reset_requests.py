"""Password-reset requests, looked up and written after their 202 so timing reveals nothing.

A known account costs a database write an unknown one does not (~8 ms, enough to tell them
apart); done after the answer, every address gets the same response in the same time. The cost:
a process that dies between the 202 and the write loses that request (the user asks again).
"""

import asyncio
from datetime import timedelta

import structlog

from common.clock import utcnow
from common.events import PasswordResetRequested
from common.sealing import Sealer, reset_context
from services.auth.deps import Deps
from services.auth.domain import hash_secret, new_reset_token
from services.auth.events import queued

log = structlog.get_logger(__name__)

# Requests still in flight (referenced so none is collected early); past the bound a request is
# refused, the same way for every address.
PENDING_MAX = 256
_pending: set["asyncio.Task[None]"] = set()


def start_reset(deps: Deps, email: str) -> bool:
    """Begin the reset of `email` in the background; False when too many are in flight."""
    if len(_pending) >= PENDING_MAX:
        return False
    task = asyncio.create_task(_send_reset(deps, email))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return True


async def wait_pending() -> None:
    """Let the requests in flight finish (tests, and a clean shutdown)."""
    while _pending:
        await asyncio.gather(*_pending, return_exceptions=True)


async def _send_reset(deps: Deps, email: str) -> None:
    """Queue the reset mail of a known account (at most a few per mailbox per hour)."""
    try:
        user = await deps.users.by_email(email)
        if user is None or not await deps.throttle.reset_mail_allowed(email):
            return
        now = utcnow()
        token, token_hash = new_reset_token()
        expires = now + timedelta(seconds=deps.settings.reset_ttl_s)
        # Sealed for the notifier: a Kafka record is kept for days, the plaintext never is.
        sealer = Sealer(deps.settings.reset_seal_key.get_secret_value())
        sealed = sealer.seal(token, reset_context(user.id, user.email, expires))
        payload = PasswordResetRequested(
            user_id=user.id,
            email=user.email,
            name=user.name,
            sealed_token=sealed,
            expires_at=expires,
        )
        event = queued(payload, user.id)
        await deps.users.set_reset(user.id, token_hash, expires, now, event)
        deps.relay.wake()
    except Exception:
        log.exception("password reset request failed", account=hash_secret(email)[:16])
