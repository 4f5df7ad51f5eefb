"""Password-reset events as auth publishes them: the token sealed for the notifier."""

from datetime import datetime

from common.events import PasswordResetRequested
from common.sealing import DEV_RESET_SEAL_KEY, Sealer, reset_context


def reset_requested(
    token: str,
    expires_at: datetime,
    *,
    user_id: str = "u1",
    email: str = "a@x.io",
    name: str = "Ada",
    key: str = DEV_RESET_SEAL_KEY,
) -> PasswordResetRequested:
    """The event for `token`, sealed with `key` (the development key unless told)."""
    sealed = Sealer(key).seal(token, reset_context(user_id, email, expires_at))
    return PasswordResetRequested(
        user_id=user_id, email=email, name=name, sealed_token=sealed, expires_at=expires_at
    )
