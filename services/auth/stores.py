"""What the routes need from storage: users, sessions, the development key (Protocols)."""

from datetime import datetime
from typing import Protocol

from common.events import RevokeReason
from common.outbox import OutboxEntry
from services.auth.domain import Session, User


class UserStore(Protocol):
    """Accounts; every write that produces an event queues it in the same update."""

    async def insert(self, user: User, event: OutboxEntry) -> None:
        """Store a new account with its event; EmailTakenError on a duplicate email."""

    async def get(self, user_id: str) -> User | None:
        """The account with this id."""

    async def by_email(self, email: str) -> User | None:
        """The account with this (normalised) email."""

    async def replace_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Swap in a rehashed password unless the password changed meanwhile."""

    async def rename(self, user_id: str, name: str) -> User | None:
        """Change the display name."""

    async def change_password(
        self, user_id: str, new_hash: str, now: datetime, event: OutboxEntry
    ) -> User | None:
        """New password; every session created before `now` is revoked in the same update."""

    async def revoke_sessions(self, user_id: str, now: datetime, event: OutboxEntry) -> None:
        """Revoke every session created before `now` (the user document is the authority)."""

    async def set_reset(
        self, user_id: str, token_hash: str, expires_at: datetime, now: datetime, event: OutboxEntry
    ) -> None:
        """Remember the (single) live reset token and queue the mail event."""

    async def by_reset(self, token_hash: str, now: datetime) -> User | None:
        """The account a live reset token belongs to."""

    async def consume_reset(
        self, user_id: str, token_hash: str, new_hash: str, now: datetime, event: OutboxEntry
    ) -> bool:
        """Spend the reset token, set the password, revoke every session; False if spent."""


class SessionStore(Protocol):
    """Refresh-token families."""

    async def insert(self, session: Session) -> None:
        """Store a new family."""

    async def get(self, session_id: str) -> Session | None:
        """The family with this id."""

    async def rotate(self, session: Session, new_hash: str, now: datetime) -> bool:
        """Spend the current token (compare-and-set); False if another request got there first."""

    async def regrant(self, session: Session, new_hash: str) -> bool:
        """Grace case: replace the current token; the one lost in transit joins the spent list."""

    async def revoke(
        self, session_id: str, reason: RevokeReason, now: datetime, event: OutboxEntry
    ) -> bool:
        """Revoke one family with its event; False if it was revoked already."""

    async def mark_revoked_before(self, user_id: str, now: datetime) -> None:
        """Flag the user's families created before `now` as revoked (clean-up only)."""


class DevKeyStore(Protocol):
    """The development signing key every replica shares."""

    async def dev_key(self, kid: str, pem: str) -> tuple[str, str]:
        """The shared key: the first replica's proposal wins, everyone reads it back."""
