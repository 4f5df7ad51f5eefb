"""Users, sessions and the rules about them (no I/O)."""

import asyncio
import enum
import hashlib
import hmac
import secrets
import uuid
from datetime import datetime, timedelta

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import AwareDatetime, BaseModel, ConfigDict

PASSWORD_MIN = 8
PASSWORD_MAX = 128
# Spent refresh tokens remembered per family for reuse detection; older ones are merely unknown.
SPENT_REMEMBERED = 100


class AuthFailedError(Exception):
    """Credentials or a token were not accepted; the reason is never told to the client."""


class EmailTakenError(Exception):
    """Another account already uses this email."""


class ThrottledError(Exception):
    """Too many failed logins for this account; retry after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s}s")
        self.retry_after_s = retry_after_s


class PolicyError(Exception):
    """A value breaks a rule; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class User(BaseModel):
    """A stored account."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    id: str
    email: str
    name: str
    password_hash: str
    created_at: AwareDatetime
    # Sessions created before this instant are revoked (logout-all, password change/reset).
    sessions_valid_after: AwareDatetime | None = None


class Session(BaseModel):
    """A refresh-token family: one login on one device."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    id: str
    user_id: str
    current_hash: str
    previous_hash: str | None = None
    rotated_at: AwareDatetime | None = None
    spent: tuple[str, ...] = ()
    revoked: bool = False
    created_at: AwareDatetime
    expires_at: AwareDatetime

    def alive(self, user: "User", now: datetime) -> bool:
        """Not revoked (by itself or by the user's cut-off) and not expired."""
        cut = user.sessions_valid_after
        revoked_by_user = cut is not None and self.created_at < cut
        return not (self.revoked or revoked_by_user or self.expires_at <= now)


def new_id() -> str:
    """A random identifier for users and sessions."""
    return uuid.uuid4().hex


def normalize_email(email: str) -> str:
    """The canonical form used for uniqueness and lookups: trimmed, lower case."""
    return email.strip().lower()


def check_password(password: str, email: str) -> None:
    """Raise PolicyError unless the password meets the policy (length, not the email)."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise PolicyError("password", f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    folded = password.strip().casefold()
    local_part = email.split("@", 1)[0]
    if folded in {email.casefold(), local_part.casefold()}:
        raise PolicyError("password", "must not be the email address")


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret: enough for random tokens, which need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_refresh_token(session_id: str) -> tuple[str, str]:
    """A fresh opaque refresh token for the family and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return f"{session_id}.{secret}", hash_secret(secret)


def parse_refresh_token(token: str) -> tuple[str, str]:
    """The family id and secret hash of a presented token; AuthFailedError if malformed."""
    session_id, _, secret = token.partition(".")
    if len(session_id) != 32 or len(secret) < 32 or len(token) > 200:
        raise AuthFailedError("malformed refresh token")
    return session_id, hash_secret(secret)


def new_reset_token() -> tuple[str, str]:
    """A password-reset token for the mail and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


class RefreshVerdict(enum.Enum):
    """What a presented refresh token means for its family."""

    ROTATE = "rotate"  # the current token: spend it, issue the next
    GRACE = "grace"  # the previous token, just after rotation: the client lost the response
    REUSE = "reuse"  # a spent token: stolen or replayed, so the family dies
    REJECT = "reject"  # unknown, revoked or expired: refuse, change nothing


def judge_refresh(
    session: Session, presented_hash: str, user: User, now: datetime, grace_s: int
) -> RefreshVerdict:
    """Decide what a refresh attempt with this token does."""
    if not session.alive(user, now):
        return RefreshVerdict.REJECT
    if hmac.compare_digest(session.current_hash, presented_hash):
        return RefreshVerdict.ROTATE
    if (
        session.previous_hash is not None
        and session.rotated_at is not None
        and hmac.compare_digest(session.previous_hash, presented_hash)
    ):
        fresh = now - session.rotated_at <= timedelta(seconds=grace_s)
        return RefreshVerdict.GRACE if fresh else RefreshVerdict.REUSE
    if any(hmac.compare_digest(spent, presented_hash) for spent in session.spent):
        return RefreshVerdict.REUSE
    return RefreshVerdict.REJECT


def login_backoff_s(failures: int, free_attempts: int, cap_s: int) -> int:
    """Seconds the account refuses logins after `failures` misses: doubling, capped."""
    if failures < free_attempts:
        return 0
    return int(min(cap_s, 2 ** (failures - free_attempts)))


class Passwords:
    """argon2id hashing off the event loop, bounded so a flood cannot exhaust memory."""

    def __init__(self, *, memory_kib: int, time_cost: int, parallelism: int, concurrency: int):
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """The argon2id hash of a password ($argon2id$...)."""
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True if the password matches; without a stored hash, spend the same time and fail."""
        if stored_hash is None:
            # Unknown account: verify against a dummy so the answer takes as long as a real miss.
            await self._check(await self.dummy_hash(), password)
            return False
        return await self._check(stored_hash, password)

    async def dummy_hash(self) -> str:
        """A hash of a random password at the current parameters (made once; call at start-up)."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        return self._dummy

    async def _check(self, stored_hash: str, password: str) -> bool:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._hasher.verify, stored_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other (older) parameters."""
        return self._hasher.check_needs_rehash(stored_hash)
