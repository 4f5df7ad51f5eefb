"""A throwaway RSA key pair for minting access tokens in tests."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from common.tokens import ALGORITHM, AccessClaims, StaticKeys, TokenVerifier, sign_access_token

ISSUER = "https://auth.taskbus.local"
AUDIENCE = "taskbus"


@dataclass
class SigningKey:
    """A signing key and its public JWK."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str = "test-key") -> "SigningKey":
        """A fresh 2048-bit RSA key."""
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK with kid, alg and use."""
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        """A JWKS holding only this key."""
        return {"keys": [self.jwk()]}

    def mint(
        self,
        subject: str,
        session_id: str = "sess-1",
        ttl_s: int = 900,
        now: float | None = None,
        session_started: datetime | None = None,
    ) -> tuple[str, AccessClaims]:
        """A signed access token for `subject` (of a session begun now unless told)."""
        return sign_access_token(
            self.private_key,
            self.kid,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject=subject,
            session_id=session_id,
            ttl_s=ttl_s,
            now=now,
            session_started=session_started,
        )

    def verifier(self) -> TokenVerifier:
        """A verifier that trusts only this key."""
        return TokenVerifier(StaticKeys(self.jwks()), issuer=ISSUER, audience=AUDIENCE)
