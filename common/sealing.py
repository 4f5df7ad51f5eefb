"""Secrets that must cross the bus, sealed for the one service that may read them.

The password-reset token has to reach the notifier (it goes into the mailed link), but a Kafka
record stays for the topic's retention, in the DLQ and in any consumer's logs. So auth seals it
with AES-256-GCM under a key only auth and the notifier hold (TASKBUS_RESET_SEAL_KEY), bound to
the account, mailbox and expiry as associated data: the record shows no token, and a sealed token
copied into another account's event does not open. The mail is useless past the expiry, and the
token's hash in auth's database dies then too, so a key leaked later opens nothing usable.
"""

import base64
import hashlib
import secrets
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Development default; refused in production (see the services' settings).
DEV_RESET_SEAL_KEY = "dev-only-reset-seal-key-change-me"
MIN_KEY_CHARS = 32
_NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value does not open: another key, another context, or tampered with."""


def reset_context(user_id: str, email: str, expires_at: datetime) -> bytes:
    """The associated data a reset token is sealed to: whose it is, where it goes, until when."""
    return f"reset\n{user_id}\n{email}\n{expires_at.isoformat()}".encode()


class Sealer:
    """AES-256-GCM with a key derived from a configured secret string."""

    def __init__(self, secret: str) -> None:
        # SHA-256 turns any long random string (how secrets are provisioned) into a 256-bit key.
        self._aead = AESGCM(hashlib.sha256(secret.encode()).digest())

    def seal(self, plaintext: str, context: bytes) -> str:
        """The sealed text (URL-safe base64 of nonce and ciphertext)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plaintext.encode(), context)
        return base64.urlsafe_b64encode(sealed).decode()

    def open(self, sealed: str, context: bytes) -> str:
        """The plaintext; SealError if it was not sealed with this key for this context."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            nonce, ciphertext = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return self._aead.decrypt(nonce, ciphertext, context).decode()
        except (InvalidTag, ValueError) as exc:
            raise SealError("sealed value does not open") from exc


def check_seal_key(secret: str, production: bool) -> None:
    """Refuse the development key, or a short one, in production (ValueError)."""
    if production and (secret == DEV_RESET_SEAL_KEY or len(secret) < MIN_KEY_CHARS):
        raise ValueError(
            f"production needs TASKBUS_RESET_SEAL_KEY (at least {MIN_KEY_CHARS} random characters)"
        )
